//! The audit log: one JSON line per decision, hash-chained and, with a
//! key, MAC-chained; written by one thread with group commit, and rotated
//! into numbered files that stay one chain.
//!
//! Every record carries `prev`, the SHA-256 of the previous line's bytes
//! (64 zeros for the first record of a log), so truncation in the middle,
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
//! cannot carry valid MACs. A log is keyed throughout or not at all; the
//! truncation of its tail shows only against a head recorded elsewhere
//! (the count and the last MAC).
//!
//! Records are written by one thread ([`writer`]): a decision's record is
//! acknowledged once it is written and synced, with the records of every
//! decision made meanwhile (one `fdatasync` for all of them), and a caller
//! waits for that at most a bound, so a stalled sink refuses decisions
//! instead of stalling the async workers. Files rotate by size
//! ([`files`]) without breaking the chain.

use aws_lc_rs::hmac;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

pub mod files;
pub mod query;
mod writer;

pub use files::{ChainCheck, Rotation, log_files, rotated_path, verify_files};
pub use query::{Found, MAX_QUERY_SCAN_BYTES, Query};
use writer::{Chain, Completion, Head, MacChain, Request, Shared, Sink, Writer};

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

/// What a verified file (or set of files) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Number of records in the log up to the last one checked (those in
    /// files before the first one checked included).
    pub count: usize,
    /// SHA-256 of the last line (zeros for an empty file).
    pub last: [u8; 32],
    /// The last record's MAC, when the MACs were checked (zeros for an
    /// empty file).
    pub head_mac: Option<[u8; 32]>,
    /// Whether the records carry MACs (checked or not).
    pub keyed: bool,
    /// Records in files before the first one checked (0 when it is the
    /// log's first file).
    pub before: usize,
    /// Number of the first file checked (1: the log's first file).
    pub first_file: u64,
    /// Number of the last file checked.
    pub last_file: u64,
    /// Files checked.
    pub files: usize,
}

/// The head of the chain is logged (at info: record count, SHA-256 of the
/// last line and, keyed, its MAC) every this many records...
pub const ANCHOR_EVERY_RECORDS: usize = 1000;
/// ...or at the first batch this long after the last time it was, and
/// when the log is opened. Kept elsewhere (the operational log), the head
/// shows a truncated tail: `kbsctl audit verify --expect-count N
/// --expect-head HEX`.
pub const ANCHOR_EVERY: Duration = Duration::from_secs(300);

/// Records waiting for the writer, at most; past it a record fails at
/// once (a decision is refused, a refusal's record is counted as lost).
pub const QUEUE_RECORDS: usize = 4096;

/// How long a caller waits for its record by default
/// ([`AuditLog::with_wait`], `[audit] max_wait_ms`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// The audit writer's handle. Records go through a bounded queue to one
/// writer thread; [`Self::record`] and [`Self::record_async`] return once
/// the record is written (and, to a file, by default synced with
/// `fdatasync`) or fail after a bound.
pub struct AuditLog {
    replica: String,
    queue: Option<SyncSender<Request>>,
    /// The writer's end: signalled when it has drained the queue and
    /// stopped.
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    shared: Arc<Shared>,
    /// Writes that failed (the `kbs_audit_write_failures_total` metric).
    failures: Arc<AtomicU64>,
    wait: Duration,
    keyed: bool,
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
/// A head of the chain recorded elsewhere (the broker logs it: `audit
/// head`): the log must hold at least `count` records, and record `count`
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
    /// The record was not written within the wait: the sink is stalled.
    #[error("audit record not written within {0:?}")]
    Stalled(Duration),
    /// The queue to the writer is full: the sink is stalled or too slow.
    #[error("audit queue full ({QUEUE_RECORDS} records waiting)")]
    QueueFull,
    /// The file's records are (not) keyed, and the log is opened without
    /// (with) a key: a file is keyed throughout or not at all.
    #[error("audit file {0}")]
    KeyMismatch(&'static str),
    /// The log ends before an expected head: records were removed from
    /// its tail.
    #[error("audit file truncated: {expected} records expected, {found} found")]
    Truncated {
        /// Records the head counts.
        expected: usize,
        /// Records in the log.
        found: usize,
    },
    /// The chain is broken at this line (1-based, of the file it is in).
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
        Self::start(replica, Sink::Stdout, Chain { prev: [0; 32], mac, count: 0 }, 1)
    }

    /// An audit log whose every write fails.
    #[cfg(test)]
    pub(crate) fn failing() -> Self {
        let sink = Arc::new(writer::TestSink::default());
        sink.fail.store(true, Ordering::SeqCst);
        Self::to_test_sink(sink)
    }

