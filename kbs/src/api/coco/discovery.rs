//! Discovery for relying parties: the JWKS and the OpenID configuration
//! that points to it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use crate::reason::ReasonCode;

use super::CocoService;
use super::problem::{json_response, problem};
use super::token;

/// `GET /.well-known/jwks.json`: the public halves of the token keys.
pub(super) async fn jwks(State(svc): State<Arc<CocoService>>) -> Response {
    let mut response = json_response(StatusCode::OK, svc.token_keys.jwks());
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

/// `GET /.well-known/openid-configuration`: where the JWKS is, for relying
/// parties that discover it (trustee's `trusted_jwk_sets`, Vault's
/// `oidc_discovery_url`). `jwks_uri` is under the issuer when that is an
/// `https://` URL, else under the host the request named.
pub(super) async fn openid_configuration(State(svc): State<Arc<CocoService>>, req: Request) -> Response {
    let base = match svc.issuer.strip_prefix("https://") {
        Some(_) => svc.issuer.trim_end_matches('/').to_owned(),
        None => {
            let host = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
                .filter(|h| h.len() <= 256 && h.parse::<axum::http::uri::Authority>().is_ok());
            let Some(host) = host else {
                return problem(StatusCode::BAD_REQUEST, ReasonCode::InvalidRequest.as_str(), "no valid Host header");
            };
            format!("https://{host}")
        }
    };
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": svc.issuer,
            "jwks_uri": format!("{base}{}", token::JWKS_PATH),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }),
    )
}
