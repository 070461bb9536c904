//! The audit writer: one thread that owns the sink and the chain, takes
//! records from a bounded queue, and writes every record waiting at that
//! moment with one write and one `fdatasync` (group commit).
//!
//! A caller's record is acknowledged only once the batch that holds it is
//! written (and, for records of decisions, synced); the caller waits for
//! that at most a bound ([`super::AuditLog::with_wait`]), so a sink that
//! stalls (a disk that blocks, a stdout pipe nobody reads) makes decisions
//! fail closed after the bound instead of holding the async workers. A
//! record whose caller stopped waiting is still written; if it recorded an
//! `allow`, a second record (`outcome: failed`, reason `internal`) follows
//! it, since the caller was refused.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::files::{FileLink, LogFile, REPAIR_ACTION, ROTATE_ACTION, RotateError, TornCut};
use super::{ANCHOR_EVERY, ANCHOR_EVERY_RECORDS, AuditError, AuditKey, Event, KEYED_VERSION};

/// Most records written in one batch.
pub(super) const MAX_BATCH: usize = 1024;

/// Reason of the second record of an `allow` whose caller was refused
/// because its record was not written in time (`ReasonCode::Internal`).
const LATE_REASON: &str = "internal";

#[derive(Serialize)]
struct Record<'a> {
    time: &'a str,
    replica: &'a str,
    #[serde(flatten)]
    event: &'a Event,
    /// The link to the previous file (first record of a rotated-in file).
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a FileLink>,
    /// The torn line cut from the file (an `audit.repair` record).
    #[serde(skip_serializing_if = "Option::is_none")]
    torn: Option<&'a TornCut>,
    prev: String,
    /// Format: 2 for MAC-chained records (absent on unkeyed ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<u8>,
}

/// The MAC chain's state: the key and the last record's MAC.
#[derive(Clone)]
pub(super) struct MacChain {
    pub key: AuditKey,
    pub head: [u8; 32],
}

/// The chain's state: what the next record links to.
#[derive(Clone)]
pub(super) struct Chain {
    pub prev: [u8; 32],
    pub mac: Option<MacChain>,
    /// Records in the log (all files).
    pub count: usize,
}

impl Chain {
    /// The line (with its newline) of `event`, linked to the chain, which
    /// moves on past it.
    fn link(
        &mut self,
        time: &str,
        replica: &str,
        event: &Event,
        file: Option<&FileLink>,
        torn: Option<&TornCut>,
    ) -> Result<Vec<u8>, AuditError> {
        let v = self.mac.as_ref().map(|_| KEYED_VERSION);
        let record = Record { time, replica, event, file, torn, prev: hex::encode(self.prev), v };
        let mut line = serde_json::to_vec(&record).map_err(|e| AuditError::Io(std::io::Error::other(e)))?;
        if let Some(chain) = &mut self.mac {
            let mac = chain.key.mac(&chain.head, &line);
            // The content ends with `}`: the MAC goes in as the last field.
            line.pop();
            line.extend_from_slice(format!(",\"mac\":\"{}\"}}", hex::encode(mac)).as_bytes());
            chain.head = mac;
        }
        self.prev = Sha256::digest(&line).into();
        self.count = self.count.saturating_add(1);
        line.push(b'\n');
        Ok(line)
    }
}

/// The head of the chain as last written, for [`super::AuditLog::head`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Head {
    pub prev: [u8; 32],
    pub mac: Option<[u8; 32]>,
    pub count: usize,
    pub file: u64,
}

/// What the writer and the log's callers share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub head: Mutex<Head>,
    /// Writes through to the disk done (one per batch of decisions).
    pub syncs: AtomicU64,
    /// Whether decision records are synced.
    pub sync: AtomicBool,
    /// Records in the queue (submitted, not yet taken by the writer).
    pub queued: std::sync::atomic::AtomicUsize,
}

/// Where a caller waits for its record.
#[derive(Debug, Default)]
pub(super) struct Completion {
    slot: Mutex<Slot>,
    ready: Condvar,
    notify: tokio::sync::Notify,
}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Pending,
    Done(Result<(), String>),
    /// The caller stopped waiting.
    Abandoned,
}

