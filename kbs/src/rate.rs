//! Request rate limits of the guest-facing calls, per peer address and in
//! total.
//!
//! Every guest-facing call that makes the broker work for an
//! unauthenticated peer (a challenge, a release, the CoCo `/auth` and
//! `/attest`) takes one token from its peer's bucket and one from the
//! global bucket. An empty bucket refuses the call at once, before any
//! work, with the time after which a token is back (`RESOURCE_EXHAUSTED`
//! with `retry-after`, or HTTP 429 with `Retry-After`), so one peer
//! flooding the broker cannot take the capacity other guests need.
//!
//! Buckets of peers that have gone quiet are dropped once the table is
//! full; a peer that cannot get an entry then is held to the global
//! bucket alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Default sustained calls per second from one address.
pub const DEFAULT_PER_PEER_PER_SECOND: u32 = 2000;
/// Default sustained calls per second in total.
pub const DEFAULT_GLOBAL_PER_SECOND: u32 = 50_000;
/// Most peers tracked at once.
const MAX_PEERS: usize = 65_536;
/// Least time between two sweeps of a full table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The limits: sustained rates; a burst of one second's worth is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Calls per second from one address.
    pub per_peer_per_second: u32,
    /// Calls per second in total.
    pub global_per_second: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { per_peer_per_second: DEFAULT_PER_PEER_PER_SECOND, global_per_second: DEFAULT_GLOBAL_PER_SECOND }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Self { tokens: f64::from(rate), at: now }
    }

    /// Takes a token, or says how long until one is back.
    fn take(&mut self, rate: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn is_full(&self, rate: u32, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * f64::from(rate) >= f64::from(rate)
    }
}

/// The buckets of one broker.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    global: Mutex<Bucket>,
    peers: Mutex<Peers>,
}

#[derive(Debug)]
struct Peers {
    buckets: HashMap<IpAddr, Bucket>,
    /// When quiet peers were last dropped from a full table (at most once
    /// a second, so a flood of new addresses costs no scan per call).
    swept: Instant,
}

/// The address a bucket is kept for: IPv4 addresses as they are, IPv6
/// ones by their /64 (one host's share of addresses).
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl RateLimiter {
    /// A limiter with full buckets.
    pub fn new(limits: RateLimits) -> Self {
        let now = Instant::now();
        Self {
            limits,
            global: Mutex::new(Bucket::full(limits.global_per_second, now)),
            peers: Mutex::new(Peers { buckets: HashMap::new(), swept: now }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Admits one call from `peer` (unknown: the global bucket alone), or
    /// says after how long to try again.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<(), Duration> {
        self.admit_at(peer, Instant::now())
    }

    fn admit_at(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let per_peer = self.limits.per_peer_per_second;
        if let Some(ip) = peer.map(bucket_key) {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            let known = peers.buckets.contains_key(&ip);
            if !known && peers.buckets.len() >= MAX_PEERS && now.saturating_duration_since(peers.swept) >= SWEEP_EVERY {
                peers.buckets.retain(|_, b| !b.is_full(per_peer, now));
                peers.swept = now;
            }
            if known || peers.buckets.len() < MAX_PEERS {
                peers.buckets.entry(ip).or_insert_with(|| Bucket::full(per_peer, now)).take(per_peer, now)?;
            }
        }
        self.global.lock().unwrap_or_else(PoisonError::into_inner).take(self.limits.global_per_second, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_peer_gets_its_rate_and_others_are_not_held_back() {
        let limiter = RateLimiter::new(RateLimits { per_peer_per_second: 10, global_per_second: 100 });
        let start = Instant::now();
        // A burst of one second's worth, then refusals with a retry time.
        for _ in 0..10 {
            limiter.admit_at(ip(1), start).unwrap();
        }
        let wait = limiter.admit_at(ip(1), start).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Another peer is served meanwhile.
        limiter.admit_at(ip(2), start).unwrap();
        // After the wait, the first peer gets one more.
        limiter.admit_at(ip(1), start + wait).unwrap();
        assert!(limiter.admit_at(ip(1), start + wait).is_err());
        // Refused calls do not count: 100 refusals cost the peer nothing more.
        for _ in 0..100 {
            let _ = limiter.admit_at(ip(1), start + wait);
        }
        limiter.admit_at(ip(1), start + wait + Duration::from_millis(101)).unwrap();
    }

    #[test]
    fn ipv6_peers_share_a_bucket_per_64() {
        let limiter = RateLimiter::new(RateLimits { per_peer_per_second: 2, global_per_second: 100 });
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter.admit_at(Some(a), now).unwrap();
        limiter.admit_at(Some(b), now).unwrap();
        assert!(limiter.admit_at(Some(a), now).is_err());
        limiter.admit_at(Some(other), now).unwrap();
        // An IPv4-mapped address is its IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        limiter.admit_at(Some(mapped), now).unwrap();
        limiter.admit_at(ip(7), now).unwrap();
        assert!(limiter.admit_at(ip(7), now).is_err());
    }

    #[test]
    fn the_global_bucket_bounds_everyone() {
        let limiter = RateLimiter::new(RateLimits { per_peer_per_second: 10, global_per_second: 25 });
        let now = Instant::now();
        let admitted = (0..100u8).filter(|i| limiter.admit_at(ip(*i), now).is_ok()).count();
        assert_eq!(admitted, 25);
        assert!(limiter.admit_at(None, now).is_err());
        assert!(limiter.admit_at(None, now + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn quiet_peers_make_room_in_a_full_table() {
        let limiter = RateLimiter::new(RateLimits { per_peer_per_second: 1, global_per_second: u32::MAX });
        let now = Instant::now();
        for i in 0..MAX_PEERS {
            let addr = IpAddr::from(std::net::Ipv6Addr::from((i as u128) << 64));
            limiter.admit_at(Some(addr), now).unwrap();
        }
        assert_eq!(limiter.peers.lock().unwrap().buckets.len(), MAX_PEERS);
        // Still full and nobody quiet: a new peer is held to the global bucket.
        assert!(limiter.admit_at(ip(1), now).is_ok());
        assert_eq!(limiter.peers.lock().unwrap().buckets.len(), MAX_PEERS);
        // A second later every bucket is full again: the table is cleared
        // for the newcomer, which then has a bucket of its own.
        let later = now + Duration::from_secs(1);
        limiter.admit_at(ip(1), later).unwrap();
        assert_eq!(limiter.peers.lock().unwrap().buckets.len(), 1);
        assert!(limiter.admit_at(ip(1), later).is_err());
    }
}
