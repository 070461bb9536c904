//! Streaming encryption and decryption: Read in, Write out, one batch of
//! chunks in memory at a time (chunk size × threads).

use std::io::{Read, Seek, SeekFrom, Write};

use zeroize::Zeroizing;

use super::header::{DEFAULT_CHUNK_SIZE, Header, HeaderError, TAG_LEN};
use super::safetensors::{self, SafetensorsError};
use super::{Error, FileRandomness, ModelKey, UnlockedHeader};

/// How to encrypt.
#[derive(Clone, Debug)]
pub struct EncryptOptions {
    /// Plaintext bytes per chunk (4 KiB ..= 64 MiB).
    pub chunk_size: u32,
    /// Chunks sealed in parallel; memory use is about `chunk_size × threads`.
    pub threads: usize,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        }
    }
}

/// Encrypts `plaintext_len` bytes from `input` into `output` under `key`
/// (a fresh data key, salt and wrap nonce are drawn). Fails with
/// [`Error::InputLength`] if the input is shorter or longer than announced.
/// Returns the header written.
pub fn encrypt<R: Read, W: Write>(
    input: &mut R,
    plaintext_len: u64,
    output: &mut W,
    key: &ModelKey,
    options: &EncryptOptions,
) -> Result<Header, Error> {
    encrypt_with(input, plaintext_len, output, key, options, &FileRandomness::draw()?)
}

/// [`encrypt`] with given randomness (known-answer tests only; reusing
/// randomness across files would reuse keys).
pub(crate) fn encrypt_with<R: Read, W: Write>(
    input: &mut R,
    plaintext_len: u64,
    output: &mut W,
    key: &ModelKey,
    options: &EncryptOptions,
    rnd: &FileRandomness,
) -> Result<Header, Error> {
    let unlocked = Header::seal(plaintext_len, options.chunk_size, key, rnd, None)?;
    output.write_all(&unlocked.header.to_bytes())?;
    let threads = options.threads.clamp(1, 256);
    let count = unlocked.header.chunk_count();
    // One buffer per thread, reused for every batch: no allocation and no
    // zero-filling per chunk. Each holds plaintext only until it is sealed
    // in place, and is zeroized when dropped (also on an error). The
    // capacity leaves room for the tag, so the buffer never moves.
    let capacity = unlocked.header.chunk_size as usize + TAG_LEN + 64;
    let mut bufs: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(threads);
    let mut read = 0u64;
    let mut index = 0u64;
    while index < count {
        let first = index;
        let mut used = 0usize;
        while used < threads && index < count {
            if bufs.len() <= used {
                bufs.push(Zeroizing::new(Vec::with_capacity(capacity)));
            }
            let buf = bufs.get_mut(used).ok_or(Error::Crypto)?;
            buf.clear();
            let len = unlocked.chunk_plain_len(index);
            let got = read_exactly(input, len, buf)?;
            read = read.saturating_add(got);
            if got < len {
                return Err(Error::InputLength { expected: plaintext_len, found: read });
            }
            used += 1;
            index += 1;
        }
        let batch = bufs.get_mut(..used).ok_or(Error::Crypto)?;
        seal_batch(&unlocked, first, batch)?;
        for sealed in batch.iter() {
            output.write_all(sealed)?;
        }
    }
    let mut probe = [0u8; 1];
    if read_up_to(input, &mut probe)? != 0 {
        return Err(Error::InputLength { expected: plaintext_len, found: read.saturating_add(1) });
    }
    output.flush()?;
    Ok(unlocked.header)
}

/// Encrypts a safetensors file of `plaintext_len` bytes from `input` into
/// `output` with the safetensors-aware layout: its safetensors header is
/// parsed strictly ([`TensorIndex::parse`](super::TensorIndex::parse)) and
/// stays readable, each tensor is chunked on its own, and the tags go to a
/// table before the aligned body (written last, hence `Seek`). Returns the
/// header written.
pub fn encrypt_safetensors<R: Read, W: Write + Seek>(
    input: &mut R,
    plaintext_len: u64,
    output: &mut W,
    key: &ModelKey,
    options: &EncryptOptions,
) -> Result<Header, Error> {
    encrypt_safetensors_with(input, plaintext_len, output, key, options, &FileRandomness::draw()?)
}

