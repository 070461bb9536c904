//! SEV-SNP attestation reports: checked parsing and the pure verifier.
//!
//! An attestation report is 1184 bytes laid out as the ATTESTATION_REPORT
//! table of AMD's SEV-SNP ABI specification (all integers little-endian),
//! signed with ECDSA P-384/SHA-384 by a Versioned Chip Endorsement Key
//! (VCEK, unique to one chip and one TCB) or a Versioned Loaded Endorsement
//! Key (VLEK, provisioned by a cloud provider). AMD certifies both: the VCEK
//! by the generation's ASK, the VLEK by its ASVK, and both of those by the
//! generation's AMD Root Key (ARK).
//!
//! [`SnpVerifier::verify`] runs these checks in this order and stops at the
//! first failure, each failure its own [`EvidenceError`] variant:
//!
//! 1. **Parse** ([`SnpReport::parse`]), before any cryptography: exactly
//!    [`REPORT_LEN`] bytes (longer is `TooLarge`, shorter `Malformed`),
//!    version 2, 3 or 5 (`UnsupportedVersion`), signature algorithm 1,
//!    ECDSA P-384 with SHA-384 (`UnsupportedSignatureAlgorithm`), a known
//!    signing key and VMPL (`Malformed`), and every reserved field that the
//!    specification requires to be zero is zero (`ReservedNonZero`).
//! 2. **VEK chain**: the VCEK/VLEK is signed (RSASSA-PSS, SHA-384) by an
//!    ASK/ASVK that is itself signed by a pinned ARK. Intermediates come from
//!    the anchors or from the guest's certificate table, and the latter are
//!    used only if a pinned ARK signed them (`UntrustedRoot` when nothing
//!    pinned vouches for the VEK, `ChainInvalid` when a signature fails).
//!    The VEK's `productName` names the ARK's generation, and on v3+
//!    reports the generation the CPUID fields name; a VCEK-signed report
//!    needs an ASK-issued key and a VLEK-signed one an ASVK-issued key
//!    (`ChainInvalid`). The outcome is cached by the VEK's SHA-256, so the
//!    hot path costs one P-384 verification.
//! 3. **Validity**: the VEK, its intermediate and the ARK are each valid at
//!    `now` (`CertificateExpired`). Then **revocation**: the intermediate
//!    is not listed in its ARK's CRL (`Revoked`), and, when revocation is
//!    required, a CRL current at `now` is installed for the generation and
//!    kind (`CollateralUnavailable`, `CollateralExpired`); see
//!    [`super::amd_crl`]. This runs on cached chains too.
//! 4. **Report signature**: ECDSA P-384/SHA-384 over bytes `[0, 0x2A0)`
//!    under the VEK's key (`SignatureInvalid`).
//! 5. **TCB binding**: the VEK's SPL extensions, laid out per generation,
//!    equal `reported_tcb` byte for byte (`TcbMismatch`). Only
//!    `reported_tcb` is bound to the VEK; `current_tcb` may be newer.
//! 6. **Chip binding** (VCEK only): its hwID extension equals `chip_id`
//!    (the first 8 bytes on Turin) (`ChipIdMismatch`). VLEKs carry no hwID
//!    and VLEK reports may mask `chip_id`.
//! 7. **Freshness binding**: `report_data` equals the expected value, in
//!    constant time (`ReportDataMismatch`).
//! 8. **Claims**: the normalized claims document, built only now.
//!
//! Trust anchors and the clock are inputs, so production and tests run the
//! same code with different roots; the verifier does no I/O.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use aws_lc_rs::constant_time;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::asn1_rs::{FromDer, Ia5String};
use x509_parser::certificate::X509Certificate;

use super::amd_crl::{AmdCrl, Revocation};
use super::anchors::{self, CertWindow, Generation, Intermediate, IntermediateKind, MAX_CERT_LEN, SnpAnchors};
use super::bounded::BoundedMap;
use super::{Claims, EvidenceError, TeeKind};

/// Size of an attestation report, signature included.
pub const REPORT_LEN: usize = 1184;

/// The signed part of a report: bytes `[0, 0x2A0)`.
pub const SIGNED_LEN: usize = 0x2A0;

/// The only report signature algorithm: ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Report versions this verifier understands.
pub const SUPPORTED_VERSIONS: [u32; 3] = [2, 3, 5];

/// Most guest-supplied certificates looked at per verification.
pub const MAX_EXTRA_CERTS: usize = 8;

/// Default bound on the verified-VEK cache.
pub const DEFAULT_VEK_CACHE_CAPACITY: usize = 4096;

/// AMD's VCEK/VLEK extension arc, 1.3.6.1.4.1.3704.1.
const OID_AMD_VEK_ARC: &str = "1.3.6.1.4.1.3704.1.";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";

/// Which AMD key signed the report (key_info bits 4:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key (chip-unique, from AMD KDS).
    Vcek,
    /// Versioned Loaded Endorsement Key (provisioned by a cloud provider).
    Vlek,
}

/// A raw 8-byte TCB_VERSION as the report carries it. Its layout depends
/// on the generation; see [`RawTcb::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RawTcb(pub [u8; 8]);

impl RawTcb {
    /// Decodes the SPLs: Milan/Genoa `[bl, tee, 0, 0, 0, 0, snp, ucode]`,
    /// Turin `[fmc, bl, tee, snp, 0, 0, 0, ucode]`.
    pub fn decode(self, generation: Generation) -> TcbVersion {
        let [b0, b1, b2, b3, _, _, b6, b7] = self.0;
        match generation {
            Generation::Milan | Generation::Genoa => {
                TcbVersion { bootloader: b0, tee: b1, snp: b6, microcode: b7, fmc: None }
            }
            Generation::Turin => TcbVersion { bootloader: b1, tee: b2, snp: b3, microcode: b7, fmc: Some(b0) },
        }
    }
}

impl fmt::Display for RawTcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A decoded TCB version: the security patch level of each component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcbVersion {
    /// Bootloader SPL.
    pub bootloader: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin and later only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

impl TcbVersion {
    /// Encodes the SPLs in `generation`'s layout, reserved bytes zero.
    pub fn encode(&self, generation: Generation) -> RawTcb {
        match generation {
            Generation::Milan | Generation::Genoa => {
                RawTcb([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])
            }
            Generation::Turin => {
                RawTcb([self.fmc.unwrap_or(0), self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
            }
        }
    }
}

impl fmt::Display for TcbVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bl={} tee={} snp={} ucode={}", self.bootloader, self.tee, self.snp, self.microcode)?;
        if let Some(fmc) = self.fmc {
            write!(f, " fmc={fmc}")?;
        }
        Ok(())
    }
}

/// CPUID family, model and stepping (report version 3 and later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpuid {
    /// Combined family (e.g. 0x19).
    pub family: u8,
    /// Combined model.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
}

