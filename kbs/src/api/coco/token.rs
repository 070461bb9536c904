//! Attestation results tokens: compact JWS (RFC 7515) with `ES256`,
//! signed by the broker's token key.
//!
//! The token is the only state a CoCo session has after attestation: it
//! carries the verified claims and the guest's key, so any replica holding
//! the same token key can serve the resource GET. Replicas share the key
//! through `coco.token_key_file`; without it each process makes its own
//! and tokens are good only at the replica that issued them.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew tolerated on `iat`, in seconds.
pub const MAX_SKEW_SECONDS: i64 = 60;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a compact JWS this broker could have issued.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The signature does not verify under this broker's key.
    #[error("token signature does not verify")]
    BadSignature,
    /// Past `exp`, or issued in the future.
    #[error("token is expired or not yet valid")]
    Expired,
    /// Minted by a broker in the other trust mode (insecure dev or not).
    #[error("token was minted by a broker in another trust mode")]
    OtherMode,
    /// The key file is unusable.
    #[error("token key: {0}")]
    Key(String),
}

/// The claim that marks a token minted by a broker in the insecure dev
/// mode. A broker verifies only tokens of its own mode, so a dev broker
/// that shares the token key file with a production one (a copied set-up)
/// mints nothing the production broker accepts.
const INSECURE_DEV_CLAIM: &str = "kbs-insecure-dev";

