//! Where TDX collateral comes from: an offline directory, Intel's PCS (or a
//! caching PCCS) behind an on-disk cache, and the resolver that picks
//! between them. What the collateral is, and its file forms, is
//! [`super::tdx_collateral`].
//!
//! Nothing a source returns is trusted; sources are about availability.
//! - [`TdxCollateralDir`]: an offline directory, for air-gapped clusters.
//!   It holds, by FMSPC (12 hex digits, any case) and PCK CA (`platform` or
//!   `processor`), dcap-qvl `QuoteCollateralV3` JSON files:
//!   ```text
//!   <dir>/<fmspc>-<ca>.json    preferred
//!   <dir>/<fmspc>.json         when one CA serves every platform
//!   ```
//!   or PCS responses saved as files ([`PcsFiles`]).
//! - [`PcsFetcher`]: a configured PCS or PCCS base URL, with an on-disk
//!   cache laid out as a [`TdxCollateralDir`] (so the cache is also an
//!   offline directory). A cached set is refreshed before its earliest
//!   `nextUpdate` (by [`PcsConfig::refresh_before`]); after a failure the
//!   fetcher backs off exponentially and serves the cached set meanwhile.
//!
//! # Who can make the broker ask PCS
//! The FMSPC a quote's collateral is looked up by comes from its PCK
//! certificate, which anyone can make. So a fetch is only made for a quote
//! that passed every check that needs no collateral (the caller's check:
//! the PCK chain to a pinned Intel root, the QE report and quote
//! signatures; [`TdxCollateralResolver::resolve_checked`]). A quote with a
//! self-made PCK is refused for its chain and PCS hears nothing of it.
//! Back-off and the memory of a 404 are kept per FMSPC and PCK CA (bounded,
//! oldest forgotten first), so one platform's failures never hold back
//! another's; only a 429/503, PCS asking to be left alone, holds back every
//! FMSPC, for the `Retry-After` it gives.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::EvidenceError;
use super::tdx_collateral::{Fmspc, MAX_COLLATERAL_LEN, PckCa, PcsFiles, TdxCollateral};
use crate::fetch::{
    Backoff, HoldKind, KeyedBackoff, read_body_capped, retry_after, vendor_client, vendor_url_is_https, write_atomic,
};

/// Bound on the resolver's in-memory map.
const MEMO_CAPACITY: usize = 1024;

/// Most FMSPC/CA keys whose back-off or 404 is remembered.
const HOLD_CAPACITY: usize = 1024;

/// PCS responses saved as files, read from and written to a directory.
impl PcsFiles {
    /// Reads the PCS files of `fmspc` and `ca` from `dir` (see the module
    /// docs); `None` when the TCB info file is absent.
    pub async fn read_dir(dir: &Path, fmspc: Fmspc, ca: PckCa) -> Result<Option<Self>, EvidenceError> {
        let tcb_names = [format!("tcb-{}.json", hex::encode(fmspc.0)), format!("tcb-{}.json", fmspc.to_hex_upper())];
        let mut tcb_info = None;
        let mut tcb_stem = String::new();
        for name in &tcb_names {
            if let Some(bytes) = read_capped(&dir.join(name)).await? {
                tcb_info = Some(bytes);
                tcb_stem = name.trim_end_matches(".json").to_owned();
                break;
            }
        }
        let Some(tcb_info) = tcb_info else { return Ok(None) };
        let required = |what: &str, found: Option<Vec<u8>>| {
            found.ok_or_else(|| EvidenceError::CollateralUnavailable(format!("{} has no {what}", dir.display())))
        };
        let text = |bytes: Vec<u8>, what: &str| {
            String::from_utf8(bytes).map_err(|_| EvidenceError::CollateralInvalid(format!("{what} is not text")))
        };
        let mut pck_crl = read_capped(&dir.join(format!("pckcrl-{ca}.der"))).await?;
        if pck_crl.is_none() {
            pck_crl = read_capped(&dir.join(format!("pckcrl-{ca}.pem"))).await?;
        }
        Ok(Some(Self {
            tcb_info,
            tcb_info_issuer_chain: text(
                required(
                    "TCB info issuer chain",
                    read_capped(&dir.join(format!("{tcb_stem}.issuer-chain.pem"))).await?,
                )?,
                "TCB info issuer chain",
            )?,
            qe_identity: required("qe-identity.json", read_capped(&dir.join("qe-identity.json")).await?)?,
            qe_identity_issuer_chain: text(
                required("QE identity issuer chain", read_capped(&dir.join("qe-identity.issuer-chain.pem")).await?)?,
                "QE identity issuer chain",
            )?,
            pck_crl: required("PCK CRL", pck_crl)?,
            pck_crl_issuer_chain: text(
                required(
                    "PCK CRL issuer chain",
                    read_capped(&dir.join(format!("pckcrl-{ca}.issuer-chain.pem"))).await?,
                )?,
                "PCK CRL issuer chain",
            )?,
            root_ca_crl: required("rootcacrl.der", read_capped(&dir.join("rootcacrl.der")).await?)?,
        }))
    }

