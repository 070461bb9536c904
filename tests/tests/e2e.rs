//! End-to-end: a real broker on loopback ports, real gRPC over TLS, real
//! evidence in the SNP binary format signed under the test PKI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use attester_client::client::{ClientConfig, KbsClient};
use attester_client::hpke::EphemeralKey;
use attester_client::simulated::{Chip, Generation, POLICY_DEBUG, SimulatedSnp, Tcb, TestCrl, Vcek, test_crl_dir};
use kbs::config::Config;
use kbs_proto::v1::admin_client::AdminClient;
use kbs_proto::v1::{
    GetChallengeRequest, ListSecretsRequest, PutSecretRequest, ReleaseSecretsRequest, ReleaseSecretsResponse,
    SnpEvidence, Tee, release_secrets_request,
};
use kbs_proto::{NONCE_LEN, SuiteId};
use tonic::{Code, Request};

#[path = "support/app.rs"]
mod app;

use app::{Handshake, Options, TestApp};

const MEASUREMENT: [u8; 48] = [0x5a; 48];
const OTHER_MEASUREMENT: [u8; 48] = [0x77; 48];
const SECRET: &str = "models/llama/key";

impl TestApp {
    async fn put(&self, name: &str, value: &[u8], allowed: &[[u8; 48]]) -> u64 {
        let req = PutSecretRequest {
            name: name.into(),
            value: value.to_vec(),
            allowed_measurements: allowed.iter().map(hex::encode).collect(),
            ..Default::default()
        };
        self.admin().await.put_secret(self.authed(req)).await.unwrap().into_inner().version
    }

    async fn fetch(
        &self,
        sim: SimulatedSnp,
        names: &[&str],
    ) -> Result<Vec<(String, Vec<u8>)>, attester_client::client::Error> {
        let config = ClientConfig::new(self.guest_url.clone(), self.ca.clone());
        let mut client = KbsClient::connect(&config).await?;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let secrets = client.fetch(Arc::new(sim), &names).await?;
        Ok(secrets.into_iter().map(|s| (s.name.clone(), s.value.to_vec())).collect())
    }
}

/// What a raw exchange should look like, with hooks to break one thing.
struct Exchange {
    sim: SimulatedSnp,
    names: Vec<String>,
    suite: SuiteId,
    /// Bind the evidence to this nonce instead of the challenge's.
    bind_nonce: Option<[u8; NONCE_LEN]>,
    /// Bind the evidence to this key instead of the one sent.
    bind_key: Option<Vec<u8>>,
}

impl Exchange {
    fn new(sim: SimulatedSnp) -> Self {
        Self {
            sim,
            names: vec![SECRET.into()],
            suite: SuiteId::X25519_SHA256_AES256GCM,
            bind_nonce: None,
            bind_key: None,
        }
    }

    /// Runs challenge + release; `tamper` edits the request before it is sent.
    async fn run(
        self,
        app: &TestApp,
        tamper: impl FnOnce(&mut ReleaseSecretsRequest),
    ) -> Result<(ReleaseSecretsResponse, EphemeralKey, [u8; NONCE_LEN]), tonic::Status> {
        let mut rpc = app.guest().await;
        let challenge = rpc
            .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: self.names.clone() })
            .await?
            .into_inner();
        let nonce: [u8; NONCE_LEN] = challenge.nonce.as_slice().try_into().unwrap();
        let key = EphemeralKey::generate(self.suite).unwrap();
        let report_data = kbs_proto::report_data(
            &self.bind_nonce.unwrap_or(nonce),
            self.suite,
            self.bind_key.as_deref().unwrap_or(key.public_key()),
        );
        let mut req = ReleaseSecretsRequest {
            challenge: challenge.challenge,
            evidence: Some(release_secrets_request::Evidence::Snp(SnpEvidence {
                report: self.sim.report(&report_data).unwrap(),
                cert_table: self.sim.cert_table().unwrap(),
            })),
            hpke_suite: Some(self.suite.to_wire()),
            hpke_public_key: key.public_key().to_vec(),
            secret_names: self.names,
            gpus: Vec::new(),
            want_attestation_token: false,
        };
        tamper(&mut req);
        let resp = rpc.release_secrets(req).await?.into_inner();
        Ok((resp, key, nonce))
    }
}

