//! The Confidential Containers KBS protocol front end (protocol `0.4.0`),
//! so unmodified Kata guest components (attestation-agent's `cc_kbc`,
//! confidential-data-hub's `kbs:///` resources) can use this broker.
//!
//! It runs on its own HTTPS listener (same TLS identity as the gRPC
//! listeners) and shares the broker core: verifiers, store, policy, audit.
//!
//! # Flow
//! 1. `POST /kbs/v0/auth` `{version, tee, extra-params}`: the protocol
//!    version must be `0.4.0`. The answer is `{nonce, extra-params}` with a
//!    fresh 32-byte nonce (padded standard base64) and the hash algorithm
//!    chosen from the client's `supported-hash-algorithms` (SHA-384 unless
//!    the client offers only SHA-512). The `kbs-session-id` cookie carries
//!    `{nonce, tee, hash, expiry}` sealed under the challenge key: there is
//!    no session store, any replica can continue.
//! 2. `POST /kbs/v0/attest` `{runtime-data {nonce, tee-pubkey}, tee-evidence
//!    {primary_evidence, additional_evidence}, init-data?}`: in order, the
//!    cookie (authentic, unexpired), the nonce (equal to the sealed one),
//!    the key (EC P-256 or RSA, see [`jwe`]), then the evidence, which must
//!    carry `report_data = HASH(JCS({"additional-evidence", "nonce",
//!    "tee-pubkey"}))` zero-padded to 64 bytes, verified by the same code as
//!    the gRPC path; then the NVIDIA GPUs the additional evidence carries
//!    (guest-components' shape, see [`evidence`]), each of which must have
//!    signed trustee's GPU nonce, the first 32 bytes of `HASH(JCS({"nonce",
//!    "tee-pubkey"}))` (the CPU evidence commits to them through the
//!    additional evidence); then init-data, whose digest must equal the
//!    launch's HOST_DATA / MRCONFIGID. The answer is `{token}`, an EAR
//!    attestation result (ES256 JWT, short-lived, signed by the broker's
//!    token key, see [`token`]) carrying the appraisal per TEE and device,
//!    the verified claims and the guest key; the cookie is replaced by it.
//! 3. `GET /kbs/v0/resource/<repo>/<type>/<tag>` with `Authorization: Bearer
//!    <token>` or the cookie: the token's claims are checked against the
//!    release policy of the secret `repo/type/tag` and the value is
//!    returned as a JWE (flattened JSON) encrypted to the token's key.
//!
//! 4. `GET /.well-known/jwks.json` and `GET /.well-known/openid-configuration`:
//!    the public halves of the token keys, for relying parties that check
//!    the tokens themselves (OpenBao/Vault JWT auth, a trustee KBS).
//!
//! Errors are RFC 7807 problem documents `{type, title, status, detail}`,
//! where `detail` is the broker's stable reason code: 400 malformed, 401
//! missing/bad session or token, 403 verification or policy refusal, 404
//! missing resource (only ever after a valid token), 413 body too large,
//! 503 store or collateral unavailable. Every attest and resource decision
//! is one audit record, written before the answer leaves.
//!
//! The CoCo `sample` TEE (unsigned evidence) is accepted only when the
//! broker runs in its explicit insecure dev mode; its claims report an
//! all-zero measurement that a secret must allow explicitly.

pub mod evidence;
pub mod jcs;
pub mod jwe;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::audit::{Event, SecretRef};
use crate::config::Config;
use crate::error::Error;
use crate::evidence::{Claims, TeeKind};
use crate::reason::ReasonCode;
use crate::release::{Broker, claims_digest};

use self::jwe::TeeKey;
use self::token::{EarInput, TokenKey, TokenKeys};

/// The protocol version spoken, exactly.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// The session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// Largest `/auth` body.
pub const MAX_AUTH_BODY: usize = 16 * 1024;
/// Largest `/attest` body (SNP evidence with its certificates as JSON
/// number arrays, or a TDX quote with its event log).
pub const MAX_ATTEST_BODY: usize = 1024 * 1024;
/// Largest `additional_evidence` string.
pub const MAX_ADDITIONAL_EVIDENCE: usize = 256 * 1024;
/// Largest init-data body.
pub const MAX_INIT_DATA: usize = 64 * 1024;
/// Requests one HTTP/2 connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Largest HTTP/2 header list accepted: the largest token, twice (header
/// and cookie), and room for the rest.
const MAX_HEADER_LIST_BYTES: u32 = 2 * token::MAX_TOKEN_LEN as u32 + 16 * 1024;
/// Time allowed for the TLS handshake and for request headers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Measurement reported for the insecure `sample` TEE.
pub const SAMPLE_MEASUREMENT: [u8; 48] = [0; 48];

