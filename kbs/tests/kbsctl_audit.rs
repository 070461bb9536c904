//! `kbsctl audit verify` on a rotated audit log: the directory or the
//! files verify as one chain (exit 0); a missing, reordered or truncated
//! file, or a removed tail past the logged head, exits 2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Output};

use kbs::audit::{AuditKey, AuditLog, Event, Rotation, rotated_path};

fn kbsctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kbsctl")).args(args).output().unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A keyed log rotated every 1,500 bytes, with 25 release records; its
/// logged head (count and MAC).
fn rotated_log(dir: &Path) -> (usize, String) {
    std::fs::write(dir.join("audit.key"), hex::encode([6u8; 32])).unwrap();
    let rotation = Rotation { max_file_bytes: Some(1500), ..Rotation::default() };
    let log = AuditLog::open(&dir.join("audit.jsonl"), "r0", Some(AuditKey::new(&[6; 32])), rotation).unwrap();
    for i in 0..25 {
        let event = Event {
            decision: "allow",
            attestation_id: Some(format!("id-{i}")),
            ..Event::new("release", "127.0.0.1:1".into())
        };
        log.record(&event).unwrap();
    }
    log.flush().unwrap();
    let head = log.head(true).unwrap();
    (head.count, hex::encode(head.head))
}

#[test]
fn a_rotated_log_verifies_as_one_chain_and_a_missing_file_shows() {
    let dir = tempfile::tempdir().unwrap();
    let (count, head) = rotated_log(dir.path());
    let key = dir.path().join("audit.key").display().to_string();
    let log = dir.path().join("audit.jsonl");
    let d = dir.path().display().to_string();
    let (n, file) = (count.to_string(), log.display().to_string());

    let out = kbsctl(&["audit", "verify", &d, "--key", &key, "--expect-count", &n, "--expect-head", &head]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("ok: {count} records in files 1 to")), "{}", text(&out.stdout));

    // The same files named one by one, in any order.
    let second = rotated_path(&log, 2).display().to_string();
    let first = rotated_path(&log, 1).display().to_string();
    let mut named =
        vec!["audit".to_owned(), "verify".into(), "--key".into(), key.clone(), file.clone(), second.clone()];
    let mut rest: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p != &file && p != &second && !p.ends_with("audit.key"))
        .collect();
    named.append(&mut rest);
    let out = kbsctl(&named.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A gap between the files given.
    let out = kbsctl(&["--output", "json", "audit", "verify", &file, &second, "--key", &key]);
    assert_eq!(out.status.code(), Some(2), "file 2 alone does not link to the current file: {}", text(&out.stdout));

    // File 2 missing.
    std::fs::rename(&second, dir.path().join("elsewhere")).unwrap();
    let out = kbsctl(&["audit", "verify", &first, &file, "--key", &key]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("missing or out of order"), "{}", text(&out.stderr));
    std::fs::rename(dir.path().join("elsewhere"), &second).unwrap();

    // The current file's tail removed: only the head shows it.
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, lines[..lines.len() - 1].concat()).unwrap();
    let out = kbsctl(&["audit", "verify", &d, "--key", &key]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = kbsctl(&["audit", "verify", &d, "--key", &key, "--expect-count", &n, "--expect-head", &head]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("truncated"), "{}", text(&out.stderr));
}

/// A log whose current file a crash left ending in part of a record: once
/// the broker's open path has cut it (and recorded the cut), the directory,
/// with the kept-aside bytes in it, verifies as one chain through the
/// logged head, with and without the key.
#[test]
fn a_repaired_torn_line_verifies() {
    let dir = tempfile::tempdir().unwrap();
    rotated_log(dir.path());
    let log = dir.path().join("audit.jsonl");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(br#"{"time":"2026-01-01T00:00:00Z","replica":"r0","action":"rel"#);
    std::fs::write(&log, &bytes).unwrap();
    let d = dir.path().display().to_string();
    let key = dir.path().join("audit.key").display().to_string();
    let out = kbsctl(&["audit", "verify", &d, "--key", &key]);
    assert_eq!(out.status.code(), Some(2), "torn: {}", text(&out.stdout));

    let rotation = Rotation { max_file_bytes: Some(1500), ..Rotation::default() };
    let opened = AuditLog::open(&log, "r0", Some(AuditKey::new(&[6; 32])), rotation).unwrap();
    opened.flush().unwrap();
    let head = opened.head(true).unwrap();
    drop(opened);
    let (n, head) = (head.count.to_string(), hex::encode(head.head));
    let out = kbsctl(&["audit", "verify", &d, "--key", &key, "--expect-count", &n, "--expect-head", &head]);
    assert_eq!(out.status.code(), Some(0), "{} {}", text(&out.stdout), text(&out.stderr));
    let out = kbsctl(&["audit", "verify", &d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let kept: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.jsonl.torn-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("\"action\":\"audit.repair\""));
}
