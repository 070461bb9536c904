//! `kbsctl gpu rim import` on the genuine H100 RIMs of the shared vectors
//! (read from there, never copied into the repository) and on tampered
//! copies: what verifies is written into the RIM directory under a name
//! from its version, what does not is reported and never written, and the
//! broker's loader then accepts the directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Output};

use kbs::evidence::gpu::GpuAnchors;
use kbs::evidence::gpu::rim::RimCheck;
use kbs::evidence::gpu_rims;

#[path = "../../tests/tests/support/vectors.rs"]
mod vectors;

const GOOGLE_RIMS: &str = "nvidia/google-go-nvattest-tools/testing/testdata/rim";
const DRIVER: &str = "NV_GPU_DRIVER_GH100_550.90.07.xml";
const VBIOS: &str = "NV_GPU_VBIOS_1010_0200_882_96009F0001.xml";
/// Inside the validity of the google RIMs' signer chains.
const IN_WINDOW: &str = "2025-10-24T12:00:00Z";

fn kbsctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kbsctl")).args(args).output().unwrap()
}

fn genuine(name: &str) -> String {
    let p = vectors::vectors_dir().join(GOOGLE_RIMS).join(name);
    assert!(p.exists(), "test vector {} is missing: set KBS_TEST_VECTORS", p.display());
    p.display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn genuine_rims_import_inside_their_validity_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let rims = dir.path().join("rims");
    let out = kbsctl(&[
        "gpu",
        "rim",
        "import",
        &genuine(DRIVER),
        &genuine(VBIOS),
        "--rim-dir",
        &s(&rims),
        "--time",
        IN_WINDOW,
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("imported ").count(), 2, "{stdout}");
    for (name, file) in [(DRIVER, "rim-550.90.07.xml"), (VBIOS, "rim-96.00.9F.00.01.xml")] {
        assert_eq!(std::fs::read(rims.join(file)).unwrap(), std::fs::read(genuine(name)).unwrap(), "{file}");
    }
    // Again: unchanged, exit 0.
    let again = kbsctl(&["gpu", "rim", "import", &genuine(DRIVER), "--rim-dir", &s(&rims), "--time", IN_WINDOW]);
    assert_eq!(again.status.code(), Some(0), "stderr: {}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("unchanged "));
    // What the broker loads at start-up, as of then.
    let anchors = GpuAnchors::nvidia_rim().unwrap();
    let then = time::OffsetDateTime::parse(IN_WINDOW, &time::format_description::well_known::Rfc3339).unwrap();
    let store =
        gpu_rims::load_rim_dir(&rims, &RimCheck { anchors: &anchors, now: then, accept_expired: false }).unwrap();
    assert_eq!(store.len(), 2);
    // Today their signer has expired: the broker loads them only when told to.
    let now = time::OffsetDateTime::now_utc();
    let err = gpu_rims::load_rim_dir(&rims, &RimCheck { anchors: &anchors, now, accept_expired: false }).unwrap_err();
    assert!(err.to_string().contains("rim-550.90.07.xml"), "{err}");
    assert!(gpu_rims::load_rim_dir(&rims, &RimCheck { anchors: &anchors, now, accept_expired: true }).is_ok());
}

#[test]
fn expired_signers_need_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let rims = dir.path().join("rims");
    let out = kbsctl(&["gpu", "rim", "import", &genuine(DRIVER), "--rim-dir", &s(&rims)]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains(DRIVER) && stderr(&out).contains("Signer"), "{}", stderr(&out));
    assert!(!rims.join("rim-550.90.07.xml").exists());
    let out =
        kbsctl(&["gpu", "rim", "import", &genuine(DRIVER), "--rim-dir", &s(&rims), "--accept-expired-rim-signer"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signer expired"));
    assert!(rims.join("rim-550.90.07.xml").exists());
}

#[test]
fn tampered_copies_are_refused_and_reported_each() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let text = std::fs::read_to_string(genuine(VBIOS)).unwrap();
    std::fs::copy(genuine(DRIVER), inbox.join(DRIVER)).unwrap();
    for (file, from, to) in [
        ("edited-version.xml", "colloquialVersion=\"96.00.9F.00.01\"", "colloquialVersion=\"96.00.9F.00.02\""),
        ("edited-active.xml", "active=\"True\"", "active=\"False\""),
        ("edited-signature.xml", "<ds:SignatureValue>", "<ds:SignatureValue>AAAA"),
    ] {
        assert!(text.contains(from), "{from}");
        std::fs::write(inbox.join(file), text.replacen(from, to, 1)).unwrap();
    }
    std::fs::write(inbox.join("truncated.xml"), &text[..text.len() / 2]).unwrap();
    std::fs::write(inbox.join("README"), "not a RIM, not read").unwrap();
    let rims = dir.path().join("rims");
    let out = kbsctl(&["gpu", "rim", "import", &s(&inbox), "--rim-dir", &s(&rims), "--time", IN_WINDOW]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    for file in ["edited-version.xml", "edited-active.xml", "edited-signature.xml", "truncated.xml"] {
        assert!(err.contains(&format!("refused {}", s(&inbox.join(file)))), "{file}: {err}");
    }
    assert!(err.contains("4 of 5 RIM files refused"), "{err}");
    // Only the genuine driver RIM was written.
    let written: Vec<String> =
        std::fs::read_dir(&rims).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(written, vec!["rim-550.90.07.xml".to_owned()]);

    // A different, genuine RIM for a version already present is refused.
    let forged_name = rims.join("rim-96.00.9F.00.01.xml");
    std::fs::write(&forged_name, "placeholder").unwrap();
    let out = kbsctl(&["gpu", "rim", "import", &genuine(VBIOS), "--rim-dir", &s(&rims), "--time", IN_WINDOW]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("already holds another RIM"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&forged_name).unwrap(), "placeholder");
}

#[test]
fn test_rims_need_the_insecure_test_root() {
    let dir = tempfile::tempdir().unwrap();
    let [driver, vbios] = attester_client::simulated::simulated_gpu_rims().unwrap();
    let mut files = Vec::new();
    for rim in [&driver, &vbios] {
        let path = dir.path().join(format!("{}.xml", rim.id));
        std::fs::write(&path, &rim.xml).unwrap();
        files.push(s(&path));
    }
    let rims = dir.path().join("rims");
    let mut args = vec!["gpu", "rim", "import", &files[0], &files[1], "--rim-dir"];
    let rims_s = s(&rims);
    args.push(&rims_s);
    let out = kbsctl(&args);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("not a pinned RIM root"), "{}", stderr(&out));
    let root = dir.path().join("test-rim-root.pem");
    std::fs::write(&root, attester_client::simulated::gpu_test_rim_root_pem()).unwrap();
    let root_s = s(&root);
    args.extend(["--insecure-test-rim-root", &root_s]);
    let out = kbsctl(&args);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("INSECURE"));
    assert!(rims.join("rim-570.124.06.xml").exists() && rims.join("rim-96.00.CF.00.02.xml").exists());
}
