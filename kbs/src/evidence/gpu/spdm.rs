//! The NVIDIA attestation report: an SPDM 1.1 GET_MEASUREMENTS request
//! followed by the signed MEASUREMENTS response (DMTF DSP0274 1.1,
//! tables 40-45; all integers little-endian), as NVML (GPUs) and NSCQ
//! (NVSwitches) return it.
//!
//! ```text
//! request (37)   0 SPDMVersion 0x11 | 1 Code 0xE0 | 2 Param1 0x01 (sign) | 3 Param2 0xFF (all)
//!                4 Nonce[32] (the verifier's) | 36 SlotID 0
//! response       0 SPDMVersion 0x11 | 1 Code 0x60 | 2 Param1 0 | 3 Param2 (slot) 0
//!                4 NumberOfBlocks | 5 MeasurementRecordLength (u24) | 8 record
//!                then ResponderNonce[32] | OpaqueLength (u16) | OpaqueData | Signature[96]
//! block          Index (1-based) | MeasurementSpecification 0x01 (DMTF) | MeasurementSize (u16)
//!                | DMTF value: Type (u8, bit 7 clear: a digest) | ValueSize (u16) = 48 | SHA-384[48]
//! ```
//!
//! The signature is ECDSA P-384/SHA-384, raw `r || s`, over the request and
//! the response up to the signature. Its offset comes from the parsed
//! lengths, never from the end of the input: real reports captured through
//! some attesters carry a zero byte after it. Up to
//! [`MAX_TRAILING_ZEROS`] zero bytes are tolerated there and reported;
//! anything else after the signature is refused.
//!
//! The opaque data is NVIDIA's: either the legacy TLV list (`type u16,
//! size u16, data`) or, from the drivers of CUDA 13.5 on, the versioned
//! format that starts with the magic `NVDAOD` (a 12-byte header: magic,
//! profile u16 = 0, version major.minor.patch and a zero pad byte; then
//! `type u16, value_type u16, size u16, data` entries). The parser
//! dispatches on the magic. In both, a type may appear once.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use kbs_proto::spdm::{
    CODE_GET_MEASUREMENTS, CODE_MEASUREMENTS, DIGEST_LEN, NVDAOD_MAGIC, REQUEST_LEN, SIGNATURE_LEN, SPDM_VERSION_11,
};
use kbs_proto::spdm::{MEAS_SPEC_DMTF, opaque_type};

use super::GpuError;
use super::reader::Reader;

/// Largest report accepted: NVML's buffer is 8 KiB (`attestationReport[0x2000]`);
/// real reports are 2.1-4.3 KiB.
pub const MAX_REPORT_LEN: usize = 0x2000;

/// Most zero bytes tolerated after the signature (one is observed).
pub const MAX_TRAILING_ZEROS: usize = 8;

/// Largest opaque data accepted (real: 288-579 bytes).
pub const MAX_OPAQUE_LEN: usize = 4096;

/// Most opaque entries accepted (real: 7-17).
pub const MAX_OPAQUE_ENTRIES: usize = 128;

/// Highest versioned opaque format major version understood.
pub const MAX_NVDAOD_MAJOR: u8 = 2;

/// Length of one measurement block with a SHA-384 digest: 4 header bytes,
/// 3 DMTF value header bytes and the digest.
const BLOCK_LEN: usize = 4 + 3 + DIGEST_LEN;

/// A 32-byte SPDM nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GpuNonce(pub [u8; 32]);

