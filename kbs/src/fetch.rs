//! What the broker's outbound clients share: the Vault/OpenBao store and
//! the vendor collateral fetchers (AMD KDS, Intel PCS): which URLs may be
//! plain `http`, the vendor HTTP client, back-off state (for a whole
//! service, and per key so that one platform's failures never hold back
//! another's), size-capped file reads and atomic file writes.
//!
//! A leaf: it imports no other module of the crate, so both the store and
//! the evidence fetchers can use it. Its errors name the path or URL; the
//! collateral fetchers report them as `CollateralUnavailable`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Why a fetch helper failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is over its size cap.
    #[error("{} is larger than {cap} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        cap: usize,
    },
    /// A configured vendor URL does not parse.
    #[error("{what} URL {url:?}: {why}")]
    BadUrl {
        /// Which service.
        what: String,
        /// The URL.
        url: String,
        /// The parser's message.
        why: String,
    },
    /// A configured vendor URL is neither `https` nor `http` on loopback.
    #[error("{what} URLs must be https (http only on loopback)")]
    NotHttps {
        /// Which service.
        what: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// Whether `address` names this machine (`localhost` or a loopback IP):
/// the only hosts plain `http` is accepted (or not warned about) for.
pub fn is_loopback(address: &reqwest::Url) -> bool {
    match address.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Checks a vendor service URL (`what` names it in errors): `Ok(true)` for
/// `https`, `Ok(false)` for plain `http` to a loopback host (a test or a
/// local PCCS); anything else is refused.
pub fn vendor_url_is_https(url: &str, what: &str) -> Result<bool, FetchError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::BadUrl {
        what: what.to_owned(),
        url: url.to_owned(),
        why: e.to_string(),
    })?;
    match parsed.scheme() {
        "https" => Ok(true),
        "http" if is_loopback(&parsed) => Ok(false),
        _ => Err(FetchError::NotHttps { what: what.to_owned() }),
    }
}

/// The HTTP client of a vendor service fetcher: bounded time, at most three
/// redirects, `https` only unless every configured URL is on loopback.
pub fn vendor_client(
    timeout: Duration,
    connect_timeout: Duration,
    https_only: bool,
) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .https_only(https_only)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("kbs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))
}

/// The delay before a vendor service is asked again after `failures`
/// consecutive failures (1 for the first): `min * 2^(failures-1)`, at least
/// what the server asked for in `Retry-After`, never more than `max`.
pub fn backoff_delay(failures: u32, retry_after: Option<Duration>, min: Duration, max: Duration) -> Duration {
    let exp = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    let exponential = min.saturating_mul(exp);
    exponential.max(retry_after.unwrap_or_default()).min(max)
}

/// Back-off after consecutive failures of one vendor service.
#[derive(Debug, Default)]
pub struct Backoff {
    until: Option<Instant>,
    failures: u32,
}

impl Backoff {
    /// How long the service is still left alone at `now`, if it is.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until.filter(|until| now < *until).map(|until| until.duration_since(now))
    }

    /// A request succeeded: the next one may go at once.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.until = None;
    }

    /// A request failed at `now`; returns the [`backoff_delay`] before the
    /// next one.
    pub fn failed(&mut self, now: Instant, retry_after: Option<Duration>, min: Duration, max: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = backoff_delay(self.failures, retry_after, min, max);
        self.until = Some(now + delay);
        delay
    }
}

impl Backoff {
    /// Leaves the service alone until at least `now + delay`, without
    /// counting a failure (a remembered "not found").
    pub fn hold(&mut self, now: Instant, delay: Duration) {
        let until = now + delay;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }
}

/// Why a key is held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldKind {
    /// The service answered that it has nothing under this key.
    NotFound,
    /// Requests for this key failed.
    Failing,
}

/// Back-off and "not found" memory per key (an FMSPC, a chip and TCB, a
/// URL), so that one key's failures never hold back another's. Bounded: a
/// new key at the cap first drops the entries whose hold has lapsed, then
/// the oldest entry. Forgetting an entry only lets its key be asked again.
#[derive(Debug)]
pub struct KeyedBackoff<K> {
    entries: HashMap<K, (u64, HoldKind, Backoff)>,
    next: u64,
    cap: usize,
}

impl<K: Eq + Hash + Clone> KeyedBackoff<K> {
    /// An empty map of at most `cap` keys (at least one).
    pub fn new(cap: usize) -> Self {
        Self { entries: HashMap::new(), next: 0, cap: cap.max(1) }
    }

