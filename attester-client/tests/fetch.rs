//! The client library and the `kbs-attester` binary against an in-process
//! fake broker, over real gRPC and TLS on a loopback port.
//!
//! The fake broker is deliberately small: it issues a nonce, checks the
//! report_data binding and the report signature under the VCEK from the
//! certificate table, and seals the requested secrets exactly as the
//! protocol says. The real broker is exercised by the workspace's
//! end-to-end tests.

// Test code: a failed unwrap is a failed test. The clippy.toml allowances
// cover #[test] functions only, not the fake broker's helpers.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use attester_client::evidence::EvidenceSource;
use attester_client::simulated::{self, SimulatedSnp, VCEK_GUID};
use attester_client::{ClientConfig, Error, KbsClient};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::{DhP256HkdfSha256, X25519HkdfSha256};
use hpke::{Deserializable, Kem, OpModeS, Serializable};
use kbs_proto::SuiteId;
use kbs_proto::v1::key_broker_server::{KeyBroker, KeyBrokerServer};
use kbs_proto::v1::{
    Challenge, GetChallengeRequest, ReleaseSecretsRequest, ReleaseSecretsResponse, SealedSecret,
    release_secrets_request,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::sync::oneshot;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

// The first is 32 bytes, so it also serves as a model key.
const SECRETS: [(&str, u64, &[u8]); 2] =
    [("models/llama/key", 3, b"llama-key-32-bytes-long-for-aes!"), ("demo/cfg/token", 1, b"token")];

/// How the fake broker answers `ReleaseSecrets`.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Release,
    Refuse(tonic::Code, &'static str),
    /// Leaves out the last requested secret.
    DropOne,
}

#[derive(Debug)]
struct FakeBroker {
    mode: Mode,
    suites: Vec<SuiteId>,
}

fn refuse(code: tonic::Code, reason: &'static str) -> Status {
    let mut status = Status::new(code, format!("{reason}: refused"));
    status.metadata_mut().insert("kbs-reason", reason.parse().unwrap());
    status
}

/// The fake's "sealed challenge" is the nonce itself; a real broker seals it.
fn nonce() -> [u8; 32] {
    [0x6Bu8; 32]
}

fn seal(suite: SuiteId, pk: &[u8], info: &[u8], aad: &[u8], value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Status> {
    let bad_key = |_| Status::invalid_argument("bad key");
    if suite == SuiteId::X25519_SHA256_AES256GCM {
        let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(pk).map_err(bad_key)?;
        let (enc, ct) =
            hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(&OpModeS::Base, &pk, info, value, aad)
                .unwrap();
        Ok((enc.to_bytes().to_vec(), ct))
    } else {
        let pk = <DhP256HkdfSha256 as Kem>::PublicKey::from_bytes(pk).map_err(bad_key)?;
        let (enc, ct) =
            hpke::single_shot_seal::<AesGcm256, HkdfSha256, DhP256HkdfSha256>(&OpModeS::Base, &pk, info, value, aad)
                .unwrap();
        Ok((enc.to_bytes().to_vec(), ct))
    }
}

#[tonic::async_trait]
impl KeyBroker for FakeBroker {
    async fn get_challenge(&self, request: Request<GetChallengeRequest>) -> Result<Response<Challenge>, Status> {
        assert_eq!(request.get_ref().tee, kbs_proto::v1::Tee::Snp as i32);
        Ok(Response::new(Challenge {
            nonce: nonce().to_vec(),
            challenge: nonce().to_vec(),
            expires_at: 0,
            hpke_suites: self.suites.iter().map(|s| s.to_wire()).collect(),
        }))
    }

    async fn release_secrets(
        &self,
        request: Request<ReleaseSecretsRequest>,
    ) -> Result<Response<ReleaseSecretsResponse>, Status> {
        if let Mode::Refuse(code, reason) = self.mode {
            return Err(refuse(code, reason));
        }
        let req = request.into_inner();
        let nonce: [u8; 32] = req
            .challenge
            .as_slice()
            .try_into()
            .map_err(|_| refuse(tonic::Code::FailedPrecondition, "challenge_invalid"))?;
        let suite = req.hpke_suite.as_ref().and_then(SuiteId::from_wire).unwrap();
        assert!(self.suites.contains(&suite), "client picked a suite that was not offered");
        let Some(release_secrets_request::Evidence::Snp(snp)) = req.evidence else {
            return Err(refuse(tonic::Code::InvalidArgument, "invalid_request"));
        };
        let report = snp.report;
        assert_eq!(report.len(), 1184);

        // The signature, under the VCEK the certificate table carries.
        let table = simulated::decode_cert_table(&snp.cert_table).unwrap();
        let vcek = table.iter().find(|e| e.guid == VCEK_GUID).unwrap();
        let (_, cert) = X509Certificate::from_der(&vcek.data).unwrap();
        let mut sig = Vec::new();
        sig.extend(report[0x2A0..0x2A0 + 48].iter().rev());
        sig.extend(report[0x2E8..0x2E8 + 48].iter().rev());
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, cert.public_key().subject_public_key.data.as_ref())
            .verify(&report[..0x2A0], &sig)
            .map_err(|_| refuse(tonic::Code::PermissionDenied, "signature_invalid"))?;

        // The binding of nonce, suite and key.
        let expected = kbs_proto::report_data(&nonce, suite, &req.hpke_public_key);
        if report[0x50..0x90] != expected {
            return Err(refuse(tonic::Code::PermissionDenied, "report_data_mismatch"));
        }

        let info = kbs_proto::secret_info(&nonce);
        let mut secrets = Vec::new();
        let keep = match self.mode {
            Mode::DropOne => req.secret_names.len().saturating_sub(1),
            _ => req.secret_names.len(),
        };
        for name in req.secret_names.iter().take(keep) {
            let Some((_, version, value)) = SECRETS.iter().find(|(n, _, _)| n == name) else {
                return Err(refuse(tonic::Code::NotFound, "secret_not_found"));
            };
            let aad = kbs_proto::secret_aad(name, *version);
            let (enc, ciphertext) = seal(suite, &req.hpke_public_key, &info, &aad, value)?;
            secrets.push(SealedSecret { name: name.clone(), version: *version, enc, ciphertext });
        }
        Ok(Response::new(ReleaseSecretsResponse {
            attestation_id: "fake-attestation".into(),
            secrets,
            attestation_token: String::new(),
        }))
    }
}

/// A CA and a server certificate for `kbs.test` and `localhost`.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params = CertificateParams::new(vec!["kbs.test".to_owned(), "localhost".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    Pki { ca_pem: ca_cert.pem(), server_cert_pem: server_cert.pem(), server_key_pem: server_key.serialize_pem() }
}

