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

use std::collections::BTreeMap;
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

    /// Authenticates a call from its headers and TLS session alone, before
    /// its message is read: the interceptor of the Admin service, so that
    /// no unauthenticated caller can make the broker buffer and decode a
    /// message. The caller it finds travels with the request to
    /// [`Self::authorize`].
    pub fn authenticator(&self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let service = self.clone();
        move |mut request: Request<()>| {
            let caller = service.authenticate(&request).map_err(|e| {
                tracing::warn!(peer = %super::peer(&request), cause = %e, "admin call unauthenticated");
                e.to_status()
            })?;
            request.extensions_mut().insert(caller);
            Ok(request)
        }
    }

    fn authorize<T>(&self, request: &Request<T>, call: Call) -> Result<Caller, Status> {
        let caller = match request.extensions().get::<Caller>() {
            Some(caller) => caller.clone(),
            None => self.authenticate(request).map_err(|e| {
                tracing::warn!(peer = %super::peer(request), call = call.name(), cause = %e, "admin call unauthenticated");
                e.to_status()
            })?,
        };
        if !call.allowed(caller.role) {
            tracing::warn!(caller = caller.id, role = caller.role.as_str(), call = call.name(), "admin call forbidden");
            return Err(Error::Forbidden { role: caller.role.as_str(), call: call.name() }.to_status());
        }
        Ok(caller)
    }

    fn audit(&self, action: &'static str, who: &Caller, name: &str, result: Result<Option<u64>, &Error>) {
        let event = Event {
            action,
            decision: if result.is_ok() { "allow" } else { "deny" },
            reason: result.as_ref().err().map(|e| e.reason().as_str()),
            reasons: Vec::new(),
            attestation_id: None,
            tee: None,
            measurement: None,
            claims_digest: None,
            secrets: vec![SecretRef { name: name.to_owned(), version: result.ok().flatten() }],
            caller: who.id.clone(),
        };
        if let Err(e) = self.audit.record(&event) {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    async fn put(
        &self,
        who: &Caller,
        action: &'static str,
        secret: Result<NewSecret, Error>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let name = secret.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = match secret {
            Ok(mut secret) => match self.keep_release_conditions(who, &mut secret).await {
                Ok(()) => self.store.put(secret).await.map_err(Error::from),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.audit(action, who, &name, result.as_ref().map(|m| Some(m.version)));
        result.map(|m| Response::new(to_wire(m))).map_err(|e| e.to_status())
    }

    /// Only an admin changes the release conditions of an existing secret
    /// (its allow-list and its labels, which policies read, e.g. `refvals`):
    /// a new version from anyone else carries the current ones over when it
    /// gives none, and is refused when it gives others. The write is made
    /// conditional on the version whose conditions were read.
    async fn keep_release_conditions(&self, who: &Caller, secret: &mut NewSecret) -> Result<(), Error> {
        if who.role == Role::Admin {
            return Ok(());
        }
        let current = match self.store.metadata(&secret.name).await {
            Ok(current) => current,
            Err(crate::store::StoreError::NotFound) => return Ok(()),
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
        let who = self.authorize(&request, Call::Put)?;
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
        let who = self.authorize(&request, Call::Generate)?;
        let req = request.into_inner();
        if req.bytes == 0 || req.bytes > MAX_GENERATED_BYTES {
            return Err(Error::InvalidRequest(format!("bytes must be within 1..={MAX_GENERATED_BYTES}")).to_status());
        }
        let mut value = vec![0u8; usize::try_from(req.bytes).unwrap_or(0)];
        SystemRandom::new().fill(&mut value).map_err(|_| Error::Internal("random source failed".into()).to_status())?;
        let secret = self.new_secret(
            req.name,
            SecretValue::new(value),
            req.labels,
            req.allowed_measurements,
            req.expected_version,
        );
        self.put(&who, "secret.generate", secret).await
    }

    async fn get_secret_metadata(
        &self,
        request: Request<GetSecretMetadataRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        self.authorize(&request, Call::Metadata)?;
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
        self.authorize(&request, Call::List)?;
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
        let who = self.authorize(&request, Call::Delete)?;
        let name = request.into_inner().name;
        let result = match check_secret_name(&name) {
            Ok(()) => self.store.delete(&name).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        self.audit("secret.delete", &who, &name, result.as_ref().map(|_| None));
        respond(result.map(|()| DeleteSecretResponse {}))
    }

    async fn destroy_secret_versions(
        &self,
        request: Request<DestroySecretVersionsRequest>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let who = self.authorize(&request, Call::Destroy)?;
        let req = request.into_inner();
        let result = async {
            check_secret_name(&req.name)?;
            if req.versions.is_empty() || req.versions.len() > 1000 {
                return Err(Error::InvalidRequest("give 1 to 1000 versions to destroy".into()));
            }
            self.store.destroy_versions(&req.name, &req.versions).await?;
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
        self.audit("secret.destroy", &who, &req.name, result.as_ref().map(|_| None));
        respond(result)
    }

    async fn set_policy(&self, request: Request<SetPolicyRequest>) -> Result<Response<Policy>, Status> {
        let who = self.authorize(&request, Call::WritePolicy)?;
        let req = request.into_inner();
        let scope = req.scope.clone();
        let result = policy_admin::set_policy(&self.policies, req).await;
        self.audit("policy.set", &who, &scope, result.as_ref().map(|p| Some(p.version)));
        respond(result)
    }

    async fn get_policy(&self, request: Request<GetPolicyRequest>) -> Result<Response<Policy>, Status> {
        self.authorize(&request, Call::ReadPolicy)?;
        respond(policy_admin::get_policy(&self.policies, request.into_inner()).await)
    }

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.authorize(&request, Call::ReadPolicy)?;
        respond(policy_admin::list_policies(&self.policies, request.into_inner()).await)
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let who = self.authorize(&request, Call::WritePolicy)?;
        let req = request.into_inner();
        let scope = req.scope.clone();
        let result = policy_admin::delete_policy(&self.policies, req).await;
        self.audit("policy.delete", &who, &scope, result.as_ref().map(|_| None));
        respond(result)
    }

    async fn test_policy(&self, request: Request<TestPolicyRequest>) -> Result<Response<PolicyDecision>, Status> {
        let call = if request.get_ref().rego.is_empty() { Call::ReadPolicy } else { Call::DryRunRego };
        self.authorize(&request, call)?;
        respond(policy_admin::test_policy(&self.policies, request.into_inner()).await)
    }

    async fn put_reference_values(
        &self,
        request: Request<PutReferenceValuesRequest>,
    ) -> Result<Response<ReferenceValues>, Status> {
        let who = self.authorize(&request, Call::WritePolicy)?;
        let req = request.into_inner();
        let name = req.name.clone();
        let result = policy_admin::put_reference_values(&self.policies, req).await;
        self.audit("refvals.put", &who, &name, result.as_ref().map(|r| Some(r.version)));
        respond(result)
    }

    async fn get_reference_values(
        &self,
        request: Request<GetReferenceValuesRequest>,
    ) -> Result<Response<ReferenceValues>, Status> {
        self.authorize(&request, Call::ReadPolicy)?;
        respond(policy_admin::get_reference_values(&self.policies, request.into_inner()).await)
    }

    async fn list_reference_values(
        &self,
        request: Request<ListReferenceValuesRequest>,
    ) -> Result<Response<ListReferenceValuesResponse>, Status> {
        self.authorize(&request, Call::ReadPolicy)?;
        respond(policy_admin::list_reference_values(&self.policies, request.into_inner()).await)
    }

    async fn delete_reference_values(
        &self,
        request: Request<DeleteReferenceValuesRequest>,
    ) -> Result<Response<DeleteReferenceValuesResponse>, Status> {
        let who = self.authorize(&request, Call::WritePolicy)?;
        let req = request.into_inner();
        let name = req.name.clone();
        let result = policy_admin::delete_reference_values(&self.policies, req).await;
        self.audit("refvals.delete", &who, &name, result.as_ref().map(|_| None));
        respond(result)
    }

    async fn query_audit(&self, request: Request<QueryAuditRequest>) -> Result<Response<QueryAuditResponse>, Status> {
        self.authorize(&request, Call::ReadAudit)?;
        respond(policy_admin::query_audit(&self.policies, request.into_inner()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
