//! The release flow, shared by every front end.
//!
//! 1. Issue: a sealed challenge for `{nonce, tee, names, expiry}`.
//! 2. Release, in order, stopping at the first failure:
//!    request shape (device caps, before any cryptography) -> challenge
//!    (authentic, unexpired, same TEE and names) -> HPKE suite and key ->
//!    CPU evidence (parse, chain, signature, TCB, chip, report_data binding,
//!    which covers the devices: [`kbs_proto::device_report_data`]) -> each
//!    GPU (against [`kbs_proto::gpu_nonce`]; stapled OCSP, if any; its
//!    measurements appraised against the broker's RIM store, a claim) -> the
//!    device set (one nonce, distinct devices, one mode) -> for each secret:
//!    read, GPU requirement (the [`GPUS_LABEL`] label: enough GPUs, each
//!    matching its RIMs), policy, seal.
//! 3. Every decision, allowed or refused, becomes one audit record before
//!    the answer leaves; if the record cannot be written, nothing is
//!    released.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use kbs_proto::SuiteId;
use kbs_proto::v1::Tee;
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::audit::{AuditLog, Event, SecretRef};
use crate::challenge::{ChallengeSealer, IssuedChallenge, OpenedSession};
use crate::error::Error;
use crate::evidence::certtable::{self, CertTable};
use crate::evidence::collateral::VekResolver;
use crate::evidence::gpu::ocsp::{OcspError, OcspGood};
use crate::evidence::gpu::rim::{RimAppraiser, RimResult, RimStore};
use crate::evidence::gpu::set::{DeviceSetExpectation, check_device_set};
use crate::evidence::gpu::{
    DeviceClass, GpuDeviceClaims, GpuError, GpuNonce, GpuSetClaims, GpuVerifier, VerifiedDevice, chain as gpu_chain,
    ocsp, spdm,
};
use crate::evidence::gpu_ocsp::{GpuOcspFetcher, OcspFetch};
use crate::evidence::pcs::TdxCollateralResolver;
use crate::evidence::snp::{SigningKey, SnpReport, SnpVerifier};
use crate::evidence::tdx::{TdxQuote, TdxVerifier};
use crate::evidence::{Claims, EvidenceError};
use crate::metrics::{Metrics, Phase};
use crate::names::check_not_reserved;
use crate::policy::{PolicyEngine, PreparedClaims};
use crate::rate::{RateLimiter, RateLimits};
use crate::reason::ReasonCode;
use crate::seal::{self, RecipientKey};
use crate::store::SecretMeta;
use crate::store::{SecretStore, validate_name};
use crate::telemetry::phase;

/// `kbs.v1.Tee::Snp`, as a challenge carries it.
pub const TEE_SNP: u8 = Tee::Snp as u8;
/// `kbs.v1.Tee::Tdx`, as a challenge carries it.
pub const TEE_TDX: u8 = Tee::Tdx as u8;
// The proto values fit a challenge's one byte unchanged.
const _: () = assert!(TEE_SNP as i32 == Tee::Snp as i32 && TEE_TDX as i32 == Tee::Tdx as i32);

/// The wall clock, injectable so tests can move time.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// Evidence as received.
#[derive(Debug)]
pub enum EvidenceInput {
    /// SEV-SNP report and the certificates the guest sent with it.
    Snp {
        /// Raw report.
        report: Vec<u8>,
        /// The guest's certificates, as its front end received them.
        certs: SnpCerts,
    },
    /// TDX quote.
    Tdx {
        /// Raw quote.
        quote: Vec<u8>,
    },
}

/// The certificates a guest sent with its SEV-SNP report. Every one is
/// untrusted until the verifier has checked its chain.
#[derive(Debug)]
pub enum SnpCerts {
    /// The GUID certificate table as the guest's firmware returned it (the
    /// gRPC protocol), parsed in the release's parse step; empty when the
    /// guest sent none.
    Table(Vec<u8>),
    /// Certificates a front end has already decoded (the CoCo protocol
    /// carries them as JSON entries, not as a table).
    Decoded(CertTable),
}

impl SnpCerts {
    /// No certificates.
    pub fn none() -> Self {
        Self::Table(Vec::new())
    }

    /// The decoded certificates (`None` when the guest sent none).
    fn decode(&self) -> Result<Option<Cow<'_, CertTable>>, EvidenceError> {
        match self {
            Self::Table(raw) if raw.is_empty() => Ok(None),
            Self::Table(raw) => Ok(Some(Cow::Owned(certtable::parse(raw)?))),
            Self::Decoded(table) => Ok(Some(Cow::Borrowed(table))),
        }
    }
}

/// The secret label that makes a secret need attested GPUs: its value, a
/// decimal number `N`, means "release only to a VM that presented at least
/// `N` GPUs, each verified and bound to this request, and every device it
/// presented on firmware its RIMs describe". Fewer GPUs, or any other
/// value, refuse the secret (`gpu_count_mismatch`): a misspelt requirement
/// fails closed. A device whose measurements differ from its RIMs, or
/// whose RIMs the broker does not hold, refuses it too
/// (`gpu_measurement_mismatch`). The broker enforces it before any policy,
/// on every front end.
pub const GPUS_LABEL: &str = "gpus";

/// Most stapled OCSP responses per device (its chain needs three).
pub const MAX_GPU_OCSP: usize = 8;

/// One device's evidence as received (`kbs.v1.GpuEvidence`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GpuInput {
    /// SPDM GET_MEASUREMENTS request || MEASUREMENTS response.
    pub report: Vec<u8>,
    /// The certificate chain (PEM) as the driver returned it.
    pub cert_chain: Vec<u8>,
    /// Stapled OCSP responses (DER).
    pub ocsp: Vec<Vec<u8>>,
}

impl std::fmt::Debug for GpuInput {
    /// Lengths only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuInput")
            .field("report_len", &self.report.len())
            .field("cert_chain_len", &self.cert_chain.len())
            .field("ocsp", &self.ocsp.len())
            .finish()
    }
}

/// A release request, decoded from any front end.
#[derive(Debug)]
pub struct ReleaseRequest {
    /// The sealed challenge.
    pub challenge: Vec<u8>,
    /// The evidence.
    pub evidence: EvidenceInput,
    /// HPKE suite chosen by the guest.
    pub suite: SuiteId,
    /// The guest's HPKE public key.
    pub public_key: Vec<u8>,
    /// Secret names asked for.
    pub names: Vec<String>,
    /// The VM's GPUs, in the order its CPU evidence committed to.
    pub gpus: Vec<GpuInput>,
    /// Peer address, for audit.
    pub caller: String,
}

/// One released secret, sealed.
#[derive(Debug)]
pub struct ReleasedSecret {
    /// Name.
    pub name: String,
    /// Version.
    pub version: u64,
    /// HPKE enc.
    pub enc: Vec<u8>,
    /// Ciphertext || tag.
    pub ciphertext: Vec<u8>,
}

