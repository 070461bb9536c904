//! Known-answer and negative tests of the SEV-SNP verifier on real hardware
//! evidence (read from the shared vectors directory, never copied into the
//! repository), plus a small test PKI for the checks no real report can
//! fail (a genuine VEK always matches its own report's TCB and chip).
//!
//! Vectors come from `$KBS_TEST_VECTORS`, by default
//! `$CARGO_MANIFEST_DIR/../../shared/vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kbs::evidence::anchors::{
    ARK_GENOA_SHA256, ARK_MILAN_SHA256, ARK_TURIN_SHA256, ASK_GENOA_SHA256, ASK_MILAN_SHA256, ASK_TURIN_SHA256,
    ASVK_GENOA_SHA256, ASVK_MILAN_SHA256, ASVK_TURIN_SHA256, Generation, IntermediateKind, SnpAnchors,
};
use kbs::evidence::certtable::{self, CertKind};
use kbs::evidence::collateral::{KdsConfig, KdsFetcher, VekDirectory, VekResolver};
use kbs::evidence::snp::{REPORT_LEN, SigningKey, SnpReport, SnpVerifier, TcbVersion};
use kbs::evidence::{EvidenceError, TeeKind};
use proptest::prelude::*;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Inside every real VEK's validity.
const NOW: OffsetDateTime = datetime!(2025-06-01 00:00 UTC);

#[path = "../../tests/tests/support/vectors.rs"]
mod vectors;

use vectors::vector;

fn pem_to_der(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem).map(|p| p.unwrap().contents).collect()
}

fn amd() -> SnpAnchors {
    SnpAnchors::amd().unwrap()
}

fn verifier() -> SnpVerifier {
    SnpVerifier::new(amd())
}

fn report_data(r: &[u8]) -> [u8; 64] {
    r[0x50..0x90].try_into().unwrap()
}

struct Pass {
    report: &'static str,
    vek: Vec<u8>,
    version: u32,
    generation: Generation,
    key: SigningKey,
    measurement: &'static str,
    report_data: String,
    chip_id: String,
    tcb: (u8, u8, u8, u8),
    policy: u64,
    debug: bool,
    vmpl: u32,
    guest_svn: u32,
    firmware: &'static str,
}

fn pass_vectors() -> &'static [Pass] {
    static PASS: OnceLock<Vec<Pass>> = OnceLock::new();
    PASS.get_or_init(load_pass_vectors)
}

fn load_pass_vectors() -> Vec<Pass> {
    vec![
        Pass {
            report: "virtee-sev/report_milan.bin",
            vek: vector("virtee-sev/vcek_milan.der"),
            version: 2,
            generation: Generation::Milan,
            key: SigningKey::Vcek,
            measurement: "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
            report_data: "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd".into(),
            chip_id: "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6".into(),
            tcb: (3, 0, 8, 115),
            policy: 0x30000,
            debug: false,
            vmpl: 0,
            guest_svn: 0,
            firmware: "1.52.4",
        },
        Pass {
            report: "go-sev-guest/attestation.bin",
            vek: vector("go-sev-guest/vcek.der"),
            version: 2,
            generation: Generation::Milan,
            key: SigningKey::Vcek,
            measurement: "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
            report_data: format!("0102030405{}", "00".repeat(59)),
            chip_id: "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d".into(),
            tcb: (2, 0, 5, 68),
            policy: 0xb0000,
            debug: true,
            vmpl: 0,
            guest_svn: 0,
            firmware: "1.49.3",
        },
        Pass {
            report: "trustee/snp/test-report.bin",
            vek: vector("trustee/snp/test-vcek.der"),
            version: 2,
            generation: Generation::Milan,
            key: SigningKey::Vcek,
            measurement: "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
            report_data: format!("ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2{}", "00".repeat(32)),
            chip_id: "c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f8e8c0bcd9a5d9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e".into(),
            tcb: (3, 0, 8, 115),
            policy: 0x3001f,
            debug: false,
            vmpl: 0,
            guest_svn: 4,
            firmware: "1.52.4",
        },
        Pass {
            report: "trustee/snp/test-vlek-report.bin",
            vek: vector("trustee/snp/test-vlek.der"),
            version: 3,
            generation: Generation::Milan,
            key: SigningKey::Vlek,
            measurement: "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0",
            report_data: "819770b7e6ea6df8dd8fd4dd146b073c0bf4f3ce5b0977ecac486e3a05ed1bd54e2a7ac1f5d1ca02e7d7d5ef9f73b8574fd9359e3a480d741a4478e8a7bc27ca".into(),
            chip_id: "00".repeat(64),
            tcb: (4, 0, 24, 217),
            policy: 0x30000,
            debug: false,
            vmpl: 1,
            guest_svn: 0,
            firmware: "1.55.29",
        },
        Pass {
            report: "trustee/az-snp-vtpm/genoa_snp_report.bin",
            vek: pem_to_der(&vector("trustee/az-snp-vtpm/vcek-genoa.pem")).remove(0),
            version: 3,
            generation: Generation::Genoa,
            key: SigningKey::Vcek,
            measurement: "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae",
            report_data: format!("b581f12e29a2d7d64e5e0b738d563879a78b51c644d0fa0cce02b48699f6bf5f{}", "00".repeat(32)),
            chip_id: "0506ffba875e939c2729d20c74eb72b4c5ba6bf7ea1faaa640141f12c6d64782fb487f68ce69dcd021e914cc0d9244327bc121f0242d6470903ad1d4aaea4ad1".into(),
            tcb: (10, 0, 23, 84),
            policy: 0x3001f,
            debug: false,
            vmpl: 0,
            guest_svn: 65547,
            firmware: "1.55.40",
        },
    ]
}

#[test]
fn every_pass_vector_verifies_with_the_expected_claims() {
    let verifier = SnpVerifier::new(amd());
    for p in pass_vectors() {
        let report = vector(p.report);
        let expected = report_data(&report);
        let verified = verifier
            .verify(&report, &p.vek, &[], NOW, &expected)
            .unwrap_or_else(|e| panic!("{} did not verify: {e}", p.report));
        let c = &verified.claims;
        assert_eq!(c.tee, TeeKind::Snp);
        assert_eq!(c.measurement, p.measurement, "{}", p.report);
        assert_eq!(c.report_data, p.report_data, "{}", p.report);
        assert_eq!(c.debug, p.debug, "{}", p.report);
        let snp = c.snp.as_ref().unwrap();
        assert_eq!(snp.version, p.version, "{}", p.report);
        assert_eq!(snp.generation, p.generation, "{}", p.report);
        assert_eq!(verified.generation(), p.generation);
        assert_eq!(snp.signing_key, p.key, "{}", p.report);
        assert_eq!(snp.chip_id, p.chip_id, "{}", p.report);
        assert_eq!(snp.chip_id_masked, p.key == SigningKey::Vlek);
        let t = snp.reported_tcb;
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode), p.tcb, "{}", p.report);
        assert_eq!(t.fmc, None);
        assert_eq!(snp.policy.raw, p.policy, "{}", p.report);
        assert_eq!(snp.policy.debug, p.debug);
        assert!(snp.policy.smt, "{}: every vector allows SMT", p.report);
        assert!(!snp.policy.migrate_ma && !snp.policy.single_socket);
        assert_eq!(snp.vmpl, p.vmpl, "{}", p.report);
        assert_eq!(snp.guest_svn, p.guest_svn, "{}", p.report);
        assert_eq!(snp.current_firmware.to_string(), p.firmware, "{}", p.report);
        assert_eq!(snp.cpuid.is_some(), p.version >= 3);
        // The claims serialize, with lowercase enums.
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["snp"]["generation"], p.generation.as_str());
        assert_eq!(json["snp"]["signing_key"], if p.key == SigningKey::Vcek { "vcek" } else { "vlek" });
        assert_eq!(json["tee"], "snp");
    }
    assert_eq!(verifier.cached_veks(), 5);
}

