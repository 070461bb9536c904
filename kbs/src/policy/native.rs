//! The built-in default policy (`policies/default.rego`), checked natively
//! on the release path.
//!
//! Evaluating the default policy in regorus' interpreter costs about 30
//! microseconds per release, a tenth of the broker's CPU. This module
//! answers one narrower question in about one: does the default policy
//! certainly allow this release? It reads the same values the Rego
//! reads (the claims' policy form, the secret's labels and allow-list, the
//! snapshot's `data`), through the same paths, and says `true` only when
//! every check of the Rego finds nothing to refuse.
//!
//! Anything else is `false`: a refusal, and also any value of a shape the
//! broker does not produce (a number where the Rego compares strings, a
//! reference value set that is not an object, a label that is not ASCII,
//! ...). On `false` the caller evaluates the Rego, which then decides and
//! gives the reasons. So every refusal, with its reasons, still comes from
//! the Rego, and the only disagreement that could matter is this function
//! allowing what the Rego refuses. The property tests below and the
//! `default_policy` fuzz target look for exactly that, on arbitrary input.
//!
//! Only a policy whose source has the SHA-256 [`DEFAULT_POLICY_SHA256`]
//! is checked here; any other text, even a one-character change, runs in
//! the interpreter. Were `policies/default.rego` changed without this
//! module, the fast path would simply be off (and a test fails to say so).

use regorus::Value;

use crate::store::SecretMeta;

/// SHA-256 (lowercase hex) of the policy source this module implements:
/// `policies/default.rego` as shipped.
pub const DEFAULT_POLICY_SHA256: &str = "3e83cbf6f3f292e7bf304a6f1c1298c91c98ce7e1a45d49503756859393b4456";

/// True when the default policy certainly allows the release of `secret`
/// to a guest with these `claims` (the policy form of the claims, the
/// input's `claims`) under `data` (with `reference_values`). False when it
/// refuses or when this function cannot tell; then ask the Rego.
pub fn default_policy_allows(claims: &Value, secret: &SecretMeta, data: &Value) -> bool {
    check(claims, secret, data).is_some()
}

/// `Some(())` when allowed; `None` for a refusal or an unexpected shape.
fn check(claims: &Value, secret: &SecretMeta, data: &Value) -> Option<()> {
    // `tee_not_supported`, and which TEE-specific checks apply.
    let tee = string(&claims["tee"])?;
    let (snp, tdx) = match tee {
        "snp" => (true, false),
        "tdx" => (false, true),
        "sample" => (false, false),
        _ => return None,
    };
    // `debug_enabled`: the flag must be exactly false (a missing one counts
    // as debug), and so must the TEE's own.
    if claims["debug"] != Value::Bool(false) {
        return None;
    }
    let snp_claims = &claims["snp"];
    let tdx_claims = &claims["tdx"];
    if snp && snp_claims["policy"]["debug"] != Value::Bool(false) {
        return None;
    }
    if tdx && tdx_claims["td_attributes"]["debug"] != Value::Bool(false) {
        return None;
    }
    // `vmpl_not_allowed`.
    if snp && integer(&snp_claims["vmpl"])? != 0 {
        return None;
    }

    let sets = reference_sets(secret, data)?;

    // `measurement_not_allowed`: the secret's allow-list or a set's list.
    let measurement = string(&claims["measurement"])?;
    // Rego's `lower`; ASCII only here (checked for each item below).
    let listed = |m: &str| m.to_ascii_lowercase() == measurement;
    let mut allowed = false;
    for m in &secret.allowed_measurements {
        if !m.is_ascii() {
            return None;
        }
        allowed |= listed(m);
    }
    for set in &sets {
        for m in items(&set["measurements"])? {
            allowed |= listed(ascii(m)?);
        }
    }
    if !allowed {
        return None;
    }

    if snp {
        snp_tcb_at_least_minimum(snp_claims, &sets)?;
    }
    if tdx {
        tdx_rtmrs_allowed(tdx_claims, &sets)?;
        tdx_tcb_status_allowed(tdx_claims, &sets)?;
    }
    Some(())
}

