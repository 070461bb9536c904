//! Broker configuration: a raw serde struct that mirrors the TOML file
//! (unknown keys refused), then a validated [`Config`] built from it.
//! Defaults are the secure choice; paths are resolved against the config
//! file's directory.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::evidence::EvidenceError;
use crate::evidence::amd_crl::Revocation;
use crate::evidence::gpu_ocsp::OcspFetch;

/// Why configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    challenge: RawChallenge,
    store: RawStore,
    #[serde(default)]
    snp: RawSnp,
    #[serde(default)]
    tdx: RawTdx,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    dev: RawDev,
    #[serde(default)]
    gpu: RawGpu,
    #[serde(default)]
    coco: Option<RawCoco>,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    telemetry: RawTelemetry,
}

/// `[telemetry]`, then the `OTEL_*` variables over it (see
/// [`Config::load`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sampling_ratio: Option<f64>,
    ca_file: Option<PathBuf>,
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    #[serde(skip)]
    disabled: bool,
    /// `OTEL_TRACES_EXPORTER`, when set.
    #[serde(skip)]
    exporter: Option<String>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, when set.
    #[serde(skip)]
    protocol: Option<String>,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, when set.
    #[serde(skip)]
    sampler: Option<(String, Option<String>)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
    #[serde(default)]
    tls: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[serde(default)]
    per_peer_per_second: Option<u32>,
    #[serde(default)]
    global_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoco {
    listen: String,
    #[serde(default)]
    token_key_file: Option<PathBuf>,
    #[serde(default)]
    token_ttl_seconds: Option<u64>,
    #[serde(default)]
    token_previous_key_files: Vec<PathBuf>,
    #[serde(default)]
    token_issuer: Option<String>,
    #[serde(default)]
    token_audiences: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    guest_listen: String,
    admin_listen: String,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    #[serde(default)]
    replica_id: Option<String>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_connections_per_peer: Option<usize>,
    #[serde(default)]
    idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    tls_ticket_key_file: Option<PathBuf>,
    #[serde(default)]
    tls_ticket_previous_key_files: Vec<PathBuf>,
    #[serde(default)]
    tls_ticket_lifetime_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChallenge {
    key_file: PathBuf,
    #[serde(default)]
    previous_key_files: Vec<PathBuf>,
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
enum RawStore {
    Local {
        dir: PathBuf,
        kek_file: PathBuf,
        #[serde(default)]
        max_secret_bytes: Option<usize>,
        #[serde(default)]
        cache_ttl_ms: Option<u64>,
    },
    Vault {
        address: String,
        #[serde(default)]
        fallback_addresses: Vec<String>,
        #[serde(default)]
        mount: Option<String>,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        ca_bundle: Option<PathBuf>,
        #[serde(default)]
        insecure_skip_verify: bool,
        #[serde(default)]
        insecure_plain_http: bool,
        #[serde(default)]
        request_timeout_seconds: Option<u64>,
        #[serde(default)]
        max_secret_bytes: Option<usize>,
        #[serde(default)]
        cache_ttl_ms: Option<u64>,
        auth: RawVaultAuth,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "method", rename_all = "lowercase")]
enum RawVaultAuth {
    Token {
        token_file: PathBuf,
    },
    Approle {
        role_id: String,
        secret_id_file: PathBuf,
        #[serde(default)]
        mount: Option<String>,
    },
    Kubernetes {
        role: String,
        #[serde(default)]
        jwt_file: Option<PathBuf>,
        #[serde(default)]
        mount: Option<String>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnp {
    #[serde(default)]
    collateral_dir: Option<PathBuf>,
    #[serde(default)]
    kds_url: Option<String>,
    #[serde(default)]
    kds_cache_dir: Option<PathBuf>,
    #[serde(default)]
    intermediates: Vec<PathBuf>,
    #[serde(default)]
    crl_dir: Option<PathBuf>,
    #[serde(default)]
    revocation: Option<Revocation>,
    #[serde(default)]
    crl_refresh_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTdx {
    #[serde(default)]
    collateral_dir: Option<PathBuf>,
    #[serde(default)]
    pccs_url: Option<String>,
    #[serde(default)]
    root_crl_url: Option<String>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    accepted_tcb_statuses: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    client_ca: Option<PathBuf>,
    #[serde(default)]
    clients: Vec<RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    #[serde(default)]
    common_name: Option<String>,
    #[serde(default)]
    dns_san: Option<String>,
    role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    role: Role,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    sync: Option<bool>,
    #[serde(default)]
    max_file_bytes: Option<u64>,
    #[serde(default)]
    keep_files: Option<usize>,
    #[serde(default)]
    max_file_age_seconds: Option<u64>,
    #[serde(default)]
    max_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    refresh_seconds: Option<u64>,
    #[serde(default)]
    builtin_default: Option<bool>,
    #[serde(default)]
    max_memory_mib: Option<u64>,
    #[serde(default)]
    eval_time_limit_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    #[serde(default)]
    rim_dir: Option<PathBuf>,
    #[serde(default)]
    accept_expired_rim_signers: bool,
    #[serde(default)]
    ocsp_fetch: OcspFetch,
    #[serde(default)]
    ocsp_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDev {
    #[serde(default)]
    insecure_simulated_tee: bool,
    #[serde(default)]
    snp_test_roots: Vec<PathBuf>,
    #[serde(default)]
    tdx_test_roots: Vec<PathBuf>,
    #[serde(default)]
    gpu_test_roots: Vec<PathBuf>,
    #[serde(default)]
    gpu_test_rim_roots: Vec<PathBuf>,
}

/// An admin role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Put, generate, list, metadata.
    Uploader,
    /// List, metadata, audit read.
    Auditor,
}

impl Role {
    /// The role's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Uploader => "uploader",
            Self::Auditor => "auditor",
        }
    }
}

/// An admin bearer token, stored only as its SHA-256.
#[derive(Clone, Debug)]
pub struct TokenEntry {
    /// Who holds it (for audit).
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// Its role.
    pub role: Role,
}

/// An admin client certificate identity (mTLS) and its role. A client
/// certificate matches when it chains to `admin.client_ca` and its subject
/// common name or a DNS subject-alternative name equals the given value.
#[derive(Clone, Debug)]
pub struct ClientEntry {
    /// Who it is (for audit).
    pub name: String,
    /// Expected subject CN.
    pub common_name: Option<String>,
    /// Expected DNS SAN.
    pub dns_san: Option<String>,
    /// Its role.
    pub role: Role,
}

/// The CoCo KBS protocol front end (`/kbs/v0/...`), on its own listener.
#[derive(Clone, Debug)]
pub struct CocoConfig {
    /// HTTPS listener.
    pub listen: SocketAddr,
    /// PKCS#8 P-256 key (PEM or DER) that signs attestation tokens; every
    /// replica must share it. Without it each process makes its own.
    pub token_key_file: Option<PathBuf>,
    /// Attestation token lifetime.
    pub token_ttl: Duration,
    /// Earlier token keys (rotation): they no longer sign, but their
    /// tokens still verify and their public halves stay in the JWKS until
    /// they are removed from this list.
    pub token_previous_key_files: Vec<PathBuf>,
    /// The tokens' `iss` (default `kbs`). When it is an `https://` URL it
    /// is also the base of the OpenID discovery document's `jwks_uri`.
    pub token_issuer: String,
    /// The tokens' `aud` (none by default): what relying parties such as
    /// a Vault JWT role bind with `bound_audiences`.
    pub token_audiences: Vec<String>,
}

/// Most `coco.token_audiences`.
pub const MAX_TOKEN_AUDIENCES: usize = 16;
/// Most `coco.token_previous_key_files`.
pub const MAX_PREVIOUS_TOKEN_KEYS: usize = 8;

/// The Prometheus metrics listener (`[metrics]`): plain HTTP, `GET
/// /metrics`, on its own address.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Listener address (loopback, or a network only the scraper reaches).
    pub listen: SocketAddr,
    /// Serve HTTPS with the server's certificate (`server.tls_cert`)
    /// instead of plain HTTP.
    pub tls: bool,
}

/// Where the secrets live.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// The embedded encrypted store.
    Local {
        /// Directory.
        dir: PathBuf,
        /// Key-encryption key file.
        kek_file: PathBuf,
    },
    /// Vault/OpenBao KV v2, shared by every replica.
    Vault(Box<crate::store::vault::VaultConfig>),
}

/// SEV-SNP collateral settings.
#[derive(Clone, Debug)]
pub struct SnpConfig {
    /// Offline VCEK/VLEK directory.
    pub collateral_dir: Option<PathBuf>,
    /// AMD KDS base URL, when fetching is enabled.
    pub kds_url: Option<String>,
    /// KDS cache directory.
    pub kds_cache_dir: Option<PathBuf>,
    /// Operator-supplied ASK/ASVK files (accepted only if signed by a pinned ARK).
    pub intermediates: Vec<PathBuf>,
    /// Offline AMD CRL directory (`vcek/v1/<Product>/crl`, `vlek/v1/<Product>/crl`).
    pub crl_dir: Option<PathBuf>,
    /// How revocation is treated: `require` by default when a CRL source
    /// (`crl_dir` or `kds_url`) is configured, `best_effort` otherwise.
    pub revocation: Revocation,
    /// How often CRLs are re-read and re-fetched.
    pub crl_refresh: Duration,
}

/// Largest `audit.max_file_age_seconds` (366 days).
pub const MAX_AUDIT_FILE_AGE_SECONDS: u64 = 366 * 86_400;

/// Smallest `audit.max_file_bytes`: a file holds at least a few records.
pub const MIN_AUDIT_FILE_BYTES: u64 = 64 * 1024;

/// Default of `snp.crl_refresh_seconds`.
pub const DEFAULT_CRL_REFRESH: Duration = Duration::from_secs(3600);

impl Default for SnpConfig {
    fn default() -> Self {
        Self {
            collateral_dir: None,
            kds_url: None,
            kds_cache_dir: None,
            intermediates: Vec::new(),
            crl_dir: None,
            revocation: Revocation::BestEffort,
            crl_refresh: DEFAULT_CRL_REFRESH,
        }
    }
}

/// Intel TDX settings. TDX is enabled when a collateral source is set
/// (`collateral_dir` and/or `pccs_url`).
#[derive(Clone, Debug, Default)]
pub struct TdxConfig {
    /// Offline collateral directory (QuoteCollateralV3 JSON or PCS files).
    pub collateral_dir: Option<PathBuf>,
    /// PCCS or Intel PCS base URL, when fetching is enabled.
    pub pccs_url: Option<String>,
    /// Root CA CRL URL (default: the PCCS `rootcacrl` path).
    pub root_crl_url: Option<String>,
    /// Fetcher cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Accepted TCB statuses (default: `UpToDate` only).
    pub policy: crate::evidence::tdx::TdxPolicy,
}

impl TdxConfig {
    /// Whether TDX evidence is accepted at all.
    pub fn enabled(&self) -> bool {
        self.collateral_dir.is_some() || self.pccs_url.is_some()
    }
}

/// NVIDIA GPU reference values (`[gpu]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuConfig {
    /// The RIM directory (`kbsctl gpu rim import` fills it): every RIM file
    /// in it is verified at start-up, and one that does not verify refuses
    /// the start. Without it no GPU matches reference values, so secrets
    /// that need GPUs (the `gpus` label) are refused.
    pub rim_dir: Option<PathBuf>,
    /// Accept RIMs whose signing certificate has expired (NVIDIA still
    /// ships RIMs signed by certificates past their two-year validity for
    /// firmware that is still current). Default false.
    pub accept_expired_rim_signers: bool,
    /// Whether the broker asks NVIDIA's OCSP responder for device
    /// certificates that came without a fresh stapled response: `off`
    /// (default: stapled responses only), `best_effort` (revocation
    /// `not_checked` when none can be had) or `require` (the device is
    /// refused then).
    pub ocsp_fetch: OcspFetch,
    /// The responder to ask instead of the one each certificate names
    /// (`https`, or `http` on loopback); needs `ocsp_fetch`.
    pub ocsp_url: Option<String>,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Guest (KeyBroker) listener.
    pub guest_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// Server key (PEM).
    pub tls_key: PathBuf,
    /// This replica's id, for audit records.
    pub replica_id: String,
    /// Connection caps of each listener (guest, admin, CoCo).
    pub connection_limits: crate::connections::Limits,
    /// Rate limits of the guest-facing calls (challenges, releases, CoCo
    /// `/auth` and `/attest`).
    pub rate_limits: crate::rate::RateLimits,
    /// A CoCo connection whose peer sends nothing for this long is closed,
    /// and a CoCo request (body included) must arrive within it.
    pub idle_timeout: Duration,
    /// TLS 1.3 session tickets every replica can redeem (guest and CoCo
    /// listeners), when `server.tls_ticket_key_file` is set; otherwise each
    /// replica resumes only its own sessions (rustls's in-memory cache).
    pub tls_tickets: Option<TlsTicketConfig>,
    /// Challenge sealing key file (32 bytes raw or 64 hex digits).
    pub challenge_key_file: PathBuf,
    /// Older challenge keys still accepted.
    pub previous_challenge_key_files: Vec<PathBuf>,
    /// Challenge lifetime.
    pub challenge_ttl: Duration,
    /// The secret store.
    pub store: StoreConfig,
    /// Largest secret value accepted.
    pub max_secret_bytes: usize,
    /// How long a secret read is served from memory (`store.cache_ttl_ms`,
    /// default 2 s; zero turns the cache off). Rotations made through other
    /// replicas are seen within it.
    pub store_cache_ttl: Duration,
    /// SNP collateral.
    pub snp: SnpConfig,
    /// TDX collateral and TCB policy.
    pub tdx: TdxConfig,
    /// Admin tokens.
    pub admin_tokens: Vec<TokenEntry>,
    /// CA that admin client certificates must chain to (enables mTLS).
    pub admin_client_ca: Option<PathBuf>,
    /// Admin client-certificate identities.
    pub admin_clients: Vec<ClientEntry>,
    /// Audit destination: a file path, or `None` for stdout.
    pub audit_path: Option<PathBuf>,
    /// The audit MAC key file (32 bytes raw or 64 hex digits); without it
    /// the audit log is hash-chained only.
    pub audit_key_file: Option<PathBuf>,
    /// Whether each audit record is written through to the disk before its
    /// decision is answered (`audit.sync`, default true; files only).
    pub audit_sync: bool,
    /// Rotation of the audit file (`audit.max_file_bytes`,
    /// `audit.max_file_age_seconds`, `audit.keep_files`); none by default.
    pub audit_rotation: crate::audit::Rotation,
    /// How long a decision waits for its audit record before it is refused
    /// (`audit.max_wait_ms`, default 5 s).
    pub audit_max_wait: Duration,
    /// How often policies and reference values are re-read from the store
    /// (`policy.refresh_seconds`, default 30): changes made through another
    /// replica are in force here within it.
    pub policy_refresh: Duration,
    /// Whether the shipped default policy applies to `*` while the store
    /// holds no `*` policy (`policy.builtin_default`, default true; false
    /// refuses every secret no stored policy covers, as `no_policy`).
    pub policy_builtin_default: bool,
    /// Heap ceiling of policy evaluations, in MiB (`policy.max_memory_mib`,
    /// default 1024): an evaluation during which the broker's heap is over
    /// it is refused (`policy_error`).
    pub policy_max_memory_mib: u64,
    /// Wall-clock limit of one policy evaluation (`policy.eval_time_limit_ms`,
    /// default 200): an evaluation that runs longer is refused
    /// (`policy_error`).
    pub policy_eval_time_limit: Duration,
    /// INSECURE: accept evidence from the simulated TEE (test roots).
    pub insecure_simulated_tee: bool,
    /// INSECURE: test ARKs pinned for every SNP generation.
    pub snp_test_roots: Vec<PathBuf>,
    /// INSECURE: test SGX roots pinned for TDX.
    pub tdx_test_roots: Vec<PathBuf>,
    /// INSECURE: test device identity roots pinned for NVIDIA GPUs.
    pub gpu_test_roots: Vec<PathBuf>,
    /// INSECURE: test RIM roots pinned for NVIDIA GPU reference values.
    pub gpu_test_rim_roots: Vec<PathBuf>,
    /// GPU reference values.
    pub gpu: GpuConfig,
    /// The CoCo KBS protocol front end, when enabled.
    pub coco: Option<CocoConfig>,
    /// The metrics listener, when enabled.
    pub metrics: Option<MetricsConfig>,
    /// The OTLP trace exporter, when enabled (`[telemetry] otlp_endpoint`
    /// or `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`).
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
}

