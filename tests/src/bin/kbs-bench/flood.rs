//! `--flood-challenges`: one peer sending `GetChallenge` at a fixed rate,
//! from its own loopback address, while the guests release.
//!
//! The broker limits guest-facing calls per peer address; the flooding
//! peer must not share an address with the guests it is meant to disturb,
//! so its connections are bound to another address of 127.0.0.0/8 (by
//! default 127.0.0.2), which Linux routes over the loopback device.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use kbs_proto::v1::key_broker_client::KeyBrokerClient;
use kbs_proto::v1::{GetChallengeRequest, Tee};
use tonic::transport::Channel;

/// Most challenge requests in flight at once; past it the flooder counts
/// the requests it could not send (`backlog`) instead of queueing them.
const MAX_IN_FLIGHT: usize = 4096;
/// Pacing tick: the requests of each tick are sent together.
const TICK: Duration = Duration::from_millis(1);

/// What the flooding peer saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// Challenges issued.
    pub ok: AtomicU64,
    /// Refused with `RESOURCE_EXHAUSTED` (the rate limit).
    pub limited: AtomicU64,
    /// Failed `UNAVAILABLE`: the broker closed the peer's connection, or
    /// closed new ones before the handshake, for flooding past its rate.
    pub cut: AtomicU64,
    /// Other failures (connection, other status codes).
    pub failed: AtomicU64,
    /// Not sent: the in-flight cap was reached.
    pub backlog: AtomicU64,
    /// Sent and not answered yet (on a connection the broker has stopped
    /// reading, most of them).
    pub waiting: AtomicU64,
    /// The first other failure, to name it.
    pub first_failure: std::sync::OnceLock<String>,
}

impl Counts {
    fn snapshot(&self) -> [u64; 6] {
        [&self.ok, &self.limited, &self.cut, &self.failed, &self.backlog, &self.waiting]
            .map(|c| c.load(Ordering::Relaxed))
    }
}

/// Name prefix of the flooding peer's threads (its own runtime, so that
/// its CPU time can be told apart from the guests').
pub const THREADS: &str = "kbs-flood";

/// A running flood, on a runtime of its own; it stops when dropped.
pub struct Flood {
    counts: Arc<Counts>,
    started: Instant,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Flood {
    /// Starts `rate` challenge requests per second (for the secrets
    /// `names`, as a guest would ask) over `connections` HTTP/2
    /// connections from `from` to the broker at `port`.
    pub async fn start(
        tls: &rustls::ClientConfig,
        port: u16,
        from: IpAddr,
        connections: usize,
        rate: u32,
        names: &[String],
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(THREADS)
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()?;
        let names = Arc::new(names.to_vec());
        let tls = Arc::new(tls.clone());
        let counts = Arc::new(Counts::default());
        let (ready, connected) = tokio::sync::oneshot::channel::<Result<(), String>>();
        {
            let counts = Arc::clone(&counts);
            runtime.spawn(async move {
                let mut clients = Vec::with_capacity(connections);
                for _ in 0..connections.max(1) {
                    match lazy_channel(&tls, port, from) {
                        Ok(c) => clients.push(KeyBrokerClient::new(c)),
                        Err(e) => {
                            let _ = ready.send(Err(format!("{e:#}")));
                            return;
                        }
                    }
                }
                let _ = ready.send(Ok(()));
                send(clients, counts, rate, names).await;
            });
        }
        match connected.await {
            Ok(Ok(())) => Ok(Self { counts, started: Instant::now(), runtime: Some(runtime) }),
            Ok(Err(e)) => {
                runtime.shutdown_background();
                anyhow::bail!(e)
            }
            Err(_) => {
                runtime.shutdown_background();
                anyhow::bail!("the flooding peer stopped before connecting")
            }
        }
    }

    /// Stops the flood and says what it did: (seconds, [ok, limited,
    /// cut, failed, backlog, waiting], the first other failure).
    pub fn stop(mut self) -> (f64, [u64; 6], Option<String>) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let first = self.counts.first_failure.get().cloned();
        (self.started.elapsed().as_secs_f64(), self.counts.snapshot(), first)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sends challenge requests at `rate` per second over `clients` until the
/// runtime stops.
async fn send(clients: Vec<KeyBrokerClient<Channel>>, counts: Arc<Counts>, rate: u32, names: Arc<Vec<String>>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut next = 0usize;
    loop {
        ticker.tick().await;
        // Catch up to the rate, whatever the ticks' jitter.
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                counts.backlog.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // `clients` holds at least one connection.
            let Some(client) = clients.get(next % clients.len()) else { return };
            let mut client = client.clone();
            next = next.wrapping_add(1);
            let (counts, names) = (Arc::clone(&counts), Arc::clone(&names));
            counts.waiting.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let request = GetChallengeRequest { tee: Tee::Snp.into(), secret_names: names.as_ref().clone() };
                let counter = match client.get_challenge(request).await {
                    Ok(_) => &counts.ok,
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => &counts.limited,
                    Err(s) if s.code() == tonic::Code::Unavailable => &counts.cut,
                    // The broker closed the connection under this request,
                    // or before it was sent (a peer cut off for flooding):
                    // what tonic says then (a transport or HTTP/2 error, a
                    // cancellation), never an answer the broker gives.
                    Err(s) if matches!(s.code(), tonic::Code::Unknown | tonic::Code::Cancelled) => &counts.cut,
                    Err(s) => {
                        let _ = counts.first_failure.set(format!("{:?}: {}", s.code(), s.message()));
                        &counts.failed
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                counts.waiting.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }
}

/// One HTTP/2 connection from `from` to `localhost:port`.
pub async fn channel(tls: &Arc<rustls::ClientConfig>, port: u16, from: IpAddr) -> anyhow::Result<Channel> {
    endpoint(port)?
        .connect_with_connector(connector(tls, port, from))
        .await
        .with_context(|| format!("connecting from {from}"))
}

/// [`channel`], connecting when first used and again whenever the broker
/// has closed it: the flooding peer's, which the broker may refuse (a peer
/// still cut off from an earlier phase).
fn lazy_channel(tls: &Arc<rustls::ClientConfig>, port: u16, from: IpAddr) -> anyhow::Result<Channel> {
    Ok(endpoint(port)?.connect_with_connector_lazy(connector(tls, port, from)))
}

fn endpoint(port: u16) -> anyhow::Result<tonic::transport::Endpoint> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://localhost:{port}"))?)
}

/// TCP from `from`, then TLS, to `localhost:port`.
fn connector(
    tls: &Arc<rustls::ClientConfig>,
    port: u16,
    from: IpAddr,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<
        Output = std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
    > + Send,
> + Clone
+ Send
+ 'static {
    let tls = Arc::clone(tls);
    tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let tls = Arc::clone(&tls);
        async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            let tcp = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// The address guest `index` connects from while a flood runs: each
/// guest its own, as pods have, within 127.0.1.0-127.0.255.255.
pub fn guest_address(index: usize) -> IpAddr {
    let i = index % (255 * 254);
    IpAddr::from([127, 0, 1 + (i / 254) as u8, 1 + (i % 254) as u8])
}

/// Checks that `from` is a loopback address other than the guests' own.
pub fn check_source(from: IpAddr) -> anyhow::Result<()> {
    match from {
        IpAddr::V4(v4) if v4.is_loopback() && v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] > 1 => Ok(()),
        _ => anyhow::bail!(
            "--flood-from must be within 127.0.0.2-127.0.0.255 (guests use 127.0.0.1 and 127.0.1.0/16), not {from}"
        ),
    }
}