fn report_mut(req: &mut ReleaseSecretsRequest) -> &mut Vec<u8> {
    match req.evidence.as_mut().unwrap() {
        release_secrets_request::Evidence::Snp(snp) => &mut snp.report,
        release_secrets_request::Evidence::Tdx(tdx) => &mut tdx.quote,
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

fn guest() -> SimulatedSnp {
    SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT)
}

#[tokio::test]
async fn guests_of_every_generation_get_their_secret() {
    let app = TestApp::start().await;
    let value: Vec<u8> = (0..=255u8).collect();
    app.put(SECRET, &value, &[MEASUREMENT]).await;
    for generation in [Generation::Milan, Generation::Genoa, Generation::Turin] {
        let got = app.fetch(SimulatedSnp::new(generation).measurement(MEASUREMENT), &[SECRET]).await.unwrap();
        assert_eq!(got, vec![(SECRET.to_owned(), value.clone())], "{generation:?}");
    }
}

#[tokio::test]
async fn several_secrets_and_the_p256_suite() {
    let app = TestApp::start().await;
    app.put("m/a/key", b"alpha", &[MEASUREMENT]).await;
    app.put("m/b/key", b"beta", &[MEASUREMENT]).await;
    let mut x = Exchange::new(guest());
    x.names = vec!["m/a/key".into(), "m/b/key".into()];
    x.suite = SuiteId::P256_SHA256_AES256GCM;
    let (resp, key, nonce) = x.run(&app, |_| {}).await.unwrap();
    assert_eq!(resp.secrets.len(), 2);
    for (s, expected) in resp.secrets.iter().zip([b"alpha".as_slice(), b"beta"]) {
        let aad = kbs_proto::secret_aad(&s.name, s.version);
        let opened = key.open(&s.enc, &s.ciphertext, &kbs_proto::secret_info(&nonce), &aad).unwrap();
        assert_eq!(opened.as_slice(), expected);
        // Sealed to this exchange only: another version's aad does not open it.
        let wrong = kbs_proto::secret_aad(&s.name, s.version + 1);
        assert!(key.open(&s.enc, &s.ciphertext, &kbs_proto::secret_info(&nonce), &wrong).is_err());
    }
}

#[tokio::test]
async fn a_challenge_is_redeemed_at_another_replica_with_the_same_key() {
    // Two brokers sharing the challenge key file: one issues, the other redeems.
    let a = TestApp::start().await;
    let b = TestApp::start().await;
    std::fs::copy(a.dir.path().join("challenge.key"), b.dir.path().join("challenge.key")).unwrap();
    // b must reload with a's key: start a third broker from b's directory.
    let config = Config::load(&b.dir.path().join("kbs.toml"), |_| None).unwrap();
    let app = kbs::server::build(&config, kbs::release::system_clock(), true).await.unwrap();
    let challenge = a
        .guest()
        .await
        .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: vec![SECRET.into()] })
        .await
        .unwrap()
        .into_inner();
    let opened = app.broker.challenge(1, &[SECRET.to_owned()]).unwrap();
    assert_ne!(opened.nonce.to_vec(), challenge.nonce);
    // The third broker (b's store, a's key) accepts a's challenge: the refusal
    // is about the secret, not the challenge.
    let key = EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap();
    let nonce: [u8; NONCE_LEN] = challenge.nonce.as_slice().try_into().unwrap();
    let sim = guest();
    let rd = kbs_proto::report_data(&nonce, SuiteId::X25519_SHA256_AES256GCM, key.public_key());
    let result = app
        .broker
        .release(kbs::release::ReleaseRequest {
            challenge: challenge.challenge,
            evidence: kbs::release::EvidenceInput::Snp {
                report: sim.report(&rd).unwrap(),
                certs: kbs::release::SnpCerts::Table(sim.cert_table().unwrap()),
            },
            suite: SuiteId::X25519_SHA256_AES256GCM,
            public_key: key.public_key().to_vec(),
            names: vec![SECRET.into()],
            gpus: Vec::new(),
            caller: "test".into(),
        })
        .await;
    assert_eq!(result.unwrap_err().reason().as_str(), "secret_not_found");
}

