//! Known-answer and negative tests of the NVIDIA GPU / NVSwitch verifier on
//! real device evidence (read from the shared vectors directory, never
//! copied into the repository): every genuine report passes signature,
//! chain, FWID and nonce with its own nonce; every negative vector fails for
//! the reason `nvidia/VERIFY-RESULTS.txt` states; tampering, truncation and
//! random bytes are refused without a panic.
//!
//! Vectors come from `$KBS_TEST_VECTORS`, by default
//! `$CARGO_MANIFEST_DIR/../../shared/vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kbs::evidence::EvidenceError;
use kbs::evidence::gpu::spdm::MAX_REPORT_LEN;
use kbs::evidence::gpu::{
    DeviceClass, FeatureFlag, FwidCheck, GpuAnchors, GpuArch, GpuDeviceClaims, GpuError, GpuNonce, GpuReport,
    GpuVerifier, NVIDIA_DEVICE_IDENTITY_CA_SHA256, NonceCheck, Nvdec0, OpaqueFormat,
};
use kbs::reason::ReasonCode;
use proptest::prelude::*;
use time::OffsetDateTime;
use time::macros::datetime;

#[path = "../../tests/tests/support/vectors.rs"]
mod vectors;

use vectors::vector;

/// Inside every vector chain's validity (the latest leaf notBefore is 2023-06-20).
const NOW: OffsetDateTime = datetime!(2025-06-01 00:00 UTC);

/// The nonce NVIDIA's samples use (nvtrust, NVAT `test_utils.h`).
const NONCE_931D: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
/// The nonce of google/go-nvattest-tools' PPCIe set.
const NONCE_GOOGLE_PPCIE: &str = "1234567890123456789012345678901234567890123456789012345678901234";
/// The nonce of google/go-nvattest-tools' MPT set.
const NONCE_GOOGLE_MPT: &str = "cdb72201e569085d6de41863745f6f77db1f75962c29564ec6abe91f0221861f";
/// trustee's CoCo CI report: the first 32 bytes of its SHA-384 device digest.
const NONCE_TRUSTEE_COCO: &str = "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec";
/// NVAT `hopperAttestationReport.txt` (driver 580.159.03).
const NONCE_NVAT_580: &str = "5bb22e377702d4e1e8215a903ba094826b9ac7f731dee1fe8102958bf2840aca";
/// NVAT `sample_attestation_data/gpu/hopperAttestationReport.txt` (driver 535.86.09).
const NONCE_NVAT_535: &str = "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66";

const NVAT: &str = "nvidia/nvidia-attestation-sdk/nv-attestation-sdk-cpp/unit-tests/testdata";
const NVAT_SERIALIZED: &str = "nvidia/nvidia-attestation-sdk/common-test-data/serialized_test_evidence";
const GOOGLE: &str = "nvidia/google-go-nvattest-tools/testing/testdata";

/// One device's evidence as a vector ships it.
#[derive(Clone)]
struct Case {
    name: String,
    report: Vec<u8>,
    chain: Vec<u8>,
    nonce: GpuNonce,
    arch: GpuArch,
}

fn nonce(hex: &str) -> GpuNonce {
    GpuNonce::from_hex(hex).unwrap()
}

fn hex_file(rel: &str) -> Vec<u8> {
    let text = String::from_utf8(vector(rel)).unwrap();
    hex::decode(text.trim()).unwrap()
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&vector(rel)).unwrap()
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap()).unwrap()
}

fn arch_of(name: &str) -> GpuArch {
    match name {
        "HOPPER" => GpuArch::Hopper,
        "BLACKWELL" => GpuArch::Blackwell,
        "LS10" => GpuArch::Ls10,
        other => panic!("unknown arch {other}"),
    }
}

fn verifier() -> GpuVerifier {
    GpuVerifier::new(GpuAnchors::nvidia().unwrap())
}

fn file_case(name: &str, report: Vec<u8>, chain: &str, nonce_hex: &str, arch: GpuArch) -> Case {
    Case { name: name.into(), report, chain: vector(chain), nonce: nonce(nonce_hex), arch }
}

/// NVAT/nvtrust serialized evidence: `[{arch, evidence, certificate, nonce}]`.
fn serialized_cases(prefix: &str, rel: &str) -> Vec<Case> {
    let list = json(rel);
    list.as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| Case {
            name: format!("{prefix}_{i}"),
            report: b64(&d["evidence"]),
            chain: b64(&d["certificate"]),
            nonce: nonce(d["nonce"].as_str().unwrap()),
            arch: arch_of(d["arch"].as_str().unwrap()),
        })
        .collect()
}

/// google/go-nvattest-tools' pickled NVML/NSCQ state: a chain is a list of
/// base64 PEM blocks.
fn google_chain(list: &serde_json::Value) -> Vec<u8> {
    list.as_array().unwrap().iter().flat_map(|c| b64(&c["pem"])).collect()
}

fn google_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mpt = json(&format!("{GOOGLE}/test_mpt_data.json"));
    for (i, g) in mpt["gpus"].as_array().unwrap().iter().enumerate() {
        out.push(Case {
            name: format!("google_mpt_blackwell_gpu{i}"),
            report: b64(&g["AttestationReport"]["py/b64"]),
            chain: google_chain(&g["CertificateChains"]["GpuAttestationCertificateChain"]),
            nonce: nonce(NONCE_GOOGLE_MPT),
            arch: GpuArch::Blackwell,
        });
    }
    let ppcie = json(&format!("{GOOGLE}/test_ppcie_data.json"));
    for (i, g) in ppcie["gpus"].as_array().unwrap().iter().enumerate() {
        out.push(Case {
            name: format!("google_ppcie_hopper_gpu{i}"),
            report: b64(&g["AttestationReport"]["py/b64"]),
            chain: google_chain(&g["CertificateChains"]["GpuAttestationCertificateChain"]),
            nonce: nonce(NONCE_GOOGLE_PPCIE),
            arch: GpuArch::Hopper,
        });
    }
    for (i, s) in ppcie["nvswitches"].as_array().unwrap().iter().enumerate() {
        out.push(Case {
            name: format!("google_ppcie_ls10_switch{i}"),
            report: b64(&s["attestation_report"]["py/b64"]),
            chain: google_chain(&s["attestation_cert_chain"]),
            nonce: nonce(NONCE_GOOGLE_PPCIE),
            arch: GpuArch::Ls10,
        });
    }
    out
}