impl Completion {
    /// Gives the outcome; `false` if the caller had stopped waiting.
    fn complete(&self, outcome: Result<(), String>) -> bool {
        let Ok(mut slot) = self.slot.lock() else {
            return false;
        };
        if matches!(*slot, Slot::Abandoned) {
            return false;
        }
        *slot = Slot::Done(outcome);
        drop(slot);
        self.ready.notify_all();
        self.notify.notify_one();
        true
    }

    fn take(&self) -> Option<Result<(), AuditError>> {
        let mut slot = self.slot.lock().ok()?;
        match std::mem::take(&mut *slot) {
            Slot::Done(outcome) => Some(outcome.map_err(|e| AuditError::Io(std::io::Error::other(e)))),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Stops waiting: the outcome if it came meanwhile, else a timeout.
    pub(super) fn abandon(&self, waited: Duration) -> Result<(), AuditError> {
        let Ok(mut slot) = self.slot.lock() else {
            return Err(AuditError::Io(std::io::Error::other("audit completion lock poisoned")));
        };
        match std::mem::replace(&mut *slot, Slot::Abandoned) {
            Slot::Done(outcome) => outcome.map_err(|e| AuditError::Io(std::io::Error::other(e))),
            Slot::Pending | Slot::Abandoned => Err(AuditError::Stalled(waited)),
        }
    }

    /// Waits on this thread, at most `bound`.
    pub(super) fn wait_blocking(&self, bound: Duration) -> Result<(), AuditError> {
        let deadline = Instant::now() + bound;
        if let Ok(mut slot) = self.slot.lock() {
            while matches!(*slot, Slot::Pending) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                slot = match self.ready.wait_timeout(slot, left) {
                    Ok((slot, _)) => slot,
                    Err(_) => break,
                };
            }
        }
        self.take().unwrap_or_else(|| self.abandon(bound))
    }

    /// Waits without holding a thread, at most `bound`.
    pub(super) async fn wait(&self, bound: Duration) -> Result<(), AuditError> {
        let done = async {
            loop {
                if let Some(outcome) = self.take() {
                    return outcome;
                }
                // A notification given between the check and here is kept
                // as a permit (one waiter).
                self.notify.notified().await;
            }
        };
        match tokio::time::timeout(bound, done).await {
            Ok(outcome) => outcome,
            Err(_) => self.abandon(bound),
        }
    }
}

/// One record to write.
pub(super) struct Request {
    pub event: Event,
    /// When it was decided (RFC 3339).
    pub time: String,
    /// Synced before it is acknowledged (decisions; not refusals before
    /// any effect, nor barriers).
    pub durable: bool,
    /// Written at all (`false`: a barrier, acknowledged once everything
    /// queued before it is written).
    pub write: bool,
    pub done: Option<Arc<Completion>>,
}

/// The sink the writer appends to.
pub(super) enum Sink {
    Stdout,
    File(LogFile),
    /// A sink under a test's control.
    #[cfg(test)]
    Test(Arc<TestSink>),
}

/// A sink whose writes can be made to fail or to block.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestSink {
    pub fail: AtomicBool,
    pub blocked: Mutex<bool>,
    pub unblocked: Condvar,
    /// Writes that have started (blocked or not).
    pub writes: AtomicU64,
    pub bytes: Mutex<Vec<u8>>,
}

#[cfg(test)]
impl TestSink {
    pub fn block(&self, blocked: bool) {
        if let Ok(mut b) = self.blocked.lock() {
            *b = blocked;
        }
        self.unblocked.notify_all();
    }
}

