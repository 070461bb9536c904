//! `POST /kbs/v0/attest`: checks the session, the request, the evidence
//! bound to the session's nonce and the guest's key, the GPUs and
//! init-data, and answers with an attestation token. The insecure
//! `sample` TEE is checked here too.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::error::Error;
use crate::evidence::{Claims, TeeKind};

use super::audit::{Audit, too_large_event};
use super::init_data::{InitData, check_init_data};
use super::jwe::{self, TeeKey};
use super::problem::{body_bytes, error_response, json_response, session_cookie, set_cookie};
use super::server::{Peer, peer_of};
use super::session::{CocoTee, HashAlg, Session};
use super::{CocoService, MAX_ADDITIONAL_EVIDENCE, MAX_ATTEST_BODY, evidence, jcs};

/// Measurement reported for the insecure `sample` TEE.
pub const SAMPLE_MEASUREMENT: [u8; 48] = [0; 48];

/// The report_data a CoCo guest binds: `HASH(JCS({"additional-evidence",
/// "nonce", "tee-pubkey"}))`, zero-padded to 64 bytes.
pub(super) fn expected_report_data(
    hash: HashAlg,
    nonce: &str,
    tee_pubkey: &Value,
    additional_evidence: &str,
) -> Result<[u8; 64], Error> {
    let runtime = json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    let canonical = jcs::to_vec(&runtime).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    let digest = hash.digest(&canonical);
    let mut out = [0u8; 64];
    out.get_mut(..digest.len())
        .ok_or_else(|| Error::Internal("digest longer than report_data".into()))?
        .copy_from_slice(&digest);
    Ok(out)
}

#[derive(Deserialize)]
pub(super) struct AttestRequest<'a> {
    #[serde(rename = "runtime-data")]
    runtime_data: RuntimeData,
    #[serde(rename = "tee-evidence", borrow)]
    tee_evidence: CompositeEvidence<'a>,
    #[serde(rename = "init-data", default)]
    init_data: Option<InitData>,
}

#[derive(Deserialize)]
pub(super) struct RuntimeData {
    nonce: String,
    #[serde(rename = "tee-pubkey")]
    tee_pubkey: Value,
}

#[derive(Deserialize)]
pub(super) struct CompositeEvidence<'a> {
    /// The TEE's evidence, as JSON text: decoded by the session's TEE
    /// straight into its own shape (an SNP report carries its bytes and
    /// certificates as arrays of numbers, tens of KiB of them; a JSON tree
    /// of them first cost more than the report's signature check).
    #[serde(borrow)]
    primary_evidence: &'a RawValue,
    #[serde(default)]
    additional_evidence: String,
}