impl GpuNonce {
    /// From 64 hex digits.
    pub fn from_hex(hex_str: &str) -> Option<Self> {
        let bytes = hex::decode(hex_str).ok()?;
        Some(Self(<[u8; 32]>::try_from(bytes).ok()?))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The GET_MEASUREMENTS request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementRequest {
    /// The verifier's nonce the device signed over.
    pub nonce: GpuNonce,
}

/// One measurement block: a SHA-384 digest at a 1-based index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// SPDM index, 1-based (RIM index `i` is block `i + 1`).
    pub index: u8,
    /// The DMTF measurement value type (bit 7 clear: a digest).
    pub value_type: u8,
    /// The SHA-384 digest.
    pub digest: [u8; DIGEST_LEN],
}

/// The opaque data's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum OpaqueFormat {
    /// The TLV list without a header (drivers before CUDA 13.5).
    Legacy,
    /// The `NVDAOD` versioned format.
    Versioned {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
        /// Patch version.
        patch: u8,
    },
}

/// One opaque entry, borrowed from the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaqueEntry<'a> {
    /// NVIDIA's opaque data type.
    pub kind: u16,
    /// The versioned format's value type (0 in the legacy format).
    pub value_type: u16,
    /// The value.
    pub data: &'a [u8],
}

/// The opaque data, checked: a known layout, each type at most once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaqueData<'a> {
    /// Which layout it had.
    pub format: OpaqueFormat,
    /// The entries in order.
    pub entries: Vec<OpaqueEntry<'a>>,
}

/// The MEASUREMENTS response, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementResponse<'a> {
    /// The blocks, indices strictly increasing.
    pub blocks: Vec<MeasurementBlock>,
    /// The device's own nonce.
    pub responder_nonce: [u8; 32],
    /// The opaque data.
    pub opaque: OpaqueData<'a>,
    /// The raw `r || s` signature.
    pub signature: [u8; SIGNATURE_LEN],
}

/// A parsed attestation report. Nothing about it is verified yet: the
/// verifier ([`super::GpuVerifier`]) turns it into claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuReport<'a> {
    /// The request.
    pub request: MeasurementRequest,
    /// The response.
    pub response: MeasurementResponse<'a>,
    /// The signed bytes: the request and the response before the signature.
    pub signed: &'a [u8],
    /// Zero bytes after the signature (not signed).
    pub trailing_zeros: usize,
}

