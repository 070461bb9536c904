//! Intel TDX DCAP quotes: checked parsing and the pure verifier.
//!
//! A TDX quote (Intel TDX DCAP Quote Generation Library, quote formats v4
//! and v5; all integers little-endian) is a 48-byte header, on v5 a 6-byte
//! body descriptor, the TD report body (TD 1.0: 584 bytes; TD 1.5: 648;
//! TD 1.5 "ex": 885), then the signature data: an ECDSA P-256 signature by
//! the quote's attestation key (AK) over header, descriptor and body, the AK
//! itself, and certification data type 6: the quoting enclave's (QE) SGX
//! report, signed by the platform's PCK key and binding the AK, with the PCK
//! certificate chain (type 5, PEM) inside. The PCK certificate chains to the
//! Intel SGX Root CA through the PCK Platform or Processor CA.
//!
//! [`TdxVerifier::verify`] runs these checks in this order and stops at the
//! first failure, each failure its own [`EvidenceError`] variant:
//!
//! 1. **Parse** ([`TdxQuote::parse`]), before any cryptography: at most
//!    [`MAX_QUOTE_LEN`] bytes (`TooLarge`); version 4 or 5
//!    (`UnsupportedVersion`); attestation key type 2, ECDSA P-256
//!    (`UnsupportedSignatureAlgorithm`); TEE type TDX (`UnsupportedTee`);
//!    Intel's QE vendor id, a known body type of the right size,
//!    certification data types 6 and 5 with lengths that add up, a PEM PCK
//!    chain of 2 to 4 certificates (`Malformed`); reserved header bytes and
//!    the padding after the signature data are zero (`ReservedNonZero`).
//! 2. **PCK chain**: the PCK certificate is signed by the PCK CA in the
//!    quote's chain, which is signed by a pinned root
//!    ([`super::anchors::TdxAnchors`]; the quote's own copy of the root is
//!    ignored) (`UntrustedRoot` when no pinned root has the CA's issuer
//!    name, `ChainInvalid` when a signature fails); every link is valid at
//!    `now` (`CertificateExpired`).
//! 3. **Collateral authenticity**: the set is for the PCK certificate's
//!    FMSPC and CA; the TCB info and QE identity signer is issued by the
//!    same pinned root and signed both documents (raw `r || s` over their
//!    exact JSON bytes); the root CA CRL is signed by the root, the PCK CRL
//!    by the PCK CA (`CollateralInvalid`).
//! 4. **Collateral freshness**: TCB info and QE identity between
//!    `issueDate` and `nextUpdate`, both CRLs between `thisUpdate` and
//!    `nextUpdate`, the signer certificate valid, all at `now`
//!    (`CollateralExpired`). An expired set never accepts a quote.
//! 5. **Revocation**: neither the PCK CA nor the collateral signer is on
//!    the root CA CRL, the PCK certificate is not on the PCK CRL (`Revoked`).
//! 6. **QE report signature** under the PCK key (`SignatureInvalid`).
//! 7. **QE binding**: the QE report's `report_data[0..32]` is
//!    SHA-256(AK || QE authentication data) (`SignatureInvalid`).
//! 8. **Quote signature**: the AK's signature over the header, the v5 body
//!    descriptor and the body (`SignatureInvalid`).
//! 9. **TD attributes**: no reserved bit, not migratable, SEPT_VE_DISABLE
//!    set, no service TD binding (`AttributesNotAllowed`). Debug (the TUD
//!    bits) is not refused here: it becomes the `debug` claim, which the
//!    policy refuses with `debug_enabled`.
//! 10. **TCB level**: some level of the TCB info is met by the PCK's CPUSVN
//!     and PCESVN and the quote's TEE_TCB_SVN (and TEE_TCB_SVN2 on TD 1.5)
//!     (`TcbStatusNotAllowed`, Intel's "TCB not supported").
//! 11. **Full DCAP appraisal** by `dcap-qvl` with the same root and time:
//!     every check above again, plus the QE identity (MRSIGNER, ISVPRODID,
//!     attributes, QE TCB level), the TDX module identity and TCB, and the
//!     converged TCB status and advisory IDs; a revoked TCB is refused
//!     (`TcbMismatch`).
//! 12. **TCB status**: the converged status is one the broker accepts
//!     ([`TdxPolicy`], by default only `UpToDate`) (`TcbStatusNotAllowed`).
//! 13. **Freshness binding**: `report_data` equals the expected value, in
//!     constant time (`ReportDataMismatch`).
//! 14. **Claims**, built only now.
//!
//! **Appraisal memo.** Checks 2-11 cost a dozen ECDSA verifications and a
//! full DCAP appraisal, and come out the same for every quote one TD on one
//! platform sends, whose only differences are REPORTDATA and the attestation
//! key's signature over it. The verifier remembers each successful
//! appraisal for [`APPRAISAL_MEMO_TTL`] of verification time, keyed by
//! SHA-256 of the collateral set and of the whole quote with those two
//! fields zeroed. A quote with a remembered key still runs every check that
//! depends on the time or on its own bytes: the validity periods of checks
//! 2 and 4, revocation (5), the quote signature (8), the attributes (9),
//! then 12-14. Failures are never remembered; new collateral is a new key.
//!
//! Trust anchors, collateral and the clock are inputs: the verifier does no
//! I/O, so production and tests run the same code with different roots.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::constant_time;
use dcap_qvl::QuoteClaims;
pub use dcap_qvl::TcbStatus;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use super::anchors::{self, CertWindow, MAX_CERT_LEN, TdxAnchors, TdxRoot};
use super::tdx_collateral::{Fmspc, PckCa, TdxCollateral};
use super::{Claims, EvidenceError, TeeKind};

/// Largest quote accepted. Real quotes are about 5 KiB, most of it the PEM
/// PCK chain.
pub const MAX_QUOTE_LEN: usize = 64 * 1024;

/// The TDX TEE type in the quote header.
pub const TEE_TYPE_TDX: u32 = 0x81;

/// Attestation key type 2: ECDSA P-256 with SHA-256.
pub const AK_TYPE_ECDSA_P256: u16 = 2;

/// Intel's QE vendor id; quotes from any other QE are refused.
pub const INTEL_QE_VENDOR_ID: [u8; 16] =
    [0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07];

/// Certification data type 6: QE report certification data.
pub const CERT_DATA_QE_REPORT: u16 = 6;

/// Certification data type 5: the PCK certificate chain, PEM.
pub const CERT_DATA_PCK_CHAIN: u16 = 5;

/// Length of the quote header.
pub const HEADER_LEN: usize = 48;

/// Length of an SGX report (the QE report).
pub const QE_REPORT_LEN: usize = 384;

/// Offset of `report_data` inside an SGX report.
const QE_REPORT_DATA_OFFSET: usize = 320;

/// Offset of REPORTDATA inside every kind of TD report body.
const REPORT_DATA_OFFSET_IN_BODY: usize = 520;

/// How long a full appraisal of a quote stands for later quotes that differ
/// from it only in REPORTDATA and the attestation key's signature.
pub const APPRAISAL_MEMO_TTL: time::Duration = time::Duration::minutes(10);

/// Most appraisals remembered (one per platform and TD image in practice).
const APPRAISAL_MEMO_CAPACITY: usize = 4096;

/// Most certificates in the quote's PCK chain (PCK, CA, root).
const MAX_PCK_CHAIN_CERTS: usize = 4;

