//! The OCSP response check on arbitrary bytes: it must never panic. The
//! target and issuer are not certificates, so nothing can be accepted;
//! the parser runs before they are looked at.
#![no_main]

use kbs::evidence::gpu::ocsp::verify_ocsp_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(verify_ocsp_response(data, &[], &[], time::OffsetDateTime::UNIX_EPOCH).is_err());
});