#[test]
fn vector_specific_claims() {
    let verifier = SnpVerifier::new(amd());
    // trustee VCEK report: current_tcb is newer than reported_tcb, and only
    // reported_tcb is bound to the VCEK.
    let r = vector("trustee/snp/test-report.bin");
    let v = verifier.verify_ignoring_report_data(&r, &vector("trustee/snp/test-vcek.der"), &[], NOW).unwrap();
    let snp = v.claims.snp.unwrap();
    assert_eq!(snp.current_tcb.microcode, 206);
    assert_eq!(snp.reported_tcb.microcode, 115);
    assert_eq!(
        snp.id_key_digest,
        "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca491ecdd7f336dc28a6e0b2bb57af7a44a3"
    );
    assert_eq!((snp.policy.abi_major, snp.policy.abi_minor), (0, 31));
    assert_eq!(snp.vek_product, "Milan-B0");

    // VLEK report: CPUID says Milan, VLEK from AWS.
    let r = vector("trustee/snp/test-vlek-report.bin");
    let v = verifier.verify_ignoring_report_data(&r, &vector("trustee/snp/test-vlek.der"), &[], NOW).unwrap();
    let snp = v.claims.snp.unwrap();
    let cpuid = snp.cpuid.unwrap();
    assert_eq!((cpuid.family, cpuid.model, cpuid.stepping), (0x19, 0x01, 0x01));
    assert_eq!(snp.vek_product, "Milan");

    // Azure Genoa.
    let r = vector("trustee/az-snp-vtpm/genoa_snp_report.bin");
    let vek = pem_to_der(&vector("trustee/az-snp-vtpm/vcek-genoa.pem")).remove(0);
    let v = verifier.verify_ignoring_report_data(&r, &vek, &[], NOW).unwrap();
    let snp = v.claims.snp.unwrap();
    let cpuid = snp.cpuid.unwrap();
    assert_eq!((cpuid.family, cpuid.model), (0x19, 0x11));
    assert_eq!(
        snp.id_key_digest,
        "942fd93ebde6ea7a96efadeafc60f1c6b3d10e703b1dafd7555b92f7f3d32d0e006767648cba5b102af3d65756af4177"
    );
}

#[test]
fn vlek_report_verifies_inside_and_expires_outside_its_validity() {
    let report = vector("trustee/snp/test-vlek-report.bin");
    let vlek = vector("trustee/snp/test-vlek.der");
    let mut anchors = amd();
    // AMD's ASVKs are built in: the bundles in the vectors add nothing.
    for bundle in ["trustee/snp/milan_ask_ark_asvk.pem", "go-sev-guest/ask_ark_milan_vlek.pem"] {
        assert_eq!(anchors.add_intermediate(&vector(bundle)).unwrap(), 0, "{bundle}");
    }
    let verifier = SnpVerifier::new(anchors);
    verifier.verify_ignoring_report_data(&report, &vlek, &[], datetime!(2025-06-01 00:00 UTC)).unwrap();
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vlek, &[], datetime!(2026-11-28 00:00 UTC)),
        Err(EvidenceError::CertificateExpired(_))
    ));
}

#[test]
fn vlek_report_needs_the_asvk() {
    let report = vector("trustee/snp/test-vlek-report.bin");
    let vlek = vector("trustee/snp/test-vlek.der");
    // ARK-Milan and the VCEK-signing ASK only: nothing pinned vouches for the VLEK.
    let milan = pem_to_der(&vector("go-sev-guest/ask_ark_milan.pem"));
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Milan, &milan[1]).unwrap();
    anchors.add_intermediate(&milan[0]).unwrap();
    let verifier = SnpVerifier::new(anchors);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vlek, &[], NOW),
        Err(EvidenceError::UntrustedRoot(_))
    ));
    // Handing the ASK and ARK in as guest certificates changes nothing.
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vlek, &milan, NOW),
        Err(EvidenceError::UntrustedRoot(_))
    ));
    // The ASVK from the guest's table works: it is signed by the pinned ARK.
    let asvk = pem_to_der(&vector("go-sev-guest/ask_ark_milan_vlek.pem"));
    verifier.verify_ignoring_report_data(&report, &vlek, &asvk, NOW).unwrap();
    // AMD's anchors have it built in.
    SnpVerifier::new(amd()).verify_ignoring_report_data(&report, &vlek, &[], NOW).unwrap();
}

#[test]
fn a_flipped_bit_in_the_signed_region_breaks_the_signature() {
    let verifier = verifier();
    let vek = vector("virtee-sev/vcek_milan.der");
    let good = vector("virtee-sev/report_milan.bin");
    // measurement, report_data, host_data, policy bit, chip_id, reported_tcb
    // (here SignatureInvalid comes first: the signature is check 4, TCB 5),
    // and one bit of the signature itself.
    for (offset, bit) in [
        (0x90, 0x01),
        (0x50, 0x80),
        (0xC0, 0x04),
        (0x0A, 0x08),
        (0x1A0, 0x01),
        (0x187, 0x01),
        (0x2A0, 0x01),
        (0x2E8, 0x40),
    ] {
        let mut bad = good.clone();
        bad[offset] ^= bit;
        assert!(
            matches!(verifier.verify_ignoring_report_data(&bad, &vek, &[], NOW), Err(EvidenceError::SignatureInvalid)),
            "flip at {offset:#x}"
        );
    }
    // A bit in the unused top of r is refused before the curve math.
    let mut bad = good.clone();
    bad[0x2A0 + 60] = 1;
    assert!(matches!(verifier.verify_ignoring_report_data(&bad, &vek, &[], NOW), Err(EvidenceError::SignatureInvalid)));
    verifier.verify_ignoring_report_data(&good, &vek, &[], NOW).unwrap();
}

#[test]
fn another_vectors_vcek_fails_the_signature_check() {
    let verifier = verifier();
    let report = vector("virtee-sev/report_milan.bin");
    // trustee's VCEK is for the same generation and the very same TCB
    // (bl=3 tee=0 snp=8 ucode=115), so only the key differs: check 4 fails.
    let same_tcb = vector("trustee/snp/test-vcek.der");
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &same_tcb, &[], NOW),
        Err(EvidenceError::SignatureInvalid)
    ));
    // go-sev-guest's VCEK also certifies another TCB (bl=2 snp=5 ucode=68),
    // but the report signature (check 4) is checked before the TCB binding
    // (check 5), so the refusal is still SignatureInvalid, not TcbMismatch.
    let other_tcb = vector("go-sev-guest/vcek.der");
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &other_tcb, &[], NOW),
        Err(EvidenceError::SignatureInvalid)
    ));
    // A Genoa VCEK on a Milan report: same story.
    let genoa = pem_to_der(&vector("trustee/az-snp-vtpm/vcek-genoa.pem")).remove(0);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &genoa, &[], NOW),
        Err(EvidenceError::SignatureInvalid)
    ));
    // A Milan VCEK on the v3 Genoa report: CPUID names Genoa, the VCEK is Milan.
    let genoa_report = vector("trustee/az-snp-vtpm/genoa_snp_report.bin");
    assert!(matches!(
        verifier.verify_ignoring_report_data(&genoa_report, &vector("virtee-sev/vcek_milan.der"), &[], NOW),
        Err(EvidenceError::ChainInvalid(_))
    ));
}

#[test]
fn size_version_algorithm_and_reserved_checks_on_a_real_report() {
    let verifier = verifier();
    let vek = vector("virtee-sev/vcek_milan.der");
    let good = vector("virtee-sev/report_milan.bin");

    let truncated = &good[..REPORT_LEN - 1];
    assert!(matches!(
        verifier.verify_ignoring_report_data(truncated, &vek, &[], NOW),
        Err(EvidenceError::Malformed(_))
    ));
    let mut oversized = good.clone();
    oversized.push(0);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&oversized, &vek, &[], NOW),
        Err(EvidenceError::TooLarge { len: 1185, max: REPORT_LEN })
    ));
    for version in [1u32, 4, 6] {
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&version.to_le_bytes());
        assert!(matches!(
            verifier.verify_ignoring_report_data(&bad, &vek, &[], NOW),
            Err(EvidenceError::UnsupportedVersion(v)) if v == version
        ));
    }
    let mut bad = good.clone();
    bad[0x34] = 2;
    assert!(matches!(
        verifier.verify_ignoring_report_data(&bad, &vek, &[], NOW),
        Err(EvidenceError::UnsupportedSignatureAlgorithm(2))
    ));
    for offset in [0x4C, 0x18B, 0x1EB, 0x1F8, 0x29F, 0x330, 0x49F] {
        let mut bad = good.clone();
        bad[offset] = 0xff;
        assert!(
            matches!(
                verifier.verify_ignoring_report_data(&bad, &vek, &[], NOW),
                Err(EvidenceError::ReservedNonZero(_))
            ),
            "reserved byte {offset:#x}"
        );
    }
    // Malformed evidence maps to the reason codes a client sees.
    assert_eq!(EvidenceError::ReservedNonZero("x").reason().as_str(), "evidence_malformed");
    assert_eq!(EvidenceError::UnsupportedSignatureAlgorithm(2).reason().as_str(), "unsupported_version");
    // None of that reached the chain: the cache is still empty.
    assert_eq!(verifier.cached_veks(), 0);
}

