//! `kbs-bench`: a load generator for the key broker.
//!
//! N concurrent simulated guests each run the whole guest flow in a loop:
//! `GetChallenge`, evidence signed here by the INSECURE simulated SEV-SNP
//! or TDX TEE (real report and quote formats, test PKIs), `ReleaseSecrets`,
//! HPKE open, and a byte-for-byte check of the released secret. Each guest keeps one TLS
//! connection (`--reconnect` makes a new TCP + TLS connection per release,
//! as a pod's init container does; `--resume` then keeps the TLS sessions
//! and resumes them with the broker's session tickets). `--coco` runs the
//! CoCo KBS protocol instead (auth, attest, resource GET, JWE open and
//! byte check, one new connection per flow), `--coco-gets` only resource
//! GETs with a token on kept-alive connections. `--flood-challenges R`
//! adds one peer sending R challenge requests per second from another
//! loopback address and compares the guests' p99 without and with it.
//! `--metrics-overhead R` runs R pairs of phases against two spawned
//! brokers, one without metrics and one with its metrics listener scraped
//! every second, and compares their CPU per release. `--rate R` runs an
//! open loop: the guests together start R releases per second on fixed
//! schedules, and each latency counts from the scheduled start (so a
//! saturated broker shows as latency, not as a lower offered load). For each concurrency level
//! it prints releases (or flows, or GETs)/s, latency percentiles, errors by
//! reason code and, when it can see the broker's CPU accounting, the
//! broker's CPU time per release and its ratio to "the floor" (the
//! unavoidable crypto of one release, measured in this process just before
//! and just after each level, so that the two share the machine's state).
//!
//! Targets:
//! - `--kbs URL --ca CA.pem`: a running broker (started with
//!   `--insecure-dev` and the test ARK). `--admin URL --admin-token-file F`
//!   uploads the benchmark secret first; otherwise `--expect-file F` gives
//!   the bytes to check. `--broker-pid PID` reads its CPU time and RSS from
//!   `/proc/PID`. TDX guests sign under a test PKI the broker must pin:
//!   `--write-tdx-pki DIR` makes one (its root and collateral go to `kbs
//!   dev-init`), and `--tdx-pki DIR/pki.json` signs with it.
//! - `--spawn`: a broker in this process (a dev set-up in a temporary
//!   directory), on its own runtime whose threads are named `kbs-broker`,
//!   so its CPU time is the sum over those threads.
//!
//! Load is bounded in time and count and goes to 127.0.0.1 only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use attester_client::client::{ClientConfig, Error as ClientError, KbsClient};
use attester_client::evidence::EvidenceSource;
use attester_client::simulated::{Generation, SimulatedSnp, SimulatedTdx, TdxTestPki, test_ark_pem};
use clap::{Parser, ValueEnum};
use kbs_proto::SuiteId;
use kbs_proto::v1::PutSecretRequest;
use kbs_proto::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[path = "kbs-bench/coco.rs"]
mod coco;
#[path = "kbs-bench/flood.rs"]
mod flood;
#[path = "kbs-bench/metrics.rs"]
mod metrics;
#[path = "kbs-bench/pin.rs"]
mod pin;

// The global allocator is mimalloc, declared by regorus (its
// `allocator-memory-limits` feature): the release path allocates many small,
// short-lived objects (HTTP/2 frames, policy values), which it serves
// markedly faster than the system allocator, and its per-thread counters
// bound policy evaluations (`policy.max_memory_mib`).

/// Hard caps, whatever the flags say.
const MAX_CONCURRENCY: usize = 1024;
const MAX_PHASE: Duration = Duration::from_secs(3600);
const MAX_RELEASES: u64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TeeArg {
    /// AMD SEV-SNP (simulated).
    Snp,
    /// Intel TDX (simulated). The test PKI is made in this process, or
    /// for a separately started broker, read from `--tdx-pki`.
    Tdx,
    /// The CoCo `sample` TEE (unsigned evidence; `--coco` only).
    Sample,
}

