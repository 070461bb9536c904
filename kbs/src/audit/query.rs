//! Reading the latest records back (the Admin `QueryAudit` call): through
//! the current file and then the rotated ones, newest file first, until
//! the limit is met, in bounded memory and with a bound on the bytes read.
//!
//! Within a file the records are read in order and the last matches kept;
//! the answer is in the log's order (oldest first). The search stops at
//! the first file whose first record is before `since` (the files before
//! it hold only older records), at a rotated file that is gone (deleted
//! by `keep_files` meanwhile: the older ones are gone too), and once
//! [`MAX_QUERY_SCAN_BYTES`] are read: a file larger than what is left of
//! that is read from its tail, and the answer says it was cut short. A
//! rotation meanwhile neither hides nor doubles records: the current file
//! is held open and named by the link it starts with, and only rotated
//! files numbered below it are read after it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::files::{ROTATE_ACTION, rotated_files};
use super::{AuditError, read_record};

/// Bytes of audit files one query reads at most (256 MiB: a few seconds
/// of reading and parsing; the newest records are read first).
pub const MAX_QUERY_SCAN_BYTES: u64 = 256 << 20;

/// Which records a query wants.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    /// Only records at or after this time (Unix seconds); 0: all.
    pub since: i64,
    /// Only this action; empty: all.
    pub action: &'a str,
    /// The latest this many matches.
    pub limit: usize,
    /// Bytes read at most ([`MAX_QUERY_SCAN_BYTES`]).
    pub max_scan_bytes: u64,
}

/// What a query found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The latest matching records, oldest first, as stored.
    pub records: Vec<String>,
    /// Older files (or the older part of a file) were not read: the scan
    /// bound was reached or a rotated file could not be read, with fewer
    /// than `limit` matches found.
    pub truncated: bool,
}

/// One file read.
struct Scanned {
    /// Its number (from its link record; 1 without one).
    seq: u64,
    /// Its first record is before `since`: older files need not be read.
    older: bool,
}

/// The latest records of the log at `path` that match `query`.
pub fn query(path: &Path, query: &Query<'_>) -> Result<Found, AuditError> {
    let mut found = Found::default();
    if query.limit > 0 {
        search(path, query, &mut found)?;
    }
    // With the limit met, what was not read is older than the answer.
    if found.records.len() >= query.limit {
        found.truncated = false;
    }
    Ok(found)
}

fn search(path: &Path, query: &Query<'_>, found: &mut Found) -> Result<(), AuditError> {
    let mut budget = query.max_scan_bytes;
    // The current file first, held open: a rotation that renames it
    // meanwhile does not change what is read.
    let current = match File::open(path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let mut newest_read = u64::MAX;
    if let Some(file) = current {
        let scanned = scan(&file, query, &mut budget, found)?;
        if scanned.older {
            return Ok(());
        }
        newest_read = scanned.seq;
    }
    let rotated = rotated_files(path)?;
    if newest_read == u64::MAX && rotated.is_empty() {
        return Err(AuditError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "no audit file")));
    }
    for (seq, file) in rotated.iter().rev().filter(|(seq, _)| *seq < newest_read) {
        if found.records.len() >= query.limit || found.truncated {
            break;
        }
        if budget == 0 {
            found.truncated = true;
            break;
        }
        let file = match File::open(file) {
            Ok(file) => file,
            // Deleted by keep_files since it was listed: so are the older ones.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "a rotated audit file could not be read");
                found.truncated = true;
                break;
            }
        };
        match scan(&file, query, &mut budget, found) {
            Ok(scanned) if scanned.older => break,
            Ok(scanned) if scanned.seq != *seq => {
                tracing::warn!(file = seq, holds = scanned.seq, "a rotated audit file holds another file");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = seq, error = %e, "a rotated audit file could not be read whole");
                found.truncated = true;
                break;
            }
        }
    }
    Ok(())
}

/// Reads one file (from its tail when it is larger than `budget`) and puts
/// its latest matches, up to what the limit leaves, before those found.
fn scan(file: &File, query: &Query<'_>, budget: &mut u64, found: &mut Found) -> Result<Scanned, AuditError> {
    let want = query.limit.saturating_sub(found.records.len());
    let len = file.metadata()?.len();
    // What is appended meanwhile is left for the next query.
    let mut reader = BufReader::new(file.take(len));
    let mut line = Vec::new();
    let mut kept: VecDeque<String> = VecDeque::with_capacity(want.min(1024));
    let mut first = None;
    let mut read: u64 = 0;
    let mut number = 0;
    loop {
        number += 1;
        if number == 2 && len > *budget {
            // Only the tail fits: start at a line boundary within it.
            let from = len - *budget;
            if from > read {
                // From the byte before: a line that starts at `from` is kept.
                let mut seeker = file;
                seeker.seek(SeekFrom::Start(from - 1))?;
                reader = BufReader::new(file.take(len - from + 1));
                read_record(&mut reader, &mut line, number)?;
                read = from;
                found.truncated = true;
            }
        }
        if !read_record(&mut reader, &mut line, number)? {
            break;
        }
        read = read.saturating_add(u64::try_from(line.len()).unwrap_or(u64::MAX)).saturating_add(1);
        let Ok(text) = std::str::from_utf8(&line) else { continue };
        let Ok(record) = serde_json::from_str::<serde_json::Value>(text) else { continue };
        let at = record
            .get("time")
            .and_then(|t| t.as_str())
            .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
            .map(time::OffsetDateTime::unix_timestamp);
        if number == 1 {
            first = Some((file_seq(&record), at));
        }
        if !query.action.is_empty() && record.get("action").and_then(|a| a.as_str()) != Some(query.action) {
            continue;
        }
        if query.since > 0 && at.is_none_or(|at| at < query.since) {
            continue;
        }
        if want == 0 {
            continue;
        }
        if kept.len() == want {
            kept.pop_front();
        }
        kept.push_back(text.to_owned());
    }
    *budget = budget.saturating_sub(len);
    let (seq, at) = first.unwrap_or((1, None));
    let older = query.since > 0 && at.is_some_and(|at| at < query.since);
    let mut records: Vec<String> = kept.into();
    records.append(&mut found.records);
    found.records = records;
    Ok(Scanned { seq, older })
}