    /// How many keys are held or remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Why and for how long `key` is still held back at `now`, if it is.
    pub fn remaining(&self, key: &K, now: Instant) -> Option<(HoldKind, Duration)> {
        let (_, kind, backoff) = self.entries.get(key)?;
        backoff.remaining(now).map(|d| (*kind, d))
    }

    /// A request for `key` succeeded: its entry is forgotten.
    pub fn succeeded(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// A request for `key` failed at `now`; returns the [`backoff_delay`]
    /// before `key` is asked again (other keys are not affected).
    pub fn failed(
        &mut self,
        key: &K,
        now: Instant,
        retry_after: Option<Duration>,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let entry = self.entry(key, now);
        entry.1 = HoldKind::Failing;
        entry.2.failed(now, retry_after, min, max)
    }

    /// The service has nothing under `key`: it is not asked again for
    /// `ttl`.
    pub fn not_found(&mut self, key: &K, now: Instant, ttl: Duration) {
        let entry = self.entry(key, now);
        entry.1 = HoldKind::NotFound;
        entry.2.hold(now, ttl);
    }

    fn entry(&mut self, key: &K, now: Instant) -> &mut (u64, HoldKind, Backoff) {
        if !self.entries.contains_key(key) && self.entries.len() >= self.cap {
            self.entries.retain(|_, (_, _, b)| b.remaining(now).is_some());
            while self.entries.len() >= self.cap {
                let oldest = self.entries.iter().min_by_key(|(_, (seq, _, _))| *seq).map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => {
                        self.entries.remove(&k);
                    }
                    None => break,
                }
            }
        }
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        self.entries.entry(key.clone()).or_insert_with(|| (seq, HoldKind::Failing, Backoff::default()))
    }
}

/// A bounded set that forgets its oldest member first.
#[derive(Debug)]
pub struct BoundedSet<K> {
    members: HashSet<K>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Eq + Hash + Clone> BoundedSet<K> {
    /// An empty set of at most `cap` members (at least one).
    pub fn new(cap: usize) -> Self {
        Self { members: HashSet::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Adds `key`, forgetting the oldest member when full.
    pub fn insert(&mut self, key: K) {
        if self.members.contains(&key) {
            return;
        }
        while self.members.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.members.remove(&old);
                }
                None => break,
            }
        }
        self.members.insert(key.clone());
        self.order.push_back(key);
    }

