//! End-to-end model decryption: the operator encrypts a model directory
//! under a broker secret; a simulated guest attests once, receives every key
//! the headers name and decrypts the tree; tampering, a rotated key without
//! a rewrap, and a guest the policy refuses all leave no plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use attester_client::client::{ClientConfig, KbsClient};
use attester_client::evidence::GpuEvidenceSource;
use attester_client::model::{DecryptOptions, Error, decrypt_models};
use attester_client::simulated::{Generation, SimulatedGpus, SimulatedSnp};
use kbs_proto::model::{self, EncryptOptions, Header, ModelKey};
use kbs_proto::v1::PutSecretRequest;
use sha2::{Digest, Sha256};

#[path = "support/app.rs"]
mod app;

use app::TestApp;

const MEASUREMENT: [u8; 48] = [0x5a; 48];
const WEIGHTS_KEY: &str = "models/llama/key";
const TOKENIZER_KEY: &str = "models/llama/tokenizer-key";

fn guest(measurement: [u8; 48]) -> Arc<SimulatedSnp> {
    Arc::new(SimulatedSnp::new(Generation::Genoa).measurement(measurement))
}

async fn put(app: &TestApp, name: &str, value: &[u8]) -> u64 {
    let req = PutSecretRequest {
        name: name.into(),
        value: value.to_vec(),
        allowed_measurements: vec![hex::encode(MEASUREMENT)],
        ..Default::default()
    };
    app.admin().await.put_secret(app.authed(req)).await.unwrap().into_inner().version
}

/// Encrypts `plain` (relative path, bytes) into `dir`, each under its key.
fn encrypt_tree(dir: &Path, files: &[(&str, Vec<u8>, &ModelKey)]) {
    for (rel, plain, key) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut out = Vec::new();
        let opts = EncryptOptions { chunk_size: 64 * 1024, threads: 2 };
        model::encrypt(&mut Cursor::new(plain), plain.len() as u64, &mut out, key, &opts).unwrap();
        std::fs::write(path, out).unwrap();
    }
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// No file anywhere under `dir` (directories may remain).
fn is_empty_dir(dir: &Path) -> bool {
    !dir.exists()
        || std::fs::read_dir(dir).unwrap().all(|e| {
            let e = e.unwrap();
            e.file_type().unwrap().is_dir() && is_empty_dir(&e.path())
        })
}

async fn decrypt(app: &TestApp, measurement: [u8; 48], input: &Path, out: &Path) -> Result<usize, Error> {
    decrypt_with(app, measurement, input, out, true).await
}

async fn decrypt_with_gpus(app: &TestApp, gpus: usize, input: &Path, out: &Path) -> Result<usize, Error> {
    let config = ClientConfig::new(app.guest_url.clone(), app.ca.clone());
    let mut client = KbsClient::connect(&config).await.unwrap();
    let gpus: Option<Arc<dyn GpuEvidenceSource>> = match gpus {
        0 => None,
        n => Some(Arc::new(SimulatedGpus::new(n).unwrap())),
    };
    let options = DecryptOptions { allow_persistent_disk: true, gpus, threads: None };
    decrypt_models(&mut client, guest(MEASUREMENT), input, out, &options).await.map(|d| d.files.len())
}

async fn decrypt_with(
    app: &TestApp,
    measurement: [u8; 48],
    input: &Path,
    out: &Path,
    allow_persistent_disk: bool,
) -> Result<usize, Error> {
    let config = ClientConfig::new(app.guest_url.clone(), app.ca.clone());
    let mut client = KbsClient::connect(&config).await.unwrap();
    let options = DecryptOptions { allow_persistent_disk, gpus: None, threads: None };
    decrypt_models(&mut client, guest(measurement), input, out, &options).await.map(|d| d.files.len())
}

#[tokio::test]
async fn a_key_that_needs_gpus_decrypts_only_with_them() {
    let app = TestApp::start().await;
    let key = ModelKey::generate(WEIGHTS_KEY, 1).unwrap();
    let req = PutSecretRequest {
        name: WEIGHTS_KEY.into(),
        value: key.expose_bytes().to_vec(),
        allowed_measurements: vec![hex::encode(MEASUREMENT)],
        labels: [("gpus".to_owned(), "8".to_owned())].into(),
        ..Default::default()
    };
    app.admin().await.put_secret(app.authed(req)).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let plain = b"weights for eight GPUs".to_vec();
    let enc = work.path().join("enc");
    encrypt_tree(&enc, &[("model.safetensors", plain.clone(), &key)]);

    for gpus in [0, 7] {
        let out = work.path().join(format!("out-{gpus}"));
        let err = decrypt_with_gpus(&app, gpus, &enc, &out).await.unwrap_err();
        let Error::Fetch(attester_client::client::Error::Refused { reason, .. }) = &err else { panic!("{err:?}") };
        assert_eq!(reason, "gpu_count_mismatch");
        assert!(is_empty_dir(&out));
    }
    let out = work.path().join("out-8");
    assert_eq!(decrypt_with_gpus(&app, 8, &enc, &out).await.unwrap(), 1);
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), plain);
}