#[test]
fn a_v2_report_with_masked_chip_id_parses() {
    let mut r = vector("virtee-sev/report_milan.bin");
    r[0x1A0..0x1E0].fill(0);
    let parsed = SnpReport::parse(&r).unwrap();
    assert_eq!(parsed.chip_id(), &[0u8; 64]);
    assert_eq!(parsed.generation(), None);
    // ...but a VCEK-signed report is then bound to no chip: refused (the
    // signature breaks first, since chip_id is signed).
    assert!(matches!(
        verifier().verify_ignoring_report_data(&r, &vector("virtee-sev/vcek_milan.der"), &[], NOW),
        Err(EvidenceError::SignatureInvalid)
    ));
}

#[test]
fn certificate_validity_is_checked_at_now() {
    let verifier = verifier();
    let vek = vector("virtee-sev/vcek_milan.der");
    let report = vector("virtee-sev/report_milan.bin");
    // VCEK valid 2023-04-03 19:23:43 .. 2030-04-03 19:23:43 UTC.
    for now in [datetime!(2023-04-03 19:23:42 UTC), datetime!(2030-04-03 19:23:44 UTC), datetime!(2046-01-01 0:00 UTC)]
    {
        assert!(
            matches!(
                verifier.verify_ignoring_report_data(&report, &vek, &[], now),
                Err(EvidenceError::CertificateExpired(_))
            ),
            "{now}"
        );
    }
    for now in [datetime!(2023-04-03 19:23:43 UTC), datetime!(2030-04-03 19:23:43 UTC)] {
        verifier.verify_ignoring_report_data(&report, &vek, &[], now).unwrap();
    }
}

#[test]
fn report_data_must_match_when_expected() {
    let verifier = verifier();
    let vek = vector("virtee-sev/vcek_milan.der");
    let report = vector("virtee-sev/report_milan.bin");
    let mut wrong = report_data(&report);
    wrong[63] ^= 1;
    assert!(matches!(verifier.verify(&report, &vek, &[], NOW, &wrong), Err(EvidenceError::ReportDataMismatch)));
    assert!(matches!(verifier.verify(&report, &vek, &[], NOW, &[0u8; 64]), Err(EvidenceError::ReportDataMismatch)));
    verifier.verify(&report, &vek, &[], NOW, &report_data(&report)).unwrap();
}

#[test]
fn a_foreign_root_pinned_with_add_root_does_not_match() {
    let report = vector("virtee-sev/report_milan.bin");
    let vek = vector("virtee-sev/vcek_milan.der");
    let genoa = pem_to_der(&vector("go-sev-guest/ask_ark_genoa.pem"));
    let milan = pem_to_der(&vector("go-sev-guest/ask_ark_milan.pem"));
    let (genoa_ask, genoa_ark) = (&genoa[0], &genoa[1]);
    let (milan_ask, milan_ark) = (&milan[0], &milan[1]);

    // ARK-Genoa pinned (wrongly) as the Milan root: the Milan ASK is not
    // signed by it and is refused, and the Milan chain has no root.
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Milan, genoa_ark).unwrap();
    assert!(matches!(anchors.add_intermediate(milan_ask), Err(EvidenceError::UntrustedRoot(_))));
    let verifier = SnpVerifier::new(anchors.clone());
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek, std::slice::from_ref(milan_ask), NOW),
        Err(EvidenceError::UntrustedRoot(_))
    ));
    // Its own ASK is accepted, but the Genoa VCEK's productName does not
    // match the generation the root was pinned for.
    anchors.add_intermediate(genoa_ask).unwrap();
    let genoa_report = vector("trustee/az-snp-vtpm/genoa_snp_report.bin");
    let genoa_vek = pem_to_der(&vector("trustee/az-snp-vtpm/vcek-genoa.pem")).remove(0);
    assert!(matches!(
        SnpVerifier::new(anchors).verify_ignoring_report_data(&genoa_report, &genoa_vek, &[], NOW),
        Err(EvidenceError::ChainInvalid(_))
    ));
    // An ASK cannot be pinned as a root.
    assert!(SnpAnchors::empty().add_root(Generation::Milan, milan_ask).is_err());
    // With no roots at all nothing verifies.
    assert!(matches!(
        SnpVerifier::new(SnpAnchors::empty()).verify_ignoring_report_data(&report, &vek, &milan, NOW),
        Err(EvidenceError::UntrustedRoot(_))
    ));
    // The right root plus the guest's ASK from its table verifies.
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Milan, milan_ark).unwrap();
    SnpVerifier::new(anchors).verify_ignoring_report_data(&report, &vek, &milan, NOW).unwrap();
}

#[test]
fn a_guest_ask_not_signed_by_the_pinned_ark_is_ignored() {
    let report = vector("virtee-sev/report_milan.bin");
    let vek = vector("virtee-sev/vcek_milan.der");
    let milan = pem_to_der(&vector("go-sev-guest/ask_ark_milan.pem"));
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Milan, &milan[1]).unwrap();
    let verifier = SnpVerifier::new(anchors);
    // An impostor "SEV-Milan" with AMD's exact subject name, signed by a
    // key AMD never certified: ignored, so the VCEK has no chain.
    let pki = test_pki();
    let forged = pki.forged_milan_ask(&milan[0]);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek, std::slice::from_ref(&forged), NOW),
        Err(EvidenceError::UntrustedRoot(_))
    ));
    // Other generations' ASKs and garbage are ignored too.
    let genoa = pem_to_der(&vector("go-sev-guest/ask_ark_genoa.pem"));
    assert!(matches!(
        verifier.verify_ignoring_report_data(
            &report,
            &vek,
            &[genoa[0].clone(), b"junk".to_vec(), vec![0; 70_000]],
            NOW
        ),
        Err(EvidenceError::UntrustedRoot(_))
    ));
    // The genuine ASK next to the forged one is found.
    verifier.verify_ignoring_report_data(&report, &vek, &[forged, milan[0].clone()], NOW).unwrap();
}

