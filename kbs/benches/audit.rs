//! What an audit record costs when it is written through to the disk, one
//! caller at a time and with many callers at once (docs/performance.md,
//! "Writing the audit record through to the disk").
//!
//! `record/synced_1` is the latency of one synced record; `record/synced_64`
//! is 64 threads recording at once, reported per record, so its inverse is
//! the most records (releases) one audit log makes durable per second. The
//! file is in `KBS_BENCH_DIR` (default: the system's temporary directory),
//! which should be on the disk the broker would use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use kbs::audit::{AuditKey, AuditLog, Event, SecretRef};

fn event() -> Event {
    Event {
        decision: "allow",
        attestation_id: Some("0123456789abcdef0123456789abcdef".into()),
        tee: Some("snp"),
        measurement: Some("ab".repeat(48)),
        claims_digest: Some("cd".repeat(32)),
        secrets: vec![SecretRef { name: "models/llama/key".into(), version: Some(3) }],
        ..Event::new("release", "127.0.0.1:40000".into())
    }
}

fn log() -> (tempfile::TempDir, Arc<AuditLog>) {
    let dir = match std::env::var_os("KBS_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let key = Some(AuditKey::new(&[5; 32]));
    let log = Arc::new(AuditLog::file(&dir.path().join("audit.jsonl"), "bench", key).unwrap().with_sync(true));
    (dir, log)
}

/// `threads` threads share `iters` synced records; the time for all.
fn concurrent(log: &Arc<AuditLog>, threads: u64, iters: u64) -> Duration {
    let event = event();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let n = iters / threads + u64::from(t < iters % threads);
            let (log, event) = (Arc::clone(log), event.clone());
            s.spawn(move || {
                for _ in 0..n {
                    log.record(&event).unwrap();
                }
            });
        }
    });
    started.elapsed()
}

fn record(c: &mut Criterion) {
    let (_dir, log) = log();
    let mut group = c.benchmark_group("record");
    group.sample_size(20);
    for threads in [1, 64] {
        group.bench_function(format!("synced_{threads}"), |b| b.iter_custom(|iters| concurrent(&log, threads, iters)));
    }
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
