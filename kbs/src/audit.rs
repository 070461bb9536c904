//! The audit log: one JSON line per decision, hash-chained and, with a
//! key, MAC-chained.
//!
//! Every record carries `prev`, the SHA-256 of the previous line's bytes
//! (64 zeros for the first line of a file), so truncation in the middle,
//! reordering or editing of any record is detectable. Records never contain
//! a secret value or raw evidence: only names, versions, digests and reason
//! codes.
//!
//! The hash chain stops no one who can write the file: they can rewrite it
//! whole and recompute every `prev`. With a key (`[audit] key_file`), each
//! record is format `"v":2` and ends with `"mac"`, the HMAC-SHA256 under
//! that key of the previous record's MAC (32 zero bytes for the first
//! record) followed by the record's content: the line as it would be
//! without its MAC, i.e. with its final `,"mac":"..."}` replaced by `}`.
//! The MAC is always the last field. Without the key a rewritten file
//! cannot carry valid MACs. A file is keyed throughout or not at all; the
//! truncation of its tail shows only against a head recorded elsewhere
//! (the count and the last MAC).

use aws_lc_rs::hmac;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One released (or requested) secret in a record.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SecretRef {
    /// Name.
    pub name: String,
    /// Version, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// An audit event, before chaining.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// What happened: `release`, `secret.put`, `secret.delete`, ...
    pub action: &'static str,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Stable reason code of a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Every reason, for operators.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Attestation id (releases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation_id: Option<String>,
    /// TEE kind (releases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tee: Option<&'static str>,
    /// Launch measurement (releases that got past verification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// SHA-256 of the claims JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims_digest: Option<String>,
    /// Secrets concerned.
    pub secrets: Vec<SecretRef>,
    /// Caller: peer address, or the admin token's name.
    pub caller: String,
    /// Id tying an admin change's decision record to the record of its
    /// failure, if it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// SHA-256 of the content an admin change writes, when it is not secret
    /// (a policy's Rego, a reference value set's JSON as given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
    /// `failed`: a second record of an allowed admin change whose effect
    /// then failed (its `reason` says why). Absent on decision records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
}

impl Event {
    /// The record of `action` by `caller`, saying `deny` until the decision
    /// is filled in: a record that is never completed refuses.
    pub fn new(action: &'static str, caller: String) -> Self {
        Self {
            action,
            decision: "deny",
            reason: None,
            reasons: Vec::new(),
            attestation_id: None,
            tee: None,
            measurement: None,
            claims_digest: None,
            secrets: Vec::new(),
            caller,
            call_id: None,
            content_sha256: None,
            outcome: None,
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    replica: &'a str,
    #[serde(flatten)]
    event: &'a Event,
    prev: String,
    /// Format: 2 for MAC-chained records (absent on unkeyed ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<u8>,
}

/// Format version of MAC-chained records.
const KEYED_VERSION: u8 = 2;
/// Length of `,"mac":"` + 64 hex digits + `"}`.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// The audit MAC key (HMAC-SHA256). No `Debug` of its bytes.
#[derive(Clone)]
pub struct AuditKey(hmac::Key);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// A key from its 32 bytes.
    pub fn new(bytes: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn mac(&self, prev: &[u8; 32], content: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(prev);
        ctx.update(content);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn verify(&self, prev: &[u8; 32], content: &[u8], tag: &[u8]) -> bool {
        let mut data = Vec::with_capacity(32 + content.len());
        data.extend_from_slice(prev);
        data.extend_from_slice(content);
        hmac::verify(&self.0, &data, tag).is_ok()
    }
}

/// The MAC chain's state: the key and the last record's MAC.
struct MacChain {
    key: AuditKey,
    head: [u8; 32],
}

/// What a verified file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Number of records.
    pub count: usize,
    /// SHA-256 of the last line (zeros for an empty file).
    pub last: [u8; 32],
    /// The last record's MAC, when the MACs were checked (zeros for an
    /// empty file).
    pub head_mac: Option<[u8; 32]>,
    /// Whether the records carry MACs (checked or not).
    pub keyed: bool,
}

enum Sink {
    Stdout,
    File(File),
    /// Every write fails (tests of the fail-closed rule).
    #[cfg(test)]
    Failing,
}

struct State {
    sink: Sink,
    prev: [u8; 32],
    mac: Option<MacChain>,
    /// Records written (including those found in the file when opened).
    count: usize,
    /// When the head was last logged.
    anchored: std::time::Instant,
}

/// The head of the chain is logged (at info: record count, SHA-256 of the
/// last line and, keyed, its MAC) every this many records...
pub const ANCHOR_EVERY_RECORDS: usize = 1000;
/// ...or at the first record this long after the last time it was, and
/// when the log is opened. Kept elsewhere (the operational log), the head
/// shows a truncated tail: `kbsctl audit verify --expect-count N
/// --expect-head HEX`.
pub const ANCHOR_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// The audit writer. Writes are serialized; each record is flushed (and,
/// to a file, by default written through to the disk with `fdatasync`)
/// before the decision it records is returned to the caller.
pub struct AuditLog {
    replica: String,
    state: Mutex<State>,
    /// Writes that failed (the `kbs_audit_write_failures_total` metric).
    failures: Arc<AtomicU64>,
    sync: bool,
    /// The budget of refusal records (see [`Self::record_refusal`]).
    refusals: Mutex<RefusalBudget>,
}

/// Refusal records written one by one per second, at most; past it they
/// are counted, and the count is written as one `audit.suppressed` record
/// before the next refusal record. A flood of unauthenticated requests
/// thus costs a bounded amount of audit I/O and file, and every refusal
/// is still accounted for.
pub const REFUSAL_RECORDS_PER_SECOND: u32 = 200;

#[derive(Debug)]
struct RefusalBudget {
    window: std::time::Instant,
    written: u32,
    suppressed: u64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("replica", &self.replica).finish_non_exhaustive()
    }
}

impl State {
    fn new(sink: Sink, prev: [u8; 32], mac: Option<MacChain>, count: usize) -> Self {
        Self { sink, prev, mac, count, anchored: std::time::Instant::now() }
    }

