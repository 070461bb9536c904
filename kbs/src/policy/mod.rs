//! Release policy: may this verified workload have this secret?
//!
//! Policies are Rego (see [`engine`] for the contract), each attached to a
//! [`Scope`]: a secret name, a prefix, or `*`. For a secret, the most
//! specific scope that covers its name decides; no policy means no release
//! (`no_policy`). A policy is evaluated per secret against:
//!
//! ```text
//! input = { "claims": <normalized claims>,
//!           "secret": { "name", "version", "labels", "allowed_measurements" },
//!           "now": <Unix seconds> }
//! data  = { "reference_values": { <set name>: <set>, ... } }
//! ```
//!
//! Fail closed: a policy that does not compile (stored by an older broker),
//! that errs or runs away, or that yields anything but `allow == true`
//! refuses. The denial carries every reason, for the log and the audit
//! record; the guest sees one reason code, that of the first reason (known
//! codes such as `debug_enabled` map to their own code, others to
//! `policy_denied`).
//!
//! # Storage and replicas
//! Policies and reference values live in the secret store under the
//! reserved prefix `_kbs/` (which the secret calls of the Admin API and the
//! guest APIs refuse), so every replica shares them and the store keeps
//! their versions:
//! - `_kbs/policies/<SHA-256 of the scope, hex>`: `{"scope", "rego"}`;
//! - `_kbs/refvals/<set name>`: the set's JSON.
//!
//! Each replica keeps a compiled snapshot and never reads the store or
//! compiles on the request path. The snapshot is rebuilt at start, after
//! every change made through this replica, and every
//! [`DEFAULT_REFRESH`] by a background task, so a change made through
//! another replica is in force everywhere within that period. A refresh
//! recompiles only what changed. A store that cannot be read keeps the last
//! snapshot; before the first successful load every release is refused as
//! `store_unavailable`.
//!
//! # The built-in default
//! When the store holds no policy for `*`, the shipped default
//! (`policies/default.rego`, [`DEFAULT_POLICY`]) applies as `*`, so a fresh
//! broker behaves like the fixed policy of earlier versions: debug guests,
//! VMPL other than 0 and measurements in neither the reference values nor
//! the secret's allow-list are refused. Setting a `*` policy replaces it;
//! an engine built with `builtin_default = false` has none, and a secret no
//! policy covers is refused with `no_policy`.
//!
//! On the release path the default (wherever it is in force, built in or
//! stored with the same text) is first checked natively ([`native`]): a
//! release it certainly allows is decided there, without the interpreter;
//! every other case, and every refusal with its reasons, is the Rego's.
//! Dry runs always run the Rego.

pub mod bounds;
pub mod engine;
pub mod native;
pub mod refvals;
pub mod scope;
mod value;

#[cfg(test)]
mod rego_tests;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::evidence::Claims;
use crate::reason::ReasonCode;
use crate::store::{NewSecret, SecretMeta, SecretStore, SecretValue, StoreError};
pub use engine::{CompiledRego, Outcome};
pub use scope::{Scope, ScopeError};

/// The shipped default policy.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.rego");
/// Where policies are stored.
pub const POLICY_PREFIX: &str = "_kbs/policies/";
/// Where reference values are stored.
pub const REFVALS_PREFIX: &str = "_kbs/refvals/";
/// How often a replica re-reads policies and reference values.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
const LIST_PAGE: usize = 1000;

/// A refusal: the primary reason code and every reason found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What the guest sees.
    pub code: ReasonCode,
    /// Every reason, for the log and audit.
    pub reasons: Vec<String>,
}

/// A full decision, for dry runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Released or not.
    pub allow: bool,
    /// Every reason the policy gave (a refusal always has at least one).
    pub reasons: Vec<String>,
    /// The scope of the policy that decided, if any.
    pub scope: Option<String>,
    /// The guest-visible code of a refusal.
    pub code: Option<ReasonCode>,
}

impl Decision {
    /// The decision as a release result.
    pub fn into_result(self) -> Result<(), Denial> {
        match (self.allow, self.code) {
            (true, _) => Ok(()),
            (false, code) => Err(Denial { code: code.unwrap_or(ReasonCode::PolicyDenied), reasons: self.reasons }),
        }
    }
}

/// Why a policy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The scope breaks the grammar.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// The policy does not compile; the compiler's message.
    #[error("the policy does not compile: {0}")]
    Compile(String),
    /// The reference values are malformed.
    #[error("invalid reference values: {0}")]
    ReferenceValues(String),
    /// Claims given for a dry run are malformed.
    #[error("invalid claims: {0}")]
    Claims(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This engine has no store (built-in or offline).
    #[error("this policy engine has no store")]
    NoStore,
}

impl From<PolicyError> for crate::error::Error {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Store(s) => Self::Store(s),
            PolicyError::NoStore => Self::Internal(e.to_string()),
            other => Self::PolicyInvalid(other.to_string()),
        }
    }
}

