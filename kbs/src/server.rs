//! Builds the broker from its configuration and serves its listeners.
//!
//! The guest listener serves only `kbs.v1.KeyBroker` and gRPC health; the
//! admin listener serves only `kbs.v1.Admin` and health. Both use TLS
//! (rustls with the aws-lc-rs provider). The optional CoCo listener serves
//! the CoCo KBS protocol, and the optional metrics listener only
//! `GET /metrics` for a Prometheus scraper (plain HTTP, or HTTPS with
//! `metrics.tls`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kbs_proto::v1::admin_server::AdminServer;
use kbs_proto::v1::key_broker_server::KeyBrokerServer;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use zeroize::Zeroizing;

use crate::api::admin::AdminService;
use crate::api::key_broker::{KeyBrokerService, MAX_REQUEST_BYTES};
use crate::api::policy_admin::PolicyAdminContext;
use crate::audit::{AuditKey, AuditLog};
use crate::challenge::ChallengeSealer;
use crate::config::{Config, StoreConfig};
use crate::connections::{self, Admission};
use crate::evidence::amd_crl::Revocation;
use crate::evidence::anchors::TdxAnchors;
use crate::evidence::anchors::{Generation, SnpAnchors};
use crate::evidence::collateral::{CrlRefresh, CrlSources};
use crate::evidence::collateral::{KdsConfig, KdsFetcher, VekDirectory, VekResolver};
use crate::evidence::gpu::rim::{RimCheck, RimError, RimStore};
use crate::evidence::gpu::{GpuAnchors, GpuVerifier};
use crate::evidence::gpu_ocsp::{GpuOcspConfig, GpuOcspFetcher, OcspFetch};
use crate::evidence::gpu_rims::{self, RimDirError};
use crate::evidence::pcs::{PcsConfig, PcsFetcher, TdxCollateralDir, TdxCollateralResolver};
use crate::evidence::snp::SnpVerifier;
use crate::evidence::tdx::TdxVerifier;
use crate::metrics::{Listener, Metrics};
use crate::policy::PolicyEngine;
use crate::release::TdxSupport;
use crate::release::{Broker, Clock};
use crate::store::SecretStore;
use crate::store::local::{Kek, LocalStore};
use crate::store::vault::VaultStore;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file named in the configuration could not be used.
    #[error("{what} {path}: {why}")]
    File {
        /// Which setting.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        why: String,
    },
    /// The configuration asks for something refused.
    #[error("{0}")]
    Refused(String),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn read(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, StartError> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| StartError::File {
        what,
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

fn read_key32(what: &'static str, path: &Path) -> Result<Zeroizing<[u8; 32]>, StartError> {
    crate::keyfile::read(path).map_err(|e| StartError::File {
        what,
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// Everything needed to serve.
#[derive(Debug)]
pub struct App {
    /// The core, shared by the front ends.
    pub broker: Arc<Broker>,
    admin: AdminService,
    /// The guest listener's TLS (rustls directly, for its ticketer).
    guest_tls: Arc<rustls::ServerConfig>,
    admin_tls: ServerTlsConfig,
    /// Largest Admin message decoded.
    admin_max_message: usize,
    /// Connection caps of each listener.
    connection_limits: connections::Limits,
    /// The CoCo KBS protocol front end, when `[coco]` is configured.
    pub coco: Option<crate::api::coco::CocoServer>,
    /// Who signs the attestation results `kbs.v1` releases ask for: the
    /// CoCo front end, whose listener publishes its keys.
    tokens: Option<Arc<crate::api::coco::CocoService>>,
    /// Whether `[metrics]` is configured (its listener is then required).
    metrics: bool,
    /// The metrics listener's TLS, when `metrics.tls` is set.
    metrics_tls: Option<Arc<rustls::ServerConfig>>,
    /// The idle and request bound of the metrics listener.
    idle_timeout: Duration,
}

/// Builds the broker. `allow_insecure` is the command line's explicit dev
/// flag: without it, a configuration that enables the simulated TEE is
/// refused.
pub async fn build(config: &Config, clock: Clock, allow_insecure: bool) -> Result<App, StartError> {
    if config.insecure_simulated_tee && !allow_insecure {
        return Err(StartError::Refused(
            "dev.insecure_simulated_tee is set but the broker was not started with --insecure-dev".into(),
        ));
    }
    let anchors = snp_anchors(config)?;
    let sealer = challenge_sealer(config)?;
    let store = secret_store(config).await?;
    // Reads are served from memory for a short TTL: no store round trip
    // per release after warm-up; rotations are seen within the TTL.
    let store = crate::store::cache::CachedStore::wrap(store, config.store_cache_ttl);
    let audit = audit_log(config)?;
    let (resolver, crl_sources) = snp_collateral(config)?;
    let policy = policy_engine(config, &store).await;
    let crl_clock = Arc::clone(&clock);
    let now_for_rims = clock();
    let mut broker = Broker::new(
        sealer,
        config.challenge_ttl,
        SnpVerifier::new(anchors).with_revocation(config.snp.revocation),
        resolver,
        Arc::clone(&store),
        Arc::clone(&audit),
        clock,
    )
    .with_metrics_recording(config.metrics.is_some())
    .with_policy(policy)
    .with_rate_limits(config.rate_limits)
    .with_tdx(tdx_support(config)?)
    .with_gpu(gpu_verifier(config)?)
    .with_gpu_rims(gpu_rims(config, now_for_rims)?);
    if let Some(fetcher) = gpu_ocsp(config)? {
        broker = broker.with_gpu_ocsp(Arc::new(fetcher));
    }
    let broker = Arc::new(broker);
    start_crl_refresh(&broker, crl_sources, crl_clock, config.snp.crl_refresh).await;
    let admin = AdminService::new(
        store,
        audit,
        config.admin_tokens.clone(),
        config.admin_clients.clone(),
        config.max_secret_bytes,
        PolicyAdminContext::new(Arc::clone(&broker), config.audit_path.clone()),
    );
    let cert = read("server.tls_cert", &config.tls_cert)?;
    let key = read("server.tls_key", &config.tls_key)?;
    let admin_tls = admin_tls_config(config, &cert, &key)?;
    let ticketer = shared_ticketer(config)?;
    let guest_tls = guest_tls_config(cert.as_slice(), key.as_slice(), ticketer.clone())?;
    let metrics_tls = metrics_tls_config(config, &cert, &key)?;
    let coco = crate::api::coco::build(config, &broker, cert.as_slice(), key.as_slice(), ticketer)
        .map_err(|e| StartError::Refused(format!("coco: {e}")))?;
    let admin_max_message = config
        .max_secret_bytes
        .max(crate::policy::refvals::MAX_REFVALS_BYTES)
        .max(MAX_REQUEST_BYTES)
        .saturating_add(ADMIN_MESSAGE_OVERHEAD);
    Ok(App {
        broker,
        admin,
        guest_tls,
        admin_tls,
        admin_max_message,
        connection_limits: config.connection_limits,
        tokens: coco.as_ref().map(|c| Arc::clone(c.service())),
        coco,
        metrics: config.metrics.is_some(),
        metrics_tls,
        idle_timeout: config.idle_timeout,
    })
}

/// The SNP trust anchors: AMD's roots, the configured intermediates and,
/// in the insecure dev mode only, the test roots.
fn snp_anchors(config: &Config) -> Result<SnpAnchors, StartError> {
    let mut anchors = SnpAnchors::amd().map_err(|e| StartError::Refused(format!("AMD anchors: {e}")))?;
    for path in &config.snp.intermediates {
        let bytes = read("snp.intermediates", path)?;
        anchors.add_intermediate(&bytes).map_err(|e| StartError::File {
            what: "snp.intermediates",
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
    }
    if config.insecure_simulated_tee {
        tracing::warn!("INSECURE: the simulated TEE is enabled; evidence signed by test roots is accepted");
        tracing::warn!("INSECURE: never run this configuration with real secrets");
        for path in &config.snp_test_roots {
            let pem = read("dev.snp_test_roots", path)?;
            let der = pem_to_der(&pem).ok_or_else(|| StartError::File {
                what: "dev.snp_test_roots",
                path: path.display().to_string(),
                why: "no PEM certificate".into(),
            })?;
            for generation in [Generation::Milan, Generation::Genoa, Generation::Turin] {
                anchors.add_root(generation, &der).map_err(|e| StartError::File {
                    what: "dev.snp_test_roots",
                    path: path.display().to_string(),
                    why: e.to_string(),
                })?;
            }
        }
    }
    Ok(anchors)
}

/// The challenge sealer over the challenge key files (derived keys in the
/// insecure dev mode).
fn challenge_sealer(config: &Config) -> Result<ChallengeSealer, StartError> {
    let current = read_key32("challenge.key_file", &config.challenge_key_file)?;
    let previous = config
        .previous_challenge_key_files
        .iter()
        .map(|p| read_key32("challenge.previous_key_files", p))
        .collect::<Result<Vec<_>, _>>()?;
    match config.insecure_simulated_tee {
        true => ChallengeSealer::new_insecure_dev(&current, &previous),
        false => ChallengeSealer::new(&current, &previous),
    }
    .map_err(|e| StartError::Refused(e.to_string()))
}

/// The secret store `[store]` names, connected.
async fn secret_store(config: &Config) -> Result<Arc<dyn SecretStore>, StartError> {
    let store: Arc<dyn SecretStore> = match &config.store {
        StoreConfig::Local { dir, kek_file } => {
            let kek = Kek::from_file(kek_file).map_err(|e| StartError::File {
                what: "store.kek_file",
                path: kek_file.display().to_string(),
                why: e.to_string(),
            })?;
            Arc::new(LocalStore::open(dir, &kek).map_err(|e| StartError::File {
                what: "store.dir",
                path: dir.display().to_string(),
                why: e.to_string(),
            })?)
        }
        StoreConfig::Vault(vault) => {
            if vault.insecure_skip_verify {
                tracing::warn!("INSECURE: TLS verification of the Vault/OpenBao server is off");
            }
            Arc::new(
                VaultStore::connect((**vault).clone())
                    .await
                    .map_err(|e| StartError::Refused(format!("Vault/OpenBao store at {}: {e}", vault.address)))?,
            )
        }
    };
    Ok(store)
}

/// The audit log: its file (or stdout), its key, rotation, sync and wait.
fn audit_log(config: &Config) -> Result<Arc<AuditLog>, StartError> {
    let audit_key = match &config.audit_key_file {
        Some(path) => Some(AuditKey::new(&*read_key32("audit.key_file", path)?)),
        None => {
            tracing::warn!(
                "audit.key_file is not set: the audit log is hash-chained only, and whoever can write it can rewrite it whole undetected"
            );
            None
        }
    };
    let audit = Arc::new(
        match &config.audit_path {
            None => AuditLog::stdout(&config.replica_id, audit_key),
            Some(path) => AuditLog::open(path, &config.replica_id, audit_key, config.audit_rotation).map_err(|e| {
                StartError::File { what: "audit.path", path: path.display().to_string(), why: e.to_string() }
            })?,
        }
        .with_sync(config.audit_sync)
        .with_wait(config.audit_max_wait),
    );
    if !config.audit_sync && config.audit_path.is_some() {
        tracing::warn!(
            "audit.sync is false: a crash of the machine can lose the last audit records of answered decisions"
        );
    }
    Ok(audit)
}

/// Where VEKs and CRLs come from: the directory and the KDS fetchers
/// (one for VEKs, one for CRLs, each with its own request budget).
fn snp_collateral(config: &Config) -> Result<(VekResolver, CrlSources), StartError> {
    let directory = config.snp.collateral_dir.as_ref().map(|d| VekDirectory::new(d.clone()));
    let kds_fetcher = || -> Result<Option<KdsFetcher>, StartError> {
        let Some(url) = &config.snp.kds_url else { return Ok(None) };
        let cache =
            config.snp.kds_cache_dir.clone().ok_or_else(|| {
                StartError::Refused("snp.kds_url needs snp.kds_cache_dir for its on-disk cache".into())
            })?;
        let mut kds = KdsConfig::new(cache);
        kds.base_url = url.clone();
        Ok(Some(KdsFetcher::new(kds).map_err(|e| StartError::Refused(format!("KDS fetcher: {e}")))?))
    };
    let resolver = VekResolver::new(directory, kds_fetcher()?);
    // CRLs have their own fetcher (and request budget), sharing the cache.
    let crl_sources = CrlSources::new(config.snp.crl_dir.clone(), kds_fetcher()?);
    Ok((resolver, crl_sources))
}

/// The policy engine over `store`, loaded now and refreshed periodically.
async fn policy_engine(config: &Config, store: &Arc<dyn SecretStore>) -> Arc<PolicyEngine> {
    // Policies and reference values: loaded from the store now, then
    // re-read periodically so that changes made through other replicas
    // take effect here. A store that cannot be read yet leaves every
    // release refused until a refresh succeeds.
    crate::policy::engine::set_memory_limit(config.policy_max_memory_mib);
    crate::policy::engine::set_time_limit(config.policy_eval_time_limit);
    let policy = Arc::new(PolicyEngine::with_store(Arc::clone(store), config.policy_builtin_default));
    if let Err(e) = policy.refresh().await {
        tracing::error!(error = %e, "loading policies failed; releases are refused until a refresh succeeds");
    }
    policy.spawn_refresher(config.policy_refresh);
    policy
}

/// The admin listener's TLS: the server's identity and, when configured,
/// the CA of admin client certificates.
fn admin_tls_config(config: &Config, cert: &[u8], key: &[u8]) -> Result<ServerTlsConfig, StartError> {
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(HANDSHAKE_TIMEOUT);
    let admin_tls = match &config.admin_client_ca {
        // Client certificates are optional at the TLS layer so that bearer
        // tokens keep working; a presented certificate must chain to this CA.
        Some(ca) => tls
            .clone()
            .client_ca_root(Certificate::from_pem(read("admin.client_ca", ca)?.as_slice()))
            .client_auth_optional(true),
        None => tls.clone(),
    };
    Ok(admin_tls)
}

/// The TLS session ticketer the replicas share, when a ticket key is set.
fn shared_ticketer(config: &Config) -> Result<Option<Arc<dyn rustls::server::ProducesTickets>>, StartError> {
    // Session tickets: shared by the replicas when a ticket key is
    // configured; otherwise rustls's default, resumption at this replica
    // only (its in-memory session cache).
    let ticketer: Option<Arc<dyn rustls::server::ProducesTickets>> = match &config.tls_tickets {
        None => None,
        Some(t) => Some(Arc::new(
            crate::tickets::SharedTicketer::from_files(
                &t.key_file,
                &t.previous_key_files,
                t.lifetime_seconds,
                crate::tickets::system_clock(),
            )
            .map_err(|e| StartError::Refused(format!("server.tls_ticket_key_file: {e}")))?,
        )),
    };
    Ok(ticketer)
}

/// The metrics listener's TLS, when `metrics.tls` is set.
fn metrics_tls_config(
    config: &Config,
    cert: &[u8],
    key: &[u8],
) -> Result<Option<Arc<rustls::ServerConfig>>, StartError> {
    let metrics_tls = match &config.metrics {
        Some(m) if m.tls => {
            let shared = crate::api::coco::tls_config(cert, key, None)
                .map_err(|e| StartError::Refused(format!("metrics: {e}")))?;
            // HTTP/1.1 only, as the listener serves.
            let mut own = (*shared).clone();
            own.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Arc::new(own))
        }
        _ => None,
    };
    Ok(metrics_tls)
}

/// The guest listener's TLS: the server's identity, HTTP/2 only, and the
/// shared ticketer when there is one.
fn guest_tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let shared = crate::api::coco::tls_config(cert_pem, key_pem, ticketer)
        .map_err(|e| StartError::Refused(format!("server.tls_cert/tls_key: {e}")))?;
    let mut own = (*shared).clone();
    own.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(own))
}

/// The TLS connections of `listener` that `admission` admits: each
/// handshake runs in a task of its own, bounded by [`HANDSHAKE_TIMEOUT`],
/// so a slow or silent peer holds up no other; finished ones are handed on
/// in the order they finish. Stops accepting when the stream is dropped.
fn tls_incoming(
    listener: TcpListener,
    admission: Admission,
    tls: Arc<rustls::ServerConfig>,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<connections::Admitted>>> + Send + 'static
{
    use tokio_stream::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(connections::incoming(listener, admission));
        loop {
            let next = tokio::select! {
                () = tx.closed() => break,
                next = accepted.next() => next,
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(tcp)) => {
                    let (tx, acceptor) = (tx.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            let _ = tx.send(Ok(tls)).await;
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Installs the CRLs the offline sources (the CRL directory and the KDS
/// cache) hold now, then refreshes them, KDS included, in the background:
/// at once and every `every`. Without a source, revocation is not checked.
async fn start_crl_refresh(broker: &Arc<Broker>, sources: CrlSources, clock: Clock, every: Duration) {
    let revocation = broker.snp_verifier().revocation();
    if sources.is_empty() {
        tracing::warn!("SEV-SNP revocation is not checked: no CRL source (snp.crl_dir or snp.kds_url) is configured");
        return;
    }
    log_crl_refresh(&sources.refresh(broker.snp_verifier(), clock(), false).await, revocation);
    if revocation == Revocation::Require {
        let now = clock();
        let current = broker.snp_verifier().crls();
        for generation in Generation::ALL {
            if !current.iter().any(|c| c.generation() == generation && c.current_at(now)) {
                tracing::warn!(%generation, "no current AMD CRL yet: its SEV-SNP reports are refused until one is installed");
            }
        }
    }
    let weak = Arc::downgrade(broker);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let Some(broker) = weak.upgrade() else { break };
            log_crl_refresh(&sources.refresh(broker.snp_verifier(), clock(), true).await, revocation);
        }
    });
}

fn log_crl_refresh(refresh: &CrlRefresh, revocation: Revocation) {
    for (generation, kind, source) in &refresh.installed {
        tracing::info!(%generation, ?kind, %source, "AMD CRL installed");
    }
    for problem in &refresh.problems {
        match revocation {
            Revocation::Require => tracing::warn!(%problem, "AMD CRL not updated"),
            Revocation::BestEffort => tracing::info!(%problem, "AMD CRL not updated"),
        }
    }
}

/// The TDX verifier and collateral sources of `config`, or `None` when no
/// TDX collateral source is configured (TDX is then refused). Test roots
/// are pinned only with the dev flag, which [`build`] has checked.
fn tdx_support(config: &Config) -> Result<Option<TdxSupport>, StartError> {
    if !config.tdx.enabled() {
        return Ok(None);
    }
    let mut anchors = TdxAnchors::intel().map_err(|e| StartError::Refused(format!("Intel anchors: {e}")))?;
    if config.insecure_simulated_tee {
        for path in &config.tdx_test_roots {
            let file_error =
                |why: String| StartError::File { what: "dev.tdx_test_roots", path: path.display().to_string(), why };
            let pem = read("dev.tdx_test_roots", path)?;
            let der = pem_to_der(&pem).ok_or_else(|| file_error("no PEM certificate".into()))?;
            anchors.add_root(&der).map_err(|e| file_error(e.to_string()))?;
        }
    }
    let dir = config.tdx.collateral_dir.as_ref().map(|d| TdxCollateralDir::new(d.clone()));
    let fetcher = match (&config.tdx.pccs_url, &config.tdx.cache_dir) {
        (Some(url), Some(cache)) => {
            let mut pcs = PcsConfig::new(url.clone(), cache.clone());
            pcs.root_crl_url = config.tdx.root_crl_url.clone();
            Some(PcsFetcher::new(pcs).map_err(|e| StartError::Refused(format!("PCCS fetcher: {e}")))?)
        }
        (Some(_), None) => return Err(StartError::Refused("tdx.pccs_url needs tdx.cache_dir".into())),
        (None, _) => None,
    };
    Ok(Some(TdxSupport {
        verifier: TdxVerifier::new(anchors, config.tdx.policy.clone()),
        collateral: TdxCollateralResolver::new(dir, fetcher),
    }))
}

/// The NVIDIA GPU verifier: NVIDIA's pinned device identity root, and the
/// test roots only with the dev flag, which [`build`] has checked.
fn gpu_verifier(config: &Config) -> Result<GpuVerifier, StartError> {
    let mut anchors = GpuAnchors::nvidia().map_err(|e| StartError::Refused(format!("NVIDIA anchors: {e}")))?;
    if config.insecure_simulated_tee {
        for path in &config.gpu_test_roots {
            let file_error =
                |why: String| StartError::File { what: "dev.gpu_test_roots", path: path.display().to_string(), why };
            let pem = read("dev.gpu_test_roots", path)?;
            let der = pem_to_der(&pem).ok_or_else(|| file_error("no PEM certificate".into()))?;
            anchors.add_root(&der).map_err(|e| file_error(e.to_string()))?;
        }
    }
    Ok(GpuVerifier::new(anchors))
}

/// The online OCSP fetcher for device chains, when `gpu.ocsp_fetch` is
/// not `off` (its URL was checked with the configuration).
fn gpu_ocsp(config: &Config) -> Result<Option<GpuOcspFetcher>, StartError> {
    if config.gpu.ocsp_fetch == OcspFetch::Off {
        return Ok(None);
    }
    let settings = GpuOcspConfig { url: config.gpu.ocsp_url.clone(), ..GpuOcspConfig::new(config.gpu.ocsp_fetch) };
    let fetcher = GpuOcspFetcher::new(settings).map_err(|e| StartError::Refused(format!("GPU OCSP fetcher: {e}")))?;
    tracing::info!(policy = ?config.gpu.ocsp_fetch, "device certificates without stapled OCSP are checked online");
    Ok(Some(fetcher))
}

/// The GPU reference values: every RIM file of `gpu.rim_dir` verified
/// (NVIDIA's pinned RIM root; the test RIM roots only with the dev flag,
/// which [`build`] has checked) as of `now`. A file that does not verify
/// refuses the start, naming it.
fn gpu_rims(config: &Config, now: time::OffsetDateTime) -> Result<RimStore, StartError> {
    let Some(dir) = &config.gpu.rim_dir else {
        tracing::info!("no gpu.rim_dir: secrets that need GPUs are refused (no reference values)");
        return Ok(RimStore::default());
    };
    let mut anchors = GpuAnchors::nvidia_rim().map_err(|e| StartError::Refused(format!("NVIDIA RIM anchors: {e}")))?;
    if config.insecure_simulated_tee {
        for path in &config.gpu_test_rim_roots {
            let file_error = |why: String| StartError::File {
                what: "dev.gpu_test_rim_roots",
                path: path.display().to_string(),
                why,
            };
            let pem = read("dev.gpu_test_rim_roots", path)?;
            let der = pem_to_der(&pem).ok_or_else(|| file_error("no PEM certificate".into()))?;
            anchors.add_root(&der).map_err(|e| file_error(e.to_string()))?;
        }
    }
    let check = RimCheck { anchors: &anchors, now, accept_expired: config.gpu.accept_expired_rim_signers };
    let store = gpu_rims::load_rim_dir(dir, &check).map_err(|e| match e {
        RimDirError::Invalid { path, source } => StartError::File {
            what: "gpu.rim_dir",
            path: path.display().to_string(),
            why: format!(
                "{source}{}",
                match (&source, config.gpu.accept_expired_rim_signers) {
                    (RimError::CertificateExpired(_), false) => {
                        " (set gpu.accept_expired_rim_signers to accept RIMs whose signer expired)"
                    }
                    _ => "",
                }
            ),
        },
        other => StartError::File { what: "gpu.rim_dir", path: dir.display().to_string(), why: other.to_string() },
    })?;
    tracing::info!(rims = store.len(), dir = %dir.display(), "GPU reference values loaded");
    Ok(store)
}

fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = text.get(start..)?.find("-----END CERTIFICATE-----")? + start;
    let body: String = text.get(start..end)?.chars().filter(|c| !c.is_whitespace()).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).ok()
}

/// A TLS handshake not finished in this time is abandoned and its
/// connection closed, so that clients cannot hold connections (and the
/// tasks serving them) without ever completing one. The CoCo front end
/// uses the same bound.
pub const HANDSHAKE_TIMEOUT: Duration = crate::api::coco::HANDSHAKE_TIMEOUT;
/// HTTP/2 PINGs on a connection with no traffic for this long...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection is closed if one is not answered in this time:
/// dead peers do not keep connections open.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls one connection may have open at once (a guest makes two, one
/// after the other; `kbs-bench` and the CoCo clients one at a time).
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// A guest call not answered in this time fails (`CANCELLED`) and its work
/// is dropped, as when the guest goes away; calls that wait on the network
/// (an uncached VEK from KDS, a secret from OpenBao) normally end sooner,
/// on those clients' own timeouts.
pub const GUEST_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The same bound for Admin calls (a dry run on evidence may wait on
/// collateral like a release does).
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Room in an Admin message for what comes with the largest value: name,
/// labels, allow-list.
const ADMIN_MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Serves the guest and admin services on the given listeners until
/// `shutdown` completes. A configuration with `[coco]` or `[metrics]`
/// needs their listeners too: it is refused here (use [`run_listeners`]),
/// so that no configured front end is silently left unserved.
pub async fn run(
    app: App,
    guest: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if app.coco.is_some() || app.metrics {
        return Err(StartError::Refused(
            "[coco] or [metrics] is configured: its listener must be served too (server::run_listeners)".into(),
        ));
    }
    serve_grpc(app, guest, admin, shutdown).await
}

/// Serves the guest and admin services (the part of [`run_listeners`]
/// every configuration has).
async fn serve_grpc(
    app: App,
    guest: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let (guest_health_reporter, guest_health) = tonic_health::server::health_reporter();
    guest_health_reporter.set_serving::<KeyBrokerServer<KeyBrokerService>>().await;
    let (admin_health_reporter, admin_health) = tonic_health::server::health_reporter();
    admin_health_reporter.set_serving::<AdminServer<AdminService>>().await;

    let key_broker =
        KeyBrokerServer::new(KeyBrokerService::new(Arc::clone(&app.broker)).with_tokens(app.tokens.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
    // Admin calls are authenticated from their headers before their message
    // is read, and no message may be larger than the largest secret (or
    // policy input) plus room for the rest of the request.
    let authenticator = app.admin.authenticator();
    let admin_service = tonic::service::interceptor::InterceptedService::new(
        AdminServer::new(app.admin).max_decoding_message_size(app.admin_max_message),
        authenticator,
    );

    let hardened = || {
        Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
    };
    let metrics = Arc::clone(app.broker.metrics());
    let admission = |listener: Listener, name| {
        Admission::with_gauge(name, app.connection_limits, metrics.open_connections(listener))
    };
    let guest_server = hardened()
        .timeout(GUEST_CALL_TIMEOUT)
        .add_service(guest_health)
        .add_service(key_broker)
        .serve_with_incoming_shutdown(
            tls_incoming(
                guest,
                admission(Listener::Guest, "guest").with_rate_limits(Arc::clone(app.broker.rate_limiter())),
                app.guest_tls,
            ),
            stopped(stop_rx.clone()),
        );
    let admin_server = hardened()
        .timeout(ADMIN_CALL_TIMEOUT)
        .tls_config(app.admin_tls)?
        .add_service(admin_health)
        .add_service(admin_service)
        .serve_with_incoming_shutdown(
            connections::incoming(admin, admission(Listener::Admin, "admin")),
            stopped(stop_rx),
        );
    tokio::try_join!(guest_server, admin_server)?;
    Ok(())
}

/// [`run`], plus the CoCo KBS protocol front end on `coco` (required when
/// `[coco]` is configured, refused otherwise). A broker with `[metrics]`
/// needs [`run_listeners`].
pub async fn run_with_coco(
    app: App,
    guest: TcpListener,
    admin: TcpListener,
    coco: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    run_listeners(app, Listeners { guest, admin, coco, metrics: None }, shutdown).await
}

/// Every listener of a broker.
#[derive(Debug)]
pub struct Listeners {
    /// The KeyBroker (guest) listener.
    pub guest: TcpListener,
    /// The Admin listener.
    pub admin: TcpListener,
    /// The CoCo listener: required when `[coco]` is configured, refused
    /// otherwise.
    pub coco: Option<TcpListener>,
    /// The metrics listener: required when `[metrics]` is configured,
    /// refused otherwise.
    pub metrics: Option<TcpListener>,
}

/// Serves every listener of `app` until `shutdown` completes.
pub async fn run_listeners(
    mut app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let Listeners { guest, admin, coco, metrics } = listeners;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = match (app.metrics, metrics) {
        (true, Some(listener)) => {
            let mut rx = stop_rx.clone();
            let stopped = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            let metrics = Arc::clone(app.broker.metrics());
            let bounds = (app.connection_limits, app.idle_timeout);
            Some(tokio::spawn(serve_metrics(metrics, listener, app.metrics_tls.take(), bounds, stopped)))
        }
        (false, None) => None,
        (true, None) => return Err(StartError::Refused("[metrics] is configured but no listener was given".into())),
        (false, Some(_)) => {
            return Err(StartError::Refused("a metrics listener was given but [metrics] is not set".into()));
        }
    };
    let coco_task = match (app.coco.take(), coco) {
        (Some(server), Some(listener)) => {
            let mut rx = stop_rx.clone();
            let stopped = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            Some(tokio::spawn(crate::api::coco::serve(server, listener, stopped)))
        }
        (None, None) => None,
        (Some(_), None) => return Err(StartError::Refused("[coco] is configured but no listener was given".into())),
        (None, Some(_)) => return Err(StartError::Refused("a CoCo listener was given but [coco] is not set".into())),
    };
    let result = serve_grpc(app, guest, admin, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    drop(stop_rx);
    for (name, task) in [("coco", coco_task), ("metrics", metrics_task)] {
        let Some(task) = task else { continue };
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Refused(format!("{name} listener: {e}"))),
            Err(e) => return Err(StartError::Refused(format!("{name} listener task: {e}"))),
        }
    }
    result
}

/// Serves `GET /metrics` over HTTP/1.1 (over `tls` when given) on `listener` until `shutdown`
/// completes, with the connection caps of the other listeners, and the
/// idle bound of the CoCo listener (`server.idle_timeout_seconds`): a
/// connection silent that long is closed, and a request (headers
/// included) must arrive and be answered within it. An exposition is
/// rendered from memory in well under a millisecond. Any other path is a
/// 404.
async fn serve_metrics(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    (limits, idle): (connections::Limits, Duration),
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse as _;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let gauge = metrics.open_connections(Listener::Metrics);
    let scrape = move || {
        let metrics = Arc::clone(&metrics);
        async move { ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], metrics.encode()) }
    };
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                match tokio::time::timeout(idle, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
                }
            },
        ));
    let admission = Admission::with_gauge("metrics", limits, gauge);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    connections::accept_loop(listener, admission, shutdown, move |tcp, peer| {
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A scraper that goes silent (mid-request or between requests)
            // loses its connection.
            let tcp = connections::IdleTimeout::new(tcp, idle);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
            let builder = builder.http1_only();
            let served = match acceptor {
                None => builder.serve_connection(TokioIo::new(tcp), service).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), service).await,
                    _ => return,
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    })
    .await
}
