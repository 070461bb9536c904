//! Key derivation, key wrapping and chunk sealing.
//!
//! ```text
//! slot_info      = u16(len(name)) || name || u64(version)
//! key_commitment = HKDF-SHA256("", model_key, "kbs.model.v1 key-commitment" || slot_info, 32)
//! wrap_key       = HKDF-SHA256(salt, model_key, "kbs.model.v1 wrap" || slot_info, 32)
//! wrapped_key    = AES-256-GCM(wrap_key, wrap_nonce, data_key, aad = header up to wrapped_key)
//! commitment     = HKDF-SHA256(salt, data_key, "kbs.model.v1 commitment" || content[0..56], 32)
//! payload_key || nonce_prefix
//!                = HKDF-SHA256(salt, data_key, "kbs.model.v1 payload" || content, 32 + 7)
//!                  (content: 88 bytes, or 128 with the safetensors extension)
//! nonce(i)       = nonce_prefix || u32(i) || (1 if last chunk else 0)
//! chunk(i)       = AES-256-GCM(payload_key, nonce(i), plaintext(i), aad = "")
//!                  (the tag inline after the chunk, or in the tag table)
//! ```

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use zeroize::{Zeroize, Zeroizing};

use super::Error;
use super::header::{COMMITMENT_OFFSET, DIGEST_LEN, Header, KEY_LEN, NONCE_LEN, TAG_LEN};

const KEY_COMMITMENT_LABEL: &[u8] = b"kbs.model.v1 key-commitment";
const WRAP_LABEL: &[u8] = b"kbs.model.v1 wrap";
const COMMITMENT_LABEL: &[u8] = b"kbs.model.v1 commitment";
const PAYLOAD_LABEL: &[u8] = b"kbs.model.v1 payload";
/// Length of the per-file nonce prefix.
pub(crate) const PREFIX_LEN: usize = 7;

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 extract-and-expand into `out`.
fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), Error> {
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| Error::Crypto)
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, Error> {
    UnboundKey::new(&AES_256_GCM, bytes).map(LessSafeKey::new).map_err(|_| Error::Crypto)
}

/// The commitment to `model_key` for this key slot. It does not depend on
/// the salt, so an edited salt shows as an edited header, not a wrong key.
pub(crate) fn key_commitment(model_key: &[u8; KEY_LEN], slot_info: &[u8]) -> Result<[u8; DIGEST_LEN], Error> {
    let mut out = [0u8; DIGEST_LEN];
    hkdf(&[], model_key, &[KEY_COMMITMENT_LABEL, slot_info], &mut out)?;
    Ok(out)
}

fn wrap_key(model_key: &[u8; KEY_LEN], salt: &[u8; DIGEST_LEN], slot_info: &[u8]) -> Result<LessSafeKey, Error> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hkdf(salt, model_key, &[WRAP_LABEL, slot_info], key.as_mut())?;
    aead_key(key.as_ref())
}

/// Seals the data key into the header's key slot (all other fields set).
pub(crate) fn wrap(header: &mut Header, model_key: &[u8; KEY_LEN], data_key: &[u8; KEY_LEN]) -> Result<(), Error> {
    let key = wrap_key(model_key, &header.salt, &header.slot_info())?;
    let mut buf = Zeroizing::new(data_key.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(header.wrap_nonce),
        Aad::from(header.wrap_aad()),
        &mut *buf,
    )
    .map_err(|_| Error::Crypto)?;
    header.wrapped_key = <[u8; KEY_LEN + TAG_LEN]>::try_from(buf.as_slice()).map_err(|_| Error::Crypto)?;
    Ok(())
}

/// Opens the key slot; fails if any header byte before the wrapped key, or
/// the wrapped key itself, was changed.
pub(crate) fn unwrap(header: &Header, model_key: &[u8; KEY_LEN]) -> Result<Zeroizing<[u8; KEY_LEN]>, Error> {
    let key = wrap_key(model_key, &header.salt, &header.slot_info())?;
    let mut buf = Zeroizing::new(header.wrapped_key.to_vec());
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(header.wrap_nonce), Aad::from(header.wrap_aad()), &mut buf)
        .map_err(|_| Error::HeaderAuthentication)?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    if plain.len() != KEY_LEN {
        return Err(Error::HeaderAuthentication);
    }
    out.copy_from_slice(plain);
    Ok(out)
}

/// The commitment to `data_key` over the content part before it.
pub(crate) fn data_key_commitment(
    data_key: &[u8; KEY_LEN],
    salt: &[u8; DIGEST_LEN],
    content: &[u8],
) -> Result<[u8; DIGEST_LEN], Error> {
    let covered = content.get(..COMMITMENT_OFFSET).ok_or(Error::Crypto)?;
    let mut out = [0u8; DIGEST_LEN];
    hkdf(salt, data_key, &[COMMITMENT_LABEL, covered], &mut out)?;
    Ok(out)
}

/// The per-file chunk key and nonce prefix.
pub(crate) struct PayloadKey {
    key: LessSafeKey,
    prefix: [u8; PREFIX_LEN],
}

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadKey(<redacted>)")
    }
}

impl PayloadKey {
    /// Derives the chunk key from the data key and the whole content part.
    pub(crate) fn derive(data_key: &[u8; KEY_LEN], salt: &[u8; DIGEST_LEN], content: &[u8]) -> Result<Self, Error> {
        let mut okm = Zeroizing::new([0u8; KEY_LEN + PREFIX_LEN]);
        hkdf(salt, data_key, &[PAYLOAD_LABEL, content], okm.as_mut())?;
        let (key, prefix) = okm.split_at(KEY_LEN);
        let prefix = <[u8; PREFIX_LEN]>::try_from(prefix).map_err(|_| Error::Crypto)?;
        Ok(Self { key: aead_key(key)?, prefix })
    }

    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        let (p, rest) = n.split_at_mut(PREFIX_LEN);
        p.copy_from_slice(&self.prefix);
        let (i, flag) = rest.split_at_mut(4);
        i.copy_from_slice(&index.to_be_bytes());
        if let Some(f) = flag.first_mut() {
            *f = u8::from(last);
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts chunk `index` in place and appends its tag.
    pub(crate) fn seal(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), Error> {
        let index = u32::try_from(index).map_err(|_| Error::Crypto)?;
        self.key.seal_in_place_append_tag(self.nonce(index, last), Aad::empty(), buf).map_err(|_| Error::Crypto)
    }

    /// Encrypts chunk `index` in place and returns its tag.
    pub(crate) fn seal_separate(&self, index: u64, last: bool, buf: &mut [u8]) -> Result<[u8; TAG_LEN], Error> {
        let index = u32::try_from(index).map_err(|_| Error::Crypto)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(index, last), Aad::empty(), buf)
            .map_err(|_| Error::Crypto)?;
        <[u8; TAG_LEN]>::try_from(tag.as_ref()).map_err(|_| Error::Crypto)
    }

    /// Decrypts chunk `index` in place (ciphertext and tag in `buf`); on
    /// success `buf` holds the plaintext only.
    pub(crate) fn open(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), Error> {
        let fail = Error::ChunkAuthentication { index };
        let i = u32::try_from(index).map_err(|_| Error::ChunkAuthentication { index })?;
        match self.key.open_in_place(self.nonce(i, last), Aad::empty(), buf) {
            Ok(plain) => {
                let len = plain.len();
                buf.truncate(len);
                Ok(())
            }
            Err(_) => {
                // Never leave unauthenticated bytes behind.
                buf.zeroize();
                Err(fail)
            }
        }
    }
}
