//! The CoCo session: the TEE a client named and the runtime-data hash
//! agreed at `/auth`, carried in the sealed `kbs-session-id` cookie.
//!
//! The cookie is sealed under the challenge key (see [`crate::challenge`]),
//! so that any replica can redeem it, but it is not a `kbs.v1` challenge:
//! its TEE code lies outside the `kbs.v1.Tee` values and its one label
//! names the hash. That encoding stays in this module; the rest of the
//! front end sees a [`Session`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha384, Sha512};

use crate::challenge::ChallengeError;
use crate::error::Error;
use crate::release::Broker;
use kbs_proto::NONCE_LEN;

/// Session state codes: outside the `kbs.v1.Tee` values so a CoCo session
/// can never be redeemed as a gRPC challenge, or the other way round.
const CODE_SNP: u8 = 0x81;
const CODE_TDX: u8 = 0x82;
const CODE_SAMPLE: u8 = 0x8f;

/// A CoCo TEE name this front end accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CocoTee {
    Snp,
    Tdx,
    Sample,
}

impl CocoTee {
    pub(super) fn from_name(name: &str) -> Option<Self> {
        match name {
            "snp" => Some(Self::Snp),
            "tdx" => Some(Self::Tdx),
            "sample" => Some(Self::Sample),
            _ => None,
        }
    }

    const fn code(self) -> u8 {
        match self {
            Self::Snp => CODE_SNP,
            Self::Tdx => CODE_TDX,
            Self::Sample => CODE_SAMPLE,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [Self::Snp, Self::Tdx, Self::Sample].into_iter().find(|t| t.code() == code)
    }

    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Snp => "snp",
            Self::Tdx => "tdx",
            Self::Sample => "sample",
        }
    }
}

/// The runtime-data hash the client and broker agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HashAlg {
    Sha384,
    Sha512,
}

impl HashAlg {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn label(self) -> String {
        format!("kbs/v0 {}", self.name())
    }

    fn from_label(label: &str) -> Option<Self> {
        [Self::Sha384, Self::Sha512].into_iter().find(|h| h.label() == label)
    }

    pub(super) fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha384 => Sha384::digest(bytes).to_vec(),
            Self::Sha512 => Sha512::digest(bytes).to_vec(),
        }
    }

    /// Picks from the client's `supported-hash-algorithms`: SHA-384 (the
    /// guest's default) unless only SHA-512 is offered. Absent list: SHA-384.
    pub(super) fn negotiate(extra_params: &Value) -> Result<Self, Error> {
        let Some(list) = extra_params.get("supported-hash-algorithms") else {
            return Ok(Self::Sha384);
        };
        let names: Vec<String> = list
            .as_array()
            .ok_or_else(|| Error::InvalidRequest("supported-hash-algorithms is not a list".into()))?
            .iter()
            .take(16)
            .filter_map(|v| v.as_str().map(|s| s.to_ascii_lowercase().replace('-', "")))
            .collect();
        if names.iter().any(|n| n == "sha384") {
            Ok(Self::Sha384)
        } else if names.iter().any(|n| n == "sha512") {
            Ok(Self::Sha512)
        } else {
            Err(Error::InvalidRequest("no supported hash algorithm in common (sha384, sha512)".into()))
        }
    }
}

/// A session `/auth` opened: authentic (sealed by a broker holding the
/// challenge key), unexpired, and a CoCo one. Made only by
/// [`Session::open`], so a handler cannot hold a session it did not check.
#[derive(Debug)]
pub(super) struct Session {
    nonce: [u8; NONCE_LEN],
    tee: CocoTee,
    hash: HashAlg,
}

/// A session just opened at `/auth`: the nonce the evidence must bind and
/// the sealed cookie value that carries it.
#[derive(Debug)]
pub(super) struct NewSession {
    pub(super) nonce: [u8; NONCE_LEN],
    pub(super) cookie: String,
}

impl Session {
    /// Seals a session for `tee` and `hash`, valid for the challenge
    /// lifetime.
    pub(super) fn seal(broker: &Broker, tee: CocoTee, hash: HashAlg) -> Result<NewSession, Error> {
        let issued = broker.seal_session(tee.code(), &hash.label())?;
        Ok(NewSession { nonce: issued.nonce, cookie: URL_SAFE_NO_PAD.encode(&issued.token) })
    }

    /// Opens the cookie value `cookie`: it must be sealed under the
    /// challenge key, unexpired, and a CoCo session (a `kbs.v1` challenge
    /// is refused).
    pub(super) fn open(broker: &Broker, cookie: &str) -> Result<Self, Error> {
        let sealed = URL_SAFE_NO_PAD.decode(cookie).map_err(|_| ChallengeError::Malformed)?;
        let opened = broker.open_session(&sealed)?;
        let tee = CocoTee::from_code(opened.code).ok_or(ChallengeError::Mismatch("not a CoCo session"))?;
        let hash = HashAlg::from_label(&opened.label).ok_or(ChallengeError::Mismatch("not a CoCo session"))?;
        Ok(Self { nonce: opened.nonce, tee, hash })
    }

    /// The nonce the evidence must bind.
    pub(super) fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// The TEE the client named.
    pub(super) fn tee(&self) -> CocoTee {
        self.tee
    }

    /// The runtime-data hash agreed.
    pub(super) fn hash(&self) -> HashAlg {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_negotiation() {
        assert_eq!(HashAlg::negotiate(&json!({})).unwrap(), HashAlg::Sha384);
        assert_eq!(HashAlg::negotiate(&json!("")).unwrap(), HashAlg::Sha384);
        let all = json!({"supported-hash-algorithms": ["sha256", "sha384", "sha512", "sm3"]});
        assert_eq!(HashAlg::negotiate(&all).unwrap(), HashAlg::Sha384);
        let only512 = json!({"supported-hash-algorithms": ["SHA512"]});
        assert_eq!(HashAlg::negotiate(&only512).unwrap(), HashAlg::Sha512);
        assert!(HashAlg::negotiate(&json!({"supported-hash-algorithms": ["sm3"]})).is_err());
        assert!(HashAlg::negotiate(&json!({"supported-hash-algorithms": "sha384"})).is_err());
        assert_eq!(HashAlg::from_label(&HashAlg::Sha512.label()), Some(HashAlg::Sha512));
    }

    /// A session's TEE code is never a `kbs.v1.Tee` value, so neither kind
    /// of sealed token can be redeemed as the other.
    #[test]
    fn session_codes_are_not_grpc_tee_codes() {
        for tee in [CocoTee::Snp, CocoTee::Tdx, CocoTee::Sample] {
            assert!(tee.code() >= crate::challenge::SESSION_CODE_MIN, "{tee:?}");
            assert_ne!(tee.code(), crate::release::TEE_SNP);
            assert_ne!(tee.code(), crate::release::TEE_TDX);
            assert_eq!(CocoTee::from_code(tee.code()), Some(tee));
            assert_eq!(CocoTee::from_name(tee.name()), Some(tee));
        }
        assert_eq!(CocoTee::from_code(crate::release::TEE_SNP), None);
        assert_eq!(CocoTee::from_code(crate::release::TEE_TDX), None);
        assert_eq!(HashAlg::from_label("kbs/v0 sha256"), None);
    }
}
