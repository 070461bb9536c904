//! Answers over HTTP: RFC 7807 problem documents with the HTTP status of
//! each reason code (an exhaustive map, no catch-all), JSON bodies, the
//! session cookie, and size-capped request bodies.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::Error;
use crate::reason::ReasonCode;

use super::SESSION_COOKIE;

pub(super) fn problem(status: StatusCode, detail: &str, title: &str) -> Response {
    let body = json!({
        "type": format!("urn:kbs:reason:{detail}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

/// The HTTP status for a reason code, by the meaning the gRPC map gives it
/// ([`crate::api::status`]); an exhaustive match, so a new code cannot go
/// unmapped.
pub(super) fn http_status(reason: ReasonCode) -> StatusCode {
    match reason {
        ReasonCode::InvalidRequest
        | ReasonCode::EvidenceMalformed
        | ReasonCode::EvidenceTooLarge
        | ReasonCode::UnsupportedVersion
        | ReasonCode::UnsupportedTee
        | ReasonCode::UnsupportedHpkeSuite
        | ReasonCode::CertificateMalformed => StatusCode::BAD_REQUEST,
        ReasonCode::UntrustedRoot
        | ReasonCode::CertificateChainInvalid
        | ReasonCode::CertificateExpired
        | ReasonCode::SignatureInvalid
        | ReasonCode::TcbMismatch
        | ReasonCode::ChipIdMismatch
        | ReasonCode::ReportDataMismatch
        | ReasonCode::CertificateRevoked
        | ReasonCode::TcbStatusNotAllowed
        | ReasonCode::TdAttributesNotAllowed
        | ReasonCode::DebugEnabled
        | ReasonCode::VmplNotAllowed
        | ReasonCode::MeasurementNotAllowed
        | ReasonCode::PolicyDenied
        | ReasonCode::NoPolicy
        | ReasonCode::PermissionDenied => StatusCode::FORBIDDEN,
        // A bad, foreign or expired session: the client must authenticate again.
        ReasonCode::ChallengeExpired
        | ReasonCode::ChallengeInvalid
        | ReasonCode::ChallengeMismatch
        | ReasonCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ReasonCode::SecretNotFound => StatusCode::NOT_FOUND,
        ReasonCode::StoreUnavailable | ReasonCode::CollateralUnavailable | ReasonCode::CollateralExpired => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ReasonCode::VersionConflict => StatusCode::CONFLICT,
        ReasonCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ReasonCode::GpuEvidenceInvalid
        | ReasonCode::GpuRevoked
        | ReasonCode::GpuCountMismatch
        | ReasonCode::GpuMeasurementMismatch => StatusCode::FORBIDDEN,
        ReasonCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
    }
}

pub(super) fn error_response(e: &Error) -> Response {
    let reason = e.reason();
    let mut response = problem(http_status(reason), reason.as_str(), reason.public_message());
    if let Some(after) = e.retry_after()
        && let Ok(value) = HeaderValue::from_str(&after.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// An `/auth` refusal. The protocol answers every refusal to open a session
/// (a wrong version, a TEE not offered, a malformed request) with 401; the
/// reason code stays in the problem document. Back-pressure (429) and the
/// broker's own faults (5xx) keep their status, so a client can tell them
/// from a refusal.
pub(super) fn auth_refusal(e: &Error) -> Response {
    let mut response = error_response(e);
    let status = response.status();
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    response
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    json_text_response(status, body.to_string())
}

/// [`json_response`] for a body already written as JSON text.
pub(super) fn json_text_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn set_cookie(response: &mut Response, value: &str, max_age: Duration) {
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/kbs/v0; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        max_age.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub(super) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"').to_owned())
}

/// Reads the body up to `limit` bytes; a larger body is a 413.
pub(super) async fn body_bytes(req: Request, limit: usize) -> Result<axum::body::Bytes, Response> {
    let too_large = || {
        problem(StatusCode::PAYLOAD_TOO_LARGE, ReasonCode::EvidenceTooLarge.as_str(), "the request body is too large")
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), limit).await.map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_by_meaning() {
        assert_eq!(http_status(ReasonCode::InvalidRequest), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(ReasonCode::SignatureInvalid), StatusCode::FORBIDDEN);
        assert_eq!(http_status(ReasonCode::MeasurementNotAllowed), StatusCode::FORBIDDEN);
        assert_eq!(http_status(ReasonCode::ChallengeExpired), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(ReasonCode::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(ReasonCode::SecretNotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(ReasonCode::StoreUnavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(ReasonCode::Internal), StatusCode::INTERNAL_SERVER_ERROR);
        // The HTTP map agrees with the gRPC one, meaning for meaning.
        for code in ReasonCode::ALL {
            let by_meaning = match code.grpc_code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::FailedPrecondition | tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Aborted => StatusCode::CONFLICT,
                tonic::Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                other => panic!("{code} maps to gRPC {other:?}, which has no HTTP meaning here"),
            };
            assert_eq!(http_status(code), by_meaning, "{code}");
        }
    }

    #[test]
    fn cookies_are_found() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; kbs-session-id=xyz; c=d"));
        assert_eq!(session_cookie(&h).as_deref(), Some("xyz"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }
}
