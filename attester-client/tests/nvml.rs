//! The guest's NVIDIA GPU evidence without a GPU:
//! - the checks on NVML's buffers accept every genuine report and chain in
//!   the shared vectors (`nvidia/`), each with its own nonce, and return
//!   the report's SPDM bytes exactly (a captured trailing zero dropped);
//!   truncated, padded and altered copies are refused or trimmed, never a
//!   panic;
//! - `kbs-attester ... --gpus all` on a machine without the NVIDIA driver
//!   fails with exit code 9 and a clear message, before it contacts the
//!   broker or asks the CPU TEE for a report.
//!
//! Vectors come from `$KBS_TEST_VECTORS`, by default
//! `$CARGO_MANIFEST_DIR/../../shared/vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use attester_client::evidence::nvml::buffers::{
    BufferError, REPORT_BUFFER_LEN, SIGNATURE_LEN, attestation_cert_chain, attestation_report,
};

#[path = "../../tests/tests/support/vectors.rs"]
mod vectors;

use vectors::vector;

const NVAT: &str = "nvidia/nvidia-attestation-sdk/nv-attestation-sdk-cpp/unit-tests/testdata";

/// Genuine reports (hex text, or raw), their chains, and the length of the
/// SPDM request and response in each.
fn genuine() -> Vec<(String, Vec<u8>, Vec<u8>, usize)> {
    let hex = |rel: &str| hex::decode(String::from_utf8(vector(rel)).unwrap().trim()).unwrap();
    let cases: [(&str, Vec<u8>, &str, usize); 7] = [
        (
            "trustee hopper",
            hex("nvidia/trustee/hopperAttestationReport.txt"),
            "nvidia/trustee/hopper_cert_chain_case1.txt",
            4117,
        ),
        // Captured through an attester that appended one zero byte.
        ("trustee coco", hex("nvidia/trustee/hopper_coco_report1.txt"), "nvidia/trustee/hopper_coco_certs1.txt", 4129),
        (
            "nvat hopper",
            hex(&format!("{NVAT}/sample_attestation_data/gpu/hopperAttestationReport.txt")),
            &format!("{NVAT}/sample_attestation_data/gpu/hopperCertChain.txt"),
            4052,
        ),
        (
            "nvat blackwell",
            hex(&format!("{NVAT}/sample_attestation_data/gpu/blackwellAttestationReport.txt")),
            &format!("{NVAT}/sample_attestation_data/gpu/blackwellCertChain.txt"),
            4121,
        ),
        (
            "nvat ls10",
            hex(&format!("{NVAT}/sample_attestation_data/switch/switchAttestationReport.txt")),
            &format!("{NVAT}/sample_attestation_data/switch/switchCertChain.txt"),
            2168,
        ),
        (
            "google h100",
            vector("nvidia/google-go-nvattest-tools/testing/testdata/test_raw_gpu_attestation_report.dat"),
            "nvidia/google-go-nvattest-tools/testing/testdata/test_gpu_attestation_certificate_chain.dat",
            4117,
        ),
        (
            "google ls10",
            vector("nvidia/google-go-nvattest-tools/testing/testdata/test_raw_switch_attestation_report.dat"),
            "nvidia/google-go-nvattest-tools/testing/testdata/test_switch_attestation_certificate_chain.dat",
            2172,
        ),
    ];
    cases.into_iter().map(|(name, report, chain, len)| (name.to_owned(), report, vector(chain), len)).collect()
}

fn nonce_of(report: &[u8]) -> [u8; 32] {
    report[4..36].try_into().unwrap()
}

