//! Where a VCEK/VLEK comes from when the guest's certificate table has none,
//! and where AMD's CRLs come from ([`CrlSources`]): an offline directory
//! the operator fills, and AMD's Key Distribution Service (KDS) behind an
//! on-disk cache.
//!
//! Nothing here is trusted: whatever a source returns is handed to
//! [`super::snp::SnpVerifier`], which accepts it only if it chains to a
//! pinned AMD root and matches the report. Sources are about availability:
//! after the first fetch the hot path reads the cache and never waits on
//! KDS, and a rate-limited or unreachable KDS degrades to the cache, not to
//! failure for guests whose VCEK is already cached.
//!
//! # Directory layout
//! [`VekDirectory`] reads, under its root (numbers in decimal):
//! ```text
//! <root>/<Product>/<hwid>/<bl>-<tee>-<snp>-<ucode>.der        VCEK, Milan/Genoa
//! <root>/<Product>/<hwid>/<bl>-<tee>-<snp>-<ucode>-<fmc>.der  VCEK, Turin
//! <root>/<Product>/vlek/<same TCB name>.der                   VLEK
//! <root>/vcek/v1/<Product>/<hwid>?blSPL=..&teeSPL=..&..       VCEK saved under its KDS URL
//! ```
//! `<Product>` is `Milan`, `Genoa` or `Turin`; `<hwid>` is the lowercase hex
//! of the report's `chip_id` (all 64 bytes; the first 8 on Turin), as KDS
//! names it. The last form is what `wget -x` or `curl -o` leave when given
//! the KDS URL; the query parameters may come in any order. Files are DER;
//! a PEM file is accepted too. [`KdsFetcher`] writes its cache in the first
//! form, so its cache directory is also a valid offline directory.
//!
//! # KDS
//! `GET {base}/vcek/v1/{Product}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=`
//! (Turin adds `fmcSPL` and uses the 8-byte hwid). AMD rate-limits KDS, and
//! `chip_id`/`reported_tcb` come from unverified reports, so an attacker
//! could otherwise make the broker hammer it. The fetcher therefore keeps
//! one request in flight and spends at most a fixed number of requests per
//! minute, of which a share ([`KdsConfig::reserved_for_known`]) only chips
//! that attested successfully before (a bounded set, oldest forgotten
//! first; [`KdsFetcher::note_attested`]) and CRL refreshes may use: a flood
//! of reports with made-up chip ids spends the rest, never the refreshes
//! of platforms already in service. A 404 is remembered, and a failure
//! backs off (exponential, capped), per URL, that is per chip and TCB
//! (bounded, oldest forgotten first), so one chip's failures never hold
//! back another's; only a 429/503, KDS asking to be left alone, holds back
//! every request, for its `Retry-After`. Meanwhile everything already
//! cached is served. Responses are size-capped and every request has a
//! timeout. VLEKs are not on the public KDS; they come from the guest's
//! table or the offline directory.
//!
//! A guest whose host supplies a certificate table is judged with the
//! table's VCEK and never costs a KDS request: the release flow only asks
//! the resolver when the table has no VEK.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::EvidenceError;
use super::amd_crl::MAX_CRL_LEN;
use super::anchors::{self, Generation, IntermediateKind, MAX_CERT_LEN};
use super::snp::{CrlInstall, RawTcb, SigningKey, SnpReport, SnpVerifier};
use crate::fetch::{
    Backoff, BoundedSet, FetchError, HoldKind, KeyedBackoff, read_body_capped, read_capped, retry_after, vendor_client,
    vendor_url_is_https, write_atomic,
};

/// AMD's production KDS.
pub const DEFAULT_KDS_BASE_URL: &str = "https://kdsintf.amd.com";

/// Most directory entries scanned when matching KDS-URL-named files.
const MAX_DIR_SCAN: usize = 10_000;

/// Bound on the resolver's in-memory map.
const MEMO_CAPACITY: usize = 4096;

/// Bound on the URLs (chips and TCBs) whose 404 or back-off is remembered.
const HOLD_CAPACITY: usize = 4096;

