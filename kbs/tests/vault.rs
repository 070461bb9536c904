#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! The Vault/OpenBao store against a real OpenBao dev server.
//!
//! The tests start `bao server -dev` on a free loopback port (one shared
//! server per test process, plus dedicated ones for tests that stop the
//! server or need TLS), with the harness in `tests/tests/support/bao.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use kbs::store::vault::{ConnectError, VaultAuth, VaultConfig, VaultStore};
use kbs::store::{NewSecret, SecretStore, SecretValue, StoreError};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;
use tokio::time::{Instant, sleep};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

#[path = "../../tests/tests/support/bao.rs"]
mod bao;

use bao::{Bao, skip_requested};

static SHARED: OnceCell<Option<Bao>> = OnceCell::const_new();

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A dedicated server (`None` when skipping), with the store's own log
/// lines shown in a failing test's output.
async fn start_bao(tls: bool) -> Option<Bao> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kbs=debug")),
        )
        .with_test_writer()
        .try_init();
    Bao::start(tls).await
}

impl Bao {
    /// The server shared by this test process; `None` when skipping.
    async fn shared() -> Option<&'static Bao> {
        SHARED.get_or_init(|| start_bao(false)).await.as_ref()
    }

    fn api(&self) -> Api {
        self.api_as(&self.root)
    }

    fn api_as(&self, token: &str) -> Api {
        Api { http: self.http(), addr: self.addr.clone(), token: token.to_owned() }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}-{}", random_hex()));
        fs::File::create(&path).unwrap().write_all(contents.as_bytes()).unwrap();
        path
    }

    fn root_config(&self, prefix: &str) -> VaultConfig {
        let mut config = VaultConfig::new(&self.addr, VaultAuth::Token(SecretString::from(self.root.clone())));
        config.prefix = prefix.to_owned();
        config.ca_bundle = self.ca.clone();
        config
    }

    async fn root_store(&self, prefix: &str) -> VaultStore {
        VaultStore::connect(self.root_config(prefix)).await.unwrap()
    }

    /// A policy allowing everything the store does under `prefix`.
    async fn kv_policy(&self, prefix: &str) -> String {
        let name = format!("kbs-{}", random_hex());
        let policy = format!(
            r#"
path "secret/data/{prefix}/*" {{ capabilities = ["create", "read", "update", "delete"] }}
path "secret/metadata/{prefix}/*" {{ capabilities = ["read", "list", "delete"] }}
path "secret/delete/{prefix}/*" {{ capabilities = ["update"] }}
path "secret/undelete/{prefix}/*" {{ capabilities = ["update"] }}
path "secret/destroy/{prefix}/*" {{ capabilities = ["update"] }}
"#
        );
        self.api().ok("PUT", &format!("sys/policies/acl/{name}"), Some(json!({ "policy": policy }))).await;
        name
    }

    /// Enables AppRole on a fresh mount and creates a role; returns the
    /// mount and the auth to use.
    async fn approle(&self, policy: &str, ttl: &str, max_ttl: &str) -> (String, VaultAuth) {
        let api = self.api();
        let mount = format!("approle-{}", random_hex());
        api.ok("POST", &format!("sys/auth/{mount}"), Some(json!({ "type": "approle" }))).await;
        api.ok(
            "POST",
            &format!("auth/{mount}/role/kbs"),
            Some(json!({ "token_policies": [policy], "token_ttl": ttl, "token_max_ttl": max_ttl })),
        )
        .await;
        let role_id = api.ok("GET", &format!("auth/{mount}/role/kbs/role-id"), None).await["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let secret_id = api.ok("POST", &format!("auth/{mount}/role/kbs/secret-id"), None).await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let secret_id_file = self.file("secret-id", &format!("{secret_id}\n"));
        (mount.clone(), VaultAuth::AppRole { mount, role_id, secret_id_file })
    }

    /// A child token of root.
    async fn token(&self, policy: &str, ttl: &str) -> String {
        let body = json!({ "policies": [policy], "ttl": ttl, "explicit_max_ttl": "300s", "renewable": true });
        self.api().ok("POST", "auth/token/create", Some(body)).await["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// Raw HTTP access to the server, for set-up and for playing the other
/// writer.
struct Api {
    http: reqwest::Client,
    addr: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request =
            self.http.request(method, format!("{}/v1/{path}", self.addr)).header("X-Vault-Token", &self.token);
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(serde_json::to_vec(&body).unwrap());
        }
        let Ok(response) = request.send().await else { return (0, Value::Null) };
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: HTTP {status}: {value}");
        value
    }

    /// Writes a KV version directly, the way another writer would.
    async fn kv_write(&self, kv_path: &str, value: &[u8]) -> u64 {
        let body = json!({ "data": { "value": B64.encode(value), "labels": {}, "allowed_measurements": [] } });
        self.ok("POST", &format!("secret/data/{kv_path}"), Some(body)).await["data"]["version"].as_u64().unwrap()
    }
}

fn new_secret(name: &str, value: &[u8]) -> NewSecret {
    NewSecret {
        name: name.to_owned(),
        value: SecretValue::new(value.to_vec()),
        labels: BTreeMap::new(),
        allowed_measurements: Vec::new(),
        expected_version: None,
    }
}

fn with_expected(name: &str, value: &[u8], expected: u64) -> NewSecret {
    NewSecret { expected_version: Some(expected), ..new_secret(name, value) }
}

fn unique_prefix(test: &str) -> String {
    format!("t-{test}-{}", &random_hex()[..8])
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{what}: expected Unavailable, got {result:?}");
}

fn assert_connect_unavailable(result: Result<VaultStore, ConnectError>, what: &str) {
    assert!(
        matches!(result, Err(ConnectError::Store(StoreError::Unavailable(_)))),
        "{what}: expected Unavailable, got {result:?}"
    );
}

// ---------------------------------------------------------------------------
// A loopback proxy that lets the test act between the store's requests
// ---------------------------------------------------------------------------

type Hook = Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Forwards HTTP/1.1 traffic to `upstream`; before forwarding the first
/// request whose request line starts with `trigger` while armed, runs `hook`.
async fn start_proxy(upstream: String, trigger: String, armed: Arc<AtomicBool>, hook: Hook) -> String {
    start_proxy_with(upstream, trigger, armed, hook, false).await
}

/// [`start_proxy`]; with `lose_answer`, the triggering request reaches the
/// server but its answer does not reach the client: the connection is
/// closed instead, as when a node dies after doing the work.
async fn start_proxy_with(
    upstream: String,
    trigger: String,
    armed: Arc<AtomicBool>,
    hook: Hook,
    lose_answer: bool,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let (trigger, armed, hook) = (trigger.clone(), Arc::clone(&armed), Arc::clone(&hook));
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let mute = Arc::new(AtomicBool::new(false));
                let muted = Arc::clone(&mute);
                tokio::spawn(async move {
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = match server_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if muted.load(Ordering::SeqCst) {
                            let _ = client_write.shutdown().await;
                            return;
                        }
                        if client_write.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut buf = Vec::new();
                loop {
                    // One request: head, then a Content-Length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match client_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let length: usize = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 8192];
                        match client_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if head.starts_with(&trigger) && armed.swap(false, Ordering::SeqCst) {
                        hook().await;
                        mute.store(lose_answer, Ordering::SeqCst);
                    }
                    let request: Vec<u8> = buf.drain(..head_end + length).collect();
                    if server_write.write_all(&request).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn round_trip_of_binary_values() {
    let Some(bao) = Bao::shared().await else { return };
    let store = bao.root_store(&unique_prefix("roundtrip")).await;
    let all_bytes: Vec<u8> = (0..=255).collect();
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect();
    let mut labels = BTreeMap::new();
    labels.insert("owner".to_owned(), "ml-team".to_owned());
    let measurement = "ab".repeat(48);
    for (name, value) in [("m/k/all-bytes", &all_bytes[..]), ("m/k/empty", &[][..]), ("m/k/one-mib", &big[..])] {
        let secret = NewSecret {
            labels: labels.clone(),
            allowed_measurements: vec![measurement.clone()],
            ..new_secret(name, value)
        };
        let meta = store.put(secret).await.unwrap();
        assert_eq!(meta.version, 1);
        assert_eq!(meta.size, value.len() as u64);
        let record = store.get(name).await.unwrap();
        assert_eq!(record.value.expose(), value, "{name}");
        assert_eq!(record.meta.version, 1);
        assert_eq!(record.meta.versions, vec![1]);
        assert_eq!(record.meta.labels, labels);
        assert_eq!(record.meta.allowed_measurements, vec![measurement.clone()]);
        assert_eq!(record.meta.size, value.len() as u64);
        assert_eq!(store.metadata(name).await.unwrap(), record.meta);
        let age = time::OffsetDateTime::now_utc().unix_timestamp() - record.meta.created_at;
        assert!((0..600).contains(&age), "created_at {} is not recent", record.meta.created_at);
    }
}

#[tokio::test]
async fn versions_increase_and_are_listed() {
    let Some(bao) = Bao::shared().await else { return };
    let store = bao.root_store(&unique_prefix("versions")).await;
    for i in 1..=3u8 {
        let meta = store.put(new_secret("app/key", &[i])).await.unwrap();
        assert_eq!(meta.version, u64::from(i));
        assert_eq!(meta.versions, (1..=u64::from(i)).collect::<Vec<_>>());
    }
    let record = store.get("app/key").await.unwrap();
    assert_eq!(record.value.expose(), [3]);
    assert_eq!(record.meta.version, 3);
    assert_eq!(record.meta.versions, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_check_and_set_writers_exactly_one_wins() {
    let Some(bao) = Bao::shared().await else { return };
    let store = bao.root_store(&unique_prefix("cas")).await;
    store.put(with_expected("race/key", b"v1", 0)).await.unwrap();
    assert!(matches!(
        store.put(with_expected("race/key", b"again", 0)).await,
        Err(StoreError::Conflict { expected: 0, found: 1 })
    ));
    for round in 1..=5u64 {
        let (a, b) = tokio::join!(
            store.put(with_expected("race/key", b"writer-a", round)),
            store.put(with_expected("race/key", b"writer-b", round)),
        );
        let (winner, loser) = match (&a, &b) {
            (Ok(_), Err(_)) => (a.unwrap(), b.unwrap_err()),
            (Err(_), Ok(_)) => (b.unwrap(), a.unwrap_err()),
            other => panic!("round {round}: expected exactly one winner, got {other:?}"),
        };
        assert_eq!(winner.version, round + 1);
        assert!(
            matches!(loser, StoreError::Conflict { expected, found } if expected == round && found == round + 1),
            "round {round}: {loser:?}"
        );
    }
    assert!(matches!(
        store.put(with_expected("race/key", b"stale", 2)).await,
        Err(StoreError::Conflict { expected: 2, found: 6 })
    ));
    assert_eq!(store.metadata("race/key").await.unwrap().version, 6);
}

#[tokio::test]
async fn put_without_expected_version_writes_only_on_the_version_it_read() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("lost-update");
    bao.root_store(&prefix).await.put(new_secret("model/key", b"original")).await.unwrap();

    // The store talks to the server through a proxy that, just before the
    // store's write goes out (after it read the current version), lets
    // another writer write a new version directly.
    let kv_path = format!("{prefix}/model/key");
    let armed = Arc::new(AtomicBool::new(false));
    let other = Arc::new(bao.api());
    let hook_path = kv_path.clone();
    let hook: Hook = Arc::new(move || {
        let (other, path) = (Arc::clone(&other), hook_path.clone());
        Box::pin(async move {
            assert_eq!(other.kv_write(&path, b"other writer").await, 2);
        })
    });
    let upstream = bao.addr.trim_start_matches("http://").to_owned();
    let proxy = start_proxy(upstream, format!("POST /v1/secret/data/{kv_path} "), Arc::clone(&armed), hook).await;
    let mut config = bao.root_config(&prefix);
    config.address = proxy;
    let store = VaultStore::connect(config).await.unwrap();

    armed.store(true, Ordering::SeqCst);
    let result = store.put(new_secret("model/key", b"mine")).await;
    assert!(!armed.load(Ordering::SeqCst), "the proxy did not see the write");
    assert!(
        matches!(result, Err(StoreError::Conflict { expected: 1, found: 2 })),
        "the write must not land on a version it did not read: {result:?}"
    );
    assert_eq!(store.get("model/key").await.unwrap().value.expose(), b"other writer");
    // Without interference the same call succeeds on top of what it read.
    assert_eq!(store.put(new_secret("model/key", b"mine")).await.unwrap().version, 3);
    assert_eq!(store.get("model/key").await.unwrap().value.expose(), b"mine");
}

#[tokio::test]
async fn list_walks_nested_names_with_prefix_and_paging() {
    let Some(bao) = Bao::shared().await else { return };
    let store = bao.root_store(&unique_prefix("list")).await;
    let names = ["n/1", "m/b/2", "m.c", "m/a/sub/x", "m/a-b", "m/a/2", "m/b/1", "m/a/1", "m/a/sub/deeper/y"];
    for name in names {
        store.put(new_secret(name, name.as_bytes())).await.unwrap();
    }
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.list("", after.as_deref(), 2).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|m| m.name.clone()));
        pages += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 20, "paging does not end");
    }
    assert_eq!(seen, sorted);

    let names_of = |page: kbs::store::Page| page.items.into_iter().map(|m| m.name).collect::<Vec<_>>();
    assert_eq!(
        names_of(store.list("m/a", None, 100).await.unwrap()),
        ["m/a-b", "m/a/1", "m/a/2", "m/a/sub/deeper/y", "m/a/sub/x"]
    );
    assert_eq!(names_of(store.list("m/a/", Some("m/a/2"), 100).await.unwrap()), ["m/a/sub/deeper/y", "m/a/sub/x"]);
    let first = store.list("m/b/", None, 1).await.unwrap();
    assert_eq!(first.next.as_deref(), Some("m/b/1"));
    assert_eq!(names_of(first), ["m/b/1"]);
    assert!(store.list("zzz", None, 10).await.unwrap().items.is_empty());
    let page = store.list("m/a/1", None, 10).await.unwrap();
    assert_eq!(page.items[0].version, 1);
    assert_eq!(page.items[0].size, 5);

    // A secret whose latest version is soft-deleted is not listed.
    store.soft_delete("m/a/2").await.unwrap();
    assert_eq!(names_of(store.list("m/a/", None, 100).await.unwrap()), ["m/a/1", "m/a/sub/deeper/y", "m/a/sub/x"]);
}

#[tokio::test]
async fn delete_removes_every_version() {
    let Some(bao) = Bao::shared().await else { return };
    let store = bao.root_store(&unique_prefix("delete")).await;
    store.put(new_secret("d/key", b"1")).await.unwrap();
    store.put(new_secret("d/key", b"2")).await.unwrap();
    store.delete("d/key").await.unwrap();
    assert!(matches!(store.get("d/key").await, Err(StoreError::NotFound)));
    assert!(matches!(store.metadata("d/key").await, Err(StoreError::NotFound)));
    assert!(matches!(store.delete("d/key").await, Err(StoreError::NotFound)));
    assert!(matches!(store.get("d/never-written").await, Err(StoreError::NotFound)));
    // All versions are gone, so numbering starts again.
    assert_eq!(store.put(with_expected("d/key", b"new", 0)).await.unwrap().versions, vec![1]);
}

#[tokio::test]
async fn soft_delete_undelete_and_destroy_versions() {
    let Some(bao) = Bao::shared().await else { return };
    let store = bao.root_store(&unique_prefix("soft")).await;
    for v in [b"1", b"2", b"3"] {
        store.put(new_secret("s/key", v)).await.unwrap();
    }
    store.soft_delete("s/key").await.unwrap();
    assert!(matches!(store.get("s/key").await, Err(StoreError::NotFound)));
    assert!(matches!(store.metadata("s/key").await, Err(StoreError::NotFound)));

    store.undelete_versions("s/key", &[3]).await.unwrap();
    let record = store.get("s/key").await.unwrap();
    assert_eq!((record.meta.version, record.value.expose()), (3, &b"3"[..]));

    store.destroy_versions("s/key", &[1, 2]).await.unwrap();
    assert_eq!(store.metadata("s/key").await.unwrap().versions, vec![3]);

    // With the latest version deleted, "must not exist" writes over it.
    store.soft_delete("s/key").await.unwrap();
    let meta = store.put(with_expected("s/key", b"4", 0)).await.unwrap();
    assert_eq!((meta.version, meta.versions.clone()), (4, vec![4]));

    store.destroy_versions("s/key", &[4]).await.unwrap();
    assert!(matches!(store.get("s/key").await, Err(StoreError::NotFound)));
    assert!(matches!(store.soft_delete("s/none").await, Err(StoreError::NotFound)));
    assert!(matches!(store.destroy_versions("s/none", &[1]).await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn invalid_names_and_foreign_data() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("invalid");
    let store = bao.root_store(&prefix).await;
    for bad in ["", "../x", "a//b", "a/../../sys/policy", "a b"] {
        assert!(matches!(store.get(bad).await, Err(StoreError::InvalidName(_))), "{bad:?}");
        assert!(matches!(store.put(new_secret(bad, b"x")).await, Err(StoreError::InvalidName(_))), "{bad:?}");
        assert!(matches!(store.delete(bad).await, Err(StoreError::InvalidName(_))), "{bad:?}");
    }
    let api = bao.api();
    api.ok("POST", &format!("secret/data/{prefix}/foreign/no-value"), Some(json!({ "data": { "foo": "bar" } }))).await;
    api.ok("POST", &format!("secret/data/{prefix}/foreign/bad-b64"), Some(json!({ "data": { "value": "!!!" } }))).await;
    assert!(matches!(store.get("foreign/no-value").await, Err(StoreError::Corrupt(_))));
    assert!(matches!(store.get("foreign/bad-b64").await, Err(StoreError::Corrupt(_))));
}

#[tokio::test]
async fn approle_login_and_policy_limits() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("approle");
    let policy = bao.kv_policy(&prefix).await;
    let (_, auth) = bao.approle(&policy, "60s", "120s").await;
    let mut config = bao.root_config(&prefix);
    config.auth = auth.clone();
    let store = VaultStore::connect(config).await.unwrap();
    store.put(new_secret("a/key", b"approle")).await.unwrap();
    assert_eq!(store.get("a/key").await.unwrap().value.expose(), b"approle");
    assert_eq!(store.list("", None, 10).await.unwrap().items.len(), 1);
    store.soft_delete("a/key").await.unwrap();
    store.undelete_versions("a/key", &[1]).await.unwrap();
    store.destroy_versions("a/key", &[1]).await.unwrap();
    store.delete("a/key").await.unwrap();

    // Outside its policy the store is unavailable, never "not found".
    let mut config = bao.root_config(&unique_prefix("approle-other"));
    config.auth = auth.clone();
    let outside = VaultStore::connect(config).await.unwrap();
    assert_unavailable(outside.get("a/key").await, "get outside the policy");
    assert_unavailable(outside.put(new_secret("a/key", b"x")).await, "put outside the policy");
    assert_unavailable(outside.list("", None, 10).await, "list outside the policy");

    // A wrong secret ID fails the login.
    let mut config = bao.root_config(&prefix);
    let VaultAuth::AppRole { mount, role_id, .. } = auth else { unreachable!() };
    config.auth = VaultAuth::AppRole { mount, role_id, secret_id_file: bao.file("wrong", "not-the-secret-id") };
    assert_connect_unavailable(VaultStore::connect(config).await, "wrong secret ID");
}

#[tokio::test]
async fn kubernetes_style_jwt_login() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("jwt");
    let policy = bao.kv_policy(&prefix).await;
    let api = bao.api();
    // OpenBao's `jwt` method validates the token with a locally generated
    // key, as the `kubernetes` method would with the cluster's issuer.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mount = format!("k8s-{}", random_hex());
    let issuer = "https://kubernetes.default.svc.cluster.local";
    api.ok("POST", &format!("sys/auth/{mount}"), Some(json!({ "type": "jwt" }))).await;
    api.ok(
        "POST",
        &format!("auth/{mount}/config"),
        Some(json!({ "jwt_validation_pubkeys": [key.public_key_pem()], "bound_issuer": issuer })),
    )
    .await;
    api.ok(
        "POST",
        &format!("auth/{mount}/role/kbs"),
        Some(json!({
            "role_type": "jwt",
            "bound_audiences": ["kbs"],
            "bound_subject": "system:serviceaccount:kbs:kbs",
            "user_claim": "sub",
            "token_policies": [policy],
            "token_ttl": "60s",
        })),
    )
    .await;
    let jwt = |audience: &str| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = B64URL.encode(json!({ "alg": "ES256", "typ": "JWT" }).to_string());
        let claims = B64URL.encode(
            json!({
                "iss": issuer,
                "sub": "system:serviceaccount:kbs:kbs",
                "aud": [audience],
                "iat": now,
                "nbf": now - 5,
                "exp": now + 600,
                "kubernetes.io": { "namespace": "kbs", "serviceaccount": { "name": "kbs" } },
            })
            .to_string(),
        );
        let signing_input = format!("{header}.{claims}");
        let signer = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
        )
        .unwrap();
        let signature = signer.sign(&aws_lc_rs::rand::SystemRandom::new(), signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", B64URL.encode(signature.as_ref()))
    };

    let mut config = bao.root_config(&prefix);
    config.auth =
        VaultAuth::Kubernetes { mount: mount.clone(), role: "kbs".into(), jwt_file: bao.file("jwt", &jwt("kbs")) };
    let store = VaultStore::connect(config).await.unwrap();
    store.put(new_secret("k/key", b"from a pod")).await.unwrap();
    assert_eq!(store.get("k/key").await.unwrap().value.expose(), b"from a pod");

    let mut config = bao.root_config(&prefix);
    config.auth =
        VaultAuth::Kubernetes { mount, role: "kbs".into(), jwt_file: bao.file("jwt-other", &jwt("another-audience")) };
    assert_connect_unavailable(VaultStore::connect(config).await, "JWT for another audience");
}

#[tokio::test]
async fn token_renewal_keeps_the_store_working_past_the_ttl() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("renew");
    let policy = bao.kv_policy(&prefix).await;
    let token = bao.token(&policy, "3s").await;
    let control = bao.token(&policy, "3s").await;
    let mut config = bao.root_config(&prefix);
    config.auth = VaultAuth::Token(SecretString::from(token));
    let store = VaultStore::connect(config).await.unwrap();
    let start = Instant::now();
    let mut i = 0u8;
    while start.elapsed() < Duration::from_secs(7) {
        store.put(new_secret("r/key", &[i])).await.unwrap();
        assert_eq!(store.get("r/key").await.unwrap().value.expose(), [i]);
        i += 1;
        sleep(Duration::from_millis(250)).await;
    }
    // The same kind of token, never renewed, has expired by now.
    assert_eq!(bao.api_as(&control).call("GET", "auth/token/lookup-self", None).await.0, 403);
    assert!(store.get("r/key").await.is_ok());
}

