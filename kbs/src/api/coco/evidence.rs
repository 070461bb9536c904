//! CoCo evidence shapes, decoded into the broker's [`EvidenceInput`].
//!
//! - `snp`: `{"attestation_report": <report>, "cert_chain": [<entry>] | null}`
//!   as the guest attester serializes them with the `sev` crate: the report
//!   is a JSON object of its fields (byte arrays as arrays of numbers, TCB
//!   versions as `{fmc?, bootloader, tee, snp, microcode}`, the signature as
//!   `{r, s}` in the report's little-endian layout), and each certificate
//!   entry is `{"cert_type": "VCEK" | "VLEK" | "ASK" | "ARK" | .., "data":
//!   [DER bytes]}`. The report is rebuilt byte for byte in the layout of
//!   the SEV-SNP ABI (Table 23, ATTESTATION_REPORT) with reserved fields
//!   zero, and handed to the same verifier as the gRPC path, which checks
//!   the signature over those bytes: a field altered in the JSON fails it.
//! - `tdx`: `{"quote": <standard base64>, "cc_eventlog": <base64> | null}`.
//! - `sample` (insecure dev mode only): `{"svn": "..", "report_data": <base64>}`.
//! - NVIDIA GPUs, in `additional_evidence` (a JSON object string, keyed by
//!   TEE name as guest-components writes it): `{"nvidia":
//!   {"device_evidence_list": [{"arch", "uuid", "evidence": <base64 SPDM
//!   report>, "certificate": <base64 PEM chain>}]}}`. `arch` and `uuid` are
//!   hints and not used; the verifier takes the device from its
//!   certificates.
//!
//! Every size is capped before anything is allocated from it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::Value;

use crate::evidence::EvidenceError;
use crate::evidence::anchors::Generation;
use crate::evidence::anchors::MAX_CERT_LEN;
use crate::evidence::certtable::{CertKind, CertTable};
use crate::evidence::gpu::{chain as gpu_chain, spdm};
use crate::evidence::snp::{REPORT_LEN, TcbVersion};
use crate::evidence::tdx::MAX_QUOTE_LEN;
use crate::release::{EvidenceInput, GpuInput, SnpCerts};

/// Most certificate entries accepted in an SNP `cert_chain`.
pub const MAX_CERT_ENTRIES: usize = 8;

fn malformed(what: &str) -> EvidenceError {
    EvidenceError::Malformed(format!("CoCo evidence: {what}"))
}

#[derive(Deserialize)]
struct SnpEvidenceJson {
    attestation_report: SnpReportJson,
    #[serde(default)]
    cert_chain: Option<Vec<CertEntryJson>>,
}

/// The 8-byte TCB_VERSION of a CoCo TCB object, in the layout of
/// [`TcbVersion::encode`]: with an FMC SPL, Turin's (and later); without,
/// Milan's and Genoa's.
fn tcb_bytes(tcb: &TcbVersion) -> [u8; 8] {
    let layout = if tcb.fmc.is_some() { Generation::Turin } else { Generation::Milan };
    tcb.encode(layout).0
}

#[derive(Deserialize)]
struct VersionJson {
    major: u8,
    minor: u8,
    build: u8,
}

#[derive(Deserialize)]
struct SignatureJson {
    r: Vec<u8>,
    s: Vec<u8>,
}

#[derive(Deserialize)]
struct SnpReportJson {
    version: u32,
    guest_svn: u32,
    policy: u64,
    family_id: Vec<u8>,
    image_id: Vec<u8>,
    vmpl: u32,
    sig_algo: u32,
    current_tcb: TcbVersion,
    plat_info: u64,
    key_info: u32,
    report_data: Vec<u8>,
    measurement: Vec<u8>,
    host_data: Vec<u8>,
    id_key_digest: Vec<u8>,
    author_key_digest: Vec<u8>,
    report_id: Vec<u8>,
    report_id_ma: Vec<u8>,
    reported_tcb: TcbVersion,
    #[serde(default)]
    cpuid_fam_id: Option<u8>,
    #[serde(default)]
    cpuid_mod_id: Option<u8>,
    #[serde(default)]
    cpuid_step: Option<u8>,
    chip_id: Vec<u8>,
    committed_tcb: TcbVersion,
    current: VersionJson,
    committed: VersionJson,
    launch_tcb: TcbVersion,
    #[serde(default)]
    launch_mit_vector: Option<u64>,
    #[serde(default)]
    current_mit_vector: Option<u64>,
    signature: SignatureJson,
}

/// TDX evidence: other members (`cc_eventlog`) are not read.
#[derive(Deserialize)]
struct Quoted {
    quote: String,
}