/// A firmware version, `major.minor.build`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// The guest policy the VM was launched with, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpPolicy {
    /// The raw 64-bit policy.
    pub raw: u64,
    /// Minimum ABI minor version (bits 7:0).
    pub abi_minor: u8,
    /// Minimum ABI major version (bits 15:8).
    pub abi_major: u8,
    /// SMT allowed (bit 16).
    pub smt: bool,
    /// Migration agent allowed (bit 18).
    pub migrate_ma: bool,
    /// Debugging allowed (bit 19): the hypervisor can read guest memory.
    pub debug: bool,
    /// Single socket only (bit 20).
    pub single_socket: bool,
    /// CXL may be populated with guest memory (bit 21).
    pub cxl_allow: bool,
    /// AES-256-XTS required for memory encryption (bit 22).
    pub mem_aes_256_xts: bool,
    /// Running average power limit must be disabled (bit 23).
    pub rapl_dis: bool,
    /// Ciphertext hiding must be enabled (bit 24).
    pub ciphertext_hiding: bool,
    /// Guest page swapping disabled (bit 25).
    pub page_swap_disable: bool,
}

impl SnpPolicy {
    /// Decodes a raw policy.
    pub const fn from_raw(raw: u64) -> Self {
        Self {
            raw,
            abi_minor: (raw & 0xff) as u8,
            abi_major: ((raw >> 8) & 0xff) as u8,
            smt: bit(raw, 16),
            migrate_ma: bit(raw, 18),
            debug: bit(raw, 19),
            single_socket: bit(raw, 20),
            cxl_allow: bit(raw, 21),
            mem_aes_256_xts: bit(raw, 22),
            rapl_dis: bit(raw, 23),
            ciphertext_hiding: bit(raw, 24),
            page_swap_disable: bit(raw, 25),
        }
    }
}

/// Bit `n` of `raw`.
const fn bit(raw: u64, n: u32) -> bool {
    (raw >> n) & 1 == 1
}

/// PLATFORM_INFO: how the host platform was configured, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformInfo {
    /// The raw 64-bit value.
    pub raw: u64,
    /// SMT is enabled (bit 0).
    pub smt_enabled: bool,
    /// Transparent SME is enabled (bit 1).
    pub tsme_enabled: bool,
    /// ECC memory is in use (bit 2).
    pub ecc_enabled: bool,
    /// RAPL is disabled (bit 3).
    pub rapl_disabled: bool,
    /// Ciphertext hiding is enabled (bit 4).
    pub ciphertext_hiding_enabled: bool,
    /// The memory alias check completed (bit 5).
    pub alias_check_complete: bool,
    /// SEV-TIO is enabled (bit 7).
    pub tio_enabled: bool,
}

impl PlatformInfo {
    /// Decodes a raw PLATFORM_INFO.
    pub const fn from_raw(raw: u64) -> Self {
        Self {
            raw,
            smt_enabled: bit(raw, 0),
            tsme_enabled: bit(raw, 1),
            ecc_enabled: bit(raw, 2),
            rapl_disabled: bit(raw, 3),
            ciphertext_hiding_enabled: bit(raw, 4),
            alias_check_complete: bit(raw, 5),
            tio_enabled: bit(raw, 7),
        }
    }
}

/// A report that passed check 1: the right size, a known version and
/// signature algorithm, zero reserved fields. Nothing in it is authentic
/// yet; [`SnpVerifier`] establishes that.
#[derive(Clone)]
pub struct SnpReport {
    raw: Box<[u8; REPORT_LEN]>,
    version: u32,
    guest_svn: u32,
    policy: u64,
    family_id: [u8; 16],
    image_id: [u8; 16],
    vmpl: u32,
    current_tcb: RawTcb,
    platform_info: u64,
    key_info: u32,
    signing_key: SigningKey,
    report_data: [u8; 64],
    measurement: [u8; 48],
    host_data: [u8; 32],
    id_key_digest: [u8; 48],
    author_key_digest: [u8; 48],
    report_id: [u8; 32],
    report_id_ma: [u8; 32],
    reported_tcb: RawTcb,
    cpuid: Option<Cpuid>,
    chip_id: [u8; 64],
    committed_tcb: RawTcb,
    current_firmware: FirmwareVersion,
    committed_firmware: FirmwareVersion,
    launch_tcb: RawTcb,
    launch_mitigation_vector: Option<u64>,
    current_mitigation_vector: Option<u64>,
    sig_r: [u8; 72],
    sig_s: [u8; 72],
}

/// A bounds-checked little-endian cursor over the report bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EvidenceError> {
        let (head, tail) =
            self.rest.split_first_chunk::<N>().ok_or_else(|| EvidenceError::Malformed("report is truncated".into()))?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, EvidenceError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, EvidenceError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, EvidenceError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn tcb(&mut self) -> Result<RawTcb, EvidenceError> {
        Ok(RawTcb(self.array()?))
    }

    /// Reads `N` bytes that the specification requires to be zero.
    fn reserved<const N: usize>(&mut self, field: &'static str) -> Result<(), EvidenceError> {
        if self.array::<N>()?.iter().any(|b| *b != 0) {
            return Err(EvidenceError::ReservedNonZero(field));
        }
        Ok(())
    }

    /// A firmware version: build, minor, major, then one reserved byte.
    fn firmware(&mut self, field: &'static str) -> Result<FirmwareVersion, EvidenceError> {
        let build = self.u8()?;
        let minor = self.u8()?;
        let major = self.u8()?;
        self.reserved::<1>(field)?;
        Ok(FirmwareVersion { major, minor, build })
    }
}

