//! Streaming encryption and decryption: Read in, Write out, a bounded
//! number of chunks in memory at a time (2 × chunk size × threads; see
//! `pipeline`).

use std::io::{Read, Seek, SeekFrom, Write};

use super::header::{DEFAULT_CHUNK_SIZE, Header, HeaderError, TAG_LEN};
use super::safetensors::{self, SafetensorsError};
use super::{Error, FileRandomness, ModelKey, UnlockedHeader, pipeline};

/// How to encrypt.
#[derive(Clone, Debug)]
pub struct EncryptOptions {
    /// Plaintext bytes per chunk (4 KiB ..= 64 MiB).
    pub chunk_size: u32,
    /// Chunks sealed in parallel; memory use is about
    /// `2 × chunk_size × threads`.
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
    // Each buffer holds plaintext only until it is sealed in place; the
    // capacity leaves room for the tag, so it never moves.
    let capacity = unlocked.header.chunk_size as usize + TAG_LEN;
    let mut read = 0u64;
    pipeline::run(
        unlocked.header.chunk_count(),
        options.threads,
        capacity,
        |index, buf| {
            let len = unlocked.chunk_plain_len(index);
            let got = fill(input, len, buf)?;
            read = read.saturating_add(got);
            if got < len {
                return Err(Error::InputLength { expected: plaintext_len, found: read });
            }
            Ok(())
        },
        |index, buf| unlocked.payload.seal(index, unlocked.is_last(index), buf),
        |_, sealed| Ok(output.write_all(sealed)?),
    )?;
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
    let mut read = block_len;
    let mut chunks = index.chunks();
    pipeline::run(
        count,
        options.threads,
        header.chunk_size as usize + TAG_LEN,
        |_, buf| {
            let (_, len) = chunks.next().ok_or(Error::Crypto)?;
            let got = fill(input, len, buf)?;
            read = read.saturating_add(got);
            if got < len {
                return Err(Error::InputLength { expected: plaintext_len, found: read });
            }
            Ok(())
        },
        |index, buf| {
            let tag = unlocked.payload.seal_separate(index, unlocked.is_last(index), buf)?;
            buf.extend_from_slice(&tag);
            Ok(())
        },
        |index, sealed| {
            let (body, tag) = sealed.split_at(sealed.len().checked_sub(TAG_LEN).ok_or(Error::Crypto)?);
            output.write_all(body)?;
            let at = usize::try_from(index).map_err(|_| Error::Crypto)? * TAG_LEN;
            tags.get_mut(at..at + TAG_LEN).ok_or(Error::Crypto)?.copy_from_slice(tag);
            Ok(())
        },
    )?;
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

/// Appends up to `len` bytes of `input` to `buf`; returns how many came.
fn read_exactly<R: Read>(input: &mut R, len: u64, buf: &mut Vec<u8>) -> Result<u64, Error> {
    let got = input.by_ref().take(len).read_to_end(buf)?;
    Ok(got as u64)
}

/// Replaces the contents of `buf` with up to `len` bytes of `input`;
/// returns how many came. The buffer is resized, not cleared, so a reused
/// buffer is not zero-filled again: the read overwrites it, and on a short
/// read the caller fails (the stale tail is never used).
fn fill<R: Read>(input: &mut R, len: u64, buf: &mut Vec<u8>) -> Result<u64, Error> {
    buf.resize(usize::try_from(len).map_err(|_| Error::Crypto)?, 0);
    let got = read_up_to(input, buf)?;
    Ok(got as u64)
}

/// How to decrypt.
#[derive(Clone, Debug)]
pub struct DecryptOptions {
    /// Chunks opened in parallel; memory use is about
    /// `2 × chunk_size × threads`.
    pub threads: usize,
}

impl Default for DecryptOptions {
    fn default() -> Self {
        Self { threads: std::thread::available_parallelism().map(usize::from).unwrap_or(1) }
    }
}

/// Decrypts a whole file from `input` into `output`, chunk by chunk: each
/// chunk is written only after it authenticated, but a failure at chunk N
/// leaves chunks before N written, so write to a temporary place and keep
/// it only on `Ok` (as `kbs-attester model decrypt` does). Returns the
/// plaintext length.
pub fn decrypt<R: Read, W: Write>(input: &mut R, output: &mut W, key: &ModelKey) -> Result<u64, Error> {
    decrypt_with(input, output, key, &DecryptOptions::default())
}

/// [`decrypt`] with options (the number of threads). The output, and the
/// error on a damaged file, do not depend on the number of threads.
pub fn decrypt_with<R: Read, W: Write>(
    input: &mut R,
    output: &mut W,
    key: &ModelKey,
    options: &DecryptOptions,
) -> Result<u64, Error> {
    let header = Header::read_from(input)?;
    header.unlock(key)?.decrypt_body_with(input, output, options)
}

impl UnlockedHeader {
    /// Decrypts the body that follows this header in `input` (positioned
    /// just after the header), on every core.
    pub fn decrypt_body<R: Read, W: Write>(&self, input: &mut R, output: &mut W) -> Result<u64, Error> {
        self.decrypt_body_with(input, output, &DecryptOptions::default())
    }

    /// [`UnlockedHeader::decrypt_body`] with options.
    pub fn decrypt_body_with<R: Read, W: Write>(
        &self,
        input: &mut R,
        output: &mut W,
        options: &DecryptOptions,
    ) -> Result<u64, Error> {
        if self.header.tensor_index().is_some() {
            return self.decrypt_tensors(input, output, options);
        }
        let expected = self.header.file_len().ok_or(Error::Crypto)?;
        let mut consumed = self.header.encoded_len() as u64;
        pipeline::run(
            self.header.chunk_count(),
            options.threads,
            self.header.chunk_size as usize + TAG_LEN,
            |index, buf| {
                let len = self.chunk_plain_len(index) + TAG_LEN as u64;
                let got = fill(input, len, buf)?;
                consumed = consumed.saturating_add(got);
                if got < len {
                    return Err(Error::Truncated { expected, found: consumed });
                }
                Ok(())
            },
            |index, buf| self.payload.open(index, self.is_last(index), buf),
            |_, plain| Ok(output.write_all(plain)?),
        )?;
        let mut probe = [0u8; 1];
        if read_up_to(input, &mut probe)? != 0 {
            return Err(Error::TrailingData);
        }
        output.flush()?;
        Ok(self.header.plaintext_len)
    }

    /// [`UnlockedHeader::decrypt_body`] for the safetensors-aware layout:
    /// the tensor index (authenticated by the unlocked header), then the
    /// tag table, the zero padding and the chunks.
    fn decrypt_tensors<R: Read, W: Write>(
        &self,
        input: &mut R,
        output: &mut W,
        options: &DecryptOptions,
    ) -> Result<u64, Error> {
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
        let mut chunks = index.chunks();
        pipeline::run(
            index.chunk_count(),
            options.threads,
            self.header.chunk_size as usize + TAG_LEN,
            |i, buf| {
                let (_, len) = chunks.next().ok_or(Error::Crypto)?;
                let got = fill(input, len, buf)?;
                consumed = consumed.saturating_add(got);
                if got < len {
                    return Err(Error::Truncated { expected, found: consumed });
                }
                let at = usize::try_from(i).map_err(|_| Error::Crypto)? * TAG_LEN;
                buf.extend_from_slice(tags.get(at..at + TAG_LEN).ok_or(Error::Crypto)?);
                Ok(())
            },
            |i, buf| self.payload.open(i, self.is_last(i), buf).map_err(|_| self.chunk_error(i)),
            |_, plain| Ok(output.write_all(plain)?),
        )?;
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
