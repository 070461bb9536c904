//! Reference values: named JSON objects that policies read as
//! `data.reference_values[name]`.
//!
//! The keys the shipped policies read are checked (and hex normalized to
//! lowercase) when a set is stored, so a typo is refused at upload rather
//! than silently never matching. Other keys are kept as given, for custom
//! policies.
//!
//! | key | shape |
//! |---|---|
//! | `measurements` | array of 96-hex-digit strings (SNP MEASUREMENT or TDX MRTD) |
//! | `tdx_rtmrs` | array of `[rtmr0, rtmr1, rtmr2, rtmr3]`, each 96 hex digits |
//! | `snp_min_tcb` | `{generation: {component: 0..=255}}`, generation `milan`/`genoa`/`turin`, component `bootloader`/`tee`/`snp`/`microcode`/`fmc` |
//! | `tdx_tcb_statuses` | array of Intel TCB status names (`UpToDate`, ...; [`crate::evidence::tdx::TCB_STATUSES`]) |
//! | `init_data_digests` | array of hex strings (up to 64 bytes) |

use serde_json::{Map, Value};

use crate::evidence::tdx::{parse_tcb_status, tcb_status_names};
use crate::store::normalize_measurement;

/// Largest stored set, in bytes of JSON.
pub const MAX_REFVALS_BYTES: usize = 256 * 1024;

const GENERATIONS: [&str; 3] = ["milan", "genoa", "turin"];
const TCB_COMPONENTS: [&str; 5] = ["bootloader", "tee", "snp", "microcode", "fmc"];

/// Checks a set's name: one name segment, `[A-Za-z0-9._-]{1,64}`.
pub fn validate_set_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(format!("reference value set name {name:?} must match [A-Za-z0-9._-]{{1,64}}")) }
}

/// Parses, checks and normalizes a set; returns it as canonical JSON.
pub fn normalize(json: &str) -> Result<Value, String> {
    if json.len() > MAX_REFVALS_BYTES {
        return Err(format!("reference values are {} bytes, at most {MAX_REFVALS_BYTES}", json.len()));
    }
    let value: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("reference values must be a JSON object".into());
    };
    if let Some(v) = object.get_mut("measurements") {
        *v = hex_list(v, "measurements", normalize_measurement)?;
    }
    if let Some(v) = object.get_mut("init_data_digests") {
        *v = hex_list(v, "init_data_digests", |s| {
            let lower = s.trim().to_ascii_lowercase();
            (!lower.is_empty()
                && lower.len() <= 128
                && lower.len() % 2 == 0
                && lower.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(lower)
        })?;
    }
    if let Some(v) = object.get_mut("tdx_rtmrs") {
        let Value::Array(sets) = v else { return Err("tdx_rtmrs must be an array of [rtmr0..rtmr3]".into()) };
        for set in sets.iter_mut() {
            let normalized = hex_list(set, "tdx_rtmrs", normalize_measurement)?;
            if normalized.as_array().map(Vec::len) != Some(4) {
                return Err("each tdx_rtmrs entry must list exactly 4 RTMRs".into());
            }
            *set = normalized;
        }
    }
    if let Some(v) = object.get("snp_min_tcb") {
        check_min_tcb(v)?;
    }
    if let Some(v) = object.get("tdx_tcb_statuses") {
        let Value::Array(list) = v else { return Err("tdx_tcb_statuses must be an array of strings".into()) };
        for status in list {
            if status.as_str().and_then(parse_tcb_status).is_none() {
                return Err(format!("tdx_tcb_statuses: {status} is not one of {:?}", tcb_status_names()));
            }
        }
    }
    Ok(Value::Object(object))
}

fn hex_list(v: &Value, key: &str, check: impl Fn(&str) -> Option<String>) -> Result<Value, String> {
    let Value::Array(list) = v else { return Err(format!("{key} must be an array of hex strings")) };
    list.iter()
        .map(|item| {
            item.as_str()
                .and_then(&check)
                .map(Value::String)
                .ok_or_else(|| format!("{key}: {item} is not a valid hex value"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn check_min_tcb(v: &Value) -> Result<(), String> {
    let Value::Object(by_generation) = v else { return Err("snp_min_tcb must be an object".into()) };
    for (generation, tcb) in by_generation {
        if !GENERATIONS.contains(&generation.as_str()) {
            return Err(format!("snp_min_tcb: unknown generation {generation:?} (one of {GENERATIONS:?})"));
        }
        let Value::Object(components) = tcb else {
            return Err(format!("snp_min_tcb.{generation} must be an object"));
        };
        check_components(generation, components)?;
    }
    Ok(())
}

fn check_components(generation: &str, components: &Map<String, Value>) -> Result<(), String> {
    for (component, level) in components {
        if !TCB_COMPONENTS.contains(&component.as_str()) {
            return Err(format!(
                "snp_min_tcb.{generation}: unknown component {component:?} (one of {TCB_COMPONENTS:?})"
            ));
        }
        if level.as_u64().is_none_or(|n| n > 255) {
            return Err(format!("snp_min_tcb.{generation}.{component} must be an integer 0..=255"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_known_keys() {
        let m = "AB".repeat(48);
        let v = normalize(&format!(
            r#"{{"measurements":["{m}"],"snp_min_tcb":{{"milan":{{"snp":23,"microcode":209}}}},
               "tdx_tcb_statuses":["UpToDate"],"custom":{{"x":1}}}}"#
        ))
        .unwrap();
        assert_eq!(v["measurements"][0], "ab".repeat(48));
        assert_eq!(v["custom"]["x"], 1);
    }

    #[test]
    fn accepts_every_intel_tcb_status() {
        // dcap-qvl reports the TD 1.5 relaunch statuses too; a reference set
        // naming them must be accepted, or policies cannot allow them.
        for status in [
            "UpToDate",
            "SWHardeningNeeded",
            "ConfigurationNeeded",
            "ConfigurationAndSWHardeningNeeded",
            "OutOfDate",
            "OutOfDateConfigurationNeeded",
            "Revoked",
            "TDRelaunchAdvised",
            "TDRelaunchAdvisedConfigurationNeeded",
        ] {
            let v = normalize(&format!(r#"{{"tdx_tcb_statuses":["{status}"]}}"#));
            assert_eq!(v.map(|v| v["tdx_tcb_statuses"][0].clone()), Ok(serde_json::json!(status)), "{status}");
        }
    }

    #[test]
    fn refuses_typos() {
        for bad in [
            "[]",
            "not json",
            r#"{"measurements":["zz"]}"#,
            r#"{"measurements":"ab"}"#,
            r#"{"snp_min_tcb":{"milano":{"snp":1}}}"#,
            r#"{"snp_min_tcb":{"milan":{"snpp":1}}}"#,
            r#"{"snp_min_tcb":{"milan":{"snp":256}}}"#,
            r#"{"tdx_tcb_statuses":["uptodate"]}"#,
            r#"{"tdx_rtmrs":[["00"]]}"#,
            r#"{"init_data_digests":["abc"]}"#,
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
        assert!(validate_set_name("prod-llama_1.2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_set_name(bad).is_err(), "{bad:?}");
        }
    }
}