/// Bound on the chips remembered as having attested successfully.
const KNOWN_CHIPS_CAPACITY: usize = 4096;

/// The `hwid` path segment KDS uses: all of `chip_id`, or its first 8
/// bytes on Turin.
pub fn kds_hwid(generation: Generation, chip_id: &[u8; 64]) -> String {
    match generation {
        Generation::Turin => hex::encode(chip_id.get(..8).unwrap_or(chip_id.as_slice())),
        Generation::Milan | Generation::Genoa => hex::encode(chip_id),
    }
}

/// The file name of a TCB in the directory layout: `bl-tee-snp-ucode`, plus
/// `-fmc` on Turin.
pub fn tcb_file_stem(generation: Generation, tcb: RawTcb) -> String {
    let t = tcb.decode(generation);
    match t.fmc {
        Some(fmc) => format!("{}-{}-{}-{}-{fmc}", t.bootloader, t.tee, t.snp, t.microcode),
        None => format!("{}-{}-{}-{}", t.bootloader, t.tee, t.snp, t.microcode),
    }
}

/// The KDS query string for a TCB (SPLs as two-digit decimals, as AMD's
/// documentation writes them).
fn kds_query(generation: Generation, tcb: RawTcb) -> String {
    let t = tcb.decode(generation);
    let base = format!("blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}", t.bootloader, t.tee, t.snp, t.microcode);
    match t.fmc {
        Some(fmc) => format!("fmcSPL={fmc:02}&{base}"),
        None => base,
    }
}

/// The KDS URL of a VCEK.
pub fn kds_vcek_url(base_url: &str, generation: Generation, chip_id: &[u8; 64], tcb: RawTcb) -> String {
    format!(
        "{}/vcek/v1/{}/{}?{}",
        base_url.trim_end_matches('/'),
        generation.kds_product(),
        kds_hwid(generation, chip_id),
        kds_query(generation, tcb)
    )
}

/// The KDS URL of the CRL `generation`'s ARK issues for `kind`'s
/// certificates: `{base}/vcek/v1/{Product}/crl` for ASKs,
/// `{base}/vlek/v1/{Product}/crl` for ASVKs.
pub fn kds_crl_url(base_url: &str, generation: Generation, kind: IntermediateKind) -> String {
    format!("{}/{}", base_url.trim_end_matches('/'), crl_path(generation, kind))
}

/// The path of a CRL under a KDS base URL or a CRL directory.
pub fn crl_path(generation: Generation, kind: IntermediateKind) -> String {
    let arc = match kind {
        IntermediateKind::Ask => "vcek",
        IntermediateKind::Asvk => "vlek",
    };
    format!("{arc}/v1/{}/crl", generation.kds_product())
}

fn unavailable(why: impl Into<String>) -> EvidenceError {
    EvidenceError::CollateralUnavailable(why.into())
}

/// A file or URL the collateral sources could not use: the collateral is
/// unavailable.
impl From<FetchError> for EvidenceError {
    fn from(e: FetchError) -> Self {
        unavailable(e.to_string())
    }
}

/// An offline directory of VCEK/VLEK files; see the module docs for the
/// layout.
#[derive(Clone, Debug)]
pub struct VekDirectory {
    root: PathBuf,
}

impl VekDirectory {
    /// A directory rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a VCEK lives in the canonical layout.
    pub fn vcek_path(&self, generation: Generation, chip_id: &[u8; 64], tcb: RawTcb) -> PathBuf {
        self.root
            .join(generation.kds_product())
            .join(kds_hwid(generation, chip_id))
            .join(format!("{}.der", tcb_file_stem(generation, tcb)))
    }

    /// Where a VLEK lives in the canonical layout.
    pub fn vlek_path(&self, generation: Generation, tcb: RawTcb) -> PathBuf {
        self.root.join(generation.kds_product()).join("vlek").join(format!("{}.der", tcb_file_stem(generation, tcb)))
    }

