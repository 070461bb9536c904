//! Encrypted model files: envelope encryption of large files (model
//! weights) under a key the broker releases only to attested guests.
//!
//! The full byte layout is in `docs/model-format.md`; in short:
//!
//! * each file has its own random 256-bit **data key**; the header carries it
//!   wrapped (AES-256-GCM) under the **model key**, a secret in the broker's
//!   store that the header names, with its version. Rotating the model key
//!   rewrites headers only ([`Header::rewrap`]);
//! * the body is a STREAM-style chunked AEAD: AES-256-GCM with a per-file
//!   key derived by HKDF-SHA256 from the data key and the header's content
//!   part, nonce = 7-byte per-file prefix || u32 chunk index || last-chunk
//!   flag. Reordered, dropped, duplicated, truncated, appended or spliced
//!   chunks fail to authenticate;
//! * both keys are committed (an HKDF-derived value in the header, compared
//!   in constant time before anything is decrypted), so a wrong key is
//!   refused with [`Error::WrongKey`] and never yields output;
//! * any byte range can be decrypted alone ([`ModelReader`]);
//! * a `.safetensors` file can use the safetensors-aware layout
//!   ([`encrypt_safetensors`], flag [`FLAG_SAFETENSORS`]): its safetensors
//!   header stays readable (a [`TensorIndex`], parsed strictly by
//!   [`TensorIndex::parse`]) and is bound into the header by its SHA-256
//!   digest; chunks are cut at tensor starts, their tags kept in a table
//!   before the body, and the body aligned to 4096 bytes, so one tensor
//!   decrypts alone ([`ModelReader::read_tensor`]) and the ciphertext keeps
//!   every tensor's alignment.
//!
//! Threat model: the encrypted files are stored and moved by parties who
//! must learn nothing of the weights and must not be able to change them
//! unnoticed; only the holder of the model key (the operator, and guests the
//! broker released it to) can decrypt or produce valid files. Header fields
//! are parsed without trust ([`Header::parse`]) and become usable only
//! through [`Header::unlock`], which checks, in order:
//!
//! 1. the key's secret name equals the header's ([`Error::SecretMismatch`]);
//! 2. the key's version equals the header's ([`Error::WrongSecretVersion`]);
//! 3. the key commitment ([`Error::WrongKey`]);
//! 4. the key-wrap tag, which covers every header byte before it
//!    ([`Error::HeaderAuthentication`]);
//! 5. the data-key commitment ([`Error::DataKeyCommitment`]).
//!
//! Then every chunk is authenticated before its plaintext is returned
//! ([`Error::ChunkAuthentication`]), and the file length must match the
//! header exactly ([`Error::Truncated`], [`Error::TrailingData`]).

use std::fmt;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use sha2::Digest;
use zeroize::Zeroizing;

use self::crypto::PayloadKey;
pub use self::header::{
    BODY_ALIGN, CONTENT_LEN, DEFAULT_CHUNK_SIZE, FLAG_SAFETENSORS, FORMAT_VERSION, Header, HeaderError, INDEX_EXT_LEN,
    KEY_LEN, KNOWN_FLAGS, MAGIC, MAX_CHUNK_SIZE, MAX_HEADER_LEN, MAX_SECRET_NAME_LEN, MAX_TABLE_CHUNKS, MIN_CHUNK_SIZE,
    TAG_LEN,
};
use self::header::{DIGEST_LEN, IndexRef, NONCE_LEN, valid_secret_name};
pub use self::reader::ModelReader;
pub use self::safetensors::{Dtype, SafetensorsError, TensorIndex, TensorInfo};
pub use self::stream::{DecryptOptions, EncryptOptions, decrypt, decrypt_with, encrypt, encrypt_safetensors};

mod crypto;
mod header;
mod pipeline;
mod reader;
pub mod safetensors;
mod stream;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_safetensors;

