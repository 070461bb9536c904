//! The release flow, shared by every front end.
//!
//! 1. Issue: a sealed challenge for `{nonce, tee, names, expiry}`.
//! 2. Release, in order, stopping at the first failure:
//!    request shape -> challenge (authentic, unexpired, same TEE and names)
//!    -> HPKE suite and key -> evidence (parse, chain, signature, TCB, chip,
//!    report_data binding) -> for each secret: read, policy, seal.
//! 3. Every decision, allowed or refused, becomes one audit record before
//!    the answer leaves; if the record cannot be written, nothing is
//!    released.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use kbs_proto::SuiteId;
use kbs_proto::v1::Tee;
use time::OffsetDateTime;

use crate::audit::{AuditLog, Event, SecretRef};
use crate::challenge::{ChallengeSealer, IssuedChallenge};
use crate::error::Error;
use crate::evidence::collateral::VekResolver;
use crate::evidence::pcs::TdxCollateralResolver;
use crate::evidence::snp::{SigningKey, SnpReport, SnpVerifier};
use crate::evidence::tdx::{TdxQuote, TdxVerifier};
use crate::evidence::{Claims, EvidenceError, certtable};
use crate::metrics::{Metrics, Phase};
use crate::names::check_not_reserved;
use crate::policy::{PolicyEngine, PreparedClaims};
use crate::rate::{RateLimiter, RateLimits};
use crate::seal::{self, RecipientKey};
use crate::store::{SecretStore, validate_name};

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
    /// SEV-SNP report and optional certificate table.
    Snp {
        /// Raw report.
        report: Vec<u8>,
        /// Raw GUID certificate table (may be empty).
        cert_table: Vec<u8>,
    },
    /// TDX quote.
    Tdx {
        /// Raw quote.
        quote: Vec<u8>,
    },
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

