//! NVIDIA GPU and NVSwitch evidence: checked parsing and the pure verifier.
//!
//! A device proves itself with an attestation report (an SPDM 1.1
//! GET_MEASUREMENTS request carrying the verifier's nonce, and the signed
//! MEASUREMENTS response; see [`spdm`]) and a five-certificate chain to the
//! NVIDIA Device Identity CA (see [`chain`]). Hopper (GH100: H100, H200),
//! Blackwell (GB100: B200, GB200) and NVSwitch LS10 share the format.
//!
//! [`GpuVerifier::verify`] runs these checks in this order and stops at the
//! first failure, each failure its own [`GpuError`] variant:
//!
//! 1. **Parse the report** ([`spdm::GpuReport::parse`]), before any
//!    cryptography: at most [`spdm::MAX_REPORT_LEN`] bytes (`TooLarge`);
//!    SPDM 1.1 (`UnsupportedVersion`); the request and response codes and
//!    parameters of a signed all-blocks request on slot 0; measurement
//!    blocks with increasing indices, DMTF SHA-384 digests, lengths that add
//!    up; opaque data in a known layout (legacy TLVs, or `NVDAOD` up to
//!    major [`spdm::MAX_NVDAOD_MAJOR`]) with each type once; nothing after
//!    the signature but up to [`spdm::MAX_TRAILING_ZEROS`] zero bytes
//!    (`Malformed`).
//! 2. **Parse the chain**: PEM, at most [`chain::MAX_CHAIN_LEN`] bytes
//!    (`TooLarge`); DER ECDSA P-384/SHA-384 certificates whose unsigned
//!    outer layout is byte-exact and that parse (`CertificateMalformed`); at
//!    least two and at most six of them (`ChainInvalid`).
//! 3. **Report signature**: ECDSA P-384/SHA-384 (`r || s`) over the request
//!    and the response before the signature, under the first certificate's
//!    key (`SignatureInvalid`). It runs before the chain checks so that a
//!    chain whose first certificate is not the signer is reported as what
//!    it is; the key is trusted only once check 4 passes.
//! 4. **Chain**: exactly [`chain::CHAIN_LEN`] certificates, the leaf an
//!    end-entity certificate and the others CAs, each signed (ECDSA
//!    P-384/SHA-384) by the next with matching names (`ChainInvalid`), the
//!    last byte-identical to a pinned root ([`chain::GpuAnchors`],
//!    `UntrustedRoot`).
//! 5. **Validity**: every certificate is valid at `now` (`CertificateExpired`).
//! 6. **Device**: the leaf and the device identity certificate name the same
//!    known chip, which gives the architecture and class
//!    (`UnsupportedDevice`).
//! 7. **FWID**: the leaf's FWID extension (Hopper and NVSwitch: RIoT shape,
//!    whose embedded key must be the device identity certificate's key;
//!    Blackwell: DiceTcbInfo `fwids[0]`) equals the report's FWID when the
//!    report carries one (`FwidMismatch`). Older firmware reports none; the
//!    claims then say `absent_in_report`, for the policy to judge.
//! 8. **Nonce**: the request's nonce equals `expected_nonce`, in constant
//!    time (`NonceMismatch`). [`GpuVerifier::inspect_without_nonce`], for
//!    offline inspection only, skips this check and reports the nonce.
//! 9. **Claims** ([`GpuDeviceClaims`]), built only now.
//!
//! A chain whose evidence passed every check is cached, keyed by SHA-256
//! of the anchor set and the chain's DER (bounded, oldest evicted first),
//! with what checks 4, 6 and 7 established from the chain alone: the
//! chain to a pinned root, the device, the leaf's key and FWID. A cached
//! chain skips those (four P-384 verifies and the parsing of five
//! certificates); checks 1, 3, 5, the FWID comparison and 8 run on every
//! report, so a cached chain still refuses a certificate not valid at
//! `now`, a report it did not sign, another firmware and another nonce.
//! A failure is never cached.
//!
//! The verifier is pure: report, chain, anchors and `now` come in as
//! arguments; it does no I/O and reads no clock. Revocation is a separate
//! pure step ([`ocsp::verify_chain_ocsp`], on stapled or cached OCSP
//! responses for the device chain's certificates but the leaf and the
//! root, given the chain as the verifier parsed it: [`VerifiedDevice`]),
//! and so are the checks on the whole set of devices a VM presents
//! ([`set::check_device_set`]: one checked nonce, distinct devices, the
//! expected counts, one mode), and so is the appraisal of the measurements
//! against reference values ([`rim::RimAppraiser`], over a RIM store the
//! caller loaded), whose result joins these claims as `rim`; the binding of
//! the set to the CPU evidence is checked by the release flow.

pub mod chain;
mod der;
pub mod ocsp;
mod reader;
pub mod rim;
pub mod set;
pub mod spdm;

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use aws_lc_rs::constant_time;
use aws_lc_rs::signature::ParsedPublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

pub use self::chain::{GpuAnchors, NVIDIA_DEVICE_IDENTITY_CA_SHA256};
pub use self::spdm::{FeatureFlag, GpuNonce, GpuReport, Nvdec0, OpaqueFormat};
use crate::evidence::anchors::{self, CertWindow};
use crate::evidence::bounded::BoundedMap;
use crate::reason::ReasonCode;