    /// Writes these files into `dir` (created if missing).
    pub async fn write_dir(&self, dir: &Path, fmspc: Fmspc, ca: PckCa) -> Result<(), EvidenceError> {
        let stem = format!("tcb-{}", hex::encode(fmspc.0));
        let files: [(String, &[u8]); 7] = [
            (format!("{stem}.json"), &self.tcb_info),
            (format!("{stem}.issuer-chain.pem"), self.tcb_info_issuer_chain.as_bytes()),
            ("qe-identity.json".into(), &self.qe_identity),
            ("qe-identity.issuer-chain.pem".into(), self.qe_identity_issuer_chain.as_bytes()),
            (format!("pckcrl-{ca}.der"), &self.pck_crl),
            (format!("pckcrl-{ca}.issuer-chain.pem"), self.pck_crl_issuer_chain.as_bytes()),
            ("rootcacrl.der".into(), &self.root_ca_crl),
        ];
        for (name, bytes) in files {
            write_atomic(&dir.join(name), bytes).await?;
        }
        Ok(())
    }
}

/// Reads a file of at most [`MAX_COLLATERAL_LEN`] bytes; `None` if absent.
async fn read_capped(path: &Path) -> Result<Option<Vec<u8>>, EvidenceError> {
    Ok(crate::fetch::read_capped(path, MAX_COLLATERAL_LEN).await?)
}

/// An offline collateral directory; see the module docs for the layout.
#[derive(Clone, Debug)]
pub struct TdxCollateralDir {
    root: PathBuf,
}

impl TdxCollateralDir {
    /// A directory rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the set of `fmspc` and `ca` is written.
    pub fn path(&self, fmspc: Fmspc, ca: PckCa) -> PathBuf {
        self.root.join(format!("{fmspc}-{ca}.json"))
    }

    /// The set for `fmspc` and `ca`, if the directory has one: a
    /// `QuoteCollateralV3` file, else PCS files. A set for another FMSPC or
    /// CA under these names is refused.
    pub async fn lookup(&self, fmspc: Fmspc, ca: PckCa) -> Result<Option<TdxCollateral>, EvidenceError> {
        let names = [
            format!("{fmspc}-{ca}.json"),
            format!("{}-{ca}.json", fmspc.to_hex_upper()),
            format!("{fmspc}.json"),
            format!("{}.json", fmspc.to_hex_upper()),
        ];
        let mut found = None;
        for name in names {
            if let Some(bytes) = read_capped(&self.root.join(&name)).await? {
                found = Some(TdxCollateral::from_json(&bytes)?);
                break;
            }
        }
        if found.is_none()
            && let Some(files) = PcsFiles::read_dir(&self.root, fmspc, ca).await?
        {
            found = Some(files.into_collateral()?);
        }
        match found {
            Some(set) if set.fmspc() != fmspc || set.pck_ca() != ca => Err(EvidenceError::CollateralInvalid(format!(
                "collateral filed under {fmspc}/{ca} is for {}/{}",
                set.fmspc(),
                set.pck_ca()
            ))),
            other => Ok(other),
        }
    }

    /// Stores a set under its FMSPC and CA, atomically.
    pub async fn store(&self, set: &TdxCollateral) -> Result<(), EvidenceError> {
        Ok(write_atomic(&self.path(set.fmspc(), set.pck_ca()), &set.to_json()?).await?)
    }
}

