//! Stateless sealed challenges.
//!
//! A challenge is the broker's own AEAD-sealed record of `{nonce, tee,
//! secret names, expiry}`, under a 32-byte key that every replica shares.
//! Any replica can open and check a challenge another issued; no session
//! store exists. A challenge sealed under another key, altered in any bit,
//! or past its expiry is refused.
//!
//! Token layout (all integers big-endian):
//!
//! ```text
//! 0x01 | key_id (8) | aead_nonce (12) | AES-256-GCM(plaintext) with aad = 0x01 | key_id
//! plaintext = nonce (32) | tee (1) | expires_at (i64) | n (u16) | n x (len u16 | name)
//! ```
//!
//! The nonce is random per challenge, so two guests never share one. A
//! replayed challenge is harmless: the secrets released for it are sealed to
//! an HPKE key that only the TEE that made the evidence holds.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::names::MAX_NAME_LEN;
use crate::reason::ReasonCode;
use kbs_proto::NONCE_LEN as CHALLENGE_NONCE_LEN;

const TOKEN_VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Largest number of secrets one challenge may name.
pub const MAX_SECRETS_PER_CHALLENGE: usize = 64;
/// Largest token we will try to open.
pub const MAX_TOKEN_LEN: usize =
    HEADER_LEN + TAG_LEN + CHALLENGE_NONCE_LEN + 1 + 8 + 2 + MAX_SECRETS_PER_CHALLENGE * (2 + MAX_NAME_LEN);

/// Why a challenge was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChallengeError {
    /// Not a token this broker could have issued (wrong size or layout).
    #[error("challenge is malformed")]
    Malformed,
    /// Sealed under a key this broker does not hold.
    #[error("challenge was sealed under an unknown key")]
    UnknownKey,
    /// The AEAD tag does not verify: altered or forged.
    #[error("challenge failed authentication")]
    Forged,
    /// Past its expiry.
    #[error("challenge expired at {expired_at}, now {now}")]
    Expired {
        /// Expiry, Unix seconds.
        expired_at: i64,
        /// Verification time, Unix seconds.
        now: i64,
    },
    /// The request names other secrets or another TEE than the challenge.
    #[error("request does not match its challenge: {0}")]
    Mismatch(&'static str),
    /// Too many or too long secret names to issue a challenge for.
    #[error("cannot issue a challenge: {0}")]
    Unissuable(&'static str),
    /// The system random source failed.
    #[error("random source failed")]
    Random,
}

impl ChallengeError {
    /// The stable reason code.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::Malformed | Self::UnknownKey | Self::Forged => ReasonCode::ChallengeInvalid,
            Self::Expired { .. } => ReasonCode::ChallengeExpired,
            Self::Mismatch(_) => ReasonCode::ChallengeMismatch,
            Self::Unissuable(_) => ReasonCode::InvalidRequest,
            Self::Random => ReasonCode::Internal,
        }
    }
}

/// The contents of an opened, authentic, unexpired challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedChallenge {
    /// The nonce the evidence must bind.
    pub nonce: [u8; CHALLENGE_NONCE_LEN],
    /// The TEE code the challenge was issued for (`kbs.v1.Tee` value).
    pub tee: u8,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// The secret names, in request order.
    pub secret_names: Vec<String>,
}

/// A freshly issued challenge.
#[derive(Debug, Clone)]
pub struct IssuedChallenge {
    /// The nonce.
    pub nonce: [u8; CHALLENGE_NONCE_LEN],
    /// The sealed token.
    pub token: Vec<u8>,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// The first kind code of a sealed session; `kbs.v1.Tee` values, the
/// codes of challenges, lie below it.
pub const SESSION_CODE_MIN: u8 = 0x80;

/// Session state a front end other than `kbs.v1` seals under the
/// challenge key (the CoCo protocol's cookie): a nonce, a kind code from
/// [`SESSION_CODE_MIN`] up and one label. It shares the challenge token's
/// layout, the code in the TEE byte and the label as the one name, so any
/// replica opens it; the code ranges keep a session from being redeemed as
/// a challenge and a challenge from being opened as a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedSession {
    /// The nonce the evidence must bind.
    pub nonce: [u8; CHALLENGE_NONCE_LEN],
    /// The front end's kind code (at least [`SESSION_CODE_MIN`]).
    pub code: u8,
    /// The front end's label.
    pub label: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

struct SealingKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

/// Seals and opens challenges. Holds the current key and, for rotation,
/// older keys that are still accepted for opening.
pub struct ChallengeSealer {
    current: SealingKey,
    previous: Vec<SealingKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for ChallengeSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeSealer")
            .field("key_id", &hex::encode(self.current.id))
            .field("previous", &self.previous.len())
            .finish_non_exhaustive()
    }
}