impl SnpReport {
    /// Check 1: parses a report, before any cryptography. Reads every
    /// field at its ABI offset (commented below) through a bounds-checked
    /// cursor and refuses what the specification does not allow.
    pub fn parse(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > REPORT_LEN {
            return Err(EvidenceError::TooLarge { len: bytes.len(), max: REPORT_LEN });
        }
        let raw: [u8; REPORT_LEN] = bytes
            .try_into()
            .map_err(|_| EvidenceError::Malformed(format!("report is {} bytes, expected {REPORT_LEN}", bytes.len())))?;
        let mut r = Reader { rest: &raw };

        let version = r.u32()?; // 0x000
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(EvidenceError::UnsupportedVersion(version));
        }
        let guest_svn = r.u32()?; // 0x004
        let policy = r.u64()?; // 0x008
        let family_id = r.array()?; // 0x010
        let image_id = r.array()?; // 0x020
        let vmpl = r.u32()?; // 0x030
        let sig_algo = r.u32()?; // 0x034
        if sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(EvidenceError::UnsupportedSignatureAlgorithm(sig_algo));
        }
        let current_tcb = r.tcb()?; // 0x038
        let platform_info = r.u64()?; // 0x040
        let key_info = r.u32()?; // 0x048
        // key_info: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2
        // SIGNING_KEY, bits 31:5 reserved.
        if key_info >> 5 != 0 {
            return Err(EvidenceError::ReservedNonZero("key_info bits 31:5"));
        }
        let signing_key = match (key_info >> 2) & 0b111 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => return Err(EvidenceError::Malformed("report is unsigned".into())),
            other => {
                return Err(EvidenceError::Malformed(format!("unknown signing key {other}")));
            }
        };
        // Only VMPLs 0-3 exist; anything else is not a firmware report.
        if vmpl > 3 {
            return Err(EvidenceError::Malformed(format!("vmpl {vmpl} out of range")));
        }
        r.reserved::<4>("0x04C")?; // 0x04C
        let report_data = r.array()?; // 0x050
        let measurement = r.array()?; // 0x090
        let host_data = r.array()?; // 0x0C0
        let id_key_digest = r.array()?; // 0x0E0
        let author_key_digest = r.array()?; // 0x110
        let report_id = r.array()?; // 0x140
        let report_id_ma = r.array()?; // 0x160
        let reported_tcb = r.tcb()?; // 0x180
        // 0x188: CPUID family, model, stepping since version 3; reserved before.
        let cpuid = if version >= 3 {
            Some(Cpuid { family: r.u8()?, model: r.u8()?, stepping: r.u8()? })
        } else {
            r.reserved::<3>("0x188 (cpuid, v2)")?;
            None
        };
        r.reserved::<21>("0x18B")?; // 0x18B
        let chip_id = r.array()?; // 0x1A0
        let committed_tcb = r.tcb()?; // 0x1E0
        let current_firmware = r.firmware("0x1EB")?; // 0x1E8
        let committed_firmware = r.firmware("0x1EF")?; // 0x1EC
        let launch_tcb = r.tcb()?; // 0x1F0
        // 0x1F8: launch and current mitigation vectors since version 5.
        let (launch_mitigation_vector, current_mitigation_vector) = if version >= 5 {
            let launch = r.u64()?;
            let current = r.u64()?;
            r.reserved::<152>("0x208")?;
            (Some(launch), Some(current))
        } else {
            r.reserved::<168>("0x1F8")?;
            (None, None)
        };
        // 0x2A0: signature r and s, 72 bytes each (little-endian), then zeros.
        let sig_r = r.array()?;
        let sig_s = r.array()?;
        r.reserved::<368>("0x330 (signature)")?;
        if !r.rest.is_empty() {
            return Err(EvidenceError::Malformed("report layout overrun".into()));
        }

        Ok(Self {
            raw: Box::new(raw),
            version,
            guest_svn,
            policy,
            family_id,
            image_id,
            vmpl,
            current_tcb,
            platform_info,
            key_info,
            signing_key,
            report_data,
            measurement,
            host_data,
            id_key_digest,
            author_key_digest,
            report_id,
            report_id_ma,
            reported_tcb,
            cpuid,
            chip_id,
            committed_tcb,
            current_firmware,
            committed_firmware,
            launch_tcb,
            launch_mitigation_vector,
            current_mitigation_vector,
            sig_r,
            sig_s,
        })
    }

    /// Report format version (2, 3 or 5).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The generation the CPUID fields name (versions 3 and later). For
    /// version 2 reports, and CPUIDs this broker does not know, this is
    /// `None`: the generation then comes from the VEK's `productName`
    /// alone, and [`VerifiedSnp::generation`] has it.
    pub fn generation(&self) -> Option<Generation> {
        self.cpuid.and_then(|c| Generation::from_cpuid(c.family, c.model))
    }

    /// CPUID family, model, stepping (versions 3 and later).
    pub fn cpuid(&self) -> Option<Cpuid> {
        self.cpuid
    }

    /// Guest security version number.
    pub fn guest_svn(&self) -> u32 {
        self.guest_svn
    }

    /// Raw guest policy.
    pub fn policy(&self) -> u64 {
        self.policy
    }

    /// Family ID from the ID block.
    pub fn family_id(&self) -> &[u8; 16] {
        &self.family_id
    }

    /// Image ID from the ID block.
    pub fn image_id(&self) -> &[u8; 16] {
        &self.image_id
    }

    /// The VMPL that requested the report.
    pub fn vmpl(&self) -> u32 {
        self.vmpl
    }

    /// The platform's current TCB (may be newer than `reported_tcb`).
    pub fn current_tcb(&self) -> RawTcb {
        self.current_tcb
    }

    /// Raw PLATFORM_INFO.
    pub fn platform_info(&self) -> u64 {
        self.platform_info
    }

    /// Raw key_info.
    pub fn key_info(&self) -> u32 {
        self.key_info
    }

    /// Whether an author key signed the ID block (key_info bit 0).
    pub fn author_key_en(&self) -> bool {
        self.key_info & 1 == 1
    }

    /// Whether the chip key was masked (key_info bit 1).
    pub fn mask_chip_key(&self) -> bool {
        (self.key_info >> 1) & 1 == 1
    }

    /// Which key signed the report.
    pub fn signing_key(&self) -> SigningKey {
        self.signing_key
    }

    /// The guest-chosen 64 bytes bound into the report.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.report_data
    }

    /// The launch measurement.
    pub fn measurement(&self) -> &[u8; 48] {
        &self.measurement
    }

    /// Host data (the init-data digest in CoCo).
    pub fn host_data(&self) -> &[u8; 32] {
        &self.host_data
    }

    /// SHA-384 of the ID key that signed the ID block, or zero.
    pub fn id_key_digest(&self) -> &[u8; 48] {
        &self.id_key_digest
    }

    /// SHA-384 of the author key, or zero.
    pub fn author_key_digest(&self) -> &[u8; 48] {
        &self.author_key_digest
    }

    /// Report ID of the guest.
    pub fn report_id(&self) -> &[u8; 32] {
        &self.report_id
    }

    /// Report ID of the guest's migration agent.
    pub fn report_id_ma(&self) -> &[u8; 32] {
        &self.report_id_ma
    }

    /// The TCB the VEK was derived for; bound to the VEK (check 5).
    pub fn reported_tcb(&self) -> RawTcb {
        self.reported_tcb
    }

    /// The chip identifier (all zero when masked).
    pub fn chip_id(&self) -> &[u8; 64] {
        &self.chip_id
    }

    /// The committed TCB.
    pub fn committed_tcb(&self) -> RawTcb {
        self.committed_tcb
    }

    /// The TCB at launch.
    pub fn launch_tcb(&self) -> RawTcb {
        self.launch_tcb
    }

    /// Current firmware version.
    pub fn current_firmware(&self) -> FirmwareVersion {
        self.current_firmware
    }

    /// Committed firmware version.
    pub fn committed_firmware(&self) -> FirmwareVersion {
        self.committed_firmware
    }

    /// Launch mitigation vector (version 5).
    pub fn launch_mitigation_vector(&self) -> Option<u64> {
        self.launch_mitigation_vector
    }

    /// Current mitigation vector (version 5).
    pub fn current_mitigation_vector(&self) -> Option<u64> {
        self.current_mitigation_vector
    }

    /// All 1184 bytes as received.
    pub fn raw(&self) -> &[u8; REPORT_LEN] {
        &self.raw
    }

    /// The signed bytes `[0, 0x2A0)`.
    pub fn signed_bytes(&self) -> &[u8] {
        self.raw.split_first_chunk::<SIGNED_LEN>().map_or(&[][..], |(signed, _)| signed.as_slice())
    }

    /// The signature as fixed-width big-endian `r || s` (48 + 48 bytes).
    /// The report stores each as 72 little-endian bytes; the top 24 must be
    /// zero for a P-384 value, and a signature with them set is refused.
    pub fn signature_p384(&self) -> Result<[u8; 96], EvidenceError> {
        let r = le72_to_be48(&self.sig_r).ok_or(EvidenceError::SignatureInvalid)?;
        let s = le72_to_be48(&self.sig_s).ok_or(EvidenceError::SignatureInvalid)?;
        let mut out = [0u8; 96];
        for (dst, src) in out.iter_mut().zip(r.iter().chain(s.iter())) {
            *dst = *src;
        }
        Ok(out)
    }
}

