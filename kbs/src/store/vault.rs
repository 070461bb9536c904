//! The Vault / OpenBao KV v2 secret store: the production store, shared by
//! every replica.
//!
//! # What is stored where
//! A secret named `a/b/c` lives at the KV v2 path `{prefix}/a/b/c` under the
//! secrets-engine mount `{mount}` (default `secret`), so its data is at
//! `{mount}/data/{prefix}/a/b/c` and its metadata at
//! `{mount}/metadata/{prefix}/a/b/c`. Each KV version's data is one JSON
//! object:
//!
//! ```json
//! { "value": "<base64 of the secret bytes>",
//!   "labels": { "owner": "ml-team" },
//!   "allowed_measurements": ["<96 lowercase hex digits>"],
//!   "write_id": "<32 hex digits, random per write>" }
//! ```
//!
//! Labels and allowed measurements travel in the data, not in KV's custom
//! metadata, so they are versioned and written atomically with the value.
//! KV versions are the secret's versions: [`SecretMeta::version`] is the KV
//! version, [`SecretMeta::versions`] lists the versions that are neither
//! soft-deleted nor destroyed, and [`SecretMeta::created_at`] is the
//! version's `created_time`. A secret whose latest version is soft-deleted or
//! destroyed is not served: `get`, `metadata` and `list` treat it as absent
//! until a new version is written (or the version is undeleted).
//!
//! KV keeps as many versions per secret as the mount or the key is
//! configured to (`max_versions`, 10 by default); older ones are pruned by
//! the server and drop out of `versions`.
//!
//! # Policy
//! The identity the store logs in as needs, for a mount `secret` and a
//! prefix `kbs`:
//!
//! ```hcl
//! path "secret/data/kbs/*"     { capabilities = ["create", "read", "update", "delete"] }
//! path "secret/metadata/kbs/*" { capabilities = ["read", "list", "delete"] }
//! path "secret/delete/kbs/*"   { capabilities = ["update"] }   # soft_delete of chosen versions
//! path "secret/undelete/kbs/*" { capabilities = ["update"] }   # undelete_versions
//! path "secret/destroy/kbs/*"  { capabilities = ["update"] }   # destroy_versions
//! ```
//!
//! plus the `default` policy (token lookup and renewal of itself). A
//! read-only replica needs only `read` on `data` and `read`/`list` on
//! `metadata`.
//!
//! # Writes are always check-and-set
//! Every `put` sends KV's `cas` option. With
//! [`NewSecret::expected_version`] it is that version (0 means "no live
//! version"); without it, the store reads the current version from the
//! metadata endpoint and writes with `cas` equal to it (0 if absent). Two
//! writers therefore never silently overwrite each other: the loser gets
//! [`StoreError::Conflict`]. Vault and OpenBao report a `cas` mismatch only
//! as HTTP 400 with a free-text message, so the store never reads the
//! message: on a 400 it re-reads the metadata and reports a conflict only if
//! the current version is no longer the one it sent and version `cas + 1`
//! is not its own write (see below); if the version has not moved after a
//! few re-reads (a standby serving reads may lag a moment), the 400 is
//! reported as [`StoreError::Unavailable`].
//!
//! # Several servers
//! [`VaultConfig::fallback_addresses`] lists the other nodes of an HA
//! cluster. Every request goes first to the address that answered last; a
//! node that does not answer (connection refused or reset, timeout) or
//! answers with a server-side failure (429, 500, 502, 503, 504: sealed, or a
//! standby whose active node is gone during an election) is passed over for
//! the next one, once each per request. A request no node answers is
//! [`StoreError::Unavailable`]: nothing waits for an election to end, so a
//! release during one fails closed at once and the next one after it
//! succeeds, without a restart.
//!
//! A write that got no answer may still have landed (the node died after
//! committing it). Each version's data carries a random `write_id`; the
//! store checks version `cas + 1` for it, sends the same CAS write again
//! while it has not landed, and reports success once it has, for up to 20
//! seconds. So a write is acknowledged exactly when it made a version, and
//! a retry never makes a second one. Past that budget the write is
//! [`StoreError::Unavailable`] with its outcome unknown. A write that no
//! node took (no connection could be made to any) fails at once.
//!
//! # A standby's "not found"
//! With OpenBao's default (`disable_standby_reads = false`) a standby
//! answers reads from its own copy of the data, which may lag the active
//! node by a moment (or longer, if it is cut off from the leader): a
//! secret just written through the active node, by this replica or any
//! other writer, may be a 404 there. So a 404 that would become an answer
//! (`get`, `metadata`, `delete`, and the version operations) is confirmed
//! first: `sys/leader` of the node that answered names the active node; the
//! read is asked again of that node, between two `sys/leader` calls to it
//! that both say it is active since the same `active_time`, at the API
//! address it advertises (`api_addr`), so it was the active node
//! throughout and that address reaches it alone. Its answer decides: the
//! secret if it has it, [`StoreError::NotFound`] if it confirms the 404. A
//! server without HA (`ha_enabled` false: a dev server, one node with a
//! storage backend without HA) needs no confirmation. When no configured
//! address is the active node's own (only a load balancer's is listed),
//! there is no active node (an election), or it changes meanwhile, the
//! store cannot tell, and the answer is [`StoreError::Unavailable`], never
//! [`StoreError::NotFound`]. List the nodes by the API addresses they
//! advertise to get "not found" answers from an HA cluster.
//!
//! Reads whose 404 is not an answer take the node's word: the version a
//! check-and-set write is sent with (the active node checks it) and the
//! secrets of a listing (as fresh as the node that lists them).
//!
//! OpenBao 2.7's index headers (`X-Vault-Index`, `X-Vault-Inconsistent`)
//! are not used: only successful responses carry an index (not a 404), the
//! value is opaque and storage-specific, and a node that fails to compare
//! an index treats it as seen and answers from its own copy.
//!
//! # Authentication
//! - [`VaultAuth::Token`]: a token given by the operator; looked up at start
//!   (`auth/token/lookup-self`) and renewed if renewable. It cannot be
//!   obtained again, so once it expires the store is unavailable.
//! - [`VaultAuth::AppRole`]: `POST auth/{mount}/login` with the role ID and
//!   the secret ID read from a file at every login (so a rotated secret ID is
//!   picked up).
//! - [`VaultAuth::Kubernetes`]: `POST auth/{mount}/login` with the role and
//!   the service-account JWT read from a file at every login (projected
//!   tokens rotate). The request is the same for OpenBao's and Vault's `jwt`
//!   auth method, so a `jwt` mount that validates the cluster's
//!   service-account issuer works too: set `mount` to it.
//!
//! # Renewal
//! A background task renews the token when two thirds of its lease have
//! passed (`auth/token/renew-self`). For AppRole and Kubernetes logins the
//! task logs in again instead when the token is not renewable, when renewal
//! fails, or when the renewed lease is less than half of the login lease
//! (the token's maximum TTL is near). A request answered with HTTP 403 (for
//! example because the token expired or was revoked) triggers one new login
//! and one retry; a second 403 is [`StoreError::Unavailable`]. The task holds
//! only a weak reference and is aborted when the last handle to the store is
//! dropped.
//!
//! # TLS
//! Certificates are verified by default (rustls). With
//! [`VaultConfig::ca_bundle`] set, the server must chain to one of the CAs in
//! that PEM file and to nothing else; without it the platform's trust store
//! is used. [`VaultConfig::insecure_skip_verify`] turns verification off and
//! logs a warning at start; it exists for development only.
//!
//! # Errors
//! Errors are classified by HTTP status code, never by message text: 404 is
//! [`StoreError::NotFound`] once confirmed (see "A standby's not found"
//! above); 403 is retried once after a new login, then
//! [`StoreError::Unavailable`]; 400 on a write is a conflict only as
//! described above; every other status, connection errors and timeouts are
//! [`StoreError::Unavailable`]. Data that does not decode is
//! [`StoreError::Corrupt`]. A store that is down never yields a wrong
//! answer.
//!
//! # Secrets in memory
//! Values, tokens, secret IDs and JWTs are never logged. Values are held in
//! [`SecretValue`] and the intermediate base64 text is zeroized; the token is
//! zeroized when the session holding it is dropped. Copies made inside the
//! HTTP and JSON layers (request and response bodies) are freed without
//! being zeroized; that is the limit of what this process can control.
//!
//! # How it uses `vaultrs`
//! KV v2 operations, AppRole and Kubernetes logins and token lookup and
//! renewal go through `vaultrs` (0.8). Reading a secret uses its lower-level
//! endpoint (`ReadSecretRequest` with `vaultrs::api::exec_with_result`)
//! because the high-level `kv2::read` drops the version metadata. The client
//! is assembled from its public parts around a `reqwest` client built here,
//! so TLS settings are fully under this module's control and no
//! `VAULT_*` environment variable is read.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;
use tokio::time::Instant;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::api::kv2::responses::{ReadSecretMetadataResponse, ReadSecretResponse};
use vaultrs::api::{AuthInfo, EndpointMiddleware};
use vaultrs::client::{VaultClient, VaultClientSettings};
use vaultrs::error::ClientError;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{NewSecret, Page, SecretMeta, SecretRecord, SecretStore, SecretValue, StoreError, validate_name};

