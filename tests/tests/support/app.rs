//! A broker in the test process for end-to-end tests: a `kbs dev-init`
//! set-up in a temporary directory (the simulated TEE's SNP, TDX and GPU
//! test roots, the TDX test collateral, optionally the CoCo front end), real TLS
//! listeners on loopback ports, a clock the test moves, and clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use attester_client::simulated::{
    RimKind, TdxTestPki, gpu_test_rim_root_pem, gpu_test_root_pem, simulated_rim, test_ark_pem,
};
use kbs::config::Config;
use kbs_proto::v1::admin_client::AdminClient;
use kbs_proto::v1::key_broker_client::KeyBrokerClient;
use tempfile::TempDir;
use time::OffsetDateTime;
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// How to start a [`TestApp`].
#[derive(Debug, Default)]
pub struct Options {
    /// Without the insecure dev mode: no simulated TEE, no test roots.
    pub production: bool,
    /// More lines for the `[tdx]` section (dev mode only).
    pub tdx_extra: String,
    /// More configuration appended as is, e.g. an `[snp]` section.
    pub extra_config: String,
    /// More lines for the `[server]` section.
    pub server_extra: String,
    /// Rate limits (per peer, in total) instead of the dev set-up's.
    pub rate_limit: Option<(u32, u32)>,
    /// Enable the CoCo KBS protocol front end ([`TestApp::coco_url`]).
    pub coco: bool,
    /// Enable the metrics listener ([`TestApp::metrics_url`]).
    pub metrics: bool,
    /// Serve the metrics listener over TLS (`metrics.tls`).
    pub metrics_tls: bool,
    /// A `[store]` section (and its subsections) in place of the dev
    /// set-up's local store, e.g. an OpenBao cluster.
    pub store: Option<String>,
    /// Share the challenge key (and CoCo token key) of the broker whose
    /// directory this is, as replicas do.
    pub keys_from: Option<PathBuf>,
    /// The simulated GPUs' RIMs left out of the RIM directory (dev mode
    /// writes both, driver and VBIOS, and pins the test RIM root).
    pub without_gpu_rims: Vec<RimKind>,
    /// More lines for the `[coco]` section (with `coco`).
    pub coco_extra: String,
    /// Files written into the broker's directory before its configuration
    /// is read: `(name, contents)`.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A running broker; stopped when dropped.
pub struct TestApp {
    /// Its directory: configuration, keys, store, audit log.
    pub dir: TempDir,
    /// `https://localhost:PORT` of the KeyBroker service.
    pub guest_url: String,
    /// `https://localhost:PORT` of the Admin service.
    pub admin_url: String,
    /// `https://localhost:PORT` of the CoCo front end (empty without it).
    pub coco_url: String,
    /// `http://127.0.0.1:PORT/metrics`, or `https://localhost:PORT/metrics`
    /// with `metrics_tls` (empty without the metrics listener).
    pub metrics_url: String,
    /// The dev CA (PEM) its certificates chain to.
    pub ca: Vec<u8>,
    /// The admin bearer token.
    pub token: String,
    /// The broker's clock.
    pub clock: Arc<Mutex<OffsetDateTime>>,
    /// The broker's audit log, to flush before the file is read.
    audit: Arc<kbs::audit::AuditLog>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What came of a TLS handshake with a listener ([`TestApp::handshake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// It completed.
    Completed,
    /// The connection was closed (or the handshake refused) first.
    Closed,
    /// Neither: the connection is held unread.
    Held,
}

impl TestApp {
    /// A dev-mode broker without the CoCo front end.
    pub async fn start() -> TestApp {
        Self::start_with(Options::default()).await
    }

    /// A broker as `options` say.
    pub async fn start_with(options: Options) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = kbs::dev::DevOptions {
            guest_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            coco_listen: options.coco.then(|| "127.0.0.1:0".to_owned()),
            metrics_listen: options.metrics.then(|| "127.0.0.1:0".to_owned()),
            ..Default::default()
        };
        if !options.production {
            let ark = dir.path().join("test-ark.pem");
            std::fs::write(&ark, test_ark_pem()).unwrap();
            let (root, collateral) = TdxTestPki::get().unwrap().write_broker_files(dir.path()).unwrap();
            let gpu_root = dir.path().join("test-gpu-root.pem");
            std::fs::write(&gpu_root, gpu_test_root_pem()).unwrap();
            dev.snp_test_roots = vec![ark];
            dev.tdx_test_roots = vec![root];
            dev.gpu_test_roots = vec![gpu_root];
            let rim_root = dir.path().join("test-gpu-rim-root.pem");
            std::fs::write(&rim_root, gpu_test_rim_root_pem()).unwrap();
            let rim_dir = dir.path().join("gpu-rims");
            std::fs::create_dir(&rim_dir).unwrap();
            for kind in [RimKind::Driver, RimKind::Vbios].into_iter().filter(|k| !options.without_gpu_rims.contains(k))
            {
                let rim = simulated_rim(kind).unwrap();
                std::fs::write(rim_dir.join(format!("{}.xml", rim.id)), rim.xml).unwrap();
            }
            dev.gpu_test_rim_roots = vec![rim_root];
            dev.gpu_rim_dir = Some(rim_dir);
            dev.tdx_collateral_dir = Some(collateral);
        }
        let files = kbs::dev::init(dir.path(), &dev).unwrap();
        if let Some(other) = &options.keys_from {
            std::fs::copy(other.join("challenge.key"), dir.path().join("challenge.key")).unwrap();
            if options.coco {
                std::fs::copy(other.join("coco-token.key"), dir.path().join("coco-token.key")).unwrap();
            }
        }
        if !options.tdx_extra.is_empty() {
            assert!(!options.production, "tdx_extra needs the dev mode's [tdx] section");
        }
        for (name, contents) in &options.files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        if !options.coco_extra.is_empty() {
            assert!(options.coco, "coco_extra needs coco");
            let text = std::fs::read_to_string(&files.config).unwrap();
            let text = text.replacen("[coco]\n", &format!("[coco]\n{}\n", options.coco_extra), 1);
            std::fs::write(&files.config, text).unwrap();
        }
        if let Some((per_peer, global)) = options.rate_limit {
            let text = std::fs::read_to_string(&files.config).unwrap();
            let text = text
                .replacen("per_peer_per_second = 1000000", &format!("per_peer_per_second = {per_peer}"), 1)
                .replacen("global_per_second = 1000000", &format!("global_per_second = {global}"), 1);
            std::fs::write(&files.config, text).unwrap();
        }
        if options.metrics_tls {
            assert!(options.metrics, "metrics_tls needs metrics");
            let text = std::fs::read_to_string(&files.config).unwrap();
            std::fs::write(&files.config, text.replacen("[metrics]\n", "[metrics]\ntls = true\n", 1)).unwrap();
        }
        if let Some(store) = &options.store {
            let text = std::fs::read_to_string(&files.config).unwrap();
            let local = "[store]\nkind = \"local\"\ndir = \"secrets\"\nkek_file = \"kek\"\n";
            assert!(text.contains(local), "the dev set-up's store section changed");
            std::fs::write(&files.config, text.replacen(local, &format!("{store}\n"), 1)).unwrap();
        }
        if !options.server_extra.is_empty() {
            let text = std::fs::read_to_string(&files.config).unwrap();
            let text = text.replacen("[server]\n", &format!("[server]\n{}\n", options.server_extra), 1);
            std::fs::write(&files.config, text).unwrap();
        }
        if !options.tdx_extra.is_empty() || !options.extra_config.is_empty() {
            let text = std::fs::read_to_string(&files.config).unwrap();
            std::fs::write(&files.config, format!("{text}{}\n{}\n", options.tdx_extra, options.extra_config)).unwrap();
        }
        let config = Config::load(&files.config, |_| None).unwrap();
        assert_eq!(config.coco.is_some(), options.coco);
        assert_eq!(config.metrics.is_some(), options.metrics);

        let clock = Arc::new(Mutex::new(OffsetDateTime::now_utc()));
        let clock_fn = {
            let clock = Arc::clone(&clock);
            Arc::new(move || *clock.lock().unwrap())
        };
        let app = kbs::server::build(&config, clock_fn, !options.production).await.unwrap();
        let audit = Arc::clone(app.broker.audit());
        let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let url = |l: &tokio::net::TcpListener| format!("https://localhost:{}", l.local_addr().unwrap().port());
        let (guest, admin) = (bind().await, bind().await);
        let coco = if options.coco { Some(bind().await) } else { None };
        let (guest_url, admin_url) = (url(&guest), url(&admin));
        let coco_url = coco.as_ref().map(url).unwrap_or_default();
        let metrics = if options.metrics { Some(bind().await) } else { None };
        let metrics_url = metrics
            .as_ref()
            .map(|l| {
                let port = l.local_addr().unwrap().port();
                match options.metrics_tls {
                    true => format!("https://localhost:{port}/metrics"),
                    false => format!("http://127.0.0.1:{port}/metrics"),
                }
            })
            .unwrap_or_default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listeners = kbs::server::Listeners { guest, admin, coco, metrics };
        tokio::spawn(kbs::server::run_listeners(app, listeners, async move {
            let _ = rx.await;
        }));
        TestApp {
            ca: std::fs::read(&files.ca).unwrap(),
            token: std::fs::read_to_string(&files.admin_token).unwrap(),
            dir,
            guest_url,
            admin_url,
            coco_url,
            metrics_url,
            clock,
            audit,
            stop: Some(tx),
        }
    }

    /// A gRPC channel to `url` that trusts the dev CA.
    pub async fn channel(&self, url: &str) -> Channel {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        Channel::from_shared(url.to_owned()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
    }

    /// A KeyBroker client.
    pub async fn guest(&self) -> KeyBrokerClient<Channel> {
        KeyBrokerClient::new(self.channel(&self.guest_url).await)
    }

    /// An Admin client (requests need [`TestApp::authed`]).
    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel(&self.admin_url).await)
    }

    /// A TLS handshake from the loopback address `from` with the listener
    /// at `url` (`https://host:port`), trusting the dev CA: what came of it
    /// within two seconds.
    pub async fn handshake(&self, url: &str, from: std::net::IpAddr) -> Handshake {
        use rustls::pki_types::pem::PemObject as _;
        let port: u16 = url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        match tokio::time::timeout(std::time::Duration::from_secs(2), connector.connect(name, tcp)).await {
            Ok(Ok(_)) => Handshake::Completed,
            Ok(Err(_)) => Handshake::Closed,
            Err(_) => Handshake::Held,
        }
    }

    /// An HTTPS client that trusts the dev CA (for the CoCo front end).
    pub fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca).unwrap();
        reqwest::Client::builder().tls_certs_only(vec![ca]).build().unwrap()
    }