/// Settings of a [`PcsFetcher`].
#[derive(Clone, Debug)]
pub struct PcsConfig {
    /// Base URL of a PCCS or of Intel's PCS (`https://api.trustedservices.intel.com`);
    /// the `/sgx|tdx/certification/v4/...` paths are appended. Plain
    /// `http` only for loopback hosts.
    pub base_url: String,
    /// Where the root CA CRL comes from; by default the PCCS path
    /// `{base}/sgx/certification/v4/rootcacrl`. For Intel's PCS, use the
    /// root CA's CRL distribution point.
    pub root_crl_url: Option<String>,
    /// On-disk cache, laid out as a [`TdxCollateralDir`].
    pub cache_dir: PathBuf,
    /// A cached set is refreshed this long before its earliest `nextUpdate`.
    pub refresh_before: Duration,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connection timeout (at most `timeout` is ever waited).
    pub connect_timeout: Duration,
    /// First back-off after a failure; doubles per consecutive failure.
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// How long PCS's 404 for an FMSPC's TCB info is remembered before PCS
    /// is asked again for that FMSPC.
    pub not_found_ttl: Duration,
}

impl PcsConfig {
    /// Defaults for `base_url` with the cache in `cache_dir`.
    pub fn new(base_url: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            base_url: base_url.into(),
            root_crl_url: None,
            cache_dir: cache_dir.into(),
            refresh_before: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(15 * 60),
            not_found_ttl: Duration::from_secs(10 * 60),
        }
    }
}

/// Back-off state of a [`PcsFetcher`].
#[derive(Debug)]
struct PcsState {
    /// PCS asked to be left alone (429/503): every FMSPC waits.
    service: Backoff,
    /// Failures and 404s, per FMSPC and CA.
    holds: KeyedBackoff<MemoKey>,
}

/// Why a fetch failed, for the back-off.
enum Failure {
    /// PCS has no TCB info for the FMSPC (404).
    NotFound(EvidenceError),
    /// PCS is rate limiting or unavailable (429/503), with its `Retry-After`.
    Busy(Option<Duration>, EvidenceError),
    /// Anything else: a transport error, another status, a bad response.
    Other(EvidenceError),
}

impl Failure {
    fn into_error(self) -> EvidenceError {
        match self {
            Self::NotFound(e) | Self::Busy(_, e) | Self::Other(e) => e,
        }
    }

    /// A 404 for a document every platform shares says nothing about the
    /// FMSPC: it is a failure like any other.
    fn not_found_is_a_failure(self) -> Self {
        match self {
            Self::NotFound(e) => Self::Other(e),
            other => other,
        }
    }
}

impl From<EvidenceError> for Failure {
    fn from(e: EvidenceError) -> Self {
        Self::Other(e)
    }
}

/// Fetches collateral from a PCS or PCCS through an on-disk cache.
pub struct PcsFetcher {
    client: reqwest::Client,
    config: PcsConfig,
    cache: TdxCollateralDir,
    /// Held for the whole of a fetch: one in flight at a time.
    state: tokio::sync::Mutex<PcsState>,
}

impl fmt::Debug for PcsFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcsFetcher").field("config", &self.config).finish_non_exhaustive()
    }
}

fn unavailable(why: impl Into<String>) -> EvidenceError {
    EvidenceError::CollateralUnavailable(why.into())
}

impl PcsFetcher {
    /// A fetcher with `config`. Refuses a base URL that is not `https`
    /// (plain `http` only for loopback hosts).
    pub fn new(config: PcsConfig) -> Result<Self, EvidenceError> {
        let mut https = true;
        for url in std::iter::once(&config.base_url).chain(config.root_crl_url.as_ref()) {
            https &= vendor_url_is_https(url, "PCS")?;
        }
        let client = vendor_client(config.timeout, config.connect_timeout.min(config.timeout), https)?;
        Ok(Self {
            client,
            cache: TdxCollateralDir::new(config.cache_dir.clone()),
            config,
            state: tokio::sync::Mutex::new(PcsState {
                service: Backoff::default(),
                holds: KeyedBackoff::new(HOLD_CAPACITY),
            }),
        })
    }

