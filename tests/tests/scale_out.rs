//! Scale-out: three broker replicas, each on its own runtime and listeners,
//! sharing one challenge key file and one OpenBao server, as N pods behind a
//! Kubernetes Service would. A challenge issued by one replica is redeemed
//! at another; under load, one replica is killed (its runtime torn down with
//! every connection and in-flight request): each request then either
//! succeeds with the right bytes or fails with an error, none hangs, and the
//! surviving replicas carry on. A policy changed through one replica is in
//! force at the others within their refresh period, without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::time::{Duration, Instant};

use attester_client::simulated::{Generation, SimulatedSnp, test_ark_pem};
use kbs::config::Config;
use kbs_proto::SuiteId;
use kbs_proto::v1::key_broker_client::KeyBrokerClient;
use kbs_proto::v1::{GetChallengeRequest, Tee};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const MEASUREMENT: [u8; 48] = [0x3d; 48];
const SECRET: &str = "models/scale/key";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[path = "support/app.rs"]
mod app;
#[path = "support/bao.rs"]
mod bao;

use bao::Bao;

/// One broker replica on its own runtime: tearing the runtime down is a
/// kill (listeners, connections and in-flight requests all dropped).
struct Replica {
    url: String,
    broker: std::sync::Arc<kbs::release::Broker>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// A replica whose directory shares `shared`'s challenge key and TLS
    /// identity and whose store is the OpenBao at `bao`.
    async fn start(id: &str, shared: &Path, bao: &Bao) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let ark = dir.path().join("test-ark.pem");
        std::fs::write(&ark, test_ark_pem()).unwrap();
        let files = kbs::dev::init(
            dir.path(),
            &kbs::dev::DevOptions {
                guest_listen: "127.0.0.1:0".into(),
                admin_listen: "127.0.0.1:0".into(),
                snp_test_roots: vec![ark],
                ..Default::default()
            },
        )
        .unwrap();
        // What every pod of the Deployment mounts: one challenge key (a
        // Kubernetes Secret) and one serving identity.
        for file in ["challenge.key", "tls/ca.pem", "tls/server.pem", "tls/server.key"] {
            std::fs::copy(shared.join(file), dir.path().join(file)).unwrap();
        }
        std::fs::write(dir.path().join("bao.token"), &bao.root).unwrap();
        let text = std::fs::read_to_string(&files.config).unwrap().replace(
            "[store]\nkind = \"local\"\ndir = \"secrets\"\nkek_file = \"kek\"\n",
            &format!(
                "[store]\nkind = \"vault\"\naddress = \"{}\"\nprefix = \"kbs-scale\"\n[store.auth]\nmethod = \"token\"\ntoken_file = \"bao.token\"\n",
                bao.addr
            ),
        );
        assert!(text.contains("kind = \"vault\""));
        // Policies re-read every second, so a change through one replica
        // reaches the others quickly.
        let text = format!("{text}\n[policy]\nrefresh_seconds = 1\n");
        std::fs::write(&files.config, text).unwrap();
        let id = id.to_owned();
        let config = Config::load(&files.config, |k| (k == "KBS_REPLICA_ID").then(|| id.clone())).unwrap();

        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let app = kbs::server::build(&config, kbs::release::system_clock(), true).await.unwrap();
            let guest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((guest.local_addr().unwrap().port(), app.broker.clone())).ok().unwrap();
            kbs::server::run(app, guest, admin, std::future::pending()).await.unwrap();
        });
        let (port, broker) = rx.await.unwrap();
        // The first replica writes the secret into the shared OpenBao.
        if broker.store().get(SECRET).await.is_err() {
            broker
                .store()
                .put(kbs::store::NewSecret {
                    name: SECRET.into(),
                    value: kbs::store::SecretValue::new(secret_value()),
                    labels: Default::default(),
                    allowed_measurements: vec![hex::encode(MEASUREMENT)],
                    expected_version: None,
                })
                .await
                .unwrap();
        }
        Replica { url: format!("https://localhost:{port}"), broker, runtime: Some(runtime), _dir: dir }
    }

    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn secret_value() -> Vec<u8> {
    (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect()
}

async fn channel(url: &str, ca: &[u8]) -> Channel {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    Channel::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(REQUEST_TIMEOUT)
        .connect_lazy()
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Released, and the bytes opened and matched.
    Ok,
    /// Refused or failed with a gRPC status.
    Failed(tonic::Code),
    /// Released, but not the right bytes. Never acceptable.
    WrongBytes,
    /// No answer within the timeout. Never acceptable.
    Hung,
}

/// Challenge at `issue`, release at `redeem`, open and check.
async fn exchange(issue: &mut KeyBrokerClient<Channel>, redeem: &mut KeyBrokerClient<Channel>) -> Outcome {
    let flow = async {
        let suite = SuiteId::X25519_SHA256_AES256GCM;
        let challenge = issue
            .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: vec![SECRET.into()] })
            .await?
            .into_inner();
        let sim = SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT);
        let (request, key, nonce) = app::snp_release_request(&sim, challenge, suite, vec![SECRET.into()]);
        let resp = redeem.release_secrets(request).await?.into_inner();
        let [s] = resp.secrets.as_slice() else { return Ok::<_, tonic::Status>(Outcome::WrongBytes) };
        let aad = kbs_proto::secret_aad(&s.name, s.version);
        Ok(match key.open(&s.enc, &s.ciphertext, &kbs_proto::secret_info(&nonce), &aad) {
            Ok(v) if s.name == SECRET && v.as_slice() == secret_value().as_slice() => Outcome::Ok,
            _ => Outcome::WrongBytes,
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(2), flow).await {
        Err(_) => Outcome::Hung,
        Ok(Ok(outcome)) => outcome,
        Ok(Err(status)) => Outcome::Failed(status.code()),
    }
}