fn key_id(key: &[u8; 32]) -> [u8; KEY_ID_LEN] {
    let mut h = Sha256::new();
    h.update(b"kbs.v1 challenge key id");
    h.update(key);
    let digest = h.finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(digest.get(..KEY_ID_LEN).unwrap_or(&[0u8; KEY_ID_LEN]));
    id
}

fn sealing_key(key: &[u8; 32]) -> Result<SealingKey, ChallengeError> {
    let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| ChallengeError::Malformed)?;
    Ok(SealingKey { id: key_id(key), key: LessSafeKey::new(unbound) })
}

impl ChallengeSealer {
    /// A sealer with `current` as the sealing key; `previous` keys are still
    /// accepted when opening (for key rotation without refusing in-flight
    /// challenges).
    pub fn new(current: &[u8; 32], previous: &[Zeroizing<[u8; 32]>]) -> Result<Self, ChallengeError> {
        Ok(Self {
            current: sealing_key(current)?,
            previous: previous.iter().map(|k| sealing_key(k)).collect::<Result<_, _>>()?,
            rng: SystemRandom::new(),
        })
    }

    /// A sealer for a broker in the insecure dev mode: the sealing keys are
    /// derived from the key files with a label of that mode, so a dev
    /// broker that shares key files with a production one (a copied
    /// set-up) issues challenges and sessions the production broker
    /// refuses, and the other way round.
    pub fn new_insecure_dev(current: &[u8; 32], previous: &[Zeroizing<[u8; 32]>]) -> Result<Self, ChallengeError> {
        let derive = |key: &[u8; 32]| -> Zeroizing<[u8; 32]> {
            let mut h = Sha256::new();
            h.update(b"kbs.v1 insecure-dev challenge key");
            h.update(key);
            Zeroizing::new(h.finalize().into())
        };
        let previous: Vec<Zeroizing<[u8; 32]>> = previous.iter().map(|k| derive(k)).collect();
        Self::new(&derive(current), &previous)
    }

    /// The identifier of the current key (not secret), for logs.
    pub fn key_id(&self) -> String {
        hex::encode(self.current.id)
    }

    /// Issues a challenge valid until `expires_at` (Unix seconds).
    pub fn issue(&self, tee: u8, secret_names: &[String], expires_at: i64) -> Result<IssuedChallenge, ChallengeError> {
        if secret_names.len() > MAX_SECRETS_PER_CHALLENGE {
            return Err(ChallengeError::Unissuable("too many secret names"));
        }
        let mut nonce = [0u8; CHALLENGE_NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| ChallengeError::Random)?;
        let mut plain = Vec::with_capacity(64);
        plain.extend_from_slice(&nonce);
        plain.push(tee);
        plain.extend_from_slice(&expires_at.to_be_bytes());
        let count =
            u16::try_from(secret_names.len()).map_err(|_| ChallengeError::Unissuable("too many secret names"))?;
        plain.extend_from_slice(&count.to_be_bytes());
        for name in secret_names {
            if name.len() > MAX_NAME_LEN {
                return Err(ChallengeError::Unissuable("secret name too long"));
            }
            let len = u16::try_from(name.len()).map_err(|_| ChallengeError::Unissuable("secret name too long"))?;
            plain.extend_from_slice(&len.to_be_bytes());
            plain.extend_from_slice(name.as_bytes());
        }
        let mut aead_nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut aead_nonce).map_err(|_| ChallengeError::Random)?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.push(TOKEN_VERSION);
        header.extend_from_slice(&self.current.id);
        let aad = header.clone();
        header.extend_from_slice(&aead_nonce);
        self.current
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(aead_nonce), Aad::from(&aad), &mut plain)
            .map_err(|_| ChallengeError::Random)?;
        header.extend_from_slice(&plain);
        Ok(IssuedChallenge { nonce, token: header, expires_at })
    }

    /// Opens a challenge: [`Self::open_token`], and refused (`Mismatch`)
    /// when the token is a session.
    pub fn open(&self, token: &[u8], now: i64) -> Result<OpenedChallenge, ChallengeError> {
        let opened = self.open_token(token, now)?;
        if opened.tee >= SESSION_CODE_MIN {
            return Err(ChallengeError::Mismatch("a session is not a challenge"));
        }
        Ok(opened)
    }

    /// Seals a session of kind `code` with `label`, valid until
    /// `expires_at` (Unix seconds). The token is a challenge's with the
    /// code as its TEE and the label as its one name.
    pub fn issue_session(&self, code: u8, label: &str, expires_at: i64) -> Result<IssuedChallenge, ChallengeError> {
        if code < SESSION_CODE_MIN {
            return Err(ChallengeError::Unissuable("a session code lies in the kbs.v1 TEE range"));
        }
        self.issue(code, &[label.to_owned()], expires_at)
    }

    /// Opens a session: authentic, unexpired, of a session kind and with
    /// one label; a challenge is refused (`Mismatch`).
    pub fn open_session(&self, token: &[u8], now: i64) -> Result<OpenedSession, ChallengeError> {
        let opened = self.open_token(token, now)?;
        if opened.tee < SESSION_CODE_MIN {
            return Err(ChallengeError::Mismatch("a challenge is not a session"));
        }
        let [label] = <[String; 1]>::try_from(opened.secret_names)
            .map_err(|_| ChallengeError::Mismatch("a session carries one label"))?;
        Ok(OpenedSession { nonce: opened.nonce, code: opened.tee, label, expires_at: opened.expires_at })
    }

    /// Opens a token of either kind and checks its expiry against `now`
    /// (Unix seconds).
    fn open_token(&self, token: &[u8], now: i64) -> Result<OpenedChallenge, ChallengeError> {
        if token.len() < HEADER_LEN + TAG_LEN || token.len() > MAX_TOKEN_LEN {
            return Err(ChallengeError::Malformed);
        }
        let (header, sealed) = token.split_at(HEADER_LEN);
        let (prefix, aead_nonce) = header.split_at(1 + KEY_ID_LEN);
        if prefix.first() != Some(&TOKEN_VERSION) {
            return Err(ChallengeError::Malformed);
        }
        let id = prefix.get(1..).ok_or(ChallengeError::Malformed)?;
        let key = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id.as_slice() == id)
            .ok_or(ChallengeError::UnknownKey)?;
        let aead_nonce: [u8; NONCE_LEN] = aead_nonce.try_into().map_err(|_| ChallengeError::Malformed)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(Nonce::assume_unique_for_key(aead_nonce), Aad::from(prefix), &mut buf)
            .map_err(|_| ChallengeError::Forged)?;
        let opened = decode_plaintext(plain)?;
        if now >= opened.expires_at {
            return Err(ChallengeError::Expired { expired_at: opened.expires_at, now });
        }
        Ok(opened)
    }
}

