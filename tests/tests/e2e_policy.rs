//! End-to-end: Rego policies and reference values managed through the Admin
//! API decide real releases (simulated SNP guests, real gRPC over TLS), the
//! reasons land in the audit record and the chain verifies; plus the
//! default policy's known answers on captured hardware evidence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap};

use attester_client::simulated::{Generation, SimulatedSnp};
use kbs::evidence::anchors::SnpAnchors;
use kbs::evidence::snp::SnpVerifier;
use kbs::policy::{DEFAULT_POLICY, PolicyEngine, decide_offline, placeholder_meta};
use kbs::reason::ReasonCode;
use kbs_proto::SuiteId;
use kbs_proto::v1::key_broker_client::KeyBrokerClient;
use kbs_proto::v1::{
    GetChallengeRequest, GetPolicyRequest, ListPoliciesRequest, PutReferenceValuesRequest, PutSecretRequest,
    SetPolicyRequest, SnpEvidence, Tee, TestPolicyRequest, test_policy_request,
};
use time::macros::datetime;
use tonic::Code;

#[path = "support/app.rs"]
mod app;

use app::TestApp;

const MEASUREMENT_A: [u8; 48] = [0x5a; 48];
const MEASUREMENT_B: [u8; 48] = [0x77; 48];

impl TestApp {
    async fn put(&self, name: &str, value: &[u8], labels: &[(&str, &str)]) {
        let req = PutSecretRequest {
            name: name.into(),
            value: value.to_vec(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
            ..Default::default()
        };
        self.admin().await.put_secret(self.authed(req)).await.unwrap();
    }

    async fn refvals(&self, name: &str, json: serde_json::Value) {
        let req = PutReferenceValuesRequest { name: name.into(), json: json.to_string() };
        self.admin().await.put_reference_values(self.authed(req)).await.unwrap();
    }

    async fn set_policy(&self, scope: &str, rego: &str) -> Result<kbs_proto::v1::Policy, tonic::Status> {
        let req = SetPolicyRequest { scope: scope.into(), rego: rego.into() };
        self.admin().await.set_policy(self.authed(req)).await.map(|r| r.into_inner())
    }

    fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Challenge, evidence, release: the secrets' values, or the refusal.
    async fn fetch(&self, sim: &SimulatedSnp, names: &[&str]) -> Result<Vec<(String, Vec<u8>)>, tonic::Status> {
        let mut rpc = KeyBrokerClient::new(self.channel(&self.guest_url).await);
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let challenge = rpc
            .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: names.clone() })
            .await?
            .into_inner();
        let (req, key, nonce) = app::snp_release_request(sim, challenge, SuiteId::X25519_SHA256_AES256GCM, names);
        let resp = rpc.release_secrets(req).await?.into_inner();
        Ok(resp
            .secrets
            .iter()
            .map(|s| {
                let aad = kbs_proto::secret_aad(&s.name, s.version);
                let value = key.open(&s.enc, &s.ciphertext, &kbs_proto::secret_info(&nonce), &aad).unwrap();
                (s.name.clone(), value.to_vec())
            })
            .collect())
    }
}

fn reason(status: &tonic::Status) -> &str {
    status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, expected: &str) -> tonic::Status {
    let status = result.expect_err("the broker must refuse");
    assert_eq!((status.code(), reason(&status)), (code, expected), "status {status:?}");
    status
}

fn guest(measurement: [u8; 48]) -> SimulatedSnp {
    SimulatedSnp::new(Generation::Genoa).measurement(measurement)
}

/// The last release record in the audit log.
fn last_release(app: &TestApp) -> serde_json::Value {
    app.audit_records().into_iter().rev().find(|r| r["action"] == "release").unwrap()
}

#[tokio::test]
async fn policies_and_reference_values_decide_releases() {
    let app = TestApp::start().await;
    let (a, b) = (guest(MEASUREMENT_A), guest(MEASUREMENT_B));
    app.put("keys/a", b"key A", &[("refvals", "team-a")]).await;
    app.put("keys/b", b"key B", &[("refvals", "team-b")]).await;

    // Out of the box (built-in default as `*`), no reference values and no
    // allow-list: nobody gets anything.
    assert_refused(app.fetch(&a, &["keys/a"]).await, Code::PermissionDenied, "measurement_not_allowed");

    // Reference values per team, selected by each secret's `refvals` label:
    // guest A gets key A, not key B.
    app.refvals("team-a", serde_json::json!({"measurements": [hex::encode(MEASUREMENT_A)]})).await;
    app.refvals("team-b", serde_json::json!({"measurements": [hex::encode(MEASUREMENT_B).to_uppercase()]})).await;
    assert_eq!(app.fetch(&a, &["keys/a"]).await.unwrap(), vec![("keys/a".to_owned(), b"key A".to_vec())]);
    assert_refused(app.fetch(&a, &["keys/b"]).await, Code::PermissionDenied, "measurement_not_allowed");
    let record = last_release(&app);
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "measurement_not_allowed");
    assert_eq!(
        record["reasons"][0].as_str().unwrap(),
        format!("measurement_not_allowed: {} for keys/b", hex::encode(MEASUREMENT_A))
    );
    assert_eq!(app.fetch(&b, &["keys/b"]).await.unwrap()[0].1, b"key B");

    // A per-secret policy, more specific than `*`: its own reasons reach the
    // audit record; the guest sees policy_denied.
    let pinned = r#"package kbs.release