impl Sink {
    fn len(&self) -> u64 {
        match self {
            Self::File(f) => f.len,
            Self::Stdout => 0,
            #[cfg(test)]
            Self::Test(t) => t.bytes.lock().map(|b| b.len() as u64).unwrap_or(0),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Self::File(f) => f.write(bytes),
            #[cfg(test)]
            Self::Test(t) => {
                t.writes.fetch_add(1, Ordering::SeqCst);
                let mut blocked = t.blocked.lock().map_err(|_| std::io::Error::other("poisoned"))?;
                while *blocked {
                    blocked = t.unblocked.wait(blocked).map_err(|_| std::io::Error::other("poisoned"))?;
                }
                drop(blocked);
                if t.fail.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other("test sink refuses writes"));
                }
                t.bytes.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        match self {
            Self::File(f) => f.sync(),
            Self::Stdout => Ok(()),
            #[cfg(test)]
            Self::Test(_) => Ok(()),
        }
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        match self {
            Self::File(f) => f.truncate(len),
            Self::Stdout => Err(std::io::Error::other("stdout cannot be cut back")),
            #[cfg(test)]
            Self::Test(t) => {
                t.bytes
                    .lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?
                    .truncate(usize::try_from(len).unwrap_or(0));
                Ok(())
            }
        }
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    pub replica: String,
    pub chain: Chain,
    pub sink: Sink,
    pub file_seq: u64,
    pub failures: Arc<AtomicU64>,
    pub shared: Arc<Shared>,
    /// When the head was last logged.
    pub anchored: Instant,
    /// Why nothing more can be written (a failed sync, a rotation cut
    /// short): every later record fails, until the log is opened again.
    pub poisoned: Option<String>,
    /// Second records of late `allow`s, written with the next batch.
    pub late: Vec<Request>,
}

/// The time of a record.
pub(super) fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Writer {
    /// A writer of `chain` to `sink`, whose current file is number `file_seq`.
    pub(super) fn new(replica: &str, sink: Sink, chain: Chain, file_seq: u64) -> Self {
        Self {
            replica: replica.into(),
            chain,
            sink,
            file_seq,
            failures: Arc::default(),
            shared: Arc::default(),
            anchored: Instant::now(),
            poisoned: None,
            late: Vec::new(),
        }
    }

    /// Runs until every sender is gone and the queue is drained.
    pub(super) fn run(mut self, queue: &Receiver<Request>) {
        let mut batch = Vec::new();
        loop {
            batch.append(&mut self.late);
            if batch.is_empty() {
                // While no record comes, wake up to rotate a file that
                // grows too old (`max_file_age`).
                let wait = match (&self.sink, &self.poisoned) {
                    (Sink::File(file), None) => file.next_age_check(),
                    _ => None,
                };
                let received = match wait {
                    Some(wait) => queue.recv_timeout(wait),
                    None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match received {
                    Ok(request) => batch.push(request),
                    Err(RecvTimeoutError::Timeout) => {
                        self.rotate_if_due();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            self.write_batch(&mut batch);
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Request>) {
        // A file due by age is rotated before the batch goes in.
        self.rotate_if_due();
        let written = match &self.poisoned {
            Some(why) => Err(format!("audit log unusable until reopened: {why}")),
            None => self.append(batch),
        };
        match &written {
            Ok(()) => self.publish(),
            Err(_) => {
                let lost = batch.iter().filter(|r| r.write && r.done.is_none()).count() as u64;
                self.failures.fetch_add(lost, Ordering::Relaxed);
            }
        }
        for request in batch.drain(..) {
            let Some(done) = request.done else {
                if let Err(why) = &written
                    && request.write
                {
                    tracing::error!(action = request.event.action, error = %why, "audit record of a refusal not written");
                }
                continue;
            };
            let waited = done.complete(written.clone());
            if !waited && written.is_ok() && request.write && request.event.decision == "allow" {
                let mut late = request.event;
                late.outcome = Some("failed");
                late.reason = Some(LATE_REASON);
                late.reasons =
                    vec!["the record was not written within the audit wait: the decision was refused".into()];
                tracing::error!(action = late.action, "an allowed decision's record came after its caller was refused");
                self.shared.queued.fetch_add(1, Ordering::Relaxed);
                self.late.push(Request { event: late, time: now(), durable: true, write: true, done: None });
            }
        }
        if written.is_ok() {
            self.after_batch();
        }
    }

    /// Writes the batch's records as one write (and one sync), or none of
    /// them: on failure the chain and the file are as before.
    fn append(&mut self, batch: &[Request]) -> Result<(), String> {
        let before = self.chain.clone();
        let len = self.sink.len();
        let mut bytes = Vec::new();
        for request in batch.iter().filter(|r| r.write) {
            match self.chain.link(&request.time, &self.replica, &request.event, None, None) {
                Ok(line) => bytes.extend_from_slice(&line),
                Err(e) => {
                    self.chain = before;
                    return Err(e.to_string());
                }
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.sink.write(&bytes) {
            self.chain = before;
            if let Err(cut) = self.sink.truncate(len) {
                self.poison(format!("a failed write could not be cut back: {cut}"));
            }
            return Err(e.to_string());
        }
        let durable = batch.iter().any(|r| r.durable && r.write);
        if durable && self.shared.sync.load(Ordering::Relaxed) {
            if let Err(e) = self.sink.sync() {
                // After a failed fdatasync the kernel may have dropped the
                // pages: what is in the file is unknown.
                self.chain = before;
                self.poison(format!("fdatasync failed: {e}"));
                return Err(e.to_string());
            }
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn poison(&mut self, why: String) {
        tracing::error!(error = why, "the audit log refuses every record until the broker is restarted");
        self.poisoned = Some(why);
    }

    /// Rotates the file when it is due (by size or age), and publishes
    /// the head if it did.
    fn rotate_if_due(&mut self) {
        if self.poisoned.is_none()
            && let Sink::File(file) = &self.sink
            && file.wants_rotation()
        {
            self.rotate();
            self.publish();
        }
    }

    /// Rotates when due, publishes the head, logs it when due.
    fn after_batch(&mut self) {
        if let Sink::File(file) = &self.sink
            && file.wants_rotation()
        {
            self.rotate();
        }
        let before = self.shared.head.lock().map(|h| h.count).unwrap_or(0);
        self.publish();
        let count = self.chain.count;
        if before / ANCHOR_EVERY_RECORDS != count / ANCHOR_EVERY_RECORDS || self.anchored.elapsed() >= ANCHOR_EVERY {
            self.log_head();
        }
    }

    /// Makes the chain's head what [`super::AuditLog::head`] answers.
    pub(super) fn publish(&self) {
        if let Ok(mut head) = self.shared.head.lock() {
            *head = Head {
                prev: self.chain.prev,
                mac: self.chain.mac.as_ref().map(|m| m.head),
                count: self.chain.count,
                file: self.file_seq,
            };
        }
    }

    /// The link record starting file `seq`.
    pub(super) fn link_line(&mut self, seq: u64) -> Result<Vec<u8>, AuditError> {
        let link =
            FileLink { seq, records: self.chain.count, prev_mac: self.chain.mac.as_ref().map(|m| hex::encode(m.head)) };
        let event = Event::new(ROTATE_ACTION, self.replica.clone());
        self.chain.link(&now(), &self.replica, &event, Some(&link), None)
    }

    /// The `audit.repair` record of a torn line cut from the file.
    pub(super) fn repair_line(&mut self, torn: &TornCut) -> Result<Vec<u8>, AuditError> {
        let event = Event {
            reasons: vec![format!(
                "the file ended with {} bytes of a record cut short by a crash; they were moved to {}",
                torn.bytes, torn.kept
            )],
            ..Event::new(REPAIR_ACTION, self.replica.clone())
        };
        self.chain.link(&now(), &self.replica, &event, None, Some(torn))
    }

    fn rotate(&mut self) {
        let before = self.chain.clone();
        let Sink::File(file) = &self.sink else {
            return;
        };
        let seq = file.seq.saturating_add(1);
        let line = match self.link_line(seq) {
            Ok(line) => line,
            Err(e) => {
                self.chain = before;
                tracing::error!(error = %e, "audit rotation record not built");
                return;
            }
        };
        let Sink::File(file) = &mut self.sink else {
            return;
        };
        match file.rotate(&line) {
            Ok(()) => {
                self.file_seq = file.seq;
                tracing::info!(file = file.seq, records = self.chain.count, "audit file rotated");
            }
            Err(RotateError::NotStarted(e)) => {
                self.chain = before;
                tracing::error!(error = %e, "audit file not rotated; writing on to the current file");
            }
            Err(RotateError::Broken(e)) => {
                self.chain = before;
                self.poison(format!("rotation cut short: {e}"));
            }
        }
    }

    /// Logs the head of the chain, for checks of the log's tail.
    pub(super) fn log_head(&mut self) {
        self.anchored = Instant::now();
        let head_mac = self.chain.mac.as_ref().map(|m| hex::encode(m.head)).unwrap_or_default();
        tracing::info!(
            replica = self.replica,
            records = self.chain.count,
            file = self.file_seq,
            head_sha256 = hex::encode(self.chain.prev),
            head_mac,
            "audit head"
        );
    }
}