/// Every genuine device report of the vectors, with its own chain and nonce.
fn genuine() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let mut out = vec![
            file_case(
                "trustee_hopper_report",
                hex_file("nvidia/trustee/hopperAttestationReport.txt"),
                "nvidia/trustee/hopper_cert_chain_case1.txt",
                NONCE_931D,
                GpuArch::Hopper,
            ),
            file_case(
                "trustee_hopper_coco_report1",
                hex_file("nvidia/trustee/hopper_coco_report1.txt"),
                "nvidia/trustee/hopper_coco_certs1.txt",
                NONCE_TRUSTEE_COCO,
                GpuArch::Hopper,
            ),
            file_case(
                "google_spt_hopper_full",
                vector(&format!("{GOOGLE}/test_raw_gpu_attestation_report.dat")),
                &format!("{GOOGLE}/test_gpu_attestation_certificate_chain.dat"),
                NONCE_931D,
                GpuArch::Hopper,
            ),
            file_case(
                "nvtrust_local_gpu_verifier_sample",
                hex_file("nvidia/nvtrust/local_gpu_verifier/samples/hopperAttestationReport.txt"),
                "nvidia/nvtrust/local_gpu_verifier/samples/hopperCertChain.txt",
                NONCE_931D,
                GpuArch::Hopper,
            ),
            file_case(
                "nvat_hopper_580_159_03",
                hex_file(&format!("{NVAT}/hopperAttestationReport.txt")),
                &format!("{NVAT}/hopperCertChain.txt"),
                NONCE_NVAT_580,
                GpuArch::Hopper,
            ),
            file_case(
                "nvat_hopper_535_86_09",
                hex_file(&format!("{NVAT}/sample_attestation_data/gpu/hopperAttestationReport.txt")),
                &format!("{NVAT}/sample_attestation_data/gpu/hopperCertChain.txt"),
                NONCE_NVAT_535,
                GpuArch::Hopper,
            ),
            file_case(
                "nvat_hopper_570_124_03_expired",
                hex_file(&format!("{NVAT}/sample_attestation_data/gpu/hopperAttestationReportExpired.txt")),
                &format!("{NVAT}/sample_attestation_data/gpu/hopperCertChainExpired.txt"),
                NONCE_931D,
                GpuArch::Hopper,
            ),
            file_case(
                "nvat_blackwell_575_32",
                hex_file(&format!("{NVAT}/sample_attestation_data/gpu/blackwellAttestationReport.txt")),
                &format!("{NVAT}/sample_attestation_data/gpu/blackwellCertChain.txt"),
                NONCE_931D,
                GpuArch::Blackwell,
            ),
            file_case(
                "nvat_switch_ls10",
                hex_file(&format!("{NVAT}/switchAttestationReport.txt")),
                &format!("{NVAT}/switchCertChain.txt"),
                NONCE_931D,
                GpuArch::Ls10,
            ),
            file_case(
                "nvat_sample_switch_ls10",
                hex_file(&format!("{NVAT}/sample_attestation_data/switch/switchAttestationReport.txt")),
                &format!("{NVAT}/sample_attestation_data/switch/switchCertChain.txt"),
                NONCE_931D,
                GpuArch::Ls10,
            ),
        ];
        for (prefix, file) in [
            ("nvat_hopper_evidence", "hopper_evidence.json"),
            ("nvat_hopper_evidence_cert_hold", "hopper_evidence_cert_hold.json"),
            ("nvat_multi_gpu_hopper", "multi_gpu_hopper.json"),
            ("nvat_switch_evidence_ls10", "switch_evidence_ls10.json"),
            ("nvat_multi_switch_ls10", "multi_switch_ls10.json"),
        ] {
            out.extend(serialized_cases(prefix, &format!("{NVAT_SERIALIZED}/{file}")));
        }
        out.extend(serialized_cases("nvat_evidence_hopper_590_12", &format!("{NVAT}/evidence_hopper_590_12.json")));
        out.extend(serialized_cases("nvtrust_ppcie_gpu", "nvidia/nvtrust/ppcie-verifier-sdk-cpp/gpu_evidence.json"));
        out.extend(serialized_cases(
            "nvtrust_ppcie_switch",
            "nvidia/nvtrust/ppcie-verifier-sdk-cpp/switch_evidence.json",
        ));
        out.extend(google_cases());
        out
    })
}

fn case(name: &str) -> &'static Case {
    genuine().iter().find(|c| c.name == name).unwrap()
}

fn verify(c: &Case) -> Result<GpuDeviceClaims, GpuError> {
    verifier().verify(&c.report, &c.chain, NOW, &c.nonce)
}

#[test]
fn every_genuine_vector_passes_with_its_own_nonce() {
    let cases = genuine();
    // 10 single files, 1 + 1 + 4 + 1 + 4 NVAT serialized, 1 NVAT 590.12,
    // 8 + 4 nvtrust PPCIe, 8 google MPT, 8 + 4 google PPCIe.
    assert_eq!(cases.len(), 54);
    let mut by_arch = [0usize; 3];
    for c in cases {
        let claims = verify(c).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(claims.arch, c.arch, "{}", c.name);
        assert_eq!(claims.vendor, "nvidia");
        assert_eq!(claims.nonce, c.nonce.to_hex(), "{}", c.name);
        assert_eq!(claims.evidence.nonce, NonceCheck::Match);
        assert!(claims.evidence.signature && claims.evidence.chain);
        assert_eq!(claims.evidence.opaque_format, OpaqueFormat::Legacy, "{}", c.name);
        let blocks = if c.arch == GpuArch::Ls10 { 31 } else { 64 };
        assert_eq!(claims.measurements.len(), blocks, "{}", c.name);
        assert!(claims.measurements.iter().zip(1u8..).all(|(m, i)| m.index == i && m.digest.len() == 96));
        assert!(claims.vbios_version.is_some(), "{}", c.name);
        match c.arch {
            GpuArch::Ls10 => {
                assert_eq!(claims.class, DeviceClass::Nvswitch);
                assert_eq!(claims.evidence.fwid, FwidCheck::AbsentInReport, "{}", c.name);
                assert!(claims.fwid.is_none() && claims.driver_version.is_none());
                assert_eq!(claims.pdis.len(), 1, "{}: an NVSwitch reports its own PDI", c.name);
            }
            _ => {
                assert_eq!(claims.class, DeviceClass::Gpu);
                assert!(claims.driver_version.is_some());
                if c.name == "nvat_hopper_535_86_09" {
                    // Old firmware: no FWID in the report; nothing to compare.
                    assert_eq!(claims.evidence.fwid, FwidCheck::AbsentInReport);
                    assert!(claims.fwid.is_none());
                } else {
                    assert_eq!(claims.evidence.fwid, FwidCheck::Match, "{}", c.name);
                    assert_eq!(claims.fwid.as_ref().map(String::len), Some(96));
                }
            }
        }
        by_arch[c.arch as usize] += 1;
        // The same evidence, inspected without a nonce, reports it.
        let inspected = verifier().inspect_without_nonce(&c.report, &c.chain, NOW).unwrap();
        assert_eq!(inspected.evidence.nonce, NonceCheck::NotChecked);
        assert_eq!(inspected.nonce, claims.nonce);
    }
    // 30 Hopper GPUs, 9 Blackwell, 15 NVSwitch reports.
    assert_eq!(by_arch, [30, 9, 15]);
}

