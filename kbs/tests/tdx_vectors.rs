//! Known-answer tests of the TDX verifier on real hardware quotes and real
//! Intel collateral (read from the shared vectors directory, never copied
//! into the repository), at fixed times inside each vector's window.
//!
//! Vectors come from `$KBS_TEST_VECTORS`, by default
//! `$CARGO_MANIFEST_DIR/../../shared/vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use kbs::evidence::anchors::{INTEL_SGX_ROOT_CA_SHA256, TdxAnchors};
use kbs::evidence::pcs::TdxCollateralDir;
use kbs::evidence::tdx::{APPRAISAL_MEMO_TTL, MAX_QUOTE_LEN, TdBody, TdxPolicy, TdxQuote, TdxVerifier};
use kbs::evidence::tdx_collateral::{Fmspc, PckCa, TdxCollateral};
use kbs::evidence::{EvidenceError, TeeKind};
use proptest::prelude::*;
use time::OffsetDateTime;
use time::macros::datetime;

#[path = "../../tests/tests/support/vectors.rs"]
mod vectors;

use vectors::vector;

fn verifier() -> TdxVerifier {
    TdxVerifier::new(TdxAnchors::intel().unwrap(), TdxPolicy::default())
}

fn collateral(name: &str) -> TdxCollateral {
    TdxCollateral::from_json(&vector(&format!("dcap-qvl/{name}_collateral.json"))).unwrap()
}

#[test]
fn the_pinned_root_is_the_vectors_intel_root() {
    let der = vector("dcap-qvl/Intel_SGX_RootCA.der");
    let mut anchors = TdxAnchors::empty();
    anchors.add_root(&der).unwrap();
    assert_eq!(anchors.root_fingerprints(), vec![INTEL_SGX_ROOT_CA_SHA256]);
    assert_eq!(TdxAnchors::intel().unwrap().root_fingerprints(), vec![INTEL_SGX_ROOT_CA_SHA256]);
}

#[test]
fn v4_quote_passes_up_to_date() {
    let quote = vector("dcap-qvl/tdx_quote");
    let c = collateral("tdx_quote");
    assert_eq!(c.fmspc(), Fmspc::from_hex("B0C06F000000").unwrap());
    let v = verifier().verify_ignoring_report_data(&quote, &c, datetime!(2025-07-01 00:00 UTC)).unwrap();
    let claims = &v.claims;
    assert_eq!(claims.tee, TeeKind::Tdx);
    assert!(!claims.debug);
    assert_eq!(
        claims.measurement,
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
    );
    let tdx = claims.tdx.as_ref().unwrap();
    assert_eq!(tdx.tcb_status, "UpToDate");
    assert!(tdx.advisory_ids.is_empty());
    assert_eq!(tdx.version, 4);
    assert_eq!(tdx.body, TdBody::Td10);
    assert_eq!(
        tdx.rtmr0,
        "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
    );
    assert_eq!(
        claims.report_data,
        "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
    );
    assert_eq!(tdx.tee_tcb_svn, "06010300000000000000000000000000");
    assert_eq!(tdx.fmspc, "b0c06f000000");
    assert_eq!(tdx.qe_svn, 6);
    assert!(tdx.td_attributes.sept_ve_disable && !tdx.td_attributes.debug);
    assert_eq!(tdx.xfam, 0x0000_0000_0006_02e7);
    assert_eq!(claims.init_data_digest, tdx.mr_config_id);

    // The expected binding is checked byte for byte.
    let mut rd = [0u8; 64];
    hex::decode_to_slice(&claims.report_data, &mut rd).unwrap();
    assert!(verifier().verify(&quote, &c, datetime!(2025-07-01 00:00 UTC), &rd).is_ok());
    rd[63] ^= 1;
    assert!(matches!(
        verifier().verify(&quote, &c, datetime!(2025-07-01 00:00 UTC), &rd),
        Err(EvidenceError::ReportDataMismatch)
    ));
}