#[derive(Debug, Parser)]
#[command(name = "kbs-bench", about = "Load generator for the key broker (simulated guests; INSECURE test tool)")]
struct Args {
    /// Broker guest URL, https://127.0.0.1:PORT or https://localhost:PORT.
    #[arg(long, conflicts_with = "spawn", required_unless_present_any = ["spawn", "write_tdx_pki"])]
    kbs: Option<String>,
    /// CA certificate (PEM) the broker's certificate chains to.
    #[arg(long, requires = "kbs")]
    ca: Option<PathBuf>,
    /// Start a broker in this process (dev set-up in a temporary directory).
    #[arg(long)]
    spawn: bool,
    /// Admin URL of the broker, to upload the benchmark secret.
    #[arg(long, requires = "admin_token_file")]
    admin: Option<String>,
    /// Admin bearer token file.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The bytes the secret must have (when not uploaded by this tool).
    #[arg(long)]
    expect_file: Option<PathBuf>,
    /// The broker's process id: its CPU time (utime + stime) and RSS.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Which TEE the guests simulate.
    #[arg(long, value_enum, default_value = "snp")]
    tee: TeeArg,
    /// Concurrent guests; a comma-separated list runs one phase per value.
    #[arg(long, short = 'c', value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
    /// Seconds per phase.
    #[arg(long, short = 't', default_value_t = 10)]
    duration: u64,
    /// Stop a phase after this many releases (whichever comes first).
    #[arg(long, short = 'n')]
    releases: Option<u64>,
    /// Secret name.
    #[arg(long, default_value = "bench/model/key")]
    secret: String,
    /// Launch measurement of the simulated guests (96 hex digits).
    #[arg(long, default_value_t = hex::encode([0x5a; 48]))]
    measurement: String,
    /// Open loop: the guests together start this many releases (flows,
    /// GETs) per second, each guest on a fixed schedule of its own, and a
    /// release's latency counts from its scheduled start, so a slow answer
    /// that delays the next start is not hidden. Without it each guest
    /// starts its next release when the last one ends (closed loop).
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// Per-release timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// A new TCP + TLS connection for every release (a pod's init container).
    #[arg(long)]
    reconnect: bool,
    /// Keep TLS sessions (one client session store for all guests) and
    /// resume them on each new connection; a spawned broker then seals
    /// session tickets under a ticket key file (`server.tls_ticket_key_file`).
    #[arg(long)]
    resume: bool,
    /// The CoCo KBS protocol: a new connection per flow of auth, attest,
    /// resource GET and JWE open.
    #[arg(long, conflicts_with = "reconnect")]
    coco: bool,
    /// With `--coco`: each guest attests once, then only GETs the resource
    /// with its token on a kept-alive connection.
    #[arg(long, requires = "coco")]
    coco_gets: bool,
    /// The CoCo listener's URL, https://localhost:PORT (with `--kbs`).
    #[arg(long, conflicts_with = "spawn")]
    coco_url: Option<String>,
    /// Skip measuring the floor.
    #[arg(long)]
    no_floor: bool,
    /// One more peer sends this many `GetChallenge` requests per second
    /// from `--flood-from`; each concurrency level then runs
    /// `--flood-rounds` pairs of phases, without and with the flood, and
    /// the guests' p99 latencies are compared. Kept-alive guests then
    /// connect each from an address of its own (127.0.1.x), and a spawned
    /// broker keeps the production rate limits.
    #[arg(long, conflicts_with_all = ["coco", "reconnect"])]
    flood_challenges: Option<u32>,
    /// The flooding peer's address (loopback, not 127.0.0.1).
    #[arg(long, default_value = "127.0.0.2", requires = "flood_challenges")]
    flood_from: std::net::IpAddr,
    /// HTTP/2 connections the flooding peer spreads its requests over.
    #[arg(long, default_value_t = 8, requires = "flood_challenges")]
    flood_connections: usize,
    /// Pairs of phases (without, with the flood) per concurrency level.
    #[arg(long, default_value_t = 3, requires = "flood_challenges")]
    flood_rounds: usize,
    /// Seconds the flood runs before each flooded phase starts: 0 measures
    /// the guests across the flood's start; longer, against a flood the
    /// broker has already been answering for that long.
    #[arg(long, default_value_t = 0, requires = "flood_challenges")]
    flood_lead: u64,
    /// The cost of metrics: two spawned brokers, one without metrics and
    /// one with its metrics listener scraped every second (as Prometheus
    /// would), each concurrency level running this many pairs of phases,
    /// one against each broker, in alternating order; then their broker
    /// CPU per release is compared.
    #[arg(long, requires = "spawn", conflicts_with_all = ["coco", "reconnect", "flood_challenges"])]
    metrics_overhead: Option<usize>,
    /// With `--spawn`: the broker's threads on the first CPU this process
    /// may use and every other thread (the guests', the flooding peer's)
    /// on the others, the flooding peer's at the lowest priority, so that
    /// a latency measures the broker rather than the generator's share of
    /// the broker's cores (Linux; needs 2 CPUs).
    #[arg(long, requires = "spawn")]
    pin: bool,
    /// Store cache TTL for the spawned broker (ms; 0 = off).
    #[arg(long)]
    spawn_cache_ttl_ms: Option<u64>,
    /// The spawned broker writes its audit records without `fdatasync`
    /// (`audit.sync = false`), to measure what the sync costs.
    #[arg(long, requires = "spawn")]
    spawn_no_audit_sync: bool,
    /// Write a new TDX test PKI to this directory and exit: `pki.json`
    /// (keys included, for `--tdx-pki`), `tdx-test-root.pem` (for `kbs
    /// dev-init --tdx-test-root`) and `tdx-collateral/` (for
    /// `--tdx-collateral-dir`).
    #[arg(long, exclusive = true)]
    write_tdx_pki: Option<PathBuf>,
    /// The TDX test PKI (a `pki.json` from `--write-tdx-pki`) that the
    /// running broker pins, for `--tee tdx` against `--kbs`.
    #[arg(long, conflicts_with = "spawn")]
    tdx_pki: Option<PathBuf>,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.01..=1e6).contains(&r) => Ok(r),
        _ => Err(format!("{s:?}: a rate from 0.01 to 1000000 per second")),
    }
}

/// `--write-tdx-pki`: the files a development broker and later runs need.
fn write_tdx_pki(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = TdxTestPki::generate()?;
    let saved = dir.join("pki.json");
    pki.save(&saved).with_context(|| format!("writing {} (it must not exist yet)", saved.display()))?;
    let (root, collateral) = pki.write_broker_files(dir)?;
    println!("INSECURE TDX test PKI written to {}", dir.display());
    println!(
        "broker:     kbs dev-init ... --tdx-test-root {} --tdx-collateral-dir {}",
        root.display(),
        collateral.display()
    );
    println!("kbs-bench:  kbs-bench --tee tdx --tdx-pki {} --kbs ...", saved.display());
    Ok(())
}

/// Where the broker's CPU time comes from.
#[derive(Debug, Clone)]
enum CpuSource {
    /// `/proc/PID/stat`.
    Pid(u32),
    /// Threads of this process whose name starts with one of the prefixes.
    Threads(&'static [&'static str]),
    None,
}

