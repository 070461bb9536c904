//! HPKE (RFC 9180) base-mode sealing of released secrets to the guest's
//! ephemeral key.
//!
//! Suites offered, preferred first:
//! - DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM (the default);
//! - DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, for deployments
//!   that keep to FIPS-approved curves.
//!
//! Each secret is sealed with `info = "kbs.v1 secret" || nonce` and `aad =
//! name || u64_be(version)`, so a ciphertext opens only for the challenge
//! and the exact (name, version) it was released for.

use std::convert::Infallible;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::{DhP256HkdfSha256, X25519HkdfSha256};
use hpke::rand_core::{TryCryptoRng, TryRng};
use hpke::{Deserializable, Kem, OpModeS, Serializable};
use kbs_proto::SuiteId;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::error::Error;

/// The suites this broker seals with, preferred first.
pub const SUPPORTED_SUITES: [SuiteId; 2] = [SuiteId::X25519_SHA256_AES256GCM, SuiteId::P256_SHA256_AES256GCM];

/// A guest's HPKE public key, checked against its suite.
#[derive(Clone, Debug)]
pub enum RecipientKey {
    /// X25519 public key.
    X25519(<X25519HkdfSha256 as Kem>::PublicKey),
    /// P-256 public key (uncompressed SEC1).
    P256(<DhP256HkdfSha256 as Kem>::PublicKey),
}

impl RecipientKey {
    /// Parses `bytes` as a public key for `suite`; refuses suites the broker
    /// does not offer and keys that are not valid points.
    pub fn parse(suite: SuiteId, bytes: &[u8]) -> Result<Self, Error> {
        if suite == SuiteId::X25519_SHA256_AES256GCM {
            <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(bytes)
                .map(Self::X25519)
                .map_err(|_| Error::InvalidRequest("HPKE public key is not a valid X25519 key".into()))
        } else if suite == SuiteId::P256_SHA256_AES256GCM {
            <DhP256HkdfSha256 as Kem>::PublicKey::from_bytes(bytes)
                .map(Self::P256)
                .map_err(|_| Error::InvalidRequest("HPKE public key is not a valid P-256 key".into()))
        } else {
            Err(Error::UnsupportedHpkeSuite)
        }
    }
}

/// One sealed secret: the encapsulated key and the ciphertext with its tag.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// HPKE `enc`.
    pub enc: Vec<u8>,
    /// AEAD ciphertext || tag.
    pub ciphertext: Vec<u8>,
}

/// Seals `plaintext` to `recipient` in HPKE base mode.
pub fn seal(recipient: &RecipientKey, info: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Sealed, Error> {
    let mut rng = SeededRng::new()?;
    let sealed = match recipient {
        RecipientKey::X25519(pk) => hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            pk,
            info,
            plaintext,
            aad,
            &mut rng,
        )
        .map(|(enc, ct)| Sealed { enc: enc.to_bytes().to_vec(), ciphertext: ct }),
        RecipientKey::P256(pk) => hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, DhP256HkdfSha256>(
            &OpModeS::Base,
            pk,
            info,
            plaintext,
            aad,
            &mut rng,
        )
        .map(|(enc, ct)| Sealed { enc: enc.to_bytes().to_vec(), ciphertext: ct }),
    };
    sealed.map_err(|e| Error::Internal(format!("HPKE seal failed: {e}")))
}

/// A CSPRNG seeded from the system source, so that HPKE's infallible RNG
/// interface never has to panic on a failing source: the one fallible call
/// happens here, up front, and its failure is an error. Output block `i` is
/// `SHA-512(seed || i)`.
struct SeededRng {
    seed: Zeroizing<[u8; 32]>,
    counter: u64,
    block: Zeroizing<[u8; 64]>,
    used: usize,
}

impl SeededRng {
    fn new() -> Result<Self, Error> {
        let mut seed = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(seed.as_mut()).map_err(|_| Error::Internal("system random source failed".into()))?;
        Ok(Self { seed, counter: 0, block: Zeroizing::new([0u8; 64]), used: 64 })
    }

