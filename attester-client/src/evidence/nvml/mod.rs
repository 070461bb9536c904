//! The VM's NVIDIA GPUs, through NVML (`libnvidia-ml.so.1`, loaded at run
//! time, so this builds and its tests run on machines without a GPU).
//!
//! [`NvmlGpus::open`] loads and initializes NVML, lists the GPUs in PCI bus
//! id order and checks, once, that the system is in confidential-computing
//! mode: the CC feature on (or the protected-PCIe multi-GPU mode of HGX
//! systems) and the developer tools mode off. It fails with a clear
//! [`Error`] when NVML cannot be loaded, when there is no GPU, or when the
//! GPUs are not confidential; `kbs-attester --gpus all` opens it before it
//! contacts the broker, so these failures happen before any CPU evidence is
//! asked for.
//!
//! [`NvmlGpus::gpu_evidence`] then asks every GPU, in that order, for its
//! attestation report over the caller's nonce
//! (`nvmlDeviceGetConfComputeGpuAttestationReport`) and its attestation
//! certificate chain (`nvmlDeviceGetConfComputeGpuCertificate`), and checks
//! both buffers ([`buffers`]) before they are bound to the CPU evidence.
//!
//! What this does not prove: the CC settings are read from the driver
//! inside the guest and are not part of any signed evidence; they are a
//! guard against presenting GPUs that cannot be confidential, not a claim
//! the broker relies on (the broker appraises the signed reports). The GPUs'
//! "ready" state (`nvmlSystemSetConfComputeGpusReadyState`) is left to the
//! guest's GPU setup.

pub mod buffers;

use std::ffi::OsStr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use crate::evidence::{Error, GpuEvidence, GpuEvidenceSource};

/// The NVML library loaded by default (what the NVIDIA driver installs).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// The confidential-computing mode the GPUs are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcMode {
    /// The CC feature is on: each GPU's memory and links are protected.
    On,
    /// Protected PCIe (HGX with NVSwitches): CC is off on the GPUs, the
    /// PCIe links are protected, and every GPU and switch is attested.
    ProtectedPcie,
}

/// The system's confidential-computing settings as NVML reports them
/// (`nvmlSystemGetConfComputeSettings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CcSettings {
    /// `ccFeature == NVML_CC_SYSTEM_FEATURE_ENABLED`.
    pub cc_feature: bool,
    /// `multiGpuMode == NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE`.
    pub protected_pcie: bool,
    /// `devToolsMode == NVML_CC_SYSTEM_DEVTOOLS_MODE_ON`.
    pub devtools: bool,
}

impl CcSettings {
    /// The mode these settings put the GPUs in, or why they are not
    /// confidential.
    pub fn mode(self) -> Result<CcMode, Error> {
        if self.devtools {
            return Err(Error::GpuNotConfidential(
                "the confidential-computing developer tools mode is on (GPU memory is open to debuggers)",
            ));
        }
        match (self.cc_feature, self.protected_pcie) {
            (true, _) => Ok(CcMode::On),
            (false, true) => Ok(CcMode::ProtectedPcie),
            (false, false) => Err(Error::GpuNotConfidential(
                "the confidential-computing feature is off and the GPUs are not in protected-PCIe mode",
            )),
        }
    }
}

/// The VM's NVIDIA GPUs, opened through NVML and checked to be in
/// confidential-computing mode.
#[derive(Debug)]
pub struct NvmlGpus {
    nvml: Nvml,
    /// PCI bus ids, in the order the evidence is presented.
    bus_ids: Vec<String>,
    mode: CcMode,
}

impl NvmlGpus {
    /// Opens NVML from [`DEFAULT_LIBRARY`]; see the module docs.
    pub fn open() -> Result<Self, Error> {
        Self::open_library(OsStr::new(DEFAULT_LIBRARY))
    }

