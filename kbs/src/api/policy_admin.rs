//! Policy, reference-value and audit administration (Admin API).
//!
//! The logic behind the Admin calls on policies, reference values and the
//! audit log; [`super::admin`] authenticates, authorizes and audits each
//! call, then delegates here. Writes go to the store and reload this
//! replica's policy snapshot at once; other replicas see them at their next
//! refresh (see [`crate::policy`]).
//!
//! `TestPolicy` is a dry run: claims JSON is taken as given (it must parse
//! as the normalized claims document); SNP and TDX evidence is verified
//! with the broker's own verifiers, anchors and collateral, every check
//! except the report_data binding, which belongs to a live challenge. Nothing is released and no secret is read: only the
//! secret's metadata (labels, allow-list) when it exists.

use std::path::PathBuf;
use std::sync::Arc;

use kbs_proto::v1::{
    DeletePolicyRequest, DeletePolicyResponse, DeleteReferenceValuesRequest, DeleteReferenceValuesResponse,
    GetPolicyRequest, GetReferenceValuesRequest, ListPoliciesRequest, ListPoliciesResponse, ListReferenceValuesRequest,
    ListReferenceValuesResponse, Policy, PolicyDecision, PutReferenceValuesRequest, QueryAuditRequest,
    QueryAuditResponse, ReferenceValues, SetPolicyRequest, TestPolicyRequest, test_policy_request,
};

use crate::error::Error;
use crate::evidence::Claims;
use crate::evidence::snp::SnpReport;
use crate::evidence::tdx::TdxQuote;
use crate::names::check_not_reserved;
use crate::policy::{PolicyEngine, PolicyInfo, RefvalsInfo, placeholder_meta};
use crate::release::{Broker, EvidenceInput, SnpCerts};
use crate::store::{SecretMeta, StoreError, validate_name};

/// Default number of audit records a query returns.
pub const DEFAULT_AUDIT_LIMIT: usize = 100;
/// Most audit records a query returns.
pub const MAX_AUDIT_LIMIT: usize = 1000;

/// What the policy administration calls need.
#[derive(Debug, Clone)]
pub struct PolicyAdminContext {
    broker: Arc<Broker>,
    audit_path: Option<PathBuf>,
}

impl PolicyAdminContext {
    /// Builds the context: the broker (its policy engine, store and
    /// verifiers) and the audit file, if audit goes to a file.
    pub fn new(broker: Arc<Broker>, audit_path: Option<PathBuf>) -> Self {
        Self { broker, audit_path }
    }

    fn engine(&self) -> &PolicyEngine {
        self.broker.policy()
    }
}

fn policy_to_wire(p: PolicyInfo) -> Policy {
    Policy { scope: p.scope, rego: p.rego, version: p.version, updated_at: p.updated_at, sha256: p.sha256 }
}

fn refvals_to_wire(r: RefvalsInfo) -> ReferenceValues {
    ReferenceValues { name: r.name, json: r.json, version: r.version, updated_at: r.updated_at }
}

/// The checks of [`set_policy`], without its effect; the SHA-256 of the
/// Rego.
pub fn check_set_policy(ctx: &PolicyAdminContext, req: &SetPolicyRequest) -> Result<String, Error> {
    Ok(ctx.engine().check_policy(&req.scope, &req.rego)?)
}

/// The check of [`delete_policy`], without its effect.
pub fn check_delete_policy(req: &DeletePolicyRequest) -> Result<(), Error> {
    Ok(PolicyEngine::check_policy_scope(&req.scope)?)
}

/// The checks of [`put_reference_values`], without its effect; the SHA-256
/// of the set as it will be stored.
pub fn check_put_reference_values(req: &PutReferenceValuesRequest) -> Result<String, Error> {
    Ok(PolicyEngine::check_reference_values(&req.name, &req.json)?)
}

/// The check of [`delete_reference_values`], without its effect.
pub fn check_delete_reference_values(req: &DeleteReferenceValuesRequest) -> Result<(), Error> {
    Ok(PolicyEngine::check_reference_values_name(&req.name)?)
}

/// Sets (compiles and stores) a policy. A policy that does not compile is
/// refused with the compiler's message; the old one stays.
pub async fn set_policy(ctx: &PolicyAdminContext, req: SetPolicyRequest) -> Result<Policy, Error> {
    Ok(policy_to_wire(ctx.engine().set_policy(&req.scope, &req.rego).await?))
}