/// Shared TLS session tickets (`server.tls_ticket_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsTicketConfig {
    /// The key that seals new tickets (32 bytes raw or 64 hex digits,
    /// readable by its owner only).
    pub key_file: PathBuf,
    /// Older keys whose tickets are still redeemed (rotation).
    pub previous_key_files: Vec<PathBuf>,
    /// Longest age of a redeemed ticket, in seconds.
    pub lifetime_seconds: u32,
}

/// Environment overrides, read through a lookup function so tests never
/// touch the process environment.
pub const ENV_OVERRIDES: &[&str] = &["KBS_GUEST_LISTEN", "KBS_ADMIN_LISTEN", "KBS_REPLICA_ID"];

/// The standard OpenTelemetry variables read over `[telemetry]` (the
/// exporter itself also reads `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`,
/// `_TIMEOUT`, `_COMPRESSION` and `_INSECURE`).
pub const OTEL_ENV: &[&str] = &[
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

/// Applies the [`OTEL_ENV`] variables over `[telemetry]`: each one set
/// wins over the file, a signal-specific one (`..._TRACES_...`) over the
/// generic one.
fn otel_overrides(raw: &mut RawTelemetry, env: &impl Fn(&str) -> Option<String>) {
    let either = |specific: &str, generic: &str| env(specific).or_else(|| env(generic)).filter(|v| !v.is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        raw.disabled = true;
    }
    if let Some(exporter) = env("OTEL_TRACES_EXPORTER").filter(|v| !v.is_empty()) {
        raw.disabled |= exporter.trim() == "none";
        raw.exporter = Some(exporter);
    }
    if let Some(v) = either("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") {
        raw.otlp_endpoint = Some(v);
    }
    if let Some(v) = either("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
        raw.protocol = Some(v);
    }
    if let Some(v) = either("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE") {
        raw.ca_file = Some(PathBuf::from(v));
    }
    if let Some(v) = env("OTEL_SERVICE_NAME").filter(|v| !v.is_empty()) {
        raw.service_name = Some(v);
    }
    if let Some(v) = env("OTEL_TRACES_SAMPLER").filter(|v| !v.is_empty()) {
        raw.sampler = Some((v, env("OTEL_TRACES_SAMPLER_ARG")));
    }
}

/// The validated `[store]`, with its `max_secret_bytes` and `cache_ttl_ms`
/// as written (their bounds are checked by the caller).
fn store_config(
    raw: RawStore,
    resolve: impl Fn(&Path) -> PathBuf,
) -> Result<(StoreConfig, Option<usize>, Option<u64>), ConfigError> {
    match raw {
        RawStore::Local { dir, kek_file, max_secret_bytes, cache_ttl_ms } => Ok((
            StoreConfig::Local { dir: resolve(&dir), kek_file: resolve(&kek_file) },
            max_secret_bytes,
            cache_ttl_ms,
        )),
        RawStore::Vault {
            address,
            fallback_addresses,
            mount,
            prefix,
            namespace,
            ca_bundle,
            insecure_skip_verify,
            insecure_plain_http,
            request_timeout_seconds,
            max_secret_bytes,
            cache_ttl_ms,
            auth,
        } => {
            use crate::store::vault::{VaultAuth, VaultConfig};
            if fallback_addresses.len() >= crate::store::vault::MAX_ADDRESSES {
                return Err(ConfigError::Invalid(format!(
                    "store.fallback_addresses: at most {} addresses in all",
                    crate::store::vault::MAX_ADDRESSES
                )));
            }
            for (key, address) in std::iter::once(("store.address", &address))
                .chain(fallback_addresses.iter().map(|a| ("store.fallback_addresses", a)))
            {
                if !address.starts_with("https://") && !address.starts_with("http://") {
                    return Err(ConfigError::Invalid(format!("{key} must hold http(s) URLs")));
                }
                let plain_remote = reqwest::Url::parse(address)
                    .map(|url| url.scheme() == "http" && !crate::fetch::is_loopback(&url))
                    .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))?;
                if plain_remote && !insecure_plain_http {
                    return Err(ConfigError::Invalid(format!(
                        "{key} is plain http to another machine: tokens and secrets would cross the network \
                         in clear (use https, or set store.insecure_plain_http for a development set-up)"
                    )));
                }
            }
            let auth = match auth {
                RawVaultAuth::Token { token_file } => VaultAuth::token_from_file(&resolve(&token_file))
                    .map_err(|e| ConfigError::Invalid(format!("store.auth.token_file: {e}")))?,
                RawVaultAuth::Approle { role_id, secret_id_file, mount } => {
                    let mut auth = VaultAuth::approle(role_id, resolve(&secret_id_file));
                    if let (VaultAuth::AppRole { mount: m, .. }, Some(mount)) = (&mut auth, mount) {
                        *m = mount;
                    }
                    auth
                }
                RawVaultAuth::Kubernetes { role, jwt_file, mount } => {
                    let mut auth = VaultAuth::kubernetes(role);
                    if let VaultAuth::Kubernetes { mount: m, jwt_file: j, .. } = &mut auth {
                        if let Some(mount) = mount {
                            *m = mount;
                        }
                        if let Some(jwt_file) = jwt_file {
                            *j = resolve(&jwt_file);
                        }
                    }
                    auth
                }
            };
            let mut vault = VaultConfig::new(address, auth);
            vault.fallback_addresses = fallback_addresses;
            if let Some(mount) = mount {
                vault.mount = mount;
            }
            if let Some(prefix) = prefix {
                vault.prefix = prefix;
            }
            vault.namespace = namespace;
            vault.ca_bundle = ca_bundle.map(|p| resolve(&p));
            vault.insecure_skip_verify = insecure_skip_verify;
            vault.insecure_plain_http = insecure_plain_http;
            if let Some(secs) = request_timeout_seconds {
                if !(1..=300).contains(&secs) {
                    return Err(ConfigError::Invalid("store.request_timeout_seconds must be within 1..=300".into()));
                }
                vault.request_timeout = Duration::from_secs(secs);
            }
            Ok((StoreConfig::Vault(Box::new(vault)), max_secret_bytes, cache_ttl_ms))
        }
    }
}

