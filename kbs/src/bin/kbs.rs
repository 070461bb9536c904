//! `kbs`: the key broker server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kbs::config::Config;

// The global allocator is mimalloc, declared by regorus (its
// `allocator-memory-limits` feature): the release path allocates many small,
// short-lived objects (HTTP/2 frames, policy values), which it serves
// markedly faster than the system allocator, and its per-thread counters
// bound policy evaluations (`policy.max_memory_mib`).

#[derive(Parser, Debug)]
#[command(name = "kbs", version, about = "Attested key broker for AMD SEV-SNP and Intel TDX confidential VMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the KeyBroker (guest) and Admin (operator) listeners.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, env = "KBS_CONFIG")]
        config: PathBuf,
        /// INSECURE: allow `dev.insecure_simulated_tee` in the configuration.
        #[arg(long)]
        insecure_dev: bool,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Check a listener's gRPC health over TLS (for Kubernetes exec probes:
    /// native gRPC probes cannot speak TLS). Exit 0 when SERVING.
    Health {
        /// Listener URL.
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        addr: String,
        /// PEM CA the listener's certificate chains to.
        #[arg(long)]
        ca: PathBuf,
        /// TLS name to verify instead of the URL's host.
        #[arg(long)]
        domain: Option<String>,
        /// Service to check (empty: the whole server).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Write a development set-up (dev CA, keys, admin token, config) to DIR.
    DevInit {
        /// Directory to write.
        #[arg(long)]
        dir: PathBuf,
        /// Guest listener address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        guest_listen: String,
        /// Admin listener address.
        #[arg(long, default_value = "127.0.0.1:8444")]
        admin_listen: String,
        /// INSECURE: accept unsigned evidence: the CoCo `sample` TEE (with
        /// --coco-listen) and the simulated TEE. Serve with --insecure-dev.
        #[arg(long)]
        insecure_simulated_tee: bool,
        /// INSECURE: enable the simulated TEE, pinning this test SNP root (PEM).
        #[arg(long)]
        snp_test_root: Vec<PathBuf>,
        /// INSECURE: enable the simulated TEE, pinning this test SGX root
        /// (PEM) for TDX.
        #[arg(long)]
        tdx_test_root: Vec<PathBuf>,
        /// INSECURE: enable the simulated TEE, pinning this test NVIDIA
        /// device identity root (PEM) for simulated GPUs.
        #[arg(long)]
        gpu_test_root: Vec<PathBuf>,
        /// INSECURE: enable the simulated TEE, pinning this test RIM root
        /// (PEM) for the simulated GPUs' reference values.
        #[arg(long)]
        gpu_test_rim_root: Vec<PathBuf>,
        /// GPU reference-value directory (`gpu.rim_dir`), filled by
        /// `kbsctl gpu rim import`.
        #[arg(long)]
        gpu_rim_dir: Option<PathBuf>,
        /// TDX collateral directory (`tdx.collateral_dir`).
        #[arg(long)]
        tdx_collateral_dir: Option<PathBuf>,
        /// Enable the CoCo KBS protocol front end on this address.
        #[arg(long)]
        coco_listen: Option<String>,
        /// Enable the Prometheus metrics listener (plain HTTP, GET /metrics)
        /// on this address, e.g. 127.0.0.1:9464.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Write the manual pages (kbs.1, kbs-serve.1, ...) into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Logs to stderr (filtered by `KBS_LOG`) and, with `telemetry`, exports
/// the broker's spans to the OTLP collector (whatever `KBS_LOG` says).
fn init_tracing(json: bool, telemetry: Option<&kbs::telemetry::Telemetry>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("KBS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,vaultrs=off,rustify=off"));
    // Colour by the rule clap applies to the help and usage errors of kbs
    // and kbsctl: only on a terminal (a log file or collector gets plain
    // text), never with a non-empty `NO_COLOR` (no-color.org) or
    // `TERM=dumb`, and `CLICOLOR`/`CLICOLOR_FORCE` as clap reads them.
    let ansi = anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = if json { fmt.json().with_filter(filter).boxed() } else { fmt.with_filter(filter).boxed() };
    let traces = telemetry.map(|t| t.layer());
    tracing_subscriber::registry().with(logs).with(traces).init();
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Man { dir } => match kbs_proto::man::write_pages(<Cli as clap::CommandFactory>::command(), &dir) {
            Ok(written) => {
                written.iter().for_each(|page| println!("{}", page.display()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: writing manual pages to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, insecure_dev, log_json } => {
            let config = Config::load(&config, |k| std::env::var(k).ok());
            // The exporter starts before the log does, so its layer is in
            // the subscriber from the first span on.
            let telemetry = match config.as_ref().ok().and_then(|c| c.telemetry.as_ref().map(|t| (t, c))) {
                Some((t, c)) => match kbs::telemetry::Telemetry::start(t, &c.replica_id) {
                    Ok(telemetry) => Some(telemetry),
                    Err(e) => {
                        init_tracing(log_json, None);
                        tracing::error!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => None,
            };
            init_tracing(log_json, telemetry.as_ref());
            if let Some(t) = config.as_ref().ok().and_then(|c| c.telemetry.as_ref()) {
                tracing::info!(endpoint = %t.endpoint, service = %t.service_name, ratio = t.sampling.ratio, "exporting traces over OTLP/gRPC");
            }
            let served = match config {
                Ok(config) => serve(&config, insecure_dev).await,
                Err(e) => Err(e.into()),
            };
            // The last spans are flushed before the process ends.
            if let Some(telemetry) = telemetry {
                match tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("traces not flushed: {e}"),
                    Err(e) => tracing::warn!("traces not flushed: {e}"),
                }
            }
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Health { addr, ca, domain, service } => match health(&addr, &ca, domain, service).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::DevInit {
            dir,
            guest_listen,
            admin_listen,
            insecure_simulated_tee,
            snp_test_root,
            tdx_test_root,
            gpu_test_root,
            gpu_test_rim_root,
            gpu_rim_dir,
            tdx_collateral_dir,
            coco_listen,
            metrics_listen,
        } => {
            let options = kbs::dev::DevOptions {
                guest_listen,
                admin_listen,
                insecure_simulated_tee,
                snp_test_roots: snp_test_root,
                tdx_test_roots: tdx_test_root,
                gpu_test_roots: gpu_test_root,
                gpu_test_rim_roots: gpu_test_rim_root,
                gpu_rim_dir,
                tdx_collateral_dir,
                cache_ttl_ms: None,
                coco_listen,
                metrics_listen,
            };
            match kbs::dev::init(&dir, &options) {
                Ok(files) => {
                    println!("config:      {}", files.config.display());
                    println!("CA:          {}", files.ca.display());
                    println!("admin token: {}", files.admin_token.display());
                    if let Some(listen) = &options.coco_listen {
                        // What a CoCo client (trustee's kbs-client, guest
                        // components) needs: the URL and the CA to trust.
                        println!("CoCo KBS:    https://{listen} (certificate for localhost and 127.0.0.1, CA above)");
                    }
                    if options.insecure_simulated_tee {
                        println!("INSECURE:    unsigned evidence is accepted; serve with --insecure-dev");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(config: &Config, insecure_dev: bool) -> anyhow::Result<()> {
    let app = kbs::server::build(config, kbs::release::system_clock(), insecure_dev).await?;
    let guest = tokio::net::TcpListener::bind(config.guest_listen).await?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen).await?;
    let coco = match &config.coco {
        Some(c) => Some(tokio::net::TcpListener::bind(c.listen).await?),
        None => None,
    };
    if let Some(c) = &coco {
        tracing::info!(coco = %c.local_addr()?, "CoCo KBS protocol front end enabled");
    }
    let metrics = match &config.metrics {
        Some(m) => Some(tokio::net::TcpListener::bind(m.listen).await?),
        None => None,
    };
    let metrics_tls = config.metrics.as_ref().is_some_and(|m| m.tls);
    if let Some(m) = &metrics {
        let addr = m.local_addr()?;
        let scheme = if metrics_tls { "https" } else { "http" };
        tracing::info!(metrics = %addr, scheme, "metrics listener enabled (GET /metrics)");
        if !metrics_tls && !addr.ip().is_loopback() {
            tracing::warn!(metrics = %addr, "the metrics listener is plain HTTP and not on loopback: keep it on a network only the scraper reaches");
        }
    }
    tracing::info!(guest = %guest.local_addr()?, admin = %admin.local_addr()?, replica = config.replica_id, "kbs serving");
    let listeners = kbs::server::Listeners { guest, admin, coco, metrics };
    kbs::server::run_listeners(app, listeners, shutdown_signal()).await?;
    tracing::info!("kbs stopped");
    Ok(())
}

async fn health(addr: &str, ca: &std::path::Path, domain: Option<String>, service: String) -> anyhow::Result<()> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    if let Some(domain) = domain {
        tls = tls.domain_name(domain);
    }
    let channel = Channel::from_shared(addr.to_owned())?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(3))
        .connect()
        .await?;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await?
        .into_inner()
        .status();
    anyhow::ensure!(status == ServingStatus::Serving, "status {status:?}");
    Ok(())
}