impl CpuSource {
    /// CPU seconds so far, if readable.
    fn seconds(&self, tick: f64) -> Option<f64> {
        match self {
            Self::Pid(pid) => proc_stat_ticks(&format!("/proc/{pid}/stat")).map(|t| t as f64 / tick),
            Self::Threads(prefixes) => {
                let mut total = 0u64;
                for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
                    let path = entry.path();
                    let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                    if prefixes.iter().any(|p| comm.starts_with(p)) {
                        total += proc_stat_ticks(&path.join("stat").display().to_string()).unwrap_or(0);
                    }
                }
                Some(total as f64 / tick)
            }
            Self::None => None,
        }
    }

    fn rss_kib(&self) -> Option<u64> {
        let path = match self {
            Self::Pid(pid) => format!("/proc/{pid}/status"),
            Self::Threads(_) => "/proc/self/status".to_owned(),
            Self::None => return None,
        };
        let text = std::fs::read_to_string(path).ok()?;
        let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// utime + stime (clock ticks) from a `/proc/.../stat` file.
fn proc_stat_ticks(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces and parentheses; fields resume
    // after the last ')'. Counting from field 3 (state), utime is field 14.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// A broker running in this process on its own runtime.
struct Spawned {
    url: String,
    coco_url: Option<String>,
    /// `http://127.0.0.1:PORT/metrics` when its metrics listener is on.
    metrics_url: Option<String>,
    ca: Vec<u8>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// A broker as `args` say (`--spawn-*`, `--tee`, `--coco`, `--resume`),
    /// holding the secret `value` for `measurement`, on threads named
    /// `kbs-broker`, without metrics.
    fn start(args: &Args, value: &[u8], measurement: &str) -> anyhow::Result<Self> {
        Self::start_named(args, value, measurement, "kbs-broker", false)
    }

    /// [`Self::start`] on threads named `threads`, with its metrics
    /// listener (`[metrics]`) when `metrics`.
    fn start_named(
        args: &Args,
        value: &[u8],
        measurement: &str,
        threads: &'static str,
        metrics: bool,
    ) -> anyhow::Result<Self> {
        let (secret, cache_ttl_ms, tee, coco) = (&args.secret, args.spawn_cache_ttl_ms, args.tee, args.coco);
        let (ticket_key, audit_sync) = (args.resume, !args.spawn_no_audit_sync);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(threads)
            // Blocking-pool threads must outlive the run for the per-thread
            // CPU accounting to see all of the broker's time.
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()?;
        let dir = tempfile::tempdir()?;
        let ark = dir.path().join("test-ark.pem");
        std::fs::write(&ark, test_ark_pem())?;
        let mut options = kbs::dev::DevOptions {
            guest_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            snp_test_roots: vec![ark],
            cache_ttl_ms,
            coco_listen: coco.then(|| "127.0.0.1:0".to_owned()),
            metrics_listen: metrics.then(|| "127.0.0.1:0".to_owned()),
            ..Default::default()
        };
        if tee == TeeArg::Tdx {
            // The TDX test root and its collateral, made in this process.
            let (root, collateral) = TdxTestPki::get()?.write_broker_files(dir.path())?;
            options.tdx_test_roots = vec![root];
            options.tdx_collateral_dir = Some(collateral);
        }
        let files = kbs::dev::init(dir.path(), &options)?;
        if ticket_key {
            // Session tickets sealed under a key file, as replicas share.
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join("tls-ticket.key");
            std::fs::write(&key, hex::encode(rand::random::<[u8; 32]>()))?;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            let text = std::fs::read_to_string(&files.config)?;
            let line = format!("[server]\ntls_ticket_key_file = {:?}\n", key.display().to_string());
            std::fs::write(&files.config, text.replacen("[server]\n", &line, 1))?;
        }
        if args.flood_challenges.is_some() {
            // The production rate limits, not the development set-up's.
            let text = std::fs::read_to_string(&files.config)?;
            let dev_limits = "per_peer_per_second = 1000000\nglobal_per_second = 1000000\n";
            if !text.contains(dev_limits) {
                bail!("the development configuration no longer has the rate limits this tool replaces");
            }
            std::fs::write(&files.config, text.replacen(dev_limits, "", 1))?;
        }
        if !audit_sync {
            let text = std::fs::read_to_string(&files.config)?;
            std::fs::write(&files.config, text.replacen("[audit]\n", "[audit]\nsync = false\n", 1))?;
        }
        let config = kbs::config::Config::load(&files.config, |_| None)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let name = secret.to_owned();
        let value = value.to_vec();
        let allowed = vec![measurement.to_owned()];
        let (port, coco_port, metrics_port) = runtime.block_on(async move {
            let app = kbs::server::build(&config, kbs::release::system_clock(), true).await?;
            app.broker
                .store()
                .put(kbs::store::NewSecret {
                    name,
                    value: kbs::store::SecretValue::new(value),
                    labels: BTreeMap::new(),
                    allowed_measurements: allowed,
                    expected_version: None,
                })
                .await?;
            let guest = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = guest.local_addr()?.port();
            let coco = match coco {
                true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
                false => None,
            };
            let coco_port = coco.as_ref().map(|l| l.local_addr()).transpose()?.map(|a| a.port());
            let metrics = match metrics {
                true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
                false => None,
            };
            let metrics_port = metrics.as_ref().map(|l| l.local_addr()).transpose()?.map(|a| a.port());
            let listeners = kbs::server::Listeners { guest, admin, coco, metrics };
            tokio::spawn(async move {
                if let Err(e) = kbs::server::run_listeners(app, listeners, async move {
                    let _ = rx.await;
                })
                .await
                {
                    eprintln!("spawned broker stopped: {e}");
                }
            });
            anyhow::Ok((port, coco_port, metrics_port))
        })?;
        Ok(Self {
            url: format!("https://localhost:{port}"),
            coco_url: coco_port.map(|p| format!("https://localhost:{p}")),
            metrics_url: metrics_port.map(|p| format!("http://127.0.0.1:{p}/metrics")),
            ca: std::fs::read(&files.ca)?,
            stop: Some(tx),
            runtime: Some(runtime),
            _dir: dir,
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// What one guest saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

/// New TCP + TLS connections to the broker, with rustls directly, so that
/// sessions can be kept and resumed and each handshake's kind counted.
struct Dialer {
    tls: rustls::ClientConfig,
    resume: bool,
    port: u16,
    full: AtomicU64,
    resumed: AtomicU64,
}

impl Dialer {
    /// A dialer to `localhost:port` trusting `ca`, offering `alpn`; with
    /// `resume`, one session store (tickets) for every connection.
    fn new(ca: &[u8], port: u16, resume: bool, alpn: &[u8]) -> anyhow::Result<Self> {
        Ok(Self {
            tls: client_tls(ca, resume, alpn)?,
            resume,
            port,
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        })
    }

    /// One guest's TLS configuration: with `resume`, a session store of
    /// its own, as every pod has.
    fn session(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(guest_tls(&self.tls, self.resume))
    }

    async fn dial(
        &self,
        tls: &Arc<rustls::ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(tls)).connect(name, tcp).await?;
        match tls.get_ref().1.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => self.resumed.fetch_add(1, Ordering::Relaxed),
            _ => self.full.fetch_add(1, Ordering::Relaxed),
        };
        Ok(tls)
    }

    /// A gRPC channel over one new connection.
    async fn channel(self: &Arc<Self>, tls: &Arc<rustls::ClientConfig>) -> Result<Channel, String> {
        let (dialer, tls) = (Arc::clone(self), Arc::clone(tls));
        // The connector makes the TLS connection; the URI only names the host.
        tonic::transport::Endpoint::from_shared(format!("http://localhost:{}", self.port))
            .map_err(|_| "client_config".to_owned())?
            .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let (dialer, tls) = (Arc::clone(&dialer), Arc::clone(&tls));
                async move { dialer.dial(&tls).await.map(hyper_util::rt::TokioIo::new) }
            }))
            .await
            .map_err(|_| "connect".to_owned())
    }

    fn counts(&self) -> (u64, u64) {
        (self.full.load(Ordering::Relaxed), self.resumed.load(Ordering::Relaxed))
    }
}

/// `base` with a session store of its own when `resume`.
fn guest_tls(base: &rustls::ClientConfig, resume: bool) -> rustls::ClientConfig {
    let mut config = base.clone();
    if resume {
        config.resumption = rustls::client::Resumption::in_memory_sessions(8);
    }
    config
}

/// TLS 1.3 client configuration trusting `ca`, with a session store when
/// `resume` (tickets kept and offered), none otherwise.
fn client_tls(ca: &[u8], resume: bool, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.context("the CA file")?)?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = match resume {
        true => rustls::client::Resumption::in_memory_sessions(8),
        false => rustls::client::Resumption::disabled(),
    };
    Ok(config)
}