/// [`encrypt_safetensors`] with given randomness (known-answer tests only).
pub(crate) fn encrypt_safetensors_with<R: Read, W: Write + Seek>(
    input: &mut R,
    plaintext_len: u64,
    output: &mut W,
    key: &ModelKey,
    options: &EncryptOptions,
    rnd: &FileRandomness,
) -> Result<Header, Error> {
    let truncated = || Error::Header(HeaderError::Safetensors(SafetensorsError::Truncated));
    let mut prefix = [0u8; safetensors::LEN_PREFIX];
    if read_up_to(input, &mut prefix)? < prefix.len() {
        return Err(truncated());
    }
    let json = safetensors::json_len(prefix).map_err(HeaderError::from)?;
    let block_len = json + safetensors::LEN_PREFIX as u64;
    if block_len > plaintext_len {
        return Err(truncated());
    }
    let mut block = prefix.to_vec();
    if read_exactly(input, json, &mut block)? < json {
        return Err(truncated());
    }
    let unlocked = Header::seal(plaintext_len, options.chunk_size, key, rnd, Some(&block))?;
    let header = &unlocked.header;
    let index = header.tensor_index().ok_or(Error::Crypto)?;
    let (tags_at, body_at) = header.table_layout().ok_or(Error::Crypto)?;
    let start = output.stream_position()?;
    output.write_all(&header.to_bytes())?;
    // The tag table (filled in at the end) and the zero padding.
    std::io::copy(&mut std::io::repeat(0).take(body_at - tags_at), output)?;
    let count = index.chunk_count();
    let mut tags = vec![0u8; usize::try_from(count).map_err(|_| Error::Crypto)?.saturating_mul(TAG_LEN)];
    let threads = options.threads.clamp(1, 256);
    let capacity = header.chunk_size as usize + TAG_LEN;
    let mut bufs: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(threads);
    let mut read = block_len;
    let mut chunks = index.chunks().enumerate().peekable();
    while chunks.peek().is_some() {
        let mut batch = Vec::with_capacity(threads);
        while batch.len() < threads {
            let Some((i, (_, len))) = chunks.next() else { break };
            if bufs.len() <= batch.len() {
                bufs.push(Zeroizing::new(Vec::with_capacity(capacity)));
            }
            let buf = bufs.get_mut(batch.len()).ok_or(Error::Crypto)?;
            buf.clear();
            let got = read_exactly(input, len, buf)?;
            read = read.saturating_add(got);
            if got < len {
                return Err(Error::InputLength { expected: plaintext_len, found: read });
            }
            batch.push(i as u64);
        }
        let sealed = bufs.get_mut(..batch.len()).ok_or(Error::Crypto)?;
        let batch_tags = seal_batch_separate(&unlocked, &batch, sealed)?;
        for ((i, buf), tag) in batch.iter().zip(sealed.iter()).zip(batch_tags) {
            output.write_all(buf)?;
            let at = usize::try_from(*i).map_err(|_| Error::Crypto)? * TAG_LEN;
            tags.get_mut(at..at + TAG_LEN).ok_or(Error::Crypto)?.copy_from_slice(&tag);
        }
    }
    let mut probe = [0u8; 1];
    if read_up_to(input, &mut probe)? != 0 {
        return Err(Error::InputLength { expected: plaintext_len, found: read.saturating_add(1) });
    }
    output.seek(SeekFrom::Start(start + tags_at))?;
    output.write_all(&tags)?;
    output.seek(SeekFrom::End(0))?;
    output.flush()?;
    Ok(unlocked.header.clone())
}

/// Seals the chunks `indices` held in `batch` (safetensors-aware layout),
/// in parallel when there is more than one; returns their tags.
fn seal_batch_separate(
    unlocked: &UnlockedHeader,
    indices: &[u64],
    batch: &mut [Zeroizing<Vec<u8>>],
) -> Result<Vec<[u8; TAG_LEN]>, Error> {
    if let ([index], [buf]) = (indices, &mut *batch) {
        return Ok(vec![unlocked.payload.seal_separate(*index, unlocked.is_last(*index), buf)?]);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = indices
            .iter()
            .zip(batch.iter_mut())
            .map(|(index, buf)| {
                let last = unlocked.is_last(*index);
                let payload = &unlocked.payload;
                scope.spawn(move || payload.seal_separate(*index, last, buf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| Error::Crypto)?).collect()
    })
}

/// Seals chunks `first, first + 1, ...` held in `batch`, in parallel when
/// there is more than one.
fn seal_batch(unlocked: &UnlockedHeader, first: u64, batch: &mut [Zeroizing<Vec<u8>>]) -> Result<(), Error> {
    if let [buf] = batch {
        return unlocked.payload.seal(first, unlocked.is_last(first), buf);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (first..)
            .zip(batch.iter_mut())
            .map(|(index, buf)| {
                let last = unlocked.is_last(index);
                let payload = &unlocked.payload;
                scope.spawn(move || payload.seal(index, last, buf))
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| Error::Crypto)?)
    })
}