#[test]
fn pinned_fingerprints_match_the_shipped_certificates_and_provenance() {
    let anchors = amd();
    assert_eq!(
        anchors.root_fingerprints(),
        vec![
            (Generation::Milan, ARK_MILAN_SHA256),
            (Generation::Genoa, ARK_GENOA_SHA256),
            (Generation::Turin, ARK_TURIN_SHA256)
        ]
    );
    // The AMD bundles in the vectors carry the same certificates.
    for (file, ark, ask) in [
        ("go-sev-guest/ask_ark_milan.pem", ARK_MILAN_SHA256, ASK_MILAN_SHA256),
        ("go-sev-guest/ask_ark_genoa.pem", ARK_GENOA_SHA256, ASK_GENOA_SHA256),
        ("go-sev-guest/ask_ark_turin_vcek.pem", ARK_TURIN_SHA256, ASK_TURIN_SHA256),
        ("virtee-sev/cert_chain_milan.pem", ARK_MILAN_SHA256, ASK_MILAN_SHA256),
        ("virtee-sev/cert_chain_turin.pem", ARK_TURIN_SHA256, ASK_TURIN_SHA256),
    ] {
        let certs = pem_to_der(&vector(file));
        assert_eq!(sha256(&certs[0]), ask, "{file}");
        assert_eq!(sha256(&certs[1]), ark, "{file}");
    }
    // The prefixes and suffixes go-sev-guest's provenance notes give.
    let provenance = String::from_utf8(vector("go-sev-guest/PROVENANCE.md")).unwrap();
    let provenance = &provenance[provenance.find("Fingerprints (SHA-256)").expect("fingerprint line")..];
    let mut asvk = SnpAnchors::empty();
    for (name, fp) in
        [("ARK-Milan", ARK_MILAN_SHA256), ("ARK-Genoa", ARK_GENOA_SHA256), ("ARK-Turin", ARK_TURIN_SHA256)]
    {
        assert_provenance(provenance, name, &fp);
    }
    for (generation, bundle) in [
        (Generation::Milan, "go-sev-guest/ask_ark_milan_vlek.pem"),
        (Generation::Genoa, "go-sev-guest/ask_ark_genoa_vlek.pem"),
        (Generation::Turin, "go-sev-guest/ask_ark_turin_vlek.pem"),
    ] {
        let certs = pem_to_der(&vector(bundle));
        asvk.add_root(generation, &certs[1]).unwrap();
        assert_eq!(asvk.add_intermediate(&certs[0]).unwrap(), 1);
    }
    let asvks: HashMap<Generation, [u8; 32]> = asvk
        .intermediate_fingerprints()
        .into_iter()
        .map(|(g, k, fp)| {
            assert_eq!(k, IntermediateKind::Asvk);
            (g, fp)
        })
        .collect();
    assert_provenance(provenance, "SEV-VLEK-Milan", &asvks[&Generation::Milan]);
    assert_provenance(provenance, "SEV-VLEK-Genoa", &asvks[&Generation::Genoa]);
    assert_provenance(provenance, "SEV-VLEK-Turin", &asvks[&Generation::Turin]);
    // The built-in ASVKs are those certificates, pinned by fingerprint.
    assert_eq!(
        [asvks[&Generation::Milan], asvks[&Generation::Genoa], asvks[&Generation::Turin]],
        [ASVK_MILAN_SHA256, ASVK_GENOA_SHA256, ASVK_TURIN_SHA256]
    );
    let built_in: Vec<_> = anchors.intermediate_fingerprints();
    assert_eq!(built_in.len(), 6);
    for (generation, fp) in asvks {
        assert!(built_in.contains(&(generation, IntermediateKind::Asvk, fp)), "{generation}");
    }
}

/// Checks `"<name> AA:BB:CC:DD:..:YY:ZZ"` in the provenance text against `fp`.
fn assert_provenance(text: &str, name: &str, fp: &[u8; 32]) {
    let at = text.find(&format!("{name} ")).unwrap_or_else(|| panic!("{name} not in PROVENANCE.md"));
    let token = text[at + name.len() + 1..].split([',', ' ', '\n']).next().unwrap().trim_end_matches(['.', ';']);
    let (prefix, suffix) = token.split_once(":..:").unwrap();
    let colon = fp.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    assert!(colon.starts_with(prefix) && colon.ends_with(suffix), "{name}: {colon} vs {token}");
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().try_into().unwrap()
}

#[test]
fn the_chain_is_cached_by_vek_digest() {
    let verifier = verifier();
    let vek = vector("virtee-sev/vcek_milan.der");
    let report = vector("virtee-sev/report_milan.bin");
    assert_eq!(verifier.cached_veks(), 0);
    let first = verifier.verify_ignoring_report_data(&report, &vek, &[], NOW).unwrap();
    assert_eq!(verifier.cached_veks(), 1);
    let second = verifier.verify_ignoring_report_data(&report, &vek, &[], NOW).unwrap();
    assert_eq!(verifier.cached_veks(), 1);
    assert_eq!(first.vek_sha256(), second.vek_sha256());
    // A cached chain is still checked against `now` and the report.
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek, &[], datetime!(2031-01-01 0:00 UTC)),
        Err(EvidenceError::CertificateExpired(_))
    ));
    // A bounded cache of zero caches nothing and still verifies.
    let uncached = SnpVerifier::with_cache_capacity(amd(), 0);
    uncached.verify_ignoring_report_data(&report, &vek, &[], NOW).unwrap();
    assert_eq!(uncached.cached_veks(), 0);
}

#[test]
fn cert_table_round_trip_feeds_the_verifier() {
    let vek = vector("virtee-sev/vcek_milan.der");
    let chain = pem_to_der(&vector("virtee-sev/cert_chain_milan.pem"));
    let table =
        certtable::build(&[(CertKind::Vcek, &vek), (CertKind::Ask, &chain[0]), (CertKind::Ark, &chain[1])]).unwrap();
    let parsed = certtable::parse(&table).unwrap();
    assert_eq!(parsed.vek(), Some(vek.as_slice()));
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Milan, &chain[1]).unwrap();
    SnpVerifier::new(anchors)
        .verify_ignoring_report_data(
            &vector("virtee-sev/report_milan.bin"),
            parsed.vek().unwrap(),
            &parsed.extra_certs(),
            NOW,
        )
        .unwrap();
}

// ---------------------------------------------------------------------
// Test PKI: the checks a genuine report can never fail (TCB and chip
// binding, Turin layout, v5, generation and key-kind mismatches).

mod der {
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }
    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }
    pub fn set(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x31, &parts.concat())
    }
    pub fn uint(v: u64) -> Vec<u8> {
        let mut b: Vec<u8> = v.to_be_bytes().iter().copied().skip_while(|x| *x == 0).collect();
        if b.first().is_none_or(|x| x & 0x80 != 0) {
            b.insert(0, 0);
        }
        tlv(0x02, &b)
    }
    pub fn oid(arcs: &[u64]) -> Vec<u8> {
        let mut b = vec![(arcs[0] * 40 + arcs[1]) as u8];
        for &arc in &arcs[2..] {
            let mut stack = vec![(arc & 0x7f) as u8];
            let mut v = arc >> 7;
            while v > 0 {
                stack.push((v & 0x7f) as u8 | 0x80);
                v >>= 7;
            }
            b.extend(stack.iter().rev());
        }
        tlv(0x06, &b)
    }
    pub fn null() -> Vec<u8> {
        vec![0x05, 0x00]
    }
    pub fn octets(b: &[u8]) -> Vec<u8> {
        tlv(0x04, b)
    }
    pub fn bits(b: &[u8]) -> Vec<u8> {
        tlv(0x03, &[&[0u8][..], b].concat())
    }
    pub fn ia5(s: &str) -> Vec<u8> {
        tlv(0x16, s.as_bytes())
    }
    pub fn utf8(s: &str) -> Vec<u8> {
        tlv(0x0c, s.as_bytes())
    }
    pub fn gentime(s: &str) -> Vec<u8> {
        tlv(0x18, s.as_bytes())
    }
    pub fn ctx(n: u8, content: &[u8]) -> Vec<u8> {
        tlv(0xa0 | n, content)
    }
}

const SHA384: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 2];

fn pss_sha384() -> Vec<u8> {
    use der::*;
    let hash = seq(&[oid(SHA384), null()]);
    seq(&[
        oid(&[1, 2, 840, 113549, 1, 1, 10]),
        seq(&[ctx(0, &hash), ctx(1, &seq(&[oid(&[1, 2, 840, 113549, 1, 1, 8]), hash.clone()])), ctx(2, &uint(48))]),
    ])
}

fn name(cn: &str) -> Vec<u8> {
    use der::*;
    seq(&[set(&[seq(&[oid(&[2, 5, 4, 3]), utf8(cn)])])])
}

fn ext(arcs: &[u64], value: &[u8]) -> Vec<u8> {
    der::seq(&[der::oid(arcs), der::octets(value)])
}

fn amd_ext(tail: &[u64], value: &[u8]) -> Vec<u8> {
    let arcs: Vec<u64> = [1, 3, 6, 1, 4, 1, 3704, 1].iter().chain(tail).copied().collect();
    ext(&arcs, value)
}