/// Everything a guest loop needs.
struct Load {
    config: ClientConfig,
    source: Arc<dyn EvidenceSource>,
    names: Vec<String>,
    expected: Vec<u8>,
    timeout: Duration,
    /// New connections per release through this dialer (`--reconnect`).
    dialer: Option<Arc<Dialer>>,
    /// The CoCo protocol instead (`--coco`).
    coco: Option<Arc<coco::Coco>>,
    /// With `coco`: GETs only, after one attestation per guest.
    coco_gets: bool,
    deadline: Instant,
    budget: Arc<AtomicU64>,
    /// Open loop (`--rate`): each guest's time between scheduled starts.
    period: Option<Duration>,
    /// Kept-alive guests connect each from an address of its own (with
    /// `--flood-challenges`, so that per-address limits see them apart
    /// from the flooding peer): the TLS configuration and the port.
    own_addresses: Option<(Arc<rustls::ClientConfig>, u16)>,
}

impl Load {
    /// The same work with another deadline and budget.
    fn with(&self, deadline: Instant, budget: u64) -> Self {
        Self {
            config: self.config.clone(),
            source: Arc::clone(&self.source),
            names: self.names.clone(),
            expected: self.expected.clone(),
            timeout: self.timeout,
            dialer: self.dialer.clone(),
            coco: self.coco.clone(),
            coco_gets: self.coco_gets,
            deadline,
            budget: Arc::new(AtomicU64::new(budget)),
            period: None,
            own_addresses: self.own_addresses.clone(),
        }
    }
}

/// One guest's connection state between its releases.
#[derive(Default)]
struct Guest {
    grpc: Option<KbsClient>,
    attested: Option<coco::Attested>,
    /// Its TLS configuration (and session store) for new connections.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Load {
    /// A new guest's TLS configuration, for new connections.
    fn guest_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        match (&self.dialer, &self.coco) {
            (Some(d), _) => Some(d.session()),
            (None, Some(c)) => Some(Arc::new(guest_tls(&c.tls, c.resume))),
            (None, None) => None,
        }
    }
}

fn classify(e: &ClientError) -> String {
    match e {
        ClientError::Refused { reason, .. } => reason.clone(),
        ClientError::Rpc { code, .. } => format!("rpc_{code:?}").to_lowercase(),
        ClientError::Connect(_) => "connect".into(),
        ClientError::Protocol(_) => "protocol".into(),
        ClientError::Open { .. } => "open_failed".into(),
        ClientError::NoCommonSuite => "no_common_suite".into(),
        ClientError::Config(_) | ClientError::InvalidRequest(_) => "client_config".into(),
        ClientError::Key(_) | ClientError::Evidence(_) | ClientError::EvidenceTask(_) => "guest_side".into(),
    }
}

/// One release (or CoCo flow, or GET): connect if needed, run it, check
/// the bytes.
async fn one(load: &Load, guest: &mut Guest) -> Result<(), String> {
    let attempt = async {
        if let Some(coco) = &load.coco {
            let tls = guest.tls.get_or_insert_with(|| Arc::new(coco.tls.clone()));
            if !load.coco_gets {
                return coco.flow(tls).await;
            }
            let attested = match guest.attested.take() {
                Some(a) => a,
                None => coco.attest(tls).await?,
            };
            let result = coco.get(&attested).await;
            guest.attested = Some(attested);
            return result;
        }
        let mut c = match (guest.grpc.take(), &load.dialer) {
            (Some(c), _) => c,
            (None, Some(dialer)) => {
                let tls = guest.tls.get_or_insert_with(|| dialer.session());
                KbsClient::from_channel(dialer.channel(tls).await?)
            }
            (None, None) => KbsClient::connect(&load.config).await.map_err(|e| classify(&e))?,
        };
        let released = c.fetch_release(Arc::clone(&load.source), &load.names).await;
        if load.dialer.is_none() {
            guest.grpc = Some(c);
        }
        let released = released.map_err(|e| classify(&e))?;
        match released.secrets.first() {
            Some(s) if released.secrets.len() == 1 && s.value.as_slice() == load.expected.as_slice() => Ok(()),
            _ => Err("wrong_bytes".to_owned()),
        }
    };
    match tokio::time::timeout(load.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => {
            // The connection may be wedged; start afresh.
            guest.grpc = None;
            guest.attested = None;
            Err("timeout".to_owned())
        }
    }
}