/// The refusal of a decision whose audit record was not written.
fn audit_refusal(event: &Event, audit_err: &crate::audit::AuditError) -> Error {
    tracing::error!(
        action = event.action,
        attestation_id = event.attestation_id.as_deref().unwrap_or(""),
        error = %audit_err,
        "audit write failed; refusing"
    );
    Error::Internal("audit log unavailable".into())
}

/// The result of a successful release.
#[derive(Debug)]
pub struct Released {
    /// Id tying the response to its audit record.
    pub attestation_id: String,
    /// The sealed secrets, in request order.
    pub secrets: Vec<ReleasedSecret>,
    /// The verified claims the secrets were released for (for an
    /// attestation result).
    pub claims: Claims,
    /// Their digest, as the audit record holds it.
    pub claims_digest: String,
}

/// The broker core: verifiers, store, sealing, audit.
pub struct Broker {
    sealer: ChallengeSealer,
    ttl: Duration,
    snp: SnpVerifier,
    vek: VekResolver,
    store: Arc<dyn SecretStore>,
    audit: Arc<AuditLog>,
    clock: Clock,
    rng: SystemRandom,
    policy: Arc<PolicyEngine>,
    tdx: Option<TdxSupport>,
    gpu: Option<GpuVerifier>,
    rims: Arc<RimAppraiser>,
    gpu_ocsp: Option<Arc<GpuOcspFetcher>>,
    rate: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
}

/// What the broker needs to accept TDX evidence: the verifier and where
/// its collateral comes from.
#[derive(Debug)]
pub struct TdxSupport {
    /// The verifier (anchors and accepted TCB statuses).
    pub verifier: TdxVerifier,
    /// The collateral sources.
    pub collateral: TdxCollateralResolver,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("sealer", &self.sealer).field("store", &self.store).finish_non_exhaustive()
    }
}

/// Largest number of secrets per release.
pub const MAX_SECRETS: usize = crate::challenge::MAX_SECRETS_PER_CHALLENGE;

