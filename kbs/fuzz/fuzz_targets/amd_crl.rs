//! AMD CRL verification on arbitrary bytes, with the committed test ARK
//! pinned so that inputs near the seed CRLs reach the signature check: it
//! must never panic, and whatever it accepts must carry the signed list of
//! one of the test ARK's committed CRLs (nothing else is signed by it).
#![no_main]

use std::sync::OnceLock;

use kbs::evidence::amd_crl::{AmdCrl, parse_shape};
use kbs::evidence::anchors::{Generation, IntermediateKind, SnpAnchors};
use libfuzzer_sys::fuzz_target;

const TEST_ARK: &[u8] = include_bytes!("../../../attester-client/testdata/snp-pki/ark.der");
const SIGNED: [&[u8]; 5] = [
    include_bytes!("../../../attester-client/testdata/snp-pki/crl/vcek/v1/Genoa/crl"),
    include_bytes!("../../../attester-client/testdata/snp-pki/crl/ark-revokes-ask.crl"),
    include_bytes!("../../../attester-client/testdata/snp-pki/crl/ark-revokes-three.crl"),
    include_bytes!("../../../attester-client/testdata/snp-pki/crl/ark-expired.crl"),
    include_bytes!("../../../attester-client/testdata/snp-pki/crl/ark-pkcs1.crl"),
];

fn anchors() -> &'static SnpAnchors {
    static A: OnceLock<SnpAnchors> = OnceLock::new();
    A.get_or_init(|| {
        let mut anchors = SnpAnchors::amd().expect("built-in anchors");
        anchors.add_root(Generation::Genoa, TEST_ARK).expect("test ARK");
        anchors
    })
}

/// Whether `data` contains the signed part of a committed CRL: its bytes
/// between the outer header (4 bytes) and the algorithm and signature.
fn carries_a_signed_list(data: &[u8]) -> bool {
    SIGNED.iter().any(|crl| {
        let tbs = crl.get(4..crl.len().saturating_sub(600)).unwrap_or_default();
        !tbs.is_empty() && data.windows(tbs.len()).any(|w| w == tbs)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_shape(data);
    if AmdCrl::verify(data, IntermediateKind::Ask, anchors()).is_ok() {
        assert!(carries_a_signed_list(data), "a CRL the test ARK never signed was accepted");
    }
});
