//! Where the guest's hardware evidence comes from.
//!
//! An [`EvidenceSource`] turns the 64-byte `report_data` binding into signed
//! evidence. Implementations:
//! - [`ConfigfsTsm`]: the Linux configfs-tsm report interface
//!   (`/sys/kernel/config/tsm/report`, Linux >= 6.7). This is the supported
//!   path for SEV-SNP guests (provider `sev_guest`) and TDX guests
//!   (provider `tdx_guest`). It returns the report or quote and, for SNP,
//!   where the host supplies one, the certificate table (`auxblob`).
//! - `simulated::SimulatedSnp` and `simulated::SimulatedTdx` (cargo feature
//!   `insecure-simulated-tee`): INSECURE software TEEs for tests and demos.
//!
//! A [`GpuEvidenceSource`] gives the evidence of the VM's GPUs:
//! - [`NvmlGpus`]: NVIDIA GPUs in confidential-computing mode, through NVML
//!   (loaded at run time; [`nvml`]).
//! - `simulated::SimulatedGpus` (same feature): INSECURE simulated GPUs.
//!
//! The legacy `/dev/sev-guest` ioctl interface is not supported: it cannot be
//! driven without `unsafe` code in this crate, and the crates that wrap it
//! parse the host-supplied certificate table with unchecked offsets. Kernels
//! that have configfs-tsm (>= 6.7) expose the same reports through it.

use std::fmt;
use std::path::PathBuf;

pub use kbs_proto::v1::Tee;

mod configfs_tsm;
pub mod nvml;

pub use configfs_tsm::{ConfigfsTsm, DEFAULT_TSM_REPORT_DIR};
pub use nvml::NvmlGpus;

/// Size of an SEV-SNP attestation report (AMD SEV-SNP ABI, ATTESTATION_REPORT).
pub const SNP_REPORT_LEN: usize = 1184;

/// Largest certificate table accepted from the host. A VCEK, ASK and ARK are
/// about 5 KiB together; this leaves room for a CRL and other entries while
/// bounding what an untrusted host can make the guest buffer and send.
pub const MAX_CERT_TABLE_LEN: usize = 64 * 1024;

/// SEV-SNP evidence: the raw report and the host's certificate table.
#[derive(Clone, PartialEq, Eq)]
pub struct SnpEvidence {
    /// The raw attestation report ([`SNP_REPORT_LEN`] bytes).
    pub report: Vec<u8>,
    /// The AMD GUID certificate table, or empty when the host supplies none
    /// (the broker then finds the VCEK itself).
    pub cert_table: Vec<u8>,
}

impl fmt::Debug for SnpEvidence {
    /// Lengths only: the bytes are large and say nothing to a reader.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnpEvidence")
            .field("report_len", &self.report.len())
            .field("cert_table_len", &self.cert_table.len())
            .finish()
    }
}

/// Largest TDX quote accepted from the TEE (real quotes are about 5 KiB,
/// most of it the PCK certificate chain).
pub const MAX_TDX_QUOTE_LEN: usize = 64 * 1024;

/// Intel TDX evidence: a DCAP quote (v4 or v5) with the PCK chain inside.
#[derive(Clone, PartialEq, Eq)]
pub struct TdxEvidence {
    /// The raw quote.
    pub quote: Vec<u8>,
}

impl fmt::Debug for TdxEvidence {
    /// Length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxEvidence").field("quote_len", &self.quote.len()).finish()
    }
}

/// One GPU's evidence: the SPDM report and the certificate chain, as the
/// driver returns them.
#[derive(Clone, PartialEq, Eq)]
pub struct GpuEvidence {
    /// SPDM GET_MEASUREMENTS request followed by the signed MEASUREMENTS response.
    pub report: Vec<u8>,
    /// The device certificate chain (PEM, leaf first).
    pub cert_chain: Vec<u8>,
}

impl fmt::Debug for GpuEvidence {
    /// Lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuEvidence")
            .field("report_len", &self.report.len())
            .field("cert_chain_len", &self.cert_chain.len())
            .finish()
    }
}

/// A source of the evidence of every GPU attached to the VM, each report
/// over the same caller-chosen nonce ([`kbs_proto::gpu_nonce`]), in a fixed
/// order.
pub trait GpuEvidenceSource: Send + Sync + fmt::Debug {
    /// Every device's evidence for `nonce`.
    fn gpu_evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, Error>;
}

/// A source of TEE evidence bound to caller-chosen report data. A source
/// speaks for one TEE ([`EvidenceSource::tee`]); asked for another TEE's
/// evidence it returns [`Error::UnsupportedTee`].
pub trait EvidenceSource: Send + Sync + fmt::Debug {
    /// The kind of TEE this source speaks for.
    fn tee(&self) -> Tee;

    /// An SEV-SNP report whose `report_data` field is `report_data`, with the
    /// certificate table the host supplies (possibly empty).
    fn snp_report(&self, report_data: &[u8; 64]) -> Result<SnpEvidence, Error>;

