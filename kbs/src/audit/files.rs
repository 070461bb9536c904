//! The audit log's files: the current file, its rotation into numbered
//! files, and the check of a chain that runs through several files.
//!
//! The current file is `PATH`; when it reaches `max_file_bytes` it becomes
//! `PATH.NNNNNN` (its file sequence number, from 1) and a new `PATH` starts
//! with an `audit.rotate` record. That record carries `"file":{"seq",
//! "records","prev_mac"}`: its own file's number, the number of records
//! before it in the whole log, and (keyed) the MAC of the previous file's
//! last record; its `prev` is the SHA-256 of that last record's line, and
//! its MAC continues the MAC chain. The files of a log are thus one chain:
//! a missing, reordered, truncated or replaced file breaks it at the first
//! record of the file after it, and a set that starts at a rotated file is
//! checked from that file's link on.
//!
//! Rotation is crash-safe: the new file is written whole and synced as
//! `PATH.next`, then `PATH` is renamed to `PATH.NNNNNN`, then `PATH.next`
//! to `PATH`, then the directory is synced. A crash at any step leaves a
//! set that verifies; opening the log removes a leftover `PATH.next` (it
//! holds no decision) and, when `PATH` is missing, starts it again with the
//! link to the last rotated file.
//!
//! Rotation is also by age (`max_file_age`): the writer rotates the current
//! file once its first record is that old, before a batch and, while no
//! record comes, on a timer.
//!
//! A crash mid-write can leave `PATH` ending in part of a record. Opening
//! the log checks the chain up to that torn line, moves its bytes to
//! `PATH.torn-SECONDS`, cuts them, and the writer records the cut as an
//! `audit.repair` record (`"torn":{"bytes","sha256","kept"}`) that
//! continues the chain. Only a last line that is not JSON is cut: a whole
//! record never is (without its newline it is checked and kept). The side
//! file is named `PATH.torn-SECONDS.pending` until its record is written
//! and synced, so a crash between the cut and the record is found at the
//! next opening: a pending file whose bytes are still the file's torn tail
//! was never cut (it is removed, and the tail cut again); one that no
//! `audit.repair` record names gets its record then; either way it is
//! renamed to its final name only once its record is on disk.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Anchor, AuditError, AuditKey, KEYED_VERSION, MAC_SUFFIX_LEN, MAX_RECORD_BYTES, Verified, read_record};

/// The action of the record that starts every file after the first.
pub const ROTATE_ACTION: &str = "audit.rotate";

/// The action of the record of a torn last line cut from the current file.
pub const REPAIR_ACTION: &str = "audit.repair";

/// The suffix of a torn line's side file until its record is written.
const PENDING: &str = ".pending";

/// Digits of a rotated file's number (`audit.jsonl.000001`).
const SEQ_DIGITS: usize = 6;

/// The link a file after the first starts with (the `file` field of its
/// `audit.rotate` record).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(super) struct FileLink {
    /// This file's sequence number (2 for the file after the first).
    pub seq: u64,
    /// Records in the log before this one.
    pub records: usize,
    /// The MAC of the previous file's last record (keyed logs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_mac: Option<String>,
}

/// A torn last line cut from the current file when the log was opened
/// (the `torn` field of its `audit.repair` record).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(super) struct TornCut {
    /// Bytes cut.
    pub bytes: usize,
    /// Their SHA-256.
    pub sha256: String,
    /// The file they were moved to, beside the log (`PATH.torn-SECONDS`).
    pub kept: String,
}

/// What the current file ends with, past its last newline.
enum Tail {
    /// Nothing: it is empty or ends with a newline.
    Clean,
    /// A whole record (valid JSON) without its newline: a crash between
    /// the record and its newline. It is checked with the rest and kept.
    Unterminated,
    /// Part of a record (not JSON) from byte `at` on: a crash mid-write.
    Torn { at: u64, bytes: Vec<u8> },
}