impl<'a> GpuReport<'a> {
    /// Parses a report strictly: lengths add up, every cap holds, known
    /// codes and versions, distinct increasing block indices, SHA-384
    /// digests only, a known opaque layout with unique types, and nothing
    /// but up to [`MAX_TRAILING_ZEROS`] zero bytes after the signature.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GpuError> {
        if bytes.len() > MAX_REPORT_LEN {
            return Err(GpuError::TooLarge { what: "report", len: bytes.len(), max: MAX_REPORT_LEN });
        }
        let mut r = Reader::new(bytes);
        let request = parse_request(&mut r)?;
        let response = parse_response_body(&mut r)?;
        let signed_len = r.position();
        let signature = r.array::<SIGNATURE_LEN>("signature")?;
        let trailing = r.rest();
        if trailing.len() > MAX_TRAILING_ZEROS || trailing.iter().any(|b| *b != 0) {
            return Err(GpuError::Malformed(format!("{} unexpected bytes after the signature", trailing.len())));
        }
        let signed = bytes.get(..signed_len).ok_or_else(|| GpuError::Malformed("signed range".into()))?;
        let (blocks, responder_nonce, opaque) = response;
        Ok(Self {
            request,
            response: MeasurementResponse { blocks, responder_nonce, opaque, signature },
            signed,
            trailing_zeros: trailing.len(),
        })
    }

    /// The value of an opaque entry.
    pub fn opaque(&self, kind: u16) -> Option<&'a [u8]> {
        self.response.opaque.entries.iter().find(|e| e.kind == kind).map(|e| e.data)
    }

    /// The FWID the opaque data carries (type 20), if any.
    pub fn fwid(&self) -> Result<Option<[u8; DIGEST_LEN]>, GpuError> {
        self.opaque(opaque_type::FWID)
            .map(|v| <[u8; DIGEST_LEN]>::try_from(v).map_err(|_| bad_opaque("fwid is not 48 bytes")))
            .transpose()
    }

    /// Decodes the opaque fields the claims carry.
    pub fn opaque_fields(&self) -> Result<OpaqueFields, GpuError> {
        let text = |kind: u16, what: &'static str| self.opaque(kind).map(|v| ascii(v, what)).transpose();
        let vbios = match self.opaque(opaque_type::VBIOS_VERSION) {
            None => None,
            // GPUs: 8 bytes, little-endian groups; NVSwitches: ASCII.
            Some(&[b0, b1, b2, b3, b4, 0, 0, 0]) => Some(format!("{b3:02X}.{b2:02X}.{b1:02X}.{b0:02X}.{b4:02X}")),
            Some(v) => Some(ascii(v, "vbios_version")?),
        };
        let opaque_data_version = match self.opaque(opaque_type::OPAQUE_DATA_VERSION) {
            None => None,
            Some(&[a, b]) => Some(u16::from_le_bytes([a, b])),
            Some(_) => return Err(bad_opaque("opaque_data_version is not 2 bytes")),
        };
        let feature = match self.opaque(opaque_type::FEATURE_FLAG) {
            None => None,
            Some(&[a, b]) => Some(match u16::from_le_bytes([a, b]) {
                0 => FeatureFlag::Spt,
                1 => FeatureFlag::Mpt,
                2 => FeatureFlag::Ppcie,
                other => FeatureFlag::Other(other),
            }),
            Some(_) => return Err(bad_opaque("feature_flag is not 2 bytes")),
        };
        let nvdec0 = match self.opaque(opaque_type::NVDEC0_STATUS) {
            None => None,
            Some(&[0xAA]) => Some(Nvdec0::Enabled),
            Some(&[0x55]) => Some(Nvdec0::Disabled),
            Some(_) => return Err(bad_opaque("nvdec0_status is not 0xAA or 0x55")),
        };
        let pdis = match self.opaque(opaque_type::PDI) {
            None => Vec::new(),
            Some(v) if v.len() % 8 == 0 => v.chunks_exact(8).map(hex::encode).collect(),
            Some(_) => return Err(bad_opaque("pdi list is not 8-byte entries")),
        };
        Ok(OpaqueFields {
            driver_version: text(opaque_type::DRIVER_VERSION, "driver_version")?,
            vbios_version: vbios,
            sku: text(opaque_type::SKU, "sku")?,
            chip_sku: text(opaque_type::CHIP_SKU, "chip_sku")?,
            project: text(opaque_type::PROJECT, "project")?,
            project_sku: text(opaque_type::PROJECT_SKU, "project_sku")?,
            chip_info: text(opaque_type::CHIP_INFO, "chip_info")?,
            opaque_data_version,
            feature,
            nvdec0,
            pdis,
        })
    }
}

/// The multi-GPU mode the device runs in (opaque `feature_flag`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureFlag {
    /// Single GPU passthrough.
    Spt,
    /// Multi-GPU protected passthrough.
    Mpt,
    /// Protected PCIe (HGX with NVSwitches).
    Ppcie,
    /// A value this broker does not know.
    Other(u16),
}

/// The NVDEC0 engine status (measurement 35 is skipped when disabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nvdec0 {
    /// 0xAA.
    Enabled,
    /// 0x55.
    Disabled,
}

/// The opaque fields decoded for the claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpaqueFields {
    /// Driver version (type 3), e.g. `550.90.07`.
    pub driver_version: Option<String>,
    /// VBIOS (GPU) or BIOS (NVSwitch) version (type 6), e.g. `96.00.9F.00.01`.
    pub vbios_version: Option<String>,
    /// SKU (type 5).
    pub sku: Option<String>,
    /// Chip SKU (type 15).
    pub chip_sku: Option<String>,
    /// Project (type 17).
    pub project: Option<String>,
    /// Project SKU (type 18).
    pub project_sku: Option<String>,
    /// Chip (type 35, Blackwell on).
    pub chip_info: Option<String>,
    /// Opaque data version (type 34).
    pub opaque_data_version: Option<u16>,
    /// Multi-GPU mode (type 36).
    pub feature: Option<FeatureFlag>,
    /// NVDEC0 status (type 11).
    pub nvdec0: Option<Nvdec0>,
    /// PDIs (type 22): the NVLink peers' on a GPU, its own on an NVSwitch, hex.
    /// (An NVSwitch's list of GPU PDIs, type 26, is left to the topology check.)
    pub pdis: Vec<String>,
}