#[tokio::test]
async fn every_broken_link_is_refused_with_its_reason() {
    let app = TestApp::start().await;
    app.put(SECRET, b"k", &[MEASUREMENT]).await;
    let pd = Code::PermissionDenied;

    // Signed region altered after signing.
    let r = Exchange::new(guest()).run(&app, |req| report_mut(req)[0x90] ^= 1).await;
    assert_refused(r, pd, "signature_invalid");
    // Signed by another chip's key, presented with this chip's VCEK.
    let r = Exchange::new(guest().sign_with(Vcek::GenoaOther)).run(&app, |_| {}).await;
    assert_refused(r, pd, "signature_invalid");
    // A genuine VCEK, but of another chip.
    let r = Exchange::new(guest().vcek_cert(Vcek::GenoaOther).sign_with(Vcek::GenoaOther)).run(&app, |_| {}).await;
    assert_refused(r, pd, "chip_id_mismatch");
    // reported_tcb differs from what the VCEK certifies.
    let tcb = Tcb { bootloader: 9, ..Chip::Genoa.tcb() };
    let r = Exchange::new(guest().reported_tcb(tcb)).run(&app, |_| {}).await;
    assert_refused(r, pd, "tcb_mismatch");
    // A whole chain under a root the broker does not pin.
    let r = Exchange::new(guest().foreign()).run(&app, |_| {}).await;
    assert_refused(r, pd, "untrusted_root");
    // A VCEK outside its validity period.
    let r = Exchange::new(guest().vcek_cert(Vcek::GenoaExpired)).run(&app, |_| {}).await;
    assert_refused(r, pd, "certificate_expired");
    // Evidence bound to another nonce, or to another key.
    let mut x = Exchange::new(guest());
    x.bind_nonce = Some([9; NONCE_LEN]);
    assert_refused(x.run(&app, |_| {}).await, pd, "report_data_mismatch");
    let mut x = Exchange::new(guest());
    x.bind_key = Some(EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap().public_key().to_vec());
    assert_refused(x.run(&app, |_| {}).await, pd, "report_data_mismatch");
    // The evidence is fine, but the key sent is not the key bound.
    let other = EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap();
    let r = Exchange::new(guest()).run(&app, |req| req.hpke_public_key = other.public_key().to_vec()).await;
    assert_refused(r, pd, "report_data_mismatch");

    // Malformed evidence is refused before any crypto.
    let ia = Code::InvalidArgument;
    let r = Exchange::new(guest()).run(&app, |req| report_mut(req).truncate(1000)).await;
    assert_refused(r, ia, "evidence_malformed");
    let r = Exchange::new(guest()).run(&app, |req| report_mut(req).extend_from_slice(&[0; 100])).await;
    assert_refused(r, ia, "evidence_too_large");
    let r = Exchange::new(guest().report_version(9)).run(&app, |_| {}).await;
    assert_refused(r, ia, "unsupported_version");
    let r = Exchange::new(guest()).run(&app, |req| req.evidence = None).await;
    assert_refused(r, ia, "invalid_request");
    let r = Exchange::new(guest())
        .run(&app, |req| req.hpke_suite = Some(SuiteId { kem: 0x12, kdf: 1, aead: 2 }.to_wire()))
        .await;
    assert_refused(r, ia, "unsupported_hpke_suite");

    // Policy: debug guests, VMPL > 0, measurements not allowed.
    let r = Exchange::new(guest().policy(0x3_0000 | POLICY_DEBUG)).run(&app, |_| {}).await;
    assert_refused(r, pd, "debug_enabled");
    let r = Exchange::new(guest().vmpl(1)).run(&app, |_| {}).await;
    assert_refused(r, pd, "vmpl_not_allowed");
    let r = Exchange::new(guest().measurement(OTHER_MEASUREMENT)).run(&app, |_| {}).await;
    assert_refused(r, pd, "measurement_not_allowed");

    // The audit log has one record per decision, chained, without the value.
    let log = app.audit_log();
    assert!(log.lines().count() >= 17, "{log}");
    assert!(log.contains("\"reason\":\"chip_id_mismatch\""));
    assert!(log.contains("measurement_not_allowed: 7777"));
    kbs::audit::verify_lines(log.as_bytes()).unwrap();
}