/// Why GPU evidence was refused. Malformed input and failed checks are
/// different variants; neither is a broker bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// Larger than the cap for its kind.
    #[error("GPU {what} too large: {len} bytes, at most {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Received length.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// The report does not parse.
    #[error("malformed GPU report: {0}")]
    Malformed(String),
    /// An SPDM or opaque-data version the broker does not know.
    #[error("unsupported GPU evidence version: {0}")]
    UnsupportedVersion(String),
    /// A certificate does not parse, or is not P-384.
    #[error("malformed GPU certificate: {0}")]
    CertificateMalformed(String),
    /// The chain does not end at a pinned NVIDIA root.
    #[error("GPU chain does not end at a pinned root: {0}")]
    UntrustedRoot(String),
    /// A link of the chain does not verify, or the chain has the wrong shape.
    #[error("GPU certificate chain invalid: {0}")]
    ChainInvalid(String),
    /// A certificate is not valid at the verification time.
    #[error("GPU certificate not valid at verification time: {0}")]
    CertificateExpired(String),
    /// The report signature does not verify under the leaf's key.
    #[error("GPU report signature invalid")]
    SignatureInvalid,
    /// The chain is for a chip this broker does not know.
    #[error("unsupported GPU device: {0}")]
    UnsupportedDevice(String),
    /// The leaf's FWID differs from the report's.
    #[error("GPU FWID mismatch: {0}")]
    FwidMismatch(String),
    /// The report's nonce is not the expected one.
    #[error("GPU report nonce does not match")]
    NonceMismatch,
}

impl GpuError {
    /// The stable reason code: malformed input is the client's error
    /// (`evidence_malformed` and friends); every failed check is
    /// `gpu_evidence_invalid`.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::TooLarge { .. } => ReasonCode::EvidenceTooLarge,
            Self::Malformed(_) => ReasonCode::EvidenceMalformed,
            Self::UnsupportedVersion(_) => ReasonCode::UnsupportedVersion,
            Self::CertificateMalformed(_) => ReasonCode::CertificateMalformed,
            Self::UntrustedRoot(_)
            | Self::ChainInvalid(_)
            | Self::CertificateExpired(_)
            | Self::SignatureInvalid
            | Self::UnsupportedDevice(_)
            | Self::FwidMismatch(_)
            | Self::NonceMismatch => ReasonCode::GpuEvidenceInvalid,
        }
    }
}

/// GPU or NVSwitch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// A GPU.
    Gpu,
    /// An NVSwitch.
    Nvswitch,
}

/// The device architecture, from the chip its certificates name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuArch {
    /// GH100 (H100, H200).
    Hopper,
    /// GB100 (B200, GB200).
    Blackwell,
    /// NVSwitch LS10.
    Ls10,
}

impl GpuArch {
    /// The architecture of a chip name as NVIDIA's certificates spell it;
    /// chips without known-good evidence are refused.
    pub fn from_chip(chip: &str) -> Option<Self> {
        match chip {
            "GH100" => Some(Self::Hopper),
            "GB100" => Some(Self::Blackwell),
            "LS_10" => Some(Self::Ls10),
            _ => None,
        }
    }

    /// GPU or NVSwitch.
    pub const fn class(self) -> DeviceClass {
        match self {
            Self::Hopper | Self::Blackwell => DeviceClass::Gpu,
            Self::Ls10 => DeviceClass::Nvswitch,
        }
    }
}

/// Outcome of the FWID check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FwidCheck {
    /// The report's FWID equals the leaf's.
    Match,
    /// The report carries no FWID (older firmware, NVSwitches).
    AbsentInReport,
}

/// Whether the nonce was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonceCheck {
    /// Equal to the expected nonce.
    Match,
    /// Not checked: offline inspection only; such claims never release anything.
    NotChecked,
}

/// What the verifier established about the evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceChecks {
    /// Report signature under the leaf (always true in built claims).
    pub signature: bool,
    /// Chain to a pinned root, valid at `now` (always true in built claims).
    pub chain: bool,
    /// The FWID check.
    pub fwid: FwidCheck,
    /// The nonce check.
    pub nonce: NonceCheck,
    /// Layout of the opaque data.
    pub opaque_format: OpaqueFormat,
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMeasurement {
    /// SPDM block index, 1-based (RIM index `i` is block `i + 1`).
    pub index: u8,
    /// SHA-384, lowercase hex.
    pub digest: String,
}