/// Session state codes: outside the `kbs.v1.Tee` values so a CoCo session
/// can never be redeemed as a gRPC challenge, or the other way round.
const CODE_SNP: u8 = 0x81;
const CODE_TDX: u8 = 0x82;
const CODE_SAMPLE: u8 = 0x8f;

/// A CoCo TEE name this front end accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CocoTee {
    Snp,
    Tdx,
    Sample,
}

impl CocoTee {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "snp" => Some(Self::Snp),
            "tdx" => Some(Self::Tdx),
            "sample" => Some(Self::Sample),
            _ => None,
        }
    }

    const fn code(self) -> u8 {
        match self {
            Self::Snp => CODE_SNP,
            Self::Tdx => CODE_TDX,
            Self::Sample => CODE_SAMPLE,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [Self::Snp, Self::Tdx, Self::Sample].into_iter().find(|t| t.code() == code)
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Snp => "snp",
            Self::Tdx => "tdx",
            Self::Sample => "sample",
        }
    }
}

/// The runtime-data hash the client and broker agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HashAlg {
    Sha384,
    Sha512,
}

impl HashAlg {
    const fn name(self) -> &'static str {
        match self {
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn label(self) -> String {
        format!("kbs/v0 {}", self.name())
    }

    fn from_label(label: &str) -> Option<Self> {
        [Self::Sha384, Self::Sha512].into_iter().find(|h| h.label() == label)
    }

    fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha384 => Sha384::digest(bytes).to_vec(),
            Self::Sha512 => Sha512::digest(bytes).to_vec(),
        }
    }

    /// Picks from the client's `supported-hash-algorithms`: SHA-384 (the
    /// guest's default) unless only SHA-512 is offered. Absent list: SHA-384.
    fn negotiate(extra_params: &Value) -> Result<Self, Error> {
        let Some(list) = extra_params.get("supported-hash-algorithms") else {
            return Ok(Self::Sha384);
        };
        let names: Vec<String> = list
            .as_array()
            .ok_or_else(|| Error::InvalidRequest("supported-hash-algorithms is not a list".into()))?
            .iter()
            .take(16)
            .filter_map(|v| v.as_str().map(|s| s.to_ascii_lowercase().replace('-', "")))
            .collect();
        if names.iter().any(|n| n == "sha384") {
            Ok(Self::Sha384)
        } else if names.iter().any(|n| n == "sha512") {
            Ok(Self::Sha512)
        } else {
            Err(Error::InvalidRequest("no supported hash algorithm in common (sha384, sha512)".into()))
        }
    }
}

/// The report_data a CoCo guest binds: `HASH(JCS({"additional-evidence",
/// "nonce", "tee-pubkey"}))`, zero-padded to 64 bytes.
fn expected_report_data(
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

/// The peer address of a connection, for audit.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

/// The front end's state.
pub struct CocoService {
    broker: Arc<Broker>,
    token_keys: TokenKeys,
    token_ttl: Duration,
    allow_sample: bool,
    issuer: String,
    audiences: Vec<String>,
}

impl std::fmt::Debug for CocoService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CocoService")
            .field("token_keys", &self.token_keys)
            .field("token_ttl", &self.token_ttl)
            .field("allow_sample", &self.allow_sample)
            .finish_non_exhaustive()
    }
}

/// A ready-to-serve front end: the service and its TLS configuration.
#[derive(Debug, Clone)]
pub struct CocoServer {
    service: Arc<CocoService>,
    tls: Arc<rustls::ServerConfig>,
    limits: crate::connections::Limits,
    idle_timeout: Duration,
}

