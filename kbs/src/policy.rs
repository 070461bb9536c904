//! Release policy: may this verified workload have this secret?
//!
//! Fail closed. The checks, in order:
//! 1. debug guests are refused (SNP guest policy DEBUG);
//! 2. only VMPL 0 may receive secrets (SNP);
//! 3. the launch measurement must be in the secret's allow-list; an empty
//!    allow-list allows nothing.
//!
//! Every failed check is reported, for operators; the first one is the
//! reason code the guest sees.

use crate::error::ReasonCode;
use crate::evidence::Claims;
use crate::store::SecretMeta;

/// A refusal: the primary reason code and every reason found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What the guest sees.
    pub code: ReasonCode,
    /// Every failed check, for the log and audit.
    pub reasons: Vec<String>,
}

/// Decides whether `claims` may receive the secret described by `meta`.
pub fn evaluate(claims: &Claims, meta: &SecretMeta) -> Result<(), Denial> {
    let mut failed: Vec<(ReasonCode, String)> = Vec::new();
    if claims.debug {
        failed.push((ReasonCode::DebugEnabled, "debug_enabled".into()));
    }
    if let Some(vmpl) = claims.snp.as_ref().map(|s| s.vmpl)
        && vmpl != 0
    {
        failed.push((ReasonCode::VmplNotAllowed, format!("vmpl_not_allowed: {vmpl} != 0")));
    }
    if !meta.allowed_measurements.iter().any(|m| m == &claims.measurement) {
        failed.push((
            ReasonCode::MeasurementNotAllowed,
            format!("measurement_not_allowed: {} for {}", claims.measurement, meta.name),
        ));
    }
    match failed.first() {
        None => Ok(()),
        Some((code, _)) => Err(Denial { code: *code, reasons: failed.into_iter().map(|(_, r)| r).collect() }),
    }
}