/// Default KV v2 mount.
pub const DEFAULT_MOUNT: &str = "secret";
/// Default path prefix under the mount.
pub const DEFAULT_PREFIX: &str = "kbs";
/// Default AppRole auth mount.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";
/// Default Kubernetes auth mount.
pub const DEFAULT_KUBERNETES_MOUNT: &str = "kubernetes";
/// Where Kubernetes mounts a pod's service-account token.
pub const DEFAULT_KUBERNETES_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Default timeout of one HTTP request to the store.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most server addresses one store may list (the nodes of one cluster).
pub const MAX_ADDRESSES: usize = 16;
/// How long a write whose outcome is unknown (the node died before it
/// answered) is retried and checked before it is reported as unavailable.
const WRITE_OUTCOME_BUDGET: Duration = Duration::from_secs(20);
/// Pause between checks of a write's outcome.
const WRITE_OUTCOME_PAUSE: Duration = Duration::from_millis(200);
/// Largest page [`SecretStore::list`] returns; larger limits are lowered.
pub const MAX_PAGE: usize = 1000;
/// Credential files (secret ID, JWT) larger than this are refused.
const MAX_CREDENTIAL_FILE_BYTES: u64 = 64 * 1024;
/// KV folders deeper than a valid name can be are not walked.
const MAX_DEPTH: usize = 16;

/// How the store authenticates to Vault / OpenBao.
#[derive(Clone, Debug)]
pub enum VaultAuth {
    /// A token given by the operator. Its `Debug` shows no part of it.
    Token(SecretString),
    /// AppRole login.
    AppRole {
        /// Auth mount (default [`DEFAULT_APPROLE_MOUNT`]).
        mount: String,
        /// The role ID (an identifier, not a secret).
        role_id: String,
        /// File holding the secret ID; read at every login.
        secret_id_file: PathBuf,
    },
    /// Kubernetes service-account login (or any auth method whose login is
    /// `POST auth/{mount}/login` with `role` and `jwt`, such as `jwt`).
    Kubernetes {
        /// Auth mount (default [`DEFAULT_KUBERNETES_MOUNT`]).
        mount: String,
        /// The role to log in as.
        role: String,
        /// File holding the JWT; read at every login.
        jwt_file: PathBuf,
    },
}

impl VaultAuth {
    /// AppRole login on the default mount.
    pub fn approle(role_id: impl Into<String>, secret_id_file: impl Into<PathBuf>) -> Self {
        Self::AppRole {
            mount: DEFAULT_APPROLE_MOUNT.to_owned(),
            role_id: role_id.into(),
            secret_id_file: secret_id_file.into(),
        }
    }

    /// Kubernetes login on the default mount with the pod's service-account
    /// token ([`DEFAULT_KUBERNETES_JWT_FILE`]).
    pub fn kubernetes(role: impl Into<String>) -> Self {
        Self::Kubernetes {
            mount: DEFAULT_KUBERNETES_MOUNT.to_owned(),
            role: role.into(),
            jwt_file: PathBuf::from(DEFAULT_KUBERNETES_JWT_FILE),
        }
    }

    /// A token read from a file (surrounding whitespace ignored).
    pub fn token_from_file(path: &Path) -> Result<Self, ConnectError> {
        let token = read_credential_file(path).map_err(ConnectError::Config)?;
        Ok(Self::Token(SecretString::from(token.as_str())))
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::AppRole { .. } => "approle",
            Self::Kubernetes { .. } => "kubernetes",
        }
    }

    /// Whether a new token can be obtained without the operator.
    fn can_login(&self) -> bool {
        !matches!(self, Self::Token(_))
    }
}

/// Configuration of a [`VaultStore`].
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Server address, `https://host:port` (or `http://` for development).
    pub address: String,
    /// More addresses of the same cluster (the other nodes of an HA
    /// OpenBao), tried in turn when the current one does not answer; see
    /// "Several servers" in the module documentation.
    pub fallback_addresses: Vec<String>,
    /// KV v2 mount (default [`DEFAULT_MOUNT`]).
    pub mount: String,
    /// Path prefix under the mount (default [`DEFAULT_PREFIX`]; may be empty).
    pub prefix: String,
    /// Namespace (`X-Vault-Namespace`), for Vault Enterprise / OpenBao
    /// namespaces.
    pub namespace: Option<String>,
    /// PEM file of the CA certificates the server must chain to; replaces
    /// the platform trust store.
    pub ca_bundle: Option<PathBuf>,
    /// Turns certificate verification off (logs a warning). Development only.
    pub insecure_skip_verify: bool,
    /// Allows a plain `http://` address that is not on this machine (logs
    /// a warning): tokens and secrets then cross the network in clear.
    /// Without it, such an address is refused.
    pub insecure_plain_http: bool,
    /// How to authenticate.
    pub auth: VaultAuth,
    /// Timeout of one HTTP request (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
}

