//! Intel DCAP collateral for TDX quotes: what it is and its file forms.
//!
//! A TDX quote is judged against four signed documents Intel publishes
//! through its Provisioning Certification Service (PCS) or a caching PCCS:
//! the TCB info for the platform's FMSPC, the TD quoting enclave's (QE)
//! identity, the root CA CRL and the PCK CA's CRL. Together they are one
//! [`TdxCollateral`] set, checked for shape here ([`TdxCollateral::from_v3`])
//! and for authenticity and freshness by the verifier
//! ([`super::tdx::TdxVerifier`]). Real sets live about 30 days; a set past
//! any `nextUpdate` is never used to accept a quote.
//!
//! Where collateral comes from (a directory, PCS or PCCS, a cache) is
//! [`super::pcs`].
//!
//! # PCS files
//! The PCS v4 API, as files (`kbsctl collateral fetch` writes both forms):
//! ```text
//! /tdx/certification/v4/tcb?fmspc=<FMSPC>      -> tcb-<fmspc>.json (+ tcb-<fmspc>.issuer-chain.pem, the
//!                                                 TCB-Info-Issuer-Chain header, URL-decoded)
//! /tdx/certification/v4/qe/identity            -> qe-identity.json (+ qe-identity.issuer-chain.pem, the
//!                                                 SGX-Enclave-Identity-Issuer-Chain header)
//! /sgx/certification/v4/pckcrl?ca=<ca>         -> pckcrl-<ca>.der or .pem (+ pckcrl-<ca>.issuer-chain.pem,
//!                                                 the SGX-PCK-CRL-Issuer-Chain header)
//! /sgx/certification/v4/rootcacrl (PCCS)       -> rootcacrl.der (DER, PEM, or the PCCS's hex text)
//! ```

use std::fmt;

use dcap_qvl::{QeIdentity, QuoteCollateralV3, TcbInfo};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::EvidenceError;
use super::anchors;

/// Largest collateral file or response accepted (real sets are 16-25 KiB).
pub const MAX_COLLATERAL_LEN: usize = 1024 * 1024;

/// Most certificates in one issuer chain.
const MAX_CHAIN_CERTS: usize = 4;

/// Which Intel PCK CA issued a platform's PCK certificate; each has its
/// own CRL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PckCa {
    /// `Intel SGX PCK Platform CA` (multi-package platforms).
    Platform,
    /// `Intel SGX PCK Processor CA` (single-package platforms).
    Processor,
}

impl PckCa {
    /// The name the PCS API uses (`ca=platform`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Processor => "processor",
        }
    }

    /// The CA named by a certificate common name, as Intel names them.
    pub fn from_common_name(cn: &str) -> Option<Self> {
        if cn.contains("Platform") {
            Some(Self::Platform)
        } else if cn.contains("Processor") {
            Some(Self::Processor)
        } else {
            None
        }
    }
}

impl fmt::Display for PckCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An FMSPC: family, model, stepping, platform type and customized SKU.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fmspc(pub [u8; 6]);

impl Fmspc {
    /// Parses 12 hex digits, any case.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// Upper-case hex, as Intel writes it in URLs and TCB info.
    pub fn to_hex_upper(self) -> String {
        hex::encode_upper(self.0)
    }
}

impl fmt::Display for Fmspc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fmspc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fmspc({self})")
    }
}

/// A parsed CRL: the parts the verifier needs.
#[derive(Clone, Debug)]
pub(crate) struct Crl {
    /// Raw DER issuer name.
    pub(crate) issuer: Vec<u8>,
    pub(crate) this_update: OffsetDateTime,
    pub(crate) next_update: OffsetDateTime,
    /// Revoked serial numbers, big-endian without leading zeros.
    pub(crate) revoked: Vec<Vec<u8>>,
    /// The signed `TBSCertList`.
    pub(crate) tbs: Vec<u8>,
    /// The DER ECDSA signature.
    pub(crate) signature: Vec<u8>,
    pub(crate) algorithm_ok: bool,
}