    /// Opens NVML from `library` (a file name the dynamic loader finds,
    /// or a path).
    pub fn open_library(library: &OsStr) -> Result<Self, Error> {
        let nvml = guarded("loading NVML", || Nvml::builder().lib_path(library).init()).map_err(|source| {
            Error::NvmlUnavailable { library: library.to_string_lossy().into_owned(), source: source.into() }
        })?;
        let count = guarded("counting the GPUs", || nvml.device_count()).map_err(nvml_error("counting the GPUs"))?;
        if count == 0 {
            return Err(Error::NoGpus);
        }
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > kbs_proto::MAX_DEVICES {
            return Err(Error::TooManyGpus { found: count, max: kbs_proto::MAX_DEVICES });
        }
        let mut bus_ids = Vec::with_capacity(count);
        let mut settings = None;
        for index in 0..count {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let bus_id = guarded("reading a GPU's PCI bus id", || {
                let device = nvml.device_by_index(index)?;
                if settings.is_none() {
                    // System-wide settings, read through the first device.
                    settings = Some(CcSettings {
                        cc_feature: device.is_cc_enabled()?,
                        protected_pcie: device.is_multi_gpu_protected_pcie_enabled()?,
                        devtools: device.is_cc_dev_mode_enabled()?,
                    });
                }
                Ok(device.pci_info()?.bus_id)
            })
            .map_err(nvml_error("reading the GPUs' PCI bus ids and confidential-computing settings"))?;
            bus_ids.push(bus_id);
        }
        let mode = settings.ok_or(Error::NoGpus)?.mode()?;
        let bus_ids = bus_id_order(bus_ids)?;
        tracing::debug!(gpus = bus_ids.len(), ?mode, "NVML opened");
        Ok(Self { nvml, bus_ids, mode })
    }

    /// The GPUs' PCI bus ids, in the order their evidence is presented.
    pub fn bus_ids(&self) -> &[String] {
        &self.bus_ids
    }

    /// Their confidential-computing mode.
    pub fn mode(&self) -> CcMode {
        self.mode
    }
}

impl GpuEvidenceSource for NvmlGpus {
    fn gpu_evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, Error> {
        let mut out = Vec::with_capacity(self.bus_ids.len());
        for bus_id in &self.bus_ids {
            let (report, certificate) = guarded("reading a GPU's attestation report and certificates", || {
                let device = self.nvml.device_by_pci_bus_id(bus_id.as_str())?;
                Ok((
                    device.confidential_compute_gpu_attestation_report(*nonce)?,
                    device.confidential_compute_gpu_certificate()?,
                ))
            })
            .map_err(|source| Error::Nvml {
                op: "reading the attestation report and certificates of GPU",
                device: Some(bus_id.clone()),
                source: source.into(),
            })?;
            out.push(device_evidence(bus_id, &report.attestation_report, &certificate.attestation_cert_chain, nonce)?);
        }
        Ok(out)
    }
}

/// One device's evidence from the buffers NVML returned for it: the
/// attestation report asked for with `nonce` and the attestation
/// certificate chain, checked and trimmed ([`buffers`]). `device` names it
/// in errors.
pub fn device_evidence(device: &str, report: &[u8], cert_chain: &[u8], nonce: &[u8; 32]) -> Result<GpuEvidence, Error> {
    let invalid = |source| Error::GpuEvidenceInvalid { device: device.to_owned(), source };
    let report = buffers::attestation_report(report, nonce).map_err(invalid)?;
    let cert_chain = buffers::attestation_cert_chain(cert_chain).map_err(invalid)?;
    Ok(GpuEvidence { report: report.to_vec(), cert_chain: cert_chain.to_vec() })
}

/// Why an NVML call failed: its own error, or a panic inside the wrapper
/// (it slices the driver's buffers by the sizes the driver reports, so a
/// driver that reports a size larger than its buffer makes it panic).
#[derive(Debug, thiserror::Error)]
pub enum NvmlCallError {
    /// NVML returned an error. Its message already includes its cause's
    /// (a libloading error), so the cause is not repeated as a source.
    #[error("{0}")]
    Nvml(NvmlError),
    /// The wrapper panicked on what the driver returned.
    #[error("the NVIDIA driver returned a size larger than its buffer while {0}")]
    Panicked(&'static str),
}

/// Runs an NVML call, turning a panic in the wrapper into an error.
fn guarded<T>(what: &'static str, call: impl FnOnce() -> Result<T, NvmlError>) -> Result<T, NvmlCallError> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(result) => result.map_err(NvmlCallError::Nvml),
        Err(_) => Err(NvmlCallError::Panicked(what)),
    }
}

fn nvml_error(op: &'static str) -> impl Fn(NvmlCallError) -> Error {
    move |source| Error::Nvml { op, device: None, source: source.into() }
}

/// Puts PCI bus ids (`domain:bus:device.function`, hex, as NVML formats
/// them) in numeric order; a malformed or repeated id is refused.
pub fn bus_id_order(bus_ids: Vec<String>) -> Result<Vec<String>, Error> {
    let mut keyed = Vec::with_capacity(bus_ids.len());
    for id in bus_ids {
        let key = parse_bus_id(&id).ok_or_else(|| Error::GpuBusId(id.clone()))?;
        keyed.push((key, id));
    }
    keyed.sort();
    let repeated = keyed.windows(2).find_map(|w| match w {
        [a, b] if a.0 == b.0 => Some(b.1.clone()),
        _ => None,
    });
    if let Some(id) = repeated {
        return Err(Error::GpuBusId(id));
    }
    Ok(keyed.into_iter().map(|(_, id)| id).collect())
}