/// How the current file is rotated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the current file holds this many bytes (`None`: never).
    pub max_file_bytes: Option<u64>,
    /// Rotate once the current file's first record is this old (`None`:
    /// never), checked at each batch and, while no record comes, by the
    /// writer's timer; a file holding only its link is not rotated by age.
    pub max_file_age: Option<std::time::Duration>,
    /// Rotated files kept; older ones are deleted (0: all are kept).
    pub keep_files: usize,
}

/// The name of rotated file `seq` of the log at `path`.
pub fn rotated_path(path: &Path, seq: u64) -> PathBuf {
    let mut name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(format!(".{seq:0SEQ_DIGITS$}"));
    path.with_file_name(name)
}

/// Where a rotation writes the next file before renaming it in.
fn next_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".next");
    path.with_file_name(name)
}

/// The sequence number in a rotated file's name (`BASE.NNNNNN`), and BASE.
fn parse_rotated(name: &str) -> Option<(&str, u64)> {
    let (base, digits) = name.rsplit_once('.')?;
    if base.is_empty() || digits.len() < SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, digits.parse().ok()?))
}

/// The rotated files of the log at `path`, by number.
pub fn rotated_files(path: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let Some((dir, own)) = dir_and_name(path) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((base, seq)) = name.to_str().and_then(parse_rotated)
            && base == own
        {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The directory of the log at `path` and the log's file name.
fn dir_and_name(path: &Path) -> Option<(&Path, &str)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some((dir, path.file_name()?.to_str()?))
}

/// The side files of torn lines whose record may not have been written
/// (`PATH.torn-*.pending`), in name order.
fn pending_torn(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let Some((dir, own)) = dir_and_name(path) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{own}.torn-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(name) = name.to_str()
            && name.starts_with(&prefix)
            && name.ends_with(PENDING)
        {
            found.push(path.with_file_name(name));
        }
    }
    found.sort();
    Ok(found)
}

/// The file name a pending side file is renamed to once its record is
/// written (the `kept` of its record).
fn kept_name(pending: &Path) -> String {
    let name = pending.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.strip_suffix(PENDING).unwrap_or(&name).to_owned()
}

/// The `kept` names of the `audit.repair` records in the current file,
/// up to byte `len`.
fn repaired(path: &Path, len: u64) -> Result<Vec<String>, AuditError> {
    let mut reader = BufReader::new(std::io::Read::take(File::open(path)?, len));
    let (mut line, mut number, mut kept) = (Vec::new(), 0, Vec::new());
    while read_record(&mut reader, &mut line, number + 1)? {
        number += 1;
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
        if value.get("action").and_then(serde_json::Value::as_str) == Some(REPAIR_ACTION)
            && let Some(name) = value.pointer("/torn/kept").and_then(serde_json::Value::as_str)
        {
            kept.push(name.to_owned());
        }
    }
    Ok(kept)
}

/// Renames the side files of `cuts`, whose records are now written and
/// synced, to their final names.
pub(super) fn settle_torn(path: &Path, cuts: &[TornCut]) -> Result<(), AuditError> {
    for cut in cuts {
        let kept = path.with_file_name(&cut.kept);
        std::fs::rename(path.with_file_name(format!("{}{PENDING}", cut.kept)), &kept)?;
        sync_dir(&kept)?;
    }
    Ok(())
}

/// The files of one log, in chain order, from what a user names: files
/// (ordered by the number in a rotated file's name, the file without one
/// last) or one directory (its rotated files `BASE.NNNNNN` and `BASE`; or,
/// without rotated files, its only `*.jsonl` file). Each comes with the
/// number its name gives, checked against its content.
pub fn log_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Option<u64>)>, AuditError> {
    let usage = |why: String| AuditError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    let mut files = Vec::new();
    for path in paths {
        if std::fs::metadata(path)?.is_dir() {
            files.extend(directory_files(path)?);
        } else {
            let seq = path.file_name().and_then(|n| n.to_str()).and_then(parse_rotated).map(|(_, seq)| seq);
            files.push((path.clone(), seq));
        }
    }
    if files.iter().filter(|(_, seq)| seq.is_none()).count() > 1 {
        return Err(usage("more than one current file (a file without a .NNNNNN number) given".into()));
    }
    // Rotated files by number, then the current file.
    files.sort_by_key(|(path, seq)| (seq.is_none(), *seq, path.clone()));
    if files.windows(2).any(|w| matches!(w, [(_, Some(a)), (_, Some(b))] if a == b)) {
        return Err(usage("two files with the same number given".into()));
    }
    if files.is_empty() {
        return Err(usage("no audit file given".into()));
    }
    Ok(files)
}

