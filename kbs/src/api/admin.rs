//! The operator-facing `kbs.v1.Admin` service.
//!
//! Every call is authenticated, then authorized by role:
//! - a TLS client certificate that chains to `admin.client_ca` and whose
//!   subject CN or DNS SAN matches an `admin.clients` entry, or
//! - a bearer token (`authorization: Bearer <token>`), compared by SHA-256
//!   digest in constant time against `admin.tokens`.
//!
//! A client certificate, when presented, takes precedence; a certificate
//! that matches no entry is refused even if a token is also sent.
//!
//! | call | admin | uploader | auditor |
//! |---|---|---|---|
//! | PutSecret, GenerateSecret | yes | yes | no |
//! | GetSecretMetadata, ListSecrets | yes | yes | yes |
//! | DeleteSecret, DestroySecretVersions | yes | no | no |
//! | SetPolicy, DeletePolicy, PutReferenceValues, DeleteReferenceValues | yes | no | no |
//! | GetPolicy, ListPolicies, Get/ListReferenceValues | yes | no | yes |
//! | TestPolicy of the policy in force | yes | no | yes |
//! | TestPolicy of Rego given in the request | yes | no | no |
//! | QueryAudit | yes | no | yes |
//!
//! Secret values are write-only: no call returns one.
//!
//! Every change is audited before it is made, failing closed: the call's
//! checks run first (they change nothing), then its decision is recorded,
//! and only once that record is written does the change happen. A change
//! whose record cannot be written is refused (`internal`) and does not
//! happen. An allowed change whose effect then fails gets a second record,
//! with the same `call_id` and `outcome: failed`. A call refused for its
//! role is recorded too (`deny`, `permission_denied`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use kbs_proto::v1::admin_server::Admin;
use kbs_proto::v1::{
    DeletePolicyRequest, DeletePolicyResponse, DeleteReferenceValuesRequest, DeleteReferenceValuesResponse,
    DeleteSecretRequest, DeleteSecretResponse, DestroySecretVersionsRequest, GenerateSecretRequest, GetPolicyRequest,
    GetReferenceValuesRequest, GetSecretMetadataRequest, ListPoliciesRequest, ListPoliciesResponse,
    ListReferenceValuesRequest, ListReferenceValuesResponse, ListSecretsRequest, ListSecretsResponse, Policy,
    PolicyDecision, PutReferenceValuesRequest, PutSecretRequest, QueryAuditRequest, QueryAuditResponse,
    ReferenceValues, SecretMetadata, SetPolicyRequest, TestPolicyRequest,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::policy_admin::{self, PolicyAdminContext};
use crate::audit::{AuditLog, Event, SecretRef};
use crate::config::{ClientEntry, Role, TokenEntry};
use crate::error::Error;
use crate::names::{MAX_NAME_LEN, check_not_reserved, is_reserved};
use crate::store::{NewSecret, SecretMeta, SecretStore, SecretValue, normalize_measurement, validate_name};

/// Largest page a list returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Largest generated secret.
pub const MAX_GENERATED_BYTES: u32 = 4096;

/// Every Admin call, for authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// PutSecret.
    Put,
    /// GenerateSecret.
    Generate,
    /// GetSecretMetadata.
    Metadata,
    /// ListSecrets.
    List,
    /// DeleteSecret.
    Delete,
    /// DestroySecretVersions.
    Destroy,
    /// SetPolicy, DeletePolicy, PutReferenceValues, DeleteReferenceValues.
    WritePolicy,
    /// GetPolicy, ListPolicies, Get/ListReferenceValues, and TestPolicy of
    /// the policy in force.
    ReadPolicy,
    /// TestPolicy of Rego given in the request: running code of the
    /// caller's choosing in the broker is an admin's call.
    DryRunRego,
    /// QueryAudit.
    ReadAudit,
}

impl Call {
    const fn name(self) -> &'static str {
        match self {
            Self::Put => "PutSecret",
            Self::Generate => "GenerateSecret",
            Self::Metadata => "GetSecretMetadata",
            Self::List => "ListSecrets",
            Self::Delete => "DeleteSecret",
            Self::Destroy => "DestroySecretVersions",
            Self::WritePolicy => "policy write",
            Self::ReadPolicy => "policy read",
            Self::DryRunRego => "TestPolicy with Rego",
            Self::ReadAudit => "QueryAudit",
        }
    }

    /// Whether `role` may make this call.
    pub const fn allowed(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Self::Put | Self::Generate | Self::Metadata | Self::List, Role::Uploader)
                | (Self::Metadata | Self::List | Self::ReadPolicy | Self::ReadAudit, Role::Auditor)
        )
    }
}