/// Gets the policy set for exactly this scope (`*` shows the built-in
/// default when none is stored; its version is 0).
pub async fn get_policy(ctx: &PolicyAdminContext, req: GetPolicyRequest) -> Result<Policy, Error> {
    Ok(policy_to_wire(ctx.engine().get_policy(&req.scope).await?))
}

/// Lists the policies in force, most specific first.
pub async fn list_policies(ctx: &PolicyAdminContext, _req: ListPoliciesRequest) -> Result<ListPoliciesResponse, Error> {
    let policies = ctx.engine().list_policies().await?;
    Ok(ListPoliciesResponse { policies: policies.into_iter().map(policy_to_wire).collect() })
}

/// Deletes the policy set for this scope.
pub async fn delete_policy(ctx: &PolicyAdminContext, req: DeletePolicyRequest) -> Result<DeletePolicyResponse, Error> {
    ctx.engine().delete_policy(&req.scope).await?;
    Ok(DeletePolicyResponse {})
}

/// Dry-runs a policy (the given Rego, or the one in force for the secret)
/// against claims or evidence, and explains the decision.
pub async fn test_policy(ctx: &PolicyAdminContext, req: TestPolicyRequest) -> Result<PolicyDecision, Error> {
    let claims = match req.input {
        Some(test_policy_request::Input::ClaimsJson(json)) => serde_json::from_str::<Claims>(&json)
            .map_err(|e| Error::PolicyInvalid(format!("claims_json is not a claims document: {e}")))?,
        Some(test_policy_request::Input::Snp(snp)) => {
            // The dry run has no challenge: bind to the report's own
            // report_data, so every other check still applies.
            let report = SnpReport::parse(&snp.report)?;
            let own = *report.report_data();
            ctx.broker
                .verify_bound(&EvidenceInput::Snp { report: snp.report, certs: SnpCerts::Table(snp.cert_table) }, &own)
                .await?
        }
        Some(test_policy_request::Input::Tdx(tdx)) => {
            let own = TdxQuote::parse(&tdx.quote)?.report().report_data;
            ctx.broker.verify_bound(&EvidenceInput::Tdx { quote: tdx.quote }, &own).await?
        }
        None => return Err(Error::PolicyInvalid("give claims_json or evidence".into())),
    };
    let name = if req.secret_name.is_empty() { "test/secret".to_owned() } else { req.secret_name };
    let meta = secret_meta(ctx, &name).await?;
    let decision = if req.rego.is_empty() {
        ctx.engine().decide(&claims, &meta)
    } else {
        ctx.engine().decide_with(&req.rego, &claims, &meta)?
    };
    Ok(PolicyDecision {
        allow: decision.allow,
        reasons: decision.reasons,
        claims_json: serde_json::to_string_pretty(&claims).unwrap_or_default(),
        scope: decision.scope.unwrap_or_default(),
    })
}

/// The secret's metadata when it exists (its labels and allow-list matter
/// to policies), else a placeholder with neither.
async fn secret_meta(ctx: &PolicyAdminContext, name: &str) -> Result<SecretMeta, Error> {
    validate_name(name)?;
    check_not_reserved(name)?;
    match ctx.broker.store().metadata(name).await {
        Ok(meta) => Ok(meta),
        Err(StoreError::NotFound) => Ok(placeholder_meta(name)),
        Err(e) => Err(e.into()),
    }
}

/// Checks and stores a reference value set.
pub async fn put_reference_values(
    ctx: &PolicyAdminContext,
    req: PutReferenceValuesRequest,
) -> Result<ReferenceValues, Error> {
    Ok(refvals_to_wire(ctx.engine().put_reference_values(&req.name, &req.json).await?))
}

/// Gets a reference value set.
pub async fn get_reference_values(
    ctx: &PolicyAdminContext,
    req: GetReferenceValuesRequest,
) -> Result<ReferenceValues, Error> {
    Ok(refvals_to_wire(ctx.engine().get_reference_values(&req.name).await?))
}

/// Lists the reference value sets.
pub async fn list_reference_values(
    ctx: &PolicyAdminContext,
    _req: ListReferenceValuesRequest,
) -> Result<ListReferenceValuesResponse, Error> {
    let sets = ctx.engine().list_reference_values().await?;
    Ok(ListReferenceValuesResponse { sets: sets.into_iter().map(refvals_to_wire).collect() })
}

/// Deletes a reference value set.
pub async fn delete_reference_values(
    ctx: &PolicyAdminContext,
    req: DeleteReferenceValuesRequest,
) -> Result<DeleteReferenceValuesResponse, Error> {
    ctx.engine().delete_reference_values(&req.name).await?;
    Ok(DeleteReferenceValuesResponse {})
}

