//! The audit log: one JSON line per decision, hash-chained.
//!
//! Every record carries `prev`, the SHA-256 of the previous line's bytes
//! (64 zeros for the first line of a file), so truncation in the middle,
//! reordering or editing of any record is detectable. Records never contain
//! a secret value or raw evidence: only names, versions, digests and reason
//! codes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Mutex;

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
}

/// The audit writer. Writes are serialized; each record is flushed before
/// the decision it records is returned to the caller.
pub struct AuditLog {
    replica: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("replica", &self.replica).finish_non_exhaustive()
    }
}

/// Why the audit log could not be written or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O.
    #[error("audit I/O: {0}")]
    Io(#[from] std::io::Error),
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
    pub fn stdout(replica: &str) -> Self {
        Self { replica: replica.into(), state: Mutex::new(State { sink: Sink::Stdout, prev: [0; 32] }) }
    }

    /// An audit log whose every write fails.
    #[cfg(test)]
    pub(crate) fn failing() -> Self {
        Self { replica: "test".into(), state: Mutex::new(State { sink: Sink::Failing, prev: [0; 32] }) }
    }

    /// Audit to a file, appending and continuing the chain of what is there.
    /// A file whose chain is already broken is refused: the operator must
    /// look at it before the broker writes more.
    pub fn file(path: &Path, replica: &str) -> Result<Self, AuditError> {
        let prev = if path.exists() { verify_file(path)?.1 } else { [0; 32] };
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o640);
        }
        let file = options.open(path)?;
        Ok(Self { replica: replica.into(), state: Mutex::new(State { sink: Sink::File(file), prev }) })
    }

    /// Appends one record. Failing to audit is an error the caller must
    /// treat as a refusal: nothing is released without a record.
    pub fn record(&self, event: &Event) -> Result<(), AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Io(std::io::Error::other("audit lock poisoned")))?;
        let time =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let record = Record { time, replica: &self.replica, event, prev: hex::encode(state.prev) };
        let mut line = serde_json::to_vec(&record).map_err(|e| AuditError::Io(std::io::Error::other(e)))?;
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
            }
            #[cfg(test)]
            Sink::Failing => return Err(AuditError::Io(std::io::Error::other("test sink refuses writes"))),
        }
        state.prev = digest;
        Ok(())
    }
}

/// Checks a file's chain; returns the number of records and the digest of
/// the last line.
pub fn verify_file(path: &Path) -> Result<(usize, [u8; 32]), AuditError> {
    verify_lines(BufReader::new(File::open(path)?))
}

/// Checks a chain read from `reader`.
pub fn verify_lines(reader: impl BufRead) -> Result<(usize, [u8; 32]), AuditError> {
    let mut prev = [0u8; 32];
    let mut count = 0;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let number = i + 1;
        let value: serde_json::Value = serde_json::from_slice(&line)
            .map_err(|e| AuditError::Broken { line: number, why: format!("not JSON: {e}") })?;
        let claimed = value.get("prev").and_then(|p| p.as_str()).unwrap_or_default();
        if claimed != hex::encode(prev) {
            return Err(AuditError::Broken { line: number, why: "prev does not match the previous record".into() });
        }
        prev = Sha256::digest(&line).into();
        count += 1;
    }
    Ok((count, prev))
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

    #[test]
    fn chain_verifies_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::file(&path, "r0").unwrap();
        log.record(&event("allow")).unwrap();
        log.record(&event("deny")).unwrap();
        drop(log);
        // Re-opening continues the chain.
        let log = AuditLog::file(&path, "r0").unwrap();
        log.record(&event("allow")).unwrap();
        assert_eq!(verify_file(&path).unwrap().0, 3);

        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"deny\"", "\"allow\"", 1);
        assert!(matches!(verify_lines(edited.as_bytes()), Err(AuditError::Broken { line: 3, .. })));
        let lines: Vec<&str> = text.lines().collect();
        let dropped = format!("{}\n{}\n", lines[0], lines[2]);
        assert!(matches!(verify_lines(dropped.as_bytes()), Err(AuditError::Broken { line: 2, .. })));
        // A broken file is not appended to.
        std::fs::write(&path, edited).unwrap();
        assert!(AuditLog::file(&path, "r0").is_err());
    }
}
