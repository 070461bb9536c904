//! `kbsctl model encrypt|inspect|rewrap`: offline with key files, and with
//! `--generate` against a real broker on loopback (the key is uploaded and
//! the headers name the version the broker assigned).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use kbs_proto::model::{self, Error, ModelKey};

mod support;

fn kbsctl(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kbsctl"))
        .env_clear()
        .env("HOME", home)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn decrypt_file(path: &Path, key: &ModelKey) -> Result<Vec<u8>, Error> {
    let file = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    model::decrypt(&mut Cursor::new(file), &mut out, key).map(|_| out)
}

fn make_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"layers": 2}"#).unwrap();
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("shards/model-00001.safetensors"), &weights).unwrap();
    std::fs::write(dir.join("shards/empty.bin"), b"").unwrap();
}

#[test]
fn encrypt_inspect_rewrap_offline_with_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    make_model(&home.join("plain"));
    let key_file = home.join("k1.hex");
    std::fs::write(&key_file, format!("{}\n", "11".repeat(32))).unwrap();
    let enc = home.join("enc");
    let out = kbsctl(
        &[
            "model",
            "encrypt",
            "--secret",
            "models/demo/key",
            "--version",
            "3",
            "--key-file",
            key_file.to_str().unwrap(),
            "--chunk-kib",
            "64",
            // The weights are not a real safetensors file: opaque layout.
            "--whole",
            home.join("plain").to_str().unwrap(),
            enc.to_str().unwrap(),
        ],
        home,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Not a terminal: no progress lines.
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("encrypted 3 file(s)"), "{}", text(&out.stdout));
    let k1 = ModelKey::new("models/demo/key", 3, &[0x11; 32]).unwrap();
    for rel in ["config.json", "shards/model-00001.safetensors", "shards/empty.bin"] {
        assert_eq!(decrypt_file(&enc.join(rel), &k1).unwrap(), std::fs::read(home.join("plain").join(rel)).unwrap());
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(enc.join("shards")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let inspect = kbsctl(&["--output", "json", "model", "inspect", enc.to_str().unwrap()], home);
    assert_eq!(inspect.status.code(), Some(0), "{}", text(&inspect.stderr));
    let rows: serde_json::Value = serde_json::from_str(&text(&inspect.stdout)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let weights = &rows[2];
    assert_eq!(weights["secret"], "models/demo/key");
    assert_eq!(weights["version"], 3);
    assert_eq!(weights["chunk_size"], 65536);
    assert_eq!(weights["chunks"], 5);
    assert_eq!(weights["plaintext_bytes"], 300_000);
    assert_eq!(weights["status"], "ok");

    // Rewrap with the wrong old key: refused, nothing changes.
    let weights_path = enc.join("shards/model-00001.safetensors");
    let before = std::fs::read(&weights_path).unwrap();
    let k2_file = home.join("k2.bin");
    std::fs::write(&k2_file, [0x22u8; 32]).unwrap();
    let wrong = kbsctl(
        &[
            "model",
            "rewrap",
            "--key-file",
            k2_file.to_str().unwrap(),
            "--new-key-file",
            k2_file.to_str().unwrap(),
            "--to-version",
            "4",
            enc.to_str().unwrap(),
        ],
        home,
    );
    assert_eq!(wrong.status.code(), Some(2));
    assert!(text(&wrong.stderr).contains("wrong key"), "{}", text(&wrong.stderr));
    assert_eq!(std::fs::read(&weights_path).unwrap(), before);

    let rewrap = kbsctl(
        &[
            "model",
            "rewrap",
            "--key-file",
            key_file.to_str().unwrap(),
            "--new-key-file",
            k2_file.to_str().unwrap(),
            "--to-version",
            "4",
            enc.to_str().unwrap(),
        ],
        home,
    );
    assert_eq!(rewrap.status.code(), Some(0), "{}", text(&rewrap.stderr));
    let after = std::fs::read(&weights_path).unwrap();
    let (header, hl) = model::Header::parse(&after).unwrap();
    assert_eq!(header.secret_version(), 4);
    assert_eq!(&after[hl..], &before[hl..], "the body is unchanged");
    let k2 = ModelKey::new("models/demo/key", 4, &[0x22; 32]).unwrap();
    assert_eq!(
        decrypt_file(&weights_path, &k2).unwrap(),
        std::fs::read(home.join("plain/shards/model-00001.safetensors")).unwrap()
    );
    assert!(matches!(decrypt_file(&weights_path, &k1), Err(Error::WrongSecretVersion { header: 4, key: 3 })));

    // A damaged file is reported by inspect with exit 2.
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(enc.join("config.json")).unwrap().write_all(b"x").unwrap();
    std::fs::write(enc.join("shards/empty.bin"), b"{}").unwrap();
    let bad = kbsctl(&["model", "inspect", enc.to_str().unwrap()], home);
    assert_eq!(bad.status.code(), Some(2));
    let shown = text(&bad.stdout);
    assert!(shown.contains("trailing data") && shown.contains("header is truncated"), "{shown}");
}

#[test]
fn encrypt_refuses_bad_keys_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    std::fs::write(home.join("in"), b"x").unwrap();
    std::fs::write(home.join("short.key"), b"0123").unwrap();
    let base = ["model", "encrypt", "--secret", "m/k"];
    let out = kbsctl(
        &[
            &base[..],
            &[
                "--key-file",
                home.join("short.key").to_str().unwrap(),
                home.join("in").to_str().unwrap(),
                home.join("out").to_str().unwrap(),
            ],
        ]
        .concat(),
        home,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("32 raw bytes"), "{}", text(&out.stderr));
    // Neither --key-file nor --generate.
    let out = kbsctl(&[&base[..], &[home.join("in").to_str().unwrap(), "o"]].concat(), home);
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(home.join("ok.key"), [1u8; 32]).unwrap();
    // A single file into an existing directory keeps its name.
    std::fs::create_dir(home.join("dir")).unwrap();
    let out = kbsctl(
        &[
            &base[..],
            &["--key-file", home.join("ok.key").to_str().unwrap(), home.join("in").to_str().unwrap()],
            &[home.join("dir").to_str().unwrap()],
        ]
        .concat(),
        home,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let key = ModelKey::new("m/k", 1, &[1; 32]).unwrap();
    assert_eq!(decrypt_file(&home.join("dir/in"), &key).unwrap(), b"x");
    let out = kbsctl(
        &[
            &base[..],
            &[
                "--key-file",
                home.join("ok.key").to_str().unwrap(),
                "--chunk-kib",
                "1",
                home.join("in").to_str().unwrap(),
                "o",
            ],
        ]
        .concat(),
        home,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!home.join("out").exists());
}

async fn start_broker(dir: &Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let files = kbs::dev::init(
        dir,
        &kbs::dev::DevOptions {
            guest_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
    )
    .unwrap();
    // An auditor may read metadata but not write secrets.
    let mut text = std::fs::read_to_string(&files.config).unwrap();
    text.push_str(&support::token_entry("aud", "auditor-token", "auditor"));
    std::fs::write(&files.config, text).unwrap();
    std::fs::write(dir.join("auditor.token"), "auditor-token").unwrap();
    support::serve(&files.config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_uploads_the_key_and_records_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    let (url, _stop) = start_broker(&home).await;
    make_model(&home.join("plain"));
    let ca = home.join("tls/ca.pem");
    let token = home.join("admin.token");
    let conn = ["--url", &url, "--ca", ca.to_str().unwrap(), "--token-file", token.to_str().unwrap()];
    let run = |args: Vec<String>| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kbsctl(&args, &home)
        })
    };
    let owned = |extra: &[&str]| conn.iter().chain(extra).map(|s| (*s).to_owned()).collect::<Vec<_>>();

    for (round, expected) in [(1, 1u64), (2, 2)] {
        let out_dir = home.join(format!("enc{round}"));
        let out = run(owned(&[
            "--output",
            "json",
            "model",
            "encrypt",
            "--secret",
            "models/gen/key",
            "--generate",
            "--whole",
            home.join("plain").to_str().unwrap(),
            out_dir.to_str().unwrap(),
        ]))
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let summary: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
        assert_eq!(summary["version"], expected);
        assert_eq!(summary["uploaded"], true);
        let header = model::Header::read_from(&mut std::fs::File::open(out_dir.join("config.json")).unwrap()).unwrap();
        assert_eq!((header.secret_name(), header.secret_version()), ("models/gen/key", expected));
        let show = run(owned(&["--output", "json", "secret", "show", "models/gen/key"])).await.unwrap();
        let meta: serde_json::Value = serde_json::from_str(&text(&show.stdout)).unwrap();
        assert_eq!((meta[0]["version"].as_u64(), meta[0]["size"].as_u64()), (Some(expected), Some(32)));
    }

    // A --version that the upload cannot create: refused, nothing written.
    let out = run(owned(&[
        "model",
        "encrypt",
        "--secret",
        "models/gen/key",
        "--generate",
        "--version",
        "7",
        home.join("plain").to_str().unwrap(),
        home.join("enc-bad").to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!home.join("enc-bad").exists());

    // The upload is refused (an auditor may not write): exit 2, and no
    // output or temporary file is left, since nothing could decrypt it.
    let auditor = home.join("auditor.token");
    let out = run(vec![
        "--url".into(),
        url.clone(),
        "--ca".into(),
        ca.display().to_string(),
        "--token-file".into(),
        auditor.display().to_string(),
        "model".into(),
        "encrypt".into(),
        "--secret".into(),
        "models/gen/key".into(),
        "--generate".into(),
        "--whole".into(),
        home.join("plain").display().to_string(),
        home.join("enc-refused").display().to_string(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("permission_denied"), "{}", text(&out.stderr));
    let left: Vec<_> = walk(&home.join("enc-refused"));
    assert!(left.is_empty(), "{left:?}");
}

/// Every file under `dir` (none if it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() { walk(&path) } else { vec![path] }
        })
        .collect()
}
