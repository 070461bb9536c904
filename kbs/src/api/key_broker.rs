//! The guest-facing `kbs.v1.KeyBroker` service.

use std::sync::Arc;

use kbs_proto::SuiteId;
use kbs_proto::v1::key_broker_server::KeyBroker;
use kbs_proto::v1::{
    Challenge, GetChallengeRequest, ReleaseSecretsRequest, ReleaseSecretsResponse, SealedSecret,
    release_secrets_request,
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::api::coco::CocoService;
use crate::api::coco::token::hpke_public_jwk;
use crate::error::Error;
use crate::metrics::Tee;
use crate::release::{Broker, EvidenceInput, GpuInput, ReleaseRequest, SnpCerts};
use crate::seal::SUPPORTED_SUITES;

/// Largest gRPC message the guest service decodes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The KeyBroker service over a [`Broker`].
#[derive(Debug, Clone)]
pub struct KeyBrokerService {
    broker: Arc<Broker>,
    /// Issues attestation results (`want_attestation_token`): the CoCo
    /// front end, whose keys its listener publishes.
    tokens: Option<Arc<CocoService>>,
}

impl KeyBrokerService {
    /// Wraps the core.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker, tokens: None }
    }

    /// Returns attestation results signed by `coco`'s token keys to the
    /// releases that ask for one.
    pub fn with_tokens(mut self, coco: Option<Arc<CocoService>>) -> Self {
        self.tokens = coco;
        self
    }
}

fn tee_code(tee: i32) -> u8 {
    u8::try_from(tee).unwrap_or(u8::MAX)
}

#[tonic::async_trait]
impl KeyBroker for KeyBrokerService {
    async fn get_challenge(&self, request: Request<GetChallengeRequest>) -> Result<Response<Challenge>, Status> {
        // One trace span per challenge, a child of the guest's span if the
        // call carries a W3C `traceparent`.
        let span = crate::telemetry::challenge_span(request.metadata().as_ref());
        span.in_scope(|| self.challenge(request))
    }

    async fn release_secrets(
        &self,
        request: Request<ReleaseSecretsRequest>,
    ) -> Result<Response<ReleaseSecretsResponse>, Status> {
        // One trace span per release, a child of the guest's span if the
        // call carries a W3C `traceparent`.
        let span = crate::telemetry::release_span(request.metadata().as_ref());
        self.release(request).instrument(span).await
    }
}

impl KeyBrokerService {
    fn challenge(&self, request: Request<GetChallengeRequest>) -> Result<Response<Challenge>, Status> {
        let caller = super::peer(&request);
        let tee = match kbs_proto::v1::Tee::try_from(request.get_ref().tee) {
            Ok(kbs_proto::v1::Tee::Snp) => Tee::Snp,
            Ok(kbs_proto::v1::Tee::Tdx) => Tee::Tdx,
            _ => Tee::Unknown,
        };
        let secrets = request.get_ref().secret_names.len();
        let refuse = |e: Error| {
            crate::telemetry::record_outcome(Some(tee.as_str()), None, secrets, Some(e.reason().as_str()));
            self.broker.audit().record_refusal(&super::refusal_event("challenge", caller.clone(), &e));
            e.to_status()
        };
        self.broker.admit(request.remote_addr().map(|a| a.ip())).map_err(refuse)?;
        let req = request.into_inner();
        let issued = self.broker.challenge(tee_code(req.tee), &req.secret_names).map_err(|e| {
            tracing::info!(reason = e.reason().as_str(), cause = %e, "challenge refused");
            refuse(e)
        })?;
        crate::telemetry::record_outcome(Some(tee.as_str()), None, secrets, None);
        Ok(Response::new(Challenge {
            nonce: issued.nonce.to_vec(),
            challenge: issued.token,
            expires_at: issued.expires_at,
            hpke_suites: SUPPORTED_SUITES.iter().map(|s| s.to_wire()).collect(),
        }))
    }

    async fn release(
        &self,
        request: Request<ReleaseSecretsRequest>,
    ) -> Result<Response<ReleaseSecretsResponse>, Status> {
        let started = std::time::Instant::now();
        let caller = super::peer(&request);
        // A request refused before the release flow starts is a refused
        // release all the same (the flow counts and audits the others).
        let refused = |tee: Tee, e: Error| {
            self.broker.metrics().release(tee, Some(e.reason()), started.elapsed());
            crate::telemetry::record_outcome(Some(tee.as_str()), None, 0, Some(e.reason().as_str()));
            self.broker.audit().record_refusal(&super::refusal_event("release", caller.clone(), &e));
            e.to_status()
        };
        self.broker.admit(request.remote_addr().map(|a| a.ip())).map_err(|e| refused(Tee::Unknown, e))?;
        let req = request.into_inner();
        let (evidence, tee) = match req.evidence {
            Some(release_secrets_request::Evidence::Snp(snp)) => {
                (EvidenceInput::Snp { report: snp.report, certs: SnpCerts::Table(snp.cert_table) }, Tee::Snp)
            }
            Some(release_secrets_request::Evidence::Tdx(tdx)) => (EvidenceInput::Tdx { quote: tdx.quote }, Tee::Tdx),
            None => return Err(refused(Tee::Unknown, Error::InvalidRequest("no evidence".into()))),
        };
        let suite = req
            .hpke_suite
            .as_ref()
            .and_then(SuiteId::from_wire)
            .ok_or_else(|| refused(tee, Error::UnsupportedHpkeSuite))?;
        // A token is asked for: the key it binds, and who signs it, known
        // before anything is released.
        let token_for = match (req.want_attestation_token, &self.tokens) {
            (false, _) => None,
            (true, None) => {
                let e = Error::InvalidRequest("attestation tokens need the [coco] front end and its token keys".into());
                return Err(refused(tee, e));
            }
            (true, Some(tokens)) => {
                let jwk = hpke_public_jwk(suite, &req.hpke_public_key)
                    .map_err(|e| refused(tee, Error::InvalidRequest(e.to_string())))?;
                Some((Arc::clone(tokens), jwk))
            }
        };
        let released = self
            .broker
            .release(ReleaseRequest {
                challenge: req.challenge,
                evidence,
                suite,
                public_key: req.hpke_public_key,
                names: req.secret_names,
                gpus: req
                    .gpus
                    .into_iter()
                    .map(|g| GpuInput { report: g.report, cert_chain: g.cert_chain, ocsp: g.ocsp })
                    .collect(),
                caller,
            })
            .await
            .map_err(|e| e.to_status())?;
        let attestation_token = match token_for {
            None => String::new(),
            Some((tokens, jwk)) => {
                let name = match tee {
                    Tee::Snp => "snp",
                    Tee::Tdx => "tdx",
                    Tee::Sample => "sample",
                    Tee::Unknown => "unknown",
                };
                tokens.release_token(&released, name, &jwk).map_err(|e| {
                    tracing::error!(attestation_id = released.attestation_id, cause = %e, "attestation token not issued");
                    e.to_status()
                })?
            }
        };
        Ok(Response::new(ReleaseSecretsResponse {
            attestation_token,
            attestation_id: released.attestation_id,
            secrets: released
                .secrets
                .into_iter()
                .map(|s| SealedSecret { name: s.name, version: s.version, enc: s.enc, ciphertext: s.ciphertext })
                .collect(),
        }))
    }
}