#[test]
fn td15ex_quote_passes_up_to_date() {
    let quote = vector("dcap-qvl/tdx_quote_td15ex");
    let c = collateral("tdx_quote_td15ex");
    let v = verifier().verify_ignoring_report_data(&quote, &c, datetime!(2026-10-20 00:00 UTC)).unwrap();
    let tdx = v.claims.tdx.as_ref().unwrap();
    assert_eq!(tdx.tcb_status, "UpToDate");
    assert_eq!(tdx.version, 5);
    assert_eq!(tdx.body, TdBody::Td15Ex);
    assert_eq!(
        v.claims.measurement,
        "2a674327c50218dba880066b349b8d559d749ed68dce33fd651c184a877d084b07a9e583767a7ad5da13ed91deec2b70"
    );
    assert_eq!(
        tdx.rtmr0,
        "0345d2a146eec673fb3861a4d88c5093ef0934b142884294377628cf09fb21bfa979acec61e79f925f5fccaad0827165"
    );
    assert_eq!(
        v.claims.report_data,
        "2945321c99222c3622a14cf7feaab073e799be14b5f3e73cd2e6cad64e5f062463ad204f33f0a39e47d098330db88ca5b5d0a7afce540dfe4c4fe4a377190731"
    );
    assert!(tdx.mr_config_id.starts_with("0151ed70bddb5f12574176b37e3f53bbfc4ba15c33cbddc2d03d90b6de14596cc0"));
    assert_eq!(tdx.qe_svn, 8);
}

#[test]
fn outdated_quote_has_no_matching_tcb_level() {
    let quote = vector("dcap-qvl/tdx_quote_outdated");
    let c = collateral("tdx_quote_outdated");
    let err = verifier().verify_ignoring_report_data(&quote, &c, datetime!(2026-03-01 00:00 UTC)).unwrap_err();
    assert!(matches!(err, EvidenceError::TcbStatusNotAllowed(_)), "{err}");
    assert_eq!(err.reason().as_str(), "tcb_status_not_allowed");
    // Every crypto step before TCB matching passes.
    let parsed = TdxQuote::parse(&quote).unwrap();
    assert_eq!(parsed.body_kind(), TdBody::Td15);
    verifier().verify_without_collateral(&parsed, datetime!(2026-03-01 00:00 UTC)).unwrap();
}

#[test]
fn collateral_outside_its_window_is_refused() {
    let quote = vector("dcap-qvl/tdx_quote");
    let c = collateral("tdx_quote");
    for t in [datetime!(2025-06-01 00:00 UTC), datetime!(2025-07-20 00:00 UTC), datetime!(2026-11-28 00:00 UTC)] {
        let err = verifier().verify_ignoring_report_data(&quote, &c, t).unwrap_err();
        assert!(matches!(err, EvidenceError::CollateralExpired(_)), "{t}: {err}");
        assert_eq!(err.reason().as_str(), "collateral_expired");
    }
    assert!(!c.is_current(datetime!(2026-11-28 00:00 UTC)));
    assert!(c.is_current(datetime!(2025-07-01 00:00 UTC)));
}

#[test]
fn collateral_for_another_platform_is_refused() {
    let quote = vector("dcap-qvl/tdx_quote");
    let other = collateral("tdx_quote_outdated");
    let err = verifier().verify_ignoring_report_data(&quote, &other, datetime!(2026-03-01 00:00 UTC)).unwrap_err();
    assert!(matches!(err, EvidenceError::CollateralInvalid(_)), "{err}");
}

#[test]
fn tampered_quotes_and_collateral_are_refused() {
    let at = datetime!(2025-07-01 00:00 UTC);
    let c = collateral("tdx_quote");
    let quote = vector("dcap-qvl/tdx_quote");
    // A flipped bit in the body (MRTD).
    let mut q = quote.clone();
    q[48 + 136] ^= 1;
    assert!(matches!(verifier().verify_ignoring_report_data(&q, &c, at), Err(EvidenceError::SignatureInvalid)));
    // A flipped bit in the QE report.
    let mut q = quote.clone();
    q[48 + 584 + 4 + 128 + 6 + 10] ^= 1;
    assert!(matches!(verifier().verify_ignoring_report_data(&q, &c, at), Err(EvidenceError::SignatureInvalid)));
    // A TCB info whose bytes differ from what Intel signed.
    let mut v3 = c.as_v3().clone();
    v3.tcb_info = v3.tcb_info.replacen("\"tcbEvaluationDataNumber\":17", "\"tcbEvaluationDataNumber\":18", 1);
    let forged = TdxCollateral::from_v3(v3).unwrap();
    assert!(matches!(
        verifier().verify_ignoring_report_data(&quote, &forged, at),
        Err(EvidenceError::CollateralInvalid(_))
    ));
    // Not under a pinned root.
    let none = TdxVerifier::new(TdxAnchors::empty(), TdxPolicy::default());
    assert!(matches!(none.verify_ignoring_report_data(&quote, &c, at), Err(EvidenceError::UntrustedRoot(_))));
}