/// TD attribute bits the TDX 1.5 ABI reserves (must be zero): 1-3, 7-15,
/// 23-26, 32-61.
const TD_ATTRIBUTES_RESERVED: u64 = 0x3fff_ffff_0780_ff8e;

/// The kind of TD report body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TdBody {
    /// TD 1.0 (quote v4, or v5 body type 2), 584 bytes.
    #[serde(rename = "td1.0")]
    Td10,
    /// TD 1.5 (v5 body type 3), 648 bytes: adds TEE_TCB_SVN2 and MRSERVICETD.
    #[serde(rename = "td1.5")]
    Td15,
    /// TD 1.5 "ex" (v5 body type 4), 885 bytes: adds service-TD and initial
    /// TCB fields.
    #[serde(rename = "td1.5ex")]
    Td15Ex,
}

impl TdBody {
    /// The body's length in bytes.
    pub const fn byte_len(self) -> usize {
        match self {
            Self::Td10 => 584,
            Self::Td15 => 648,
            Self::Td15Ex => 885,
        }
    }

    /// The v5 body type.
    pub const fn body_type(self) -> u16 {
        match self {
            Self::Td10 => 2,
            Self::Td15 => 3,
            Self::Td15Ex => 4,
        }
    }
}

/// TD attributes (TDX module ABI, TDATTRIBUTES), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdAttributes {
    /// The raw 64-bit value.
    pub raw: u64,
    /// DEBUG (bit 0): the host can read and change the TD's state.
    pub debug: bool,
    /// Any TUD bit (7:0) set: DEBUG or profiling; the TD is untrusted.
    pub under_debug: bool,
    /// ICSSD (bit 16).
    pub icssd: bool,
    /// SERVTD_EXT (bit 17).
    pub servtd_ext: bool,
    /// LASS (bit 27).
    pub lass: bool,
    /// SEPT_VE_DISABLE (bit 28): EPT violations do not become #VE.
    pub sept_ve_disable: bool,
    /// MIGRATABLE (bit 29).
    pub migratable: bool,
    /// PKS (bit 30).
    pub pks: bool,
    /// KL (bit 31).
    pub kl: bool,
    /// TPA (bit 62).
    pub tpa: bool,
    /// PERFMON (bit 63).
    pub perfmon: bool,
}

impl TdAttributes {
    /// Decodes a raw value.
    pub fn from_raw(raw: u64) -> Self {
        let bit = |n: u32| (raw >> n) & 1 == 1;
        Self {
            raw,
            debug: bit(0),
            under_debug: raw & 0xff != 0,
            icssd: bit(16),
            servtd_ext: bit(17),
            lass: bit(27),
            sept_ve_disable: bit(28),
            migratable: bit(29),
            pks: bit(30),
            kl: bit(31),
            tpa: bit(62),
            perfmon: bit(63),
        }
    }

    /// Reserved bits that are set.
    pub const fn reserved_bits(self) -> u64 {
        self.raw & TD_ATTRIBUTES_RESERVED
    }
}

/// The TD report body: the TD's measurements and configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN: the TDX module's TCB.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM: the TDX module's measurement.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: u64,
    /// TDATTRIBUTES.
    pub td_attributes: TdAttributes,
    /// XFAM: the extended features the TD may use.
    pub xfam: u64,
    /// MRTD: the build-time measurement of the TD.
    pub mr_td: [u8; 48],
    /// MRCONFIGID: software-defined configuration id (the init-data digest in CoCo).
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0-3: run-time measurement registers.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA.
    pub report_data: [u8; 64],
    /// TEE_TCB_SVN2 (TD 1.5): the module's current TCB.
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// MRSERVICETD (TD 1.5).
    pub mr_service_td: Option<[u8; 48]>,
}

/// A quote that passed check 1. Nothing in it is authentic yet;
/// [`TdxVerifier`] establishes that.
#[derive(Clone)]
pub struct TdxQuote {
    raw: Vec<u8>,
    version: u16,
    body_kind: TdBody,
    /// Where REPORTDATA starts in `raw`.
    report_data_at: usize,
    signed_len: usize,
    report: TdReport,
    signature: [u8; 64],
    attestation_key: [u8; 64],
    qe_report: [u8; QE_REPORT_LEN],
    qe_report_signature: [u8; 64],
    qe_auth_data: Vec<u8>,
    pck_chain: Vec<Vec<u8>>,
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    rest: &'a [u8],
}

fn truncated(what: &str) -> EvidenceError {
    EvidenceError::Malformed(format!("quote is truncated in the {what}"))
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], EvidenceError> {
        let (head, tail) = self.rest.split_first_chunk::<N>().ok_or_else(|| truncated(what))?;
        self.rest = tail;
        Ok(*head)
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], EvidenceError> {
        if len > self.rest.len() {
            return Err(truncated(what));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self, what: &str) -> Result<u16, EvidenceError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, EvidenceError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, EvidenceError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn len32(&mut self, what: &str) -> Result<usize, EvidenceError> {
        usize::try_from(self.u32(what)?).map_err(|_| truncated(what))
    }
}

impl TdxQuote {
    /// Check 1: parses a quote, before any cryptography.
    pub fn parse(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_QUOTE_LEN {
            return Err(EvidenceError::TooLarge { len: bytes.len(), max: MAX_QUOTE_LEN });
        }
        let mut r = Reader { rest: bytes };
        // Header (48 bytes).
        let version = r.u16("header")?;
        if version != 4 && version != 5 {
            return Err(EvidenceError::UnsupportedVersion(u32::from(version)));
        }
        let ak_type = r.u16("header")?;
        if ak_type != AK_TYPE_ECDSA_P256 {
            return Err(EvidenceError::UnsupportedSignatureAlgorithm(u32::from(ak_type)));
        }
        let tee_type = r.u32("header")?;
        if tee_type != TEE_TYPE_TDX {
            return Err(EvidenceError::UnsupportedTee(if tee_type == 0 { "sgx" } else { "unknown" }));
        }
        if r.array::<4>("header")? != [0; 4] {
            return Err(EvidenceError::ReservedNonZero("header bytes 8-11"));
        }
        if r.array::<16>("header")? != INTEL_QE_VENDOR_ID {
            return Err(EvidenceError::Malformed("the QE vendor id is not Intel's".into()));
        }
        let _user_data = r.array::<20>("header")?;
        // v5: the body descriptor, inside the signed range.
        let body_kind = if version == 5 {
            let body_type = r.u16("body descriptor")?;
            let size = r.len32("body descriptor")?;
            let kind = match body_type {
                2 => TdBody::Td10,
                3 => TdBody::Td15,
                4 => TdBody::Td15Ex,
                1 => return Err(EvidenceError::UnsupportedTee("sgx")),
                other => return Err(EvidenceError::Malformed(format!("unknown body type {other}"))),
            };
            if size != kind.byte_len() {
                return Err(EvidenceError::Malformed(format!(
                    "body type {body_type} is {} bytes, the descriptor says {size}",
                    kind.byte_len()
                )));
            }
            kind
        } else {
            TdBody::Td10
        };
        let report_data_at = bytes.len().saturating_sub(r.rest.len()).saturating_add(REPORT_DATA_OFFSET_IN_BODY);
        let report = parse_body(&mut r, body_kind)?;
        let signed_len = bytes.len().saturating_sub(r.rest.len());

        // Signature data.
        let sig_len = r.len32("signature data length")?;
        let mut s = Reader { rest: r.take(sig_len, "signature data")? };
        if r.rest.iter().any(|b| *b != 0) {
            return Err(EvidenceError::ReservedNonZero("padding after the signature data"));
        }
        let signature = s.array::<64>("quote signature")?;
        let attestation_key = s.array::<64>("attestation key")?;
        let cert_type = s.u16("certification data")?;
        if cert_type != CERT_DATA_QE_REPORT {
            return Err(EvidenceError::Malformed(format!("certification data type {cert_type}, expected 6")));
        }
        let cert_len = s.len32("certification data")?;
        let mut c = Reader { rest: s.take(cert_len, "certification data")? };
        if !s.rest.is_empty() {
            return Err(EvidenceError::Malformed("bytes after the certification data".into()));
        }
        let qe_report = c.array::<QE_REPORT_LEN>("QE report")?;
        let qe_report_signature = c.array::<64>("QE report signature")?;
        let auth_len = usize::from(c.u16("QE authentication data")?);
        let qe_auth_data = c.take(auth_len, "QE authentication data")?.to_vec();
        let inner_type = c.u16("PCK certification data")?;
        if inner_type != CERT_DATA_PCK_CHAIN {
            return Err(EvidenceError::Malformed(format!(
                "QE certification data type {inner_type}, expected 5 (PCK chain)"
            )));
        }
        let pem_len = c.len32("PCK chain")?;
        let pem = c.take(pem_len, "PCK chain")?;
        if !c.rest.is_empty() {
            return Err(EvidenceError::Malformed("bytes after the PCK chain".into()));
        }
        let pck_chain = pem_chain(pem)?;
        Ok(Self {
            raw: bytes.to_vec(),
            version,
            body_kind,
            report_data_at,
            signed_len,
            report,
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain,
        })
    }