/// `value` checked against `range`; unset stays unset (the caller's
/// default applies).
fn within<T: PartialOrd + std::fmt::Display>(
    value: Option<T>,
    range: RangeInclusive<T>,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match value {
        Some(v) if !range.contains(&v) => {
            Err(ConfigError::Invalid(format!("{key} must be within {}..={}", range.start(), range.end())))
        }
        v => Ok(v),
    }
}

fn socket_addr(s: &str, key: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>().map_err(|e| ConfigError::Invalid(format!("{key} {s:?}: {e}")))
}

/// `server.max_connections` and `max_connections_per_peer`.
fn connection_limits(server: &RawServer) -> Result<crate::connections::Limits, ConfigError> {
    use crate::connections::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_PEER, Limits};
    let limits = Limits {
        total: server.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        per_peer: server.max_connections_per_peer.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_PEER),
    };
    if !(1..=1_000_000).contains(&limits.total) || !(1..=limits.total).contains(&limits.per_peer) {
        return Err(ConfigError::Invalid(
            "server.max_connections must be within 1..=1000000 and server.max_connections_per_peer within 1..=max_connections"
                .into(),
        ));
    }
    Ok(limits)
}

/// `[rate_limit]`.
fn rate_limits(raw: &RawRateLimit) -> Result<crate::rate::RateLimits, ConfigError> {
    use crate::rate::{DEFAULT_GLOBAL_PER_SECOND, DEFAULT_PER_PEER_PER_SECOND, RateLimits};
    let limits = RateLimits {
        per_peer_per_second: raw.per_peer_per_second.unwrap_or(DEFAULT_PER_PEER_PER_SECOND),
        global_per_second: raw.global_per_second.unwrap_or(DEFAULT_GLOBAL_PER_SECOND),
    };
    if limits.per_peer_per_second == 0 || limits.global_per_second < limits.per_peer_per_second {
        return Err(ConfigError::Invalid(
            "rate_limit.per_peer_per_second must be at least 1 and at most rate_limit.global_per_second".into(),
        ));
    }
    Ok(limits)
}

