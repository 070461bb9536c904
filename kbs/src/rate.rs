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
//!
//! A refused call is cheap but not free (a frame to decode and an answer
//! to send), and a peer that answers each refusal with a new call keeps as
//! many calls queued as its connections allow, ahead of other guests'. So a
//! peer that keeps going far past its rate is cut off: while its bucket is
//! empty, its new connections are closed before the TLS handshake
//! ([`RateLimiter::connection`]); and once its refused calls have outrun its
//! rate by [`FLOOD_SECONDS`] seconds' worth (it sends more than twice its
//! rate), it is flooding ([`RateLimiter::cut_off`]): for [`CUT_OFF`] its
//! connections, open and new, are not read (see [`crate::connections`]) and
//! its calls are refused. A peer found flooding again within
//! [`STRIKES_KEPT`] of its last cut-off ending is cut off twice as long as
//! the time before, up to [`MAX_CUT_OFF`], and each cut-off ends with an
//! empty bucket (no burst), so that a peer flooding without pause is let
//! back for a tenth of a second in minutes, not served its burst every few
//! seconds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// Seconds' worth of its rate in refused calls, over what drains at its
/// rate, that make a peer flooding.
pub const FLOOD_SECONDS: f64 = 1.0;
/// How long a peer found flooding is cut off the first time.
pub const CUT_OFF: Duration = Duration::from_secs(5);
/// The longest cut-off (the fifth time in a row, and after).
pub const MAX_CUT_OFF: Duration = Duration::from_secs(80);
/// How long after its cut-off ends a peer's next one is longer.
pub const STRIKES_KEPT: Duration = Duration::from_secs(60);

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
    /// Refused calls, draining at the rate: past [`FLOOD_SECONDS`] of the
    /// rate, the peer is flooding.
    refused: f64,
    at: Instant,
    /// The end of the peer's last cut-off for flooding (in the future while
    /// it is cut off), and how many it has had in a row.
    cut_until: Option<Instant>,
    strikes: u32,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Self { tokens: f64::from(rate), refused: 0.0, at: now, cut_until: None, strikes: 0 }
    }

    /// Brings the tokens and the refused calls to `now` (nothing refills
    /// before `at`, which a cut-off sets to its end).
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refused = (self.refused - elapsed * rate).max(0.0);
        self.at = self.at.max(now);
    }

    /// How long the peer is still cut off for flooding, if it is.
    fn cut_left(&self, now: Instant) -> Option<Duration> {
        self.cut_until.map(|end| end.saturating_duration_since(now)).filter(|left| !left.is_zero())
    }

    /// Takes a token, or says how long until one is back.
    fn take(&mut self, rate: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate.max(1));
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }

    /// [`Bucket::take`] for a peer: refused while it is cut off (until the
    /// cut-off ends); the refusal that makes it flooding cuts it off.
    fn take_peer(&mut self, rate: u32, now: Instant) -> Result<(), Duration> {
        if let Some(left) = self.cut_left(now) {
            return Err(left);
        }
        let wait = self.take(rate, now).err();
        let Some(wait) = wait else { return Ok(()) };
        let rate = f64::from(rate.max(1));
        self.refused += 1.0;
        if self.refused < FLOOD_SECONDS * rate {
            return Err(wait);
        }
        let again = self.cut_until.is_some_and(|end| now.saturating_duration_since(end) < STRIKES_KEPT);
        self.strikes = if again { self.strikes.saturating_add(1) } else { 1 };
        let cut = CUT_OFF.saturating_mul(1 << self.strikes.saturating_sub(1).min(4)).min(MAX_CUT_OFF);
        self.cut_until = Some(now + cut);
        // Let back with an empty bucket, refilling from then on: no burst
        // for a peer that has just flooded.
        (self.tokens, self.refused, self.at) = (0.0, 0.0, now + cut);
        Err(cut)
    }

    /// Whether a call now would find no token (none refill while the peer
    /// is cut off).
    fn is_empty(&mut self, rate: u32, now: Instant) -> bool {
        self.refill(f64::from(rate.max(1)), now);
        self.tokens < 1.0
    }

    fn is_flooding(&mut self, _rate: u32, now: Instant) -> bool {
        self.cut_left(now).is_some()
    }

    /// Whether the bucket is as a new one would be (its tokens back, its
    /// refused calls drained, no cut-off to remember), so that dropping it
    /// forgets nothing.
    fn is_full(&self, rate: u32, now: Instant) -> bool {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(rate);
        self.tokens + refilled >= f64::from(rate)
            && self.refused <= refilled
            && self.cut_until.is_none_or(|end| now.saturating_duration_since(end) >= STRIKES_KEPT)
    }
}

