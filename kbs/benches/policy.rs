//! Cost of one policy decision with the shipped default policy, on claims
//! from a verified (simulated, real-format) SNP report: scope lookup,
//! input conversion and the decision (the native check of the default
//! policy, then Rego for a refusal), as the release path runs them per
//! secret. `cargo bench -p kbs --bench policy`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use attester_client::simulated::{Generation, SimulatedSnp, Vcek, test_ark_der, test_ask_der};
use criterion::{Criterion, criterion_group, criterion_main};
use kbs::evidence::Claims;
use kbs::evidence::anchors::{Generation as AmdGeneration, SnpAnchors};
use kbs::evidence::snp::SnpVerifier;
use kbs::policy::{DEFAULT_POLICY, PolicyEngine, PreparedClaims, decide_offline, placeholder_meta};
use kbs::store::SecretMeta;
use regorus::utils::limits::ExecutionTimerConfig;
use time::OffsetDateTime;

// The broker's allocator (mimalloc) comes with regorus.

const MEASUREMENT: [u8; 48] = [0x5a; 48];

fn claims() -> Claims {
    let mut anchors = SnpAnchors::amd().unwrap();
    for generation in [AmdGeneration::Milan, AmdGeneration::Genoa, AmdGeneration::Turin] {
        anchors.add_root(generation, test_ark_der()).unwrap();
    }
    let verifier = SnpVerifier::new(anchors);
    let report_data = [9u8; 64];
    let report = SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT).report(&report_data).unwrap();
    let extra = vec![test_ask_der().to_vec(), test_ark_der().to_vec()];
    verifier.verify(&report, Vcek::Genoa.cert_der(), &extra, OffsetDateTime::now_utc(), &report_data).unwrap().claims
}

fn meta(allowed: bool) -> SecretMeta {
    let mut meta = placeholder_meta("models/llama/key");
    meta.version = 3;
    if allowed {
        meta.allowed_measurements.push(hex::encode(MEASUREMENT));
    }
    meta
}

fn policy(c: &mut Criterion) {
    let claims = claims();
    let engine = PolicyEngine::builtin();
    assert!(engine.evaluate(&claims, &meta(true)).is_ok());
    assert!(engine.evaluate(&claims, &meta(false)).is_err());
    let mut group = c.benchmark_group("policy");
    group.measurement_time(Duration::from_secs(5));
    let (allowed, refused) = (meta(true), meta(false));
    // What one release with one secret costs: preparing the claims (once
    // per release; also yields the audit digest) and one evaluation.
    group.bench_function("default_allow", |b| b.iter(|| engine.evaluate(black_box(&claims), &allowed)));
    // A refusal evaluates the policy's reasons too.
    group.bench_function("default_deny", |b| b.iter(|| engine.evaluate(black_box(&claims), &refused)));
    // A release prepares its claims once and evaluates each further secret
    // against them: the cost of one more secret in the same release.
    let prepared = PreparedClaims::new(&claims).unwrap();
    group.bench_function("default_allow_prepared", |b| {
        b.iter(|| engine.evaluate_prepared(black_box(&prepared), &allowed))
    });
    group.bench_function("prepare_claims", |b| b.iter(|| PreparedClaims::new(black_box(&claims))));
    // The same allowing decision in regorus' interpreter: what the native
    // check of the default policy saves (a refusal still runs the Rego).
    let compiled = kbs::policy::CompiledRego::compile(DEFAULT_POLICY, &regorus_empty()).unwrap();
    let input = kbs::policy::policy_input(&kbs::policy::engine::to_value(serde_json::json!(claims)), &allowed, 0);
    assert!(compiled.evaluate(input.clone(), false).unwrap().allow);
    group.bench_function("default_allow_rego", |b| b.iter(|| compiled.evaluate(black_box(input.clone()), false)));
    // The same with the interpreter's clock read at every 4th and every
    // 64th step instead of at every step (see `policy::engine`): what
    // checking the time limit at every step costs.
    for every in [4, 64] {
        let config = regorus::utils::limits::fallback_execution_timer_config().unwrap();
        let check_interval = std::num::NonZeroU32::new(every).unwrap();
        regorus::utils::limits::set_fallback_execution_timer_config(Some(ExecutionTimerConfig {
            check_interval,
            ..config
        }));
        group.bench_function(format!("default_allow_rego_clock_every_{every}"), |b| {
            b.iter(|| compiled.evaluate(black_box(input.clone()), false))
        });
        regorus::utils::limits::set_fallback_execution_timer_config(Some(config));
    }
    // With a reference value set of 100 measurements and TCB minimums.
    let mut measurements: Vec<String> = (0..99u8).map(|i| hex::encode([i; 48])).collect();
    measurements.push(hex::encode(MEASUREMENT));
    let sets = BTreeMap::from([(
        "default".to_owned(),
        serde_json::json!({"measurements": measurements, "snp_min_tcb": {"genoa": {"snp": 0, "microcode": 0}}}),
    )]);
    assert!(decide_offline(DEFAULT_POLICY, &sets, &claims, &meta(false)).unwrap().allow);
    group.bench_function("compile_default", |b| {
        b.iter(|| kbs::policy::CompiledRego::compile(DEFAULT_POLICY, &regorus_empty()).unwrap())
    });
    group.finish();
}

fn regorus_empty() -> regorus::Value {
    regorus::Value::new_object()
}

criterion_group!(benches, policy);
criterion_main!(benches);