impl Crl {
    fn parse(der: &[u8], what: &str) -> Result<Self, EvidenceError> {
        let invalid = |why: String| EvidenceError::CollateralInvalid(format!("{what}: {why}"));
        let crl = match CertificateRevocationList::from_der(der) {
            Ok(([], crl)) => crl,
            Ok(_) => return Err(invalid("trailing bytes".into())),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let next_update = crl.next_update().ok_or_else(|| invalid("no nextUpdate".into()))?.to_datetime();
        Ok(Self {
            issuer: crl.issuer().as_raw().to_vec(),
            this_update: crl.last_update().to_datetime(),
            next_update,
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| anchors::strip_serial_zeros(r.raw_serial()).to_vec())
                .collect(),
            tbs: crl.tbs_cert_list.as_ref().to_vec(),
            signature: crl.signature_value.data.to_vec(),
            algorithm_ok: crl.signature_algorithm.algorithm.to_id_string() == "1.2.840.10045.4.3.2"
                && crl.signature_value.unused_bits == 0,
        })
    }

    /// Whether the serial number (raw DER INTEGER content) is listed.
    pub(crate) fn lists(&self, serial: &[u8]) -> bool {
        let serial = anchors::strip_serial_zeros(serial);
        self.revoked.iter().any(|r| r.as_slice() == serial)
    }
}

/// One collateral set, parsed and shape-checked (not yet authenticated:
/// the verifier checks signatures against its anchors).
#[derive(Clone)]
pub struct TdxCollateral {
    v3: QuoteCollateralV3,
    fmspc: Fmspc,
    pck_ca: PckCa,
    pub(crate) tcb_info: TcbInfo,
    pub(crate) tcb_info_window: (OffsetDateTime, OffsetDateTime),
    pub(crate) qe_identity_window: (OffsetDateTime, OffsetDateTime),
    pub(crate) root_crl: Crl,
    pub(crate) pck_crl: Crl,
    /// TCB info signer, then the rest of its chain (DER).
    pub(crate) tcb_info_chain: Vec<Vec<u8>>,
    /// QE identity signer, then the rest of its chain (DER).
    pub(crate) qe_identity_chain: Vec<Vec<u8>>,
    /// SHA-256 of the whole set (its JSON form), naming it in the
    /// verifier's appraisal memo.
    digest: [u8; 32],
}

impl fmt::Debug for TdxCollateral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxCollateral")
            .field("fmspc", &self.fmspc)
            .field("pck_ca", &self.pck_ca)
            .field("tcb_evaluation_data_number", &self.tcb_info.tcb_evaluation_data_number)
            .field("expires_at", &self.expires_at())
            .finish_non_exhaustive()
    }
}

fn rfc3339(text: &str, what: &str) -> Result<OffsetDateTime, EvidenceError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| EvidenceError::CollateralInvalid(format!("{what} {text:?}: {e}")))
}

