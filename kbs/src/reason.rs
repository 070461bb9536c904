//! Stable reason codes: why the broker refused, in words a client can
//! match on.
//!
//! A leaf of the crate: it imports no other module of it and no transport.
//! The gRPC status map lives with the gRPC services ([`crate::api::status`]),
//! the HTTP map with the CoCo front end; both are exhaustive matches on
//! [`ReasonCode`].

use std::fmt;

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
    /// NVIDIA GPU or NVSwitch evidence failed a check (signature, chain,
    /// FWID, nonce, device).
    GpuEvidenceInvalid,
    /// A GPU certificate is revoked, or its OCSP status is not good.
    GpuRevoked,
    /// The devices presented are not the expected set (count, duplicates).
    GpuCountMismatch,
    /// Too many calls from this address, or in total: try again after the
    /// time the answer gives.
    RateLimited,
    /// A GPU's measurements do not match its reference values (RIMs), or no
    /// RIM is known for its driver or VBIOS.
    GpuMeasurementMismatch,
}

impl ReasonCode {
    /// Every reason code, in declaration order.
    pub const ALL: [ReasonCode; 38] = [
        Self::InvalidRequest,
        Self::EvidenceMalformed,
        Self::EvidenceTooLarge,
        Self::UnsupportedVersion,
        Self::UnsupportedTee,
        Self::UnsupportedHpkeSuite,
        Self::CertificateMalformed,
        Self::UntrustedRoot,
        Self::CertificateChainInvalid,
        Self::CertificateExpired,
        Self::SignatureInvalid,
        Self::TcbMismatch,
        Self::ChipIdMismatch,
        Self::ReportDataMismatch,
        Self::ChallengeExpired,
        Self::ChallengeInvalid,
        Self::ChallengeMismatch,
        Self::DebugEnabled,
        Self::VmplNotAllowed,
        Self::MeasurementNotAllowed,
        Self::PolicyDenied,
        Self::NoPolicy,
        Self::SecretNotFound,
        Self::VersionConflict,
        Self::StoreUnavailable,
        Self::CollateralUnavailable,
        Self::CollateralExpired,
        Self::CertificateRevoked,
        Self::TcbStatusNotAllowed,
        Self::TdAttributesNotAllowed,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::Internal,
        Self::GpuEvidenceInvalid,
        Self::GpuRevoked,
        Self::GpuCountMismatch,
        Self::RateLimited,
        Self::GpuMeasurementMismatch,
    ];

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
            Self::RateLimited => "rate_limited",
            Self::GpuMeasurementMismatch => "gpu_measurement_mismatch",
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
            Self::RateLimited => "too many requests; try again later",
            Self::GpuMeasurementMismatch => {
                "the GPU measurements do not match the reference values, or the broker has none for its firmware"
            }
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once() {
        // No catch-all: a new code fails to compile here until it is
        // listed in ALL (and so in the maps' tests).
        let position = |code: ReasonCode| match code {
            ReasonCode::InvalidRequest => 0,
            ReasonCode::EvidenceMalformed => 1,
            ReasonCode::EvidenceTooLarge => 2,
            ReasonCode::UnsupportedVersion => 3,
            ReasonCode::UnsupportedTee => 4,
            ReasonCode::UnsupportedHpkeSuite => 5,
            ReasonCode::CertificateMalformed => 6,
            ReasonCode::UntrustedRoot => 7,
            ReasonCode::CertificateChainInvalid => 8,
            ReasonCode::CertificateExpired => 9,
            ReasonCode::SignatureInvalid => 10,
            ReasonCode::TcbMismatch => 11,
            ReasonCode::ChipIdMismatch => 12,
            ReasonCode::ReportDataMismatch => 13,
            ReasonCode::ChallengeExpired => 14,
            ReasonCode::ChallengeInvalid => 15,
            ReasonCode::ChallengeMismatch => 16,
            ReasonCode::DebugEnabled => 17,
            ReasonCode::VmplNotAllowed => 18,
            ReasonCode::MeasurementNotAllowed => 19,
            ReasonCode::PolicyDenied => 20,
            ReasonCode::NoPolicy => 21,
            ReasonCode::SecretNotFound => 22,
            ReasonCode::VersionConflict => 23,
            ReasonCode::StoreUnavailable => 24,
            ReasonCode::CollateralUnavailable => 25,
            ReasonCode::CollateralExpired => 26,
            ReasonCode::CertificateRevoked => 27,
            ReasonCode::TcbStatusNotAllowed => 28,
            ReasonCode::TdAttributesNotAllowed => 29,
            ReasonCode::Unauthenticated => 30,
            ReasonCode::PermissionDenied => 31,
            ReasonCode::Internal => 32,
            ReasonCode::GpuEvidenceInvalid => 33,
            ReasonCode::GpuRevoked => 34,
            ReasonCode::GpuCountMismatch => 35,
            ReasonCode::RateLimited => 36,
            ReasonCode::GpuMeasurementMismatch => 37,
        };
        for (i, code) in ReasonCode::ALL.iter().enumerate() {
            assert_eq!(position(*code), i, "{code}");
        }
        let names: std::collections::BTreeSet<&str> = ReasonCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ReasonCode::ALL.len(), "reason names must be distinct");
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert_eq!(ReasonCode::TcbStatusNotAllowed.to_string(), "tcb_status_not_allowed");
    }
}
