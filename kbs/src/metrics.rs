//! The broker's metrics and their Prometheus text exposition (format
//! 0.0.4), served on the metrics listener (see `server`). The metric names,
//! labels and meanings are listed in docs/metrics.md.
//!
//! Hand-written rather than built on the `prometheus-client` crate: every
//! label here takes values from a closed set (TEE, decision and reason
//! code, phase, listener, CoCo endpoint and status), so each series is a
//! fixed slot in an array of atomics. Recording costs a few relaxed atomic
//! adds: no lock, no hashing of label values, no allocation on the release
//! path, and no dependency. Nothing a caller sends (a secret name, a peer
//! address) can become a label value, so the series count is fixed.
//!
//! A broker without a metrics listener records nothing
//! ([`Metrics::recording`]): no one could read the counts. The
//! open-connections gauges are kept either way, since connection admission
//! counts with them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::reason::ReasonCode;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `tee` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tee {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// The CoCo front end's insecure `sample` TEE (dev mode only).
    Sample,
    /// Not known (a CoCo request refused before its TEE was known).
    Unknown,
}

impl Tee {
    const ALL: [Tee; 4] = [Tee::Snp, Tee::Tdx, Tee::Sample, Tee::Unknown];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Snp => "snp",
            Self::Tdx => "tdx",
            Self::Sample => "sample",
            Self::Unknown => "unknown",
        }
    }

    /// The label of an audit record's TEE name (`snp`, `tdx`, `sample`).
    pub fn from_name(name: Option<&str>) -> Self {
        match name {
            Some("snp") => Self::Snp,
            Some("tdx") => Self::Tdx,
            Some("sample") => Self::Sample,
            _ => Self::Unknown,
        }
    }
}

/// A step of the release flow, timed on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Evidence verification (parse, chain, signature, collateral).
    Verify,
    /// Reading one secret from the store (through its read cache).
    Store,
    /// Evaluating the release policy for one secret.
    Policy,
    /// HPKE-sealing one secret.
    Seal,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Verify, Phase::Store, Phase::Policy, Phase::Seal];

    const fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Store => "store",
            Self::Policy => "policy",
            Self::Seal => "seal",
        }
    }
}

/// A listener, for the open-connections gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The KeyBroker (guest) gRPC listener.
    Guest,
    /// The Admin gRPC listener.
    Admin,
    /// The CoCo KBS protocol listener.
    Coco,
    /// The metrics listener itself.
    Metrics,
}

impl Listener {
    const ALL: [Listener; 4] = [Listener::Guest, Listener::Admin, Listener::Coco, Listener::Metrics];

    const fn as_str(self) -> &'static str {
        match self {
            Self::Guest => "guest",
            Self::Admin => "admin",
            Self::Coco => "coco",
            Self::Metrics => "metrics",
        }
    }
}

/// A CoCo KBS protocol endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CocoEndpoint {
    /// `POST /kbs/v0/auth`.
    Auth,
    /// `POST /kbs/v0/attest`.
    Attest,
    /// `GET /kbs/v0/resource/...`.
    Resource,
    /// Any other path.
    Other,
}

impl CocoEndpoint {
    const ALL: [CocoEndpoint; 4] =
        [CocoEndpoint::Auth, CocoEndpoint::Attest, CocoEndpoint::Resource, CocoEndpoint::Other];

    /// The endpoint of a request path.
    pub fn of_path(path: &str) -> Self {
        match path {
            "/kbs/v0/auth" => Self::Auth,
            "/kbs/v0/attest" => Self::Attest,
            p if p.starts_with("/kbs/v0/resource/") => Self::Resource,
            _ => Self::Other,
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Attest => "attest",
            Self::Resource => "resource",
            Self::Other => "other",
        }
    }
}

/// The HTTP statuses the CoCo front end answers with; any other is
/// counted as `other`.
const COCO_STATUSES: [u16; 12] = [200, 400, 401, 403, 404, 405, 408, 409, 413, 429, 500, 503];

