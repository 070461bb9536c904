//! End-to-end for Intel TDX: a real broker on loopback ports, real gRPC
//! over TLS, real quotes in the DCAP v4/v5 binary format signed under the
//! simulated TEE's test SGX PKI, verified against matching test collateral
//! from an offline collateral directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use attester_client::client::{ClientConfig, KbsClient};
use attester_client::hpke::EphemeralKey;
use attester_client::simulated::{Generation, Pck, Platform, SimulatedSnp, SimulatedTdx};
use kbs_proto::v1::admin_client::AdminClient;
use kbs_proto::v1::{
    GetChallengeRequest, PutReferenceValuesRequest, PutSecretRequest, ReleaseSecretsRequest, ReleaseSecretsResponse,
    TdxEvidence, Tee, release_secrets_request,
};
use kbs_proto::{NONCE_LEN, SuiteId};
use tonic::{Code, Request};

#[path = "support/app.rs"]
mod app;

use app::{Options, TestApp};

const MRTD: [u8; 48] = [0x7d; 48];
const SNP_MEASUREMENT: [u8; 48] = [0x5a; 48];
const SECRET: &str = "models/llama/key";

impl TestApp {
    async fn put(&self, name: &str, value: &[u8], allowed: &[[u8; 48]]) {
        let mut req = Request::new(PutSecretRequest {
            name: name.into(),
            value: value.to_vec(),
            allowed_measurements: allowed.iter().map(hex::encode).collect(),
            ..Default::default()
        });
        req.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        AdminClient::new(self.channel(&self.admin_url).await).put_secret(req).await.unwrap();
    }

    /// Stores the reference value set `default`, which the default policy reads.
    async fn put_default_refvals(&self, json: &str) {
        let mut req = Request::new(PutReferenceValuesRequest { name: "default".into(), json: json.into() });
        req.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        AdminClient::new(self.channel(&self.admin_url).await).put_reference_values(req).await.unwrap();
    }

    async fn fetch(
        &self,
        source: Arc<dyn attester_client::evidence::EvidenceSource>,
    ) -> Result<Vec<(String, Vec<u8>)>, attester_client::client::Error> {
        let config = ClientConfig::new(self.guest_url.clone(), self.ca.clone());
        let mut client = KbsClient::connect(&config).await?;
        let secrets = client.fetch(source, &[SECRET.to_owned()]).await?;
        Ok(secrets.into_iter().map(|s| (s.name.clone(), s.value.to_vec())).collect())
    }
}

/// One raw exchange, with hooks to break one thing.
struct Exchange {
    sim: SimulatedTdx,
    bind_nonce: Option<[u8; NONCE_LEN]>,
    bind_key: Option<Vec<u8>>,
}

impl Exchange {
    fn new(sim: SimulatedTdx) -> Self {
        Self { sim, bind_nonce: None, bind_key: None }
    }

