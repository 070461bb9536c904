//! Attestation tokens already verified, remembered for their lifetime, so
//! that a guest's resource GETs after the first do not each verify the
//! token's ES256 signature again (about as costly as the JWE seal of the
//! answer).
//!
//! An entry is keyed by SHA-256 over the identity of the token key set
//! ([`TokenKeys::set_id`]) and the exact bytes of the token: a token that
//! differs in one byte is another key, and is verified in full; a broker
//! with other token keys shares no entry. Only a token that verified (or
//! that this broker has just issued, below) goes in, with its claims (and
//! the evidence claims they carry, parsed), `iat` and `exp`, and its guest
//! key as checked once ([`TeeKey::from_jwk`]); an entry is used only while the
//! clock at that use is within the token's validity, as a full
//! verification would check. At most [`MAX_ENTRIES`] tokens of at most
//! [`MAX_CACHED_TOKEN_LEN`] bytes are kept (the oldest evicted first), and
//! only tokens this broker signed can take a place.
//!
//! A token this broker has just issued at an attestation is remembered
//! then, as a full verification of it would have kept it
//! ([`VerifiedTokens::remember_issued`]), so that the guest's first GET
//! does not verify the signature made a moment before. Another broker of
//! the deployment that receives the token verifies it in full.
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
    /// What is kept of a token whose signature and validity were checked
    /// (or that this broker has just signed): its claims, the evidence
    /// claims they carry, parsed and prepared, and the guest `key`
    /// checked from its `tee-pubkey`. `None` without `iat` and `exp`.
    fn new(claims: Value, key: Option<TeeKey>) -> Option<Self> {
        let field = |name| claims.get(name).and_then(Value::as_i64);
        let (iat, exp) = (field("iat")?, field("exp")?);
        let evidence = claims.pointer(EVIDENCE_CLAIMS).and_then(|c| Claims::deserialize(c).ok());
        let prepared = evidence.as_ref().and_then(|c| PreparedClaims::new(c).ok());
        Some(Self { claims, evidence, prepared, key, iat, exp })
    }

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
        let guest_key = claims.get("tee-pubkey").and_then(|k| TeeKey::from_jwk(k).ok());
        // `verify` checked that `iat` and `exp` are present.
        let verified = Arc::new(VerifiedToken::new(claims, guest_key).ok_or(TokenError::Malformed("iat"))?);
        if token.len() <= MAX_CACHED_TOKEN_LEN {
            self.lock().insert(key, Arc::clone(&verified));
        }
        Ok(verified)
    }

    /// Remembers a token this front end has just signed and handed out:
    /// `claims` as [`TokenKeys::sign_claims`] returned them, `key` the
    /// guest key its `tee-pubkey` names, as the attestation checked it.
    /// The guest's GETs to this broker then start from what a full
    /// verification of the token would have kept, without verifying a
    /// signature made here a moment before; every use still checks the
    /// token's validity at its own clock. A token that another broker of
    /// the deployment receives is verified there in full.
    pub(super) fn remember_issued(&self, keys: &TokenKeys, token: &str, claims: Value, key: TeeKey) {
        if token.len() > MAX_CACHED_TOKEN_LEN {
            return;
        }
        if let Some(issued) = VerifiedToken::new(claims, Some(key)) {
            self.lock().insert(cache_key(keys, token), Arc::new(issued));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundedMap<[u8; 32], Arc<VerifiedToken>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    fn remembered(&self, keys: &TokenKeys, token: &str) -> Option<Arc<VerifiedToken>> {
        self.lock().get(&cache_key(keys, token)).cloned()
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

    /// What an attestation remembers of the token it hands out is what a
    /// full verification of that token keeps, and the first GET finds it
    /// there; it is checked against the clock at each use as well.
    #[test]
    fn an_issued_token_is_remembered_as_a_verification_would_keep_it() {
        let claims = crate::policy::tests::sample_claims(false, 0, &"5a".repeat(48));
        let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
                         "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
                         "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps"});
        let ear = token::ear_claims(&token::EarInput {
            issuer: "https://kbs.example",
            audiences: &[],
            attestation_id: "att-1",
            now: NOW,
            ttl: 300,
            claims: &claims,
            claims_digest: "ab12",
            tee: "snp",
            tee_pubkey: &jwk,
        })
        .unwrap();
        for keys in [keys(), keys().insecure_dev()] {
            let (issuing, verifying) = (VerifiedTokens::new(), VerifiedTokens::new());
            let (t, signed) = keys.sign_claims(ear.clone()).unwrap();
            issuing.remember_issued(&keys, &t, signed, TeeKey::from_jwk(&jwk).unwrap());
            let issued = issuing.remembered(&keys, &t).expect("remembered before any GET");
            let full = verifying.verify(&keys, &t, NOW).unwrap();
            assert_eq!(issued.claims, full.claims);
            assert_eq!((issued.iat, issued.exp), (full.iat, full.exp));
            assert_eq!(issued.key, full.key);
            assert!(issued.key.is_some());
            let measurement = |v: &VerifiedToken| v.evidence.as_ref().map(|c| c.measurement.clone());
            assert_eq!(measurement(&issued), Some("5a".repeat(48)));
            assert_eq!(measurement(&issued), measurement(&full));
            let digest = |v: &VerifiedToken| v.prepared.as_ref().map(|p| p.digest().to_owned());
            assert!(digest(&issued).is_some());
            assert_eq!(digest(&issued), digest(&full));
            // The GET finds it, and the clock still decides.
            assert!(Arc::ptr_eq(&issued, &issuing.verify(&keys, &t, NOW + 299).unwrap()));
            assert_eq!(issuing.verify(&keys, &t, NOW + 300).err(), Some(TokenError::Expired));
            // Another key set shares no entry.
            assert_eq!(issuing.verify(&self::keys(), &t, NOW).err(), Some(TokenError::UnknownKey));
        }
        // Claims a verification would refuse (no `exp`), or a token too
        // large to keep, take no place.
        let (keys, cache) = (keys(), VerifiedTokens::new());
        let (t, signed) = keys.sign_claims(json!({"iat": NOW})).unwrap();
        cache.remember_issued(&keys, &t, signed, TeeKey::from_jwk(&jwk).unwrap());
        let large = json!({"iat": NOW, "exp": NOW + 300, "pad": "x".repeat(MAX_CACHED_TOKEN_LEN)});
        let (t, signed) = keys.sign_claims(large).unwrap();
        cache.remember_issued(&keys, &t, signed, TeeKey::from_jwk(&jwk).unwrap());
        assert_eq!(cache.len(), 0);
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
