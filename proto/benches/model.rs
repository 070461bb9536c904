//! Throughput of the encrypted model-file format: streaming encryption and
//! decryption with one thread and with every core, and a 4 KiB random read through `ModelReader` (one chunk
//! authenticated per read), each beside the floor: aws-lc-rs's raw
//! AES-256-GCM over the same bytes, measured before and after. Output goes to `io::sink()`, so the figures are
//! the format's own cost (reading from memory, sealing, framing), not the
//! page faults of a fresh output buffer. `cargo bench -p kbs-proto --bench
//! model`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::io::{Cursor, sink};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kbs_proto::model::{self, DecryptOptions, EncryptOptions, ModelKey, ModelReader};

const LEN: usize = 32 << 20;

fn bench(c: &mut Criterion) {
    let key = ModelKey::new("models/bench/key", 1, &[7; 32]).unwrap();
    let plain: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);

    let mut group = c.benchmark_group("model");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(LEN as u64));
    // The floor: aws-lc-rs's raw AES-256-GCM over the same bytes in the same
    // 1 MiB pieces, in place, with nothing else (no key schedule per chunk,
    // no framing, no copies). Measured before and after the format's runs,
    // so a machine whose speed drifts during the run shows as a spread.
    let floor = |group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str| {
        let key = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &[9; 32]).unwrap(),
        );
        let mut data = plain.clone();
        group.bench_function(name, |b| {
            b.iter(|| {
                for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
                    let mut nonce = [0u8; 12];
                    nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
                    let tag = key.seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), chunk).unwrap();
                    black_box(tag.as_ref()[0]);
                }
            })
        });
    };
    floor(&mut group, "floor_aes256gcm_32MiB_before");
    for threads in [1, cores] {
        let opts = EncryptOptions { threads, ..EncryptOptions::default() };
        group.bench_function(format!("encrypt_32MiB_{threads}_threads"), |b| {
            b.iter(|| {
                black_box(model::encrypt(&mut Cursor::new(&plain), LEN as u64, &mut sink(), &key, &opts).unwrap())
            })
        });
    }
    let mut file = Vec::new();
    model::encrypt(&mut Cursor::new(&plain), LEN as u64, &mut file, &key, &EncryptOptions::default()).unwrap();
    for threads in [1, cores] {
        let opts = DecryptOptions { threads };
        group.bench_function(format!("decrypt_32MiB_{threads}_threads"), |b| {
            b.iter(|| black_box(model::decrypt_with(&mut Cursor::new(&file), &mut sink(), &key, &opts).unwrap()))
        });
    }
    floor(&mut group, "floor_aes256gcm_32MiB_after");
    group.throughput(Throughput::Bytes(4096));
    let mut reader = ModelReader::open(Cursor::new(file.clone()), &key).unwrap();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 4096];
    group.bench_function("read_at_4KiB_uncached", |b| {
        b.iter(|| {
            // A different chunk each time, so every read authenticates one.
            offset = (offset + (1 << 20) + 4096) % (LEN as u64 - 4096);
            black_box(reader.read_at(offset, &mut buf).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