    /// Looks up the VEK for `(generation, chip_id, reported_tcb)`; `None`
    /// when the directory has none.
    pub async fn lookup(
        &self,
        generation: Generation,
        key: SigningKey,
        chip_id: &[u8; 64],
        tcb: RawTcb,
    ) -> Result<Option<Vec<u8>>, EvidenceError> {
        match key {
            SigningKey::Vlek => read_vek(&self.vlek_path(generation, tcb)).await,
            SigningKey::Vcek => {
                if let Some(der) = read_vek(&self.vcek_path(generation, chip_id, tcb)).await? {
                    return Ok(Some(der));
                }
                self.lookup_kds_named(generation, chip_id, tcb).await
            }
        }
    }

    /// Finds a file named like a KDS URL, `<hwid>?<query>`, whose query
    /// names this TCB in any order and with any zero-padding.
    async fn lookup_kds_named(
        &self,
        generation: Generation,
        chip_id: &[u8; 64],
        tcb: RawTcb,
    ) -> Result<Option<Vec<u8>>, EvidenceError> {
        let dir = self.root.join("vcek").join("v1").join(generation.kds_product());
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable(format!("{}: {e}", dir.display()))),
        };
        let prefix = format!("{}?", kds_hwid(generation, chip_id));
        let want = tcb.decode(generation);
        let mut scanned = 0usize;
        while let Some(entry) =
            entries.next_entry().await.map_err(|e| unavailable(format!("{}: {e}", dir.display())))?
        {
            scanned = scanned.saturating_add(1);
            if scanned > MAX_DIR_SCAN {
                tracing::warn!(dir = %dir.display(), "too many files; stopped scanning");
                break;
            }
            let name = entry.file_name();
            let Some(query) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let mut spl: HashMap<&str, u8> = HashMap::new();
            for pair in query.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && let Ok(v) = v.parse::<u8>()
                {
                    spl.insert(k, v);
                }
            }
            let matches = spl.get("blSPL") == Some(&want.bootloader)
                && spl.get("teeSPL") == Some(&want.tee)
                && spl.get("snpSPL") == Some(&want.snp)
                && spl.get("ucodeSPL") == Some(&want.microcode)
                && spl.get("fmcSPL").copied() == want.fmc;
            if matches {
                return read_vek(&entry.path()).await;
            }
        }
        Ok(None)
    }

    /// Writes a VCEK into the canonical layout atomically (temporary file,
    /// then rename), so concurrent readers never see half a certificate.
    pub async fn store_vcek(
        &self,
        generation: Generation,
        chip_id: &[u8; 64],
        tcb: RawTcb,
        der: &[u8],
    ) -> Result<(), EvidenceError> {
        Ok(write_atomic(&self.vcek_path(generation, chip_id, tcb), der).await?)
    }
}

/// Reads one VEK file, capped at [`MAX_CERT_LEN`]; PEM is converted to DER.
async fn read_vek(path: &Path) -> Result<Option<Vec<u8>>, EvidenceError> {
    let Some(bytes) = read_capped(path, MAX_CERT_LEN).await? else {
        return Ok(None);
    };
    if bytes.starts_with(b"-----BEGIN") {
        return Ok(anchors::pem_certificates(&bytes)?.into_iter().next());
    }
    Ok(Some(bytes))
}

/// Settings of a [`KdsFetcher`].
#[derive(Clone, Debug)]
pub struct KdsConfig {
    /// Base URL, `https://kdsintf.amd.com` by default. Plain `http` is
    /// accepted only for loopback hosts (tests, a local mirror).
    pub base_url: String,
    /// On-disk cache, laid out as a [`VekDirectory`].
    pub cache_dir: PathBuf,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Largest VCEK response accepted (CRLs: [`super::amd_crl::MAX_CRL_LEN`]).
    pub max_response_len: usize,
    /// First back-off after a failure; doubles per consecutive failure.
    pub min_backoff: Duration,
    /// Longest back-off, `Retry-After` included.
    pub max_backoff: Duration,
    /// Most requests sent in any 60 seconds.
    pub max_requests_per_minute: usize,
    /// How many of `max_requests_per_minute` only chips that attested
    /// successfully before (and CRL fetches) may use; chips the broker has
    /// not seen attest share the rest.
    pub reserved_for_known: usize,
    /// How long a 404 is remembered before KDS is asked again.
    pub not_found_ttl: Duration,
}

