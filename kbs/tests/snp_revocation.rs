//! AMD CRLs: which CRLs the SEV-SNP verifier accepts, and how a revoked
//! ASK, a missing CRL and an expired CRL change its answer. Reports are
//! signed by the simulated TEE under the committed test PKI; the CRLs are
//! the committed ones of `attester-client/testdata/snp-pki/crl` (made with
//! OpenSSL by its `generate-crl.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use attester_client::simulated::{
    Generation as SimGeneration, SimulatedSnp, TestCrl, Vcek, test_ark_der, test_ask_der, test_ask_pem, test_crl_dir,
};
use kbs::evidence::EvidenceError;
use kbs::evidence::amd_crl::{AmdCrl, MAX_CRL_LEN, Revocation};
use kbs::evidence::anchors::{Generation, IntermediateKind, SnpAnchors};
use kbs::evidence::collateral::CrlSources;
use kbs::evidence::snp::{CrlInstall, SnpVerifier};
use kbs::reason::ReasonCode;
use time::OffsetDateTime;
use time::macros::datetime;
use x509_parser::prelude::FromDer;

const NOW: OffsetDateTime = datetime!(2026-11-29 12:00 UTC);

/// AMD's roots plus the test ARK, pinned for every generation.
fn anchors() -> SnpAnchors {
    let mut anchors = SnpAnchors::amd().unwrap();
    for generation in Generation::ALL {
        anchors.add_root(generation, test_ark_der()).unwrap();
    }
    anchors
}

fn verifier(revocation: Revocation) -> SnpVerifier {
    SnpVerifier::new(anchors()).with_revocation(revocation)
}

/// Verifies a fresh Genoa report whose guest sends the test ASK in its
/// certificate table.
fn verify(verifier: &SnpVerifier, now: OffsetDateTime) -> Result<(), EvidenceError> {
    let report_data = [7u8; 64];
    let report = SimulatedSnp::new(SimGeneration::Genoa).report(&report_data).unwrap();
    let extra = vec![test_ask_der().to_vec()];
    verifier.verify(&report, Vcek::Genoa.cert_der(), &extra, now, &report_data).map(|_| ())
}

fn ask_serial() -> Vec<u8> {
    let (_, ask) = x509_parser::certificate::X509Certificate::from_der(test_ask_der()).unwrap();
    ask.raw_serial().to_vec()
}

fn installed(outcomes: &[(Generation, CrlInstall)], want: &CrlInstall) -> usize {
    outcomes.iter().filter(|(_, o)| o == want).count()
}

#[test]
fn only_crls_a_pinned_ark_signed_with_amds_algorithm_verify() {
    let anchors = anchors();
    let empty = AmdCrl::verify(TestCrl::Empty.der(), IntermediateKind::Ask, &anchors).unwrap();
    // The test ARK is pinned for all three generations.
    assert_eq!(empty.len(), 3);
    for crl in &empty {
        assert_eq!(crl.revoked_count(), 0);
        assert_eq!(crl.kind(), IntermediateKind::Ask);
        assert_eq!(
            (crl.this_update(), crl.next_update()),
            (datetime!(2024-01-01 0:00 UTC), datetime!(2049-12-31 23:59:59 UTC))
        );
        assert!(crl.current_at(NOW) && !crl.current_at(datetime!(2023-12-31 0:00 UTC)));
        assert!(!crl.lists(&ask_serial()));
    }
    let revoking = AmdCrl::verify(TestCrl::RevokesAsk.der(), IntermediateKind::Ask, &anchors).unwrap();
    assert!(revoking.iter().all(|c| c.revoked_count() == 1 && c.lists(&ask_serial())));
    // Sign padding does not hide a serial.
    assert!(revoking[0].lists(&[&[0u8][..], &ask_serial()].concat()));
    // Several entries: each is found, and nothing else.
    let three = AmdCrl::verify(TestCrl::RevokesThree.der(), IntermediateKind::Ask, &anchors).unwrap();
    assert_eq!(three[0].revoked_count(), 3);
    for serial in [&[0x01][..], &[0xff; 19][..], &ask_serial()] {
        assert!(three[0].lists(serial), "{}", hex::encode(serial));
    }
    for serial in [&[0x02][..], &[0xff; 18][..], &[0xff; 20][..], &ask_serial()[1..], &[][..]] {
        assert!(!three[0].lists(serial), "{}", hex::encode(serial));
    }

    let refused = |crl: TestCrl, anchors: &SnpAnchors, why: &str| {
        let err = AmdCrl::verify(crl.der(), IntermediateKind::Ask, anchors).unwrap_err();
        assert!(matches!(err, EvidenceError::CollateralInvalid(_)), "{crl:?}: {err}");
        assert!(err.to_string().contains(why), "{crl:?}: {err}");
        assert_eq!(err.reason(), ReasonCode::CollateralUnavailable);
    };
    refused(TestCrl::Foreign, &anchors, "not issued by a pinned AMD root");
    refused(TestCrl::Pkcs1, &anchors, "not RSASSA-PSS");
    // AMD's own roots do not vouch for the test ARK's CRL.
    refused(TestCrl::Empty, &SnpAnchors::amd().unwrap(), "not issued by a pinned AMD root");
    // The expired CRL verifies (it is authentic), but is not current.
    let expired = AmdCrl::verify(TestCrl::Expired.der(), IntermediateKind::Ask, &anchors).unwrap();
    assert!(!expired[0].current_at(NOW) && expired[0].current_at(datetime!(2024-06-01 0:00 UTC)));
}