/// The sets that apply: those named in the `refvals` label (split on
/// commas, trimmed, empty names dropped), each of which must exist (the
/// Rego refuses a name without a set), else `default` when it exists.
/// Every set must be an object.
fn reference_sets<'a>(secret: &SecretMeta, data: &'a Value) -> Option<Vec<&'a Value>> {
    let all = &data["reference_values"];
    let mut sets = Vec::new();
    let labelled = secret.labels.contains_key("refvals");
    let mut add = |name: &str| -> Option<()> {
        match &all[name] {
            Value::Undefined if labelled => None,
            Value::Undefined => Some(()),
            set @ Value::Object(_) => {
                sets.push(set);
                Some(())
            }
            _ => None,
        }
    };
    match secret.labels.get("refvals") {
        // Rego's `trim_space` trims Unicode white space; ASCII only here.
        Some(label) if !label.is_ascii() => return None,
        Some(label) => {
            for name in label.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                add(name)?;
            }
        }
        None => add("default")?,
    }
    Some(sets)
}

/// `tcb_below_minimum`: every component a set gives a minimum for, for
/// this generation, is at least that (a missing component counts as -1).
fn snp_tcb_at_least_minimum(snp: &Value, sets: &[&Value]) -> Option<()> {
    let generation = match &snp["generation"] {
        Value::Undefined => "missing",
        other => string(other)?,
    };
    let reported = &snp["reported_tcb"];
    if !matches!(reported, Value::Object(_) | Value::Undefined) {
        return None;
    }
    for set in sets {
        let minimums = match &set["snp_min_tcb"] {
            Value::Undefined => continue,
            Value::Object(by_generation) => match by_generation.get(&Value::from(generation)) {
                None => continue,
                Some(Value::Object(components)) => components,
                Some(_) => return None,
            },
            _ => return None,
        };
        for (component, want) in minimums.iter() {
            let want = integer(want)?;
            let have = match &reported[component] {
                Value::Undefined => -1,
                have => integer(have)?,
            };
            if have < want {
                return None;
            }
        }
    }
    Some(())
}

/// `rtmr_not_allowed`: for every set that lists RTMR combinations, one of
/// them equals the TD's four RTMRs.
fn tdx_rtmrs_allowed(tdx: &Value, sets: &[&Value]) -> Option<()> {
    let rtmrs = [string(&tdx["rtmr0"])?, string(&tdx["rtmr1"])?, string(&tdx["rtmr2"])?, string(&tdx["rtmr3"])?];
    for set in sets {
        let combinations = match &set["tdx_rtmrs"] {
            Value::Undefined => continue,
            Value::Array(combinations) => combinations,
            _ => return None,
        };
        let mut matched = false;
        for want in combinations.iter() {
            let Value::Array(want) = want else { return None };
            if want.len() != 4 {
                return None;
            }
            let mut all = true;
            for (want, have) in want.iter().zip(rtmrs) {
                all &= ascii(want)?.to_ascii_lowercase() == have;
            }
            matched |= all;
        }
        if !matched {
            return None;
        }
    }
    Some(())
}

/// `tcb_status_not_allowed`: the TCB status is in the union of the sets'
/// lists, or, when no set has one, `UpToDate`.
fn tdx_tcb_status_allowed(tdx: &Value, sets: &[&Value]) -> Option<()> {
    let status = match &tdx["tcb_status"] {
        Value::Undefined => "missing",
        other => string(other)?,
    };
    let mut configured = false;
    let mut listed = false;
    for set in sets {
        for allowed in items(&set["tdx_tcb_statuses"])? {
            configured = true;
            listed |= string(allowed)? == status;
        }
    }
    (listed || (!configured && status == "UpToDate")).then_some(())
}