    /// The cache directory.
    pub fn cache(&self) -> &TdxCollateralDir {
        &self.cache
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.config.base_url.trim_end_matches('/'))
    }

    /// The set for `fmspc` and `ca` at `now`: the cached one while it is
    /// not due for refresh, else a fresh one from the service (then
    /// cached). If the service fails or is backing off, the cached set is
    /// returned if there is one (the verifier refuses it once expired).
    pub async fn get(&self, fmspc: Fmspc, ca: PckCa, now: OffsetDateTime) -> Result<TdxCollateral, EvidenceError> {
        self.get_checked(fmspc, ca, now, || Ok(())).await
    }

    /// [`Self::get`], but `check` must pass before the service is asked
    /// anything: it runs whenever the cache does not answer, before the
    /// back-off is even looked at, and its error is returned as it is.
    pub async fn get_checked<C>(
        &self,
        fmspc: Fmspc,
        ca: PckCa,
        now: OffsetDateTime,
        check: C,
    ) -> Result<TdxCollateral, EvidenceError>
    where
        C: FnOnce() -> Result<(), EvidenceError> + Send,
    {
        let due = |set: &TdxCollateral| now + self.config.refresh_before >= set.expires_at();
        let cached = self.cache.lookup(fmspc, ca).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring an unusable cached collateral set");
            None
        });
        if let Some(set) = &cached
            && !due(set)
        {
            return Ok(set.clone());
        }
        // Whoever makes the broker ask PCS must have passed every check
        // that needs no collateral.
        if let Err(e) = check() {
            let reason = e.reason().as_str();
            tracing::debug!(%fmspc, %ca, reason, error = %e, "quote refused before any PCS request");
            return Err(e);
        }
        let mut state = self.state.lock().await;
        // Another task may have refreshed it while this one waited.
        if let Ok(Some(set)) = self.cache.lookup(fmspc, ca).await
            && !due(&set)
        {
            return Ok(set);
        }
        let instant = Instant::now();
        let key = (fmspc.0, ca);
        if let Some(remaining) = state.service.remaining(instant) {
            return cached.ok_or_else(|| unavailable(format!("PCS is backing off for {}s", remaining.as_secs())));
        }
        if let Some((kind, remaining)) = state.holds.remaining(&key, instant) {
            return cached.ok_or_else(|| {
                unavailable(match kind {
                    HoldKind::NotFound => {
                        format!("PCS has no TCB info for FMSPC {fmspc} (asked again in {}s)", remaining.as_secs())
                    }
                    HoldKind::Failing => {
                        format!("PCS is backing off for FMSPC {fmspc} ({ca} CA) for {}s", remaining.as_secs())
                    }
                })
            });
        }
        match self.fetch_set(fmspc, ca).await {
            Ok((files, set)) => {
                state.holds.succeeded(&key);
                state.service.succeeded();
                if let Err(e) = self.cache.store(&set).await {
                    tracing::warn!(error = %e, "could not cache a collateral set");
                }
                if let Err(e) = files.write_dir(&self.cache.root().join("pcs"), fmspc, ca).await {
                    tracing::debug!(error = %e, "could not keep the PCS responses");
                }
                Ok(set)
            }
            Err(failure) => {
                let (min, max) = (self.config.min_backoff, self.config.max_backoff);
                let why = match failure {
                    Failure::NotFound(why) => {
                        state.holds.not_found(&key, instant, self.config.not_found_ttl);
                        tracing::info!(%fmspc, %ca, error = %why, "PCS has no collateral for this FMSPC");
                        why
                    }
                    Failure::Busy(retry_after, why) => {
                        let delay = state.service.failed(instant, retry_after, min, max);
                        tracing::warn!(error = %why, delay_s = delay.as_secs(), "PCS is rate limiting; backing off");
                        why
                    }
                    Failure::Other(why) => {
                        let delay_s = state.holds.failed(&key, instant, None, min, max).as_secs();
                        tracing::warn!(%fmspc, %ca, error = %why, delay_s, "PCS request failed; FMSPC backs off");
                        why
                    }
                };
                cached.ok_or(why)
            }
        }
    }

    /// Fetches the four documents of one set.
    pub async fn fetch(&self, fmspc: Fmspc, ca: PckCa) -> Result<(PcsFiles, TdxCollateral), EvidenceError> {
        self.fetch_set(fmspc, ca).await.map_err(Failure::into_error)
    }

    async fn fetch_set(&self, fmspc: Fmspc, ca: PckCa) -> Result<(PcsFiles, TdxCollateral), Failure> {
        let tcb_url = self.url(&format!("tdx/certification/v4/tcb?fmspc={}", fmspc.to_hex_upper()));
        // A 404 names the FMSPC unknown only for its TCB info; for the
        // documents every platform shares it is a failure.
        let (tcb_info, tcb_headers) = self.get_bytes(&tcb_url).await?;
        let shared = |url: String| async move { self.get_bytes(&url).await.map_err(Failure::not_found_is_a_failure) };
        let (qe_identity, qe_headers) = shared(self.url("tdx/certification/v4/qe/identity")).await?;
        let (pck_crl, crl_headers) =
            shared(self.url(&format!("sgx/certification/v4/pckcrl?ca={ca}&encoding=der"))).await?;
        let root_url = self.config.root_crl_url.clone().unwrap_or_else(|| self.url("sgx/certification/v4/rootcacrl"));
        let (root_ca_crl, _) = shared(root_url).await?;
        let files = PcsFiles {
            tcb_info,
            tcb_info_issuer_chain: header(&tcb_headers, &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?,
            qe_identity,
            qe_identity_issuer_chain: header(&qe_headers, &["SGX-Enclave-Identity-Issuer-Chain"])?,
            pck_crl,
            pck_crl_issuer_chain: header(&crl_headers, &["SGX-PCK-CRL-Issuer-Chain"])?,
            root_ca_crl,
        };
        let set = files.clone().into_collateral()?;
        if set.fmspc() != fmspc || set.pck_ca() != ca {
            let why = format!("PCS answered with collateral for {}/{}", set.fmspc(), set.pck_ca());
            return Err(Failure::Other(unavailable(why)));
        }
        Ok((files, set))
    }

    /// One GET, size-capped; non-200 is a failure, classified by status.
    async fn get_bytes(&self, url: &str) -> Result<(Vec<u8>, reqwest::header::HeaderMap), Failure> {
        let resp = self.client.get(url).send().await.map_err(|e| unavailable(format!("PCS: {}", e.without_url())))?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            let why = unavailable(format!("PCS: HTTP {status} for {}", path_of(url)));
            return Err(match status.as_u16() {
                404 => Failure::NotFound(why),
                429 | 503 => Failure::Busy(retry_after(resp.headers()), why),
                _ => Failure::Other(why),
            });
        }
        let headers = resp.headers().clone();
        let body = read_body_capped(resp, MAX_COLLATERAL_LEN).await.map_err(|e| unavailable(format!("PCS: {e}")))?;
        Ok((body, headers))
    }
}