/// One guest's releases until the deadline or the budget ends; in the open
/// loop its first scheduled start is `first`.
async fn guest_loop(load: Arc<Load>, mut guest: Guest, first: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut next = first;
    while Instant::now() < load.deadline {
        // Claim one release from the shared budget.
        if load.budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            break;
        }
        let started = match load.period {
            None => Instant::now(),
            Some(period) => {
                if next >= load.deadline {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
                let scheduled = next;
                next += period;
                scheduled
            }
        };
        match one(&load, &mut guest).await {
            Ok(()) => tally.latencies.push(started.elapsed()),
            Err(reason) => *tally.errors.entry(reason).or_default() += 1,
        }
    }
    tally
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median over batches of the CPU microseconds of one run of `once` (this
/// thread's CPU time where the kernel reports it, so that other load on
/// the machine does not inflate it; wall time otherwise).
fn median_us(mut once: impl FnMut() -> anyhow::Result<()>, batches: usize, per_batch: usize) -> anyhow::Result<f64> {
    for _ in 0..per_batch {
        once()?;
    }
    let mut results = Vec::new();
    for _ in 0..batches {
        let (cpu0, wall0) = (thread_cpu_ns(), Instant::now());
        for _ in 0..per_batch {
            once()?;
        }
        let per_op_us = match (cpu0, thread_cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e3 / per_batch as f64,
            _ => wall0.elapsed().as_secs_f64() * 1e6 / per_batch as f64,
        };
        results.push(per_op_us);
    }
    results.sort_by(f64::total_cmp);
    results.get(results.len() / 2).copied().context("no floor batches")
}

/// The report signature check no broker can skip (SNP: one P-384 ECDSA
/// verify over the 0x2A0 signed bytes; TDX: one P-256 ECDSA verify over
/// the quote's header and TD report, the QE report and PCK chain being
/// per-platform; the sample TEE: none), as a closure.
fn signature_check(tee: TeeArg) -> anyhow::Result<Box<dyn FnMut() -> anyhow::Result<()>>> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED,
        ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair, ParsedPublicKey,
    };
    let (signing, verifying, signed_len) = match tee {
        TeeArg::Snp => (&ECDSA_P384_SHA384_FIXED_SIGNING, &ECDSA_P384_SHA384_FIXED, 0x2A0),
        TeeArg::Tdx => (&ECDSA_P256_SHA256_FIXED_SIGNING, &ECDSA_P256_SHA256_FIXED, 48 + 584),
        TeeArg::Sample => return Ok(Box::new(|| Ok(()))),
    };
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::generate(signing).map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = ParsedPublicKey::new(verifying, pair.public_key().as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let signed = vec![0x11u8; signed_len];
    let signature = pair.sign(&rng, &signed).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Box::new(move || public.verify_sig(&signed, signature.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))))
}

/// The floor of one gRPC release: the signature check, one HPKE X25519
/// seal, one challenge open, one SHA-512 binding; aws-lc-rs; CPU
/// microseconds.
fn measure_floor(tee: TeeArg) -> anyhow::Result<f64> {
    let mut verify = signature_check(tee)?;
    let sealer = kbs::challenge::ChallengeSealer::new(&[7; 32], &[])?;
    let names = vec!["bench/model/key".to_owned()];
    let token = sealer.issue(kbs::release::TEE_SNP, &names, i64::MAX)?.token;
    let suite = SuiteId::X25519_SHA256_AES256GCM;
    let key = attester_client::hpke::EphemeralKey::generate(suite)?;
    let recipient = kbs::seal::RecipientKey::parse(suite, key.public_key())?;
    let aad = kbs_proto::secret_aad("bench/model/key", 1);
    let once = || -> anyhow::Result<()> {
        let opened = sealer.open(&token, 0)?;
        let binding = kbs_proto::report_data(&opened.nonce, suite, key.public_key());
        verify()?;
        std::hint::black_box(binding);
        kbs::seal::seal(&recipient, &kbs_proto::secret_info(&opened.nonce), &aad, &[0x42; 32])?;
        Ok(())
    };
    median_us(once, 9, 100)
}

/// One JWE seal of a 32-byte value to an EC P-256 key (`ECDH-ES+A256KW`,
/// `A256GCM`), as the CoCo resource GET makes it.
fn jwe_seal() -> anyhow::Result<impl FnMut() -> anyhow::Result<()>> {
    let guest = aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = guest.compute_public_key().map_err(|e| anyhow::anyhow!("{e}"))?;
    let point = public.as_ref();
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
        "x": b64(point.get(1..33).unwrap_or_default()), "y": b64(point.get(33..65).unwrap_or_default()),
    });
    let key = kbs::api::coco::jwe::TeeKey::from_jwk(&jwk)?;
    Ok(move || {
        std::hint::black_box(key.encrypt(&[0x42; 32])?);
        Ok(())
    })
}

/// The floor of one CoCo flow: the signature check, one ES256 token
/// signature (attest) and its verification (resource GET), one JWE seal;
/// aws-lc-rs; CPU microseconds. With `gets_only`, one JWE seal.
fn measure_coco_floor(tee: TeeArg, gets_only: bool) -> anyhow::Result<f64> {
    let mut seal = jwe_seal()?;
    if gets_only {
        return median_us(seal, 9, 100);
    }
    let mut verify = signature_check(tee)?;
    let token_key = kbs::api::coco::token::TokenKey::generate()?;
    let claims = serde_json::json!({"iss": "kbs", "iat": 0, "exp": i64::MAX / 2, "submods": {"cpu0": {"ear.status": "affirming"}}});
    let once = move || -> anyhow::Result<()> {
        verify()?;
        let token = token_key.sign(&claims)?;
        std::hint::black_box(token_key.verify(&token, 0)?);
        seal()
    };
    median_us(once, 9, 100)
}

struct Phase {
    concurrency: usize,
    ok: usize,
    errors: BTreeMap<String, u64>,
    wall: Duration,
    sorted: Vec<Duration>,
    cpu_per_release_us: Option<f64>,
    rss_start: Option<u64>,
    rss_end: Option<u64>,
    rss_max: Option<u64>,
    /// The floor measured just before and just after the phase.
    floor: Option<(f64, f64)>,
    /// TLS handshakes during the phase: (full, resumed).
    handshakes: Option<(u64, u64)>,
}

impl Phase {
    fn floor(&self) -> Option<f64> {
        self.floor.map(|(a, b)| (a + b) / 2.0)
    }
}