fn directory_files(dir: &Path) -> Result<Vec<(PathBuf, Option<u64>)>, AuditError> {
    let usage = |why: String| AuditError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    let mut rotated = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match parse_rotated(&name) {
            Some((base, seq)) => rotated.push((base.to_owned(), seq, entry.path())),
            None => others.push(name),
        }
    }
    let mut bases: Vec<&str> = rotated.iter().map(|(base, _, _)| base.as_str()).collect();
    bases.dedup();
    let base = match bases.as_slice() {
        [one] => (*one).to_owned(),
        [] => {
            let logs: Vec<&String> = others.iter().filter(|n| n.ends_with(".jsonl")).collect();
            match logs.as_slice() {
                [one] => (*one).clone(),
                _ => return Err(usage(format!("{}: no single audit log in it; give its files", dir.display()))),
            }
        }
        _ => return Err(usage(format!("{}: rotated files of several logs in it; give the files", dir.display()))),
    };
    let mut files: Vec<(PathBuf, Option<u64>)> =
        rotated.into_iter().filter(|(b, _, _)| *b == base).map(|(_, seq, path)| (path, Some(seq))).collect();
    if others.contains(&base) {
        files.push((dir.join(&base), None));
    }
    Ok(files)
}

/// The check of one chain through one or more files, fed in order.
#[derive(Debug)]
pub struct ChainCheck<'a> {
    key: Option<&'a AuditKey>,
    anchor: Option<&'a Anchor>,
    prev: [u8; 32],
    head: [u8; 32],
    count: usize,
    keyed: Option<bool>,
    /// The number of the last file fed (`None` before the first record).
    seq: Option<u64>,
    first_seq: Option<u64>,
    /// Records before the first file fed.
    before: usize,
    files: usize,
}

impl<'a> ChainCheck<'a> {
    /// A check with the MACs under `key` (when given) and through `anchor`.
    pub fn new(key: Option<&'a AuditKey>, anchor: Option<&'a Anchor>) -> Self {
        Self {
            key,
            anchor,
            prev: [0; 32],
            head: [0; 32],
            count: 0,
            keyed: None,
            seq: None,
            first_seq: None,
            before: 0,
            files: 0,
        }
    }