impl KdsConfig {
    /// Defaults for AMD's KDS with the cache in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            base_url: DEFAULT_KDS_BASE_URL.to_owned(),
            cache_dir: cache_dir.into(),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_response_len: MAX_CERT_LEN,
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(15 * 60),
            max_requests_per_minute: 20,
            reserved_for_known: 5,
            not_found_ttl: Duration::from_secs(10 * 60),
        }
    }
}

/// Rate, back-off and negative-cache state of a [`KdsFetcher`].
#[derive(Debug)]
struct FetchState {
    /// KDS asked to be left alone (429/503): every request waits.
    service: Backoff,
    /// Requests sent in the last minute, and whether each was for a chip
    /// not known to have attested.
    recent: VecDeque<(Instant, bool)>,
    /// 404s and failures, per URL (chip and TCB, or CRL).
    holds: KeyedBackoff<String>,
}

/// Which part of the budget a request may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Budget {
    /// All of it: a chip that attested before, or a CRL.
    Whole,
    /// What is not reserved: a chip not known to have attested.
    Open,
}

/// Fetches VCEKs from AMD KDS through an on-disk cache.
pub struct KdsFetcher {
    client: reqwest::Client,
    config: KdsConfig,
    cache: VekDirectory,
    /// Held for the whole of a request: one request in flight at a time.
    state: tokio::sync::Mutex<FetchState>,
    /// Chips that attested successfully; their requests may use the
    /// reserved part of the budget.
    known: Mutex<BoundedSet<[u8; 64]>>,
}

impl fmt::Debug for KdsFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KdsFetcher").field("config", &self.config).finish_non_exhaustive()
    }
}

impl KdsFetcher {
    /// A fetcher with `config`. Refuses a base URL that is not `https`
    /// (plain `http` only for loopback hosts).
    pub fn new(config: KdsConfig) -> Result<Self, EvidenceError> {
        let https = vendor_url_is_https(&config.base_url, "KDS")?;
        let client = vendor_client(config.timeout, config.connect_timeout, https)?;
        Ok(Self {
            client,
            cache: VekDirectory::new(config.cache_dir.clone()),
            config,
            state: tokio::sync::Mutex::new(FetchState {
                service: Backoff::default(),
                recent: VecDeque::new(),
                holds: KeyedBackoff::new(HOLD_CAPACITY),
            }),
            known: Mutex::new(BoundedSet::new(KNOWN_CHIPS_CAPACITY)),
        })
    }

    /// Remembers that a report of `chip_id` was verified (signature, chain,
    /// TCB and chip binding): its VCEK requests may use the reserved part
    /// of the budget from now on.
    pub fn note_attested(&self, chip_id: &[u8; 64]) {
        if chip_id.iter().any(|b| *b != 0) {
            self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(*chip_id);
        }
    }

