//! An attested key broker for confidential workloads.
//!
//! The broker hands a secret (above all a model-decryption key) to a
//! workload only after the workload has proved, with hardware-signed
//! evidence, that it runs in a genuine AMD SEV-SNP or Intel TDX confidential VM with the
//! expected launch measurement, and it hands the secret over HPKE-sealed to
//! a key only that VM holds.
//!
//! # Threat model
//! The host, the cloud operator, the cluster admin and the network are
//! untrusted. They may replay, reorder, alter or forge any message. They
//! must never obtain a secret in clear. Evidence is untrusted bytes until
//! every check in [`evidence::snp`] has passed, and is bound to one
//! challenge and one ephemeral HPKE key (see [`kbs_proto::report_data`]), so
//! evidence captured from a genuine guest cannot be reused to obtain secrets
//! sealed to another key.
//!
//! # Layout
//! - [`challenge`]: stateless sealed challenges, openable by any replica.
//! - [`evidence`]: parsing and verification of SNP reports and TDX quotes;
//!   trust anchors; collateral sources (VCEKs; Intel DCAP collateral).
//! - [`policy`]: which verified workload may receive which secret.
//! - [`seal`]: HPKE sealing to the guest's key.
//! - [`names`]: the reserved namespace of secret names (a leaf).
//! - [`store`]: secret stores (embedded encrypted store; Vault/OpenBao KV v2).
//! - [`audit`]: hash-chained JSON-lines audit log.
//! - [`reason`]: stable reason codes (a leaf); [`error`]: the error type.
//! - [`release`]: the release flow every front end shares.
//! - [`api`]: gRPC services and the gRPC status map; [`server`]: wiring and
//!   serving.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod challenge;
pub mod config;
pub mod dev;
pub mod error;
pub mod evidence;
pub mod names;
pub mod policy;
pub mod reason;
pub mod release;
pub mod seal;
pub mod server;
pub mod store;