#[tokio::test]
async fn logs_in_again_when_the_token_reaches_its_max_ttl_or_is_revoked() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("relogin");
    let policy = bao.kv_policy(&prefix).await;
    let (mount, auth) = bao.approle(&policy, "3s", "3s").await;
    let mut config = bao.root_config(&prefix);
    config.auth = auth;
    let store = VaultStore::connect(config).await.unwrap();
    let start = Instant::now();
    let mut i = 0u8;
    while start.elapsed() < Duration::from_secs(7) {
        store.put(new_secret("r/key", &[i])).await.unwrap();
        assert_eq!(store.get("r/key").await.unwrap().value.expose(), [i]);
        i += 1;
        sleep(Duration::from_millis(250)).await;
    }
    // Revoke every token issued by the AppRole mount: the next request is
    // denied, the store logs in again and retries.
    bao.api().ok("PUT", &format!("sys/leases/revoke-prefix/auth/{mount}/login"), None).await;
    assert_eq!(store.get("r/key").await.unwrap().value.expose(), [i - 1]);
}

#[tokio::test]
async fn wrong_or_revoked_token_is_unavailable() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("badtoken");
    let mut config = bao.root_config(&prefix);
    config.auth = VaultAuth::Token(SecretString::from("s.not-a-real-token"));
    assert_connect_unavailable(VaultStore::connect(config).await, "wrong token");

    let policy = bao.kv_policy(&prefix).await;
    let token = bao.token(&policy, "60s").await;
    let mut config = bao.root_config(&prefix);
    config.auth = VaultAuth::Token(SecretString::from(token.clone()));
    let store = VaultStore::connect(config).await.unwrap();
    store.put(new_secret("t/key", b"x")).await.unwrap();
    bao.api().ok("POST", "auth/token/revoke", Some(json!({ "token": token }))).await;
    assert_unavailable(store.get("t/key").await, "get with a revoked token");
    assert_unavailable(store.get("t/missing").await, "get of a missing secret with a revoked token");
    assert_unavailable(store.put(new_secret("t/key", b"y")).await, "put with a revoked token");
}

