//! In-guest client of the attested key broker.
//!
//! A process inside an AMD SEV-SNP or Intel TDX confidential VM uses this
//! crate to fetch secrets (above all model-decryption keys) from the broker:
//!
//! 1. [`client`] asks the broker for a challenge (`GetChallenge`), picks an
//!    HPKE suite the broker offers and makes an ephemeral key pair
//!    ([`hpke`]);
//! 2. it asks the TEE for evidence whose `report_data` binds the challenge
//!    nonce, the suite and the public key ([`kbs_proto::report_data`]), through
//!    an [`evidence::EvidenceSource`] (configfs-tsm on Linux >= 6.7); with
//!    GPUs, first their reports over the GPU nonce, through an
//!    [`evidence::GpuEvidenceSource`] ([`evidence::NvmlGpus`] for NVIDIA GPUs
//!    in confidential-computing mode), which the CPU evidence then commits to;
//! 3. it sends the evidence (`ReleaseSecrets`) and opens every returned secret
//!    with the ephemeral private key, which never leaves this process;
//! 4. [`output`] writes the values to a directory, all or nothing; or
//!    [`model`] uses them to decrypt encrypted model files.
//!
//! # Threat model
//! The host, the cloud operator and the network are untrusted. The broker is
//! authenticated by TLS against a pinned CA (delivered in the pod's init data);
//! secrets are additionally HPKE-sealed to a key that exists only in this
//! process's memory, so a man in the middle or a replayed request learns
//! nothing. The broker's answers are still checked: exactly the requested
//! secrets must come back, and each must open under its own name and version.
//! Secret values are kept in zeroizing buffers, never logged and never shown
//! by `Debug`.
//!
//! # Insecure test support
//! With the cargo feature `insecure-simulated-tee`, [`simulated`] provides a
//! software "TEE" that signs SNP reports under a committed test PKI, and TDX
//! quotes under a test SGX PKI made at run time. It is
//! for tests and demos only: it proves nothing, and a broker accepts its
//! evidence only when started with an explicit development flag.
#![forbid(unsafe_code)]

pub mod client;
pub mod evidence;
pub mod hpke;
pub mod model;
pub mod output;
#[cfg(feature = "insecure-simulated-tee")]
pub mod simulated;

pub use client::{ClientConfig, Error, KbsClient, Release, ReleasedSecret};
