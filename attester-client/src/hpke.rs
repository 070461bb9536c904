//! Ephemeral HPKE (RFC 9180) receiver keys.
//!
//! The guest makes one key pair per challenge for a suite the broker offers:
//! - DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM (preferred), or
//! - DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
//!
//! The public key goes into the evidence binding and the request; the private
//! key stays in this process's memory only. It has no `Debug` output, is never
//! serialized, and the underlying key types of the `hpke` crate zeroize
//! themselves on drop. Secrets are opened in HPKE base mode.

use std::fmt;

use hpke::aead::{Aead, AesGcm256};
use hpke::kdf::{HkdfSha256, Kdf};
use hpke::kem::{DhP256HkdfSha256, X25519HkdfSha256};
use hpke::{Deserializable, Kem, OpModeR, Serializable};
use kbs_proto::SuiteId;
use rand::TryRngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

/// The suites this client can open, preferred first (the broker's order of
/// preference too).
pub const SUPPORTED_SUITES: [SuiteId; 2] = [SuiteId::X25519_SHA256_AES256GCM, SuiteId::P256_SHA256_AES256GCM];

/// Length of the input keying material drawn for a new key pair: the private
/// key size of both KEMs (RFC 9180 section 7.1.3 asks for at least that much
/// entropy).
const IKM_LEN: usize = 32;

/// What can go wrong with an ephemeral HPKE key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The suite is not one of [`SUPPORTED_SUITES`].
    #[error("HPKE suite {0:?} is not supported")]
    UnsupportedSuite(SuiteId),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// The encapsulated key is not a valid public key of the suite's KEM.
    #[error("the encapsulated key is malformed")]
    MalformedEncapsulatedKey,
    /// The ciphertext does not authenticate under this key, info and aad.
    #[error("the ciphertext does not open under this key, info and aad")]
    Open,
}

/// The private half, per KEM. Deliberately without `Debug` or `Clone`.
enum PrivateKey {
    X25519(<X25519HkdfSha256 as Kem>::PrivateKey),
    P256(<DhP256HkdfSha256 as Kem>::PrivateKey),
}

/// An ephemeral HPKE receiver key pair for one suite.
pub struct EphemeralKey {
    suite: SuiteId,
    private: PrivateKey,
    public: Vec<u8>,
}

impl EphemeralKey {
    /// Makes a fresh key pair for `suite` from the operating system's RNG.
    ///
    /// The key is derived as RFC 9180's `DeriveKeyPair(random(Nsk))`, which is
    /// what `GenerateKeyPair` amounts to, but the randomness is drawn with a
    /// fallible call so that an RNG failure is an error, not a panic.
    pub fn generate(suite: SuiteId) -> Result<Self, Error> {
        if !SUPPORTED_SUITES.contains(&suite) {
            return Err(Error::UnsupportedSuite(suite));
        }
        let mut ikm = Zeroizing::new([0u8; IKM_LEN]);
        OsRng.try_fill_bytes(ikm.as_mut()).map_err(|_| Error::Rng)?;
        Self::derive(suite, ikm.as_ref())
    }

    /// Deterministically derives the key pair for `suite` from `ikm`
    /// (RFC 9180 `DeriveKeyPair`).
    fn derive(suite: SuiteId, ikm: &[u8]) -> Result<Self, Error> {
        if suite == SuiteId::X25519_SHA256_AES256GCM {
            let (sk, pk) = X25519HkdfSha256::derive_keypair(ikm);
            Ok(Self { suite, private: PrivateKey::X25519(sk), public: pk.to_bytes().to_vec() })
        } else if suite == SuiteId::P256_SHA256_AES256GCM {
            let (sk, pk) = DhP256HkdfSha256::derive_keypair(ikm);
            Ok(Self { suite, private: PrivateKey::P256(sk), public: pk.to_bytes().to_vec() })
        } else {
            Err(Error::UnsupportedSuite(suite))
        }
    }

    /// The suite this key belongs to.
    pub fn suite(&self) -> SuiteId {
        self.suite
    }