    /// Whether `key` is a member.
    pub fn contains(&self, key: &K) -> bool {
        self.members.contains(key)
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// The delay a vendor's answer asks for in its `Retry-After` header, if
/// any (see [`parse_retry_after`]).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// Why a response body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Longer than the cap (announced or received).
    #[error("response too large")]
    TooLarge,
    /// The connection failed while reading (the message names no URL).
    #[error("{0}")]
    Transport(String),
}

/// Reads a response body of at most `cap` bytes: refused when its
/// `Content-Length` says more, or as soon as more arrives.
pub async fn read_body_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| usize::try_from(n).map_or(true, |n| n > cap)) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| BodyError::Transport(e.without_url().to_string()))? {
        if body.len().saturating_add(chunk.len()) > cap {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a whole file of at most `cap` bytes; `None` if it does not exist.
pub async fn read_capped(path: &Path, cap: usize) -> Result<Option<Vec<u8>>, FetchError> {
    let io = |source| FetchError::Io { path: path.to_owned(), source };
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut bytes).await.map_err(io)?;
    if bytes.len() > cap {
        return Err(FetchError::TooLarge { path: path.to_owned(), cap });
    }
    Ok(Some(bytes))
}

/// Writes a file atomically (temporary file, then rename), creating its
/// directory.
pub async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let io = |source| FetchError::Io { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    tokio::fs::rename(&tmp, path).await.map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for url in ["http://localhost:8200", "http://127.0.0.1/x", "http://127.9.9.9", "http://[::1]:80/"] {
            assert!(is_loopback(&reqwest::Url::parse(url).unwrap()), "{url}");
        }
        for url in ["http://example.com", "http://10.0.0.1", "http://[::2]/", "http://localhost.example.com"] {
            assert!(!is_loopback(&reqwest::Url::parse(url).unwrap()), "{url}");
        }
    }

    #[test]
    fn vendor_urls_are_https_or_plain_http_on_loopback_only() {
        assert!(vendor_url_is_https("https://kdsintf.amd.com", "KDS").unwrap());
        for url in ["http://127.0.0.1:8080", "http://localhost/x", "http://[::1]:1"] {
            assert!(!vendor_url_is_https(url, "KDS").unwrap(), "{url}");
        }
        for url in ["http://kdsintf.amd.com", "http://10.0.0.1", "ftp://127.0.0.1", "kdsintf.amd.com", ""] {
            let err = vendor_url_is_https(url, "PCS").unwrap_err();
            assert!(matches!(err, FetchError::BadUrl { .. } | FetchError::NotHttps { .. }), "{url}: {err}");
            assert!(err.to_string().contains("PCS"), "{url}: {err}");
        }
    }

    #[test]
    fn backoff_is_exponential_capped_and_honours_retry_after() {
        let min = Duration::from_secs(5);
        let max = Duration::from_secs(600);
        assert_eq!(backoff_delay(1, None, min, max), Duration::from_secs(5));
        assert_eq!(backoff_delay(2, None, min, max), Duration::from_secs(10));
        assert_eq!(backoff_delay(4, None, min, max), Duration::from_secs(40));
        assert_eq!(backoff_delay(60, None, min, max), max);
        assert_eq!(backoff_delay(1, Some(Duration::from_secs(120)), min, max), Duration::from_secs(120));
        assert_eq!(backoff_delay(1, Some(Duration::from_secs(1_000_000)), min, max), max);
        assert_eq!(backoff_delay(0, None, min, max), min);
    }

    #[test]
    fn backoff_state() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(600));
        let now = Instant::now();
        let mut backoff = Backoff::default();
        assert_eq!(backoff.remaining(now), None);
        assert_eq!(backoff.failed(now, None, min, max), min);
        assert_eq!(backoff.remaining(now), Some(min));
        assert_eq!(backoff.remaining(now + min), None);
        assert_eq!(backoff.failed(now, None, min, max), 2 * min);
        assert_eq!(backoff.failed(now, Some(Duration::from_secs(300)), min, max), Duration::from_secs(300));
        backoff.succeeded();
        assert_eq!(backoff.remaining(now), None);
        assert_eq!(backoff.failed(now, None, min, max), min);
    }

    #[test]
    fn keyed_backoff_holds_keys_apart_and_is_bounded() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(600));
        let now = Instant::now();
        let mut holds = KeyedBackoff::new(2);
        assert_eq!(holds.failed(&"a", now, None, min, max), min);
        assert_eq!(holds.remaining(&"a", now), Some((HoldKind::Failing, min)));
        assert_eq!(holds.remaining(&"b", now), None);
        assert_eq!(holds.failed(&"a", now, None, min, max), 2 * min);
        holds.not_found(&"b", now, Duration::from_secs(60));
        assert_eq!(holds.remaining(&"b", now), Some((HoldKind::NotFound, Duration::from_secs(60))));
        // Full: a third key evicts the oldest ("a"), whose hold has not lapsed.
        holds.failed(&"c", now, None, min, max);
        assert_eq!(holds.len(), 2);
        assert_eq!(holds.remaining(&"a", now), None);
        assert!(holds.remaining(&"b", now).is_some());
        // Lapsed holds go first: "c" (5 s) has lapsed after 10 s, "b" (60 s) has not.
        let later = now + Duration::from_secs(10);
        holds.failed(&"d", later, None, min, max);
        assert!(holds.remaining(&"b", later).is_some());
        assert!(holds.remaining(&"d", later).is_some());
        holds.succeeded(&"d");
        assert_eq!(holds.remaining(&"d", later), None);
        assert_eq!(holds.len(), 1);
    }

    #[test]
    fn bounded_set_forgets_the_oldest() {
        let mut set = BoundedSet::new(2);
        set.insert(1);
        set.insert(2);
        set.insert(1);
        set.insert(3);
        assert!(!set.contains(&1));
        assert!(set.contains(&2) && set.contains(&3));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now - Duration::from_secs(10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + Duration::from_secs(10)),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test]
    async fn capped_reads_and_atomic_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file");
        assert!(read_capped(&path, 4).await.unwrap().is_none());
        write_atomic(&path, b"1234").await.unwrap();
        assert_eq!(read_capped(&path, 4).await.unwrap().as_deref(), Some(&b"1234"[..]));
        write_atomic(&path, b"12345").await.unwrap();
        let err = read_capped(&path, 4).await.unwrap_err();
        assert_eq!(err.to_string(), format!("{} is larger than 4 bytes", path.display()));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
