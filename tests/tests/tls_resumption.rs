//! TLS 1.3 session resumption over real sockets: a ticket issued by one
//! broker is redeemed by another holding the same ticket key file (on the
//! guest gRPC listener and the CoCo listener), refused (full handshake) by
//! one with another key, and by a ticketer that sees it altered or too old;
//! without a ticket key a session resumes only at the broker that made it.
//! Also the TLS 1.3 suite the listeners choose, whose hash every handshake
//! runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use attester_client::client::{ClientConfig as GuestConfig, KbsClient};
use attester_client::simulated::{Generation, SimulatedSnp};
use kbs::tickets::SharedTicketer;
use kbs_proto::v1::PutSecretRequest;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ProducesTickets;
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/app.rs"]
mod app;

use app::{Options, TestApp};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A 32-byte key file readable by its owner only.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A dev broker with the CoCo listener and these `[server]` ticket lines.
async fn broker(ticket_lines: String) -> TestApp {
    TestApp::start_with(Options { coco: true, server_extra: ticket_lines, ..Default::default() }).await
}

fn with_key(key: &Path, previous: &[&Path]) -> String {
    let previous: Vec<String> = previous.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    format!(
        "tls_ticket_key_file = {:?}\ntls_ticket_previous_key_files = [{}]",
        key.display().to_string(),
        previous.join(", ")
    )
}

/// A client that trusts every broker's dev CA and keeps sessions in one
/// store, so it offers a ticket from any of them to the next (all are
/// `localhost`).
fn client(cas: &[&[u8]], alpn: &[u8], store: &Arc<ClientSessionMemoryCache>) -> Arc<ClientConfig> {
    client_with(cas, alpn, Arc::clone(store) as Arc<dyn rustls::client::ClientSessionStore>)
}