#[test]
fn h100_claims_match_the_trustee_fixture() {
    let claims = verify(case("trustee_hopper_report")).unwrap();
    let fixture = json("nvidia/trustee/hopperAttestationReport-claims.txt");
    for m in &claims.measurements {
        assert_eq!(fixture["measurements"][m.index.to_string()].as_str(), Some(m.digest.as_str()), "block {}", m.index);
    }
    assert_eq!(fixture["measurements"].as_object().unwrap().len(), 64);
    let config = &fixture["config"];
    assert_eq!(claims.fwid.as_deref(), config["fwid"].as_str());
    assert_eq!(claims.driver_version.as_deref(), Some("550.90.07"));
    assert_eq!(claims.vbios_version.as_deref(), Some("96.00.9F.00.01"));
    assert_eq!(config["vbios_version"].as_str(), Some("96.00.9f.00.01"));
    assert_eq!(claims.project.as_deref(), config["project"].as_str());
    assert_eq!(claims.project_sku.as_deref(), config["project_sku"].as_str());
    assert_eq!(claims.chip_sku.as_deref(), config["chip_sku"].as_str());
    assert_eq!(claims.nvdec0, Some(Nvdec0::Disabled));
    assert_eq!(claims.chip, "GH100");
    assert_eq!(claims.ueid, "53c22ba15e5d68088282da074ed9fb37aa585771");
    assert_eq!(claims.device_id.as_deref(), Some("NVIDIA:GH100:48B02D92494BADF4"));
    // SHA-256 of the BROM certificate's SubjectPublicKeyInfo (openssl pkey -pubin -outform der).
    assert_eq!(claims.device_key_sha256, "0456ef114633549618e8fbe54ece97118b2f034f11b036980137a15264a46d07");
    assert_eq!(claims.opaque_data_version, None);
    assert_eq!(claims.feature, None);
    assert_eq!(claims.trailing_zeros, 0);
    assert_eq!(claims.measurement(10), fixture["measurements"]["10"].as_str());
    assert_eq!(claims.measurement(65), None);
    // Serialized claims carry stable names.
    let value = serde_json::to_value(&claims).unwrap();
    assert_eq!(value["arch"], "hopper");
    assert_eq!(value["class"], "gpu");
    assert_eq!(value["evidence"]["fwid"], "match");
    assert_eq!(value["evidence"]["opaque_format"]["format"], "legacy");
}

#[test]
fn vector_specific_claims() {
    let coco = verify(case("trustee_hopper_coco_report1")).unwrap();
    assert_eq!(coco.trailing_zeros, 1, "one zero byte after the signature, tolerated and reported");
    assert_eq!(coco.driver_version.as_deref(), Some("580.95.05"));
    assert_eq!(coco.vbios_version.as_deref(), Some("96.00.74.00.1A"));
    assert_eq!(coco.opaque_data_version, Some(1));
    assert_eq!(coco.feature, Some(FeatureFlag::Spt));
    assert_eq!(coco.device_id.as_deref(), Some("NVIDIA:GH100:48B02D51037534EE"));
    assert_eq!(
        coco.fwid.as_deref(),
        Some("f1ae7d0093a3f5689cced58045c9744f94eb2aa4ddca88135197fb41a7be45576c2881cf920e2cbcc090b1cb921f7b2d")
    );

    let blackwell = verify(case("google_mpt_blackwell_gpu0")).unwrap();
    assert_eq!(blackwell.chip, "GB100");
    assert_eq!(blackwell.feature, Some(FeatureFlag::Mpt));
    assert_eq!(blackwell.driver_version.as_deref(), Some("590.48.01"));
    assert_eq!(blackwell.vbios_version.as_deref(), Some("97.00.D9.00.35"));
    assert_eq!(
        blackwell.fwid.as_deref(),
        Some("4a1cd56f973225188080b343bb7914ec29d528b85457e8ce7a2c763eb8e0758406803f931b97b6c21f9a847989146022")
    );
    let nvat_blackwell = verify(case("nvat_blackwell_575_32")).unwrap();
    assert_eq!(nvat_blackwell.vbios_version.as_deref(), Some("97.00.88.00.0F"));
    assert_eq!(nvat_blackwell.driver_version.as_deref(), Some("575.32"));

    let ppcie = verify(case("nvtrust_ppcie_gpu_0")).unwrap();
    assert_eq!(ppcie.feature, Some(FeatureFlag::Ppcie));
    assert_eq!(ppcie.pdis.len(), 18, "18 NVLink port PDIs");
    let switch = verify(case("nvtrust_ppcie_switch_0")).unwrap();
    assert_eq!(switch.vbios_version.as_deref(), Some("96.10.73.00.01"));
    assert_eq!(switch.chip, "LS_10");
    let peers: std::collections::BTreeSet<&String> =
        ppcie.pdis.iter().filter(|p| p.as_str() != "0000000000000000").collect();
    assert_eq!(peers.len(), 4, "a PPCIe GPU's NVLinks reach 4 switches");
    // The switch's own PDI appears, byte-reversed, among the GPUs' NVLink peers.
    let own: Vec<u8> = hex::decode(&switch.pdis[0]).unwrap().into_iter().rev().collect();
    assert!(ppcie.pdis.contains(&hex::encode(own)));

    let old = verify(case("nvat_hopper_535_86_09")).unwrap();
    assert_eq!(old.driver_version.as_deref(), Some("535.86.09"));
    assert_eq!(old.vbios_version.as_deref(), Some("96.00.5E.00.01"));
}

#[test]
fn distinct_devices_have_distinct_identities_and_repeats_are_visible() {
    let keys: std::collections::BTreeSet<String> =
        (0..8).map(|i| verify(case(&format!("nvtrust_ppcie_gpu_{i}"))).unwrap().device_key_sha256).collect();
    assert_eq!(keys.len(), 8);
    // NVAT's multi-switch file repeats one switch: each copy verifies and
    // all carry the same identity, for the set check to refuse.
    let repeated: std::collections::BTreeSet<String> =
        (0..4).map(|i| verify(case(&format!("nvat_multi_switch_ls10_{i}"))).unwrap().device_key_sha256).collect();
    assert_eq!(repeated.len(), 1);
}

fn expect_err(report: &[u8], chain: &[u8], nonce_hex: &str) -> GpuError {
    verifier().verify(report, chain, NOW, &nonce(nonce_hex)).unwrap_err()
}