    /// Quote version (4 or 5).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The kind of TD report body.
    pub fn body_kind(&self) -> TdBody {
        self.body_kind
    }

    /// The TD report body.
    pub fn report(&self) -> &TdReport {
        &self.report
    }

    /// The bytes as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The bytes the attestation key signs: header, v5 descriptor, body.
    pub fn signed_bytes(&self) -> &[u8] {
        self.raw.get(..self.signed_len).unwrap_or_default()
    }

    /// The PCK certificate chain from the quote (DER, leaf first).
    pub fn pck_chain(&self) -> &[Vec<u8>] {
        &self.pck_chain
    }

    /// The QE report (an SGX report).
    pub fn qe_report(&self) -> &[u8; QE_REPORT_LEN] {
        &self.qe_report
    }

    /// The QE's ISVSVN (QE report bytes 258-259).
    pub fn qe_isv_svn(&self) -> u16 {
        u16::from_le_bytes([
            self.qe_report.get(258).copied().unwrap_or(0),
            self.qe_report.get(259).copied().unwrap_or(0),
        ])
    }

    /// The appraisal memo's key for this quote under `collateral`: SHA-256
    /// of the collateral's digest and of the whole quote with REPORTDATA
    /// and the attestation key's signature zeroed, the only two parts that
    /// differ between quotes of one TD on one platform. Zeroing (rather
    /// than cutting out) keeps the key unambiguous: the positions zeroed
    /// follow from bytes that are hashed.
    fn appraisal_key(&self, collateral: &TdxCollateral) -> [u8; 32] {
        let raw = self.raw.as_slice();
        let rd = self.report_data_at;
        let sig = self.signed_len.saturating_add(4);
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"kbs tdx appraisal v1\0");
        ctx.update(collateral.digest());
        ctx.update(raw.get(..rd).unwrap_or_default());
        ctx.update(&[0; 64]);
        ctx.update(raw.get(rd.saturating_add(64)..sig).unwrap_or_default());
        ctx.update(&[0; 64]);
        ctx.update(raw.get(sig.saturating_add(64)..).unwrap_or_default());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The FMSPC and PCK CA named by the (not yet verified) PCK
    /// certificate: what to look collateral up by.
    pub fn collateral_key(&self) -> Result<(Fmspc, PckCa), EvidenceError> {
        let leaf = self.pck_chain.first().ok_or_else(|| EvidenceError::Malformed("empty PCK chain".into()))?;
        let cert = anchors::parse_der_cert(leaf)?;
        let ca = pck_ca_of(&cert)?;
        let ext = dcap_qvl::intel::parse_pck_extension(leaf)
            .map_err(|e| EvidenceError::CertificateMalformed(format!("PCK SGX extension: {e}")))?;
        Ok((Fmspc(ext.fmspc), ca))
    }
}

impl fmt::Debug for TdxQuote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxQuote")
            .field("version", &self.version)
            .field("body", &self.body_kind)
            .field("mr_td", &hex::encode(self.report.mr_td))
            .field("td_attributes", &format_args!("{:#x}", self.report.td_attributes.raw))
            .finish_non_exhaustive()
    }
}

/// Reads the TD report body of `kind`.
fn parse_body(r: &mut Reader<'_>, kind: TdBody) -> Result<TdReport, EvidenceError> {
    let w = "TD report";
    let tee_tcb_svn = r.array(w)?;
    let mr_seam = r.array(w)?;
    let mr_signer_seam = r.array(w)?;
    let seam_attributes = r.u64(w)?;
    let td_attributes = TdAttributes::from_raw(r.u64(w)?);
    let xfam = r.u64(w)?;
    let mr_td = r.array(w)?;
    let mr_config_id = r.array(w)?;
    let mr_owner = r.array(w)?;
    let mr_owner_config = r.array(w)?;
    let rtmr = [r.array(w)?, r.array(w)?, r.array(w)?, r.array(w)?];
    let report_data = r.array(w)?;
    let (tee_tcb_svn2, mr_service_td) = match kind {
        TdBody::Td10 => (None, None),
        TdBody::Td15 | TdBody::Td15Ex => (Some(r.array(w)?), Some(r.array(w)?)),
    };
    if kind == TdBody::Td15Ex {
        // VMID, TD_ID, DEV_INFO, INIT/CUR service TD fields, initial TCB:
        // not appraised (as in Intel's QVL), but signed and length-checked.
        r.take(TdBody::Td15Ex.byte_len().saturating_sub(TdBody::Td15.byte_len()), w)?;
    }
    Ok(TdReport {
        tee_tcb_svn,
        mr_seam,
        mr_signer_seam,
        seam_attributes,
        td_attributes,
        xfam,
        mr_td,
        mr_config_id,
        mr_owner,
        mr_owner_config,
        rtmr,
        report_data,
        tee_tcb_svn2,
        mr_service_td,
    })
}

/// The DER certificates of the PEM chain (trailing NULs, as QEs write,
/// are ignored).
fn pem_chain(pem: &[u8]) -> Result<Vec<Vec<u8>>, EvidenceError> {
    let end = pem.iter().rposition(|b| *b != 0).map_or(0, |i| i.saturating_add(1));
    let pem = pem.get(..end).unwrap_or_default();
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| EvidenceError::Malformed(format!("PCK chain PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        if block.contents.len() > MAX_CERT_LEN {
            return Err(EvidenceError::TooLarge { len: block.contents.len(), max: MAX_CERT_LEN });
        }
        if out.len() >= MAX_PCK_CHAIN_CERTS {
            return Err(EvidenceError::Malformed(format!(
                "PCK chain has more than {MAX_PCK_CHAIN_CERTS} certificates"
            )));
        }
        out.push(block.contents);
    }
    if out.len() < 2 {
        return Err(EvidenceError::Malformed("PCK chain needs the PCK and its CA".into()));
    }
    Ok(out)
}

