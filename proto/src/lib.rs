//! The `kbs.v1` API and the rules that broker and guest must agree on byte
//! for byte: the evidence binding and the secret sealing context.
//!
//! The guest binds its evidence to one challenge and one ephemeral HPKE key:
//!
//! ```text
//! report_data = SHA-512("kbs.v1 report-data" || nonce || suite_id || hpke_public_key)
//! ```
//!
//! where `suite_id` is RFC 9180's `"HPKE" || I2OSP(kem, 2) || I2OSP(kdf, 2) ||
//! I2OSP(aead, 2)`. Each released secret is sealed with HPKE base mode under
//! `info = "kbs.v1 secret" || nonce` and `aad = name || I2OSP(version, 8)`.
#![forbid(unsafe_code)]

use sha2::{Digest, Sha512};

pub mod model;

/// Generated protobuf and gRPC code for package `kbs.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("kbs.v1");
}

/// The workspace version and the git revision it was built from, for the
/// binaries' `--version` (`unknown` outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KBS_GIT_REVISION"), ")");

/// Length of a challenge nonce.
pub const NONCE_LEN: usize = 32;
/// Length of the TEE report_data field (SNP and TDX alike).
pub const REPORT_DATA_LEN: usize = 64;

const REPORT_DATA_LABEL: &[u8] = b"kbs.v1 report-data";
const SECRET_INFO_LABEL: &[u8] = b"kbs.v1 secret";

/// IANA HPKE KEM identifier for DHKEM(X25519, HKDF-SHA256).
pub const KEM_X25519_HKDF_SHA256: u16 = 0x0020;
/// IANA HPKE KEM identifier for DHKEM(P-256, HKDF-SHA256).
pub const KEM_P256_HKDF_SHA256: u16 = 0x0010;
/// IANA HPKE KDF identifier for HKDF-SHA256.
pub const KDF_HKDF_SHA256: u16 = 0x0001;
/// IANA HPKE AEAD identifier for AES-256-GCM.
pub const AEAD_AES_256_GCM: u16 = 0x0002;

/// An HPKE suite by its IANA identifiers, as it appears in the binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SuiteId {
    /// KEM identifier.
    pub kem: u16,
    /// KDF identifier.
    pub kdf: u16,
    /// AEAD identifier.
    pub aead: u16,
}

impl SuiteId {
    /// The default suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
    pub const X25519_SHA256_AES256GCM: SuiteId =
        SuiteId { kem: KEM_X25519_HKDF_SHA256, kdf: KDF_HKDF_SHA256, aead: AEAD_AES_256_GCM };
    /// The FIPS-leaning suite: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
    pub const P256_SHA256_AES256GCM: SuiteId =
        SuiteId { kem: KEM_P256_HKDF_SHA256, kdf: KDF_HKDF_SHA256, aead: AEAD_AES_256_GCM };

    /// RFC 9180 `suite_id` bytes: `"HPKE" || kem || kdf || aead`, big-endian.
    pub fn to_bytes(self) -> [u8; 10] {
        let mut out = [0u8; 10];
        out[..4].copy_from_slice(b"HPKE");
        out[4..6].copy_from_slice(&self.kem.to_be_bytes());
        out[6..8].copy_from_slice(&self.kdf.to_be_bytes());
        out[8..10].copy_from_slice(&self.aead.to_be_bytes());
        out
    }

    /// Converts the wire message, refusing identifiers that do not fit in 16 bits.
    pub fn from_wire(suite: &v1::HpkeSuite) -> Option<SuiteId> {
        Some(SuiteId {
            kem: u16::try_from(suite.kem).ok()?,
            kdf: u16::try_from(suite.kdf).ok()?,
            aead: u16::try_from(suite.aead).ok()?,
        })
    }

    /// The wire message for this suite.
    pub fn to_wire(self) -> v1::HpkeSuite {
        v1::HpkeSuite { kem: u32::from(self.kem), kdf: u32::from(self.kdf), aead: u32::from(self.aead) }
    }
}

/// The report_data a guest must place in its evidence for this challenge
/// nonce and HPKE key.
pub fn report_data(nonce: &[u8; NONCE_LEN], suite: SuiteId, hpke_public_key: &[u8]) -> [u8; REPORT_DATA_LEN] {
    let mut hasher = Sha512::new();
    hasher.update(REPORT_DATA_LABEL);
    hasher.update(nonce);
    hasher.update(suite.to_bytes());
    hasher.update(hpke_public_key);
    hasher.finalize().into()
}

/// HPKE `info` for secrets released under this challenge nonce.
pub fn secret_info(nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut info = Vec::with_capacity(SECRET_INFO_LABEL.len() + NONCE_LEN);
    info.extend_from_slice(SECRET_INFO_LABEL);
    info.extend_from_slice(nonce);
    info
}

/// HPKE `aad` for one released secret: its name, then its version as 8
/// big-endian bytes (fixed width, so no two (name, version) pairs collide).
pub fn secret_aad(name: &str, version: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(name.len() + 8);
    aad.extend_from_slice(name.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_id_is_rfc9180_layout() {
        assert_eq!(
            SuiteId::X25519_SHA256_AES256GCM.to_bytes(),
            [b'H', b'P', b'K', b'E', 0x00, 0x20, 0x00, 0x01, 0x00, 0x02]
        );
    }

    #[test]
    fn report_data_binds_every_input() {
        let nonce = [7u8; NONCE_LEN];
        let key = [9u8; 32];
        let base = report_data(&nonce, SuiteId::X25519_SHA256_AES256GCM, &key);
        assert_ne!(base, report_data(&[8u8; NONCE_LEN], SuiteId::X25519_SHA256_AES256GCM, &key));
        assert_ne!(base, report_data(&nonce, SuiteId::P256_SHA256_AES256GCM, &key));
        assert_ne!(base, report_data(&nonce, SuiteId::X25519_SHA256_AES256GCM, &[1u8; 32]));
        // The same construction spelled out.
        let mut input = Vec::new();
        input.extend_from_slice(b"kbs.v1 report-data");
        input.extend_from_slice(&nonce);
        input.extend_from_slice(&SuiteId::X25519_SHA256_AES256GCM.to_bytes());
        input.extend_from_slice(&key);
        let expected: [u8; 64] = Sha512::digest(&input).into();
        assert_eq!(base, expected);
    }

    #[test]
    fn aad_is_unambiguous() {
        assert_ne!(secret_aad("a1", 2), secret_aad("a", 0x3102));
        assert_eq!(secret_aad("k", 1), b"k\0\0\0\0\0\0\0\x01".to_vec());
    }

    #[test]
    fn wire_suite_rejects_out_of_range() {
        let wire = v1::HpkeSuite { kem: 0x1_0020, kdf: 1, aead: 2 };
        assert!(SuiteId::from_wire(&wire).is_none());
        let ok = SuiteId::X25519_SHA256_AES256GCM.to_wire();
        assert_eq!(SuiteId::from_wire(&ok), Some(SuiteId::X25519_SHA256_AES256GCM));
    }
}