/// The result of a successful release.
#[derive(Debug)]
pub struct Released {
    /// Id tying the response to its audit record.
    pub attestation_id: String,
    /// The sealed secrets, in request order.
    pub secrets: Vec<ReleasedSecret>,
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
    rate: RateLimiter,
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
            rate: RateLimiter::new(RateLimits::default()),
        }
    }

    /// Holds guest-facing calls to `limits` (see [`crate::rate`]).
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Self {
        self.rate = RateLimiter::new(limits);
        self
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
        self.audit.record(event).map_err(|audit_err| {
            tracing::error!(
                action = event.action,
                attestation_id = event.attestation_id.as_deref().unwrap_or(""),
                error = %audit_err,
                "audit write failed; refusing"
            );
            Error::Internal("audit log unavailable".into())
        })
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
        self.record_decision(&event)?;
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
        let expected = kbs_proto::report_data(&challenge.nonce, req.suite, &req.public_key);
        let verifying = Instant::now();
        let claims = self.verify(&req.evidence, now, &expected).await;
        self.metrics.phase(Phase::Verify, verifying.elapsed());
        let claims = claims?;
        event.measurement = Some(claims.measurement.clone());
        let prepared = PreparedClaims::new(&claims).map_err(Error::Internal)?;
        event.claims_digest = Some(prepared.digest().to_owned());

        let info = kbs_proto::secret_info(&challenge.nonce);
        let mut secrets = Vec::with_capacity(req.names.len());
        for name in &req.names {
            let reading = Instant::now();
            let record = self.store.get(name).await;
            self.metrics.phase(Phase::Store, reading.elapsed());
            let record = record?;
            let deciding = Instant::now();
            let decision = self.policy.evaluate_prepared(&prepared, &record.meta);
            self.metrics.phase(Phase::Policy, deciding.elapsed());
            if let Err(denial) = decision {
                event.reasons = denial.reasons.clone();
                return Err(Error::Denied { code: denial.code, reasons: denial.reasons });
            }
            let aad = kbs_proto::secret_aad(name, record.meta.version);
            let sealing = Instant::now();
            let sealed = seal::seal(&recipient, &info, &aad, record.value.expose());
            self.metrics.phase(Phase::Seal, sealing.elapsed());
            let sealed = sealed?;
            secrets.push(ReleasedSecret {
                name: name.clone(),
                version: record.meta.version,
                enc: sealed.enc,
                ciphertext: sealed.ciphertext,
            });
        }
        Ok(Released { attestation_id: attestation_id.to_owned(), secrets })
    }

    async fn verify(
        &self,
        evidence: &EvidenceInput,
        now: OffsetDateTime,
        expected: &[u8; 64],
    ) -> Result<Claims, Error> {
        match evidence {
            EvidenceInput::Snp { report, cert_table } => {
                // Parse first: nothing reaches the network or crypto unless
                // the report is well-formed.
                let parsed = SnpReport::parse(report)?;
                let table = if cert_table.is_empty() { None } else { Some(certtable::parse(cert_table)?) };
                let table_vek = table.as_ref().and_then(|t| {
                    if parsed.signing_key() == SigningKey::Vlek { t.vlek.clone() } else { t.vcek.clone() }
                });
                let vek = match table_vek {
                    Some(vek) => vek,
                    None => self.vek.resolve(&parsed).await?,
                };
                let extra: Vec<Vec<u8>> =
                    table.map(|t| [t.ask, t.ark].into_iter().flatten().collect()).unwrap_or_default();
                let chip_id = *parsed.chip_id();
                let verified = self.snp.verify_parsed(parsed, &vek, &extra, now, Some(expected))?;
                // A chip that proved itself keeps a share of the KDS budget.
                self.vek.note_attested(&chip_id);
                Ok(verified.claims)
            }
            EvidenceInput::Tdx { quote } => {
                let tdx = self.tdx.as_ref().ok_or(EvidenceError::UnsupportedTee("tdx"))?;
                // Parse first: nothing reaches collateral or crypto unless
                // the quote is well-formed.
                let parsed = TdxQuote::parse(quote)?;
                let (fmspc, ca) = parsed.collateral_key()?;
                // PCS is asked nothing for a quote that fails the checks
                // needing no collateral (PCK chain, QE report, signature).
                let check = || tdx.verifier.verify_without_collateral(&parsed, now);
                let collateral = tdx.collateral.resolve_checked(fmspc, ca, now, check).await?;
                let verified = tdx.verifier.verify_parsed(parsed, &collateral, now, Some(expected))?;
                Ok(verified.claims)
            }
        }
    }

    fn attestation_id(&self) -> Result<String, Error> {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id).map_err(|_| Error::Internal("random source failed".into()))?;
        Ok(hex::encode(id))
    }
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

    /// Seals session state under the challenge key, valid for the
    /// challenge lifetime. `code` must lie outside the `kbs.v1.Tee` values
    /// so such a token can never be redeemed on the gRPC path.
    pub fn seal_session(&self, code: u8, labels: &[String]) -> Result<IssuedChallenge, Error> {
        if code == TEE_SNP || code == TEE_TDX || code < 0x80 {
            return Err(Error::Internal("session code collides with kbs.v1 TEE codes".into()));
        }
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(60);
        let expires_at = self.now().unix_timestamp().saturating_add(ttl);
        Ok(self.sealer.issue(code, labels, expires_at)?)
    }

    /// Opens sealed session state (authentic, unexpired).
    pub fn open_session(&self, token: &[u8]) -> Result<crate::challenge::OpenedChallenge, Error> {
        Ok(self.sealer.open(token, self.now().unix_timestamp())?)
    }

    /// Verifies evidence whose report_data must equal `expected`.
    pub async fn verify_bound(&self, evidence: &EvidenceInput, expected: &[u8; 64]) -> Result<Claims, Error> {
        self.verify(evidence, self.now(), expected).await
    }

    /// Reads the secret `name` and checks the release policy for `claims`.
    /// Not found is reported only to callers that verified `claims`.
    pub async fn read_for(&self, claims: &Claims, name: &str) -> Result<crate::store::SecretRecord, Error> {
        validate_name(name).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        // Policies and reference values live in the store under the
        // reserved prefix; they are never released as secrets.
        check_not_reserved(name)?;
        let record = self.store.get(name).await?;
        if let Err(denial) = self.policy.evaluate(claims, &record.meta) {
            return Err(Error::Denied { code: denial.code, reasons: denial.reasons });
        }
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
            evidence: EvidenceInput::Snp { report: vec![0; 16], cert_table: Vec::new() },
            suite: SuiteId::X25519_SHA256_AES256GCM,
            public_key: vec![0; 32],
            names: vec!["models/a".into()],
            caller: "test".into(),
        }
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
