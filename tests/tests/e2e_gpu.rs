//! End-to-end: the composite CPU + GPU release over real gRPC and TLS. A
//! simulated SNP guest with simulated NVIDIA GPUs (test PKI, pinned by the
//! dev-mode broker, whose RIM directory holds the simulated GPUs' driver
//! and VBIOS RIMs under the test RIM root) fetches secrets that need GPUs;
//! every way of breaking the binding between the GPUs, the CPU evidence and
//! the requester's key is refused with its reason code, and so are GPUs on
//! firmware their RIMs do not describe, or whose RIMs the broker lacks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::Arc;

use attester_client::client::{ClientConfig, KbsClient};
use attester_client::evidence::{GpuEvidence, GpuEvidenceSource, nvml};
use attester_client::hpke::EphemeralKey;
use attester_client::simulated::{Generation, RimKind, SimulatedGpus, SimulatedSnp};
use kbs_proto::v1::{
    GetChallengeRequest, PutSecretRequest, ReleaseSecretsRequest, ReleaseSecretsResponse, SnpEvidence, Tee,
    release_secrets_request,
};
use kbs_proto::{NONCE_LEN, SuiteId};
use tonic::Code;

#[path = "support/app.rs"]
mod app;

use app::{Options, TestApp};

const MEASUREMENT: [u8; 48] = [0x5a; 48];
const SUITE: SuiteId = SuiteId::X25519_SHA256_AES256GCM;
const ONE_GPU: &str = "models/small/key";
const EIGHT_GPUS: &str = "models/large/key";
const NO_GPU: &str = "models/plain/key";

fn guest() -> SimulatedSnp {
    SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT)
}

/// A dev-mode broker holding a secret that needs one GPU, one that needs
/// eight, and one that needs none.
async fn app() -> TestApp {
    app_with(Options::default()).await
}

async fn app_with(options: Options) -> TestApp {
    let app = TestApp::start_with(options).await;
    for (name, gpus) in [(ONE_GPU, Some("1")), (EIGHT_GPUS, Some("8")), (NO_GPU, None)] {
        let req = PutSecretRequest {
            name: name.into(),
            value: name.as_bytes().to_vec(),
            allowed_measurements: vec![hex::encode(MEASUREMENT)],
            labels: gpus.map(|n| HashMap::from([("gpus".to_owned(), n.to_owned())])).unwrap_or_default(),
            ..Default::default()
        };
        app.admin().await.put_secret(app.authed(req)).await.unwrap();
    }
    app
}

/// The real client: GPU nonce, GPU evidence, then CPU evidence bound to it.
async fn client_fetch(app: &TestApp, gpus: usize, name: &str) -> Result<Vec<u8>, attester_client::client::Error> {
    let config = ClientConfig::new(app.guest_url.clone(), app.ca.clone());
    let mut client = KbsClient::connect(&config).await?;
    let source: Option<Arc<dyn GpuEvidenceSource>> = match gpus {
        0 => None,
        n => Some(Arc::new(SimulatedGpus::new(n).unwrap())),
    };
    let release = client.fetch_release_with_gpus(Arc::new(guest()), source, &[name.to_owned()]).await?;
    Ok(release.secrets[0].value.to_vec())
}

/// A raw composite exchange with hooks to break one thing.
struct Exchange {
    name: &'static str,
    gpus: usize,
    /// Make the GPU evidence for this HPKE key instead of the one sent.
    gpu_key: Option<Vec<u8>>,
    /// Make the GPU evidence for this challenge nonce instead of the one issued.
    gpu_challenge: Option<[u8; NONCE_LEN]>,
    /// Edits the device list the CPU evidence commits to; the second
    /// argument is a further genuine device with the right nonce.
    bind: fn(&mut Vec<GpuEvidence>, &GpuEvidence),
    /// Edits the device list sent (after binding), likewise.
    send: fn(&mut Vec<GpuEvidence>, &GpuEvidence),
    /// This GPU runs firmware its RIMs do not describe.
    wrong_firmware: Option<usize>,
}