#[tokio::test]
async fn a_guest_decrypts_a_model_tree_and_tampering_leaves_nothing() {
    let app = TestApp::start().await;
    let weights_key = ModelKey::generate(WEIGHTS_KEY, 1).unwrap();
    let tokenizer_key = ModelKey::generate(TOKENIZER_KEY, 1).unwrap();
    assert_eq!(put(&app, WEIGHTS_KEY, weights_key.expose_bytes()).await, 1);
    assert_eq!(put(&app, TOKENIZER_KEY, tokenizer_key.expose_bytes()).await, 1);

    let work = tempfile::tempdir().unwrap();
    let plain_weights: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let files = [
        ("config.json", br#"{"hidden": 64}"#.to_vec(), &weights_key),
        ("shards/model-00001-of-00001.safetensors", plain_weights.clone(), &weights_key),
        ("tokenizer.json", b"{\"vocab\": []}".to_vec(), &tokenizer_key),
    ];
    let enc = work.path().join("enc");
    encrypt_tree(&enc, &files);

    let out = work.path().join("out");
    assert_eq!(decrypt(&app, MEASUREMENT, &enc, &out).await.unwrap(), 3);
    for (rel, plain, _) in &files {
        assert_eq!(sha256(&out.join(rel)), hex::encode(Sha256::digest(plain)), "{rel}");
    }

    // One flipped bit in the last chunk of the weights: refused with the
    // chunk's index, and no plaintext of any file is left.
    let tampered = work.path().join("tampered");
    encrypt_tree(&tampered, &files);
    let weights = tampered.join(files[1].0);
    let mut bytes = std::fs::read(&weights).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x04;
    std::fs::write(&weights, bytes).unwrap();
    let out2 = work.path().join("out2");
    let err = decrypt(&app, MEASUREMENT, &tampered, &out2).await.unwrap_err();
    assert!(matches!(&err, Error::Model { source: model::Error::ChunkAuthentication { index: 3 }, .. }), "{err:?}");
    assert!(is_empty_dir(&out2));

    // A guest the secret does not allow gets nothing.
    let out3 = work.path().join("out3");
    let err = decrypt(&app, [0x77; 48], &enc, &out3).await.unwrap_err();
    assert!(matches!(&err, Error::Fetch(e) if e.reason() == Some("measurement_not_allowed")), "{err:?}");
    assert!(is_empty_dir(&out3));
}

#[tokio::test]
async fn a_rotated_key_needs_a_rewrap() {
    let app = TestApp::start().await;
    let v1 = ModelKey::generate(WEIGHTS_KEY, 1).unwrap();
    put(&app, WEIGHTS_KEY, v1.expose_bytes()).await;
    let work = tempfile::tempdir().unwrap();
    let enc = work.path().join("enc");
    let plain = b"weights".repeat(10_000);
    encrypt_tree(&enc, &[("w.bin", plain.clone(), &v1)]);

    // The broker now serves version 2; the header still names version 1.
    let v2 = ModelKey::generate(WEIGHTS_KEY, 2).unwrap();
    assert_eq!(put(&app, WEIGHTS_KEY, v2.expose_bytes()).await, 2);
    let out = work.path().join("out");
    let err = decrypt(&app, MEASUREMENT, &enc, &out).await.unwrap_err();
    assert!(
        matches!(&err, Error::Model { source: model::Error::WrongSecretVersion { header: 1, key: 2 }, .. }),
        "{err:?}"
    );
    assert!(is_empty_dir(&out));

    // Rewrap the header (the body is untouched), then the guest succeeds.
    let path = enc.join("w.bin");
    let bytes = std::fs::read(&path).unwrap();
    let (header, len) = Header::parse(&bytes).unwrap();
    let rewrapped = header.rewrap(&v1, &v2).unwrap();
    std::fs::write(&path, [&rewrapped.to_bytes()[..], &bytes[len..]].concat()).unwrap();
    let out = work.path().join("out-after");
    assert_eq!(decrypt(&app, MEASUREMENT, &enc, &out).await.unwrap(), 1);
    assert_eq!(std::fs::read(out.join("w.bin")).unwrap(), plain);
}

#[tokio::test]
async fn a_persistent_output_is_refused_before_attesting() {
    let app = TestApp::start().await;
    let key = ModelKey::generate(WEIGHTS_KEY, 1).unwrap();
    put(&app, WEIGHTS_KEY, key.expose_bytes()).await;
    let work = tempfile::tempdir().unwrap();
    let enc = work.path().join("enc");
    encrypt_tree(&enc, &[("w.bin", b"weights".to_vec(), &key)]);
    let on_memory = attester_client::model::fs_type(work.path()).is_ok_and(attester_client::model::is_memory_fs);
    let out = work.path().join("out");
    let result = decrypt_with(&app, MEASUREMENT, &enc, &out, false).await;
    if on_memory {
        // The temporary directory is on tmpfs here: allowed.
        assert_eq!(result.unwrap(), 1);
        return;
    }
    assert!(matches!(result, Err(Error::PersistentOutput { .. })), "{result:?}");
    assert!(is_empty_dir(&out));
    // No release was asked for.
    assert!(!app.audit_log().contains("\"action\":\"release\""), "{}", app.audit_log());
    // A memory-backed output is accepted without the override, where there is one.
    let shm = Path::new("/dev/shm");
    if attester_client::model::fs_type(shm).is_ok_and(attester_client::model::is_memory_fs) {
        let out = tempfile::tempdir_in(shm).unwrap();
        assert_eq!(decrypt_with(&app, MEASUREMENT, &enc, out.path(), false).await.unwrap(), 1);
        assert_eq!(std::fs::read(out.path().join("w.bin")).unwrap(), b"weights");
    }
}

/// A safetensors file: `tensors` (name, F32 element count) in order, data
/// byte `i` being `i mod 251`.
fn safetensors_plain(tensors: &[(&str, u64)]) -> Vec<u8> {
    let mut at = 0;
    let entries: Vec<String> = tensors
        .iter()
        .map(|(name, n)| {
            let e = format!(r#""{name}":{{"dtype":"F32","shape":[{n}],"data_offsets":[{at},{}]}}"#, at + 4 * n);
            at += 4 * n;
            e
        })
        .collect();
    let json = format!("{{{}}}", entries.join(","));
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend((0..at).map(|i| (i % 251) as u8));
    out
}

#[tokio::test]
async fn a_safetensors_model_decrypts_and_a_swapped_tensor_chunk_leaves_nothing() {
    let app = TestApp::start().await;
    let key = ModelKey::generate(WEIGHTS_KEY, 1).unwrap();
    put(&app, WEIGHTS_KEY, key.expose_bytes()).await;
    let work = tempfile::tempdir().unwrap();
    let plain = safetensors_plain(&[("embed", 40_000), ("layer.0", 40_000), ("norm", 10)]);
    let mut file = std::io::Cursor::new(Vec::new());
    let opts = EncryptOptions { chunk_size: 64 * 1024, threads: 2 };
    model::encrypt_safetensors(&mut Cursor::new(&plain), plain.len() as u64, &mut file, &key, &opts).unwrap();
    let file = file.into_inner();
    let enc = work.path().join("enc");
    std::fs::create_dir_all(&enc).unwrap();
    std::fs::write(enc.join("model.safetensors"), &file).unwrap();

    // A partial file left by a killed earlier run is replaced, never output.
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("model.safetensors.partial"), b"stale").unwrap();
    assert_eq!(decrypt(&app, MEASUREMENT, &enc, &out).await.unwrap(), 1);
    assert_eq!(sha256(&out.join("model.safetensors")), hex::encode(Sha256::digest(&plain)));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);

    // The first chunks of two tensors swapped (ciphertext and tags).
    let header = Header::parse(&file).unwrap().0;
    let index = header.tensor_index().unwrap();
    let tags_at = header.encoded_len();
    let body_at = (tags_at + 16 * index.chunk_count() as usize).next_multiple_of(4096);
    let second = index.tensor("layer.0").unwrap();
    let (b, _) = second.data_offsets();
    let n = 64 * 1024;
    let (x, y) = (body_at, body_at + b as usize);
    let mut bad = file.clone();
    bad[x..x + n].copy_from_slice(&file[y..y + n]);
    bad[y..y + n].copy_from_slice(&file[x..x + n]);
    let second_chunk = 3; // embed has 160000 bytes: chunks 0, 1, 2
    let (tx, ty) = (tags_at, tags_at + 16 * second_chunk);
    bad[tx..tx + 16].copy_from_slice(&file[ty..ty + 16]);
    bad[ty..ty + 16].copy_from_slice(&file[tx..tx + 16]);
    let tampered = work.path().join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    std::fs::write(tampered.join("model.safetensors"), bad).unwrap();
    let out2 = work.path().join("out2");
    let err = decrypt(&app, MEASUREMENT, &tampered, &out2).await.unwrap_err();
    assert!(
        matches!(&err, Error::Model { source: model::Error::TensorChunkAuthentication { tensor, index: 0 }, .. } if tensor == "embed"),
        "{err:?}"
    );
    assert!(is_empty_dir(&out2));
}
