//! NVIDIA RIM verification and measurement appraisal on the real RIMs of
//! the shared vectors (read from there, never copied): every genuine RIM's
//! XML signature, digest and chain verify to the pinned CoRIM root; the
//! complete H100 set's report matches its driver and VBIOS RIMs (32 active
//! measurements); NVIDIA's negative RIMs fail where they are meant to; any
//! edit of a signed RIM is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use kbs::evidence::gpu::rim::{self, Rim, RimCheck, RimError};
use kbs::evidence::gpu::{GpuAnchors, GpuReport, Nvdec0};
use time::OffsetDateTime;
use time::macros::datetime;

#[path = "../../tests/tests/support/vectors.rs"]
mod vectors;

use vectors::{vector, vectors_dir};

const GOOGLE: &str = "nvidia/google-go-nvattest-tools/testing/testdata";
const NVAT: &str = "nvidia/nvidia-attestation-sdk/nv-attestation-sdk-cpp/unit-tests/testdata";

/// Inside the validity of the google RIM chains (their OCSP window).
const IN_WINDOW: OffsetDateTime = datetime!(2025-10-24 12:00 UTC);

fn anchors() -> GpuAnchors {
    GpuAnchors::nvidia_rim().unwrap()
}

fn verify(xml: &[u8], now: OffsetDateTime, accept_expired: bool) -> Result<Rim, RimError> {
    let anchors = anchors();
    rim::verify_rim(xml, &RimCheck { anchors: &anchors, now, accept_expired })
}

