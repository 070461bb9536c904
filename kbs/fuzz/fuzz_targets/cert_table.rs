//! The extended-report certificate table parser on arbitrary bytes: it must
//! never panic, and every certificate it returns lies inside the input.
#![no_main]

use kbs::evidence::certtable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = certtable::parse(data) {
        for cert in [&table.vcek, &table.vlek, &table.ask, &table.ark].into_iter().flatten() {
            assert!(!cert.is_empty() && cert.len() <= data.len());
        }
    }
});