impl Broker {
    /// Builds the core.
    pub fn new(
        sealer: ChallengeSealer,
        ttl: Duration,
        snp: SnpVerifier,
        vek: VekResolver,
        store: Arc<dyn SecretStore>,
        audit: Arc<AuditLog>,
        clock: Clock,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(audit.failure_counter()));
        Self {
            sealer,
            ttl,
            snp,
            vek,
            store,
            audit,
            metrics,
            clock,
            rng: SystemRandom::new(),
            policy: Arc::new(PolicyEngine::builtin()),
            tdx: None,
            // NVIDIA's pinned root is built in; `None` only if it failed its
            // own fingerprint check, and then every GPU is refused.
            gpu: crate::evidence::gpu::GpuAnchors::nvidia().ok().map(GpuVerifier::new),
            // No RIMs: every device is appraised `missing`.
            rims: Arc::new(RimAppraiser::default()),
            // Stapled OCSP responses only.
            gpu_ocsp: None,
            rate: Arc::new(RateLimiter::new(RateLimits::default())),
        }
    }

    /// Records the release path's metrics only when `on` (a broker with a
    /// metrics listener); see [`Metrics::recording`].
    pub fn with_metrics_recording(mut self, on: bool) -> Self {
        self.metrics = Arc::new(Metrics::new(self.audit.failure_counter()).recording(on));
        self
    }

    /// Holds guest-facing calls to `limits` (see [`crate::rate`]).
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Self {
        self.rate = Arc::new(RateLimiter::new(limits));
        self
    }

    /// The rate limits' state, which the guest listener's connections
    /// answer to as well (see [`crate::connections`]).
    pub fn rate_limiter(&self) -> &Arc<RateLimiter> {
        &self.rate
    }

    /// Admits one guest-facing call from `peer` under the rate limits, or
    /// refuses it (`rate_limited`) before any work is done for it.
    pub fn admit(&self, peer: Option<std::net::IpAddr>) -> Result<(), Error> {
        self.rate.admit(peer).map_err(|retry_after| {
            self.metrics.rate_limited();
            tracing::debug!(peer = ?peer, ?retry_after, "call rate limited");
            Error::RateLimited { retry_after }
        })
    }

    /// Accepts TDX evidence, verified by `tdx`. Without it (`None`), TDX
    /// challenges and evidence are refused with `unsupported_tee`.
    pub fn with_tdx(mut self, tdx: Option<TdxSupport>) -> Self {
        self.tdx = tdx;
        self
    }

    /// Verifies GPUs with `verifier` (its anchors) instead of one pinning
    /// NVIDIA's root only.
    pub fn with_gpu(mut self, verifier: GpuVerifier) -> Self {
        self.gpu = Some(verifier);
        self
    }

    /// Appraises GPU measurements against `rims` (verified when they were
    /// loaded) instead of an empty store.
    pub fn with_gpu_rims(mut self, rims: RimStore) -> Self {
        self.rims = Arc::new(RimAppraiser::new(rims));
        self
    }

    /// Asks OCSP responders, through `fetcher`, for the device certificates
    /// that came without a fresh stapled response (`[gpu] ocsp_fetch`).
    pub fn with_gpu_ocsp(mut self, fetcher: Arc<GpuOcspFetcher>) -> Self {
        self.gpu_ocsp = Some(fetcher);
        self
    }

    /// The GPU reference-value appraiser (its store and cache).
    pub fn gpu_rims(&self) -> &RimAppraiser {
        &self.rims
    }

    /// Uses `policy` (loaded from the store) instead of the built-in
    /// default policy.
    pub fn with_policy(mut self, policy: Arc<PolicyEngine>) -> Self {
        self.policy = policy;
        self
    }

    /// The SEV-SNP verifier (its CRLs are refreshed from outside).
    pub fn snp_verifier(&self) -> &SnpVerifier {
        &self.snp
    }

    /// The policy engine (shared with the admin service).
    pub fn policy(&self) -> &Arc<PolicyEngine> {
        &self.policy
    }

    /// The secret store (shared with the admin service).
    pub fn store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    /// The audit log (shared with the admin service).
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// The metrics (shared with the front ends and the metrics listener).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }

    /// Writes the audit record of a decision, failing closed: if it cannot
    /// be written the caller is refused (`internal`) whatever the decision,
    /// so nothing is released without a record.
    pub fn record_decision(&self, event: &Event) -> Result<(), Error> {
        self.audit.record(event).map_err(|audit_err| audit_refusal(event, &audit_err))
    }

    /// [`Self::record_decision`] without holding a thread while the record
    /// is written: a stalled audit sink refuses after its bound.
    pub async fn record_decision_async(&self, event: &Event) -> Result<(), Error> {
        self.audit.record_async(event).await.map_err(|audit_err| audit_refusal(event, &audit_err))
    }

    /// Issues a challenge for `tee` and `names`.
    pub fn challenge(&self, tee: u8, names: &[String]) -> Result<IssuedChallenge, Error> {
        let supported = tee == TEE_SNP || (tee == TEE_TDX && self.tdx.is_some());
        if !supported {
            return Err(EvidenceError::UnsupportedTee(if tee == TEE_TDX { "tdx" } else { "unknown" }).into());
        }
        check_names(names)?;
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(60);
        let expires_at = self.now().unix_timestamp().saturating_add(ttl);
        let issued = self.sealer.issue(tee, names, expires_at)?;
        self.metrics.challenge_issued(if tee == TEE_TDX { crate::metrics::Tee::Tdx } else { crate::metrics::Tee::Snp });
        Ok(issued)
    }

    /// Runs the release flow and records the decision.
    pub async fn release(&self, req: ReleaseRequest) -> Result<Released, Error> {
        let started = Instant::now();
        let tee = match req.evidence {
            EvidenceInput::Snp { .. } => crate::metrics::Tee::Snp,
            EvidenceInput::Tdx { .. } => crate::metrics::Tee::Tdx,
        };
        let result = self.release_recorded(req).await;
        self.metrics.release(tee, result.as_ref().err().map(Error::reason), started.elapsed());
        result
    }

    async fn release_recorded(&self, req: ReleaseRequest) -> Result<Released, Error> {
        let attestation_id = self.attestation_id()?;
        let mut event = Event {
            attestation_id: Some(attestation_id.clone()),
            tee: Some(match req.evidence {
                EvidenceInput::Snp { .. } => "snp",
                EvidenceInput::Tdx { .. } => "tdx",
            }),
            secrets: req.names.iter().map(|n| SecretRef { name: n.clone(), version: None }).collect(),
            ..Event::new("release", req.caller.clone())
        };
        let result = self.release_inner(&req, &attestation_id, &mut event).await;
        let refused = result.as_ref().err().map(|e| e.reason().as_str());
        crate::telemetry::record_outcome(event.tee, Some(&attestation_id), req.names.len(), refused);
        match &result {
            Ok(released) => {
                event.decision = "allow";
                event.secrets = released
                    .secrets
                    .iter()
                    .map(|s| SecretRef { name: s.name.clone(), version: Some(s.version) })
                    .collect();
            }
            Err(e) => {
                event.reason = Some(e.reason().as_str());
                if event.reasons.is_empty() {
                    event.reasons.push(e.to_string());
                }
                tracing::warn!(attestation_id, reason = e.reason().as_str(), cause = %e, "release refused");
            }
        }
        self.record_decision_async(&event).await?;
        // Every release is in the audit record; the operational log has
        // refusals (above) and, at debug level, releases.
        if let Ok(released) = &result {
            tracing::debug!(attestation_id, secrets = released.secrets.len(), "released");
        }
        result
    }

    async fn release_inner(
        &self,
        req: &ReleaseRequest,
        attestation_id: &str,
        event: &mut Event,
    ) -> Result<Released, Error> {
        check_names(&req.names)?;
        check_gpu_caps(&req.gpus)?;
        let now = self.now();
        let challenge = self.sealer.open(&req.challenge, now.unix_timestamp())?;
        let tee = match req.evidence {
            EvidenceInput::Snp { .. } => TEE_SNP,
            EvidenceInput::Tdx { .. } => TEE_TDX,
        };
        if challenge.tee != tee {
            return Err(crate::challenge::ChallengeError::Mismatch("evidence is for another TEE").into());
        }
        let asked: BTreeSet<&String> = req.names.iter().collect();
        let issued: BTreeSet<&String> = challenge.secret_names.iter().collect();
        if asked != issued {
            return Err(crate::challenge::ChallengeError::Mismatch("secret names differ from the challenge").into());
        }
        let recipient = RecipientKey::parse(req.suite, &req.public_key)?;
        let devices: Vec<kbs_proto::DeviceEvidence<'_>> = req
            .gpus
            .iter()
            .map(|g| kbs_proto::DeviceEvidence { report: &g.report, cert_chain: &g.cert_chain })
            .collect();
        let expected = kbs_proto::device_report_data(&challenge.nonce, req.suite, &req.public_key, &devices);
        let verifying = Instant::now();
        let verified = self.verify(&req.evidence, now, &expected).instrument(tracing::info_span!(phase::VERIFY)).await;
        let claims = match verified {
            Ok(mut claims) => {
                // Recorded even when a GPU is refused next.
                event.measurement = Some(claims.measurement.clone());
                self.verify_gpus(&req.gpus, &devices, &challenge.nonce, req.suite, &req.public_key, now).await.map(
                    |gpu| {
                        claims.gpu = gpu;
                        claims
                    },
                )
            }
            Err(e) => Err(e),
        };
        self.metrics.phase(Phase::Verify, verifying.elapsed());
        let claims = claims?;
        let prepared = PreparedClaims::new(&claims).map_err(Error::Internal)?;
        event.claims_digest = Some(prepared.digest().to_owned());

        let info = kbs_proto::secret_info(&challenge.nonce);
        let mut secrets = Vec::with_capacity(req.names.len());
        for name in &req.names {
            let reading = Instant::now();
            let record = self.store.get(name).instrument(tracing::info_span!(phase::STORE)).await;
            self.metrics.phase(Phase::Store, reading.elapsed());
            let record = record?;
            if let Err(e) = check_gpu_requirement(&claims, &record.meta) {
                if let Error::Denied { reasons, .. } = &e {
                    event.reasons = reasons.clone();
                }
                return Err(e);
            }
            let deciding = Instant::now();
            let decision =
                tracing::info_span!(phase::POLICY).in_scope(|| self.policy.evaluate_prepared(&prepared, &record.meta));
            self.metrics.phase(Phase::Policy, deciding.elapsed());
            if let Err(denial) = decision {
                event.reasons = denial.reasons.clone();
                return Err(Error::Denied { code: denial.code, reasons: denial.reasons });
            }
            let aad = kbs_proto::secret_aad(name, record.meta.version);
            let sealing = Instant::now();
            let sealed = tracing::info_span!(phase::SEAL)
                .in_scope(|| seal::seal(&recipient, &info, &aad, record.value.expose()));
            self.metrics.phase(Phase::Seal, sealing.elapsed());
            let sealed = sealed?;
            secrets.push(ReleasedSecret {
                name: name.clone(),
                version: record.meta.version,
                enc: sealed.enc,
                ciphertext: sealed.ciphertext,
            });
        }
        let claims_digest = prepared.digest().to_owned();
        Ok(Released { attestation_id: attestation_id.to_owned(), secrets, claims, claims_digest })
    }

    async fn verify(
        &self,
        evidence: &EvidenceInput,
        now: OffsetDateTime,
        expected: &[u8; 64],
    ) -> Result<Claims, Error> {
        match evidence {
            EvidenceInput::Snp { report, certs } => {
                // Parse first: nothing reaches the network or crypto unless
                // the report is well-formed.
                let (parsed, table) = tracing::info_span!(phase::EVIDENCE_PARSE).in_scope(|| {
                    let parsed = SnpReport::parse(report)?;
                    let table = certs.decode()?;
                    Ok::<_, Error>((parsed, table))
                })?;
                let table_vek = table.as_ref().and_then(|t| {
                    if parsed.signing_key() == SigningKey::Vlek { t.vlek.clone() } else { t.vcek.clone() }
                });
                let source = if table_vek.is_some() { "cert_table" } else { "resolver" };
                let vek = async {
                    match table_vek {
                        Some(vek) => Ok::<_, Error>(vek),
                        None => Ok(self.vek.resolve(&parsed).await?),
                    }
                }
                .instrument(tracing::info_span!(phase::COLLATERAL, source))
                .await?;
                let extra: Vec<Vec<u8>> = table.map(|t| t.extra_certs()).unwrap_or_default();
                let chip_id = *parsed.chip_id();
                let verified = self.snp.verify_parsed(parsed, &vek, &extra, now, expected)?;
                // A chip that proved itself keeps a share of the KDS budget.
                self.vek.note_attested(&chip_id);
                Ok(verified.claims)
            }
            EvidenceInput::Tdx { quote } => {
                let tdx = self.tdx.as_ref().ok_or(EvidenceError::UnsupportedTee("tdx"))?;
                // Parse first: nothing reaches collateral or crypto unless
                // the quote is well-formed.
                let (parsed, (fmspc, ca)) = tracing::info_span!(phase::EVIDENCE_PARSE).in_scope(|| {
                    let parsed = TdxQuote::parse(quote)?;
                    let key = parsed.collateral_key()?;
                    Ok::<_, Error>((parsed, key))
                })?;
                // PCS is asked nothing for a quote that fails the checks
                // needing no collateral (PCK chain, QE report, signature).
                let check = || tdx.verifier.verify_without_collateral(&parsed, now);
                let collateral = tdx
                    .collateral
                    .resolve_checked(fmspc, ca, now, check)
                    .instrument(tracing::info_span!(phase::COLLATERAL, source = "resolver"))
                    .await?;
                let verified = tdx.verifier.verify_parsed(parsed, &collateral, now, expected)?;
                Ok(verified.claims)
            }
        }
    }

    /// Verifies every device against the GPU nonce of this challenge and
    /// key, their stapled OCSP responses, then the set; `None` without
    /// devices. The caller has checked the caps and that the CPU evidence
    /// commits to exactly these devices.
    async fn verify_gpus(
        &self,
        gpus: &[GpuInput],
        devices: &[kbs_proto::DeviceEvidence<'_>],
        challenge_nonce: &[u8; kbs_proto::NONCE_LEN],
        suite: SuiteId,
        public_key: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<GpuSetClaims>, Error> {
        if gpus.is_empty() {
            return Ok(None);
        }
        let nonce = GpuNonce(kbs_proto::gpu_nonce(challenge_nonce, suite, public_key));
        self.verify_gpu_set(gpus, &nonce, &kbs_proto::device_set_digest(devices), now).await.map(Some)
    }

    /// Verifies every device against `nonce`, their revocation (stapled
    /// OCSP responses, or fetched ones: [`Self::device_revocation`]),
    /// appraises each against the RIM store, then checks the set. For front
    /// ends with their own binding (the CoCo profile): the caller has
    /// checked the caps ([`check_gpu_caps`]) and that the CPU evidence
    /// commits to exactly these devices.
    pub async fn verify_gpu_set(
        &self,
        gpus: &[GpuInput],
        nonce: &GpuNonce,
        device_set_digest: &[u8],
        now: OffsetDateTime,
    ) -> Result<GpuSetClaims, Error> {
        let verifier = self.gpu.as_ref().ok_or_else(|| Error::Internal("no GPU trust anchors".into()))?;
        let mut devices = Vec::with_capacity(gpus.len());
        for (index, gpu) in gpus.iter().enumerate() {
            devices.push(verifier.verify_with_report(&gpu.report, &gpu.cert_chain, now, nonce).map_err(|e| {
                tracing::info!(device = index, cause = %e, "GPU evidence refused");
                EvidenceError::from(e)
            })?);
        }
        // Revocation once every device has verified: no responder is asked
        // for a set that fails anyway, and the devices' are asked at once,
        // each about its chain as the verifier parsed it.
        let revocations = devices
            .iter()
            .zip(gpus)
            .enumerate()
            .map(|(index, (device, gpu))| self.device_revocation(index, &device.chain, &gpu.ocsp, now));
        let revocations = futures_util::future::join_all(revocations).await;
        let mut verified: Vec<GpuDeviceClaims> = Vec::with_capacity(gpus.len());
        for (index, (VerifiedDevice { claims, report, .. }, revocation)) in
            devices.into_iter().zip(revocations).enumerate()
        {
            let claims = match revocation? {
                Some(good) => claims.with_revocation(&good),
                None => claims,
            };
            // The verified report, as the verifier parsed it; the appraisal
            // is a claim, judged per secret (`check_gpu_requirement`) and by
            // policy.
            let rim = self.rims.appraise(&report, claims.class);
            if rim.result != RimResult::Match {
                let (result, mismatched, missing) = (&rim.result, &rim.mismatched, &rim.missing);
                tracing::info!(device = index, ?result, ?mismatched, ?missing, "GPU measurements not matched by RIMs");
            }
            verified.push(GpuDeviceClaims { rim: Some(rim), ..claims });
        }
        // The counts a secret needs are checked per secret; here the set
        // must be consistent (one nonce, distinct devices, one mode, the
        // topology when NVSwitches are present).
        let expected = DeviceSetExpectation {
            gpus: verified.iter().filter(|d| d.class == DeviceClass::Gpu).count(),
            switches: verified.iter().filter(|d| d.class == DeviceClass::Nvswitch).count(),
        };
        let summary = check_device_set(&verified, &expected).map_err(EvidenceError::from)?;
        Ok(GpuSetClaims::new(verified, summary, device_set_digest))
    }

    /// The revocation of a verified device's chain (its DER certificates,
    /// as the verifier parsed them): `Some` when OCSP shows it good at
    /// `now`, `None` when it was not checked. `stapled` responses come first, and any failure of theirs refuses the device, unless
    /// online OCSP is on and they were only stale or incomplete: then the
    /// fetcher's (cached or fetched) responses decide, and when they cannot
    /// show the chain good either, `best_effort` leaves it `not_checked`
    /// and `require` refuses it. A revoked or unknown status, or a response
    /// that is not authentic, always refuses.
    async fn device_revocation(
        &self,
        index: usize,
        chain: &[Vec<u8>],
        stapled: &[Vec<u8>],
        now: OffsetDateTime,
    ) -> Result<Option<Vec<OcspGood>>, Error> {
        let refused = |e: OcspError| {
            tracing::info!(device = index, cause = %e, "GPU revocation status refused");
            Error::from(EvidenceError::from(e))
        };
        let stapled = (!stapled.is_empty()).then(|| ocsp::verify_chain_ocsp(chain, stapled, now));
        let Some(fetcher) = &self.gpu_ocsp else {
            return stapled.transpose().map_err(refused);
        };
        match stapled {
            Some(Ok(good)) => return Ok(Some(good)),
            Some(Err(e @ (OcspError::Stale(_) | OcspError::Missing(_)))) => {
                tracing::debug!(device = index, cause = %e, "stapled OCSP responses not enough; asking the responder");
            }
            Some(Err(e)) => return Err(refused(e)),
            None => {}
        }
        let fetched = fetcher.responses(chain, now).await;
        match ocsp::verify_chain_ocsp(chain, &fetched, now) {
            Ok(good) => Ok(Some(good)),
            Err(e @ (OcspError::Stale(_) | OcspError::Missing(_))) if fetcher.policy() != OcspFetch::Require => {
                tracing::info!(device = index, cause = %e, "GPU revocation not checked: no fresh OCSP response");
                Ok(None)
            }
            Err(e) => Err(refused(e)),
        }
    }

    fn attestation_id(&self) -> Result<String, Error> {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id).map_err(|_| Error::Internal("random source failed".into()))?;
        Ok(hex::encode(id))
    }
}