import rego.v1
default allow := false
allow if count(reasons) == 0
reasons contains "not_team_b" if not input.claims.measurement in data.reference_values["team-b"].measurements
reasons contains "debug_enabled" if input.claims.debug != false
"#;
    let v1 = app.set_policy("keys/b", pinned).await.unwrap();
    assert_eq!((v1.scope.as_str(), v1.version), ("keys/b", 1));
    assert_refused(app.fetch(&a, &["keys/b"]).await, Code::PermissionDenied, "policy_denied");
    assert_eq!(last_release(&app)["reasons"], serde_json::json!(["not_team_b"]));
    assert_eq!(app.fetch(&b, &["keys/b"]).await.unwrap()[0].1, b"key B");
    // A debug guest B: the most severe reason picks the code.
    let debug_b = guest(MEASUREMENT_B).policy(0x3_0000 | attester_client::simulated::POLICY_DEBUG);
    assert_refused(app.fetch(&debug_b, &["keys/b"]).await, Code::PermissionDenied, "debug_enabled");

    // A malformed policy is refused with the compiler's message; the old one
    // stays in force.
    let status = assert_refused(
        app.set_policy("keys/b", "package kbs.release\nallow if {").await,
        Code::InvalidArgument,
        "invalid_request",
    );
    assert!(status.message().contains("does not compile"), "{}", status.message());
    let now = app.admin().await.get_policy(app.authed(GetPolicyRequest { scope: "keys/b".into() })).await.unwrap();
    assert_eq!(now.into_inner().version, 1);
    assert_eq!(app.fetch(&b, &["keys/b"]).await.unwrap()[0].1, b"key B");
    let listed = app.admin().await.list_policies(app.authed(ListPoliciesRequest {})).await.unwrap().into_inner();
    assert_eq!(listed.policies.iter().map(|p| p.scope.as_str()).collect::<Vec<_>>(), ["keys/b", "*"]);

    // Dry run on real-format evidence, verified by the broker.
    let report = a.report(&[3u8; 64]).unwrap();
    let decision = app
        .admin()
        .await
        .test_policy(app.authed(TestPolicyRequest {
            rego: String::new(),
            secret_name: "keys/b".into(),
            input: Some(test_policy_request::Input::Snp(SnpEvidence { report, cert_table: a.cert_table().unwrap() })),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!decision.allow);
    assert_eq!(
        (decision.scope.as_str(), decision.reasons.as_slice()),
        ("keys/b", ["not_team_b".to_owned()].as_slice())
    );
    assert!(decision.claims_json.contains(&hex::encode(MEASUREMENT_A)));

    // Reserved names are never released.
    assert_refused(app.fetch(&a, &["_kbs/refvals/team-a"]).await, Code::InvalidArgument, "invalid_request");

    // Every change is audited with its caller; the chain verifies.
    let records = app.audit_records();
    let changes: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["action"].as_str().unwrap().starts_with("policy.") || r["action"] == "refvals.put")
        .map(|r| (r["action"].as_str().unwrap(), r["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [("refvals.put", "allow"), ("refvals.put", "allow"), ("policy.set", "allow"), ("policy.set", "deny")]
    );
    assert!(records.iter().all(|r| !r.to_string().contains("key B")), "no secret value in the audit log");
    let (count, _) = kbs::audit::verify_file(&app.audit_path()).unwrap();
    assert_eq!(count, records.len());
}

#[tokio::test]
async fn audit_chain_detects_edits_and_removals() {
    let app = TestApp::start().await;
    app.put("keys/a", b"key A", &[]).await;
    app.refvals("default", serde_json::json!({"measurements": [hex::encode(MEASUREMENT_A)]})).await;
    app.fetch(&guest(MEASUREMENT_A), &["keys/a"]).await.unwrap();
    assert_refused(
        app.fetch(&guest(MEASUREMENT_B), &["keys/a"]).await,
        Code::PermissionDenied,
        "measurement_not_allowed",
    );
    let text = std::fs::read_to_string(app.audit_path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 4);
    assert!(kbs::audit::verify_file(&app.audit_path()).is_ok());

    // A record edited (an allow turned into a deny): the next record's
    // `prev` no longer matches.
    let edited = app.dir.path().join("edited.jsonl");
    let mut earlier = lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    earlier[1] = earlier[1].replace("\"allow\"", "\"deny\"");
    assert_ne!(earlier[1], lines[1]);
    std::fs::write(&edited, earlier.join("\n") + "\n").unwrap();
    assert!(matches!(kbs::audit::verify_file(&edited), Err(kbs::audit::AuditError::Broken { line: 3, .. })));

    // A record removed from the middle.
    let mut removed = lines.clone();
    removed.remove(1);
    std::fs::write(&edited, removed.join("\n") + "\n").unwrap();
    assert!(matches!(kbs::audit::verify_file(&edited), Err(kbs::audit::AuditError::Broken { line: 2, .. })));

    // The dev set-up MAC-chains the records under its audit key. The edit
    // above with every later `prev` recomputed passes the hash-chain check
    // but not the MAC check.
    let key = std::fs::read_to_string(app.dir.path().join("audit.key")).unwrap();
    let key = kbs::audit::AuditKey::new(&hex::decode(key.trim()).unwrap().try_into().unwrap());
    let found = kbs::audit::verify_file_with(&app.audit_path(), Some(&key)).unwrap();
    assert_eq!((found.count, found.keyed, found.head_mac.is_some()), (lines.len(), true, true));
    let mut rechained: Vec<String> = Vec::new();
    for line in &earlier {
        let mut line = line.clone();
        if let Some(previous) = rechained.last() {
            let old = serde_json::from_str::<serde_json::Value>(&line).unwrap()["prev"].as_str().unwrap().to_owned();
            line = line.replace(&old, &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(previous.as_bytes())));
        }
        rechained.push(line);
    }
    std::fs::write(&edited, rechained.join("\n") + "\n").unwrap();
    assert_eq!(kbs::audit::verify_file(&edited).unwrap().0, lines.len());
    assert!(matches!(
        kbs::audit::verify_file_with(&edited, Some(&key)),
        Err(kbs::audit::AuditError::Broken { line: 2, .. })
    ));
}

#[path = "support/vectors.rs"]
mod vectors;

use vectors::vector;

/// Verifies a captured Milan report with the real AMD anchors, at a time
/// inside its VCEK's validity; its report_data binds nothing of ours.
fn verified_claims(report: &str, vcek: &str) -> kbs::evidence::Claims {
    let report = vector(report);
    let report_data: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    SnpVerifier::new(SnpAnchors::amd().unwrap())
        .verify(&report, &vector(vcek), &[], datetime!(2025-06-01 00:00 UTC), &report_data)
        .unwrap()
        .claims
}

#[test]
fn default_policy_on_captured_hardware_evidence() {
    // go-sev-guest's report was launched with DEBUG=1.
    let claims = verified_claims("go-sev-guest/attestation.bin", "go-sev-guest/vcek.der");
    let mut meta = placeholder_meta("models/llama/key");
    meta.allowed_measurements.push(claims.measurement.clone());
    let denial = PolicyEngine::builtin().evaluate(&claims, &meta).unwrap_err();
    assert_eq!(denial.code, ReasonCode::DebugEnabled);
    assert_eq!(denial.reasons, ["debug_enabled"]);

    // virtee's Milan report: allowed when its measurement is in the reference
    // values, refused when it is not.
    let claims = verified_claims("virtee-sev/report_milan.bin", "virtee-sev/vcek_milan.der");
    let measurement =
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";
    assert_eq!(claims.measurement, measurement);
    let meta = placeholder_meta("models/llama/key");
    let sets = BTreeMap::from([("default".to_owned(), serde_json::json!({"measurements": [measurement]}))]);
    let allowed = decide_offline(DEFAULT_POLICY, &sets, &claims, &meta).unwrap();
    assert!(allowed.allow, "{allowed:?}");
    let other = BTreeMap::from([("default".to_owned(), serde_json::json!({"measurements": ["ab".repeat(48)]}))]);
    let refused = decide_offline(DEFAULT_POLICY, &other, &claims, &meta).unwrap();
    assert_eq!(refused.code, Some(ReasonCode::MeasurementNotAllowed));
    assert_eq!(refused.reasons, [format!("measurement_not_allowed: {measurement} for models/llama/key")]);
    // Its TCB (snp 8) is below a minimum of 23 for Milan.
    let strict = BTreeMap::from([(
        "default".to_owned(),
        serde_json::json!({"measurements": [measurement], "snp_min_tcb": {"milan": {"snp": 23}}}),
    )]);
    let refused = decide_offline(DEFAULT_POLICY, &strict, &claims, &meta).unwrap();
    assert_eq!(refused.reasons, ["tcb_below_minimum: snp 8 < 23"]);
}

/// Set in the child process that [`under_address_space_limit`] starts.
const BOUNDED_CHILD: &str = "KBS_TEST_ADDRESS_SPACE_BOUNDED";
/// The child's address space, in KiB (4 GiB; a test broker maps well under
/// 1 GiB at rest).
const ADDRESS_SPACE_KIB: u64 = 4 << 20;

/// Runs the test `name` of this binary again in a child process under an
/// address-space limit (`ulimit -v`), so that a broker whose memory bound
/// fails cannot take the machine with it; returns whether this process is
/// that child (which then runs the test's body).
fn under_address_space_limit(name: &str) -> bool {
    if std::env::var_os(BOUNDED_CHILD).is_some() {
        return true;
    }
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -v \"$1\" || exit 97\nshift\nexec \"$@\"", "sh"])
        .arg(ADDRESS_SPACE_KIB.to_string())
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(BOUNDED_CHILD, "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the bounded run failed ({}):\n{text}", out.status);
    // The child ran the body: libtest reports one test passed.
    assert!(text.contains("1 passed"), "{text}");
    false
}