#[test]
fn the_appraisal_memo_still_checks_what_each_quote_changes() {
    let at: OffsetDateTime = datetime!(2025-07-01 00:00 UTC);
    let minutes = time::Duration::minutes;
    let c = collateral("tdx_quote");
    let quote = vector("dcap-qvl/tdx_quote");
    // A v4 quote: REPORTDATA ends the 584-byte body after the 48-byte
    // header; the AK's signature follows the 4-byte signature data length.
    let (report_data_at, signature_at) = (48 + 520, 48 + 584 + 4);
    let v = verifier();
    let first = v.verify_ignoring_report_data(&quote, &c, at).unwrap();
    assert_eq!(v.memo_stats(), (1, 0));

    // The same TD again: served by the memo, with the same claims.
    let again = v.verify_ignoring_report_data(&quote, &c, at + minutes(1)).unwrap();
    assert_eq!(v.memo_stats(), (1, 1));
    assert_eq!(serde_json::to_value(&again.claims).unwrap(), serde_json::to_value(&first.claims).unwrap());

    // The parts the memo key leaves out are checked on every quote.
    let mut q = quote.clone();
    q[report_data_at + 7] ^= 1;
    assert!(matches!(v.verify_ignoring_report_data(&q, &c, at), Err(EvidenceError::SignatureInvalid)));
    let mut q = quote.clone();
    q[signature_at + 40] ^= 1;
    assert!(matches!(v.verify_ignoring_report_data(&q, &c, at), Err(EvidenceError::SignatureInvalid)));
    let mut expected = [0u8; 64];
    hex::decode_to_slice(&first.claims.report_data, &mut expected).unwrap();
    expected[0] ^= 1;
    assert!(matches!(v.verify(&quote, &c, at, &expected), Err(EvidenceError::ReportDataMismatch)));
    assert_eq!(v.memo_stats(), (1, 4), "each of these was a memo hit");

    // Time is checked on every quote: a hit after the collateral's
    // earliest expiry is refused.
    let late = c.expires_at() - minutes(5);
    v.verify_ignoring_report_data(&quote, &c, late).unwrap();
    let hits = v.memo_stats().1;
    let err = v.verify_ignoring_report_data(&quote, &c, late + minutes(6)).unwrap_err();
    assert!(matches!(err, EvidenceError::CollateralExpired(_)), "{err}");
    assert_eq!(v.memo_stats().1, hits + 1);

    // An appraisal stands for APPRAISAL_MEMO_TTL of verification time, and
    // never for a time before it was made.
    let v = verifier();
    v.verify_ignoring_report_data(&quote, &c, at).unwrap();
    v.verify_ignoring_report_data(&quote, &c, at - minutes(1)).unwrap();
    v.verify_ignoring_report_data(&quote, &c, at + APPRAISAL_MEMO_TTL).unwrap();
    assert_eq!(v.memo_stats(), (1, 0));

    // Other collateral is another key; failures are never remembered.
    let mut v3 = c.as_v3().clone();
    v3.tcb_info = v3.tcb_info.replacen("\"tcbEvaluationDataNumber\":17", "\"tcbEvaluationDataNumber\":18", 1);
    let forged = TdxCollateral::from_v3(v3).unwrap();
    assert_ne!(forged.digest(), c.digest());
    assert!(matches!(v.verify_ignoring_report_data(&quote, &forged, at), Err(EvidenceError::CollateralInvalid(_))));
    let err =
        v.verify_ignoring_report_data(&vector("dcap-qvl/tdx_quote_outdated"), &collateral("tdx_quote_outdated"), at);
    assert!(err.is_err());
    assert_eq!(v.memo_stats(), (1, 0));
}