/// Appends up to `len` bytes of `input` to `buf`; returns how many came.
fn read_exactly<R: Read>(input: &mut R, len: u64, buf: &mut Vec<u8>) -> Result<u64, Error> {
    let got = input.by_ref().take(len).read_to_end(buf)?;
    Ok(got as u64)
}

/// Decrypts a whole file from `input` into `output`, chunk by chunk: each
/// chunk is written only after it authenticated, but a failure at chunk N
/// leaves chunks before N written, so write to a temporary place and keep
/// it only on `Ok` (as `kbs-attester model decrypt` does). Returns the
/// plaintext length.
pub fn decrypt<R: Read, W: Write>(input: &mut R, output: &mut W, key: &ModelKey) -> Result<u64, Error> {
    let header = Header::read_from(input)?;
    header.unlock(key)?.decrypt_body(input, output)
}

impl UnlockedHeader {
    /// Decrypts the body that follows this header in `input` (positioned
    /// just after the header).
    pub fn decrypt_body<R: Read, W: Write>(&self, input: &mut R, output: &mut W) -> Result<u64, Error> {
        if self.header.tensor_index().is_some() {
            return self.decrypt_tensors(input, output);
        }
        let expected = self.header.file_len().ok_or(Error::Crypto)?;
        let mut consumed = self.header.encoded_len() as u64;
        let mut buf = Zeroizing::new(Vec::new());
        for index in 0..self.header.chunk_count() {
            let len = usize::try_from(self.chunk_plain_len(index)).map_err(|_| Error::Crypto)? + TAG_LEN;
            buf.clear();
            buf.resize(len, 0);
            let got = read_up_to(input, &mut buf)?;
            consumed = consumed.saturating_add(got as u64);
            if got < len {
                return Err(Error::Truncated { expected, found: consumed });
            }
            self.payload.open(index, self.is_last(index), &mut buf)?;
            output.write_all(&buf)?;
        }
        let mut probe = [0u8; 1];
        if read_up_to(input, &mut probe)? != 0 {
            return Err(Error::TrailingData);
        }
        output.flush()?;
        Ok(self.header.plaintext_len)
    }
}

impl UnlockedHeader {
    /// [`UnlockedHeader::decrypt_body`] for the safetensors-aware layout:
    /// the tensor index (authenticated by the unlocked header), then the
    /// tag table, the zero padding and the chunks.
    fn decrypt_tensors<R: Read, W: Write>(&self, input: &mut R, output: &mut W) -> Result<u64, Error> {
        let index = self.header.tensor_index().ok_or(Error::NotSafetensors)?;
        let expected = self.header.file_len().ok_or(Error::Crypto)?;
        let (tags_at, body_at) = self.header.table_layout().ok_or(Error::Crypto)?;
        let mut consumed = tags_at;
        // At most 16 × 2^22 bytes (the file_len check), for a header whose
        // key slot opened.
        let mut tags = vec![0u8; usize::try_from(body_at - tags_at).map_err(|_| Error::Crypto)?];
        let got = read_up_to(input, &mut tags)?;
        consumed = consumed.saturating_add(got as u64);
        if got < tags.len() {
            return Err(Error::Truncated { expected, found: consumed });
        }
        let table_len = usize::try_from(index.chunk_count()).map_err(|_| Error::Crypto)? * TAG_LEN;
        if tags.get(table_len..).unwrap_or_default().iter().any(|b| *b != 0) {
            return Err(Error::Padding);
        }
        output.write_all(index.raw())?;
        let mut buf = Zeroizing::new(Vec::new());
        for (i, (_, len)) in index.chunks().enumerate() {
            let i = i as u64;
            let len = usize::try_from(len).map_err(|_| Error::Crypto)?;
            buf.clear();
            buf.resize(len, 0);
            let got = read_up_to(input, &mut buf)?;
            consumed = consumed.saturating_add(got as u64);
            if got < len {
                return Err(Error::Truncated { expected, found: consumed });
            }
            let at = usize::try_from(i).map_err(|_| Error::Crypto)? * TAG_LEN;
            buf.extend_from_slice(tags.get(at..at + TAG_LEN).ok_or(Error::Crypto)?);
            self.payload.open(i, self.is_last(i), &mut buf).map_err(|_| self.chunk_error(i))?;
            output.write_all(&buf)?;
        }
        let mut probe = [0u8; 1];
        if read_up_to(input, &mut probe)? != 0 {
            return Err(Error::TrailingData);
        }
        output.flush()?;
        Ok(self.header.plaintext_len)
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub(crate) fn read_up_to<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match input.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}
