//! Init-data: the document a TEE was launched with, checked against the
//! launch binding (HOST_DATA, MRCONFIGID).

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::error::Error;
use crate::evidence::Claims;
use crate::reason::ReasonCode;

use super::MAX_INIT_DATA;
use super::session::CocoTee;

#[derive(Deserialize)]
pub(super) struct InitData {
    #[allow(dead_code)]
    format: String,
    body: String,
}

/// Checks init-data against the launch binding: its digest, with the
/// algorithm it names, truncated or zero-padded to the field's size, must
/// equal HOST_DATA (SNP) or MRCONFIGID (TDX). The sample TEE has no such
/// field; its claim takes the digest.
pub(super) fn check_init_data(init_data: &InitData, claims: &mut Claims, tee: CocoTee) -> Result<(), Error> {
    if init_data.body.len() > MAX_INIT_DATA {
        return Err(crate::evidence::EvidenceError::TooLarge { len: init_data.body.len(), max: MAX_INIT_DATA }.into());
    }
    let algorithm = init_data_algorithm(&init_data.body)?;
    let body = init_data.body.as_bytes();
    let digest = match algorithm.as_str() {
        "sha256" => Sha256::digest(body).to_vec(),
        "sha384" => Sha384::digest(body).to_vec(),
        "sha512" => Sha512::digest(body).to_vec(),
        _ => return Err(Error::InvalidRequest("init-data algorithm must be sha256, sha384 or sha512".into())),
    };
    let size = match tee {
        CocoTee::Sample => 32,
        _ => claims.init_data_digest.len() / 2,
    };
    let mut bound = vec![0u8; size];
    for (slot, byte) in bound.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    if tee == CocoTee::Sample {
        claims.init_data_digest = hex::encode(&bound);
        return Ok(());
    }
    if hex::encode(&bound) != claims.init_data_digest {
        return Err(Error::Denied {
            code: ReasonCode::PolicyDenied,
            reasons: vec!["init_data_mismatch: init-data digest is not the launch's HOST_DATA/MRCONFIGID".into()],
        });
    }
    Ok(())
}

/// The `algorithm` an init-data document names (TOML or JSON), lowercase
/// and without dashes. Public for the fuzz target of the CoCo parsers.
pub fn init_data_algorithm(body: &str) -> Result<String, Error> {
    let bad = || Error::InvalidRequest("init-data has no algorithm".into());
    let value: Option<String> = match toml::from_str::<toml::Table>(body) {
        Ok(table) => table.get("algorithm").and_then(|v| v.as_str()).map(str::to_owned),
        Err(_) => serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("algorithm").and_then(Value::as_str).map(str::to_owned)),
    };
    Ok(value.ok_or_else(bad)?.to_ascii_lowercase().replace('-', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_data_algorithm_from_toml_and_json() {
        assert_eq!(init_data_algorithm("algorithm = \"sha384\"\nversion = \"0.1.0\"\n").unwrap(), "sha384");
        assert_eq!(init_data_algorithm(r#"{"algorithm": "SHA-256"}"#).unwrap(), "sha256");
        assert!(init_data_algorithm("version = 1").is_err());
    }
}