/// Decodes authenticated plaintext. It was written by a broker holding the
/// key, but is still parsed defensively.
fn decode_plaintext(mut p: &[u8]) -> Result<OpenedChallenge, ChallengeError> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], ChallengeError> {
        if p.len() < n {
            return Err(ChallengeError::Malformed);
        }
        let (head, tail) = p.split_at(n);
        *p = tail;
        Ok(head)
    }
    let nonce: [u8; CHALLENGE_NONCE_LEN] =
        take(&mut p, CHALLENGE_NONCE_LEN)?.try_into().map_err(|_| ChallengeError::Malformed)?;
    let tee = *take(&mut p, 1)?.first().ok_or(ChallengeError::Malformed)?;
    let expires_at = i64::from_be_bytes(take(&mut p, 8)?.try_into().map_err(|_| ChallengeError::Malformed)?);
    let count = u16::from_be_bytes(take(&mut p, 2)?.try_into().map_err(|_| ChallengeError::Malformed)?);
    if usize::from(count) > MAX_SECRETS_PER_CHALLENGE {
        return Err(ChallengeError::Malformed);
    }
    let mut secret_names = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = u16::from_be_bytes(take(&mut p, 2)?.try_into().map_err(|_| ChallengeError::Malformed)?);
        let name = std::str::from_utf8(take(&mut p, usize::from(len))?).map_err(|_| ChallengeError::Malformed)?;
        secret_names.push(name.to_owned());
    }
    if !p.is_empty() {
        return Err(ChallengeError::Malformed);
    }
    Ok(OpenedChallenge { nonce, tee, expires_at, secret_names })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> ChallengeSealer {
        ChallengeSealer::new(&[byte; 32], &[]).unwrap()
    }

    fn names() -> Vec<String> {
        vec!["models/llama/key".to_owned(), "models/llama/config".to_owned()]
    }

    /// A session and a challenge share the token layout; neither opens as
    /// the other, whatever code a caller asks for.
    #[test]
    fn sessions_and_challenges_do_not_open_as_each_other() {
        let s = sealer(1);
        let session = s.issue_session(0x81, "kbs/v0 sha384", 100).unwrap();
        let opened = s.open_session(&session.token, 50).unwrap();
        assert_eq!((opened.code, opened.label.as_str(), opened.nonce), (0x81, "kbs/v0 sha384", session.nonce));
        assert_eq!(s.open(&session.token, 50), Err(ChallengeError::Mismatch("a session is not a challenge")));

        let challenge = s.issue(1, &names(), 100).unwrap();
        assert!(s.open(&challenge.token, 50).is_ok());
        assert_eq!(s.open_session(&challenge.token, 50), Err(ChallengeError::Mismatch("a challenge is not a session")));

        for code in [0, 1, 2, SESSION_CODE_MIN - 1] {
            assert!(matches!(s.issue_session(code, "x", 100), Err(ChallengeError::Unissuable(_))), "{code}");
        }
        // A session-kind token without exactly one label is no session.
        for labels in [vec![], names()] {
            let odd = s.issue(0x81, &labels, 100).unwrap();
            assert_eq!(s.open_session(&odd.token, 50), Err(ChallengeError::Mismatch("a session carries one label")));
        }
        // Expiry and authenticity are checked as for a challenge.
        assert!(matches!(s.open_session(&session.token, 100), Err(ChallengeError::Expired { .. })));
        assert_eq!(sealer(2).open_session(&session.token, 50), Err(ChallengeError::UnknownKey));
    }

    #[test]
    fn dev_and_production_sealers_with_one_key_refuse_each_other() {
        let key = [5u8; 32];
        let production = ChallengeSealer::new(&key, &[]).unwrap();
        let dev = ChallengeSealer::new_insecure_dev(&key, &[]).unwrap();
        let from_dev = dev.issue(1, &[], 1_000).unwrap();
        assert_eq!(production.open(&from_dev.token, 0).unwrap_err(), ChallengeError::UnknownKey);
        let from_production = production.issue(1, &[], 1_000).unwrap();
        assert_eq!(dev.open(&from_production.token, 0).unwrap_err(), ChallengeError::UnknownKey);
        assert!(dev.open(&from_dev.token, 0).is_ok());
    }

    #[test]
    fn round_trip_at_another_replica() {
        let a = sealer(1);
        let b = sealer(1);
        let issued = a.issue(1, &names(), 1_000).unwrap();
        let opened = b.open(&issued.token, 999).unwrap();
        assert_eq!(opened.nonce, issued.nonce);
        assert_eq!(opened.tee, 1);
        assert_eq!(opened.secret_names, names());
        assert_eq!(opened.expires_at, 1_000);
    }

    #[test]
    fn nonces_are_fresh() {
        let a = sealer(1);
        let x = a.issue(1, &names(), 1_000).unwrap();
        let y = a.issue(1, &names(), 1_000).unwrap();
        assert_ne!(x.nonce, y.nonce);
        assert_ne!(x.token, y.token);
    }

    #[test]
    fn expired_is_refused() {
        let a = sealer(1);
        let issued = a.issue(1, &names(), 1_000).unwrap();
        assert_eq!(a.open(&issued.token, 1_000), Err(ChallengeError::Expired { expired_at: 1_000, now: 1_000 }));
    }

    #[test]
    fn foreign_key_is_refused() {
        let issued = sealer(1).issue(1, &names(), 1_000).unwrap();
        let err = sealer(2).open(&issued.token, 0).unwrap_err();
        assert_eq!(err, ChallengeError::UnknownKey);
        assert_eq!(err.reason(), ReasonCode::ChallengeInvalid);
    }

    #[test]
    fn rotated_key_still_opens() {
        let old = sealer(1);
        let issued = old.issue(1, &names(), 1_000).unwrap();
        let new = ChallengeSealer::new(&[2; 32], &[Zeroizing::new([1; 32])]).unwrap();
        assert!(new.open(&issued.token, 0).is_ok());
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let a = sealer(1);
        let issued = a.issue(1, &names(), 1_000).unwrap();
        for i in 0..issued.token.len() * 8 {
            let mut t = issued.token.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(a.open(&t, 0).is_err(), "bit {i} flip accepted");
        }
    }

    #[test]
    fn truncated_and_oversized_are_malformed() {
        let a = sealer(1);
        let issued = a.issue(1, &names(), 1_000).unwrap();
        assert_eq!(a.open(&issued.token[..HEADER_LEN], 0), Err(ChallengeError::Malformed));
        assert_eq!(a.open(&[], 0), Err(ChallengeError::Malformed));
        assert_eq!(a.open(&vec![1u8; MAX_TOKEN_LEN + 1], 0), Err(ChallengeError::Malformed));
    }

    #[test]
    fn too_many_names_cannot_be_issued() {
        let many: Vec<String> = (0..=MAX_SECRETS_PER_CHALLENGE).map(|i| format!("s{i}")).collect();
        assert!(matches!(sealer(1).issue(1, &many, 1), Err(ChallengeError::Unissuable(_))));
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = sealer(1).open(&bytes, 0);
        }
    }
}