    /// Checks the next file; `named` is the number its name gives, if any.
    pub fn file(&mut self, mut reader: impl BufRead, named: Option<u64>) -> Result<(), AuditError> {
        let mut line = Vec::new();
        let mut number = 0;
        loop {
            number += 1;
            if !read_record(&mut reader, &mut line, number)? {
                break;
            }
            let broken = |why: &str| AuditError::Broken { line: number, why: why.into() };
            let value: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|e| AuditError::Broken { line: number, why: format!("not JSON: {e}") })?;
            let is_link = value.get("action").and_then(serde_json::Value::as_str) == Some(ROTATE_ACTION);
            if number == 1 {
                self.start_file(&value, is_link, named).map_err(|why| broken(&why))?;
            } else if is_link {
                return Err(broken("a file link inside a file: files were joined"));
            }
            let claimed = value.get("prev").and_then(|p| p.as_str()).unwrap_or_default();
            if claimed != hex::encode(self.prev) {
                return Err(broken("prev does not match the previous record"));
            }
            let mac = value.get("mac").and_then(|m| m.as_str());
            let has_mac = mac.is_some();
            if *self.keyed.get_or_insert(has_mac) != has_mac {
                return Err(broken("records with and without MACs are mixed"));
            }
            if has_mac && value.get("v").and_then(serde_json::Value::as_u64) != Some(u64::from(KEYED_VERSION)) {
                return Err(broken("a MAC-chained record must be format v2"));
            }
            if let Some(key) = self.key {
                let mac = mac.ok_or_else(|| broken("no MAC"))?;
                let tag = hex::decode(mac)
                    .ok()
                    .filter(|t| t.len() == 32)
                    .ok_or_else(|| broken("MAC is not 64 hex digits"))?;
                let suffix = format!(",\"mac\":\"{mac}\"}}");
                let body = line
                    .len()
                    .checked_sub(MAC_SUFFIX_LEN)
                    .and_then(|n| line.get(..n))
                    .filter(|_| line.ends_with(suffix.as_bytes()))
                    .ok_or_else(|| broken("the MAC is not the record's last field"))?;
                let mut content = body.to_vec();
                content.push(b'}');
                if !key.verify(&self.head, &content, &tag) {
                    return Err(broken("MAC does not verify (edited, reordered, or another key)"));
                }
                self.head.copy_from_slice(&tag);
            }
            self.prev = Sha256::digest(&line).into();
            self.count += 1;
            if let Some(anchor) = self.anchor.filter(|a| a.count == self.count) {
                let at = if self.key.is_some() { &self.head } else { &self.prev };
                if *at != anchor.head {
                    return Err(broken("not the expected head: the log was rewritten up to here"));
                }
            }
        }
        if number == 1 && named.is_some() {
            return Err(AuditError::Broken { line: 1, why: "a rotated file is empty".into() });
        }
        self.files += 1;
        Ok(())
    }

    /// The first record of a file: a file link continues the chain (or,
    /// in the first file fed, starts the check there); any other record
    /// starts a log, and only the first file fed may.
    fn start_file(&mut self, value: &serde_json::Value, is_link: bool, named: Option<u64>) -> Result<(), String> {
        let seq = if is_link {
            let link = value.get("file").ok_or("a file link without its file field")?;
            let seq = link.get("seq").and_then(serde_json::Value::as_u64).filter(|s| *s >= 2);
            let records = link.get("records").and_then(serde_json::Value::as_u64);
            let (Some(seq), Some(records)) = (seq, records) else {
                return Err("a file link without a valid seq and records".into());
            };
            let records = usize::try_from(records).map_err(|_| "a file link's records out of range")?;
            let prev_mac = link.get("prev_mac").and_then(serde_json::Value::as_str);
            match self.seq {
                None => {
                    // The set starts after earlier files: take the link's
                    // word for what came before; its own MAC (keyed) and
                    // everything after it are still checked.
                    let prev = value.get("prev").and_then(serde_json::Value::as_str).unwrap_or_default();
                    self.prev = decode32(prev).ok_or("a file link whose prev is not 64 hex digits")?;
                    if self.key.is_some() {
                        self.head = prev_mac.and_then(decode32).ok_or("a keyed file link without prev_mac")?;
                    }
                    self.count = records;
                    self.before = records;
                }
                Some(last) => {
                    if seq != last.saturating_add(1) {
                        return Err(format!("file {seq} follows file {last}: a file is missing or out of order"));
                    }
                    if records != self.count {
                        return Err(format!(
                            "the link counts {records} earlier records, the files before hold {}: a file was truncated",
                            self.count
                        ));
                    }
                    if self.key.is_some() && prev_mac != Some(hex::encode(self.head).as_str()) {
                        return Err("prev_mac is not the previous file's last MAC".into());
                    }
                }
            }
            seq
        } else {
            if let Some(last) = self.seq {
                return Err(format!(
                    "a file after file {last} does not start with the link to it: a file is missing, out of order or truncated at its start"
                ));
            }
            1
        };
        if let Some(named) = named
            && named != seq
        {
            return Err(format!("the file is named number {named} but holds file {seq}: renamed"));
        }
        self.seq = Some(seq);
        self.first_seq.get_or_insert(seq);
        Ok(())
    }

    /// The result, once every file is fed.
    pub fn finish(self) -> Result<Verified, AuditError> {
        if let Some(anchor) = self.anchor {
            if anchor.count > self.count {
                return Err(AuditError::Truncated { expected: anchor.count, found: self.count });
            }
            if anchor.count <= self.before && anchor.count > 0 {
                return Err(AuditError::Broken {
                    line: 1,
                    why: format!("the expected head (record {}) is in a file before those given", anchor.count),
                });
            }
        }
        let seq = self.seq.unwrap_or(1);
        Ok(Verified {
            count: self.count,
            last: self.prev,
            head_mac: self.key.map(|_| self.head),
            keyed: self.keyed.unwrap_or(false),
            before: self.before,
            first_file: self.first_seq.unwrap_or(seq),
            last_file: seq,
            files: self.files,
        })
    }
}

