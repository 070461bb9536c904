//! Attestation tokens already verified, remembered for their lifetime, so
//! that a guest's resource GETs after the first do not each verify the
//! token's ES256 signature again (about as costly as the JWE seal of the
//! answer).
//!
//! An entry is keyed by SHA-256 over the identity of the token key set
//! ([`TokenKeys::set_id`]) and the exact bytes of the token: a token that
//! differs in one byte is another key, and is verified in full; a broker
//! with other token keys shares no entry. Only a token that verified goes
//! in, with its claims (and the evidence claims they carry, parsed),
//! `iat` and `exp`, and its guest key as checked once
//! ([`TeeKey::from_jwk`] agrees once with a throwaway key to check the
//! point, which costs another ECDH); an entry is used only while the
//! clock at that use is within the token's validity, as a full
//! verification would check. At most [`MAX_ENTRIES`] tokens of at most
//! [`MAX_CACHED_TOKEN_LEN`] bytes are kept (the oldest evicted first), and
//! only tokens this broker signed can take a place.
//!
//! The evidence claims are also kept prepared ([`PreparedClaims`]: their
//! policy form and the digest the audit record carries), as the gRPC path
//! prepares them once per release. Everything after the token (the release
//! policy's evaluation, at the clock of that GET, the secret's read, the
//! seal and the audit record) still runs on every GET.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::evidence::Claims;
use crate::evidence::bounded::BoundedMap;
use crate::policy::PreparedClaims;

use super::jwe::TeeKey;
use super::token::{self, TokenError, TokenKeys};

/// Where a token carries the verified evidence claims.
const EVIDENCE_CLAIMS: &str = "/submods/cpu0/ear.veraison.annotated-evidence";

/// Most tokens remembered at once. A guest makes its GETs within seconds
/// of attesting, so this covers a thousand guests starting at once; the
/// oldest go first.
pub const MAX_ENTRIES: usize = 1024;
/// Largest token remembered, in bytes: a token of a VM with one GPU is
/// about 6 KiB. Larger ones (many GPUs) are verified on every use. An
/// entry holds the claims as parsed JSON and the evidence claims in the
/// policy's form, a few times the token's size, so the cache stays within
/// some tens of MiB.
pub const MAX_CACHED_TOKEN_LEN: usize = 16 * 1024;

/// A verified token's claims, its guest key and its validity.
#[derive(Debug)]
pub(super) struct VerifiedToken {
    /// The claims.
    pub(super) claims: Value,
    /// The verified evidence claims they carry (EAR's annotated evidence),
    /// parsed; `None` when there are none or they do not parse.
    pub(super) evidence: Option<Claims>,
    /// The evidence claims prepared for the release policy and the audit
    /// record (their policy form and digest); `None` when there are no
    /// evidence claims or they do not prepare (the GET then prepares them
    /// itself and fails as it would have).
    pub(super) prepared: Option<PreparedClaims>,
    /// The claims' `tee-pubkey`, checked; `None` when it is missing or
    /// does not pass [`TeeKey::from_jwk`] (the GET then says why).
    pub(super) key: Option<TeeKey>,
    iat: i64,
    exp: i64,
}

impl VerifiedToken {
    /// The claims' `jti`, the audit records' attestation id.
    pub(super) fn jti(&self) -> Option<&str> {
        self.claims.get("jti").and_then(Value::as_str)
    }
}

/// The verified tokens of one front end.
#[derive(Debug)]
pub(super) struct VerifiedTokens {
    entries: Mutex<BoundedMap<[u8; 32], Arc<VerifiedToken>>>,
}

impl VerifiedTokens {
    pub(super) fn new() -> Self {
        Self::with_capacity(MAX_ENTRIES)
    }

    fn with_capacity(capacity: usize) -> Self {
        Self { entries: Mutex::new(BoundedMap::new(capacity)) }
    }