/// Signs a TBS certificate with RSASSA-PSS/SHA-384.
fn sign_cert(tbs: Vec<u8>, signer: &aws_lc_rs::signature::RsaKeyPair) -> Vec<u8> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut sig = vec![0u8; signer.public_modulus_len()];
    signer.sign(&aws_lc_rs::signature::RSA_PSS_SHA384, &rng, &tbs, &mut sig).unwrap();
    der::seq(&[tbs, pss_sha384(), der::bits(&sig)])
}

fn tbs(issuer: &[u8], subject: &[u8], spki: Vec<u8>, serial: u64, exts: Vec<Vec<u8>>) -> Vec<u8> {
    use der::*;
    seq(&[
        ctx(0, &uint(2)),
        uint(serial),
        pss_sha384(),
        issuer.to_vec(),
        seq(&[gentime("20240101000000Z"), gentime("20340101000000Z")]),
        subject.to_vec(),
        spki,
        ctx(3, &seq(&exts)),
    ])
}

fn rsa_spki(key: &aws_lc_rs::signature::RsaKeyPair) -> Vec<u8> {
    use aws_lc_rs::signature::KeyPair;
    der::seq(&[der::seq(&[der::oid(&[1, 2, 840, 113549, 1, 1, 1]), der::null()]), der::bits(key.public_key().as_ref())])
}

fn ca_ext() -> Vec<u8> {
    der::seq(&[der::oid(&[2, 5, 29, 19]), vec![0x01, 0x01, 0xff], der::octets(&der::seq(&[vec![0x01, 0x01, 0xff]]))])
}

struct TestPki {
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
    ask_name: Vec<u8>,
    ask_key: aws_lc_rs::signature::RsaKeyPair,
    asvk_der: Vec<u8>,
    asvk_name: Vec<u8>,
    asvk_key: aws_lc_rs::signature::RsaKeyPair,
    rogue_key: aws_lc_rs::signature::RsaKeyPair,
    /// Signed by the test ARK but not a CA certificate.
    not_ca_der: Vec<u8>,
}

/// The test PKI, made once per test binary (RSA key generation is slow).
fn test_pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::RsaKeyPair;
        let ark_key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let ask_key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let asvk_key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let rogue_key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let ark_name = name("ARK-Test");
        let ask_name = name("SEV-Test");
        let asvk_name = name("SEV-VLEK-Test");
        let ark_der = sign_cert(tbs(&ark_name, &ark_name, rsa_spki(&ark_key), 1, vec![ca_ext()]), &ark_key);
        let ask_der = sign_cert(tbs(&ark_name, &ask_name, rsa_spki(&ask_key), 2, vec![ca_ext()]), &ark_key);
        let asvk_der = sign_cert(tbs(&ark_name, &asvk_name, rsa_spki(&asvk_key), 3, vec![ca_ext()]), &ark_key);
        let not_ca_der = sign_cert(tbs(&ark_name, &name("SEV-Leaf"), rsa_spki(&rogue_key), 4, vec![]), &ark_key);
        TestPki { not_ca_der, ark_der, ask_der, ask_name, ask_key, asvk_der, asvk_name, asvk_key, rogue_key }
    })
}

impl TestPki {
    fn anchors(&self, generation: Generation) -> SnpAnchors {
        let mut anchors = SnpAnchors::empty();
        anchors.add_root(generation, &self.ark_der).unwrap();
        assert_eq!(anchors.add_intermediate(&self.ask_der).unwrap(), 1);
        assert_eq!(anchors.add_intermediate(&self.asvk_der).unwrap(), 1);
        anchors
    }

    /// A certificate with the real ASK's subject and issuer names, signed
    /// by a key AMD never certified.
    fn forged_milan_ask(&self, real_ask: &[u8]) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(real_ask).unwrap();
        let subject = cert.subject().as_raw().to_vec();
        let issuer = cert.issuer().as_raw().to_vec();
        sign_cert(tbs(&issuer, &subject, rsa_spki(&self.rogue_key), 9, vec![ca_ext()]), &self.rogue_key)
    }
}

/// What a synthetic VEK certifies.
struct VekSpec {
    product: &'static str,
    tcb: TcbVersion,
    hwid: Option<Vec<u8>>,
    vlek: bool,
}

struct TestVek {
    der: Vec<u8>,
    key: aws_lc_rs::signature::EcdsaKeyPair,
}

fn make_vek(pki: &TestPki, spec: &VekSpec) -> TestVek {
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    let spki = der::seq(&[
        der::seq(&[der::oid(&[1, 2, 840, 10045, 2, 1]), der::oid(&[1, 3, 132, 0, 34])]),
        der::bits(key.public_key().as_ref()),
    ]);
    let t = spec.tcb;
    let mut exts = vec![
        amd_ext(&[1], &der::uint(1)),
        amd_ext(&[2], &der::ia5(spec.product)),
        amd_ext(&[3, 1], &der::uint(t.bootloader.into())),
        amd_ext(&[3, 2], &der::uint(t.tee.into())),
        amd_ext(&[3, 3], &der::uint(t.snp.into())),
        amd_ext(&[3, 4], &der::uint(0)),
        amd_ext(&[3, 8], &der::uint(t.microcode.into())),
    ];
    if let Some(fmc) = t.fmc {
        exts.push(amd_ext(&[3, 9], &der::uint(fmc.into())));
    }
    if let Some(hwid) = &spec.hwid {
        // Raw bytes, not wrapped in an OCTET STRING, as AMD does it.
        exts.push(amd_ext(&[4], hwid));
    }
    let (issuer, signer) = if spec.vlek { (&pki.asvk_name, &pki.asvk_key) } else { (&pki.ask_name, &pki.ask_key) };
    let subject = name(if spec.vlek { "SEV-VLEK" } else { "SEV-VCEK" });
    TestVek { der: sign_cert(tbs(issuer, &subject, spki, 0, exts), signer), key }
}

/// A report in the real layout, signed by `vek`.
struct ReportSpec {
    version: u32,
    cpuid: [u8; 3],
    vlek: bool,
    reported_tcb: [u8; 8],
    chip_id: [u8; 64],
}

fn make_report(vek: &TestVek, spec: &ReportSpec) -> Vec<u8> {
    let mut r = vec![0u8; REPORT_LEN];
    r[0..4].copy_from_slice(&spec.version.to_le_bytes());
    r[8..16].copy_from_slice(&0x30000u64.to_le_bytes());
    r[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
    r[0x38..0x40].copy_from_slice(&spec.reported_tcb);
    r[0x48..0x4C].copy_from_slice(&(u32::from(spec.vlek) << 2).to_le_bytes());
    r[0x50..0x90].fill(0x5a);
    r[0x90..0xC0].fill(0xa5);
    r[0x180..0x188].copy_from_slice(&spec.reported_tcb);
    if spec.version >= 3 {
        r[0x188..0x18B].copy_from_slice(&spec.cpuid);
    }
    r[0x1A0..0x1E0].copy_from_slice(&spec.chip_id);
    r[0x1E0..0x1E8].copy_from_slice(&spec.reported_tcb);
    r[0x1E8..0x1EC].copy_from_slice(&[9, 55, 1, 0]);
    r[0x1EC..0x1F0].copy_from_slice(&[9, 55, 1, 0]);
    r[0x1F0..0x1F8].copy_from_slice(&spec.reported_tcb);
    if spec.version >= 5 {
        r[0x1F8..0x200].copy_from_slice(&3u64.to_le_bytes());
        r[0x200..0x208].copy_from_slice(&7u64.to_le_bytes());
    }
    sign_report(vek, &mut r);
    r
}

fn sign_report(vek: &TestVek, r: &mut [u8]) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let sig = vek.key.sign(&rng, &r[..0x2A0]).unwrap();
    let sig = sig.as_ref();
    let (mut rr, mut ss) = (sig[..48].to_vec(), sig[48..].to_vec());
    rr.reverse();
    ss.reverse();
    r[0x2A0..0x2A0 + 72].fill(0);
    r[0x2E8..0x2E8 + 72].fill(0);
    r[0x2A0..0x2A0 + 48].copy_from_slice(&rr);
    r[0x2E8..0x2E8 + 48].copy_from_slice(&ss);
}