/// Why a model file could not be encrypted, decrypted or rewrapped. Each
/// kind of tampering has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The header is malformed (checked before any key is used).
    #[error("invalid header: {0}")]
    Header(#[from] HeaderError),
    /// The key is for a different secret than the header names.
    #[error("the file needs secret {header:?}, the key is {key:?}")]
    SecretMismatch {
        /// The name in the header.
        header: String,
        /// The name the key was given for.
        key: String,
    },
    /// The key is another version of the secret than the header names.
    #[error("the file needs version {header} of its secret, the key is version {key}")]
    WrongSecretVersion {
        /// The version in the header.
        header: u64,
        /// The version of the key.
        key: u64,
    },
    /// The key does not match the header's key commitment.
    #[error("wrong key (the key commitment does not match)")]
    WrongKey,
    /// The header was modified: the key-wrap tag does not verify.
    #[error("the header was modified (it does not authenticate)")]
    HeaderAuthentication,
    /// The unwrapped data key does not match its commitment (the file was
    /// made by a faulty or malicious writer holding the model key).
    #[error("the data key does not match its commitment")]
    DataKeyCommitment,
    /// A chunk failed to authenticate: modified, reordered, duplicated, or
    /// taken from another file.
    #[error("chunk {index} failed to authenticate")]
    ChunkAuthentication {
        /// Index of the chunk, from 0.
        index: u64,
    },
    /// In the safetensors-aware layout, a chunk of a tensor failed to
    /// authenticate: modified, or swapped with a chunk of another tensor.
    #[error("chunk {index} (tensor {tensor:?}) failed to authenticate")]
    TensorChunkAuthentication {
        /// The tensor the chunk belongs to.
        tensor: String,
        /// Index of the chunk in the file, from 0.
        index: u64,
    },
    /// The padding before the aligned body is not all zero.
    #[error("the padding before the body is not zero")]
    Padding,
    /// No tensor of that name in the file.
    #[error("no tensor {0:?} in the file")]
    NoSuchTensor(String),
    /// A per-tensor operation on a file without the safetensors-aware layout.
    #[error("the file does not have the safetensors-aware layout")]
    NotSafetensors,
    /// The file is shorter than its header says.
    #[error("truncated: the header implies {expected} bytes, found {found}")]
    Truncated {
        /// Length the header implies.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Bytes follow the last chunk.
    #[error("trailing data after the last chunk")]
    TrailingData,
    /// While encrypting, the input was not as long as announced.
    #[error("the input is {found} bytes, {expected} were announced")]
    InputLength {
        /// Announced length.
        expected: u64,
        /// Bytes read (at least).
        found: u64,
    },
    /// A parameter is out of range (chunk size, key length, secret name).
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// Reading or writing failed.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// The cryptographic library failed (random generator, key setup). A
    /// bug or a broken platform, never caused by the input.
    #[error("cryptographic failure")]
    Crypto,
}

/// A model key: the value of one version of one broker secret. Zeroized on
/// drop; `Debug` shows name and version only.
pub struct ModelKey {
    name: String,
    version: u64,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelKey")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ModelKey {
    /// A key from its 32 bytes, for secret `name` at `version`.
    pub fn new(name: &str, version: u64, key: &[u8]) -> Result<Self, Error> {
        if !valid_secret_name(name.as_bytes()) {
            return Err(Error::InvalidParameter("secret name"));
        }
        if version == 0 {
            return Err(Error::InvalidParameter("secret version 0"));
        }
        let key = <[u8; KEY_LEN]>::try_from(key).map_err(|_| Error::InvalidParameter("model key is not 32 bytes"))?;
        Ok(Self { name: name.to_owned(), version, key: Zeroizing::new(key) })
    }

    /// A fresh random key.
    pub fn generate(name: &str, version: u64) -> Result<Self, Error> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| Error::Crypto)?;
        Self::new(name, version, bytes.as_ref())
    }

    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The secret's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The key bytes (to upload them to the broker).
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The same key bytes under another version number (after an upload
    /// assigned it).
    pub fn with_version(&self, version: u64) -> Result<Self, Error> {
        Self::new(&self.name, version, self.key.as_ref())
    }
}

/// The random inputs of one file. Drawn fresh for every file; fixed only in
/// the known-answer tests.
pub(crate) struct FileRandomness {
    pub(crate) data_key: Zeroizing<[u8; KEY_LEN]>,
    pub(crate) salt: [u8; DIGEST_LEN],
    pub(crate) wrap_nonce: [u8; NONCE_LEN],
}

impl FileRandomness {
    fn draw() -> Result<Self, Error> {
        let mut r = Self { data_key: Zeroizing::new([0; KEY_LEN]), salt: [0; DIGEST_LEN], wrap_nonce: [0; NONCE_LEN] };
        aws_lc_rs::rand::fill(r.data_key.as_mut()).map_err(|_| Error::Crypto)?;
        aws_lc_rs::rand::fill(&mut r.salt).map_err(|_| Error::Crypto)?;
        aws_lc_rs::rand::fill(&mut r.wrap_nonce).map_err(|_| Error::Crypto)?;
        Ok(r)
    }
}

/// A header whose key slot opened under the model key and whose
/// commitments matched: it can decrypt the body.
pub struct UnlockedHeader {
    header: Header,
    payload: PayloadKey,
}

impl fmt::Debug for UnlockedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnlockedHeader").field("header", &self.header).finish_non_exhaustive()
    }
}

impl UnlockedHeader {
    /// The authenticated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The error for a chunk that failed to authenticate.
    pub(crate) fn chunk_error(&self, index: u64) -> Error {
        match self.header.tensor_index().and_then(|i| i.tensor_of_chunk(index)) {
            Some(t) => Error::TensorChunkAuthentication { tensor: t.name().to_owned(), index },
            None => Error::ChunkAuthentication { index },
        }
    }

    /// Plaintext length of chunk `index` (whole-file layout).
    fn chunk_plain_len(&self, index: u64) -> u64 {
        let size = u64::from(self.header.chunk_size);
        let last = self.header.chunk_count().saturating_sub(1);
        if index < last { size } else { self.header.plaintext_len.saturating_sub(last.saturating_mul(size)) }
    }

