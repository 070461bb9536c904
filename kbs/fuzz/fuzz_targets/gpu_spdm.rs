//! The NVIDIA SPDM report parser on arbitrary bytes: it must never panic,
//! and whatever it accepts must be laid out as it says: the signed part a
//! prefix of the input, then the 96-byte signature, then only zeros.
#![no_main]

use kbs::evidence::gpu::GpuReport;
use kbs::evidence::gpu::spdm::{MAX_TRAILING_ZEROS, REQUEST_LEN, SIGNATURE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = GpuReport::parse(data) {
        let signed = report.signed.len();
        assert!(signed > REQUEST_LEN);
        assert_eq!(&data[..signed], report.signed);
        assert_eq!(&data[signed..signed + SIGNATURE_LEN], report.response.signature.as_slice());
        assert_eq!(data.len(), signed + SIGNATURE_LEN + report.trailing_zeros);
        assert!(report.trailing_zeros <= MAX_TRAILING_ZEROS);
        assert!(data[signed + SIGNATURE_LEN..].iter().all(|b| *b == 0));
        assert_eq!(&data[4..36], report.request.nonce.0.as_slice());
        assert!(!report.response.blocks.is_empty());
        assert!(report.response.blocks.windows(2).all(|w| w[0].index < w[1].index));
        let _ = report.opaque_fields();
        let _ = report.fwid();
    }
});