/// The TLS session-ticket keys of `[server]` (`None`: tickets stay within
/// one process).
fn tls_tickets(server: &RawServer, resolve: impl Fn(&Path) -> PathBuf) -> Result<Option<TlsTicketConfig>, ConfigError> {
    let Some(key) = &server.tls_ticket_key_file else {
        if !server.tls_ticket_previous_key_files.is_empty() || server.tls_ticket_lifetime_seconds.is_some() {
            return Err(ConfigError::Invalid(
                "server.tls_ticket_previous_key_files and tls_ticket_lifetime_seconds need server.tls_ticket_key_file"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let lifetime = server.tls_ticket_lifetime_seconds.unwrap_or(crate::tickets::DEFAULT_LIFETIME_SECS.into());
    let lifetime_seconds = u32::try_from(lifetime)
        .ok()
        .filter(|l| (60..=crate::tickets::MAX_LIFETIME_SECS).contains(l))
        .ok_or_else(|| ConfigError::Invalid("server.tls_ticket_lifetime_seconds must be within 60..=86400".into()))?;
    Ok(Some(TlsTicketConfig {
        key_file: resolve(key),
        previous_key_files: server.tls_ticket_previous_key_files.iter().map(|p| resolve(p)).collect(),
        lifetime_seconds,
    }))
}

/// `[snp]`: vendor URLs on the fetchers' own check, and revocation that
/// defaults to `require` once a CRL source is configured.
fn snp_config(raw: RawSnp, resolve: impl Fn(&Path) -> PathBuf) -> Result<SnpConfig, ConfigError> {
    // The fetchers' own check, on the parsed URL (a prefix test would
    // pass `http://127.attacker.example` or `http://localhost.attacker.example`).
    if let Some(url) = &raw.kds_url
        && let Err(e) = crate::fetch::vendor_url_is_https(url, "snp.kds_url").map_err(EvidenceError::from)
    {
        return Err(ConfigError::Invalid(format!("snp.kds_url must be https:// (or http on loopback): {e}")));
    }
    let crl_source = raw.crl_dir.is_some() || raw.kds_url.is_some();
    let revocation = match raw.revocation {
        Some(Revocation::Require) if !crl_source => {
            return Err(ConfigError::Invalid(
                "snp.revocation = \"require\" needs a CRL source: snp.crl_dir or snp.kds_url".into(),
            ));
        }
        Some(r) => r,
        None if crl_source => Revocation::Require,
        None => Revocation::BestEffort,
    };
    let crl_refresh = within(raw.crl_refresh_seconds, 60..=86_400, "snp.crl_refresh_seconds")?
        .map_or(DEFAULT_CRL_REFRESH, Duration::from_secs);
    Ok(SnpConfig {
        collateral_dir: raw.collateral_dir.map(|p| resolve(&p)),
        kds_url: raw.kds_url,
        kds_cache_dir: raw.kds_cache_dir.map(|p| resolve(&p)),
        intermediates: raw.intermediates.iter().map(|p| resolve(p)).collect(),
        crl_dir: raw.crl_dir.map(|p| resolve(&p)),
        revocation,
        crl_refresh,
    })
}

/// `[tdx]`.
fn tdx_config(raw: RawTdx, resolve: impl Fn(&Path) -> PathBuf) -> Result<TdxConfig, ConfigError> {
    for url in raw.pccs_url.iter().chain(raw.root_crl_url.iter()) {
        if let Err(e) = crate::fetch::vendor_url_is_https(url, "tdx").map_err(EvidenceError::from) {
            return Err(ConfigError::Invalid(format!("tdx URLs must be https:// (or http on loopback): {e}")));
        }
    }
    if raw.pccs_url.is_some() && raw.cache_dir.is_none() {
        return Err(ConfigError::Invalid("tdx.pccs_url needs tdx.cache_dir for its on-disk cache".into()));
    }
    let policy = match &raw.accepted_tcb_statuses {
        None => crate::evidence::tdx::TdxPolicy::default(),
        Some(names) => crate::evidence::tdx::TdxPolicy::from_names(names)
            .map_err(|e| ConfigError::Invalid(format!("tdx.accepted_tcb_statuses: {e}")))?,
    };
    Ok(TdxConfig {
        collateral_dir: raw.collateral_dir.map(|p| resolve(&p)),
        pccs_url: raw.pccs_url,
        root_crl_url: raw.root_crl_url,
        cache_dir: raw.cache_dir.map(|p| resolve(&p)),
        policy,
    })
}

/// `[gpu]`.
fn gpu_config(raw: RawGpu, resolve: impl Fn(&Path) -> PathBuf) -> Result<GpuConfig, ConfigError> {
    if let Some(url) = &raw.ocsp_url {
        if raw.ocsp_fetch == OcspFetch::Off {
            return Err(ConfigError::Invalid(
                "gpu.ocsp_url needs gpu.ocsp_fetch = \"best_effort\" or \"require\"".into(),
            ));
        }
        crate::fetch::vendor_url_is_https(url, "gpu.ocsp_url").map_err(|e| ConfigError::Invalid(e.to_string()))?;
    }
    Ok(GpuConfig {
        rim_dir: raw.rim_dir.map(|p| resolve(&p)),
        accept_expired_rim_signers: raw.accept_expired_rim_signers,
        ocsp_fetch: raw.ocsp_fetch,
        ocsp_url: raw.ocsp_url,
    })
}

/// `[[admin.tokens]]`: each names the SHA-256 of its bearer token.
fn admin_tokens(raw: Vec<RawToken>) -> Result<Vec<TokenEntry>, ConfigError> {
    raw.into_iter()
        .map(|t| {
            let digest =
                hex::decode(t.sha256.trim()).ok().and_then(|d| <[u8; 32]>::try_from(d).ok()).ok_or_else(|| {
                    ConfigError::Invalid(format!("admin token {:?}: sha256 must be 64 hex digits", t.name))
                })?;
            Ok(TokenEntry { name: t.name, sha256: digest, role: t.role })
        })
        .collect()
}

/// `[[admin.clients]]`: each names exactly one certificate identity.
fn admin_clients(raw: Vec<RawClient>) -> Result<Vec<ClientEntry>, ConfigError> {
    raw.into_iter()
        .map(|c| {
            if c.common_name.is_none() == c.dns_san.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "admin client {:?}: set exactly one of common_name and dns_san",
                    c.name
                )));
            }
            Ok(ClientEntry { name: c.name, common_name: c.common_name, dns_san: c.dns_san, role: c.role })
        })
        .collect()
}

/// Test roots are trusted only by a broker switched to simulated TEEs.
fn dev_switch_checks(dev: &RawDev) -> Result<(), ConfigError> {
    let roots = [
        ("snp_test_roots", &dev.snp_test_roots),
        ("tdx_test_roots", &dev.tdx_test_roots),
        ("gpu_test_roots", &dev.gpu_test_roots),
        ("gpu_test_rim_roots", &dev.gpu_test_rim_roots),
    ];
    match roots.iter().find(|(_, paths)| !paths.is_empty()) {
        Some((key, _)) if !dev.insecure_simulated_tee => {
            Err(ConfigError::Invalid(format!("dev.{key} needs dev.insecure_simulated_tee = true")))
        }
        _ => Ok(()),
    }
}

/// `[coco]`: the CoCo listener and its attestation tokens.
fn coco_config(c: RawCoco, resolve: impl Fn(&Path) -> PathBuf) -> Result<CocoConfig, ConfigError> {
    let listen = socket_addr(&c.listen, "coco.listen")?;
    let ttl = within(c.token_ttl_seconds, 10..=86_400, "coco.token_ttl_seconds")?.unwrap_or(300);
    if !c.token_previous_key_files.is_empty() && c.token_key_file.is_none() {
        return Err(ConfigError::Invalid("coco.token_previous_key_files needs coco.token_key_file".into()));
    }
    if c.token_previous_key_files.len() > MAX_PREVIOUS_TOKEN_KEYS {
        return Err(ConfigError::Invalid(format!(
            "coco.token_previous_key_files: at most {MAX_PREVIOUS_TOKEN_KEYS} files"
        )));
    }
    let printable = |s: &str| !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_graphic());
    let token_issuer = c.token_issuer.unwrap_or_else(|| "kbs".into());
    if !printable(&token_issuer) {
        return Err(ConfigError::Invalid(
            "coco.token_issuer must be 1..=256 printable ASCII characters without spaces".into(),
        ));
    }
    if c.token_audiences.len() > MAX_TOKEN_AUDIENCES || !c.token_audiences.iter().all(|a| printable(a)) {
        return Err(ConfigError::Invalid(format!(
            "coco.token_audiences: at most {MAX_TOKEN_AUDIENCES}, each 1..=256 printable ASCII characters"
        )));
    }
    Ok(CocoConfig {
        listen,
        token_key_file: c.token_key_file.map(|p| resolve(&p)),
        token_ttl: Duration::from_secs(ttl),
        token_previous_key_files: c.token_previous_key_files.iter().map(|p| resolve(p)).collect(),
        token_issuer,
        token_audiences: c.token_audiences,
    })
}

/// The audit file's settings (`[audit]` but its key and sync).
struct AuditFiles {
    path: Option<PathBuf>,
    rotation: crate::audit::Rotation,
    max_wait: Duration,
}

/// `[audit]`: the file (none, or `-`: standard output), its rotation by
/// size and age, and the bound on waiting for a record to be written.
fn audit_files(raw: &RawAudit, resolve: impl Fn(&Path) -> PathBuf) -> Result<AuditFiles, ConfigError> {
    let path = match raw.path.as_deref() {
        None | Some("-") => None,
        Some(p) => Some(resolve(Path::new(p))),
    };
    if raw.max_file_age_seconds.is_some() && path.is_none() {
        return Err(ConfigError::Invalid("audit.max_file_age_seconds needs audit.path (a file)".into()));
    }
    let max_file_age = within(raw.max_file_age_seconds, 60..=MAX_AUDIT_FILE_AGE_SECONDS, "audit.max_file_age_seconds")?
        .map(Duration::from_secs);
    let rotation = match (raw.max_file_bytes, raw.keep_files) {
        (Some(max), _) if max < MIN_AUDIT_FILE_BYTES => {
            return Err(ConfigError::Invalid(format!("audit.max_file_bytes must be at least {MIN_AUDIT_FILE_BYTES}")));
        }
        (Some(_), _) if path.is_none() => {
            return Err(ConfigError::Invalid("audit.max_file_bytes needs audit.path (a file)".into()));
        }
        (None, Some(_)) if max_file_age.is_none() => {
            return Err(ConfigError::Invalid(
                "audit.keep_files needs audit.max_file_bytes or audit.max_file_age_seconds".into(),
            ));
        }
        (max_file_bytes, keep) => {
            crate::audit::Rotation { max_file_bytes, keep_files: keep.unwrap_or(0), max_file_age }
        }
    };
    let max_wait = within(raw.max_wait_ms, 1..=600_000, "audit.max_wait_ms")?
        .map_or(crate::audit::DEFAULT_WAIT, Duration::from_millis);
    Ok(AuditFiles { path, rotation, max_wait })
}