/// A policy as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Canonical scope.
    pub scope: String,
    /// The Rego source.
    pub rego: String,
    /// Store version (0 for the built-in default).
    pub version: u64,
    /// When this version was written, Unix seconds (0 for the built-in).
    pub updated_at: i64,
    /// SHA-256 of the source, lowercase hex.
    pub sha256: String,
    /// Whether this is the built-in default.
    pub builtin: bool,
}

/// A reference value set as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefvalsInfo {
    /// The set's name.
    pub name: String,
    /// Canonical JSON.
    pub json: String,
    /// Store version.
    pub version: u64,
    /// When this version was written, Unix seconds.
    pub updated_at: i64,
}

#[derive(Debug)]
struct LoadedPolicy {
    scope: Scope,
    info: PolicyInfo,
    /// The store record's name, created_at and content digest, to skip
    /// recompiling what did not change.
    key: Option<(String, u64, i64)>,
    compiled: Result<CompiledRego, String>,
}

#[derive(Debug)]
struct LoadedRefvals {
    info: RefvalsInfo,
    value: serde_json::Value,
}

struct Snapshot {
    loaded: bool,
    policies: Vec<Arc<LoadedPolicy>>,
    refvals: Vec<Arc<LoadedRefvals>>,
    data: regorus::Value,
}

impl Snapshot {
    fn find(&self, name: &str) -> Option<&Arc<LoadedPolicy>> {
        self.policies.iter().find(|p| p.scope.covers(name))
    }
}

#[derive(Serialize, Deserialize)]
struct StoredPolicy {
    scope: String,
    rego: String,
}

