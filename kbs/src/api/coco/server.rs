//! The CoCo listener: its TLS configuration, the accept loop (admission,
//! idle and handshake bounds, HTTP/1.1 and HTTP/2), the per-request span,
//! time bound and metrics, and building the front end from the config.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::config::Config;
use crate::release::Broker;

use super::CocoService;
use super::problem::problem;
use super::token::{self, TokenKey, TokenKeys};

/// Requests one HTTP/2 connection may have open at once.
pub(super) const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Largest HTTP/2 header list accepted: the largest token, twice (header
/// and cookie), and room for the rest.
pub(super) const MAX_HEADER_LIST_BYTES: u32 = 2 * token::MAX_TOKEN_LEN as u32 + 16 * 1024;
/// Time allowed for the TLS handshake and for request headers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer address of a connection, for audit.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer(pub(super) SocketAddr);

/// A ready-to-serve front end: the service and its TLS configuration.
#[derive(Debug, Clone)]
pub struct CocoServer {
    service: Arc<CocoService>,
    tls: Arc<rustls::ServerConfig>,
    limits: crate::connections::Limits,
    idle_timeout: Duration,
}

/// Why the front end could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    /// The token key could not be read or generated.
    #[error(transparent)]
    Token(#[from] token::TokenError),
    /// The TLS identity is unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Builds the front end from `config`, when `[coco]` is set. `cert_pem`
/// and `key_pem` are the server's TLS identity.
pub fn build(
    config: &Config,
    broker: &Arc<Broker>,
    cert_pem: &[u8],
    key_pem: &[u8],
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<Option<CocoServer>, CocoError> {
    let Some(coco) = &config.coco else {
        return Ok(None);
    };
    let token_keys = match &coco.token_key_file {
        Some(path) => TokenKeys::from_files(path, &coco.token_previous_key_files)?,
        None => {
            tracing::warn!(
                "coco.token_key_file is not set: attestation tokens are signed by a per-process key and are \
                 valid only at this replica"
            );
            TokenKeys::new(TokenKey::generate()?, Vec::new())?
        }
    };
    let token_keys = match config.insecure_simulated_tee {
        true => {
            tracing::warn!("INSECURE: the CoCo `sample` TEE is accepted: unsigned evidence from any machine passes");
            token_keys.insecure_dev()
        }
        false => token_keys,
    };
    let service = Arc::new(
        CocoService::new(Arc::clone(broker), token_keys, coco.token_ttl, config.insecure_simulated_tee)
            .with_issuer(coco.token_issuer.clone(), coco.token_audiences.clone()),
    );
    Ok(Some(CocoServer {
        service,
        tls: tls_config(cert_pem, key_pem, ticketer)?,
        limits: config.connection_limits,
        idle_timeout: config.idle_timeout,
    }))
}

/// The rustls server configuration of the TLS identity `cert_pem`/`key_pem`
/// (aws-lc-rs, safe defaults but TLS 1.3's AES-128-GCM-SHA256 preferred,
/// ALPN h2 and http/1.1), shared with the
/// metrics and guest listeners. TLS 1.3 session tickets are sealed by
/// `ticketer` when given (see [`crate::tickets`]), one per handshake;
/// otherwise sessions resume only at this process (rustls's in-memory
/// session cache).
pub(crate) fn tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<Arc<rustls::ServerConfig>, CocoError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CocoError::Tls(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CocoError::Tls(format!("key: {e}")))?;
    // TLS 1.3's AES-128-GCM-SHA256 first, whatever the client's order
    // (rustls and most clients list AES-256-GCM-SHA384 first). The suite's
    // hash runs the handshake's key schedule: SHA-256 has instructions of
    // its own on current x86 servers, SHA-384 mostly not, and its key
    // schedule was some 6 % of the broker's CPU for a release made over a
    // new connection (docs/performance.md). AES-256 would add no
    // strength here: the connection's keys come from X25519 and its
    // authentication from a P-256 certificate, both at the 128-bit level,
    // and the secrets are sealed to the guest's own key besides (HPKE).
    // A client that offers only AES-256 suites still gets one.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| CocoError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| CocoError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    if let Some(ticketer) = ticketer {
        config.ticketer = ticketer;
        // One ticket, not rustls's two: a guest connects once per release
        // (or a few times per pod), in turn, and each resumed handshake
        // gives it the ticket for the next; the second ticket was a seal,
        // a record and a client-side store entry per connection for
        // nothing. Two connections opened at once from one session store
        // then make one full handshake.
        config.send_tls13_tickets = 1;
    }
    Ok(Arc::new(config))
}

impl CocoServer {
    /// The service, for tests and in-process callers.
    pub fn service(&self) -> &Arc<CocoService> {
        &self.service
    }
}

/// Serves HTTPS on `listener` until `shutdown` completes.
pub async fn serve(
    server: CocoServer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let acceptor = tokio_rustls::TlsAcceptor::from(server.tls);
    let idle = server.idle_timeout;
    let metrics = Arc::clone(server.service.broker.metrics());
    let gauge = metrics.open_connections(crate::metrics::Listener::Coco);
    // A request, body included, must arrive and be answered within the
    // idle bound: a body trickled a byte at a time does not hold a slot.
    let router = Arc::clone(&server.service).router().layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let metrics = Arc::clone(&metrics);
            async move {
                let endpoint = crate::metrics::CocoEndpoint::of_path(request.uri().path());
                // One trace span per request, a child of the caller's span
                // if it sent a W3C `traceparent`.
                let span = crate::telemetry::coco_span(request.uri().path(), request.headers());
                let response = match tokio::time::timeout(idle, next.run(request).instrument(span.clone())).await {
                    Ok(response) => response,
                    Err(_) => problem(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request took too long"),
                };
                span.record("http.response.status_code", i64::from(response.status().as_u16()));
                metrics.coco_request(endpoint, response.status().as_u16());
                response
            }
        },
    ));
    // As on the guest listener, a peer over its rate has its new
    // connections closed before the TLS handshake they would cost, and a
    // flooding peer's open ones are not read until its cut-off ends (see
    // `crate::connections`); its
    // requests on a connection already open are refused with 429.
    let admission = crate::connections::Admission::with_gauge("coco", server.limits, gauge)
        .with_rate_limits(Arc::clone(server.service.broker.rate_limiter()));
    crate::connections::accept_loop(listener, admission, shutdown, move |tcp, peer| {
        let acceptor = acceptor.clone();
        let app = router.clone().layer(axum::Extension(Peer(peer)));
        tokio::spawn(async move {
            // A peer that sends nothing for the idle bound (after the
            // handshake, between requests, or half-way through one) loses
            // its connection.
            let tcp = crate::connections::IdleTimeout::new(tcp, idle);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                // A token (`Authorization` or the session cookie) may be up
                // to `token::MAX_TOKEN_LEN`, beside the other headers.
                .max_header_list_size(MAX_HEADER_LIST_BYTES);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "coco connection ended with an error");
            }
        });
    })
    .await
}

/// The peer address of a request, for audit.
pub(super) fn peer_of(req: &Request) -> String {
    req.extensions().get::<Peer>().map(|p| p.0.to_string()).unwrap_or_else(|| "unknown".into())
}
