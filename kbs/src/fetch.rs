//! What the broker's outbound clients share: the Vault/OpenBao store and
//! the vendor collateral fetchers (AMD KDS, Intel PCS): which URLs may be
//! plain `http`, the vendor HTTP client, back-off state, size-capped file
//! reads and atomic file writes.
//!
//! A leaf: it imports no other module of the crate, so both the store and
//! the evidence fetchers can use it. Its errors name the path or URL; the
//! collateral fetchers report them as `CollateralUnavailable`.

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

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
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