/// A dev broker whose SNP section names `crl_dir` (revocation is then
/// required by default), holding the secret for [`guest`].
async fn broker_with_crls(crl_dir: &std::path::Path) -> TestApp {
    let extra_config = format!("[snp]\ncrl_dir = \"{}\"\n", crl_dir.display());
    let app = TestApp::start_with(Options { extra_config, ..Default::default() }).await;
    app.put(SECRET, b"model key", &[MEASUREMENT]).await;
    app
}

#[tokio::test]
async fn revoked_asks_and_missing_crls_are_refused() {
    // The test ARK's CRLs, revoking nothing: released.
    let app = broker_with_crls(&test_crl_dir()).await;
    let got = app.fetch(guest(), &[SECRET]).await.unwrap();
    assert_eq!(got, vec![(SECRET.to_owned(), b"model key".to_vec())]);

    // No CRL at all, and revocation required: refused, retryable.
    let empty = tempfile::tempdir().unwrap();
    let app = broker_with_crls(empty.path()).await;
    assert_refused(Exchange::new(guest()).run(&app, |_| {}).await, Code::Unavailable, "collateral_unavailable");
    assert!(app.audit_log().contains("no CRL for Genoa Ask"), "{}", app.audit_log());

    // The test ASK revoked: refused as revoked, for every generation (the
    // test ARK signs them all), and recorded as such.
    let revoking = tempfile::tempdir().unwrap();
    for product in ["Milan", "Genoa", "Turin"] {
        let path = revoking.path().join(format!("vcek/v1/{product}/crl"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, TestCrl::RevokesAsk.der()).unwrap();
    }
    let app = broker_with_crls(revoking.path()).await;
    for generation in [Generation::Milan, Generation::Genoa, Generation::Turin] {
        let sim = SimulatedSnp::new(generation).measurement(MEASUREMENT);
        assert_refused(Exchange::new(sim).run(&app, |_| {}).await, Code::PermissionDenied, "certificate_revoked");
    }
    let audit = app.audit_log();
    let releases: Vec<&str> = audit.lines().filter(|l| l.contains("\"action\":\"release\"")).collect();
    assert_eq!(releases.len(), 3, "{audit}");
    assert!(
        releases
            .iter()
            .all(|l| l.contains("\"decision\":\"deny\"") && l.contains("\"reason\":\"certificate_revoked\"")),
        "{audit}"
    );
}

#[tokio::test]
async fn challenges_expire_and_cannot_be_forged() {
    let app = TestApp::start().await;
    app.put(SECRET, b"k", &[MEASUREMENT]).await;
    let fp = Code::FailedPrecondition;
    let r = Exchange::new(guest()).run(&app, |req| req.challenge[20] ^= 0x40).await;
    assert_refused(r, fp, "challenge_invalid");
    let other = TestApp::start().await;
    let foreign = other
        .guest()
        .await
        .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: vec![SECRET.into()] })
        .await
        .unwrap()
        .into_inner();
    let r = Exchange::new(guest()).run(&app, |req| req.challenge = foreign.challenge.clone()).await;
    assert_refused(r, fp, "challenge_invalid");
    let r = Exchange::new(guest()).run(&app, |req| req.secret_names = vec!["m/other/key".into()]).await;
    assert_refused(r, fp, "challenge_mismatch");

    // Expiry: the clock moves past the 60 s lifetime between challenge and release.
    let mut rpc = app.guest().await;
    let challenge = rpc
        .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: vec![SECRET.into()] })
        .await
        .unwrap()
        .into_inner();
    app.advance(61);
    let key = EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap();
    let nonce: [u8; NONCE_LEN] = challenge.nonce.as_slice().try_into().unwrap();
    let rd = kbs_proto::report_data(&nonce, SuiteId::X25519_SHA256_AES256GCM, key.public_key());
    let sim = guest();
    let r = rpc
        .release_secrets(ReleaseSecretsRequest {
            challenge: challenge.challenge,
            evidence: Some(release_secrets_request::Evidence::Snp(SnpEvidence {
                report: sim.report(&rd).unwrap(),
                cert_table: sim.cert_table().unwrap(),
            })),
            hpke_suite: Some(SuiteId::X25519_SHA256_AES256GCM.to_wire()),
            hpke_public_key: key.public_key().to_vec(),
            secret_names: vec![SECRET.into()],
            gpus: Vec::new(),
            want_attestation_token: false,
        })
        .await;
    assert_refused(r, fp, "challenge_expired");
}

