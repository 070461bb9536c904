//! The CoCo front end's parsers of a guest's JSON on arbitrary input: the
//! SNP and TDX evidence shapes, the sample TEE's report data, the TEE
//! public key (JWK), the init-data algorithm and the JSON canonicalization
//! (JCS) the binding hashes. None may panic; a canonical form must be JSON
//! whose canonical form is itself.
#![no_main]

use kbs::api::coco::jwe::TeeKey;
use kbs::api::coco::{evidence, init_data_algorithm, jcs};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = init_data_algorithm(text);
    let _ = evidence::snp(text);
    let _ = evidence::tdx(text);
    let _ = evidence::sample_report_data(text);
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let _ = TeeKey::from_jwk(&value);
    if let Some(key) = value.get("tee-pubkey") {
        let _ = TeeKey::from_jwk(key);
    }
    if let Ok(canonical) = jcs::to_vec(&value) {
        let again: Value = serde_json::from_slice(&canonical).expect("a canonical form is JSON");
        assert_eq!(jcs::to_vec(&again).expect("it canonicalizes"), canonical, "JCS is not idempotent");
    }
});