/// [`client`] with any session store.
fn client_with(cas: &[&[u8]], alpn: &[u8], store: Arc<dyn rustls::client::ClientSessionStore>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = Resumption::store(store);
    Arc::new(config)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

/// One connection: handshake, then one exchange (so that the session
/// tickets sent after the handshake are read). Returns how the handshake
/// went.
async fn connect(port: u16, config: &Arc<ClientConfig>) -> HandshakeKind {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    if config.alpn_protocols == [b"h2".to_vec()] {
        // The HTTP/2 preface and an empty SETTINGS frame; the server
        // answers with its SETTINGS.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
        let mut buf = [0u8; 9];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf[3], 0x04, "a SETTINGS frame");
    } else {
        tls.write_all(b"GET /kbs/v0/none HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while answer.len() < 12 {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        assert!(answer.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&answer));
    }
    kind
}

#[tokio::test]
async fn a_ticket_from_one_broker_resumes_at_another_with_the_same_key_only() {
    let keys = tempfile::tempdir().unwrap();
    let (k1, k2) = (key_file(keys.path(), "k1", 1), key_file(keys.path(), "k2", 2));
    let a = broker(with_key(&k1, &[])).await;
    let b = broker(with_key(&k1, &[])).await;
    let other = broker(with_key(&k2, &[])).await;
    let rotated = broker(with_key(&k2, &[&k1])).await;
    let cas = [a.ca.as_slice(), b.ca.as_slice(), other.ca.as_slice(), rotated.ca.as_slice()];
    for (alpn, coco) in [(&b"h2"[..], false), (&b"http/1.1"[..], true)] {
        // The guest gRPC listener, then the CoCo one.
        let url_of = |t: &TestApp| if coco { t.coco_url.clone() } else { t.guest_url.clone() };
        let name = String::from_utf8_lossy(alpn);
        // Same key: resumed at the other broker.
        let store = Arc::new(ClientSessionMemoryCache::new(32));
        let config = client(&cas, alpn, &store);
        assert_eq!(connect(port_of(&url_of(&a)), &config).await, HandshakeKind::Full, "{name}: first contact");
        assert_eq!(connect(port_of(&url_of(&b)), &config).await, HandshakeKind::Resumed, "{name}: same key");
        // A key listed as previous still redeems; another key does not.
        let store = Arc::new(ClientSessionMemoryCache::new(32));
        let config = client(&cas, alpn, &store);
        assert_eq!(connect(port_of(&url_of(&a)), &config).await, HandshakeKind::Full, "{name}");
        assert_eq!(connect(port_of(&url_of(&rotated)), &config).await, HandshakeKind::Resumed, "{name}: previous key");
        let store = Arc::new(ClientSessionMemoryCache::new(32));
        let config = client(&cas, alpn, &store);
        assert_eq!(connect(port_of(&url_of(&a)), &config).await, HandshakeKind::Full, "{name}");
        assert_eq!(connect(port_of(&url_of(&other)), &config).await, HandshakeKind::Full, "{name}: another key");
        // The full handshake there gave the client a ticket of that key,
        // which the broker that rotated it in redeems.
        assert_eq!(connect(port_of(&url_of(&rotated)), &config).await, HandshakeKind::Resumed, "{name}: current key");
        // A broker whose key rotated out (k2 current, k1 no longer listed)
        // does not redeem k1's tickets.
        let store = Arc::new(ClientSessionMemoryCache::new(32));
        let config = client(&cas, alpn, &store);
        assert_eq!(connect(port_of(&url_of(&b)), &config).await, HandshakeKind::Full, "{name}");
        assert_eq!(connect(port_of(&url_of(&other)), &config).await, HandshakeKind::Full, "{name}: rotated out");
    }
}

/// A client session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: AtomicU64,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group);
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(&self, name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(name, value);
    }
    fn tls12_session(&self, name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
        self.inner.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// With a ticket key, a broker sends one ticket per handshake (a guest
/// reconnecting once per release redeems one and gets the next), on the
/// guest and the CoCo listeners, and each next connection resumes.
#[tokio::test]
async fn with_a_ticket_key_each_handshake_gives_one_ticket() {
    let keys = tempfile::tempdir().unwrap();
    let app = broker(with_key(&key_file(keys.path(), "k1", 1), &[])).await;
    for (alpn, url) in [(&b"h2"[..], &app.guest_url), (&b"http/1.1"[..], &app.coco_url)] {
        let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(32), tickets: AtomicU64::new(0) });
        let config = client_with(&[app.ca.as_slice()], alpn, Arc::clone(&store) as _);
        let name = String::from_utf8_lossy(alpn);
        assert_eq!(connect(port_of(url), &config).await, HandshakeKind::Full, "{name}");
        assert_eq!(store.tickets.load(Ordering::Relaxed), 1, "{name}: tickets after a full handshake");
        for n in 2..=3 {
            assert_eq!(connect(port_of(url), &config).await, HandshakeKind::Resumed, "{name}");
            assert_eq!(store.tickets.load(Ordering::Relaxed), n, "{name}: one more per resumed handshake");
        }
    }
}

#[tokio::test]
async fn without_a_ticket_key_a_session_resumes_only_where_it_began() {
    let x = broker(String::new()).await;
    let y = broker(String::new()).await;
    let cas = [x.ca.as_slice(), y.ca.as_slice()];
    let store = Arc::new(ClientSessionMemoryCache::new(32));
    let config = client(&cas, b"h2", &store);
    assert_eq!(connect(port_of(&x.guest_url), &config).await, HandshakeKind::Full);
    assert_eq!(connect(port_of(&x.guest_url), &config).await, HandshakeKind::Resumed, "same broker");
    assert_eq!(connect(port_of(&y.guest_url), &config).await, HandshakeKind::Full, "another broker");
}

#[tokio::test]
async fn a_broker_with_a_ticket_key_releases_over_resumed_connections() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = key_file(keys.path(), "k1", 1);
    let app = broker(with_key(&k1, &[])).await;
    let value = b"resumed-release-bytes".to_vec();
    let measurement = [0x5a; 48];
    app.admin()
        .await
        .put_secret(app.authed(PutSecretRequest {
            name: "m/key".into(),
            value: value.clone(),
            allowed_measurements: vec![hex::encode(measurement)],
            ..Default::default()
        }))
        .await
        .unwrap();
    let source = Arc::new(SimulatedSnp::new(Generation::Genoa).measurement(measurement));
    for _ in 0..2 {
        let mut guest = KbsClient::connect(&GuestConfig::new(app.guest_url.clone(), app.ca.clone())).await.unwrap();
        let released = guest.fetch_release(source.clone(), &["m/key".to_owned()]).await.unwrap();
        assert_eq!(released.secrets[0].value.as_slice(), value.as_slice());
    }
    // And the listener still refuses what is not TLS.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port_of(&app.guest_url))).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/"), "no plain HTTP answer");
}