/// A running fake broker; stops when dropped.
struct FakeServer {
    addr: SocketAddr,
    ca_pem: String,
    _stop: oneshot::Sender<()>,
}

async fn start(mode: Mode, suites: Vec<SuiteId>) -> FakeServer {
    let pki = pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&pki.server_cert_pem, &pki.server_key_pem));
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(KeyBrokerServer::new(FakeBroker { mode, suites }))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    tokio::spawn(server);
    FakeServer { addr, ca_pem: pki.ca_pem, _stop: stop }
}

fn names() -> Vec<String> {
    SECRETS.iter().map(|(n, _, _)| (*n).to_owned()).collect()
}

fn config(server: &FakeServer) -> ClientConfig {
    ClientConfig::new(format!("https://127.0.0.1:{}", server.addr.port()), server.ca_pem.as_bytes())
        .with_domain_name("kbs.test")
}

fn simulated() -> Arc<dyn EvidenceSource> {
    Arc::new(SimulatedSnp::default())
}

#[tokio::test]
async fn fetches_and_opens_with_either_suite() {
    for suites in
        [vec![SuiteId::X25519_SHA256_AES256GCM, SuiteId::P256_SHA256_AES256GCM], vec![SuiteId::P256_SHA256_AES256GCM]]
    {
        let server = start(Mode::Release, suites).await;
        let mut client = KbsClient::connect(&config(&server)).await.unwrap();
        let release = client.fetch_release(simulated(), &names()).await.unwrap();
        assert_eq!(release.attestation_id, "fake-attestation");
        let got: Vec<_> = release.secrets.iter().map(|s| (s.name.as_str(), s.version, s.value.to_vec())).collect();
        let want: Vec<_> = SECRETS.iter().map(|(n, v, val)| (*n, *v, val.to_vec())).collect();
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn uses_the_url_host_without_a_domain_override() {
    let server = start(Mode::Release, vec![SuiteId::X25519_SHA256_AES256GCM]).await;
    let config = ClientConfig::new(format!("https://localhost:{}", server.addr.port()), server.ca_pem.as_bytes());
    let secrets = attester_client::client::fetch_secrets(&config, simulated(), &names()).await.unwrap();
    assert_eq!(secrets.len(), 2);
}

#[tokio::test]
async fn refuses_a_broker_outside_the_pinned_ca() {
    let server = start(Mode::Release, vec![SuiteId::X25519_SHA256_AES256GCM]).await;
    let other_ca = pki().ca_pem;
    let mut wrong_ca = config(&server);
    wrong_ca.ca_pem = other_ca.into_bytes();
    let err = attester_client::client::fetch_secrets(&wrong_ca, simulated(), &names()).await.unwrap_err();
    assert!(matches!(err, Error::Connect(_) | Error::Rpc { .. }), "{err:?}");

    // The right CA but the wrong name.
    let wrong_name = config(&server).with_domain_name("other.test");
    let err = attester_client::client::fetch_secrets(&wrong_name, simulated(), &names()).await.unwrap_err();
    assert!(matches!(err, Error::Connect(_) | Error::Rpc { .. }), "{err:?}");
}

#[tokio::test]
async fn a_refusal_keeps_code_and_reason() {
    let server =
        start(Mode::Refuse(tonic::Code::PermissionDenied, "debug_enabled"), vec![SuiteId::X25519_SHA256_AES256GCM])
            .await;
    let err = attester_client::client::fetch_secrets(&config(&server), simulated(), &names()).await.unwrap_err();
    match err {
        Error::Refused { code, reason, message } => {
            assert_eq!(code, tonic::Code::PermissionDenied);
            assert_eq!(reason, "debug_enabled");
            assert!(message.starts_with("debug_enabled"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn evidence_for_another_key_is_refused_by_the_binding() {
    let server = start(Mode::Release, vec![SuiteId::X25519_SHA256_AES256GCM]).await;
    let forged: Arc<dyn EvidenceSource> = Arc::new(SimulatedSnp::default().report_data([0u8; 64]));
    let err = attester_client::client::fetch_secrets(&config(&server), forged, &names()).await.unwrap_err();
    assert_eq!(err.reason(), Some("report_data_mismatch"));
}

#[tokio::test]
async fn a_short_answer_is_a_protocol_error() {
    let server = start(Mode::DropOne, vec![SuiteId::X25519_SHA256_AES256GCM]).await;
    let err = attester_client::client::fetch_secrets(&config(&server), simulated(), &names()).await.unwrap_err();
    assert!(matches!(err, Error::Protocol(ref m) if m.contains("missing")), "{err:?}");
}

#[tokio::test]
async fn no_common_suite() {
    let server = start(Mode::Release, vec![]).await;
    let err = attester_client::client::fetch_secrets(&config(&server), simulated(), &names()).await.unwrap_err();
    assert!(matches!(err, Error::NoCommonSuite), "{err:?}");
}

/// Runs `kbs-attester fetch` against `server`, writing to `out`.
async fn run_cli(server: &FakeServer, ca_dir: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let ca = ca_dir.join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kbs-attester"));
    cmd.args(["fetch", "--kbs", &format!("https://127.0.0.1:{}", server.addr.port())])
        .arg("--ca")
        .arg(&ca)
        .args(["--domain", "kbs.test", "--evidence", "simulated"])
        .args(SECRETS.iter().flat_map(|(n, _, _)| ["--secret", n]))
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("KBS_URL")
        .env_remove("KBS_CA")
        .env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

/// Runs `kbs-attester model decrypt` against `server`.
async fn run_model_cli(server: &FakeServer, dir: &Path, input: &Path, out: &Path) -> std::process::Output {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kbs-attester"));
    cmd.args(["model", "decrypt", "--kbs", &format!("https://127.0.0.1:{}", server.addr.port())])
        .arg("--ca")
        .arg(&ca)
        .args(["--domain", "kbs.test", "--evidence", "simulated", "--allow-persistent-disk"])
        .arg("--in")
        .arg(input)
        .arg("--out")
        .arg(out)
        .env_remove("KBS_URL")
        .env_remove("KBS_CA")
        .env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_decrypts_models_and_refuses_tampered_ones() {
    use kbs_proto::model::{self, EncryptOptions, ModelKey};
    let server = start(Mode::Release, vec![SuiteId::X25519_SHA256_AES256GCM]).await;
    let dir = tempfile::tempdir().unwrap();
    let (name, version, value) = SECRETS[0];
    let key = ModelKey::new(name, version, value).unwrap();
    let plain: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
    let mut sealed = Vec::new();
    let opts = EncryptOptions { chunk_size: 4096, threads: 1 };
    model::encrypt(&mut std::io::Cursor::new(&plain), plain.len() as u64, &mut sealed, &key, &opts).unwrap();
    let input = dir.path().join("enc");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::write(input.join("sub/w.bin"), &sealed).unwrap();

    let out = dir.path().join("plain");
    let output = run_model_cli(&server, dir.path(), &input, &out).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(out.join("sub/w.bin")).unwrap(), plain);

    // Trailing bytes: exit 8 with the reason, and nothing written.
    sealed.push(0);
    std::fs::write(input.join("sub/w.bin"), &sealed).unwrap();
    let out = dir.path().join("plain2");
    let output = run_model_cli(&server, dir.path(), &input, &out).await;
    assert_eq!(output.status.code(), Some(8));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("trailing data"), "{stderr}");
    assert!(!out.join("sub/w.bin").exists() && !out.join("sub/w.bin.partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_every_secret_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let server = start(Mode::Release, vec![SuiteId::X25519_SHA256_AES256GCM]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("secrets");
    let output = run_cli(&server, dir.path(), &out, &["--sim-generation", "turin"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("INSECURE SIMULATED TEE"), "{stderr}");
    for (name, _, value) in SECRETS {
        let path = out.join(name);
        assert_eq!(std::fs::read(&path).unwrap(), value);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_the_reason_and_writes_nothing_when_refused() {
    let server = start(
        Mode::Refuse(tonic::Code::PermissionDenied, "measurement_not_allowed"),
        vec![SuiteId::X25519_SHA256_AES256GCM],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("secrets");
    let output = run_cli(&server, dir.path(), &out, &[]).await;
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().any(|l| l == "error: measurement_not_allowed"), "{stderr}");
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_for_protocol_and_connection_failures() {
    let server = start(Mode::DropOne, vec![SuiteId::X25519_SHA256_AES256GCM]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("secrets");
    let output = run_cli(&server, dir.path(), &out, &[]).await;
    assert_eq!(output.status.code(), Some(6), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!out.exists());

    // A port nothing listens on: bound, then released.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let stopped = FakeServer { addr: free, ca_pem: server.ca_pem.clone(), _stop: oneshot::channel().0 };
    let output = run_cli(&stopped, dir.path(), &out, &["--timeout", "5"]).await;
    assert_eq!(output.status.code(), Some(4), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!out.exists());
}

/// `kbs-attester completion SHELL` prints a script for that shell, and
/// `--version` names the git revision.
#[test]
fn completions_and_version() {
    let run =
        |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_kbs-attester")).args(args).output().unwrap();
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef kbs-attester"), ("fish", "complete -c kbs-attester")]
    {
        let out = run(&["completion", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker) && script.contains("fetch"), "{shell}");
    }
    let version = String::from_utf8(run(&["--version"]).stdout).unwrap();
    assert!(version.starts_with("kbs-attester 0.1.0 (") && version.trim_end().ends_with(')'), "{version}");

    // Manual pages, one per subcommand.
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let out = run(&["man", "--dir", man.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fetch = std::fs::read_to_string(man.join("kbs-attester-fetch.1")).unwrap();
    assert!(fetch.contains(".TH kbs-attester-fetch 1") && fetch.contains("\\-\\-kbs"), "{fetch}");
    assert!(man.join("kbs-attester-model-decrypt.1").is_file());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), std::fs::read_dir(&man).unwrap().count());
}