/// Who is calling, once authenticated.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `token:<name>` or `cert:<name>`, for audit.
    pub id: String,
    /// The role.
    pub role: Role,
}

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Arc<dyn SecretStore>,
    audit: Arc<AuditLog>,
    tokens: Arc<Vec<TokenEntry>>,
    clients: Arc<Vec<ClientEntry>>,
    max_secret_bytes: usize,
    policies: PolicyAdminContext,
}

impl AdminService {
    /// Builds the service.
    pub fn new(
        store: Arc<dyn SecretStore>,
        audit: Arc<AuditLog>,
        tokens: Vec<TokenEntry>,
        clients: Vec<ClientEntry>,
        max_secret_bytes: usize,
        policies: PolicyAdminContext,
    ) -> Self {
        Self { store, audit, tokens: Arc::new(tokens), clients: Arc::new(clients), max_secret_bytes, policies }
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Error> {
        if let Some(certs) = request.peer_certs() {
            let leaf = certs.first().ok_or(Error::Unauthenticated("empty client certificate chain"))?;
            return self.client_identity(leaf.as_ref());
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Error::Unauthenticated("missing bearer token or client certificate"))?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare against every entry without early exit.
        let mut found: Option<&TokenEntry> = None;
        for entry in self.tokens.iter() {
            if constant_time_eq(&entry.sha256, &digest) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(Error::Unauthenticated("unknown token"))?;
        Ok(Caller { id: format!("token:{}", entry.name), role: entry.role })
    }

    /// Maps a client certificate (already chained to the admin client CA by
    /// the TLS layer) to a configured identity.
    fn client_identity(&self, der: &[u8]) -> Result<Caller, Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| Error::Unauthenticated("client certificate does not parse"))?;
        let cns: Vec<String> =
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_owned)).collect();
        let dns: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let entry = self
            .clients
            .iter()
            .find(|c| {
                c.common_name.as_ref().is_some_and(|want| cns.iter().any(|cn| cn == want))
                    || c.dns_san.as_ref().is_some_and(|want| dns.iter().any(|d| d == want))
            })
            .ok_or(Error::Unauthenticated("client certificate matches no admin client"))?;
        Ok(Caller { id: format!("cert:{}", entry.name), role: entry.role })
    }

    /// Logs and audits a call that did not authenticate; its status.
    fn unauthenticated<T>(&self, request: &Request<T>, call: Option<Call>, e: &Error) -> Status {
        let peer = super::peer(request);
        let call = call.map(Call::name).unwrap_or("unknown");
        tracing::warn!(peer, call, cause = %e, "admin call unauthenticated");
        self.audit.record_refusal(&super::refusal_event("admin.auth", peer, e));
        e.to_status()
    }

    /// Authenticates a call from its headers and TLS session alone, before
    /// its message is read: the interceptor of the Admin service, so that
    /// no unauthenticated caller can make the broker buffer and decode a
    /// message. The caller it finds travels with the request to
    /// [`Self::authorize`].
    pub fn authenticator(&self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let service = self.clone();
        move |mut request: Request<()>| {
            let caller = service.authenticate(&request).map_err(|e| service.unauthenticated(&request, None, &e))?;
            request.extensions_mut().insert(caller);
            Ok(request)
        }
    }

    /// Authenticates (when the interceptor has not) and authorizes a call;
    /// a call refused for its role is audited under `action`.
    fn authorize<T>(&self, request: &Request<T>, call: Call, action: &'static str) -> Result<Caller, Status> {
        let caller = match request.extensions().get::<Caller>() {
            Some(caller) => caller.clone(),
            None => self.authenticate(request).map_err(|e| self.unauthenticated(request, Some(call), &e))?,
        };
        if !call.allowed(caller.role) {
            tracing::warn!(caller = caller.id, role = caller.role.as_str(), call = call.name(), "admin call forbidden");
            let refused = Error::Forbidden { role: caller.role.as_str(), call: call.name() };
            let event = Event { reason: Some(refused.reason().as_str()), ..Event::new(action, caller.id.clone()) };
            self.record(&event)?;
            return Err(refused.to_status());
        }
        Ok(caller)
    }

    /// Writes a record, failing closed: when it cannot be written the call
    /// is refused (`internal`) whatever the decision.
    fn record(&self, event: &Event) -> Result<(), Status> {
        self.audit.record(event).map_err(|audit_err| {
            tracing::error!(action = event.action, caller = event.caller, error = %audit_err, "audit write failed; refusing");
            Error::Internal("audit log unavailable".into()).to_status()
        })
    }

    /// Runs an admin change recorded in `event` (a denial until decided):
    /// `checked` is the outcome of its checks, which change nothing. A
    /// refusal is recorded and returned. An allowed change is recorded
    /// first, and `effect` runs only once that record is written; if the
    /// effect fails, a second record (`outcome: failed`, same `call_id`)
    /// says so, on a best-effort basis since nothing was changed.
    async fn change<P, T, F, Fut>(&self, mut event: Event, checked: Result<P, Error>, effect: F) -> Result<T, Status>
    where
        F: FnOnce(P) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let checked = match checked {
            Ok(checked) => checked,
            Err(e) => {
                event.reason = Some(e.reason().as_str());
                self.record(&event)?;
                return Err(e.to_status());
            }
        };
        event.decision = "allow";
        event.call_id = Some(call_id().map_err(|e| e.to_status())?);
        self.record(&event)?;
        match effect(checked).await {
            Ok(done) => Ok(done),
            Err(e) => {
                let failed = Event { outcome: Some("failed"), reason: Some(e.reason().as_str()), ..event };
                if let Err(audit_err) = self.audit.record(&failed) {
                    tracing::error!(action = failed.action, error = %audit_err, "audit write of a failed change failed");
                }
                Err(e.to_status())
            }
        }
    }

    async fn put(
        &self,
        who: &Caller,
        action: &'static str,
        secret: Result<NewSecret, Error>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let name = secret.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let checked = match secret {
            Ok(mut secret) => self.keep_release_conditions(who, &mut secret).await.map(|()| secret),
            Err(e) => Err(e),
        };
        let store = &self.store;
        let meta =
            self.change(event(action, who, &name), checked, |secret| async move {
                store.put(secret).await.map_err(Error::from)
            })
            .await?;
        Ok(Response::new(to_wire(meta)))
    }

    /// Only an admin changes the release conditions of an existing secret
    /// (its allow-list and its labels, which policies read, e.g. `refvals`):
    /// a new version from anyone else carries the current ones over when it
    /// gives none, and is refused when it gives others. The write is made
    /// conditional on the version whose conditions were read, or, for a
    /// name that has no secret, on its still having none.
    async fn keep_release_conditions(&self, who: &Caller, secret: &mut NewSecret) -> Result<(), Error> {
        if who.role == Role::Admin {
            return Ok(());
        }
        // The store checks the write against its newest version, so the
        // answering server's word is enough here (it may lag: then the
        // write is refused as a conflict, never made over newer conditions).
        let current = match self.store.metadata_for_write(&secret.name).await {
            Ok(current) => current,
            Err(crate::store::StoreError::NotFound) => {
                // A new secret, as long as it stays new: one an admin
                // creates meanwhile keeps its conditions.
                secret.expected_version.get_or_insert(0);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let given = !secret.labels.is_empty() || !secret.allowed_measurements.is_empty();
        let same = secret.labels == current.labels
            && secret.allowed_measurements.iter().collect::<std::collections::BTreeSet<_>>()
                == current.allowed_measurements.iter().collect::<std::collections::BTreeSet<_>>();
        if given && !same {
            tracing::warn!(caller = who.id, secret = secret.name, "a non-admin tried to change release conditions");
            return Err(Error::Forbidden {
                role: who.role.as_str(),
                call: "changing the allow-list or labels of an existing secret",
            });
        }
        secret.labels = current.labels;
        secret.allowed_measurements = current.allowed_measurements;
        secret.expected_version.get_or_insert(current.version);
        Ok(())
    }

    fn new_secret(
        &self,
        name: String,
        value: SecretValue,
        labels: std::collections::HashMap<String, String>,
        allowed: Vec<String>,
        expected_version: Option<u64>,
    ) -> Result<NewSecret, Error> {
        check_secret_name(&name)?;
        if value.len() > self.max_secret_bytes {
            return Err(crate::store::StoreError::TooLarge { len: value.len(), max: self.max_secret_bytes }.into());
        }
        if labels.len() > 64 || labels.iter().any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024) {
            return Err(Error::InvalidRequest("too many, empty or too long labels".into()));
        }
        if allowed.len() > 256 {
            return Err(Error::InvalidRequest("more than 256 allowed measurements".into()));
        }
        let mut allowed_measurements = Vec::with_capacity(allowed.len());
        for m in &allowed {
            allowed_measurements.push(
                normalize_measurement(m)
                    .ok_or_else(|| Error::InvalidRequest("allowed measurement must be 96 hex digits".into()))?,
            );
        }
        Ok(NewSecret {
            name,
            value,
            labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            allowed_measurements,
            expected_version,
        })
    }
}