/// One result of the load run.
struct Record {
    issue: usize,
    redeem: usize,
    started: Instant,
    outcome: Outcome,
}

/// `guests` concurrent guests for `run`, each exchange spread over two
/// replicas among `live` (challenge at one, release at the next).
async fn load(
    urls: &[String],
    ca: &[u8],
    live: &[usize],
    guests: usize,
    run: Duration,
) -> tokio::task::JoinHandle<Vec<Record>> {
    let mut clients = Vec::new();
    for url in urls {
        clients.push(KeyBrokerClient::new(channel(url, ca).await));
    }
    let live = live.to_vec();
    tokio::spawn(async move {
        let deadline = Instant::now() + run;
        let mut tasks = Vec::new();
        for g in 0..guests {
            let clients = clients.clone();
            let live = live.clone();
            tasks.push(tokio::spawn(async move {
                let mut records = Vec::new();
                let mut i = g;
                // Bounded: by time and by count.
                while Instant::now() < deadline && records.len() < 10_000 {
                    let issue = live[i % live.len()];
                    let redeem = live[(i + 1) % live.len()];
                    i += 1;
                    let started = Instant::now();
                    let (mut a, mut b) = (clients[issue].clone(), clients[redeem].clone());
                    let outcome = exchange(&mut a, &mut b).await;
                    records.push(Record { issue, redeem, started, outcome });
                }
                records
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_challenges_and_survive_losing_one() {
    let Some(bao) = Bao::start(false).await else { return };
    let shared = tempfile::tempdir().unwrap();
    kbs::dev::init(shared.path(), &kbs::dev::DevOptions::default()).unwrap();
    let ca = std::fs::read(shared.path().join("tls/ca.pem")).unwrap();
    let mut replicas = Vec::new();
    for id in ["kbs-0", "kbs-1", "kbs-2"] {
        replicas.push(Replica::start(id, shared.path(), &bao).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();

    // A challenge issued by replica 0 is redeemed at replica 1, and at 2.
    for redeem in [1, 2] {
        let mut a = KeyBrokerClient::new(channel(&urls[0], &ca).await);
        let mut b = KeyBrokerClient::new(channel(&urls[redeem], &ca).await);
        assert_eq!(exchange(&mut a, &mut b).await, Outcome::Ok, "issued at 0, redeemed at {redeem}");
    }

    // Load over all three; replica 2 is killed part-way.
    let run = load(&urls, &ca, &[0, 1, 2], 6, Duration::from_millis(3000)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let killed_at = Instant::now();
    replicas[2].kill();
    let records = run.await.unwrap();

    let total = records.len();
    let ok = records.iter().filter(|r| r.outcome == Outcome::Ok).count();
    assert!(total > 10 && ok > 0, "{ok} of {total} succeeded");
    for r in &records {
        // Every request was answered: right bytes or an error, never a hang
        // and never wrong bytes.
        assert!(matches!(r.outcome, Outcome::Ok | Outcome::Failed(_)), "{:?} via {}->{}", r.outcome, r.issue, r.redeem);
        // Exchanges that never touched the killed replica all succeeded,
        // before, during and after the kill.
        if r.issue != 2 && r.redeem != 2 {
            assert_eq!(
                r.outcome,
                Outcome::Ok,
                "{}->{} (started after the kill: {})",
                r.issue,
                r.redeem,
                r.started > killed_at
            );
        }
    }
    let failed_on_killed = records.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count();
    eprintln!(
        "load with a kill: {total} exchanges, {ok} ok, {failed_on_killed} failed (all involving the killed replica)"
    );

    // The survivors carry on: every later request succeeds.
    let after = load(&urls, &ca, &[0, 1], 6, Duration::from_millis(1500)).await.await.unwrap();
    assert!(after.len() >= 6, "{}", after.len());
    for r in &after {
        assert_eq!(r.outcome, Outcome::Ok, "{}->{} after the kill", r.issue, r.redeem);
    }
}

/// Exchanges at `url` until one ends as `want`, for at most `within`.
async fn until_outcome(url: &str, ca: &[u8], want: &Outcome, within: Duration) -> Duration {
    let start = Instant::now();
    let mut client = KeyBrokerClient::new(channel(url, ca).await);
    loop {
        let got = exchange(&mut client.clone(), &mut client).await;
        if &got == want {
            return start.elapsed();
        }
        assert!(matches!(got, Outcome::Ok | Outcome::Failed(_)), "{got:?}");
        assert!(start.elapsed() < within, "still {got:?} after {within:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_reach_every_replica_without_restart() {
    let Some(bao) = Bao::start(false).await else { return };
    let shared = tempfile::tempdir().unwrap();
    kbs::dev::init(shared.path(), &kbs::dev::DevOptions::default()).unwrap();
    let ca = std::fs::read(shared.path().join("tls/ca.pem")).unwrap();
    let a = Replica::start("kbs-a", shared.path(), &bao).await;
    let b = Replica::start("kbs-b", shared.path(), &bao).await;
    let bound = Duration::from_secs(15);
    let denied = Outcome::Failed(tonic::Code::PermissionDenied);

    // The built-in default releases the secret (its allow-list holds the
    // guest's measurement), at both replicas.
    for r in [&a, &b] {
        let mut c = KeyBrokerClient::new(channel(&r.url, &ca).await);
        assert_eq!(exchange(&mut c.clone(), &mut c).await, Outcome::Ok);
    }

    // A policy set through replica A that refuses this secret is in force
    // at replica B, which was running all along.
    let refuse = "package kbs.release\nimport rego.v1\nallow if false\nreasons contains \"frozen\" if true\n";
    a.broker.policy().set_policy("models/scale/", refuse).await.unwrap();
    let seen = until_outcome(&b.url, &ca, &denied, bound).await;
    eprintln!("replica B refused {seen:?} after the change at A");
    // And at A itself, at once.
    let mut c = KeyBrokerClient::new(channel(&a.url, &ca).await);
    assert_eq!(exchange(&mut c.clone(), &mut c).await, denied);

    // A malformed policy is refused at upload; the one in force stays, at
    // both replicas, across refreshes.
    let err = a.broker.policy().set_policy("models/scale/", "package kbs.release\nallow if {").await.unwrap_err();
    assert!(matches!(err, kbs::policy::PolicyError::Compile(_)), "{err}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for r in [&a, &b] {
        let mut c = KeyBrokerClient::new(channel(&r.url, &ca).await);
        assert_eq!(exchange(&mut c.clone(), &mut c).await, denied);
    }

    // Removing it through B: replica A releases again.
    b.broker.policy().delete_policy("models/scale/").await.unwrap();
    until_outcome(&a.url, &ca, &Outcome::Ok, bound).await;
}
