//! The Admin API's request decoding and checks on arbitrary bytes: each
//! request message decoded from the bytes, then the checks the broker runs
//! before any change (secret names and the reserved namespace, policy
//! scopes and Rego compilation, reference-value sets). None may panic, and
//! an accepted reference-value set must be accepted again in the form the
//! broker stores.
#![no_main]

use std::sync::OnceLock;

use kbs::policy::PolicyEngine;
use kbs_proto::v1::{
    DeleteSecretRequest, ListSecretsRequest, PutReferenceValuesRequest, PutSecretRequest, SetPolicyRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn engine() -> &'static PolicyEngine {
    static E: OnceLock<PolicyEngine> = OnceLock::new();
    E.get_or_init(PolicyEngine::builtin)
}

fn name_checks(name: &str) {
    let _ = kbs::store::validate_name(name);
    let _ = kbs::names::check_not_reserved(name);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = PutSecretRequest::decode(data) {
        name_checks(&req.name);
    }
    if let Ok(req) = DeleteSecretRequest::decode(data) {
        name_checks(&req.name);
    }
    if let Ok(req) = ListSecretsRequest::decode(data) {
        name_checks(&req.prefix);
        name_checks(&req.page_token);
    }
    if let Ok(req) = SetPolicyRequest::decode(data) {
        let _ = PolicyEngine::check_policy_scope(&req.scope);
        let _ = engine().check_policy(&req.scope, &req.rego);
    }
    if let Ok(req) = PutReferenceValuesRequest::decode(data)
        && PolicyEngine::check_reference_values(&req.name, &req.json).is_ok()
    {
        let stored = kbs::policy::refvals::normalize(&req.json).expect("an accepted set normalizes");
        PolicyEngine::check_reference_values(&req.name, &stored.to_string()).expect("the stored form is accepted");
    }
});