/// Why the front end could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    /// The token key could not be read or generated.
    #[error(transparent)]
    Token(#[from] token::TokenError),
    /// The TLS identity is unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

impl CocoService {
    /// A front end over `broker`. `allow_sample` is the broker's insecure
    /// dev mode.
    pub fn new(broker: Arc<Broker>, token_keys: TokenKeys, token_ttl: Duration, allow_sample: bool) -> Self {
        Self { broker, token_keys, token_ttl, allow_sample, issuer: "kbs".into(), audiences: Vec::new() }
    }

    /// Tokens name `issuer` as `iss` and `audiences` as `aud`.
    pub fn with_issuer(mut self, issuer: String, audiences: Vec<String>) -> Self {
        self.issuer = issuer;
        self.audiences = audiences;
        self
    }

    /// The token keys (their public halves are the JWKS relying parties use).
    pub fn token_keys(&self) -> &TokenKeys {
        &self.token_keys
    }

    /// The HTTP routes.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/kbs/v0/auth", post(auth))
            .route("/kbs/v0/attest", post(attest))
            .route("/kbs/v0/resource/{*path}", get(resource))
            .route(token::JWKS_PATH, get(jwks))
            .route(token::OPENID_CONFIGURATION_PATH, get(openid_configuration))
            .fallback(|| async { problem(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
            .with_state(self)
    }
}

/// Builds the front end from `config`, when `[coco]` is set. `cert_pem`
/// and `key_pem` are the server's TLS identity.
pub fn build(
    config: &Config,
    broker: &Arc<Broker>,
    cert_pem: &[u8],
    key_pem: &[u8],
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<Option<CocoServer>, CocoError> {
    let Some(coco) = &config.coco else {
        return Ok(None);
    };
    let token_keys = match &coco.token_key_file {
        Some(path) => TokenKeys::from_files(path, &coco.token_previous_key_files)?,
        None => {
            tracing::warn!(
                "coco.token_key_file is not set: attestation tokens are signed by a per-process key and are \
                 valid only at this replica"
            );
            TokenKeys::new(TokenKey::generate()?, Vec::new())?
        }
    };
    let token_keys = match config.insecure_simulated_tee {
        true => {
            tracing::warn!("INSECURE: the CoCo `sample` TEE is accepted: unsigned evidence from any machine passes");
            token_keys.insecure_dev()
        }
        false => token_keys,
    };
    let service = Arc::new(
        CocoService::new(Arc::clone(broker), token_keys, coco.token_ttl, config.insecure_simulated_tee)
            .with_issuer(coco.token_issuer.clone(), coco.token_audiences.clone()),
    );
    Ok(Some(CocoServer {
        service,
        tls: tls_config(cert_pem, key_pem, ticketer)?,
        limits: config.connection_limits,
        idle_timeout: config.idle_timeout,
    }))
}

/// The rustls server configuration of the TLS identity `cert_pem`/`key_pem`
/// (aws-lc-rs, safe defaults, ALPN h2 and http/1.1), shared with the
/// metrics and guest listeners. TLS 1.3 session tickets are sealed by
/// `ticketer` when given (see [`crate::tickets`]); otherwise sessions
/// resume only at this process (rustls's in-memory session cache).
pub(crate) fn tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<Arc<rustls::ServerConfig>, CocoError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CocoError::Tls(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CocoError::Tls(format!("key: {e}")))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CocoError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| CocoError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Some(ticketer) = ticketer {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}

impl CocoServer {
    /// The service, for tests and in-process callers.
    pub fn service(&self) -> &Arc<CocoService> {
        &self.service
    }
}

/// Serves HTTPS on `listener` until `shutdown` completes.
pub async fn serve(
    server: CocoServer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let acceptor = tokio_rustls::TlsAcceptor::from(server.tls);
    let idle = server.idle_timeout;
    let metrics = Arc::clone(server.service.broker.metrics());
    let gauge = metrics.open_connections(crate::metrics::Listener::Coco);
    // A request, body included, must arrive and be answered within the
    // idle bound: a body trickled a byte at a time does not hold a slot.
    let router = Arc::clone(&server.service).router().layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let metrics = Arc::clone(&metrics);
            async move {
                let endpoint = crate::metrics::CocoEndpoint::of_path(request.uri().path());
                // One trace span per request, a child of the caller's span
                // if it sent a W3C `traceparent`.
                let span = crate::telemetry::coco_span(request.uri().path(), request.headers());
                let response = match tokio::time::timeout(idle, next.run(request).instrument(span.clone())).await {
                    Ok(response) => response,
                    Err(_) => problem(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request took too long"),
                };
                span.record("http.response.status_code", i64::from(response.status().as_u16()));
                metrics.coco_request(endpoint, response.status().as_u16());
                response
            }
        },
    ));
    let admission = crate::connections::Admission::with_gauge("coco", server.limits, gauge);
    crate::connections::accept_loop(listener, admission, shutdown, move |tcp, peer, ticket| {
        let acceptor = acceptor.clone();
        let app = router.clone().layer(axum::Extension(Peer(peer)));
        tokio::spawn(async move {
            let _ticket = ticket;
            // A peer that sends nothing for the idle bound (after the
            // handshake, between requests, or half-way through one) loses
            // its connection.
            let tcp = crate::connections::IdleTimeout::new(tcp, idle);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                // A token (`Authorization` or the session cookie) may be up
                // to `token::MAX_TOKEN_LEN`, beside the other headers.
                .max_header_list_size(MAX_HEADER_LIST_BYTES);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "coco connection ended with an error");
            }
        });
    })
    .await
}