#[tokio::test]
async fn unknown_secrets_are_not_found_only_after_attestation() {
    let app = TestApp::start().await;
    let mut x = Exchange::new(guest());
    x.names = vec!["models/none/key".into()];
    assert_refused(x.run(&app, |_| {}).await, Code::NotFound, "secret_not_found");
    // With bad evidence the same request says nothing about the secret.
    let mut x = Exchange::new(guest().sign_with(Vcek::GenoaOther));
    x.names = vec!["models/none/key".into()];
    assert_refused(x.run(&app, |_| {}).await, Code::PermissionDenied, "signature_invalid");
}

#[tokio::test]
async fn admin_needs_a_token_and_is_not_on_the_guest_listener() {
    let app = TestApp::start().await;
    let mut admin = app.admin().await;
    let r = admin.list_secrets(ListSecretsRequest::default()).await;
    assert_refused(r, Code::Unauthenticated, "unauthenticated");
    let mut bad = Request::new(ListSecretsRequest::default());
    bad.metadata_mut().insert("authorization", "Bearer not-the-token".parse().unwrap());
    assert_refused(admin.list_secrets(bad).await, Code::Unauthenticated, "unauthenticated");
    assert!(admin.list_secrets(app.authed(ListSecretsRequest::default())).await.is_ok());
    // The guest listener serves no Admin calls.
    let mut on_guest = AdminClient::new(app.channel(&app.guest_url).await);
    let status = on_guest.list_secrets(app.authed(ListSecretsRequest::default())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // Values are write-only: oversize and invalid names are refused.
    let big = PutSecretRequest { name: "m/k/big".into(), value: vec![0; (1 << 20) + 1], ..Default::default() };
    assert_refused(admin.put_secret(app.authed(big)).await, Code::InvalidArgument, "invalid_request");
    let bad_name = PutSecretRequest { name: "../etc/passwd".into(), value: vec![1], ..Default::default() };
    assert_refused(admin.put_secret(app.authed(bad_name)).await, Code::InvalidArgument, "invalid_request");
}

#[tokio::test]
async fn health_reports_serving() {
    let app = TestApp::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel(&app.guest_url).await);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest { service: "kbs.v1.KeyBroker".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_broker_without_the_dev_flag_refuses_the_simulated_tee_config() {
    let app = TestApp::start().await;
    let config = Config::load(&app.dir.path().join("kbs.toml"), |_| None).unwrap();
    let err = kbs::server::build(&config, kbs::release::system_clock(), false).await.unwrap_err();
    assert!(err.to_string().contains("--insecure-dev"), "{err}");
}

#[tokio::test]
async fn secrets_survive_a_broker_restart() {
    let app = TestApp::start().await;
    app.put(SECRET, b"persisted", &[MEASUREMENT]).await;
    let config = Config::load(&app.dir.path().join("kbs.toml"), |_| None).unwrap();
    // A second broker over the same directory reads the secret from disk.
    let again = kbs::server::build(&config, kbs::release::system_clock(), true).await.unwrap();
    let record = again.broker.store().get(SECRET).await.unwrap();
    assert_eq!(record.value.expose(), b"persisted");
}

/// A client that connects and never completes a TLS handshake, on the guest
/// or the admin listener, is disconnected after the handshake timeout
/// instead of holding its connection for ever; guests that do handshake
/// are unaffected.
#[tokio::test]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::start().await;
    let port = |url: &str| url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let silent = |port: u16| async move {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        // EOF or a reset, within the timeout plus slack; never data.
        let outcome = tokio::time::timeout(kbs::server::HANDSHAKE_TIMEOUT * 2, tcp.read(&mut buf)).await;
        match outcome {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("the broker sent {n} bytes to a client that said nothing"),
            Err(_) => panic!("a silent connection was still open after {:?}", started.elapsed()),
        }
        started.elapsed()
    };
    // A client that stops half-way through its ClientHello is no better.
    let partial = |port: u16| async move {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
        let mut buf = [0u8; 64];
        let outcome = tokio::time::timeout(kbs::server::HANDSHAKE_TIMEOUT * 2, tcp.read(&mut buf)).await;
        assert!(matches!(outcome, Ok(Ok(0)) | Ok(Err(_))), "a half-open handshake stayed open: {outcome:?}");
    };
    let (guest_port, admin_port) = (port(&app.guest_url), port(&app.admin_url));
    let (guest_wait, admin_wait, (), ()) =
        tokio::join!(silent(guest_port), silent(admin_port), partial(guest_port), partial(admin_port));
    // Closed by the timeout, not at once (which would refuse real clients too).
    assert!(guest_wait >= kbs::server::HANDSHAKE_TIMEOUT / 2, "closed after {guest_wait:?}");
    assert!(admin_wait >= kbs::server::HANDSHAKE_TIMEOUT / 2, "closed after {admin_wait:?}");

    // Afterwards, guests are served as before.
    app.put(SECRET, b"k", &[MEASUREMENT]).await;
    let got = app.fetch(guest(), &[SECRET]).await.unwrap();
    assert_eq!(got, vec![(SECRET.to_owned(), b"k".to_vec())]);
}

/// One peer address holds at most `max_connections_per_peer` connections on
/// each gRPC listener: the next is closed at once, not after the handshake
/// timeout.
#[tokio::test]
async fn one_peer_cannot_hold_every_connection_of_a_grpc_listener() {
    use tokio::io::AsyncReadExt;
    let app =
        TestApp::start_with(Options { server_extra: "max_connections_per_peer = 2".into(), ..Default::default() })
            .await;
    let port = |url: &str| url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    for listener in [port(&app.guest_url), port(&app.admin_url)] {
        let connect = || tokio::net::TcpStream::connect(("127.0.0.1", listener));
        let held = [connect().await.unwrap(), connect().await.unwrap()];
        let mut third = connect().await.unwrap();
        let mut buf = [0u8; 16];
        let outcome = tokio::time::timeout(kbs::server::HANDSHAKE_TIMEOUT / 4, third.read(&mut buf)).await;
        assert!(matches!(outcome, Ok(Ok(0)) | Ok(Err(_))), "a third connection from one peer was kept: {outcome:?}");
        drop(held);
    }
    // The caps are per listener: with the admin listener full, a guest is
    // served. (That slots come back when connections end is
    // `kbs::connections`' unit test.)
    app.put(SECRET, b"k", &[MEASUREMENT]).await;
    let admin_port = port(&app.admin_url);
    let _held = [
        tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap(),
        tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap(),
    ];
    let got = app.fetch(guest(), &[SECRET]).await.unwrap();
    assert_eq!(got, vec![(SECRET.to_owned(), b"k".to_vec())]);
}

#[tokio::test]
async fn the_metrics_listener_is_bounded_like_the_others() {
    use tokio::io::AsyncReadExt;
    let server_extra = "max_connections_per_peer = 2\nidle_timeout_seconds = 1".to_owned();
    let app = TestApp::start_with(Options { metrics: true, server_extra, ..Default::default() }).await;
    let addr = app.metrics_url.trim_start_matches("http://").trim_end_matches("/metrics").to_owned();
    let connect = || tokio::net::TcpStream::connect(addr.clone());
    let mut held = [connect().await.unwrap(), connect().await.unwrap()];
    // A third connection from the same peer is closed at once.
    let mut third = connect().await.unwrap();
    let mut buf = [0u8; 16];
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(matches!(outcome, Ok(Ok(0)) | Ok(Err(_))), "a third connection from one peer was kept: {outcome:?}");
    // Silent connections are closed after the idle bound (1 s), which
    // gives their slots back.
    for held in &mut held {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), held.read(&mut buf)).await;
        assert!(matches!(outcome, Ok(Ok(0)) | Ok(Err(_))), "a silent connection was kept: {outcome:?}");
    }
    drop(held);
    let scrape = app.scrape().await;
    assert!(sample(&scrape, r#"kbs_open_connections{listener="metrics"}"#) >= 1.0);
}

#[tokio::test]
async fn the_metrics_listener_can_serve_tls_with_the_server_certificate() {
    let app = TestApp::start_with(Options { metrics: true, metrics_tls: true, ..Default::default() }).await;
    assert!(app.metrics_url.starts_with("https://"));
    let scrape = app.scrape().await;
    assert_eq!(sample(&scrape, "kbs_audit_write_failures_total"), 0.0);
    // No plain HTTP on it.
    let plain = app.metrics_url.replace("https://localhost", "http://127.0.0.1");
    assert!(reqwest::get(&plain).await.is_err(), "plain HTTP was answered");
}

/// The value of the series written exactly as `series` in a scrape.
fn sample(scrape: &str, series: &str) -> f64 {
    let line = scrape.lines().find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series));
    line.and_then(|l| l.rsplit_once(' ')).unwrap_or_else(|| panic!("no {series} in\n{scrape}")).1.parse().unwrap()
}