    fn refill(&mut self) {
        let mut h = Sha512::new();
        h.update(self.seed.as_ref());
        h.update(self.counter.to_be_bytes());
        self.block.copy_from_slice(&h.finalize());
        self.counter = self.counter.wrapping_add(1);
        self.used = 0;
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for byte in dst.iter_mut() {
            if self.used >= self.block.len() {
                self.refill();
            }
            *byte = self.block.get(self.used).copied().unwrap_or_default();
            self.used += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for SeededRng {}

#[cfg(test)]
mod tests {
    use super::*;
    use hpke::OpModeR;

    fn open<K: Kem>(sk: &K::PrivateKey, sealed: &Sealed, info: &[u8], aad: &[u8]) -> Result<Vec<u8>, hpke::HpkeError> {
        let enc = K::EncappedKey::from_bytes(&sealed.enc)?;
        hpke::single_shot_open::<AesGcm256, HkdfSha256, K>(&OpModeR::Base, sk, &enc, info, &sealed.ciphertext, aad)
    }

    #[test]
    fn x25519_round_trip_and_binding() {
        let (sk, pk) = X25519HkdfSha256::derive_keypair(b"test key material for x25519 suite");
        let key = RecipientKey::parse(SuiteId::X25519_SHA256_AES256GCM, &pk.to_bytes()).unwrap();
        let sealed = seal(&key, b"info", b"aad", b"model key").unwrap();
        assert_eq!(open::<X25519HkdfSha256>(&sk, &sealed, b"info", b"aad").unwrap(), b"model key");
        assert!(open::<X25519HkdfSha256>(&sk, &sealed, b"other info", b"aad").is_err());
        assert!(open::<X25519HkdfSha256>(&sk, &sealed, b"info", b"other aad").is_err());
    }

    #[test]
    fn p256_round_trip() {
        let (sk, pk) = DhP256HkdfSha256::derive_keypair(b"test key material for p256 suite");
        let key = RecipientKey::parse(SuiteId::P256_SHA256_AES256GCM, &pk.to_bytes()).unwrap();
        let sealed = seal(&key, b"i", b"a", &[0u8, 1, 2, 255]).unwrap();
        assert_eq!(open::<DhP256HkdfSha256>(&sk, &sealed, b"i", b"a").unwrap(), vec![0u8, 1, 2, 255]);
    }

    #[test]
    fn each_seal_uses_a_fresh_ephemeral_key() {
        let (_, pk) = X25519HkdfSha256::derive_keypair(b"k");
        let key = RecipientKey::parse(SuiteId::X25519_SHA256_AES256GCM, &pk.to_bytes()).unwrap();
        let a = seal(&key, b"i", b"a", b"x").unwrap();
        let b = seal(&key, b"i", b"a", b"x").unwrap();
        assert_ne!(a.enc, b.enc);
    }

    #[test]
    fn bad_keys_and_suites_are_refused() {
        assert!(matches!(
            RecipientKey::parse(SuiteId::X25519_SHA256_AES256GCM, &[1u8; 31]),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            RecipientKey::parse(SuiteId::P256_SHA256_AES256GCM, &[4u8; 65]),
            Err(Error::InvalidRequest(_))
        ));
        let other = SuiteId { kem: 0x0011, kdf: 1, aead: 2 };
        assert!(matches!(RecipientKey::parse(other, &[0u8; 97]), Err(Error::UnsupportedHpkeSuite)));
    }

    /// RFC 9180 A.1.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM,
    /// base mode): the KEM's key derivation reproduces the RFC's keys. The
    /// sequence-0 ciphertext opens to the RFC's plaintext.
    #[test]
    fn rfc9180_a1_base_vector() {
        let ikm_r = hex::decode("6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037").unwrap();
        let (sk_r, pk_r) = X25519HkdfSha256::derive_keypair(&ikm_r);
        assert_eq!(hex::encode(pk_r.to_bytes()), "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d");
        let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(
            &hex::decode("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431").unwrap(),
        )
        .unwrap();
        let info = hex::decode("4f6465206f6e2061204772656369616e2055726e").unwrap();
        let aad = hex::decode("436f756e742d30").unwrap();
        let ct =
            hex::decode("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a")
                .unwrap();
        let pt = hpke::single_shot_open::<hpke::aead::AesGcm128, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &sk_r,
            &enc,
            &info,
            &ct,
            &aad,
        )
        .unwrap();
        assert_eq!(pt, b"Beauty is truth, truth beauty");
    }
}
