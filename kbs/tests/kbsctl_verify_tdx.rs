//! `kbsctl verify --tee tdx` on real quotes and Intel collateral: claims on
//! stdout and exit 0, or `rejected: <reason>` on stderr and exit 2; exit 1
//! for usage errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn vectors() -> PathBuf {
    let dir = std::env::var_os("KBS_TEST_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"));
    assert!(dir.join("dcap-qvl").is_dir(), "test vectors not found at {}: set KBS_TEST_VECTORS", dir.display());
    dir
}

fn kbsctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kbsctl")).args(args).output().unwrap()
}

fn path(rel: &str) -> String {
    vectors().join(rel).display().to_string()
}

fn verify(quote: &str, collateral: &str, time: &str) -> Output {
    kbsctl(&["verify", "--tee", "tdx", "--evidence", quote, "--collateral", collateral, "--time", time])
}

#[test]
fn v4_quote_verifies_and_prints_claims() {
    let out = verify(&path("dcap-qvl/tdx_quote"), &path("dcap-qvl/tdx_quote_collateral.json"), "2025-07-01T00:00:00Z");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "tdx");
    assert_eq!(
        claims["measurement"],
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
    );
    assert_eq!(claims["debug"], false);
    assert_eq!(claims["tdx"]["tcb_status"], "UpToDate");
    assert_eq!(claims["tdx"]["fmspc"], "b0c06f000000");
}

#[test]
fn td15ex_quote_verifies_from_a_collateral_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        vectors().join("dcap-qvl/tdx_quote_td15ex_collateral.json"),
        dir.path().join("b0c06f000000-platform.json"),
    )
    .unwrap();
    let out = verify(&path("dcap-qvl/tdx_quote_td15ex"), &dir.path().display().to_string(), "2026-10-20T00:00:00Z");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tdx"]["body"], "td1.5ex");
}

#[test]
fn refusals_exit_2_with_the_reason() {
    let out = verify(
        &path("dcap-qvl/tdx_quote_outdated"),
        &path("dcap-qvl/tdx_quote_outdated_collateral.json"),
        "2026-03-01T00:00:00Z",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: tcb_status_not_allowed: "));
    let out = verify(&path("dcap-qvl/tdx_quote"), &path("dcap-qvl/tdx_quote_collateral.json"), "2026-11-28T00:00:00Z");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: collateral_expired: "));
    let out = verify(
        &path("dcap-qvl/tdx_quote"),
        &path("dcap-qvl/tdx_quote_outdated_collateral.json"),
        "2026-03-01T00:00:00Z",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: collateral_unavailable: "));
}

#[test]
fn usage_errors_exit_1() {
    let out = kbsctl(&["verify", "--tee", "tdx", "--evidence", &path("dcap-qvl/tdx_quote")]);
    assert_eq!(out.status.code(), Some(1));
    let out = verify(&path("dcap-qvl/tdx_quote"), "/nonexistent/collateral.json", "2025-07-01T00:00:00Z");
    assert_eq!(out.status.code(), Some(1));
    let out = verify(&path("dcap-qvl/tdx_quote"), &path("dcap-qvl/tdx_quote_collateral.json"), "yesterday");
    assert_eq!(out.status.code(), Some(1));
}