    async fn run(
        self,
        app: &TestApp,
        tamper: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(ReleaseSecretsResponse, EphemeralKey, [u8; NONCE_LEN]), tonic::Status> {
        let suite = SuiteId::X25519_SHA256_AES256GCM;
        let mut rpc = app.guest().await;
        let challenge = rpc
            .get_challenge(GetChallengeRequest { tee: Tee::Tdx.into(), secret_names: vec![SECRET.into()] })
            .await?
            .into_inner();
        let nonce: [u8; NONCE_LEN] = challenge.nonce.as_slice().try_into().unwrap();
        let key = EphemeralKey::generate(suite).unwrap();
        let report_data = kbs_proto::report_data(
            &self.bind_nonce.unwrap_or(nonce),
            suite,
            self.bind_key.as_deref().unwrap_or(key.public_key()),
        );
        let mut quote = self.sim.quote(&report_data).unwrap();
        tamper(&mut quote);
        let req = ReleaseSecretsRequest {
            challenge: challenge.challenge,
            evidence: Some(release_secrets_request::Evidence::Tdx(TdxEvidence { quote })),
            hpke_suite: Some(suite.to_wire()),
            hpke_public_key: key.public_key().to_vec(),
            secret_names: vec![SECRET.into()],
            gpus: Vec::new(),
            want_attestation_token: false,
        };
        let resp = rpc.release_secrets(req).await?.into_inner();
        Ok((resp, key, nonce))
    }
}

fn reason(status: &tonic::Status) -> &str {
    status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, expected_reason: &str) {
    let status = result.expect_err("the broker must refuse");
    assert_eq!(status.code(), code, "status {status:?}");
    assert_eq!(reason(&status), expected_reason, "status {status:?}");
    assert!(status.message().starts_with(expected_reason), "message {:?}", status.message());
}

fn guest() -> SimulatedTdx {
    SimulatedTdx::new().mr_td(MRTD)
}

#[tokio::test]
async fn tdx_and_snp_guests_get_their_secrets_from_one_broker() {
    let app = TestApp::start().await;
    let value: Vec<u8> = (0..=255u8).collect();
    app.put(SECRET, &value, &[MRTD, SNP_MEASUREMENT]).await;
    for sim in [guest(), guest().v5(false), guest().v5(true)] {
        let got = app.fetch(Arc::new(sim.clone())).await.unwrap_or_else(|e| panic!("{sim:?}: {e}"));
        assert_eq!(got, vec![(SECRET.to_owned(), value.clone())]);
    }
    let snp = SimulatedSnp::new(Generation::Genoa).measurement(SNP_MEASUREMENT);
    assert_eq!(app.fetch(Arc::new(snp)).await.unwrap(), vec![(SECRET.to_owned(), value.clone())]);

    // A raw exchange opens with the nonce-bound info.
    let (resp, key, nonce) = Exchange::new(guest()).run(&app, |_| {}).await.unwrap();
    let s = &resp.secrets[0];
    let opened =
        key.open(&s.enc, &s.ciphertext, &kbs_proto::secret_info(&nonce), &kbs_proto::secret_aad(&s.name, s.version));
    assert_eq!(opened.unwrap().as_slice(), value.as_slice());
    let log = app.audit_log();
    assert!(log.contains("\"tee\":\"tdx\""), "{log}");
}

#[tokio::test]
async fn every_broken_tdx_link_is_refused_with_its_reason() {
    let app = TestApp::start().await;
    app.put(SECRET, b"k", &[MRTD]).await;
    let pd = Code::PermissionDenied;

    // A flipped bit in the signed body (MRTD), or in the header.
    let r = Exchange::new(guest()).run(&app, |q| q[48 + 136] ^= 1).await;
    assert_refused(r, pd, "signature_invalid");
    let r = Exchange::new(guest()).run(&app, |q| q[30] ^= 0x80).await;
    assert_refused(r, pd, "signature_invalid");
    // A PCK certificate that did not sign the QE report.
    let r = Exchange::new(guest().pck(Pck::Wrong)).run(&app, |_| {}).await;
    assert_refused(r, pd, "signature_invalid");
    // A PCK listed in the PCK CRL.
    let r = Exchange::new(guest().pck(Pck::Revoked)).run(&app, |_| {}).await;
    assert_refused(r, pd, "certificate_revoked");
    // Collateral past nextUpdate is never used to accept a quote.
    let r = Exchange::new(guest().platform(Platform::ExpiredCollateral)).run(&app, |_| {}).await;
    assert_refused(r, Code::Unavailable, "collateral_expired");
    // An OutOfDate TCB when only UpToDate is accepted (the default).
    let r = Exchange::new(guest().platform(Platform::OutOfDate)).run(&app, |_| {}).await;
    assert_refused(r, pd, "tcb_status_not_allowed");
    // Bound to another nonce, or to another key.
    let mut x = Exchange::new(guest());
    x.bind_nonce = Some([9; NONCE_LEN]);
    assert_refused(x.run(&app, |_| {}).await, pd, "report_data_mismatch");
    let mut x = Exchange::new(guest());
    x.bind_key = Some(EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap().public_key().to_vec());
    assert_refused(x.run(&app, |_| {}).await, pd, "report_data_mismatch");
    // A debug TD: genuine evidence, refused by the policy.
    let r = Exchange::new(guest().debug(true)).run(&app, |_| {}).await;
    assert_refused(r, pd, "debug_enabled");
    // A migratable TD is refused by the verifier.
    let r = Exchange::new(guest().td_attributes(attester_client::simulated::TD_ATTR_SEPT_VE_DISABLE | (1 << 29)))
        .run(&app, |_| {})
        .await;
    assert_refused(r, pd, "td_attributes_not_allowed");
    // A measurement not allowed for the secret.
    let r = Exchange::new(SimulatedTdx::new().mr_td([1; 48])).run(&app, |_| {}).await;
    assert_refused(r, pd, "measurement_not_allowed");

    // Malformed quotes are refused before any crypto.
    let ia = Code::InvalidArgument;
    let r = Exchange::new(guest()).run(&app, |q| q.truncate(1000)).await;
    assert_refused(r, ia, "evidence_malformed");
    let r = Exchange::new(guest()).run(&app, |q| q[0] = 3).await;
    assert_refused(r, ia, "unsupported_version");
    let r = Exchange::new(guest()).run(&app, |q| q.resize(70 * 1024, 0)).await;
    assert_refused(r, ia, "evidence_too_large");

    let log = app.audit_log();
    assert!(log.contains("\"reason\":\"certificate_revoked\""), "{log}");
    kbs::audit::verify_lines(log.as_bytes()).unwrap();
}

#[tokio::test]
async fn out_of_date_tcbs_are_released_when_the_operator_accepts_them() {
    // The policy's reference values allow OutOfDate, but the verifier's
    // configuration (the default: UpToDate only) still refuses it.
    let strict = TestApp::start().await;
    strict.put(SECRET, b"k", &[MRTD]).await;
    strict.put_default_refvals(r#"{"tdx_tcb_statuses": ["UpToDate", "OutOfDate"]}"#).await;
    let r = Exchange::new(guest().platform(Platform::OutOfDate)).run(&strict, |_| {}).await;
    assert_refused(r, Code::PermissionDenied, "tcb_status_not_allowed");

    // Both accept it: released.
    let app = TestApp::start_with(Options {
        tdx_extra: "accepted_tcb_statuses = [\"UpToDate\", \"OutOfDate\"]".into(),
        ..Default::default()
    })
    .await;
    app.put(SECRET, b"k", &[MRTD]).await;
    // The verifier lets it through; the default policy still wants UpToDate.
    let r = Exchange::new(guest().platform(Platform::OutOfDate)).run(&app, |_| {}).await;
    assert_refused(r, Code::PermissionDenied, "tcb_status_not_allowed");
    app.put_default_refvals(r#"{"tdx_tcb_statuses": ["UpToDate", "OutOfDate"]}"#).await;
    let got = app.fetch(Arc::new(guest().platform(Platform::OutOfDate))).await.unwrap();
    assert_eq!(got[0].1, b"k");
    // Expired collateral is refused whatever the accepted statuses.
    let r = Exchange::new(guest().platform(Platform::ExpiredCollateral)).run(&app, |_| {}).await;
    assert_refused(r, Code::Unavailable, "collateral_expired");
}

#[tokio::test]
async fn a_tdx_evidence_for_an_snp_challenge_is_refused() {
    let app = TestApp::start().await;
    app.put(SECRET, b"k", &[MRTD]).await;
    let mut rpc = app.guest().await;
    let challenge = rpc
        .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: vec![SECRET.into()] })
        .await
        .unwrap()
        .into_inner();
    let key = EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap();
    let nonce: [u8; NONCE_LEN] = challenge.nonce.as_slice().try_into().unwrap();
    let rd = kbs_proto::report_data(&nonce, SuiteId::X25519_SHA256_AES256GCM, key.public_key());
    let r = rpc
        .release_secrets(ReleaseSecretsRequest {
            challenge: challenge.challenge,
            evidence: Some(release_secrets_request::Evidence::Tdx(TdxEvidence { quote: guest().quote(&rd).unwrap() })),
            hpke_suite: Some(SuiteId::X25519_SHA256_AES256GCM.to_wire()),
            hpke_public_key: key.public_key().to_vec(),
            secret_names: vec![SECRET.into()],
            gpus: Vec::new(),
            want_attestation_token: false,
        })
        .await;
    assert_refused(r, Code::FailedPrecondition, "challenge_mismatch");
}