    /// Whether a report of `chip_id` was verified before (and is still
    /// remembered).
    pub fn is_known(&self, chip_id: &[u8; 64]) -> bool {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).contains(chip_id)
    }

    /// The cache directory, readable as a [`VekDirectory`].
    pub fn cache(&self) -> &VekDirectory {
        &self.cache
    }

    /// The URL this fetcher would ask for a VCEK.
    pub fn vcek_url(&self, generation: Generation, chip_id: &[u8; 64], tcb: RawTcb) -> String {
        kds_vcek_url(&self.config.base_url, generation, chip_id, tcb)
    }

    /// The VCEK for `(generation, chip_id, reported_tcb)`: from the cache if
    /// present, else from KDS (then cached). `CollateralUnavailable` when
    /// KDS is backing off, over budget, has none, or fails.
    pub async fn fetch_vcek(
        &self,
        generation: Generation,
        chip_id: &[u8; 64],
        tcb: RawTcb,
    ) -> Result<Vec<u8>, EvidenceError> {
        if chip_id.iter().all(|b| *b == 0) {
            return Err(unavailable("chip_id is masked; KDS cannot name the VCEK"));
        }
        if let Some(der) = self.cache.lookup(generation, SigningKey::Vcek, chip_id, tcb).await? {
            return Ok(der);
        }
        let mut state = self.state.lock().await;
        // Another task may have fetched it while this one waited.
        if let Some(der) = self.cache.lookup(generation, SigningKey::Vcek, chip_id, tcb).await? {
            return Ok(der);
        }
        let url = self.vcek_url(generation, chip_id, tcb);
        let budget = if self.is_known(chip_id) { Budget::Whole } else { Budget::Open };
        let check_cert = |body: &[u8]| {
            anchors::parse_der_cert(body).map(|_| ()).map_err(|e| format!("response is not a certificate: {e}"))
        };
        match self.request(&mut state, &url, budget, self.config.max_response_len, check_cert).await? {
            Some(der) => {
                if let Err(e) = self.cache.store_vcek(generation, chip_id, tcb, &der).await {
                    tracing::warn!(error = %e, "could not cache a VCEK");
                }
                Ok(der)
            }
            None => Err(unavailable("KDS has no VCEK for this chip and TCB")),
        }
    }

    /// The URL of the CRL of `generation`'s ARK for `kind`'s certificates.
    pub fn crl_url(&self, generation: Generation, kind: IntermediateKind) -> String {
        kds_crl_url(&self.config.base_url, generation, kind)
    }

    /// The current CRL of `generation`'s ARK for `kind` (ASKs on the
    /// `/vcek/` path, ASVKs on `/vlek/`), fresh from KDS, under the same
    /// request budget and back-off as VCEKs. Only something that parses as
    /// a CRL is returned; the caller verifies and caches it.
    pub async fn fetch_crl(&self, generation: Generation, kind: IntermediateKind) -> Result<Vec<u8>, EvidenceError> {
        let url = self.crl_url(generation, kind);
        let mut state = self.state.lock().await;
        let check_crl =
            |body: &[u8]| super::amd_crl::parse_shape(body).map_err(|e| format!("response is not a CRL: {e}"));
        match self.request(&mut state, &url, Budget::Whole, super::amd_crl::MAX_CRL_LEN, check_crl).await? {
            Some(der) => Ok(der),
            None => Err(unavailable(format!("KDS has no {generation} CRL for {kind:?} certificates"))),
        }
    }

    /// One request under the budget: refused while KDS asked to be left
    /// alone, while `url` is held back (a remembered 404, a back-off after
    /// its failure), or when the part of this minute's budget `budget` may
    /// use is spent. A 404 is remembered and a failure backs off for `url`
    /// only; a 429/503 backs off for every URL. `Ok(None)` is a 404; a
    /// 200's body must be at most `cap` bytes and pass `check`.
    async fn request(
        &self,
        state: &mut FetchState,
        url: &str,
        budget: Budget,
        cap: usize,
        check: impl Fn(&[u8]) -> Result<(), String>,
    ) -> Result<Option<Vec<u8>>, EvidenceError> {
        let now = Instant::now();
        if let Some(remaining) = state.service.remaining(now) {
            return Err(unavailable(format!("KDS is backing off for {}s", remaining.as_secs())));
        }
        let key = url.to_owned();
        match state.holds.remaining(&key, now) {
            Some((HoldKind::NotFound, _)) => return Err(unavailable("KDS has none at this URL (remembered 404)")),
            Some((HoldKind::Failing, remaining)) => {
                return Err(unavailable(format!("KDS is backing off for this URL for {}s", remaining.as_secs())));
            }
            None => {}
        }
        while state.recent.front().is_some_and(|(t, _)| now.duration_since(*t) >= Duration::from_secs(60)) {
            state.recent.pop_front();
        }
        if state.recent.len() >= self.config.max_requests_per_minute {
            return Err(unavailable("KDS request budget for this minute is spent"));
        }
        let open = self.config.max_requests_per_minute.saturating_sub(self.config.reserved_for_known);
        if budget == Budget::Open && state.recent.iter().filter(|(_, unknown)| *unknown).count() >= open {
            tracing::debug!("KDS budget for chips not seen attesting is spent; request not sent");
            return Err(unavailable("KDS request budget for chips not seen attesting is spent for this minute"));
        }
        state.recent.push_back((now, budget == Budget::Open));

        let (min, max) = (self.config.min_backoff, self.config.max_backoff);
        match self.get(url, cap, check).await {
            Ok(Fetched::Body(body)) => {
                state.holds.succeeded(&key);
                state.service.succeeded();
                Ok(Some(body))
            }
            Ok(Fetched::NotFound) => {
                state.holds.not_found(&key, now, self.config.not_found_ttl);
                Ok(None)
            }
            Ok(Fetched::Busy(retry_after)) => {
                let delay = state.service.failed(now, retry_after, min, max);
                tracing::warn!(delay_s = delay.as_secs(), "KDS is rate limiting; backing off");
                Err(unavailable("KDS is rate limiting"))
            }
            Err(why) => {
                let delay = state.holds.failed(&key, now, None, min, max);
                let delay_s = delay.as_secs();
                tracing::warn!(error = %why, delay_s, "KDS request failed; backing off for this URL");
                Err(unavailable(format!("KDS request failed: {why}")))
            }
        }
    }

    /// One GET, with the response size capped.
    async fn get(&self, url: &str, cap: usize, check: impl Fn(&[u8]) -> Result<(), String>) -> Result<Fetched, String> {
        let resp = self.client.get(url).send().await.map_err(|e| e.without_url().to_string())?;
        let status = resp.status();
        match status.as_u16() {
            200 => {}
            404 | 400 => return Ok(Fetched::NotFound),
            429 | 503 => return Ok(Fetched::Busy(retry_after(resp.headers()))),
            _ => return Err(format!("HTTP {status}")),
        }
        let body = read_body_capped(resp, cap).await.map_err(|e| e.to_string())?;
        // Only what parses is worth caching; an error page is not.
        check(&body)?;
        Ok(Fetched::Body(body))
    }
}

