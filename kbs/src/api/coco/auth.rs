//! `POST /kbs/v0/auth`: opens a session.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;

use super::audit::too_large_event;
use super::problem::{auth_refusal, body_bytes, json_response, set_cookie};
use super::server::{Peer, peer_of};
use super::session::{CocoTee, HashAlg, Session};
use super::{CocoService, MAX_AUTH_BODY, PROTOCOL_VERSION};

#[derive(Deserialize)]
pub(super) struct AuthRequest {
    version: String,
    tee: String,
    #[serde(rename = "extra-params", default)]
    extra_params: Value,
}

pub(super) async fn auth(State(svc): State<Arc<CocoService>>, req: Request) -> Response {
    let caller = peer_of(&req);
    let refuse = |e: &Error| {
        tracing::info!(reason = e.reason().as_str(), cause = %e, "coco auth refused");
        svc.broker.audit().record_refusal(&crate::api::refusal_event("coco.auth", caller.clone(), e));
        auth_refusal(e)
    };
    if let Err(e) = svc.broker.admit(req.extensions().get::<Peer>().map(|p| p.0.ip())) {
        return refuse(&e);
    }
    let body = match body_bytes(req, MAX_AUTH_BODY).await {
        Ok(b) => b,
        Err(r) => {
            svc.broker.audit().record_refusal(&too_large_event("coco.auth", caller.clone()));
            return r;
        }
    };
    match svc.auth(&body) {
        Ok(r) => {
            tracing::debug!("coco auth: challenge issued");
            r
        }
        Err(e) => refuse(&e),
    }
}

impl CocoService {
    fn auth(&self, body: &[u8]) -> Result<Response, Error> {
        let request: AuthRequest =
            serde_json::from_slice(body).map_err(|e| Error::InvalidRequest(format!("auth request: {e}")))?;
        if request.version != PROTOCOL_VERSION {
            return Err(Error::InvalidRequest(format!(
                "protocol version {:?} is not {PROTOCOL_VERSION}",
                request.version.chars().take(32).collect::<String>()
            )));
        }
        let tee = CocoTee::from_name(&request.tee)
            .filter(|t| *t != CocoTee::Sample || self.allow_sample)
            .ok_or(crate::evidence::EvidenceError::UnsupportedTee("not offered on the CoCo front end"))?;
        let hash = HashAlg::negotiate(&request.extra_params)?;
        let session = Session::seal(&self.broker, tee, hash)?;
        self.broker.metrics().challenge_issued(crate::metrics::Tee::from_name(Some(tee.name())));
        let mut response = json_response(
            StatusCode::OK,
            &json!({
                "nonce": STANDARD.encode(session.nonce),
                "extra-params": {"selected-hash-algorithm": hash.name()},
            }),
        );
        set_cookie(&mut response, &session.cookie, self.broker.challenge_ttl());
        Ok(response)
    }
}