/// The number of the file a first record starts: its link's, or 1.
fn file_seq(record: &serde_json::Value) -> u64 {
    if record.get("action").and_then(|a| a.as_str()) != Some(ROTATE_ACTION) {
        return 1;
    }
    record.get("file").and_then(|f| f.get("seq")).and_then(serde_json::Value::as_u64).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Event, Rotation, rotated_path};

    /// A log of `n` release records (`id-0`...), rotated every 1,500 bytes.
    fn rotated_log(path: &Path, n: usize) -> u64 {
        let rotation = Rotation { max_file_bytes: Some(1500), ..Rotation::default() };
        let log = AuditLog::open(path, "r0", None, rotation).unwrap();
        for i in 0..n {
            let event =
                Event { attestation_id: Some(format!("id-{i}")), ..Event::new("release", "127.0.0.1:1".into()) };
            log.record(&event).unwrap();
        }
        log.flush().unwrap();
        log.file_seq()
    }

    fn ids(found: &Found) -> Vec<String> {
        found
            .records
            .iter()
            .filter_map(|r| {
                serde_json::from_str::<serde_json::Value>(r).unwrap()["attestation_id"].as_str().map(str::to_owned)
            })
            .collect()
    }

    fn all(limit: usize, max_scan_bytes: u64) -> Query<'static> {
        Query { since: 0, action: "release", limit, max_scan_bytes }
    }

    /// Past the scan bound the newest records are still found, from the
    /// tail of what could be read, and the answer says it was cut short;
    /// with the limit met within the bound it is not.
    #[test]
    fn the_scan_is_bounded_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        rotated_log(&path, 30);
        let whole = query(&path, &all(1000, MAX_QUERY_SCAN_BYTES)).unwrap();
        assert_eq!(whole.records.len(), 30);
        assert!(!whole.truncated);
        let cut = query(&path, &all(1000, 2000)).unwrap();
        assert!(cut.truncated);
        let got = ids(&cut);
        assert!(!got.is_empty() && got.len() < 30, "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("id-29"));
        let expected: Vec<String> = (30 - got.len()..30).map(|i| format!("id-{i}")).collect();
        assert_eq!(got, expected, "the newest records, whole and in order");
        let met = query(&path, &all(2, 2000)).unwrap();
        assert_eq!((ids(&met), met.truncated), (vec!["id-28".to_owned(), "id-29".to_owned()], false));
        // A bound inside the current file: its tail, from a line start.
        let tail = query(&path, &all(1000, 700)).unwrap();
        assert!(tail.truncated && ids(&tail).last().map(String::as_str) == Some("id-29"));
        assert!(tail.records.iter().all(|r| serde_json::from_str::<serde_json::Value>(r).is_ok()));
    }

    /// A rotated file that cannot be read ends the search there, without
    /// failing the query; one renamed in by a rotation since the current
    /// file was opened is not read twice.
    #[test]
    fn unreadable_and_newer_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let seq = rotated_log(&path, 30);
        assert!(seq >= 4);
        let second = rotated_path(&path, 2);
        std::fs::rename(&second, dir.path().join("aside")).unwrap();
        std::fs::create_dir(&second).unwrap();
        let found = query(&path, &all(1000, MAX_QUERY_SCAN_BYTES)).unwrap();
        assert!(found.truncated);
        assert_eq!(ids(&found).last().map(String::as_str), Some("id-29"));
        assert!(!ids(&found).contains(&"id-0".to_owned()));
        std::fs::remove_dir(&second).unwrap();
        std::fs::rename(dir.path().join("aside"), &second).unwrap();
        // A copy of the current file under its own number, as a rotation
        // after the query opened it would leave.
        std::fs::copy(&path, rotated_path(&path, seq)).unwrap();
        let found = query(&path, &all(1000, MAX_QUERY_SCAN_BYTES)).unwrap();
        assert_eq!(ids(&found), (0..30).map(|i| format!("id-{i}")).collect::<Vec<_>>());
        // No file at all is an error, not an empty answer.
        assert!(query(&dir.path().join("none.jsonl"), &all(10, MAX_QUERY_SCAN_BYTES)).is_err());
    }

    /// With `since`, files whose first record is older end the search.
    #[test]
    fn since_stops_at_older_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        rotated_log(&path, 30);
        // Older files, made unreadable: the search must not reach them.
        std::fs::remove_file(rotated_path(&path, 1)).unwrap();
        std::fs::create_dir(rotated_path(&path, 1)).unwrap();
        let future = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        let found = query(&path, &Query { since: future, ..all(10, MAX_QUERY_SCAN_BYTES) }).unwrap();
        assert_eq!(found, Found::default(), "nothing newer, and the older files not read");
    }
}