/// What one KDS request produced.
enum Fetched {
    Body(Vec<u8>),
    NotFound,
    Busy(Option<Duration>),
}

/// Key of the resolver's in-memory map.
type MemoKey = (SigningKey, [u8; 64], [u8; 8], u32);

/// A bounded in-memory map of resolved VEKs, oldest evicted first.
#[derive(Default)]
struct Memo {
    map: HashMap<MemoKey, Arc<[u8]>>,
    order: VecDeque<MemoKey>,
}

/// Finds the VEK for a report: the offline directory first, then KDS
/// (VCEKs only). Results are remembered in memory, bounded.
pub struct VekResolver {
    dir: Option<VekDirectory>,
    fetcher: Option<KdsFetcher>,
    memo: Mutex<Memo>,
}

impl fmt::Debug for VekResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VekResolver").field("dir", &self.dir).field("fetcher", &self.fetcher).finish_non_exhaustive()
    }
}

impl VekResolver {
    /// A resolver over an optional directory and an optional fetcher.
    pub fn new(dir: Option<VekDirectory>, fetcher: Option<KdsFetcher>) -> Self {
        Self { dir, fetcher, memo: Mutex::new(Memo::default()) }
    }

    /// Remembers that a report of `chip_id` was verified, for the KDS
    /// budget ([`KdsFetcher::note_attested`]).
    pub fn note_attested(&self, chip_id: &[u8; 64]) {
        if let Some(fetcher) = &self.fetcher {
            fetcher.note_attested(chip_id);
        }
    }