    /// Logs the head of the chain, for checks of the file's tail.
    fn log_head(&mut self, replica: &str) {
        self.anchored = std::time::Instant::now();
        let head_mac = self.mac.as_ref().map(|m| hex::encode(m.head)).unwrap_or_default();
        tracing::info!(replica, records = self.count, head_sha256 = hex::encode(self.prev), head_mac, "audit head");
    }
}

/// A head of the chain recorded elsewhere (the broker logs it: `audit
/// head`): the file must hold at least `count` records, and record `count`
/// must have this MAC (when the MACs are checked) or this line SHA-256
/// (when they are not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Number of records at the head.
    pub count: usize,
    /// `head_mac`, or `head_sha256` when no key is given.
    pub head: [u8; 32],
}

/// Why the audit log could not be written or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O.
    #[error("audit I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The file's records are (not) keyed, and the log is opened without
    /// (with) a key: a file is keyed throughout or not at all.
    #[error("audit file {0}")]
    KeyMismatch(&'static str),
    /// The file ends before an expected head: records were removed from
    /// its tail.
    #[error("audit file truncated: {expected} records expected, {found} found")]
    Truncated {
        /// Records the head counts.
        expected: usize,
        /// Records in the file.
        found: usize,
    },
    /// The chain is broken at this line (1-based).
    #[error("audit chain broken at line {line}: {why}")]
    Broken {
        /// Line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

impl AuditLog {
    /// Audit to stdout (JSON lines).
    pub fn stdout(replica: &str, key: Option<AuditKey>) -> Self {
        let mac = key.map(|key| MacChain { key, head: [0; 32] });
        Self::new(replica, State::new(Sink::Stdout, [0; 32], mac, 0))
    }

    /// An audit log whose every write fails.
    #[cfg(test)]
    pub(crate) fn failing() -> Self {
        Self::new("test", State::new(Sink::Failing, [0; 32], None, 0))
    }

    /// Audit to a file, appending and continuing the chain of what is there.
    /// A file whose chain is already broken is refused: the operator must
    /// look at it before the broker writes more. With a key, its MACs are
    /// checked too; a keyed file is refused without the key and an unkeyed
    /// one (with records) with it, so that no file mixes the two.
    pub fn file(path: &Path, replica: &str, key: Option<AuditKey>) -> Result<Self, AuditError> {
        // What is there is read before anything is written: a device or a
        // FIFO (`/dev/zero`, `/dev/stdout`) would be read forever. Audit to
        // stdout is `path = "-"`.
        if path.exists() && !std::fs::metadata(path)?.is_file() {
            return Err(AuditError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the audit path exists and is not a regular file",
            )));
        }
        let open = || -> Result<_, AuditError> { Ok(BufReader::new(File::open(path)?)) };
        let mut found = if path.exists() {
            verify_chain(open()?, None)?
        } else {
            Verified { count: 0, last: [0; 32], head_mac: None, keyed: false }
        };
        match (&key, found.count > 0, found.keyed) {
            (Some(_), true, false) => {
                return Err(AuditError::KeyMismatch("holds records without MACs; move it aside to start a keyed log"));
            }
            (None, _, true) => return Err(AuditError::KeyMismatch("is MAC-chained but no audit key is configured")),
            (Some(key), _, true) => found = verify_chain(open()?, Some(key))?,
            _ => {}
        }
        let mac = key.map(|key| MacChain { key, head: found.head_mac.unwrap_or([0; 32]) });
        let prev = found.last;
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o640);
        }
        let file = options.open(path)?;
        let mut state = State::new(Sink::File(file), prev, mac, found.count);
        state.log_head(replica);
        Ok(Self::new(replica, state))
    }

    /// The head of the chain now: what the broker logs as `audit head`,
    /// as an anchor for the MACs (`keyed`) or for the hash chain.
    pub fn head(&self, keyed: bool) -> Option<Anchor> {
        let state = self.state.lock().ok()?;
        let head = if keyed { state.mac.as_ref()?.head } else { state.prev };
        Some(Anchor { count: state.count, head })
    }

    fn new(replica: &str, state: State) -> Self {
        Self {
            replica: replica.into(),
            state: Mutex::new(state),
            sync: true,
            failures: Arc::new(AtomicU64::new(0)),
            refusals: Mutex::new(RefusalBudget { window: std::time::Instant::now(), written: 0, suppressed: 0 }),
        }
    }

    /// Whether each record written to a file is written through to the
    /// disk (`fdatasync`) before its decision is answered (default true):
    /// without it a crash of the machine can lose the last records of
    /// decisions already answered.
    #[must_use]
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// The count of failed writes, shared with the metrics.
    pub fn failure_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.failures)
    }

    /// Appends one record. Failing to audit is an error the caller must
    /// treat as a refusal: nothing is released without a record.
    pub fn record(&self, event: &Event) -> Result<(), AuditError> {
        let written = self.write(event, self.sync);
        if written.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    /// Appends the record of a refusal made before any effect (a caller
    /// that did not authenticate, a request refused before the release
    /// flow). The refusal stands whether or not its record is written, so
    /// the record is not synced on its own (the next synced record carries
    /// it to the disk) and a failure is only counted and logged. At most
    /// [`REFUSAL_RECORDS_PER_SECOND`] are written one by one; the rest are
    /// counted into one `audit.suppressed` record.
    pub fn record_refusal(&self, event: &Event) {
        let suppressed = {
            let Ok(mut budget) = self.refusals.lock() else {
                return;
            };
            if budget.window.elapsed() >= std::time::Duration::from_secs(1) {
                budget.window = std::time::Instant::now();
                budget.written = 0;
            }
            if budget.written >= REFUSAL_RECORDS_PER_SECOND {
                budget.suppressed = budget.suppressed.saturating_add(1);
                return;
            }
            budget.written = budget.written.saturating_add(1);
            std::mem::take(&mut budget.suppressed)
        };
        if suppressed > 0 {
            let summary = Event {
                reasons: vec![format!(
                    "{suppressed} refusals not recorded one by one (over {REFUSAL_RECORDS_PER_SECOND} per second)"
                )],
                ..Event::new("audit.suppressed", self.replica.clone())
            };
            self.write_refusal(&summary);
        }
        self.write_refusal(event);
    }

    fn write_refusal(&self, event: &Event) {
        if let Err(e) = self.write(event, false) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(action = event.action, error = %e, "audit record of a refusal not written");
        }
    }

    fn write(&self, event: &Event, sync: bool) -> Result<(), AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Io(std::io::Error::other("audit lock poisoned")))?;
        let time =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let v = state.mac.as_ref().map(|_| KEYED_VERSION);
        let record = Record { time, replica: &self.replica, event, prev: hex::encode(state.prev), v };
        let mut line = serde_json::to_vec(&record).map_err(|e| AuditError::Io(std::io::Error::other(e)))?;
        let mut head = None;
        if let Some(chain) = &state.mac {
            let mac = chain.key.mac(&chain.head, &line);
            // The content ends with `}`: the MAC goes in as the last field.
            line.pop();
            line.extend_from_slice(format!(",\"mac\":\"{}\"}}", hex::encode(mac)).as_bytes());
            head = Some(mac);
        }
        let digest: [u8; 32] = Sha256::digest(&line).into();
        line.push(b'\n');
        match &mut state.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)?;
                out.flush()?;
            }
            Sink::File(f) => {
                f.write_all(&line)?;
                f.flush()?;
                if sync {
                    f.sync_data()?;
                }
            }
            #[cfg(test)]
            Sink::Failing => return Err(AuditError::Io(std::io::Error::other("test sink refuses writes"))),
        }
        state.prev = digest;
        if let (Some(chain), Some(mac)) = (&mut state.mac, head) {
            chain.head = mac;
        }
        state.count = state.count.saturating_add(1);
        if state.count % ANCHOR_EVERY_RECORDS == 0 || state.anchored.elapsed() >= ANCHOR_EVERY {
            state.log_head(&self.replica);
        }
        Ok(())
    }
}

