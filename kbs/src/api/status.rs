//! The one map from errors to gRPC statuses, by meaning.
//!
//! Clients get the code, a fixed message and the reason code (also in the
//! `kbs-reason` response metadata); never the cause. The map is an
//! exhaustive match on [`ReasonCode`], so a new code cannot go unmapped.
//! (Inherent methods on [`ReasonCode`] and [`Error`], kept here so that
//! neither `reason` nor `error` depends on the transport.)

use tonic::Code;

use crate::error::Error;
use crate::reason::ReasonCode;

impl ReasonCode {
    /// The gRPC status code, by meaning.
    pub const fn grpc_code(self) -> Code {
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
            Self::GpuEvidenceInvalid | Self::GpuRevoked | Self::GpuCountMismatch | Self::GpuMeasurementMismatch => {
                Code::PermissionDenied
            }
            Self::RateLimited => Code::ResourceExhausted,
        }
    }
}

impl Error {
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
        if let Some(after) = self.retry_after()
            && let Ok(value) = after.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
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
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("invalid_request: "));
        assert!(!status.message().contains("../etc"));
        assert_eq!(status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()), Some("invalid_request"));
    }

    #[test]
    fn denial_codes_map_by_meaning() {
        assert_eq!(ReasonCode::DebugEnabled.grpc_code(), Code::PermissionDenied);
        assert_eq!(ReasonCode::ChallengeExpired.grpc_code(), Code::FailedPrecondition);
        assert_eq!(ReasonCode::SecretNotFound.grpc_code(), Code::NotFound);
        assert_eq!(ReasonCode::StoreUnavailable.grpc_code(), Code::Unavailable);
        assert_eq!(ReasonCode::EvidenceTooLarge.grpc_code(), Code::InvalidArgument);
        for code in ReasonCode::ALL {
            assert!(!matches!(code.grpc_code(), Code::Ok | Code::Unknown), "{code}");
        }
    }
}
