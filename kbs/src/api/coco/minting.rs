//! Minting attestation results: the EAR claims of verified evidence,
//! signed by the token keys, for a CoCo attestation and for a `kbs.v1`
//! release.

use serde_json::Value;

use crate::error::Error;
use crate::evidence::Claims;

use super::CocoService;
use super::token::{self, EarInput};

impl CocoService {
    /// The claims of an attestation result for verified `claims` (see
    /// [`token::ear_claims`]), issued now with this front end's issuer,
    /// audiences and lifetime.
    pub(super) fn attestation_result(
        &self,
        attestation_id: &str,
        claims: &Claims,
        claims_digest: &str,
        tee: &str,
        tee_pubkey: &Value,
    ) -> Result<Value, Error> {
        token::ear_claims(&EarInput {
            issuer: &self.issuer,
            audiences: &self.audiences,
            attestation_id,
            now: self.broker.now_utc().unix_timestamp(),
            ttl: i64::try_from(self.token_ttl.as_secs()).unwrap_or(300),
            claims,
            claims_digest,
            tee,
            tee_pubkey,
        })
        .map_err(|e| Error::InvalidRequest(e.to_string()))
    }

    /// A signed attestation result for a `kbs.v1` release: its claims, and
    /// the guest's HPKE key as a JWK. The release was audited already.
    pub fn release_token(
        &self,
        released: &crate::release::Released,
        tee: &str,
        hpke_key: &Value,
    ) -> Result<String, Error> {
        let mut claims = released.claims.clone();
        if let Some(gpu) = &mut claims.gpu {
            for device in &mut gpu.devices {
                device.measurements.clear();
            }
        }
        let token =
            self.attestation_result(&released.attestation_id, &claims, &released.claims_digest, tee, hpke_key)?;
        self.token_keys.sign(&token).map_err(|e| Error::Internal(e.to_string()))
    }
}