fn chain(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, EvidenceError> {
    let certs = anchors::pem_certificates(pem.as_bytes())
        .map_err(|e| EvidenceError::CollateralInvalid(format!("{what} issuer chain: {e}")))?;
    if certs.is_empty() || certs.len() > MAX_CHAIN_CERTS {
        return Err(EvidenceError::CollateralInvalid(format!("{what} issuer chain has {} certificates", certs.len())));
    }
    Ok(certs)
}

impl TdxCollateral {
    /// Parses a dcap-qvl `QuoteCollateralV3` JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_COLLATERAL_LEN {
            return Err(EvidenceError::TooLarge { len: bytes.len(), max: MAX_COLLATERAL_LEN });
        }
        let v3: QuoteCollateralV3 = serde_json::from_slice(bytes)
            .map_err(|e| EvidenceError::CollateralInvalid(format!("collateral JSON: {e}")))?;
        Self::from_v3(v3)
    }

    /// Checks the shape of a set: the TCB info and QE identity parse and
    /// are TDX documents, both CRLs parse and have a `nextUpdate`, the
    /// issuer chains parse.
    pub fn from_v3(mut v3: QuoteCollateralV3) -> Result<Self, EvidenceError> {
        let invalid = EvidenceError::CollateralInvalid;
        // The PCK chain always comes from the quote (certification data
        // type 5), never from a collateral file.
        v3.pck_certificate_chain = None;
        let tcb_info: TcbInfo =
            serde_json::from_str(&v3.tcb_info).map_err(|e| invalid(format!("TCB info does not parse: {e}")))?;
        if tcb_info.id != "TDX" || tcb_info.version < 3 {
            return Err(invalid(format!(
                "TCB info is {:?} version {}, not TDX version 3",
                tcb_info.id, tcb_info.version
            )));
        }
        let fmspc =
            Fmspc::from_hex(&tcb_info.fmspc).ok_or_else(|| invalid(format!("TCB info FMSPC {:?}", tcb_info.fmspc)))?;
        let qe_identity: QeIdentity =
            serde_json::from_str(&v3.qe_identity).map_err(|e| invalid(format!("QE identity does not parse: {e}")))?;
        if qe_identity.id != "TD_QE" {
            return Err(invalid(format!("QE identity is {:?}, not TD_QE", qe_identity.id)));
        }
        if v3.tcb_info_signature.len() != 64 || v3.qe_identity_signature.len() != 64 {
            return Err(invalid("collateral signatures must be 64 bytes (r || s)".into()));
        }
        let root_crl = Crl::parse(&v3.root_ca_crl, "root CA CRL")?;
        let pck_crl = Crl::parse(&v3.pck_crl, "PCK CRL")?;
        let pck_crl_chain = chain(&v3.pck_crl_issuer_chain, "PCK CRL")?;
        let pck_ca = pck_crl_chain
            .first()
            .and_then(|der| anchors::parse_der_cert(der).ok().map(|c| anchors::common_name(&c)))
            .and_then(|cn| PckCa::from_common_name(&cn))
            .ok_or_else(|| invalid("PCK CRL issuer is neither the Platform nor the Processor CA".into()))?;
        let json = serde_json::to_vec(&v3).map_err(|e| invalid(format!("collateral does not serialize: {e}")))?;
        Ok(Self {
            digest: anchors::sha256(&json),
            tcb_info_window: (
                rfc3339(&tcb_info.issue_date, "TCB info issueDate")?,
                rfc3339(&tcb_info.next_update, "TCB info nextUpdate")?,
            ),
            qe_identity_window: (
                rfc3339(&qe_identity.issue_date, "QE identity issueDate")?,
                rfc3339(&qe_identity.next_update, "QE identity nextUpdate")?,
            ),
            tcb_info_chain: chain(&v3.tcb_info_issuer_chain, "TCB info")?,
            qe_identity_chain: chain(&v3.qe_identity_issuer_chain, "QE identity")?,
            fmspc,
            pck_ca,
            tcb_info,
            root_crl,
            pck_crl,
            v3,
        })
    }

    /// SHA-256 of the whole set: two sets with the same digest are the
    /// same documents, signatures, chains and CRLs.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The dcap-qvl form, for the DCAP engine and for writing files.
    pub fn as_v3(&self) -> &QuoteCollateralV3 {
        &self.v3
    }

    /// The JSON document (`QuoteCollateralV3` layout).
    pub fn to_json(&self) -> Result<Vec<u8>, EvidenceError> {
        serde_json::to_vec_pretty(&self.v3).map_err(|e| EvidenceError::CollateralInvalid(e.to_string()))
    }

    /// The FMSPC the TCB info is for.
    pub fn fmspc(&self) -> Fmspc {
        self.fmspc
    }

    /// The PCK CA whose CRL the set carries.
    pub fn pck_ca(&self) -> PckCa {
        self.pck_ca
    }

    /// Intel's TCB evaluation data number of the TCB info.
    pub fn tcb_evaluation_data_number(&self) -> u32 {
        self.tcb_info.tcb_evaluation_data_number
    }

    /// The earliest `nextUpdate` of the four documents: after it the set
    /// accepts nothing.
    pub fn expires_at(&self) -> OffsetDateTime {
        [self.tcb_info_window.1, self.qe_identity_window.1, self.root_crl.next_update, self.pck_crl.next_update]
            .into_iter()
            .min()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The latest issue date (`issueDate`/`thisUpdate`): before it the set
    /// accepts nothing.
    pub fn issued_at(&self) -> OffsetDateTime {
        [self.tcb_info_window.0, self.qe_identity_window.0, self.root_crl.this_update, self.pck_crl.this_update]
            .into_iter()
            .max()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Whether every document is inside its window at `now`.
    pub fn is_current(&self, now: OffsetDateTime) -> bool {
        self.issued_at() <= now && now <= self.expires_at()
    }
}

/// A PCS TCB info response body.
#[derive(Deserialize)]
struct TcbInfoResponse<'a> {
    #[serde(rename = "tcbInfo", borrow)]
    tcb_info: &'a serde_json::value::RawValue,
    signature: String,
}

/// A PCS QE identity response body.
#[derive(Deserialize)]
struct QeIdentityResponse<'a> {
    #[serde(rename = "enclaveIdentity", borrow)]
    enclave_identity: &'a serde_json::value::RawValue,
    signature: String,
}

