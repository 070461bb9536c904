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
//!
//! The PPCIe topology check (GPUs' NVLink peers against the switches' own
//! PDIs) and the binding of the set to the CPU evidence are separate steps.

use std::collections::BTreeSet;

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

/// What the set checks established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSetSummary {
    /// GPUs in the set.
    pub gpus: usize,
    /// NVSwitches in the set.
    pub switches: usize,
    /// The GPUs' common multi-GPU mode, if any reports one.
    pub mode: Option<FeatureFlag>,
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
}

impl DeviceSetError {
    /// The stable reason code: a set that is not the expected one is
    /// `gpu_count_mismatch`; evidence that cannot belong together is
    /// `gpu_evidence_invalid`.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::Duplicate(_) | Self::CountMismatch { .. } => ReasonCode::GpuCountMismatch,
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
    Ok(DeviceSetSummary { gpus, switches, mode })
}
