//! The TDX collateral parser on arbitrary bytes (a PCS or PCCS answer, or a
//! collateral file): it must never panic, and a set it accepts must survive
//! its own JSON form unchanged.
#![no_main]

use kbs::evidence::tdx_collateral::TdxCollateral;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = TdxCollateral::from_json(data) {
        let json = set.to_json().expect("an accepted set serializes");
        let again = TdxCollateral::from_json(&json).expect("an accepted set parses again");
        assert_eq!(again.digest(), set.digest());
        assert_eq!(again.fmspc(), set.fmspc());
        assert_eq!(again.pck_ca(), set.pck_ca());
    }
});
