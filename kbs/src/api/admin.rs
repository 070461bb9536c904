//! The operator-facing `kbs.v1.Admin` service.
//!
//! Every call is authenticated by a bearer token (`authorization: Bearer
//! <token>`), compared by SHA-256 digest in constant time against the
//! configured tokens, and authorized by role:
//!
//! | call | admin | uploader | auditor |
//! |---|---|---|---|
//! | PutSecret, GenerateSecret | yes | yes | no |
//! | GetSecretMetadata, ListSecrets | yes | yes | yes |
//! | DeleteSecret | yes | no | no |
//!
//! Secret values are write-only: no call returns one.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use kbs_proto::v1::admin_server::Admin;
use kbs_proto::v1::{
    DeleteSecretRequest, DeleteSecretResponse, GenerateSecretRequest, GetSecretMetadataRequest, ListSecretsRequest,
    ListSecretsResponse, PutSecretRequest, SecretMetadata,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::audit::{AuditLog, Event, SecretRef};
use crate::config::{Role, TokenEntry};
use crate::error::Error;
use crate::store::{NewSecret, SecretMeta, SecretStore, SecretValue, normalize_measurement, validate_name};

/// Largest page a list returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Largest generated secret.
pub const MAX_GENERATED_BYTES: u32 = 4096;

#[derive(Clone, Copy, Debug)]
enum Call {
    Put,
    Generate,
    Metadata,
    List,
    Delete,
}

impl Call {
    const fn name(self) -> &'static str {
        match self {
            Self::Put => "PutSecret",
            Self::Generate => "GenerateSecret",
            Self::Metadata => "GetSecretMetadata",
            Self::List => "ListSecrets",
            Self::Delete => "DeleteSecret",
        }
    }

    const fn allowed(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Self::Put | Self::Generate | Self::Metadata | Self::List, Role::Uploader)
                | (Self::Metadata | Self::List, Role::Auditor)
        )
    }
}

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Arc<dyn SecretStore>,
    audit: Arc<AuditLog>,
    tokens: Arc<Vec<TokenEntry>>,
    max_secret_bytes: usize,
}

impl AdminService {
    /// Builds the service.
    pub fn new(
        store: Arc<dyn SecretStore>,
        audit: Arc<AuditLog>,
        tokens: Vec<TokenEntry>,
        max_secret_bytes: usize,
    ) -> Self {
        Self { store, audit, tokens: Arc::new(tokens), max_secret_bytes }
    }

    fn authorize<T>(&self, request: &Request<T>, call: Call) -> Result<TokenEntry, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Error::Unauthenticated("missing bearer token").to_status())?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare against every entry without early exit.
        let mut found: Option<&TokenEntry> = None;
        for entry in self.tokens.iter() {
            if constant_time_eq(&entry.sha256, &digest) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or_else(|| {
            tracing::warn!(peer = %super::peer(request), call = call.name(), "admin call with unknown token");
            Error::Unauthenticated("unknown token").to_status()
        })?;
        if !call.allowed(entry.role) {
            tracing::warn!(token = entry.name, role = entry.role.as_str(), call = call.name(), "admin call forbidden");
            return Err(Error::Forbidden { role: entry.role.as_str(), call: call.name() }.to_status());
        }
        Ok(entry.clone())
    }

    fn audit(&self, action: &'static str, who: &TokenEntry, name: &str, result: &Result<Option<u64>, Error>) {
        let event = Event {
            action,
            decision: if result.is_ok() { "allow" } else { "deny" },
            reason: result.as_ref().err().map(|e| e.reason().as_str()),
            reasons: Vec::new(),
            attestation_id: None,
            tee: None,
            measurement: None,
            claims_digest: None,
            secrets: vec![SecretRef { name: name.to_owned(), version: result.as_ref().ok().copied().flatten() }],
            caller: format!("token:{}", who.name),
        };
        if let Err(e) = self.audit.record(&event) {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    async fn put(
        &self,
        who: &TokenEntry,
        action: &'static str,
        secret: Result<NewSecret, Error>,
    ) -> Result<Response<SecretMetadata>, Status> {
        let name = secret.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = match secret {
            Ok(secret) => self.store.put(secret).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        self.audit(action, who, &name, &result.as_ref().map(|m| Some(m.version)).map_err(clone_reason));
        result.map(|m| Response::new(to_wire(m))).map_err(|e| e.to_status())
    }

    fn new_secret(
        &self,
        name: String,
        value: SecretValue,
        labels: std::collections::HashMap<String, String>,
        allowed: Vec<String>,
        expected_version: Option<u64>,
    ) -> Result<NewSecret, Error> {
        validate_name(&name)?;
        if value.len() > self.max_secret_bytes {
            return Err(crate::store::StoreError::TooLarge { len: value.len(), max: self.max_secret_bytes }.into());
        }
        if labels.len() > 64 || labels.iter().any(|(k, v)| k.len() > 128 || v.len() > 1024) {
            return Err(Error::InvalidRequest("too many or too long labels".into()));
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

/// Errors are not `Clone`; the audit needs only the reason.
fn clone_reason(e: &Error) -> Error {
    Error::Denied { code: e.reason(), reasons: Vec::new() }
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
        validate_name(&name).map_err(|e| Error::from(e).to_status())?;
        let meta = self.store.metadata(&name).await.map_err(|e| Error::from(e).to_status())?;
        Ok(Response::new(to_wire(meta)))
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
        let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let page = self.store.list(&req.prefix, after, limit).await.map_err(|e| Error::from(e).to_status())?;
        Ok(Response::new(ListSecretsResponse {
            secrets: page.items.into_iter().map(to_wire).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<DeleteSecretRequest>,
    ) -> Result<Response<DeleteSecretResponse>, Status> {
        let who = self.authorize(&request, Call::Delete)?;
        let name = request.into_inner().name;
        let result = match validate_name(&name) {
            Ok(()) => self.store.delete(&name).await.map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        self.audit("secret.delete", &who, &name, &result.as_ref().map(|_| None).map_err(clone_reason));
        result.map(|()| Response::new(DeleteSecretResponse {})).map_err(|e| e.to_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert!(Call::Delete.allowed(Role::Admin));
        assert!(!Call::Delete.allowed(Role::Uploader));
        assert!(!Call::Put.allowed(Role::Auditor));
        assert!(Call::List.allowed(Role::Auditor));
        assert!(Call::Generate.allowed(Role::Uploader));
    }
}
