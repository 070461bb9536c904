//! Admission of TCP connections on every listener, and the idle bound of
//! the CoCo listener's connections.
//!
//! Each listener admits at most `max_connections` connections at once, and
//! at most `max_connections_per_peer` from one IP address, so that no one
//! peer can hold every slot (and the task and buffers behind each) by
//! opening connections and leaving them idle. A connection past either cap
//! is closed as soon as it is accepted; its slot is released when the
//! connection ends, however it ends.
//!
//! On the guest and CoCo listeners, the rate limits reach the connections
//! too (see [`crate::rate`]): a connection from an address that is over its rate now
//! is closed as soon as it is accepted, before the TLS handshake it would
//! cost; and the connections of a peer that is flooding (far past its
//! rate), open or new, are not read until its cut-off ends. Its calls then wait in its
//! own buffers and client, at no cost to the broker, and it has no reason
//! to reconnect: a closed connection is reopened at once by most clients,
//! and each reopening the broker refuses still costs it an accept, a close
//! and a wake-up (about 40 us each on a small virtual machine), which a
//! peer reconnecting without pause turns into a flood of its own. A
//! stalled connection is still closed by the bounds every connection has
//! (unanswered HTTP/2 keepalive PINGs, the CoCo idle timeout).

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::rate::{NewConnection, RateLimiter};

/// Connections one listener admits at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections one peer address may hold on one listener, by default.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;

/// The caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once.
    pub total: usize,
    /// Connections at once from one IP address.
    pub per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { total: DEFAULT_MAX_CONNECTIONS, per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER }
    }
}

/// Who holds the slots of one listener.
#[derive(Debug)]
pub struct Admission {
    name: &'static str,
    slots: Arc<Semaphore>,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_peer: usize,
    open: Arc<AtomicUsize>,
    rate: Option<Arc<RateLimiter>>,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
    peer: IpAddr,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    open: Arc<AtomicUsize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = peers.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

impl Admission {
    /// The admission of the listener `name` (for the log), with `limits`.
    pub fn new(name: &'static str, limits: Limits) -> Self {
        Self::with_gauge(name, limits, Arc::new(AtomicUsize::new(0)))
    }

    /// [`Admission::new`], keeping the count of open connections in
    /// `gauge` (the listener's metric).
    pub fn with_gauge(name: &'static str, limits: Limits, gauge: Arc<AtomicUsize>) -> Self {
        Self {
            name,
            slots: Arc::new(Semaphore::new(limits.total.max(1))),
            peers: Arc::new(Mutex::new(HashMap::new())),
            per_peer: limits.per_peer.max(1),
            open: gauge,
            rate: None,
        }
    }

    /// Holds the connections to `rate` too: refused while their address is
    /// over its rate, not read while it is cut off for flooding (see
    /// [`Admitted`]).
    pub fn with_rate_limits(mut self, rate: Arc<RateLimiter>) -> Self {
        self.rate = Some(rate);
        self
    }

    /// A slot for a connection from `peer`, or `None` when the listener or
    /// that peer is at its cap, or the peer is over its rate but not cut off
    /// (the caller closes the connection). A connection from a peer cut off
    /// for flooding is admitted, to be held unread (see [`Admitted`]).
    pub fn admit(&self, peer: SocketAddr) -> Option<Ticket> {
        self.admit_for(peer).map(|(ticket, _)| ticket)
    }

    /// [`Admission::admit`], and how long to hold the connection unread.
    fn admit_for(&self, peer: SocketAddr) -> Option<(Ticket, Option<Duration>)> {
        let hold = match self.rate.as_ref().map(|rate| rate.connection(peer.ip())) {
            Some(NewConnection::Refuse) => {
                tracing::debug!(listener = self.name, %peer, "peer over its rate; closing a connection");
                return None;
            }
            Some(NewConnection::Hold(left)) => Some(left),
            Some(NewConnection::Serve) | None => None,
        };
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::warn!(listener = self.name, %peer, "listener at its connection limit; closing a connection");
            return None;
        };
        let ip = peer.ip();
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = peers.entry(ip).or_insert(0);
        if *count >= self.per_peer {
            tracing::warn!(listener = self.name, %peer, "peer at its connection limit; closing a connection");
            return None;
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Some((Ticket { _slot: slot, peer: ip, peers: Arc::clone(&self.peers), open: Arc::clone(&self.open) }, hold))
    }