/// The path part of a URL, for messages.
fn path_of(url: &str) -> &str {
    url.split_once("://").and_then(|(_, rest)| rest.find('/').and_then(|i| rest.get(i..))).unwrap_or(url)
}

/// The first of `names` present, percent-decoded.
fn header(headers: &reqwest::header::HeaderMap, names: &[&str]) -> Result<String, EvidenceError> {
    let raw = names
        .iter()
        .find_map(|n| headers.get(*n))
        .ok_or_else(|| unavailable(format!("PCS response lacks the {} header", names.join(" / "))))?;
    let raw = raw.to_str().map_err(|_| unavailable("PCS issuer-chain header is not ASCII"))?;
    percent_decode(raw).ok_or_else(|| unavailable("PCS issuer-chain header is not percent-encoded UTF-8"))
}

/// Decodes `%XX` escapes (as PCS encodes PEM chains in headers).
pub fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Key of the resolver's memo.
type MemoKey = ([u8; 6], PckCa);

/// Finds the collateral set for a quote: a current set remembered in
/// memory, else the offline directory, else the fetcher. The verifier
/// decides whether what is found may be used.
pub struct TdxCollateralResolver {
    dir: Option<TdxCollateralDir>,
    fetcher: Option<PcsFetcher>,
    memo: Mutex<HashMap<MemoKey, Arc<TdxCollateral>>>,
}

