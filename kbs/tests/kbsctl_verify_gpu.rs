//! `kbsctl verify --gpu` on captured NVIDIA reports: device claims on stdout
//! and exit 0, or `rejected: <reason>` on stderr and exit 2; exit 1 for
//! usage errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::{Command, Output};

#[path = "../../tests/tests/support/vectors.rs"]
mod vectors;

const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const TIME: &str = "2025-06-01T00:00:00Z";

fn kbsctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kbsctl")).args(args).output().unwrap()
}

fn path(rel: &str) -> String {
    let p = vectors::vectors_dir().join(rel);
    assert!(p.exists(), "test vector {} is missing: set KBS_TEST_VECTORS", p.display());
    p.display().to_string()
}

fn h100() -> (String, String) {
    (path("nvidia/trustee/hopperAttestationReport.txt"), path("nvidia/trustee/hopper_cert_chain_case1.txt"))
}

#[test]
fn a_hex_report_verifies_with_its_nonce() {
    let (report, chain) = h100();
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &chain, "--gpu-nonce", NONCE, "--time", TIME]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["arch"], "hopper");
    assert_eq!(claims["class"], "gpu");
    assert_eq!(claims["driver_version"], "550.90.07");
    assert_eq!(claims["vbios_version"], "96.00.9F.00.01");
    assert_eq!(claims["nonce"], NONCE);
    assert_eq!(claims["evidence"]["nonce"], "match");
    assert_eq!(claims["evidence"]["fwid"], "match");
    assert_eq!(claims["measurements"].as_array().unwrap().len(), 64);
}

#[test]
fn without_a_nonce_it_is_reported_not_checked() {
    // The raw (binary) form of the same report.
    let report = path("nvidia/google-go-nvattest-tools/testing/testdata/test_raw_gpu_attestation_report.dat");
    let chain = path("nvidia/google-go-nvattest-tools/testing/testdata/test_gpu_attestation_certificate_chain.dat");
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &chain, "--time", TIME]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["nonce"], NONCE);
    assert_eq!(claims["evidence"]["nonce"], "not_checked");
}

#[test]
fn refusals_exit_2_with_their_reason() {
    let (report, chain) = h100();
    let wrong = "00".repeat(32);
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &chain, "--gpu-nonce", &wrong, "--time", TIME]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("rejected: gpu_evidence_invalid: "), "{stderr}");
    assert!(stderr.contains("nonce"), "{stderr}");
    // A chain without its leaf: the report's signer is missing.
    let case4 = path("nvidia/trustee/hopper_cert_chain_case4.txt");
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &case4, "--time", TIME]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: gpu_evidence_invalid: GPU report signature"));
    // Before the chain's validity.
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &chain, "--time", "2019-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(2));
    // Not a report (PEM text: no SPDM version byte): its own reason.
    let out = kbsctl(&["verify", "--gpu", &chain, "--gpu-chain", &chain, "--time", TIME]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: unsupported_version: "));
    // A truncated report: malformed.
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.bin");
    let raw =
        std::fs::read(path("nvidia/google-go-nvattest-tools/testing/testdata/test_raw_gpu_attestation_report.dat"));
    std::fs::write(&cut, &raw.unwrap()[..100]).unwrap();
    let out = kbsctl(&["verify", "--gpu", cut.to_str().unwrap(), "--gpu-chain", &chain, "--time", TIME]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: evidence_malformed: "));
}

#[test]
fn usage_errors_exit_1() {
    let (report, chain) = h100();
    // No chain.
    assert_eq!(kbsctl(&["verify", "--gpu", &report]).status.code(), Some(1));
    // A bad nonce, a bad time, a missing file.
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &chain, "--gpu-nonce", "abc"]);
    assert_eq!(out.status.code(), Some(1));
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &chain, "--time", "yesterday"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(kbsctl(&["verify", "--gpu", "/nonexistent", "--gpu-chain", &chain]).status.code(), Some(1));
    // --gpu with CPU evidence or a policy: refused by the parser.
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &chain, "--tee", "snp"]);
    assert_eq!(out.status.code(), Some(1));
    let out = kbsctl(&["verify", "--gpu", &report, "--gpu-chain", &chain, "--policy", &chain]);
    assert_eq!(out.status.code(), Some(1));
    // Neither CPU nor GPU evidence.
    assert_eq!(kbsctl(&["verify"]).status.code(), Some(1));
}