/// Verified claims about one GPU or NVSwitch, built only from evidence that
/// passed every check. Revocation, reference-value appraisal and binding
/// results are added by later steps as further optional fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDeviceClaims {
    /// GPU or NVSwitch.
    pub class: DeviceClass,
    /// Always `nvidia`.
    pub vendor: String,
    /// Architecture.
    pub arch: GpuArch,
    /// The chip as the certificates name it (`GH100`, `GB100`, `LS_10`).
    pub chip: String,
    /// The leaf's serial number, hex: NVIDIA's `ueid`. It changes with the
    /// firmware; [`Self::device_key_sha256`] does not.
    pub ueid: String,
    /// SHA-256 of the device identity (BROM) certificate's public key
    /// (SubjectPublicKeyInfo DER), hex: the stable per-chip identity.
    pub device_key_sha256: String,
    /// The leaf's NVIDIA device id (`NVIDIA:GH100:…`), if it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The nonce the device signed, hex.
    pub nonce: String,
    /// FWID (SHA-384 of the running firmware), hex, when the report has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fwid: Option<String>,
    /// Driver version (GPUs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// VBIOS (GPU) or BIOS (NVSwitch) version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vbios_version: Option<String>,
    /// Project (board), e.g. `G520`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Project SKU, e.g. `0280`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_sku: Option<String>,
    /// Chip SKU, e.g. `895`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chip_sku: Option<String>,
    /// Opaque data version (type 34), when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opaque_data_version: Option<u16>,
    /// Multi-GPU mode, when reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<FeatureFlag>,
    /// NVDEC0 status, when reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvdec0: Option<Nvdec0>,
    /// PDIs (GPU: NVLink peers; NVSwitch: its own), hex, as reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pdis: Vec<String>,
    /// Every measurement block, by index.
    pub measurements: Vec<GpuMeasurement>,
    /// What was checked.
    pub evidence: EvidenceChecks,
    /// Zero bytes found after the signature (unsigned, tolerated).
    pub trailing_zeros: usize,
    /// Revocation of the device chain, when it was checked
    /// ([`GpuDeviceClaims::with_revocation`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationClaims>,
    /// The appraisal of its measurements against its RIMs, when it was
    /// appraised ([`rim::RimAppraiser::appraise`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rim: Option<rim::RimClaims>,
}

/// The device chain's revocation, as checked with OCSP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationClaims {
    /// The outcome (only success is recorded; failures refuse the device).
    pub device_chain: ChainRevocation,
    /// One entry per certificate checked, issuer-most last.
    pub certificates: Vec<RevocationEntry>,
}

/// The device chain's revocation outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainRevocation {
    /// Every certificate OCSP covers was shown good at the check time.
    Good,
}

/// One certificate's OCSP status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEntry {
    /// The certificate's common name.
    pub subject: String,
    /// Who signed the response.
    pub responder: String,
    /// The response's window, RFC 3339.
    pub this_update: String,
    /// The response's window, RFC 3339.
    pub next_update: String,
}

impl GpuDeviceClaims {
    /// Records the result of [`ocsp::verify_chain_ocsp`] for this device.
    pub fn with_revocation(mut self, good: &[ocsp::OcspGood]) -> Self {
        let rfc3339 = |t: OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        self.revocation = Some(RevocationClaims {
            device_chain: ChainRevocation::Good,
            certificates: good
                .iter()
                .map(|g| RevocationEntry {
                    subject: g.subject.clone(),
                    responder: g.responder.clone(),
                    this_update: rfc3339(g.this_update),
                    next_update: rfc3339(g.next_update),
                })
                .collect(),
        });
        self
    }

    /// The digest at a 1-based SPDM index, hex.
    pub fn measurement(&self, index: u8) -> Option<&str> {
        self.measurements.iter().find(|m| m.index == index).map(|m| m.digest.as_str())
    }
}

/// What policy sees of a VM's GPUs (`input.claims.gpu`): a summary of the
/// set and every device's claims, in the order the VM presented them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSetClaims {
    /// GPUs presented (each verified, all distinct).
    pub count: usize,
    /// NVSwitches presented.
    pub switches: usize,
    /// The GPUs' common multi-GPU mode, if they report one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<FeatureFlag>,
    /// The NVLink topology check.
    pub topology: set::TopologyCheck,
    /// The driver versions the devices report, sorted, each once.
    pub driver_versions: Vec<String>,
    /// The VBIOS (NVSwitch: BIOS) versions the devices report, sorted, each once.
    pub vbios_versions: Vec<String>,
    /// `good` when every device's chain was shown good by OCSP responses
    /// (stapled, or fetched by the broker: `[gpu] ocsp_fetch`), else
    /// `not_checked`.
    pub revocation: SetRevocation,
    /// `match` when every device's measurements matched its RIMs; else the
    /// first of `mismatch`, `missing`, `not_appraised` that a device has.
    #[serde(default)]
    pub measurements: rim::RimResult,
    /// SHA-384 of the device set the CPU evidence commits to
    /// (`kbs_proto::device_set_digest`), hex.
    pub device_set_digest: String,
    /// Every device.
    pub devices: Vec<GpuDeviceClaims>,
}

/// Revocation of a whole set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetRevocation {
    /// Every device chain was checked and is good.
    Good,
    /// At least one device came without revocation evidence.
    NotChecked,
}