    /// The metrics listener's exposition (over TLS trusting the dev CA,
    /// when it is an `https` URL).
    pub async fn scrape(&self) -> String {
        assert!(!self.metrics_url.is_empty(), "started without Options.metrics");
        let response = self.http().get(&self.metrics_url).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        response.text().await.unwrap()
    }

    /// `msg` with the admin bearer token.
    pub fn authed<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        req
    }

    /// Moves the broker's clock forward.
    pub fn advance(&self, seconds: i64) {
        let mut now = self.clock.lock().unwrap();
        *now += time::Duration::seconds(seconds);
    }

    /// The audit log file, once every record queued so far is in it
    /// (refusals made before any effect are queued, not waited for).
    pub fn audit_path(&self) -> PathBuf {
        self.audit.flush().unwrap();
        self.dir.path().join("audit.jsonl")
    }

    /// The audit log's text (empty before the first record).
    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.audit_path()).unwrap_or_default()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A guest's `kbs.v1` release by the simulated SNP guest `sim`: a fresh
/// ephemeral key of `suite`, the report bound to `challenge`'s nonce and that
/// key, asking for `secret_names` (and for no attestation result). Returns
/// the request, the key and the nonce, which open the released secrets.
pub fn snp_release_request(
    sim: &attester_client::simulated::SimulatedSnp,
    challenge: kbs_proto::v1::Challenge,
    suite: kbs_proto::SuiteId,
    secret_names: Vec<String>,
) -> (kbs_proto::v1::ReleaseSecretsRequest, attester_client::hpke::EphemeralKey, [u8; kbs_proto::NONCE_LEN]) {
    use kbs_proto::v1::{ReleaseSecretsRequest, SnpEvidence, release_secrets_request};
    let nonce: [u8; kbs_proto::NONCE_LEN] = challenge.nonce.as_slice().try_into().unwrap();
    let key = attester_client::hpke::EphemeralKey::generate(suite).unwrap();
    let report_data = kbs_proto::report_data(&nonce, suite, key.public_key());
    let req = ReleaseSecretsRequest {
        challenge: challenge.challenge,
        evidence: Some(release_secrets_request::Evidence::Snp(SnpEvidence {
            report: sim.report(&report_data).unwrap(),
            cert_table: sim.cert_table().unwrap(),
        })),
        hpke_suite: Some(suite.to_wire()),
        hpke_public_key: key.public_key().to_vec(),
        secret_names,
        gpus: Vec::new(),
        want_attestation_token: false,
    };
    (req, key, nonce)
}