/// The sample TEE's evidence: other members (`svn`) are not read.
#[derive(Deserialize)]
struct SampleJson {
    report_data: String,
}

#[derive(Deserialize)]
struct CertEntryJson {
    cert_type: Value,
    data: Vec<u8>,
}

/// Writes `bytes` at `offset`, which must be exactly `len` long.
fn put(report: &mut [u8], offset: usize, len: usize, bytes: &[u8], field: &str) -> Result<(), EvidenceError> {
    if bytes.len() != len {
        return Err(malformed(&format!("attestation_report.{field} must be {len} bytes")));
    }
    report.get_mut(offset..offset + len).ok_or_else(|| malformed("report layout"))?.copy_from_slice(bytes);
    Ok(())
}

impl SnpReportJson {
    /// The report in the SEV-SNP ABI layout (offsets from Table 23).
    fn to_bytes(&self) -> Result<Vec<u8>, EvidenceError> {
        let mut r = vec![0u8; REPORT_LEN];
        put(&mut r, 0x00, 4, &self.version.to_le_bytes(), "version")?;
        put(&mut r, 0x04, 4, &self.guest_svn.to_le_bytes(), "guest_svn")?;
        put(&mut r, 0x08, 8, &self.policy.to_le_bytes(), "policy")?;
        put(&mut r, 0x10, 16, &self.family_id, "family_id")?;
        put(&mut r, 0x20, 16, &self.image_id, "image_id")?;
        put(&mut r, 0x30, 4, &self.vmpl.to_le_bytes(), "vmpl")?;
        put(&mut r, 0x34, 4, &self.sig_algo.to_le_bytes(), "sig_algo")?;
        put(&mut r, 0x38, 8, &tcb_bytes(&self.current_tcb), "current_tcb")?;
        put(&mut r, 0x40, 8, &self.plat_info.to_le_bytes(), "plat_info")?;
        put(&mut r, 0x48, 4, &self.key_info.to_le_bytes(), "key_info")?;
        put(&mut r, 0x50, 64, &self.report_data, "report_data")?;
        put(&mut r, 0x90, 48, &self.measurement, "measurement")?;
        put(&mut r, 0xC0, 32, &self.host_data, "host_data")?;
        put(&mut r, 0xE0, 48, &self.id_key_digest, "id_key_digest")?;
        put(&mut r, 0x110, 48, &self.author_key_digest, "author_key_digest")?;
        put(&mut r, 0x140, 32, &self.report_id, "report_id")?;
        put(&mut r, 0x160, 32, &self.report_id_ma, "report_id_ma")?;
        put(&mut r, 0x180, 8, &tcb_bytes(&self.reported_tcb), "reported_tcb")?;
        let cpuid = [self.cpuid_fam_id, self.cpuid_mod_id, self.cpuid_step];
        if self.version >= 3 {
            let [f, m, s] = cpuid;
            put(&mut r, 0x188, 3, &[f.unwrap_or(0), m.unwrap_or(0), s.unwrap_or(0)], "cpuid")?;
        } else if cpuid.iter().any(|c| c.is_some_and(|v| v != 0)) {
            return Err(malformed("CPUID fields in a version 2 report"));
        }
        put(&mut r, 0x1A0, 64, &self.chip_id, "chip_id")?;
        put(&mut r, 0x1E0, 8, &tcb_bytes(&self.committed_tcb), "committed_tcb")?;
        put(&mut r, 0x1E8, 3, &[self.current.build, self.current.minor, self.current.major], "current")?;
        put(&mut r, 0x1EC, 3, &[self.committed.build, self.committed.minor, self.committed.major], "committed")?;
        put(&mut r, 0x1F0, 8, &tcb_bytes(&self.launch_tcb), "launch_tcb")?;
        if self.version >= 5 {
            put(&mut r, 0x1F8, 8, &self.launch_mit_vector.unwrap_or(0).to_le_bytes(), "launch_mit_vector")?;
            put(&mut r, 0x200, 8, &self.current_mit_vector.unwrap_or(0).to_le_bytes(), "current_mit_vector")?;
        } else if self.launch_mit_vector.is_some_and(|v| v != 0) || self.current_mit_vector.is_some_and(|v| v != 0) {
            return Err(malformed("mitigation vectors in a report before version 5"));
        }
        put(&mut r, 0x2A0, 72, &self.signature.r, "signature.r")?;
        put(&mut r, 0x2E8, 72, &self.signature.s, "signature.s")?;
        Ok(r)
    }
}