/// The trace exporter of `raw`, or `None` when no endpoint is set or
/// tracing is switched off.
fn telemetry(
    raw: RawTelemetry,
    resolve: impl Fn(&Path) -> PathBuf,
) -> Result<Option<crate::telemetry::TelemetryConfig>, ConfigError> {
    use crate::telemetry::{Sampling, TelemetryConfig};
    let invalid = |what: &str, why: String| ConfigError::Invalid(format!("{what}: {why}"));
    if let Some(exporter) = &raw.exporter
        && !matches!(exporter.trim(), "otlp" | "none")
    {
        return Err(invalid("OTEL_TRACES_EXPORTER", format!("{exporter:?}: only otlp (or none) is supported")));
    }
    let Some(endpoint) = raw.otlp_endpoint.filter(|_| !raw.disabled) else {
        return Ok(None);
    };
    if let Some(protocol) = &raw.protocol
        && protocol.trim() != "grpc"
    {
        return Err(invalid(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            format!("{protocol:?}: the trace exporter speaks OTLP over gRPC only (grpc)"),
        ));
    }
    let url =
        reqwest::Url::parse(&endpoint).map_err(|e| invalid("telemetry.otlp_endpoint", format!("{endpoint:?}: {e}")))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(invalid("telemetry.otlp_endpoint", format!("scheme {other:?}: use http:// or https://")));
        }
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("telemetry.otlp_endpoint", format!("{endpoint:?} names no host")));
    }
    let ca_file = raw.ca_file.map(|p| resolve(&p));
    if https && ca_file.is_none() {
        return Err(invalid(
            "telemetry.otlp_endpoint",
            "an https collector needs telemetry.ca_file (or OTEL_EXPORTER_OTLP_CERTIFICATE), the CA its certificate chains to".into(),
        ));
    }
    let sampling = match (raw.sampler, raw.sampling_ratio) {
        (Some((name, arg)), _) => {
            Sampling::from_otel(&name, arg.as_deref()).map_err(|why| invalid("OTEL_TRACES_SAMPLER", why))?
        }
        (None, Some(ratio)) => Sampling {
            parent_based: true,
            ratio: Sampling::check_ratio(ratio).map_err(|why| invalid("telemetry.sampling_ratio", why))?,
        },
        (None, None) => Sampling::default(),
    };
    let service_name = raw.service_name.unwrap_or_else(|| "kbs".to_owned());
    if service_name.is_empty() || service_name.len() > 255 {
        return Err(invalid("telemetry.service_name", "must have 1 to 255 characters".into()));
    }
    Ok(Some(TelemetryConfig { endpoint, service_name, sampling, ca_file }))
}

