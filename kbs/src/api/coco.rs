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
//!    returned as a JWE (flattened JSON) encrypted to the token's key. The
//!    broker that issued a token remembers it from its attestation; another
//!    verifies its signature at its first GET there and then remembers it
//!    until it expires (see [`verified`]); the policy, the read, the seal
//!    and the audit record run on every GET.
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

mod attest;
mod audit;
mod auth;
mod discovery;
pub mod evidence;
mod init_data;
pub mod jcs;
pub mod jwe;
mod minting;
mod problem;
mod resource;
mod server;
mod session;
pub mod token;
mod verified;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::release::Broker;

use self::token::TokenKeys;

pub use self::attest::SAMPLE_MEASUREMENT;
pub use self::init_data::init_data_algorithm;
pub(crate) use self::server::tls_config;
pub use self::server::{CocoError, CocoServer, HANDSHAKE_TIMEOUT, build, serve};

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

/// The front end's state.
pub struct CocoService {
    broker: Arc<Broker>,
    token_keys: TokenKeys,
    /// Tokens that verified under `token_keys`, for the resource GETs.
    verified: verified::VerifiedTokens,
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

impl CocoService {
    /// A front end over `broker`. `allow_sample` is the broker's insecure
    /// dev mode.
    pub fn new(broker: Arc<Broker>, token_keys: TokenKeys, token_ttl: Duration, allow_sample: bool) -> Self {
        Self {
            broker,
            token_keys,
            verified: verified::VerifiedTokens::new(),
            token_ttl,
            allow_sample,
            issuer: "kbs".into(),
            audiences: Vec::new(),
        }
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
            .route("/kbs/v0/auth", post(auth::auth))
            .route("/kbs/v0/attest", post(attest::attest))
            .route("/kbs/v0/resource/{*path}", get(resource::resource))
            .route(token::JWKS_PATH, get(discovery::jwks))
            .route(token::OPENID_CONFIGURATION_PATH, get(discovery::openid_configuration))
            .fallback(|| async { problem::problem(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
            .with_state(self)
    }
}
