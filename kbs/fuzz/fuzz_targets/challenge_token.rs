//! Opening a challenge token (bytes a guest sends back) on arbitrary input:
//! it must never panic and never accept, since only a holder of the
//! challenge key can seal a token.
#![no_main]

use std::sync::OnceLock;

use kbs::challenge::ChallengeSealer;
use libfuzzer_sys::fuzz_target;

fn sealer() -> &'static ChallengeSealer {
    static S: OnceLock<ChallengeSealer> = OnceLock::new();
    S.get_or_init(|| ChallengeSealer::new(&[7; 32], &[]).expect("a sealer"))
}

fuzz_target!(|data: &[u8]| {
    assert!(sealer().open(data, 0).is_err());
});
