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
//!
//! A VM with attested GPUs binds them too ([`gpu_nonce`],
//! [`device_set_digest`], [`device_report_data`]; all integers big-endian):
//!
//! ```text
//! gpu_nonce   = SHA-256("kbs.v1 gpu-nonce" || nonce || suite_id || u32(len(pk)) || pk)
//! device_set  = "kbs.v1 devices" || u32(n)
//!               || for each device, in request order:
//!                  u32(len(report)) || report || u32(len(cert_chain)) || cert_chain
//! report_data = SHA-512("kbs.v1 report-data+devices" || nonce || suite_id
//!                       || u32(len(pk)) || pk || u32(n) || SHA-384(device_set))
//! ```
//!
//! Every device signs `gpu_nonce` in its SPDM request, and the CPU evidence
//! carries this report_data instead of the one above.
#![forbid(unsafe_code)]

use sha2::{Digest, Sha256, Sha384, Sha512};

#[cfg(feature = "man")]
pub mod man;
pub mod model;
pub mod spdm;

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
const GPU_NONCE_LABEL: &[u8] = b"kbs.v1 gpu-nonce";
const DEVICE_SET_LABEL: &[u8] = b"kbs.v1 devices";
const DEVICE_REPORT_DATA_LABEL: &[u8] = b"kbs.v1 report-data+devices";

/// Length of the nonce a GPU signs in its SPDM GET_MEASUREMENTS request.
pub const GPU_NONCE_LEN: usize = 32;
/// Length of the digest of a device set (SHA-384).
pub const DEVICE_SET_DIGEST_LEN: usize = 48;
/// Most devices one request may carry (an HGX system has 8 GPUs and 4
/// NVSwitches).
pub const MAX_DEVICES: usize = 16;

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

/// The nonce every GPU of the VM signs for this challenge and HPKE key.
///
/// It depends on the requester's suite and public key, not only on the
/// challenge: a GPU report made for one key cannot be presented with
/// another, so a relayed report is accepted only for a key the VM holding
/// the GPU asked for itself.
pub fn gpu_nonce(nonce: &[u8; NONCE_LEN], suite: SuiteId, hpke_public_key: &[u8]) -> [u8; GPU_NONCE_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(GPU_NONCE_LABEL);
    hasher.update(nonce);
    hasher.update(suite.to_bytes());
    hasher.update(len_u32(hpke_public_key.len()));
    hasher.update(hpke_public_key);
    hasher.finalize().into()
}

/// One device's evidence as it enters the binding: the raw SPDM report
/// (request then response) and the certificate chain, exactly as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEvidence<'a> {
    /// SPDM GET_MEASUREMENTS request || MEASUREMENTS response.
    pub report: &'a [u8],
    /// The certificate chain (PEM) as the driver returned it.
    pub cert_chain: &'a [u8],
}