impl Exchange {
    fn new(name: &'static str, gpus: usize) -> Self {
        Self { name, gpus, gpu_key: None, gpu_challenge: None, bind: |_, _| {}, send: |_, _| {}, wrong_firmware: None }
    }

    async fn run(self, app: &TestApp) -> Result<ReleaseSecretsResponse, tonic::Status> {
        let mut rpc = app.guest().await;
        let challenge = rpc
            .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: vec![self.name.into()] })
            .await?
            .into_inner();
        let nonce: [u8; NONCE_LEN] = challenge.nonce.as_slice().try_into().unwrap();
        let key = EphemeralKey::generate(SUITE).unwrap();
        let gpu_nonce = kbs_proto::gpu_nonce(
            &self.gpu_challenge.unwrap_or(nonce),
            SUITE,
            self.gpu_key.as_deref().unwrap_or(key.public_key()),
        );
        // One more device than used, to add.
        let mut simulated = SimulatedGpus::new(self.gpus.max(1) + 1).unwrap();
        if let Some(index) = self.wrong_firmware {
            simulated = simulated.with_wrong_firmware(index);
        }
        let made = simulated.gpu_evidence(&gpu_nonce).unwrap();
        let mut devices: Vec<GpuEvidence> = made[..self.gpus].to_vec();
        let spare = made[self.gpus].clone();
        let mut bound = devices.clone();
        (self.bind)(&mut bound, &spare);
        let bound_refs: Vec<kbs_proto::DeviceEvidence<'_>> =
            bound.iter().map(|d| kbs_proto::DeviceEvidence { report: &d.report, cert_chain: &d.cert_chain }).collect();
        let report_data = kbs_proto::device_report_data(&nonce, SUITE, key.public_key(), &bound_refs);
        (self.send)(&mut devices, &spare);
        let req = ReleaseSecretsRequest {
            challenge: challenge.challenge,
            evidence: Some(release_secrets_request::Evidence::Snp(SnpEvidence {
                report: guest().report(&report_data).unwrap(),
                cert_table: guest().cert_table().unwrap(),
            })),
            hpke_suite: Some(SUITE.to_wire()),
            hpke_public_key: key.public_key().to_vec(),
            secret_names: vec![self.name.into()],
            gpus: devices
                .into_iter()
                .map(|d| kbs_proto::v1::GpuEvidence { report: d.report, cert_chain: d.cert_chain, ocsp: Vec::new() })
                .collect(),
            want_attestation_token: false,
        };
        Ok(rpc.release_secrets(req).await?.into_inner())
    }
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, expected_reason: &str) {
    let status = result.expect_err("the broker must refuse");
    assert_eq!(status.code(), Code::PermissionDenied, "status {status:?}");
    let reason = status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(reason, expected_reason, "status {status:?}");
}

