//! The broker's error type, its stable reason codes and the one mapping from
//! error to gRPC status.
//!
//! Clients get a fixed, short message and a reason code (also in the
//! `kbs-reason` response metadata). The full cause goes to the log and the
//! audit record only. Errors are classified by type, never by their text.

use std::fmt;

use crate::challenge::ChallengeError;
use crate::evidence::EvidenceError;
use crate::store::StoreError;

/// A stable, machine-readable reason for a refusal. The string forms are
/// part of the API: they never change meaning once published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    /// The request itself is malformed (missing field, bad name, bad key).
    InvalidRequest,
    /// The evidence could not be parsed.
    EvidenceMalformed,
    /// The evidence exceeds a size cap.
    EvidenceTooLarge,
    /// The report or quote version is not one the broker knows.
    UnsupportedVersion,
    /// The TEE type is unsupported or disabled on this broker.
    UnsupportedTee,
    /// The HPKE suite is not offered by this broker.
    UnsupportedHpkeSuite,
    /// A certificate could not be parsed.
    CertificateMalformed,
    /// The chain does not end at a pinned root.
    UntrustedRoot,
    /// A certificate in the chain is not signed by its issuer.
    CertificateChainInvalid,
    /// A certificate is outside its validity period.
    CertificateExpired,
    /// The report or quote signature does not verify.
    SignatureInvalid,
    /// The VCEK/VLEK TCB does not equal the report's reported_tcb.
    TcbMismatch,
    /// The VCEK hwID does not equal the report's chip_id.
    ChipIdMismatch,
    /// report_data is not the binding of this challenge and HPKE key.
    ReportDataMismatch,
    /// The challenge is past its expiry.
    ChallengeExpired,
    /// The challenge was not issued by this broker (or was altered).
    ChallengeInvalid,
    /// The secret names differ from those the challenge was issued for.
    ChallengeMismatch,
    /// The guest runs with debugging enabled.
    DebugEnabled,
    /// The guest runs at a VMPL other than 0.
    VmplNotAllowed,
    /// The guest's launch measurement is not allowed for this secret.
    MeasurementNotAllowed,
    /// The policy refused the release.
    PolicyDenied,
    /// No policy covers the secret: nothing is released without one.
    NoPolicy,
    /// The secret does not exist (reported only after attestation passed).
    SecretNotFound,
    /// The secret changed under a concurrent writer.
    VersionConflict,
    /// The secret store could not be reached.
    StoreUnavailable,
    /// Collateral (VCEK, TCB info, CRL) could not be obtained.
    CollateralUnavailable,
    /// The broker's collateral (TCB info, QE identity, CRLs) is past its
    /// nextUpdate; it is never used to accept evidence.
    CollateralExpired,
    /// A certificate in the evidence's chain is revoked.
    CertificateRevoked,
    /// The platform's TCB status is not one the broker accepts.
    TcbStatusNotAllowed,
    /// The TD's attributes are refused (migratable, SEPT_VE_DISABLE off, ...).
    TdAttributesNotAllowed,
    /// No or a bad admin credential.
    Unauthenticated,
    /// The admin credential lacks the role for this call.
    PermissionDenied,
    /// A bug or an unexpected local failure.
    Internal,
    // NVIDIA GPU / NVSwitch evidence.
    /// GPU evidence failed a check (signature, chain, FWID, nonce, device).
    GpuEvidenceInvalid,
    /// A GPU certificate is revoked, or its OCSP status is not good.
    GpuRevoked,
    /// The devices presented are not the expected set (count, duplicates).
    GpuCountMismatch,
}

