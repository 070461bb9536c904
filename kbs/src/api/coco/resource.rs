//! `GET /kbs/v0/resource/<repo>/<type>/<tag>`: a secret, as a JWE to the
//! key of a valid attestation token, if the release policy allows it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use crate::audit::SecretRef;
use crate::error::Error;
use crate::evidence::{Claims, TeeKind};

use super::CocoService;
use super::audit::Audit;
use super::jwe::TeeKey;
use super::problem::{error_response, json_text_response, session_cookie};
use super::server::peer_of;
use super::session::CocoTee;
use super::verified::VerifiedToken;

pub(super) async fn resource(State(svc): State<Arc<CocoService>>, req: Request) -> Response {
    let caller = peer_of(&req);
    let path = req.uri().path().to_owned();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(str::trim).map(str::to_owned));
    let token = bearer.or_else(|| session_cookie(req.headers()));
    let now = svc.broker.now_utc().unix_timestamp();
    let unauthenticated = |why: &'static str| {
        let e = Error::Unauthenticated(why);
        svc.broker.audit().record_refusal(&crate::api::refusal_event("coco.resource", caller.clone(), &e));
        error_response(&e)
    };
    let Some(token) = token else {
        return unauthenticated("no attestation token");
    };
    // Nothing about the resource is looked at before the token verifies
    // (or verified before, and is still valid now).
    let verified = match svc.verified.verify(&svc.token_keys, &token, now) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(cause = %e, "coco resource request with a bad token");
            return unauthenticated("bad or expired attestation token");
        }
    };
    let started = std::time::Instant::now();
    let mut audit = Audit::new("coco.resource", verified.jti().map(str::to_owned), caller);
    let result = svc.resource(&verified, &path, &mut audit).await;
    let tee = crate::metrics::Tee::from_name(audit.event.tee);
    let result = audit.finish(&svc.broker, result).await;
    svc.broker.metrics().release(tee, result.as_ref().err().map(Error::reason), started.elapsed());
    match result {
        Ok(jwe) => json_text_response(StatusCode::OK, jwe),
        Err(e) => error_response(&e),
    }
}

impl CocoService {
    async fn resource(&self, verified: &VerifiedToken, path: &str, audit: &mut Audit) -> Result<String, Error> {
        let token = &verified.claims;
        audit.event.tee = token.get("tee").and_then(Value::as_str).and_then(CocoTee::from_name).map(CocoTee::name);
        let name = path
            .strip_prefix("/kbs/v0/resource/")
            .filter(|n| n.split('/').count() == 3)
            .ok_or_else(|| Error::InvalidRequest("resource path must be <repository>/<type>/<tag>".into()))?;
        audit.event.secrets = vec![SecretRef { name: name.to_owned(), version: None }];
        let claims: &Claims =
            verified.evidence.as_ref().ok_or(Error::Unauthenticated("attestation token carries no claims"))?;
        match &verified.prepared {
            Some(prepared) => audit.claims_prepared(claims, prepared),
            None => audit.claims(claims),
        }
        if claims.tee == TeeKind::Sample && !self.allow_sample {
            return Err(crate::evidence::EvidenceError::UnsupportedTee("sample").into());
        }
        let checked;
        let key = match &verified.key {
            Some(key) => key,
            None => {
                checked = token
                    .get("tee-pubkey")
                    .ok_or(Error::Unauthenticated("attestation token carries no key"))
                    .and_then(|k| TeeKey::from_jwk(k).map_err(|e| Error::InvalidRequest(e.to_string())))?;
                &checked
            }
        };
        let record = self.broker.read_for(claims, verified.prepared.as_ref(), name).await?;
        audit.event.secrets = vec![SecretRef { name: name.to_owned(), version: Some(record.meta.version) }];
        let sealing = tracing::info_span!(crate::telemetry::phase::SEAL);
        sealing.in_scope(|| key.encrypt(record.value.expose())).map_err(|e| Error::Internal(e.to_string()))
    }
}