/// The policy engine: a compiled snapshot of every policy and reference
/// value set, kept in step with the store.
pub struct PolicyEngine {
    store: Option<Arc<dyn SecretStore>>,
    builtin_default: bool,
    state: RwLock<Arc<Snapshot>>,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("store", &self.store)
            .field("builtin_default", &self.builtin_default)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// An engine with only the built-in default policy as `*` and no
    /// reference values or store.
    pub fn builtin() -> Self {
        let data = data_value(&[]);
        let snapshot =
            Snapshot { loaded: true, policies: vec![Arc::new(builtin_policy(&data))], refvals: Vec::new(), data };
        Self {
            store: None,
            builtin_default: true,
            state: RwLock::new(Arc::new(snapshot)),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// An engine backed by `store`, not loaded yet: call
    /// [`PolicyEngine::refresh`], then [`PolicyEngine::spawn_refresher`].
    pub fn with_store(store: Arc<dyn SecretStore>, builtin_default: bool) -> Self {
        let snapshot = Snapshot { loaded: false, policies: Vec::new(), refvals: Vec::new(), data: data_value(&[]) };
        Self {
            store: Some(store),
            builtin_default,
            state: RwLock::new(Arc::new(snapshot)),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.state.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn install(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        match self.state.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    /// Decides whether `claims` may receive the secret described by `meta`.
    /// No store access, no compilation: one lookup and one evaluation.
    pub fn evaluate(&self, claims: &Claims, meta: &SecretMeta) -> Result<(), Denial> {
        self.decide(claims, meta).into_result()
    }

    /// [`PolicyEngine::evaluate`] for claims prepared once per release.
    pub fn evaluate_prepared(&self, claims: &PreparedClaims, meta: &SecretMeta) -> Result<(), Denial> {
        self.decide_prepared(claims, meta).into_result()
    }

    /// The full decision for `claims` and `meta`, with the deciding scope.
    pub fn decide(&self, claims: &Claims, meta: &SecretMeta) -> Decision {
        match PreparedClaims::new(claims) {
            Ok(prepared) => self.decide_prepared(&prepared, meta),
            Err(e) => refusal(ReasonCode::PolicyDenied, &format!("policy_error: {e}")),
        }
    }

    /// [`PolicyEngine::decide`] for claims prepared once per release.
    pub fn decide_prepared(&self, claims: &PreparedClaims, meta: &SecretMeta) -> Decision {
        let snapshot = self.snapshot();
        if !snapshot.loaded {
            return refusal(
                ReasonCode::StoreUnavailable,
                "policies_not_loaded: the policy store has not been read yet",
            );
        }
        let Some(policy) = snapshot.find(&meta.name) else {
            return refusal(ReasonCode::NoPolicy, &format!("no_policy: no policy covers {}", meta.name));
        };
        let mut decision = match &policy.compiled {
            // The shipped default is checked natively when it certainly
            // allows; anything else, and every refusal, is the Rego's.
            Ok(_)
                if policy.info.sha256 == native::DEFAULT_POLICY_SHA256
                    && native::default_policy_allows(&claims.value, meta, &snapshot.data) =>
            {
                Decision { allow: true, reasons: Vec::new(), scope: None, code: None }
            }
            Ok(compiled) => decide_compiled(compiled, build_input(claims, meta), false),
            Err(e) => refusal(ReasonCode::PolicyDenied, &format!("policy_error: the policy does not compile: {e}")),
        };
        decision.scope = Some(policy.info.scope.clone());
        decision
    }

    /// Dry run of `rego` (not stored) with the current reference values.
    pub fn decide_with(&self, rego: &str, claims: &Claims, meta: &SecretMeta) -> Result<Decision, PolicyError> {
        let compiled = CompiledRego::compile(rego, &self.snapshot().data).map_err(PolicyError::Compile)?;
        let claims = PreparedClaims::new(claims).map_err(PolicyError::Claims)?;
        Ok(decide_compiled(&compiled, build_input(&claims, meta), true))
    }

    /// Every policy in force, most specific first.
    pub fn policies(&self) -> Vec<PolicyInfo> {
        self.snapshot().policies.iter().map(|p| p.info.clone()).collect()
    }

    /// Every reference value set, by name.
    pub fn reference_values(&self) -> Vec<RefvalsInfo> {
        self.snapshot().refvals.iter().map(|r| r.info.clone()).collect()
    }

    fn store(&self) -> Result<&Arc<dyn SecretStore>, PolicyError> {
        self.store.as_ref().ok_or(PolicyError::NoStore)
    }

    /// The checks [`Self::set_policy`] makes before it writes (the scope
    /// parses, the Rego compiles), without writing: an admin change is
    /// audited after these and before its effect. Returns the SHA-256 of
    /// the Rego.
    pub fn check_policy(&self, scope: &str, rego: &str) -> Result<String, PolicyError> {
        Scope::parse(scope)?;
        CompiledRego::compile(rego, &self.snapshot().data).map_err(PolicyError::Compile)?;
        Ok(hex::encode(Sha256::digest(rego.as_bytes())))
    }

    /// The check [`Self::delete_policy`] makes before it deletes.
    pub fn check_policy_scope(scope: &str) -> Result<(), PolicyError> {
        Scope::parse(scope)?;
        Ok(())
    }

    /// The checks [`Self::put_reference_values`] makes before it writes.
    /// Returns the SHA-256 of the set as stored (normalized).
    pub fn check_reference_values(name: &str, json: &str) -> Result<String, PolicyError> {
        refvals::validate_set_name(name).map_err(PolicyError::ReferenceValues)?;
        let value = refvals::normalize(json).map_err(PolicyError::ReferenceValues)?;
        let canonical = serde_json::to_string(&value).map_err(|e| PolicyError::ReferenceValues(e.to_string()))?;
        Ok(hex::encode(Sha256::digest(canonical.as_bytes())))
    }

    /// The check [`Self::delete_reference_values`] makes before it deletes.
    pub fn check_reference_values_name(name: &str) -> Result<(), PolicyError> {
        refvals::validate_set_name(name).map_err(PolicyError::ReferenceValues)
    }

    /// Compiles and stores `rego` for `scope`, then reloads. A policy that
    /// does not compile is refused and the old one stays.
    pub async fn set_policy(&self, scope: &str, rego: &str) -> Result<PolicyInfo, PolicyError> {
        let scope = Scope::parse(scope)?;
        CompiledRego::compile(rego, &self.snapshot().data).map_err(PolicyError::Compile)?;
        let canonical = scope.to_string();
        let stored = StoredPolicy { scope: canonical.clone(), rego: rego.to_owned() };
        let value = serde_json::to_vec(&stored).map_err(|e| PolicyError::Compile(e.to_string()))?;
        let sha256 = hex::encode(Sha256::digest(rego.as_bytes()));
        let labels = BTreeMap::from([("scope".to_owned(), canonical.clone()), ("sha256".to_owned(), sha256.clone())]);
        let meta = self
            .store()?
            .put(NewSecret {
                name: policy_record_name(&scope),
                value: SecretValue::new(value),
                labels,
                allowed_measurements: Vec::new(),
                expected_version: None,
            })
            .await?;
        self.refresh().await?;
        Ok(PolicyInfo {
            scope: canonical,
            rego: rego.to_owned(),
            version: meta.version,
            updated_at: meta.created_at,
            sha256,
            builtin: false,
        })
    }

    /// The policy stored for exactly `scope` (or the built-in default for
    /// `*` when none is), read afresh.
    pub async fn get_policy(&self, scope: &str) -> Result<PolicyInfo, PolicyError> {
        let canonical = Scope::parse(scope)?.to_string();
        self.refresh_if_stored().await?;
        self.policies().into_iter().find(|p| p.scope == canonical).ok_or(PolicyError::Store(StoreError::NotFound))
    }

    /// Every policy, read afresh.
    pub async fn list_policies(&self) -> Result<Vec<PolicyInfo>, PolicyError> {
        self.refresh_if_stored().await?;
        Ok(self.policies())
    }

    /// Deletes the policy stored for `scope`, then reloads.
    pub async fn delete_policy(&self, scope: &str) -> Result<(), PolicyError> {
        let scope = Scope::parse(scope)?;
        self.store()?.delete(&policy_record_name(&scope)).await?;
        self.refresh().await
    }

    /// Checks, normalizes and stores a reference value set, then reloads.
    pub async fn put_reference_values(&self, name: &str, json: &str) -> Result<RefvalsInfo, PolicyError> {
        refvals::validate_set_name(name).map_err(PolicyError::ReferenceValues)?;
        let value = refvals::normalize(json).map_err(PolicyError::ReferenceValues)?;
        let canonical = serde_json::to_string(&value).map_err(|e| PolicyError::ReferenceValues(e.to_string()))?;
        let sha256 = hex::encode(Sha256::digest(canonical.as_bytes()));
        let meta = self
            .store()?
            .put(NewSecret {
                name: format!("{REFVALS_PREFIX}{name}"),
                value: SecretValue::new(canonical.clone().into_bytes()),
                labels: BTreeMap::from([("sha256".to_owned(), sha256)]),
                allowed_measurements: Vec::new(),
                expected_version: None,
            })
            .await?;
        self.refresh().await?;
        Ok(RefvalsInfo { name: name.to_owned(), json: canonical, version: meta.version, updated_at: meta.created_at })
    }

    /// One reference value set, read afresh.
    pub async fn get_reference_values(&self, name: &str) -> Result<RefvalsInfo, PolicyError> {
        refvals::validate_set_name(name).map_err(PolicyError::ReferenceValues)?;
        self.refresh_if_stored().await?;
        self.reference_values().into_iter().find(|r| r.name == name).ok_or(PolicyError::Store(StoreError::NotFound))
    }

    /// Every reference value set, read afresh.
    pub async fn list_reference_values(&self) -> Result<Vec<RefvalsInfo>, PolicyError> {
        self.refresh_if_stored().await?;
        Ok(self.reference_values())
    }

    /// Deletes a reference value set, then reloads.
    pub async fn delete_reference_values(&self, name: &str) -> Result<(), PolicyError> {
        refvals::validate_set_name(name).map_err(PolicyError::ReferenceValues)?;
        self.store()?.delete(&format!("{REFVALS_PREFIX}{name}")).await?;
        self.refresh().await
    }

    async fn refresh_if_stored(&self) -> Result<(), PolicyError> {
        if self.store.is_some() { self.refresh().await } else { Ok(()) }
    }

    /// Re-reads policies and reference values from the store and installs a
    /// new snapshot. Unchanged policies are not recompiled. On a store
    /// failure the current snapshot stays.
    pub async fn refresh(&self) -> Result<(), PolicyError> {
        let store = Arc::clone(self.store()?);
        let _one_at_a_time = self.refresh_lock.lock().await;
        let current = self.snapshot();

        let mut sets = Vec::new();
        for meta in list_all(store.as_ref(), REFVALS_PREFIX).await? {
            let name = meta.name.strip_prefix(REFVALS_PREFIX).unwrap_or_default().to_owned();
            if let Some(same) = current
                .refvals
                .iter()
                .find(|r| r.info.name == name && r.info.version == meta.version && r.info.updated_at == meta.created_at)
            {
                sets.push(Arc::clone(same));
                continue;
            }
            let record = match store.get(&meta.name).await {
                Ok(record) => record,
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            let json = String::from_utf8_lossy(record.value.expose()).into_owned();
            match serde_json::from_str::<serde_json::Value>(&json) {
                Ok(value) => sets.push(Arc::new(LoadedRefvals {
                    info: RefvalsInfo { name, json, version: record.meta.version, updated_at: record.meta.created_at },
                    value,
                })),
                // A set that does not parse is left out: policies that need
                // it then refuse, which is the safe side.
                Err(e) => tracing::error!(set = name, error = %e, "stored reference values are not JSON; ignored"),
            }
        }
        let data = data_value(&sets);
        // Policies are compiled with their data: new reference values mean
        // recompiling every policy.
        let same_data = data == current.data;

        let mut policies = Vec::new();
        for meta in list_all(store.as_ref(), POLICY_PREFIX).await? {
            let key = (meta.name.clone(), meta.version, meta.created_at);
            let digest = meta.labels.get("sha256");
            if let Some(same) = current
                .policies
                .iter()
                .find(|p| same_data && p.key.as_ref() == Some(&key) && Some(&p.info.sha256) == digest)
            {
                policies.push(Arc::clone(same));
                continue;
            }
            if let Some(policy) = load_policy(store.as_ref(), &meta, &data).await? {
                policies.push(Arc::new(policy));
            }
        }
        if self.builtin_default && !policies.iter().any(|p| p.scope == Scope::All) {
            match current.policies.iter().find(|p| p.info.builtin) {
                Some(builtin) if same_data => policies.push(Arc::clone(builtin)),
                _ => policies.push(Arc::new(builtin_policy(&data))),
            }
        }
        policies.sort_by(|a, b| a.scope.specificity_cmp(&b.scope));
        self.install(Snapshot { loaded: true, policies, refvals: sets, data });
        Ok(())
    }

    /// Re-reads the store every `every` until the engine is dropped.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(engine) = weak.upgrade() else { break };
                if let Err(e) = engine.refresh().await {
                    tracing::warn!(error = %e, "policy refresh failed; keeping the last policies");
                }
            }
        })
    }
}

/// Evaluates one policy source offline: compile, then decide with the given
/// reference value sets. For `kbsctl policy test` and `kbsctl verify`.
pub fn decide_offline(
    rego: &str,
    reference_values: &BTreeMap<String, serde_json::Value>,
    claims: &Claims,
    meta: &SecretMeta,
) -> Result<Decision, PolicyError> {
    let mut sets = Vec::new();
    for (name, json) in reference_values {
        refvals::validate_set_name(name).map_err(PolicyError::ReferenceValues)?;
        let value = refvals::normalize(&json.to_string()).map_err(PolicyError::ReferenceValues)?;
        sets.push(Arc::new(LoadedRefvals {
            info: RefvalsInfo { name: name.clone(), json: value.to_string(), version: 0, updated_at: 0 },
            value,
        }));
    }
    let compiled = CompiledRego::compile(rego, &data_value(&sets)).map_err(PolicyError::Compile)?;
    let claims = PreparedClaims::new(claims).map_err(PolicyError::Claims)?;
    Ok(decide_compiled(&compiled, build_input(&claims, meta), true))
}

/// Metadata standing in for a secret that is not stored (dry runs).
pub fn placeholder_meta(name: &str) -> SecretMeta {
    SecretMeta {
        name: name.to_owned(),
        version: 0,
        created_at: 0,
        size: 0,
        labels: BTreeMap::new(),
        allowed_measurements: Vec::new(),
        versions: Vec::new(),
    }
}

fn builtin_policy(data: &regorus::Value) -> LoadedPolicy {
    let compiled = CompiledRego::compile(DEFAULT_POLICY, data);
    if let Err(e) = &compiled {
        // Unreachable with the shipped file (its tests compile it); were
        // it to happen, `*` refuses everything rather than nothing.
        tracing::error!(error = %e, "the built-in default policy does not compile; refusing all releases it covers");
    }
    LoadedPolicy {
        scope: Scope::All,
        info: PolicyInfo {
            scope: "*".into(),
            rego: DEFAULT_POLICY.into(),
            version: 0,
            updated_at: 0,
            sha256: hex::encode(Sha256::digest(DEFAULT_POLICY.as_bytes())),
            builtin: true,
        },
        key: None,
        compiled,
    }
}

async fn load_policy(
    store: &dyn SecretStore,
    meta: &SecretMeta,
    data: &regorus::Value,
) -> Result<Option<LoadedPolicy>, PolicyError> {
    let record = match store.get(&meta.name).await {
        Ok(record) => record,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let stored: StoredPolicy = match serde_json::from_slice(record.value.expose()) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(record = meta.name, error = %e, "stored policy record does not decode; ignored");
            return Ok(None);
        }
    };
    let scope = match Scope::parse(&stored.scope) {
        Ok(scope) if policy_record_name(&scope) == meta.name => scope,
        _ => {
            tracing::error!(record = meta.name, "stored policy record names another scope; ignored");
            return Ok(None);
        }
    };
    let compiled = CompiledRego::compile(&stored.rego, data);
    if let Err(e) = &compiled {
        // Kept, so that its scope refuses rather than falling through to a
        // less specific policy.
        tracing::error!(scope = %scope, error = %e, "stored policy does not compile; its scope refuses every release");
    }
    let sha256 = hex::encode(Sha256::digest(stored.rego.as_bytes()));
    Ok(Some(LoadedPolicy {
        info: PolicyInfo {
            scope: scope.to_string(),
            rego: stored.rego,
            version: record.meta.version,
            updated_at: record.meta.created_at,
            sha256,
            builtin: false,
        },
        scope,
        key: Some((meta.name.clone(), record.meta.version, record.meta.created_at)),
        compiled,
    }))
}

async fn list_all(store: &dyn SecretStore, prefix: &str) -> Result<Vec<SecretMeta>, PolicyError> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(prefix, after.as_deref(), LIST_PAGE).await?;
        all.extend(page.items.into_iter().filter(|m| m.name.starts_with(prefix)));
        match page.next {
            Some(next) if Some(&next) != after.as_ref() => after = Some(next),
            _ => return Ok(all),
        }
    }
}

