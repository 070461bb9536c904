//! The TDX quote parser on arbitrary bytes: it must never panic, and
//! whatever it accepts must keep its accessors within the input.
#![no_main]

use kbs::evidence::tdx::{MAX_QUOTE_LEN, TdxQuote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(quote) = TdxQuote::parse(data) {
        assert!(data.len() <= MAX_QUOTE_LEN);
        assert_eq!(quote.raw(), data);
        assert!(quote.signed_bytes().len() <= data.len());
        assert!(!quote.pck_chain().is_empty());
        let _ = quote.collateral_key();
        let _ = quote.qe_isv_svn();
        let _ = quote.report().td_attributes.reserved_bits();
    }
});
