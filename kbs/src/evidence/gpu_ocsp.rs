//! Online OCSP for NVIDIA device chains (`[gpu] ocsp_fetch`): when a
//! device comes without a stapled response that shows its chain good, the
//! broker asks the responder itself.
//!
//! For every certificate OCSP covers (all but the leaf and the root, see
//! [`ocsp::covered`]) of a chain that already verified to a pinned root
//! (its DER certificates, as the verifier parsed them),
//! [`GpuOcspFetcher::responses`] returns a response: from its cache while
//! the response is inside its window at `now` (bounded, oldest evicted
//! first, each entry until its `nextUpdate`), else by POSTing the
//! certificate's request ([`ocsp::request`]) to the responder: the one the
//! certificate names (Authority Information Access, asked over `https`),
//! else the one the nearest certificate above it names (NVIDIA's device
//! identity certificates name none; one responder serves the chain), or
//! the configured `ocsp_url` for all. A response is kept only if the pure
//! check ([`ocsp::verify_ocsp_answer`]) finds it authentic and fresh, and
//! then whatever it says (`good`, `revoked` or `unknown`: a revoked device
//! does not make every release ask the responder again); the caller checks
//! the set again with [`ocsp::verify_chain_ocsp`], so nothing here decides
//! a status.
//!
//! Each request is bounded in time and size; a responder that fails, times
//! out or answers with something that does not verify is left alone for a
//! back-off that doubles per failure (per responder, so one bad responder
//! never holds back another). The certificates of a chain are asked for
//! at once, and each response is fetched once however many releases need
//! it at that moment: the others wait for that one request, and a slow
//! answer for one certificate holds back no other. A certificate whose
//! response cannot be had is left out, which the release flow treats per
//! [`OcspFetch`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::EvidenceError;
use super::bounded::BoundedMap;
use super::gpu::chain;
use super::gpu::ocsp;
use crate::fetch::{KeyedBackoff, read_body_capped, vendor_client, vendor_url_is_https};

/// Default bound on cached responses (three per device model and chip).
pub const DEFAULT_OCSP_CACHE_CAPACITY: usize = 4096;

/// Most responders whose back-off is remembered.
const HOLD_CAPACITY: usize = 64;

/// Whether and how the broker fetches OCSP responses for device chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OcspFetch {
    /// Never (the default): only stapled responses are checked; a device
    /// without them has revocation `not_checked`.
    #[default]
    Off,
    /// Fetch what is not stapled; if no fresh response can be had, the
    /// device's revocation is `not_checked` (for the policy to judge).
    BestEffort,
    /// Fetch what is not stapled; if no fresh response can be had, the
    /// device is refused (`collateral_unavailable`).
    Require,
}

/// Settings of a [`GpuOcspFetcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuOcspConfig {
    /// `best_effort` or `require` (`off` builds no fetcher).
    pub policy: OcspFetch,
    /// The responder asked for every certificate, instead of the one each
    /// names (`https`, or plain `http` on loopback).
    pub url: Option<String>,
    /// Bound on one request, connection included.
    pub timeout: Duration,
    /// First back-off after a responder failed; doubles per failure.
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Most responses cached.
    pub cache_capacity: usize,
}

impl GpuOcspConfig {
    /// Defaults under `policy`: each certificate's own responder, 5 s per
    /// request, back-off from 5 s to 15 min.
    pub fn new(policy: OcspFetch) -> Self {
        Self {
            policy,
            url: None,
            timeout: Duration::from_secs(5),
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(15 * 60),
            cache_capacity: DEFAULT_OCSP_CACHE_CAPACITY,
        }
    }
}

/// An authentic response (of any status) and the end of its window.
struct Cached {
    der: Vec<u8>,
    next_update: OffsetDateTime,
}