/// What a new connection from a peer gets ([`RateLimiter::connection`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewConnection {
    /// Served.
    Serve,
    /// Closed before the TLS handshake: the peer is over its rate.
    Refuse,
    /// Held unread for this long: the peer is cut off for flooding.
    Hold(Duration),
}

/// The buckets of one broker.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    global: Mutex<Bucket>,
    peers: Mutex<Peers>,
    /// Counts the calls refused to flooding peers: a connection whose
    /// count has moved since it last looked checks whether its own peer
    /// is flooding ([`RateLimiter::flood_epoch`]).
    floods: AtomicU64,
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
            floods: AtomicU64::new(0),
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
                let bucket = peers.buckets.entry(ip).or_insert_with(|| Bucket::full(per_peer, now));
                if let Err(wait) = bucket.take_peer(per_peer, now) {
                    if bucket.is_flooding(per_peer, now) {
                        self.floods.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(wait);
                }
            }
        }
        self.global.lock().unwrap_or_else(PoisonError::into_inner).take(self.limits.global_per_second, now)
    }

    /// What a new connection from `peer` gets now, from one look at its
    /// bucket: held unread while the peer is cut off for flooding (for the
    /// time left), refused before any handshake while a call from it would
    /// be refused, served otherwise.
    pub fn connection(&self, peer: IpAddr) -> NewConnection {
        let (now, rate) = (Instant::now(), self.limits.per_peer_per_second);
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.buckets.get_mut(&bucket_key(peer)) {
            Some(b) => match b.cut_left(now) {
                Some(left) => NewConnection::Hold(left),
                None if b.is_empty(rate, now) => NewConnection::Refuse,
                None => NewConnection::Serve,
            },
            None => NewConnection::Serve,
        }
    }

    /// How long `peer` is still cut off for flooding, if it is (its
    /// connections are not read meanwhile).
    pub fn cut_off(&self, peer: IpAddr) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.buckets.get(&bucket_key(peer)).and_then(|b| b.cut_left(Instant::now()))
    }

    /// A count that moves whenever a flooding peer's call is refused: a
    /// connection needs to ask [`RateLimiter::cut_off`] only when it has
    /// moved.
    pub fn flood_epoch(&self) -> u64 {
        self.floods.load(Ordering::Relaxed)
    }

    /// `f` of `peer`'s bucket at `now` (false for a peer not seen): for tests.
    #[cfg(test)]
    fn with_bucket(&self, peer: IpAddr, now: Instant, f: impl FnOnce(&mut Bucket, u32, Instant) -> bool) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.buckets.get_mut(&bucket_key(peer)).is_some_and(|b| f(b, self.limits.per_peer_per_second, now))
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
        // A few refused calls cost the peer nothing more (a second's worth
        // make it flooding: see below).
        for _ in 0..5 {
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

    /// Sends `count` calls from `from` at `per_second`, from `t0`; the time
    /// of the last and how many were admitted.
    fn calls(limiter: &RateLimiter, from: u8, per_second: u32, count: u32, t0: Instant) -> (Instant, u32) {
        let (mut last, mut admitted) = (t0, 0);
        for i in 0..count {
            last = t0 + Duration::from_secs_f64(f64::from(i) / f64::from(per_second));
            admitted += u32::from(limiter.admit_at(ip(from), last).is_ok());
        }
        (last, admitted)
    }

    fn state(limiter: &RateLimiter, from: u8, t: Instant) -> (bool, bool) {
        let mut peers = limiter.peers.lock().unwrap();
        let b = peers.buckets.get_mut(&ip(from).unwrap()).unwrap();
        (b.is_empty(10, t), b.is_flooding(10, t))
    }

    #[test]
    fn a_peer_far_past_its_rate_is_flooding() {
        let limiter = RateLimiter::new(RateLimits { per_peer_per_second: 10, global_per_second: 1000 });
        let start = Instant::now();
        // Twice its rate for 10 s: refused about half the time, never flooding.
        let (last, admitted) = calls(&limiter, 1, 20, 200, start);
        assert_eq!(state(&limiter, 1, last), (true, false));
        assert!((105..=115).contains(&admitted), "{admitted}");
        // Ten times its rate: past its burst and a second's worth of
        // refusals, flooding, and the flood epoch moves.
        let before = limiter.flood_epoch();
        let (last, _) = calls(&limiter, 2, 100, 20, start);
        assert_eq!(state(&limiter, 2, last), (true, false));
        assert_eq!(limiter.flood_epoch(), before);
        let (last, _) = calls(&limiter, 2, 100, 5, start + Duration::from_millis(200));
        assert_eq!(state(&limiter, 2, last), (true, true));
        assert!(limiter.flood_epoch() > before);
        // After its cut-off, it is neither.
        assert_eq!(state(&limiter, 2, last + CUT_OFF + Duration::from_secs(1)), (false, false));
        // A peer the limiter has not seen is neither.
        let unseen = IpAddr::from([10, 9, 9, 9]);
        assert_eq!(limiter.connection(unseen), NewConnection::Serve);
        assert_eq!(limiter.cut_off(unseen), None);
    }

    #[test]
    fn a_peer_flooding_again_and_again_is_cut_off_for_longer_each_time() {
        let limiter = RateLimiter::new(RateLimits { per_peer_per_second: 10, global_per_second: 1000 });
        let start = Instant::now();
        // Ten times its rate, without pause, for ten minutes.
        let (mut admitted, mut cut_offs, mut was_cut) = (Vec::new(), Vec::new(), false);
        for i in 0..60_000u32 {
            let now = start + Duration::from_millis(u64::from(i) * 10);
            let result = limiter.admit_at(ip(1), now);
            if result.is_ok() {
                admitted.push(now);
            }
            let cut = limiter.with_bucket(ip(1).unwrap(), now, Bucket::is_flooding);
            if cut && !was_cut {
                cut_offs.push((now, result.unwrap_err()));
            }
            was_cut = cut;
            // While cut off, its calls are refused, told to wait until the end.
            if cut {
                assert!(result.is_err());
            }
        }
        // Cut off for 5, 10, 20, 40, then 80 s; let back for a fraction of a
        // second between them.
        let lengths: Vec<u64> = cut_offs.iter().map(|(_, wait)| wait.as_secs()).collect();
        assert_eq!(lengths.get(..6), Some(&[5, 10, 20, 40, 80, 80][..]), "{lengths:?}");
        for pair in cut_offs.windows(2) {
            let let_back = pair[1].0.saturating_duration_since(pair[0].0 + pair[0].1);
            assert!(let_back < Duration::from_millis(500), "{let_back:?}");
        }
        // Over ten minutes it got its first burst and a call or so each
        // time it was let back (with an empty bucket), not 6,000 calls.
        assert!(admitted.len() < 30, "{}", admitted.len());
        let after_first = admitted.iter().filter(|at| **at > cut_offs[0].0).count();
        assert!(after_first <= cut_offs.len(), "{after_first} calls admitted after the first cut-off");
        // Others are served meanwhile.
        limiter.admit_at(ip(2), start + Duration::from_secs(30)).unwrap();
        // A full table would not forget it while it is cut off, nor soon after.
        let end = cut_offs.last().map(|(at, wait)| *at + *wait).unwrap();
        let bucket = limiter.peers.lock().unwrap().buckets[&ip(1).unwrap()];
        assert!(!bucket.is_full(10, end - Duration::from_secs(1)));
        assert!(!bucket.is_full(10, end + STRIKES_KEPT - Duration::from_secs(1)));
        assert!(bucket.is_full(10, end + STRIKES_KEPT));
        // Quiet for longer than that, its next flood counts as a first one.
        let later = end + STRIKES_KEPT + Duration::from_secs(1);
        let (_, _) = calls(&limiter, 1, 100, 30, later);
        let wait = limiter.admit_at(ip(1), later + Duration::from_millis(300)).unwrap_err();
        assert!(limiter.with_bucket(ip(1).unwrap(), later + Duration::from_millis(300), Bucket::is_flooding));
        assert!(wait <= CUT_OFF && wait > CUT_OFF - Duration::from_secs(1), "{wait:?}");
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
