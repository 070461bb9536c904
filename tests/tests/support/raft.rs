//! A real 3-node OpenBao cluster with Raft integrated storage on loopback,
//! for the HA tests (`#[path]`-included next to `bao.rs`).
//!
//! Not dev mode: each node has its own HCL configuration (`storage "raft"`
//! with `retry_join` to the other nodes, a plain-http listener on a free
//! loopback port, `api_addr` and `cluster_addr` on loopback). Node 1 is
//! initialized with one key share (`bao operator init -key-shares=1
//! -key-threshold=1`), every node is unsealed, nodes 2 and 3 join node 1
//! (`bao operator raft join`), and KV v2 is enabled at `secret`. The steps
//! go through the HTTP API those commands call, which saves starting the
//! CLI a dozen times.
//!
//! With [`RaftCluster::start_relayed`], node 3 advertises a cluster address
//! that is a relay in this process ([`Relay`]) in front of its real cluster
//! port: the Raft traffic the leader sends it can be held back at will, so
//! node 3 lags while it still answers on its API port.
//!
//! Each node runs in its own process group under an address-space limit
//! (`ulimit -v`, below a small watchdog shell); [`RaftCluster`] kills every
//! group with SIGKILL when dropped, panics included, and the watchdog stops
//! its node when this process goes away without dropping it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::bao;

/// Address space of one node, in KiB (4 GiB; an idle node maps about
/// 1.5 GiB).
const ADDRESS_SPACE_KIB: u64 = 4 << 20;
/// The Raft FSM's initial memory map; OpenBao's default (tens of GiB of
/// address space) would not fit under the limit.
const INITIAL_MMAP_BYTES: u64 = 64 << 20;
/// Longest wait for any step of the set-up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits the address space, then runs "$@" and kills it when standard
/// input closes (fd 3 keeps the pipe: background jobs of a non-interactive
/// shell read /dev/null).
const NODE_SHELL: &str = r#"ulimit -v "$1" || exit 97
shift
exec 3<&0
"$@" </dev/null &
pid=$!
( read -r _ <&3; kill -KILL "$pid" 2>/dev/null ) &
wait "$pid"
"#;

/// One OpenBao node.
pub struct Node {
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Node {
    /// Kills the node's whole process group with SIGKILL (no clean
    /// shutdown, as a crash or an OOM kill) and reaps it.
    pub fn kill(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            // The group was made with the shell as its leader. `kill` is
            // procps' (the shell built-in of dash takes no group); should it
            // be missing, the watchdog still kills the node when its pipe
            // closes above.
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).stderr(Stdio::null()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the node's process is still there.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A TCP relay in front of one node's cluster port. While it is held, the
/// bytes it reads wait in it: the node receives nothing from the leader
/// (no log entries, no heartbeats) and the leader hears nothing back.
pub struct Relay {
    held: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays `127.0.0.1:{port}` (returned) to `127.0.0.1:{target}`.
    async fn start(target: u16) -> (Relay, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held, _) = watch::channel(false);
        let sender = held.clone();
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { continue };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                pipes.spawn(Self::pipe(in_read, out_write, sender.subscribe()));
                pipes.spawn(Self::pipe(out_read, in_write, sender.subscribe()));
            }
        });
        (Relay { held, task }, port)
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut held: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Whatever was read after `hold` returned waits here.
            if held.wait_for(|held| !*held).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    }

    /// From now on nothing passes until [`Relay::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets the held bytes and everything after them pass.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running 3-node cluster; every node is killed when it is dropped.
pub struct RaftCluster {
    /// The nodes; node 1 (index 0) was initialized and led first.
    pub nodes: Vec<Node>,
    /// The relay in front of node 3's cluster port, if started with one.
    pub relay: Option<Relay>,
    /// The root token.
    pub root: String,
    http: reqwest::Client,
    /// Configurations, data and logs.
    pub dir: tempfile::TempDir,
}

impl Drop for RaftCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

impl RaftCluster {
    /// Starts, initializes, unseals and joins three nodes and enables KV v2
    /// at `secret` keeping `max_versions` versions per secret. With
    /// `standby_reads` false, standbys forward every request to the active
    /// node (`disable_standby_reads`): reads are never stale, and nothing
    /// is served while there is no active node.
    pub async fn start(standby_reads: bool, max_versions: u64) -> RaftCluster {
        Self::start_with(standby_reads, max_versions, false).await
    }

    /// Like [`RaftCluster::start`], with node 3's cluster traffic through a
    /// [`Relay`] (`relay`).
    pub async fn start_relayed(standby_reads: bool, max_versions: u64) -> RaftCluster {
        Self::start_with(standby_reads, max_versions, true).await
    }