impl fmt::Debug for TdxCollateralResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxCollateralResolver")
            .field("dir", &self.dir)
            .field("fetcher", &self.fetcher)
            .finish_non_exhaustive()
    }
}

impl TdxCollateralResolver {
    /// A resolver over an optional directory and an optional fetcher.
    pub fn new(dir: Option<TdxCollateralDir>, fetcher: Option<PcsFetcher>) -> Self {
        Self { dir, fetcher, memo: Mutex::new(HashMap::new()) }
    }

    /// Whether any source is configured.
    pub fn is_configured(&self) -> bool {
        self.dir.is_some() || self.fetcher.is_some()
    }

    /// The set for `fmspc` and `ca` at `now`, or `CollateralUnavailable`.
    /// A current set wins over an expired one; an expired one is returned
    /// only when nothing current exists (and is then refused by the
    /// verifier with `collateral_expired`).
    pub async fn resolve(
        &self,
        fmspc: Fmspc,
        ca: PckCa,
        now: OffsetDateTime,
    ) -> Result<Arc<TdxCollateral>, EvidenceError> {
        self.resolve_checked(fmspc, ca, now, || Ok(())).await
    }

    /// [`Self::resolve`] for a quote whose FMSPC and CA come from a PCK
    /// certificate not yet verified: `check` (the checks that need no
    /// collateral) must pass before the fetcher asks PCS anything; its
    /// error is returned as it is. Sets in memory or in the directory are
    /// returned without it (the verifier runs every check on them).
    pub async fn resolve_checked<C>(
        &self,
        fmspc: Fmspc,
        ca: PckCa,
        now: OffsetDateTime,
        check: C,
    ) -> Result<Arc<TdxCollateral>, EvidenceError>
    where
        C: FnOnce() -> Result<(), EvidenceError> + Send,
    {
        let key = (fmspc.0, ca);
        if let Some(set) = self.memo.lock().unwrap_or_else(PoisonError::into_inner).get(&key)
            && set.is_current(now)
            && self.fetcher.as_ref().is_none_or(|f| now + f.config.refresh_before < set.expires_at())
        {
            return Ok(Arc::clone(set));
        }
        let mut stale: Option<TdxCollateral> = None;
        let mut last_err = None;
        if let Some(dir) = &self.dir {
            match dir.lookup(fmspc, ca).await {
                Ok(Some(set)) if set.is_current(now) => return Ok(self.remember(key, set)),
                Ok(Some(set)) => stale = Some(set),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(fetcher) = &self.fetcher {
            match fetcher.get_checked(fmspc, ca, now, check).await {
                Ok(set) if set.is_current(now) => return Ok(self.remember(key, set)),
                Ok(set) => stale = stale.or(Some(set)),
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(set) = stale {
            return Ok(Arc::new(set));
        }
        Err(last_err.unwrap_or_else(|| unavailable(format!("no TDX collateral for FMSPC {fmspc} ({ca} CA)"))))
    }

    fn remember(&self, key: MemoKey, set: TdxCollateral) -> Arc<TdxCollateral> {
        let set = Arc::new(set);
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.len() >= MEMO_CAPACITY {
            memo.clear();
        }
        memo.insert(key, Arc::clone(&set));
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("-----BEGIN%20CERTIFICATE-----%0Aab%2B").unwrap(),
            "-----BEGIN CERTIFICATE-----\nab+"
        );
        assert!(percent_decode("%G0").is_none());
        assert!(percent_decode("%4").is_none());
        assert_eq!(path_of("http://127.0.0.1:9/sgx/x?y=1"), "/sgx/x?y=1");
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let dir = std::env::temp_dir();
        assert!(PcsFetcher::new(PcsConfig::new("http://pcs.example", &dir)).is_err());
        assert!(PcsFetcher::new(PcsConfig::new("http://127.0.0.1:1", &dir)).is_ok());
        assert!(PcsFetcher::new(PcsConfig::new("https://api.trustedservices.intel.com", &dir)).is_ok());
        let mut c = PcsConfig::new("https://api.trustedservices.intel.com", &dir);
        c.root_crl_url = Some("ftp://x".into());
        assert!(PcsFetcher::new(c).is_err());
    }
}
