//! The native check of the default policy against the Rego it stands in
//! for, on arbitrary claims, labels, allow-lists and reference values
//! (the input is a JSON document; anything else is skipped). The native
//! check must never allow what the Rego refuses.
#![no_main]

use std::collections::BTreeMap;

use kbs::policy::engine::to_value;
use kbs::policy::native::default_policy_allows;
use kbs::policy::{CompiledRego, DEFAULT_POLICY, placeholder_meta, policy_input};
use kbs::store::SecretMeta;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    // {"claims": ..., "labels": {..}, "allowed": [..], "sets": {..}}
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(data) else { return };
    let claims = doc.get("claims").cloned().unwrap_or(Value::Null);
    let labels: BTreeMap<String, String> =
        doc.get("labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
    let allowed: Vec<String> =
        doc.get("allowed").and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default();
    let sets = doc.get("sets").cloned().unwrap_or_else(|| json!({}));
    let meta = SecretMeta { labels, allowed_measurements: allowed, ..placeholder_meta("models/m") };
    let data = to_value(json!({ "reference_values": sets }));

    let claims = to_value(claims);
    if !default_policy_allows(&claims, &meta, &data) {
        return;
    }
    let compiled = CompiledRego::compile(DEFAULT_POLICY, &data).expect("the default policy compiles");
    let input = policy_input(&claims, &meta, 0);
    let rego = compiled.evaluate(input, false).map(|o| o.allow).unwrap_or(false);
    assert!(rego, "native allowed what the Rego refused");
});