    /// An audit log writing to a sink the test controls.
    #[cfg(test)]
    pub(crate) fn to_test_sink(sink: Arc<writer::TestSink>) -> Self {
        Self::start("test", Sink::Test(sink), Chain { prev: [0; 32], mac: None, count: 0 }, 1)
    }

    /// Audit to a file, appending and continuing the chain of what is there,
    /// never rotated: [`Self::open`] with no rotation.
    pub fn file(path: &Path, replica: &str, key: Option<AuditKey>) -> Result<Self, AuditError> {
        Self::open(path, replica, key, Rotation::default())
    }

    /// Audit to the file at `path`, rotated as `rotation` says, continuing
    /// the chain of what is there (the current file, after the last rotated
    /// one). A log whose chain is already broken is refused: the operator
    /// must look at it before the broker writes more. With a key, its MACs
    /// are checked too; a keyed log is refused without the key and an
    /// unkeyed one (with records) with it, so that no log mixes the two.
    pub fn open(path: &Path, replica: &str, key: Option<AuditKey>, rotation: Rotation) -> Result<Self, AuditError> {
        let opened = files::LogFile::open(path, key.as_ref(), rotation)?;
        let found = opened.found;
        let mac = key.map(|key| MacChain { key, head: found.head_mac.unwrap_or([0; 32]) });
        let mut chain = Chain { prev: found.last, mac, count: found.count };
        let mut file = opened.file;
        if opened.needs_link {
            // A rotation was cut short after the current file was renamed:
            // the new current file starts with the link, before anything.
            let mut starter = Writer::new(replica, Sink::Stdout, chain.clone(), file.seq);
            let line = starter.link_line(file.seq)?;
            file.start_with_link(&line)?;
            chain = starter.chain;
            tracing::warn!(file = file.seq, "audit file started again after a rotation cut short");
        }
        for torn in &opened.torn {
            // The cut is the first thing recorded, before any decision.
            let mut starter = Writer::new(replica, Sink::Stdout, chain.clone(), file.seq);
            let line = starter.repair_line(torn)?;
            file.write(&line)?;
            file.sync()?;
            chain = starter.chain;
        }
        files::settle_torn(path, &opened.torn)?;
        let seq = file.seq;
        Ok(Self::start(replica, Sink::File(file), chain, seq))
    }

    fn start(replica: &str, sink: Sink, chain: Chain, file_seq: u64) -> Self {
        let shared = Arc::new(Shared::default());
        shared.sync.store(true, Ordering::Relaxed);
        let failures = Arc::new(AtomicU64::new(0));
        let keyed = chain.mac.is_some();
        let mut writer = Writer::new(replica, sink, chain, file_seq);
        writer.shared = Arc::clone(&shared);
        writer.failures = Arc::clone(&failures);
        writer.publish();
        writer.log_head();
        let (queue, requests) = std::sync::mpsc::sync_channel(QUEUE_RECORDS);
        let (stop, stopped) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("kbs-audit".into()).spawn(move || {
            writer.run(&requests);
            let _ = stop.send(());
        });
        let (queue, stopped) = match spawned {
            Ok(_) => (Some(queue), Some(stopped)),
            Err(e) => {
                // No writer: every record fails, closed.
                tracing::error!(error = %e, "the audit writer thread could not start");
                (None, None)
            }
        };
        Self {
            replica: replica.into(),
            queue,
            stopped: Mutex::new(stopped),
            shared,
            failures,
            wait: DEFAULT_WAIT,
            keyed,
            refusals: Mutex::new(RefusalBudget { window: std::time::Instant::now(), written: 0, suppressed: 0 }),
        }
    }

    /// The head of the chain now (as last written): what the broker logs
    /// as `audit head`, as an anchor for the MACs (`keyed`) or for the hash
    /// chain.
    pub fn head(&self, keyed: bool) -> Option<Anchor> {
        let head: Head = *self.shared.head.lock().ok()?;
        let at = if keyed { head.mac? } else { head.prev };
        Some(Anchor { count: head.count, head: at })
    }

    /// The number of the current file (1 for a log never rotated).
    pub fn file_seq(&self) -> u64 {
        self.shared.head.lock().map(|h| h.file).unwrap_or(0)
    }

    /// Whether the records carry MACs.
    pub fn keyed(&self) -> bool {
        self.keyed
    }

