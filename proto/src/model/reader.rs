//! Random access: decrypt any byte range (or, in the safetensors-aware
//! layout, any one tensor) without reading the rest.

use std::io::{Read, Seek, SeekFrom};

use zeroize::Zeroizing;

use super::header::{Header, TAG_LEN};
use super::safetensors::{TensorIndex, TensorInfo};
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
        if let (Some(index), Some((tags_at, body_at))) = (header.tensor_index(), header.table_layout()) {
            let pad_at = tags_at + index.chunk_count() * TAG_LEN as u64;
            let mut pad = vec![0u8; usize::try_from(body_at - pad_at).map_err(|_| Error::Crypto)?];
            inner.seek(SeekFrom::Start(pad_at))?;
            if read_up_to(&mut inner, &mut pad)? < pad.len() || pad.iter().any(|b| *b != 0) {
                return Err(Error::Padding);
            }
        }
        // Room for a whole chunk and its tag, so the buffer never moves
        // (a reallocation would free plaintext without wiping it).
        let capacity = header.chunk_size() as usize + TAG_LEN;
        Ok(Self {
            inner,
            data_start: header.encoded_len() as u64,
            unlocked,
            pos: 0,
            cached: None,
            buf: Zeroizing::new(Vec::with_capacity(capacity)),
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

    /// The tensors, in the safetensors-aware layout (authenticated: the
    /// header was unlocked).
    pub fn tensors(&self) -> Option<&[TensorInfo]> {
        self.unlocked.header().tensor_index().map(TensorIndex::tensors)
    }

    /// Decrypts the tensor called `name`, reading and authenticating only
    /// its own chunks (safetensors-aware layout only).
    pub fn read_tensor(&mut self, name: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (begin, len) = self.tensor_span(name)?;
        let mut out = Zeroizing::new(vec![0u8; usize::try_from(len).map_err(|_| Error::Crypto)?]);
        self.read_tensor_at(begin, &mut out)?;
        Ok(out)
    }

    /// [`ModelReader::read_tensor`] into `out`, which must be exactly the
    /// tensor's size (e.g. a buffer mapped for the loader).
    pub fn read_tensor_into(&mut self, name: &str, out: &mut [u8]) -> Result<(), Error> {
        let (begin, len) = self.tensor_span(name)?;
        if out.len() as u64 != len {
            return Err(Error::InvalidParameter("the buffer is not the tensor's size"));
        }
        self.read_tensor_at(begin, out)
    }

    /// The plaintext offset and length of a tensor.
    fn tensor_span(&self, name: &str) -> Result<(u64, u64), Error> {
        let index = self.unlocked.header().tensor_index().ok_or(Error::NotSafetensors)?;
        let t = index.tensor(name).ok_or_else(|| Error::NoSuchTensor(name.to_owned()))?;
        let (begin, _) = t.data_offsets();
        Ok((index.raw().len() as u64 + begin, t.len()))
    }

    fn read_tensor_at(&mut self, begin: u64, out: &mut [u8]) -> Result<(), Error> {
        match self.read_at(begin, out) {
            Ok(n) if n == out.len() => Ok(()),
            Ok(_) => Err(Error::Crypto),
            Err(e) => {
                zeroize::Zeroize::zeroize(out);
                Err(e)
            }
        }
    }

    /// The chunk holding plaintext byte `at` (`at < len`): its index and
    /// the plaintext offset it starts at, or `None` for the tensor index
    /// (kept in clear, already authenticated).
    fn chunk_of(&self, at: u64) -> Result<Option<(u64, u64)>, Error> {
        let header = self.unlocked.header();
        match header.tensor_index() {
            None => {
                let chunk = u64::from(header.chunk_size());
                Ok(Some((at / chunk, at / chunk * chunk)))
            }
            Some(index) => {
                let block = index.raw().len() as u64;
                let Some(d) = at.checked_sub(block) else { return Ok(None) };
                let (i, start, _) = index.chunk_at(d).ok_or(Error::Crypto)?;
                Ok(Some((i, block + start)))
            }
        }
    }

    /// Reads plaintext at `offset` into `out`; returns the bytes read
    /// (fewer than `out.len()` only at the end of the plaintext).
    pub fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, Error> {
        let mut done = 0usize;
        while done < out.len() {
            let at = offset.saturating_add(done as u64);
            if at >= self.len() {
                break;
            }
            let (src, within) = match self.chunk_of(at)? {
                Some((index, start)) => {
                    self.load(index)?;
                    (self.buf.as_slice(), at - start)
                }
                None => (self.unlocked.header().tensor_index().map(TensorIndex::raw).unwrap_or_default(), at),
            };
            let within = usize::try_from(within).map_err(|_| Error::Crypto)?;
            let src = src.get(within..).unwrap_or_default();
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
        let header = self.unlocked.header();
        // Where the chunk's ciphertext starts, its length and, in the
        // safetensors-aware layout, where its tag is.
        let (start, len, tag_at) = match header.tensor_index() {
            None => {
                let stride = u64::from(header.chunk_size()) + TAG_LEN as u64;
                let start =
                    index.checked_mul(stride).and_then(|o| o.checked_add(self.data_start)).ok_or(Error::Crypto)?;
                (start, self.unlocked.chunk_plain_len(index) + TAG_LEN as u64, None)
            }
            Some(tensors) => {
                let (tags_at, body_at) = header.table_layout().ok_or(Error::Crypto)?;
                let t = tensors.tensor_of_chunk(index).ok_or(Error::Crypto)?;
                let chunk = u64::from(header.chunk_size());
                let data = t.data_offsets().0 + (index - t.first_chunk()) * chunk;
                let len = chunk.min(t.data_offsets().1 - data);
                (body_at + data, len, Some(tags_at + index * TAG_LEN as u64))
            }
        };
        let expected = header.file_len().unwrap_or(0);
        let len = usize::try_from(len).map_err(|_| Error::Crypto)?;
        // Resized, not cleared: the read overwrites the previous chunk's
        // plaintext without zero-filling the buffer first.
        self.buf.resize(len, 0);
        self.inner.seek(SeekFrom::Start(start))?;
        let got = read_up_to(&mut self.inner, &mut self.buf)?;
        if got < len {
            // The file shrank after it was opened.
            return Err(Error::Truncated { expected, found: start.saturating_add(got as u64) });
        }
        if let Some(tag_at) = tag_at {
            let mut tag = [0u8; TAG_LEN];
            self.inner.seek(SeekFrom::Start(tag_at))?;
            if read_up_to(&mut self.inner, &mut tag)? < TAG_LEN {
                return Err(Error::Truncated { expected, found: tag_at });
            }
            self.buf.extend_from_slice(&tag);
        }
        let last = self.unlocked.is_last(index);
        self.unlocked.payload.open(index, last, &mut self.buf).map_err(|_| self.unlocked.chunk_error(index))?;
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
