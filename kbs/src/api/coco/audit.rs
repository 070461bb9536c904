//! The audit record of each CoCo decision, written before the answer
//! leaves.

use crate::audit::Event;
use crate::error::Error;
use crate::evidence::Claims;
use crate::policy::PreparedClaims;
use crate::reason::ReasonCode;
use crate::release::{Broker, claims_digest};

/// The audit record of a body refused for its size.
pub(super) fn too_large_event(action: &'static str, caller: String) -> Event {
    Event {
        reason: Some(ReasonCode::EvidenceTooLarge.as_str()),
        reasons: vec!["the request body is too large".into()],
        ..Event::new(action, caller)
    }
}

/// What the audit record of one request accumulates.
pub(super) struct Audit {
    pub(super) event: Event,
}

impl Audit {
    pub(super) fn new(action: &'static str, attestation_id: Option<String>, caller: String) -> Self {
        Self { event: Event { attestation_id, ..Event::new(action, caller) } }
    }

    pub(super) fn claims(&mut self, claims: &Claims) {
        self.event.measurement = Some(claims.measurement.clone());
        self.event.claims_digest = Some(claims_digest(claims));
    }

    /// [`Audit::claims`] with their digest computed once, when prepared.
    pub(super) fn claims_prepared(&mut self, claims: &Claims, prepared: &PreparedClaims) {
        self.event.measurement = Some(claims.measurement.clone());
        self.event.claims_digest = Some(prepared.digest().to_owned());
    }

    /// Records the decision; if the record cannot be written, nothing is
    /// released.
    pub(super) async fn finish<T>(mut self, broker: &Broker, result: Result<T, Error>) -> Result<T, Error> {
        let refused = result.as_ref().err().map(|e| e.reason().as_str());
        let (tee, id, count) = (self.event.tee, self.event.attestation_id.as_deref(), self.event.secrets.len());
        crate::telemetry::record_outcome(tee, id, count, refused);
        match &result {
            Ok(_) => self.event.decision = "allow",
            Err(e) => {
                self.event.reason = Some(e.reason().as_str());
                if let Error::Denied { reasons, .. } = e {
                    self.event.reasons.clone_from(reasons);
                }
                if self.event.reasons.is_empty() {
                    self.event.reasons.push(e.to_string());
                }
                tracing::warn!(
                    action = self.event.action,
                    attestation_id = self.event.attestation_id.as_deref().unwrap_or(""),
                    reason = e.reason().as_str(),
                    cause = %e,
                    "coco request refused"
                );
            }
        }
        broker.record_decision_async(&self.event).await?;
        if result.is_ok() {
            tracing::debug!(
                action = self.event.action,
                attestation_id = self.event.attestation_id.as_deref().unwrap_or(""),
                caller = self.event.caller,
                "coco request allowed"
            );
        }
        result
    }
}