/// The store name of `scope`'s policy.
pub fn policy_record_name(scope: &Scope) -> String {
    format!("{POLICY_PREFIX}{}", hex::encode(Sha256::digest(scope.to_string().as_bytes())))
}

fn data_value(sets: &[Arc<LoadedRefvals>]) -> regorus::Value {
    let map: serde_json::Map<String, serde_json::Value> =
        sets.iter().map(|s| (s.info.name.clone(), s.value.clone())).collect();
    engine::to_value(serde_json::json!({ "reference_values": map }))
}

/// Claims prepared once per release for every policy evaluation and the
/// audit record: their JSON is hashed for the record, and they are
/// converted once, directly, into the policy engine's value form, which
/// each secret's evaluation then shares.
#[derive(Clone)]
pub struct PreparedClaims {
    digest: String,
    value: regorus::Value,
}

impl std::fmt::Debug for PreparedClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedClaims").field("digest", &self.digest).finish_non_exhaustive()
    }
}

impl PreparedClaims {
    /// Prepares `claims`.
    pub fn new(claims: &Claims) -> Result<Self, String> {
        let digest = claims_digest(claims)?;
        let value = value::to_value(claims).map_err(|e| format!("claims do not convert: {e}"))?;
        Ok(Self { digest, value })
    }

