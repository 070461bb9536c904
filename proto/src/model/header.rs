//! The header of an encrypted model file: layout, parser and encoder.
//!
//! All integers are big-endian. The header is a content part (88 bytes, or
//! 128 with the safetensors-aware layout; bound into every chunk's key)
//! followed by a key slot (rewritten when the model key rotates) and, in the
//! safetensors-aware layout, the file's own safetensors header (the tensor
//! index), kept readable. See `docs/model-format.md` for the tables.

use std::io::Read;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::safetensors::{self, SafetensorsError, TensorIndex};

/// First eight bytes of every encrypted model file.
pub const MAGIC: [u8; 8] = *b"KBSMODEL";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Flag bit 0: the safetensors-aware layout (readable, authenticated tensor
/// index; chunks cut at tensor starts; tags in a table; the body aligned).
pub const FLAG_SAFETENSORS: u16 = 0x0001;
/// Flag bits this version understands. A header with any other bit set is
/// refused, so older readers never misread a newer layout.
pub const KNOWN_FLAGS: u16 = FLAG_SAFETENSORS;
/// Alignment of the encrypted body in the safetensors-aware layout: a
/// tensor's ciphertext sits at the same offset modulo 4096 as its data
/// does in the data part, so a mapped file keeps every tensor's alignment.
pub const BODY_ALIGN: u64 = 4096;
/// Most chunks of a file in the safetensors-aware layout (its tag table, 16
/// bytes a chunk, is held in memory while decrypting: at most 64 MiB).
pub const MAX_TABLE_CHUNKS: u64 = 1 << 22;
/// Length of the safetensors extension of the content part.
pub const INDEX_EXT_LEN: usize = 8 + DIGEST_LEN;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size accepted (bounds a reader's memory).
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;
/// The chunk size writers use unless told otherwise (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Longest secret name in a header (the broker's own limit).
pub const MAX_SECRET_NAME_LEN: usize = 256;
/// Length of the salt, the data-key commitment and the key commitment.
pub const DIGEST_LEN: usize = 32;
/// Length of an AES-256-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-256-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of a data key or a model key.
pub const KEY_LEN: usize = 32;
/// Length of the wrapped data key (ciphertext and tag).
pub const WRAPPED_KEY_LEN: usize = KEY_LEN + TAG_LEN;
/// Length of the content part of the header.
pub const CONTENT_LEN: usize = 8 + 2 + 2 + 4 + 8 + DIGEST_LEN + DIGEST_LEN;
/// Offset of the data-key commitment inside the content part.
pub const COMMITMENT_OFFSET: usize = CONTENT_LEN - DIGEST_LEN;
/// Length of the key slot without the name bytes.
const SLOT_FIXED_LEN: usize = 2 + 8 + DIGEST_LEN + NONCE_LEN + WRAPPED_KEY_LEN;
/// Largest possible header, without the tensor index that follows it in
/// the safetensors-aware layout (at most 8 + 16 MiB more).
pub const MAX_HEADER_LEN: usize = CONTENT_LEN + INDEX_EXT_LEN + SLOT_FIXED_LEN + MAX_SECRET_NAME_LEN;

/// Why a header was refused before any key was used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The input ends inside the header.
    #[error("the header is truncated")]
    Truncated,
    /// The first eight bytes are not `KBSMODEL`.
    #[error("not an encrypted model file (bad magic)")]
    BadMagic,
    /// A format version this code does not know.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// Flag bits this code does not know.
    #[error("unsupported flags {0:#06x}")]
    UnsupportedFlags(u16),
    /// A chunk size outside 4 KiB..=64 MiB.
    #[error("chunk size {0} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    /// The plaintext needs more chunks than the 32-bit chunk index allows,
    /// or the file length does not fit in 64 bits.
    #[error("plaintext length {0} is too large for this chunk size")]
    TooLarge(u64),
    /// The secret name is empty, longer than 256 bytes or has a character
    /// outside `[A-Za-z0-9._/-]`.
    #[error("invalid secret name")]
    SecretName,
    /// Secret version 0 (broker versions start at 1).
    #[error("secret version 0")]
    ZeroVersion,
    /// The tensor index is not the one the header's digest names (the
    /// safetensors header was edited).
    #[error("the tensor index does not match the header's digest (it was modified)")]
    IndexDigest,
    /// The tensor index (the file's safetensors header) is malformed.
    /// (Not a `source`: the message already says everything, so an error
    /// chain does not repeat it.)
    #[error("invalid safetensors header: {0}")]
    Safetensors(SafetensorsError),
}

impl From<SafetensorsError> for HeaderError {
    fn from(e: SafetensorsError) -> Self {
        HeaderError::Safetensors(e)
    }
}

/// The tensor index of a safetensors-layout file: its length and digest
/// (content-part fields) and, once read, the checked index.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IndexRef {
    pub(crate) len: u64,
    pub(crate) digest: [u8; DIGEST_LEN],
    pub(crate) index: Arc<TensorIndex>,
}