impl GpuSetClaims {
    /// Summarizes a set that passed [`set::check_device_set`].
    pub fn new(devices: Vec<GpuDeviceClaims>, summary: set::DeviceSetSummary, device_set_digest: &[u8]) -> Self {
        let versions = |f: fn(&GpuDeviceClaims) -> Option<&String>| -> Vec<String> {
            let all: std::collections::BTreeSet<&String> = devices.iter().filter_map(f).collect();
            all.into_iter().cloned().collect()
        };
        let driver_versions = versions(|d| d.driver_version.as_ref());
        let vbios_versions = versions(|d| d.vbios_version.as_ref());
        let revocation = match devices.iter().all(|d| d.revocation.is_some()) {
            true => SetRevocation::Good,
            false => SetRevocation::NotChecked,
        };
        let results: Vec<rim::RimResult> =
            devices.iter().map(|d| d.rim.as_ref().map_or(rim::RimResult::NotAppraised, |r| r.result)).collect();
        let measurements = [rim::RimResult::Mismatch, rim::RimResult::Missing, rim::RimResult::NotAppraised]
            .into_iter()
            .find(|r| results.contains(r))
            .unwrap_or(rim::RimResult::Match);
        Self {
            count: summary.gpus,
            switches: summary.switches,
            mode: summary.mode,
            topology: summary.topology,
            driver_versions,
            vbios_versions,
            revocation,
            measurements,
            device_set_digest: hex::encode(device_set_digest),
            devices,
        }
    }
}

/// A device whose evidence passed every check, as
/// [`GpuVerifier::verify_with_report`] hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDevice<'r> {
    /// The device's claims.
    pub claims: GpuDeviceClaims,
    /// The report, as parsed (for the RIM appraisal).
    pub report: GpuReport<'r>,
    /// The chain's DER certificates, leaf first, as parsed from its PEM:
    /// [`chain::CHAIN_LEN`] of them, ending at a pinned root (for the
    /// revocation check, [`ocsp::verify_chain_ocsp`], and the online
    /// fetcher, which take the chain as parsed here).
    pub chain: Vec<Vec<u8>>,
}

/// Default bound on the verified device-chain cache (the VEK cache's: a
/// chain is one per device and firmware, about 1 KiB cached).
pub const DEFAULT_CHAIN_CACHE_CAPACITY: usize = 4096;

/// A device chain that passed the checks that depend on it alone (4, the
/// chain to a pinned root; 6, the device; 7, the leaf's FWID extension and
/// the device key it names), with what the per-report checks and the claims
/// need. Cached by the digest of the chain's DER and the anchor set; the
/// validity windows (5), the report signature (3), the FWID equality (7)
/// and the nonce (8) are checked on every use.
struct VerifiedChain {
    /// The leaf's key, which signs reports.
    report_key: ParsedPublicKey,
    /// Every certificate's validity, leaf first: checked against `now` on
    /// every use.
    windows: Vec<CertWindow>,
    chip: String,
    arch: GpuArch,
    ueid: String,
    device_key_sha256: String,
    device_id: Option<String>,
    /// The FWID the leaf certifies, if it has the extension.
    leaf_fwid: Option<[u8; spdm::DIGEST_LEN]>,
}

/// Verified chains keyed by [`GpuVerifier::chain_key`].
type ChainCache = BoundedMap<[u8; 32], Arc<VerifiedChain>>;

/// Verifies NVIDIA device evidence against pinned anchors, caching the
/// device chains that verified (like the SEV-SNP verifier's VEK chains).
/// Cheap to share (`Send + Sync`); verification is pure.
pub struct GpuVerifier {
    anchors: GpuAnchors,
    /// SHA-256 over the pinned roots' fingerprints: part of every cache key.
    anchors_digest: [u8; 32],
    cache: RwLock<ChainCache>,
}

impl fmt::Debug for GpuVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuVerifier")
            .field("anchors", &self.anchors)
            .field("cached_chains", &self.cached_chains())
            .finish_non_exhaustive()
    }
}

impl GpuVerifier {
    /// A verifier over `anchors` (production: [`GpuAnchors::nvidia`]) with
    /// the default cache bound.
    pub fn new(anchors: GpuAnchors) -> Self {
        Self::with_cache_capacity(anchors, DEFAULT_CHAIN_CACHE_CAPACITY)
    }

    /// A verifier whose verified-chain cache holds at most `capacity`
    /// chains (0 disables caching).
    pub fn with_cache_capacity(anchors: GpuAnchors, capacity: usize) -> Self {
        let mut digest = Sha256::new();
        for fingerprint in anchors.root_fingerprints() {
            digest.update(fingerprint);
        }
        Self { anchors, anchors_digest: digest.finalize().into(), cache: RwLock::new(ChainCache::new(capacity)) }
    }