impl VaultConfig {
    /// A configuration with the defaults: mount `secret`, prefix `kbs`, no
    /// namespace, platform trust store, verification on, 10 s timeout.
    pub fn new(address: impl Into<String>, auth: VaultAuth) -> Self {
        Self {
            address: address.into(),
            fallback_addresses: Vec::new(),
            mount: DEFAULT_MOUNT.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            namespace: None,
            ca_bundle: None,
            insecure_skip_verify: false,
            insecure_plain_http: false,
            auth,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Why [`VaultStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is invalid (bad address, mount, CA bundle, ...).
    #[error("invalid Vault configuration: {0}")]
    Config(String),
    /// The store could not be reached or refused the login.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The Vault / OpenBao KV v2 store. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct VaultStore {
    inner: Arc<Inner>,
}

/// How to reach and log in to the server.
struct Conn {
    /// The configured address first, then the fallbacks.
    addresses: Vec<reqwest::Url>,
    /// Index of the address that answered last; requests start there.
    preferred: AtomicUsize,
    namespace: Option<String>,
    timeout: Duration,
    verify: bool,
    auth: VaultAuth,
    http: reqwest::Client,
}

struct Inner {
    conn: Conn,
    mount: String,
    prefix: String,
    session: RwLock<Arc<Session>>,
    lease: Mutex<Option<Lease>>,
    /// Serializes logins and renewals.
    refresh: tokio::sync::Mutex<()>,
    /// Wakes the renewal task when the lease changes.
    lease_changed: Arc<Notify>,
    renewal: Mutex<Option<tokio::task::AbortHandle>>,
}

/// A logged-in client. The token inside is zeroized on drop.
struct Session {
    /// One client per address, in [`Conn::addresses`] order.
    clients: Vec<VaultClient>,
    /// Increases with every login, so concurrent 403s trigger one login.
    generation: u64,
}

/// A session's client for one address, as [`Inner::call`] hands it out.
struct Endpoint {
    session: Arc<Session>,
    index: usize,
}

impl Endpoint {
    fn client(&self) -> Result<&VaultClient, Failure> {
        self.session.clients.get(self.index).ok_or(Failure::Malformed("no client for this address"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for client in &mut self.clients {
            client.settings.token.zeroize();
            client.middle.token.zeroize();
        }
    }
}

/// The current token's lease.
#[derive(Clone, Copy, Debug)]
struct Lease {
    obtained: Instant,
    duration: Duration,
    renewable: bool,
    /// The lease granted at login; a renewal granting much less means the
    /// maximum TTL is near.
    login_duration: Duration,
    /// After a failed refresh, when to try again.
    retry_at: Option<Instant>,
}

impl Lease {
    fn new(seconds: u64, renewable: bool) -> Option<Self> {
        (seconds > 0).then(|| {
            let duration = Duration::from_secs(seconds);
            Self { obtained: Instant::now(), duration, renewable, login_duration: duration, retry_at: None }
        })
    }

    fn refresh_at(&self) -> Instant {
        let due = self.obtained + self.duration.mul_f64(2.0 / 3.0);
        self.retry_at.map_or(due, |retry| retry.max(due))
    }

    fn expires_at(&self) -> Instant {
        self.obtained + self.duration
    }
}

/// What went wrong with one request, before it is given a meaning.
#[derive(Debug)]
enum Failure {
    /// The server answered with this HTTP status.
    Status(u16),
    /// No answer: connection error, timeout, broken response.
    Transport(String),
    /// No connection could be made: the request was never sent.
    Unreached(String),
    /// An answer this client does not understand.
    Malformed(&'static str),
    /// Already a store error (login failed, lock poisoned).
    Store(StoreError),
}

impl Failure {
    /// Whether another node of the cluster may answer where this one did
    /// not: no answer at all, or a server-side failure (a sealed node, a
    /// standby that lost its active node during an election, a proxy in
    /// front of a dead node). An answer about the request itself (400, 403,
    /// 404, ...) is the cluster's answer and is not asked again elsewhere.
    fn tries_next(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Unreached(_) => true,
            Self::Status(code) => matches!(code, 429 | 500 | 502 | 503 | 504),
            Self::Malformed(_) | Self::Store(_) => false,
        }
    }

    /// The store error for an operation described by `what`. 404 means
    /// "not found" only where the caller passes it through here.
    fn into_store(self, what: &str) -> StoreError {
        match self {
            Self::Status(404) => StoreError::NotFound,
            Self::Status(403) => StoreError::Unavailable(format!("{what}: permission denied by the store (HTTP 403)")),
            Self::Status(code) => StoreError::Unavailable(format!("{what}: the store answered HTTP {code}")),
            Self::Transport(cause) | Self::Unreached(cause) => StoreError::Unavailable(format!("{what}: {cause}")),
            Self::Malformed(cause) => {
                StoreError::Unavailable(format!("{what}: unexpected answer from the store ({cause})"))
            }
            Self::Store(e) => e,
        }
    }

    /// Like [`Failure::into_store`], but a 404 is not "not found" (a missing
    /// mount on a write, for example).
    fn into_store_no_404(self, what: &str) -> StoreError {
        match self {
            Self::Status(404) => {
                StoreError::Unavailable(format!("{what}: the store answered HTTP 404 (is the KV v2 mount right?)"))
            }
            other => other.into_store(what),
        }
    }
}

/// Gives a `vaultrs` error a class, from its structure only. Response bodies
/// (which may hold secret data) are never put into the message.
fn classify(e: ClientError) -> Failure {
    use rustify::errors::ClientError as Rest;
    match e {
        ClientError::APIError { code, .. } => Failure::Status(code),
        ClientError::RestClientError { source } => match source {
            Rest::ServerResponseError { code, .. } => Failure::Status(code),
            Rest::RequestError { source, .. }
                if source.downcast_ref::<reqwest::Error>().is_some_and(|e| e.is_connect()) =>
            {
                Failure::Unreached(format!("{source:#}"))
            }
            Rest::RequestError { source, .. } | Rest::ResponseError { source } => {
                Failure::Transport(format!("{source:#}"))
            }
            Rest::ResponseParseError { .. } | Rest::ResponseConversionError { .. } => {
                Failure::Malformed("response does not parse")
            }
            _ => Failure::Malformed("request could not be built"),
        },
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => Failure::Malformed("empty response"),
        ClientError::JsonParseError { .. } => Failure::Malformed("response does not decode"),
        _ => Failure::Malformed("client error"),
    }
}

/// One version's data as written.
#[derive(Serialize)]
struct StoredDataRef<'a> {
    value: &'a str,
    labels: &'a BTreeMap<String, String>,
    allowed_measurements: &'a [String],
    write_id: &'a str,
}

/// One version's data as read; the base64 value is zeroized on drop.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
struct StoredData {
    value: String,
    #[serde(default)]
    #[zeroize(skip)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[zeroize(skip)]
    allowed_measurements: Vec<String>,
    /// The random identifier of the write that made this version (empty in
    /// versions written before it existed).
    #[serde(default)]
    #[zeroize(skip)]
    write_id: String,
}

/// Whether a CAS write landed, as far as the cluster tells.
enum Outcome {
    /// Version `cas + 1` is this write: its version and creation time.
    Landed(u64, String),
    /// Another write took the version; the current version.
    Lost(u64),
    /// The current version is still the one the write expected.
    NotYet,
}

/// What `sys/leader` (unauthenticated) says about the node asked.
#[derive(Debug, Default, Deserialize)]
struct LeaderStatus {
    /// False for a server without HA (no standby can answer for it).
    #[serde(default)]
    ha_enabled: bool,
    /// Whether the node asked is the active node.
    #[serde(default)]
    is_self: bool,
    /// When the node asked became active (only on the active node); it
    /// changes whenever the node becomes active again.
    #[serde(default)]
    active_time: String,
    /// The active node's API address (empty during an election).
    #[serde(default)]
    leader_address: String,
}

impl LeaderStatus {
    /// The address the status names as the active node's, if it parses.
    fn leader(&self) -> Option<reqwest::Url> {
        reqwest::Url::parse(&self.leader_address).ok()
    }

    /// Whether the node that gave this status at `address` is the active
    /// node, and `address` is its own (the API address it advertises), so
    /// that `address` reaches this node and no other (not a load balancer
    /// in front of several).
    fn is_active_at(&self, address: &reqwest::Url) -> bool {
        self.ha_enabled && self.is_self && !self.active_time.is_empty() && self.leader().as_ref() == Some(address)
    }
}

/// Who can confirm a "not found" that a node gave.
#[derive(Debug, PartialEq, Eq)]
enum Confirmer {
    /// A server without HA: its answer is the only one.
    None,
    /// The node at this index of the configured addresses is the active
    /// node, as far as the status tells.
    At(usize),
    /// No configured address reaches the active node (or there is none).
    Unreachable(String),
}

/// Reads a node's leader status into a [`Confirmer`]: the configured
/// address that is the active node's own.
fn confirmer(status: &LeaderStatus, addresses: &[reqwest::Url]) -> Confirmer {
    if !status.ha_enabled {
        return Confirmer::None;
    }
    if status.leader_address.is_empty() {
        return Confirmer::Unreachable("the cluster has no active node".into());
    }
    let leader = status.leader();
    match leader.and_then(|leader| addresses.iter().position(|a| *a == leader)) {
        Some(index) => Confirmer::At(index),
        None => Confirmer::Unreachable(format!(
            "the active node's address ({}) is not among the configured addresses{}",
            status.leader_address.chars().take(256).collect::<String>(),
            if status.is_self { " (is the address a load balancer?)" } else { "" },
        )),
    }
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("addresses", &self.inner.conn.addresses.iter().map(reqwest::Url::as_str).collect::<Vec<_>>())
            .field("mount", &self.inner.mount)
            .field("prefix", &self.inner.prefix)
            .field("namespace", &self.inner.conn.namespace)
            .field("auth", &self.inner.conn.auth.kind())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut task) = self.renewal.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

/// An error and its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("store session lock poisoned".into())
}

/// Reads a credential file: at most 64 KiB, surrounding whitespace removed,
/// only visible ASCII (it is sent in a header or a JSON string).
fn read_credential_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut raw = Zeroizing::new(Vec::new());
    file.take(MAX_CREDENTIAL_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if u64::try_from(raw.len()).unwrap_or(u64::MAX) > MAX_CREDENTIAL_FILE_BYTES {
        return Err(format!("{} is larger than 64 KiB", path.display()));
    }
    let text = std::str::from_utf8(&raw).map_err(|_| format!("{} is not UTF-8", path.display()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if !is_header_safe(trimmed) {
        return Err(format!("{} holds characters other than visible ASCII", path.display()));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// Visible ASCII only, so the text is a valid HTTP header value.
fn is_header_safe(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks a mount or prefix: segments of the name grammar, slashes trimmed.
fn normalize_path(what: &str, path: &str, allow_empty: bool) -> Result<String, ConnectError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return if allow_empty { Ok(String::new()) } else { Err(ConnectError::Config(format!("{what} is empty"))) };
    }
    validate_name(trimmed).map_err(|e| ConnectError::Config(format!("{what} {trimmed:?}: {e}")))?;
    Ok(trimmed.to_owned())
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Whether a version is neither destroyed nor (already) soft-deleted. A
/// deletion time in the future (`delete_version_after`) is not yet a
/// deletion; one that does not parse counts as a deletion.
fn is_live(deletion_time: &str, destroyed: bool, now: OffsetDateTime) -> bool {
    !destroyed && (deletion_time.is_empty() || parse_time(deletion_time).is_some_and(|t| t > now))
}

/// The versions still kept and not deleted, ascending.
fn live_versions(meta: &ReadSecretMetadataResponse) -> Vec<u64> {
    let now = OffsetDateTime::now_utc();
    let mut versions: Vec<u64> = meta
        .versions
        .iter()
        .filter(|(_, v)| is_live(&v.deletion_time, v.destroyed, now))
        .filter_map(|(k, _)| k.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
}

/// Whether the current version of a secret can be served.
fn current_is_live(meta: &ReadSecretMetadataResponse) -> bool {
    meta.current_version > 0
        && meta
            .versions
            .get(&meta.current_version.to_string())
            .is_some_and(|v| is_live(&v.deletion_time, v.destroyed, OffsetDateTime::now_utc()))
}

/// The deepest folder wholly inside `prefix` (`"a/b/"` for `"a/b/c"`), where
/// a listing can start; the root if that folder is not a valid name.
fn start_folder(prefix: &str) -> String {
    match prefix.rsplit_once('/') {
        Some((dir, _)) if validate_name(dir).is_ok() => format!("{dir}/"),
        _ => String::new(),
    }
}

/// Whether a folder (ending in `/`) may hold names matching the listing.
fn folder_wanted(folder: &str, prefix: &str, after: Option<&str>) -> bool {
    (folder.starts_with(prefix) || prefix.starts_with(folder))
        // Every name in the folder extends it: all are after `after` if the
        // folder is, and none is if the folder sorts before `after` without
        // being a prefix of it.
        && after.is_none_or(|a| folder > a || a.starts_with(folder))
}

fn name_wanted(name: &str, prefix: &str, after: Option<&str>) -> bool {
    name.starts_with(prefix) && after.is_none_or(|a| name > a) && validate_name(name).is_ok()
}

#[derive(Clone, Copy)]
enum VersionsOp {
    Destroy,
    Undelete,
}

enum Node {
    Folder(String),
    Leaf(String),
}

impl VaultStore {
    /// Validates the configuration, builds the HTTP client, logs in (or
    /// looks the token up) and starts the renewal task. Must be called
    /// inside a Tokio runtime.
    pub async fn connect(config: VaultConfig) -> Result<Self, ConnectError> {
        let mut addresses = Vec::with_capacity(1 + config.fallback_addresses.len());
        for text in std::iter::once(&config.address).chain(&config.fallback_addresses) {
            let address = parse_address(text)?;
            if addresses.contains(&address) {
                return Err(ConnectError::Config(format!("address {text:?} is listed twice")));
            }
            addresses.push(address);
        }
        if addresses.len() > MAX_ADDRESSES {
            return Err(ConnectError::Config(format!("at most {MAX_ADDRESSES} addresses")));
        }
        let mount = normalize_path("mount", &config.mount, false)?;
        let prefix = normalize_path("prefix", &config.prefix, true)?;
        if let Some(ns) = &config.namespace
            && (ns.is_empty() || !is_header_safe(ns))
        {
            return Err(ConnectError::Config("namespace must be non-empty visible ASCII".into()));
        }
        if config.request_timeout.is_zero() {
            return Err(ConnectError::Config("request_timeout must be positive".into()));
        }
        let http = build_http_client(&config, &addresses)?;
        let auth = match config.auth {
            VaultAuth::Token(token) => {
                if token.expose_secret().is_empty() || !is_header_safe(token.expose_secret()) {
                    return Err(ConnectError::Config("token must be non-empty visible ASCII".into()));
                }
                VaultAuth::Token(token)
            }
            VaultAuth::AppRole { mount, role_id, secret_id_file } => {
                if role_id.is_empty() || !is_header_safe(&role_id) {
                    return Err(ConnectError::Config("AppRole role_id must be non-empty visible ASCII".into()));
                }
                VaultAuth::AppRole { mount: normalize_path("AppRole mount", &mount, false)?, role_id, secret_id_file }
            }
            VaultAuth::Kubernetes { mount, role, jwt_file } => {
                if role.is_empty() {
                    return Err(ConnectError::Config("Kubernetes role is empty".into()));
                }
                VaultAuth::Kubernetes { mount: normalize_path("Kubernetes auth mount", &mount, false)?, role, jwt_file }
            }
        };
        let conn = Conn {
            addresses,
            preferred: AtomicUsize::new(0),
            namespace: config.namespace,
            timeout: config.request_timeout,
            verify: !config.insecure_skip_verify,
            auth,
            http,
        };
        let (token, lease) = conn.login().await?;
        conn.check_kv2_mount(&token, &mount).await?;
        let session = Session { clients: conn.clients(&token), generation: 1 };
        let inner = Arc::new(Inner {
            conn,
            mount,
            prefix,
            session: RwLock::new(Arc::new(session)),
            lease: Mutex::new(lease),
            refresh: tokio::sync::Mutex::new(()),
            lease_changed: Arc::new(Notify::new()),
            renewal: Mutex::new(None),
        });
        let task = tokio::spawn(renewal_loop(Arc::downgrade(&inner)));
        *inner.renewal.lock().map_err(|_| poisoned())? = Some(task.abort_handle());
        tracing::info!(
            address = %inner.conn.addresses.iter().map(reqwest::Url::as_str).collect::<Vec<_>>().join(", "),
            mount = %inner.mount,
            prefix = %inner.prefix,
            auth = inner.conn.auth.kind(),
            "connected to the Vault/OpenBao secret store"
        );
        Ok(Self { inner })
    }

    /// Soft-deletes the latest version (KV "delete"): it stops being served
    /// and can be undeleted. Deleting an already deleted version succeeds.
    pub async fn soft_delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let path = self.inner.kv_path(name);
        self.inner.read_metadata_confirmed(&path).await?.ok_or(StoreError::NotFound)?;
        let (mount, path) = (self.inner.mount.as_str(), path.as_str());
        self.inner
            .call(|s| async move { vaultrs::kv2::delete_latest(s.client()?, mount, path).await.map_err(classify) })
            .await
            .map_err(|f| f.into_store("soft-deleting secret"))
    }

    /// Destroys versions for good (their data is removed; the version
    /// numbers stay in the metadata as destroyed).
    pub async fn destroy_versions(&self, name: &str, versions: &[u64]) -> Result<(), StoreError> {
        self.versions_op(name, versions, VersionsOp::Destroy).await
    }

    /// Undeletes soft-deleted versions.
    pub async fn undelete_versions(&self, name: &str, versions: &[u64]) -> Result<(), StoreError> {
        self.versions_op(name, versions, VersionsOp::Undelete).await
    }

    async fn versions_op(&self, name: &str, versions: &[u64], op: VersionsOp) -> Result<(), StoreError> {
        validate_name(name)?;
        let path = self.inner.kv_path(name);
        self.inner.read_metadata_confirmed(&path).await?.ok_or(StoreError::NotFound)?;
        if versions.is_empty() {
            return Ok(());
        }
        let (mount, path) = (self.inner.mount.as_str(), path.as_str());
        self.inner
            .call(|s| async move {
                let versions = versions.to_vec();
                match op {
                    VersionsOp::Destroy => vaultrs::kv2::destroy_versions(s.client()?, mount, path, versions).await,
                    VersionsOp::Undelete => vaultrs::kv2::undelete_versions(s.client()?, mount, path, versions).await,
                }
                .map_err(classify)
            })
            .await
            .map_err(|f| {
                f.into_store(match op {
                    VersionsOp::Destroy => "destroying versions",
                    VersionsOp::Undelete => "undeleting versions",
                })
            })
    }
}

fn assemble_client(
    address: &reqwest::Url,
    http: reqwest::Client,
    token: String,
    namespace: Option<String>,
    timeout: Duration,
    verify: bool,
) -> VaultClient {
    let middle =
        EndpointMiddleware { token: token.clone(), version: "v1".to_owned(), wrap: None, namespace: namespace.clone() };
    let settings = VaultClientSettings {
        address: address.clone(),
        ca_certs: Vec::new(),
        identity: None,
        timeout: Some(timeout),
        token,
        verify,
        version: 1,
        wrapping: false,
        namespace,
        proxy: None,
    };
    VaultClient { http: rustify::clients::reqwest::Client::new(address.as_str(), http), middle, settings }
}

/// Checks one server address: `http(s)://host[:port]`, nothing more.
fn parse_address(text: &str) -> Result<reqwest::Url, ConnectError> {
    let address =
        reqwest::Url::parse(text.trim()).map_err(|e| ConnectError::Config(format!("address {text:?}: {e}")))?;
    if !matches!(address.scheme(), "http" | "https") || address.host_str().is_none() {
        return Err(ConnectError::Config(format!("address {text:?} is not an http(s) URL")));
    }
    if address.path() != "/"
        || address.query().is_some()
        || address.fragment().is_some()
        || !address.username().is_empty()
        || address.password().is_some()
    {
        return Err(ConnectError::Config(format!(
            "address {text:?} must be scheme://host[:port] without path, query or credentials"
        )));
    }
    Ok(address)
}

fn build_http_client(config: &VaultConfig, addresses: &[reqwest::Url]) -> Result<reqwest::Client, ConnectError> {
    let mut builder = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none());
    if config.insecure_skip_verify {
        tracing::warn!(
            "TLS certificate verification of the Vault/OpenBao server is DISABLED (insecure_skip_verify); \
             anyone on the network path can read secrets and tokens"
        );
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some(path) = &config.ca_bundle {
        let pem = std::fs::read(path)
            .map_err(|e| ConnectError::Config(format!("reading CA bundle {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ConnectError::Config(format!("CA bundle {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ConnectError::Config(format!("CA bundle {} holds no certificate", path.display())));
        }
        builder = builder.tls_certs_only(certs);
    } else if addresses.iter().all(|a| a.scheme() == "http") {
        // No TLS is used, so the platform trust store need not be loaded
        // (it may be missing in minimal containers).
        builder = builder.tls_certs_only(Vec::new());
    }
    for address in addresses {
        if address.scheme() == "http" && !crate::fetch::is_loopback(address) {
            if !config.insecure_plain_http {
                return Err(ConnectError::Config(format!(
                    "{address} is plain http to another machine: tokens and secrets would cross the network in \
                     clear (use https, or set insecure_plain_http for a development set-up)"
                )));
            }
            tracing::warn!(address = %address, "INSECURE: the Vault/OpenBao address is plain http: tokens and secrets cross the network in clear");
        }
    }
    builder.build().map_err(|e| ConnectError::Config(format!("building the HTTP client: {e}")))
}

/// Renews or re-obtains the token ahead of expiry, until the store is
/// dropped or there is nothing left to renew.
async fn renewal_loop(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let Some(at) = strong.next_refresh() else { return };
        let lease_changed = Arc::clone(&strong.lease_changed);
        drop(strong);
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = lease_changed.notified() => continue,
        }
        let Some(strong) = inner.upgrade() else { return };
        if let Err(e) = strong.refresh().await {
            tracing::warn!(error = %e, "refreshing the Vault/OpenBao token failed; will retry");
            strong.note_refresh_failure();
        }
    }
}

impl Conn {
    /// Checks that `mount` is a KV version 2 engine the identity can use, so
    /// that a wrong mount fails at start instead of answering "not found".
    /// `vaultrs` has no call for `sys/internal/ui/mounts/{mount}` (the
    /// endpoint the Vault CLI uses for this, open to any token with some
    /// capability under the mount), so this is a direct request.
    async fn check_kv2_mount(&self, token: &SecretString, mount: &str) -> Result<(), ConnectError> {
        let count = self.addresses.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = ConnectError::Config("no server address".into());
        for step in 0..count {
            let Some(address) = self.addresses.get((start + step) % count) else { break };
            match self.check_kv2_mount_at(address, token, mount).await {
                // Not reachable there: another node may answer.
                Err(ConnectError::Store(e)) => last = ConnectError::Store(e),
                answer => return answer,
            }
        }
        Err(last)
    }

    async fn check_kv2_mount_at(
        &self,
        address: &reqwest::Url,
        token: &SecretString,
        mount: &str,
    ) -> Result<(), ConnectError> {
        #[derive(Deserialize)]
        struct MountInfo {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            options: Option<serde_json::Map<String, serde_json::Value>>,
        }
        #[derive(Deserialize)]
        struct Response {
            data: MountInfo,
        }
        let url = address
            .join(&format!("v1/sys/internal/ui/mounts/{mount}"))
            .map_err(|e| ConnectError::Config(format!("mount {mount:?}: {e}")))?;
        let mut request = self.http.get(url).header("X-Vault-Token", token.expose_secret());
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        let response = request
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("checking the KV mount: {}", error_chain(&e))))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            400 | 403 | 404 => {
                return Err(ConnectError::Config(format!(
                    "mount {mount:?} does not exist or this identity has no access to it (HTTP {status})"
                )));
            }
            _ => return Err(Failure::Status(status).into_store("checking the KV mount").into()),
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| StoreError::Unavailable(format!("checking the KV mount: {}", error_chain(&e))))?;
        let info: Response = serde_json::from_slice(&body)
            .map_err(|_| StoreError::Unavailable("checking the KV mount: unexpected answer from the store".into()))?;
        let version = info.data.options.as_ref().and_then(|o| o.get("version")).and_then(serde_json::Value::as_str);
        if info.data.kind != "kv" || version != Some("2") {
            return Err(ConnectError::Config(format!(
                "mount {mount:?} is a {:?} engine (version {version:?}), not KV version 2",
                info.data.kind
            )));
        }
        Ok(())
    }

    /// `sys/leader` of the node at `index`; unauthenticated, so no token
    /// is sent.
    async fn leader_status(&self, index: usize) -> Result<LeaderStatus, Failure> {
        let address = self.addresses.get(index).ok_or(Failure::Malformed("no server address"))?;
        let url = address.join("v1/sys/leader").map_err(|_| Failure::Malformed("request could not be built"))?;
        let response = self.http.get(url).send().await.map_err(|e| {
            if e.is_connect() { Failure::Unreached(error_chain(&e)) } else { Failure::Transport(error_chain(&e)) }
        })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(Failure::Status(status));
        }
        let body = response.bytes().await.map_err(|e| Failure::Transport(error_chain(&e)))?;
        serde_json::from_slice(&body).map_err(|_| Failure::Malformed("leader status does not decode"))
    }