/// A parsed header. Its fields are well-formed but NOT authenticated: it
/// becomes trustworthy only through [`Header::unlock`](crate::model::Header::unlock).
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub(crate) flags: u16,
    pub(crate) chunk_size: u32,
    pub(crate) plaintext_len: u64,
    pub(crate) salt: [u8; DIGEST_LEN],
    pub(crate) commitment: [u8; DIGEST_LEN],
    pub(crate) secret_name: String,
    pub(crate) secret_version: u64,
    pub(crate) key_commitment: [u8; DIGEST_LEN],
    pub(crate) wrap_nonce: [u8; NONCE_LEN],
    pub(crate) wrapped_key: [u8; WRAPPED_KEY_LEN],
    /// Present exactly when [`FLAG_SAFETENSORS`] is set.
    pub(crate) index: Option<IndexRef>,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("flags", &self.flags)
            .field("chunk_size", &self.chunk_size)
            .field("plaintext_len", &self.plaintext_len)
            .field("secret_name", &self.secret_name)
            .field("secret_version", &self.secret_version)
            .field("index", &self.index.as_ref().map(|i| &i.index))
            .finish_non_exhaustive()
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeaderError> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(HeaderError::Truncated)?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HeaderError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| HeaderError::Truncated)
    }

    fn u16(&mut self) -> Result<u16, HeaderError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, HeaderError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, HeaderError> {
        self.array().map(u64::from_be_bytes)
    }
}

/// Whether `name` is a secret name a header may carry.
pub(crate) fn valid_secret_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_LEN
        && name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Number of chunks for a plaintext length, or `None` if it needs more than
/// 2^32 (the chunk index is 32 bits). An empty plaintext is one empty chunk.
pub(crate) fn chunk_count(plaintext_len: u64, chunk_size: u32) -> Option<u64> {
    let size = u64::from(chunk_size);
    let count = if plaintext_len == 0 { 1 } else { plaintext_len.div_ceil(size) };
    (count <= u64::from(u32::MAX) + 1).then_some(count)
}