/// Upper bounds of the duration histograms' buckets, in microseconds: from
/// a cached release (well under a millisecond) to a call that waits on a
/// vendor service up to the guest call timeout (60 s).
const BUCKETS_MICROS: [u64; 16] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    15_000_000, 60_000_000,
];

/// Outcomes of a release: `allow`, then `deny` for each reason code.
const OUTCOMES: usize = 1 + ReasonCode::ALL.len();

// The outcome slot of a reason code is its position in `ReasonCode::ALL`,
// which is its declaration order (checked by a test).
fn outcome(reason: Option<ReasonCode>) -> usize {
    match reason {
        None => 0,
        Some(code) => 1 + code as usize,
    }
}

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A histogram of durations with the buckets of [`BUCKETS_MICROS`]. Each
/// observation increments one bucket (the last is `+Inf`); the cumulative
/// counts are summed when encoded.
#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self { buckets: counters(), sum_nanos: AtomicU64::new(0) }
    }

    fn observe(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let slot = BUCKETS_MICROS.iter().position(|bound| micros <= *bound).unwrap_or(BUCKETS_MICROS.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; `labels` is empty
    /// or ends with a comma.
    fn encode(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (bound, bucket) in BUCKETS_MICROS.iter().zip(&self.buckets) {
            cumulative = cumulative.saturating_add(load(bucket));
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        if let Some(inf) = self.buckets.last() {
            cumulative = cumulative.saturating_add(load(inf));
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let trimmed = labels.trim_end_matches(',');
        let braces = if trimmed.is_empty() { String::new() } else { format!("{{{trimmed}}}") };
        let sum = load(&self.sum_nanos) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The broker's counters, histograms and gauges; one per broker, shared by
/// every front end.
pub struct Metrics {
    releases: [[AtomicU64; OUTCOMES]; Tee::ALL.len()],
    release_duration: [Histogram; Tee::ALL.len()],
    phase_duration: [Histogram; Phase::ALL.len()],
    challenges: [AtomicU64; Tee::ALL.len()],
    rate_limited: AtomicU64,
    coco_requests: [[AtomicU64; COCO_STATUSES.len() + 1]; CocoEndpoint::ALL.len()],
    open_connections: [Arc<AtomicUsize>; Listener::ALL.len()],
    audit_write_failures: Arc<AtomicU64>,
    recording: bool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("rate_limited", &self.rate_limited).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Arc::new(AtomicU64::new(0)))
    }
}

impl Metrics {
    /// Metrics at zero; `audit_write_failures` is the audit log's own
    /// failure counter ([`crate::audit::AuditLog`] counts every failed
    /// write, whoever made it).
    pub fn new(audit_write_failures: Arc<AtomicU64>) -> Self {
        Self {
            releases: std::array::from_fn(|_| counters()),
            release_duration: std::array::from_fn(|_| Histogram::new()),
            phase_duration: std::array::from_fn(|_| Histogram::new()),
            challenges: counters(),
            rate_limited: AtomicU64::new(0),
            coco_requests: std::array::from_fn(|_| counters()),
            open_connections: std::array::from_fn(|_| Arc::new(AtomicUsize::new(0))),
            audit_write_failures,
            recording: true,
        }
    }

    /// These metrics, recording the release path's counters and histograms
    /// only when `on` (the open-connections gauges and the audit failure
    /// count are kept either way).
    pub fn recording(mut self, on: bool) -> Self {
        self.recording = on;
        self
    }

    /// One release decision: allowed (`refused` is `None`) or refused with
    /// that reason, and how long the whole call took.
    pub fn release(&self, tee: Tee, refused: Option<ReasonCode>, took: Duration) {
        if !self.recording {
            return;
        }
        let tee = tee as usize;
        if let Some(slot) = self.releases.get(tee).and_then(|row| row.get(outcome(refused))) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(histogram) = self.release_duration.get(tee) {
            histogram.observe(took);
        }
    }

    /// The time one phase of a release took.
    pub fn phase(&self, phase: Phase, took: Duration) {
        if !self.recording {
            return;
        }
        if let Some(histogram) = self.phase_duration.get(phase as usize) {
            histogram.observe(took);
        }
    }

    /// One challenge (or CoCo session) issued.
    pub fn challenge_issued(&self, tee: Tee) {
        if !self.recording {
            return;
        }
        if let Some(counter) = self.challenges.get(tee as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One guest-facing call refused by the rate limits.
    pub fn rate_limited(&self) {
        if !self.recording {
            return;
        }
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// One CoCo request answered with `status`.
    pub fn coco_request(&self, endpoint: CocoEndpoint, status: u16) {
        if !self.recording {
            return;
        }
        let slot = COCO_STATUSES.iter().position(|s| *s == status).unwrap_or(COCO_STATUSES.len());
        if let Some(counter) = self.coco_requests.get(endpoint as usize).and_then(|row| row.get(slot)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The open-connections gauge of `listener`, for its connection
    /// admission to keep up to date.
    pub fn open_connections(&self, listener: Listener) -> Arc<AtomicUsize> {
        match self.open_connections.get(listener as usize) {
            Some(gauge) => Arc::clone(gauge),
            None => Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32 * 1024);
        let (version, revision) = build_info();
        family(&mut out, "kbs_build_info", "gauge", "The broker's version and source revision; always 1.");
        let _ = writeln!(out, "kbs_build_info{{version=\"{}\",revision=\"{}\"}} 1", escape(version), escape(revision));

        family(
            &mut out,
            "kbs_releases_total",
            "counter",
            "Release decisions (gRPC ReleaseSecrets calls and CoCo resource requests), by TEE, decision and reason code.",
        );
        for (tee, row) in Tee::ALL.iter().zip(&self.releases) {
            for (i, count) in row.iter().enumerate() {
                let (decision, reason) = match i.checked_sub(1).and_then(|r| ReasonCode::ALL.get(r)) {
                    None => ("allow", "ok"),
                    Some(code) => ("deny", code.as_str()),
                };
                let _ = writeln!(
                    out,
                    "kbs_releases_total{{tee=\"{}\",decision=\"{decision}\",reason=\"{reason}\"}} {}",
                    tee.as_str(),
                    load(count)
                );
            }
        }

        family(
            &mut out,
            "kbs_release_duration_seconds",
            "histogram",
            "Time of a whole release call, decision and audit record included, by TEE.",
        );
        for (tee, histogram) in Tee::ALL.iter().zip(&self.release_duration) {
            histogram.encode(&mut out, "kbs_release_duration_seconds", &format!("tee=\"{}\",", tee.as_str()));
        }

        family(
            &mut out,
            "kbs_release_phase_duration_seconds",
            "histogram",
            "Time of one phase of a gRPC release: verify (once per call), store, policy and seal (once per secret).",
        );
        for (phase, histogram) in Phase::ALL.iter().zip(&self.phase_duration) {
            histogram.encode(&mut out, "kbs_release_phase_duration_seconds", &format!("phase=\"{}\",", phase.as_str()));
        }

        family(
            &mut out,
            "kbs_challenges_issued_total",
            "counter",
            "Challenges issued (gRPC GetChallenge and CoCo auth sessions), by TEE.",
        );
        for (tee, count) in Tee::ALL.iter().zip(&self.challenges) {
            let _ = writeln!(out, "kbs_challenges_issued_total{{tee=\"{}\"}} {}", tee.as_str(), load(count));
        }

        family(
            &mut out,
            "kbs_rate_limited_total",
            "counter",
            "Guest-facing calls refused by the rate limits before any work.",
        );
        let _ = writeln!(out, "kbs_rate_limited_total {}", load(&self.rate_limited));

        family(
            &mut out,
            "kbs_audit_write_failures_total",
            "counter",
            "Audit records that could not be written (a release decision without its record is refused).",
        );
        let _ = writeln!(out, "kbs_audit_write_failures_total {}", load(&self.audit_write_failures));

        family(&mut out, "kbs_open_connections", "gauge", "Connections admitted and open now, by listener.");
        for (listener, gauge) in Listener::ALL.iter().zip(&self.open_connections) {
            let open = gauge.load(Ordering::Relaxed);
            let _ = writeln!(out, "kbs_open_connections{{listener=\"{}\"}} {open}", listener.as_str());
        }

        family(
            &mut out,
            "kbs_coco_requests_total",
            "counter",
            "Requests answered by the CoCo KBS protocol front end, by endpoint and HTTP status.",
        );
        for (endpoint, row) in CocoEndpoint::ALL.iter().zip(&self.coco_requests) {
            for (i, count) in row.iter().enumerate() {
                let n = load(count);
                // Only statuses seen: most endpoint/status pairs never occur.
                if n == 0 {
                    continue;
                }
                let status = COCO_STATUSES.get(i).map_or_else(|| "other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "kbs_coco_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                    endpoint.as_str()
                );
            }
        }
        self.encode_trustee_names(&mut out);
        out
    }

    /// The same counts under the metric names of trustee (the CNCF
    /// Confidential Containers KBS) where it measures the same quantity, so
    /// that dashboards and alerts written for it keep working; see
    /// docs/metrics.md. Each is a sum of the series above, without labels.
    fn encode_trustee_names(&self, out: &mut String) {
        let count =
            |row: &[AtomicU64; OUTCOMES], refused: Option<ReasonCode>| row.get(outcome(refused)).map_or(0, load);
        let approvals: u64 = self.releases.iter().map(|row| count(row, None)).sum();
        let violations: u64 =
            self.releases.iter().flat_map(|row| POLICY_REFUSALS.iter().map(move |code| count(row, Some(*code)))).sum();
        let coco = |endpoint: CocoEndpoint, status: Option<u16>| -> u64 {
            let Some(row) = self.coco_requests.get(endpoint as usize) else { return 0 };
            match status {
                None => row.iter().map(load).sum(),
                Some(s) => COCO_STATUSES.iter().position(|x| *x == s).and_then(|i| row.get(i)).map_or(0, load),
            }
        };
        let attest = coco(CocoEndpoint::Attest, None);
        let attest_ok = coco(CocoEndpoint::Attest, Some(200));
        let attest_refused = coco(CocoEndpoint::Attest, Some(401)) + coco(CocoEndpoint::Attest, Some(403));
        let all_coco: u64 = CocoEndpoint::ALL.iter().map(|e| coco(*e, None)).sum();
        let open_coco = self.open_connections.get(Listener::Coco as usize).map_or(0, |g| g.load(Ordering::Relaxed));
        let families: [(&str, &str, &str, u64); 11] = [
            (
                "kbs_policy_evaluations_total",
                "counter",
                "Release decisions made by policy (trustee's name).",
                approvals + violations,
            ),
            ("kbs_policy_approvals_total", "counter", "Releases allowed (trustee's name).", approvals),
            ("kbs_policy_violations_total", "counter", "Releases refused by policy (trustee's name).", violations),
            ("kbs_http_requests_total", "counter", "CoCo protocol requests (trustee's name).", all_coco),
            (
                "kbs_http_active_connections",
                "gauge",
                "Open CoCo listener connections (trustee's name).",
                open_coco as u64,
            ),
            (
                "kbs_auth_requests_total",
                "counter",
                "CoCo /auth requests (trustee's name).",
                coco(CocoEndpoint::Auth, None),
            ),
            (
                "kbs_auth_successes_total",
                "counter",
                "CoCo /auth requests answered 200 (trustee's name).",
                coco(CocoEndpoint::Auth, Some(200)),
            ),
            ("kbs_attestation_requests_total", "counter", "CoCo /attest requests (trustee's name).", attest),
            (
                "kbs_attestation_successes_total",
                "counter",
                "CoCo /attest requests answered 200 (trustee's name; no tee_type label).",
                attest_ok,
            ),
            (
                "kbs_attestation_failures_total",
                "counter",
                "CoCo /attest requests refused, 401 or 403 (trustee's name; no tee_type label).",
                attest_refused,
            ),
            (
                "kbs_attestation_errors_total",
                "counter",
                "CoCo /attest requests answered with another status (trustee's name).",
                attest.saturating_sub(attest_ok + attest_refused),
            ),
        ];
        for (name, kind, help, value) in families {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// The metric names served for trustee's dashboards
/// ([`Metrics::encode`]), each an unlabelled sum of this broker's series.
pub const TRUSTEE_NAMES: [&str; 11] = [
    "kbs_policy_evaluations_total",
    "kbs_policy_approvals_total",
    "kbs_policy_violations_total",
    "kbs_http_requests_total",
    "kbs_http_active_connections",
    "kbs_auth_requests_total",
    "kbs_auth_successes_total",
    "kbs_attestation_requests_total",
    "kbs_attestation_successes_total",
    "kbs_attestation_failures_total",
    "kbs_attestation_errors_total",
];

/// The refusals a release policy decides (the built-in and Rego policies),
/// as opposed to evidence, challenge, store or rate-limit refusals: what
/// trustee counts as `kbs_policy_violations_total`.
const POLICY_REFUSALS: [ReasonCode; 9] = [
    ReasonCode::DebugEnabled,
    ReasonCode::VmplNotAllowed,
    ReasonCode::MeasurementNotAllowed,
    ReasonCode::PolicyDenied,
    ReasonCode::NoPolicy,
    ReasonCode::TcbStatusNotAllowed,
    ReasonCode::TdAttributesNotAllowed,
    ReasonCode::GpuCountMismatch,
    ReasonCode::GpuMeasurementMismatch,
];

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The version and revision of `kbs_proto::VERSION` (`"0.1.0 (abc123)"`).
fn build_info() -> (&'static str, &'static str) {
    let version = kbs_proto::VERSION;
    match version.split_once(" (") {
        Some((v, rest)) => (v, rest.strip_suffix(')').unwrap_or(rest)),
        None => (version, "unknown"),
    }
}

/// A label value escaped as the text format wants (`\`, `"`, newline).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series written exactly as `series`.
    fn value(text: &str, series: &str) -> f64 {
        let line = text.lines().find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series));
        line.and_then(|l| l.rsplit_once(' ')).unwrap_or_else(|| panic!("no {series} in\n{text}")).1.parse().unwrap()
    }

    #[test]
    fn reason_slots_follow_the_declaration_order() {
        for (i, code) in ReasonCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code:?}");
        }
        for (i, tee) in Tee::ALL.iter().enumerate() {
            assert_eq!(*tee as usize, i);
        }
    }

    #[test]
    fn the_exposition_is_well_formed_and_counts() {
        let failures = Arc::new(AtomicU64::new(0));
        let metrics = Metrics::new(Arc::clone(&failures));
        metrics.release(Tee::Snp, None, Duration::from_micros(700));
        metrics.release(Tee::Snp, Some(ReasonCode::MeasurementNotAllowed), Duration::from_millis(3));
        metrics.release(Tee::Tdx, Some(ReasonCode::RateLimited), Duration::from_secs(100));
        metrics.phase(Phase::Seal, Duration::from_micros(100));
        metrics.challenge_issued(Tee::Snp);
        metrics.rate_limited();
        metrics.coco_request(CocoEndpoint::of_path("/kbs/v0/resource/a/b/c"), 403);
        metrics.coco_request(CocoEndpoint::of_path("/nope"), 418);
        failures.fetch_add(2, Ordering::Relaxed);
        let gauge = metrics.open_connections(Listener::Coco);
        gauge.fetch_add(3, Ordering::Relaxed);
        let text = metrics.encode();

        // Every family has HELP and TYPE before its samples; every sample
        // line is `name{labels} value` with a number for the value.
        let mut typed = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(kind != "counter" || name.ends_with("_total"), "{line}");
                assert!(kind != "histogram" || name.ends_with("_seconds"), "{line}");
                assert!(typed.insert(name.to_owned()), "two TYPE lines for {name}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, number) = line.rsplit_once(' ').unwrap();
            assert!(number.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "sample before its TYPE: {line}");
            assert_eq!(series.matches('"').count() % 2, 0, "{line}");
        }

        let ok = r#"kbs_releases_total{tee="snp",decision="allow",reason="ok"}"#;
        assert_eq!(value(&text, ok), 1.0);
        let deny = r#"kbs_releases_total{tee="snp",decision="deny",reason="measurement_not_allowed"}"#;
        assert_eq!(value(&text, deny), 1.0);
        let limited = r#"kbs_releases_total{tee="tdx",decision="deny",reason="rate_limited"}"#;
        assert_eq!(value(&text, limited), 1.0);
        assert_eq!(value(&text, r#"kbs_releases_total{tee="tdx",decision="allow",reason="ok"}"#), 0.0);
        // Histograms are cumulative; +Inf equals the count.
        let snp = |le: &str| value(&text, &format!("kbs_release_duration_seconds_bucket{{tee=\"snp\",le=\"{le}\"}}"));
        assert_eq!((snp("0.0005"), snp("0.001"), snp("0.0025"), snp("0.005"), snp("+Inf")), (0.0, 1.0, 1.0, 2.0, 2.0));
        assert_eq!(value(&text, r#"kbs_release_duration_seconds_count{tee="snp"}"#), 2.0);
        assert!((value(&text, r#"kbs_release_duration_seconds_sum{tee="snp"}"#) - 0.0037).abs() < 1e-9);
        let tdx = |le: &str| value(&text, &format!("kbs_release_duration_seconds_bucket{{tee=\"tdx\",le=\"{le}\"}}"));
        assert_eq!((tdx("60"), tdx("+Inf")), (0.0, 1.0));
        assert_eq!(value(&text, r#"kbs_release_phase_duration_seconds_count{phase="seal"}"#), 1.0);
        assert_eq!(value(&text, r#"kbs_release_phase_duration_seconds_count{phase="verify"}"#), 0.0);
        assert_eq!(value(&text, r#"kbs_challenges_issued_total{tee="snp"}"#), 1.0);
        assert_eq!(value(&text, "kbs_rate_limited_total"), 1.0);
        assert_eq!(value(&text, "kbs_audit_write_failures_total"), 2.0);
        assert_eq!(value(&text, r#"kbs_open_connections{listener="coco"}"#), 3.0);
        assert_eq!(value(&text, r#"kbs_open_connections{listener="guest"}"#), 0.0);
        assert_eq!(value(&text, r#"kbs_coco_requests_total{endpoint="resource",status="403"}"#), 1.0);
        assert_eq!(value(&text, r#"kbs_coco_requests_total{endpoint="other",status="other"}"#), 1.0);
        // The series count documented in docs/metrics.md: fixed, whatever
        // callers send (the CoCo pairs seen so far come on top).
        let fixed = text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("kbs_coco_requests_total")).count();
        assert_eq!(fixed, 330);
        let (version, _) = build_info();
        assert!(text.contains(&format!("kbs_build_info{{version=\"{version}\",revision=")), "{text}");
        assert!(!version.is_empty() && !version.contains('('));
    }

    #[test]
    fn trustee_names_sum_the_same_counts() {
        let metrics = Metrics::new(Arc::new(AtomicU64::new(0)));
        metrics.release(Tee::Snp, None, Duration::from_micros(700));
        metrics.release(Tee::Tdx, None, Duration::from_micros(700));
        metrics.release(Tee::Sample, None, Duration::from_micros(700));
        metrics.release(Tee::Snp, Some(ReasonCode::MeasurementNotAllowed), Duration::from_millis(3));
        metrics.release(Tee::Tdx, Some(ReasonCode::PolicyDenied), Duration::from_millis(3));
        // Not the policy's decisions: not violations.
        metrics.release(Tee::Snp, Some(ReasonCode::SignatureInvalid), Duration::from_millis(3));
        metrics.release(Tee::Snp, Some(ReasonCode::RateLimited), Duration::from_millis(3));
        for status in [200, 200, 200, 429] {
            metrics.coco_request(CocoEndpoint::Auth, status);
        }
        for status in [200, 401, 403, 403, 400, 500] {
            metrics.coco_request(CocoEndpoint::Attest, status);
        }
        metrics.coco_request(CocoEndpoint::Resource, 200);
        metrics.open_connections(Listener::Coco).fetch_add(5, Ordering::Relaxed);
        metrics.open_connections(Listener::Guest).fetch_add(7, Ordering::Relaxed);
        let text = metrics.encode();
        for (series, expected) in [
            ("kbs_policy_approvals_total", 3.0),
            ("kbs_policy_violations_total", 2.0),
            ("kbs_policy_evaluations_total", 5.0),
            ("kbs_http_requests_total", 11.0),
            ("kbs_http_active_connections", 5.0),
            ("kbs_auth_requests_total", 4.0),
            ("kbs_auth_successes_total", 3.0),
            ("kbs_attestation_requests_total", 6.0),
            ("kbs_attestation_successes_total", 1.0),
            ("kbs_attestation_failures_total", 3.0),
            ("kbs_attestation_errors_total", 2.0),
        ] {
            assert_eq!(value(&text, series), expected, "{series}");
        }
        // Nothing under a trustee name carries a label (no resource_path).
        assert!(!text.contains("kbs_resource_reads_total"), "{text}");
        let typed: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(TRUSTEE_NAMES.iter().all(|n| typed.contains(n)), "{typed:?}");
    }

    #[test]
    fn metrics_not_recording_count_nothing_but_connections() {
        let failures = Arc::new(AtomicU64::new(0));
        let metrics = Metrics::new(Arc::clone(&failures)).recording(false);
        metrics.release(Tee::Snp, None, Duration::from_micros(700));
        metrics.phase(Phase::Seal, Duration::from_micros(100));
        metrics.challenge_issued(Tee::Snp);
        metrics.rate_limited();
        metrics.coco_request(CocoEndpoint::Resource, 200);
        metrics.open_connections(Listener::Guest).fetch_add(2, Ordering::Relaxed);
        failures.fetch_add(1, Ordering::Relaxed);
        let text = metrics.encode();
        assert_eq!(value(&text, r#"kbs_releases_total{tee="snp",decision="allow",reason="ok"}"#), 0.0);
        assert_eq!(value(&text, r#"kbs_release_duration_seconds_count{tee="snp"}"#), 0.0);
        assert_eq!(value(&text, r#"kbs_release_phase_duration_seconds_count{phase="seal"}"#), 0.0);
        assert_eq!(value(&text, r#"kbs_challenges_issued_total{tee="snp"}"#), 0.0);
        assert_eq!(value(&text, "kbs_rate_limited_total"), 0.0);
        assert!(!text.contains("kbs_coco_requests_total{"), "{text}");
        // Admission still counts connections; the audit log its failures.
        assert_eq!(value(&text, r#"kbs_open_connections{listener="guest"}"#), 2.0);
        assert_eq!(value(&text, "kbs_audit_write_failures_total"), 1.0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
