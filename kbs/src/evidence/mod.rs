//! Evidence: untrusted bytes in, verified claims out.
//!
//! Verifiers are pure. Trust anchors, collateral and the clock come in as
//! arguments, so production and tests run the same code with different
//! roots. Each verifier stops at its first failed check and says which one
//! in an [`EvidenceError`].

pub mod amd_crl;
pub mod anchors;
pub(crate) mod bounded;
pub mod certtable;
pub mod collateral;
pub mod gpu;
pub mod gpu_ocsp;
pub mod gpu_rims;
pub mod pcs;
pub mod snp;
pub mod tdx;
pub mod tdx_collateral;

use serde::Serialize;

use crate::reason::ReasonCode;

/// Why evidence was refused. Malformed input ("the attacker sent garbage")
/// and failed checks are different variants; neither is a broker bug.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// Larger than the cap for its kind.
    #[error("evidence too large: {len} bytes, at most {max}")]
    TooLarge {
        /// Received length.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// Does not parse.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// A report or quote version the broker does not know.
    #[error("unsupported evidence version {0}")]
    UnsupportedVersion(u32),
    /// The report's signature algorithm is not one the broker knows.
    #[error("unsupported signature algorithm {0}")]
    UnsupportedSignatureAlgorithm(u32),
    /// A field the specification reserves (must be zero) is not zero.
    #[error("reserved field at {0} is not zero")]
    ReservedNonZero(&'static str),
    /// The TEE kind is not enabled.
    #[error("unsupported TEE: {0}")]
    UnsupportedTee(&'static str),
    /// A certificate does not parse.
    #[error("malformed certificate: {0}")]
    CertificateMalformed(String),
    /// The chain does not end at a pinned root.
    #[error("untrusted root: {0}")]
    UntrustedRoot(String),
    /// A certificate is not signed by its issuer.
    #[error("certificate chain invalid: {0}")]
    ChainInvalid(String),
    /// A certificate is not valid at the verification time.
    #[error("certificate not valid at verification time: {0}")]
    CertificateExpired(String),
    /// The report signature does not verify under the VCEK/VLEK.
    #[error("report signature invalid")]
    SignatureInvalid,
    /// VCEK/VLEK TCB extensions differ from reported_tcb.
    #[error("TCB mismatch: {0}")]
    TcbMismatch(String),
    /// VCEK hwID differs from chip_id.
    #[error("VCEK hwID does not match the report's chip_id")]
    ChipIdMismatch,
    /// report_data is not the expected binding.
    #[error("report_data does not match the challenge binding")]
    ReportDataMismatch,
    /// Needed collateral (VCEK, CRL, TCB info) could not be obtained.
    #[error("collateral unavailable: {0}")]
    CollateralUnavailable(String),
    /// Collateral (TCB info, QE identity, a CRL) is not authentic, does
    /// not parse, or is for another platform. Collateral is the broker's
    /// input, not the guest's, so this is reported as unavailable.
    #[error("collateral invalid: {0}")]
    CollateralInvalid(String),
    /// Collateral is outside its issue/nextUpdate window at the
    /// verification time; it is never used to accept evidence.
    #[error("collateral expired: {0}")]
    CollateralExpired(String),
    /// A certificate in the chain is listed in its issuer's CRL.
    #[error("certificate revoked: {0}")]
    Revoked(String),
    /// The platform's TCB status (or the lack of a matching TCB level) is
    /// not one the broker accepts.
    #[error("TCB status not allowed: {0}")]
    TcbStatusNotAllowed(String),
    /// TD attributes a verifier must refuse whatever the policy (reserved
    /// bits, migratable, SEPT_VE_DISABLE off, service TDs).
    #[error("TD attributes not allowed: {0}")]
    AttributesNotAllowed(String),
    /// NVIDIA GPU or NVSwitch evidence was refused.
    #[error(transparent)]
    Gpu(#[from] gpu::GpuError),
    /// The set of devices a VM presented was refused.
    #[error("GPU device set: {0}")]
    GpuSet(#[from] gpu::set::DeviceSetError),
    /// A device chain's stapled revocation status was refused.
    #[error("GPU revocation: {0}")]
    GpuRevocation(#[from] gpu::ocsp::OcspError),
}

impl EvidenceError {
    /// The stable reason code.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::TooLarge { .. } => ReasonCode::EvidenceTooLarge,
            Self::Malformed(_) => ReasonCode::EvidenceMalformed,
            Self::UnsupportedVersion(_) => ReasonCode::UnsupportedVersion,
            Self::UnsupportedSignatureAlgorithm(_) => ReasonCode::UnsupportedVersion,
            Self::ReservedNonZero(_) => ReasonCode::EvidenceMalformed,
            Self::UnsupportedTee(_) => ReasonCode::UnsupportedTee,
            Self::CertificateMalformed(_) => ReasonCode::CertificateMalformed,
            Self::UntrustedRoot(_) => ReasonCode::UntrustedRoot,
            Self::ChainInvalid(_) => ReasonCode::CertificateChainInvalid,
            Self::CertificateExpired(_) => ReasonCode::CertificateExpired,
            Self::SignatureInvalid => ReasonCode::SignatureInvalid,
            Self::TcbMismatch(_) => ReasonCode::TcbMismatch,
            Self::ChipIdMismatch => ReasonCode::ChipIdMismatch,
            Self::ReportDataMismatch => ReasonCode::ReportDataMismatch,
            Self::CollateralUnavailable(_) | Self::CollateralInvalid(_) => ReasonCode::CollateralUnavailable,
            Self::CollateralExpired(_) => ReasonCode::CollateralExpired,
            Self::Revoked(_) => ReasonCode::CertificateRevoked,
            Self::TcbStatusNotAllowed(_) => ReasonCode::TcbStatusNotAllowed,
            Self::AttributesNotAllowed(_) => ReasonCode::TdAttributesNotAllowed,
            Self::Gpu(e) => e.reason(),
            Self::GpuSet(e) => e.reason(),
            Self::GpuRevocation(e) => e.reason(),
        }
    }
}

/// The kind of TEE that produced verified evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// INSECURE: the CoCo `sample` TEE, no hardware and no signature. Only
    /// a broker in its explicit insecure dev mode produces these claims.
    Sample,
}

/// The normalized claims document that policy reads. Built only from
/// evidence that passed every check. The common fields mean the same for
/// every TEE; `snp` or `tdx` carries the rest (see their types).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Claims {
    /// Which TEE.
    pub tee: TeeKind,
    /// Launch measurement (SNP MEASUREMENT, TDX MRTD), lowercase hex.
    pub measurement: String,
    /// Whether the guest can be debugged (SNP policy DEBUG, TDX attribute DEBUG).
    pub debug: bool,
    /// The 64-byte report_data, lowercase hex.
    pub report_data: String,
    /// Init-data digest (SNP HOST_DATA, TDX MRCONFIGID), lowercase hex.
    pub init_data_digest: String,
    /// SNP-specific claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snp: Option<snp::SnpClaims>,
    /// TDX-specific claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdx: Option<tdx::TdxClaims>,
    /// The VM's attested GPUs, when it presented any (each verified, the
    /// set checked and bound to this CPU evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<gpu::GpuSetClaims>,
}