    /// One client per address, each sending `token` (none if empty).
    fn clients(&self, token: &SecretString) -> Vec<VaultClient> {
        self.addresses.iter().map(|address| self.client_for(address, token)).collect()
    }

    fn client_for(&self, address: &reqwest::Url, token: &SecretString) -> VaultClient {
        assemble_client(
            address,
            self.http.clone(),
            token.expose_secret().to_owned(),
            self.namespace.clone(),
            self.timeout,
            self.verify,
        )
    }

    /// Runs `op` against the addresses in turn, starting with the one that
    /// answered last, until one gives an answer (see [`Failure::tries_next`]).
    /// The address that answered becomes the first to try next time. When
    /// none answers, the failure is a node's status if any gave one, else a
    /// [`Failure::Transport`] if any took the request, so a
    /// [`Failure::Unreached`] means that no node could be reached at all.
    async fn on_any<T, F, Fut>(&self, op: F) -> Result<T, Failure>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let count = self.addresses.len().max(1);
        let start = self.preferred.load(Ordering::Relaxed) % count;
        let mut last = Failure::Malformed("no server address");
        for step in 0..count {
            let index = (start + step) % count;
            match op(index).await {
                Err(failure) if failure.tries_next() => {
                    if count > 1 {
                        tracing::debug!(address = %self.address_text(index), failure = ?failure, "the store did not answer; trying the next address");
                    }
                    let rank = |f: &Failure| match f {
                        Failure::Status(_) => 2,
                        Failure::Transport(_) => 1,
                        _ => 0,
                    };
                    if rank(&failure) >= rank(&last) {
                        last = failure;
                    }
                }
                answer => {
                    if index != start && self.preferred.swap(index, Ordering::Relaxed) != index {
                        tracing::info!(address = %self.address_text(index), "the Vault/OpenBao store answers at another address now");
                    }
                    return answer;
                }
            }
        }
        Err(last)
    }

    fn address_text(&self, index: usize) -> &str {
        self.addresses.get(index).map_or("", reqwest::Url::as_str)
    }

    /// Logs in and returns the token and its lease. For token auth, looks
    /// the given token up. Tries every address (see [`Conn::on_any`]).
    async fn login(&self) -> Result<(SecretString, Option<Lease>), StoreError> {
        let what = match &self.auth {
            VaultAuth::Token(_) => "looking up the Vault token",
            VaultAuth::AppRole { .. } => "AppRole login",
            VaultAuth::Kubernetes { .. } => "Kubernetes login",
        };
        self.on_any(|index| self.login_at(index)).await.map_err(|f| f.into_store_no_404(what))
    }

    async fn login_at(&self, index: usize) -> Result<(SecretString, Option<Lease>), Failure> {
        let address = self.addresses.get(index).ok_or(Failure::Malformed("no server address"))?;
        let anonymous = self.client_for(address, &SecretString::from(""));
        let auth: AuthInfo = match &self.auth {
            VaultAuth::Token(token) => {
                let client = self.client_for(address, token);
                let info = vaultrs::token::lookup_self(&client).await.map_err(classify)?;
                return Ok((token.clone(), Lease::new(info.ttl, info.renewable.unwrap_or(false))));
            }
            VaultAuth::AppRole { mount, role_id, secret_id_file } => {
                let secret_id =
                    read_credential_file(secret_id_file).map_err(|e| Failure::Store(StoreError::Unavailable(e)))?;
                vaultrs::auth::approle::login(&anonymous, mount, role_id, &secret_id).await.map_err(classify)?
            }
            VaultAuth::Kubernetes { mount, role, jwt_file } => {
                let jwt = read_credential_file(jwt_file).map_err(|e| Failure::Store(StoreError::Unavailable(e)))?;
                vaultrs::auth::kubernetes::login(&anonymous, mount, role, &jwt).await.map_err(classify)?
            }
        };
        Ok(session_from_auth(auth))
    }
}