/// Every RIM file under the NVIDIA vectors, with its path.
fn all_rims() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![vectors_dir().join("nvidia")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "xml" || e == "swidtag") {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Negative fixtures of the vectors' sources: parser fixtures (google's
/// `failure_*` and goxmldsig's test document, which are not NVIDIA-signed)
/// and NVIDIA's edited or foreign-signed RIMs.
fn is_negative(path: &str) -> bool {
    ["failure_", "incorrect_", "_invalid_signature", "_expired.xml", "_mismatch", "valid_signed_xml", "success_payload"]
        .iter()
        .any(|m| path.contains(m))
}

#[test]
fn every_genuine_rim_verifies_to_the_nvidia_root() {
    let rims = all_rims();
    let genuine: Vec<&(String, Vec<u8>)> = rims.iter().filter(|(p, _)| !is_negative(p)).collect();
    assert!(genuine.len() >= 30, "{} genuine RIMs found", genuine.len());
    for (path, xml) in genuine {
        // Some signers are expired today: verified as of their signing, and
        // today only with the explicit acceptance of an expired signer.
        let rim = verify(xml, IN_WINDOW, true).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(!rim.version.is_empty(), "{path}");
        assert!(rim.measurements.iter().any(|m| m.active), "{path}");
        assert!(!rim.signer.is_empty(), "{path}");
    }
}

#[test]
fn the_complete_h100_set_matches_its_rims() {
    let driver = verify(&vector(&format!("{GOOGLE}/rim/NV_GPU_DRIVER_GH100_550.90.07.xml")), IN_WINDOW, false).unwrap();
    let vbios =
        verify(&vector(&format!("{GOOGLE}/rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml")), IN_WINDOW, false).unwrap();
    assert_eq!((driver.version.as_str(), vbios.version.as_str()), ("550.90.07", "96.00.9F.00.01"));
    assert!(!driver.signer_expired && !vbios.signer_expired);
    assert_eq!(driver.measurements.iter().filter(|m| m.active).count(), 21);
    assert_eq!(vbios.measurements.iter().filter(|m| m.active).count(), 12);

    let bytes = vector(&format!("{GOOGLE}/test_raw_gpu_attestation_report.dat"));
    let report = GpuReport::parse(&bytes).unwrap();
    let fields = report.opaque_fields().unwrap();
    assert_eq!(fields.driver_version.as_deref(), Some("550.90.07"));
    let nvdec0_disabled = fields.nvdec0 == Some(Nvdec0::Disabled);
    assert!(nvdec0_disabled);
    let blocks = &report.response.blocks;
    let appraisal = rim::appraise(blocks, nvdec0_disabled, &[("driver", &driver), ("vbios", &vbios)]).unwrap();
    assert_eq!(appraisal.checked, 32);
    assert_eq!(appraisal.skipped, vec![rim::NVDEC0_INDEX]);

    // One measurement off, and the appraisal names its index.
    let mut altered = blocks.clone();
    let victim = altered.iter_mut().find(|b| b.index == 10).unwrap();
    victim.digest[0] ^= 1;
    assert_eq!(
        rim::appraise(&altered, nvdec0_disabled, &[("driver", &driver), ("vbios", &vbios)]),
        Err(RimError::MeasurementMismatch(vec![9]))
    );
    // The RIM of another VBIOS does not fit.
    let other = verify(&vector(&format!("{GOOGLE}/rim/success_valid_rim.xml")), IN_WINDOW, true).unwrap();
    assert!(matches!(
        rim::appraise(blocks, nvdec0_disabled, &[("driver", &driver), ("vbios", &other)]),
        Err(RimError::MeasurementMismatch(_))
    ));
}

#[test]
fn expired_signers_need_explicit_acceptance() {
    let xml = vector(&format!("{GOOGLE}/rim/NV_GPU_DRIVER_GH100_550.90.07.xml"));
    let today = datetime!(2026-12-07 00:00 UTC);
    assert!(matches!(verify(&xml, today, false), Err(RimError::CertificateExpired(e)) if e.contains("Signer")));
    let accepted = verify(&xml, today, true).unwrap();
    assert!(accepted.signer_expired);
}

#[test]
fn nvidia_negative_rims_fail_where_meant_to() {
    let expect = |rel: &str, check: fn(&RimError) -> bool| {
        let err = verify(&vector(&format!("{NVAT}/{rel}")), IN_WINDOW, true).unwrap_err();
        assert!(check(&err), "{rel}: {err}");
    };
    expect("incorrect_signature_driver_rim.xml", |e| {
        matches!(e, RimError::SignatureInvalid | RimError::DigestMismatch)
    });
    expect("incorrect_cert_chain_driver_rim.xml", |e| matches!(e, RimError::ChainInvalid(_)));
    expect("sample_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_invalid_signature.xml", |e| {
        matches!(e, RimError::SignatureInvalid | RimError::DigestMismatch)
    });
    expect("sample_rims/NV_GPU_DRIVER_GH100_570.124.03_expired.xml", |e| matches!(e, RimError::DigestMismatch));
    expect("sample_rims/NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml", |e| {
        matches!(e, RimError::DigestMismatch)
    });
    expect("sample_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_measurement_mismatch.xml", |e| {
        matches!(e, RimError::DigestMismatch)
    });

    // Signed RIMs whose values do not fit NVAT's 535.86.09 sample report,
    // where the published VBIOS RIM does.
    let text =
        String::from_utf8(vector(&format!("{NVAT}/sample_attestation_data/gpu/hopperAttestationReport.txt"))).unwrap();
    let bytes = hex::decode(text.trim()).unwrap();
    let report = GpuReport::parse(&bytes).unwrap();
    let nvdec0_disabled = report.opaque_fields().unwrap().nvdec0 == Some(Nvdec0::Disabled);
    let published = verify(
        &vector("nvidia/nvtrust/local_gpu_verifier/samples/1010_0200_882_96005E0001_PROD.swidtag"),
        IN_WINDOW,
        true,
    )
    .unwrap();
    let fits = rim::appraise(&report.response.blocks, nvdec0_disabled, &[("vbios", &published)]).unwrap();
    assert_eq!(fits.checked, 12);
    let mismatched = verify(
        &vector(&format!("{NVAT}/sample_rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml")),
        IN_WINDOW,
        true,
    )
    .unwrap();
    assert_eq!(mismatched.version, published.version);
    assert!(matches!(
        rim::appraise(&report.response.blocks, nvdec0_disabled, &[("vbios", &mismatched)]),
        Err(RimError::MeasurementMismatch(_))
    ));

    // Parser fixtures that NVIDIA did not sign: never accepted.
    for (path, xml) in all_rims().iter().filter(|(p, _)| p.contains("/rim/failure_") || p.contains("valid_signed_xml"))
    {
        assert!(verify(xml, IN_WINDOW, true).is_err(), "{path}");
    }
}

#[test]
fn edits_anywhere_in_a_signed_rim_are_refused() {
    let xml = vector(&format!("{GOOGLE}/rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"));
    let text = String::from_utf8(xml.clone()).unwrap();
    // A reference value, a version, an attribute order-preserving swap of
    // active flags, a namespace, and the signature value.
    for (from, to) in [
        ("colloquialVersion=\"96.00.9F.00.01\"", "colloquialVersion=\"96.00.9F.00.02\""),
        ("active=\"True\"", "active=\"False\""),
        (
            "xmlns:ns2=\"http://www.w3.org/2001/04/xmlenc#sha384\"",
            "xmlns:ns2=\"http://www.w3.org/2001/04/xmlenc#sha256\"",
        ),
        ("<ds:SignatureValue>", "<ds:SignatureValue>AAAA"),
    ] {
        assert!(text.contains(from), "{from}");
        let edited = text.replacen(from, to, 1);
        assert!(verify(edited.as_bytes(), IN_WINDOW, true).is_err(), "{from} -> {to}");
    }
    // A second signature, and a comment, are refused outright.
    let doubled = text.replacen("<ds:Signature", "<ds:Signature Id=\"x\"/><ds:Signature", 1);
    assert!(verify(doubled.as_bytes(), IN_WINDOW, true).is_err());
    let commented = text.replacen("<ns0:Payload", "<!-- x --><ns0:Payload", 1);
    assert!(
        matches!(verify(commented.as_bytes(), IN_WINDOW, true), Err(RimError::Malformed(e)) if e.contains("comment"))
    );
    // Whitespace the canonical form keeps is signed too.
    let spaced = text.replacen("<ns0:Payload", " <ns0:Payload", 1);
    assert_eq!(verify(spaced.as_bytes(), IN_WINDOW, true), Err(RimError::DigestMismatch));
    // Truncations never panic.
    for len in (0..xml.len()).step_by(997) {
        assert!(verify(&xml[..len], IN_WINDOW, true).is_err());
    }
}

/// A store of the complete H100 set's RIMs appraises its report by the
/// versions the report names; without the VBIOS RIM the device is reported
/// as missing one, and a second, different RIM for a version is refused.
#[test]
fn a_rim_store_appraises_reports_by_their_versions() {
    let anchors = anchors();
    let check = RimCheck { anchors: &anchors, now: IN_WINDOW, accept_expired: false };
    let mut store = rim::RimStore::default();
    store.add(&vector(&format!("{GOOGLE}/rim/NV_GPU_DRIVER_GH100_550.90.07.xml")), &check).unwrap();
    let bytes = vector(&format!("{GOOGLE}/test_raw_gpu_attestation_report.dat"));
    let report = GpuReport::parse(&bytes).unwrap();
    assert_eq!(
        store.appraise_report(&report).unwrap(),
        rim::DeviceAppraisal::Missing(vec!["vbios 96.00.9F.00.01".into()])
    );
    let vbios = vector(&format!("{GOOGLE}/rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"));
    store.add(&vbios, &check).unwrap();
    store.add(&vbios, &check).unwrap();
    assert_eq!(store.len(), 2);
    match store.appraise_report(&report).unwrap() {
        rim::DeviceAppraisal::Match(a) => assert_eq!(a.checked, 32),
        other => panic!("{other:?}"),
    }
    assert!(store.get("96.00.9f.00.01").is_some(), "versions compare without case");
}
