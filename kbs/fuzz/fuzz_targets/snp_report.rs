//! The SEV-SNP report parser on arbitrary bytes: it must never panic, and
//! whatever it accepts must round-trip its accessors.
#![no_main]

use kbs::evidence::snp::{REPORT_LEN, SnpReport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = SnpReport::parse(data) {
        assert_eq!(data.len(), REPORT_LEN);
        assert_eq!(report.raw().as_slice(), data);
        let _ = report.generation();
        let _ = report.signature_p384();
        for g in kbs::evidence::anchors::Generation::ALL {
            let _ = report.reported_tcb().decode(g).encode(g);
        }
    }
});