pub(super) async fn attest(State(svc): State<Arc<CocoService>>, req: Request) -> Response {
    let caller = peer_of(&req);
    if let Err(e) = svc.broker.admit(req.extensions().get::<Peer>().map(|p| p.0.ip())) {
        svc.broker.audit().record_refusal(&crate::api::refusal_event("coco.attest", caller, &e));
        return error_response(&e);
    }
    let cookie = session_cookie(req.headers());
    let body = match body_bytes(req, MAX_ATTEST_BODY).await {
        Ok(b) => b,
        Err(r) => {
            svc.broker.audit().record_refusal(&too_large_event("coco.attest", caller));
            return r;
        }
    };
    let attestation_id = match svc.broker.new_attestation_id() {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    let mut audit = Audit::new("coco.attest", Some(attestation_id.clone()), caller);
    let result = svc.attest(cookie.as_deref(), &body, &attestation_id, &mut audit).await;
    match audit.finish(&svc.broker, result).await {
        Ok(Issued { token, claims, key }) => {
            // Its record written, the token goes out, and its GETs to this
            // broker need not verify it again.
            svc.verified.remember_issued(&svc.token_keys, &token, claims, key);
            let mut response = json_response(StatusCode::OK, &json!({ "token": token }));
            set_cookie(&mut response, &token, svc.token_ttl);
            response
        }
        Err(e) => error_response(&e),
    }
}

/// An attestation's answer: the signed token, the claims it carries and
/// the guest key they name, as checked.
struct Issued {
    token: String,
    claims: Value,
    key: TeeKey,
}

impl CocoService {
    async fn attest(
        &self,
        cookie: Option<&str>,
        body: &[u8],
        attestation_id: &str,
        audit: &mut Audit,
    ) -> Result<Issued, Error> {
        // 1. The session: sealed by a broker holding the challenge key, unexpired.
        let cookie = cookie.ok_or(Error::Unauthenticated("no kbs-session-id cookie; call /kbs/v0/auth first"))?;
        let session = Session::open(&self.broker, cookie)?;
        let (tee, hash) = (session.tee(), session.hash());
        audit.event.tee = Some(tee.name());
        if tee == CocoTee::Sample && !self.allow_sample {
            return Err(crate::evidence::EvidenceError::UnsupportedTee("sample").into());
        }

        // 2. The request: shape, nonce, key.
        let request: AttestRequest =
            serde_json::from_slice(body).map_err(|e| Error::InvalidRequest(format!("attestation: {e}")))?;
        let nonce = STANDARD.encode(session.nonce());
        if request.runtime_data.nonce != nonce {
            return Err(crate::challenge::ChallengeError::Mismatch("runtime-data nonce is not the session's").into());
        }
        if serde_json::to_vec(&request.runtime_data.tee_pubkey).map_or(usize::MAX, |v| v.len()) > jwe::MAX_JWK_LEN {
            return Err(Error::InvalidRequest("tee-pubkey too large".into()));
        }
        let key =
            TeeKey::from_jwk(&request.runtime_data.tee_pubkey).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let additional = &request.tee_evidence.additional_evidence;
        if additional.len() > MAX_ADDITIONAL_EVIDENCE {
            return Err(crate::evidence::EvidenceError::TooLarge {
                len: additional.len(),
                max: MAX_ADDITIONAL_EVIDENCE,
            }
            .into());
        }
        // The GPUs it carries, decoded and capped before any cryptography.
        let gpus = evidence::nvidia_devices(additional)?;
        if let Some(gpus) = &gpus {
            crate::release::check_gpu_caps(gpus)?;
        }

        // 3. The evidence, bound to nonce, key and additional evidence.
        let expected = expected_report_data(hash, &nonce, &request.runtime_data.tee_pubkey, additional)?;
        let primary = request.tee_evidence.primary_evidence.get();
        let mut claims = match tee {
            CocoTee::Snp => self.broker.verify_bound(&evidence::snp(primary)?, &expected).await?,
            CocoTee::Tdx => self.broker.verify_bound(&evidence::tdx(primary)?, &expected).await?,
            CocoTee::Sample => sample_claims(primary, &expected)?,
        };
        audit.claims(&claims);

        // 3b. The GPUs, against trustee's GPU nonce for this nonce and key.
        if let Some(gpus) = &gpus {
            let nonce_data = json!({"nonce": nonce, "tee-pubkey": request.runtime_data.tee_pubkey});
            let digest = hash.digest(&jcs::to_vec(&nonce_data).map_err(|e| Error::InvalidRequest(e.to_string()))?);
            let gpu_nonce = digest
                .get(..32)
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| Error::Internal("GPU nonce digest too short".into()))?;
            let devices: Vec<kbs_proto::DeviceEvidence<'_>> = gpus
                .iter()
                .map(|g| kbs_proto::DeviceEvidence { report: &g.report, cert_chain: &g.cert_chain })
                .collect();
            let gpu_nonce = crate::evidence::gpu::GpuNonce(gpu_nonce);
            let set_digest = kbs_proto::device_set_digest(&devices);
            let set = self.broker.verify_gpu_set(gpus, &gpu_nonce, &set_digest, self.broker.now_utc()).await?;
            claims.gpu = Some(set);
            audit.claims(&claims);
        }

        // 4. Init-data, when sent, must be what the TEE was launched with.
        if let Some(init_data) = &request.init_data {
            check_init_data(init_data, &mut claims, tee)?;
            audit.claims(&claims);
        }

        // 5. The token: the attestation result, for this broker's resource
        // GETs and for other relying parties, with the digest of the
        // claims as verified (the audit record's, taken above), before
        // the GPU measurements are left out below.
        let digest = audit.event.claims_digest.clone().unwrap_or_default();
        // The token carries each GPU's claims without its measurements, so
        // that eight GPUs still fit a cookie; policies on this path see
        // every other GPU claim.
        if let Some(gpu) = &mut claims.gpu {
            for device in &mut gpu.devices {
                device.measurements.clear();
            }
        }
        let tee_pubkey = jwe::key_members(&request.runtime_data.tee_pubkey);
        let mut token = self.attestation_result(attestation_id, &claims, &digest, tee.name(), &tee_pubkey)?;
        // The JWE key-wrapping algorithm the resource GET will use.
        if let Some(object) = token.as_object_mut() {
            object.insert("kbs.key-alg".into(), key.alg().into());
        }
        let (token, claims) = self.token_keys.sign_claims(token).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Issued { token, claims, key })
    }
}

/// The insecure `sample` TEE: the evidence only repeats report_data.
fn sample_claims(primary: &str, expected: &[u8; 64]) -> Result<Claims, Error> {
    let claimed = evidence::sample_report_data(primary)?;
    let mut padded = [0u8; 64];
    padded
        .get_mut(..claimed.len())
        .ok_or(crate::evidence::EvidenceError::ReportDataMismatch)?
        .copy_from_slice(&claimed);
    if &padded != expected {
        return Err(crate::evidence::EvidenceError::ReportDataMismatch.into());
    }
    Ok(Claims {
        tee: TeeKind::Sample,
        measurement: hex::encode(SAMPLE_MEASUREMENT),
        debug: false,
        report_data: hex::encode(padded),
        init_data_digest: hex::encode([0u8; 32]),
        snp: None,
        tdx: None,
        gpu: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha384, Sha512};

    /// Known answer: the canonical runtime data written by hand, hashed
    /// independently, must equal what the broker expects.
    #[test]
    fn report_data_known_answer() {
        let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "eA", "y": "eQ"});
        let nonce = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let canonical = concat!(
            r#"{"additional-evidence":"","nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","#,
            r#""tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#
        );
        let got = expected_report_data(HashAlg::Sha384, nonce, &jwk, "").unwrap();
        let want = Sha384::digest(canonical.as_bytes());
        assert_eq!(&got[..48], want.as_slice());
        assert_eq!(&got[48..], &[0u8; 16]);
        let got = expected_report_data(HashAlg::Sha512, nonce, &jwk, "").unwrap();
        assert_eq!(got.as_slice(), Sha512::digest(canonical.as_bytes()).as_slice());
        // Additional evidence is bound too.
        assert_ne!(expected_report_data(HashAlg::Sha384, nonce, &jwk, "{}").unwrap()[..48], want[..]);
    }
}