/// SHA-384 of the device set: its count, then each device's report and
/// chain, each length-prefixed, in order. A dropped, added, reordered or
/// altered device changes it; stapled OCSP responses are not part of it
/// (each is a signed statement of its own, and the host may refresh them).
pub fn device_set_digest(devices: &[DeviceEvidence<'_>]) -> [u8; DEVICE_SET_DIGEST_LEN] {
    let mut hasher = Sha384::new();
    hasher.update(DEVICE_SET_LABEL);
    hasher.update(len_u32(devices.len()));
    for device in devices {
        hasher.update(len_u32(device.report.len()));
        hasher.update(device.report);
        hasher.update(len_u32(device.cert_chain.len()));
        hasher.update(device.cert_chain);
    }
    hasher.finalize().into()
}

/// The report_data of CPU evidence that vouches for a set of devices.
///
/// With no devices this is exactly [`report_data`], so guests without GPUs
/// keep today's binding. Stripping is still detected: with one or more
/// devices the hash starts with another label (`"kbs.v1
/// report-data+devices"`), so the CPU evidence of a VM that presented
/// devices can never carry the device-free value. A broker that receives
/// such evidence with the devices removed computes the device-free value,
/// which differs, and refuses with `report_data_mismatch`; the two cases are
/// told apart by the CPU's signed report_data, not by anything the
/// untrusted request says. The count enters twice (in the digest and next
/// to it) so that the set's size is visible without the digest's preimage.
pub fn device_report_data(
    nonce: &[u8; NONCE_LEN],
    suite: SuiteId,
    hpke_public_key: &[u8],
    devices: &[DeviceEvidence<'_>],
) -> [u8; REPORT_DATA_LEN] {
    if devices.is_empty() {
        return report_data(nonce, suite, hpke_public_key);
    }
    let mut hasher = Sha512::new();
    hasher.update(DEVICE_REPORT_DATA_LABEL);
    hasher.update(nonce);
    hasher.update(suite.to_bytes());
    hasher.update(len_u32(hpke_public_key.len()));
    hasher.update(hpke_public_key);
    hasher.update(len_u32(devices.len()));
    hasher.update(device_set_digest(devices));
    hasher.finalize().into()
}

/// A length as 4 big-endian bytes; lengths beyond `u32` (never produced:
/// every field is capped far below) saturate, which only makes the
/// binding fail.
fn len_u32(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
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

    const KEY: [u8; 32] = [9; 32];
    const DEVICES: [DeviceEvidence<'static>; 2] = [
        DeviceEvidence { report: b"report-0", cert_chain: b"chain-0" },
        DeviceEvidence { report: b"r1", cert_chain: b"" },
    ];

    #[test]
    fn gpu_binding_known_answers() {
        let nonce = [7u8; NONCE_LEN];
        let suite = SuiteId::X25519_SHA256_AES256GCM;
        assert_eq!(
            hex::encode(gpu_nonce(&nonce, suite, &KEY)),
            "4a0002ce86e0f83f73531b7ffab4887f9e108210feb34628ed8746f6b9d9c01a"
        );
        assert_eq!(
            hex::encode(device_set_digest(&DEVICES)),
            "ad6ea3819a9334de0417ea79d01e2926293243d5c9dce2fa568b5a2c71037ba8\
             6aacf786a446fa7900f7202793b90e72"
        );
        assert_eq!(
            hex::encode(device_set_digest(&[])),
            "a7465516b363f085ca3fd4dfa1318e69adfcc64700f0a7fcf40fc536d6707bd1\
             58d35ad4950d9c58ee12fd562f9f84fa"
        );
        assert_eq!(
            hex::encode(device_report_data(&nonce, suite, &KEY, &DEVICES)),
            "a4b303e2cb14faa86341585ae3dbe6a2885d182f52dfb2bf20c65e839dddf837\
             b00c973825359adce2be80515d9ad67dfc5e0fc73cc983fb025a2f5fe658cfc0"
        );
        // No devices: today's binding, unchanged.
        assert_eq!(device_report_data(&nonce, suite, &KEY, &[]), report_data(&nonce, suite, &KEY));
    }

    #[test]
    fn device_sets_differ_when_dropped_added_reordered_or_split_differently() {
        let nonce = [7u8; NONCE_LEN];
        let suite = SuiteId::X25519_SHA256_AES256GCM;
        let bound = |d: &[DeviceEvidence<'_>]| device_report_data(&nonce, suite, &KEY, d);
        let [a, b] = DEVICES;
        let all = bound(&[a, b]);
        assert_ne!(all, bound(&[b, a]), "reordered");
        assert_ne!(all, bound(&[a]), "dropped");
        assert_ne!(all, bound(&[a, b, b]), "added");
        assert_ne!(all, bound(&[]), "stripped");
        // The same bytes split differently between report and chain.
        let shifted = DeviceEvidence { report: b"report-0c", cert_chain: b"hain-0" };
        assert_ne!(all, bound(&[shifted, b]));
        // One device with nothing in it is still a device.
        let empty = DeviceEvidence { report: b"", cert_chain: b"" };
        assert_ne!(bound(&[empty]), bound(&[]));
    }

    proptest::proptest! {
        #[test]
        fn every_input_changes_the_gpu_binding(
            nonce in proptest::array::uniform32(proptest::num::u8::ANY),
            key in proptest::collection::vec(proptest::num::u8::ANY, 1..80),
            report in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
            chain in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
            flip in proptest::num::usize::ANY,
        ) {
            let suite = SuiteId::X25519_SHA256_AES256GCM;
            let device = DeviceEvidence { report: &report, cert_chain: &chain };
            let base_nonce = gpu_nonce(&nonce, suite, &key);
            let base = device_report_data(&nonce, suite, &key, &[device]);

            let mut other_nonce = nonce;
            other_nonce[flip % NONCE_LEN] ^= 1;
            proptest::prop_assert_ne!(base_nonce, gpu_nonce(&other_nonce, suite, &key));
            proptest::prop_assert_ne!(base, device_report_data(&other_nonce, suite, &key, &[device]));

            let other_suite = SuiteId::P256_SHA256_AES256GCM;
            proptest::prop_assert_ne!(base_nonce, gpu_nonce(&nonce, other_suite, &key));
            proptest::prop_assert_ne!(base, device_report_data(&nonce, other_suite, &key, &[device]));

            let mut other_key = key.clone();
            let at = flip % other_key.len();
            other_key[at] ^= 1;
            proptest::prop_assert_ne!(base_nonce, gpu_nonce(&nonce, suite, &other_key));
            proptest::prop_assert_ne!(base, device_report_data(&nonce, suite, &other_key, &[device]));

            let mut other_report = report.clone();
            let at = flip % other_report.len();
            other_report[at] ^= 1;
            let changed = DeviceEvidence { report: &other_report, cert_chain: &chain };
            proptest::prop_assert_ne!(base, device_report_data(&nonce, suite, &key, &[changed]));

            let mut other_chain = chain.clone();
            let at = flip % other_chain.len();
            other_chain[at] ^= 1;
            let changed = DeviceEvidence { report: &report, cert_chain: &other_chain };
            proptest::prop_assert_ne!(base, device_report_data(&nonce, suite, &key, &[changed]));

            proptest::prop_assert_ne!(base, device_report_data(&nonce, suite, &key, &[device, device]));
            proptest::prop_assert_ne!(base, device_report_data(&nonce, suite, &key, &[]));
        }
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
