//! `kbsctl model export-kserve`: the outputs are read back by a compact-JWE
//! decryption written here from RFC 7516 / RFC 7518 alone (A256KW key
//! unwrap, A256GCM with the encoded protected header as AAD), as KServe's
//! storage initializer reads them; tampering is refused; keys that KServe
//! would not use as raw bytes, oversized files and names the CoCo endpoint
//! cannot serve are refused with nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::key_wrap::{AES_256, KeyEncryptionKey, KeyWrap};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A model key that is not valid UTF-8 (0xff never occurs in UTF-8).
const KEY: [u8; 32] = [0xff; 32];

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

/// Decrypts one compact JWE (`alg` A256KW, `enc` A256GCM) under `kek`.
fn jwe_decrypt(compact: &str, kek: &[u8; 32]) -> Result<Vec<u8>, String> {
    let parts: Vec<&str> = compact.split('.').collect();
    let [header_b64, ek, iv, ct, tag] = parts.as_slice() else {
        return Err(format!("{} parts, not 5", parts.len()));
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|e| e.to_string());
    let header: serde_json::Value = serde_json::from_slice(&decode(header_b64)?).map_err(|e| e.to_string())?;
    if header["alg"] != "A256KW" || header["enc"] != "A256GCM" {
        return Err(format!("unexpected header {header}"));
    }
    let mut cek = [0u8; 32];
    let unwrapped = KeyEncryptionKey::new(&AES_256, kek)
        .unwrap()
        .unwrap(&decode(ek)?, &mut cek)
        .map_err(|_| "key unwrap failed".to_owned())?;
    if unwrapped.len() != 32 {
        return Err("content key is not 256 bits".into());
    }
    let iv: [u8; 12] = decode(iv)?.try_into().map_err(|_| "IV is not 96 bits".to_owned())?;
    let mut sealed = decode(ct)?;
    let tag = decode(tag)?;
    if tag.len() != 16 {
        return Err("tag is not 128 bits".into());
    }
    sealed.extend_from_slice(&tag);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).unwrap());
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(header_b64.as_bytes()), &mut sealed)
        .map_err(|_| "authentication failed".to_owned())?;
    Ok(plain.to_vec())
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { pending.push(p) } else { out.push(p.strip_prefix(dir).unwrap().to_path_buf()) }
        }
    }
    out.sort();
    out
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("model.key");
    std::fs::write(&key_file, KEY).unwrap();
    (dir, key_file)
}