#[test]
fn trustee_quotes_parse_and_chain_to_the_intel_root() {
    let at = datetime!(2025-06-01 00:00 UTC);
    let cases = [
        ("trustee/tdx/tdx_quote_4.dat", 4, "50806f000000", true),
        ("trustee/tdx/tdx_quote_5.dat", 5, "90c06f000000", false),
        ("trustee/tdx/tdx_quote_6.dat", 4, "00a06d080000", false),
        ("trustee/tdx/az-td-quote.bin", 4, "00806f050000", false),
    ];
    for (file, version, fmspc, debug) in cases {
        let q = TdxQuote::parse(&vector(file)).unwrap();
        assert_eq!(q.version(), version, "{file}");
        let (f, ca) = q.collateral_key().unwrap();
        assert_eq!(f.to_string(), fmspc, "{file}");
        assert_eq!(ca, PckCa::Platform, "{file}");
        verifier().verify_without_collateral(&q, at).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(q.report().td_attributes.debug, debug, "{file}");
    }
    let q4 = TdxQuote::parse(&vector("trustee/tdx/tdx_quote_4.dat")).unwrap();
    assert_eq!(
        hex::encode(q4.report().mr_td),
        "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031"
    );
}

#[test]
fn the_debug_td_is_refused() {
    // The debug TD's quote is genuine (chain and signatures verify), so the
    // verifier's claims say debug; the release policy refuses that. Without
    // its collateral, full verification cannot run: check the claim the
    // policy reads and that the verifier never accepts it without a set.
    let q = TdxQuote::parse(&vector("trustee/tdx/tdx_quote_4.dat")).unwrap();
    assert!(q.report().td_attributes.debug && q.report().td_attributes.under_debug);
    let c = collateral("tdx_quote");
    let err = verifier().verify_parsed_ignoring_report_data(q, &c, datetime!(2025-07-01 00:00 UTC)).unwrap_err();
    assert!(matches!(err, EvidenceError::CollateralInvalid(_)), "{err}");
}

#[tokio::test]
async fn the_offline_directory_finds_sets_by_fmspc_and_ca() {
    let dir = tempfile::tempdir().unwrap();
    let store = TdxCollateralDir::new(dir.path());
    let c = collateral("tdx_quote");
    store.store(&c).await.unwrap();
    let found = store.lookup(c.fmspc(), PckCa::Platform).await.unwrap().unwrap();
    assert_eq!(found.fmspc(), c.fmspc());
    assert!(store.lookup(c.fmspc(), PckCa::Processor).await.unwrap().is_none());
    // A file named for one FMSPC holding another's set is refused.
    std::fs::write(dir.path().join("90c06f000000.json"), vector("dcap-qvl/tdx_quote_collateral.json")).unwrap();
    assert!(store.lookup(Fmspc::from_hex("90c06f000000").unwrap(), PckCa::Platform).await.is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        let _ = TdxQuote::parse(&bytes);
    }

    #[test]
    fn mutated_real_quotes_never_panic_and_never_verify(pos in 0usize..1258, bit in 0u8..8) {
        let mut q = vector("dcap-qvl/tdx_quote");
        q[pos] ^= 1 << bit;
        let c = collateral("tdx_quote");
        let now: OffsetDateTime = datetime!(2025-07-01 00:00 UTC);
        // Everything up to the PCK chain is signed or bound (the chain is
        // checked by signature; the quote's copy of the root is ignored).
        prop_assert!(verifier().verify_ignoring_report_data(&q, &c, now).is_err());
    }

    #[test]
    fn mutated_real_quotes_never_verify_once_the_genuine_one_is_remembered(pos in 0usize..1258, bit in 0u8..8) {
        let quote = vector("dcap-qvl/tdx_quote");
        let c = collateral("tdx_quote");
        let now: OffsetDateTime = datetime!(2025-07-01 00:00 UTC);
        let v = verifier();
        v.verify_ignoring_report_data(&quote, &c, now).unwrap();
        let mut q = quote;
        q[pos] ^= 1 << bit;
        prop_assert!(v.verify_ignoring_report_data(&q, &c, now).is_err());
    }

    #[test]
    fn truncations_never_panic(len in 0usize..5006) {
        let q = vector("dcap-qvl/tdx_quote");
        prop_assert!(TdxQuote::parse(&q[..len]).is_err() || len >= 4936);
    }
}

#[test]
fn oversize_quotes_are_refused_before_parsing() {
    assert!(matches!(TdxQuote::parse(&vec![0; MAX_QUOTE_LEN + 1]), Err(EvidenceError::TooLarge { .. })));
}
