//! RIM verification on arbitrary bytes with NVIDIA's RIM root pinned: the
//! XML parser, the canonicalization and the signature checks must never
//! panic, and nothing NVIDIA did not sign may be accepted (a mutated RIM
//! verifies only if its canonical form and signature are unchanged).
#![no_main]

use std::sync::OnceLock;

use kbs::evidence::gpu::GpuAnchors;
use kbs::evidence::gpu::rim::{RimCheck, verify_rim};
use libfuzzer_sys::fuzz_target;

fn anchors() -> &'static GpuAnchors {
    static A: OnceLock<GpuAnchors> = OnceLock::new();
    A.get_or_init(|| GpuAnchors::nvidia_rim().expect("the built-in RIM root"))
}

fuzz_target!(|data: &[u8]| {
    let check = RimCheck { anchors: anchors(), now: time::OffsetDateTime::UNIX_EPOCH, accept_expired: true };
    if let Ok(rim) = verify_rim(data, &check) {
        // Only NVIDIA-signed content gets here; its measurements are sane.
        assert!(!rim.measurements.is_empty());
        assert!(rim.measurements.iter().all(|m| !m.alternatives.is_empty()));
    }
});