// ---------------------------------------------------------------------------
// Errors as RFC 7807 problem documents.

fn problem(status: StatusCode, detail: &str, title: &str) -> Response {
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
fn http_status(reason: ReasonCode) -> StatusCode {
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

fn error_response(e: &Error) -> Response {
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
fn auth_refusal(e: &Error) -> Response {
    let mut response = error_response(e);
    let status = response.status();
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn set_cookie(response: &mut Response, value: &str, max_age: Duration) {
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/kbs/v0; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        max_age.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"').to_owned())
}

fn peer_of(req: &Request) -> String {
    req.extensions().get::<Peer>().map(|p| p.0.to_string()).unwrap_or_else(|| "unknown".into())
}

/// Reads the body up to `limit` bytes; a larger body is a 413.
async fn body_bytes(req: Request, limit: usize) -> Result<axum::body::Bytes, Response> {
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

// ---------------------------------------------------------------------------
// Handlers.

#[derive(Deserialize)]
struct AuthRequest {
    version: String,
    tee: String,
    #[serde(rename = "extra-params", default)]
    extra_params: Value,
}

async fn auth(State(svc): State<Arc<CocoService>>, req: Request) -> Response {
    let caller = peer_of(&req);
    let refuse = |e: &Error| {
        tracing::info!(reason = e.reason().as_str(), cause = %e, "coco auth refused");
        svc.broker.audit().record_refusal(&super::refusal_event("coco.auth", caller.clone(), e));
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

/// The audit record of a body refused for its size.
fn too_large_event(action: &'static str, caller: String) -> Event {
    Event {
        reason: Some(ReasonCode::EvidenceTooLarge.as_str()),
        reasons: vec!["the request body is too large".into()],
        ..Event::new(action, caller)
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
        let issued = self.broker.seal_session(tee.code(), &[hash.label()])?;
        self.broker.metrics().challenge_issued(crate::metrics::Tee::from_name(Some(tee.name())));
        let mut response = json_response(
            StatusCode::OK,
            &json!({
                "nonce": STANDARD.encode(issued.nonce),
                "extra-params": {"selected-hash-algorithm": hash.name()},
            }),
        );
        set_cookie(&mut response, &URL_SAFE_NO_PAD.encode(&issued.token), self.broker.challenge_ttl());
        Ok(response)
    }
}

#[derive(Deserialize)]
struct AttestRequest {
    #[serde(rename = "runtime-data")]
    runtime_data: RuntimeData,
    #[serde(rename = "tee-evidence")]
    tee_evidence: CompositeEvidence,
    #[serde(rename = "init-data", default)]
    init_data: Option<InitData>,
}

#[derive(Deserialize)]
struct RuntimeData {
    nonce: String,
    #[serde(rename = "tee-pubkey")]
    tee_pubkey: Value,
}

#[derive(Deserialize)]
struct CompositeEvidence {
    primary_evidence: Value,
    #[serde(default)]
    additional_evidence: String,
}

#[derive(Deserialize)]
struct InitData {
    #[allow(dead_code)]
    format: String,
    body: String,
}

/// What the audit record of one request accumulates.
struct Audit {
    event: Event,
}

impl Audit {
    fn new(action: &'static str, attestation_id: Option<String>, caller: String) -> Self {
        Self { event: Event { attestation_id, ..Event::new(action, caller) } }
    }

    fn claims(&mut self, claims: &Claims) {
        self.event.measurement = Some(claims.measurement.clone());
        self.event.claims_digest = Some(claims_digest(claims));
    }

    /// Records the decision; if the record cannot be written, nothing is
    /// released.
    async fn finish<T>(mut self, broker: &Broker, result: Result<T, Error>) -> Result<T, Error> {
        let refused = result.as_ref().err().map(|e| e.reason().as_str());
        let (tee, id, count) = (self.event.tee, self.event.attestation_id.as_deref(), self.event.secrets.len());
        crate::telemetry::record_outcome(tee, id, count, refused);
        match &result {
            Ok(_) => self.event.decision = "allow",
            Err(e) => {
                self.event.reason = Some(e.reason().as_str());
                if let Error::Denied { reasons, .. } = e {
                    self.event.reasons.clone_from(reasons);
                }
                if self.event.reasons.is_empty() {
                    self.event.reasons.push(e.to_string());
                }
                tracing::warn!(
                    action = self.event.action,
                    attestation_id = self.event.attestation_id.as_deref().unwrap_or(""),
                    reason = e.reason().as_str(),
                    cause = %e,
                    "coco request refused"
                );
            }
        }
        broker.record_decision_async(&self.event).await?;
        if result.is_ok() {
            tracing::debug!(
                action = self.event.action,
                attestation_id = self.event.attestation_id.as_deref().unwrap_or(""),
                caller = self.event.caller,
                "coco request allowed"
            );
        }
        result
    }
}

async fn attest(State(svc): State<Arc<CocoService>>, req: Request) -> Response {
    let caller = peer_of(&req);
    if let Err(e) = svc.broker.admit(req.extensions().get::<Peer>().map(|p| p.0.ip())) {
        svc.broker.audit().record_refusal(&super::refusal_event("coco.attest", caller, &e));
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
        Ok(token) => {
            let mut response = json_response(StatusCode::OK, &json!({ "token": token }));
            set_cookie(&mut response, &token, svc.token_ttl);
            response
        }
        Err(e) => error_response(&e),
    }
}

impl CocoService {
    async fn attest(
        &self,
        cookie: Option<&str>,
        body: &[u8],
        attestation_id: &str,
        audit: &mut Audit,
    ) -> Result<String, Error> {
        // 1. The session: sealed by a broker holding the challenge key, unexpired.
        let cookie = cookie.ok_or(Error::Unauthenticated("no kbs-session-id cookie; call /kbs/v0/auth first"))?;
        let sealed = URL_SAFE_NO_PAD.decode(cookie).map_err(|_| crate::challenge::ChallengeError::Malformed)?;
        let session = self.broker.open_session(&sealed)?;
        let tee =
            CocoTee::from_code(session.tee).ok_or(crate::challenge::ChallengeError::Mismatch("not a CoCo session"))?;
        let hash = match session.secret_names.as_slice() {
            [label] => HashAlg::from_label(label),
            _ => None,
        }
        .ok_or(crate::challenge::ChallengeError::Mismatch("not a CoCo session"))?;
        audit.event.tee = Some(tee.name());
        if tee == CocoTee::Sample && !self.allow_sample {
            return Err(crate::evidence::EvidenceError::UnsupportedTee("sample").into());
        }

        // 2. The request: shape, nonce, key.
        let request: AttestRequest =
            serde_json::from_slice(body).map_err(|e| Error::InvalidRequest(format!("attestation: {e}")))?;
        let nonce = STANDARD.encode(session.nonce);
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
        let primary = &request.tee_evidence.primary_evidence;
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
        }

        // 5. The token: the attestation result, for this broker's resource
        // GETs and for other relying parties.
        // The digest of the claims as verified (the audit record's), taken
        // before the GPU measurements are left out below.
        audit.claims(&claims);
        let digest = audit.event.claims_digest.clone().unwrap_or_default();
        // The token carries each GPU's claims without its measurements, so
        // that eight GPUs still fit a cookie; policies on this path see
        // every other GPU claim.
        if let Some(gpu) = &mut claims.gpu {
            for device in &mut gpu.devices {
                device.measurements.clear();
            }
        }
        let mut token =
            self.attestation_result(attestation_id, &claims, &digest, tee.name(), &request.runtime_data.tee_pubkey)?;
        // The JWE key-wrapping algorithm the resource GET will use.
        if let Some(object) = token.as_object_mut() {
            object.insert("kbs.key-alg".into(), key.alg().into());
        }
        self.token_keys.sign(&token).map_err(|e| Error::Internal(e.to_string()))
    }

    /// The claims of an attestation result for verified `claims` (see
    /// [`token::ear_claims`]), issued now with this front end's issuer,
    /// audiences and lifetime.
    fn attestation_result(
        &self,
        attestation_id: &str,
        claims: &Claims,
        claims_digest: &str,
        tee: &str,
        tee_pubkey: &Value,
    ) -> Result<Value, Error> {
        token::ear_claims(&EarInput {
            issuer: &self.issuer,
            audiences: &self.audiences,
            attestation_id,
            now: self.broker.now_utc().unix_timestamp(),
            ttl: i64::try_from(self.token_ttl.as_secs()).unwrap_or(300),
            claims,
            claims_digest,
            tee,
            tee_pubkey,
        })
        .map_err(|e| Error::InvalidRequest(e.to_string()))
    }

    /// A signed attestation result for a `kbs.v1` release: its claims, and
    /// the guest's HPKE key as a JWK. The release was audited already.
    pub fn release_token(
        &self,
        released: &crate::release::Released,
        tee: &str,
        hpke_key: &Value,
    ) -> Result<String, Error> {
        let mut claims = released.claims.clone();
        if let Some(gpu) = &mut claims.gpu {
            for device in &mut gpu.devices {
                device.measurements.clear();
            }
        }
        let token =
            self.attestation_result(&released.attestation_id, &claims, &released.claims_digest, tee, hpke_key)?;
        self.token_keys.sign(&token).map_err(|e| Error::Internal(e.to_string()))
    }
}

/// The insecure `sample` TEE: the evidence only repeats report_data.
fn sample_claims(primary: &Value, expected: &[u8; 64]) -> Result<Claims, Error> {
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

/// Checks init-data against the launch binding: its digest, with the
/// algorithm it names, truncated or zero-padded to the field's size, must
/// equal HOST_DATA (SNP) or MRCONFIGID (TDX). The sample TEE has no such
/// field; its claim takes the digest.
fn check_init_data(init_data: &InitData, claims: &mut Claims, tee: CocoTee) -> Result<(), Error> {
    if init_data.body.len() > MAX_INIT_DATA {
        return Err(crate::evidence::EvidenceError::TooLarge { len: init_data.body.len(), max: MAX_INIT_DATA }.into());
    }
    let algorithm = init_data_algorithm(&init_data.body)?;
    let body = init_data.body.as_bytes();
    let digest = match algorithm.as_str() {
        "sha256" => Sha256::digest(body).to_vec(),
        "sha384" => Sha384::digest(body).to_vec(),
        "sha512" => Sha512::digest(body).to_vec(),
        _ => return Err(Error::InvalidRequest("init-data algorithm must be sha256, sha384 or sha512".into())),
    };
    let size = match tee {
        CocoTee::Sample => 32,
        _ => claims.init_data_digest.len() / 2,
    };
    let mut bound = vec![0u8; size];
    for (slot, byte) in bound.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    if tee == CocoTee::Sample {
        claims.init_data_digest = hex::encode(&bound);
        return Ok(());
    }
    if hex::encode(&bound) != claims.init_data_digest {
        return Err(Error::Denied {
            code: ReasonCode::PolicyDenied,
            reasons: vec!["init_data_mismatch: init-data digest is not the launch's HOST_DATA/MRCONFIGID".into()],
        });
    }
    Ok(())
}

/// The `algorithm` an init-data document names (TOML or JSON), lowercase
/// and without dashes. Public for the fuzz target of the CoCo parsers.
pub fn init_data_algorithm(body: &str) -> Result<String, Error> {
    let bad = || Error::InvalidRequest("init-data has no algorithm".into());
    let value: Option<String> = match toml::from_str::<toml::Table>(body) {
        Ok(table) => table.get("algorithm").and_then(|v| v.as_str()).map(str::to_owned),
        Err(_) => serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("algorithm").and_then(Value::as_str).map(str::to_owned)),
    };
    Ok(value.ok_or_else(bad)?.to_ascii_lowercase().replace('-', ""))
}

/// `GET /.well-known/jwks.json`: the public halves of the token keys.
async fn jwks(State(svc): State<Arc<CocoService>>) -> Response {
    let mut response = json_response(StatusCode::OK, svc.token_keys.jwks());
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

/// `GET /.well-known/openid-configuration`: where the JWKS is, for relying
/// parties that discover it (trustee's `trusted_jwk_sets`, Vault's
/// `oidc_discovery_url`). `jwks_uri` is under the issuer when that is an
/// `https://` URL, else under the host the request named.
async fn openid_configuration(State(svc): State<Arc<CocoService>>, req: Request) -> Response {
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

async fn resource(State(svc): State<Arc<CocoService>>, req: Request) -> Response {
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
        svc.broker.audit().record_refusal(&super::refusal_event("coco.resource", caller.clone(), &e));
        error_response(&e)
    };
    let Some(token) = token else {
        return unauthenticated("no attestation token");
    };
    // Nothing about the resource is looked at before the token verifies.
    let claims = match svc.token_keys.verify(&token, now) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(cause = %e, "coco resource request with a bad token");
            return unauthenticated("bad or expired attestation token");
        }
    };
    let attestation_id = claims.get("jti").and_then(Value::as_str).map(str::to_owned);
    let started = std::time::Instant::now();
    let mut audit = Audit::new("coco.resource", attestation_id, caller);
    let result = svc.resource(&claims, &path, &mut audit).await;
    let tee = crate::metrics::Tee::from_name(audit.event.tee);
    let result = audit.finish(&svc.broker, result).await;
    svc.broker.metrics().release(tee, result.as_ref().err().map(Error::reason), started.elapsed());
    match result {
        Ok(jwe) => json_response(StatusCode::OK, &jwe),
        Err(e) => error_response(&e),
    }
}

impl CocoService {
    async fn resource(&self, token: &Value, path: &str, audit: &mut Audit) -> Result<Value, Error> {
        audit.event.tee = token.get("tee").and_then(Value::as_str).and_then(CocoTee::from_name).map(CocoTee::name);
        let name = path
            .strip_prefix("/kbs/v0/resource/")
            .filter(|n| n.split('/').count() == 3)
            .ok_or_else(|| Error::InvalidRequest("resource path must be <repository>/<type>/<tag>".into()))?;
        audit.event.secrets = vec![SecretRef { name: name.to_owned(), version: None }];
        let claims: Claims = token
            .pointer("/submods/cpu0/ear.veraison.annotated-evidence")
            .cloned()
            .and_then(|c| serde_json::from_value(c).ok())
            .ok_or(Error::Unauthenticated("attestation token carries no claims"))?;
        audit.claims(&claims);
        if claims.tee == TeeKind::Sample && !self.allow_sample {
            return Err(crate::evidence::EvidenceError::UnsupportedTee("sample").into());
        }
        let key = token
            .get("tee-pubkey")
            .ok_or(Error::Unauthenticated("attestation token carries no key"))
            .and_then(|k| TeeKey::from_jwk(k).map_err(|e| Error::InvalidRequest(e.to_string())))?;
        let record = self.broker.read_for(&claims, name).await?;
        audit.event.secrets = vec![SecretRef { name: name.to_owned(), version: Some(record.meta.version) }];
        let sealing = tracing::info_span!(crate::telemetry::phase::SEAL);
        sealing.in_scope(|| key.encrypt(record.value.expose())).map_err(|e| Error::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn hash_negotiation() {
        assert_eq!(HashAlg::negotiate(&json!({})).unwrap(), HashAlg::Sha384);
        assert_eq!(HashAlg::negotiate(&json!("")).unwrap(), HashAlg::Sha384);
        let all = json!({"supported-hash-algorithms": ["sha256", "sha384", "sha512", "sm3"]});
        assert_eq!(HashAlg::negotiate(&all).unwrap(), HashAlg::Sha384);
        let only512 = json!({"supported-hash-algorithms": ["SHA512"]});
        assert_eq!(HashAlg::negotiate(&only512).unwrap(), HashAlg::Sha512);
        assert!(HashAlg::negotiate(&json!({"supported-hash-algorithms": ["sm3"]})).is_err());
        assert!(HashAlg::negotiate(&json!({"supported-hash-algorithms": "sha384"})).is_err());
        assert_eq!(HashAlg::from_label(&HashAlg::Sha512.label()), Some(HashAlg::Sha512));
    }

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

    #[test]
    fn init_data_algorithm_from_toml_and_json() {
        assert_eq!(init_data_algorithm("algorithm = \"sha384\"\nversion = \"0.1.0\"\n").unwrap(), "sha384");
        assert_eq!(init_data_algorithm(r#"{"algorithm": "SHA-256"}"#).unwrap(), "sha256");
        assert!(init_data_algorithm("version = 1").is_err());
    }
}