/// `(domain, bus, device, function)` of `DDDDDDDD:BB:DD.F` (a 4-digit
/// domain is accepted too).
fn parse_bus_id(id: &str) -> Option<(u32, u8, u8, u8)> {
    let hex = |s: &str, max_len: usize| -> Option<u32> {
        (!s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    let (domain, rest) = id.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let domain = hex(domain, 8)?;
    let bus = u8::try_from(hex(bus, 2)?).ok()?;
    let device = u8::try_from(hex(device, 2)?).ok().filter(|d| *d < 32)?;
    let function = u8::try_from(hex(function, 1)?).ok().filter(|f| *f < 8)?;
    Some((domain, bus, device, function))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn only_cc_on_or_protected_pcie_without_devtools_is_confidential() {
        let s = |cc_feature, protected_pcie, devtools| CcSettings { cc_feature, protected_pcie, devtools };
        assert_eq!(s(true, false, false).mode().unwrap(), CcMode::On);
        assert_eq!(s(false, true, false).mode().unwrap(), CcMode::ProtectedPcie);
        assert_eq!(s(true, true, false).mode().unwrap(), CcMode::On);
        for settings in [s(false, false, false), s(true, false, true), s(false, true, true), s(false, false, true)] {
            assert!(matches!(settings.mode(), Err(Error::GpuNotConfidential(_))), "{settings:?}");
        }
    }

    #[test]
    fn gpus_are_ordered_by_pci_bus_id_numerically() {
        let ids = ["00000000:C1:00.0", "00000000:41:00.0", "00000001:01:00.0", "00000000:41:00.1", "0000:0A:00.0"];
        let ordered = bus_id_order(ids.iter().map(|s| s.to_string()).collect()).unwrap();
        assert_eq!(
            ordered,
            ["0000:0A:00.0", "00000000:41:00.0", "00000000:41:00.1", "00000000:C1:00.0", "00000001:01:00.0"]
        );
    }

    #[test]
    fn malformed_or_repeated_bus_ids_are_refused() {
        for bad in [
            "",
            "41:00.0",
            "00000000:41:00",
            "00000000:141:00.0",
            "00000000:41:20.0",
            "00000000:41:00.8",
            "x:41:00.0",
            "000000000:41:00.0",
            "00000000:+1:00.0",
        ] {
            assert!(matches!(bus_id_order(vec![bad.to_string()]), Err(Error::GpuBusId(_))), "{bad:?}");
        }
        let repeated = bus_id_order(vec!["00000000:41:00.0".into(), "0000:41:00.0".into()]);
        assert!(matches!(repeated, Err(Error::GpuBusId(id)) if id.ends_with("41:00.0")));
    }

    #[test]
    fn a_missing_nvml_library_is_a_clear_error() {
        let err = NvmlGpus::open_library(OsStr::new("/nonexistent/libnvidia-ml.so.1")).unwrap_err();
        assert!(matches!(&err, Error::NvmlUnavailable { library, .. } if library.contains("nonexistent")), "{err:?}");
        assert!(err.to_string().contains("NVIDIA driver"), "{err}");
        assert!(err.is_gpu());
    }

    #[test]
    fn a_library_that_is_not_nvml_is_a_clear_error() {
        // libc loads but has no nvmlInit_v2.
        let err = NvmlGpus::open_library(OsStr::new("libc.so.6")).unwrap_err();
        assert!(matches!(err, Error::NvmlUnavailable { .. }), "{err:?}");
    }

    #[test]
    fn a_panic_in_the_wrapper_becomes_an_error() {
        // What the wrapper does with a driver's size larger than its buffer.
        let buffer = [0u8; 4];
        let claimed = std::hint::black_box(10usize);
        let result = guarded("testing", || Ok(buffer[..claimed].to_vec()));
        assert!(matches!(result, Err(NvmlCallError::Panicked("testing"))));
        let err = nvml_error("counting the GPUs")(result.unwrap_err());
        assert_eq!(err.to_string(), "NVIDIA GPUs: counting the GPUs");
        assert!(err.is_gpu());
        let err = Error::Nvml { op: "reading GPU", device: Some("00000000:41:00.0".into()), source: "x".into() };
        assert_eq!(err.to_string(), "NVIDIA GPUs: reading GPU 00000000:41:00.0");
    }
}