#[tokio::test]
async fn metrics_count_releases_and_refusals_and_name_no_secret() {
    let app = TestApp::start_with(Options { metrics: true, ..Default::default() }).await;
    app.put(SECRET, b"model key", &[MEASUREMENT]).await;
    let before = app.scrape().await;
    let allow = r#"kbs_releases_total{tee="snp",decision="allow",reason="ok"}"#;
    let deny = r#"kbs_releases_total{tee="snp",decision="deny",reason="measurement_not_allowed"}"#;
    assert_eq!((sample(&before, allow), sample(&before, deny)), (0.0, 0.0));

    // One release, one refusal.
    let got = app.fetch(guest(), &[SECRET]).await.unwrap();
    assert_eq!(got, vec![(SECRET.to_owned(), b"model key".to_vec())]);
    let r = Exchange::new(guest().measurement(OTHER_MEASUREMENT)).run(&app, |_| {}).await;
    assert_refused(r, Code::PermissionDenied, "measurement_not_allowed");

    let after = app.scrape().await;
    assert_eq!(sample(&after, allow), 1.0);
    assert_eq!(sample(&after, deny), 1.0);
    let counted: f64 = after
        .lines()
        .filter(|l| l.starts_with("kbs_releases_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(counted, 2.0, "no other release was counted");
    assert_eq!(sample(&after, r#"kbs_release_duration_seconds_count{tee="snp"}"#), 2.0);
    assert_eq!(sample(&after, r#"kbs_release_duration_seconds_bucket{tee="snp",le="+Inf"}"#), 2.0);
    assert!(sample(&after, r#"kbs_release_duration_seconds_sum{tee="snp"}"#) > 0.0);
    assert_eq!(sample(&after, r#"kbs_release_duration_seconds_count{tee="tdx"}"#), 0.0);
    // Both got through verification and read the secret; only the
    // allowed one was sealed.
    for (phase, count) in [("verify", 2.0), ("store", 2.0), ("policy", 2.0), ("seal", 1.0)] {
        let series = format!("kbs_release_phase_duration_seconds_count{{phase=\"{phase}\"}}");
        assert_eq!(sample(&after, &series), count, "{phase}");
    }
    assert_eq!(sample(&after, r#"kbs_challenges_issued_total{tee="snp"}"#), 2.0);
    assert_eq!(sample(&after, "kbs_rate_limited_total"), 0.0);
    assert_eq!(sample(&after, "kbs_audit_write_failures_total"), 0.0);
    // This scrape's own connection is open on the metrics listener.
    assert!(sample(&after, r#"kbs_open_connections{listener="metrics"}"#) >= 1.0);
    let version = kbs_proto::VERSION.split(" (").next().unwrap();
    assert!(after.contains(&format!("kbs_build_info{{version=\"{version}\",")), "{after}");

    // Nothing a caller chose appears: no secret name, not even in part.
    for part in [SECRET, "models/", "llama"] {
        assert!(!after.contains(part), "{part} in the scrape");
    }
    // A request refused before the flow starts is counted as well.
    let r = Exchange::new(guest()).run(&app, |req| req.evidence = None).await;
    assert_refused(r, Code::InvalidArgument, "invalid_request");
    let last = app.scrape().await;
    assert_eq!(sample(&last, r#"kbs_releases_total{tee="unknown",decision="deny",reason="invalid_request"}"#), 1.0);
    assert_eq!(sample(&last, allow), 1.0);
    // The same counts under trustee's names: the policy's refusal is a
    // violation, the malformed request is not.
    assert_eq!(sample(&last, "kbs_policy_approvals_total"), 1.0);
    assert_eq!(sample(&last, "kbs_policy_violations_total"), 1.0);
    assert_eq!(sample(&last, "kbs_policy_evaluations_total"), 2.0);

    // Only /metrics is served.
    let other = app.metrics_url.replace("/metrics", "/debug");
    assert_eq!(reqwest::get(&other).await.unwrap().status(), reqwest::StatusCode::NOT_FOUND);
}

/// A peer over its rate has new connections closed before the TLS
/// handshake; one that keeps calling far past its rate is cut off for
/// `CUT_OFF`: its open connection is no longer read (its call waits), and
/// its new ones are held unread too, even once its bucket has tokens
/// again. Once the cut-off ends, the waiting connection is read again and
/// answers, and new connections are served.
#[tokio::test]
async fn a_peer_flooding_past_its_rate_is_cut_off_at_the_connection() {
    use std::time::{Duration, Instant};
    let app = TestApp::start_with(Options { rate_limit: Some((2, 1000)), ..Default::default() }).await;
    let local: std::net::IpAddr = [127, 0, 0, 1].into();
    let ask = || GetChallengeRequest { tee: Tee::Snp as i32, secret_names: vec!["keys/x".into()] };
    assert_eq!(app.handshake(&app.guest_url, local).await, Handshake::Completed, "a peer within its rate connects");
    let mut guest = app.guest().await;
    // Its two calls a second, then a new connection: over its rate (not
    // flooding), closed before the handshake.
    guest.get_challenge(ask()).await.unwrap();
    guest.get_challenge(ask()).await.unwrap();
    assert_eq!(app.handshake(&app.guest_url, local).await, Handshake::Closed, "a peer over its rate got a handshake");
    // Calls as fast as they come back, on the open connection: refused
    // `rate_limited`, then not answered at all.
    let (mut limited, mut stalled) = (0, None);
    for _ in 0..5000 {
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(2), guest.get_challenge(ask())).await {
            Err(_) => {
                stalled = Some(started);
                break;
            }
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.metadata().get("kbs-reason").is_some_and(|r| r == "rate_limited") => limited += 1,
            Ok(Err(s)) => panic!("the flooding peer's call failed instead of waiting: {s:?}"),
        }
    }
    // It was cut off before its last call was sent.
    let cut_before = stalled.expect("the flooding peer's connection was still read");
    assert!(limited >= 2, "stalled after {limited} refusals");
    // Cut off: a new connection is held unread, not closed (a closed one
    // would be reopened at once), though its bucket has had tokens again
    // for a second and more.
    assert_eq!(app.handshake(&app.guest_url, local).await, Handshake::Held, "let back before its cut-off ended");
    // Once the cut-off has ended, the connection it left open is read again
    // and answers, and new ones are served, once its bucket (empty when it
    // is let back) has refilled.
    let refilled = cut_before + kbs::rate::CUT_OFF + Duration::from_millis(1500);
    tokio::time::sleep(refilled.saturating_duration_since(Instant::now())).await;
    let answered = tokio::time::timeout(Duration::from_secs(5), guest.get_challenge(ask())).await;
    answered.expect("the connection was not read after the cut-off").unwrap();
    assert_eq!(app.handshake(&app.guest_url, local).await, Handshake::Completed);
    app.guest().await.get_challenge(ask()).await.unwrap();
}
