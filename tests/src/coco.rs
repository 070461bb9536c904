//! The CoCo guest's side of the evidence binding, as the end-to-end tests
//! and `kbs-bench` compute it:
//!
//! ```text
//! report_data = SHA-384(JCS({"additional-evidence", "nonce", "tee-pubkey"})), zero-padded to 64 bytes
//! ```
//!
//! Written here from RFC 8785 and the trustee protocol, independently of the
//! broker's implementation (`kbs::api::coco`), so that the tests check the
//! broker against a second reading of the rules.

use std::fmt;

use serde_json::{Value, json};
use sha2::{Digest, Sha384};

/// The value is not runtime data: it holds something other than strings
/// and objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotRuntimeData(String);

impl fmt::Display for NotRuntimeData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runtime data holds only strings and objects, not {}", self.0)
    }
}

impl std::error::Error for NotRuntimeData {}

/// RFC 8785 canonical JSON of runtime data (strings and objects only).
pub fn jcs(v: &Value) -> Result<Vec<u8>, NotRuntimeData> {
    fn string(s: &str) -> Result<String, NotRuntimeData> {
        serde_json::to_string(s).map_err(|e| NotRuntimeData(e.to_string()))
    }
    fn write(v: &Value, out: &mut String) -> Result<(), NotRuntimeData> {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&string(k)?);
                    out.push(':');
                    write(v, out)?;
                }
                out.push('}');
                Ok(())
            }
            Value::String(s) => {
                out.push_str(&string(s)?);
                Ok(())
            }
            other => Err(NotRuntimeData(other.to_string())),
        }
    }
    let mut out = String::new();
    write(v, &mut out)?;
    Ok(out.into_bytes())
}

/// The report_data a CoCo guest binds with the SHA-384 hash the broker
/// selects: `SHA-384(JCS({"additional-evidence", "nonce", "tee-pubkey"}))`,
/// zero-padded to 64 bytes.
pub fn report_data(nonce: &str, tee_pubkey: &Value, additional_evidence: &str) -> Result<[u8; 64], NotRuntimeData> {
    let runtime = json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    let digest = Sha384::digest(jcs(&runtime)?);
    let mut out = [0u8; 64];
    for (o, d) in out.iter_mut().zip(digest) {
        *o = d;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_is_the_sha384_of_the_sorted_runtime_data_zero_padded() {
        let rd = report_data("n", &json!({"y": "2", "x": "1"}), "").unwrap_or([0xff; 64]);
        let canonical = r#"{"additional-evidence":"","nonce":"n","tee-pubkey":{"x":"1","y":"2"}}"#;
        assert_eq!(&rd[..48], Sha384::digest(canonical.as_bytes()).as_slice());
        assert_eq!(rd[48..], [0u8; 16]);
    }

    #[test]
    fn numbers_are_not_runtime_data() {
        assert!(jcs(&json!({"a": 1})).is_err());
    }
}