fn turin_case() -> (VekSpec, ReportSpec) {
    let mut chip_id = [0u8; 64];
    chip_id[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let tcb = TcbVersion { bootloader: 2, tee: 3, snp: 4, microcode: 9, fmc: Some(1) };
    (
        VekSpec { product: "Turin", tcb, hwid: Some(chip_id[..8].to_vec()), vlek: false },
        ReportSpec {
            version: 5,
            cpuid: [0x1a, 0x02, 0x01],
            vlek: false,
            reported_tcb: [1, 2, 3, 4, 0, 0, 0, 9],
            chip_id,
        },
    )
}

#[test]
fn synthetic_turin_v5_report_verifies() {
    let pki = test_pki();
    let (vs, rs) = turin_case();
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    let verifier = SnpVerifier::new(pki.anchors(Generation::Turin));
    let v = verifier.verify(&report, &vek.der, &[], NOW, &[0x5a; 64]).unwrap();
    let snp = v.claims.snp.unwrap();
    assert_eq!(snp.generation, Generation::Turin);
    assert_eq!(snp.reported_tcb, vs.tcb);
    assert_eq!(snp.version, 5);
    assert_eq!(snp.launch_mitigation_vector, Some(3));
    assert_eq!(snp.current_mitigation_vector, Some(7));
    assert_eq!(v.claims.measurement, "a5".repeat(48));
    // The same root pinned for Genoa: productName "Turin" does not match.
    let genoa = SnpVerifier::new(pki.anchors(Generation::Genoa));
    assert!(matches!(
        genoa.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::ChainInvalid(_))
    ));
}

#[test]
fn synthetic_tcb_mismatch() {
    let pki = test_pki();
    let verifier = SnpVerifier::new(pki.anchors(Generation::Turin));
    let (mut vs, rs) = turin_case();
    // The VEK certifies SNP SPL 5; the report (signed by it) says 4.
    vs.tcb.snp = 5;
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::TcbMismatch(_))
    ));
    // A VEK without an FMC SPL cannot certify a Turin TCB.
    let (mut vs, rs) = turin_case();
    vs.tcb.fmc = None;
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::TcbMismatch(_))
    ));
    // Non-zero reserved bytes in reported_tcb do not match either.
    let (vs, mut rs) = turin_case();
    rs.reported_tcb[5] = 1;
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::TcbMismatch(_))
    ));
}

#[test]
fn synthetic_chip_id_mismatch() {
    let pki = test_pki();
    let verifier = SnpVerifier::new(pki.anchors(Generation::Turin));
    let (mut vs, rs) = turin_case();
    vs.hwid = Some(vec![9; 8]);
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::ChipIdMismatch)
    ));
    // A VCEK without hwID is bound to no chip: refused.
    let (mut vs, rs) = turin_case();
    vs.hwid = None;
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::ChipIdMismatch)
    ));
    // Milan/Genoa compare all 64 bytes.
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Genoa, &pki.ark_der).unwrap();
    anchors.add_intermediate(&pki.ask_der).unwrap();
    let genoa = SnpVerifier::new(anchors);
    let tcb = TcbVersion { bootloader: 10, tee: 0, snp: 23, microcode: 84, fmc: None };
    let chip_id = [0x42u8; 64];
    let mut hwid = chip_id.to_vec();
    hwid[63] = 0;
    let vek = make_vek(pki, &VekSpec { product: "Genoa", tcb, hwid: Some(hwid), vlek: false });
    let spec = ReportSpec {
        version: 3,
        cpuid: [0x19, 0x11, 0x01],
        vlek: false,
        reported_tcb: [10, 0, 0, 0, 0, 0, 23, 84],
        chip_id,
    };
    let report = make_report(&vek, &spec);
    assert!(matches!(
        genoa.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::ChipIdMismatch)
    ));
    let vek = make_vek(pki, &VekSpec { product: "Genoa", tcb, hwid: Some(chip_id.to_vec()), vlek: false });
    let report = make_report(&vek, &spec);
    genoa.verify_ignoring_report_data(&report, &vek.der, &[], NOW).unwrap();
}

#[test]
fn synthetic_generation_and_key_kind_mismatches() {
    let pki = test_pki();
    let verifier = SnpVerifier::new(pki.anchors(Generation::Turin));
    // CPUID says Genoa, the VEK is a Turin one.
    let (vs, mut rs) = turin_case();
    rs.cpuid = [0x19, 0x11, 0x01];
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::ChainInvalid(_))
    ));
    // key_info says VLEK, the certificate was issued by the ASK.
    let (vs, mut rs) = turin_case();
    rs.vlek = true;
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::ChainInvalid(_))
    ));
    // A VLEK (issued by the ASVK, no hwID) with a masked chip_id verifies.
    let (mut vs, mut rs) = turin_case();
    vs.vlek = true;
    vs.hwid = None;
    rs.vlek = true;
    rs.chip_id = [0; 64];
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    let v = verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW).unwrap();
    assert_eq!(v.claims.snp.unwrap().signing_key, SigningKey::Vlek);
    // ...and a VCEK-signed report does not accept it.
    rs.vlek = false;
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::ChainInvalid(_))
    ));
}

#[test]
fn synthetic_intermediate_from_the_guest_table() {
    let pki = test_pki();
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Turin, &pki.ark_der).unwrap();
    let verifier = SnpVerifier::new(anchors);
    let (vs, rs) = turin_case();
    let vek = make_vek(pki, &vs);
    let report = make_report(&vek, &rs);
    assert!(matches!(
        verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW),
        Err(EvidenceError::UntrustedRoot(_))
    ));
    verifier.verify_ignoring_report_data(&report, &vek.der, &[pki.ask_der.clone(), pki.ark_der.clone()], NOW).unwrap();
    // Once verified, the chain is cached: the table is not needed again.
    verifier.verify_ignoring_report_data(&report, &vek.der, &[], NOW).unwrap();
}

// ---------------------------------------------------------------------
// Collateral: offline directory, KDS fetcher against a local server.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    RateLimited,
}

struct KdsStub {
    base: String,
    hits: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    mode: Arc<Mutex<Mode>>,
}