/// Refuses oversized device evidence before any cryptography: at most
/// [`kbs_proto::MAX_DEVICES`] devices, each with a report, chain and stapled
/// OCSP responses within their caps.
pub fn check_gpu_caps(gpus: &[GpuInput]) -> Result<(), Error> {
    let too_large = |what, len, max| Error::from(EvidenceError::from(GpuError::TooLarge { what, len, max }));
    if gpus.len() > kbs_proto::MAX_DEVICES {
        return Err(too_large("device list", gpus.len(), kbs_proto::MAX_DEVICES));
    }
    for gpu in gpus {
        if gpu.report.len() > spdm::MAX_REPORT_LEN {
            return Err(too_large("report", gpu.report.len(), spdm::MAX_REPORT_LEN));
        }
        if gpu.cert_chain.len() > gpu_chain::MAX_CHAIN_LEN {
            return Err(too_large("certificate chain", gpu.cert_chain.len(), gpu_chain::MAX_CHAIN_LEN));
        }
        if gpu.ocsp.len() > MAX_GPU_OCSP {
            return Err(too_large("OCSP response list", gpu.ocsp.len(), MAX_GPU_OCSP));
        }
        if let Some(big) = gpu.ocsp.iter().find(|r| r.len() > ocsp::MAX_OCSP_LEN) {
            return Err(too_large("OCSP response", big.len(), ocsp::MAX_OCSP_LEN));
        }
    }
    Ok(())
}