    /// SHA-256 of the claims' JSON, lowercase hex (the audit record's
    /// `claims_digest`).
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// SHA-256 of the claims' JSON, lowercase hex.
pub fn claims_digest(claims: &Claims) -> Result<String, String> {
    let json = serde_json::to_vec(claims).map_err(|e| format!("claims do not serialize: {e}"))?;
    Ok(hex::encode(Sha256::digest(&json)))
}

fn build_input(claims: &PreparedClaims, meta: &SecretMeta) -> regorus::Value {
    // The wall clock, for policies with deadlines (tcb_grace.rego).
    policy_input(&claims.value, meta, time::OffsetDateTime::now_utc().unix_timestamp())
}

/// The policy's `input`: `claims` (their policy form), the secret's
/// name, version, labels and allow-list, and `now` (Unix seconds).
pub fn policy_input(claims: &regorus::Value, meta: &SecretMeta, now: i64) -> regorus::Value {
    use regorus::Value;
    let labels: BTreeMap<Value, Value> =
        meta.labels.iter().map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str()))).collect();
    let allowed: Vec<Value> = meta.allowed_measurements.iter().map(|m| Value::from(m.as_str())).collect();
    let secret = BTreeMap::from([
        (Value::from("name"), Value::from(meta.name.as_str())),
        (Value::from("version"), Value::from(meta.version)),
        (Value::from("labels"), Value::from(labels)),
        (Value::from("allowed_measurements"), Value::from(allowed)),
    ]);
    Value::from(BTreeMap::from([
        (Value::from("claims"), claims.clone()),
        (Value::from("now"), Value::from(now)),
        (Value::from("secret"), Value::from(secret)),
    ]))
}