fn decode32(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok().and_then(|b| <[u8; 32]>::try_from(b).ok())
}

/// Checks the files of one log in order ([`log_files`]); an error names the
/// file it is in.
pub fn verify_files(
    paths: &[PathBuf],
    key: Option<&AuditKey>,
    anchor: Option<&Anchor>,
) -> Result<Verified, (Option<PathBuf>, AuditError)> {
    let files = log_files(paths).map_err(|e| (None, e))?;
    verify_ordered(&files, key, anchor, u64::MAX)
}

/// Checks `files` in order, reading at most `current_len` bytes of the
/// current file (the one without a number).
fn verify_ordered(
    files: &[(PathBuf, Option<u64>)],
    key: Option<&AuditKey>,
    anchor: Option<&Anchor>,
    current_len: u64,
) -> Result<Verified, (Option<PathBuf>, AuditError)> {
    let mut check = ChainCheck::new(key, anchor);
    let mut last = None;
    for (path, named) in files {
        let limit = if named.is_none() { current_len } else { u64::MAX };
        let reader = File::open(path)
            .map(|f| BufReader::new(std::io::Read::take(f, limit)))
            .map_err(|e| (Some(path.clone()), e.into()))?;
        check.file(reader, *named).map_err(|e| (Some(path.clone()), e))?;
        last = Some(path.clone());
    }
    check.finish().map_err(|e| (last, e))
}

/// What the current file at `path` ends with past its last newline. A
/// tail longer than a record is refused as broken.
fn tail(path: &Path) -> Result<Tail, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let window = len.min(u64::try_from(MAX_RECORD_BYTES).unwrap_or(u64::MAX).saturating_add(1));
    file.seek(SeekFrom::Start(len - window))?;
    let mut end = Vec::new();
    file.take(window).read_to_end(&mut end)?;
    if end.last().is_none_or(|b| *b == b'\n') {
        return Ok(Tail::Clean);
    }
    let start = match end.iter().rposition(|b| *b == b'\n') {
        Some(newline) => newline + 1,
        None if window == len => 0,
        None => {
            return Err(AuditError::Broken { line: 0, why: format!("the last line is over {MAX_RECORD_BYTES} bytes") });
        }
    };
    let bytes = end.split_off(start);
    // Any prefix of a record short of its closing brace is not JSON; a
    // whole record is, and is checked (and kept) like the others.
    if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() {
        return Ok(Tail::Unterminated);
    }
    let at = len - u64::try_from(bytes.len()).unwrap_or(len);
    Ok(Tail::Torn { at, bytes })
}

/// Ends a whole last record that lacks its newline with one.
fn terminate(path: &Path) -> Result<(), AuditError> {
    let mut file = open_options().open(path)?;
    file.write_all(b"\n")?;
    file.sync_data()?;
    tracing::warn!(path = %path.display(), "the audit file's last record lacked its newline (a crash): added");
    Ok(())
}