/// Refuses a secret whose [`GPUS_LABEL`] asks for more attested GPUs than
/// `claims` hold (`gpu_count_mismatch`), or, when it asks for at least one,
/// if a device presented did not match its RIMs or has none in the store
/// (`gpu_measurement_mismatch`), whatever the policy says.
pub fn check_gpu_requirement(claims: &Claims, meta: &SecretMeta) -> Result<(), Error> {
    let Some(label) = meta.labels.get(GPUS_LABEL) else {
        return Ok(());
    };
    let denied = |reason: String| Error::Denied { code: ReasonCode::GpuCountMismatch, reasons: vec![reason] };
    let required: usize = label
        .parse()
        .map_err(|_| denied(format!("gpu_count_mismatch: the secret's {GPUS_LABEL} label {label:?} is not a count")))?;
    let presented = claims.gpu.as_ref().map_or(0, |g| g.count);
    if presented < required {
        return Err(denied(format!(
            "gpu_count_mismatch: the secret needs {required} attested GPUs, the VM presented {presented}"
        )));
    }
    let Some(gpu) = claims.gpu.as_ref().filter(|_| required > 0) else {
        return Ok(());
    };
    // Missing reference values are refused as a mismatch: the device is
    // genuine but nothing says its firmware is known-good, which only the
    // operator can change (import the RIM); it is neither the client's
    // fault nor an outage that a retry would cure.
    let mismatch = |reason: String| Error::Denied { code: ReasonCode::GpuMeasurementMismatch, reasons: vec![reason] };
    for (index, device) in gpu.devices.iter().enumerate() {
        let who = format!(
            "device {index} ({} {}, driver {}, vbios {})",
            device.chip,
            device.ueid,
            device.driver_version.as_deref().unwrap_or("-"),
            device.vbios_version.as_deref().unwrap_or("-")
        );
        let Some(rim) = &device.rim else {
            return Err(mismatch(format!("gpu_measurement_mismatch: {who}: measurements not appraised")));
        };
        match rim.result {
            RimResult::Match => {}
            RimResult::Mismatch => {
                return Err(mismatch(match &rim.conflict {
                    Some(conflict) => format!("gpu_measurement_mismatch: {who}: {conflict}"),
                    None => format!(
                        "gpu_measurement_mismatch: {who}: measurements differ from its RIMs at indices {:?}",
                        rim.mismatched
                    ),
                }));
            }
            RimResult::Missing => {
                return Err(mismatch(format!(
                    "gpu_measurement_mismatch: {who}: no reference values (RIM) for {} in the broker's RIM store \
                     ([gpu] rim_dir; import them with kbsctl gpu rim import)",
                    rim.missing.join(", ")
                )));
            }
            RimResult::NotAppraised => {
                return Err(mismatch(format!("gpu_measurement_mismatch: {who}: measurements not appraised")));
            }
        }
    }
    Ok(())
}

fn check_names(names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Err(Error::InvalidRequest("no secret names".into()));
    }
    if names.len() > MAX_SECRETS {
        return Err(Error::InvalidRequest(format!("more than {MAX_SECRETS} secret names")));
    }
    let mut seen = BTreeSet::new();
    for name in names {
        validate_name(name).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        check_not_reserved(name)?;
        if !seen.insert(name) {
            return Err(Error::InvalidRequest("duplicate secret name".into()));
        }
    }
    Ok(())
}

/// SHA-256 of the claims' JSON, for audit (what
/// [`PreparedClaims::digest`] holds).
pub fn claims_digest(claims: &Claims) -> String {
    crate::policy::claims_digest(claims).unwrap_or_default()
}

/// Building blocks for front ends whose protocol shape differs from
/// `kbs.v1` (the CoCo KBS protocol): they seal their own session state,
/// compute their own report_data binding, and read one secret at a time
/// for claims they verified earlier. The gRPC path above does not use them.
impl Broker {
    /// The broker's clock.
    pub fn now_utc(&self) -> OffsetDateTime {
        self.now()
    }