    /// The serialized public key (RFC 9180 `SerializePublicKey`: 32 bytes for
    /// X25519, 65-byte uncompressed SEC1 point for P-256).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// Opens a base-mode single-shot ciphertext sealed to this key.
    pub fn open(&self, enc: &[u8], ciphertext: &[u8], info: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        match &self.private {
            PrivateKey::X25519(sk) => {
                open_base::<AesGcm256, HkdfSha256, X25519HkdfSha256>(sk, enc, ciphertext, info, aad)
            }
            PrivateKey::P256(sk) => {
                open_base::<AesGcm256, HkdfSha256, DhP256HkdfSha256>(sk, enc, ciphertext, info, aad)
            }
        }
    }
}

impl fmt::Debug for EphemeralKey {
    /// Shows the suite and public key only; the private key never appears.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralKey")
            .field("suite", &self.suite)
            .field("public_key", &hex::encode(&self.public))
            .finish_non_exhaustive()
    }
}

/// Base-mode single-shot open for any suite of the `hpke` crate.
fn open_base<A: Aead, K: Kdf, M: Kem>(
    sk: &M::PrivateKey,
    enc: &[u8],
    ciphertext: &[u8],
    info: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let enc = M::EncappedKey::from_bytes(enc).map_err(|_| Error::MalformedEncapsulatedKey)?;
    hpke::single_shot_open::<A, K, M>(&OpModeR::Base, sk, &enc, info, ciphertext, aad)
        .map(Zeroizing::new)
        .map_err(|_| Error::Open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpke::OpModeS;
    use hpke::aead::AesGcm128;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    // RFC 9180 Appendix A: the common inputs of every base-mode vector.
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e"; // "Ode on a Grecian Urn"
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    const AAD0: &str = "436f756e742d30"; // "Count-0"

    /// RFC 9180 A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM,
    /// base mode, sequence number 0.
    #[test]
    fn rfc9180_a1_x25519_base_known_answer() {
        let ikm_r = unhex("6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037");
        let (sk_r, pk_r) = X25519HkdfSha256::derive_keypair(&ikm_r);
        // skRm is 4612c550...534e8ac8; the crate stores X25519 scalars
        // clamped, so the public key is what is compared.
        assert_eq!(
            pk_r.to_bytes().as_slice(),
            unhex("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d")
        );
        let enc = unhex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431");
        let ct = unhex("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a");
        let pt =
            open_base::<AesGcm128, HkdfSha256, X25519HkdfSha256>(&sk_r, &enc, &ct, &unhex(INFO), &unhex(AAD0)).unwrap();
        assert_eq!(pt.as_slice(), unhex(PT));
        // The same vector refuses a different aad.
        assert!(matches!(
            open_base::<AesGcm128, HkdfSha256, X25519HkdfSha256>(&sk_r, &enc, &ct, &unhex(INFO), b"Count-1"),
            Err(Error::Open)
        ));
    }

    /// RFC 9180 A.3.1: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM,
    /// base mode, sequence number 0.
    #[test]
    fn rfc9180_a3_p256_base_known_answer() {
        let ikm_r = unhex("668b37171f1072f3cf12ea8a236a45df23fc13b82af3609ad1e354f6ef817550");
        let (sk_r, pk_r) = DhP256HkdfSha256::derive_keypair(&ikm_r);
        assert_eq!(
            sk_r.to_bytes().as_slice(),
            unhex("f3ce7fdae57e1a310d87f1ebbde6f328be0a99cdbcadf4d6589cf29de4b8ffd2")
        );
        assert_eq!(
            pk_r.to_bytes().as_slice(),
            unhex(
                "04fe8c19ce0905191ebc298a9245792531f26f0cece2460639e8bc39cb7f706a\
                 826a779b4cf969b8a0e539c7f62fb3d30ad6aa8f80e30f1d128aafd68a2ce72ea0"
            )
        );
        let enc = unhex(
            "04a92719c6195d5085104f469a8b9814d5838ff72b60501e2c4466e5e67b325a\
             c98536d7b61a1af4b78e5b7f951c0900be863c403ce65c9bfcb9382657222d18c4",
        );
        let ct = unhex("5ad590bb8baa577f8619db35a36311226a896e7342a6d836d8b7bcd2f20b6c7f9076ac232e3ab2523f39513434");
        let pt =
            open_base::<AesGcm128, HkdfSha256, DhP256HkdfSha256>(&sk_r, &enc, &ct, &unhex(INFO), &unhex(AAD0)).unwrap();
        assert_eq!(pt.as_slice(), unhex(PT));
    }

    /// Seals with the crate's sender side, the way the broker does.
    fn seal_to(key: &EphemeralKey, info: &[u8], aad: &[u8], pt: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match &key.private {
            PrivateKey::X25519(_) => {
                let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(key.public_key()).unwrap();
                let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
                    &OpModeS::Base,
                    &pk,
                    info,
                    pt,
                    aad,
                )
                .unwrap();
                (enc.to_bytes().to_vec(), ct)
            }
            PrivateKey::P256(_) => {
                let pk = <DhP256HkdfSha256 as Kem>::PublicKey::from_bytes(key.public_key()).unwrap();
                let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, DhP256HkdfSha256>(
                    &OpModeS::Base,
                    &pk,
                    info,
                    pt,
                    aad,
                )
                .unwrap();
                (enc.to_bytes().to_vec(), ct)
            }
        }
    }

    #[test]
    fn round_trip_for_each_supported_suite() {
        for suite in SUPPORTED_SUITES {
            let key = EphemeralKey::generate(suite).unwrap();
            assert_eq!(key.suite(), suite);
            let expected_len = if suite == SuiteId::X25519_SHA256_AES256GCM { 32 } else { 65 };
            assert_eq!(key.public_key().len(), expected_len);

            let info = kbs_proto::secret_info(&[5u8; 32]);
            let aad = kbs_proto::secret_aad("models/llama/key", 3);
            let (enc, ct) = seal_to(&key, &info, &aad, b"model key bytes");
            let pt = key.open(&enc, &ct, &info, &aad).unwrap();
            assert_eq!(pt.as_slice(), b"model key bytes");

            // Bound to info, aad, enc and the ciphertext itself.
            let other_aad = kbs_proto::secret_aad("models/llama/key", 4);
            assert!(matches!(key.open(&enc, &ct, &info, &other_aad), Err(Error::Open)));
            let other_info = kbs_proto::secret_info(&[6u8; 32]);
            assert!(matches!(key.open(&enc, &ct, &other_info, &aad), Err(Error::Open)));
            let mut flipped = ct.clone();
            flipped[0] ^= 1;
            assert!(matches!(key.open(&enc, &flipped, &info, &aad), Err(Error::Open)));
            assert!(matches!(key.open(&enc[..enc.len() - 1], &ct, &info, &aad), Err(Error::MalformedEncapsulatedKey)));

            // Another key of the same suite cannot open it.
            let other = EphemeralKey::generate(suite).unwrap();
            assert!(other.open(&enc, &ct, &info, &aad).is_err());
        }
    }

    #[test]
    fn fresh_keys_differ_and_unknown_suites_are_refused() {
        let a = EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap();
        let b = EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap();
        assert_ne!(a.public_key(), b.public_key());
        let p384 = SuiteId { kem: 0x0011, kdf: 0x0002, aead: 0x0002 };
        assert!(matches!(EphemeralKey::generate(p384), Err(Error::UnsupportedSuite(_))));
    }

    #[test]
    fn debug_shows_no_private_key() {
        let ikm = [7u8; IKM_LEN];
        let key = EphemeralKey::derive(SuiteId::X25519_SHA256_AES256GCM, &ikm).unwrap();
        let shown = format!("{key:?}");
        let sk = X25519HkdfSha256::derive_keypair(&ikm).0.to_bytes();
        assert!(shown.contains(&hex::encode(key.public_key())));
        assert!(!shown.contains(&hex::encode(sk.as_slice())));
    }
}