/// Checks a file's hash chain (not its MACs); returns the number of
/// records and the digest of the last line.
pub fn verify_file(path: &Path) -> Result<(usize, [u8; 32]), AuditError> {
    verify_lines(BufReader::new(File::open(path)?))
}

/// Checks a file's hash chain and, with a key, its MAC chain: every record
/// must then carry a valid MAC.
pub fn verify_file_with(path: &Path, key: Option<&AuditKey>) -> Result<Verified, AuditError> {
    verify_chain(BufReader::new(File::open(path)?), key)
}

/// [`verify_file_with`], through `anchor`.
pub fn verify_file_anchored(
    path: &Path,
    key: Option<&AuditKey>,
    anchor: Option<&Anchor>,
) -> Result<Verified, AuditError> {
    verify_chain_anchored(BufReader::new(File::open(path)?), key, anchor)
}

/// Checks the hash chain read from `reader` (not its MACs); returns the
/// number of records and the digest of the last line.
pub fn verify_lines(reader: impl BufRead) -> Result<(usize, [u8; 32]), AuditError> {
    let found = verify_chain(reader, None)?;
    Ok((found.count, found.last))
}

/// Longest audit record read back (a record is about 500 bytes; an admin
/// record may carry a name as long as the admin message allows). A file
/// with a longer line is refused without reading the line whole, so a
/// hostile file cannot make the broker or `kbsctl` hold gigabytes.
pub const MAX_RECORD_BYTES: usize = 2 << 20;