    /// How many verified device chains are cached.
    pub fn cached_chains(&self) -> usize {
        self.cache.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Runs every check (see the module docs), the nonce against
    /// `expected_nonce`, at time `now`.
    pub fn verify(
        &self,
        report: &[u8],
        chain_pem: &[u8],
        now: OffsetDateTime,
        expected_nonce: &GpuNonce,
    ) -> Result<GpuDeviceClaims, GpuError> {
        self.run(report, chain_pem, now, Some(expected_nonce)).map(|device| device.claims)
    }

    /// As [`Self::verify`], and the report and chain as parsed, for what is
    /// judged of them afterwards (the RIM appraisal, revocation) without
    /// parsing them again: they are handed out only once every check has
    /// passed.
    pub fn verify_with_report<'r>(
        &self,
        report: &'r [u8],
        chain_pem: &[u8],
        now: OffsetDateTime,
        expected_nonce: &GpuNonce,
    ) -> Result<VerifiedDevice<'r>, GpuError> {
        self.run(report, chain_pem, now, Some(expected_nonce))
    }

    /// Every check but the nonce, which is reported instead: for offline
    /// inspection of captured evidence (`kbsctl verify --gpu`) only. A
    /// release decision must never use this: without the nonce check any
    /// old report of a genuine device passes.
    pub fn inspect_without_nonce(
        &self,
        report: &[u8],
        chain_pem: &[u8],
        now: OffsetDateTime,
    ) -> Result<GpuDeviceClaims, GpuError> {
        self.run(report, chain_pem, now, None).map(|device| device.claims)
    }

    fn run<'r>(
        &self,
        report_bytes: &'r [u8],
        chain_pem: &[u8],
        now: OffsetDateTime,
        expected_nonce: Option<&GpuNonce>,
    ) -> Result<VerifiedDevice<'r>, GpuError> {
        // 1. Report.
        let report = GpuReport::parse(report_bytes)?;
        let fields = report.opaque_fields()?;
        let report_fwid = report.fwid()?;
        // 2.-7. Chain: from the cache (then 3 and 5 here), or checked now.
        let ders = chain::pem_chain(chain_pem)?;
        let key = self.chain_key(&ders);
        let hit = self.cache.read().unwrap_or_else(PoisonError::into_inner).get(&key).cloned();
        let (verified, cached) = match hit {
            Some(verified) => {
                // 3. Signature.
                verified
                    .report_key
                    .verify_sig(report.signed, &report.response.signature)
                    .map_err(|_| GpuError::SignatureInvalid)?;
                // 5. Validity.
                chain::check_validity(&verified.windows, now)?;
                (verified, true)
            }
            None => (Arc::new(self.verify_chain(&report, &ders, now)?), false),
        };
        // 7. FWID.
        let fwid = match (report_fwid, &verified.leaf_fwid) {
            (None, _) => FwidCheck::AbsentInReport,
            (Some(reported), Some(certified)) if reported == *certified => FwidCheck::Match,
            (Some(_), Some(_)) => return Err(GpuError::FwidMismatch("the leaf certifies another firmware".into())),
            (Some(_), None) => return Err(GpuError::FwidMismatch("the leaf has no FWID extension".into())),
        };
        // 8. Nonce.
        let nonce = match expected_nonce {
            Some(expected) => {
                constant_time::verify_slices_are_equal(&report.request.nonce.0, &expected.0)
                    .map_err(|_| GpuError::NonceMismatch)?;
                NonceCheck::Match
            }
            None => NonceCheck::NotChecked,
        };
        // Only a chain whose evidence passed every check is remembered.
        if !cached {
            self.cache.write().unwrap_or_else(PoisonError::into_inner).insert(key, Arc::clone(&verified));
        }
        // 9. Claims.
        let claims = GpuDeviceClaims {
            class: verified.arch.class(),
            vendor: "nvidia".into(),
            arch: verified.arch,
            chip: verified.chip.clone(),
            ueid: verified.ueid.clone(),
            device_key_sha256: verified.device_key_sha256.clone(),
            device_id: verified.device_id.clone(),
            nonce: report.request.nonce.to_hex(),
            fwid: report_fwid.filter(|_| fwid == FwidCheck::Match).map(hex::encode),
            driver_version: fields.driver_version,
            vbios_version: fields.vbios_version,
            project: fields.project,
            project_sku: fields.project_sku,
            chip_sku: fields.chip_sku,
            opaque_data_version: fields.opaque_data_version,
            feature: fields.feature,
            nvdec0: fields.nvdec0,
            pdis: fields.pdis,
            measurements: report
                .response
                .blocks
                .iter()
                .map(|b| GpuMeasurement { index: b.index, digest: hex::encode(b.digest) })
                .collect(),
            evidence: EvidenceChecks {
                signature: true,
                chain: true,
                fwid,
                nonce,
                opaque_format: report.response.opaque.format,
            },
            trailing_zeros: report.trailing_zeros,
            revocation: None,
            rim: None,
        };
        Ok(VerifiedDevice { claims, report, chain: ders })
    }

    /// The cache key of a chain: SHA-256 over the anchor set's digest and
    /// every certificate's DER, each preceded by its length.
    fn chain_key(&self, ders: &[Vec<u8>]) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.anchors_digest);
        for der in ders {
            digest.update(u64::try_from(der.len()).unwrap_or(u64::MAX).to_be_bytes());
            digest.update(der);
        }
        digest.finalize().into()
    }

    /// Checks 2 to 7 on a chain not in the cache, in order: parse the
    /// certificates (2), the report signature under the leaf (3), the
    /// chain to a pinned root (4) and its validity at `now` (5), the
    /// device (6) and the leaf's FWID extension (7, but the comparison
    /// with the report's, which the caller makes).
    fn verify_chain(
        &self,
        report: &GpuReport<'_>,
        ders: &[Vec<u8>],
        now: OffsetDateTime,
    ) -> Result<VerifiedChain, GpuError> {
        // 2. Chain.
        let certs = ders.iter().map(|der| chain::parse_cert(der)).collect::<Result<Vec<_>, _>>()?;
        let (Some(leaf), Some(device)) = (certs.first(), certs.get(1)) else {
            return Err(GpuError::ChainInvalid(format!("{} certificates, expected {}", certs.len(), chain::CHAIN_LEN)));
        };
        // 3. Signature.
        let report_key = chain::report_key(leaf)?;
        report_key.verify_sig(report.signed, &report.response.signature).map_err(|_| GpuError::SignatureInvalid)?;
        // 4, 5. Chain and validity.
        chain::verify_chain(&certs, ders, &self.anchors, now)?;
        // 6. Device.
        let chip = chip_of(leaf);
        if chip_of(device) != chip {
            return Err(GpuError::UnsupportedDevice(format!(
                "leaf names chip {chip}, device certificate {}",
                chip_of(device)
            )));
        }
        let arch = GpuArch::from_chip(&chip).ok_or_else(|| GpuError::UnsupportedDevice(format!("chip {chip}")))?;
        // 7. FWID (the leaf's side).
        let leaf_fwid = chain::leaf_fwid(leaf)?;
        let device_spki = device.public_key().raw;
        if let Some(spki) = leaf_fwid.as_ref().and_then(|f| f.device_spki.as_deref())
            && spki != device_spki
        {
            return Err(GpuError::FwidMismatch("the leaf's FWID extension names another device key".into()));
        }
        Ok(VerifiedChain {
            report_key,
            windows: certs.iter().map(CertWindow::of).collect(),
            chip,
            arch,
            ueid: hex::encode(anchors::strip_serial_zeros(leaf.raw_serial())),
            device_key_sha256: hex::encode(anchors::sha256(device_spki)),
            device_id: chain::device_id(leaf),
            leaf_fwid: leaf_fwid.map(|f| f.fwid),
        })
    }
}