impl fmt::Debug for SnpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnpReport")
            .field("version", &self.version)
            .field("signing_key", &self.signing_key)
            .field("cpuid", &self.cpuid)
            .field("vmpl", &self.vmpl)
            .field("policy", &format_args!("{:#x}", self.policy))
            .field("reported_tcb", &format_args!("{}", self.reported_tcb))
            .field("measurement", &hex::encode(self.measurement))
            .field("chip_id", &hex::encode(self.chip_id))
            .finish_non_exhaustive()
    }
}

/// A 72-byte little-endian integer as 48 big-endian bytes, if it fits.
fn le72_to_be48(le: &[u8; 72]) -> Option<[u8; 48]> {
    let (low, high) = le.split_first_chunk::<48>()?;
    if high.iter().any(|b| *b != 0) {
        return None;
    }
    let mut be = *low;
    be.reverse();
    Some(be)
}

/// SPLs a VEK certifies (extensions 1.3.6.1.4.1.3704.1.3.x).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct VekSpl {
    bootloader: Option<u32>,
    tee: Option<u32>,
    snp: Option<u32>,
    microcode: Option<u32>,
    fmc: Option<u32>,
    /// A reserved SPL (3.4-3.7) with a non-zero value.
    reserved_nonzero: bool,
}

impl VekSpl {
    /// The `reported_tcb` bytes a report signed by this VEK must carry.
    fn expected_tcb(&self, generation: Generation) -> Result<RawTcb, String> {
        let spl = |value: Option<u32>, name: &str| -> Result<u8, String> {
            let v = value.ok_or_else(|| format!("VEK has no {name} SPL extension"))?;
            u8::try_from(v).map_err(|_| format!("VEK {name} SPL {v} is out of range"))
        };
        if self.reserved_nonzero {
            return Err("VEK has a non-zero reserved SPL extension".into());
        }
        let fmc = match generation {
            Generation::Turin => Some(spl(self.fmc, "FMC")?),
            Generation::Milan | Generation::Genoa => {
                if self.fmc.unwrap_or(0) != 0 {
                    return Err(format!("{generation} VEK carries an FMC SPL"));
                }
                None
            }
        };
        Ok(TcbVersion {
            bootloader: spl(self.bootloader, "bootloader")?,
            tee: spl(self.tee, "TEE")?,
            snp: spl(self.snp, "SNP")?,
            microcode: spl(self.microcode, "microcode")?,
            fmc,
        }
        .encode(generation))
    }
}

/// A VCEK/VLEK whose chain to a pinned ARK verified (check 2), with
/// everything the per-report checks need.
struct VerifiedVek {
    generation: Generation,
    signer: IntermediateKind,
    product_name: String,
    key: ParsedPublicKey,
    /// VEK, intermediate, ARK: checked against `now` on every use.
    windows: [CertWindow; 3],
    /// The intermediate's serial number, checked against its ARK's CRL
    /// on every use.
    signer_serial: Vec<u8>,
    spl: VekSpl,
    hwid: Option<Vec<u8>>,
}

/// Verified VEKs keyed by the SHA-256 of their DER.
type VekCache = BoundedMap<[u8; 32], Arc<VerifiedVek>>;

/// The SEV-SNP verifier: trust anchors plus a cache of verified VEK
/// chains. Cheap to share (`Send + Sync`); verification is pure.
pub struct SnpVerifier {
    anchors: SnpAnchors,
    cache: RwLock<VekCache>,
    revocation: Revocation,
    /// The newest verified CRL per generation and kind.
    crls: RwLock<HashMap<(Generation, IntermediateKind), Arc<AmdCrl>>>,
}

/// What [`SnpVerifier::install_crl`] did with one generation's CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrlInstall {
    /// It is now the CRL in force for its generation and kind.
    Installed,
    /// The same CRL was already installed.
    Unchanged,
    /// A newer CRL (later `thisUpdate`) is installed and stays.
    Older,
}

impl fmt::Debug for SnpVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnpVerifier")
            .field("anchors", &self.anchors)
            .field("cached_veks", &self.cached_veks())
            .field("revocation", &self.revocation)
            .finish_non_exhaustive()
    }
}

/// Evidence that passed every check. Only [`SnpVerifier::verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedSnp {
    /// The normalized claims document.
    pub claims: Claims,
    report: SnpReport,
    generation: Generation,
    vek_sha256: [u8; 32],
}

impl VerifiedSnp {
    /// The verified report.
    pub fn report(&self) -> &SnpReport {
        &self.report
    }

    /// The generation, from CPUID (v3+) or the VEK's `productName`.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// SHA-256 of the VEK's DER, for audit records.
    pub fn vek_sha256(&self) -> &[u8; 32] {
        &self.vek_sha256
    }
}