#[tokio::test]
async fn a_mount_that_is_not_kv_v2_fails_at_start() {
    let Some(bao) = Bao::shared().await else { return };
    let kv1 = format!("kv1-{}", random_hex());
    bao.api()
        .ok("POST", &format!("sys/mounts/{kv1}"), Some(json!({ "type": "kv", "options": { "version": "1" } })))
        .await;
    for mount in ["no-such-mount", "cubbyhole", kv1.as_str()] {
        let mut config = bao.root_config("mounts");
        config.mount = mount.to_owned();
        let result = VaultStore::connect(config).await;
        assert!(matches!(result, Err(ConnectError::Config(_))), "{mount}: {result:?}");
    }
    // An identity with no access to the mount is refused at start too.
    let policy = bao.kv_policy("mounts").await;
    let token = bao.token(&policy, "60s").await;
    let mut config = bao.root_config("mounts");
    config.mount = kv1;
    config.auth = VaultAuth::Token(SecretString::from(token));
    assert!(matches!(VaultStore::connect(config).await, Err(ConnectError::Config(_))));
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_acknowledged_once() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("lost-answer");
    let upstream = bao.addr.trim_start_matches("http://").to_owned();
    let armed = Arc::new(AtomicBool::new(true));
    let noop: Hook = Arc::new(|| Box::pin(async {}));
    let trigger = format!("POST /v1/secret/data/{prefix}/w/key ");
    let proxy = start_proxy_with(upstream, trigger, Arc::clone(&armed), noop, true).await;
    // The first address has nothing listening: requests fail over to the
    // second, which loses the answer to the first write.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = bao.root_config(&prefix);
    config.address = format!("http://{closed}");
    config.fallback_addresses = vec![proxy];
    let store = VaultStore::connect(config).await.unwrap();

    // The write landed although its answer was lost: it is acknowledged,
    // as version 1, and no second version is made by the retry.
    let meta = store.put(with_expected("w/key", b"first", 0)).await.unwrap();
    assert!(!armed.load(Ordering::SeqCst), "the proxy did not see the write");
    assert_eq!((meta.version, meta.versions.as_slice()), (1, &[1][..]));
    let record = store.get("w/key").await.unwrap();
    assert_eq!((record.value.expose(), record.meta.versions.as_slice()), (&b"first"[..], &[1][..]));

    // A concurrent writer's version is not taken for one's own: a lost
    // answer to a write that lost the race is a conflict.
    let other = bao.root_store(&prefix).await;
    other.put(with_expected("w/key", b"other", 1)).await.unwrap();
    armed.store(true, Ordering::SeqCst);
    let result = store.put(with_expected("w/key", b"late", 1)).await;
    assert!(!armed.load(Ordering::SeqCst), "the proxy did not see the late write");
    assert!(matches!(result, Err(StoreError::Conflict { expected: 1, found: 2 })), "{result:?}");
    assert_eq!(store.get("w/key").await.unwrap().value.expose(), b"other");
}