/// A minimal HTTP/1.1 responder on 127.0.0.1 speaking KDS's URL scheme:
/// 200 with the DER for known paths, 404 otherwise, or 429 with
/// Retry-After in rate-limited mode. One request per connection.
async fn kds_stub(served: HashMap<String, Vec<u8>>) -> KdsStub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let mode = Arc::new(Mutex::new(Mode::Serve));
    let (h, p, m) = (hits.clone(), paths.clone(), mode.clone());
    let served = Arc::new(served);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (h, p, m, served) = (h.clone(), p.clone(), m.clone(), served.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                h.fetch_add(1, Ordering::SeqCst);
                p.lock().unwrap().push(target.clone());
                let mode = *m.lock().unwrap();
                let (status, extra, body): (&str, &str, Vec<u8>) = match (mode, served.get(&target)) {
                    (Mode::RateLimited, _) => ("429 Too Many Requests", "Retry-After: 120\r\n", b"slow down".to_vec()),
                    (Mode::Serve, Some(der)) => ("200 OK", "Content-Type: application/octet-stream\r\n", der.clone()),
                    (Mode::Serve, None) => ("404 Not Found", "", b"not found".to_vec()),
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    KdsStub { base, hits, paths, mode }
}

fn fetcher(base: &str, cache: &std::path::Path) -> KdsFetcher {
    let mut config = KdsConfig::new(cache);
    config.base_url = base.to_owned();
    config.timeout = Duration::from_secs(10);
    KdsFetcher::new(config).unwrap()
}

#[tokio::test]
async fn kds_fetcher_caches_and_degrades_to_the_cache() {
    let virtee = SnpReport::parse(&vector("virtee-sev/report_milan.bin")).unwrap();
    let virtee_vek = vector("virtee-sev/vcek_milan.der");
    let gsg = SnpReport::parse(&vector("go-sev-guest/attestation.bin")).unwrap();
    let virtee_path =
        format!("/vcek/v1/Milan/{}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115", hex::encode(virtee.chip_id()));
    let stub = kds_stub(HashMap::from([(virtee_path.clone(), virtee_vek.clone())])).await;
    let cache = tempfile::tempdir().unwrap();

    // First resolve goes to KDS, with KDS's exact URL shape.
    let resolver = VekResolver::new(None, Some(fetcher(&stub.base, cache.path())));
    let got = resolver.resolve(&virtee).await.unwrap();
    assert_eq!(got, virtee_vek);
    assert_eq!(stub.hits.load(Ordering::SeqCst), 1);
    assert_eq!(stub.paths.lock().unwrap().as_slice(), std::slice::from_ref(&virtee_path));
    // It verifies.
    verifier().verify_parsed_ignoring_report_data(virtee.clone(), &got, &[], NOW).unwrap();

    // Again: memory. A new resolver on the same cache: disk. No new hits.
    assert_eq!(resolver.resolve(&virtee).await.unwrap(), virtee_vek);
    let fresh = VekResolver::new(None, Some(fetcher(&stub.base, cache.path())));
    assert_eq!(fresh.resolve(&virtee).await.unwrap(), virtee_vek);
    assert_eq!(stub.hits.load(Ordering::SeqCst), 1);
    // The cache is a valid offline directory.
    let dir = VekDirectory::new(cache.path());
    assert!(dir.vcek_path(Generation::Milan, virtee.chip_id(), virtee.reported_tcb()).is_file());

    // KDS starts rate limiting. An uncached VCEK: one request, 429, then
    // back-off: the next ask does not reach the server at all.
    *stub.mode.lock().unwrap() = Mode::RateLimited;
    let kds = fetcher(&stub.base, cache.path());
    let err = kds.fetch_vcek(Generation::Milan, gsg.chip_id(), gsg.reported_tcb()).await.unwrap_err();
    assert!(matches!(err, EvidenceError::CollateralUnavailable(_)), "{err}");
    assert_eq!(stub.hits.load(Ordering::SeqCst), 2);
    let err = kds.fetch_vcek(Generation::Milan, gsg.chip_id(), gsg.reported_tcb()).await.unwrap_err();
    assert!(err.to_string().contains("backing off"), "{err}");
    assert_eq!(stub.hits.load(Ordering::SeqCst), 2);
    // Cached VCEKs are still served while KDS is backing off.
    assert_eq!(kds.fetch_vcek(Generation::Milan, virtee.chip_id(), virtee.reported_tcb()).await.unwrap(), virtee_vek);
    assert_eq!(stub.hits.load(Ordering::SeqCst), 2);
    assert_eq!(EvidenceError::CollateralUnavailable(String::new()).reason().as_str(), "collateral_unavailable");
}

#[tokio::test]
async fn kds_crls_are_verified_before_they_are_installed_or_cached() {
    use attester_client::simulated::{TestCrl, test_ark_der};
    use kbs::evidence::amd_crl::Revocation;
    use kbs::evidence::anchors::IntermediateKind;
    use kbs::evidence::collateral::CrlSources;

    let stub = kds_stub(HashMap::from([
        ("/vcek/v1/Milan/crl".to_owned(), TestCrl::Foreign.der().to_vec()),
        ("/vcek/v1/Genoa/crl".to_owned(), TestCrl::RevokesAsk.der().to_vec()),
        ("/vcek/v1/Turin/crl".to_owned(), b"<html>KDS is down</html>".to_vec()),
    ]))
    .await;
    let cache = tempfile::tempdir().unwrap();
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Genoa, test_ark_der()).unwrap();
    let verifier = SnpVerifier::new(anchors.clone()).with_revocation(Revocation::Require);
    let sources = CrlSources::new(None, Some(fetcher(&stub.base, cache.path())));

    // Without `fetch`, nothing is asked of KDS and the cache is empty.
    let refresh = sources.refresh(&verifier, NOW, false).await;
    assert!(refresh.installed.is_empty() && refresh.problems.is_empty(), "{refresh:?}");
    assert_eq!(stub.hits.load(Ordering::SeqCst), 0);

    let refresh = sources.refresh(&verifier, NOW, true).await;
    // Milan, Genoa, Turin; ASKs then ASVKs, at KDS's exact paths (404s
    // for the /vlek/ ones here). The error page for Turin's ASK CRL starts
    // a back-off for that URL only: Turin's ASVK CRL is still asked for.
    let paths = stub.paths.lock().unwrap().clone();
    assert_eq!(
        paths,
        [
            "/vcek/v1/Milan/crl",
            "/vlek/v1/Milan/crl",
            "/vcek/v1/Genoa/crl",
            "/vlek/v1/Genoa/crl",
            "/vcek/v1/Turin/crl",
            "/vlek/v1/Turin/crl"
        ]
    );
    let installed: Vec<_> = refresh.installed.iter().map(|(g, k, _)| (*g, *k)).collect();
    assert_eq!(installed, vec![(Generation::Genoa, IntermediateKind::Ask)]);
    let problems = refresh.problems.join("\n");
    assert!(problems.contains("not a CRL"), "{problems}");
    assert!(problems.contains("not issued by a pinned AMD root"), "{problems}");

    // Again at once: the failed URL backs off and the 404s are remembered;
    // only the two CRLs KDS served are asked for again.
    let again = sources.refresh(&verifier, NOW, true).await;
    let problems = again.problems.join("\n");
    assert!(problems.contains("backing off"), "{problems}");
    assert!(problems.contains("remembered 404"), "{problems}");
    let paths = stub.paths.lock().unwrap().clone();
    assert_eq!(paths[6..], ["/vcek/v1/Milan/crl", "/vcek/v1/Genoa/crl"]);
    // Only the CRL that verified is cached, in the KDS layout.
    assert!(cache.path().join("vcek/v1/Genoa/crl").is_file());
    assert!(!cache.path().join("vcek/v1/Turin/crl").exists());
    assert!(!cache.path().join("vcek/v1/Milan/crl").exists());

    // A new broker reads the cache without asking KDS.
    let restarted = SnpVerifier::new(anchors).with_revocation(Revocation::Require);
    let sources = CrlSources::new(None, Some(fetcher(&stub.base, cache.path())));
    let refresh = sources.refresh(&restarted, NOW, false).await;
    assert_eq!(refresh.installed.len(), 1, "{refresh:?}");
    assert_eq!(stub.hits.load(Ordering::SeqCst), 8);
    assert_eq!(restarted.crls().len(), 1);
}

