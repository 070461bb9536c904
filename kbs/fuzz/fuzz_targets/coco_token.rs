//! The CoCo attestation token (an ES256 JWT the broker signs and a guest
//! sends back) on arbitrary input: verification must never panic and never
//! accept, since only the broker's key signs; and claims of any shape the
//! broker signs verify back to themselves.
#![no_main]

use std::sync::OnceLock;

use kbs::api::coco::token::TokenKey;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn key() -> &'static TokenKey {
    static K: OnceLock<TokenKey> = OnceLock::new();
    K.get_or_init(|| TokenKey::generate().expect("a token key"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(key().verify(text, 1_000).is_err(), "a token the broker did not sign was accepted");
    }
    if let Ok(extra) = serde_json::from_slice::<Value>(data) {
        let claims = json!({"iat": 0, "exp": 10_000, "x": extra});
        if let Ok(token) = key().sign(&claims) {
            assert_eq!(key().verify(&token, 1).expect("its own token verifies"), claims);
        }
    }
});