#[test]
fn every_bit_flip_in_the_signed_list_or_the_signature_is_refused() {
    let anchors = anchors();
    let good = TestCrl::Empty.der();
    let (_, outer) = split_tlv(good);
    let header = good.len() - outer.len();
    let tbs = children(good)[0];
    let signed = header..header + tbs.len();
    // RSA-4096: the last 512 bytes are the signature value.
    let signature = good.len() - 512..good.len();
    let mut refused = 0;
    for bit in 0..good.len() * 8 {
        let mut bad = good.to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        let result = AmdCrl::verify(&bad, IntermediateKind::Ask, &anchors);
        if signed.contains(&(bit / 8)) || signature.contains(&(bit / 8)) {
            assert!(result.is_err(), "bit {bit} flipped still verifies");
            refused += 1;
        }
    }
    assert_eq!(refused, (tbs.len() + 512) * 8);
}

#[test]
fn broken_crls_are_refused_without_panicking() {
    let anchors = anchors();
    let good = TestCrl::Empty.der();
    for len in 0..good.len() {
        assert!(AmdCrl::verify(&good[..len], IntermediateKind::Ask, &anchors).is_err(), "truncated to {len}");
    }
    let mut trailing = good.to_vec();
    trailing.push(0);
    let err = AmdCrl::verify(&trailing, IntermediateKind::Ask, &anchors).unwrap_err();
    assert!(err.to_string().contains("trailing bytes"), "{err}");
    let err = AmdCrl::verify(&vec![0x30; MAX_CRL_LEN + 1], IntermediateKind::Ask, &anchors).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    // A certificate is not a CRL.
    assert!(AmdCrl::verify(test_ask_der(), IntermediateKind::Ask, &anchors).is_err());

    // Extensions are judged before the signature, so these need no key:
    // a delta CRL is incomplete, and an unknown critical extension is
    // something this verifier would be ignoring.
    let delta = with_crl_extension(good, &[0x06, 0x03, 0x55, 0x1d, 0x1b], false);
    let err = AmdCrl::verify(&delta, IntermediateKind::Ask, &anchors).unwrap_err();
    assert!(err.to_string().contains("delta CRL"), "{err}");
    let critical = with_crl_extension(good, &[0x06, 0x03, 0x55, 0x1d, 0x1c], true);
    let err = AmdCrl::verify(&critical, IntermediateKind::Ask, &anchors).unwrap_err();
    assert!(err.to_string().contains("critical extension"), "{err}");
    // The same extension, not critical, passes the shape checks and then
    // fails only on the signature (the bytes changed).
    let plain = with_crl_extension(good, &[0x06, 0x03, 0x55, 0x1d, 0x1c], false);
    let err = AmdCrl::verify(&plain, IntermediateKind::Ask, &anchors).unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn a_revoked_ask_is_refused_on_cached_and_fresh_chains() {
    let verifier = verifier(Revocation::BestEffort);
    verify(&verifier, NOW).unwrap();
    assert_eq!(verifier.cached_veks(), 1);

    let outcomes = verifier.install_crl(TestCrl::RevokesAsk.der(), IntermediateKind::Ask, NOW).unwrap();
    assert_eq!(installed(&outcomes, &CrlInstall::Installed), 3);
    // The chain is cached, and still the revocation is seen.
    let err = verify(&verifier, NOW).unwrap_err();
    assert!(matches!(err, EvidenceError::Revoked(_)), "{err}");
    assert_eq!(err.reason(), ReasonCode::CertificateRevoked);
    assert_eq!(err.reason().as_str(), "certificate_revoked");

    // The ASK as an operator-configured intermediate instead of the
    // guest's table: the same refusal.
    let mut anchors = anchors();
    anchors.add_intermediate(test_ask_pem()).unwrap();
    let operator = SnpVerifier::new(anchors);
    operator.install_crl(TestCrl::RevokesAsk.der(), IntermediateKind::Ask, NOW).unwrap();
    let report_data = [3u8; 64];
    let report = SimulatedSnp::new(SimGeneration::Genoa).report(&report_data).unwrap();
    let err = operator.verify(&report, Vcek::Genoa.cert_der(), &[], NOW, &report_data).unwrap_err();
    assert!(matches!(err, EvidenceError::Revoked(_)), "{err}");

    // A CRL for ASVKs does not speak for ASKs.
    let asvk_only = verifier_with(Revocation::BestEffort, &[(TestCrl::RevokesAsk, IntermediateKind::Asvk)]);
    verify(&asvk_only, NOW).unwrap();
}

fn verifier_with(revocation: Revocation, crls: &[(TestCrl, IntermediateKind)]) -> SnpVerifier {
    let verifier = verifier(revocation);
    for (crl, kind) in crls {
        verifier.install_crl(crl.der(), *kind, NOW).unwrap();
    }
    verifier
}

#[test]
fn an_older_crl_never_replaces_a_newer_one() {
    let verifier = verifier_with(Revocation::BestEffort, &[(TestCrl::RevokesAsk, IntermediateKind::Ask)]);
    // The empty CRL was issued before the revoking one.
    let outcomes = verifier.install_crl(TestCrl::Empty.der(), IntermediateKind::Ask, NOW).unwrap();
    assert_eq!(installed(&outcomes, &CrlInstall::Older), 3);
    assert!(matches!(verify(&verifier, NOW), Err(EvidenceError::Revoked(_))));
    let outcomes = verifier.install_crl(TestCrl::RevokesAsk.der(), IntermediateKind::Ask, NOW).unwrap();
    assert_eq!(installed(&outcomes, &CrlInstall::Unchanged), 3);

    // In the other order, the newer one replaces the older.
    let verifier = verifier_with(Revocation::BestEffort, &[(TestCrl::Empty, IntermediateKind::Ask)]);
    verify(&verifier, NOW).unwrap();
    verifier.install_crl(TestCrl::RevokesAsk.der(), IntermediateKind::Ask, NOW).unwrap();
    assert!(matches!(verify(&verifier, NOW), Err(EvidenceError::Revoked(_))));
}

#[test]
fn require_refuses_without_a_current_crl() {
    // None installed.
    let required = verifier(Revocation::Require);
    let err = verify(&required, NOW).unwrap_err();
    assert!(matches!(err, EvidenceError::CollateralUnavailable(_)), "{err}");
    assert!(err.to_string().contains("no CRL for Genoa Ask"), "{err}");
    // One for the other kind does not count.
    required.install_crl(TestCrl::Empty.der(), IntermediateKind::Asvk, NOW).unwrap();
    assert!(matches!(verify(&required, NOW), Err(EvidenceError::CollateralUnavailable(_))));
    // A current one for ASKs that does not list the ASK: accepted.
    required.install_crl(TestCrl::Empty.der(), IntermediateKind::Ask, NOW).unwrap();
    verify(&required, NOW).unwrap();

    // The 2024 CRL: installed while current, used while current, then
    // refused under `require` once its nextUpdate has passed, and still
    // accepted under `best_effort`.
    let in_2024 = datetime!(2024-06-01 0:00 UTC);
    let in_2025 = datetime!(2025-06-01 0:00 UTC);
    for (revocation, later) in [(Revocation::Require, false), (Revocation::BestEffort, true)] {
        let verifier = verifier(revocation);
        verifier.install_crl(TestCrl::Expired.der(), IntermediateKind::Ask, in_2024).unwrap();
        verify(&verifier, in_2024).unwrap();
        let result = verify(&verifier, in_2025);
        assert_eq!(result.is_ok(), later, "{revocation:?}: {result:?}");
        if let Err(err) = result {
            assert!(matches!(err, EvidenceError::CollateralExpired(_)), "{err}");
            assert_eq!(err.reason().as_str(), "collateral_expired");
        }
    }
    // A CRL already past its nextUpdate is not installed at all.
    let err = required.install_crl(TestCrl::Expired.der(), IntermediateKind::Ask, NOW).unwrap_err();
    assert!(matches!(err, EvidenceError::CollateralExpired(_)), "{err}");
}

#[tokio::test]
async fn an_offline_directory_installs_every_products_crl() {
    let verifier = verifier(Revocation::Require);
    let sources = CrlSources::new(Some(test_crl_dir()), None);
    let refresh = sources.refresh(&verifier, NOW, true).await;
    assert!(refresh.problems.is_empty(), "{:?}", refresh.problems);
    let mut got: Vec<(Generation, IntermediateKind)> = refresh.installed.iter().map(|(g, k, _)| (*g, *k)).collect();
    got.sort_by_key(|(g, _)| g.as_str());
    // Each product's file is signed by the test ARK, which is pinned for
    // every generation, so each file installs for all three; the first
    // read installs, the others are unchanged.
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(verifier.crls().len(), 3);
    verify(&verifier, NOW).unwrap();

    // A directory holding the revoking CRL for Genoa.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vcek/v1/Genoa/crl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, TestCrl::RevokesAsk.der()).unwrap();
    // And a broken one for Milan, which is reported, not fatal.
    let broken = dir.path().join("vcek/v1/Milan/crl");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(&broken, b"not a CRL").unwrap();
    let refresh = CrlSources::new(Some(dir.path().to_path_buf()), None).refresh(&verifier, NOW, true).await;
    assert_eq!(refresh.problems.len(), 1, "{:?}", refresh.problems);
    assert!(refresh.problems[0].contains("Milan"), "{:?}", refresh.problems);
    assert!(matches!(verify(&verifier, NOW), Err(EvidenceError::Revoked(_))));
}

/// `crl` with one more CRL extension (`oid_tlv`, value `INTEGER 1`),
/// re-encoded around the original, now wrong, signature.
fn with_crl_extension(crl: &[u8], oid_tlv: &[u8], critical: bool) -> Vec<u8> {
    let [tbs, algorithm, signature] = children(crl)[..] else { panic!("a CRL has three parts") };
    let mut tbs_parts: Vec<Vec<u8>> = children(tbs).into_iter().map(<[u8]>::to_vec).collect();
    let mut extension = oid_tlv.to_vec();
    if critical {
        extension.extend_from_slice(&[0x01, 0x01, 0xff]);
    }
    extension.extend_from_slice(&tlv(0x04, &[0x02, 0x01, 0x01]));
    let extension = tlv(0x30, &extension);
    match tbs_parts.last() {
        // Existing crlExtensions [0] { SEQUENCE { ... } }: append.
        Some(last) if last[0] == 0xa0 => {
            let list = children(last)[0];
            let mut items: Vec<u8> = children(list).concat();
            items.extend_from_slice(&extension);
            let replaced = tlv(0xa0, &tlv(0x30, &items));
            *tbs_parts.last_mut().unwrap() = replaced;
        }
        _ => tbs_parts.push(tlv(0xa0, &tlv(0x30, &extension))),
    }
    let tbs = tlv(0x30, &tbs_parts.concat());
    tlv(0x30, &[tbs, algorithm.to_vec(), signature.to_vec()].concat())
}

/// The TLVs inside one constructed DER TLV.
fn children(der: &[u8]) -> Vec<&[u8]> {
    let (_, content) = split_tlv(der);
    let mut rest = content;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, _) = split_tlv(rest);
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

/// The whole length of the first TLV of `der`, and its content.
fn split_tlv(der: &[u8]) -> (usize, &[u8]) {
    let (header, len) = match der[1] {
        n if n < 0x80 => (2, usize::from(n)),
        0x81 => (3, usize::from(der[2])),
        0x82 => (4, usize::from(der[2]) << 8 | usize::from(der[3])),
        n => panic!("length form {n:#x}"),
    };
    (header + len, &der[header..header + len])
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}