#[test]
fn stapled_ocsp_responses_are_checked_when_given() {
    let report = path("nvidia/google-go-nvattest-tools/testing/testdata/test_raw_gpu_attestation_report.dat");
    let chain = path("nvidia/google-go-nvattest-tools/testing/testdata/test_gpu_attestation_certificate_chain.dat");
    let ocsp = |level: u8| {
        path(&format!(
            "nvidia/google-go-nvattest-tools/testing/testdata/ocsp/test_gpu_certificate_l{level}_base64encoded_ocsp_response.dat"
        ))
    };
    let (l2, l3, l4) = (ocsp(2), ocsp(3), ocsp(4));
    let base = ["verify", "--gpu", &report, "--gpu-chain", &chain, "--gpu-nonce", NONCE];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        kbsctl(&args)
    };
    let all = ["--gpu-ocsp", &l2, "--gpu-ocsp", &l3, "--gpu-ocsp", &l4];
    let mut fresh = all.to_vec();
    fresh.extend_from_slice(&["--time", "2025-08-21T12:00:00Z"]);
    let out = run(&fresh);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["revocation"]["device_chain"], "good");
    assert_eq!(claims["revocation"]["certificates"].as_array().unwrap().len(), 3);
    // Stale at the default time (now).
    let out = run(&all);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: collateral_expired: "));
    // One missing.
    let out = run(&["--gpu-ocsp", &l2, "--gpu-ocsp", &l3, "--time", "2025-08-21T12:00:00Z"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: collateral_unavailable: "));
    // Not a response at all: a usage error.
    let out = run(&["--gpu-ocsp", &report, "--time", "2025-08-21T12:00:00Z"]);
    assert_eq!(out.status.code(), Some(1));
}

/// `--gpu-rim`: each RIM verified to the NVIDIA RIM root, then every active
/// measurement appraised; a RIM for other firmware is a measurement
/// mismatch, an expired RIM signer needs its explicit acceptance.
#[test]
fn rims_appraise_the_measurements() {
    let g = "nvidia/google-go-nvattest-tools/testing/testdata";
    let report = path(&format!("{g}/test_raw_gpu_attestation_report.dat"));
    let chain = path(&format!("{g}/test_gpu_attestation_certificate_chain.dat"));
    let driver = path(&format!("{g}/rim/NV_GPU_DRIVER_GH100_550.90.07.xml"));
    let vbios = path(&format!("{g}/rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"));
    let in_window = "2025-10-24T12:00:00Z";
    let base = ["verify", "--gpu", &report, "--gpu-chain", &chain, "--gpu-nonce", NONCE];
    let run = |extra: &[&str]| kbsctl(&[&base[..], extra].concat());

    let out = run(&["--gpu-rim", &driver, "--gpu-rim", &vbios, "--time", in_window]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["appraisal"]["checked"], 32);
    assert_eq!(claims["appraisal"]["skipped"], serde_json::json!([35]));
    assert_eq!(claims["rims"][0]["version"], "550.90.07");
    assert_eq!(claims["rims"][1]["version"], "96.00.9F.00.01");
    assert_eq!(claims["rims"][1]["signer_expired"], false);
    assert_eq!(claims["measurements"].as_array().unwrap().len(), 64);

    // Another VBIOS's RIM: the measurements do not match.
    let other = path(&format!("{g}/rim/success_valid_rim.xml"));
    let out = run(&["--gpu-rim", &driver, "--gpu-rim", &other, "--time", in_window, "--accept-expired-rim-signer"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("rejected: gpu_measurement_mismatch: appraisal"), "{stderr}");

    // Today the RIM signers have expired: refused, unless accepted.
    let today = "2026-12-07T00:00:00Z";
    let out = run(&["--gpu-rim", &driver, "--time", today]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: gpu_evidence_invalid: "));
    // (The device chain is still valid today; the report verifies.)
    let out = run(&["--gpu-rim", &driver, "--gpu-rim", &vbios, "--time", today, "--accept-expired-rim-signer"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["rims"][0]["signer_expired"], true);

    // A RIM that is not one.
    let out = run(&["--gpu-rim", &chain, "--time", in_window]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: gpu_evidence_invalid: "));
}