/// The PCK CA an Intel CA certificate (or a PCK's issuer) names.
fn pck_ca_of(cert: &X509Certificate<'_>) -> Result<PckCa, EvidenceError> {
    let cn = cert.issuer().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default();
    PckCa::from_common_name(cn).ok_or_else(|| {
        EvidenceError::ChainInvalid(format!("PCK issuer {cn:?} is neither the Platform nor the Processor CA"))
    })
}

/// Which TCB statuses the broker accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxPolicy {
    /// Accepted converged TCB statuses. Default: only `UpToDate`. `Revoked`
    /// is never accepted.
    pub accepted_tcb_statuses: Vec<TcbStatus>,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        Self { accepted_tcb_statuses: vec![TcbStatus::UpToDate] }
    }
}

impl TdxPolicy {
    /// A policy accepting the named statuses (Intel's spelling, e.g.
    /// `UpToDate`, `SWHardeningNeeded`, `OutOfDate`). `Revoked` and unknown
    /// names are refused.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut accepted = Vec::new();
        for name in names {
            let name = name.as_ref();
            let status = parse_tcb_status(name).ok_or_else(|| format!("unknown TCB status {name:?}"))?;
            if status == TcbStatus::Revoked {
                return Err("a Revoked TCB is never accepted".into());
            }
            if !accepted.contains(&status) {
                accepted.push(status);
            }
        }
        if accepted.is_empty() {
            return Err("at least one TCB status must be accepted".into());
        }
        Ok(Self { accepted_tcb_statuses: accepted })
    }
}

/// Every TCB status dcap-qvl reports: the one table of them, read by the
/// configuration, reference values and `kbsctl`. Their names are dcap-qvl's
/// (Intel's spelling; see [`parse_tcb_status`], [`tcb_status_names`]).
pub const TCB_STATUSES: [TcbStatus; 9] = [
    TcbStatus::UpToDate,
    TcbStatus::SWHardeningNeeded,
    TcbStatus::ConfigurationNeeded,
    TcbStatus::ConfigurationAndSWHardeningNeeded,
    TcbStatus::OutOfDate,
    TcbStatus::OutOfDateConfigurationNeeded,
    TcbStatus::Revoked,
    TcbStatus::TDRelaunchAdvised,
    TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
];

/// A TCB status by Intel's name.
pub fn parse_tcb_status(name: &str) -> Option<TcbStatus> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// The names of [`TCB_STATUSES`], in order.
pub fn tcb_status_names() -> Vec<String> {
    TCB_STATUSES.iter().map(ToString::to_string).collect()
}

/// A PCK chain whose signatures verified to a pinned root (check 2; the
/// validity periods are checked at each use).
struct VerifiedPck {
    root: TdxRoot,
    /// PCK, PCK CA and root validity periods.
    windows: [CertWindow; 3],
    leaf_key: Vec<u8>,
    leaf_serial: Vec<u8>,
    ca_serial: Vec<u8>,
    ca_subject: Vec<u8>,
    ca_key: Vec<u8>,
    ca: PckCa,
    fmspc: Fmspc,
    cpu_svn: [u8; 16],
    pce_svn: u16,
    leaf_sha256: [u8; 32],
}

/// TDX-specific claims, built only from verified evidence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TdxClaims {
    /// Quote version (4 or 5).
    pub version: u16,
    /// TD report body kind.
    pub body: TdBody,
    /// MRTD, lowercase hex.
    pub mr_td: String,
    /// RTMR0, lowercase hex.
    pub rtmr0: String,
    /// RTMR1, lowercase hex.
    pub rtmr1: String,
    /// RTMR2, lowercase hex.
    pub rtmr2: String,
    /// RTMR3, lowercase hex.
    pub rtmr3: String,
    /// MRCONFIGID, lowercase hex.
    pub mr_config_id: String,
    /// MROWNER, lowercase hex.
    pub mr_owner: String,
    /// MROWNERCONFIG, lowercase hex.
    pub mr_owner_config: String,
    /// MRSEAM (the TDX module), lowercase hex.
    pub mr_seam: String,
    /// MRSIGNERSEAM, lowercase hex.
    pub mr_signer_seam: String,
    /// TD attributes, decoded.
    pub td_attributes: TdAttributes,
    /// XFAM, as a number.
    pub xfam: u64,
    /// TEE_TCB_SVN, lowercase hex.
    pub tee_tcb_svn: String,
    /// TEE_TCB_SVN2 (TD 1.5), lowercase hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tee_tcb_svn2: Option<String>,
    /// MRSERVICETD (TD 1.5), lowercase hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mr_service_td: Option<String>,
    /// The platform's FMSPC, lowercase hex.
    pub fmspc: String,
    /// The PCK CA that certified the platform.
    pub pck_ca: PckCa,
    /// PCE SVN from the PCK certificate.
    pub pce_svn: u16,
    /// CPUSVN from the PCK certificate, lowercase hex.
    pub cpu_svn: String,
    /// The QE's ISVSVN.
    pub qe_svn: u16,
    /// Converged TCB status (Intel's spelling: `UpToDate`, `OutOfDate`, ...).
    pub tcb_status: String,
    /// Intel security advisory IDs that apply to this TCB.
    pub advisory_ids: Vec<String>,
    /// The collateral's TCB evaluation data number.
    pub tcb_evaluation_data_number: u32,
    /// REPORTDATA, lowercase hex.
    pub report_data: String,
}

/// Evidence that passed every check. Only [`TdxVerifier::verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedTdx {
    /// The normalized claims document.
    pub claims: Claims,
    quote: TdxQuote,
    pck_sha256: [u8; 32],
}

impl VerifiedTdx {
    /// The verified quote.
    pub fn quote(&self) -> &TdxQuote {
        &self.quote
    }

    /// SHA-256 of the PCK certificate's DER, for audit records.
    pub fn pck_sha256(&self) -> &[u8; 32] {
        &self.pck_sha256
    }
}

/// The TDX verifier: trust anchors, the accepted TCB statuses and the
/// appraisal memo. Cheap to share (`Send + Sync`; clones share the memo);
/// verification does no I/O.
#[derive(Clone, Debug)]
pub struct TdxVerifier {
    anchors: TdxAnchors,
    policy: TdxPolicy,
    memo: Arc<Mutex<AppraisalMemo>>,
}

/// What a full verification (checks 2-11) established about a quote under
/// one collateral set that holds for every quote differing from it only in
/// REPORTDATA and the attestation key's signature over it: the PCK chain,
/// the collateral's signatures, the QE report and its binding of the
/// attestation key, the TCB level and dcap-qvl's appraisal.
struct Appraised {
    pck: VerifiedPck,
    /// The collateral signers' validity periods and serial numbers.
    signers: Vec<(CertWindow, Vec<u8>)>,
    status: TcbStatus,
    advisory_ids: Vec<String>,
    /// The verification time of the full appraisal.
    at: OffsetDateTime,
}

/// Full appraisals by [`TdxQuote::appraisal_key`]. Only successes are
/// remembered, for [`APPRAISAL_MEMO_TTL`] of verification time.
#[derive(Default)]
struct AppraisalMemo {
    entries: HashMap<[u8; 32], Arc<Appraised>>,
    hits: u64,
}