/// The shared ticketer, with one decryption seeing the ticket altered.
#[derive(Debug)]
struct Tampering {
    inner: SharedTicketer,
    flip: std::sync::atomic::AtomicBool,
}

impl ProducesTickets for Tampering {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }
    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let mut cipher = cipher.to_vec();
        if self.flip.swap(false, Ordering::SeqCst) {
            let last = cipher.len() - 1;
            cipher[last] ^= 0x80;
        }
        self.inner.decrypt(&cipher)
    }
}

/// A TLS server on loopback port 0 with `ticketer`, answering each
/// connection's request with a 404 (as [`connect`] expects); stops when
/// the test's runtime ends.
async fn serve_with(dir: &Path, ticketer: Arc<dyn ProducesTickets>) -> u16 {
    let certs: Vec<_> =
        CertificateDer::pem_file_iter(dir.join("tls/server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("tls/server.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.ticketer = ticketer;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn altered_and_expired_tickets_get_a_full_handshake() {
    let app = TestApp::start().await;
    let now = Arc::new(AtomicU64::new(2_000_000_000));
    let clock: kbs::tickets::Clock = {
        let now = Arc::clone(&now);
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let ticketer = Arc::new(Tampering {
        inner: SharedTicketer::new(&[9; 32], &[], 600, clock).unwrap(),
        flip: std::sync::atomic::AtomicBool::new(false),
    });
    let port = serve_with(app.dir.path(), Arc::clone(&ticketer) as Arc<dyn ProducesTickets>).await;
    let store = Arc::new(ClientSessionMemoryCache::new(32));
    let config = client(&[app.ca.as_slice()], b"http/1.1", &store);
    assert_eq!(connect(port, &config).await, HandshakeKind::Full);
    assert_eq!(connect(port, &config).await, HandshakeKind::Resumed, "the control: an intact, fresh ticket");
    ticketer.flip.store(true, Ordering::SeqCst);
    assert_eq!(connect(port, &config).await, HandshakeKind::Full, "an altered ticket");
    assert!(!ticketer.flip.load(Ordering::SeqCst), "the altered ticket was presented");
    assert_eq!(connect(port, &config).await, HandshakeKind::Resumed, "the next intact one");
    // Past the lifetime, by the ticketer's clock (the client's cache does
    // not know).
    now.fetch_add(601, Ordering::SeqCst);
    assert_eq!(connect(port, &config).await, HandshakeKind::Full, "an expired ticket");
    assert_eq!(connect(port, &config).await, HandshakeKind::Resumed, "a ticket issued since");
}

/// The TLS 1.3 suite of one handshake with `config`.
async fn suite(port: u16, config: &Arc<ClientConfig>) -> rustls::CipherSuite {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

/// The guest and CoCo listeners choose AES-128-GCM-SHA256 (a SHA-256 key
/// schedule) over the AES-256-GCM-SHA384 that rustls's client lists first,
/// and still serve a client that offers AES-256-GCM-SHA384 only.
#[tokio::test]
async fn the_listeners_prefer_aes_128_gcm_sha256_and_serve_aes_256_only_clients() {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let app = broker(String::new()).await;
    let default_order = provider();
    assert_eq!(default_order.cipher_suites[0].suite(), TLS13_AES_256_GCM_SHA384, "the client's first choice");
    let mut only_256 = rustls::crypto::aws_lc_rs::default_provider();
    only_256.cipher_suites.retain(|s| s.suite() == TLS13_AES_256_GCM_SHA384);
    let only_256 = Arc::new(only_256);
    for (alpn, url) in [(&b"h2"[..], &app.guest_url), (&b"http/1.1"[..], &app.coco_url)] {
        let name = String::from_utf8_lossy(alpn);
        for (client_provider, expected) in
            [(&default_order, TLS13_AES_128_GCM_SHA256), (&only_256, TLS13_AES_256_GCM_SHA384)]
        {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&app.ca) {
                roots.add(cert.unwrap()).unwrap();
            }
            let mut config = ClientConfig::builder_with_provider(Arc::clone(client_provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            assert_eq!(suite(port_of(url), &Arc::new(config)).await, expected, "{name}");
        }
    }
}