/// The most recent audit records of this replica's audit file, oldest
/// first, filtered by time and action.
pub async fn query_audit(ctx: &PolicyAdminContext, req: QueryAuditRequest) -> Result<QueryAuditResponse, Error> {
    let Some(path) = ctx.audit_path.clone() else {
        return Err(Error::PolicyInvalid(
            "this broker writes its audit log to stdout; query it where it is shipped".into(),
        ));
    };
    let limit = match usize::try_from(req.limit).unwrap_or(MAX_AUDIT_LIMIT) {
        0 => DEFAULT_AUDIT_LIMIT,
        n => n.min(MAX_AUDIT_LIMIT),
    };
    let found = tokio::task::spawn_blocking(move || read_audit(&path, req.since, &req.action, limit))
        .await
        .map_err(|e| Error::Internal(format!("audit query task: {e}")))??;
    Ok(QueryAuditResponse { records: found.records, truncated: found.truncated })
}

/// The latest records of the audit log at `path` (its rotated files too),
/// reading at most [`crate::audit::MAX_QUERY_SCAN_BYTES`].
fn read_audit(path: &std::path::Path, since: i64, action: &str, limit: usize) -> Result<crate::audit::Found, Error> {
    let query = crate::audit::Query { since, action, limit, max_scan_bytes: crate::audit::MAX_QUERY_SCAN_BYTES };
    crate::audit::query::query(path, &query)
        .map_err(|e| Error::Store(StoreError::Unavailable(format!("reading the audit log: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_query_filters_and_keeps_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let lines = [
            r#"{"time":"2024-01-01T00:00:00Z","action":"release","n":1}"#,
            r#"{"time":"2024-01-02T00:00:00Z","action":"secret.put","n":2}"#,
            r#"{"time":"2024-01-03T00:00:00Z","action":"release","n":3}"#,
            r#"{"time":"2024-01-04T00:00:00Z","action":"release","n":4}"#,
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let all = read_audit(&path, 0, "", 10).unwrap().records;
        assert_eq!(all.len(), 4);
        let releases = read_audit(&path, 0, "release", 2).unwrap().records;
        assert_eq!(releases, vec![lines[2].to_owned(), lines[3].to_owned()]);
        let since = time::macros::datetime!(2024-01-02 00:00 UTC).unix_timestamp();
        assert_eq!(read_audit(&path, since, "", 10).unwrap().records.len(), 3);
    }

    /// Records from before a rotation are found: the query runs through the
    /// rotated files, newest first, and returns the latest matches in order.
    #[test]
    fn audit_query_reads_the_rotated_files() {
        use crate::audit::{AuditLog, Event, Rotation};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotation = Rotation { max_file_bytes: Some(1500), ..Rotation::default() };
        let log = AuditLog::open(&path, "r0", None, rotation).unwrap();
        for i in 0..30 {
            let action = if i % 3 == 0 { "secret.put" } else { "release" };
            let event = Event { attestation_id: Some(format!("id-{i}")), ..Event::new(action, "127.0.0.1:1".into()) };
            log.record(&event).unwrap();
        }
        log.flush().unwrap();
        assert!(log.file_seq() >= 4, "rotated {} times", log.file_seq() - 1);
        drop(log);
        let ids = |records: &[String]| -> Vec<String> {
            records
                .iter()
                .filter_map(|r| {
                    serde_json::from_str::<serde_json::Value>(r).unwrap()["attestation_id"].as_str().map(str::to_owned)
                })
                .collect()
        };
        let all = read_audit(&path, 0, "", 1000).unwrap().records;
        assert_eq!(ids(&all), (0..30).map(|i| format!("id-{i}")).collect::<Vec<_>>());
        let puts = read_audit(&path, 0, "secret.put", 4).unwrap().records;
        assert_eq!(ids(&puts), ["id-18", "id-21", "id-24", "id-27"]);
        let latest = read_audit(&path, 0, "release", 15).unwrap().records;
        assert_eq!(ids(&latest).first().map(String::as_str), Some("id-8"), "the releases after the first five");
        assert_eq!(latest.len(), 15);
        // Files deleted meanwhile (keep_files) only shorten the answer.
        std::fs::remove_file(crate::audit::rotated_path(&path, 1)).unwrap();
        let rest = read_audit(&path, 0, "release", 1000).unwrap().records;
        assert!(!rest.is_empty() && ids(&rest).last().map(String::as_str) == Some("id-29"));
        assert!(!ids(&rest).contains(&"id-1".to_owned()));
    }
}