impl fmt::Debug for AppraisalMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppraisalMemo").field("entries", &self.entries.len()).field("hits", &self.hits).finish()
    }
}

impl AppraisalMemo {
    fn get(&mut self, key: &[u8; 32], now: OffsetDateTime) -> Option<Arc<Appraised>> {
        let entry = self.entries.get(key)?;
        if now < entry.at || now - entry.at >= APPRAISAL_MEMO_TTL {
            return None;
        }
        self.hits = self.hits.saturating_add(1);
        Some(Arc::clone(entry))
    }

    fn insert(&mut self, key: [u8; 32], appraised: Arc<Appraised>) {
        if self.entries.len() >= APPRAISAL_MEMO_CAPACITY && !self.entries.contains_key(&key) {
            let now = appraised.at;
            self.entries.retain(|_, e| now >= e.at && now - e.at < APPRAISAL_MEMO_TTL);
            if self.entries.len() >= APPRAISAL_MEMO_CAPACITY {
                self.entries.clear();
            }
        }
        self.entries.insert(key, appraised);
    }
}

/// Accepts whatever dcap-qvl verified; the broker applies its own policy.
struct AppraiseOnly;

impl dcap_qvl::Policy for AppraiseOnly {
    fn validate(&self, _claims: &QuoteClaims) -> anyhow::Result<()> {
        Ok(())
    }
}

impl TdxVerifier {
    /// A verifier over `anchors` accepting the TCB statuses of `policy`.
    pub fn new(anchors: TdxAnchors, policy: TdxPolicy) -> Self {
        Self { anchors, policy, memo: Arc::default() }
    }

    /// How many appraisals the memo holds, and how many verifications it
    /// has served.
    pub fn memo_stats(&self) -> (usize, u64) {
        let memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        (memo.entries.len(), memo.hits)
    }

    /// The anchors this verifier trusts.
    pub fn anchors(&self) -> &TdxAnchors {
        &self.anchors
    }

    /// The accepted TCB statuses.
    pub fn policy(&self) -> &TdxPolicy {
        &self.policy
    }