#[test]
fn negative_vectors_fail_for_their_stated_reason() {
    let h100 = hex_file("nvidia/trustee/hopperAttestationReport.txt");
    // trustee_chain_case3_missing_ica: fail:chain.
    let err = expect_err(&h100, &vector("nvidia/trustee/hopper_cert_chain_case3.txt"), NONCE_931D);
    assert!(matches!(err, GpuError::ChainInvalid(_)), "{err}");
    // trustee_chain_case4_missing_leaf: fail:signature.
    let err = expect_err(&h100, &vector("nvidia/trustee/hopper_cert_chain_case4.txt"), NONCE_931D);
    assert_eq!(err, GpuError::SignatureInvalid);
    // Case 2, the root alone: trustee's "at least root and signing certificate".
    let err = expect_err(&h100, &vector("nvidia/trustee/hopper_cert_chain_case2.txt"), NONCE_931D);
    assert!(matches!(err, GpuError::ChainInvalid(ref m) if m.starts_with("1 certificates")), "{err}");
    // The signing leaf alone: the signature verifies, the chain does not.
    let err = expect_err(&h100, &vector("nvidia/trustee/hopper_signing_cert.pem"), NONCE_931D);
    assert!(matches!(err, GpuError::ChainInvalid(_)), "{err}");
    // trustee_hopper_wrong_nonce: fail:nonce.
    let err = expect_err(&h100, &vector("nvidia/trustee/hopper_cert_chain_case1.txt"), NONCE_TRUSTEE_COCO);
    assert_eq!(err, GpuError::NonceMismatch);
    // nvat_hopper_invalid_signature: fail:signature.
    let err = expect_err(
        &hex_file(&format!("{NVAT}/sample_attestation_data/gpu/hopperAttestationReportInvalidSignature.txt")),
        &vector(&format!("{NVAT}/sample_attestation_data/gpu/hopperCertChain.txt")),
        NONCE_931D,
    );
    assert_eq!(err, GpuError::SignatureInvalid);
    // nvat_switch_invalid_signature: fail:signature (its nonce is its own).
    let bad_switch =
        hex_file(&format!("{NVAT}/sample_attestation_data/switch/switchAttestationReportInvalidSignature.txt"));
    let err = verifier()
        .inspect_without_nonce(
            &bad_switch,
            &vector(&format!("{NVAT}/sample_attestation_data/switch/switchCertChain.txt")),
            NOW,
        )
        .unwrap_err();
    assert_eq!(err, GpuError::SignatureInvalid);
    // google_raw_switch_mismatched_chain: fail:signature with the shipped
    // chain; the report is switch 1's of the PPCIe set, whose chain verifies it.
    let raw_switch = vector(&format!("{GOOGLE}/test_raw_switch_attestation_report.dat"));
    let err = expect_err(
        &raw_switch,
        &vector(&format!("{GOOGLE}/test_switch_attestation_certificate_chain.dat")),
        NONCE_GOOGLE_PPCIE,
    );
    assert_eq!(err, GpuError::SignatureInvalid);
    let claims =
        verifier().verify(&raw_switch, &case("google_ppcie_ls10_switch1").chain, NOW, &nonce(NONCE_GOOGLE_PPCIE));
    assert_eq!(claims.unwrap().arch, GpuArch::Ls10);
    // Every failure maps to a stable reason: checks are PERMISSION_DENIED.
    for e in [GpuError::SignatureInvalid, GpuError::NonceMismatch] {
        let reason = EvidenceError::from(e).reason();
        assert_eq!(reason, ReasonCode::GpuEvidenceInvalid);
        assert_eq!(reason.as_str(), "gpu_evidence_invalid");
        assert_eq!(reason.grpc_code(), tonic::Code::PermissionDenied);
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn synthetic_tampers_fail_the_signature() {
    let c = case("trustee_hopper_report");
    // tamper_measurement_byte: one bit of block 10's digest.
    let mut tampered = c.report.clone();
    let block10 = find(&tampered, &hex::decode("059b32e712a153f4").unwrap());
    tampered[block10] ^= 0x01;
    assert_eq!(verifier().verify(&tampered, &c.chain, NOW, &c.nonce).unwrap_err(), GpuError::SignatureInvalid);
    // tamper_driver_version_opaque: "550.90.07" -> "550.90.08".
    let mut tampered = c.report.clone();
    let driver = find(&tampered, b"550.90.07");
    tampered[driver + 8] = b'8';
    assert_eq!(verifier().verify(&tampered, &c.chain, NOW, &c.nonce).unwrap_err(), GpuError::SignatureInvalid);
    // The request nonce is signed too: swapping it breaks the signature.
    let mut tampered = c.report.clone();
    tampered[4..36].copy_from_slice(&nonce(NONCE_TRUSTEE_COCO).0);
    assert_eq!(
        verifier().verify(&tampered, &c.chain, NOW, &nonce(NONCE_TRUSTEE_COCO)).unwrap_err(),
        GpuError::SignatureInvalid
    );
}

#[test]
fn every_single_bit_flip_of_a_report_fails() {
    // Every byte of one H100, Blackwell and LS10 report, one bit each
    // (rotating), and every byte of the CoCo report's trailing region.
    for name in ["trustee_hopper_report", "nvat_blackwell_575_32", "nvat_switch_ls10", "trustee_hopper_coco_report1"] {
        let c = case(name);
        for pos in 0..c.report.len() {
            let mut flipped = c.report.clone();
            flipped[pos] ^= 1 << (pos % 8);
            let result = verifier().verify(&flipped, &c.chain, NOW, &c.nonce);
            assert!(result.is_err(), "{name}: flip at {pos} accepted");
        }
    }
}

#[test]
fn bit_flips_in_the_chain_fail() {
    let c = case("trustee_hopper_report");
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&c.chain).map(|p| p.unwrap().contents).collect();
    assert_eq!(ders.len(), 5);
    for (i, der) in ders.iter().enumerate() {
        for pos in 0..der.len() {
            let mut flipped = ders.clone();
            flipped[i][pos] ^= 0x10;
            let pem = to_pem(&flipped);
            assert!(verifier().verify(&c.report, &pem, NOW, &c.nonce).is_err(), "cert {i} byte {pos}");
        }
    }
    // The genuine chain re-encoded verifies (the helper is faithful).
    assert!(verifier().verify(&c.report, &to_pem(&ders), NOW, &c.nonce).is_ok());
}

fn to_pem(ders: &[Vec<u8>]) -> Vec<u8> {
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = B64.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

#[test]
fn chain_shape_is_enforced() {
    let c = case("trustee_hopper_report");
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&c.chain).map(|p| p.unwrap().contents).collect();
    let check = |ders: &[Vec<u8>]| verifier().verify(&c.report, &to_pem(ders), NOW, &c.nonce).unwrap_err();
    // Root repeated (6 certificates): refused as a chain of the wrong length.
    let mut six = ders.clone();
    six.push(ders[4].clone());
    assert!(matches!(check(&six), GpuError::ChainInvalid(m) if m.contains('6')));
    // Too many certificates at all.
    let many: Vec<Vec<u8>> = std::iter::repeat_n(ders[4].clone(), 7).collect();
    assert!(matches!(check(&many), GpuError::ChainInvalid(_) | GpuError::SignatureInvalid));
    // Another vector's chain of the same shape: its leaf did not sign this report.
    let other = case("nvat_hopper_580_159_03");
    assert_eq!(verifier().verify(&c.report, &other.chain, NOW, &c.nonce).unwrap_err(), GpuError::SignatureInvalid);
    // Intermediates swapped: names no longer chain.
    let mut swapped = ders.clone();
    swapped.swap(2, 3);
    assert!(matches!(check(&swapped), GpuError::ChainInvalid(_)));
    // Not PEM at all; oversize.
    assert!(matches!(
        verifier().verify(&c.report, b"not a chain", NOW, &c.nonce),
        Err(GpuError::CertificateMalformed(_))
    ));
    let huge = vec![b'A'; 64 * 1024];
    assert!(matches!(verifier().verify(&c.report, &huge, NOW, &c.nonce), Err(GpuError::TooLarge { .. })));
}

#[test]
fn only_a_pinned_root_is_trusted() {
    let c = case("trustee_hopper_report");
    // No roots pinned: the genuine chain is refused.
    let err = GpuVerifier::new(GpuAnchors::empty()).verify(&c.report, &c.chain, NOW, &c.nonce).unwrap_err();
    assert!(matches!(err, GpuError::UntrustedRoot(_)), "{err}");
    // The shipped root files are the pinned root.
    for rel in
        ["nvidia/trustee/nvidia_device_root.pem", "nvidia/nvtrust/local_gpu_verifier/certs/verifier_device_root.pem"]
    {
        let der = x509_parser::pem::Pem::iter_from_buffer(&vector(rel)).next().unwrap().unwrap().contents;
        let mut anchors = GpuAnchors::empty();
        anchors.add_root(&der).unwrap();
        assert_eq!(anchors.root_fingerprints(), vec![NVIDIA_DEVICE_IDENTITY_CA_SHA256]);
        assert!(GpuVerifier::new(anchors).verify(&c.report, &c.chain, NOW, &c.nonce).is_ok());
    }
    // An intermediate cannot be pinned as a root.
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&c.chain).map(|p| p.unwrap().contents).collect();
    assert!(GpuAnchors::empty().add_root(&ders[3]).is_err());
    assert!(GpuAnchors::empty().add_root(&ders[0]).is_err());
}