    /// The challenge lifetime.
    pub fn challenge_ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh attestation id for an audit record.
    pub fn new_attestation_id(&self) -> Result<String, Error> {
        self.attestation_id()
    }

    /// Seals session state of kind `code` (from
    /// [`crate::challenge::SESSION_CODE_MIN`] up, so such a token can never
    /// be redeemed on the gRPC path) under the challenge key, valid for the
    /// challenge lifetime.
    pub fn seal_session(&self, code: u8, label: &str) -> Result<IssuedChallenge, Error> {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(60);
        let expires_at = self.now().unix_timestamp().saturating_add(ttl);
        Ok(self.sealer.issue_session(code, label, expires_at)?)
    }

    /// Opens sealed session state (authentic, unexpired, a session).
    pub fn open_session(&self, token: &[u8]) -> Result<OpenedSession, Error> {
        Ok(self.sealer.open_session(token, self.now().unix_timestamp())?)
    }

    /// Verifies evidence whose report_data must equal `expected`.
    pub async fn verify_bound(&self, evidence: &EvidenceInput, expected: &[u8; 64]) -> Result<Claims, Error> {
        self.verify(evidence, self.now(), expected).instrument(tracing::info_span!(phase::VERIFY)).await
    }

    /// Reads the secret `name` and checks the release policy for `claims`
    /// (`prepared`, when given, is `claims` prepared for the policy once,
    /// for callers that decide on the same claims many times).
    /// Not found is reported only to callers that verified `claims`.
    pub async fn read_for(
        &self,
        claims: &Claims,
        prepared: Option<&PreparedClaims>,
        name: &str,
    ) -> Result<crate::store::SecretRecord, Error> {
        validate_name(name).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        // Policies and reference values live in the store under the
        // reserved prefix; they are never released as secrets.
        check_not_reserved(name)?;
        let record = self.store.get(name).instrument(tracing::info_span!(phase::STORE)).await?;
        check_gpu_requirement(claims, &record.meta)?;
        let decided = tracing::info_span!(phase::POLICY).in_scope(|| match prepared {
            Some(prepared) => self.policy.evaluate_prepared(prepared, &record.meta),
            None => self.policy.evaluate(claims, &record.meta),
        });
        decided.map_err(|denial| Error::Denied { code: denial.code, reasons: denial.reasons })?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::anchors::SnpAnchors;
    use crate::reason::ReasonCode;
    use crate::store::local::{Kek, LocalStore};

    fn broker(dir: &std::path::Path, audit: AuditLog) -> Broker {
        let store = Arc::new(LocalStore::open(&dir.join("secrets"), &Kek::new([3; 32])).unwrap());
        Broker::new(
            ChallengeSealer::new(&[7; 32], &[]).unwrap(),
            Duration::from_secs(60),
            SnpVerifier::new(SnpAnchors::amd().unwrap()),
            VekResolver::new(None, None),
            store,
            Arc::new(audit),
            system_clock(),
        )
    }

    /// The reason of the one refusal counted in `scraped`.
    fn refused_reason_of_recorded(scraped: &str) -> String {
        let counted: Vec<&str> =
            scraped.lines().filter(|l| l.starts_with("kbs_releases_total{") && l.ends_with(" 1")).collect();
        assert_eq!(counted.len(), 1, "{counted:?}");
        counted[0].split("reason=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
    }

    fn forged_request() -> ReleaseRequest {
        ReleaseRequest {
            challenge: vec![0; 16],
            evidence: EvidenceInput::Snp { report: vec![0; 16], certs: SnpCerts::none() },
            suite: SuiteId::X25519_SHA256_AES256GCM,
            public_key: vec![0; 32],
            names: vec!["models/a".into()],
            gpus: Vec::new(),
            caller: "test".into(),
        }
    }

    fn gpu_broker_without_rims(dir: &std::path::Path) -> Broker {
        let root = attester_client::simulated::gpu_test_root_pem();
        let der = gpu_chain::pem_chain(root.as_bytes()).unwrap().remove(0);
        let mut anchors = crate::evidence::gpu::GpuAnchors::empty();
        anchors.add_root(&der).unwrap();
        broker(dir, AuditLog::failing()).with_gpu(GpuVerifier::new(anchors))
    }

    /// The simulated GPUs' RIMs (`kinds` of them), verified under the test
    /// RIM root.
    fn test_rims(kinds: &[attester_client::simulated::RimKind]) -> RimStore {
        let root = attester_client::simulated::gpu_test_rim_root_pem();
        let der = gpu_chain::pem_chain(root.as_bytes()).unwrap().remove(0);
        let mut anchors = crate::evidence::gpu::GpuAnchors::empty();
        anchors.add_root(&der).unwrap();
        let check = crate::evidence::gpu::rim::RimCheck {
            anchors: &anchors,
            now: OffsetDateTime::now_utc(),
            accept_expired: false,
        };
        let mut store = RimStore::default();
        for kind in kinds {
            let rim = attester_client::simulated::simulated_rim(*kind).unwrap();
            store.add(rim.xml.as_bytes(), &check).unwrap();
        }
        store
    }

    fn gpu_broker(dir: &std::path::Path) -> Broker {
        use attester_client::simulated::RimKind;
        gpu_broker_without_rims(dir).with_gpu_rims(test_rims(&[RimKind::Driver, RimKind::Vbios]))
    }

    fn simulated(count: usize, nonce: &[u8; 32]) -> Vec<GpuInput> {
        use attester_client::evidence::GpuEvidenceSource as _;
        attester_client::simulated::SimulatedGpus::new(count)
            .unwrap()
            .gpu_evidence(nonce)
            .unwrap()
            .into_iter()
            .map(|e| GpuInput { report: e.report, cert_chain: e.cert_chain, ocsp: Vec::new() })
            .collect()
    }

    fn digest_of(gpus: &[GpuInput]) -> Vec<kbs_proto::DeviceEvidence<'_>> {
        gpus.iter().map(|g| kbs_proto::DeviceEvidence { report: &g.report, cert_chain: &g.cert_chain }).collect()
    }

    const SUITE: SuiteId = SuiteId::X25519_SHA256_AES256GCM;
    const CHALLENGE: [u8; 32] = [0x11; 32];
    const KEY: [u8; 32] = [0x22; 32];

    fn verify_set(broker: &Broker, gpus: &[GpuInput], key: &[u8]) -> Result<Option<GpuSetClaims>, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(broker.verify_gpus(gpus, &digest_of(gpus), &CHALLENGE, SUITE, key, OffsetDateTime::now_utc()))
    }