/// `dry_run` asks for the policy's reasons even when it allows (the
/// release path computes them only to explain a refusal).
fn decide_compiled(compiled: &CompiledRego, input: regorus::Value, dry_run: bool) -> Decision {
    match compiled.evaluate(input, dry_run) {
        Ok(Outcome { allow: true, reasons }) => Decision { allow: true, reasons, scope: None, code: None },
        Ok(Outcome { allow: false, mut reasons }) => {
            if reasons.is_empty() {
                reasons.push("policy_denied: the policy did not allow the release".into());
            }
            // Most severe first; the policy's order otherwise.
            reasons.sort_by_key(|r| priority(r));
            let code = reasons.first().map(|r| code_of(r));
            Decision { allow: false, reasons, scope: None, code }
        }
        Err(e) => refusal(ReasonCode::PolicyDenied, &format!("policy_error: {e}")),
    }
}

fn refusal(code: ReasonCode, reason: &str) -> Decision {
    Decision { allow: false, reasons: vec![reason.to_owned()], scope: None, code: Some(code) }
}

fn reason_key(reason: &str) -> &str {
    reason.split(':').next().unwrap_or_default().trim()
}

/// The codes a policy reason may carry to the guest, by their stable names
/// ([`ReasonCode::as_str`]); every other reason is `policy_denied`.
const POLICY_CODES: [ReasonCode; 9] = [
    ReasonCode::DebugEnabled,
    ReasonCode::VmplNotAllowed,
    ReasonCode::MeasurementNotAllowed,
    ReasonCode::TcbStatusNotAllowed,
    ReasonCode::TdAttributesNotAllowed,
    ReasonCode::NoPolicy,
    ReasonCode::GpuCountMismatch,
    ReasonCode::GpuRevoked,
    ReasonCode::GpuMeasurementMismatch,
];

/// The guest-visible code of a policy reason.
pub fn code_of(reason: &str) -> ReasonCode {
    let key = reason_key(reason);
    POLICY_CODES.into_iter().find(|code| code.as_str() == key).unwrap_or(ReasonCode::PolicyDenied)
}