    async fn start_with(standby_reads: bool, max_versions: u64, relayed: bool) -> RaftCluster {
        let binary = bao::binary();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| bao::free_port_pair()).collect();
        let api = |port: u16| format!("http://127.0.0.1:{port}");
        let mut nodes = Vec::new();
        let mut relay = None;
        for (i, port) in ports.iter().enumerate() {
            // The cluster address the node advertises: its own port, or the
            // relay's for node 3 of a relayed cluster.
            let advertised = if relayed && i == 2 {
                let (started, relay_port) = Relay::start(port + 1).await;
                relay = Some(started);
                relay_port
            } else {
                port + 1
            };
            let node_dir = dir.path().join(format!("node{}", i + 1));
            fs::create_dir_all(node_dir.join("data")).unwrap();
            let joins: String = ports
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("  retry_join {{\n    leader_api_addr = \"{}\"\n  }}\n", api(*p)))
                .collect();
            // `disable_mlock` is not set: OpenBao never locks memory (it
            // removed mlock and warns about the setting).
            let config = format!(
                r#"storage "raft" {{
  path = "{data}"
  node_id = "node{n}"
  # Elections in about a second: the setting for fast, dedicated hardware.
  performance_multiplier = 1
{joins}}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{advertised}"
disable_standby_reads = {strict}
ui = false
"#,
                data = node_dir.join("data").display(),
                n = i + 1,
                cluster = port + 1,
                strict = !standby_reads,
            );
            let config_path = node_dir.join("config.hcl");
            fs::write(&config_path, config).unwrap();
            let log = node_dir.join("bao.log");
            let out = fs::File::create(&log).unwrap();
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(NODE_SHELL)
                .arg("bao-node")
                .arg(ADDRESS_SPACE_KIB.to_string())
                .arg(&binary)
                .arg("server")
                .arg(format!("-config={}", config_path.display()))
                .env("BAO_RAFT_INITIAL_MMAP_SIZE", INITIAL_MMAP_BYTES.to_string())
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            let stdin = child.stdin.take();
            nodes.push(Node { addr: api(*port), log, child: Some(child), stdin });
        }
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(5)).tls_certs_only(Vec::new()).build().unwrap();
        let mut cluster = RaftCluster { nodes, relay, root: String::new(), http, dir };
        for i in 0..3 {
            cluster.wait_for(i, "its listener", |status, _| status.is_some()).await;
        }

        // bao operator init -key-shares=1 -key-threshold=1 (on node 1)
        let (status, init) =
            cluster.call(0, "PUT", "sys/init", Some(json!({"secret_shares": 1, "secret_threshold": 1}))).await;
        assert_eq!(status, 200, "init: {init}");
        let key = init["keys_base64"][0].as_str().unwrap().to_owned();
        cluster.root = init["root_token"].as_str().unwrap().to_owned();
        // bao operator unseal (node 1), which then leads alone.
        cluster.unseal(0, &key).await;
        cluster.wait_for(0, "active", |status, _| status == Some(200)).await;
        // New voters are promoted after a second of stability instead of
        // ten; dead servers are never removed during a test.
        let autopilot = json!({"server_stabilization_time": "1s", "cleanup_dead_servers": false});
        let (status, body) = cluster.call(0, "POST", "sys/storage/raft/autopilot/configuration", Some(autopilot)).await;
        assert!(matches!(status, 200 | 204), "autopilot configuration: {status} {body}");
        // bao operator raft join (nodes 2 and 3), then unseal them.
        let leader = cluster.nodes[0].addr.clone();
        for i in 1..3 {
            let (status, body) =
                cluster.call(i, "PUT", "sys/storage/raft/join", Some(json!({"leader_api_addr": leader}))).await;
            assert_eq!((status, &body["joined"]), (200, &json!(true)), "node {} join: {body}", i + 1);
            cluster.unseal(i, &key).await;
        }
        for i in 1..3 {
            cluster.wait_for(i, "standby", |status, _| status == Some(429)).await;
        }
        cluster
            .wait_for(0, "three voters", |_, raft| {
                raft.and_then(|r| r["data"]["config"]["servers"].as_array().cloned())
                    .is_some_and(|s| s.len() == 3 && s.iter().all(|s| s["voter"] == json!(true)))
            })
            .await;

        // bao secrets enable -version=2 -path=secret kv
        let (status, body) = cluster
            .call(0, "POST", "sys/mounts/secret", Some(json!({"type": "kv", "options": {"version": "2"}})))
            .await;
        assert!(matches!(status, 200 | 204), "enabling KV v2: {status} {body}");
        // The new mount refuses requests until its set-up is done.
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let (status, _) =
                cluster.call(0, "POST", "secret/config", Some(json!({"max_versions": max_versions}))).await;
            if matches!(status, 200 | 204) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "KV v2 did not become ready; node 1 log:\n{}",
                cluster.nodes[0].log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster
    }

    /// `method /v1/{path}` on node `i` as root: the status (0 when no
    /// answer) and the JSON body (null when none).
    pub async fn call(&self, i: usize, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/v1/{path}", self.nodes[i].addr);
        let mut request = self.http.request(method.parse().unwrap(), url);
        if !self.root.is_empty() {
            request = request.header("X-Vault-Token", &self.root);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok());
                (status, body.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// The node that is active now (answers `sys/health` with 200).
    pub async fn active(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() && self.call(i, "GET", "sys/health", None).await.0 == 200 {
                return Some(i);
            }
        }
        None
    }

    async fn unseal(&self, i: usize, key: &str) {
        let (status, body) = self.call(i, "PUT", "sys/unseal", Some(json!({"key": key}))).await;
        assert_eq!(status, 200, "node {} unseal: {body}", i + 1);
    }

    /// Polls node `i`'s health status and Raft configuration until `ready`
    /// says so; panics with the node's log after [`STEP_TIMEOUT`].
    async fn wait_for(&mut self, i: usize, what: &str, ready: impl Fn(Option<u16>, Option<Value>) -> bool) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if !self.nodes[i].running() {
                panic!(
                    "OpenBao node {} exited while waiting for {what}; its log:\n{}",
                    i + 1,
                    self.nodes[i].log_text()
                );
            }
            let url = format!("{}/v1/sys/health", self.nodes[i].addr);
            let health = self.http.get(url).send().await.ok().map(|r| r.status().as_u16());
            let raft = match (&self.root, health) {
                (root, Some(200)) if !root.is_empty() => {
                    Some(self.call(i, "GET", "sys/storage/raft/configuration", None).await.1)
                }
                _ => None,
            };
            if ready(health, raft) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "OpenBao node {} not {what} after {STEP_TIMEOUT:?}; its log:\n{}",
                    i + 1,
                    self.nodes[i].log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