impl Header {
    /// Parses a header from the start of `bytes`; returns it and its length.
    /// Checks structure only (magic, version, flags, ranges); no key is used.
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize), HeaderError> {
        let mut c = Cursor { rest: bytes };
        if c.array::<8>()? != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = c.u16()?;
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = c.u16()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::UnsupportedFlags(flags));
        }
        let chunk_size = c.u32()?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(HeaderError::ChunkSize(chunk_size));
        }
        let plaintext_len = c.u64()?;
        let salt = c.array()?;
        let commitment = c.array()?;
        let index_fields = if flags & FLAG_SAFETENSORS != 0 {
            let len = c.u64()?;
            let json = len.saturating_sub(safetensors::LEN_PREFIX as u64);
            if !(2..=safetensors::MAX_JSON_LEN).contains(&json) {
                return Err(SafetensorsError::HeaderLength(json).into());
            }
            if len > plaintext_len {
                return Err(SafetensorsError::DataLength { covered: len, data: plaintext_len }.into());
            }
            Some((len, c.array::<DIGEST_LEN>()?))
        } else {
            None
        };
        let name_len = usize::from(c.u16()?);
        if name_len > MAX_SECRET_NAME_LEN {
            return Err(HeaderError::SecretName);
        }
        let name = c.take(name_len)?;
        if !valid_secret_name(name) {
            return Err(HeaderError::SecretName);
        }
        let secret_name = String::from_utf8(name.to_vec()).map_err(|_| HeaderError::SecretName)?;
        let secret_version = c.u64()?;
        if secret_version == 0 {
            return Err(HeaderError::ZeroVersion);
        }
        let key_commitment = c.array()?;
        let wrap_nonce = c.array()?;
        let wrapped_key = c.array()?;
        let index = match index_fields {
            None => None,
            Some((len, digest)) => {
                let block = c.take(usize::try_from(len).map_err(|_| HeaderError::Truncated)?)?;
                if Sha256::digest(block).as_slice() != digest {
                    return Err(HeaderError::IndexDigest);
                }
                let index = TensorIndex::parse(block, plaintext_len - len, chunk_size)?;
                Some(IndexRef { len, digest, index: Arc::new(index) })
            }
        };
        let header = Header {
            flags,
            chunk_size,
            plaintext_len,
            salt,
            commitment,
            secret_name,
            secret_version,
            key_commitment,
            wrap_nonce,
            wrapped_key,
            index,
        };
        header.file_len().ok_or(HeaderError::TooLarge(plaintext_len))?;
        let len = bytes.len() - c.rest.len();
        Ok((header, len))
    }

    /// Reads exactly one header from `input` (and nothing after it; with
    /// the safetensors-aware layout, the tensor index is part of it).
    pub fn read_from(input: &mut impl Read) -> Result<Header, crate::model::Error> {
        // Read the parts in order, checking what has arrived before reading
        // further, so garbage input is refused with the most specific
        // reason and no length in it is trusted before its checks.
        let mut buf = vec![0u8; CONTENT_LEN];
        read_full(input, &mut buf)?;
        expect_more(&buf)?;
        let flags = buf.get(10..12).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(u16::from_be_bytes);
        let ext = if flags.is_some_and(|f| f & FLAG_SAFETENSORS != 0) { INDEX_EXT_LEN } else { 0 };
        read_more(input, &mut buf, ext + 2)?;
        expect_more(&buf)?;
        let name_len = buf
            .get(CONTENT_LEN + ext..)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map(u16::from_be_bytes)
            .ok_or(HeaderError::Truncated)?;
        if usize::from(name_len) > MAX_SECRET_NAME_LEN {
            return Err(HeaderError::SecretName.into());
        }
        read_more(input, &mut buf, usize::from(name_len) + SLOT_FIXED_LEN - 2)?;
        if ext != 0 {
            expect_more(&buf)?;
            let index_len = buf
                .get(CONTENT_LEN..CONTENT_LEN + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or(HeaderError::Truncated)?;
            // Bounded by the parse above (at most 8 + 16 MiB).
            read_more(input, &mut buf, usize::try_from(index_len).map_err(|_| HeaderError::Truncated)?)?;
        }
        let (header, _) = Header::parse(&buf)?;
        Ok(header)
    }

    /// The encoded header (with the safetensors-aware layout, followed by
    /// the tensor index).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.wrap_aad();
        out.extend_from_slice(&self.wrapped_key);
        if let Some(i) = &self.index {
            out.extend_from_slice(i.index.raw());
        }
        out
    }

    /// The content part (bound into every chunk): 88 bytes, or 128 with
    /// the safetensors extension (index length and digest).
    pub(crate) fn content_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONTENT_LEN + INDEX_EXT_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.plaintext_len.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.commitment);
        if let Some(i) = &self.index {
            out.extend_from_slice(&i.len.to_be_bytes());
            out.extend_from_slice(&i.digest);
        }
        out
    }

    /// `u16(name_len) || name || u64(version)`: the key slot's identity.
    pub(crate) fn slot_info(&self) -> Vec<u8> {
        slot_info(&self.secret_name, self.secret_version)
    }

    /// Bytes covered by the key-wrap AEAD: everything before the wrapped key.
    pub(crate) fn wrap_aad(&self) -> Vec<u8> {
        let mut out = self.content_bytes();
        out.extend_from_slice(&self.slot_info());
        out.extend_from_slice(&self.key_commitment);
        out.extend_from_slice(&self.wrap_nonce);
        out
    }

    /// Length of the encoded header (with the tensor index, if any).
    pub fn encoded_len(&self) -> usize {
        let ext = if self.index.is_some() { INDEX_EXT_LEN } else { 0 };
        let index = self.index.as_ref().map_or(0, |i| i.index.raw().len());
        CONTENT_LEN + ext + SLOT_FIXED_LEN + self.secret_name.len() + index
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        match &self.index {
            Some(i) => i.index.chunk_count(),
            None => chunk_count(self.plaintext_len, self.chunk_size).unwrap_or(0),
        }
    }

    /// The tensor index (the file's safetensors header, readable without
    /// the key but authenticated only once the header is unlocked), if the
    /// file has the safetensors-aware layout.
    pub fn tensor_index(&self) -> Option<&TensorIndex> {
        self.index.as_ref().map(|i| i.index.as_ref())
    }

    /// With the safetensors-aware layout: where the tag table starts and
    /// where the (aligned) body starts, or `None` if it overflows.
    pub(crate) fn table_layout(&self) -> Option<(u64, u64)> {
        let tags_at = self.encoded_len() as u64;
        let tags = self.chunk_count().checked_mul(TAG_LEN as u64)?;
        let body_at = tags_at.checked_add(tags)?.checked_next_multiple_of(BODY_ALIGN)?;
        Some((tags_at, body_at))
    }

    /// Length of the whole encrypted file, or `None` if it overflows (or,
    /// with the safetensors-aware layout, has too many chunks).
    pub fn file_len(&self) -> Option<u64> {
        match &self.index {
            Some(i) => {
                if i.index.chunk_count() > MAX_TABLE_CHUNKS {
                    return None;
                }
                let (_, body_at) = self.table_layout()?;
                body_at.checked_add(i.index.data_len())
            }
            None => {
                let chunks = chunk_count(self.plaintext_len, self.chunk_size)?;
                let tags = chunks.checked_mul(TAG_LEN as u64)?;
                self.plaintext_len.checked_add(tags)?.checked_add(self.encoded_len() as u64)
            }
        }
    }

    /// Format flags (0, or [`FLAG_SAFETENSORS`]).
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Plaintext bytes per chunk (the last chunk may be shorter).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Length of the decrypted file.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// The broker secret whose value is the model key.
    pub fn secret_name(&self) -> &str {
        &self.secret_name
    }

    /// The version of that secret the data key is wrapped under.
    pub fn secret_version(&self) -> u64 {
        self.secret_version
    }
}

/// `u16(name_len) || name || u64(version)`.
pub(crate) fn slot_info(name: &str, version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + name.len() + 8);
    // Names are at most 256 bytes (checked before any header is built).
    out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out
}

/// Refuses `buf` unless it is a valid start of a header (only more bytes
/// are missing).
fn expect_more(buf: &[u8]) -> Result<(), crate::model::Error> {
    match Header::parse(buf) {
        Err(HeaderError::Truncated) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => Err(HeaderError::Truncated.into()),
    }
}

/// Appends exactly `n` bytes of `input` to `buf`.
fn read_more(input: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> Result<(), crate::model::Error> {
    let start = buf.len();
    buf.resize(start + n, 0);
    read_full(input, buf.get_mut(start..).ok_or(HeaderError::Truncated)?)
}

/// Fills `buf` or reports a truncated header.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<(), crate::model::Error> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HeaderError::Truncated.into()),
        Err(e) => Err(e.into()),
    }
}