fn parse_request(r: &mut Reader<'_>) -> Result<MeasurementRequest, GpuError> {
    let version = r.u8("request SPDMVersion")?;
    if version != SPDM_VERSION_11 {
        return Err(GpuError::UnsupportedVersion(format!("request SPDM version {version:#04x}")));
    }
    expect(r.u8("request code")?, CODE_GET_MEASUREMENTS, "request code")?;
    // Param1 bit 0: signature requested; nothing else is defined in 1.1.
    expect(r.u8("request Param1")?, 0x01, "request Param1 (signature requested)")?;
    // Param2 0xFF: all measurements.
    expect(r.u8("request Param2")?, 0xFF, "request Param2 (all measurements)")?;
    let nonce = GpuNonce(r.array::<32>("request nonce")?);
    expect(r.u8("request SlotID")?, 0, "request SlotID")?;
    Ok(MeasurementRequest { nonce })
}

type ResponseBody<'a> = (Vec<MeasurementBlock>, [u8; 32], OpaqueData<'a>);

fn parse_response_body<'a>(r: &mut Reader<'a>) -> Result<ResponseBody<'a>, GpuError> {
    let version = r.u8("response SPDMVersion")?;
    if version != SPDM_VERSION_11 {
        return Err(GpuError::UnsupportedVersion(format!("response SPDM version {version:#04x}")));
    }
    expect(r.u8("response code")?, CODE_MEASUREMENTS, "response code")?;
    // Param1 is reserved when all blocks were requested; Param2 is the slot.
    expect(r.u8("response Param1")?, 0, "response Param1")?;
    expect(r.u8("response Param2")?, 0, "response Param2 (slot)")?;
    let count = r.u8("NumberOfBlocks")?;
    if count == 0 {
        return Err(GpuError::Malformed("no measurement blocks".into()));
    }
    let record_len = r.len_u24("MeasurementRecordLength", usize::from(count) * BLOCK_LEN)?;
    let mut record = r.sub(record_len, "measurement record")?;
    let mut blocks = Vec::with_capacity(usize::from(count));
    let mut last_index = 0u8;
    for _ in 0..count {
        let index = record.u8("block Index")?;
        if index <= last_index {
            return Err(GpuError::Malformed(format!("block index {index} after {last_index}")));
        }
        last_index = index;
        expect(record.u8("block MeasurementSpecification")?, MEAS_SPEC_DMTF, "MeasurementSpecification")?;
        let size = record.len_u16("block MeasurementSize", BLOCK_LEN - 4)?;
        let mut value = record.sub(size, "block measurement")?;
        let value_type = value.u8("DMTFSpecMeasurementValueType")?;
        if value_type & 0x80 != 0 {
            return Err(GpuError::Malformed(format!("block {index} is a raw bit stream, not a digest")));
        }
        let value_len = value.len_u16("DMTFSpecMeasurementValueSize", DIGEST_LEN)?;
        if value_len.get() != DIGEST_LEN {
            return Err(GpuError::Malformed(format!("block {index} is not a SHA-384 digest")));
        }
        let digest = value.array::<DIGEST_LEN>("measurement digest")?;
        if !value.is_empty() {
            return Err(GpuError::Malformed(format!("block {index}: sizes do not add up")));
        }
        blocks.push(MeasurementBlock { index, value_type, digest });
    }
    if !record.is_empty() {
        return Err(GpuError::Malformed("bytes after the last measurement block".into()));
    }
    let responder_nonce = r.array::<32>("responder nonce")?;
    let opaque_len = r.len_u16("OpaqueLength", MAX_OPAQUE_LEN)?;
    let opaque = parse_opaque(r.take(opaque_len.get(), "opaque data")?)?;
    Ok((blocks, responder_nonce, opaque))
}

