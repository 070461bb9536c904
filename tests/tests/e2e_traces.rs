//! End-to-end: the OpenTelemetry spans of real releases (gRPC over TLS on a
//! loopback port, evidence signed under the test PKI), exported over
//! OTLP/gRPC to a collector in the test process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;

use attester_client::hpke::EphemeralKey;
use attester_client::simulated::{Generation, SimulatedSnp};
use kbs_proto::v1::{
    GetChallengeRequest, PutSecretRequest, ReleaseSecretsRequest, ReleaseSecretsResponse, SnpEvidence, Tee,
    release_secrets_request,
};
use kbs_proto::{NONCE_LEN, SuiteId};

#[path = "support/app.rs"]
mod app;
#[path = "support/otlp.rs"]
mod otlp;

use app::{Options, TestApp};
use otlp::Collector;

const MEASUREMENT: [u8; 48] = [0x5a; 48];
const OTHER_MEASUREMENT: [u8; 48] = [0x77; 48];
const SECRET: &str = "models/llama/key";
const REFUSED_SECRET: &str = "models/other/key";
const VALUE: &[u8] = b"llama-weights-key:7f3a9c21d4e8b605";

/// What one release sent and got, for the secret scan.
struct Sent {
    challenge: Vec<u8>,
    report: Vec<u8>,
    cert_table: Vec<u8>,
    public_key: Vec<u8>,
    result: Result<ReleaseSecretsResponse, tonic::Status>,
}

/// A `GetChallenge` request with `traceparent` in the call's metadata.
fn challenge_request(names: &[String], traceparent: &str) -> tonic::Request<GetChallengeRequest> {
    let mut request = tonic::Request::new(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: names.to_vec() });
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

/// Challenge, then release of `name`, with `traceparent` in both calls'
/// metadata.
async fn release(app: &TestApp, name: &str, traceparent: &str) -> Sent {
    let sim = SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT);
    let mut rpc = app.guest().await;
    let names = vec![name.to_owned()];
    let challenge = rpc.get_challenge(challenge_request(&names, traceparent)).await.unwrap().into_inner();
    let nonce: [u8; NONCE_LEN] = challenge.nonce.as_slice().try_into().unwrap();
    let suite = SuiteId::X25519_SHA256_AES256GCM;
    let key = EphemeralKey::generate(suite).unwrap();
    let report = sim.report(&kbs_proto::report_data(&nonce, suite, key.public_key())).unwrap();
    let cert_table = sim.cert_table().unwrap();
    let mut request = tonic::Request::new(ReleaseSecretsRequest {
        challenge: challenge.challenge.clone(),
        evidence: Some(release_secrets_request::Evidence::Snp(SnpEvidence {
            report: report.clone(),
            cert_table: cert_table.clone(),
        })),
        hpke_suite: Some(suite.to_wire()),
        hpke_public_key: key.public_key().to_vec(),
        secret_names: names,
        gpus: Vec::new(),
        want_attestation_token: false,
    });
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    let result = rpc.release_secrets(request).await.map(tonic::Response::into_inner);
    Sent { challenge: challenge.challenge, report, cert_table, public_key: key.public_key().to_vec(), result }
}

fn children<'a>(spans: &'a [otlp::Span], parent: &otlp::Span) -> Vec<&'a otlp::Span> {
    spans.iter().filter(|s| s.parent_span_id == parent.span_id).collect()
}