/// The broker's token signing key.
pub struct TokenKey {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
    insecure_dev: bool,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenKey {
    fn from_pair(pair: EcdsaKeyPair) -> Self {
        let kid = hex::encode(Sha256::digest(pair.public_key().as_ref()).get(..8).unwrap_or_default());
        Self { pair, kid, rng: SystemRandom::new(), insecure_dev: false }
    }

    /// The key of a broker in the insecure dev mode: its tokens carry the
    /// dev mark, and it accepts only tokens that do.
    pub fn insecure_dev(mut self) -> Self {
        self.insecure_dev = true;
        self
    }

    /// A fresh key for this process only.
    pub fn generate() -> Result<Self, TokenError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| TokenError::Key("key generation failed".into()))?;
        Ok(Self::from_pair(pair))
    }

    /// A P-256 key from PKCS#8, DER or PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, TokenError> {
        let der = match std::str::from_utf8(bytes) {
            Ok(text) if text.contains("-----BEGIN PRIVATE KEY-----") => {
                let body: String = text
                    .lines()
                    .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
                    .skip(1)
                    .take_while(|l| !l.starts_with("-----END"))
                    .collect();
                zeroize::Zeroizing::new(
                    STANDARD.decode(body.trim()).map_err(|_| TokenError::Key("PEM body is not base64".into()))?,
                )
            }
            _ => zeroize::Zeroizing::new(bytes.to_vec()),
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| TokenError::Key(format!("not a PKCS#8 P-256 key: {e}")))?;
        Ok(Self::from_pair(pair))
    }

    /// Reads [`Self::from_pkcs8`] from a file.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path).map_err(|e| TokenError::Key(format!("{}: {e}", path.display())))?,
        );
        Self::from_pkcs8(&bytes)
    }

    /// A new PKCS#8 (DER) key, for operators and tests to write to a file.
    pub fn generate_pkcs8() -> Result<zeroize::Zeroizing<Vec<u8>>, TokenError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| TokenError::Key("key generation failed".into()))?;
        let der = pair.to_pkcs8v1().map_err(|_| TokenError::Key("key encoding failed".into()))?;
        Ok(zeroize::Zeroizing::new(der.as_ref().to_vec()))
    }

    /// The key id (not secret): the first 8 bytes of SHA-256 of the public point.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(point.get(1..33).unwrap_or_default()),
            "y": URL_SAFE_NO_PAD.encode(point.get(33..65).unwrap_or_default()),
        })
    }

    /// Signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let enc = |v: &Value| serde_json::to_vec(v).map(|b| URL_SAFE_NO_PAD.encode(b));
        let header = enc(&header).map_err(|_| TokenError::Malformed("header"))?;
        let mut claims = claims.clone();
        if let (true, Some(object)) = (self.insecure_dev, claims.as_object_mut()) {
            object.insert(INSECURE_DEV_CLAIM.into(), Value::Bool(true));
        }
        let payload = enc(&claims).map_err(|_| TokenError::Malformed("claims"))?;
        let input = format!("{header}.{payload}");
        let sig = self.pair.sign(&self.rng, input.as_bytes()).map_err(|_| TokenError::Key("signing failed".into()))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }

    /// Verifies a token and returns its claims, if it was signed by this
    /// key and `now` (Unix seconds) is within `[iat - skew, exp)`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("not three parts"));
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("header"))?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(TokenError::Malformed("alg must be ES256"));
        }
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed("signature"))?;
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref());
        let signed_len = h.len() + 1 + p.len();
        let signed = token.get(..signed_len).ok_or(TokenError::Malformed("layout"))?;
        public.verify(signed.as_bytes(), &sig).map_err(|_| TokenError::BadSignature)?;
        let claims: Value = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("claims"))?;
        let exp = claims.get("exp").and_then(Value::as_i64).ok_or(TokenError::Malformed("exp"))?;
        let iat = claims.get("iat").and_then(Value::as_i64).ok_or(TokenError::Malformed("iat"))?;
        if now >= exp || iat > now.saturating_add(MAX_SKEW_SECONDS) {
            return Err(TokenError::Expired);
        }
        if claims.get(INSECURE_DEV_CLAIM).is_some() != self.insecure_dev {
            return Err(TokenError::OtherMode);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(iat: i64, exp: i64) -> Value {
        json!({"iat": iat, "exp": exp, "tee-pubkey": {"kty": "EC"}})
    }

    #[test]
    fn tokens_are_good_only_in_the_mode_that_minted_them() {
        let der = TokenKey::generate_pkcs8().unwrap();
        let production = TokenKey::from_pkcs8(&der).unwrap();
        let dev = TokenKey::from_pkcs8(&der).unwrap().insecure_dev();
        let from_dev = dev.sign(&claims(0, 100)).unwrap();
        assert_eq!(production.verify(&from_dev, 10), Err(TokenError::OtherMode));
        assert!(dev.verify(&from_dev, 10).is_ok());
        let from_production = production.sign(&claims(0, 100)).unwrap();
        assert_eq!(dev.verify(&from_production, 10), Err(TokenError::OtherMode));
        assert!(production.verify(&from_production, 10).unwrap().get(INSECURE_DEV_CLAIM).is_none());
    }

    #[test]
    fn round_trip_and_expiry() {
        let key = TokenKey::generate().unwrap();
        let token = key.sign(&claims(100, 400)).unwrap();
        assert_eq!(key.verify(&token, 100).unwrap()["tee-pubkey"]["kty"], "EC");
        assert_eq!(key.verify(&token, 400), Err(TokenError::Expired));
        assert_eq!(key.verify(&token, 30), Err(TokenError::Expired));
    }

    #[test]
    fn foreign_and_altered_tokens_are_refused() {
        let a = TokenKey::generate().unwrap();
        let b = TokenKey::generate().unwrap();
        let token = a.sign(&claims(100, 400)).unwrap();
        assert_eq!(b.verify(&token, 100), Err(TokenError::BadSignature));
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(100, 99_999)).unwrap());
        assert_eq!(a.verify(&format!("{head}.{forged}.{sig}"), 100), Err(TokenError::BadSignature));
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(matches!(a.verify(&format!("{none}.{forged}."), 100), Err(TokenError::Malformed(_))));
        assert!(a.verify("a.b", 100).is_err());
        assert!(a.verify(&"a.".repeat(MAX_TOKEN_LEN), 100).is_err());
    }

    #[test]
    fn pkcs8_files_share_a_key() {
        let der = TokenKey::generate_pkcs8().unwrap();
        let a = TokenKey::from_pkcs8(&der).unwrap();
        let pem =
            format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der.as_slice()));
        let b = TokenKey::from_pkcs8(pem.as_bytes()).unwrap();
        assert_eq!(a.kid(), b.kid());
        let token = a.sign(&claims(1, 2)).unwrap();
        assert!(b.verify(&token, 1).is_ok());
        assert!(TokenKey::from_pkcs8(b"junk").is_err());
        assert_eq!(a.public_jwk()["kid"], a.kid());
    }
}