    /// The VEK (DER) for `report`, or `CollateralUnavailable`. Version 2
    /// reports do not name their generation, so Milan and then Genoa are
    /// tried; the verifier later checks the VEK's `productName`.
    pub async fn resolve(&self, report: &SnpReport) -> Result<Vec<u8>, EvidenceError> {
        let key: MemoKey = (
            report.signing_key(),
            *report.chip_id(),
            report.reported_tcb().0,
            report.cpuid().map_or(0, |c| u32::from_be_bytes([0, c.family, c.model, c.stepping])),
        );
        if let Some(der) = self.memo.lock().unwrap_or_else(PoisonError::into_inner).map.get(&key) {
            return Ok(der.to_vec());
        }
        let generations: &[Generation] = match report.generation() {
            Some(Generation::Milan) => &[Generation::Milan],
            Some(Generation::Genoa) => &[Generation::Genoa],
            Some(Generation::Turin) => &[Generation::Turin],
            None if report.version() == 2 => &[Generation::Milan, Generation::Genoa],
            None => &Generation::ALL,
        };
        let found = self.find(report, generations).await?;
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if !memo.map.contains_key(&key) {
            while memo.map.len() >= MEMO_CAPACITY {
                match memo.order.pop_front() {
                    Some(old) => {
                        memo.map.remove(&old);
                    }
                    None => break,
                }
            }
            memo.map.insert(key, Arc::from(found.as_slice()));
            memo.order.push_back(key);
        }
        Ok(found)
    }

    async fn find(&self, report: &SnpReport, generations: &[Generation]) -> Result<Vec<u8>, EvidenceError> {
        let kind = report.signing_key();
        let tcb = report.reported_tcb();
        if let Some(dir) = &self.dir {
            for &g in generations {
                if let Some(der) = dir.lookup(g, kind, report.chip_id(), tcb).await? {
                    return Ok(der);
                }
            }
        }
        let mut last = None;
        if let (SigningKey::Vcek, Some(fetcher)) = (kind, &self.fetcher) {
            for &g in generations {
                match fetcher.fetch_vcek(g, report.chip_id(), tcb).await {
                    Ok(der) => return Ok(der),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            unavailable(format!("no {kind:?} for this chip and TCB {tcb} in the configured sources"))
        }))
    }
}

/// Where CRLs come from: an offline directory the operator fills, and AMD
/// KDS behind an on-disk cache. Both use KDS's path layout,
/// `vcek/v1/<Product>/crl` and `vlek/v1/<Product>/crl`, so the fetcher's
/// cache directory is also a valid offline directory (and `wget -x -nH`
/// of the KDS URLs fills one).
pub struct CrlSources {
    dir: Option<PathBuf>,
    kds: Option<KdsFetcher>,
}

impl fmt::Debug for CrlSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrlSources").field("dir", &self.dir).field("kds", &self.kds).finish()
    }
}

/// What one [`CrlSources::refresh`] did.
#[derive(Debug, Default)]
pub struct CrlRefresh {
    /// CRLs newly installed, as `(generation, kind, source)`.
    pub installed: Vec<(Generation, IntermediateKind, String)>,
    /// What could not be read, fetched or verified, one line each.
    pub problems: Vec<String>,
}

impl CrlSources {
    /// Sources: an optional offline directory and an optional KDS fetcher
    /// (whose cache directory is read as a second offline directory).
    pub fn new(dir: Option<PathBuf>, kds: Option<KdsFetcher>) -> Self {
        Self { dir, kds }
    }

    /// Whether there is no source at all.
    pub fn is_empty(&self) -> bool {
        self.dir.is_none() && self.kds.is_none()
    }

    /// Installs into `verifier` every CRL the sources have for every
    /// generation and kind: the offline directory's and the KDS cache's
    /// files, then, with `fetch`, KDS's current ones (a CRL from KDS that
    /// verifies is saved to the cache). Older or unchanged CRLs leave the
    /// installed ones in place; nothing a source returns is used unless it
    /// verifies.
    pub async fn refresh(&self, verifier: &SnpVerifier, now: OffsetDateTime, fetch: bool) -> CrlRefresh {
        let mut report = CrlRefresh::default();
        let cache = self.kds.as_ref().map(|k| k.cache().root().to_path_buf());
        for generation in Generation::ALL {
            for kind in [IntermediateKind::Ask, IntermediateKind::Asvk] {
                let path = crl_path(generation, kind);
                for dir in self.dir.iter().chain(cache.iter()) {
                    let file = dir.join(&path);
                    match read_capped(&file, MAX_CRL_LEN).await.map_err(EvidenceError::from) {
                        Ok(Some(der)) => install(verifier, &der, kind, now, &file.display().to_string(), &mut report),
                        Ok(None) => {}
                        Err(e) => report.problems.push(e.to_string()),
                    }
                }
                let Some(kds) = self.kds.as_ref().filter(|_| fetch) else { continue };
                match kds.fetch_crl(generation, kind).await {
                    Ok(der) => {
                        let source = kds.crl_url(generation, kind);
                        let before = report.installed.len();
                        install(verifier, &der, kind, now, &source, &mut report);
                        if report.installed.len() > before
                            && let Some(cache) = &cache
                            && let Err(e) = write_atomic(&cache.join(&path), &der).await.map_err(EvidenceError::from)
                        {
                            report.problems.push(format!("caching {source}: {e}"));
                        }
                    }
                    Err(e) => report.problems.push(format!("{generation} {kind:?} CRL from KDS: {e}")),
                }
            }
        }
        report
    }
}