#[tokio::test]
async fn server_down_is_unavailable() {
    let Some(bao) = start_bao(false).await else { return };
    let store = bao.root_store("down").await;
    store.put(new_secret("x/key", b"x")).await.unwrap();
    drop(bao);
    assert_unavailable(store.get("x/key").await, "get");
    assert_unavailable(store.get("x/missing").await, "get of a missing secret");
    assert_unavailable(store.metadata("x/key").await, "metadata");
    assert_unavailable(store.put(new_secret("x/key", b"y")).await, "put");
    assert_unavailable(store.put(with_expected("x/key", b"y", 1)).await, "put with CAS");
    assert_unavailable(store.list("", None, 10).await, "list");
    assert_unavailable(store.delete("x/key").await, "delete");
    assert_unavailable(store.soft_delete("x/key").await, "soft delete");

    // Nothing listening at all.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config =
        VaultConfig::new(format!("http://127.0.0.1:{port}"), VaultAuth::Token(SecretString::from("s.whatever")));
    assert_connect_unavailable(VaultStore::connect(config).await, "closed port");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_unavailable() {
    if skip_requested() {
        return;
    }
    // The kernel accepts the connection; nobody ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = VaultConfig::new(
        format!("http://{}", silent.local_addr().unwrap()),
        VaultAuth::Token(SecretString::from("s.whatever")),
    );
    config.request_timeout = Duration::from_millis(300);
    let start = Instant::now();
    assert_connect_unavailable(VaultStore::connect(config).await, "silent server");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn tls_is_verified_by_default() {
    let Some(bao) = start_bao(true).await else { return };
    let ca = bao.ca.clone().unwrap();

    let store = VaultStore::connect(bao.root_config("tls")).await.unwrap();
    store.put(new_secret("t/key", b"over tls")).await.unwrap();
    assert_eq!(store.get("t/key").await.unwrap().value.expose(), b"over tls");

    // The platform trust store does not know the dev CA.
    let mut config = bao.root_config("tls");
    config.ca_bundle = None;
    assert_connect_unavailable(VaultStore::connect(config).await, "unknown CA");

    // Another CA is not accepted either.
    let other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let other_ca = other.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut config = bao.root_config("tls");
    config.ca_bundle = Some(bao.file("other-ca.pem", &other_ca.pem()));
    assert_connect_unavailable(VaultStore::connect(config).await, "another CA");

    // Only an explicit opt-out skips verification.
    let mut config = bao.root_config("tls");
    config.ca_bundle = None;
    config.insecure_skip_verify = true;
    let insecure = VaultStore::connect(config).await.unwrap();
    assert_eq!(insecure.get("t/key").await.unwrap().value.expose(), b"over tls");
    assert!(ca.is_file());
}

/// Collects everything a subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn values_and_credentials_never_reach_the_logs() {
    let Some(bao) = Bao::shared().await else { return };
    let prefix = unique_prefix("logs");
    let policy = bao.kv_policy(&prefix).await;
    let (_, auth) = bao.approle(&policy, "60s", "120s").await;
    let VaultAuth::AppRole { secret_id_file, .. } = &auth else { unreachable!() };
    let secret_id = fs::read_to_string(secret_id_file).unwrap().trim().to_owned();
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The current-thread runtime runs every task of this test on this
    // thread, so the thread-local subscriber sees all of them.
    let _guard = tracing::subscriber::set_default(subscriber);

    let marker = b"MODEL-KEY-MARKER-0123456789";
    let mut config = bao.root_config(&prefix);
    config.auth = auth.clone();
    let store = VaultStore::connect(config).await.unwrap();
    store.put(new_secret("l/key", marker)).await.unwrap();
    assert_eq!(store.get("l/key").await.unwrap().value.expose(), marker);
    assert!(matches!(store.put(with_expected("l/key", marker, 7)).await, Err(StoreError::Conflict { .. })));
    store.list("", None, 10).await.unwrap();
    let root_store = bao.root_store(&prefix).await;
    assert_eq!(root_store.get("l/key").await.unwrap().value.expose(), marker);
    let _ = root_store.get("l/missing").await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("connected to the Vault/OpenBao secret store"), "nothing was captured");
    for (what, needle) in [
        ("value", String::from_utf8(marker.to_vec()).unwrap()),
        ("base64 value", B64.encode(marker)),
        ("secret ID", secret_id),
        ("root token", bao.root.clone()),
    ] {
        assert!(!logs.contains(&needle), "the {what} appears in the logs");
    }
}