/// The chip a device certificate names: the first word of its common name
/// (`GH100 A01 GSP FMC LF` → `GH100`).
fn chip_of(cert: &X509Certificate<'_>) -> String {
    anchors::common_name(cert).split(' ').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_split_malformed_from_failed() {
        let malformed = [
            GpuError::TooLarge { what: "report", len: 2, max: 1 },
            GpuError::Malformed("x".into()),
            GpuError::UnsupportedVersion("x".into()),
            GpuError::CertificateMalformed("x".into()),
        ];
        for e in malformed {
            assert_eq!(e.reason().grpc_code(), tonic::Code::InvalidArgument, "{e}");
        }
        let failed = [
            GpuError::UntrustedRoot("x".into()),
            GpuError::ChainInvalid("x".into()),
            GpuError::CertificateExpired("x".into()),
            GpuError::SignatureInvalid,
            GpuError::UnsupportedDevice("x".into()),
            GpuError::FwidMismatch("x".into()),
            GpuError::NonceMismatch,
        ];
        for e in failed {
            assert_eq!(e.reason(), ReasonCode::GpuEvidenceInvalid, "{e}");
            assert_eq!(e.reason().grpc_code(), tonic::Code::PermissionDenied);
        }
    }

    #[test]
    fn arch_names() {
        assert_eq!(GpuArch::from_chip("GH100"), Some(GpuArch::Hopper));
        assert_eq!(GpuArch::from_chip("GB100"), Some(GpuArch::Blackwell));
        assert_eq!(GpuArch::from_chip("LS_10"), Some(GpuArch::Ls10));
        assert_eq!(GpuArch::from_chip("GA100"), None);
        assert_eq!(GpuArch::Ls10.class(), DeviceClass::Nvswitch);
        assert_eq!(GpuArch::Blackwell.class(), DeviceClass::Gpu);
        assert_eq!(serde_json::to_string(&GpuArch::Ls10).unwrap(), "\"ls10\"");
        assert_eq!(serde_json::to_string(&FwidCheck::AbsentInReport).unwrap(), "\"absent_in_report\"");
    }

    fn test_anchors() -> GpuAnchors {
        let root = chain::pem_chain(attester_client::simulated::gpu_test_root_pem().as_bytes()).unwrap();
        let mut anchors = GpuAnchors::empty();
        anchors.add_root(&root[0]).unwrap();
        anchors
    }

    #[test]
    fn simulated_gpus_verify_under_the_test_root_only() {
        use attester_client::simulated::{SIMULATED_DRIVER_VERSION, SIMULATED_VBIOS_VERSION, SimulatedGpu};
        let gpu = SimulatedGpu::new(0).unwrap();
        let nonce = GpuNonce([0x5c; 32]);
        let report = gpu.report(&nonce.0).unwrap();
        let chain = gpu.cert_chain().as_bytes();
        let now = OffsetDateTime::now_utc();
        let claims = GpuVerifier::new(test_anchors()).verify(&report, chain, now, &nonce).unwrap();
        assert_eq!(claims.arch, GpuArch::Hopper);
        assert_eq!(claims.class, DeviceClass::Gpu);
        assert_eq!(claims.evidence.fwid, FwidCheck::Match);
        assert_eq!(claims.evidence.nonce, NonceCheck::Match);
        assert_eq!(claims.fwid.as_deref(), Some(hex::encode(attester_client::simulated::simulated_fwid()).as_str()));
        assert_eq!(claims.driver_version.as_deref(), Some(SIMULATED_DRIVER_VERSION));
        assert_eq!(claims.vbios_version.as_deref(), Some(SIMULATED_VBIOS_VERSION));
        assert_eq!(claims.feature, Some(FeatureFlag::Spt));
        assert_eq!(claims.measurements.len(), 64);
        assert!(claims.device_id.as_deref().unwrap().starts_with("NVIDIA:GH100:"), "{:?}", claims.device_id);
        // Another nonce, the real NVIDIA root, a tampered report: refused.
        let other = GpuVerifier::new(test_anchors()).verify(&report, chain, now, &GpuNonce([0x5d; 32]));
        assert_eq!(other.unwrap_err(), GpuError::NonceMismatch);
        let real = GpuVerifier::new(GpuAnchors::nvidia().unwrap()).verify(&report, chain, now, &nonce);
        assert!(matches!(real, Err(GpuError::UntrustedRoot(_))), "{real:?}");
        let mut tampered = report.clone();
        tampered[37 + 8 + 7 + 10] ^= 1; // inside the first digest
        let tampered = GpuVerifier::new(test_anchors()).verify(&tampered, chain, now, &nonce);
        assert_eq!(tampered.unwrap_err(), GpuError::SignatureInvalid);
        // Another GPU's chain with this GPU's report.
        let other_chain = SimulatedGpu::new(1).unwrap().cert_chain().as_bytes();
        let swapped = GpuVerifier::new(test_anchors()).verify(&report, other_chain, now, &nonce);
        assert_eq!(swapped.unwrap_err(), GpuError::SignatureInvalid);
    }

    /// A simulated GPU's report for `nonce`, its chain, and a time inside
    /// the chain's validity (2024-01-01 to 9999-12-31).
    fn simulated(index: usize, nonce: &GpuNonce) -> (Vec<u8>, String) {
        let gpu = attester_client::simulated::SimulatedGpu::new(index).unwrap();
        (gpu.report(&nonce.0).unwrap(), gpu.cert_chain().to_owned())
    }

    const BEFORE_THE_CHAIN: OffsetDateTime = time::macros::datetime!(2023-12-31 23:59:59 UTC);

    #[test]
    fn a_cached_chain_is_still_checked_against_every_report_and_time() {
        let verifier = GpuVerifier::new(test_anchors());
        let now = OffsetDateTime::now_utc();
        let nonce = GpuNonce([0x11; 32]);
        let (report, chain) = simulated(0, &nonce);
        let first = verifier.verify(&report, chain.as_bytes(), now, &nonce).unwrap();
        assert_eq!(verifier.cached_chains(), 1);
        // The cached chain yields the same claims, for a report with another nonce too.
        assert_eq!(verifier.verify(&report, chain.as_bytes(), now, &nonce).unwrap(), first);
        let other_nonce = GpuNonce([0x12; 32]);
        let (second, _) = simulated(0, &other_nonce);
        let again = verifier.verify(&second, chain.as_bytes(), now, &other_nonce).unwrap();
        assert_eq!((again.ueid.as_str(), again.nonce.as_str()), (first.ueid.as_str(), other_nonce.to_hex().as_str()));
        assert_eq!(verifier.cached_chains(), 1);
        // Per-report and per-time checks still refuse, on the cached chain.
        let expired = verifier.verify(&report, chain.as_bytes(), BEFORE_THE_CHAIN, &nonce);
        assert!(matches!(expired, Err(GpuError::CertificateExpired(_))), "{expired:?}");
        assert_eq!(verifier.verify(&report, chain.as_bytes(), now, &other_nonce).unwrap_err(), GpuError::NonceMismatch);
        let mut tampered = report.clone();
        tampered[37 + 8 + 7 + 10] ^= 1;
        assert_eq!(verifier.verify(&tampered, chain.as_bytes(), now, &nonce).unwrap_err(), GpuError::SignatureInvalid);
        // Another GPU's report under this GPU's (cached) chain.
        let (foreign, foreign_chain) = simulated(1, &nonce);
        assert_eq!(verifier.verify(&foreign, chain.as_bytes(), now, &nonce).unwrap_err(), GpuError::SignatureInvalid);
        // Another anchor set: another key, and the chain is refused.
        let nvidia = GpuVerifier::new(GpuAnchors::nvidia().unwrap());
        let ders = chain::pem_chain(chain.as_bytes()).unwrap();
        assert_ne!(nvidia.chain_key(&ders), verifier.chain_key(&ders));
        let untrusted = nvidia.verify(&report, chain.as_bytes(), now, &nonce);
        assert!(matches!(untrusted, Err(GpuError::UntrustedRoot(_))), "{untrusted:?}");
        assert_eq!(nvidia.cached_chains(), 0);
        // A chain differing in one certificate is another key.
        let other_ders = chain::pem_chain(foreign_chain.as_bytes()).unwrap();
        assert_ne!(verifier.chain_key(&other_ders), verifier.chain_key(&ders));
        assert_eq!(verifier.cached_chains(), 1);
    }

    /// `verify_with_report` runs the same checks as `verify` (uncached and
    /// cached chain alike) and hands out the report and the chain it
    /// parsed, only when they all pass.
    #[test]
    fn the_report_and_chain_are_handed_out_only_with_their_verified_claims() {
        let verifier = GpuVerifier::new(test_anchors());
        let now = OffsetDateTime::now_utc();
        let nonce = GpuNonce([0x21; 32]);
        let (report, chain) = simulated(0, &nonce);
        for cached in [false, true] {
            assert_eq!(verifier.cached_chains(), usize::from(cached));
            let device = verifier.verify_with_report(&report, chain.as_bytes(), now, &nonce).unwrap();
            assert_eq!(device.claims, verifier.verify(&report, chain.as_bytes(), now, &nonce).unwrap());
            assert_eq!(device.report, GpuReport::parse(&report).unwrap());
            assert_eq!(device.chain, chain::pem_chain(chain.as_bytes()).unwrap());
            assert_eq!(device.chain.len(), chain::CHAIN_LEN);
        }
        let other_nonce = GpuNonce([0x22; 32]);
        let refused = verifier.verify_with_report(&report, chain.as_bytes(), now, &other_nonce);
        assert_eq!(refused.unwrap_err(), GpuError::NonceMismatch);
        let mut tampered = report.clone();
        tampered[37 + 8 + 7 + 10] ^= 1;
        let refused = verifier.verify_with_report(&tampered, chain.as_bytes(), now, &nonce);
        assert_eq!(refused.unwrap_err(), GpuError::SignatureInvalid);
    }

    #[test]
    fn failures_are_never_cached() {
        let verifier = GpuVerifier::new(test_anchors());
        let now = OffsetDateTime::now_utc();
        let nonce = GpuNonce([0x21; 32]);
        let (report, chain) = simulated(2, &nonce);
        let chain = chain.as_bytes();
        let mut tampered = report.clone();
        tampered[37 + 8 + 7 + 10] ^= 1;
        let (foreign, _) = simulated(3, &nonce);
        let failures = [
            verifier.verify(&report, chain, BEFORE_THE_CHAIN, &nonce),
            verifier.verify(&report, chain, now, &GpuNonce([0x22; 32])),
            verifier.verify(&tampered, chain, now, &nonce),
            verifier.verify(&foreign, chain, now, &nonce),
        ];
        for failure in failures {
            assert!(failure.is_err());
            assert_eq!(verifier.cached_chains(), 0, "{failure:?}");
        }
        verifier.verify(&report, chain, now, &nonce).unwrap();
        assert_eq!(verifier.cached_chains(), 1);
        // Capacity zero: nothing is kept, everything still verifies.
        let uncached = GpuVerifier::with_cache_capacity(test_anchors(), 0);
        uncached.verify(&report, chain, now, &nonce).unwrap();
        assert_eq!(uncached.cached_chains(), 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Any bit flipped in a report's signed bytes or signature is
        /// refused by a cached chain as by a fresh one, and the cache
        /// does not grow.
        #[test]
        fn a_cached_chain_refuses_any_tampered_report(at in 0usize..4117, bit in 0u8..8) {
            use std::sync::OnceLock;
            static WARM: OnceLock<(GpuVerifier, Vec<u8>, String)> = OnceLock::new();
            let nonce = GpuNonce([0x31; 32]);
            let (verifier, report, chain) = WARM.get_or_init(|| {
                let verifier = GpuVerifier::new(test_anchors());
                let (report, chain) = simulated(4, &nonce);
                verifier.verify(&report, chain.as_bytes(), OffsetDateTime::now_utc(), &nonce).unwrap();
                (verifier, report, chain)
            });
            let at = at % report.len();
            let mut tampered = report.clone();
            tampered[at] ^= 1 << bit;
            let cold = GpuVerifier::new(test_anchors());
            let now = OffsetDateTime::now_utc();
            let warm_result = verifier.verify(&tampered, chain.as_bytes(), now, &nonce);
            proptest::prop_assert!(warm_result.is_err(), "byte {at} bit {bit}");
            proptest::prop_assert_eq!(warm_result, cold.verify(&tampered, chain.as_bytes(), now, &nonce));
            proptest::prop_assert_eq!((verifier.cached_chains(), cold.cached_chains()), (1, 0));
        }
    }

    #[test]
    fn eight_simulated_gpus_form_a_set() {
        use attester_client::evidence::GpuEvidenceSource as _;
        let nonce = GpuNonce([0x33; 32]);
        let verifier = GpuVerifier::new(test_anchors());
        let now = OffsetDateTime::now_utc();
        let devices: Vec<GpuDeviceClaims> = attester_client::simulated::SimulatedGpus::new(8)
            .unwrap()
            .gpu_evidence(&nonce.0)
            .unwrap()
            .iter()
            .map(|d| verifier.verify(&d.report, &d.cert_chain, now, &nonce).unwrap())
            .collect();
        let expected = set::DeviceSetExpectation { gpus: 8, switches: 0 };
        let summary = set::check_device_set(&devices, &expected).unwrap();
        assert_eq!((summary.gpus, summary.mode), (8, Some(FeatureFlag::Mpt)));
        let mut twice = devices.clone();
        twice[7] = devices[0].clone();
        assert!(matches!(set::check_device_set(&twice, &expected), Err(set::DeviceSetError::Duplicate(_))));
    }

    #[test]
    fn nonces_parse_from_hex() {
        assert_eq!(GpuNonce::from_hex(&"ab".repeat(32)), Some(GpuNonce([0xab; 32])));
        assert_eq!(GpuNonce::from_hex(&"ab".repeat(31)), None);
        assert_eq!(GpuNonce::from_hex("zz"), None);
        assert_eq!(GpuNonce([1; 32]).to_hex(), "01".repeat(32));
    }
}
