//! The CoCo session: the TEE a client named and the runtime-data hash
//! agreed at `/auth`, carried in the sealed `kbs-session-id` cookie.

use serde_json::Value;
use sha2::{Digest, Sha384, Sha512};

use crate::error::Error;

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

    pub(super) const fn code(self) -> u8 {
        match self {
            Self::Snp => CODE_SNP,
            Self::Tdx => CODE_TDX,
            Self::Sample => CODE_SAMPLE,
        }
    }

    pub(super) fn from_code(code: u8) -> Option<Self> {
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

    pub(super) fn label(self) -> String {
        format!("kbs/v0 {}", self.name())
    }

    pub(super) fn from_label(label: &str) -> Option<Self> {
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
}
