//! Random access: decrypt any byte range without reading the rest.

use std::io::{Read, Seek, SeekFrom};

use zeroize::Zeroizing;

use super::header::{Header, TAG_LEN};
use super::stream::read_up_to;
use super::{Error, ModelKey, UnlockedHeader};

/// A decrypting reader over an encrypted file, for loaders that read
/// tensors at offsets. Opening checks the header (all of
/// [`Header::unlock`]) and the file length; each read authenticates the
/// chunks it touches before returning any of their bytes. The last chunk
/// read is kept (zeroized when replaced or dropped).
pub struct ModelReader<R> {
    inner: R,
    unlocked: UnlockedHeader,
    data_start: u64,
    pos: u64,
    cached: Option<u64>,
    buf: Zeroizing<Vec<u8>>,
}

impl<R> std::fmt::Debug for ModelReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelReader").field("header", self.unlocked.header()).field("pos", &self.pos).finish()
    }
}

impl<R: Read + Seek> ModelReader<R> {
    /// Opens an encrypted file with its model key.
    pub fn open(mut inner: R, key: &ModelKey) -> Result<Self, Error> {
        inner.seek(SeekFrom::Start(0))?;
        let header = Header::read_from(&mut inner)?;
        let unlocked = header.unlock(key)?;
        let expected = header.file_len().ok_or(Error::Crypto)?;
        let actual = inner.seek(SeekFrom::End(0))?;
        if actual < expected {
            return Err(Error::Truncated { expected, found: actual });
        }
        if actual > expected {
            return Err(Error::TrailingData);
        }
        Ok(Self {
            inner,
            data_start: header.encoded_len() as u64,
            unlocked,
            pos: 0,
            cached: None,
            buf: Zeroizing::new(Vec::new()),
        })
    }

    /// The authenticated header.
    pub fn header(&self) -> &Header {
        self.unlocked.header()
    }

    /// Plaintext length.
    pub fn len(&self) -> u64 {
        self.unlocked.header().plaintext_len()
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads plaintext at `offset` into `out`; returns the bytes read
    /// (fewer than `out.len()` only at the end of the plaintext).
    pub fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, Error> {
        let chunk = u64::from(self.unlocked.header().chunk_size());
        let mut done = 0usize;
        while done < out.len() {
            let at = offset.saturating_add(done as u64);
            if at >= self.len() {
                break;
            }
            let index = at / chunk;
            self.load(index)?;
            let within = usize::try_from(at - index * chunk).map_err(|_| Error::Crypto)?;
            let src = self.buf.get(within..).unwrap_or_default();
            let dst = out.get_mut(done..).unwrap_or_default();
            let n = src.len().min(dst.len());
            if n == 0 {
                break;
            }
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            done += n;
        }
        Ok(done)
    }

    /// Makes chunk `index` the cached one, authenticating it.
    fn load(&mut self, index: u64) -> Result<(), Error> {
        if self.cached == Some(index) {
            return Ok(());
        }
        self.cached = None;
        let stride = u64::from(self.unlocked.header().chunk_size()) + TAG_LEN as u64;
        let start = index.checked_mul(stride).and_then(|o| o.checked_add(self.data_start)).ok_or(Error::Crypto)?;
        let len = usize::try_from(self.unlocked.chunk_plain_len(index)).map_err(|_| Error::Crypto)? + TAG_LEN;
        self.inner.seek(SeekFrom::Start(start))?;
        self.buf.clear();
        self.buf.resize(len, 0);
        let got = read_up_to(&mut self.inner, &mut self.buf)?;
        if got < len {
            // The file shrank after it was opened.
            let expected = self.unlocked.header().file_len().unwrap_or(0);
            return Err(Error::Truncated { expected, found: start.saturating_add(got as u64) });
        }
        self.unlocked.payload.open(index, self.unlocked.is_last(index), &mut self.buf)?;
        self.cached = Some(index);
        Ok(())
    }
}

impl<R: Read + Seek> Read for ModelReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.read_at(self.pos, out).map_err(|e| match e {
            Error::Io(io) => io,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        })?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for ModelReader<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start of the plaintext")
        })?;
        self.pos = target;
        Ok(target)
    }
}