/// Fetches and caches OCSP responses for verified device chains.
pub struct GpuOcspFetcher {
    client: reqwest::Client,
    config: GpuOcspConfig,
    /// Keyed by the request's DER (which is the certificate's CertID).
    cache: Mutex<BoundedMap<Vec<u8>, Cached>>,
    /// Back-off per responder URL.
    holds: Mutex<KeyedBackoff<String>>,
    /// The turn of each request (DER) being fetched: whoever holds it
    /// fetches, the others wait and then find the response cached. An entry
    /// lives only while someone holds or waits for it.
    in_flight: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

/// A place in the line for one request's fetch; leaving it (also when the
/// waiting release is dropped) removes the line once nobody else is in it.
struct Turn<'a> {
    fetcher: &'a GpuOcspFetcher,
    request: &'a [u8],
    line: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.fetcher.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference and this one: nobody else is waiting. (Others
        // take a reference only under the map's lock, held here.)
        if Arc::strong_count(&self.line) <= 2 {
            in_flight.remove(self.request);
        }
    }
}

impl fmt::Debug for GpuOcspFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuOcspFetcher")
            .field("config", &self.config)
            .field("cached", &self.cached())
            .field("fetching", &self.fetching())
            .finish_non_exhaustive()
    }
}

impl GpuOcspFetcher {
    /// A fetcher with `config`. Refuses a `url` that is not `https`
    /// (plain `http` only on loopback).
    pub fn new(config: GpuOcspConfig) -> Result<Self, EvidenceError> {
        let https = match &config.url {
            Some(url) => vendor_url_is_https(url, "GPU OCSP")?,
            None => true,
        };
        let client = vendor_client(config.timeout, config.timeout, https)?;
        Ok(Self {
            client,
            cache: Mutex::new(BoundedMap::new(config.cache_capacity)),
            holds: Mutex::new(KeyedBackoff::new(HOLD_CAPACITY)),
            in_flight: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// What the release flow does when no fresh response can be had.
    pub fn policy(&self) -> OcspFetch {
        self.config.policy
    }

    /// How many responses are cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// How many responses are being fetched or waited for.
    pub fn fetching(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// A response for each certificate of `ders` (a chain that verified,
    /// DER, leaf first, as the verifier parsed it:
    /// [`super::gpu::VerifiedDevice::chain`]) that OCSP covers, where one
    /// can be had: cached while fresh at `now`, else fetched (see the module
    /// docs). Never fails: a certificate without a response is left out,
    /// and the caller's check reports it missing. A chain longer than a
    /// device chain's PEM may hold ([`chain::pem_chain`]) has none.
    pub async fn responses(&self, ders: &[Vec<u8>], now: OffsetDateTime) -> Vec<Vec<u8>> {
        if ders.len() > chain::CHAIN_LEN + 1 {
            return Vec::new();
        }
        let pending = ocsp::covered(ders).enumerate().map(|(at, (target, issuer))| {
            // The device identity certificate names no responder: NVIDIA's
            // one responder serves the whole chain, as its issuer names it.
            let named = ders.iter().skip(at.saturating_add(1)).find_map(|der| https_responder(der));
            self.response(target, issuer, named, now)
        });
        let mut out = Vec::new();
        for result in futures_util::future::join_all(pending).await {
            match result {
                Ok(der) => out.push(der),
                Err(why) => tracing::info!(error = %why, "no OCSP response for a GPU certificate"),
            }
        }
        out
    }

    async fn response(
        &self,
        target: &[u8],
        issuer: &[u8],
        named: Option<String>,
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, String> {
        let request = ocsp::request(target, issuer).map_err(|e| e.to_string())?;
        if let Some(der) = self.lookup(&request, now) {
            return Ok(der);
        }
        let url = match &self.config.url {
            Some(url) => url.clone(),
            None => named.ok_or("the chain names no OCSP responder")?,
        };
        let turn = self.turn(&request);
        let _fetching = turn.line.lock().await;
        // Another task may have fetched it while this one waited.
        if let Some(der) = self.lookup(&request, now) {
            return Ok(der);
        }
        let started = Instant::now();
        if let Some((_, remaining)) = self.holds().remaining(&url, started) {
            return Err(format!("the OCSP responder is backing off for {}s", remaining.as_secs()));
        }
        let fetched = self.post(&url, &request).await;
        // Authentic and fresh, whatever the status: kept until its
        // nextUpdate, as the responder would give the same answer until
        // then; the caller's check reads the status (a revoked or unknown
        // one refuses the device).
        let checked = fetched.and_then(|body| match ocsp::verify_ocsp_answer(&body, target, issuer, now) {
            Ok(answer) => Ok((body, answer.next_update)),
            Err(e) => Err(format!("the responder's answer does not verify: {e}")),
        });
        match checked {
            Ok((body, next_update)) => {
                self.holds().succeeded(&url);
                let cached = Cached { der: body.clone(), next_update };
                self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(request.clone(), cached);
                Ok(body)
            }
            Err(why) => {
                let delay = self.holds().failed(&url, started, None, self.config.min_backoff, self.config.max_backoff);
                tracing::warn!(error = %why, delay_s = delay.as_secs(), "GPU OCSP request failed; backing off");
                Err(why)
            }
        }
    }

    /// A place in the line of `request`'s fetch.
    fn turn<'a>(&'a self, request: &'a [u8]) -> Turn<'a> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let line = Arc::clone(in_flight.entry(request.to_vec()).or_default());
        Turn { fetcher: self, request, line }
    }

    fn holds(&self) -> MutexGuard<'_, KeyedBackoff<String>> {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached response for `request`, if it is still inside its window.
    fn lookup(&self, request: &[u8], now: OffsetDateTime) -> Option<Vec<u8>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(request).filter(|c| now <= c.next_update).map(|c| c.der.clone())
    }

    /// One POST, bounded in time (the client's timeout, and this one over
    /// the whole exchange) and size.
    async fn post(&self, url: &str, request: &[u8]) -> Result<Vec<u8>, String> {
        let exchange = async {
            let resp = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/ocsp-request")
                .header(reqwest::header::ACCEPT, "application/ocsp-response")
                .body(request.to_vec())
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            if resp.status() != reqwest::StatusCode::OK {
                return Err(format!("HTTP {}", resp.status()));
            }
            read_body_capped(resp, ocsp::MAX_OCSP_LEN).await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.config.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", self.config.timeout.as_secs())))
    }
}

/// The responder a certificate names, asked over `https` (NVIDIA's
/// certificates name `http://ocsp.ndis.nvidia.com`, which serves `https`
/// too, as NVIDIA's own verifiers use it); `None` for another scheme or
/// none at all.
fn https_responder(cert: &[u8]) -> Option<String> {
    let url = ocsp::responder_url(cert)?;
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    Some(format!("https://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_override_must_be_https_unless_on_loopback() {
        let with = |url: &str| {
            GpuOcspFetcher::new(GpuOcspConfig { url: Some(url.into()), ..GpuOcspConfig::new(OcspFetch::Require) })
        };
        assert!(with("https://ocsp.example").is_ok());
        assert!(with("http://127.0.0.1:9/").is_ok());
        assert!(with("http://ocsp.example/").is_err());
        assert!(with("not a url").is_err());
        assert!(GpuOcspFetcher::new(GpuOcspConfig::new(OcspFetch::BestEffort)).is_ok());
        assert_eq!(OcspFetch::default(), OcspFetch::Off);
    }

    #[tokio::test]
    async fn garbage_chains_have_no_responses() {
        let fetcher = GpuOcspFetcher::new(GpuOcspConfig::new(OcspFetch::BestEffort)).unwrap();
        let now = OffsetDateTime::UNIX_EPOCH;
        assert!(fetcher.responses(&[], now).await.is_empty());
        let root = chain::pem_chain(attester_client::simulated::gpu_test_root_pem().as_bytes()).unwrap();
        assert!(fetcher.responses(&root, now).await.is_empty());
        let garbage = vec![b"not a certificate".to_vec(); chain::CHAIN_LEN];
        assert!(fetcher.responses(&garbage, now).await.is_empty());
        assert_eq!((fetcher.cached(), fetcher.fetching()), (0, 0));
    }
}