#[test]
fn a_directory_and_a_file_are_exported_and_decrypt_with_an_independent_reader() {
    let (dir, key_file) = setup();
    let home = dir.path();
    let plain = home.join("plain");
    std::fs::create_dir_all(plain.join("shards")).unwrap();
    let weights: Vec<u8> = (0..300_001u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(plain.join("config.json"), br#"{"layers": 2}"#).unwrap();
    std::fs::write(plain.join("shards/model.safetensors"), &weights).unwrap();
    std::fs::write(plain.join("shards/empty.bin"), b"").unwrap();
    let out_dir = home.join("kserve");
    let out = kbsctl(
        &[
            "--output",
            "json",
            "model",
            "export-kserve",
            "--secret",
            "models/demo/key",
            "--key-file",
            key_file.to_str().unwrap(),
            plain.to_str().unwrap(),
            out_dir.to_str().unwrap(),
        ],
        home,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["plaintext_bytes"], 300_001 + 13);
    assert_eq!(
        files_under(&out_dir),
        vec![
            PathBuf::from("config.json.jwe"),
            PathBuf::from("shards/empty.bin.jwe"),
            PathBuf::from("shards/model.safetensors.jwe")
        ]
    );
    for (rel, expected) in [
        ("config.json", br#"{"layers": 2}"#.to_vec()),
        ("shards/empty.bin", Vec::new()),
        ("shards/model.safetensors", weights.clone()),
    ] {
        let compact = std::fs::read_to_string(out_dir.join(format!("{rel}.jwe"))).unwrap();
        // The protected header is exactly the one KServe writes.
        let header = URL_SAFE_NO_PAD.decode(compact.split('.').next().unwrap()).unwrap();
        assert_eq!(header, br#"{"alg":"A256KW","enc":"A256GCM"}"#);
        assert_eq!(jwe_decrypt(&compact, &KEY).unwrap(), expected, "{rel}");
        assert!(jwe_decrypt(&compact, &[0xfe; 32]).is_err(), "{rel} under another key");
    }
    // Two exports of the same file differ (fresh content key and IV).
    let single = home.join("single.jwe");
    let again = home.join("again.jwe");
    for target in [&single, &again] {
        let src = plain.join("config.json");
        let out = kbsctl(
            &[
                "model",
                "export-kserve",
                "--secret",
                "models/demo/key",
                "--key-file",
                key_file.to_str().unwrap(),
                src.to_str().unwrap(),
                target.to_str().unwrap(),
            ],
            home,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let (a, b) = (std::fs::read_to_string(&single).unwrap(), std::fs::read_to_string(&again).unwrap());
    assert_ne!(a.split('.').nth(1), b.split('.').nth(1));
    assert_ne!(a.split('.').nth(2), b.split('.').nth(2));
    assert_eq!(jwe_decrypt(&a, &KEY).unwrap(), br#"{"layers": 2}"#);
    // A single file into an existing directory keeps its name, plus `.jwe`.
    let into = home.join("into");
    std::fs::create_dir(&into).unwrap();
    let src = plain.join("shards/empty.bin");
    let out = kbsctl(
        &[
            "model",
            "export-kserve",
            "--secret",
            "models/demo/key",
            "--key-file",
            key_file.to_str().unwrap(),
            src.to_str().unwrap(),
            into.to_str().unwrap(),
        ],
        home,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(files_under(&into), vec![PathBuf::from("empty.bin.jwe")]);
}

#[test]
fn tampered_exports_are_refused_by_the_reader() {
    let (dir, key_file) = setup();
    let home = dir.path();
    let src = home.join("weights.bin");
    let plain: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    std::fs::write(&src, &plain).unwrap();
    let target = home.join("weights.bin.jwe");
    let out = kbsctl(
        &[
            "model",
            "export-kserve",
            "--secret",
            "models/demo/key",
            "--key-file",
            key_file.to_str().unwrap(),
            src.to_str().unwrap(),
            target.to_str().unwrap(),
        ],
        home,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let compact = std::fs::read_to_string(&target).unwrap();
    assert_eq!(jwe_decrypt(&compact, &KEY).unwrap(), plain);
    let parts: Vec<String> = compact.split('.').map(str::to_owned).collect();
    let flip = |part: &str, at: usize| {
        let mut bytes = URL_SAFE_NO_PAD.decode(part).unwrap();
        bytes[at] ^= 1;
        URL_SAFE_NO_PAD.encode(bytes)
    };
    let tampered = |index: usize, value: String| {
        let mut p = parts.clone();
        p[index] = value;
        p.join(".")
    };
    // Another protected header that still names the same algorithms: the
    // AAD changes, so the tag fails.
    let other_header = URL_SAFE_NO_PAD.encode(br#"{"enc":"A256GCM","alg":"A256KW"}"#);
    for (what, bad) in [
        ("header", tampered(0, other_header)),
        ("encrypted key", tampered(1, flip(&parts[1], 3))),
        ("iv", tampered(2, flip(&parts[2], 0))),
        ("first ciphertext byte", tampered(3, flip(&parts[3], 0))),
        ("last ciphertext byte", tampered(3, flip(&parts[3], plain.len() - 1))),
        ("tag", tampered(4, flip(&parts[4], 15))),
        ("truncated ciphertext", tampered(3, URL_SAFE_NO_PAD.encode(&plain[..0]))),
    ] {
        assert!(jwe_decrypt(&bad, &KEY).is_err(), "{what} accepted");
    }
}

#[test]
fn keys_sizes_and_names_kserve_cannot_use_are_refused_with_nothing_written() {
    let (dir, key_file) = setup();
    let home = dir.path();
    let src = home.join("w.bin");
    std::fs::write(&src, [1u8; 11]).unwrap();
    let out_dir = home.join("out");
    let run = |secret: &str, key: &Path, extra: &[&str]| {
        let mut args = vec!["model", "export-kserve", "--secret", secret, "--key-file", key.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[src.to_str().unwrap(), out_dir.to_str().unwrap()]);
        kbsctl(&args, home)
    };
    // 32 bytes of ASCII (as 64 hex digits): KServe would parse them as text.
    let utf8_key = home.join("utf8.key");
    std::fs::write(&utf8_key, "61".repeat(32)).unwrap();
    let out = run("models/demo/key", &utf8_key, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("valid UTF-8"), "{}", text(&out.stderr));
    // A file past the cap.
    let out = run("models/demo/key", &key_file, &["--max-file-bytes", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("larger than 10 bytes"), "{}", text(&out.stderr));
    // A name that is not a CoCo resource path.
    let out = run("models/key", &key_file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("three non-empty components"), "{}", text(&out.stderr));
    assert!(!out_dir.exists());
    // At the cap it passes.
    let out = run("models/demo/key", &key_file, &["--max-file-bytes", "11"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(jwe_decrypt(&std::fs::read_to_string(&out_dir).unwrap(), &KEY).unwrap(), [1u8; 11]);
}