fn names(spans: &[&otlp::Span]) -> BTreeSet<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_a_tree_of_phase_spans_under_the_callers_trace_and_holds_no_secret() {
    let (collector, endpoint) = Collector::start().await;
    let app = TestApp::start_with(Options {
        extra_config: format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"kbs-trace-test\""),
        ..Default::default()
    })
    .await;
    let telemetry = otlp::install(&app.dir.path().join("kbs.toml"));
    for (name, allowed) in [(SECRET, MEASUREMENT), (REFUSED_SECRET, OTHER_MEASUREMENT)] {
        let put = PutSecretRequest {
            name: name.into(),
            value: VALUE.to_vec(),
            allowed_measurements: vec![hex::encode(allowed)],
            ..Default::default()
        };
        app.admin().await.put_secret(app.authed(put)).await.unwrap();
    }

    let (allowed_parent, allowed_trace, allowed_caller) = otlp::traceparent();
    let allowed = release(&app, SECRET, &allowed_parent).await;
    let released = allowed.result.as_ref().unwrap();
    assert_eq!(released.secrets.len(), 1);
    let (refused_parent, refused_trace, refused_caller) = otlp::traceparent();
    let refused = release(&app, REFUSED_SECRET, &refused_parent).await;
    let status = refused.result.as_ref().unwrap_err();
    let refused_reason = status.metadata().get("kbs-reason").unwrap().to_str().unwrap().to_owned();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // A challenge refused (a name asked for twice) before any release.
    let (bad_parent, bad_trace, bad_caller) = otlp::traceparent();
    let twice = vec![SECRET.to_owned(), SECRET.to_owned()];
    let status = app.guest().await.get_challenge(challenge_request(&twice, &bad_parent)).await.unwrap_err();
    let bad_reason = status.metadata().get("kbs-reason").unwrap().to_str().unwrap().to_owned();

    // The broker stops, then the exporter flushes what is left.
    let admin_token = app.token.trim().to_owned();
    drop(app);
    otlp::shutdown(telemetry).await;
    let spans = collector.spans();

    // The allowed release: a root span under the caller's span, carrying
    // the caller's trace id...
    let roots: Vec<&otlp::Span> = spans.iter().filter(|s| s.name == "kbs.release").collect();
    assert_eq!(roots.len(), 2, "{spans:#?}");
    let root = roots.iter().find(|s| s.trace_id == allowed_trace).expect("the caller's trace id was not propagated");
    assert_eq!(root.parent_span_id, allowed_caller);
    assert_eq!((root.str("rpc.system"), root.str("rpc.method")), (Some("grpc"), Some("ReleaseSecrets")));
    assert_eq!(root.str("tee"), Some("snp"));
    assert_eq!(root.str("outcome"), Some("allow"));
    assert_eq!(root.int("secrets"), Some(1));
    assert_eq!(root.str("attestation_id"), Some(released.attestation_id.as_str()));
    assert_eq!(root.str("reason"), None);
    assert_ne!(root.status_code, 2);
    // ...with a child per phase, in the same trace...
    let phases = children(&spans, root);
    assert_eq!(names(&phases), ["policy", "seal", "store", "verify"].map(String::from).into(), "{phases:#?}");
    assert!(phases.iter().all(|s| s.trace_id == allowed_trace));
    // ...and evidence parsing and collateral inside verification.
    let verify = phases.iter().find(|s| s.name == "verify").unwrap();
    let inside = children(&spans, verify);
    assert_eq!(names(&inside), ["collateral", "evidence_parse"].map(String::from).into(), "{inside:#?}");
    assert_eq!(inside.iter().find(|s| s.name == "collateral").unwrap().str("source"), Some("cert_table"));

    // The refused release: its own trace, the reason code, an error status,
    // and no sealing.
    let root = roots.iter().find(|s| s.trace_id == refused_trace).unwrap();
    assert_eq!(root.parent_span_id, refused_caller);
    assert_eq!(root.str("outcome"), Some("deny"));
    assert_eq!(root.str("reason"), Some(refused_reason.as_str()));
    assert_eq!(root.status_code, 2);
    assert_eq!(names(&children(&spans, root)), ["policy", "store", "verify"].map(String::from).into());

    // Each challenge: a root span of its own under the caller's span, the
    // TEE asked for, the outcome and the number of names, no attestation
    // id (there is none yet) and no child.
    let challenges: Vec<&otlp::Span> = spans.iter().filter(|s| s.name == "kbs.challenge").collect();
    assert_eq!(challenges.len(), 3, "{spans:#?}");
    for (trace, caller, secrets, reason) in [
        (allowed_trace, allowed_caller, 1, None),
        (refused_trace, refused_caller, 1, None),
        (bad_trace, bad_caller, 2, Some(&bad_reason)),
    ] {
        let span = challenges.iter().find(|s| s.trace_id == trace).expect("the caller's trace id was not propagated");
        assert_eq!(span.parent_span_id, caller);
        assert_eq!((span.str("rpc.system"), span.str("rpc.method")), (Some("grpc"), Some("GetChallenge")));
        assert_eq!(span.str("rpc.service"), Some("kbs.v1.KeyBroker"));
        assert_eq!(span.str("tee"), Some("snp"));
        assert_eq!(span.int("secrets"), Some(secrets));
        assert_eq!(span.str("attestation_id"), None);
        assert_eq!(span.str("reason"), reason.map(String::as_str));
        assert_eq!(span.str("outcome"), Some(if reason.is_some() { "deny" } else { "allow" }));
        assert_eq!(span.status_code == 2, reason.is_some());
        assert!(children(&spans, span).is_empty());
    }

    // Only the broker's spans, from this service.
    let known = ["kbs.challenge", "kbs.release", "verify", "evidence_parse", "collateral", "store", "policy", "seal"];
    assert!(spans.iter().all(|s| known.contains(&s.name.as_str())), "{spans:#?}");
    let resource = &collector.requests()[0].resource_spans[0].resource.clone().unwrap();
    let service = resource.attributes.iter().find(|kv| kv.key == "service.name").unwrap();
    assert_eq!(
        service.value.as_ref().unwrap().value,
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("kbs-trace-test".into()))
    );

    // Nothing secret, in any form, anywhere in what was exported (the
    // scan does see the attributes: the attestation id is among them).
    assert!(collector.all_text().contains(&released.attestation_id));
    let sealed = &released.secrets[0];
    otlp::assert_no_secret(
        &collector,
        &[
            ("secret value", VALUE),
            ("admin token", admin_token.as_bytes()),
            ("secret name", SECRET.as_bytes()),
            ("refused secret name", REFUSED_SECRET.as_bytes()),
            ("challenge token", &allowed.challenge),
            ("refused challenge token", &refused.challenge),
            ("SNP report", &allowed.report),
            ("refused SNP report", &refused.report),
            ("certificate table", &allowed.cert_table),
            ("HPKE public key", &allowed.public_key),
            ("HPKE enc", &sealed.enc),
            ("sealed secret", &sealed.ciphertext),
        ],
    );
}