#[tokio::test]
async fn invalid_configuration_is_rejected_before_any_request() {
    let token = || VaultAuth::Token(SecretString::from("s.token"));
    let cases = [
        VaultConfig::new("not a url", token()),
        VaultConfig::new("ftp://127.0.0.1:1", token()),
        VaultConfig::new("http://127.0.0.1:1/some/path", token()),
        VaultConfig { mount: "../sys".into(), ..VaultConfig::new("http://127.0.0.1:1", token()) },
        VaultConfig { prefix: "a/../b".into(), ..VaultConfig::new("http://127.0.0.1:1", token()) },
        VaultConfig { namespace: Some("bad\nns".into()), ..VaultConfig::new("http://127.0.0.1:1", token()) },
        VaultConfig::new("http://127.0.0.1:1", VaultAuth::Token(SecretString::from("two\nlines"))),
        VaultConfig {
            ca_bundle: Some(Path::new("/nonexistent/ca.pem").to_path_buf()),
            ..VaultConfig::new("https://127.0.0.1:1", token())
        },
    ];
    for config in cases {
        let shown = format!("{config:?}");
        assert!(
            matches!(VaultStore::connect(config).await, Err(ConnectError::Config(_))),
            "accepted an invalid configuration: {shown}"
        );
    }
}
