//! The whole verifier on arbitrary (report, VEK, guest certificate) input
//! with AMD's anchors: it must never panic and never accept (nothing but
//! AMD can sign a VEK).
#![no_main]

use std::sync::OnceLock;

use kbs::evidence::anchors::SnpAnchors;
use kbs::evidence::snp::{REPORT_LEN, SnpVerifier};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static SnpVerifier {
    static V: OnceLock<SnpVerifier> = OnceLock::new();
    V.get_or_init(|| SnpVerifier::new(SnpAnchors::amd().expect("built-in anchors")))
}

fuzz_target!(|data: &[u8]| {
    let (report, rest) = data.split_at(data.len().min(REPORT_LEN));
    let (vek, extra) = rest.split_at(rest.len() / 2);
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let result = verifier().verify_ignoring_report_data(report, vek, &[extra.to_vec()], now);
    assert!(result.is_err());
});