    #[test]
    fn gpus_verify_against_the_nonce_of_this_challenge_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let with_test_root = gpu_broker(dir.path());
        let nonce = kbs_proto::gpu_nonce(&CHALLENGE, SUITE, &KEY);
        let gpus = simulated(3, &nonce);
        let set = verify_set(&with_test_root, &gpus, &KEY).unwrap().unwrap();
        assert_eq!((set.count, set.switches, set.devices.len()), (3, 0, 3));
        assert_eq!(set.mode, Some(crate::evidence::gpu::FeatureFlag::Mpt));
        assert_eq!(set.driver_versions, vec![attester_client::simulated::SIMULATED_DRIVER_VERSION.to_owned()]);
        assert_eq!(set.revocation, crate::evidence::gpu::SetRevocation::NotChecked);
        assert_eq!(set.device_set_digest, hex::encode(kbs_proto::device_set_digest(&digest_of(&gpus))));
        assert!(verify_set(&with_test_root, &[], &KEY).unwrap().is_none());
        // The claims survive the JSON round trip (CoCo tokens carry them).
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(serde_json::from_value::<GpuSetClaims>(json).unwrap(), set);

        // Made for another key: the nonce differs.
        let refused = verify_set(&with_test_root, &gpus, &[0x23; 32]).unwrap_err();
        assert_eq!(refused.reason(), ReasonCode::GpuEvidenceInvalid, "{refused}");
        // The same device twice.
        let twice = vec![gpus[0].clone(), gpus[0].clone()];
        let refused = verify_set(&with_test_root, &twice, &KEY).unwrap_err();
        assert_eq!(refused.reason(), ReasonCode::GpuCountMismatch, "{refused}");
        // Under NVIDIA's root only (a production broker).
        let production = broker(dir.path(), AuditLog::failing());
        let refused = verify_set(&production, &gpus, &KEY).unwrap_err();
        assert_eq!(refused.reason(), ReasonCode::GpuEvidenceInvalid, "{refused}");
        // Stapled OCSP responses that show nothing good: refused, not
        // taken as "not checked".
        let mut stapled = gpus.clone();
        stapled[1].ocsp = vec![vec![0x30, 0x03, 0x0a, 0x01, 0x00]];
        let refused = verify_set(&with_test_root, &stapled, &KEY).unwrap_err();
        assert!(matches!(refused, Error::Evidence(EvidenceError::GpuRevocation(_))), "{refused}");
        assert_eq!(refused.reason(), ReasonCode::CollateralUnavailable, "{refused}");
    }

    #[test]
    fn malformed_gpu_evidence_is_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let broker = gpu_broker(dir.path());
        let nonce = kbs_proto::gpu_nonce(&CHALLENGE, SUITE, &KEY);
        let good = simulated(1, &nonce).remove(0);
        let mut cases = vec![
            GpuInput::default(),
            GpuInput { report: vec![0x11; 40], ..good.clone() },
            GpuInput {
                cert_chain: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                ..good.clone()
            },
            GpuInput { cert_chain: Vec::new(), ..good.clone() },
        ];
        for cut in [1, 37, 45, 100, good.report.len() - 96, good.report.len() - 1] {
            cases.push(GpuInput { report: good.report[..cut].to_vec(), ..good.clone() });
        }
        for at in (0..good.report.len()).step_by(97) {
            let mut report = good.report.clone();
            report[at] ^= 0x80;
            cases.push(GpuInput { report, ..good.clone() });
        }
        for case in cases {
            let refused = verify_set(&broker, std::slice::from_ref(&case), &KEY).unwrap_err();
            assert_ne!(refused.reason(), ReasonCode::Internal, "{case:?}: {refused}");
        }
    }

    #[test]
    fn oversized_device_evidence_is_refused_before_any_crypto() {
        assert!(check_gpu_caps(&[]).is_ok());
        let fits = GpuInput {
            report: vec![0; spdm::MAX_REPORT_LEN],
            cert_chain: vec![0; gpu_chain::MAX_CHAIN_LEN],
            ocsp: vec![vec![0; ocsp::MAX_OCSP_LEN]; MAX_GPU_OCSP],
        };
        assert!(check_gpu_caps(&vec![fits.clone(); kbs_proto::MAX_DEVICES]).is_ok());
        let too_many = vec![GpuInput::default(); kbs_proto::MAX_DEVICES + 1];
        let mut long_report = fits.clone();
        long_report.report.push(0);
        let mut long_chain = fits.clone();
        long_chain.cert_chain.push(0);
        let mut many_ocsp = fits.clone();
        many_ocsp.ocsp.push(Vec::new());
        let mut long_ocsp = fits.clone();
        long_ocsp.ocsp[3].push(0);
        for (what, gpus) in [
            ("count", too_many),
            ("report", vec![long_report]),
            ("chain", vec![fits.clone(), long_chain]),
            ("ocsp count", vec![many_ocsp]),
            ("ocsp size", vec![long_ocsp]),
        ] {
            let refused = check_gpu_caps(&gpus).unwrap_err();
            assert_eq!(refused.reason(), ReasonCode::EvidenceTooLarge, "{what}: {refused}");
        }
    }

    #[test]
    fn the_gpus_label_needs_that_many_attested_gpus() {
        let json = serde_json::json!({
            "tee": "snp", "measurement": "00", "debug": false,
            "report_data": "00".repeat(64), "init_data_digest": "00".repeat(32),
        });
        let mut claims: Claims = serde_json::from_value(json).unwrap();
        let meta = |label: Option<&str>| {
            let mut meta = crate::policy::placeholder_meta("models/a");
            if let Some(label) = label {
                meta.labels.insert(GPUS_LABEL.to_owned(), label.to_owned());
            }
            meta
        };
        assert!(check_gpu_requirement(&claims, &meta(None)).is_ok());
        assert!(check_gpu_requirement(&claims, &meta(Some("0"))).is_ok());
        for label in ["1", "8", "eight", "-1", " 1", ""] {
            let refused = check_gpu_requirement(&claims, &meta(Some(label))).unwrap_err();
            assert_eq!(refused.reason(), ReasonCode::GpuCountMismatch, "{label:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let nonce = kbs_proto::gpu_nonce(&CHALLENGE, SUITE, &KEY);
        claims.gpu = verify_set(&gpu_broker(dir.path()), &simulated(2, &nonce), &KEY).unwrap();
        assert!(check_gpu_requirement(&claims, &meta(Some("2"))).is_ok());
        assert!(check_gpu_requirement(&claims, &meta(Some("1"))).is_ok());
        let refused = check_gpu_requirement(&claims, &meta(Some("3"))).unwrap_err();
        assert_eq!(refused.reason(), ReasonCode::GpuCountMismatch);
        assert!(refused.to_string().contains("needs 3 attested GPUs, the VM presented 2"), "{refused}");
    }

    fn gpu_claims(set: Option<GpuSetClaims>) -> Claims {
        let json = serde_json::json!({
            "tee": "snp", "measurement": "00", "debug": false,
            "report_data": "00".repeat(64), "init_data_digest": "00".repeat(32),
        });
        let mut claims: Claims = serde_json::from_value(json).unwrap();
        claims.gpu = set;
        claims
    }

    fn needs_gpus(n: &str) -> SecretMeta {
        let mut meta = crate::policy::placeholder_meta("models/a");
        meta.labels.insert(GPUS_LABEL.to_owned(), n.to_owned());
        meta
    }

    #[test]
    fn gpu_measurements_are_appraised_against_the_rims() {
        use attester_client::evidence::GpuEvidenceSource as _;
        use attester_client::simulated::{RimKind, SimulatedGpus};
        let dir = tempfile::tempdir().unwrap();
        let broker = gpu_broker(dir.path());
        let nonce = kbs_proto::gpu_nonce(&CHALLENGE, SUITE, &KEY);

        // Genuine firmware: every device matches (driver 32 + VBIOS 16
        // active indices, index 35 skipped as NVDEC0 is disabled).
        let set = verify_set(&broker, &simulated(3, &nonce), &KEY).unwrap().unwrap();
        assert_eq!(set.measurements, RimResult::Match);
        let rim = set.devices[0].rim.as_ref().unwrap();
        assert_eq!((rim.result, rim.appraised), (RimResult::Match, 47));
        assert_eq!(rim.driver.as_ref().unwrap().version, attester_client::simulated::SIMULATED_DRIVER_VERSION);
        assert_eq!(rim.vbios.as_ref().unwrap().version, attester_client::simulated::SIMULATED_VBIOS_VERSION);
        assert!(check_gpu_requirement(&gpu_claims(Some(set.clone())), &needs_gpus("3")).is_ok());
        // Three GPUs on one firmware: appraised once.
        assert_eq!(broker.gpu_rims().cached(), 1);
        // Policies see the appraisal.
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(json["measurements"], "match");
        assert_eq!(json["devices"][2]["rim"]["result"], "match");
        assert_eq!(json["devices"][2]["rim"]["vbios"]["version"], "96.00.CF.00.02");

        // One GPU on firmware its RIMs do not describe: verified (the claims
        // say so), refused for a secret that needs GPUs, even one.
        let wrong: Vec<GpuInput> = SimulatedGpus::new(3)
            .unwrap()
            .with_wrong_firmware(1)
            .gpu_evidence(&nonce)
            .unwrap()
            .into_iter()
            .map(|e| GpuInput { report: e.report, cert_chain: e.cert_chain, ocsp: Vec::new() })
            .collect();
        let set = verify_set(&broker, &wrong, &KEY).unwrap().unwrap();
        assert_eq!(set.measurements, RimResult::Mismatch);
        let rim = set.devices[1].rim.as_ref().unwrap();
        assert_eq!((rim.result, rim.mismatched.as_slice()), (RimResult::Mismatch, &[9u8][..]));
        assert_eq!(set.devices[0].rim.as_ref().unwrap().result, RimResult::Match);
        assert_eq!(broker.gpu_rims().cached(), 2);
        let claims = gpu_claims(Some(set));
        for n in ["1", "3"] {
            let refused = check_gpu_requirement(&claims, &needs_gpus(n)).unwrap_err();
            assert_eq!(refused.reason(), ReasonCode::GpuMeasurementMismatch, "{refused}");
            assert!(refused.to_string().contains("device 1") && refused.to_string().contains("[9]"), "{refused}");
        }
        // A secret that needs no GPU is left to the policy.
        assert!(check_gpu_requirement(&claims, &needs_gpus("0")).is_ok());

        // No VBIOS RIM in the store: missing, refused with what is missing.
        let driver_only = gpu_broker_without_rims(dir.path()).with_gpu_rims(test_rims(&[RimKind::Driver]));
        let set = verify_set(&driver_only, &simulated(1, &nonce), &KEY).unwrap().unwrap();
        assert_eq!(set.measurements, RimResult::Missing);
        let rim = set.devices[0].rim.as_ref().unwrap();
        assert_eq!(rim.missing, vec!["vbios 96.00.CF.00.02".to_owned()]);
        assert!(rim.driver.is_some() && rim.vbios.is_none());
        let refused = check_gpu_requirement(&gpu_claims(Some(set)), &needs_gpus("1")).unwrap_err();
        assert_eq!(refused.reason(), ReasonCode::GpuMeasurementMismatch);
        assert!(refused.to_string().contains("no reference values (RIM) for vbios 96.00.CF.00.02"), "{refused}");
        // No RIM store at all: both missing.
        let set = verify_set(&gpu_broker_without_rims(dir.path()), &simulated(1, &nonce), &KEY).unwrap().unwrap();
        assert_eq!(set.devices[0].rim.as_ref().unwrap().missing.len(), 2);
        // Claims made before appraisal existed (a token's): not appraised, refused.
        let mut old = set;
        old.devices[0].rim = None;
        let refused = check_gpu_requirement(&gpu_claims(Some(old)), &needs_gpus("1")).unwrap_err();
        assert_eq!(refused.reason(), ReasonCode::GpuMeasurementMismatch);
    }

    #[tokio::test]
    async fn a_decision_without_its_record_is_refused() {
        // Recorded: the refusal keeps its own reason, and is in the log.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorded = broker(dir.path(), AuditLog::file(&path, "r0", None).unwrap());
        let refused = recorded.release(forged_request()).await.unwrap_err();
        assert_ne!(refused.reason(), ReasonCode::Internal, "{refused}");
        assert_eq!(crate::audit::verify_file(&path).unwrap().0, 1);
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.contains(r#""action":"release","decision":"deny""#), "{line}");

        // Not recorded: refused as internal, whatever the decision was.
        let dir = tempfile::tempdir().unwrap();
        let unrecorded = broker(dir.path(), AuditLog::failing());
        let refused = unrecorded.release(forged_request()).await.unwrap_err();
        assert_eq!(refused.reason(), ReasonCode::Internal, "{refused}");
        let allow = Event { decision: "allow", ..Event::new("coco.resource", "test".into()) };
        assert!(matches!(unrecorded.record_decision(&allow), Err(Error::Internal(_))));
        assert!(recorded.record_decision(&allow).is_ok());

        // The metrics count each decision by the answer given, and every
        // failed audit write.
        let scraped = unrecorded.metrics().encode();
        assert!(scraped.contains("\nkbs_audit_write_failures_total 2\n"), "{scraped}");
        assert!(scraped.contains("kbs_releases_total{tee=\"snp\",decision=\"deny\",reason=\"internal\"} 1\n"));
        let scraped = recorded.metrics().encode();
        assert!(scraped.contains("\nkbs_audit_write_failures_total 0\n"), "{scraped}");
        let reason = refused_reason_of_recorded(&scraped);
        assert_ne!(reason, "internal");
    }
}