    fn is_last(&self, index: u64) -> bool {
        index.saturating_add(1) == self.header.chunk_count()
    }
}

impl Header {
    /// Builds and seals a header for a new file; returns it with its chunk
    /// key. With `index_block` (the plaintext's safetensors header, checked
    /// here), the file gets the safetensors-aware layout.
    pub(crate) fn seal(
        plaintext_len: u64,
        chunk_size: u32,
        key: &ModelKey,
        rnd: &FileRandomness,
        index_block: Option<&[u8]>,
    ) -> Result<UnlockedHeader, Error> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(Error::InvalidParameter("chunk size"));
        }
        let index = match index_block {
            None => None,
            Some(block) => {
                let len = block.len() as u64;
                let data_len = plaintext_len
                    .checked_sub(len)
                    .ok_or(SafetensorsError::DataLength { covered: len, data: plaintext_len })
                    .map_err(HeaderError::from)?;
                let index = TensorIndex::parse(block, data_len, chunk_size).map_err(HeaderError::from)?;
                let digest =
                    <[u8; DIGEST_LEN]>::try_from(sha2::Sha256::digest(block).as_slice()).map_err(|_| Error::Crypto)?;
                Some(IndexRef { len, digest, index: std::sync::Arc::new(index) })
            }
        };
        let flags = if index.is_some() { FLAG_SAFETENSORS } else { 0 };
        let mut header = Header {
            flags,
            chunk_size,
            plaintext_len,
            salt: rnd.salt,
            commitment: [0; DIGEST_LEN],
            secret_name: key.name.clone(),
            secret_version: key.version,
            key_commitment: [0; DIGEST_LEN],
            wrap_nonce: rnd.wrap_nonce,
            wrapped_key: [0; KEY_LEN + TAG_LEN],
            index,
        };
        if header.file_len().is_none() {
            return Err(HeaderError::TooLarge(plaintext_len).into());
        }
        header.commitment = crypto::data_key_commitment(&rnd.data_key, &header.salt, &header.content_bytes())?;
        header.key_commitment = crypto::key_commitment(&key.key, &header.slot_info())?;
        crypto::wrap(&mut header, &key.key, &rnd.data_key)?;
        let payload = PayloadKey::derive(&rnd.data_key, &header.salt, &header.content_bytes())?;
        Ok(UnlockedHeader { header, payload })
    }

    /// Opens the header with the model key, running the checks listed in
    /// the module documentation in order.
    pub fn unlock(&self, key: &ModelKey) -> Result<UnlockedHeader, Error> {
        let data_key = self.open_data_key(key)?;
        let expected = crypto::data_key_commitment(&data_key, &self.salt, &self.content_bytes())?;
        verify_slices_are_equal(&expected, &self.commitment).map_err(|_| Error::DataKeyCommitment)?;
        let payload = PayloadKey::derive(&data_key, &self.salt, &self.content_bytes())?;
        Ok(UnlockedHeader { header: self.clone(), payload })
    }

    /// Checks 1 to 4: name, version, key commitment, key-wrap tag.
    fn open_data_key(&self, key: &ModelKey) -> Result<Zeroizing<[u8; KEY_LEN]>, Error> {
        if key.name != self.secret_name {
            return Err(Error::SecretMismatch { header: self.secret_name.clone(), key: key.name.clone() });
        }
        if key.version != self.secret_version {
            return Err(Error::WrongSecretVersion { header: self.secret_version, key: key.version });
        }
        let expected = crypto::key_commitment(&key.key, &self.slot_info())?;
        verify_slices_are_equal(&expected, &self.key_commitment).map_err(|_| Error::WrongKey)?;
        crypto::unwrap(self, &key.key)
    }

    /// The same header with the data key rewrapped under `new` (which names
    /// the secret and version to record). The content part, and so every
    /// chunk, is unchanged.
    pub fn rewrap(&self, old: &ModelKey, new: &ModelKey) -> Result<Header, Error> {
        let mut wrap_nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut wrap_nonce).map_err(|_| Error::Crypto)?;
        self.rewrap_with(old, new, wrap_nonce)
    }

    pub(crate) fn rewrap_with(
        &self,
        old: &ModelKey,
        new: &ModelKey,
        wrap_nonce: [u8; NONCE_LEN],
    ) -> Result<Header, Error> {
        // Full check first, so a rewrap never blesses a damaged header.
        self.unlock(old)?;
        let data_key = self.open_data_key(old)?;
        let mut header = self.clone();
        header.secret_name = new.name.clone();
        header.secret_version = new.version;
        header.wrap_nonce = wrap_nonce;
        header.key_commitment = crypto::key_commitment(&new.key, &header.slot_info())?;
        crypto::wrap(&mut header, &new.key, &data_key)?;
        Ok(header)
    }
}