/// Parses NVIDIA opaque data, dispatching on the `NVDAOD` magic.
pub fn parse_opaque(bytes: &[u8]) -> Result<OpaqueData<'_>, GpuError> {
    if bytes.len() > MAX_OPAQUE_LEN {
        return Err(GpuError::TooLarge { what: "opaque data", len: bytes.len(), max: MAX_OPAQUE_LEN });
    }
    let mut r = Reader::new(bytes);
    let versioned = bytes.starts_with(&NVDAOD_MAGIC);
    let format = if versioned {
        r.take(NVDAOD_MAGIC.len(), "opaque magic")?;
        let profile = r.u16("opaque profile")?;
        let [major, minor, patch, pad] = r.array::<4>("opaque version")?;
        if profile != 0 {
            return Err(GpuError::UnsupportedVersion(format!("opaque data profile {profile}")));
        }
        if pad != 0 {
            return Err(bad_opaque("version padding is not zero"));
        }
        if major > MAX_NVDAOD_MAJOR {
            return Err(GpuError::UnsupportedVersion(format!("opaque data version {major}.{minor}.{patch}")));
        }
        OpaqueFormat::Versioned { major, minor, patch }
    } else {
        OpaqueFormat::Legacy
    };
    let mut entries = Vec::new();
    let mut seen = BTreeSet::new();
    while !r.is_empty() {
        if entries.len() == MAX_OPAQUE_ENTRIES {
            return Err(bad_opaque("too many entries"));
        }
        let kind = r.u16("opaque type")?;
        let value_type = if versioned { r.u16("opaque value type")? } else { 0 };
        let len = r.len_u16("opaque size", MAX_OPAQUE_LEN)?;
        let data = r.take(len.get(), "opaque value")?;
        if !seen.insert(kind) {
            return Err(GpuError::Malformed(format!("opaque type {kind} appears twice")));
        }
        entries.push(OpaqueEntry { kind, value_type, data });
    }
    Ok(OpaqueData { format, entries })
}

fn expect(got: u8, want: u8, what: &'static str) -> Result<(), GpuError> {
    if got == want { Ok(()) } else { Err(GpuError::Malformed(format!("{what}: {got:#04x}, expected {want:#04x}"))) }
}

fn bad_opaque(what: &str) -> GpuError {
    GpuError::Malformed(format!("opaque data: {what}"))
}