#[tokio::test]
async fn one_and_eight_simulated_gpus_get_their_secrets() {
    let app = app().await;
    assert_eq!(client_fetch(&app, 1, ONE_GPU).await.unwrap(), ONE_GPU.as_bytes());
    assert_eq!(client_fetch(&app, 8, EIGHT_GPUS).await.unwrap(), EIGHT_GPUS.as_bytes());
    // More GPUs than a secret needs, and GPUs with a secret that needs none.
    assert_eq!(client_fetch(&app, 8, ONE_GPU).await.unwrap(), ONE_GPU.as_bytes());
    assert_eq!(client_fetch(&app, 2, NO_GPU).await.unwrap(), NO_GPU.as_bytes());
    // A guest without GPUs keeps today's binding for secrets that need none.
    assert_eq!(client_fetch(&app, 0, NO_GPU).await.unwrap(), NO_GPU.as_bytes());
    // The raw exchange, unbroken, passes too (the negatives below are real).
    assert_eq!(Exchange::new(EIGHT_GPUS, 8).run(&app).await.unwrap().secrets.len(), 1);
    // The audit record of a composite release holds the claims digest.
    let log = app.audit_log();
    assert!(log.lines().filter(|l| l.contains(r#""decision":"allow""#)).count() >= 6, "{log}");
}

#[tokio::test]
async fn gpu_secrets_need_attested_gpus() {
    let app = app().await;
    // No devices at all: the guest's honest device-free binding.
    let refused = client_fetch(&app, 0, ONE_GPU).await.unwrap_err();
    match refused {
        attester_client::client::Error::Refused { reason, code, .. } => {
            assert_eq!((reason.as_str(), code), ("gpu_count_mismatch", Code::PermissionDenied));
        }
        other => panic!("{other:?}"),
    }
    assert_refused(Exchange::new(ONE_GPU, 0).run(&app).await, "gpu_count_mismatch");
    // Fewer than the secret needs, each verified and bound.
    assert_refused(Exchange::new(EIGHT_GPUS, 7).run(&app).await, "gpu_count_mismatch");
    assert!(app.audit_log().contains("gpu_count_mismatch"));
}

#[tokio::test]
async fn broken_bindings_are_refused_with_their_reasons() {
    let app = app().await;
    let other_key = EphemeralKey::generate(SUITE).unwrap().public_key().to_vec();
    // A GPU report made for another HPKE key.
    let relayed = Exchange { gpu_key: Some(other_key), ..Exchange::new(ONE_GPU, 1) };
    assert_refused(relayed.run(&app).await, "gpu_evidence_invalid");
    // Its audit record names the verified CPU measurement and the reason.
    let record = app.audit_log().lines().last().unwrap().to_owned();
    assert!(record.contains("gpu_evidence_invalid") && record.contains(&hex::encode(MEASUREMENT)), "{record}");
    // A GPU report made for another challenge.
    let stale = Exchange { gpu_challenge: Some([0x42; NONCE_LEN]), ..Exchange::new(EIGHT_GPUS, 8) };
    assert_refused(stale.run(&app).await, "gpu_evidence_invalid");
    // A device dropped after the CPU evidence committed to it.
    let dropped = Exchange {
        send: |d, _| {
            d.remove(3);
        },
        ..Exchange::new(ONE_GPU, 8)
    };
    assert_refused(dropped.run(&app).await, "report_data_mismatch");
    // A genuine device added.
    let added = Exchange { send: |d, spare| d.push(spare.clone()), ..Exchange::new(ONE_GPU, 8) };
    assert_refused(added.run(&app).await, "report_data_mismatch");
    // Devices reordered.
    let reordered = Exchange { send: |d, _| d.swap(0, 7), ..Exchange::new(EIGHT_GPUS, 8) };
    assert_refused(reordered.run(&app).await, "report_data_mismatch");
    // Every device stripped: told apart from a guest that never had any.
    let stripped = Exchange { send: |d, _| d.clear(), ..Exchange::new(NO_GPU, 1) };
    assert_refused(stripped.run(&app).await, "report_data_mismatch");
    // A device sent twice, bound as such: one GPU cannot count as two.
    let twice =
        Exchange { bind: |d, _| d.push(d[0].clone()), send: |d, _| d.push(d[0].clone()), ..Exchange::new(ONE_GPU, 1) };
    assert_refused(twice.run(&app).await, "gpu_count_mismatch");
    // An added device bound as such is fine: the binding is the guest's word.
    let bound_extra = Exchange {
        bind: |d, spare| d.push(spare.clone()),
        send: |d, spare| d.push(spare.clone()),
        ..Exchange::new(ONE_GPU, 1)
    };
    assert_eq!(bound_extra.run(&app).await.unwrap().secrets.len(), 1);
    // A device whose report is altered after binding.
    let altered = Exchange { send: |d, _| d[0].report[200] ^= 1, ..Exchange::new(ONE_GPU, 1) };
    assert_refused(altered.run(&app).await, "report_data_mismatch");
    // An altered report bound as altered: the GPU signature fails.
    let forged = Exchange {
        bind: |d, _| d[0].report[200] ^= 1,
        send: |d, _| d[0].report[200] ^= 1,
        ..Exchange::new(ONE_GPU, 1)
    };
    assert_refused(forged.run(&app).await, "gpu_evidence_invalid");
}

#[tokio::test]
async fn gpu_firmware_must_match_its_rims() {
    let app = app().await;
    // One GPU of eight on firmware its RIMs do not describe: genuine and
    // bound, but refused for a secret that needs GPUs, even one.
    let wrong = Exchange { wrong_firmware: Some(5), ..Exchange::new(EIGHT_GPUS, 8) };
    assert_refused(wrong.run(&app).await, "gpu_measurement_mismatch");
    let record = app.audit_log().lines().last().unwrap().to_owned();
    assert!(record.contains("device 5") && record.contains("indices [9]"), "{record}");
    let wrong = Exchange { wrong_firmware: Some(0), ..Exchange::new(ONE_GPU, 1) };
    assert_refused(wrong.run(&app).await, "gpu_measurement_mismatch");
    // A secret that needs no GPU is the policy's to judge (the default
    // policy does not look at GPUs).
    let wrong = Exchange { wrong_firmware: Some(0), ..Exchange::new(NO_GPU, 1) };
    assert_eq!(wrong.run(&app).await.unwrap().secrets.len(), 1);
    // The same request with genuine firmware passes.
    assert_eq!(Exchange::new(ONE_GPU, 1).run(&app).await.unwrap().secrets.len(), 1);
}

#[tokio::test]
async fn a_missing_rim_is_refused_with_its_reason() {
    let app = app_with(Options { without_gpu_rims: vec![RimKind::Vbios], ..Default::default() }).await;
    let refused = client_fetch(&app, 1, ONE_GPU).await.unwrap_err();
    match refused {
        attester_client::client::Error::Refused { reason, code, .. } => {
            assert_eq!((reason.as_str(), code), ("gpu_measurement_mismatch", Code::PermissionDenied));
        }
        other => panic!("{other:?}"),
    }
    let record = app.audit_log().lines().last().unwrap().to_owned();
    assert!(record.contains("no reference values (RIM) for vbios 96.00.CF.00.02"), "{record}");
    // Secrets that need no GPU are unaffected.
    assert_eq!(client_fetch(&app, 1, NO_GPU).await.unwrap(), NO_GPU.as_bytes());
}

#[tokio::test]
async fn oversized_device_lists_are_refused_before_verification() {
    let app = app().await;
    let many = Exchange {
        bind: |d, spare| d.resize(17, spare.clone()),
        send: |d, spare| d.resize(17, spare.clone()),
        ..Exchange::new(ONE_GPU, 1)
    };
    let status = many.run(&app).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.metadata().get("kbs-reason").unwrap().to_str().unwrap(), "evidence_too_large");
}

#[tokio::test]
async fn the_shipped_gpu_policy_reads_the_claims_the_broker_makes() {
    use attester_client::simulated::{SIMULATED_DRIVER_VERSION, SIMULATED_VBIOS_VERSION, simulated_measurement};
    let app = app().await;
    let refvals = |drivers: &[&str]| {
        serde_json::json!({
            "measurements": [hex::encode(MEASUREMENT)],
            "gpu": {
                "count": 2, "modes": ["mpt"], "drivers": drivers, "vbios": [SIMULATED_VBIOS_VERSION], "rims": "match",
                "measurements": {"3": [hex::encode(simulated_measurement(3))]},
            },
        })
        .to_string()
    };
    let put_refvals = |json: String| async {
        let req = kbs_proto::v1::PutReferenceValuesRequest { name: "default".into(), json };
        app.admin().await.put_reference_values(app.authed(req)).await.unwrap();
    };
    put_refvals(refvals(&[SIMULATED_DRIVER_VERSION])).await;
    let req = kbs_proto::v1::SetPolicyRequest {
        scope: "models/".into(),
        rego: include_str!("../../policies/gpu.rego").into(),
    };
    app.admin().await.set_policy(app.authed(req)).await.unwrap();

    // Two GPUs in multi-GPU mode, the expected driver, VBIOS and measurement.
    assert_eq!(client_fetch(&app, 2, NO_GPU).await.unwrap(), NO_GPU.as_bytes());
    // One GPU: too few, and single-GPU mode.
    let refused = Exchange::new(NO_GPU, 1).run(&app).await;
    assert_refused(refused, "gpu_count_mismatch");
    // The policy reads the RIM appraisal: a GPU on wrong firmware.
    let wrong = Exchange { wrong_firmware: Some(1), ..Exchange::new(NO_GPU, 2) };
    assert_refused(wrong.run(&app).await, "gpu_measurement_mismatch");
    assert!(app.audit_log().lines().last().unwrap().contains("GPU 1 RIM appraisal mismatch"));
    // A driver the reference values do not list.
    put_refvals(refvals(&["535.86.09"])).await;
    // The broker re-reads policies and reference values after a change made through it.
    assert_refused(Exchange::new(NO_GPU, 2).run(&app).await, "policy_denied");
}

/// The simulated GPUs as NVML hands their evidence over: the report in the
/// driver's 8 KiB buffer (zero after it), the chain as a C string; the
/// guest's NVML path (`evidence::nvml::device_evidence`) checks and trims
/// them, in PCI bus id order, as it does for real GPUs.
#[derive(Debug)]
struct DriverShapedGpus {
    gpus: SimulatedGpus,
    bus_ids: Vec<String>,
}

impl GpuEvidenceSource for DriverShapedGpus {
    fn gpu_evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, attester_client::evidence::Error> {
        let made = self.gpus.gpu_evidence(nonce)?;
        let order = nvml::bus_id_order(self.bus_ids.clone())?;
        let mut out = Vec::new();
        for bus_id in &order {
            let at = self.bus_ids.iter().position(|b| b == bus_id).unwrap();
            let mut report = made[at].report.clone();
            report.resize(nvml::buffers::REPORT_BUFFER_LEN, 0);
            let mut chain = made[at].cert_chain.clone();
            chain.push(0);
            out.push(nvml::device_evidence(bus_id, &report, &chain, nonce)?);
        }
        Ok(out)
    }
}

#[tokio::test]
async fn gpu_evidence_taken_from_driver_buffers_is_released_against() {
    let app = app().await;
    let config = ClientConfig::new(app.guest_url.clone(), app.ca.clone());
    let mut client = KbsClient::connect(&config).await.unwrap();
    // NVML lists them out of bus order; they are presented in it.
    let bus_ids: Vec<String> = (0..8).rev().map(|i| format!("00000000:{:02X}:00.0", 0x18 + i * 0x10)).collect();
    let gpus = DriverShapedGpus { gpus: SimulatedGpus::new(8).unwrap(), bus_ids };
    let nonce = [7; 32];
    let presented = gpus.gpu_evidence(&nonce).unwrap();
    let made = SimulatedGpus::new(8).unwrap().gpu_evidence(&nonce).unwrap();
    // Trimmed to exactly what the simulated GPU made, in bus order (GPU 7 first).
    assert_eq!(presented[0].cert_chain, made[7].cert_chain);
    assert_eq!(presented[0].report.len(), made[7].report.len());
    assert_eq!(presented[7].cert_chain, made[0].cert_chain);
    let release = client
        .fetch_release_with_gpus(Arc::new(guest()), Some(Arc::new(gpus)), &[EIGHT_GPUS.to_owned()])
        .await
        .unwrap();
    assert_eq!(release.secrets[0].value.as_slice(), EIGHT_GPUS.as_bytes());
}