/// SNP-specific claims, built only from verified evidence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnpClaims {
    /// Report version.
    pub version: u32,
    /// Processor generation.
    pub generation: Generation,
    /// The VEK's `productName` (e.g. `Milan-B0`).
    pub vek_product: String,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy, decoded.
    pub policy: SnpPolicy,
    /// VMPL that requested the report.
    pub vmpl: u32,
    /// Which key signed the report.
    pub signing_key: SigningKey,
    /// An author key signed the ID block.
    pub author_key_en: bool,
    /// The chip key was masked.
    pub mask_chip_key: bool,
    /// The TCB the VEK certifies.
    pub reported_tcb: TcbVersion,
    /// The platform's current TCB.
    pub current_tcb: TcbVersion,
    /// The committed TCB.
    pub committed_tcb: TcbVersion,
    /// The TCB at launch.
    pub launch_tcb: TcbVersion,
    /// Chip ID, lowercase hex (zeros when masked).
    pub chip_id: String,
    /// Whether `chip_id` is all zero (masked).
    pub chip_id_masked: bool,
    /// Family ID, lowercase hex.
    pub family_id: String,
    /// Image ID, lowercase hex.
    pub image_id: String,
    /// ID key digest, lowercase hex.
    pub id_key_digest: String,
    /// Author key digest, lowercase hex.
    pub author_key_digest: String,
    /// Report ID, lowercase hex.
    pub report_id: String,
    /// Migration agent report ID, lowercase hex.
    pub report_id_ma: String,
    /// Host data, lowercase hex.
    pub host_data: String,
    /// Platform info, decoded.
    pub platform_info: PlatformInfo,
    /// CPUID (v3+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpuid: Option<Cpuid>,
    /// Current firmware version.
    pub current_firmware: FirmwareVersion,
    /// Committed firmware version.
    pub committed_firmware: FirmwareVersion,
    /// Launch mitigation vector (v5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_mitigation_vector: Option<u64>,
    /// Current mitigation vector (v5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_mitigation_vector: Option<u64>,
}

impl SnpVerifier {
    /// A verifier over `anchors` with the default cache bound.
    pub fn new(anchors: SnpAnchors) -> Self {
        Self::with_cache_capacity(anchors, DEFAULT_VEK_CACHE_CAPACITY)
    }

    /// A verifier whose verified-VEK cache holds at most `capacity` entries
    /// (0 disables caching).
    pub fn with_cache_capacity(anchors: SnpAnchors, capacity: usize) -> Self {
        Self {
            anchors,
            cache: RwLock::new(VekCache::new(capacity)),
            revocation: Revocation::default(),
            crls: RwLock::new(HashMap::new()),
        }
    }

    /// The same verifier with revocation treated per `revocation`.
    #[must_use]
    pub fn with_revocation(mut self, revocation: Revocation) -> Self {
        self.revocation = revocation;
        self
    }

    /// How revocation is treated.
    pub fn revocation(&self) -> Revocation {
        self.revocation
    }

    /// Verifies `der` as the CRL for `kind`'s certificates (see
    /// [`AmdCrl::verify`]) and installs it for each generation whose ARK
    /// signed it, unless a newer one is installed. A CRL already past its
    /// `nextUpdate` at `now` is refused (`CollateralExpired`).
    pub fn install_crl(
        &self,
        der: &[u8],
        kind: IntermediateKind,
        now: OffsetDateTime,
    ) -> Result<Vec<(Generation, CrlInstall)>, EvidenceError> {
        let crls = AmdCrl::verify(der, kind, &self.anchors)?;
        let mut out = Vec::with_capacity(crls.len());
        let mut installed = self.crls.write().unwrap_or_else(PoisonError::into_inner);
        for crl in crls {
            if now > crl.next_update() {
                return Err(EvidenceError::CollateralExpired(format!(
                    "the {} {kind:?} CRL's nextUpdate {} has passed",
                    crl.generation(),
                    crl.next_update()
                )));
            }
            let generation = crl.generation();
            let outcome = match installed.get(&(generation, kind)) {
                Some(old) if old.sha256() == crl.sha256() => CrlInstall::Unchanged,
                Some(old) if old.this_update() > crl.this_update() => CrlInstall::Older,
                _ => {
                    installed.insert((generation, kind), Arc::new(crl));
                    CrlInstall::Installed
                }
            };
            out.push((generation, outcome));
        }
        Ok(out)
    }

