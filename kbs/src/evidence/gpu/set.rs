//! Checks on the set of devices one confidential VM presents, after each
//! device's evidence verified on its own ([`super::GpuVerifier::verify`]).
//!
//! [`check_device_set`] runs these checks in this order:
//!
//! 1. **Nonce**: every device's nonce was checked, and it is the same for
//!    all (one nonce per attestation) (`NonceNotChecked`, `NonceDiffers`).
//! 2. **Distinct devices**: no device identity (the device certificate's
//!    key, [`super::GpuDeviceClaims::device_key_sha256`]) appears twice: a
//!    repeated report of one device must not count as several (`Duplicate`).
//! 3. **Count**: exactly the expected numbers of GPUs and NVSwitches
//!    (`CountMismatch`).
//! 4. **Mode**: every GPU that reports its multi-GPU mode reports the same
//!    one (`MixedModes`); NVIDIA's tools refuse mixed SPT/MPT systems too.
//! 5. **Topology**, when NVSwitches are expected (PPCIe): every GPU's
//!    non-zero NVLink peer PDIs, read in the other byte order, are the same
//!    set, and that set is exactly the switches' own PDIs (`Topology`).
//!    The switches' lists of GPU PDIs cannot be tied to GPU reports (GPUs
//!    do not report their own PDI) and are not used.
//!
//! The binding of the set to the CPU evidence is a separate step.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{DeviceClass, FeatureFlag, GpuDeviceClaims, NonceCheck};
use crate::reason::ReasonCode;

/// How many devices of each class a VM must present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSetExpectation {
    /// GPUs.
    pub gpus: usize,
    /// NVSwitches.
    pub switches: usize,
}

/// What the set checks established (the `gpu` summary next to the
/// per-device claims).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSetSummary {
    /// GPUs in the set.
    pub gpus: usize,
    /// NVSwitches in the set.
    pub switches: usize,
    /// The GPUs' common multi-GPU mode, if any reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<FeatureFlag>,
    /// The NVLink topology check.
    pub topology: TopologyCheck,
}

/// Outcome of the topology check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyCheck {
    /// The GPUs' NVLink peers are exactly the NVSwitches presented.
    Ok,
    /// No NVSwitches expected: nothing to check.
    NotApplicable,
}

/// Why a device set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceSetError {
    /// A device's claims come from the inspection entry point.
    #[error("device {0}: nonce not checked")]
    NonceNotChecked(usize),
    /// Devices signed different nonces.
    #[error("devices signed different nonces")]
    NonceDiffers,
    /// One device appears more than once.
    #[error("device key {0} appears more than once")]
    Duplicate(String),
    /// Not the expected numbers of devices.
    #[error("expected {expected_gpus} GPUs and {expected_switches} NVSwitches, got {gpus} and {switches}")]
    CountMismatch {
        /// Expected GPUs.
        expected_gpus: usize,
        /// Expected NVSwitches.
        expected_switches: usize,
        /// GPUs presented.
        gpus: usize,
        /// NVSwitches presented.
        switches: usize,
    },
    /// GPUs report different multi-GPU modes.
    #[error("GPUs run in different multi-GPU modes")]
    MixedModes,
    /// The GPUs' NVLink peers are not the NVSwitches presented.
    #[error("NVLink topology: {0}")]
    Topology(String),
}

impl DeviceSetError {
    /// The stable reason code: a set that is not the expected one is
    /// `gpu_count_mismatch`; evidence that cannot belong together is
    /// `gpu_evidence_invalid`.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::Duplicate(_) | Self::CountMismatch { .. } | Self::Topology(_) => ReasonCode::GpuCountMismatch,
            Self::NonceNotChecked(_) | Self::NonceDiffers | Self::MixedModes => ReasonCode::GpuEvidenceInvalid,
        }
    }
}

/// Checks the set of verified devices against `expected`; see the module
/// docs.
pub fn check_device_set(
    devices: &[GpuDeviceClaims],
    expected: &DeviceSetExpectation,
) -> Result<DeviceSetSummary, DeviceSetError> {
    // 1. Nonce.
    if let Some(i) = devices.iter().position(|d| d.evidence.nonce != NonceCheck::Match) {
        return Err(DeviceSetError::NonceNotChecked(i));
    }
    if devices.windows(2).any(|w| matches!(w, [a, b] if a.nonce != b.nonce)) {
        return Err(DeviceSetError::NonceDiffers);
    }
    // 2. Distinct devices.
    let mut seen = BTreeSet::new();
    for d in devices {
        if !seen.insert(d.device_key_sha256.as_str()) {
            return Err(DeviceSetError::Duplicate(d.device_key_sha256.clone()));
        }
    }
    // 3. Count.
    let gpus = devices.iter().filter(|d| d.class == DeviceClass::Gpu).count();
    let switches = devices.iter().filter(|d| d.class == DeviceClass::Nvswitch).count();
    if gpus != expected.gpus || switches != expected.switches {
        return Err(DeviceSetError::CountMismatch {
            expected_gpus: expected.gpus,
            expected_switches: expected.switches,
            gpus,
            switches,
        });
    }
    // 4. Mode.
    let mut modes = devices.iter().filter(|d| d.class == DeviceClass::Gpu).filter_map(|d| d.feature);
    let mode = modes.next();
    if let Some(first) = mode
        && modes.any(|m| m != first)
    {
        return Err(DeviceSetError::MixedModes);
    }
    // 5. Topology.
    let topology = if expected.switches > 0 {
        check_topology(devices)?;
        TopologyCheck::Ok
    } else {
        TopologyCheck::NotApplicable
    };
    Ok(DeviceSetSummary { gpus, switches, mode, topology })
}

/// Step 5: the GPUs' NVLink peers are exactly the switches presented.
fn check_topology(devices: &[GpuDeviceClaims]) -> Result<(), DeviceSetError> {
    const NO_LINK: &str = "0000000000000000";
    let mut peers: Option<BTreeSet<String>> = None;
    for (i, gpu) in devices.iter().enumerate().filter(|(_, d)| d.class == DeviceClass::Gpu) {
        let set: BTreeSet<String> =
            gpu.pdis.iter().filter(|p| p.as_str() != NO_LINK).filter_map(|p| reversed(p)).collect();
        match &peers {
            None => peers = Some(set),
            Some(first) if *first != set => {
                return Err(DeviceSetError::Topology(format!("GPU {i} reaches other switches than GPU 0")));
            }
            Some(_) => {}
        }
    }
    let own: BTreeSet<String> =
        devices.iter().filter(|d| d.class == DeviceClass::Nvswitch).flat_map(|d| d.pdis.iter().cloned()).collect();
    match peers {
        Some(peers) if peers == own => Ok(()),
        Some(_) => Err(DeviceSetError::Topology("the GPUs' NVLink peers are not the switches presented".into())),
        None => Err(DeviceSetError::Topology("no GPUs".into())),
    }
}

/// A PDI (16 hex digits) in the other byte order.
fn reversed(pdi: &str) -> Option<String> {
    let mut bytes = hex::decode(pdi).ok()?;
    bytes.reverse();
    Some(hex::encode(bytes))
}