    /// A TDX quote whose REPORTDATA is `report_data`.
    fn tdx_quote(&self, report_data: &[u8; 64]) -> Result<TdxEvidence, Error>;
}

/// What can go wrong collecting evidence.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configfs-tsm report directory does not exist.
    #[error(
        "configfs-tsm is not available at {path}: it needs Linux >= 6.7 with \
         CONFIG_TSM_REPORTS and configfs mounted at /sys/kernel/config"
    )]
    TsmUnavailable {
        /// The report directory that was looked for.
        path: PathBuf,
    },
    /// The configfs-tsm provider is not the guest driver of the TEE asked for.
    #[error("configfs-tsm provider is {found:?}, expected {expected:?} (not a guest of that TEE?)")]
    UnexpectedProvider {
        /// The provider the kernel reported.
        found: String,
        /// The provider expected (`sev_guest` or `tdx_guest`).
        expected: &'static str,
    },
    /// Another writer changed the report request while it was being served,
    /// so the report may not carry our report_data.
    #[error("configfs-tsm report entry was modified concurrently (generation {expected} -> {found})")]
    GenerationRace {
        /// The generation after our own write.
        expected: u64,
        /// The generation observed later.
        found: u64,
    },
    /// A configfs attribute was larger than allowed.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge {
        /// The attribute file.
        path: PathBuf,
        /// The size limit.
        limit: usize,
    },
    /// A configfs attribute did not have the expected form.
    #[error("{path} has unexpected content")]
    Malformed {
        /// The attribute file.
        path: PathBuf,
    },
    /// The report is not an SEV-SNP report (or a TDX quote) by size.
    #[error("the TEE returned a {found}-byte report, which is not the expected size")]
    UnexpectedReportSize {
        /// Its actual size.
        found: usize,
    },
    /// The source cannot produce evidence for this TEE.
    #[error("this evidence source does not produce {0:?} evidence")]
    UnsupportedTee(Tee),
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// NVML could not be loaded or initialized.
    #[error(
        "NVIDIA GPUs: cannot load or initialize NVML ({library}); is the NVIDIA driver \
         installed and loaded in this VM?"
    )]
    NvmlUnavailable {
        /// The library that was loaded.
        library: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// NVML lists no GPU.
    #[error("NVIDIA GPUs: NVML lists no GPU in this VM")]
    NoGpus,
    /// More GPUs than one request may present.
    #[error("NVIDIA GPUs: NVML lists {found} GPUs, at most {max} can be presented")]
    TooManyGpus {
        /// How many NVML lists.
        found: usize,
        /// The cap ([`kbs_proto::MAX_DEVICES`]).
        max: usize,
    },
    /// The GPUs are not in confidential-computing mode.
    #[error("NVIDIA GPUs are not in confidential-computing mode: {0}")]
    GpuNotConfidential(&'static str),
    /// NVML returned a PCI bus id that is malformed or repeated.
    #[error("NVIDIA GPUs: NVML returned a malformed or repeated PCI bus id {0:?}")]
    GpuBusId(String),
    /// An NVML call failed.
    #[error("NVIDIA GPUs: {op}{}", device.as_deref().map(|d| format!(" {d}")).unwrap_or_default())]
    Nvml {
        /// What was being done.
        op: &'static str,
        /// Which GPU (PCI bus id), when it concerns one.
        device: Option<String>,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A GPU's report or certificate chain, as the driver returned it, is
    /// unusable.
    #[error("NVIDIA GPU {device}: the driver returned unusable evidence")]
    GpuEvidenceInvalid {
        /// Which GPU (PCI bus id).
        device: String,
        /// What is wrong with it.
        #[source]
        source: nvml::buffers::BufferError,
    },
    /// The simulated TEE could not build or sign its evidence.
    #[cfg(feature = "insecure-simulated-tee")]
    #[error("the simulated TEE failed: {0}")]
    Simulated(&'static str),
}

impl Error {
    /// Whether this is a failure to collect the GPUs' evidence (as opposed
    /// to the CPU TEE's).
    pub fn is_gpu(&self) -> bool {
        match self {
            Self::NvmlUnavailable { .. }
            | Self::NoGpus
            | Self::TooManyGpus { .. }
            | Self::GpuNotConfidential(_)
            | Self::GpuBusId(_)
            | Self::Nvml { .. }
            | Self::GpuEvidenceInvalid { .. } => true,
            Self::TsmUnavailable { .. }
            | Self::UnexpectedProvider { .. }
            | Self::GenerationRace { .. }
            | Self::TooLarge { .. }
            | Self::Malformed { .. }
            | Self::UnexpectedReportSize { .. }
            | Self::UnsupportedTee(_)
            | Self::Io { .. } => false,
            #[cfg(feature = "insecure-simulated-tee")]
            Self::Simulated(_) => false,
        }
    }
}