fn string(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn ascii(value: &Value) -> Option<&str> {
    string(value).filter(|s| s.is_ascii())
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The items of an array (none when undefined); any other shape is `None`.
fn items(value: &Value) -> Option<impl Iterator<Item = &Value>> {
    match value {
        Value::Undefined => Some(None.into_iter().flatten()),
        Value::Array(list) => Some(Some(list.iter()).into_iter().flatten()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::policy::{CompiledRego, DEFAULT_POLICY, engine, policy_input};

    const M: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    const N: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";

    fn rtmr(i: u8) -> String {
        format!("{i:02x}").repeat(48)
    }

    fn snp_claims() -> Json {
        json!({
            "tee": "snp", "measurement": M, "debug": false,
            "snp": {"generation": "genoa", "vmpl": 0, "policy": {"debug": false},
                    "reported_tcb": {"bootloader": 7, "tee": 0, "snp": 22, "microcode": 213}},
        })
    }

    fn tdx_claims() -> Json {
        json!({
            "tee": "tdx", "measurement": M, "debug": false,
            "tdx": {"td_attributes": {"debug": false}, "tcb_status": "UpToDate",
                    "rtmr0": rtmr(0), "rtmr1": rtmr(1), "rtmr2": rtmr(2), "rtmr3": rtmr(3)},
        })
    }

    fn secret(labels: &[(&str, &str)], allowed: &[&str]) -> SecretMeta {
        SecretMeta {
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            allowed_measurements: allowed.iter().map(|m| (*m).to_owned()).collect(),
            ..crate::policy::placeholder_meta("models/m")
        }
    }

    fn data(sets: Json) -> Value {
        engine::to_value(json!({ "reference_values": sets }))
    }

    /// What the Rego decides, with the same values.
    fn rego_allows(claims: &Json, secret: &SecretMeta, data: &Value) -> bool {
        let compiled = CompiledRego::compile(DEFAULT_POLICY, data).unwrap();
        let input = policy_input(&engine::to_value(claims.clone()), secret, 0);
        compiled.evaluate(input, false).map(|o| o.allow).unwrap_or(false)
    }

    fn native_allows(claims: &Json, secret: &SecretMeta, data: &Value) -> bool {
        default_policy_allows(&engine::to_value(claims.clone()), secret, data)
    }

    /// Both agree, and say `expected`.
    #[track_caller]
    fn agree(claims: &Json, secret: &SecretMeta, data: &Value, expected: bool) {
        assert_eq!(rego_allows(claims, secret, data), expected, "rego on {claims} {secret:?} {data}");
        assert_eq!(native_allows(claims, secret, data), expected, "native on {claims} {secret:?} {data}");
    }

    fn with(mut base: Json, path: &[&str], value: Json) -> Json {
        let (last, parents) = path.split_last().unwrap();
        let mut at = &mut base;
        for p in parents {
            at = &mut at[*p];
        }
        match value {
            Json::Null if path.len() > 1 || *last != "null" => {
                at.as_object_mut().unwrap().remove(*last);
            }
            value => at[*last] = value,
        }
        base
    }

    #[test]
    fn releases_the_broker_allows_are_decided_natively() {
        let none = data(json!({}));
        agree(&snp_claims(), &secret(&[], &[M]), &none, true);
        agree(&tdx_claims(), &secret(&[], &[&M.to_uppercase()]), &none, true);
        agree(&with(snp_claims(), &["tee"], json!("sample")), &secret(&[], &[M]), &none, true);
        // Through reference values, the default set or named ones.
        let sets = data(json!({
            "default": {"measurements": [M], "snp_min_tcb": {"genoa": {"snp": 22, "microcode": 200}}},
            "a": {"measurements": [N]},
            "b": {"measurements": [M], "tdx_rtmrs": [[rtmr(9), rtmr(9), rtmr(9), rtmr(9)],
                                                    [rtmr(0), rtmr(1), rtmr(2), rtmr(3)]],
                  "tdx_tcb_statuses": ["SWHardeningNeeded", "UpToDate"]},
        }));
        agree(&snp_claims(), &secret(&[], &[]), &sets, true);
        agree(&snp_claims(), &secret(&[("refvals", " a , b,")], &[]), &sets, true);
        agree(&tdx_claims(), &secret(&[("refvals", "b")], &[]), &sets, true);
        let hardening = with(tdx_claims(), &["tdx", "tcb_status"], json!("SWHardeningNeeded"));
        agree(&hardening, &secret(&[("refvals", "b")], &[]), &sets, true);
        // The real claims types, through the policy form the broker builds.
        let real = crate::policy::tests::sample_claims(false, 0, M);
        let prepared = crate::policy::PreparedClaims::new(&real).unwrap();
        assert!(default_policy_allows(&prepared.value, &secret(&[], &[M]), &none));
        assert!(!default_policy_allows(&prepared.value, &secret(&[], &[N]), &none));
    }

    #[test]
    fn every_refusal_of_the_rego_is_left_to_it() {
        let none = data(json!({}));
        let ok = secret(&[], &[M]);
        let snp_refused = [
            with(snp_claims(), &["debug"], json!(true)),
            with(snp_claims(), &["debug"], Json::Null),
            with(snp_claims(), &["debug"], json!("false")),
            with(snp_claims(), &["snp", "policy", "debug"], json!(true)),
            with(snp_claims(), &["snp", "policy", "debug"], Json::Null),
            with(snp_claims(), &["snp", "vmpl"], json!(1)),
            with(snp_claims(), &["snp", "vmpl"], Json::Null),
            with(snp_claims(), &["snp"], Json::Null),
            with(snp_claims(), &["tee"], json!("sev")),
            with(snp_claims(), &["tee"], Json::Null),
            with(snp_claims(), &["measurement"], json!(N)),
            with(snp_claims(), &["measurement"], json!(M.to_uppercase())),
            with(snp_claims(), &["measurement"], Json::Null),
        ];
        for claims in &snp_refused {
            agree(claims, &ok, &none, false);
        }
        let tdx_refused = [
            with(tdx_claims(), &["tdx", "td_attributes", "debug"], json!(true)),
            with(tdx_claims(), &["tdx", "td_attributes"], Json::Null),
            with(tdx_claims(), &["tdx", "tcb_status"], json!("OutOfDate")),
            with(tdx_claims(), &["tdx", "tcb_status"], Json::Null),
        ];
        for claims in &tdx_refused {
            agree(claims, &ok, &none, false);
        }
        // Not in any list that applies.
        agree(&snp_claims(), &secret(&[], &[N]), &none, false);
        agree(&snp_claims(), &secret(&[], &[]), &none, false);
        let sets = data(json!({
            "default": {"measurements": [M]},
            "low": {"measurements": [M], "snp_min_tcb": {"genoa": {"snp": 23}}},
            "fmc": {"measurements": [M], "snp_min_tcb": {"genoa": {"fmc": 0}}},
            "rtmrs": {"measurements": [M], "tdx_rtmrs": [[rtmr(0), rtmr(1), rtmr(2), rtmr(4)]]},
            "none": {"measurements": [M], "tdx_rtmrs": []},
            "statuses": {"measurements": [M], "tdx_tcb_statuses": ["OutOfDate"]},
        }));
        agree(&snp_claims(), &secret(&[("refvals", "missing")], &[]), &sets, false);
        // A label naming a set that does not exist is refused, even when the
        // allow-list or another named set would admit the guest: a typo or a
        // deleted set must not drop the checks that set stood for.
        agree(&snp_claims(), &secret(&[("refvals", "missing")], &[M]), &sets, false);
        agree(&snp_claims(), &secret(&[("refvals", "default, missing")], &[]), &sets, false);
        agree(&tdx_claims(), &secret(&[("refvals", "rtmrs,missing")], &[M]), &sets, false);
        // With no label, a missing `default` set is no refusal: the
        // allow-list alone decides.
        agree(&snp_claims(), &secret(&[], &[M]), &data(json!({"other": {"measurements": []}})), true);
        agree(&snp_claims(), &secret(&[("refvals", "")], &[]), &sets, false);
        agree(&snp_claims(), &secret(&[("refvals", "default,low")], &[]), &sets, false);
        // A missing component counts as -1, below any minimum.
        agree(&snp_claims(), &secret(&[("refvals", "fmc")], &[]), &sets, false);
        agree(
            &with(snp_claims(), &["snp", "generation"], json!("milan")),
            &secret(&[("refvals", "low")], &[]),
            &sets,
            true,
        );
        agree(&tdx_claims(), &secret(&[("refvals", "default,rtmrs")], &[]), &sets, false);
        agree(&tdx_claims(), &secret(&[("refvals", "none")], &[]), &sets, false);
        agree(&tdx_claims(), &secret(&[("refvals", "statuses")], &[]), &sets, false);
        // TDX-only sets do not bind SNP guests.
        agree(&snp_claims(), &secret(&[("refvals", "rtmrs,statuses,none")], &[]), &sets, true);
    }

    #[test]
    fn unexpected_shapes_go_to_the_rego() {
        // Shapes the broker never stores: the native check declines even
        // where the Rego would allow.
        let odd = [
            json!({"default": {"measurements": M}}),
            json!({"default": {"measurements": [1, M]}}),
            json!({"default": "not a set"}),
            json!({"default": {"measurements": [M], "snp_min_tcb": {"genoa": {"snp": "1"}}}}),
            json!({"default": {"measurements": [M], "snp_min_tcb": {"genoa": 5}}}),
        ];
        for sets in odd {
            assert!(!native_allows(&snp_claims(), &secret(&[], &[M]), &data(sets.clone())), "{sets}");
        }
        let label = secret(&[("refvals", "d\u{a0}efault")], &[M]);
        assert!(!native_allows(&snp_claims(), &label, &data(json!({}))));
        let float_vmpl = with(snp_claims(), &["snp", "vmpl"], json!(0.5));
        agree(&float_vmpl, &secret(&[], &[M]), &data(json!({})), false);
    }

    #[test]
    fn the_default_policy_is_the_one_checked_here() {
        use sha2::{Digest, Sha256};
        assert_eq!(
            hex::encode(Sha256::digest(DEFAULT_POLICY.as_bytes())),
            DEFAULT_POLICY_SHA256,
            "policies/default.rego changed: update kbs/src/policy/native.rs to match, then DEFAULT_POLICY_SHA256"
        );
    }

    fn hex96() -> impl Strategy<Value = Json> {
        prop_oneof![
            6 => Just(json!(M)),
            2 => Just(json!(N)),
            1 => Just(json!(M.to_uppercase())),
            1 => Just(json!("")),
            1 => Just(json!(1)),
            1 => Just(Json::Null),
        ]
    }

    fn small() -> impl Strategy<Value = Json> {
        prop_oneof![
            8 => (0i64..4).prop_map(|n| json!(n)),
            1 => Just(json!(-1)),
            1 => Just(json!(0.0)),
            1 => Just(json!(true)),
            1 => Just(json!(false)),
            1 => Just(json!("0")),
            1 => Just(Json::Null),
        ]
    }

    fn maybe(strategy: impl Strategy<Value = Json> + 'static) -> impl Strategy<Value = Option<Json>> {
        prop_oneof![1 => Just(None), 5 => strategy.prop_map(Some)]
    }

    fn object(fields: Vec<(&'static str, Option<Json>)>) -> Json {
        Json::Object(fields.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect())
    }

    fn claims_strategy() -> impl Strategy<Value = Json> {
        let tee = prop_oneof![
            4 => Just(json!("snp")),
            4 => Just(json!("tdx")),
            1 => Just(json!("sample")),
            1 => Just(json!("x")),
            1 => small(),
        ];
        let flag = prop_oneof![8 => Just(json!(false)), 1 => Just(json!(true)), 1 => small()];
        let tcb = prop::collection::btree_map(
            prop_oneof![Just("snp"), Just("tee"), Just("fmc"), Just("microcode")],
            small(),
            0..4,
        )
        .prop_map(|m| json!(m));
        let generation = prop_oneof![Just(json!("milan")), Just(json!("genoa")), small()];
        let snp = (maybe(generation), maybe(small()), maybe(flag.clone()), maybe(tcb)).prop_map(|(g, v, d, t)| {
            object(vec![
                ("generation", g),
                ("vmpl", v),
                ("policy", d.map(|d| json!({ "debug": d }))),
                ("reported_tcb", t),
            ])
        });
        let status = prop_oneof![4 => Just(json!("UpToDate")), 1 => Just(json!("OutOfDate")), 1 => small()];
        let rtmrs = prop::collection::vec(prop_oneof![Just(json!(rtmr(0))), Just(json!(rtmr(1))), small()], 4);
        let tdx = (maybe(flag.clone()), maybe(status), rtmrs).prop_map(|(d, s, r)| {
            object(vec![
                ("td_attributes", d.map(|d| json!({ "debug": d }))),
                ("tcb_status", s),
                ("rtmr0", Some(r[0].clone())),
                ("rtmr1", Some(r[1].clone())),
                ("rtmr2", Some(r[2].clone())),
                ("rtmr3", Some(r[3].clone())),
            ])
        });
        (tee, maybe(flag), maybe(hex96()), maybe(snp), maybe(tdx)).prop_map(|(tee, debug, m, snp, tdx)| {
            object(vec![("tee", Some(tee)), ("debug", debug), ("measurement", m), ("snp", snp), ("tdx", tdx)])
        })
    }

    fn set_strategy() -> impl Strategy<Value = Json> {
        let list = |item: BoxedStrategy<Json>| prop::collection::vec(item, 0..3).prop_map(Json::Array);
        let combination = prop::collection::vec(prop_oneof![Just(json!(rtmr(0))), Just(json!(rtmr(1)))], 3..5)
            .prop_map(Json::Array)
            .boxed();
        let minimum = prop::collection::btree_map(prop_oneof![Just("snp"), Just("fmc")], small(), 0..3);
        let min_tcb = prop::collection::btree_map(prop_oneof![Just("milan"), Just("genoa")], minimum, 0..2);
        let statuses = prop_oneof![Just(json!("UpToDate")), Just(json!("OutOfDate")), small()].boxed();
        (
            maybe(list(hex96().boxed())),
            maybe(list(combination)),
            maybe(min_tcb.prop_map(|m| json!(m))),
            maybe(list(statuses)),
        )
            .prop_map(|(m, r, t, s)| {
                object(vec![("measurements", m), ("tdx_rtmrs", r), ("snp_min_tcb", t), ("tdx_tcb_statuses", s)])
            })
    }

    /// Never allows what the Rego refuses, on random claims, sets and
    /// labels, including shapes the broker never produces; and does decide
    /// natively a good share of what the Rego allows.
    #[test]
    fn never_allows_what_the_rego_refuses() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let label = prop::option::of(prop_oneof![Just(""), Just("other"), Just("default, other"), Just(" ,x")]);
        let allowed = prop::collection::vec(prop_oneof![Just(M), Just(N)], 0..2);
        let case = (claims_strategy(), maybe(set_strategy()), maybe(set_strategy()), label, allowed);
        let mut runner = TestRunner::default();
        let (mut rego_allowed, mut native_allowed) = (0, 0);
        for _ in 0..3000 {
            let (claims, default, other, label, allowed) = case.new_tree(&mut runner).unwrap().current();
            let mut sets = BTreeMap::new();
            sets.extend(default.map(|d| ("default", d)));
            sets.extend(other.map(|o| ("other", o)));
            let labels: Vec<(&str, &str)> = label.iter().map(|l| ("refvals", *l)).collect();
            let meta = secret(&labels, &allowed);
            let data = data(json!(sets));
            let rego = rego_allows(&claims, &meta, &data);
            let native = native_allows(&claims, &meta, &data);
            assert!(!native || rego, "native allowed what the Rego refused: {claims} {meta:?} {data}");
            rego_allowed += usize::from(rego);
            native_allowed += usize::from(native);
        }
        // The generator reaches allowed releases, and most are native.
        assert!(rego_allowed >= 20, "only {rego_allowed} allowed cases");
        assert!(native_allowed * 3 >= rego_allowed, "native {native_allowed} of {rego_allowed}");
    }
}