async fn run_phase(
    args: &Args,
    template: &Load,
    concurrency: usize,
    cpu: &CpuSource,
    tick: f64,
    floor: Option<&(dyn Fn() -> anyhow::Result<f64> + Sync)>,
) -> anyhow::Result<Phase> {
    if args.pin {
        pin::threads(&[flood::THREADS])?;
    }
    let mut guests = Vec::with_capacity(concurrency);
    for index in 0..concurrency {
        let kept = template.dialer.is_none() && template.coco.is_none();
        let grpc = match (kept, &template.own_addresses) {
            (false, _) => None,
            (true, None) => Some(KbsClient::connect(&template.config).await?),
            (true, Some((tls, port))) => {
                Some(KbsClient::from_channel(flood::channel(tls, *port, flood::guest_address(index)).await?))
            }
        };
        guests.push(Guest { grpc, attested: None, tls: template.guest_tls() });
    }
    // Warm-up: one release per guest (VEK and store caches, connections,
    // sessions to resume).
    let warm = Arc::new(template.with(Instant::now() + Duration::from_secs(60), 0));
    let mut warmed = Vec::with_capacity(concurrency);
    for mut guest in guests {
        let warm = Arc::clone(&warm);
        warmed.push(tokio::spawn(async move {
            let r = one(&warm, &mut guest).await;
            (r, guest)
        }));
    }
    let mut guests = Vec::with_capacity(concurrency);
    for handle in warmed {
        let (result, guest) = handle.await?;
        if let Err(reason) = result {
            bail!("warm-up release failed: {reason}");
        }
        guests.push(guest);
    }

    let floor_before = floor.map(|f| f()).transpose()?;
    let duration = Duration::from_secs(args.duration).min(MAX_PHASE);
    let budget = args.releases.unwrap_or(MAX_RELEASES).min(MAX_RELEASES);
    let mut load = template.with(Instant::now() + duration, budget);
    // Open loop: guest i starts at i / rate, then every concurrency / rate.
    load.period = args.rate.map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
    let load = Arc::new(load);
    let handshakes_before = template.dialer.as_ref().map(|d| d.counts());
    let rss_start = cpu.rss_kib();
    let rss_max = Arc::new(AtomicU64::new(rss_start.unwrap_or(0)));
    let sampler = {
        let cpu = cpu.clone();
        let rss_max = Arc::clone(&rss_max);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Some(rss) = cpu.rss_kib() {
                    rss_max.fetch_max(rss, Ordering::Relaxed);
                }
            }
        })
    };
    let cpu_start = cpu.seconds(tick);
    let started = Instant::now();
    let step = load.period.map_or(Duration::ZERO, |p| p / u32::try_from(concurrency.max(1)).unwrap_or(u32::MAX));
    let handles: Vec<_> = guests
        .into_iter()
        .zip(0u32..)
        .map(|(g, i)| tokio::spawn(guest_loop(Arc::clone(&load), g, started + step * i)))
        .collect();
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for handle in handles {
        let tally = handle.await?;
        latencies.extend(tally.latencies);
        for (reason, n) in tally.errors {
            *errors.entry(reason).or_default() += n;
        }
    }
    let wall = started.elapsed();
    let cpu_end = cpu.seconds(tick);
    sampler.abort();
    let rss_end = cpu.rss_kib();
    let handshakes = match (handshakes_before, template.dialer.as_ref().map(|d| d.counts())) {
        (Some((f0, r0)), Some((f1, r1))) => Some((f1 - f0, r1 - r0)),
        _ => None,
    };
    let floor_after = floor.map(|f| f()).transpose()?;
    latencies.sort_unstable();
    let total = latencies.len() as u64 + errors.values().sum::<u64>();
    let cpu_per_release_us = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) if total > 0 => Some((b - a) * 1e6 / total as f64),
        _ => None,
    };
    Ok(Phase {
        concurrency,
        ok: latencies.len(),
        errors,
        wall,
        sorted: latencies,
        cpu_per_release_us,
        rss_start,
        rss_end,
        rss_max: rss_start.map(|_| rss_max.load(Ordering::Relaxed).max(rss_end.unwrap_or(0))),
        floor: floor_before.zip(floor_after),
        handshakes,
    })
}

fn print_phase(p: &Phase) {
    let rate = p.ok as f64 / p.wall.as_secs_f64().max(1e-9);
    let cpu = p.cpu_per_release_us.map_or("-".to_owned(), |c| format!("{c:.0}"));
    let ratio = match (p.cpu_per_release_us, p.floor()) {
        (Some(c), Some(f)) if f > 0.0 => format!("{:.2}", c / f),
        _ => "-".to_owned(),
    };
    let kib = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{:.1}", v as f64 / 1024.0));
    let errors: u64 = p.errors.values().sum();
    println!(
        "{:>4} {:>8} {:>6} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7} {:>6} {:>8} {:>8} {:>8}",
        p.concurrency,
        p.ok,
        errors,
        rate,
        ms(percentile(&p.sorted, 50.0)),
        ms(percentile(&p.sorted, 90.0)),
        ms(percentile(&p.sorted, 99.0)),
        ms(p.sorted.last().copied().unwrap_or_default()),
        cpu,
        p.floor().map_or("-".to_owned(), |f| format!("{f:.0}")),
        ratio,
        kib(p.rss_start),
        kib(p.rss_end),
        kib(p.rss_max),
    );
    if let Some((before, after)) = p.floor {
        println!("       floor before / after the phase: {before:.0} / {after:.0} us");
    }
    if let Some((full, resumed)) = p.handshakes {
        println!("       TLS handshakes: {full} full, {resumed} resumed");
    }
    for (reason, n) in &p.errors {
        println!("       error {reason}: {n}");
    }
}