    /// Connections open now (for tests, diagnostics and the metrics).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// `stream` from `peer` if [`Admission::admit`] admits it, with Nagle's
    /// algorithm off (a guest's calls are small request/response exchanges,
    /// which Nagle and delayed ACKs would hold back by tens of
    /// milliseconds); `None` closes it.
    fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Option<Admitted> {
        let (ticket, hold) = self.admit_for(peer)?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let rate = self.rate.as_ref().map(|r| (Arc::clone(r), r.flood_epoch()));
        // A peer cut off for flooding gets a connection that is not read
        // until its cut-off ends (its TLS handshake times out first, if
        // that comes sooner): closing it would have the peer reconnect at
        // once, and again, each time for an accept and a close.
        let stalled = hold.map(|left| {
            tracing::debug!(listener = self.name, %peer, ?left, "peer flooding past its rate; its new connection is held unread");
            Box::pin(tokio::time::sleep(left))
        });
        Some(Admitted { stream, ticket, rate, stalled })
    }
}

/// An admitted TCP connection: the stream and its slot; with the rate
/// limits, it is not read while its peer is cut off for flooding.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    ticket: Ticket,
    /// The rate limits, and their flood epoch when this connection last
    /// looked.
    rate: Option<(Arc<RateLimiter>, u64)>,
    /// While the peer is cut off: when to look again.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Admitted {
    /// How long the peer is cut off for flooding, if it is; asks the
    /// limiter only when a flooding peer has been refused since the last
    /// time, or `always`.
    fn cut_off(&mut self, always: bool) -> Option<Duration> {
        let (rate, seen) = self.rate.as_mut()?;
        let epoch = rate.flood_epoch();
        if epoch == *seen && !always {
            return None;
        }
        *seen = epoch;
        rate.cut_off(self.ticket.peer)
    }
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let left = match self.stalled.as_mut() {
                Some(stalled) => {
                    if stalled.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.stalled = None;
                    // Cut off again meanwhile?
                    self.cut_off(true)
                }
                None => self.cut_off(false),
            };
            let Some(left) = left else { break };
            tracing::debug!(peer = %self.ticket.peer, ?left, "peer flooding past its rate; its connection is not read until its cut-off ends");
            self.stalled = Some(Box::pin(tokio::time::sleep(left)));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The connections of `listener` that `admission` admits, with Nagle's
/// algorithm off (see [`Admission::accept`]).
pub fn incoming(
    listener: TcpListener,
    admission: Admission,
) -> impl tokio_stream::Stream<Item = io::Result<Admitted>> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(stream) => {
            let peer = stream.peer_addr().ok()?;
            admission.accept(stream, peer).map(Ok)
        }
        Err(e) => Some(Err(e)),
    })
}

/// Accepts connections on `listener` until `shutdown` completes and hands
/// each one `admission` admits to `serve`, with its peer; the connection
/// holds its slot until it is dropped, and with the rate limits it is not
/// read while its peer is cut off for flooding. Refused ones are closed at once, before any
/// handshake. Nagle's algorithm is turned off (small request and response
/// exchanges). A failing `accept` (out of file descriptors and the like)
/// is logged and retried after a pause, never fatal.
pub async fn accept_loop(
    listener: TcpListener,
    admission: Admission,
    shutdown: impl std::future::Future<Output = ()> + Send,
    mut serve: impl FnMut(Admitted, SocketAddr) + Send,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = admission.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = admission.accept(tcp, peer) else { continue };
        serve(admitted, peer);
    }
}

/// A stream that fails a read with `TimedOut` once the peer has sent
/// nothing for `idle`: a connection that is opened and left silent, or
/// that stops half-way through a request, is closed.
#[derive(Debug)]
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, idle: Duration) -> Self {
        Self { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "peer idle"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    #[test]
    fn caps_per_peer_and_in_total_and_gives_slots_back() {
        let admission = Admission::new("test", Limits { total: 3, per_peer: 2 });
        let a1 = admission.admit(addr([10, 0, 0, 1], 1)).unwrap();
        let a2 = admission.admit(addr([10, 0, 0, 1], 2)).unwrap();
        assert!(admission.admit(addr([10, 0, 0, 1], 3)).is_none(), "third from one peer");
        let b1 = admission.admit(addr([10, 0, 0, 2], 1)).unwrap();
        assert!(admission.admit(addr([10, 0, 0, 3], 1)).is_none(), "fourth in total");
        assert_eq!(admission.open(), 3);
        let gauge = Arc::new(AtomicUsize::new(0));
        let counted = Admission::with_gauge("counted", Limits { total: 3, per_peer: 2 }, Arc::clone(&gauge));
        let c1 = counted.admit(addr([10, 0, 0, 1], 1)).unwrap();
        assert!(counted.admit(addr([10, 0, 0, 1], 2)).is_some(), "admitted, then dropped at once");
        assert_eq!(gauge.load(Ordering::Relaxed), 1);
        drop(c1);
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        drop(a1);
        assert_eq!(admission.open(), 2);
        let a3 = admission.admit(addr([10, 0, 0, 1], 4)).unwrap();
        drop((a2, a3, b1));
        assert_eq!(admission.open(), 0);
        assert!(admission.peers.lock().unwrap().is_empty(), "no entry left for peers that have gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(30));
        let mut client = client;
        let mut buf = [0u8; 8];
        // Bytes every 20 s keep it open past 30 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        }
        // Then silence: the read fails after 30 s.
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