    /// Verifies a quote bound to a request against `collateral` at `now`:
    /// every check of the module documentation, its `report_data` equal to
    /// `expected_report_data` (check 13).
    pub fn verify(
        &self,
        quote: &[u8],
        collateral: &TdxCollateral,
        now: OffsetDateTime,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedTdx, EvidenceError> {
        // 1. Parse, before any cryptography.
        let quote = TdxQuote::parse(quote)?;
        self.verify_parsed(quote, collateral, now, expected_report_data)
    }

    /// Checks 2-14 on a quote already parsed with [`TdxQuote::parse`].
    pub fn verify_parsed(
        &self,
        quote: TdxQuote,
        collateral: &TdxCollateral,
        now: OffsetDateTime,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedTdx, EvidenceError> {
        self.check(quote, collateral, now, Some(expected_report_data))
    }

    /// Every check but check 13 on a quote already parsed with
    /// [`TdxQuote::parse`]: nothing binds the quote to a request, so its
    /// `report_data` is compared with nothing. Only for offline operator
    /// verification (`kbsctl verify tdx`); a release uses [`Self::verify`].
    pub fn verify_parsed_ignoring_report_data(
        &self,
        quote: TdxQuote,
        collateral: &TdxCollateral,
        now: OffsetDateTime,
    ) -> Result<VerifiedTdx, EvidenceError> {
        self.check(quote, collateral, now, None)
    }

    /// [`Self::verify_parsed_ignoring_report_data`] on quote bytes.
    pub fn verify_ignoring_report_data(
        &self,
        quote: &[u8],
        collateral: &TdxCollateral,
        now: OffsetDateTime,
    ) -> Result<VerifiedTdx, EvidenceError> {
        self.verify_parsed_ignoring_report_data(TdxQuote::parse(quote)?, collateral, now)
    }

    /// Checks 2-14; check 13 only when `expected_report_data` is given.
    fn check(
        &self,
        quote: TdxQuote,
        collateral: &TdxCollateral,
        now: OffsetDateTime,
        expected_report_data: Option<&[u8; 64]>,
    ) -> Result<VerifiedTdx, EvidenceError> {
        let key = quote.appraisal_key(collateral);
        let remembered = self.memo.lock().unwrap_or_else(PoisonError::into_inner).get(&key, now);
        let appraised = match remembered {
            // Everything but the per-quote parts was verified for these
            // bytes and this collateral: check what depends on the time and
            // on this quote's own REPORTDATA.
            Some(appraised) => {
                appraised.pck.check_windows(now)?;
                check_collateral_current(&appraised.pck, collateral, &appraised.signers, now)?;
                check_quote_signature(&quote)?;
                check_attributes(quote.report())?;
                appraised
            }
            None => {
                let appraised = Arc::new(self.appraise(&quote, collateral, now)?);
                self.memo.lock().unwrap_or_else(PoisonError::into_inner).insert(key, Arc::clone(&appraised));
                appraised
            }
        };
        // 12. The TCB status is one the broker accepts.
        let status = appraised.status;
        if !self.policy.accepted_tcb_statuses.contains(&status) {
            return Err(EvidenceError::TcbStatusNotAllowed(format!(
                "{status} (advisories: {})",
                appraised.advisory_ids.join(", ")
            )));
        }
        // 13. The quote is bound to this request.
        if let Some(expected) = expected_report_data {
            constant_time::verify_slices_are_equal(&quote.report().report_data, expected)
                .map_err(|_| EvidenceError::ReportDataMismatch)?;
        }
        // 14. Claims.
        let claims = build_claims(&quote, &appraised, collateral);
        Ok(VerifiedTdx { claims, pck_sha256: appraised.pck.leaf_sha256, quote })
    }

    /// Checks 2-11, in full.
    fn appraise(
        &self,
        quote: &TdxQuote,
        collateral: &TdxCollateral,
        now: OffsetDateTime,
    ) -> Result<Appraised, EvidenceError> {
        // 2. PCK chain to a pinned root.
        let pck = self.pck_chain(quote)?;
        pck.check_windows(now)?;
        // 3-5. Collateral: authentic, current, nothing revoked.
        let signers = check_collateral_authentic(&pck, collateral)?;
        check_collateral_current(&pck, collateral, &signers, now)?;
        // 6-8. QE report, its binding of the AK, the quote signature.
        check_qe_report(quote, &pck.leaf_key)?;
        check_quote_signature(quote)?;
        // 9. TD attributes a verifier must refuse.
        check_attributes(quote.report())?;
        // 10. A TCB level matches the platform.
        check_tcb_level(quote, &pck, collateral)?;
        // 11. Full DCAP appraisal with the same root and time.
        let now_secs = u64::try_from(now.unix_timestamp())
            .map_err(|_| EvidenceError::CertificateExpired("verification time is before 1970".into()))?;
        let appraisal = dcap_qvl::verify::QuoteVerifier::new(pck.root.der.to_vec())
            .allow_debug(true)
            .verify_with_policy(quote.raw(), collateral.as_v3(), now_secs, &AppraiseOnly)
            .map_err(|e| EvidenceError::TcbMismatch(format!("DCAP appraisal: {e:#}")))?;
        Ok(Appraised { pck, signers, status: appraisal.tcb.status, advisory_ids: appraisal.tcb.advisory_ids, at: now })
    }

    /// Checks the quote's PCK chain (check 2) and its signatures (checks
    /// 6-8) without collateral: what can be said of a quote whose
    /// collateral is not at hand. Not enough to accept it.
    pub fn verify_without_collateral(&self, quote: &TdxQuote, now: OffsetDateTime) -> Result<(), EvidenceError> {
        let pck = self.pck_chain(quote)?;
        pck.check_windows(now)?;
        check_qe_report(quote, &pck.leaf_key)?;
        check_quote_signature(quote)
    }

    /// Check 2, but for the validity periods ([`VerifiedPck::check_windows`]).
    fn pck_chain(&self, quote: &TdxQuote) -> Result<VerifiedPck, EvidenceError> {
        let chain = quote.pck_chain();
        let leaf_der = chain.first().ok_or_else(|| EvidenceError::Malformed("empty PCK chain".into()))?;
        let leaf = anchors::parse_der_cert(leaf_der)?;
        let issuer = leaf.issuer().as_raw();
        let mut ca_found = None;
        for der in chain.iter().skip(1) {
            let cert = anchors::parse_der_cert(der)?;
            if cert.subject().as_raw() == issuer && cert.issuer().as_raw() != cert.subject().as_raw() {
                ca_found = Some(cert);
                break;
            }
        }
        let ca = ca_found.ok_or_else(|| {
            EvidenceError::UntrustedRoot(format!("the quote's chain lacks the PCK's issuer {}", leaf.issuer()))
        })?;
        if !ca.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
            return Err(EvidenceError::ChainInvalid(format!("{} is not a CA certificate", anchors::common_name(&ca))));
        }
        let mut named = false;
        let mut root = None;
        for candidate in self.anchors.roots_named(ca.issuer().as_raw()) {
            named = true;
            if anchors::verify_p256_cert_signature(&ca, &candidate.key).is_ok() {
                root = Some(candidate.clone());
                break;
            }
        }
        let root = match (root, named) {
            (Some(root), _) => root,
            (None, true) => {
                return Err(EvidenceError::ChainInvalid(format!(
                    "{} is not signed by the pinned root of that name",
                    anchors::common_name(&ca)
                )));
            }
            (None, false) => {
                return Err(EvidenceError::UntrustedRoot(format!(
                    "no pinned root issued {} ({})",
                    anchors::common_name(&ca),
                    ca.issuer()
                )));
            }
        };
        let ca_key = ca.public_key().subject_public_key.data.to_vec();
        anchors::verify_p256_cert_signature(&leaf, &ca_key)?;
        let windows = [CertWindow::of(&leaf), CertWindow::of(&ca), root.window.clone()];
        let ext = dcap_qvl::intel::parse_pck_extension(leaf_der)
            .map_err(|e| EvidenceError::CertificateMalformed(format!("PCK SGX extension: {e}")))?;
        let ca_kind = pck_ca_of(&leaf)?;
        Ok(VerifiedPck {
            root,
            windows,
            leaf_key: leaf.public_key().subject_public_key.data.to_vec(),
            leaf_serial: leaf.raw_serial().to_vec(),
            ca_serial: ca.raw_serial().to_vec(),
            ca_subject: ca.subject().as_raw().to_vec(),
            ca_key,
            ca: ca_kind,
            fmspc: Fmspc(ext.fmspc),
            cpu_svn: ext.cpu_svn,
            pce_svn: ext.pce_svn,
            leaf_sha256: anchors::sha256(leaf_der),
        })
    }
}

impl VerifiedPck {
    /// Check 2's validity periods: every link is valid at `now`.
    fn check_windows(&self, now: OffsetDateTime) -> Result<(), EvidenceError> {
        match self.windows.iter().find(|w| !w.contains(now)) {
            Some(w) => Err(EvidenceError::CertificateExpired(format!(
                "{} is valid from {} to {}, not at {now}",
                w.label, w.not_before, w.not_after
            ))),
            None => Ok(()),
        }
    }
}

/// Check 3: the collateral is authentic. Returns the signers' validity
/// periods and serial numbers, for checks 4 and 5.
fn check_collateral_authentic(
    pck: &VerifiedPck,
    c: &TdxCollateral,
) -> Result<Vec<(CertWindow, Vec<u8>)>, EvidenceError> {
    let invalid = EvidenceError::CollateralInvalid;
    // 3. Authenticity.
    if c.fmspc() != pck.fmspc || c.pck_ca() != pck.ca {
        return Err(invalid(format!(
            "the collateral is for {}/{}, the platform is {}/{}",
            c.fmspc(),
            c.pck_ca(),
            pck.fmspc,
            pck.ca
        )));
    }
    let mut signers = Vec::new();
    for (what, chain, document, signature) in [
        ("TCB info", &c.tcb_info_chain, c.as_v3().tcb_info.as_bytes(), &c.as_v3().tcb_info_signature),
        ("QE identity", &c.qe_identity_chain, c.as_v3().qe_identity.as_bytes(), &c.as_v3().qe_identity_signature),
    ] {
        let der = chain.first().ok_or_else(|| invalid(format!("{what} has no signer")))?;
        let signer = anchors::parse_der_cert(der).map_err(|e| invalid(format!("{what} signer: {e}")))?;
        if signer.issuer().as_raw() != pck.root.subject.as_slice() {
            return Err(invalid(format!("{what} signer is not issued by the PCK's root")));
        }
        anchors::verify_p256_cert_signature(&signer, &pck.root.key)
            .map_err(|e| invalid(format!("{what} signer: {e}")))?;
        let key = signer.public_key().subject_public_key.data.to_vec();
        anchors::verify_p256_raw(&key, document, signature)
            .map_err(|()| invalid(format!("{what} signature does not verify")))?;
        signers.push((CertWindow::of(&signer), signer.raw_serial().to_vec()));
    }
    for (what, crl, issuer, key) in [
        ("root CA CRL", &c.root_crl, pck.root.subject.as_slice(), pck.root.key.as_slice()),
        ("PCK CRL", &c.pck_crl, pck.ca_subject.as_slice(), pck.ca_key.as_slice()),
    ] {
        if crl.issuer != issuer || !crl.algorithm_ok {
            return Err(invalid(format!("{what} is not issued by the expected CA with ECDSA/SHA-256")));
        }
        anchors::verify_p256_der(key, &crl.tbs, &crl.signature)
            .map_err(|()| invalid(format!("{what} signature does not verify")))?;
    }
    Ok(signers)
}

/// Checks 4 and 5: the collateral is current at `now` and revokes neither
/// the PCK, its CA nor a collateral signer.
fn check_collateral_current(
    pck: &VerifiedPck,
    c: &TdxCollateral,
    signers: &[(CertWindow, Vec<u8>)],
    now: OffsetDateTime,
) -> Result<(), EvidenceError> {
    // 4. Freshness.
    let windows = [
        ("TCB info", c.tcb_info_window),
        ("QE identity", c.qe_identity_window),
        ("root CA CRL", (c.root_crl.this_update, c.root_crl.next_update)),
        ("PCK CRL", (c.pck_crl.this_update, c.pck_crl.next_update)),
    ];
    for (what, (from, until)) in windows {
        if now < from || now > until {
            return Err(EvidenceError::CollateralExpired(format!(
                "{what} is current from {from} to {until}, not at {now}"
            )));
        }
    }
    for (window, _) in signers {
        if !window.contains(now) {
            return Err(EvidenceError::CollateralExpired(format!(
                "collateral signer {} is valid from {} to {}, not at {now}",
                window.label, window.not_before, window.not_after
            )));
        }
    }
    // 5. Revocation.
    if c.root_crl.lists(&pck.ca_serial) {
        return Err(EvidenceError::Revoked("the PCK CA is on the root CA CRL".into()));
    }
    if signers.iter().any(|(_, serial)| c.root_crl.lists(serial)) {
        return Err(EvidenceError::Revoked("the collateral signer is on the root CA CRL".into()));
    }
    if c.pck_crl.lists(&pck.leaf_serial) {
        return Err(EvidenceError::Revoked("the PCK certificate is on the PCK CRL".into()));
    }
    Ok(())
}

/// Checks 6 and 7.
fn check_qe_report(quote: &TdxQuote, pck_key: &[u8]) -> Result<(), EvidenceError> {
    // 6. The PCK signed the QE report.
    anchors::verify_p256_raw(pck_key, quote.qe_report(), &quote.qe_report_signature)
        .map_err(|()| EvidenceError::SignatureInvalid)?;
    // 7. The QE report binds the attestation key.
    let mut bound = Vec::with_capacity(64usize.saturating_add(quote.qe_auth_data.len()));
    bound.extend_from_slice(&quote.attestation_key);
    bound.extend_from_slice(&quote.qe_auth_data);
    let digest = anchors::sha256(&bound);
    let reported = quote.qe_report.get(QE_REPORT_DATA_OFFSET..QE_REPORT_DATA_OFFSET.saturating_add(32));
    if reported != Some(digest.as_slice()) {
        return Err(EvidenceError::SignatureInvalid);
    }
    Ok(())
}

/// Check 8: the attestation key signed header, descriptor and body.
fn check_quote_signature(quote: &TdxQuote) -> Result<(), EvidenceError> {
    let mut key = Vec::with_capacity(65);
    key.push(0x04);
    key.extend_from_slice(&quote.attestation_key);
    anchors::verify_p256_raw(&key, quote.signed_bytes(), &quote.signature).map_err(|()| EvidenceError::SignatureInvalid)
}

/// Check 9.
fn check_attributes(report: &TdReport) -> Result<(), EvidenceError> {
    let a = report.td_attributes;
    let refuse = |why: String| Err(EvidenceError::AttributesNotAllowed(why));
    if a.reserved_bits() != 0 {
        return refuse(format!("reserved bits {:#x} are set", a.reserved_bits()));
    }
    if a.migratable {
        return refuse("the TD is migratable".into());
    }
    if !a.sept_ve_disable {
        return refuse("SEPT_VE_DISABLE is not set".into());
    }
    if a.servtd_ext || report.mr_service_td.is_some_and(|m| m != [0; 48]) {
        return refuse("the TD is bound to a service TD".into());
    }
    Ok(())
}

/// Check 10.
fn check_tcb_level(quote: &TdxQuote, pck: &VerifiedPck, c: &TdxCollateral) -> Result<(), EvidenceError> {
    let report = quote.report();
    let mut svns = vec![&report.tee_tcb_svn];
    if let Some(svn2) = &report.tee_tcb_svn2 {
        svns.push(svn2);
    }
    for svn in svns {
        let mut matched = false;
        for level in &c.tcb_info.tcb_levels {
            let shortfalls = level
                .shortfalls(&pck.cpu_svn, pck.pce_svn, Some(svn))
                .map_err(|e| EvidenceError::CollateralInvalid(format!("TCB info level: {e}")))?;
            if shortfalls.is_empty() {
                matched = true;
                break;
            }
        }
        if !matched {
            return Err(EvidenceError::TcbStatusNotAllowed(format!(
                "no TCB level of the collateral (evaluation data {}) matches the platform (TEE_TCB_SVN {}); Intel: TCB not supported",
                c.tcb_evaluation_data_number(),
                hex::encode(svn)
            )));
        }
    }
    Ok(())
}

/// Check 14: the claims document.
fn build_claims(quote: &TdxQuote, appraised: &Appraised, c: &TdxCollateral) -> Claims {
    let r = quote.report();
    let pck = &appraised.pck;
    let [rtmr0, rtmr1, rtmr2, rtmr3] = r.rtmr.map(hex::encode);
    let tdx = TdxClaims {
        version: quote.version(),
        body: quote.body_kind(),
        mr_td: hex::encode(r.mr_td),
        rtmr0,
        rtmr1,
        rtmr2,
        rtmr3,
        mr_config_id: hex::encode(r.mr_config_id),
        mr_owner: hex::encode(r.mr_owner),
        mr_owner_config: hex::encode(r.mr_owner_config),
        mr_seam: hex::encode(r.mr_seam),
        mr_signer_seam: hex::encode(r.mr_signer_seam),
        td_attributes: r.td_attributes,
        xfam: r.xfam,
        tee_tcb_svn: hex::encode(r.tee_tcb_svn),
        tee_tcb_svn2: r.tee_tcb_svn2.map(hex::encode),
        mr_service_td: r.mr_service_td.map(hex::encode),
        fmspc: pck.fmspc.to_string(),
        pck_ca: pck.ca,
        pce_svn: pck.pce_svn,
        cpu_svn: hex::encode(pck.cpu_svn),
        qe_svn: quote.qe_isv_svn(),
        tcb_status: appraised.status.to_string(),
        advisory_ids: appraised.advisory_ids.clone(),
        tcb_evaluation_data_number: c.tcb_evaluation_data_number(),
        report_data: hex::encode(r.report_data),
    };
    Claims {
        tee: TeeKind::Tdx,
        measurement: hex::encode(r.mr_td),
        debug: r.td_attributes.under_debug,
        report_data: hex::encode(r.report_data),
        init_data_digest: hex::encode(r.mr_config_id),
        snp: None,
        tdx: Some(tdx),
        gpu: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A structurally valid quote with an empty-ish signature section.
    fn blank(version: u16, body: TdBody) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&version.to_le_bytes());
        q.extend_from_slice(&AK_TYPE_ECDSA_P256.to_le_bytes());
        q.extend_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        q.extend_from_slice(&[0; 4]);
        q.extend_from_slice(&INTEL_QE_VENDOR_ID);
        q.extend_from_slice(&[0; 20]);
        if version == 5 {
            q.extend_from_slice(&body.body_type().to_le_bytes());
            q.extend_from_slice(&u32::try_from(body.byte_len()).unwrap().to_le_bytes());
        }
        let mut b = vec![0u8; body.byte_len()];
        b[120..128].copy_from_slice(&(1u64 << 28).to_le_bytes());
        q.extend_from_slice(&b);
        let pem = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n\0";
        let mut inner = Vec::new();
        inner.extend_from_slice(&[0; QE_REPORT_LEN + 64]);
        inner.extend_from_slice(&32u16.to_le_bytes());
        inner.extend_from_slice(&[0; 32]);
        inner.extend_from_slice(&CERT_DATA_PCK_CHAIN.to_le_bytes());
        inner.extend_from_slice(&u32::try_from(pem.len()).unwrap().to_le_bytes());
        inner.extend_from_slice(pem);
        let mut sig = vec![0u8; 128];
        sig.extend_from_slice(&CERT_DATA_QE_REPORT.to_le_bytes());
        sig.extend_from_slice(&u32::try_from(inner.len()).unwrap().to_le_bytes());
        sig.extend_from_slice(&inner);
        q.extend_from_slice(&u32::try_from(sig.len()).unwrap().to_le_bytes());
        q.extend_from_slice(&sig);
        q
    }