/// The record of an admin change of `name` (a secret, scope or set) by
/// `who`, a denial until decided.
fn event(action: &'static str, who: &Caller, name: &str) -> Event {
    Event { secrets: vec![SecretRef { name: name.to_owned(), version: None }], ..Event::new(action, who.id.clone()) }
}

/// A fresh id tying an admin change's records together.
fn call_id() -> Result<String, Error> {
    let mut id = [0u8; 8];
    SystemRandom::new().fill(&mut id).map_err(|_| Error::Internal("random source failed".into()))?;
    Ok(format!("adm-{}", hex::encode(id)))
}

/// Secret names must follow the grammar and stay out of the reserved prefix.
fn check_secret_name(name: &str) -> Result<(), Error> {
    validate_name(name)?;
    Ok(check_not_reserved(name)?)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn to_wire(m: SecretMeta) -> SecretMetadata {
    SecretMetadata {
        name: m.name,
        version: m.version,
        created_at: m.created_at,
        size: m.size,
        labels: m.labels.into_iter().collect(),
        allowed_measurements: m.allowed_measurements,
        versions: m.versions,
    }
}

fn respond<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| e.to_status())
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn put_secret(&self, request: Request<PutSecretRequest>) -> Result<Response<SecretMetadata>, Status> {
        let who = self.authorize(&request, Call::Put, "secret.put")?;
        let req = request.into_inner();
        let secret = self.new_secret(
            req.name,
            SecretValue::new(req.value),
            req.labels,
            req.allowed_measurements,
            req.expected_version,
        );
        self.put(&who, "secret.put", secret).await
    }

    async fn generate_secret(
        &self,
        request: Request<GenerateSecretRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let who = self.authorize(&request, Call::Generate, "secret.generate")?;
        let req = request.into_inner();
        // A refusal here is recorded like the put's own (with no name:
        // that of a refused request is not recorded).
        let value = if req.bytes == 0 || req.bytes > MAX_GENERATED_BYTES {
            Err(Error::InvalidRequest(format!("bytes must be within 1..={MAX_GENERATED_BYTES}")))
        } else {
            let mut value = vec![0u8; usize::try_from(req.bytes).unwrap_or(0)];
            SystemRandom::new()
                .fill(&mut value)
                .map_err(|_| Error::Internal("random source failed".into()))
                .map(|()| value)
        };
        let secret = value.and_then(|value| {
            self.new_secret(
                req.name,
                SecretValue::new(value),
                req.labels,
                req.allowed_measurements,
                req.expected_version,
            )
        });
        self.put(&who, "secret.generate", secret).await
    }

    async fn get_secret_metadata(
        &self,
        request: Request<GetSecretMetadataRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        self.authorize(&request, Call::Metadata, "secret.metadata")?;
        let name = request.into_inner().name;
        let result = match check_secret_name(&name) {
            Ok(()) => self.store.metadata(&name).await.map(to_wire).map_err(Error::from),
            Err(e) => Err(e),
        };
        respond(result)
    }

    async fn list_secrets(
        &self,
        request: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        self.authorize(&request, Call::List, "secret.list")?;
        let req = request.into_inner();
        let limit = match usize::try_from(req.page_size).unwrap_or(MAX_PAGE_SIZE) {
            0 => 100,
            n => n.min(MAX_PAGE_SIZE),
        };
        if req.prefix.len() > MAX_NAME_LEN || req.page_token.len() > MAX_NAME_LEN {
            return Err(Error::InvalidRequest("prefix or page token too long".into()).to_status());
        }
        // The broker's own records (policies, reference values) are never
        // listed, and the page token is always the name of a listed secret,
        // so that it cannot reveal theirs either: pages are filled after
        // filtering, reading on past reserved names.
        let mut after = (!req.page_token.is_empty()).then(|| req.page_token.clone());
        let mut secrets = Vec::new();
        let more = loop {
            let page = self
                .store
                .list(&req.prefix, after.as_deref(), limit - secrets.len())
                .await
                .map_err(|e| Error::from(e).to_status())?;
            let read_to = page.items.last().map(|m| m.name.clone());
            secrets.extend(page.items.into_iter().filter(|m| !is_reserved(&m.name)).map(to_wire));
            match (page.next, read_to) {
                (Some(_), Some(last)) if secrets.len() < limit => after = Some(last),
                (next, _) => break next.is_some(),
            }
        };
        let next_page_token = match (more, secrets.last()) {
            (true, Some(last)) => last.name.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListSecretsResponse { secrets, next_page_token }))
    }

    async fn delete_secret(
        &self,
        request: Request<DeleteSecretRequest>,
    ) -> Result<Response<DeleteSecretResponse>, Status> {
        let who = self.authorize(&request, Call::Delete, "secret.delete")?;
        let name = request.into_inner().name;
        let store = &self.store;
        self.change(event("secret.delete", &who, &name), check_secret_name(&name), |()| async {
            store.delete(&name).await.map_err(Error::from)
        })
        .await?;
        Ok(Response::new(DeleteSecretResponse {}))
    }

    async fn destroy_secret_versions(
        &self,
        request: Request<DestroySecretVersionsRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let who = self.authorize(&request, Call::Destroy, "secret.destroy")?;
        let req = request.into_inner();
        let checked = check_secret_name(&req.name).and_then(|()| {
            if req.versions.is_empty() || req.versions.len() > 1000 {
                return Err(Error::InvalidRequest("give 1 to 1000 versions to destroy".into()));
            }
            Ok(())
        });
        // The record names each version to destroy (when the request is
        // well formed).
        let mut record = event("secret.destroy", &who, &req.name);
        if checked.is_ok() {
            record.secrets =
                req.versions.iter().map(|v| SecretRef { name: req.name.clone(), version: Some(*v) }).collect();
        }
        let store = &self.store;
        self.change(record, checked, |()| async {
            store.destroy_versions(&req.name, &req.versions).await.map_err(Error::from)
        })
        .await?;
        let result = async {
            match self.store.metadata(&req.name).await {
                Ok(meta) => Ok(to_wire(meta)),
                // The newest version (perhaps every version) destroyed:
                // nothing is served until a new version is written.
                Err(crate::store::StoreError::NotFound) => {
                    Ok(SecretMetadata { name: req.name.clone(), ..Default::default() })
                }
                Err(e) => Err(e.into()),
            }
        }
        .await;
        respond(result)
    }

    async fn set_policy(&self, request: Request<SetPolicyRequest>) -> Result<Response<Policy>, Status> {
        let who = self.authorize(&request, Call::WritePolicy, "policy.set")?;
        let req = request.into_inner();
        let checked = policy_admin::check_set_policy(&self.policies, &req);
        let record = Event { content_sha256: checked.as_ref().ok().cloned(), ..event("policy.set", &who, &req.scope) };
        let policy = self.change(record, checked, |_| policy_admin::set_policy(&self.policies, req)).await?;
        Ok(Response::new(policy))
    }

    async fn get_policy(&self, request: Request<GetPolicyRequest>) -> Result<Response<Policy>, Status> {
        self.authorize(&request, Call::ReadPolicy, "policy.get")?;
        respond(policy_admin::get_policy(&self.policies, request.into_inner()).await)
    }

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.authorize(&request, Call::ReadPolicy, "policy.list")?;
        respond(policy_admin::list_policies(&self.policies, request.into_inner()).await)
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let who = self.authorize(&request, Call::WritePolicy, "policy.delete")?;
        let req = request.into_inner();
        let checked = policy_admin::check_delete_policy(&req);
        let record = event("policy.delete", &who, &req.scope);
        Ok(Response::new(self.change(record, checked, |()| policy_admin::delete_policy(&self.policies, req)).await?))
    }

    async fn test_policy(&self, request: Request<TestPolicyRequest>) -> Result<Response<PolicyDecision>, Status> {
        let call = if request.get_ref().rego.is_empty() { Call::ReadPolicy } else { Call::DryRunRego };
        self.authorize(&request, call, "policy.test")?;
        respond(policy_admin::test_policy(&self.policies, request.into_inner()).await)
    }

    async fn put_reference_values(
        &self,
        request: Request<PutReferenceValuesRequest>,
    ) -> Result<Response<ReferenceValues>, Status> {
        let who = self.authorize(&request, Call::WritePolicy, "refvals.put")?;
        let req = request.into_inner();
        let checked = policy_admin::check_put_reference_values(&req);
        let record = Event { content_sha256: checked.as_ref().ok().cloned(), ..event("refvals.put", &who, &req.name) };
        let set = self.change(record, checked, |_| policy_admin::put_reference_values(&self.policies, req)).await?;
        Ok(Response::new(set))
    }

    async fn get_reference_values(
        &self,
        request: Request<GetReferenceValuesRequest>,
    ) -> Result<Response<ReferenceValues>, Status> {
        self.authorize(&request, Call::ReadPolicy, "refvals.get")?;
        respond(policy_admin::get_reference_values(&self.policies, request.into_inner()).await)
    }

    async fn list_reference_values(
        &self,
        request: Request<ListReferenceValuesRequest>,
    ) -> Result<Response<ListReferenceValuesResponse>, Status> {
        self.authorize(&request, Call::ReadPolicy, "refvals.list")?;
        respond(policy_admin::list_reference_values(&self.policies, request.into_inner()).await)
    }

    async fn delete_reference_values(
        &self,
        request: Request<DeleteReferenceValuesRequest>,
    ) -> Result<Response<DeleteReferenceValuesResponse>, Status> {
        let who = self.authorize(&request, Call::WritePolicy, "refvals.delete")?;
        let req = request.into_inner();
        let checked = policy_admin::check_delete_reference_values(&req);
        let record = event("refvals.delete", &who, &req.name);
        let done =
            self.change(record, checked, |()| policy_admin::delete_reference_values(&self.policies, req)).await?;
        Ok(Response::new(done))
    }

    async fn query_audit(&self, request: Request<QueryAuditRequest>) -> Result<Response<QueryAuditResponse>, Status> {
        self.authorize(&request, Call::ReadAudit, "audit.query")?;
        respond(policy_admin::query_audit(&self.policies, request.into_inner()).await)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use tonic::Code;

    use super::*;
    use crate::challenge::ChallengeSealer;
    use crate::evidence::anchors::SnpAnchors;
    use crate::evidence::collateral::VekResolver;
    use crate::evidence::snp::SnpVerifier;
    use crate::policy::{DEFAULT_POLICY, PolicyEngine};
    use crate::release::{Broker, system_clock};
    use crate::store::StoreError;
    use crate::store::local::{Kek, LocalStore};

    /// An Admin service over `store`, auditing to `audit`.
    fn service(store: &Arc<dyn SecretStore>, audit: AuditLog) -> AdminService {
        let audit = Arc::new(audit);
        let broker = Broker::new(
            ChallengeSealer::new(&[7; 32], &[]).unwrap(),
            Duration::from_secs(60),
            SnpVerifier::new(SnpAnchors::amd().unwrap()),
            VekResolver::new(None, None),
            Arc::clone(store),
            Arc::clone(&audit),
            system_clock(),
        )
        .with_policy(Arc::new(PolicyEngine::with_store(Arc::clone(store), true)));
        let policies = PolicyAdminContext::new(Arc::new(broker), None);
        AdminService::new(Arc::clone(store), audit, Vec::new(), Vec::new(), 1024, policies)
    }

    /// Two services over one store: one audits to a file, the other's
    /// every audit write fails.
    fn services(dir: &Path) -> (AdminService, AdminService, Arc<dyn SecretStore>, PathBuf) {
        let store: Arc<dyn SecretStore> = Arc::new(LocalStore::open(&dir.join("secrets"), &Kek::new([3; 32])).unwrap());
        let path = dir.join("audit.jsonl");
        let recorded = service(&store, AuditLog::file(&path, "r0", None).unwrap());
        let unrecorded = service(&store, AuditLog::failing());
        (recorded, unrecorded, store, path)
    }

    fn by<T>(role: Role, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(Caller { id: format!("token:{}", role.as_str()), role });
        request
    }

    fn put(name: &str, value: &[u8]) -> PutSecretRequest {
        PutSecretRequest { name: name.into(), value: value.to_vec(), ..Default::default() }
    }

    fn refvals(name: &str) -> PutReferenceValuesRequest {
        PutReferenceValuesRequest {
            name: name.into(),
            json: serde_json::json!({"measurements": ["ab".repeat(48)]}).to_string(),
        }
    }

    fn records(path: &Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[track_caller]
    fn assert_internal<T: std::fmt::Debug>(result: Result<T, Status>) {
        let status = result.expect_err("a change without its record must be refused");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }

    /// An uploader's write of a new name is checked while the name is free;
    /// an admin who creates the secret before that write lands keeps the
    /// release conditions it set (the write was unconditional before).
    #[tokio::test]
    async fn a_secret_an_admin_creates_meanwhile_keeps_its_release_conditions() {
        let dir = tempfile::tempdir().unwrap();
        let (recorded, _, store, _) = services(dir.path());
        let uploader = Caller { id: "token:uploader".into(), role: Role::Uploader };
        let labels = |set: &str| std::collections::HashMap::from([("refvals".to_owned(), set.to_owned())]);
        let value = SecretValue::new(b"mine".to_vec());
        let mut mine = recorded.new_secret("a/b".into(), value, labels("lenient"), Vec::new(), None).unwrap();
        recorded.keep_release_conditions(&uploader, &mut mine).await.unwrap();
        let strict = PutSecretRequest { labels: labels("strict"), ..put("a/b", b"admin's") };
        recorded.put_secret(by(Role::Admin, strict)).await.unwrap();
        let err = store.put(mine).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { expected: 0, found: 1 }), "{err:?}");
        assert_eq!(store.metadata("a/b").await.unwrap().labels["refvals"], "strict");
    }

    #[tokio::test]
    async fn admin_changes_without_their_record_do_not_happen() {
        let dir = tempfile::tempdir().unwrap();
        let (recorded, unrecorded, store, path) = services(dir.path());
        recorded.put_secret(by(Role::Admin, put("a/b", b"one"))).await.unwrap();
        let policy = SetPolicyRequest { scope: "*".into(), rego: DEFAULT_POLICY.into() };
        recorded.set_policy(by(Role::Admin, policy)).await.unwrap();
        recorded.put_reference_values(by(Role::Admin, refvals("default"))).await.unwrap();
        let before = records(&path).len();
        assert_eq!(before, 3);

        // Secrets: nothing is created, overwritten, deleted or destroyed.
        assert_internal(unrecorded.put_secret(by(Role::Admin, put("a/c", b"new"))).await);
        assert!(matches!(store.metadata("a/c").await, Err(StoreError::NotFound)));
        assert_internal(unrecorded.put_secret(by(Role::Uploader, put("a/b", b"two"))).await);
        assert_internal(unrecorded.put_secret(by(Role::Admin, put("a/b", b"two"))).await);
        let generate = GenerateSecretRequest { name: "a/d".into(), bytes: 32, ..Default::default() };
        assert_internal(unrecorded.generate_secret(by(Role::Admin, generate)).await);
        assert!(matches!(store.metadata("a/d").await, Err(StoreError::NotFound)));
        assert_internal(unrecorded.delete_secret(by(Role::Admin, DeleteSecretRequest { name: "a/b".into() })).await);
        let destroy = DestroySecretVersionsRequest { name: "a/b".into(), versions: vec![1] };
        assert_internal(unrecorded.destroy_secret_versions(by(Role::Admin, destroy)).await);
        let meta = store.metadata("a/b").await.unwrap();
        assert_eq!((meta.version, meta.versions.len()), (1, 1));
        assert_eq!(store.get("a/b").await.unwrap().value.expose(), b"one");

        // Policies and reference values: none set, none deleted.
        let policy = SetPolicyRequest { scope: "a/*".into(), rego: DEFAULT_POLICY.into() };
        assert_internal(unrecorded.set_policy(by(Role::Admin, policy)).await);
        assert_internal(unrecorded.delete_policy(by(Role::Admin, DeletePolicyRequest { scope: "*".into() })).await);
        assert_internal(unrecorded.put_reference_values(by(Role::Admin, refvals("other"))).await);
        let delete = DeleteReferenceValuesRequest { name: "default".into() };
        assert_internal(unrecorded.delete_reference_values(by(Role::Admin, delete)).await);
        let policies = recorded.list_policies(by(Role::Admin, ListPoliciesRequest {})).await.unwrap().into_inner();
        let scopes: Vec<(&str, u64)> = policies.policies.iter().map(|p| (p.scope.as_str(), p.version)).collect();
        assert_eq!(scopes, [("*", 1)]);
        let sets = recorded.list_reference_values(by(Role::Admin, ListReferenceValuesRequest {})).await.unwrap();
        let names: Vec<&str> = sets.get_ref().sets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default"]);

        // A call refused for its role is refused whatever, but only once
        // recorded: without its record, it is `internal`.
        assert_internal(unrecorded.delete_secret(by(Role::Uploader, DeleteSecretRequest { name: "a/b".into() })).await);
        assert_eq!(records(&path).len(), before, "the recording service wrote nothing more");
        assert_eq!(crate::audit::verify_file(&path).unwrap().0, before);
    }

    #[tokio::test]
    async fn admin_decisions_are_recorded_with_refusals_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let (recorded, _, _, path) = services(dir.path());

        // Refused for the role: recorded as a denial, with the caller.
        let status =
            recorded.delete_secret(by(Role::Uploader, DeleteSecretRequest { name: "a/b".into() })).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        // Refused by its checks: one denial with its reason, no call id.
        let bad = SetPolicyRequest { scope: "*".into(), rego: "package kbs\nallow := ".into() };
        recorded.set_policy(by(Role::Admin, bad)).await.unwrap_err();
        // A generate refused for its size: one denial, nothing stored.
        let huge = GenerateSecretRequest { name: "a/g".into(), bytes: MAX_GENERATED_BYTES + 1, ..Default::default() };
        let status = recorded.generate_secret(by(Role::Admin, huge)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        // Allowed, then failed: the decision, then the failure, tied by id.
        let status =
            recorded.delete_secret(by(Role::Admin, DeleteSecretRequest { name: "a/zz".into() })).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        // Allowed and done: one record, with the Rego's digest.
        let policy = SetPolicyRequest { scope: "*".into(), rego: DEFAULT_POLICY.into() };
        recorded.set_policy(by(Role::Admin, policy)).await.unwrap();

        let r = records(&path);
        assert_eq!(r.len(), 6, "{r:#?}");
        let summary: Vec<(&str, &str, Option<&str>, Option<&str>)> = r
            .iter()
            .map(|r| {
                (
                    r["action"].as_str().unwrap(),
                    r["decision"].as_str().unwrap(),
                    r["reason"].as_str(),
                    r["outcome"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("secret.delete", "deny", Some("permission_denied"), None),
                ("policy.set", "deny", Some(Error::PolicyInvalid(String::new()).reason().as_str()), None),
                ("secret.generate", "deny", Some("invalid_request"), None),
                ("secret.delete", "allow", None, None),
                ("secret.delete", "allow", Some("secret_not_found"), Some("failed")),
                ("policy.set", "allow", None, None),
            ]
        );
        assert_eq!(r[0]["caller"], "token:uploader");
        assert!(r[..3].iter().all(|r| r.get("call_id").is_none()));
        assert!(r[3]["call_id"].as_str().unwrap().starts_with("adm-"));
        assert_eq!(r[3]["call_id"], r[4]["call_id"]);
        assert_ne!(r[3]["call_id"], r[5]["call_id"]);
        assert_eq!(r[5]["content_sha256"], hex::encode(Sha256::digest(DEFAULT_POLICY.as_bytes())));
        assert_eq!(crate::audit::verify_file(&path).unwrap().0, 6);
    }

    #[test]
    fn roles() {
        assert!(Call::Delete.allowed(Role::Admin));
        assert!(!Call::Delete.allowed(Role::Uploader));
        assert!(!Call::Destroy.allowed(Role::Auditor));
        assert!(!Call::Put.allowed(Role::Auditor));
        assert!(Call::List.allowed(Role::Auditor));
        assert!(Call::Generate.allowed(Role::Uploader));
        assert!(Call::ReadAudit.allowed(Role::Auditor));
        assert!(!Call::ReadAudit.allowed(Role::Uploader));
        assert!(!Call::WritePolicy.allowed(Role::Auditor));
        assert!(Call::ReadPolicy.allowed(Role::Auditor));
        assert!(!Call::DryRunRego.allowed(Role::Auditor));
        assert!(!Call::DryRunRego.allowed(Role::Uploader));
        assert!(Call::DryRunRego.allowed(Role::Admin));
    }

    #[test]
    fn reserved_names_are_refused() {
        assert!(check_secret_name("_kbs/policies/x").is_err());
        assert!(check_secret_name("models/_kbs/x").is_ok());
    }
}