impl ReasonCode {
    /// The stable string form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::EvidenceMalformed => "evidence_malformed",
            Self::EvidenceTooLarge => "evidence_too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnsupportedTee => "unsupported_tee",
            Self::UnsupportedHpkeSuite => "unsupported_hpke_suite",
            Self::CertificateMalformed => "certificate_malformed",
            Self::UntrustedRoot => "untrusted_root",
            Self::CertificateChainInvalid => "certificate_chain_invalid",
            Self::CertificateExpired => "certificate_expired",
            Self::SignatureInvalid => "signature_invalid",
            Self::TcbMismatch => "tcb_mismatch",
            Self::ChipIdMismatch => "chip_id_mismatch",
            Self::ReportDataMismatch => "report_data_mismatch",
            Self::ChallengeExpired => "challenge_expired",
            Self::ChallengeInvalid => "challenge_invalid",
            Self::ChallengeMismatch => "challenge_mismatch",
            Self::DebugEnabled => "debug_enabled",
            Self::VmplNotAllowed => "vmpl_not_allowed",
            Self::MeasurementNotAllowed => "measurement_not_allowed",
            Self::PolicyDenied => "policy_denied",
            Self::NoPolicy => "no_policy",
            Self::SecretNotFound => "secret_not_found",
            Self::VersionConflict => "version_conflict",
            Self::StoreUnavailable => "store_unavailable",
            Self::CollateralUnavailable => "collateral_unavailable",
            Self::CollateralExpired => "collateral_expired",
            Self::CertificateRevoked => "certificate_revoked",
            Self::TcbStatusNotAllowed => "tcb_status_not_allowed",
            Self::TdAttributesNotAllowed => "td_attributes_not_allowed",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::Internal => "internal",
            Self::GpuEvidenceInvalid => "gpu_evidence_invalid",
            Self::GpuRevoked => "gpu_revoked",
            Self::GpuCountMismatch => "gpu_count_mismatch",
        }
    }

    /// The gRPC status code, by meaning.
    pub const fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidRequest
            | Self::EvidenceMalformed
            | Self::EvidenceTooLarge
            | Self::UnsupportedVersion
            | Self::UnsupportedTee
            | Self::UnsupportedHpkeSuite
            | Self::CertificateMalformed => Code::InvalidArgument,
            Self::UntrustedRoot
            | Self::CertificateChainInvalid
            | Self::CertificateExpired
            | Self::SignatureInvalid
            | Self::TcbMismatch
            | Self::ChipIdMismatch
            | Self::ReportDataMismatch
            | Self::CertificateRevoked
            | Self::TcbStatusNotAllowed
            | Self::TdAttributesNotAllowed
            | Self::DebugEnabled
            | Self::VmplNotAllowed
            | Self::MeasurementNotAllowed
            | Self::PolicyDenied
            | Self::NoPolicy
            | Self::PermissionDenied => Code::PermissionDenied,
            Self::ChallengeExpired | Self::ChallengeInvalid | Self::ChallengeMismatch => Code::FailedPrecondition,
            Self::VersionConflict => Code::Aborted,
            Self::SecretNotFound => Code::NotFound,
            Self::StoreUnavailable | Self::CollateralUnavailable | Self::CollateralExpired => Code::Unavailable,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Internal => Code::Internal,
            // NVIDIA GPU / NVSwitch evidence: failed checks, not malformed input.
            Self::GpuEvidenceInvalid | Self::GpuRevoked | Self::GpuCountMismatch => Code::PermissionDenied,
        }
    }

    /// The fixed message a client sees; never carries input or secret data.
    pub const fn public_message(self) -> &'static str {
        match self {
            Self::InvalidRequest => "the request is malformed",
            Self::EvidenceMalformed => "the evidence could not be parsed",
            Self::EvidenceTooLarge => "the evidence is too large",
            Self::UnsupportedVersion => "the evidence version is not supported",
            Self::UnsupportedTee => "the TEE type is not supported",
            Self::UnsupportedHpkeSuite => "the HPKE suite is not supported",
            Self::CertificateMalformed => "a certificate could not be parsed",
            Self::UntrustedRoot => "the certificate chain does not end at a trusted root",
            Self::CertificateChainInvalid => "the certificate chain does not verify",
            Self::CertificateExpired => "a certificate is outside its validity period",
            Self::SignatureInvalid => "the evidence signature does not verify",
            Self::TcbMismatch => "the signing key does not match the reported TCB",
            Self::ChipIdMismatch => "the signing key does not belong to this chip",
            Self::ReportDataMismatch => "the evidence is not bound to this challenge and key",
            Self::ChallengeExpired => "the challenge has expired",
            Self::ChallengeInvalid => "the challenge was not issued by this broker",
            Self::ChallengeMismatch => "the request does not match its challenge",
            Self::DebugEnabled => "debug guests are refused",
            Self::VmplNotAllowed => "only VMPL 0 may receive secrets",
            Self::MeasurementNotAllowed => "the measurement is not allowed for this secret",
            Self::PolicyDenied => "the policy refused the release",
            Self::NoPolicy => "no policy covers this secret",
            Self::SecretNotFound => "the secret does not exist",
            Self::VersionConflict => "the secret changed concurrently",
            Self::StoreUnavailable => "the secret store is unavailable",
            Self::CollateralUnavailable => "attestation collateral is unavailable",
            Self::CollateralExpired => "attestation collateral has expired",
            Self::CertificateRevoked => "a certificate in the chain is revoked",
            Self::TcbStatusNotAllowed => "the platform TCB status is not allowed",
            Self::TdAttributesNotAllowed => "the TD attributes are not allowed",
            Self::Unauthenticated => "authentication required",
            Self::PermissionDenied => "the caller lacks the role for this call",
            Self::Internal => "internal error",
            Self::GpuEvidenceInvalid => "the GPU evidence does not verify",
            Self::GpuRevoked => "a GPU certificate is revoked or its status is not good",
            Self::GpuCountMismatch => "the GPUs presented are not the expected set",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error the broker's request paths produce.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent a malformed request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Evidence failed parsing or verification.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// The challenge was refused.
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    /// The HPKE suite is not offered.
    #[error("HPKE suite not supported")]
    UnsupportedHpkeSuite,
    /// The policy refused; the reasons go to the log and audit only.
    #[error("policy refused: {reasons:?}")]
    Denied {
        /// The primary reason code.
        code: ReasonCode,
        /// Every reason, for operators.
        reasons: Vec<String>,
    },
    /// The secret store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No or a bad admin credential.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The admin credential lacks the role.
    #[error("permission denied: role {role} may not call {call}")]
    Forbidden {
        /// The caller's role.
        role: &'static str,
        /// The call refused.
        call: &'static str,
    },
    /// A bug or local failure (sealing, randomness).
    #[error("internal: {0}")]
    Internal(String),
    /// An operator's policy, reference values or dry-run claims are
    /// invalid. Admin calls only: the message (a compiler or parser
    /// message about the operator's own upload) is returned to the caller.
    #[error("invalid policy input: {0}")]
    PolicyInvalid(String),
}