    #[test]
    fn layouts_parse() {
        for (v, body) in [(4, TdBody::Td10), (5, TdBody::Td10), (5, TdBody::Td15), (5, TdBody::Td15Ex)] {
            let q = TdxQuote::parse(&blank(v, body)).unwrap();
            assert_eq!(q.version(), v);
            assert_eq!(q.body_kind(), body);
            let header = if v == 5 { HEADER_LEN + 6 } else { HEADER_LEN };
            assert_eq!(q.signed_bytes().len(), header + body.byte_len());
            assert_eq!(q.pck_chain().len(), 2);
            assert!(q.report().td_attributes.sept_ve_disable);
            assert_eq!(q.report().tee_tcb_svn2.is_some(), body != TdBody::Td10);
        }
        // Zero padding after the signature data is accepted, anything else is not.
        let mut q = blank(4, TdBody::Td10);
        q.extend_from_slice(&[0; 70]);
        assert!(TdxQuote::parse(&q).is_ok());
        q.push(1);
        assert!(matches!(TdxQuote::parse(&q), Err(EvidenceError::ReservedNonZero(_))));
    }

    #[test]
    fn the_appraisal_key_ignores_only_report_data_and_the_quote_signature() {
        let vectors = std::env::var_os("KBS_TEST_VECTORS").map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"),
            std::path::PathBuf::from,
        );
        let c = TdxCollateral::from_json(&std::fs::read(vectors.join("dcap-qvl/tdx_quote_collateral.json")).unwrap())
            .unwrap();
        for (v, body) in [(4, TdBody::Td10), (5, TdBody::Td10), (5, TdBody::Td15), (5, TdBody::Td15Ex)] {
            let good = blank(v, body);
            let q = TdxQuote::parse(&good).unwrap();
            let key = q.appraisal_key(&c);
            let rd = q.report_data_at;
            let sig = q.signed_len + 4;
            for i in 0..good.len() {
                let mut bad = good.clone();
                bad[i] ^= 0x80;
                let Ok(p) = TdxQuote::parse(&bad) else { continue };
                let ignored = (rd..rd + 64).contains(&i) || (sig..sig + 64).contains(&i);
                assert_eq!(p.appraisal_key(&c) == key, ignored, "v{v} {body:?} byte {i}");
                if (rd..rd + 64).contains(&i) {
                    assert_ne!(p.report().report_data, q.report().report_data);
                }
                if (sig..sig + 64).contains(&i) {
                    assert_ne!(p.signature, q.signature);
                }
            }
        }
    }

    #[test]
    fn header_is_checked_before_anything_else() {
        let good = blank(4, TdBody::Td10);
        let mut q = good.clone();
        q[0] = 3;
        assert!(matches!(TdxQuote::parse(&q), Err(EvidenceError::UnsupportedVersion(3))));
        let mut q = good.clone();
        q[2] = 3;
        assert!(matches!(TdxQuote::parse(&q), Err(EvidenceError::UnsupportedSignatureAlgorithm(3))));
        let mut q = good.clone();
        q[4] = 0;
        assert!(matches!(TdxQuote::parse(&q), Err(EvidenceError::UnsupportedTee("sgx"))));
        let mut q = good.clone();
        q[9] = 1;
        assert!(matches!(TdxQuote::parse(&q), Err(EvidenceError::ReservedNonZero(_))));
        let mut q = good.clone();
        q[12] ^= 1;
        assert!(matches!(TdxQuote::parse(&q), Err(EvidenceError::Malformed(_))));
        let mut q = blank(5, TdBody::Td15);
        q[48] = 9;
        assert!(matches!(TdxQuote::parse(&q), Err(EvidenceError::Malformed(_))));
        let mut q = blank(5, TdBody::Td15);
        q[50] = 1;
        assert!(matches!(TdxQuote::parse(&q), Err(EvidenceError::Malformed(_))));
        assert!(matches!(TdxQuote::parse(&vec![0; MAX_QUOTE_LEN + 1]), Err(EvidenceError::TooLarge { .. })));
        for len in [0, 10, 48, 600, good.len() - 1] {
            assert!(TdxQuote::parse(&good[..len]).is_err(), "{len}");
        }
    }

    #[test]
    fn attributes_decode() {
        let a = TdAttributes::from_raw(0x1000_0001);
        assert!(a.debug && a.under_debug && a.sept_ve_disable && !a.migratable);
        assert_eq!(a.reserved_bits(), 0);
        assert_eq!(TdAttributes::from_raw(1 << 40).reserved_bits(), 1 << 40);
        assert!(TdAttributes::from_raw(0x10).under_debug);
        assert!(!TdAttributes::from_raw(0x10).debug);
        for bit in [0u32, 4, 5, 6, 16, 17, 18, 19, 20, 21, 22, 27, 28, 29, 30, 31, 62, 63] {
            assert_eq!(TdAttributes::from_raw(1 << bit).reserved_bits(), 0, "bit {bit}");
        }
    }

    #[test]
    fn tcb_status_names() {
        assert_eq!(parse_tcb_status("UpToDate"), Some(TcbStatus::UpToDate));
        assert_eq!(parse_tcb_status("OutOfDate"), Some(TcbStatus::OutOfDate));
        assert_eq!(parse_tcb_status("SWHardeningNeeded"), Some(TcbStatus::SWHardeningNeeded));
        assert_eq!(parse_tcb_status("uptodate"), None);
        assert!(TdxPolicy::from_names(&["Revoked"]).is_err());
        assert!(TdxPolicy::from_names::<&str>(&[]).is_err());
        assert_eq!(TdxPolicy::default().accepted_tcb_statuses, vec![TcbStatus::UpToDate]);
        let p = TdxPolicy::from_names(&["UpToDate", "SWHardeningNeeded", "UpToDate"]).unwrap();
        assert_eq!(p.accepted_tcb_statuses.len(), 2);
    }

    #[test]
    fn tcb_status_table_is_dcap_qvls() {
        // No catch-all: a status a newer dcap-qvl adds fails to compile
        // here until it is listed in TCB_STATUSES.
        let position = |status: TcbStatus| match status {
            TcbStatus::UpToDate => 0,
            TcbStatus::SWHardeningNeeded => 1,
            TcbStatus::ConfigurationNeeded => 2,
            TcbStatus::ConfigurationAndSWHardeningNeeded => 3,
            TcbStatus::OutOfDate => 4,
            TcbStatus::OutOfDateConfigurationNeeded => 5,
            TcbStatus::Revoked => 6,
            TcbStatus::TDRelaunchAdvised => 7,
            TcbStatus::TDRelaunchAdvisedConfigurationNeeded => 8,
        };
        for (i, status) in TCB_STATUSES.iter().enumerate() {
            assert_eq!(position(*status), i, "{status}");
        }
        let names = super::tcb_status_names();
        assert_eq!(names.len(), TCB_STATUSES.len());
        for (name, status) in names.iter().zip(TCB_STATUSES) {
            assert_eq!(parse_tcb_status(name), Some(status), "{name}");
        }
        assert_eq!(names[0], "UpToDate");
        assert_eq!(names[8], "TDRelaunchAdvisedConfigurationNeeded");
    }

    #[test]
    fn verifier_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TdxVerifier>();
        assert_send_sync::<VerifiedTdx>();
    }
}