async fn upload(
    admin: &str,
    ca: &[u8],
    token_file: &PathBuf,
    secret: &str,
    measurement: &str,
    value: &[u8],
) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(token_file).context("reading the admin token file")?;
    let channel = Channel::from_shared(admin.to_owned())?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
        .connect()
        .await
        .context("connecting to the admin listener")?;
    let mut req = tonic::Request::new(PutSecretRequest {
        name: secret.to_owned(),
        value: value.to_vec(),
        allowed_measurements: vec![measurement.to_owned()],
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    AdminClient::new(channel).put_secret(req).await.context("uploading the benchmark secret")?;
    Ok(())
}

/// `--flood-challenges`: phases without and with one flooding peer.
struct FloodRun {
    tls: rustls::ClientConfig,
    port: u16,
    rate: u32,
}

impl FloodRun {
    /// `--flood-rounds` pairs of phases at `concurrency`, then the median
    /// p99 of each kind and their ratio. True if a guest's release failed.
    async fn compare(
        &self,
        args: &Args,
        template: &Load,
        concurrency: usize,
        cpu: &CpuSource,
        tick: f64,
        floor: Option<&(dyn Fn() -> anyhow::Result<f64> + Sync)>,
    ) -> anyhow::Result<bool> {
        let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
        let mut failed = false;
        for round in 1..=args.flood_rounds.max(1) {
            println!("       round {round}: without the flood");
            let phase = run_phase(args, template, concurrency, cpu, tick, floor).await?;
            print_phase(&phase);
            failed |= !phase.errors.is_empty() || phase.ok == 0;
            quiet.push(percentile(&phase.sorted, 99.0));

            println!(
                "       round {round}: with {} challenges/s from {} over {} connections, started {} s before the phase",
                self.rate, args.flood_from, args.flood_connections, args.flood_lead
            );
            let (from, connections) = (args.flood_from, args.flood_connections);
            let flood_cpu = CpuSource::Threads(&[flood::THREADS]);
            let flood_cpu_before = flood_cpu.seconds(tick);
            let flood =
                flood::Flood::start(&self.tls, self.port, from, connections, self.rate, &template.names).await?;
            if args.pin {
                let pinned = pin::threads(&[flood::THREADS])?;
                println!(
                    "       pinned: {} broker threads on a CPU of their own, {} others beside it ({} of the flooding peer's at the lowest priority)",
                    pinned.broker, pinned.others, pinned.lowest_priority
                );
            }
            tokio::time::sleep(Duration::from_secs(args.flood_lead)).await;
            // The floor is not measured under the flood: it would measure
            // the flood.
            let phase = run_phase(args, template, concurrency, cpu, tick, None).await;
            let flood_cpu_seconds = flood_cpu.seconds(tick).zip(flood_cpu_before).map(|(b, a)| b - a);
            let (seconds, [ok, limited, cut, other, backlog, waiting], first_failure) = flood.stop();
            let phase = phase?;
            print_phase(&phase);
            failed |= !phase.errors.is_empty() || phase.ok == 0;
            flooded.push(percentile(&phase.sorted, 99.0));
            let per_s = |n: u64| n as f64 / seconds.max(1e-9);
            println!(
                "       flood: {:.0} sent/s: {:.0} challenges/s issued, {:.0}/s refused resource_exhausted, {:.0}/s cut off (connection closed or refused), {:.0}/s other errors, {:.0}/s not sent (client backlog); {} sent and never answered",
                per_s(ok + limited + cut + other + waiting),
                per_s(ok),
                per_s(limited),
                per_s(cut),
                per_s(other),
                per_s(backlog),
                waiting
            );
            if let Some(cpu) = flood_cpu_seconds {
                println!(
                    "       flood: the flooding peer itself used {:.2} CPU cores on this machine",
                    cpu / seconds.max(1e-9)
                );
            }
            if let Some(failure) = first_failure {
                println!("       flood: first other error: {failure}");
                failed = true;
            }
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let (q, f) = (median(&mut quiet), median(&mut flooded));
        println!(
            "{concurrency:>4} guests: median p99 {:.2} ms without, {:.2} ms with the flood: {:+.1}%",
            ms(q),
            ms(f),
            (f.as_secs_f64() / q.as_secs_f64().max(1e-9) - 1.0) * 100.0
        );
        Ok(failed)
    }
}

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("https://").context("the broker URL must be https://")?;
    let host = rest.split([':', '/']).next().unwrap_or_default();
    if !matches!(host, "127.0.0.1" | "localhost") {
        bail!("kbs-bench sends load to 127.0.0.1 only, not {host:?}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.write_tdx_pki {
        return write_tdx_pki(dir);
    }
    // Before anything asks for the process's test PKI.
    if let Some(path) = &args.tdx_pki {
        TdxTestPki::install_saved(path).with_context(|| format!("loading the TDX test PKI {}", path.display()))?;
    }
    if args.concurrency.iter().any(|&c| c == 0 || c > MAX_CONCURRENCY) {
        bail!("--concurrency values must be within 1..={MAX_CONCURRENCY}");
    }
    if args.resume && !args.reconnect && !args.coco {
        bail!("--resume is for --reconnect or --coco");
    }
    if args.flood_challenges.is_some() {
        flood::check_source(args.flood_from)?;
    }
    if args.tee == TeeArg::Sample && !args.coco {
        bail!("--tee sample is for --coco");
    }
    // The sample TEE's claims carry an all-zero measurement.
    let measurement_hex = match args.tee {
        TeeArg::Sample => hex::encode(kbs::api::coco::SAMPLE_MEASUREMENT),
        _ => args.measurement.clone(),
    };
    let measurement: [u8; 48] = hex::decode(&measurement_hex)
        .ok()
        .and_then(|m| m.try_into().ok())
        .context("--measurement must be 96 hex digits")?;
    let tick = clock_ticks_per_second();
    let value: Vec<u8> = rand::random::<[u8; 32]>().to_vec();

    let (spawned, url, coco_url, ca, cpu, expected) = if args.spawn {
        let s = Spawned::start(&args, &value, &measurement_hex)?;
        let (url, coco_url, ca) = (s.url.clone(), s.coco_url.clone(), s.ca.clone());
        // The broker's runtime and its audit writer; with two spawned
        // brokers (--metrics-overhead) the audit writers share a name, so
        // only the runtimes are counted there.
        let threads: &'static [&'static str] =
            if args.metrics_overhead.is_some() { &["kbs-broker"] } else { &["kbs-broker", "kbs-audit"] };
        (Some(s), url, coco_url, ca, CpuSource::Threads(threads), value.clone())
    } else {
        match (args.tee, &args.tdx_pki) {
            (TeeArg::Tdx, None) => {
                bail!("--tee tdx with --kbs needs --tdx-pki: the test PKI the broker pins (see --write-tdx-pki)")
            }
            (TeeArg::Snp | TeeArg::Sample, Some(_)) => bail!("--tdx-pki is for --tee tdx"),
            _ => {}
        }
        if args.coco && args.coco_url.is_none() {
            bail!("--coco with --kbs needs --coco-url");
        }
        let url = args.kbs.clone().context("--kbs or --spawn")?;
        let ca_path = args.ca.clone().context("--ca is required with --kbs")?;
        let ca = std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        let cpu = args.broker_pid.map_or(CpuSource::None, CpuSource::Pid);
        (None, url, args.coco_url.clone(), ca, cpu, Vec::new())
    };
    // `--metrics-overhead`: the second broker, with its metrics listener.
    let with_metrics = match args.metrics_overhead {
        Some(_) => Some(Spawned::start_named(&args, &value, &measurement_hex, metrics::THREADS, true)?),
        None => None,
    };
    check_loopback(&url)?;
    if let Some(u) = &coco_url {
        check_loopback(u)?;
    }
    let port_of = |u: &str| -> anyhow::Result<u16> {
        u.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).context("the URL needs a port")
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().thread_name("kbs-bench").enable_all().build()?;
    let result = runtime.block_on(async {
        let expected = match (&args.admin, &args.admin_token_file, &args.expect_file) {
            _ if args.spawn => expected,
            (Some(admin), Some(token), _) => {
                check_loopback(admin)?;
                upload(admin, &ca, token, &args.secret, &measurement_hex, &value).await?;
                value.clone()
            }
            (_, _, Some(path)) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            _ => bail!("with --kbs, give --admin and --admin-token-file (to upload the secret) or --expect-file"),
        };
        let source: Arc<dyn EvidenceSource> = match args.tee {
            TeeArg::Snp | TeeArg::Sample => Arc::new(SimulatedSnp::new(Generation::Genoa).measurement(measurement)),
            TeeArg::Tdx => Arc::new(SimulatedTdx::new().mr_td(measurement)),
        };
        let dialer = match args.reconnect {
            true => Some(Arc::new(Dialer::new(&ca, port_of(&url)?, args.resume, b"h2")?)),
            false => None,
        };
        let coco = match (&coco_url, args.coco) {
            (Some(u), true) => Some(Arc::new(coco::Coco {
                url: u.clone(),
                tls: client_tls(&ca, args.resume, b"http/1.1")?,
                resume: args.resume,
                tee: match args.tee {
                    TeeArg::Snp => coco::Tee::Snp(SimulatedSnp::new(Generation::Genoa).measurement(measurement)),
                    TeeArg::Tdx => coco::Tee::Tdx(SimulatedTdx::new().mr_td(measurement)),
                    TeeArg::Sample => coco::Tee::Sample,
                },
                resource: args.secret.clone(),
                expected: expected.clone(),
            })),
            _ => None,
        };
        let template = Load {
            config: ClientConfig::new(url.clone(), ca.clone()),
            source,
            names: vec![args.secret.clone()],
            expected,
            timeout: Duration::from_millis(args.timeout_ms),
            dialer,
            coco,
            coco_gets: args.coco_gets,
            deadline: Instant::now(),
            budget: Arc::new(AtomicU64::new(0)),
            period: None,
            own_addresses: match args.flood_challenges {
                Some(_) => Some((Arc::new(client_tls(&ca, false, b"h2")?), port_of(&url)?)),
                None => None,
            },
        };
        let mode = match (args.coco, args.coco_gets, args.reconnect, args.resume) {
            (true, true, _, _) => "CoCo resource GETs with a token, kept-alive connections",
            (true, false, _, false) => "CoCo flows (auth, attest, resource), a new connection per flow",
            (true, false, _, true) => "CoCo flows (auth, attest, resource), a new connection per flow, TLS resumed",
            (false, _, true, false) => "a new TCP + TLS connection per release",
            (false, _, true, true) => "a new TCP + TLS connection per release, TLS resumed",
            (false, _, false, _) => "one kept-alive connection per guest",
        };
        println!(
            "kbs-bench: tee={:?} target={} {} mode: {mode}{}; phase={}s{} cpu={}",
            args.tee,
            coco_url.as_deref().filter(|_| args.coco).unwrap_or(&url),
            if args.spawn { "(spawned in process)" } else { "" },
            args.rate.map(|r| format!(", open loop at {r}/s")).unwrap_or_default(),
            args.duration,
            args.releases.map(|n| format!(" or {n} releases")).unwrap_or_default(),
            match &cpu {
                CpuSource::Pid(pid) => format!("/proc/{pid}"),
                CpuSource::Threads(p) => format!("threads named {}*", p.join("*, ")),
                CpuSource::None => "unknown (give --broker-pid)".into(),
            }
        );
        let verify = match args.tee {
            TeeArg::Snp => "P-384 verify",
            TeeArg::Tdx => "P-256 verify",
            TeeArg::Sample => "no signature",
        };
        let (tee, gets) = (args.tee, args.coco_gets);
        let floor_fn: Box<dyn Fn() -> anyhow::Result<f64> + Sync> = match (args.coco, args.coco_gets) {
            (false, _) => {
                println!("floor: {verify} + HPKE X25519 seal + challenge open + SHA-512 binding");
                Box::new(move || measure_floor(tee))
            }
            (true, false) => {
                println!("floor: {verify} + ES256 token signature and verification + one JWE seal (ECDH-ES+A256KW)");
                Box::new(move || measure_coco_floor(tee, gets))
            }
            (true, true) => {
                println!("floor: one JWE seal (ECDH-ES+A256KW P-256, A256GCM, 32 bytes)");
                Box::new(move || measure_coco_floor(tee, gets))
            }
        };
        let floor = (!args.no_floor).then_some(&*floor_fn);
        println!(
            "{:>4} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>8} {:>8} {:>8}",
            "conc",
            "ok",
            "errors",
            "ops/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "cpu us",
            "floor",
            "ratio",
            "rss0 MiB",
            "rss1 MiB",
            "rssmax"
        );
        let mut failed = false;
        if let (Some(rounds), Some(with)) = (args.metrics_overhead, &with_metrics) {
            let run = metrics::OverheadRun::new(with, &template)?;
            for &c in &args.concurrency {
                failed |= run.compare(&args, &template, rounds, c, &cpu, tick, floor).await?;
            }
            return anyhow::Ok(failed);
        }
        if let Some(rate) = args.flood_challenges {
            let tls = client_tls(&ca, false, b"h2")?;
            let flood = FloodRun { tls, port: port_of(&url)?, rate };
            for &c in &args.concurrency {
                failed |= flood.compare(&args, &template, c, &cpu, tick, floor).await?;
            }
            return anyhow::Ok(failed);
        }
        for &c in &args.concurrency {
            let phase = run_phase(&args, &template, c, &cpu, tick, floor).await?;
            failed |= !phase.errors.is_empty() || phase.ok == 0;
            print_phase(&phase);
            if let (true, Some((_, 0))) = (args.resume, phase.handshakes) {
                println!("       error: --resume, but no handshake was resumed");
                failed = true;
            }
        }
        anyhow::Ok(failed)
    });
    drop(spawned);
    drop(with_metrics);
    runtime.shutdown_timeout(Duration::from_secs(5));
    if result? {
        bail!("some releases failed");
    }
    Ok(())
}