impl Inner {
    fn kv_path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_owned() } else { format!("{}/{name}", self.prefix) }
    }

    /// The KV path of a folder of names (`""` or ending in `/`).
    fn kv_folder(&self, folder: &str) -> String {
        if self.prefix.is_empty() { folder.to_owned() } else { format!("{}/{folder}", self.prefix) }
    }

    fn session(&self) -> Result<Arc<Session>, StoreError> {
        self.session.read().map(|s| Arc::clone(&s)).map_err(|_| poisoned())
    }

    /// Runs one request; on HTTP 403 logs in again (once, shared with
    /// concurrent requests) and retries once.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, Failure>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let session = self.session().map_err(Failure::Store)?;
        let generation = session.generation;
        let on = |session: Arc<Session>| {
            let op = &op;
            self.conn.on_any(move |index| op(Endpoint { session: Arc::clone(&session), index }))
        };
        match on(session).await {
            Err(Failure::Status(403)) if self.conn.auth.can_login() => {
                tracing::info!("the store denied a request; logging in again and retrying once");
                self.relogin_after_denial(generation).await.map_err(Failure::Store)?;
                on(self.session().map_err(Failure::Store)?).await
            }
            other => other,
        }
    }

    /// Logs in again and installs the new session. Caller holds `refresh`.
    async fn relogin_locked(&self) -> Result<(), StoreError> {
        let (token, lease) = self.conn.login().await?;
        let generation = self.session()?.generation.saturating_add(1);
        let session = Arc::new(Session { clients: self.conn.clients(&token), generation });
        *self.session.write().map_err(|_| poisoned())? = session;
        *self.lease.lock().map_err(|_| poisoned())? = lease;
        self.lease_changed.notify_one();
        tracing::debug!(generation, "logged in to the Vault/OpenBao store");
        Ok(())
    }

    async fn relogin_after_denial(&self, seen_generation: u64) -> Result<(), StoreError> {
        let _guard = self.refresh.lock().await;
        if self.session()?.generation != seen_generation {
            // Another request already logged in again.
            return Ok(());
        }
        self.relogin_locked().await
    }

    /// When the renewal task should next act, if ever.
    fn next_refresh(&self) -> Option<Instant> {
        let lease = (*self.lease.lock().ok()?)?;
        if !self.conn.auth.can_login() {
            if !lease.renewable {
                tracing::warn!(
                    expires_in_secs = lease.expires_at().saturating_duration_since(Instant::now()).as_secs(),
                    "the configured Vault token is not renewable; the store becomes unavailable when it expires"
                );
                return None;
            }
            if lease.expires_at() <= Instant::now() {
                tracing::warn!("the configured Vault token has expired; the store is unavailable");
                return None;
            }
        }
        Some(lease.refresh_at())
    }

    fn note_refresh_failure(&self) {
        if let Ok(mut lease) = self.lease.lock()
            && let Some(lease) = lease.as_mut()
        {
            let backoff = (lease.duration / 10).clamp(Duration::from_millis(500), Duration::from_secs(30));
            lease.retry_at = Some(Instant::now() + backoff);
        }
    }

    /// Renews the token if due, or logs in again when renewal is not
    /// possible or no longer worthwhile.
    async fn refresh(&self) -> Result<(), StoreError> {
        let _guard = self.refresh.lock().await;
        let Some(lease) = *self.lease.lock().map_err(|_| poisoned())? else { return Ok(()) };
        if Instant::now() < lease.obtained + lease.duration.mul_f64(2.0 / 3.0) {
            return Ok(());
        }
        if lease.renewable {
            // Not through `call`: a 403 here must not log in again while
            // the `refresh` lock is held; it falls through to a new login.
            let session = self.session()?;
            let renewed = self.conn.on_any(|index| {
                let endpoint = Endpoint { session: Arc::clone(&session), index };
                async move { vaultrs::token::renew_self(endpoint.client()?, None).await.map_err(classify) }
            });
            match renewed.await {
                Ok(mut auth) => {
                    auth.client_token.zeroize();
                    let renewed = Lease::new(auth.lease_duration, auth.renewable)
                        .map(|l| Lease { login_duration: lease.login_duration, ..l });
                    let worthwhile = renewed.is_some_and(|l| l.duration * 2 >= lease.login_duration);
                    if worthwhile || !self.conn.auth.can_login() {
                        *self.lease.lock().map_err(|_| poisoned())? = renewed;
                        tracing::debug!(lease_secs = auth.lease_duration, "renewed the Vault/OpenBao token");
                        return Ok(());
                    }
                }
                Err(e) => {
                    let e = e.into_store_no_404("renewing the Vault token");
                    if !self.conn.auth.can_login() {
                        return Err(e);
                    }
                    tracing::info!(error = %e, "token renewal failed; logging in again");
                }
            }
        } else if !self.conn.auth.can_login() {
            return Ok(());
        }
        self.relogin_locked().await
    }

    /// The metadata of a KV path; `None` if the node asked has none. That
    /// node may lag: enough to choose a check-and-set version (the write
    /// goes to the active node, which checks it), not to answer "not
    /// found" (see [`Inner::read_metadata_confirmed`]).
    async fn read_metadata(&self, path: &str) -> Result<Option<ReadSecretMetadataResponse>, StoreError> {
        let mount = self.mount.as_str();
        match self
            .call(|s| async move { vaultrs::kv2::read_metadata(s.client()?, mount, path).await.map_err(classify) })
            .await
        {
            Ok(meta) => Ok(Some(meta)),
            Err(Failure::Status(404)) => Ok(None),
            Err(f) => Err(f.into_store("reading secret metadata")),
        }
    }

    /// The metadata of a KV path; `None` if there is none, as the active
    /// node confirms ([`Inner::confirm_not_found`]).
    async fn read_metadata_confirmed(&self, path: &str) -> Result<Option<ReadSecretMetadataResponse>, StoreError> {
        let mount = self.mount.as_str();
        let asked = AtomicUsize::new(usize::MAX);
        let read = |s: Endpoint| {
            let asked = &asked;
            async move {
                let meta = vaultrs::kv2::read_metadata(s.client()?, mount, path).await.map_err(classify);
                if matches!(meta, Err(Failure::Status(404))) {
                    asked.store(s.index, Ordering::Relaxed);
                }
                meta
            }
        };
        match self.call(&read).await {
            Ok(meta) => Ok(Some(meta)),
            Err(Failure::Status(404)) => {
                self.confirm_not_found(asked.load(Ordering::Relaxed), &read, "reading secret metadata").await
            }
            Err(f) => Err(f.into_store("reading secret metadata")),
        }
    }

    /// Runs `op` once on the node at `index`, without trying another.
    async fn call_at<T, F, Fut>(&self, index: usize, op: F) -> Result<T, Failure>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        op(Endpoint { session: self.session().map_err(Failure::Store)?, index }).await
    }

    /// Confirms the 404 that node `asked` gave to the read `op`, and returns
    /// what the active node answers to it instead: `Some` if it has the
    /// data, `None` if it confirms the 404.
    ///
    /// A standby serving reads (OpenBao's default, `disable_standby_reads =
    /// false`) answers from its own copy of the data, which may lag the
    /// active node: its 404 may be a secret written a moment ago. So the
    /// read is asked again of the node that `sys/leader` names as active,
    /// between two `sys/leader` calls to that node that both say it is
    /// active, since the same `active_time`: it was active all along, and
    /// the active node has every acknowledged write. A server without HA
    /// needs no confirmation. When the active node is not among the
    /// configured addresses, there is none (election), or it changes
    /// meanwhile, the store cannot tell: [`StoreError::Unavailable`], never
    /// [`StoreError::NotFound`].
    async fn confirm_not_found<T, F, Fut>(&self, asked: usize, op: F, what: &str) -> Result<Option<T>, StoreError>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let unconfirmed =
            |why: String| StoreError::Unavailable(format!("{what}: a node answered \"not found\", and {why}"));
        let status_of = |index: usize| async move {
            self.conn.leader_status(index).await.map_err(|f| match f.into_store_no_404("reading the leader status") {
                StoreError::Unavailable(cause) => {
                    unconfirmed(format!("the active node could not confirm it ({cause})"))
                }
                other => other,
            })
        };
        let status = status_of(asked).await?;
        let target = match confirmer(&status, &self.conn.addresses) {
            Confirmer::None => return Ok(None),
            Confirmer::At(index) => index,
            Confirmer::Unreachable(why) => return Err(unconfirmed(why)),
        };
        let address = self.conn.addresses.get(target).ok_or_else(|| unconfirmed("no server address".into()))?;
        let before = if target == asked { status } else { status_of(target).await? };
        if !before.is_active_at(address) {
            return Err(unconfirmed(format!("{} does not say it is the active node", self.conn.address_text(target))));
        }
        let answer = self.call_at(target, op).await;
        let after = status_of(target).await?;
        if !after.is_active_at(address) || after.active_time != before.active_time {
            return Err(unconfirmed("the active node changed while it was asked".into()));
        }
        match answer {
            Ok(found) => {
                tracing::debug!(
                    node = %self.conn.address_text(asked),
                    "a node lagging behind the active node answered \"not found\"; the active node has the data"
                );
                Ok(Some(found))
            }
            Err(Failure::Status(404)) => Ok(None),
            Err(f) => Err(f.into_store_no_404(what)),
        }
    }

    /// Whether the CAS write with `write_id` that expected version `cas`
    /// landed.
    async fn write_outcome(&self, path: &str, cas: u64, write_id: &str) -> Result<Outcome, Failure> {
        let (mount, kv_path) = (self.mount.as_str(), path);
        let meta = match self
            .call(|s| async move { vaultrs::kv2::read_metadata(s.client()?, mount, kv_path).await.map_err(classify) })
            .await
        {
            Ok(meta) => Some(meta),
            Err(Failure::Status(404)) if cas == 0 => None,
            // The secret existed when the write was sent: a node that has
            // just become active may not serve the mount yet. Asked again.
            Err(f) => return Err(f),
        };
        let current = meta.as_ref().map_or(0, |m| m.current_version);
        if current == cas {
            return Ok(Outcome::NotYet);
        }
        let Some(next) = cas.checked_add(1).filter(|next| *next <= current) else {
            // Fewer versions than expected: deleted meanwhile.
            return Ok(Outcome::Lost(current));
        };
        let response: Result<ReadSecretResponse, Failure> = self
            .call(|s| async move {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount)
                    .path(kv_path)
                    .version(Some(next))
                    .build()
                    .map_err(|_| Failure::Malformed("request could not be built"))?;
                vaultrs::api::exec_with_result(s.client()?, endpoint).await.map_err(classify)
            })
            .await;
        match response {
            Ok(response) => {
                let ours = serde_json::from_value::<StoredData>(response.data).is_ok_and(|d| d.write_id == write_id);
                Ok(if ours { Outcome::Landed(next, response.metadata.created_time) } else { Outcome::Lost(current) })
            }
            Err(Failure::Status(404)) => {
                let listed = meta.as_ref().and_then(|m| m.versions.get(&next.to_string()));
                if listed.is_some_and(|v| is_live(&v.deletion_time, v.destroyed, OffsetDateTime::now_utc())) {
                    // Listed as live, yet not found: a node that lags.
                    Ok(Outcome::NotYet)
                } else {
                    // Destroyed or pruned since: whoever wrote it, it is not
                    // served.
                    Ok(Outcome::Lost(current))
                }
            }
            Err(f) => Err(f),
        }
    }

    /// The current version of a secret with its data, if it can be served.
    /// With `confirm`, a "not found" is confirmed by the active node
    /// ([`Inner::confirm_not_found`]); without, it is the answering node's
    /// (for a listing, which is only as fresh as the node that lists).
    async fn read_current(&self, name: &str, confirm: bool) -> Result<SecretRecord, StoreError> {
        validate_name(name)?;
        let path = self.kv_path(name);
        let (mount, kv_path) = (self.mount.as_str(), path.as_str());
        let asked = AtomicUsize::new(usize::MAX);
        let read = |s: Endpoint| {
            let asked = &asked;
            async move {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount)
                    .path(kv_path)
                    .build()
                    .map_err(|_| Failure::Malformed("request could not be built"))?;
                let response: Result<ReadSecretResponse, Failure> =
                    vaultrs::api::exec_with_result(s.client()?, endpoint).await.map_err(classify);
                if matches!(response, Err(Failure::Status(404))) {
                    asked.store(s.index, Ordering::Relaxed);
                }
                response
            }
        };
        let response = match self.call(&read).await {
            Ok(response) => response,
            Err(Failure::Status(404)) if confirm => self
                .confirm_not_found(asked.load(Ordering::Relaxed), &read, "reading secret")
                .await?
                .ok_or(StoreError::NotFound)?,
            Err(f) => return Err(f.into_store("reading secret")),
        };
        let version = response.metadata;
        if !is_live(&version.deletion_time, version.destroyed, OffsetDateTime::now_utc()) {
            return Err(StoreError::NotFound);
        }
        let created_at = parse_time(&version.created_time)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("{name}: version {} has no valid created_time", version.version))
            })?
            .unix_timestamp();
        let stored: StoredData = serde_json::from_value(response.data)
            .map_err(|_| StoreError::Corrupt(format!("{name}: version {} is not a kbs secret", version.version)))?;
        let value = B64
            .decode(stored.value.as_bytes())
            .map(SecretValue::new)
            .map_err(|_| StoreError::Corrupt(format!("{name}: version {} value is not base64", version.version)))?;
        let meta = if confirm { self.read_metadata_confirmed(&path).await? } else { self.read_metadata(&path).await? };
        let meta = meta.ok_or(StoreError::NotFound)?;
        Ok(SecretRecord {
            meta: SecretMeta {
                name: name.to_owned(),
                version: version.version,
                created_at,
                size: u64::try_from(value.len()).unwrap_or(u64::MAX),
                labels: stored.labels.clone(),
                allowed_measurements: stored.allowed_measurements.clone(),
                versions: live_versions(&meta),
            },
            value,
        })
    }

    /// One level of a KV folder; a missing folder is empty.
    async fn list_folder(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        let (mount, path) = (self.mount.as_str(), self.kv_folder(folder));
        let path = path.as_str();
        match self.call(|s| async move { vaultrs::kv2::list(s.client()?, mount, path).await.map_err(classify) }).await {
            Ok(keys) => Ok(keys),
            Err(Failure::Status(404)) => Ok(Vec::new()),
            Err(f) => Err(f.into_store("listing secrets")),
        }
    }
}