    /// The claims of `token` if `keys` verify it at `now` (Unix seconds):
    /// from the cache when it verified before and is still valid at `now`,
    /// otherwise by [`TokenKeys::verify`], remembering it if it passes.
    pub(super) fn verify(&self, keys: &TokenKeys, token: &str, now: i64) -> Result<Arc<VerifiedToken>, TokenError> {
        let key = cache_key(keys, token);
        if let Some(hit) = self.lock().get(&key) {
            // The same time check as a full verification, at this use.
            return match token::current(hit.iat, hit.exp, now) {
                true => Ok(Arc::clone(hit)),
                false => Err(TokenError::Expired),
            };
        }
        let claims = keys.verify(token, now)?;
        // `verify` checked that both are present.
        let field = |name| claims.get(name).and_then(Value::as_i64).unwrap_or_default();
        let (iat, exp) = (field("iat"), field("exp"));
        let guest_key = claims.get("tee-pubkey").and_then(|k| TeeKey::from_jwk(k).ok());
        let evidence = claims.pointer(EVIDENCE_CLAIMS).and_then(|c| Claims::deserialize(c).ok());
        let prepared = evidence.as_ref().and_then(|c| PreparedClaims::new(c).ok());
        let verified = Arc::new(VerifiedToken { claims, evidence, prepared, key: guest_key, iat, exp });
        if token.len() <= MAX_CACHED_TOKEN_LEN {
            self.lock().insert(key, Arc::clone(&verified));
        }
        Ok(verified)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundedMap<[u8; 32], Arc<VerifiedToken>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// SHA-256 over the key set's identity and the token's bytes.
fn cache_key(keys: &TokenKeys, token: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(keys.set_id());
    hash.update(token.as_bytes());
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::token::TokenKey;
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn keys() -> TokenKeys {
        TokenKeys::new(TokenKey::generate().unwrap(), Vec::new()).unwrap()
    }

    fn token(keys: &TokenKeys, jti: &str) -> String {
        keys.sign(&json!({"iat": NOW, "exp": NOW + 300, "jti": jti, "tee": "snp"})).unwrap()
    }

    #[test]
    fn a_remembered_token_is_refused_past_its_exp_and_before_its_iat() {
        let (keys, cache) = (keys(), VerifiedTokens::new());
        let t = token(&keys, "a");
        assert_eq!(cache.verify(&keys, &t, NOW).unwrap().claims["jti"], "a");
        assert_eq!(cache.len(), 1);
        // Still remembered, and still checked against the clock at each use.
        assert_eq!(cache.verify(&keys, &t, NOW + 299).unwrap().claims["jti"], "a");
        assert_eq!(cache.verify(&keys, &t, NOW + 300).err(), Some(TokenError::Expired));
        assert_eq!(cache.verify(&keys, &t, NOW + 10_000).err(), Some(TokenError::Expired));
        assert_eq!(cache.verify(&keys, &t, NOW - token::MAX_SKEW_SECONDS - 1).err(), Some(TokenError::Expired));
        assert_eq!(cache.len(), 1, "the entry was not replaced by a refusal");
        // The same answers as a full verification.
        for now in [NOW + 300, NOW - token::MAX_SKEW_SECONDS - 1] {
            assert_eq!(keys.verify(&t, now), Err(TokenError::Expired));
        }
    }

    #[test]
    fn a_token_that_fails_is_never_remembered() {
        let (keys, cache) = (keys(), VerifiedTokens::new());
        let expired = token(&keys, "old");
        assert_eq!(cache.verify(&keys, &expired, NOW + 300).err(), Some(TokenError::Expired));
        let other = token(&self::keys(), "elsewhere");
        assert_eq!(cache.verify(&keys, &other, NOW).err(), Some(TokenError::UnknownKey));
        assert!(cache.verify(&keys, "not.a.token", NOW).is_err());
        assert_eq!(cache.len(), 0);
        // Once valid, the expired one is verified in full and then kept.
        assert!(cache.verify(&keys, &expired, NOW).is_ok());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn another_key_set_shares_no_entry() {
        let (keys, cache) = (keys(), VerifiedTokens::new());
        let t = token(&keys, "a");
        cache.verify(&keys, &t, NOW).unwrap();
        // A key set without the token's key: refused, although the token
        // verified under the first one.
        let rotated = TokenKeys::new(TokenKey::generate().unwrap(), Vec::new()).unwrap();
        assert_eq!(cache.verify(&rotated, &t, NOW).err(), Some(TokenError::UnknownKey));
        // The same keys in the other trust mode refuse it as well.
        let pkcs8 = TokenKey::generate_pkcs8().unwrap();
        let production = TokenKeys::new(TokenKey::from_pkcs8(&pkcs8).unwrap(), Vec::new()).unwrap();
        let dev = TokenKeys::new(TokenKey::from_pkcs8(&pkcs8).unwrap(), Vec::new()).unwrap().insecure_dev();
        let t = token(&production, "b");
        cache.verify(&production, &t, NOW).unwrap();
        assert_eq!(cache.verify(&dev, &t, NOW).err(), Some(TokenError::OtherMode));
    }

    #[test]
    fn the_guest_key_is_checked_once_and_kept() {
        let (keys, cache) = (keys(), VerifiedTokens::new());
        let jwk = json!({"kty": "EC", "crv": "P-256",
                         "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
                         "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps"});
        let t = keys.sign(&json!({"iat": NOW, "exp": NOW + 300, "tee-pubkey": jwk})).unwrap();
        let verified = cache.verify(&keys, &t, NOW).unwrap();
        assert_eq!(verified.key, Some(TeeKey::from_jwk(&jwk).unwrap()));
        assert!(verified.evidence.is_none(), "no evidence claims in this token");
        assert!(Arc::ptr_eq(&verified, &cache.verify(&keys, &t, NOW).unwrap()), "remembered");
        // A point off the curve, or no key: none, and the GET says why.
        let mut off = jwk.clone();
        off["y"] = json!("SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFppw");
        let t = keys.sign(&json!({"iat": NOW, "exp": NOW + 300, "tee-pubkey": off})).unwrap();
        assert_eq!(cache.verify(&keys, &t, NOW).unwrap().key, None);
        assert_eq!(cache.verify(&keys, &token(&keys, "keyless"), NOW).unwrap().key, None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let (keys, cache) = (keys(), VerifiedTokens::with_capacity(8));
        let tokens: Vec<String> = (0..20).map(|i| token(&keys, &i.to_string())).collect();
        for t in &tokens {
            cache.verify(&keys, t, NOW).unwrap();
        }
        assert_eq!(cache.len(), 8);
        // Evicted tokens still verify, in full.
        assert_eq!(cache.verify(&keys, &tokens[0], NOW).unwrap().claims["jti"], "0");
        assert_eq!(cache.len(), 8);
        assert_eq!(VerifiedTokens::new().entries.lock().unwrap().len(), 0);
        // A token larger than the bound verifies but takes no place.
        let cache = VerifiedTokens::new();
        let large = keys.sign(&json!({"iat": NOW, "exp": NOW + 300, "pad": "x".repeat(MAX_CACHED_TOKEN_LEN)})).unwrap();
        assert!(cache.verify(&keys, &large, NOW).is_ok());
        assert_eq!(cache.len(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A token that verified once and is then changed in one byte is
        /// refused, wherever the byte and whatever its new value.
        #[test]
        fn a_remembered_token_changed_in_one_byte_is_refused(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            static KEYS: std::sync::LazyLock<TokenKeys> = std::sync::LazyLock::new(keys);
            static CACHE: std::sync::LazyLock<VerifiedTokens> = std::sync::LazyLock::new(VerifiedTokens::new);
            static TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| token(&KEYS, "fixed"));
            prop_assert!(CACHE.verify(&KEYS, &TOKEN, NOW).is_ok());
            let mut bytes = TOKEN.clone().into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let altered = String::from_utf8_lossy(&bytes).into_owned();
            prop_assert!(CACHE.verify(&KEYS, &altered, NOW).is_err());
            prop_assert!(CACHE.verify(&KEYS, &TOKEN, NOW).is_ok(), "the original still verifies");
        }
    }
}