/// The PCS responses of one collateral set, as bytes.
#[derive(Clone, Debug, Default)]
pub struct PcsFiles {
    /// Body of `/tdx/certification/v4/tcb?fmspc=`.
    pub tcb_info: Vec<u8>,
    /// Its `TCB-Info-Issuer-Chain` header, URL-decoded (PEM).
    pub tcb_info_issuer_chain: String,
    /// Body of `/tdx/certification/v4/qe/identity`.
    pub qe_identity: Vec<u8>,
    /// Its `SGX-Enclave-Identity-Issuer-Chain` header, URL-decoded (PEM).
    pub qe_identity_issuer_chain: String,
    /// Body of `/sgx/certification/v4/pckcrl?ca=` (DER or PEM).
    pub pck_crl: Vec<u8>,
    /// Its `SGX-PCK-CRL-Issuer-Chain` header, URL-decoded (PEM).
    pub pck_crl_issuer_chain: String,
    /// The root CA CRL (DER, PEM, or hex text as a PCCS serves it).
    pub root_ca_crl: Vec<u8>,
}

/// DER from a CRL as PCS/PCCS serve it: DER, PEM or hex text.
fn crl_der(bytes: &[u8], what: &str) -> Result<Vec<u8>, EvidenceError> {
    let invalid = |why: &str| EvidenceError::CollateralInvalid(format!("{what}: {why}"));
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("neither DER nor text"))?;
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        let block = x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
            .next()
            .ok_or_else(|| invalid("empty PEM"))?
            .map_err(|e| invalid(&e.to_string()))?;
        return Ok(block.contents);
    }
    hex::decode(text).map_err(|_| invalid("neither DER, PEM nor hex"))
}

impl PcsFiles {
    /// Builds the collateral set these responses make.
    pub fn into_collateral(self) -> Result<TdxCollateral, EvidenceError> {
        let invalid = EvidenceError::CollateralInvalid;
        let tcb: TcbInfoResponse<'_> =
            serde_json::from_slice(&self.tcb_info).map_err(|e| invalid(format!("TCB info response: {e}")))?;
        let qe: QeIdentityResponse<'_> =
            serde_json::from_slice(&self.qe_identity).map_err(|e| invalid(format!("QE identity response: {e}")))?;
        let v3 = QuoteCollateralV3 {
            pck_crl_issuer_chain: self.pck_crl_issuer_chain,
            root_ca_crl: crl_der(&self.root_ca_crl, "root CA CRL")?,
            pck_crl: crl_der(&self.pck_crl, "PCK CRL")?,
            tcb_info_issuer_chain: self.tcb_info_issuer_chain,
            // The signature covers these exact bytes: keep them verbatim.
            tcb_info: tcb.tcb_info.get().to_owned(),
            tcb_info_signature: hex::decode(tcb.signature.trim())
                .map_err(|_| invalid("TCB info signature is not hex".into()))?,
            qe_identity_issuer_chain: self.qe_identity_issuer_chain,
            qe_identity: qe.enclave_identity.get().to_owned(),
            qe_identity_signature: hex::decode(qe.signature.trim())
                .map_err(|_| invalid("QE identity signature is not hex".into()))?,
            pck_certificate_chain: None,
        };
        TdxCollateral::from_v3(v3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmspc_and_ca_names() {
        let f = Fmspc::from_hex("B0c06F000000").unwrap();
        assert_eq!(f.to_string(), "b0c06f000000");
        assert_eq!(f.to_hex_upper(), "B0C06F000000");
        assert!(Fmspc::from_hex("b0c06f00000").is_none());
        assert_eq!(PckCa::from_common_name("Intel SGX PCK Platform CA"), Some(PckCa::Platform));
        assert_eq!(PckCa::from_common_name("Intel SGX PCK Processor CA"), Some(PckCa::Processor));
        assert_eq!(PckCa::from_common_name("Intel SGX Root CA"), None);
    }

    #[test]
    fn crl_encodings() {
        assert_eq!(crl_der(&[0x30, 1, 2], "x").unwrap(), vec![0x30, 1, 2]);
        assert_eq!(crl_der(b"3001ff\n", "x").unwrap(), vec![0x30, 1, 0xff]);
        assert!(crl_der(b"zz", "x").is_err());
        assert_eq!(anchors::strip_serial_zeros(&[0, 0, 5, 0]), &[5, 0]);
        assert_eq!(anchors::strip_serial_zeros(&[0, 0]), &[] as &[u8]);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(TdxCollateral::from_json(b"{}"), Err(EvidenceError::CollateralInvalid(_))));
        let big = vec![b' '; MAX_COLLATERAL_LEN + 1];
        assert!(matches!(TdxCollateral::from_json(&big), Err(EvidenceError::TooLarge { .. })));
    }
}