impl Error {
    /// The stable reason code.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::InvalidRequest(_) => ReasonCode::InvalidRequest,
            Self::Evidence(e) => e.reason(),
            Self::Challenge(e) => e.reason(),
            Self::UnsupportedHpkeSuite => ReasonCode::UnsupportedHpkeSuite,
            Self::Denied { code, .. } => *code,
            Self::Store(e) => e.reason(),
            Self::Unauthenticated(_) => ReasonCode::Unauthenticated,
            Self::Forbidden { .. } => ReasonCode::PermissionDenied,
            Self::Internal(_) => ReasonCode::Internal,
            Self::PolicyInvalid(_) => ReasonCode::InvalidRequest,
        }
    }

    /// The client-facing status: code by meaning, fixed message, reason
    /// code in the `kbs-reason` metadata.
    pub fn to_status(&self) -> tonic::Status {
        let reason = self.reason();
        let message = match self {
            Self::PolicyInvalid(detail) => {
                format!(
                    "{}: {}: {}",
                    reason.as_str(),
                    reason.public_message(),
                    detail.chars().take(4096).collect::<String>()
                )
            }
            _ => format!("{}: {}", reason.as_str(), reason.public_message()),
        };
        let mut status = tonic::Status::new(reason.grpc_code(), message);
        if let Ok(value) = reason.as_str().parse() {
            status.metadata_mut().insert("kbs-reason", value);
        }
        status
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_reason_but_not_cause() {
        let err = Error::InvalidRequest("secret name \"../etc\" is invalid".into());
        let status = err.to_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("invalid_request: "));
        assert!(!status.message().contains("../etc"));
        assert_eq!(status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()), Some("invalid_request"));
    }

    #[test]
    fn denial_codes_map_by_meaning() {
        assert_eq!(ReasonCode::DebugEnabled.grpc_code(), tonic::Code::PermissionDenied);
        assert_eq!(ReasonCode::ChallengeExpired.grpc_code(), tonic::Code::FailedPrecondition);
        assert_eq!(ReasonCode::SecretNotFound.grpc_code(), tonic::Code::NotFound);
        assert_eq!(ReasonCode::StoreUnavailable.grpc_code(), tonic::Code::Unavailable);
        assert_eq!(ReasonCode::EvidenceTooLarge.grpc_code(), tonic::Code::InvalidArgument);
    }
}