fn session_from_auth(mut auth: AuthInfo) -> (SecretString, Option<Lease>) {
    let token = SecretString::from(std::mem::take(&mut auth.client_token));
    (token, Lease::new(auth.lease_duration, auth.renewable))
}

#[async_trait]
impl SecretStore for VaultStore {
    async fn put(&self, secret: NewSecret) -> Result<SecretMeta, StoreError> {
        validate_name(&secret.name)?;
        let inner = &self.inner;
        let path = inner.kv_path(&secret.name);
        let cas = match secret.expected_version {
            // "Must not exist" means no servable version: a secret whose
            // latest version is deleted may be written over, still with CAS.
            Some(0) => match inner.read_metadata(&path).await? {
                None => 0,
                Some(meta) if current_is_live(&meta) => {
                    return Err(StoreError::Conflict { expected: 0, found: meta.current_version });
                }
                Some(meta) => meta.current_version,
            },
            Some(expected) => expected,
            None => inner.read_metadata(&path).await?.map_or(0, |m| m.current_version),
        };
        let expected = secret.expected_version.unwrap_or(cas);
        let Ok(cas32) = u32::try_from(cas) else {
            let found = inner.read_metadata(&path).await?.map_or(0, |m| m.current_version);
            return Err(StoreError::Conflict { expected, found });
        };
        let encoded = Zeroizing::new(B64.encode(secret.value.expose()));
        let write_id = hex::encode(rand::random::<[u8; 16]>());
        let data = StoredDataRef {
            value: encoded.as_str(),
            labels: &secret.labels,
            allowed_measurements: &secret.allowed_measurements,
            write_id: &write_id,
        };
        let (mount, kv_path, data) = (inner.mount.as_str(), path.as_str(), &data);
        let deadline = Instant::now() + WRITE_OUTCOME_BUDGET;
        // A 400 whose version did not move is rechecked a few times only
        // (a standby may lag, but a 400 for another cause will not pass),
        // unless an earlier attempt may have landed.
        let mut rejections = 0u32;
        let mut maybe_landed = false;
        // A write that got no answer may have landed: it is checked (by
        // its write ID in version `cas + 1`) and sent again while it has
        // not, never reported as failed once it has. CAS keeps the retries
        // from making a second version.
        // Set when some node took an attempt and gave no answer, even if
        // another node then answered (a failover hides the first failure).
        let took = &std::sync::atomic::AtomicBool::new(false);
        let (version, created_time) = loop {
            let written = inner
                .call(|s| async move {
                    let result = vaultrs::kv2::set_with_options(
                        s.client()?,
                        mount,
                        kv_path,
                        data,
                        SetSecretRequestOptions { cas: cas32 },
                    )
                    .await
                    .map_err(classify);
                    if let Err(failure) = &result
                        && failure.tries_next()
                        && !matches!(failure, Failure::Unreached(_))
                    {
                        took.store(true, Ordering::SeqCst);
                    }
                    result
                })
                .await;
            let failure = match written {
                Ok(written) => break (written.version, written.created_time),
                Err(failure) => failure,
            };
            let unknown = failure.tries_next();
            maybe_landed |= took.load(Ordering::SeqCst);
            // Once some node took a write without answering, whatever the
            // next node says (a node that has just become active may even
            // answer 404), only the versions tell the outcome.
            if !maybe_landed
                && (matches!(failure, Failure::Unreached(_)) || (!unknown && !matches!(failure, Failure::Status(400))))
            {
                return Err(failure.into_store_no_404("writing secret"));
            }
            // KV signals a CAS mismatch only with a 400 and a message; the
            // versions tell whether the version really moved, and whose
            // write made it. A standby serving reads may lag a moment.
            match inner.write_outcome(&path, cas, &write_id).await {
                Ok(Outcome::Landed(version, created)) => break (version, created),
                Ok(Outcome::Lost(found)) => return Err(StoreError::Conflict { expected, found }),
                Ok(Outcome::NotYet) if !maybe_landed && rejections >= 15 => {
                    return Err(StoreError::Unavailable(
                        "writing secret: the store rejected the write (HTTP 400)".into(),
                    ));
                }
                Ok(Outcome::NotYet) | Err(_) if Instant::now() < deadline => {
                    rejections += u32::from(!unknown);
                    tokio::time::sleep(WRITE_OUTCOME_PAUSE).await;
                }
                Ok(Outcome::NotYet) if !maybe_landed => {
                    return Err(StoreError::Unavailable(
                        "writing secret: the store rejected the write (HTTP 400)".into(),
                    ));
                }
                Ok(Outcome::NotYet) | Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "writing secret: no answer, and whether it landed is still unknown after {} s; \
                         read the secret's versions before writing again",
                        WRITE_OUTCOME_BUDGET.as_secs()
                    )));
                }
            }
            if unknown {
                tracing::info!(name = %secret.name, cas, "a write got no answer and has not landed; sending it again");
            }
        };
        let created_at = parse_time(&created_time).map_or(0, OffsetDateTime::unix_timestamp);
        let versions = match inner.read_metadata(&path).await {
            Ok(Some(meta)) => live_versions(&meta),
            Ok(None) => Vec::new(),
            Err(e) => {
                // The write landed: reporting it as failed would leave a
                // version nobody was told about. The list is incomplete.
                tracing::warn!(name = %secret.name, version, error = %e, "secret written, but its version list could not be read back");
                vec![version]
            }
        };
        tracing::debug!(name = %secret.name, version, "secret written");
        Ok(SecretMeta {
            name: secret.name.clone(),
            version,
            created_at,
            size: u64::try_from(secret.value.len()).unwrap_or(u64::MAX),
            labels: secret.labels.clone(),
            allowed_measurements: secret.allowed_measurements.clone(),
            versions,
        })
    }

    async fn get(&self, name: &str) -> Result<SecretRecord, StoreError> {
        self.inner.read_current(name, true).await
    }

    async fn metadata(&self, name: &str) -> Result<SecretMeta, StoreError> {
        self.inner.read_current(name, true).await.map(|record| record.meta)
    }

    /// The node's word, not confirmed (see "A standby's not found").
    async fn metadata_for_write(&self, name: &str) -> Result<SecretMeta, StoreError> {
        self.inner.read_current(name, false).await.map(|record| record.meta)
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let limit = limit.min(MAX_PAGE);
        if limit == 0 {
            return Ok(Page::default());
        }
        // Requests one call may make; past it, the page ends early (its
        // `next` still lets the caller go on).
        let mut budget = limit.saturating_mul(3).saturating_add(256);
        let mut items: Vec<SecretMeta> = Vec::new();
        let mut last_visited: Option<String> = None;
        let mut stack = vec![Node::Folder(start_folder(prefix))];
        while let Some(node) = stack.pop() {
            if budget == 0 {
                return match last_visited {
                    Some(last) => Ok(Page { items, next: Some(last) }),
                    None => Err(StoreError::Unavailable("listing secrets: too many folders without a secret".into())),
                };
            }
            match node {
                Node::Folder(folder) => {
                    budget -= 1;
                    let mut keys = self.inner.list_folder(&folder).await?;
                    keys.sort_unstable();
                    keys.dedup();
                    let depth = folder.matches('/').count();
                    // Pushed in reverse so that names pop in ascending order;
                    // sorting keys with their trailing `/` sorts full names.
                    for key in keys.into_iter().rev() {
                        let (stem, is_folder) = match key.strip_suffix('/') {
                            Some(stem) => (stem, true),
                            None => (key.as_str(), false),
                        };
                        if stem.is_empty() || stem.contains('/') {
                            continue;
                        }
                        let full = format!("{folder}{key}");
                        if is_folder {
                            if depth + 1 < MAX_DEPTH && folder_wanted(&full, prefix, after) {
                                stack.push(Node::Folder(full));
                            }
                        } else if name_wanted(&full, prefix, after) {
                            stack.push(Node::Leaf(full));
                        }
                    }
                }
                Node::Leaf(name) => {
                    if items.len() == limit {
                        let next = items.last().map(|m| m.name.clone());
                        return Ok(Page { items, next });
                    }
                    budget = budget.saturating_sub(2);
                    match self.inner.read_current(&name, false).await {
                        Ok(record) => items.push(record.meta),
                        // Soft-deleted, or deleted since the listing.
                        Err(StoreError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                    last_visited = Some(name);
                }
            }
        }
        Ok(Page { items, next: None })
    }

    async fn destroy_versions(&self, name: &str, versions: &[u64]) -> Result<(), StoreError> {
        VaultStore::destroy_versions(self, name, versions).await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let inner = &self.inner;
        let path = inner.kv_path(name);
        inner.read_metadata_confirmed(&path).await?.ok_or(StoreError::NotFound)?;
        let (mount, path) = (inner.mount.as_str(), path.as_str());
        inner
            .call(|s| async move { vaultrs::kv2::delete_metadata(s.client()?, mount, path).await.map_err(classify) })
            .await
            .map_err(|f| f.into_store("deleting secret"))?;
        tracing::debug!(name, "secret deleted with all its versions");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_names_are_pruned_by_prefix_and_after() {
        assert!(folder_wanted("a/", "a/b", None));
        assert!(folder_wanted("a/b/", "a/", None));
        assert!(!folder_wanted("b/", "a/", None));
        assert!(folder_wanted("a/", "", Some("a/x")));
        assert!(!folder_wanted("a/", "", Some("b")));
        assert!(folder_wanted("b/", "", Some("a/z")));
        assert!(!folder_wanted("a-b/", "", Some("a/")));
        assert!(name_wanted("a/b", "a/", Some("a/a")));
        assert!(!name_wanted("a/b", "a/", Some("a/b")));
        assert!(!name_wanted("a/../b", "", None));
    }

    #[test]
    fn listing_starts_at_the_deepest_valid_folder() {
        assert_eq!(start_folder("a/b/c"), "a/b/");
        assert_eq!(start_folder("a/b/"), "a/b/");
        assert_eq!(start_folder("abc"), "");
        assert_eq!(start_folder("a//b"), "");
        assert_eq!(start_folder("../x"), "");
    }

    #[test]
    fn liveness_respects_future_deletion_times() {
        let now = OffsetDateTime::now_utc();
        assert!(is_live("", false, now));
        assert!(!is_live("", true, now));
        assert!(!is_live("2000-01-01T00:00:00Z", false, now));
        assert!(is_live("2999-01-01T00:00:00Z", false, now));
        assert!(!is_live("garbage", false, now));
    }

    #[test]
    fn config_paths_are_checked() {
        assert_eq!(normalize_path("mount", "/secret/", false).ok().as_deref(), Some("secret"));
        assert!(normalize_path("mount", "", false).is_err());
        assert_eq!(normalize_path("prefix", "", true).ok().as_deref(), Some(""));
        assert!(normalize_path("prefix", "a/../b", true).is_err());
    }

    #[test]
    fn token_debug_is_redacted() {
        let auth = VaultAuth::Token(SecretString::from("hvs.very-secret"));
        assert!(!format!("{auth:?}").contains("very-secret"));
    }

    fn conn(addresses: &[&str]) -> Conn {
        Conn {
            addresses: addresses.iter().map(|a| parse_address(a).unwrap()).collect(),
            preferred: AtomicUsize::new(0),
            namespace: None,
            timeout: Duration::from_secs(1),
            verify: true,
            auth: VaultAuth::Token(SecretString::from("t")),
            http: reqwest::Client::new(),
        }
    }

    #[tokio::test]
    async fn requests_fail_over_to_the_next_address_and_stay_there() {
        let conn = conn(&["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]);
        let tried = Mutex::new(Vec::new());
        // Node 0 is gone, node 1 is a standby without an active node (500),
        // node 2 answers.
        let op = |index: usize| {
            tried.lock().unwrap().push(index);
            async move {
                match index {
                    0 => Err(Failure::Transport("connection refused".into())),
                    1 => Err(Failure::Status(500)),
                    _ => Ok(index),
                }
            }
        };
        assert_eq!(conn.on_any(op).await.unwrap(), 2);
        assert_eq!(conn.on_any(op).await.unwrap(), 2);
        assert_eq!(*tried.lock().unwrap(), [0, 1, 2, 2], "the answering address is tried first next time");

        // An answer about the request is the cluster's answer: not asked
        // elsewhere.
        tried.lock().unwrap().clear();
        let denied = |index: usize| {
            tried.lock().unwrap().push(index);
            async move { Err::<(), _>(Failure::Status(if index == 2 { 404 } else { 503 })) }
        };
        assert!(matches!(conn.on_any(denied).await, Err(Failure::Status(404))));
        assert_eq!(*tried.lock().unwrap(), [2]);

        // Nobody answers: the last failure, after one try of each.
        tried.lock().unwrap().clear();
        let down = |index: usize| {
            tried.lock().unwrap().push(index);
            async move { Err::<(), _>(Failure::Status(503)) }
        };
        assert!(matches!(conn.on_any(down).await.map_err(|f| f.into_store("x")), Err(StoreError::Unavailable(_))));
        assert_eq!(*tried.lock().unwrap(), [2, 0, 1]);
    }

    #[test]
    fn only_missing_answers_try_another_node() {
        assert!(Failure::Transport("reset".into()).tries_next());
        assert!(Failure::Unreached("refused".into()).tries_next());
        for code in [429, 500, 502, 503, 504] {
            assert!(Failure::Status(code).tries_next(), "{code}");
        }
        for code in [400, 403, 404, 405, 412] {
            assert!(!Failure::Status(code).tries_next(), "{code}");
        }
        assert!(!Failure::Malformed("x").tries_next());
        assert!(!Failure::Store(StoreError::NotFound).tries_next());
    }

    #[tokio::test]
    async fn every_address_is_checked_and_none_listed_twice() {
        let connect = |address: &str, fallbacks: &[&str]| {
            let mut config = VaultConfig::new(address, VaultAuth::Token(SecretString::from("t")));
            config.fallback_addresses = fallbacks.iter().map(|a| (*a).to_owned()).collect();
            VaultStore::connect(config)
        };
        let refused = |r: Result<VaultStore, ConnectError>| matches!(r, Err(ConnectError::Config(_)));
        assert!(refused(connect("http://127.0.0.1:1", &["http://127.0.0.1:1/"]).await));
        assert!(refused(connect("http://127.0.0.1:1", &["http://127.0.0.1:2/v1"]).await));
        assert!(refused(connect("http://127.0.0.1:1", &["http://10.1.2.3:8200"]).await));
        assert!(refused(connect("http://127.0.0.1:1", &vec!["https://b.example"; MAX_ADDRESSES]).await));
        // Valid, but nothing listens: unavailable after trying both.
        let r = connect("http://127.0.0.1:1", &["http://127.0.0.1:2"]).await;
        assert!(matches!(r, Err(ConnectError::Store(StoreError::Unavailable(_)))), "{r:?}");
    }

    /// `sys/leader` bodies as OpenBao 2.7.2 gives them: a dev server, a
    /// standby, the active node, and a standby during an election.
    const NO_HA: &str = r#"{"ha_enabled":false}"#;
    const STANDBY: &str = r#"{"ha_enabled":true,"is_self":false,"leader_address":"http://127.0.0.1:18200",
        "leader_cluster_address":"https://127.0.0.1:18201","raft_committed_index":37,"raft_applied_index":36}"#;
    const ACTIVE: &str = r#"{"ha_enabled":true,"is_self":true,"active_time":"2026-12-07T15:20:14.919671788Z",
        "leader_address":"http://127.0.0.1:18200","leader_cluster_address":"https://127.0.0.1:18201",
        "raft_committed_index":37,"raft_applied_index":37}"#;
    const ELECTION: &str = r#"{"ha_enabled":true,"is_self":false,"leader_address":"","leader_cluster_address":""}"#;

    fn leader_status(body: &str) -> LeaderStatus {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn a_not_found_is_confirmed_only_by_a_listed_active_node() {
        let nodes = conn(&["http://127.0.0.1:18210", "http://127.0.0.1:18200", "http://127.0.0.1:18220"]).addresses;
        // No HA: no standby can answer for the server.
        assert_eq!(confirmer(&leader_status(NO_HA), &nodes), Confirmer::None);
        // A standby names the active node, which is listed.
        assert_eq!(confirmer(&leader_status(STANDBY), &nodes), Confirmer::At(1));
        assert_eq!(confirmer(&leader_status(ACTIVE), &nodes), Confirmer::At(1));
        // Not listed, none during an election, or an address that does not
        // parse: nobody can confirm.
        let others = conn(&["http://127.0.0.1:18210", "http://127.0.0.1:18220"]).addresses;
        assert!(matches!(confirmer(&leader_status(STANDBY), &others), Confirmer::Unreachable(_)));
        assert!(matches!(confirmer(&leader_status(ELECTION), &nodes), Confirmer::Unreachable(_)));
        let garbled = LeaderStatus { leader_address: "not a url".into(), ..leader_status(STANDBY) };
        assert!(matches!(confirmer(&garbled, &nodes), Confirmer::Unreachable(_)));
        // The active node answering at another address than its own (a load
        // balancer in front of the nodes) does not count.
        let balanced = conn(&["http://127.0.0.1:18000"]).addresses;
        match confirmer(&leader_status(ACTIVE), &balanced) {
            Confirmer::Unreachable(why) => assert!(why.contains("load balancer"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_active_node_at_its_own_address_is_active() {
        let [own, other] = [parse_address("http://127.0.0.1:18200").unwrap(), parse_address("http://lb:8200").unwrap()];
        assert!(leader_status(ACTIVE).is_active_at(&own));
        assert!(!leader_status(ACTIVE).is_active_at(&other));
        assert!(!leader_status(STANDBY).is_active_at(&own));
        assert!(!leader_status(NO_HA).is_active_at(&own));
        let no_time = LeaderStatus { active_time: String::new(), ..leader_status(ACTIVE) };
        assert!(!no_time.is_active_at(&own));
        // Unknown fields and missing ones decode; a wrong type does not.
        assert!(serde_json::from_str::<LeaderStatus>(r#"{"ha_enabled":"yes"}"#).is_err());
    }

    #[test]
    fn status_classification_ignores_messages() {
        let e = ClientError::APIError { code: 400, errors: vec!["check-and-set parameter did not match".into()] };
        assert!(matches!(classify(e), Failure::Status(400)));
        let e = ClientError::APIError { code: 503, errors: vec![] };
        assert!(matches!(classify(e).into_store("x"), StoreError::Unavailable(_)));
        assert!(matches!(Failure::Status(404).into_store("x"), StoreError::NotFound));
        assert!(matches!(Failure::Status(404).into_store_no_404("x"), StoreError::Unavailable(_)));
    }
}
