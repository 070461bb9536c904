//! The GPU part of a release on arbitrary input: the CoCo decoder of
//! guest-components' NVIDIA evidence, the size caps and the binding on what
//! it yields, and the whole device verifier (test root pinned) on arbitrary
//! report and chain bytes. Nothing may panic, and the verifier must never
//! accept: no input here carries a signature of the test PKI's keys.
#![no_main]

use kbs::api::coco::evidence::nvidia_devices;
use kbs::evidence::gpu::chain::pem_chain;
use kbs::evidence::gpu::{GpuAnchors, GpuNonce, GpuVerifier};
use kbs::release::{GpuInput, check_gpu_caps};
use libfuzzer_sys::fuzz_target;

const TEST_ROOT: &str = include_str!("../../../attester-client/testdata/gpu-pki/root.pem");

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        if let Ok(Some(devices)) = nvidia_devices(&String::from_utf8_lossy(rest)) {
            assert!(devices.len() <= kbs_proto::MAX_DEVICES);
            let _ = check_gpu_caps(&devices);
            let bound: Vec<kbs_proto::DeviceEvidence<'_>> = devices
                .iter()
                .map(|d| kbs_proto::DeviceEvidence { report: &d.report, cert_chain: &d.cert_chain })
                .collect();
            let _ = kbs_proto::device_report_data(&[0; 32], kbs_proto::SuiteId::X25519_SHA256_AES256GCM, &[], &bound);
        }
        return;
    }
    let split = usize::from(rest.first().copied().unwrap_or(0)) * 32;
    let (report, chain) = rest.split_at(split.min(rest.len()));
    let input = GpuInput { report: report.to_vec(), cert_chain: chain.to_vec(), ocsp: Vec::new() };
    if check_gpu_caps(std::slice::from_ref(&input)).is_err() {
        return;
    }
    let mut anchors = GpuAnchors::empty();
    let root = pem_chain(TEST_ROOT.as_bytes()).expect("test root");
    anchors.add_root(&root[0]).expect("test root pins");
    let verifier = GpuVerifier::new(anchors);
    assert!(verifier.verify(report, chain, time::OffsetDateTime::now_utc(), &GpuNonce([0; 32])).is_err());
});