/// Printable ASCII with trailing NULs removed.
fn ascii(v: &[u8], what: &'static str) -> Result<String, GpuError> {
    let end = v.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let text = v.get(..end).unwrap_or_default();
    if text.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        Ok(text.iter().map(|b| char::from(*b)).collect())
    } else {
        Err(GpuError::Malformed(format!("opaque data: {what} is not printable ASCII")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_le_bytes().to_vec();
        out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    fn entry(kind: u16, value_type: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_le_bytes().to_vec();
        out.extend_from_slice(&value_type.to_le_bytes());
        out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    fn nvdaod(major: u8, minor: u8) -> Vec<u8> {
        let mut out = NVDAOD_MAGIC.to_vec();
        out.extend_from_slice(&[0, 0, major, minor, 0, 0]);
        out
    }

    /// A report whose structure is right (its signature is not).
    pub(crate) fn synthetic_report(blocks: u8, opaque: &[u8], trailing: &[u8]) -> Vec<u8> {
        let mut out = vec![0x11, 0xE0, 0x01, 0xFF];
        out.extend_from_slice(&[0xA5; 32]);
        out.push(0);
        out.extend_from_slice(&[0x11, 0x60, 0, 0, blocks]);
        let record_len = u32::from(blocks) * 55;
        out.extend_from_slice(&record_len.to_le_bytes()[..3]);
        for i in 1..=blocks {
            out.extend_from_slice(&[i, 1, 51, 0, 1, 48, 0]);
            out.extend_from_slice(&[i; 48]);
        }
        out.extend_from_slice(&[0x5A; 32]);
        out.extend_from_slice(&u16::try_from(opaque.len()).unwrap().to_le_bytes());
        out.extend_from_slice(opaque);
        out.extend_from_slice(&[0x77; 96]);
        out.extend_from_slice(trailing);
        out
    }

    #[test]
    fn legacy_opaque_decodes() {
        let mut opaque = tlv(3, b"550.90.07\0");
        opaque.extend(tlv(6, &[0x00, 0x9f, 0x00, 0x96, 0x01, 0, 0, 0]));
        opaque.extend(tlv(11, &[0x55]));
        opaque.extend(tlv(20, &[7; 48]));
        opaque.extend(tlv(34, &[1, 0]));
        opaque.extend(tlv(36, &[2, 0]));
        let bytes = synthetic_report(3, &opaque, &[]);
        let report = GpuReport::parse(&bytes).unwrap();
        assert_eq!(report.response.blocks.len(), 3);
        assert_eq!(report.response.blocks[2].index, 3);
        assert_eq!(report.response.blocks[2].digest, [3; 48]);
        assert_eq!(report.request.nonce, GpuNonce([0xA5; 32]));
        assert_eq!(report.signed.len(), bytes.len() - 96);
        assert_eq!(report.response.opaque.format, OpaqueFormat::Legacy);
        assert_eq!(report.fwid().unwrap(), Some([7; 48]));
        let f = report.opaque_fields().unwrap();
        assert_eq!(f.driver_version.as_deref(), Some("550.90.07"));
        assert_eq!(f.vbios_version.as_deref(), Some("96.00.9F.00.01"));
        assert_eq!(f.nvdec0, Some(Nvdec0::Disabled));
        assert_eq!(f.opaque_data_version, Some(1));
        assert_eq!(f.feature, Some(FeatureFlag::Ppcie));
    }

    #[test]
    fn versioned_opaque_dispatches_on_the_magic() {
        let mut opaque = nvdaod(2, 0);
        opaque.extend(entry(3, 0x86, b"600.01\0"));
        opaque.extend(entry(20, 0, &[9; 48]));
        let parsed = parse_opaque(&opaque).unwrap();
        assert_eq!(parsed.format, OpaqueFormat::Versioned { major: 2, minor: 0, patch: 0 });
        assert_eq!(parsed.entries.len(), 2);
        assert_eq!(parsed.entries[0].value_type, 0x86);
        let bytes = synthetic_report(1, &opaque, &[]);
        let report = GpuReport::parse(&bytes).unwrap();
        assert_eq!(report.opaque_fields().unwrap().driver_version.as_deref(), Some("600.01"));
        assert_eq!(report.fwid().unwrap(), Some([9; 48]));

        // Header only: no entries.
        assert!(parse_opaque(&nvdaod(0, 2)).unwrap().entries.is_empty());
        // Unknown major, non-zero profile, non-zero pad, short header.
        assert!(matches!(parse_opaque(&nvdaod(3, 0)), Err(GpuError::UnsupportedVersion(_))));
        let mut profile = nvdaod(2, 0);
        profile[6] = 1;
        assert!(matches!(parse_opaque(&profile), Err(GpuError::UnsupportedVersion(_))));
        let mut pad = nvdaod(2, 0);
        pad[11] = 1;
        assert!(matches!(parse_opaque(&pad), Err(GpuError::Malformed(_))));
        assert!(matches!(parse_opaque(&nvdaod(2, 0)[..10]), Err(GpuError::Malformed(_))));
        // A legacy parse of versioned bytes would read a huge entry: the
        // dispatch must not fall back to it.
        let mut legacy_looking = nvdaod(2, 0);
        legacy_looking.extend(tlv(3, b"x"));
        assert!(parse_opaque(&legacy_looking).is_err());
    }

    #[test]
    fn duplicate_opaque_types_are_refused() {
        let mut opaque = tlv(3, b"1");
        opaque.extend(tlv(3, b"2"));
        assert!(matches!(parse_opaque(&opaque), Err(GpuError::Malformed(m)) if m.contains("twice")));
        let mut opaque = nvdaod(2, 0);
        opaque.extend(entry(20, 0, &[1; 48]));
        opaque.extend(entry(20, 1, &[2; 48]));
        assert!(parse_opaque(&opaque).is_err());
    }

    #[test]
    fn trailing_bytes_are_explicit() {
        let one_zero = synthetic_report(2, &tlv(3, b"1"), &[0]);
        assert_eq!(GpuReport::parse(&one_zero).unwrap().trailing_zeros, 1);
        let max = synthetic_report(2, &tlv(3, b"1"), &[0; MAX_TRAILING_ZEROS]);
        assert_eq!(GpuReport::parse(&max).unwrap().trailing_zeros, MAX_TRAILING_ZEROS);
        let too_many = synthetic_report(2, &tlv(3, b"1"), &[0; MAX_TRAILING_ZEROS + 1]);
        assert!(GpuReport::parse(&too_many).is_err());
        let non_zero = synthetic_report(2, &tlv(3, b"1"), &[1]);
        assert!(GpuReport::parse(&non_zero).is_err());
    }

    #[test]
    fn structure_is_strict() {
        let good = synthetic_report(2, &[], &[]);
        assert!(GpuReport::parse(&good).is_ok());
        let mutate = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            GpuReport::parse(&b).map(|_| ())
        };
        assert!(matches!(mutate(0, 0x12), Err(GpuError::UnsupportedVersion(_))));
        assert!(mutate(1, 0xE1).is_err());
        assert!(mutate(2, 0x00).is_err());
        assert!(mutate(3, 0x01).is_err());
        assert!(mutate(36, 1).is_err());
        assert!(matches!(mutate(37, 0x10), Err(GpuError::UnsupportedVersion(_))));
        assert!(mutate(40, 1).is_err());
        // Zero blocks, a block count the record does not hold.
        assert!(mutate(41, 0).is_err());
        assert!(mutate(41, 3).is_err());
        // Block 2 with index 1 (not increasing), wrong spec, raw bit stream, 32-byte digest.
        let block2 = 37 + 8 + 55;
        assert!(mutate(block2, 1).is_err());
        assert!(mutate(block2 + 1, 2).is_err());
        assert!(mutate(block2 + 4, 0x81).is_err());
        assert!(mutate(block2 + 5, 32).is_err());
        // Oversize input.
        assert!(matches!(GpuReport::parse(&vec![0; MAX_REPORT_LEN + 1]), Err(GpuError::TooLarge { .. })));
        // Every truncation fails.
        for len in 0..good.len() {
            assert!(GpuReport::parse(&good[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn odd_opaque_values_are_refused() {
        for (kind, value) in [
            (6u16, &b"\x01\x02"[..]),
            (11, &[0x12][..]),
            (20, &[0; 47][..]),
            (34, &[1][..]),
            (36, &[1, 2, 3][..]),
            (22, &[1; 7][..]),
            (3, &b"a\x01"[..]),
        ] {
            let bytes = synthetic_report(1, &tlv(kind, value), &[]);
            let report = GpuReport::parse(&bytes).unwrap();
            assert!(report.opaque_fields().is_err() || report.fwid().is_err(), "type {kind}");
        }
    }
}