#[test]
fn certificate_validity_is_checked_at_now() {
    let c = case("nvat_blackwell_575_32");
    // The Blackwell leaf is valid from 2023-06-20.
    assert!(verifier().verify(&c.report, &c.chain, datetime!(2023-06-20 00:00 UTC), &c.nonce).is_ok());
    let err = verifier().verify(&c.report, &c.chain, datetime!(2023-06-19 23:59:59 UTC), &c.nonce).unwrap_err();
    assert!(matches!(err, GpuError::CertificateExpired(ref m) if m.contains("GB100 A01 GSP FMC LF")), "{err}");
    // Every chain ends 9999-12-31T23:59:59Z.
    assert!(verifier().verify(&c.report, &c.chain, datetime!(9999-12-31 23:59:59 UTC), &c.nonce).is_ok());
    let h = case("trustee_hopper_report");
    assert!(matches!(
        verifier().verify(&h.report, &h.chain, datetime!(2019-01-01 00:00 UTC), &h.nonce),
        Err(GpuError::CertificateExpired(_))
    ));
}

#[test]
fn truncations_at_every_position_are_refused() {
    for name in ["trustee_hopper_report", "nvat_blackwell_575_32", "nvat_switch_ls10", "trustee_hopper_coco_report1"] {
        let c = case(name);
        // The CoCo report's one trailing zero is unsigned: dropping it is
        // the same report; any shorter cut is refused.
        let signed_end = c.report.len() - GpuReport::parse(&c.report).unwrap().trailing_zeros;
        for len in 0..signed_end {
            let result = verifier().verify(&c.report[..len], &c.chain, NOW, &c.nonce);
            assert!(matches!(result, Err(GpuError::Malformed(_))), "{name}: cut at {len}: {result:?}");
        }
    }
    // Appended bytes: zeros up to the allowance are reported, others refused.
    let c = case("trustee_hopper_report");
    let mut padded = c.report.clone();
    padded.extend_from_slice(&[0; 8]);
    assert_eq!(verifier().verify(&padded, &c.chain, NOW, &c.nonce).unwrap().trailing_zeros, 8);
    padded.push(0);
    assert!(matches!(verifier().verify(&padded, &c.chain, NOW, &c.nonce), Err(GpuError::Malformed(_))));
    let mut junk = c.report.clone();
    junk.push(0x01);
    assert!(matches!(verifier().verify(&junk, &c.chain, NOW, &c.nonce), Err(GpuError::Malformed(_))));
    let big = vec![0u8; MAX_REPORT_LEN + 1];
    assert!(matches!(verifier().verify(&big, &c.chain, NOW, &c.nonce), Err(GpuError::TooLarge { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        if let Ok(report) = GpuReport::parse(&bytes) {
            let _ = report.opaque_fields();
            let _ = report.fwid();
        }
    }

    #[test]
    fn a_real_header_with_random_tail_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let mut bytes = case("trustee_hopper_report").report[..45].to_vec();
        bytes.extend_from_slice(&tail);
        if let Ok(report) = GpuReport::parse(&bytes) {
            let _ = report.opaque_fields();
        }
        let c = case("trustee_hopper_report");
        prop_assert!(verifier().verify(&bytes, &c.chain, NOW, &c.nonce).is_err());
    }

    #[test]
    fn random_edits_of_a_real_report_are_refused(
        edits in proptest::collection::vec((0usize..4117, any::<u8>()), 1..4),
    ) {
        let c = case("trustee_hopper_report");
        let mut bytes = c.report.clone();
        for (pos, value) in &edits {
            bytes[*pos] = *value;
        }
        let result = verifier().verify(&bytes, &c.chain, NOW, &c.nonce);
        prop_assert_eq!(result.is_ok(), bytes == c.report);
    }

    #[test]
    fn random_chains_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let c = case("trustee_hopper_report");
        let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        pem.extend_from_slice(B64.encode(&bytes).as_bytes());
        pem.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
        prop_assert!(verifier().verify(&c.report, &pem, NOW, &c.nonce).is_err());
        prop_assert!(verifier().verify(&c.report, &bytes, NOW, &c.nonce).is_err());
    }
}

mod ocsp {
    //! The stapled OCSP responses of google/go-nvattest-tools' H100 set
    //! (SHA-384 CertIDs, delegated responders, 24-hour windows on 2025-08-21).

    use kbs::evidence::gpu::ocsp::{OcspError, verify_chain_ocsp, verify_ocsp_response};

    use super::*;

    const OCSP: &str = "nvidia/google-go-nvattest-tools/testing/testdata/ocsp";
    /// Inside every device-chain response's window.
    const FRESH: OffsetDateTime = datetime!(2025-08-21 12:00 UTC);

    fn response(level: u8) -> Vec<u8> {
        let text = vector(&format!("{OCSP}/test_gpu_certificate_l{level}_base64encoded_ocsp_response.dat"));
        let text: Vec<u8> = text.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
        B64.decode(text).unwrap()
    }

    fn chain() -> Vec<Vec<u8>> {
        let pem = vector(&format!("{GOOGLE}/test_gpu_attestation_certificate_chain.dat"));
        x509_parser::pem::Pem::iter_from_buffer(&pem).map(|p| p.unwrap().contents).collect()
    }

    /// (response level, index of its target in the chain, target, responder).
    const CASES: [(u8, usize, &str, &str); 3] = [
        (4, 1, "GH100 A01 GSP BROM", "NVIDIA OCSP Responder L3 GH100 ICA1 Identity"),
        (3, 2, "NVIDIA GH100 Provisioner ICA 1", "NVIDIA OCSP Responder L2 GH100 Identity"),
        (2, 3, "NVIDIA GH100 Identity", "NVIDIA OCSP Responder L1-A 02"),
    ];

    #[test]
    fn device_chain_responses_are_good_in_their_window() {
        let chain = chain();
        for (level, at, subject, responder) in CASES {
            let good = verify_ocsp_response(&response(level), &chain[at], &chain[at + 1], FRESH)
                .unwrap_or_else(|e| panic!("L{level}: {e}"));
            assert_eq!(good.subject, subject);
            assert_eq!(good.responder, responder);
            assert_eq!(good.next_update - good.this_update, time::Duration::days(1));
            assert!(good.produced_at.date() == datetime!(2025-08-21 00:00 UTC).date());
            // Fresh from thisUpdate to nextUpdate, inclusive; stale outside.
            assert!(verify_ocsp_response(&response(level), &chain[at], &chain[at + 1], good.this_update).is_ok());
            assert!(verify_ocsp_response(&response(level), &chain[at], &chain[at + 1], good.next_update).is_ok());
            for when in [good.this_update - time::Duration::SECOND, good.next_update + time::Duration::SECOND, NOW] {
                let err = verify_ocsp_response(&response(level), &chain[at], &chain[at + 1], when).unwrap_err();
                assert!(matches!(err, OcspError::Stale(_)), "L{level} at {when}: {err}");
                assert_eq!(err.reason(), ReasonCode::CollateralExpired);
            }
        }
    }

    /// The certificates a RIM's XML signature carries, leaf first.
    fn rim_chain(name: &str) -> Vec<Vec<u8>> {
        let xml = String::from_utf8(vector(&format!("{GOOGLE}/rim/{name}"))).unwrap();
        xml.split("<ds:X509Certificate>")
            .skip(1)
            .map(|rest| {
                let b64 = rest.split("</ds:X509Certificate>").next().unwrap();
                B64.decode(b64.chars().filter(|c| !c.is_whitespace()).collect::<String>()).unwrap()
            })
            .collect()
    }

    #[test]
    fn rim_chain_responses_are_good_in_their_window() {
        let driver = rim_chain("NV_GPU_DRIVER_GH100_550.90.07.xml");
        let vbios = rim_chain("NV_GPU_VBIOS_1010_0200_882_96009F0001.xml");
        assert_eq!((driver.len(), vbios.len()), (4, 4));
        let at = datetime!(2025-10-24 12:00 UTC);
        let cases = [
            ("test_gpu_driver_rim_l4", &driver, 0, "NVIDIA OCSP Responder L3 GH100 002"),
            ("test_gpu_vbios_l4", &vbios, 0, "NVIDIA OCSP Responder L3 GH100 002"),
            ("test_gpu_driver_rim_l3", &driver, 1, "NVIDIA OCSP Responder L2 Reference Value GH100"),
            ("test_gpu_rim_l2", &driver, 2, "NVIDIA OCSP Responder L1 CoRIM Root"),
        ];
        for (file, chain, i, responder) in cases {
            let der = response_file(file);
            let good =
                verify_ocsp_response(&der, &chain[i], &chain[i + 1], at).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(good.responder, responder);
            // Stale now: OCSP windows are a day long.
            assert!(matches!(verify_ocsp_response(&der, &chain[i], &chain[i + 1], NOW), Err(OcspError::Stale(_))));
        }
        // The two L4 signers differ: each response is about its own.
        let err = verify_ocsp_response(&response_file("test_gpu_driver_rim_l4"), &vbios[0], &vbios[1], at).unwrap_err();
        assert!(matches!(err, OcspError::Unauthentic(_)), "{err}");
    }

    fn response_file(file: &str) -> Vec<u8> {
        let text: Vec<u8> = vector(&format!("{OCSP}/{file}_base64encoded_ocsp_response.dat"))
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        B64.decode(text).unwrap()
    }

    /// The chain of a case as the verifier parsed it, once it verified.
    fn verified_chain(c: &Case) -> Vec<Vec<u8>> {
        verifier().verify_with_report(&c.report, &c.chain, NOW, &c.nonce).unwrap().chain
    }

    #[test]
    fn a_device_chain_is_good_only_with_a_fresh_response_for_each_covered_certificate() {
        let c = case("google_spt_hopper_full");
        let chain = verified_chain(c);
        let all = vec![response(2), response(3), response(4)];
        let good = verify_chain_ocsp(&chain, &all, FRESH).unwrap();
        let subjects: Vec<&str> = good.iter().map(|g| g.subject.as_str()).collect();
        assert_eq!(subjects, ["GH100 A01 GSP BROM", "NVIDIA GH100 Provisioner ICA 1", "NVIDIA GH100 Identity"]);
        // Order does not matter; unrelated responses are ignored.
        let mut shuffled = vec![response_file("test_gpu_rim_l2"), response(4), response(2), response(3)];
        shuffled.reverse();
        assert_eq!(verify_chain_ocsp(&chain, &shuffled, FRESH).unwrap(), good);
        // One missing: refused, naming it.
        let err = verify_chain_ocsp(&chain, &all[1..], FRESH).unwrap_err();
        assert_eq!(err, OcspError::Missing("NVIDIA GH100 Identity".into()));
        assert_eq!(err.reason(), ReasonCode::CollateralUnavailable);
        // Stale now.
        assert!(matches!(verify_chain_ocsp(&chain, &all, NOW), Err(OcspError::Stale(_))));
        // Another device's chain: the BROM response is not about its BROM.
        let other = verified_chain(case("trustee_hopper_coco_report1"));
        assert!(
            matches!(verify_chain_ocsp(&other, &all, FRESH), Err(OcspError::Missing(m)) if m == "GH100 A01 GSP BROM")
        );
        // Too many responses.
        assert!(matches!(verify_chain_ocsp(&chain, &vec![response(2); 17], FRESH), Err(OcspError::Malformed(_))));
        // The chain the verifier hands out is the PEM's, certificate for
        // certificate; one of another length is malformed.
        assert_eq!(chain, kbs::evidence::gpu::chain::pem_chain(&c.chain).unwrap());
        let mut six = chain.clone();
        six.push(chain[4].clone());
        for shape in [&chain[..0], &chain[..4], &six[..]] {
            let err = verify_chain_ocsp(shape, &all, FRESH).unwrap_err();
            assert!(matches!(err, OcspError::Malformed(_)), "{} certificates: {err}", shape.len());
            assert_eq!(err.reason(), ReasonCode::EvidenceMalformed);
        }
        // Recorded in the claims.
        let claims = verify(c).unwrap().with_revocation(&good);
        let value = serde_json::to_value(&claims).unwrap();
        assert_eq!(value["revocation"]["device_chain"], "good");
        assert_eq!(value["revocation"]["certificates"][0]["subject"], "GH100 A01 GSP BROM");
        assert_eq!(value["revocation"]["certificates"][2]["next_update"], "2025-08-22T06:47:08Z");
        assert!(serde_json::to_value(verify(c).unwrap()).unwrap().get("revocation").is_none());
    }

    #[test]
    fn a_response_is_only_about_its_own_certificate() {
        let chain = chain();
        // L4 (about the BROM certificate) presented for the ICA.
        let err = verify_ocsp_response(&response(4), &chain[2], &chain[3], FRESH).unwrap_err();
        assert!(matches!(err, OcspError::Unauthentic(ref m) if m.contains("CertID")), "{err}");
        // Another device's BROM certificate under the same ICA.
        let other = x509_parser::pem::Pem::iter_from_buffer(&case("trustee_hopper_coco_report1").chain)
            .map(|p| p.unwrap().contents)
            .collect::<Vec<_>>();
        let err = verify_ocsp_response(&response(4), &other[1], &other[2], FRESH).unwrap_err();
        assert!(matches!(err, OcspError::Unauthentic(_)), "{err}");
        // A target its claimed issuer did not sign.
        let err = verify_ocsp_response(&response(4), &chain[1], &chain[3], FRESH).unwrap_err();
        assert!(matches!(err, OcspError::Unauthentic(_)), "{err}");
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_refused() {
        let chain = chain();
        let original = response(4);
        for pos in 0..original.len() {
            let mut flipped = original.clone();
            flipped[pos] ^= 1 << (pos % 8);
            assert!(verify_ocsp_response(&flipped, &chain[1], &chain[2], FRESH).is_err(), "flip at {pos}");
        }
        for len in 0..original.len() {
            let err = verify_ocsp_response(&original[..len], &chain[1], &chain[2], FRESH).unwrap_err();
            assert!(matches!(err, OcspError::Malformed(_)), "cut at {len}: {err}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic_the_ocsp_parser(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let chain = chain();
            prop_assert!(verify_ocsp_response(&bytes, &chain[1], &chain[2], FRESH).is_err());
        }
    }
}

mod synthetic {
    //! A test PKI of the NVIDIA shape, for the checks no genuine chain can
    //! fail: a leaf that certifies another firmware or another device key,
    //! an unknown chip, a CA as leaf, an expired intermediate. The report is
    //! the genuine H100's, re-signed with the test leaf's key.

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        PKCS_ECDSA_P384_SHA384,
    };

    use super::*;

    /// The genuine H100 report's FWID.
    const FWID: &str =
        "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d";

    struct Spec {
        leaf_cn: &'static str,
        device_cn: &'static str,
        /// None: no FWID extension.
        fwid: Option<[u8; 48]>,
        /// The FWID extension names the ICA's key instead of the device's.
        foreign_device_key: bool,
        leaf_is_ca: bool,
        ica_not_after: OffsetDateTime,
        /// The FWID in Blackwell's DiceTcbInfo shape instead of RIoT's.
        dice_tcb_info: bool,
    }

    impl Default for Spec {
        fn default() -> Self {
            Self {
                leaf_cn: "GH100 A01 GSP FMC LF",
                device_cn: "GH100 A01 GSP BROM",
                fwid: Some(hex::decode(FWID).unwrap().try_into().unwrap()),
                foreign_device_key: false,
                leaf_is_ca: false,
                ica_not_after: datetime!(2099-01-01 00:00 UTC),
                dice_tcb_info: false,
            }
        }
    }

    struct Pki {
        root: Vec<u8>,
        chain: Vec<u8>,
        report: Vec<u8>,
    }

    fn params(cn: &str, ca: bool) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name.push(DnType::OrganizationName, "Test NVIDIA");
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.not_before = datetime!(2020-01-01 00:00 UTC);
        p.not_after = datetime!(2099-01-01 00:00 UTC);
        p
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..=0x7F => out.push(u8::try_from(n).unwrap()),
            n @ 0x80..=0xFF => out.extend_from_slice(&[0x81, u8::try_from(n).unwrap()]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// RIoT CompositeDeviceID: `SEQ { INT 1, SPKI, SEQ { sha384, OCTET fwid } }`.
    fn riot(spki: &[u8], fwid: &[u8; 48]) -> Vec<u8> {
        let sha384 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
        let fwid_seq = tlv(0x30, &[tlv(0x06, &sha384), tlv(0x04, fwid)].concat());
        tlv(0x30, &[tlv(0x02, &[1]), spki.to_vec(), fwid_seq].concat())
    }

    /// DiceTcbInfo: `SEQ { [0] vendor, [1] model, [6] fwids SEQ OF SEQ { sha384, OCTET } }`.
    fn dice_tcb_info(fwid: &[u8; 48]) -> Vec<u8> {
        let sha384 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
        let fwid_seq = tlv(0x30, &[tlv(0x06, &sha384), tlv(0x04, fwid)].concat());
        let other = tlv(0x30, &[tlv(0x06, &sha384), tlv(0x04, &[0; 48])].concat());
        tlv(0x30, &[tlv(0x80, b"NVIDIA"), tlv(0x81, b"GB100 A01 GSP"), tlv(0xA6, &[fwid_seq, other].concat())].concat())
    }

    fn spki(der: &[u8]) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.public_key().raw.to_vec()
    }

    fn build(spec: &Spec) -> Pki {
        let key = || KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let (root_key, identity_key, ica_key, device_key, leaf_key) = (key(), key(), key(), key(), key());
        let root_params = params("Test NVIDIA Device Identity CA", true);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::from_params(&root_params, &root_key);
        let identity_params = params("Test NVIDIA GH100 Identity", true);
        let identity = identity_params.signed_by(&identity_key, &root_issuer).unwrap();
        let identity_issuer = Issuer::from_params(&identity_params, &identity_key);
        let mut ica_params = params("Test NVIDIA GH100 Provisioner ICA 1", true);
        ica_params.not_after = spec.ica_not_after;
        let ica = ica_params.signed_by(&ica_key, &identity_issuer).unwrap();
        let ica_issuer = Issuer::from_params(&ica_params, &ica_key);
        let device_params = params(spec.device_cn, true);
        let device = device_params.signed_by(&device_key, &ica_issuer).unwrap();
        let device_issuer = Issuer::from_params(&device_params, &device_key);
        let mut leaf_params = params(spec.leaf_cn, spec.leaf_is_ca);
        if let Some(fwid) = &spec.fwid {
            let named = if spec.foreign_device_key { spki(ica.der()) } else { spki(device.der()) };
            let ext = if spec.dice_tcb_info {
                CustomExtension::from_oid_content(&[2, 23, 133, 5, 4, 1, 1], dice_tcb_info(fwid))
            } else {
                CustomExtension::from_oid_content(&[2, 23, 133, 5, 4, 1], riot(&named, fwid))
            };
            leaf_params.custom_extensions.push(ext);
        }
        let leaf = leaf_params.signed_by(&leaf_key, &device_issuer).unwrap();
        let chain = to_pem(&[leaf, device, ica, identity, root.clone()].map(|c| c.der().to_vec()));
        // The genuine H100 report, re-signed by the test leaf.
        let mut report = case("trustee_hopper_report").report.clone();
        let signed_len = report.len() - 96;
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &leaf_key.serialize_der()).unwrap();
        let signature = signer.sign(&SystemRandom::new(), &report[..signed_len]).unwrap();
        report.truncate(signed_len);
        report.extend_from_slice(signature.as_ref());
        Pki { root: root.der().to_vec(), chain, report }
    }

    fn run(spec: &Spec) -> Result<GpuDeviceClaims, GpuError> {
        let pki = build(spec);
        let mut anchors = GpuAnchors::empty();
        anchors.add_root(&pki.root).unwrap();
        GpuVerifier::new(anchors).verify(&pki.report, &pki.chain, NOW, &nonce(NONCE_931D))
    }

    #[test]
    fn the_test_pki_passes_as_built() {
        let claims = run(&Spec::default()).unwrap();
        assert_eq!(claims.chip, "GH100");
        assert_eq!(claims.evidence.fwid, FwidCheck::Match);
        assert_eq!(claims.fwid.as_deref(), Some(FWID));
        // Only a pinned root is trusted: the NVIDIA anchors refuse it.
        let pki = build(&Spec::default());
        assert!(matches!(
            verify(&Case { report: pki.report, chain: pki.chain, ..case("trustee_hopper_report").clone() }),
            Err(GpuError::UntrustedRoot(_))
        ));
    }

    #[test]
    fn a_leaf_certifying_other_firmware_is_refused() {
        let err = run(&Spec { fwid: Some([0x11; 48]), ..Spec::default() }).unwrap_err();
        assert!(matches!(err, GpuError::FwidMismatch(ref m) if m.contains("another firmware")), "{err}");
        let err = run(&Spec { fwid: None, ..Spec::default() }).unwrap_err();
        assert!(matches!(err, GpuError::FwidMismatch(ref m) if m.contains("no FWID")), "{err}");
        // The DiceTcbInfo shape: its first FWID is compared.
        assert_eq!(run(&Spec { dice_tcb_info: true, ..Spec::default() }).unwrap().evidence.fwid, FwidCheck::Match);
        let err = run(&Spec { dice_tcb_info: true, fwid: Some([0x22; 48]), ..Spec::default() }).unwrap_err();
        assert!(matches!(err, GpuError::FwidMismatch(_)), "{err}");
        let err = run(&Spec { foreign_device_key: true, ..Spec::default() }).unwrap_err();
        assert!(matches!(err, GpuError::FwidMismatch(ref m) if m.contains("device key")), "{err}");
    }

    #[test]
    fn unknown_or_inconsistent_chips_are_refused() {
        let err = run(&Spec { leaf_cn: "GA100 A01 GSP FMC LF", device_cn: "GA100 A01 GSP BROM", ..Spec::default() })
            .unwrap_err();
        assert!(matches!(err, GpuError::UnsupportedDevice(ref m) if m.contains("GA100")), "{err}");
        let err = run(&Spec { device_cn: "GB100 A01 GSP BROM", ..Spec::default() }).unwrap_err();
        assert!(matches!(err, GpuError::UnsupportedDevice(_)), "{err}");
        assert_eq!(err.reason(), ReasonCode::GpuEvidenceInvalid);
    }

    #[test]
    fn shape_and_validity_of_the_chain_are_checked() {
        let err = run(&Spec { leaf_is_ca: true, ..Spec::default() }).unwrap_err();
        assert!(matches!(err, GpuError::ChainInvalid(ref m) if m.contains("leaf")), "{err}");
        let err = run(&Spec { ica_not_after: datetime!(2024-01-01 00:00 UTC), ..Spec::default() }).unwrap_err();
        assert!(matches!(err, GpuError::CertificateExpired(ref m) if m.contains("Provisioner ICA")), "{err}");
    }
}

mod device_set {
    //! Set checks on the multi-device vectors: nvtrust's and google's PPCIe
    //! systems (8 H100 + 4 NVSwitch), google's MPT system (8 Blackwell),
    //! NVAT's repeated switch.

    use kbs::evidence::gpu::set::{DeviceSetError, DeviceSetExpectation, TopologyCheck, check_device_set};

    use super::*;

    fn claims(prefix: &str, n: usize) -> Vec<GpuDeviceClaims> {
        (0..n).map(|i| verify(case(&format!("{prefix}{i}"))).unwrap()).collect()
    }

    fn ppcie() -> Vec<GpuDeviceClaims> {
        let mut all = claims("nvtrust_ppcie_gpu_", 8);
        all.extend(claims("nvtrust_ppcie_switch_", 4));
        all
    }

    const HGX: DeviceSetExpectation = DeviceSetExpectation { gpus: 8, switches: 4 };

    #[test]
    fn whole_systems_pass_with_their_expected_shape() {
        let summary = check_device_set(&ppcie(), &HGX).unwrap();
        assert_eq!((summary.gpus, summary.switches, summary.mode), (8, 4, Some(FeatureFlag::Ppcie)));
        assert_eq!(summary.topology, TopologyCheck::Ok);
        assert_eq!(
            serde_json::to_value(&summary).unwrap(),
            serde_json::json!({"gpus": 8, "switches": 4, "mode": "ppcie", "topology": "ok"})
        );
        let mut google = claims("google_ppcie_hopper_gpu", 8);
        google.extend(claims("google_ppcie_ls10_switch", 4));
        // This set's firmware predates the feature flag.
        assert_eq!(check_device_set(&google, &HGX).unwrap().mode, None);
        let mpt = claims("google_mpt_blackwell_gpu", 8);
        let summary = check_device_set(&mpt, &DeviceSetExpectation { gpus: 8, switches: 0 }).unwrap();
        assert_eq!(summary.mode, Some(FeatureFlag::Mpt));
        assert_eq!(summary.topology, TopologyCheck::NotApplicable);
    }

    #[test]
    fn a_set_that_is_not_the_expected_one_is_refused() {
        let all = ppcie();
        // A GPU dropped, a switch dropped, or no switches expected.
        for (devices, expected) in
            [(&all[1..], HGX), (&all[..11], HGX), (&all[..], DeviceSetExpectation { gpus: 8, switches: 0 })]
        {
            let err = check_device_set(devices, &expected).unwrap_err();
            assert!(matches!(err, DeviceSetError::CountMismatch { .. }), "{err}");
            assert_eq!(err.reason(), ReasonCode::GpuCountMismatch);
        }
        // One GPU twice in place of another.
        let mut doubled = all.clone();
        doubled[1] = doubled[0].clone();
        let err = check_device_set(&doubled, &HGX).unwrap_err();
        assert_eq!(err, DeviceSetError::Duplicate(all[0].device_key_sha256.clone()));
        assert_eq!(err.reason(), ReasonCode::GpuCountMismatch);
        // NVAT's four copies of one switch.
        let repeated = claims("nvat_multi_switch_ls10_", 4);
        let err = check_device_set(&repeated, &DeviceSetExpectation { gpus: 0, switches: 4 }).unwrap_err();
        assert!(matches!(err, DeviceSetError::Duplicate(_)), "{err}");
    }

    #[test]
    fn devices_must_share_one_checked_nonce_and_mode() {
        // Devices of two attestations (different nonces).
        let mut mixed = claims("nvtrust_ppcie_gpu_", 7);
        mixed.push(verify(case("google_ppcie_hopper_gpu0")).unwrap());
        let err = check_device_set(&mixed, &DeviceSetExpectation { gpus: 8, switches: 0 }).unwrap_err();
        assert_eq!(err, DeviceSetError::NonceDiffers);
        // Inspection-only claims never count.
        let c = case("nvtrust_ppcie_gpu_0");
        let mut uninspected = claims("nvtrust_ppcie_gpu_", 8);
        uninspected[3] = verifier().inspect_without_nonce(&c.report, &c.chain, NOW).unwrap();
        let err = check_device_set(&uninspected, &DeviceSetExpectation { gpus: 8, switches: 0 }).unwrap_err();
        assert_eq!(err, DeviceSetError::NonceNotChecked(3));
        assert_eq!(err.reason(), ReasonCode::GpuEvidenceInvalid);
        // Mixed modes (the claims edited: no real set mixes them).
        let mut modes = ppcie();
        modes[2].feature = Some(FeatureFlag::Spt);
        assert_eq!(check_device_set(&modes, &HGX).unwrap_err(), DeviceSetError::MixedModes);
        // The topology: a switch of another system in place of one of
        // these, or a GPU whose NVLinks reach other switches.
        let mut foreign = ppcie();
        foreign[11] = verify(case("google_ppcie_ls10_switch0")).unwrap();
        foreign[11].nonce = foreign[0].nonce.clone();
        let err = check_device_set(&foreign, &HGX).unwrap_err();
        assert!(matches!(err, DeviceSetError::Topology(ref m) if m.contains("not the switches")), "{err}");
        assert_eq!(err.reason(), ReasonCode::GpuCountMismatch);
        let mut rewired = ppcie();
        rewired[5].pdis[0] = "0102030405060708".into();
        let err = check_device_set(&rewired, &HGX).unwrap_err();
        assert!(matches!(err, DeviceSetError::Topology(ref m) if m.contains("GPU 5")), "{err}");
        // An empty set is only right when nothing is expected.
        assert!(check_device_set(&[], &DeviceSetExpectation { gpus: 0, switches: 0 }).is_ok());
        assert!(check_device_set(&[], &DeviceSetExpectation { gpus: 1, switches: 0 }).is_err());
    }
}