/// Installs one CRL, noting the outcome in `report`.
fn install(
    verifier: &SnpVerifier,
    der: &[u8],
    kind: IntermediateKind,
    now: OffsetDateTime,
    source: &str,
    report: &mut CrlRefresh,
) {
    match verifier.install_crl(der, kind, now) {
        Ok(outcomes) => {
            for (generation, outcome) in outcomes {
                if outcome == CrlInstall::Installed {
                    report.installed.push((generation, kind, source.to_owned()));
                }
            }
        }
        Err(e) => report.problems.push(format!("{source}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_errors_are_unavailable_collateral() {
        let config = KdsConfig { base_url: "http://kdsintf.amd.com".into(), ..KdsConfig::new("/nonexistent") };
        let err = KdsFetcher::new(config).unwrap_err();
        assert!(matches!(err, EvidenceError::CollateralUnavailable(_)), "{err}");
        assert_eq!(err.to_string(), "collateral unavailable: KDS URLs must be https (http only on loopback)");
    }

    #[test]
    fn urls_follow_kds() {
        let mut chip = [0u8; 64];
        chip[0] = 0xab;
        chip[63] = 0xcd;
        let tcb = RawTcb([3, 0, 0, 0, 0, 0, 8, 115]);
        let url = kds_vcek_url("https://kdsintf.amd.com/", Generation::Milan, &chip, tcb);
        assert_eq!(
            url,
            format!(
                "https://kdsintf.amd.com/vcek/v1/Milan/{}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115",
                hex::encode(chip)
            )
        );
        let turin = RawTcb([1, 2, 3, 4, 0, 0, 0, 9]);
        let url = kds_vcek_url("https://kds.example", Generation::Turin, &chip, turin);
        assert_eq!(
            url,
            "https://kds.example/vcek/v1/Turin/ab00000000000000?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=09"
        );
        assert_eq!(tcb_file_stem(Generation::Milan, tcb), "3-0-8-115");
        assert_eq!(tcb_file_stem(Generation::Turin, turin), "2-3-4-9-1");
    }

    #[test]
    fn attested_chips_are_remembered_but_not_a_masked_one() {
        let mut c = KdsConfig::new(std::env::temp_dir());
        c.base_url = "http://127.0.0.1:1".into();
        let fetcher = KdsFetcher::new(c).unwrap();
        fetcher.note_attested(&[0; 64]);
        assert!(!fetcher.is_known(&[0; 64]));
        assert!(!fetcher.is_known(&[1; 64]));
        fetcher.note_attested(&[1; 64]);
        assert!(fetcher.is_known(&[1; 64]));
        assert!(!fetcher.is_known(&[2; 64]));
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let dir = std::env::temp_dir();
        let mut c = KdsConfig::new(&dir);
        c.base_url = "http://kdsintf.amd.com".into();
        assert!(KdsFetcher::new(c.clone()).is_err());
        c.base_url = "http://127.0.0.1:1".into();
        assert!(KdsFetcher::new(c.clone()).is_ok());
        c.base_url = "ftp://127.0.0.1".into();
        assert!(KdsFetcher::new(c).is_err());
    }
}