fn cert_kind(cert_type: &Value) -> Result<Option<CertKind>, EvidenceError> {
    match cert_type {
        Value::String(s) => Ok(match s.as_str() {
            "VCEK" => Some(CertKind::Vcek),
            "VLEK" => Some(CertKind::Vlek),
            "ASK" | "ASVK" => Some(CertKind::Ask),
            "ARK" => Some(CertKind::Ark),
            // CRLs, empty and unknown entries are not used.
            _ => None,
        }),
        Value::Object(_) => Ok(None),
        _ => Err(malformed("cert_chain entry has a bad cert_type")),
    }
}

/// Decodes `tee: "snp"` evidence from its JSON text, straight into the
/// report's fields and the certificates' bytes (no JSON tree is built for
/// the arrays of numbers that carry them).
pub fn snp(evidence: &str) -> Result<EvidenceInput, EvidenceError> {
    let parsed: SnpEvidenceJson = serde_json::from_str(evidence).map_err(|e| malformed(&format!("snp: {e}")))?;
    let report = parsed.attestation_report.to_bytes()?;
    let entries = parsed.cert_chain.unwrap_or_default();
    if entries.len() > MAX_CERT_ENTRIES {
        return Err(EvidenceError::TooLarge { len: entries.len(), max: MAX_CERT_ENTRIES });
    }
    // The certificates go to the verifier decoded: there is no firmware
    // table here to rebuild and parse again.
    let mut certs = CertTable::default();
    for entry in entries {
        if entry.data.len() > MAX_CERT_LEN {
            return Err(EvidenceError::TooLarge { len: entry.data.len(), max: MAX_CERT_LEN });
        }
        if let Some(kind) = cert_kind(&entry.cert_type)? {
            certs.insert(kind, entry.data).map_err(|_| malformed("cert_chain repeats a certificate type"))?;
        }
    }
    Ok(EvidenceInput::Snp { report, certs: SnpCerts::Decoded(certs) })
}

/// Decodes `tee: "tdx"` evidence from its JSON text: the quote only (the
/// event log is not part of the signed evidence and is not used for
/// release decisions).
pub fn tdx(evidence: &str) -> Result<EvidenceInput, EvidenceError> {
    let parsed: Quoted = serde_json::from_str(evidence).map_err(|_| malformed("tdx: no quote"))?;
    let quote = parsed.quote.as_str();
    if quote.len() > MAX_QUOTE_LEN.div_ceil(3) * 4 + 4 {
        return Err(EvidenceError::TooLarge { len: quote.len(), max: MAX_QUOTE_LEN });
    }
    let quote = STANDARD
        .decode(quote)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(quote))
        .map_err(|_| malformed("tdx: quote is not base64"))?;
    Ok(EvidenceInput::Tdx { quote })
}