fn priority(reason: &str) -> u8 {
    match reason_key(reason) {
        "debug_enabled" => 0,
        "td_attributes_not_allowed" => 1,
        "vmpl_not_allowed" => 2,
        "tee_not_supported" => 3,
        "tcb_below_minimum" => 4,
        "tcb_status_not_allowed" => 5,
        "rtmr_not_allowed" => 6,
        "measurement_not_allowed" => 7,
        _ => 8,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::evidence::TeeKind;
    use crate::store::local::{Kek, LocalStore};

    const M: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

    pub(crate) fn sample_claims(debug: bool, vmpl: u32, measurement: &str) -> Claims {
        let json = serde_json::json!({
            "tee": "snp", "measurement": measurement, "debug": debug,
            "report_data": "00".repeat(64), "init_data_digest": "00".repeat(32),
        });
        let mut claims: Claims = serde_json::from_value(json).unwrap();
        // The SNP part, through the JSON shape policies see.
        let snp = serde_json::json!({
            "version": 3, "generation": "milan", "vek_product": "Milan-B0", "guest_svn": 0,
            "policy": {"raw": 0x30000, "abi_minor": 0, "abi_major": 0, "smt": true, "migrate_ma": false,
                       "debug": debug, "single_socket": false, "cxl_allow": false, "mem_aes_256_xts": false,
                       "rapl_dis": false, "ciphertext_hiding": false, "page_swap_disable": false},
            "vmpl": vmpl, "signing_key": "vcek", "author_key_en": false, "mask_chip_key": false,
            "reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            "current_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            "committed_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            "launch_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            "chip_id": "00", "chip_id_masked": true, "family_id": "00", "image_id": "00",
            "id_key_digest": "00", "author_key_digest": "00", "report_id": "00", "report_id_ma": "00",
            "host_data": "00", "platform_info": {"raw": 0, "smt_enabled": false, "tsme_enabled": false,
                "ecc_enabled": false, "rapl_disabled": false, "ciphertext_hiding_enabled": false,
                "alias_check_complete": false, "tio_enabled": false},
            "current_firmware": {"build": 0, "minor": 0, "major": 1},
            "committed_firmware": {"build": 0, "minor": 0, "major": 1},
        });
        claims.snp = Some(serde_json::from_value(snp).unwrap());
        assert_eq!(claims.tee, TeeKind::Snp);
        claims
    }

    fn meta(name: &str, allowed: &[&str]) -> SecretMeta {
        SecretMeta { allowed_measurements: allowed.iter().map(|s| s.to_string()).collect(), ..placeholder_meta(name) }
    }

    fn store() -> (tempfile::TempDir, Arc<dyn SecretStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("store"), &Kek::new([7; 32])).unwrap();
        (dir, Arc::new(store))
    }

    #[test]
    fn builtin_default_keeps_the_old_behaviour() {
        let engine = PolicyEngine::builtin();
        assert_eq!(engine.evaluate(&sample_claims(false, 0, M), &meta("a/b", &[M])), Ok(()));
        let denial = engine.evaluate(&sample_claims(true, 0, M), &meta("a/b", &[M])).unwrap_err();
        assert_eq!(denial.code, ReasonCode::DebugEnabled);
        assert_eq!(denial.reasons, vec!["debug_enabled"]);
        let denial = engine.evaluate(&sample_claims(false, 1, M), &meta("a/b", &[M])).unwrap_err();
        assert_eq!(denial.code, ReasonCode::VmplNotAllowed);
        assert_eq!(denial.reasons, vec!["vmpl_not_allowed: 1 != 0"]);
        let denial = engine.evaluate(&sample_claims(false, 0, M), &meta("a/b", &[])).unwrap_err();
        assert_eq!(denial.code, ReasonCode::MeasurementNotAllowed);
        assert_eq!(denial.reasons, vec![format!("measurement_not_allowed: {M} for a/b")]);
        // Several failures: all reported, the most severe first.
        let denial = engine.evaluate(&sample_claims(true, 2, M), &meta("a/b", &[])).unwrap_err();
        assert_eq!(denial.code, ReasonCode::DebugEnabled);
        assert_eq!(denial.reasons.len(), 3, "{:?}", denial.reasons);
    }

    #[test]
    fn codes_map_known_reasons_only() {
        assert_eq!(code_of("tcb_status_not_allowed: OutOfDate"), ReasonCode::TcbStatusNotAllowed);
        assert_eq!(code_of("tcb_below_minimum: snp 8 < 23"), ReasonCode::PolicyDenied);
        assert_eq!(code_of("anything else"), ReasonCode::PolicyDenied);
        // Policies and reference values are stored in the reserved namespace.
        assert!(crate::names::is_reserved(POLICY_PREFIX) && crate::names::is_reserved(REFVALS_PREFIX));
        for code in POLICY_CODES {
            assert_eq!(code_of(&format!("{code}: detail")), code);
        }
        // Codes that are not the policy's to give stay policy_denied.
        assert_eq!(code_of("internal: x"), ReasonCode::PolicyDenied);
        assert_eq!(code_of("secret_not_found"), ReasonCode::PolicyDenied);
    }

    #[tokio::test]
    async fn no_policy_denies_and_scopes_pick_the_most_specific() {
        let (_dir, store) = store();
        let engine = PolicyEngine::with_store(Arc::clone(&store), false);
        // Before the first load: refused as unavailable.
        let d = engine.evaluate(&sample_claims(false, 0, M), &meta("models/a", &[M])).unwrap_err();
        assert_eq!(d.code, ReasonCode::StoreUnavailable);
        engine.refresh().await.unwrap();
        let d = engine.evaluate(&sample_claims(false, 0, M), &meta("models/a", &[M])).unwrap_err();
        assert_eq!(d.code, ReasonCode::NoPolicy);
        assert_eq!(d.code.grpc_code(), tonic::Code::PermissionDenied);

        engine.set_policy("models/", "package kbs.release\nallow := true").await.unwrap();
        engine
            .set_policy(
                "models/secret*",
                "package kbs.release\nreasons contains \"nope\" if true\nallow if count(reasons) == 0",
            )
            .await
            .unwrap();
        assert_eq!(engine.evaluate(&sample_claims(false, 0, M), &meta("models/a", &[])), Ok(()));
        let d = engine.evaluate(&sample_claims(false, 0, M), &meta("models/secret/k", &[])).unwrap_err();
        assert_eq!((d.code, d.reasons), (ReasonCode::PolicyDenied, vec!["nope".to_owned()]));
        let d = engine.evaluate(&sample_claims(false, 0, M), &meta("other/a", &[M])).unwrap_err();
        assert_eq!(d.code, ReasonCode::NoPolicy);
        let decision = engine.decide(&sample_claims(false, 0, M), &meta("models/secret/k", &[]));
        assert_eq!(decision.scope.as_deref(), Some("models/secret*"));

        // Another replica on the same store sees the policies after its refresh.
        let other = PolicyEngine::with_store(Arc::clone(&store), false);
        other.refresh().await.unwrap();
        assert_eq!(other.evaluate(&sample_claims(false, 0, M), &meta("models/a", &[])), Ok(()));
        engine.delete_policy("models/").await.unwrap();
        other.refresh().await.unwrap();
        assert_eq!(
            other.evaluate(&sample_claims(false, 0, M), &meta("models/a", &[])).unwrap_err().code,
            ReasonCode::NoPolicy
        );
    }

    #[tokio::test]
    async fn bad_policy_is_refused_at_upload_and_the_old_one_stays() {
        let (_dir, store) = store();
        let engine = PolicyEngine::with_store(store, true);
        engine.refresh().await.unwrap();
        let first = engine.set_policy("models/", "package kbs.release\nallow := true").await.unwrap();
        assert_eq!(first.version, 1);
        let err = engine.set_policy("models/", "package kbs.release\nallow if {").await.unwrap_err();
        assert!(matches!(err, PolicyError::Compile(_)), "{err}");
        let err = engine.set_policy("bad scope", "package kbs.release\nallow := true").await.unwrap_err();
        assert!(matches!(err, PolicyError::Scope(_)), "{err}");
        let now = engine.get_policy("models/*").await.unwrap();
        assert_eq!((now.version, now.sha256), (1, first.sha256));
        assert_eq!(engine.evaluate(&sample_claims(false, 0, M), &meta("models/a", &[])), Ok(()));
        // The built-in default still covers the rest, and is listed.
        let all = engine.list_policies().await.unwrap();
        assert_eq!(
            all.iter().map(|p| (p.scope.as_str(), p.builtin)).collect::<Vec<_>>(),
            [("models/", false), ("*", true)]
        );
    }

    #[tokio::test]
    async fn fails_closed_on_evaluation_errors() {
        let (_dir, store) = store();
        let engine = PolicyEngine::with_store(store, false);
        engine.refresh().await.unwrap();
        // Compiles, but runs away: stopped, and refused.
        engine.set_policy("a/", engine::tests::RUNAWAY).await.unwrap();
        let d = engine.evaluate(&sample_claims(false, 0, M), &meta("a/x", &[M])).unwrap_err();
        assert_eq!(d.code, ReasonCode::PolicyDenied);
        assert!(d.reasons[0].starts_with("policy_error: "), "{:?}", d.reasons);
    }

    #[tokio::test]
    async fn reference_values_feed_the_default_policy() {
        let (_dir, store) = store();
        let engine = PolicyEngine::with_store(store, true);
        engine.refresh().await.unwrap();
        let d = engine.evaluate(&sample_claims(false, 0, M), &meta("a/b", &[])).unwrap_err();
        assert_eq!(d.code, ReasonCode::MeasurementNotAllowed);
        let json = format!(r#"{{"measurements":["{}"]}}"#, M.to_uppercase());
        let info = engine.put_reference_values("default", &json).await.unwrap();
        assert!(info.json.contains(M));
        assert_eq!(engine.evaluate(&sample_claims(false, 0, M), &meta("a/b", &[])), Ok(()));
        engine
            .put_reference_values(
                "default",
                &format!(r#"{{"measurements":["{M}"],"snp_min_tcb":{{"milan":{{"snp":23}}}}}}"#),
            )
            .await
            .unwrap();
        let d = engine.evaluate(&sample_claims(false, 0, M), &meta("a/b", &[])).unwrap_err();
        assert_eq!(d.reasons, vec!["tcb_below_minimum: snp 8 < 23"]);
        assert_eq!(d.code, ReasonCode::PolicyDenied);
        engine.delete_reference_values("default").await.unwrap();
        assert!(engine.list_reference_values().await.unwrap().is_empty());
        assert!(engine.put_reference_values("default", "{\"measurements\":[\"xyz\"]}").await.is_err());
    }

    #[test]
    fn offline_decisions() {
        let sets = BTreeMap::from([("default".to_owned(), serde_json::json!({"measurements": [M]}))]);
        let d = decide_offline(DEFAULT_POLICY, &sets, &sample_claims(false, 0, M), &placeholder_meta("x")).unwrap();
        assert!(d.allow, "{d:?}");
        let d = decide_offline(DEFAULT_POLICY, &BTreeMap::new(), &sample_claims(false, 0, M), &placeholder_meta("x"))
            .unwrap();
        assert_eq!(d.code, Some(ReasonCode::MeasurementNotAllowed));
    }
}
