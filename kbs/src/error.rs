//! The broker's error type: every error its request paths produce, each
//! with its stable [`ReasonCode`].
//!
//! Clients get a fixed, short message and a reason code (the gRPC map is in
//! [`crate::api::status`]). The full cause goes to the log and the audit
//! record only. Errors are classified by type, never by their text.

use crate::challenge::ChallengeError;
use crate::evidence::EvidenceError;
use crate::names::ReservedName;
use crate::reason::ReasonCode;
use crate::store::StoreError;

/// Every error the broker's request paths produce.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Too many calls from the caller's address, or in total.
    #[error("rate limited: try again in {retry_after:?}")]
    RateLimited {
        /// When a call would be admitted again.
        retry_after: std::time::Duration,
    },
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

impl From<ReservedName> for Error {
    fn from(e: ReservedName) -> Self {
        Self::InvalidRequest(e.to_string())
    }
}

impl Error {
    /// Whole seconds after which a refused call may be tried again (at
    /// least 1), for `retry-after`; `None` for other errors.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } => Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            _ => None,
        }
    }

    /// The stable reason code.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::RateLimited { .. } => ReasonCode::RateLimited,
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
}