/// Moves the torn last line (`bytes`, from `at` on) of the current file to
/// `PATH.torn-SECONDS.pending` (synced, with the directory), then cuts it
/// from the file (synced). The caller writes the `audit.repair` record
/// next, then renames the side file ([`settle_torn`]).
fn cut_torn(path: &Path, at: u64, bytes: &[u8]) -> Result<TornCut, AuditError> {
    let seconds = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let own = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut options = open_options();
    options.append(false).write(true).create_new(true);
    let (mut kept, mut n) = (format!("{own}.torn-{seconds}"), 1);
    let mut side = loop {
        let opened = match path.with_file_name(&kept).exists() {
            true => Err(std::io::ErrorKind::AlreadyExists.into()),
            false => options.open(path.with_file_name(format!("{kept}{PENDING}"))),
        };
        match opened {
            Ok(file) => break file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                kept = format!("{own}.torn-{seconds}-{n}");
                n += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    side.write_all(bytes)?;
    side.sync_data()?;
    sync_dir(path)?;
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(at)?;
    file.sync_data()?;
    let cut = torn_cut(bytes, kept);
    tracing::warn!(
        path = %path.display(), bytes = cut.bytes, sha256 = cut.sha256, kept = cut.kept,
        "the audit file ended with a torn record (a crash mid-write): cut, and kept aside"
    );
    Ok(cut)
}

fn torn_cut(bytes: &[u8], kept: String) -> TornCut {
    TornCut { bytes: bytes.len(), sha256: hex::encode(Sha256::digest(bytes)), kept }
}

/// The cuts of earlier openings whose records may be missing (a crash
/// between a cut and its record), from their pending side files: a side
/// file whose bytes are still the current file's torn `tail` was never
/// cut and is removed; one that an `audit.repair` record of the current
/// file (up to `len`) names only needs its final name; the others are
/// returned, to be recorded now.
fn unrecorded_cuts(path: &Path, tail: &Tail, len: u64) -> Result<Vec<TornCut>, AuditError> {
    let pending = pending_torn(path)?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let recorded = repaired(path, len)?;
    let mut cuts = Vec::new();
    for side in pending {
        // A torn tail is at most one record long (see `tail`).
        if std::fs::metadata(&side)?.len() > u64::try_from(MAX_RECORD_BYTES).unwrap_or(u64::MAX).saturating_add(1) {
            let why = format!("{} is longer than a torn line can be; move it aside", side.display());
            return Err(AuditError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, why)));
        }
        let bytes = std::fs::read(&side)?;
        let cut = torn_cut(&bytes, kept_name(&side));
        if matches!(tail, Tail::Torn { bytes: torn, .. } if *torn == bytes) {
            tracing::warn!(kept = %side.display(), "removing the side file of a cut a crash cut short");
            std::fs::remove_file(&side)?;
            sync_dir(path)?;
        } else if recorded.contains(&cut.kept) {
            settle_torn(path, std::slice::from_ref(&cut))?;
        } else {
            tracing::warn!(kept = cut.kept, "a torn line was cut without its record (a crash): recording it now");
            cuts.push(cut);
        }
    }
    Ok(cuts)
}

/// When the (verified) file at `path` started, from its first record's
/// time (now, if that is unreadable), and whether it holds only its link.
fn first_record(path: &Path) -> Result<(Option<SystemTime>, bool), AuditError> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    if !read_record(&mut reader, &mut line, 1)? {
        return Ok((None, false));
    }
    let value: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
    let started = value
        .get("time")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .map_or_else(SystemTime::now, SystemTime::from);
    let is_link = value.get("action").and_then(serde_json::Value::as_str) == Some(ROTATE_ACTION);
    let alone = !read_record(&mut reader, &mut line, 2)?;
    Ok((Some(started), is_link && alone))
}

/// The current file, as the writer holds it.
#[derive(Debug)]
pub(super) struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    pub len: u64,
    /// The current file's number.
    pub seq: u64,
    rotation: Rotation,
    /// No rotation is tried before this (after one that could not start).
    retry_at: Option<std::time::Instant>,
    /// When the current file's first record was written (`None`: empty).
    started: Option<SystemTime>,
    /// The file's length while it holds only its link record.
    link_len: Option<u64>,
}

/// What opening a log found.
pub(super) struct Opened {
    pub file: LogFile,
    /// The chain's end, across the files checked.
    pub found: Verified,
    /// The current file was missing after rotated files (a rotation cut
    /// short): it must start with the link to the last one.
    pub needs_link: bool,
    /// Torn lines cut from the current file, now or by an opening a crash
    /// cut short: the next records must say so, before anything else.
    pub torn: Vec<TornCut>,
}