impl Config {
    /// Loads `path`, then applies environment overrides from `env`
    /// (`KBS_GUEST_LISTEN`, `KBS_ADMIN_LISTEN`, `KBS_REPLICA_ID`, and the
    /// [`OTEL_ENV`] variables over `[telemetry]`).
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut raw: RawConfig = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })?;
        if let Some(v) = env("KBS_GUEST_LISTEN") {
            raw.server.guest_listen = v;
        }
        if let Some(v) = env("KBS_ADMIN_LISTEN") {
            raw.server.admin_listen = v;
        }
        if let Some(v) = env("KBS_REPLICA_ID") {
            raw.server.replica_id = Some(v);
        }
        otel_overrides(&mut raw.telemetry, &env);
        let base = path.parent().unwrap_or(Path::new("."));
        Self::validate(raw, base)
    }

    /// Parses TOML text with paths relative to `base` (for tests).
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: base.into(), source: Box::new(source) })?;
        Self::validate(raw, base)
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Self, ConfigError> {
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let guest_listen = socket_addr(&raw.server.guest_listen, "server.guest_listen")?;
        let admin_listen = socket_addr(&raw.server.admin_listen, "server.admin_listen")?;
        if guest_listen == admin_listen && guest_listen.port() != 0 {
            return Err(ConfigError::Invalid("guest and admin listeners must differ".into()));
        }
        within(Some(raw.challenge.ttl_seconds), 5..=600, "challenge.ttl_seconds")?;
        let connection_limits = connection_limits(&raw.server)?;
        let rate_limits = rate_limits(&raw.rate_limit)?;
        let idle_timeout =
            within(raw.server.idle_timeout_seconds, 1..=3600, "server.idle_timeout_seconds")?.unwrap_or(30);
        let tls_tickets = tls_tickets(&raw.server, resolve)?;
        let (store, max_secret_bytes, store_cache_ms) = store_config(raw.store, resolve)?;
        let max_secret_bytes = max_secret_bytes.unwrap_or(crate::store::DEFAULT_MAX_SECRET_BYTES);
        if max_secret_bytes == 0 || max_secret_bytes > 64 << 20 {
            return Err(ConfigError::Invalid("store.max_secret_bytes must be within 1..=64 MiB".into()));
        }
        let store_cache_ttl = within(store_cache_ms, 0..=60_000, "store.cache_ttl_ms")?
            .map_or(crate::store::cache::DEFAULT_TTL, Duration::from_millis);
        let policy = &raw.policy;
        let policy_refresh = within(policy.refresh_seconds, 1..=3600, "policy.refresh_seconds")?
            .map_or(crate::policy::DEFAULT_REFRESH, Duration::from_secs);
        let policy_max_memory_mib = within(policy.max_memory_mib, 64..=1_048_576, "policy.max_memory_mib")?
            .unwrap_or(crate::policy::engine::DEFAULT_MAX_MEMORY_MIB);
        let policy_eval_time_limit = within(policy.eval_time_limit_ms, 10..=60_000, "policy.eval_time_limit_ms")?
            .map_or(crate::policy::engine::EVAL_TIME_LIMIT, Duration::from_millis);
        let admin_tokens = admin_tokens(raw.admin.tokens)?;
        let admin_clients = admin_clients(raw.admin.clients)?;
        if !admin_clients.is_empty() && raw.admin.client_ca.is_none() {
            return Err(ConfigError::Invalid("admin.clients needs admin.client_ca".into()));
        }
        dev_switch_checks(&raw.dev)?;
        let coco = raw.coco.map(|c| coco_config(c, resolve)).transpose()?;
        let metrics = match raw.metrics {
            None => None,
            Some(m) => {
                let listen = socket_addr(&m.listen, "metrics.listen")?;
                if listen.port() != 0 && (listen == guest_listen || listen == admin_listen) {
                    return Err(ConfigError::Invalid("metrics.listen must differ from the other listeners".into()));
                }
                Some(MetricsConfig { listen, tls: m.tls })
            }
        };
        let telemetry = telemetry(raw.telemetry, resolve)?;
        let audit = audit_files(&raw.audit, resolve)?;
        Ok(Self {
            guest_listen,
            admin_listen,
            tls_cert: resolve(&raw.server.tls_cert),
            tls_key: resolve(&raw.server.tls_key),
            replica_id: raw.server.replica_id.unwrap_or_else(|| "kbs-0".into()),
            connection_limits,
            idle_timeout: Duration::from_secs(idle_timeout),
            rate_limits,
            tls_tickets,
            challenge_key_file: resolve(&raw.challenge.key_file),
            previous_challenge_key_files: raw.challenge.previous_key_files.iter().map(|p| resolve(p)).collect(),
            challenge_ttl: Duration::from_secs(raw.challenge.ttl_seconds),
            store,
            max_secret_bytes,
            store_cache_ttl,
            snp: snp_config(raw.snp, resolve)?,
            tdx: tdx_config(raw.tdx, resolve)?,
            admin_tokens,
            admin_client_ca: raw.admin.client_ca.map(|p| resolve(&p)),
            admin_clients,
            audit_path: audit.path,
            audit_key_file: raw.audit.key_file.map(|p| resolve(&p)),
            audit_sync: raw.audit.sync.unwrap_or(true),
            audit_rotation: audit.rotation,
            audit_max_wait: audit.max_wait,
            policy_refresh,
            policy_builtin_default: raw.policy.builtin_default.unwrap_or(true),
            policy_max_memory_mib,
            policy_eval_time_limit,
            insecure_simulated_tee: raw.dev.insecure_simulated_tee,
            snp_test_roots: raw.dev.snp_test_roots.iter().map(|p| resolve(p)).collect(),
            tdx_test_roots: raw.dev.tdx_test_roots.iter().map(|p| resolve(p)).collect(),
            gpu_test_roots: raw.dev.gpu_test_roots.iter().map(|p| resolve(p)).collect(),
            gpu_test_rim_roots: raw.dev.gpu_test_rim_roots.iter().map(|p| resolve(p)).collect(),
            gpu: gpu_config(raw.gpu, resolve)?,
            coco,
            metrics,
            telemetry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        guest_listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        tls_cert = "tls/server.pem"
        tls_key = "tls/server.key"
        [challenge]
        key_file = "challenge.key"
        [store]
        kind = "local"
        dir = "secrets"
        kek_file = "kek"
    "#;

    #[test]
    fn defaults_are_secure_and_paths_resolve() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/kbs")).unwrap();
        assert_eq!(c.challenge_ttl, Duration::from_secs(60));
        assert!(!c.insecure_simulated_tee);
        assert!(c.admin_tokens.is_empty());
        assert_eq!(c.tls_cert, Path::new("/etc/kbs/tls/server.pem"));
        assert_eq!(c.max_secret_bytes, 1 << 20);
        assert!(c.audit_sync, "audit records are written through by default");
        assert_eq!(c.audit_key_file, None);
        let audit = format!("{MINIMAL}\n[audit]\npath = \"audit.jsonl\"\nkey_file = \"audit.key\"\nsync = false\n");
        let c = Config::from_toml(&audit, Path::new("/etc/kbs")).unwrap();
        assert!(!c.audit_sync);
        assert_eq!(c.audit_key_file.as_deref(), Some(Path::new("/etc/kbs/audit.key")));
    }

    #[test]
    fn audit_rotation_and_wait() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/kbs")).unwrap();
        assert_eq!(c.audit_rotation, crate::audit::Rotation::default(), "no rotation by default");
        assert_eq!(c.audit_max_wait, crate::audit::DEFAULT_WAIT);
        let with = |audit: &str| Config::from_toml(&format!("{MINIMAL}\n[audit]\n{audit}\n"), Path::new("/etc/kbs"));
        let c =
            with("path = \"audit.jsonl\"\nmax_file_bytes = 104857600\nkeep_files = 30\nmax_wait_ms = 2000").unwrap();
        assert_eq!(
            c.audit_rotation,
            crate::audit::Rotation { max_file_bytes: Some(100 << 20), keep_files: 30, max_file_age: None }
        );
        assert_eq!(c.audit_max_wait, Duration::from_secs(2));
        for bad in [
            "path = \"audit.jsonl\"\nmax_file_bytes = 100",
            "max_file_bytes = 104857600",
            "path = \"audit.jsonl\"\nkeep_files = 3",
            "path = \"audit.jsonl\"\nmax_wait_ms = 0",
        ] {
            assert!(matches!(with(bad), Err(ConfigError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn audit_rotation_by_age() {
        let with = |audit: &str| Config::from_toml(&format!("{MINIMAL}\n[audit]\n{audit}\n"), Path::new("/etc/kbs"));
        let c = with("path = \"audit.jsonl\"\nmax_file_age_seconds = 86400\nkeep_files = 7").unwrap();
        assert_eq!(
            c.audit_rotation,
            crate::audit::Rotation {
                max_file_bytes: None,
                keep_files: 7,
                max_file_age: Some(Duration::from_secs(86400))
            }
        );
        let c = with("path = \"audit.jsonl\"\nmax_file_age_seconds = 3600\nmax_file_bytes = 104857600").unwrap();
        assert_eq!(c.audit_rotation.max_file_age, Some(Duration::from_secs(3600)));
        assert_eq!(c.audit_rotation.max_file_bytes, Some(100 << 20));
        for bad in [
            "max_file_age_seconds = 86400",
            "path = \"-\"\nmax_file_age_seconds = 86400",
            "path = \"audit.jsonl\"\nmax_file_age_seconds = 59",
            "path = \"audit.jsonl\"\nmax_file_age_seconds = 31622401",
        ] {
            assert!(matches!(with(bad), Err(ConfigError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{MINIMAL}\n[dev]\ninsecure = true\n");
        assert!(matches!(Config::from_toml(&text, Path::new("/")), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn tdx_section_is_validated() {
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert!(!c.tdx.enabled());
        let ok = format!(
            "{MINIMAL}\n[tdx]\ncollateral_dir = \"tdx\"\naccepted_tcb_statuses = [\"UpToDate\", \"SWHardeningNeeded\"]\n"
        );
        let c = Config::from_toml(&ok, Path::new("/etc/kbs")).unwrap();
        assert!(c.tdx.enabled());
        assert_eq!(c.tdx.collateral_dir.as_deref(), Some(Path::new("/etc/kbs/tdx")));
        assert_eq!(c.tdx.policy.accepted_tcb_statuses.len(), 2);
        for bad in [
            "[tdx]\naccepted_tcb_statuses = [\"Revoked\"]\n",
            "[tdx]\naccepted_tcb_statuses = [\"Fine\"]\n",
            "[tdx]\npccs_url = \"https://pccs.example\"\n",
            "[tdx]\npccs_url = \"http://pccs.example\"\ncache_dir = \"c\"\n",
            "[dev]\ntdx_test_roots = [\"root.pem\"]\n",
        ] {
            assert!(Config::from_toml(&format!("{MINIMAL}\n{bad}"), Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn revocation_is_required_once_a_crl_source_is_configured() {
        let load = |snp: &str| Config::from_toml(&format!("{MINIMAL}\n[snp]\n{snp}"), Path::new("/etc/kbs"));
        let none = load("").unwrap();
        assert_eq!(
            (none.snp.revocation, none.snp.crl_dir, none.snp.crl_refresh),
            (Revocation::BestEffort, None, DEFAULT_CRL_REFRESH)
        );
        let dir = load("crl_dir = \"crl\"\n").unwrap();
        assert_eq!(dir.snp.revocation, Revocation::Require);
        assert_eq!(dir.snp.crl_dir.as_deref(), Some(Path::new("/etc/kbs/crl")));
        let kds = load("kds_url = \"https://kds.example\"\nkds_cache_dir = \"kds\"\n").unwrap();
        assert_eq!(kds.snp.revocation, Revocation::Require);
        let relaxed = load("crl_dir = \"crl\"\nrevocation = \"best_effort\"\ncrl_refresh_seconds = 600\n").unwrap();
        assert_eq!(
            (relaxed.snp.revocation, relaxed.snp.crl_refresh),
            (Revocation::BestEffort, Duration::from_secs(600))
        );
        for bad in [
            "revocation = \"require\"\n",
            "crl_dir = \"crl\"\nrevocation = \"off\"\n",
            "crl_dir = \"crl\"\ncrl_refresh_seconds = 59\n",
            "crl_dir = \"crl\"\ncrl_refresh_seconds = 86401\n",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vendor_urls_are_https_or_plain_http_to_a_loopback_host() {
        let load = |section: &str, key: &str, url: &str| {
            let extra = if section == "tdx" { "cache_dir = \"c\"\n" } else { "" };
            Config::from_toml(&format!("{MINIMAL}\n[{section}]\n{key} = \"{url}\"\n{extra}"), Path::new("/"))
        };
        for (section, key) in [("snp", "kds_url"), ("tdx", "pccs_url"), ("tdx", "root_crl_url")] {
            let extra_pccs = |url: &str| match key {
                // root_crl_url alone does not enable the PCCS fetcher; give it one.
                "root_crl_url" => format!("{url}\"\npccs_url = \"https://pccs.example"),
                _ => url.to_owned(),
            };
            for good in ["https://kds.example", "http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:2"] {
                assert!(load(section, key, &extra_pccs(good)).is_ok(), "{key} = {good}");
            }
            for bad in [
                "http://kds.example",
                "http://127.attacker.example",
                "http://localhost.attacker.example",
                "http://10.0.0.1",
                "ftp://127.0.0.1",
                "not a url",
            ] {
                assert!(matches!(load(section, key, &extra_pccs(bad)), Err(ConfigError::Invalid(_))), "{key} = {bad}");
            }
        }
    }

    #[test]
    fn test_roots_need_the_dev_switch() {
        for key in ["snp_test_roots", "tdx_test_roots", "gpu_test_roots", "gpu_test_rim_roots"] {
            let text = format!("{MINIMAL}\n[dev]\n{key} = [\"root.pem\"]\n");
            let err = Config::from_toml(&text, Path::new("/")).unwrap_err().to_string();
            assert!(err.contains(&format!("dev.{key} needs dev.insecure_simulated_tee")), "{key}: {err}");
        }
        let text = format!("{MINIMAL}\n[dev]\nsnp_test_roots = [\"ark.pem\"]\n");
        assert!(matches!(Config::from_toml(&text, Path::new("/")), Err(ConfigError::Invalid(_))));
        let text = format!("{MINIMAL}\n[dev]\ngpu_test_roots = [\"gpu-root.pem\"]\n");
        assert!(matches!(Config::from_toml(&text, Path::new("/")), Err(ConfigError::Invalid(_))));
        let text = format!("{MINIMAL}\n[dev]\ninsecure_simulated_tee = true\ngpu_test_roots = [\"gpu-root.pem\"]\n");
        let config = Config::from_toml(&text, Path::new("/d")).unwrap();
        assert_eq!(config.gpu_test_roots, vec![PathBuf::from("/d/gpu-root.pem")]);
        let text = format!("{MINIMAL}\n[dev]\ngpu_test_rim_roots = [\"rim-root.pem\"]\n");
        assert!(matches!(Config::from_toml(&text, Path::new("/")), Err(ConfigError::Invalid(_))));
        let text =
            format!("{MINIMAL}\n[dev]\ninsecure_simulated_tee = true\ngpu_test_rim_roots = [\"rim-root.pem\"]\n");
        let config = Config::from_toml(&text, Path::new("/d")).unwrap();
        assert_eq!(config.gpu_test_rim_roots, vec![PathBuf::from("/d/rim-root.pem")]);
    }

    #[test]
    fn the_gpu_section_names_the_rim_directory() {
        let config = Config::from_toml(MINIMAL, Path::new("/etc/kbs")).unwrap();
        assert_eq!(config.gpu, GpuConfig::default());
        assert!(!config.gpu.accept_expired_rim_signers, "expired RIM signers are refused by default");
        let text = format!("{MINIMAL}\n[gpu]\nrim_dir = \"rims\"\naccept_expired_rim_signers = true\n");
        let config = Config::from_toml(&text, Path::new("/etc/kbs")).unwrap();
        assert_eq!(config.gpu.rim_dir.as_deref(), Some(Path::new("/etc/kbs/rims")));
        assert!(config.gpu.accept_expired_rim_signers);
        let text = format!("{MINIMAL}\n[gpu]\nrim_directory = \"rims\"\n");
        assert!(matches!(Config::from_toml(&text, Path::new("/")), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn online_ocsp_is_off_unless_asked_for() {
        let config = Config::from_toml(MINIMAL, Path::new("/etc/kbs")).unwrap();
        assert_eq!((config.gpu.ocsp_fetch, config.gpu.ocsp_url.as_deref()), (OcspFetch::Off, None));
        let text = format!("{MINIMAL}\n[gpu]\nocsp_fetch = \"require\"\nocsp_url = \"https://ocsp.example/\"\n");
        let config = Config::from_toml(&text, Path::new("/")).unwrap();
        assert_eq!(config.gpu.ocsp_fetch, OcspFetch::Require);
        assert_eq!(config.gpu.ocsp_url.as_deref(), Some("https://ocsp.example/"));
        let best = format!("{MINIMAL}\n[gpu]\nocsp_fetch = \"best_effort\"\n");
        assert_eq!(Config::from_toml(&best, Path::new("/")).unwrap().gpu.ocsp_fetch, OcspFetch::BestEffort);
        for bad in ["ocsp_fetch = \"sometimes\"", "ocsp_fetch = true"] {
            let text = format!("{MINIMAL}\n[gpu]\n{bad}\n");
            assert!(matches!(Config::from_toml(&text, Path::new("/")), Err(ConfigError::Parse { .. })), "{bad}");
        }
        let orphan = format!("{MINIMAL}\n[gpu]\nocsp_url = \"https://ocsp.example/\"\n");
        assert!(matches!(Config::from_toml(&orphan, Path::new("/")), Err(ConfigError::Invalid(_))));
        let plain = format!("{MINIMAL}\n[gpu]\nocsp_fetch = \"require\"\nocsp_url = \"http://ocsp.example/\"\n");
        assert!(matches!(Config::from_toml(&plain, Path::new("/")), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn bad_values_are_refused() {
        let ttl = MINIMAL.replace("key_file = \"challenge.key\"", "key_file = \"c\"\nttl_seconds = 0");
        assert!(Config::from_toml(&ttl, Path::new("/")).is_err());
        let addr = MINIMAL.replace("127.0.0.1:0\"\n        admin", "nonsense\"\n        admin");
        assert!(Config::from_toml(&addr, Path::new("/")).is_err());
        let token = format!("{MINIMAL}\n[[admin.tokens]]\nname = \"x\"\nsha256 = \"zz\"\nrole = \"admin\"\n");
        assert!(Config::from_toml(&token, Path::new("/")).is_err());
        let kds = format!("{MINIMAL}\n[snp]\nkds_url = \"http://example.com\"\n");
        assert!(Config::from_toml(&kds, Path::new("/")).is_err());
    }

    #[test]
    fn policy_section_defaults_and_bounds() {
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(c.policy_refresh, crate::policy::DEFAULT_REFRESH);
        assert!(c.policy_builtin_default);
        assert_eq!(c.policy_max_memory_mib, 1024);
        assert_eq!(c.policy_eval_time_limit, Duration::from_millis(200));
        let set = format!(
            "{MINIMAL}\n[policy]\nrefresh_seconds = 2\nbuiltin_default = false\nmax_memory_mib = 256\neval_time_limit_ms = 1500\n"
        );
        let c = Config::from_toml(&set, Path::new("/")).unwrap();
        assert_eq!((c.policy_refresh, c.policy_builtin_default), (Duration::from_secs(2), false));
        assert_eq!(c.policy_max_memory_mib, 256);
        assert_eq!(c.policy_eval_time_limit, Duration::from_millis(1500));
        for bad in [
            "refresh_seconds = 0",
            "refresh_seconds = 3601",
            "refresh = 5",
            "max_memory_mib = 63",
            "max_memory_mib = -1",
            "eval_time_limit_ms = 9",
            "eval_time_limit_ms = 60001",
        ] {
            assert!(Config::from_toml(&format!("{MINIMAL}\n[policy]\n{bad}\n"), Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_to_a_remote_vault_needs_the_insecure_switch() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        let vault = |address: &str, extra: &str| {
            let local = "[store]\n        kind = \"local\"\n        dir = \"secrets\"\n        kek_file = \"kek\"\n";
            let store = format!(
                "[store]\nkind = \"vault\"\naddress = \"{address}\"\n{extra}\n[store.auth]\nmethod = \"token\"\ntoken_file = \"token\"\n"
            );
            Config::from_toml(&MINIMAL.replace(local, &store), dir.path())
        };
        for ok in ["https://vault.example:8200", "http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200"]
        {
            assert!(vault(ok, "").is_ok(), "{ok}: {:?}", vault(ok, "").err());
        }
        for bad in ["http://vault.example:8200", "http://10.0.0.5:8200", "http://127.attacker.example"] {
            assert!(vault(bad, "").is_err(), "{bad}");
            let c = vault(bad, "insecure_plain_http = true").unwrap();
            assert!(matches!(c.store, StoreConfig::Vault(v) if v.insecure_plain_http), "{bad}");
        }
        // The other nodes of an HA cluster: the same checks for each.
        let c =
            vault("http://127.0.0.1:8200", "fallback_addresses = [\"http://127.0.0.1:8210\", \"https://b.example\"]")
                .unwrap();
        assert!(matches!(&c.store, StoreConfig::Vault(v)
            if v.fallback_addresses == ["http://127.0.0.1:8210", "https://b.example"]));
        assert!(vault("http://127.0.0.1:8200", "fallback_addresses = [\"http://10.0.0.5:8200\"]").is_err());
        assert!(vault("http://127.0.0.1:8200", "fallback_addresses = [\"ftp://127.0.0.1\"]").is_err());
        let many = format!("fallback_addresses = [{}]", vec!["\"https://b.example\""; 16].join(", "));
        assert!(vault("http://127.0.0.1:8200", &many).is_err());
    }

    #[test]
    fn rate_limits_default_and_bounds() {
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(c.rate_limits, crate::rate::RateLimits::default());
        let with = |lines: &str| format!("{MINIMAL}\n[rate_limit]\n{lines}\n");
        let c = Config::from_toml(&with("per_peer_per_second = 7\nglobal_per_second = 70"), Path::new("/")).unwrap();
        assert_eq!(c.rate_limits, crate::rate::RateLimits { per_peer_per_second: 7, global_per_second: 70 });
        for bad in ["per_peer_per_second = 0", "per_peer_per_second = 10\nglobal_per_second = 9", "burst = 3"] {
            assert!(Config::from_toml(&with(bad), Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_bounds_defaults_and_limits() {
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(c.connection_limits, crate::connections::Limits::default());
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        let with = |lines: &str| MINIMAL.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1);
        let c = Config::from_toml(
            &with("max_connections = 10\nmax_connections_per_peer = 10\nidle_timeout_seconds = 5"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.connection_limits, crate::connections::Limits { total: 10, per_peer: 10 });
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        for bad in [
            "max_connections = 0",
            "max_connections = 1000001",
            "max_connections_per_peer = 0",
            "max_connections = 10\nmax_connections_per_peer = 11",
            "idle_timeout_seconds = 0",
            "idle_timeout_seconds = 3601",
        ] {
            assert!(Config::from_toml(&with(bad), Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_tickets_default_off_and_bounds() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/kbs")).unwrap();
        assert_eq!(c.tls_tickets, None);
        let with = |lines: &str| MINIMAL.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1);
        let c = Config::from_toml(
            &with("tls_ticket_key_file = \"t.key\"\ntls_ticket_previous_key_files = [\"/k/old.key\"]"),
            Path::new("/etc/kbs"),
        )
        .unwrap();
        assert_eq!(
            c.tls_tickets,
            Some(TlsTicketConfig {
                key_file: "/etc/kbs/t.key".into(),
                previous_key_files: vec!["/k/old.key".into()],
                lifetime_seconds: crate::tickets::DEFAULT_LIFETIME_SECS,
            })
        );
        let c =
            Config::from_toml(&with("tls_ticket_key_file = \"t\"\ntls_ticket_lifetime_seconds = 60"), Path::new("/"))
                .unwrap();
        assert_eq!(c.tls_tickets.map(|t| t.lifetime_seconds), Some(60));
        for bad in [
            "tls_ticket_previous_key_files = [\"old\"]",
            "tls_ticket_lifetime_seconds = 600",
            "tls_ticket_key_file = \"t\"\ntls_ticket_lifetime_seconds = 59",
            "tls_ticket_key_file = \"t\"\ntls_ticket_lifetime_seconds = 86401",
            "tls_ticket_key_file = \"t\"\ntls_ticket_lifetime_seconds = 4294967296",
        ] {
            assert!(Config::from_toml(&with(bad), Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_cache_ttl_defaults_and_bounds() {
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(c.store_cache_ttl, crate::store::cache::DEFAULT_TTL);
        let off = MINIMAL.replace("kek_file = \"kek\"", "kek_file = \"kek\"\ncache_ttl_ms = 0");
        assert_eq!(Config::from_toml(&off, Path::new("/")).unwrap().store_cache_ttl, Duration::ZERO);
        let long = MINIMAL.replace("kek_file = \"kek\"", "kek_file = \"kek\"\ncache_ttl_ms = 60001");
        assert!(Config::from_toml(&long, Path::new("/")).is_err());
    }

    #[test]
    fn traces_are_off_by_default_and_the_otel_variables_win_over_the_file() {
        use crate::telemetry::Sampling;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbs.toml");
        let load = |telemetry: &str, vars: &[(&str, &str)]| {
            std::fs::write(&path, format!("{MINIMAL}\n[telemetry]\n{telemetry}\n")).unwrap();
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            Config::load(&path, move |k| vars.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone()))
        };
        // Off: no endpoint, or switched off by the standard variables.
        assert!(load("", &[]).unwrap().telemetry.is_none());
        assert!(load("service_name = \"a\"", &[("OTEL_SERVICE_NAME", "b")]).unwrap().telemetry.is_none());
        let file = "otlp_endpoint = \"http://127.0.0.1:4317\"\nservice_name = \"kbs-eu\"\nsampling_ratio = 0.25";
        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            assert!(load(file, &[off]).unwrap().telemetry.is_none(), "{off:?}");
        }
        // The file alone.
        let t = load(file, &[]).unwrap().telemetry.unwrap();
        assert_eq!(t.endpoint, "http://127.0.0.1:4317");
        assert_eq!(t.service_name, "kbs-eu");
        assert_eq!(t.sampling, Sampling { parent_based: true, ratio: 0.25 });
        assert_eq!(t.ca_file, None);
        // The variables over it; the signal-specific endpoint over the generic one.
        let t = load(
            file,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector.example:4317"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "collector-ca.pem"),
                ("OTEL_SERVICE_NAME", "kbs-us"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_TRACES_EXPORTER", "otlp"),
            ],
        )
        .unwrap()
        .telemetry
        .unwrap();
        assert_eq!(t.endpoint, "https://collector.example:4317");
        assert_eq!(t.service_name, "kbs-us");
        assert_eq!(t.sampling, Sampling { parent_based: false, ratio: 0.5 });
        assert_eq!(t.ca_file, Some(dir.path().join("collector-ca.pem")));
        let t = load("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317")]).unwrap().telemetry.unwrap();
        assert_eq!((t.endpoint.as_str(), t.service_name.as_str()), ("http://generic:4317", "kbs"));
        assert_eq!(t.sampling, Sampling::default());
        // Refused, with the setting named.
        for (telemetry, vars, what) in [
            ("otlp_endpoint = \"https://c:4317\"", &[][..], "ca_file"),
            ("otlp_endpoint = \"grpc://c:4317\"", &[][..], "scheme"),
            ("otlp_endpoint = \"c:4317\"", &[][..], "otlp_endpoint"),
            ("otlp_endpoint = \"http://c:4317\"\nsampling_ratio = 1.5", &[][..], "sampling_ratio"),
            ("otlp_endpoint = \"http://c:4317\"", &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")][..], "gRPC"),
            ("otlp_endpoint = \"http://c:4317\"", &[("OTEL_TRACES_SAMPLER", "jaeger_remote")][..], "SAMPLER"),
            ("", &[("OTEL_TRACES_EXPORTER", "zipkin")][..], "OTEL_TRACES_EXPORTER"),
        ] {
            let refused = load(telemetry, vars).unwrap_err();
            assert!(matches!(refused, ConfigError::Invalid(_)) && refused.to_string().contains(what), "{refused}");
        }
        assert!(matches!(load("endpoint = \"http://c:4317\"", &[]), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn metrics_listener_is_off_by_default_and_its_address_checked() {
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert!(c.metrics.is_none());
        let with = |lines: &str| Config::from_toml(&format!("{MINIMAL}\n[metrics]\n{lines}\n"), Path::new("/"));
        let c = with("listen = \"127.0.0.1:9464\"").unwrap();
        let m = c.metrics.unwrap();
        assert_eq!((m.listen, m.tls), ("127.0.0.1:9464".parse().unwrap(), false));
        let c = with("listen = \"[::1]:9464\"\ntls = true").unwrap();
        let m = c.metrics.unwrap();
        assert_eq!((m.listen, m.tls), ("[::1]:9464".parse().unwrap(), true));
        let clash = MINIMAL.replacen("127.0.0.1:0", "127.0.0.1:8443", 1);
        let clash = Config::from_toml(&format!("{clash}\n[metrics]\nlisten = \"127.0.0.1:8443\"\n"), Path::new("/"));
        assert!(matches!(clash, Err(ConfigError::Invalid(_))));
        for bad in ["listen = \"localhost:9464\"", "listen = \"127.0.0.1\"", "listen = \"nonsense\""] {
            assert!(matches!(with(bad), Err(ConfigError::Invalid(_))), "{bad}");
        }
        for bad in ["", "listen = \"127.0.0.1:9464\"\npath = \"/m\"", "listen = 9464"] {
            assert!(matches!(with(bad), Err(ConfigError::Parse { .. })), "{bad}");
        }
    }

    #[test]
    fn token_keys_issuer_and_audiences_are_checked() {
        let with = |lines: &str| {
            Config::from_toml(&format!("{MINIMAL}\n[coco]\nlisten = \"127.0.0.1:0\"\n{lines}\n"), Path::new("/k"))
        };
        let c = with("").unwrap().coco.unwrap();
        assert_eq!((c.token_issuer.as_str(), c.token_audiences.len()), ("kbs", 0));
        assert!(c.token_previous_key_files.is_empty());
        let c = with(
            "token_key_file = \"new.key\"\ntoken_previous_key_files = [\"old.key\"]\n\
             token_issuer = \"https://kbs.example\"\ntoken_audiences = [\"vault\"]",
        )
        .unwrap()
        .coco
        .unwrap();
        assert_eq!(c.token_previous_key_files, vec![PathBuf::from("/k/old.key")]);
        assert_eq!(
            (c.token_issuer.as_str(), c.token_audiences.as_slice()),
            ("https://kbs.example", &["vault".to_owned()][..])
        );
        for bad in [
            "token_previous_key_files = [\"old.key\"]",
            "token_issuer = \"\"",
            "token_issuer = \"two words\"",
            "token_audiences = [\"\"]",
            "token_key_file = \"k\"\ntoken_previous_key_files = [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]",
        ] {
            assert!(matches!(with(bad), Err(ConfigError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn env_overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbs.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path, |k| (k == "KBS_REPLICA_ID").then(|| "r7".to_owned())).unwrap();
        assert_eq!(c.replica_id, "r7");
    }
}