#[test]
fn genuine_reports_come_back_as_their_spdm_bytes() {
    for (name, report, _, spdm_len) in genuine() {
        let spdm = attestation_report(&report, &nonce_of(&report)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(spdm.len(), spdm_len, "{name}");
        assert_eq!(spdm, &report[..spdm_len], "{name}");
        assert!(report[spdm_len..].iter().all(|b| *b == 0), "{name}");
        // As NVML returns it: the whole 8 KiB buffer, zero after the report.
        let mut buffer = report.clone();
        buffer.resize(REPORT_BUFFER_LEN, 0);
        assert_eq!(attestation_report(&buffer, &nonce_of(&report)).unwrap(), spdm, "{name}");
    }
}

#[test]
fn genuine_chains_come_back_as_the_driver_returned_them() {
    for (name, _, chain, _) in genuine() {
        assert_eq!(attestation_cert_chain(&chain).unwrap_or_else(|e| panic!("{name}: {e}")), chain.as_slice());
        let mut c_string = chain.clone();
        c_string.push(0);
        assert_eq!(attestation_cert_chain(&c_string).unwrap(), chain.as_slice(), "{name}");
    }
}

#[test]
fn altered_genuine_reports_are_refused_without_a_panic() {
    for (name, report, _, spdm_len) in genuine() {
        let nonce = nonce_of(&report);
        let mut other = nonce;
        other[31] ^= 1;
        assert_eq!(attestation_report(&report, &other), Err(BufferError::NonceMismatch), "{name}");
        for len in (0..spdm_len).step_by(7).chain([spdm_len - 1, spdm_len - SIGNATURE_LEN]) {
            assert!(
                matches!(attestation_report(&report[..len], &nonce), Err(BufferError::Truncated(_))),
                "{name}: truncated to {len}"
            );
        }
        let mut trailing = report[..spdm_len].to_vec();
        trailing.push(0x01);
        assert_eq!(attestation_report(&trailing, &nonce), Err(BufferError::TrailingBytes(1)), "{name}");
        // Flip every byte of the lengths' region and the headers: refused,
        // trimmed to a shorter report, or (a flip inside a digest or the
        // opaque data) passed on whole for the broker to refuse; never a
        // panic, never more than the buffer.
        for at in 0..spdm_len.min(200) {
            let mut flipped = report.clone();
            flipped[at] ^= 0x80;
            if let Ok(spdm) = attestation_report(&flipped, &nonce) {
                assert!(spdm.len() <= flipped.len(), "{name}: {at}");
            }
        }
    }
}

#[test]
fn genuine_negative_chains_still_look_like_pem() {
    // The guest checks the shape only; the broker refuses these chains
    // (a missing intermediate, a missing leaf) on their merits.
    for rel in ["nvidia/trustee/hopper_cert_chain_case3.txt", "nvidia/trustee/hopper_cert_chain_case4.txt"] {
        let chain = vector(rel);
        assert_eq!(attestation_cert_chain(&chain).unwrap(), chain.as_slice(), "{rel}");
    }
    // A chain cut inside a certificate is not.
    let chain = vector("nvidia/trustee/hopper_coco_certs1.txt");
    let cut = &chain[..chain.len() / 2];
    assert!(matches!(attestation_cert_chain(cut), Err(BufferError::NotPem(_))));
}

/// A loopback port nobody answers on but us, to see whether the CLI
/// connected.
fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    (listener, url)
}

fn assert_fails_before_attesting(args: &[&str], listener: &TcpListener, configfs: &Path, out: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_kbs-attester")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(9), "{args:?}: {stderr}");
    assert!(stderr.contains("error: NVIDIA GPUs: cannot load or initialize NVML (libnvidia-ml.so.1)"), "{stderr}");
    assert!(stderr.contains("is the NVIDIA driver installed"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Neither the broker nor the CPU TEE was asked for anything.
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the CLI contacted the broker"
    );
    assert_eq!(std::fs::read_dir(configfs).unwrap().count(), 0, "the CLI asked configfs-tsm for a report");
    assert!(!out.exists(), "the CLI wrote output");
}

/// This machine has no NVIDIA driver (nor does CI's): `--gpus all` must
/// stop cleanly with its exit code.
#[test]
fn gpus_all_without_the_nvidia_driver_fails_cleanly_before_attesting() {
    let dir = tempfile::tempdir().unwrap();
    let configfs = dir.path().join("tsm-report");
    std::fs::create_dir(&configfs).unwrap();
    let out = dir.path().join("out");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not read").unwrap();
    let (listener, url) = listener();
    let common = [
        "--kbs",
        url.as_str(),
        "--ca",
        ca.to_str().unwrap(),
        "--tee",
        "snp",
        "--configfs-path",
        configfs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--gpus",
        "all",
    ];
    let mut fetch = vec!["fetch", "--secret", "models/llama/key"];
    fetch.extend_from_slice(&common);
    assert_fails_before_attesting(&fetch, &listener, &configfs, &out);

    let input = dir.path().join("enc");
    std::fs::create_dir(&input).unwrap();
    let mut decrypt = vec!["model", "decrypt", "--in", input.to_str().unwrap()];
    decrypt.extend_from_slice(&common);
    assert_fails_before_attesting(&decrypt, &listener, &configfs, &out);
}

#[test]
fn gpus_takes_only_all() {
    let output = Command::new(env!("CARGO_BIN_EXE_kbs-attester"))
        .args(["fetch", "--kbs", "https://x", "--ca", "c", "--secret", "s", "--out", "o", "--gpus", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("possible values: all"));
    let help = Command::new(env!("CARGO_BIN_EXE_kbs-attester")).args(["fetch", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--gpus <WHICH>") && help.contains("  9  --gpus:"), "{help}");
}