/// How a rotation failed.
#[derive(Debug)]
pub(super) enum RotateError {
    /// Nothing was changed; the current file stays.
    NotStarted(std::io::Error),
    /// The current file was renamed and its successor is not in place: no
    /// record may be written until the log is opened again.
    Broken(std::io::Error),
}

fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl LogFile {
    /// Opens the log at `path`: checks the last rotated file and the
    /// current one as one chain (the MACs with `key`), and finishes a
    /// rotation a crash cut short.
    pub(super) fn open(path: &Path, key: Option<&AuditKey>, rotation: Rotation) -> Result<Opened, AuditError> {
        // What is there is read before anything is written: a device or a
        // FIFO (`/dev/zero`, `/dev/stdout`) would be read forever. Audit to
        // stdout is `path = "-"`.
        if path.exists() && !std::fs::metadata(path)?.is_file() {
            return Err(AuditError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the audit path exists and is not a regular file",
            )));
        }
        // A file a rotation wrote and did not rename in holds only its
        // link record, no decision.
        let next = next_path(path);
        if next.exists() {
            tracing::warn!(path = %next.display(), "removing the new file of a rotation cut short");
            std::fs::remove_file(&next)?;
        }
        let mut files: Vec<(PathBuf, Option<u64>)> =
            rotated_files(path)?.last().map(|(seq, p)| (p.clone(), Some(*seq))).into_iter().collect();
        let current = path.exists() && std::fs::metadata(path)?.len() > 0;
        if current {
            files.push((path.to_owned(), None));
        }
        // A torn last line is left out of the check, and cut only once
        // everything before it has verified.
        let tail = if current { tail(path)? } else { Tail::Clean };
        let checked_len = match &tail {
            Tail::Torn { at, .. } => *at,
            Tail::Clean | Tail::Unterminated => u64::MAX,
        };
        let unwrap_file = |(_, e): (Option<PathBuf>, AuditError)| e;
        let mut found = verify_ordered(&files, None, None, checked_len).map_err(unwrap_file)?;
        match (key, found.count > 0, found.keyed) {
            (Some(_), true, false) => {
                return Err(AuditError::KeyMismatch("holds records without MACs; move it aside to start a keyed log"));
            }
            (None, _, true) => return Err(AuditError::KeyMismatch("is MAC-chained but no audit key is configured")),
            (Some(key), _, true) => {
                found = verify_ordered(&files, Some(key), None, checked_len).map_err(unwrap_file)?
            }
            _ => {}
        }
        let mut torn = match current {
            true => unrecorded_cuts(path, &tail, checked_len)?,
            false => Vec::new(),
        };
        match tail {
            Tail::Clean => {}
            Tail::Unterminated => terminate(path)?,
            Tail::Torn { at, bytes } => torn.push(cut_torn(path, at, &bytes)?),
        }
        let needs_link = !current && !files.is_empty();
        let file = open_options().open(path)?;
        let len = file.metadata()?.len();
        let seq = if needs_link { found.last_file.saturating_add(1) } else { found.last_file };
        let (started, link_only) = if current { first_record(path)? } else { (None, false) };
        let link_len = link_only.then_some(len);
        Ok(Opened {
            file: LogFile { path: path.to_owned(), file, len, seq, rotation, retry_at: None, started, link_len },
            found,
            needs_link,
            torn,
        })
    }

    /// Appends `bytes`.
    pub(super) fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.len == 0 && !bytes.is_empty() {
            self.started = Some(SystemTime::now());
        }
        self.file.write_all(bytes)?;
        self.file.flush()?;
        self.len = self.len.saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
        Ok(())
    }

    /// Writes what was appended through to the disk.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Cuts the file back to `len` bytes (a batch whose write failed).
    pub(super) fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        if len == 0 {
            self.started = None;
        }
        Ok(())
    }

    /// Whether the current file should be rotated now.
    pub(super) fn wants_rotation(&self) -> bool {
        let big = self.rotation.max_file_bytes.is_some_and(|max| self.len >= max);
        let old = self.age_due_in().is_some_and(|wait| wait.is_zero());
        (big || old) && self.retry_at.is_none_or(|at| std::time::Instant::now() >= at)
    }

    /// How long until the current file is due for rotation by age (zero:
    /// it is), or `None`: never (no `max_file_age`, or the file is empty
    /// or holds only its link).
    fn age_due_in(&self) -> Option<Duration> {
        let age = self.rotation.max_file_age?;
        if self.len == 0 || self.link_len == Some(self.len) {
            return None;
        }
        let due = self.started?.checked_add(age)?;
        Some(due.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }

    /// How long the writer may wait for records before it must look at
    /// the file's age again (`None`: as long as it likes).
    pub(super) fn next_age_check(&self) -> Option<Duration> {
        let wait = self.age_due_in()?;
        let retry = self.retry_at.map_or(Duration::ZERO, |at| at.saturating_duration_since(std::time::Instant::now()));
        Some(wait.max(retry))
    }

    /// Rotates: the current file becomes rotated file `seq`, and a new one
    /// starts with `link` (the `audit.rotate` record of file `seq + 1`,
    /// with its newline).
    pub(super) fn rotate(&mut self, link: &[u8]) -> Result<(), RotateError> {
        let rotated = rotated_path(&self.path, self.seq);
        let next = next_path(&self.path);
        let not_started = |e: std::io::Error, retry_at: &mut Option<std::time::Instant>| {
            *retry_at = Some(std::time::Instant::now() + std::time::Duration::from_secs(60));
            RotateError::NotStarted(e)
        };
        if rotated.exists() {
            let e = std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} exists", rotated.display()));
            return Err(not_started(e, &mut self.retry_at));
        }
        let written = (|| {
            let mut options = open_options();
            options.append(false).write(true).truncate(true);
            let mut file = options.open(&next)?;
            file.write_all(link)?;
            file.sync_data()?;
            std::fs::rename(&self.path, &rotated)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&next);
            return Err(not_started(e, &mut self.retry_at));
        }
        let placed = (|| {
            std::fs::rename(&next, &self.path)?;
            sync_dir(&self.path)?;
            open_options().open(&self.path)
        })();
        let file = placed.map_err(RotateError::Broken)?;
        self.file = file;
        self.len = u64::try_from(link.len()).unwrap_or(u64::MAX);
        self.started = Some(SystemTime::now());
        self.link_len = Some(self.len);
        self.seq = self.seq.saturating_add(1);
        self.retry_at = None;
        self.prune();
        Ok(())
    }

    /// Starts a current file that a crash left missing with `link` (the
    /// writer does it once, before any record).
    pub(super) fn start_with_link(&mut self, link: &[u8]) -> std::io::Result<()> {
        let next = next_path(&self.path);
        let mut options = open_options();
        options.append(false).write(true).truncate(true);
        let mut file = options.open(&next)?;
        file.write_all(link)?;
        file.sync_data()?;
        std::fs::rename(&next, &self.path)?;
        sync_dir(&self.path)?;
        self.file = open_options().open(&self.path)?;
        self.len = u64::try_from(link.len()).unwrap_or(u64::MAX);
        self.started = Some(SystemTime::now());
        self.link_len = Some(self.len);
        Ok(())
    }

    /// Deletes the oldest rotated files past `keep_files`.
    fn prune(&self) {
        if self.rotation.keep_files == 0 {
            return;
        }
        let files = match rotated_files(&self.path) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "listing rotated audit files failed");
                return;
            }
        };
        let extra = files.len().saturating_sub(self.rotation.keep_files);
        for (_, old) in files.iter().take(extra) {
            match std::fs::remove_file(old) {
                Ok(()) => tracing::info!(file = %old.display(), "rotated audit file deleted (audit.keep_files)"),
                Err(e) => tracing::error!(file = %old.display(), error = %e, "deleting a rotated audit file failed"),
            }
        }
    }
}