/// Builds four distinct 896 KiB strings per iteration, 100,000 times: no
/// single builtin call is past the builtins' bounds, and the heap grows by
/// several MiB per iteration until a bound stops it.
const GROWING: &str = r#"package kbs.release
d0 := "0123456789abcdef"
d1 := concat("", [d0, d0])
d2 := concat("", [d1, d1])
d3 := concat("", [d2, d2])
d4 := concat("", [d3, d3])
d5 := concat("", [d4, d4])
d6 := concat("", [d5, d5])
d7 := concat("", [d6, d6])
d8 := concat("", [d7, d7])
d9 := concat("", [d8, d8])
d10 := concat("", [d9, d9])
d11 := concat("", [d10, d10])
d12 := concat("", [d11, d11])
d13 := concat("", [d12, d12])
d14 := concat("", [d13, d13])
d15 := concat("", [d14, d14])
grown := [[concat("", [d15, d14, d13, format_int(i, 10), x]) | some x in ["a", "b", "c", "d"]] | some i in numbers.range(1, 100000)]
allow if count(grown) > 0
"#;

#[tokio::test]
async fn policies_that_grow_the_heap_step_by_step_are_refused() {
    if !under_address_space_limit("policies_that_grow_the_heap_step_by_step_are_refused") {
        return;
    }
    let app = TestApp::start_with(app::Options {
        // A time limit that the policy cannot reach before it has grown
        // the heap past the address-space limit (a few seconds of
        // copying): only the heap ceiling can stop it.
        extra_config: "[policy]\nmax_memory_mib = 64\neval_time_limit_ms = 60000\n".into(),
        ..Default::default()
    })
    .await;
    let a = guest(MEASUREMENT_A);
    app.put("keys/a", b"key A", &[]).await;
    let bound = |reasons: &[String]| {
        assert!(
            reasons.first().is_some_and(|r| r.starts_with("policy_error: kbs policy bound: the heap reached")),
            "{reasons:?}"
        );
    };

    // A dry run of the policy: refused with the bound as its reason.
    let report = a.report(&[3u8; 64]).unwrap();
    let dry_run = TestPolicyRequest {
        rego: GROWING.into(),
        secret_name: "keys/a".into(),
        input: Some(test_policy_request::Input::Snp(SnpEvidence { report, cert_table: a.cert_table().unwrap() })),
    };
    let decision = app.admin().await.test_policy(app.authed(dry_run.clone())).await.unwrap().into_inner();
    assert!(!decision.allow);
    bound(&decision.reasons);

    // Uploaded and used by a release: refused, the reason audited.
    app.set_policy("keys/a", GROWING).await.unwrap();
    assert_refused(app.fetch(&a, &["keys/a"]).await, Code::PermissionDenied, "policy_denied");
    let reasons: Vec<String> = serde_json::from_value(last_release(&app)["reasons"].clone()).unwrap();
    bound(&reasons);

    // The broker keeps serving, and the heap it grew is freed: the same
    // dry run is refused again (not a different error), and a sane policy
    // releases.
    let decision = app.admin().await.test_policy(app.authed(dry_run)).await.unwrap().into_inner();
    bound(&decision.reasons);
    app.set_policy("keys/a", "package kbs.release\nallow := true").await.unwrap();
    assert_eq!(app.fetch(&a, &["keys/a"]).await.unwrap()[0].1, b"key A");
}
