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
//! Lowest layer first; a module imports only modules of lower layers
//! (ARCHITECTURE.md at the repository root, checked by
//! `tests/architecture.rs`).
//! - [`reason`]: stable reason codes; [`names`]: the secret-name limit and
//!   the reserved namespace; [`fetch`]: what outbound HTTP clients share;
//!   [`rate`]: request rate limits of the guest-facing calls; [`keyfile`]:
//!   the 256-bit key file format; [`telemetry`]: OpenTelemetry traces
//!   (spans, W3C trace context, the OTLP exporter).
//!   Leaves.
//! - [`challenge`]: stateless sealed challenges, openable by any replica.
//!   [`tickets`]: TLS session tickets every replica can redeem.
//!   [`evidence`]: parsing and verification of SNP reports and TDX quotes;
//!   trust anchors; collateral sources (VCEKs; Intel DCAP collateral).
//!   [`store`]: secret stores (embedded encrypted store; Vault/OpenBao KV
//!   v2). [`audit`]: hash-chained JSON-lines audit log. [`metrics`]: the
//!   broker's counters and their Prometheus text form.
//! - [`error`]: the error type.
//! - [`seal`]: HPKE sealing to the guest's key. [`policy`]: which verified
//!   workload may receive which secret.
//! - [`release`]: the release flow every front end shares. [`config`].
//! - [`api`]: gRPC services, the gRPC status map, the CoCo front end.
//! - [`server`]: wiring and serving; [`connections`]: connection caps and
//!   idle bounds of the listeners. [`dev`]: `kbs dev-init`.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod challenge;
pub mod config;
pub mod connections;
pub mod dev;
pub mod error;
pub mod evidence;
pub mod fetch;
pub mod keyfile;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod rate;
pub mod reason;
pub mod release;
pub mod seal;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tickets;