#[tokio::test]
async fn kds_404_is_remembered_and_v2_reports_try_milan_then_genoa() {
    let stub = kds_stub(HashMap::new()).await;
    let cache = tempfile::tempdir().unwrap();
    let gsg = SnpReport::parse(&vector("go-sev-guest/attestation.bin")).unwrap();
    let resolver = VekResolver::new(None, Some(fetcher(&stub.base, cache.path())));
    let err = resolver.resolve(&gsg).await.unwrap_err();
    assert!(matches!(err, EvidenceError::CollateralUnavailable(_)));
    // A v2 report names no generation: Milan, then Genoa.
    let paths = stub.paths.lock().unwrap().clone();
    assert_eq!(paths.len(), 2);
    assert!(paths[0].starts_with("/vcek/v1/Milan/") && paths[1].starts_with("/vcek/v1/Genoa/"));
    // The 404s are remembered: no new requests.
    assert!(resolver.resolve(&gsg).await.is_err());
    assert_eq!(stub.hits.load(Ordering::SeqCst), 2);
    // A VLEK report never goes to KDS.
    let vlek = SnpReport::parse(&vector("trustee/snp/test-vlek-report.bin")).unwrap();
    assert!(matches!(resolver.resolve(&vlek).await, Err(EvidenceError::CollateralUnavailable(_))));
    assert_eq!(stub.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn offline_directory_layouts() {
    let root = tempfile::tempdir().unwrap();
    let dir = VekDirectory::new(root.path());
    // Canonical layout, Genoa v3.
    let az = SnpReport::parse(&vector("trustee/az-snp-vtpm/genoa_snp_report.bin")).unwrap();
    let az_vek = pem_to_der(&vector("trustee/az-snp-vtpm/vcek-genoa.pem")).remove(0);
    let path = dir.vcek_path(Generation::Genoa, az.chip_id(), az.reported_tcb());
    assert!(path.ends_with(format!("Genoa/{}/10-0-23-84.der", hex::encode(az.chip_id()))));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &az_vek).unwrap();
    // Named by its KDS URL (parameters in another order, unpadded), v2 Milan.
    let gsg = SnpReport::parse(&vector("go-sev-guest/attestation.bin")).unwrap();
    let kds_dir = root.path().join("vcek/v1/Milan");
    std::fs::create_dir_all(&kds_dir).unwrap();
    std::fs::write(
        kds_dir.join(format!("{}?ucodeSPL=68&blSPL=2&teeSPL=0&snpSPL=5", hex::encode(gsg.chip_id()))),
        vector("go-sev-guest/vcek.der"),
    )
    .unwrap();
    // A VLEK, as PEM.
    let vlek = SnpReport::parse(&vector("trustee/snp/test-vlek-report.bin")).unwrap();
    let vlek_der = vector("trustee/snp/test-vlek.der");
    let vlek_path = dir.vlek_path(Generation::Milan, vlek.reported_tcb());
    assert!(vlek_path.ends_with("Milan/vlek/4-0-24-217.der"));
    std::fs::create_dir_all(vlek_path.parent().unwrap()).unwrap();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &vlek_der)
    );
    std::fs::write(&vlek_path, pem).unwrap();

    let resolver = VekResolver::new(Some(dir), None);
    let verifier = SnpVerifier::new(amd());
    for (report, expected) in [(az, az_vek), (gsg, vector("go-sev-guest/vcek.der")), (vlek, vlek_der)] {
        let der = resolver.resolve(&report).await.unwrap();
        assert_eq!(der, expected);
        verifier.verify_parsed_ignoring_report_data(report, &der, &[], NOW).unwrap();
    }
    // Nothing for an unknown chip.
    let virtee = SnpReport::parse(&vector("virtee-sev/report_milan.bin")).unwrap();
    assert!(matches!(resolver.resolve(&virtee).await, Err(EvidenceError::CollateralUnavailable(_))));
    // Nothing configured at all.
    assert!(matches!(
        VekResolver::new(None, None).resolve(&virtee).await,
        Err(EvidenceError::CollateralUnavailable(_))
    ));
}

// ---------------------------------------------------------------------
// Properties: the parsers never panic.

fn real_reports() -> &'static [Vec<u8>] {
    static R: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    R.get_or_init(|| pass_vectors().iter().map(|p| vector(p.report)).collect())
}

fn shared_verifier() -> &'static SnpVerifier {
    static V: OnceLock<SnpVerifier> = OnceLock::new();
    V.get_or_init(|| SnpVerifier::new(amd()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn report_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let _ = SnpReport::parse(&bytes);
    }

    #[test]
    fn report_parser_never_panics_on_plausible_headers(
        mut bytes in proptest::collection::vec(any::<u8>(), REPORT_LEN),
        version in prop_oneof![Just(2u32), Just(3), Just(5)],
    ) {
        bytes[..4].copy_from_slice(&version.to_le_bytes());
        bytes[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        let _ = SnpReport::parse(&bytes);
    }

    #[test]
    fn mutated_real_reports_never_panic_and_never_verify(
        which in 0usize..5,
        flips in proptest::collection::vec((0usize..REPORT_LEN, 1u8..=255), 1..4),
    ) {
        let p = &pass_vectors()[which];
        let mut bytes = real_reports()[which].clone();
        for (at, x) in &flips {
            bytes[*at] ^= x;
        }
        prop_assume!(bytes != real_reports()[which]);
        let result = shared_verifier().verify_ignoring_report_data(&bytes, &p.vek, &[], NOW);
        // A change to the first 0x2A0 bytes or to r/s must not verify; a
        // change to reserved bytes must not parse.
        prop_assert!(result.is_err());
    }

    #[test]
    fn cert_table_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = certtable::parse(&bytes);
    }

    #[test]
    fn cert_table_parser_never_panics_on_plausible_tables(
        entries in proptest::collection::vec((0usize..6, any::<u32>(), any::<u32>()), 0..8),
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
        terminate in any::<bool>(),
    ) {
        let mut t = Vec::new();
        for (kind, offset, len) in entries {
            let guid = match kind {
                0 => CertKind::Vcek.guid_bytes(),
                1 => CertKind::Vlek.guid_bytes(),
                2 => CertKind::Ask.guid_bytes(),
                3 => CertKind::Ark.guid_bytes(),
                4 => [0x11; 16],
                _ => [0; 16],
            };
            t.extend_from_slice(&guid);
            t.extend_from_slice(&(offset % 4096).to_le_bytes());
            t.extend_from_slice(&(len % 2048).to_le_bytes());
        }
        if terminate {
            t.extend_from_slice(&[0; 24]);
        }
        t.extend(tail);
        if let Ok(table) = certtable::parse(&t) {
            // Whatever parsed lies inside the buffer.
            for c in [&table.vcek, &table.vlek, &table.ask, &table.ark].into_iter().flatten() {
                prop_assert!(c.len() <= t.len());
            }
        }
    }
}

#[test]
fn intermediates_must_be_ca_certificates_under_a_pinned_root() {
    let pki = test_pki();
    let mut anchors = SnpAnchors::empty();
    anchors.add_root(Generation::Genoa, &pki.ark_der).unwrap();
    // Signed by the pinned root, but an end-entity certificate.
    assert!(matches!(anchors.add_intermediate(&pki.not_ca_der), Err(EvidenceError::UntrustedRoot(_))));
    // The root itself is skipped, not taken for an intermediate.
    assert_eq!(anchors.add_intermediate(&pki.ark_der).unwrap(), 0);
    // A bundle with one bad certificate adds nothing at all.
    let pem = |der: &[u8]| {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
        )
    };
    let bundle = format!("{}{}", pem(&pki.ask_der), pem(&pki.not_ca_der));
    assert!(anchors.add_intermediate(bundle.as_bytes()).is_err());
    assert!(anchors.intermediate_fingerprints().is_empty());
    assert_eq!(anchors.add_intermediate(pem(&pki.ask_der).as_bytes()).unwrap(), 1);
    assert_eq!(anchors.intermediate_fingerprints()[0].1, IntermediateKind::Ask);
    assert_eq!(anchors.add_intermediate(&pki.asvk_der).unwrap(), 1);
    assert_eq!(anchors.intermediate_fingerprints()[1].1, IntermediateKind::Asvk);
}

#[test]
fn a_test_root_pinned_for_every_generation_serves_each() {
    let pki = test_pki();
    let mut anchors = SnpAnchors::empty();
    for g in Generation::ALL {
        anchors.add_root(g, &pki.ark_der).unwrap();
    }
    // One ASK, usable under each generation the root is pinned for.
    assert_eq!(anchors.add_intermediate(&pki.ask_der).unwrap(), 1);
    assert_eq!(anchors.intermediate_fingerprints().len(), 3);
    let verifier = SnpVerifier::new(anchors);
    let (vs, rs) = turin_case();
    let vek = make_vek(pki, &vs);
    verifier.verify_ignoring_report_data(&make_report(&vek, &rs), &vek.der, &[], NOW).unwrap();
    let tcb = TcbVersion { bootloader: 10, tee: 0, snp: 23, microcode: 84, fmc: None };
    let chip_id = [0x42u8; 64];
    let vek = make_vek(pki, &VekSpec { product: "Genoa", tcb, hwid: Some(chip_id.to_vec()), vlek: false });
    let spec = ReportSpec {
        version: 3,
        cpuid: [0x19, 0x11, 0x01],
        vlek: false,
        reported_tcb: [10, 0, 0, 0, 0, 0, 23, 84],
        chip_id,
    };
    let v = verifier.verify_ignoring_report_data(&make_report(&vek, &spec), &vek.der, &[], NOW).unwrap();
    assert_eq!(v.generation(), Generation::Genoa);
    // The guest-table path does the same.
    let mut anchors = SnpAnchors::empty();
    for g in Generation::ALL {
        anchors.add_root(g, &pki.ark_der).unwrap();
    }
    SnpVerifier::new(anchors)
        .verify_ignoring_report_data(&make_report(&vek, &spec), &vek.der, std::slice::from_ref(&pki.ask_der), NOW)
        .unwrap();
}