    /// The installed CRLs.
    pub fn crls(&self) -> Vec<Arc<AmdCrl>> {
        self.crls.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Check 3b: the VEK's intermediate is not revoked, and under
    /// [`Revocation::Require`] a current CRL says so.
    fn check_revocation(&self, vek: &VerifiedVek, now: OffsetDateTime) -> Result<(), EvidenceError> {
        let crl = self.crls.read().unwrap_or_else(PoisonError::into_inner).get(&(vek.generation, vek.signer)).cloned();
        let what = || format!("{} {:?}", vek.generation, vek.signer);
        match crl {
            // Listed is revoked, however old the CRL: AMD does not un-revoke.
            Some(crl) if crl.lists(&vek.signer_serial) => Err(EvidenceError::Revoked(format!(
                "the {} with serial {} is listed in the ARK's CRL of {}",
                what(),
                hex::encode(&vek.signer_serial),
                crl.this_update()
            ))),
            Some(crl) if crl.current_at(now) => Ok(()),
            _ if self.revocation == Revocation::BestEffort => Ok(()),
            Some(crl) => Err(EvidenceError::CollateralExpired(format!(
                "the {} CRL is valid from {} to {}, not at {now}",
                what(),
                crl.this_update(),
                crl.next_update()
            ))),
            None => Err(EvidenceError::CollateralUnavailable(format!("no CRL for {} is installed", what()))),
        }
    }

    /// The anchors this verifier trusts.
    pub fn anchors(&self) -> &SnpAnchors {
        &self.anchors
    }

    /// How many verified VEK chains are cached.
    pub fn cached_veks(&self) -> usize {
        self.cache.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Verifies a report bound to a request: every check of the module
    /// documentation, its `report_data` equal to `expected_report_data`
    /// (check 7).
    ///
    /// `vek_der`: the VCEK or VLEK (DER). `extra_certs`: DER certificates
    /// the guest sent (ASK/ASVK/ARK from its table), used only if they chain
    /// to a pinned ARK.
    pub fn verify(
        &self,
        report: &[u8],
        vek_der: &[u8],
        extra_certs: &[Vec<u8>],
        now: OffsetDateTime,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedSnp, EvidenceError> {
        // 1. Parse, before any cryptography.
        let report = SnpReport::parse(report)?;
        self.verify_parsed(report, vek_der, extra_certs, now, expected_report_data)
    }

    /// Checks 2-8 on a report already parsed (check 1) with
    /// [`SnpReport::parse`], e.g. after [`super::collateral::VekResolver`]
    /// used it to find the VEK.
    pub fn verify_parsed(
        &self,
        report: SnpReport,
        vek_der: &[u8],
        extra_certs: &[Vec<u8>],
        now: OffsetDateTime,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedSnp, EvidenceError> {
        self.check(report, vek_der, extra_certs, now, Some(expected_report_data))
    }

    /// Every check but check 7: nothing binds the report to a request, so
    /// its `report_data` is compared with nothing. Only for offline operator
    /// verification (`kbsctl verify snp`) of a report whose freshness the
    /// operator establishes otherwise; a release uses [`Self::verify`].
    pub fn verify_ignoring_report_data(
        &self,
        report: &[u8],
        vek_der: &[u8],
        extra_certs: &[Vec<u8>],
        now: OffsetDateTime,
    ) -> Result<VerifiedSnp, EvidenceError> {
        self.verify_parsed_ignoring_report_data(SnpReport::parse(report)?, vek_der, extra_certs, now)
    }

    /// [`Self::verify_ignoring_report_data`] on a report already parsed
    /// with [`SnpReport::parse`].
    pub fn verify_parsed_ignoring_report_data(
        &self,
        report: SnpReport,
        vek_der: &[u8],
        extra_certs: &[Vec<u8>],
        now: OffsetDateTime,
    ) -> Result<VerifiedSnp, EvidenceError> {
        self.check(report, vek_der, extra_certs, now, None)
    }

    /// Checks 2-8; check 7 only when `expected_report_data` is given.
    fn check(
        &self,
        report: SnpReport,
        vek_der: &[u8],
        extra_certs: &[Vec<u8>],
        now: OffsetDateTime,
        expected_report_data: Option<&[u8; 64]>,
    ) -> Result<VerifiedSnp, EvidenceError> {
        // 2. VEK chain to a pinned ARK (cached), and its fit to the report.
        let vek_sha256 = anchors::sha256(vek_der);
        let vek = self.vek_chain(vek_der, &vek_sha256, extra_certs)?;
        if let Some(cpu) = report.generation()
            && cpu != vek.generation
        {
            return Err(EvidenceError::ChainInvalid(format!(
                "report CPUID names {cpu} but the VEK is for {}",
                vek.generation
            )));
        }
        match (report.signing_key(), vek.signer) {
            (SigningKey::Vcek, IntermediateKind::Ask) | (SigningKey::Vlek, IntermediateKind::Asvk) => {}
            (key, signer) => {
                return Err(EvidenceError::ChainInvalid(format!(
                    "report is signed by a {key:?} but the certificate is issued by an {signer:?}"
                )));
            }
        }

        // 3. Every certificate in the chain is valid now.
        if let Some(w) = vek.windows.iter().find(|w| !w.contains(now)) {
            return Err(EvidenceError::CertificateExpired(format!(
                "{} is valid from {} to {}, not at {now}",
                w.label, w.not_before, w.not_after
            )));
        }

        // 3b. Its intermediate is not revoked.
        self.check_revocation(&vek, now)?;

        // 4. The report signature under the VEK.
        let signature = report.signature_p384()?;
        vek.key.verify_sig(report.signed_bytes(), &signature).map_err(|_| EvidenceError::SignatureInvalid)?;

        // 5. The VEK certifies exactly the reported TCB.
        let expected_tcb = vek.spl.expected_tcb(vek.generation).map_err(EvidenceError::TcbMismatch)?;
        if expected_tcb != report.reported_tcb() {
            return Err(EvidenceError::TcbMismatch(format!(
                "VEK certifies {} but the report's reported_tcb is {} ({})",
                expected_tcb.decode(vek.generation),
                report.reported_tcb().decode(vek.generation),
                report.reported_tcb()
            )));
        }

        // 6. A VCEK belongs to exactly one chip.
        if vek.signer == IntermediateKind::Ask {
            let chip_id = report.chip_id().as_slice();
            let expected: &[u8] = match vek.generation {
                Generation::Turin => chip_id.get(..8).unwrap_or(chip_id),
                Generation::Milan | Generation::Genoa => chip_id,
            };
            if vek.hwid.as_deref() != Some(expected) {
                return Err(EvidenceError::ChipIdMismatch);
            }
        }

        // 7. The report is bound to this request.
        if let Some(expected) = expected_report_data {
            constant_time::verify_slices_are_equal(report.report_data(), expected)
                .map_err(|_| EvidenceError::ReportDataMismatch)?;
        }

        // 8. Claims.
        let claims = build_claims(&report, vek.generation, &vek.product_name);
        Ok(VerifiedSnp { claims, report, generation: vek.generation, vek_sha256 })
    }

    /// Check 2: the VEK's chain, from the cache or verified now.
    fn vek_chain(
        &self,
        vek_der: &[u8],
        digest: &[u8; 32],
        extra_certs: &[Vec<u8>],
    ) -> Result<Arc<VerifiedVek>, EvidenceError> {
        if let Some(hit) = self.cache.read().unwrap_or_else(PoisonError::into_inner).get(digest) {
            return Ok(Arc::clone(hit));
        }
        let vek = anchors::parse_der_cert(vek_der)?;
        anchors::check_amd_signature_algorithm(&vek)?;
        let (product_name, spl, hwid) = vek_extensions(&vek)?;
        let generation = Generation::from_product_name(&product_name)
            .ok_or_else(|| EvidenceError::ChainInvalid(format!("VEK productName {product_name:?} is unknown")))?;
        let signer = self.find_signer(&vek, generation, extra_certs)?;
        let spki = vek.public_key();
        if spki.algorithm.algorithm.to_id_string() != OID_EC_PUBLIC_KEY {
            return Err(EvidenceError::CertificateMalformed("VEK key is not an EC key".into()));
        }
        let key = ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, spki.subject_public_key.data.as_ref())
            .map_err(|e| EvidenceError::CertificateMalformed(format!("VEK key is not P-384: {e}")))?;
        let verified = Arc::new(VerifiedVek {
            generation,
            signer: signer.kind,
            product_name,
            key,
            windows: [vek_window(&vek), signer.window.clone(), signer.root_window.clone()],
            signer_serial: signer.serial.clone(),
            spl,
            hwid,
        });
        self.cache.write().unwrap_or_else(PoisonError::into_inner).insert(*digest, Arc::clone(&verified));
        Ok(verified)
    }

    /// The intermediate that signed `vek` under a root pinned for
    /// `generation` (the VEK's `productName`): first the anchors' own, then
    /// the guest's certificates that a pinned ARK signed. The guest's are
    /// looked at only when needed, at most [`MAX_EXTRA_CERTS`] of them.
    fn find_signer(
        &self,
        vek: &X509Certificate<'_>,
        generation: Generation,
        extra_certs: &[Vec<u8>],
    ) -> Result<Intermediate, EvidenceError> {
        let issuer = vek.issuer().as_raw();
        let mut search = SignerSearch { generation, named: false, other_generation: None };
        if let Some(found) = search.pick(vek, self.anchors.intermediates_named(issuer)) {
            return Ok(found.clone());
        }
        for der in extra_certs.iter().take(MAX_EXTRA_CERTS) {
            if der.len() > MAX_CERT_LEN || self.anchors.knows(&anchors::sha256(der)) {
                continue;
            }
            let Ok(cert) = anchors::parse_der_cert(der) else {
                tracing::debug!("ignoring an unparsable guest certificate");
                continue;
            };
            if cert.subject().as_raw() != issuer {
                continue;
            }
            match self.anchors.check_intermediate(der) {
                Ok(candidates) => {
                    if let Some(found) = search.pick(vek, candidates.iter()) {
                        return Ok(found.clone());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "ignoring a guest intermediate"),
            }
        }
        let issuer_name = vek.issuer().to_string();
        match search {
            SignerSearch { other_generation: Some(root), .. } => Err(EvidenceError::ChainInvalid(format!(
                "VEK is for {generation} but its issuer {issuer_name} chains to the {root} root"
            ))),
            SignerSearch { named: true, .. } => {
                Err(EvidenceError::ChainInvalid(format!("VEK signature does not verify under {issuer_name}")))
            }
            SignerSearch { named: false, .. } => Err(EvidenceError::UntrustedRoot(format!(
                "no intermediate signed by a pinned AMD root issued this VEK ({issuer_name})"
            ))),
        }
    }
}

/// State of the search for a VEK's issuer, kept for a precise refusal.
struct SignerSearch {
    /// The generation the VEK names.
    generation: Generation,
    /// Some trusted intermediate carries the VEK's issuer name.
    named: bool,
    /// A trusted intermediate signed the VEK, but under another generation's root.
    other_generation: Option<Generation>,
}

impl SignerSearch {
    /// The first candidate that signed `vek` under a root of the wanted
    /// generation.
    fn pick<'a>(
        &mut self,
        vek: &X509Certificate<'_>,
        candidates: impl Iterator<Item = &'a Intermediate>,
    ) -> Option<&'a Intermediate> {
        // One signature check per distinct intermediate certificate.
        let mut checked: Vec<([u8; 32], bool)> = Vec::new();
        for candidate in candidates {
            self.named = true;
            let signed = match checked.iter().find(|(fp, _)| *fp == candidate.fingerprint) {
                Some((_, signed)) => *signed,
                None => {
                    let signed = anchors::verify_cert_signature(vek, &candidate.key).is_ok();
                    checked.push((candidate.fingerprint, signed));
                    signed
                }
            };
            if !signed {
                continue;
            }
            if candidate.generation == self.generation {
                return Some(candidate);
            }
            self.other_generation = Some(candidate.generation);
        }
        None
    }
}

fn vek_window(vek: &X509Certificate<'_>) -> CertWindow {
    CertWindow {
        label: format!("VEK ({})", anchors::common_name(vek)),
        not_before: vek.validity().not_before.to_datetime(),
        not_after: vek.validity().not_after.to_datetime(),
    }
}

/// Reads AMD's extensions from a VEK: productName (`.2`, IA5String), the
/// SPLs (`.3.1`-`.3.9`, INTEGERs) and hwID (`.4`, raw bytes, not wrapped).
fn vek_extensions(vek: &X509Certificate<'_>) -> Result<(String, VekSpl, Option<Vec<u8>>), EvidenceError> {
    let malformed = |what: String| EvidenceError::CertificateMalformed(format!("VEK {what}"));
    let mut product = None;
    let mut spl = VekSpl::default();
    let mut hwid = None;
    for ext in vek.extensions() {
        let oid = ext.oid.to_id_string();
        let Some(sub) = oid.strip_prefix(OID_AMD_VEK_ARC) else {
            continue;
        };
        match sub {
            "2" => {
                let name = match Ia5String::from_der(ext.value) {
                    Ok(([], s)) => s.string(),
                    _ => return Err(malformed("productName is not an IA5String".into())),
                };
                if product.replace(name).is_some() {
                    return Err(malformed("repeats productName".into()));
                }
            }
            "4" => {
                if hwid.replace(ext.value.to_vec()).is_some() {
                    return Err(malformed("repeats hwID".into()));
                }
            }
            _ => {
                let Some(index) = sub.strip_prefix("3.") else {
                    continue;
                };
                let value = match u32::from_der(ext.value) {
                    Ok(([], v)) => v,
                    _ => return Err(malformed(format!("SPL 3.{index} is not an INTEGER"))),
                };
                let slot = match index {
                    "1" => &mut spl.bootloader,
                    "2" => &mut spl.tee,
                    "3" => &mut spl.snp,
                    "8" => &mut spl.microcode,
                    "9" => &mut spl.fmc,
                    "4" | "5" | "6" | "7" => {
                        spl.reserved_nonzero |= value != 0;
                        continue;
                    }
                    _ => continue,
                };
                if slot.replace(value).is_some() {
                    return Err(malformed(format!("repeats SPL 3.{index}")));
                }
            }
        }
    }
    let product = product.ok_or_else(|| malformed("has no productName".into()))?;
    Ok((product, spl, hwid))
}

/// Check 8: the claims document.
fn build_claims(report: &SnpReport, generation: Generation, product: &str) -> Claims {
    let policy = SnpPolicy::from_raw(report.policy());
    let snp = SnpClaims {
        version: report.version(),
        generation,
        vek_product: product.to_owned(),
        guest_svn: report.guest_svn(),
        policy,
        vmpl: report.vmpl(),
        signing_key: report.signing_key(),
        author_key_en: report.author_key_en(),
        mask_chip_key: report.mask_chip_key(),
        reported_tcb: report.reported_tcb().decode(generation),
        current_tcb: report.current_tcb().decode(generation),
        committed_tcb: report.committed_tcb().decode(generation),
        launch_tcb: report.launch_tcb().decode(generation),
        chip_id: hex::encode(report.chip_id()),
        chip_id_masked: report.chip_id().iter().all(|b| *b == 0),
        family_id: hex::encode(report.family_id()),
        image_id: hex::encode(report.image_id()),
        id_key_digest: hex::encode(report.id_key_digest()),
        author_key_digest: hex::encode(report.author_key_digest()),
        report_id: hex::encode(report.report_id()),
        report_id_ma: hex::encode(report.report_id_ma()),
        host_data: hex::encode(report.host_data()),
        platform_info: PlatformInfo::from_raw(report.platform_info()),
        cpuid: report.cpuid(),
        current_firmware: report.current_firmware(),
        committed_firmware: report.committed_firmware(),
        launch_mitigation_vector: report.launch_mitigation_vector(),
        current_mitigation_vector: report.current_mitigation_vector(),
    };
    Claims {
        tee: TeeKind::Snp,
        measurement: hex::encode(report.measurement()),
        debug: policy.debug,
        report_data: hex::encode(report.report_data()),
        init_data_digest: hex::encode(report.host_data()),
        snp: Some(snp),
        tdx: None,
        gpu: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A structurally valid, unsigned-looking v3 report for parser tests.
    fn blank(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        b[..4].copy_from_slice(&version.to_le_bytes());
        b[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        b
    }

    #[test]
    fn layout_adds_up() {
        for v in SUPPORTED_VERSIONS {
            let r = SnpReport::parse(&blank(v)).unwrap();
            assert_eq!(r.version(), v);
            assert_eq!(r.signed_bytes().len(), SIGNED_LEN);
        }
    }

    #[test]
    fn size_version_and_algorithm() {
        assert!(matches!(
            SnpReport::parse(&[0u8; REPORT_LEN + 1]),
            Err(EvidenceError::TooLarge { len: 1185, max: REPORT_LEN })
        ));
        assert!(matches!(SnpReport::parse(&[0u8; REPORT_LEN - 1]), Err(EvidenceError::Malformed(_))));
        assert!(matches!(SnpReport::parse(&[]), Err(EvidenceError::Malformed(_))));
        for v in [0, 1, 4, 6, u32::MAX] {
            assert!(matches!(
                SnpReport::parse(&blank(v)),
                Err(EvidenceError::UnsupportedVersion(x)) if x == v
            ));
        }
        let mut b = blank(2);
        b[0x34] = 2;
        assert!(matches!(SnpReport::parse(&b), Err(EvidenceError::UnsupportedSignatureAlgorithm(2))));
    }

    #[test]
    fn reserved_fields_and_key_info() {
        // (offset, version) of bytes that must be zero.
        let cases = [
            (0x04c, 3),
            (0x188, 2),
            (0x18b, 3),
            (0x19f, 5),
            (0x1eb, 3),
            (0x1ef, 3),
            (0x1f8, 3),
            (0x208, 5),
            (0x29f, 5),
            (0x330, 3),
            (0x49f, 3),
        ];
        for (off, v) in cases {
            let mut b = blank(v);
            b[off] = 1;
            assert!(matches!(SnpReport::parse(&b), Err(EvidenceError::ReservedNonZero(_))), "offset {off:#x} v{v}");
        }
        // v3 CPUID and v5 mitigation vectors are fields, not reserved.
        let mut b = blank(3);
        b[0x188] = 0x19;
        b[0x189] = 0x11;
        assert_eq!(SnpReport::parse(&b).unwrap().generation(), Some(Generation::Genoa));
        let mut b = blank(5);
        b[0x1f8] = 7;
        b[0x200] = 9;
        let r = SnpReport::parse(&b).unwrap();
        assert_eq!(r.launch_mitigation_vector(), Some(7));
        assert_eq!(r.current_mitigation_vector(), Some(9));

        let mut b = blank(3);
        b[0x48] = 0x20;
        assert!(matches!(SnpReport::parse(&b), Err(EvidenceError::ReservedNonZero(_))));
        b[0x48] = 7 << 2;
        assert!(matches!(SnpReport::parse(&b), Err(EvidenceError::Malformed(_))));
        b[0x48] = 2 << 2;
        assert!(matches!(SnpReport::parse(&b), Err(EvidenceError::Malformed(_))));
        b[0x48] = 1 << 2;
        assert_eq!(SnpReport::parse(&b).unwrap().signing_key(), SigningKey::Vlek);
        let mut b = blank(3);
        b[0x30] = 4;
        assert!(matches!(SnpReport::parse(&b), Err(EvidenceError::Malformed(_))));
    }

    #[test]
    fn signature_conversion() {
        let mut b = blank(3);
        b[0x2a0] = 0x01; // r, least significant byte
        b[0x2a0 + 47] = 0x02; // r, most significant of 48
        b[0x2e8] = 0x03; // s, least significant byte
        let sig = SnpReport::parse(&b).unwrap().signature_p384().unwrap();
        assert_eq!(sig[0], 0x02);
        assert_eq!(sig[47], 0x01);
        assert_eq!(sig[95], 0x03);
        let mut b = blank(3);
        b[0x2a0 + 48] = 1;
        assert!(matches!(SnpReport::parse(&b).unwrap().signature_p384(), Err(EvidenceError::SignatureInvalid)));
    }

    #[test]
    fn tcb_layouts() {
        let raw = RawTcb([1, 2, 3, 4, 5, 6, 7, 8]);
        let milan = raw.decode(Generation::Milan);
        assert_eq!((milan.bootloader, milan.tee, milan.snp, milan.microcode, milan.fmc), (1, 2, 7, 8, None));
        let turin = raw.decode(Generation::Turin);
        assert_eq!((turin.bootloader, turin.tee, turin.snp, turin.microcode, turin.fmc), (2, 3, 4, 8, Some(1)));
        assert_eq!(milan.encode(Generation::Milan), RawTcb([1, 2, 0, 0, 0, 0, 7, 8]));
        assert_eq!(turin.encode(Generation::Turin), RawTcb([1, 2, 3, 4, 0, 0, 0, 8]));
    }

    #[test]
    fn policy_bits() {
        let p = SnpPolicy::from_raw(0xb0000);
        assert!(p.debug && p.smt && !p.migrate_ma && !p.single_socket);
        let p = SnpPolicy::from_raw(0x3001f);
        assert!(!p.debug && p.smt);
        assert_eq!((p.abi_major, p.abi_minor), (0, 0x1f));
        let i = PlatformInfo::from_raw(0x27);
        assert!(i.smt_enabled && i.tsme_enabled && i.ecc_enabled && i.alias_check_complete);
        assert!(!i.rapl_disabled && !i.tio_enabled);
    }

    #[test]
    fn verifier_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SnpVerifier>();
        assert_send_sync::<VerifiedSnp>();
    }
}