/// Reads the next record (one line, without its newline) into `line`:
/// `false` at the end of the input. A line over [`MAX_RECORD_BYTES`] is
/// refused as broken at line `number`.
pub fn read_record(reader: &mut impl BufRead, line: &mut Vec<u8>, number: usize) -> Result<bool, AuditError> {
    line.clear();
    let cap = u64::try_from(MAX_RECORD_BYTES).unwrap_or(u64::MAX) + 1;
    let read = std::io::Read::take(&mut *reader, cap).read_until(b'\n', line)?;
    if read == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_RECORD_BYTES {
        return Err(AuditError::Broken { line: number, why: format!("a record over {MAX_RECORD_BYTES} bytes") });
    }
    Ok(true)
}

/// Checks a chain read from `reader`: the hash chain, and with a key the
/// MAC of every record.
pub fn verify_chain(reader: impl BufRead, key: Option<&AuditKey>) -> Result<Verified, AuditError> {
    verify_chain_anchored(reader, key, None)
}

/// [`verify_chain`], and the chain passes through `anchor`: a tail removed
/// since the anchor was recorded shows.
pub fn verify_chain_anchored(
    mut reader: impl BufRead,
    key: Option<&AuditKey>,
    anchor: Option<&Anchor>,
) -> Result<Verified, AuditError> {
    let mut prev = [0u8; 32];
    let mut head = [0u8; 32];
    let mut count = 0;
    let mut keyed = None;
    let mut line = Vec::new();
    for number in 1.. {
        if !read_record(&mut reader, &mut line, number)? {
            break;
        }
        let broken = |why: &str| AuditError::Broken { line: number, why: why.into() };
        let value: serde_json::Value = serde_json::from_slice(&line)
            .map_err(|e| AuditError::Broken { line: number, why: format!("not JSON: {e}") })?;
        let claimed = value.get("prev").and_then(|p| p.as_str()).unwrap_or_default();
        if claimed != hex::encode(prev) {
            return Err(broken("prev does not match the previous record"));
        }
        let mac = value.get("mac").and_then(|m| m.as_str());
        let has_mac = mac.is_some();
        if *keyed.get_or_insert(has_mac) != has_mac {
            return Err(broken("records with and without MACs are mixed"));
        }
        if has_mac && value.get("v").and_then(serde_json::Value::as_u64) != Some(u64::from(KEYED_VERSION)) {
            return Err(broken("a MAC-chained record must be format v2"));
        }
        if let Some(key) = key {
            let mac = mac.ok_or_else(|| broken("no MAC"))?;
            let tag =
                hex::decode(mac).ok().filter(|t| t.len() == 32).ok_or_else(|| broken("MAC is not 64 hex digits"))?;
            let suffix = format!(",\"mac\":\"{mac}\"}}");
            let body = line
                .len()
                .checked_sub(MAC_SUFFIX_LEN)
                .and_then(|n| line.get(..n))
                .filter(|_| line.ends_with(suffix.as_bytes()))
                .ok_or_else(|| broken("the MAC is not the record's last field"))?;
            let mut content = body.to_vec();
            content.push(b'}');
            if !key.verify(&head, &content, &tag) {
                return Err(broken("MAC does not verify (edited, reordered, or another key)"));
            }
            head.copy_from_slice(&tag);
        }
        prev = Sha256::digest(&line).into();
        count += 1;
        if let Some(anchor) = anchor.filter(|a| a.count == count) {
            let at = if key.is_some() { &head } else { &prev };
            if *at != anchor.head {
                return Err(broken("not the expected head: the file was rewritten up to here"));
            }
        }
    }
    if let Some(anchor) = anchor.filter(|a| a.count > count) {
        return Err(AuditError::Truncated { expected: anchor.count, found: count });
    }
    Ok(Verified { count, last: prev, head_mac: key.map(|_| head), keyed: keyed.unwrap_or(false) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(decision: &'static str) -> Event {
        Event {
            action: "release",
            decision,
            reason: None,
            reasons: vec![],
            attestation_id: Some("a1".into()),
            tee: Some("snp"),
            measurement: None,
            claims_digest: None,
            secrets: vec![SecretRef { name: "m/k/a".into(), version: Some(1) }],
            caller: "127.0.0.1:5".into(),
            ..Event::new("release", String::new())
        }
    }

    /// A flood of refusals writes at most the budget one by one, then one
    /// summary counting the rest; the chain stays whole.
    #[test]
    fn refusals_past_the_budget_are_counted_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::file(&path, "r0", None).unwrap();
        let budget = usize::try_from(REFUSAL_RECORDS_PER_SECOND).unwrap();
        let refusal = || Event { reason: Some("unauthenticated"), ..Event::new("admin.auth", "127.0.0.1:9".into()) };
        for _ in 0..budget + 50 {
            log.record_refusal(&refusal());
        }
        assert_eq!(verify_file(&path).unwrap().0, budget);
        // The next window: the count of the suppressed ones, then the refusal.
        log.refusals.lock().unwrap().window -= std::time::Duration::from_secs(2);
        log.record_refusal(&refusal());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), budget + 2);
        assert_eq!(lines[budget]["action"], "audit.suppressed");
        assert!(lines[budget]["reasons"][0].as_str().unwrap().starts_with("50 refusals"), "{}", lines[budget]);
        assert_eq!(lines[budget + 1]["action"], "admin.auth");
        assert_eq!(lines[budget + 1]["decision"], "deny");
        assert_eq!(verify_file(&path).unwrap().0, budget + 2);
    }

    #[test]
    fn chain_verifies_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::file(&path, "r0", None).unwrap();
        log.record(&event("allow")).unwrap();
        log.record(&event("deny")).unwrap();
        drop(log);
        // Re-opening continues the chain.
        let log = AuditLog::file(&path, "r0", None).unwrap();
        log.record(&event("allow")).unwrap();
        assert_eq!(verify_file(&path).unwrap().0, 3);

        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"deny\"", "\"allow\"", 1);
        assert!(matches!(verify_lines(edited.as_bytes()), Err(AuditError::Broken { line: 3, .. })));
        let lines: Vec<&str> = text.lines().collect();
        let dropped = format!("{}\n{}\n", lines[0], lines[2]);
        assert!(matches!(verify_lines(dropped.as_bytes()), Err(AuditError::Broken { line: 2, .. })));
        // Nor is what is not a regular file (it would be read forever).
        assert!(matches!(AuditLog::file(Path::new("/dev/null"), "r0", None), Err(AuditError::Io(_))));
        // A broken file is not appended to.
        std::fs::write(&path, edited).unwrap();
        assert!(AuditLog::file(&path, "r0", None).is_err());
    }

    /// Rewrites `lines` as someone who can write the file but lacks the
    /// key would: `edit` one line, then recompute every `prev` after it.
    fn rewrite(text: &str, edit: impl Fn(&str) -> String) -> String {
        let mut out: Vec<String> = Vec::new();
        for line in text.lines() {
            let mut line = edit(line);
            if let Some(previous) = out.last() {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                let old = value["prev"].as_str().unwrap().to_owned();
                line = line.replace(&old, &hex::encode(Sha256::digest(previous.as_bytes())));
            }
            out.push(line);
        }
        out.join("\n") + "\n"
    }

    #[test]
    fn keyed_chain_detects_a_rewrite_the_hash_chain_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let key = AuditKey::new(&[9; 32]);
        let log = AuditLog::file(&path, "r0", Some(key.clone())).unwrap();
        log.record(&event("allow")).unwrap();
        log.record(&event("deny")).unwrap();
        drop(log);
        // Re-opening checks the MACs and continues both chains.
        let log = AuditLog::file(&path, "r0", Some(key.clone())).unwrap();
        log.record(&event("allow")).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let found = verify_chain(text.as_bytes(), Some(&key)).unwrap();
        assert_eq!((found.count, found.keyed), (3, true));
        let last_mac: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(found.head_mac.map(hex::encode).as_deref(), last_mac["mac"].as_str());
        assert!(text.lines().all(|l| l.contains(r#","v":2,"mac":""#) && l.ends_with("\"}")), "{text}");
        assert_eq!(verify_lines(text.as_bytes()).unwrap().0, 3, "the hash chain alone verifies too");

        // A denial turned into an allow, the hash chain recomputed: the
        // unkeyed check passes, the keyed one does not.
        let forged = rewrite(&text, |l| l.replacen(r#""decision":"deny""#, r#""decision":"allow""#, 1));
        assert_ne!(forged, text);
        assert_eq!(verify_lines(forged.as_bytes()).unwrap().0, 3);
        assert!(matches!(verify_chain(forged.as_bytes(), Some(&key)), Err(AuditError::Broken { line: 2, .. })));
        // Nor does dropping a record and re-chaining, or another key, or a
        // MAC moved out of last place, or a stripped MAC.
        let lines: Vec<&str> = text.lines().collect();
        let dropped = rewrite(&format!("{}\n{}\n", lines[0], lines[2]), str::to_owned);
        assert_eq!(verify_lines(dropped.as_bytes()).unwrap().0, 2);
        assert!(matches!(verify_chain(dropped.as_bytes(), Some(&key)), Err(AuditError::Broken { line: 2, .. })));
        let other = AuditKey::new(&[8; 32]);
        assert!(matches!(verify_chain(text.as_bytes(), Some(&other)), Err(AuditError::Broken { line: 1, .. })));
        let moved = rewrite(&text, |l| {
            let at = l.find(r#","mac":""#).unwrap();
            let mac = &l[at..l.len() - 1];
            format!("{{{},{}", &mac[1..], &l[1..at]) + "}"
        });
        assert!(matches!(verify_chain(moved.as_bytes(), Some(&key)), Err(AuditError::Broken { line: 1, .. })));
        let stripped = rewrite(&text, |l| format!("{}}}", &l[..l.find(r#","v":2"#).unwrap()]));
        assert_eq!(verify_lines(stripped.as_bytes()).unwrap().0, 3);
        assert!(matches!(verify_chain(stripped.as_bytes(), Some(&key)), Err(AuditError::Broken { line: 1, .. })));

        // A tampered keyed file is not appended to; a keyed file is refused
        // without the key, an unkeyed one with it.
        std::fs::write(&path, &forged).unwrap();
        assert!(matches!(AuditLog::file(&path, "r0", Some(key.clone())), Err(AuditError::Broken { line: 2, .. })));
        std::fs::write(&path, &text).unwrap();
        assert!(matches!(AuditLog::file(&path, "r0", None), Err(AuditError::KeyMismatch(_))));
        std::fs::write(&path, &stripped).unwrap();
        assert!(matches!(AuditLog::file(&path, "r0", Some(key)), Err(AuditError::KeyMismatch(_))));
    }

    #[test]
    fn a_head_kept_elsewhere_shows_a_truncated_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let key = AuditKey::new(&[9; 32]);
        let log = AuditLog::file(&path, "r0", Some(key.clone())).unwrap().with_sync(true);
        for _ in 0..3 {
            log.record(&event("allow")).unwrap();
        }
        let (mac_head, sha_head) = (log.head(true).unwrap(), log.head(false).unwrap());
        assert_eq!((mac_head.count, sha_head.count), (3, 3));
        log.record(&event("deny")).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        // The file has grown past the head: it still passes through it.
        let found = verify_chain_anchored(text.as_bytes(), Some(&key), Some(&mac_head)).unwrap();
        assert_eq!(found.count, 4);
        verify_chain_anchored(text.as_bytes(), None, Some(&sha_head)).unwrap();

        // The last two records removed: a valid chain, but short of the head.
        let lines: Vec<&str> = text.lines().collect();
        let cut = format!("{}\n{}\n", lines[0], lines[1]);
        assert_eq!(verify_chain(cut.as_bytes(), Some(&key)).unwrap().count, 2);
        assert!(matches!(
            verify_chain_anchored(cut.as_bytes(), Some(&key), Some(&mac_head)),
            Err(AuditError::Truncated { expected: 3, found: 2 })
        ));
        assert!(matches!(
            verify_chain_anchored(cut.as_bytes(), None, Some(&sha_head)),
            Err(AuditError::Truncated { expected: 3, found: 2 })
        ));
        // A head that is not this file's.
        let other = Anchor { count: 3, head: [1; 32] };
        assert!(matches!(
            verify_chain_anchored(text.as_bytes(), Some(&key), Some(&other)),
            Err(AuditError::Broken { line: 3, .. })
        ));
        // The head after re-opening continues from what the file holds.
        let log = AuditLog::file(&path, "r0", Some(key)).unwrap();
        assert_eq!(log.head(true).unwrap().count, 4);
        assert_eq!(log.head(false).unwrap().head, found.last);
    }
    #[test]
    fn a_record_past_the_size_cap_is_refused_without_reading_it_whole() {
        // One 64 MiB "line" with no newline: refused as broken at line 1,
        // having read at most the cap (plus a buffer) of it.
        struct Endless(u64);
        impl std::io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(usize::try_from(self.0).unwrap_or(usize::MAX));
                buf[..n].fill(b'x');
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let mut source = Endless(64 << 20);
        let err = verify_chain(std::io::BufReader::new(&mut source), None).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 1, .. }), "{err}");
        let read = (64u64 << 20) - source.0;
        assert!(read <= MAX_RECORD_BYTES as u64 + 64 * 1024, "read {read} bytes of one record");
    }
}