/// The NVIDIA devices of CoCo `additional_evidence`, in their order; `None`
/// when it names none (empty, not a JSON object, or without an `nvidia`
/// entry: other additional evidence is bound but not used). An `nvidia`
/// entry must have the shape above; sizes are capped before decoding.
pub fn nvidia_devices(additional_evidence: &str) -> Result<Option<Vec<GpuInput>>, EvidenceError> {
    if additional_evidence.is_empty() {
        return Ok(None);
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(additional_evidence) else {
        return Ok(None);
    };
    let Some(nvidia) = map.get("nvidia") else {
        return Ok(None);
    };
    let list = nvidia
        .get("device_evidence_list")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("nvidia: no device_evidence_list"))?;
    if list.len() > kbs_proto::MAX_DEVICES {
        return Err(crate::evidence::gpu::GpuError::TooLarge {
            what: "device list",
            len: list.len(),
            max: kbs_proto::MAX_DEVICES,
        }
        .into());
    }
    let field = |device: &Value, name: &str, max: usize| -> Result<Vec<u8>, EvidenceError> {
        let text = device
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(&format!("nvidia: a device has no {name}")))?;
        if text.len() > max.div_ceil(3) * 4 + 4 {
            return Err(EvidenceError::TooLarge { len: text.len(), max });
        }
        STANDARD.decode(text).map_err(|_| malformed(&format!("nvidia: {name} is not base64")))
    };
    list.iter()
        .map(|device| {
            Ok(GpuInput {
                report: field(device, "evidence", spdm::MAX_REPORT_LEN)?,
                cert_chain: field(device, "certificate", gpu_chain::MAX_CHAIN_LEN)?,
                ocsp: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The sample TEE's evidence, from its JSON text: its claimed report_data
/// (unsigned).
pub fn sample_report_data(evidence: &str) -> Result<Vec<u8>, EvidenceError> {
    let parsed: SampleJson = serde_json::from_str(evidence).map_err(|_| malformed("sample: no report_data"))?;
    let rd = parsed.report_data.as_str();
    if rd.len() > 128 {
        return Err(EvidenceError::TooLarge { len: rd.len(), max: 128 });
    }
    let bytes = STANDARD.decode(rd).map_err(|_| malformed("sample: report_data is not base64"))?;
    if bytes.len() > 64 {
        return Err(malformed("sample: report_data longer than 64 bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nvidia_devices_decode_from_additional_evidence() {
        assert_eq!(nvidia_devices("").unwrap(), None);
        assert_eq!(nvidia_devices("not json").unwrap(), None);
        assert_eq!(nvidia_devices(r#"{"tpm": {}}"#).unwrap(), None);
        let one = json!({"nvidia": {"device_evidence_list": [
            {"arch": "HOPPER", "uuid": "GPU-1", "evidence": STANDARD.encode(b"report"),
             "certificate": STANDARD.encode(b"chain")}]}});
        let devices = nvidia_devices(&one.to_string()).unwrap().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!((devices[0].report.as_slice(), devices[0].cert_chain.as_slice()), (&b"report"[..], &b"chain"[..]));
        for bad in [
            json!({"nvidia": {}}),
            json!({"nvidia": {"device_evidence_list": [{"evidence": "AA=="}]}}),
            json!({"nvidia": {"device_evidence_list": [{"evidence": "!!", "certificate": "AA=="}]}}),
        ] {
            assert!(matches!(nvidia_devices(&bad.to_string()), Err(EvidenceError::Malformed(_))), "{bad}");
        }
        let many = json!({"nvidia": {"device_evidence_list": vec![json!({}); 17]}});
        assert_eq!(
            nvidia_devices(&many.to_string()).unwrap_err().reason(),
            crate::reason::ReasonCode::EvidenceTooLarge
        );
        let huge = json!({"nvidia": {"device_evidence_list": [
            {"evidence": "A".repeat(20_000), "certificate": "AA=="}]}});
        assert!(matches!(nvidia_devices(&huge.to_string()), Err(EvidenceError::TooLarge { .. })));
    }

    fn tcb(fmc: Option<u8>) -> Value {
        json!({"fmc": fmc, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 4})
    }

    fn report_json(version: u32) -> Value {
        json!({
            "version": version, "guest_svn": 7, "policy": 0x30000u64,
            "family_id": vec![1u8; 16], "image_id": vec![2u8; 16], "vmpl": 0, "sig_algo": 1,
            "current_tcb": tcb(None), "plat_info": 3, "key_info": 0,
            "report_data": vec![9u8; 64], "measurement": vec![0x5au8; 48], "host_data": vec![0u8; 32],
            "id_key_digest": vec![0u8; 48], "author_key_digest": vec![0u8; 48],
            "report_id": vec![0u8; 32], "report_id_ma": vec![0xffu8; 32], "reported_tcb": tcb(None),
            "cpuid_fam_id": 0x19, "cpuid_mod_id": 0x11, "cpuid_step": 1,
            "chip_id": vec![0xc1u8; 64], "committed_tcb": tcb(None),
            "current": {"major": 1, "minor": 55, "build": 21}, "committed": {"major": 1, "minor": 55, "build": 21},
            "launch_tcb": tcb(None), "launch_mit_vector": null, "current_mit_vector": null,
            "signature": {"r": vec![0xaau8; 72], "s": vec![0xbbu8; 72]},
        })
    }

    #[test]
    fn snp_report_layout() {
        let ev = json!({"attestation_report": report_json(3), "cert_chain": [
            {"cert_type": "VCEK", "data": [48, 1, 2]},
            {"cert_type": "CRL", "data": [1]},
            {"cert_type": {"OTHER": "00000000-0000-0000-0000-000000000001"}, "data": [1]},
        ]});
        let EvidenceInput::Snp { report, certs: SnpCerts::Decoded(table) } = snp(&ev.to_string()).unwrap() else {
            panic!()
        };
        assert_eq!(report.len(), REPORT_LEN);
        assert_eq!(&report[0..4], &3u32.to_le_bytes());
        assert_eq!(&report[0x08..0x10], &0x30000u64.to_le_bytes());
        assert_eq!(&report[0x38..0x40], &[1, 2, 0, 0, 0, 0, 3, 4]);
        assert_eq!(&report[0x50..0x90], &[9u8; 64]);
        assert_eq!(&report[0x90..0xC0], &[0x5au8; 48]);
        assert_eq!(&report[0x188..0x18B], &[0x19, 0x11, 1]);
        assert_eq!(&report[0x1E8..0x1EC], &[21, 55, 1, 0]);
        assert_eq!(&report[0x2A0..0x2E8], &[0xaau8; 72]);
        assert_eq!(&report[0x2E8..0x330], &[0xbbu8; 72]);
        assert!(report[0x330..].iter().all(|b| *b == 0));
        assert_eq!(table.vcek.as_deref(), Some(&[48u8, 1, 2][..]));
        assert!(table.vlek.is_none() && table.ask.is_none() && table.ark.is_none());
    }

    #[test]
    fn turin_tcb_layout_follows_fmc() {
        let mut r = report_json(5);
        r["reported_tcb"] = tcb(Some(8));
        r["launch_mit_vector"] = json!(5);
        let EvidenceInput::Snp { report, .. } = snp(&json!({"attestation_report": r}).to_string()).unwrap() else {
            panic!()
        };
        assert_eq!(&report[0x180..0x188], &[8, 1, 2, 3, 0, 0, 0, 4]);
        assert_eq!(&report[0x1F8..0x200], &5u64.to_le_bytes());
    }

    #[test]
    fn malformed_snp_is_refused() {
        let mut r = report_json(2);
        r["measurement"] = json!(vec![0u8; 47]);
        assert!(matches!(snp(&json!({"attestation_report": r}).to_string()), Err(EvidenceError::Malformed(_))));
        let r = report_json(2);
        assert!(matches!(snp(&json!({"attestation_report": r}).to_string()), Err(EvidenceError::Malformed(_))));
        assert!(snp(&json!({"report": 1}).to_string()).is_err());
        let many: Vec<Value> = (0..9).map(|_| json!({"cert_type": "ARK", "data": [1]})).collect();
        let ev = json!({"attestation_report": report_json(3), "cert_chain": many});
        assert!(matches!(snp(&ev.to_string()), Err(EvidenceError::TooLarge { .. })));
        let twice = json!({"attestation_report": report_json(3), "cert_chain": [
            {"cert_type": "ARK", "data": [1]}, {"cert_type": "ARK", "data": [2]}]});
        assert!(snp(&twice.to_string()).is_err());
        // A member given twice is ambiguous, and refused rather than read
        // one way here and another way by someone else.
        let text = json!({"attestation_report": report_json(3)}).to_string();
        let again = text.replacen(r#""vmpl":0"#, r#""vmpl":0,"vmpl":1"#, 1);
        assert_ne!(again, text);
        assert!(matches!(snp(&again), Err(EvidenceError::Malformed(_))));
        // Bytes out of range, of the wrong type, or not JSON at all.
        for bad in [
            text.replacen(r#""measurement":[90"#, r#""measurement":[256"#, 1),
            text.replacen(r#""measurement":[90"#, r#""measurement":[-1"#, 1),
            text.replacen(r#""measurement":[90"#, r#""measurement":["Z""#, 1),
            text.replacen(r#""measurement":[90"#, r#""measurement":[9.5"#, 1),
            text[..text.len() / 2].to_owned(),
            "null".to_owned(),
            "[]".to_owned(),
            String::new(),
        ] {
            assert_ne!(bad, text);
            assert!(matches!(snp(&bad), Err(EvidenceError::Malformed(_))), "{bad:.60}");
        }
    }

    #[test]
    fn tdx_and_sample() {
        let EvidenceInput::Tdx { quote } =
            tdx(&json!({"quote": STANDARD.encode([1, 2, 3]), "cc_eventlog": null}).to_string()).unwrap()
        else {
            panic!()
        };
        assert_eq!(quote, vec![1, 2, 3]);
        assert!(tdx(&json!({"quote": "%%%"}).to_string()).is_err());
        assert!(tdx(&json!({"quote": "A".repeat(200_000)}).to_string()).is_err());
        assert_eq!(
            sample_report_data(&json!({"svn": "1", "report_data": STANDARD.encode([7u8; 48])}).to_string()).unwrap(),
            vec![7u8; 48]
        );
        assert!(
            sample_report_data(&json!({"svn": "1", "report_data": STANDARD.encode([7u8; 65])}).to_string()).is_err()
        );
        // Not an object with the member, or not JSON: malformed.
        for bad in ["null", "[]", r#""quote""#, r#"{"quote": 1}"#, r#"{"report_data": null}"#, "{", ""] {
            assert!(matches!(tdx(bad), Err(EvidenceError::Malformed(_))), "{bad}");
            assert!(matches!(sample_report_data(bad), Err(EvidenceError::Malformed(_))), "{bad}");
        }
    }
}