    /// Whether each batch of decision records written to a file is written
    /// through to the disk (`fdatasync`) before its decisions are answered
    /// (default true): without it a crash of the machine can lose the last
    /// records of decisions already answered.
    #[must_use]
    pub fn with_sync(self, sync: bool) -> Self {
        self.shared.sync.store(sync, Ordering::Relaxed);
        self
    }

    /// How long a caller waits for its record before the decision is
    /// refused (default [`DEFAULT_WAIT`]).
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The count of failed writes, shared with the metrics.
    pub fn failure_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.failures)
    }

    /// Batches written through to the disk so far.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    fn submit(
        &self,
        event: &Event,
        durable: bool,
        write: bool,
        wait: bool,
    ) -> Result<Option<Arc<Completion>>, AuditError> {
        let done = wait.then(|| Arc::new(Completion::default()));
        let request = Request { event: event.clone(), time: writer::now(), durable, write, done: done.clone() };
        let queue = self.queue.as_ref().ok_or_else(|| AuditError::Io(std::io::Error::other("no audit writer")))?;
        // Counted before it is sent: the writer counts it out when it takes it.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(request) {
            Ok(()) => Ok(done),
            Err(TrySendError::Full(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                Err(AuditError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                Err(AuditError::Io(std::io::Error::other("the audit writer stopped")))
            }
        }
    }

    fn counted(&self, outcome: Result<(), AuditError>) -> Result<(), AuditError> {
        if outcome.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// Appends one record and returns once it is written (and synced),
    /// waiting at most the bound. Failing to audit is an error the caller
    /// must treat as a refusal: nothing is released without a record.
    ///
    /// Async code should use [`Self::record_async`]. Called on a worker of
    /// a multi-threaded tokio runtime, this hands the worker's other tasks
    /// to another thread while it waits (`block_in_place`); on a
    /// current-thread runtime it blocks that runtime for the wait.
    pub fn record(&self, event: &Event) -> Result<(), AuditError> {
        let outcome = match self.submit(event, true, true, true) {
            Ok(Some(done)) => match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(|| done.wait_blocking(self.wait))
                }
                _ => done.wait_blocking(self.wait),
            },
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        self.counted(outcome)
    }

    /// [`Self::record`] without holding a thread while it waits.
    pub async fn record_async(&self, event: &Event) -> Result<(), AuditError> {
        let outcome = match self.submit(event, true, true, true) {
            Ok(Some(done)) => done.wait(self.wait).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        self.counted(outcome)
    }

    /// Returns once every record queued before it is written (refusals
    /// included), waiting at most the bound.
    pub fn flush(&self) -> Result<(), AuditError> {
        match self.submit(&Event::new("audit.flush", String::new()), false, false, true)? {
            Some(done) => done.wait_blocking(self.wait),
            None => Ok(()),
        }
    }

    /// Appends the record of a refusal made before any effect (a caller
    /// that did not authenticate, a request refused before the release
    /// flow). The refusal stands whether or not its record is written, so
    /// the record is queued and not waited for nor synced on its own (the
    /// next synced batch carries it to the disk), and a failure is only
    /// counted and logged. At most [`REFUSAL_RECORDS_PER_SECOND`] are
    /// written one by one; the rest are counted into one `audit.suppressed`
    /// record.
    pub fn record_refusal(&self, event: &Event) {
        let suppressed = {
            let Ok(mut budget) = self.refusals.lock() else {
                return;
            };
            if budget.window.elapsed() >= Duration::from_secs(1) {
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
        if let Err(e) = self.submit(event, false, true, false) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(action = event.action, error = %e, "audit record of a refusal not queued");
        }
    }
}

impl Drop for AuditLog {
    /// Lets the writer drain the queue (records of refusals may be in it)
    /// and stop, waiting for it at most the bound.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(stopped) = self.stopped.get_mut().ok().and_then(Option::take) {
            let _ = stopped.recv_timeout(self.wait);
        }
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
    reader: impl BufRead,
    key: Option<&AuditKey>,
    anchor: Option<&Anchor>,
) -> Result<Verified, AuditError> {
    let mut check = ChainCheck::new(key, anchor);
    check.file(reader, None)?;
    check.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

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
        log.flush().unwrap();
        assert_eq!(verify_file(&path).unwrap().0, budget);
        // The next window: the count of the suppressed ones, then the refusal.
        log.refusals.lock().unwrap().window -= std::time::Duration::from_secs(2);
        log.record_refusal(&refusal());
        log.flush().unwrap();
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

    fn release(id: usize) -> Event {
        Event { attestation_id: Some(format!("id-{id}")), ..event("allow") }
    }

    /// Waits (bounded) until `what` holds.
    fn until(what: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !what() {
            assert!(std::time::Instant::now() < deadline, "condition not reached in time");
            std::thread::yield_now();
        }
    }

    /// Records that wait while a batch is written go out together, with
    /// one sync; each caller returns only once its record is written.
    #[test]
    fn one_sync_covers_the_records_that_waited() {
        let sink = Arc::new(writer::TestSink::default());
        let log = Arc::new(AuditLog::to_test_sink(Arc::clone(&sink)));
        sink.block(true);
        std::thread::scope(|s| {
            let first = s.spawn(|| log.record(&release(0)));
            until(|| sink.writes.load(Ordering::SeqCst) == 1);
            let waiting: Vec<_> = (1..=10)
                .map(|i| {
                    (
                        i,
                        s.spawn({
                            let log = &log;
                            move || log.record(&release(i))
                        }),
                    )
                })
                .collect();
            until(|| log.shared.queued.load(Ordering::SeqCst) == 10);
            assert!(!first.is_finished(), "acknowledged before its write");
            assert!(sink.bytes.lock().unwrap().is_empty());
            sink.block(false);
            first.join().unwrap().unwrap();
            for (i, waiter) in waiting {
                waiter.join().unwrap().unwrap();
                let written = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
                assert!(written.contains(&format!("\"id-{i}\"")), "acknowledged and not written");
            }
        });
        assert_eq!(log.syncs(), 2, "one sync for the first record, one for the ten that waited");
        assert_eq!(sink.writes.load(Ordering::SeqCst), 2);
        let written = sink.bytes.lock().unwrap().clone();
        assert_eq!(verify_chain(written.as_slice(), None).unwrap().count, 11);
    }

    /// Many callers at once: every acknowledged record is in the file
    /// when its call returns, none is lost or doubled, the chain holds.
    #[test]
    fn concurrent_records_are_all_in_the_file_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let key = AuditKey::new(&[3; 32]);
        let log = AuditLog::file(&path, "r0", Some(key.clone())).unwrap();
        let (threads, each) = (8, 40);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (log, path) = (&log, &path);
                s.spawn(move || {
                    for i in 0..each {
                        let id = t * 1000 + i;
                        log.record(&release(id)).unwrap();
                        let text = std::fs::read_to_string(path).unwrap();
                        assert!(text.contains(&format!("\"id-{id}\"")), "record {id} acknowledged, not in the file");
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(verify_chain(text.as_bytes(), Some(&key)).unwrap().count, threads * each);
        for t in 0..threads {
            for i in 0..each {
                assert_eq!(text.matches(&format!("\"id-{}\"", t * 1000 + i)).count(), 1);
            }
        }
        assert!(log.syncs() <= (threads * each) as u64);
    }

    /// A write that fails leaves nothing behind: the caller is refused,
    /// and the next record continues the chain from the last good one.
    #[test]
    fn a_failed_write_is_refused_and_cut_back() {
        let sink = Arc::new(writer::TestSink::default());
        let log = AuditLog::to_test_sink(Arc::clone(&sink));
        log.record(&release(1)).unwrap();
        sink.fail.store(true, Ordering::SeqCst);
        assert!(log.record(&release(2)).is_err());
        assert_eq!(log.failure_counter().load(Ordering::SeqCst), 1);
        sink.fail.store(false, Ordering::SeqCst);
        log.record(&release(3)).unwrap();
        let written = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        assert!(!written.contains("\"id-2\""));
        assert_eq!(verify_chain(written.as_bytes(), None).unwrap().count, 2);
    }

    /// A sink that blocks: decisions waiting on it are refused after the
    /// bound, whether they wait in async code or through the blocking
    /// call, while other async work on the same (one-worker) runtime goes
    /// on; once the sink moves again, each allow that was refused gets its
    /// `outcome: failed` record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stalled_sink_refuses_after_the_bound_without_stalling_the_workers() {
        let sink = Arc::new(writer::TestSink::default());
        let wait = Duration::from_millis(500);
        let log = Arc::new(AuditLog::to_test_sink(Arc::clone(&sink)).with_wait(wait));
        sink.block(true);
        let started = std::time::Instant::now();
        let awaiting = tokio::spawn({
            let log = Arc::clone(&log);
            async move { log.record_async(&release(1)).await }
        });
        let blocking = tokio::spawn({
            let log = Arc::clone(&log);
            async move { log.record(&release(2)) }
        });
        // Other work on the runtime: a loopback echo, served by a task.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf).await.unwrap();
        });
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            conn.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        }
        server.await.unwrap();
        assert!(!awaiting.is_finished() && !blocking.is_finished(), "the echo had to wait for the audit bound");
        assert!(matches!(awaiting.await.unwrap(), Err(AuditError::Stalled(_))));
        assert!(matches!(blocking.await.unwrap(), Err(AuditError::Stalled(_))));
        assert!(started.elapsed() >= wait);
        assert_eq!(log.failure_counter().load(Ordering::SeqCst), 2);
        sink.block(false);
        let flushed = Arc::clone(&log);
        // Twice: the second record of an allow whose own record went out
        // in the same batch as the first barrier is written with the next.
        tokio::task::spawn_blocking(move || flushed.flush().and_then(|()| flushed.flush())).await.unwrap().unwrap();
        let written = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let values: Vec<serde_json::Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let failed: Vec<&serde_json::Value> = values.iter().filter(|v| v["outcome"] == "failed").collect();
        assert_eq!(failed.len(), 2, "{written}");
        assert!(failed.iter().all(|v| v["reason"] == "internal" && v["decision"] == "allow"));
        assert_eq!(verify_chain(written.as_bytes(), None).unwrap().count, 4);
    }

    /// Past the queue's bound a record is refused at once, not queued.
    #[test]
    fn a_full_queue_refuses_at_once() {
        let sink = Arc::new(writer::TestSink::default());
        let log = AuditLog::to_test_sink(Arc::clone(&sink)).with_wait(Duration::from_millis(50));
        sink.block(true);
        let mut queued = 0;
        let refused = loop {
            match log.submit(&release(queued), true, true, false) {
                Ok(_) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued <= QUEUE_RECORDS + writer::MAX_BATCH, "the queue is not bounded");
        };
        assert!(matches!(refused, AuditError::QueueFull), "{refused}");
        assert!(queued >= QUEUE_RECORDS);
        assert!(matches!(log.record(&release(0)), Err(AuditError::QueueFull)));
        sink.block(false);
        // Once the writer has made room, a barrier gets through.
        until(|| log.flush().is_ok());
        let written = sink.bytes.lock().unwrap().clone();
        assert_eq!(verify_chain(written.as_slice(), None).unwrap().count, queued);
    }

    fn rotating(dir: &Path, key: &AuditKey, keep_files: usize) -> AuditLog {
        let rotation = Rotation { max_file_bytes: Some(1500), keep_files, ..Rotation::default() };
        AuditLog::open(&dir.join("audit.jsonl"), "r0", Some(key.clone()), rotation).unwrap()
    }

    fn set(dir: &Path, key: Option<&AuditKey>, anchor: Option<&Anchor>) -> Result<Verified, AuditError> {
        verify_files(&[dir.to_owned()], key, anchor).map_err(|(_, e)| e)
    }

    /// Rotated files and the current one are one chain: it verifies as a
    /// set and through the head, and a missing, reordered, truncated or
    /// replaced file, or a truncated tail, is detected.
    #[test]
    fn rotated_files_verify_as_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::new(&[4; 32]);
        let log = rotating(dir.path(), &key, 0);
        for i in 0..20 {
            log.record(&release(i)).unwrap();
        }
        log.flush().unwrap();
        let head = log.head(true).unwrap();
        let seq = log.file_seq();
        drop(log);
        assert!(seq >= 4, "rotated {seq} times");
        let path = dir.path().join("audit.jsonl");
        let found = set(dir.path(), Some(&key), Some(&head)).unwrap();
        assert_eq!((found.count, found.last_file, found.before), (head.count, seq, 0));
        assert_eq!(
            found.count,
            20 + usize::try_from(seq).unwrap() - 1,
            "20 records and a link per file after the first"
        );
        // Re-opening continues the same chain in the same file.
        let log = rotating(dir.path(), &key, 0);
        assert_eq!(log.file_seq(), seq);
        log.record(&release(99)).unwrap();
        log.flush().unwrap();
        let head = log.head(true).unwrap();
        drop(log);
        set(dir.path(), Some(&key), Some(&head)).unwrap();

        let copy = |name: &str| {
            let other = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), other.path().join(entry.file_name())).unwrap();
            }
            let _ = name;
            other
        };
        let second = |d: &Path| rotated_path(&d.join("audit.jsonl"), 2);
        let third = |d: &Path| rotated_path(&d.join("audit.jsonl"), 3);
        // A missing file.
        let missing = copy("missing");
        std::fs::remove_file(second(missing.path())).unwrap();
        assert!(matches!(set(missing.path(), Some(&key), None), Err(AuditError::Broken { line: 1, .. })));
        assert!(matches!(set(missing.path(), None, None), Err(AuditError::Broken { line: 1, .. })));
        // Two files swapped.
        let swapped = copy("swapped");
        let (a, b) = (second(swapped.path()), third(swapped.path()));
        std::fs::rename(&a, swapped.path().join("tmp")).unwrap();
        std::fs::rename(&b, &a).unwrap();
        std::fs::rename(swapped.path().join("tmp"), &b).unwrap();
        assert!(matches!(set(swapped.path(), None, None), Err(AuditError::Broken { .. })));
        // A rotated file's last record removed.
        let cut = copy("cut");
        let text = std::fs::read_to_string(second(cut.path())).unwrap();
        let kept: Vec<&str> = text.lines().collect();
        std::fs::write(second(cut.path()), kept[..kept.len() - 1].join("\n") + "\n").unwrap();
        assert!(matches!(set(cut.path(), None, None), Err(AuditError::Broken { line: 1, .. })));
        // A rotated file replaced by one with its hash chain recomputed:
        // only the MACs show it.
        let replaced = copy("replaced");
        let text = std::fs::read_to_string(second(replaced.path())).unwrap();
        let forged = text.replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1);
        let forged = rewrite(&forged, str::to_owned);
        std::fs::write(second(replaced.path()), &forged).unwrap();
        assert!(matches!(set(replaced.path(), Some(&key), None), Err(AuditError::Broken { .. })));
        // The current file's tail removed: only the head shows it.
        let tail = copy("tail");
        let text = std::fs::read_to_string(tail.path().join("audit.jsonl")).unwrap();
        let kept: Vec<&str> = text.lines().collect();
        let shorter = kept[..kept.len() - 1].iter().map(|l| format!("{l}\n")).collect::<String>();
        std::fs::write(tail.path().join("audit.jsonl"), shorter).unwrap();
        set(tail.path(), Some(&key), None).unwrap();
        assert!(matches!(set(tail.path(), Some(&key), Some(&head)), Err(AuditError::Truncated { .. })));
        // A set that starts at a rotated file (older ones shipped away) is
        // checked from its link on, and says so.
        let later = copy("later");
        std::fs::remove_file(rotated_path(&later.path().join("audit.jsonl"), 1)).unwrap();
        std::fs::remove_file(second(later.path())).unwrap();
        let found = set(later.path(), Some(&key), Some(&head)).unwrap();
        assert_eq!((found.first_file, found.count), (3, head.count));
        assert!(found.before > 0);
        // Files named out of order are refused.
        let renamed = copy("renamed");
        std::fs::rename(second(renamed.path()), rotated_path(&renamed.path().join("audit.jsonl"), 7)).unwrap();
        assert!(matches!(set(renamed.path(), None, None), Err(AuditError::Broken { .. })));
        drop(path);
    }

    /// A file whose first record is older than `max_file_age` is rotated,
    /// by the writer's timer when no record comes; a file holding only its
    /// link is not rotated again; the files verify as one chain.
    #[test]
    fn files_rotate_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::new(&[4; 32]);
        let age = Duration::from_millis(300);
        let rotation = Rotation { max_file_age: Some(age), ..Rotation::default() };
        let log = AuditLog::open(&dir.path().join("audit.jsonl"), "r0", Some(key.clone()), rotation).unwrap();
        log.record(&release(0)).unwrap();
        // Idle: the timer rotates.
        until(|| log.file_seq() == 2);
        // The new file holds its link only: it is not rotated again.
        std::thread::sleep(age * 3);
        assert_eq!(log.file_seq(), 2, "a file with nothing but its link was rotated");
        log.record(&release(1)).unwrap();
        until(|| log.file_seq() == 3);
        let head = log.head(true).unwrap();
        drop(log);
        let found = set(dir.path(), Some(&key), Some(&head)).unwrap();
        assert_eq!((found.count, found.files, found.last_file), (4, 3, 3), "2 records, 2 links");
        // Re-opened on a file holding only its link, which is older than
        // the age: the first record goes in, then the file is rotated.
        let log = AuditLog::open(&dir.path().join("audit.jsonl"), "r0", Some(key.clone()), rotation).unwrap();
        std::thread::sleep(age * 2);
        log.record(&release(2)).unwrap();
        until(|| log.file_seq() == 4);
        let head = log.head(true).unwrap();
        drop(log);
        set(dir.path(), Some(&key), Some(&head)).unwrap();
    }

    /// After a crash mid-write the current file ends with part of a record.
    /// Opening the log moves those bytes to a side file, cuts them, and
    /// records the cut (its size, SHA-256 and where the bytes are) as the
    /// next record of the chain, which then verifies across files. A last
    /// record that is whole but lacks its newline is kept, and one that is
    /// whole but breaks the chain is refused, the file left as it is.
    #[test]
    fn a_torn_last_line_is_kept_aside_cut_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::new(&[4; 32]);
        let path = dir.path().join("audit.jsonl");
        let log = rotating(dir.path(), &key, 0);
        for i in 0..8 {
            log.record(&release(i)).unwrap();
        }
        let before = log.head(true).unwrap();
        assert!(log.file_seq() >= 2);
        drop(log);
        let text = std::fs::read(&path).unwrap();
        let last = text[..text.len() - 1].rsplit(|b| *b == b'\n').next().unwrap().to_vec();
        let torn = last[..last.len() / 2].to_vec();
        std::fs::write(&path, [text.as_slice(), torn.as_slice()].concat()).unwrap();

        // Not rotated any more: the records after the cut stay in this file.
        let reopen = || AuditLog::open(&path, "r0", Some(key.clone()), Rotation::default()).unwrap();
        let log = reopen();
        log.record(&release(100)).unwrap();
        let head = log.head(true).unwrap();
        drop(log);
        let found = set(dir.path(), Some(&key), Some(&head)).unwrap();
        assert_eq!(found.count, before.count + 2, "the repair record and the new one");
        set(dir.path(), Some(&key), Some(&before)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let repair = &records[records.len() - 2];
        assert_eq!(repair["action"], "audit.repair");
        assert_eq!(repair["torn"]["bytes"], torn.len());
        assert_eq!(repair["torn"]["sha256"], hex::encode(Sha256::digest(&torn)));
        let kept = dir.path().join(repair["torn"]["kept"].as_str().unwrap());
        assert_eq!(std::fs::read(&kept).unwrap(), torn, "the cut bytes are kept as evidence");
        assert!(kept.file_name().unwrap().to_str().unwrap().starts_with("audit.jsonl.torn-"));
        assert_eq!(records.last().unwrap()["attestation_id"], "id-100");

        // A whole last record without its newline is not cut.
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 1]).unwrap();
        let log = reopen();
        log.record(&release(101)).unwrap();
        let head = log.head(true).unwrap();
        drop(log);
        assert_eq!(set(dir.path(), Some(&key), Some(&head)).unwrap().count, found.count + 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap().matches("audit.repair").count(), 1);

        // A whole record that breaks the chain, without its newline, is
        // never cut as torn: the log is refused and left as it is.
        let text = std::fs::read(&path).unwrap();
        let edited = String::from_utf8(text[..text.len() - 1].to_vec()).unwrap();
        let at = edited.rfind("id-101").unwrap();
        let edited = format!("{}id-666{}", &edited[..at], &edited[at + 6..]);
        std::fs::write(&path, &edited).unwrap();
        assert!(AuditLog::open(&path, "r0", Some(key.clone()), Rotation::default()).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    }

    /// A crash between cutting a torn line and writing its `audit.repair`
    /// record left a side file that no record names: the next opening
    /// records it. A side file whose bytes are still the file's torn tail
    /// was never cut: it is removed and the tail cut again. One whose
    /// record is written only gets its final name.
    #[test]
    fn a_cut_whose_record_a_crash_lost_is_recorded_at_the_next_opening() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::new(&[4; 32]);
        let path = dir.path().join("audit.jsonl");
        let reopen = || AuditLog::open(&path, "r0", Some(key.clone()), Rotation::default()).unwrap();
        let log = reopen();
        for i in 0..3 {
            log.record(&release(i)).unwrap();
        }
        drop(log);
        let repairs = |path: &Path| -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(path).unwrap();
            let records = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
            records.filter(|r| r["action"] == "audit.repair").collect()
        };
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.contains(".torn-"))
                .collect();
            names.sort();
            names
        };

        // Cut, and the crash came before the record.
        let lost = b"{\"time\":\"2026-12-07T".to_vec();
        std::fs::write(dir.path().join("audit.jsonl.torn-100.pending"), &lost).unwrap();
        let log = reopen();
        log.record(&release(3)).unwrap();
        let head = log.head(true).unwrap();
        drop(log);
        let found = repairs(&path);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0]["torn"]["kept"], "audit.jsonl.torn-100");
        assert_eq!(found[0]["torn"]["bytes"], lost.len());
        assert_eq!(found[0]["torn"]["sha256"], hex::encode(Sha256::digest(&lost)));
        assert_eq!(names(), ["audit.jsonl.torn-100"]);
        assert_eq!(set(dir.path(), Some(&key), Some(&head)).unwrap().count, 5);

        // Recorded, and the crash came before the rename: nothing recorded twice.
        std::fs::rename(dir.path().join("audit.jsonl.torn-100"), dir.path().join("audit.jsonl.torn-100.pending"))
            .unwrap();
        drop(reopen());
        assert_eq!(repairs(&path).len(), 1);
        assert_eq!(names(), ["audit.jsonl.torn-100"]);

        // The crash came before the cut: the tail is cut again, once.
        let torn = b"{\"time\":\"2026-12-07T10:".to_vec();
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, [text.as_slice(), torn.as_slice()].concat()).unwrap();
        std::fs::write(dir.path().join("audit.jsonl.torn-200.pending"), &torn).unwrap();
        let log = reopen();
        let head = log.head(true).unwrap();
        drop(log);
        let found = repairs(&path);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1]["torn"]["sha256"], hex::encode(Sha256::digest(&torn)));
        let kept = found[1]["torn"]["kept"].as_str().unwrap().to_owned();
        assert_eq!(std::fs::read(dir.path().join(&kept)).unwrap(), torn);
        assert_eq!(names(), ["audit.jsonl.torn-100".to_owned(), kept]);
        assert_eq!(set(dir.path(), Some(&key), Some(&head)).unwrap().count, 6);

        // A pending file longer than any torn line is not read: the log is
        // refused until it is moved aside.
        std::fs::write(dir.path().join("audit.jsonl.torn-300.pending"), vec![b'x'; MAX_RECORD_BYTES + 2]).unwrap();
        let err = AuditLog::open(&path, "r0", Some(key.clone()), Rotation::default()).unwrap_err();
        assert!(err.to_string().contains("longer than a torn line"), "{err}");
        assert_eq!(repairs(&path).len(), 2);
    }

    /// `keep_files` deletes the oldest rotated files; what is left still
    /// verifies from its first file's link.
    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::new(&[4; 32]);
        let log = rotating(dir.path(), &key, 2);
        for i in 0..30 {
            log.record(&release(i)).unwrap();
        }
        let head = log.head(true).unwrap();
        drop(log);
        let rotated = files::rotated_files(&dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(rotated.len(), 2);
        let found = set(dir.path(), Some(&key), Some(&head)).unwrap();
        assert_eq!(found.first_file, rotated[0].0);
    }

    /// A crash at any step of a rotation leaves a set that verifies, and
    /// the log opens again and continues it.
    #[test]
    fn a_rotation_cut_short_leaves_a_verifiable_set() {
        let key = AuditKey::new(&[4; 32]);
        for step in ["new file written", "current file renamed"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let log = rotating(dir.path(), &key, 0);
            while log.file_seq() < 2 {
                log.record(&release(0)).unwrap();
                // Past the batch's rotation, if it rotated.
                log.flush().unwrap();
            }
            let seq = log.file_seq();
            drop(log);
            // Undo the rotation's last steps, as a crash would have left it.
            let link = std::fs::read_to_string(&path).unwrap();
            assert_eq!(link.lines().count(), 1, "the new file holds its link only");
            let next = dir.path().join("audit.jsonl.next");
            std::fs::rename(&path, &next).unwrap();
            if step == "new file written" {
                std::fs::rename(rotated_path(&path, seq - 1), &path).unwrap();
            }
            let found = set(dir.path(), Some(&key), None).unwrap_or_else(|e| panic!("{step}: {e}"));
            let log = rotating(dir.path(), &key, 0);
            assert!(!next.exists(), "{step}");
            log.record(&release(1)).unwrap();
            let head = log.head(true).unwrap();
            drop(log);
            let after = set(dir.path(), Some(&key), Some(&head)).unwrap_or_else(|e| panic!("{step}: {e}"));
            assert!(after.count > found.count, "{step}");
        }
    }

    #[test]
    fn files_of_a_log_are_ordered_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for name in ["audit.jsonl", "audit.jsonl.000002", "audit.jsonl.000010", "audit.jsonl.000001", "audit.key"] {
            std::fs::write(p(name), "").unwrap();
        }
        let files = log_files(&[dir.path().to_owned()]).unwrap();
        let names: Vec<String> = files.iter().map(|(f, _)| f.file_name().unwrap().to_string_lossy().into()).collect();
        assert_eq!(names, ["audit.jsonl.000001", "audit.jsonl.000002", "audit.jsonl.000010", "audit.jsonl"]);
        assert!(log_files(&[p("audit.jsonl"), p("audit.key")]).is_err(), "two current files");
    }
}
