//! NVIDIA Reference Integrity Manifests (RIMs): the signed reference values
//! of a GPU driver, a VBIOS or an NVSwitch BIOS, and the appraisal of a
//! device's measurements against them.
//!
//! A RIM is a SWID tag (ISO/IEC 19770-2:2015) whose `Payload` lists, per
//! measurement index, whether it is active and its SHA-384 alternatives,
//! with an enveloped XML signature: C14N 1.1, ECDSA P-384/SHA-384, one
//! reference to the whole document, and the signer's chain in `KeyInfo` to
//! the NVIDIA CoRIM signing root. [`verify_rim`] checks, in this order, and
//! stops at the first failure:
//!
//! 1. **Size and XML**: at most [`MAX_RIM_LEN`] bytes, UTF-8, well-formed,
//!    no DTD, no comments, no processing instructions, no `xml:` attributes,
//!    at most [`MAX_NODES`] nodes. Refusing what the canonical form would
//!    have to treat specially keeps the canonicalization small (a subset of
//!    C14N 1.1 that is exact for what it accepts).
//! 2. **Signature shape**: exactly one `ds:Signature`, a child of the root;
//!    `SignedInfo` naming C14N 1.1, ECDSA-SHA384 and exactly one `Reference`
//!    with `URI=""`, the transforms enveloped-signature then C14N 1.1, and
//!    SHA-384.
//! 3. **Digest**: SHA-384 of the canonical document without its signature
//!    equals `DigestValue`.
//! 4. **Chain**: the `X509Certificate`s (leaf first) each signed by the
//!    next, CAs above the leaf, the last byte-identical to a pinned root.
//! 5. **Signature**: ECDSA P-384/SHA-384 (`r || s`) of the canonical
//!    `SignedInfo` under the leaf.
//! 6. **Validity** of every certificate at `now`. A RIM signer's
//!    certificate lasts about two years while the firmware it describes
//!    runs for longer: an operator who pins a RIM offline may accept an
//!    expired signer explicitly ([`RimCheck::accept_expired`]); the result
//!    then says so ([`Rim::signer_expired`]).
//! 7. **Content**: `Meta` with `colloquialVersion`; `Payload` with at least
//!    one `Resource`, each of type `Measurement` with a unique `index`,
//!    `active`, `alternatives` (1 to [`MAX_ALTERNATIVES`]), `size` 48 and
//!    `Hash0..Hash{n-1}` in the SHA-384 namespace, 96 hex digits each.
//!
//! [`appraise`] then compares a device's measurement blocks with one or
//! more RIMs (driver and VBIOS): every active entry at index `i` must equal
//! one of its alternatives in block `i + 1`; two RIMs may not both claim an
//! index; index 35 is skipped when the device reports NVDEC0 disabled. The
//! appraisal works on [`Rim`] values, not on XML, so a CoRIM reader can
//! feed it the same way.
//!
//! [`RimAppraiser`] is what a broker holds: a [`RimStore`] filled once at
//! start-up (the files are read by [`crate::evidence::gpu_rims`]; nothing
//! here does I/O) and a bounded cache of appraisals keyed by the digest of
//! the device's measurements and the ids of the RIMs compared, so eight
//! GPUs on the same firmware are appraised once. Its result is a claim
//! ([`RimClaims`]: `match`, `mismatch` with the indices, `missing` with the
//! RIMs not in the store), never an error: whether a device must match is
//! the release's decision (the `gpus` secret label) and the policy's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use roxmltree::{Document, Node, NodeType, ParsingOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use super::chain::{is_ca, p384_key, parse_cert, verify_link};
use super::spdm::{DIGEST_LEN, MeasurementBlock};
use super::{DeviceClass, GpuAnchors};
use crate::evidence::anchors::{self, CertWindow};
use crate::evidence::bounded::BoundedMap;

/// Largest RIM accepted (real ones: 20-60 KiB).
pub const MAX_RIM_LEN: usize = 1024 * 1024;
/// Most XML nodes in a RIM.
pub const MAX_NODES: u32 = 20_000;
/// Most alternatives of one measurement.
pub const MAX_ALTERNATIVES: usize = 16;
/// Most certificates in a RIM's `KeyInfo`.
pub const MAX_CERTS: usize = 6;
/// Measurement index whose block NVIDIA skips when NVDEC0 is disabled.
pub const NVDEC0_INDEX: u8 = 35;

/// SHA-256 of the DER encoding of `CN=NVIDIA CoRIM signing Root CA,
/// O=NVIDIA, C=US` (P-384, valid 2023-03-16 to 2053-03-08), the root of
/// every NVIDIA RIM signer.
pub const NVIDIA_RIM_ROOT_SHA256: [u8; 32] = [
    0x12, 0x97, 0x7b, 0x51, 0x15, 0xac, 0xb0, 0x38, 0x11, 0x79, 0x27, 0x9f, 0xff, 0xeb, 0x5a, 0x8c, 0x4d, 0x26, 0x49,
    0x71, 0xeb, 0xb3, 0x22, 0x98, 0x02, 0x3a, 0x46, 0x5f, 0xa4, 0x1d, 0xf5, 0xd1,
];

const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const NS_SWID: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const NS_SHA384: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
const ALG_C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const ALG_ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ALG_ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const ALG_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
const ALG_SHA384_ENC: &str = "http://www.w3.org/2001/04/xmlenc#sha384";

/// Why a RIM was refused, or an appraisal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RimError {
    /// Larger than [`MAX_RIM_LEN`].
    #[error("RIM is {0} bytes, at most {MAX_RIM_LEN}")]
    TooLarge(usize),
    /// Not XML this verifier accepts.
    #[error("RIM is malformed: {0}")]
    Malformed(String),
    /// The signature's shape or algorithms are not the ones NVIDIA uses.
    #[error("RIM signature is not supported: {0}")]
    UnsupportedSignature(String),
    /// The document does not hash to its signed digest.
    #[error("RIM digest does not match its content")]
    DigestMismatch,
    /// The signature does not verify under the signer's key.
    #[error("RIM signature does not verify")]
    SignatureInvalid,
    /// The signer's chain is broken or does not end in a pinned root.
    #[error("RIM signer chain: {0}")]
    ChainInvalid(String),
    /// A certificate is outside its validity at the time of the check.
    #[error("RIM signer chain: {0}")]
    CertificateExpired(String),
    /// A measurement does not match the reference values.
    #[error("measurements do not match the RIMs at indices {0:?}")]
    MeasurementMismatch(Vec<u8>),
    /// Two RIMs claim the same measurement index.
    #[error("RIMs {0} and {1} both claim measurement index {2}")]
    IndexConflict(String, String, u8),
}

/// Inputs of [`verify_rim`] besides the document.
#[derive(Debug, Clone, Copy)]
pub struct RimCheck<'a> {
    /// Pinned RIM roots ([`GpuAnchors::nvidia_rim`] in production).
    pub anchors: &'a GpuAnchors,
    /// When the chain must be valid.
    pub now: OffsetDateTime,
    /// Accept certificates past their validity (an operator's explicit
    /// choice for a RIM pinned offline); reported in the result.
    pub accept_expired: bool,
}

/// One reference measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RimMeasurement {
    /// Measurement index (block `index + 1` of the report).
    pub index: u8,
    /// Whether the device's block must match.
    pub active: bool,
    /// The accepted SHA-384 values.
    #[serde(serialize_with = "hex_list")]
    pub alternatives: Vec<[u8; DIGEST_LEN]>,
}

fn hex_list<S: serde::Serializer>(list: &[[u8; DIGEST_LEN]], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(hex::encode))
}

/// A verified RIM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rim {
    /// `tagId`.
    pub tag_id: String,
    /// `name` of the software identity (e.g. `GH100`).
    pub name: String,
    /// `Meta/@colloquialVersion`: the driver or VBIOS version it describes.
    pub version: String,
    /// `Meta/@product`, `Meta/@edition` when present.
    pub product: Option<String>,
    /// `Meta/@edition`.
    pub edition: Option<String>,
    /// The signer's common name.
    pub signer: String,
    /// A certificate of the chain was past its validity (accepted only
    /// with [`RimCheck::accept_expired`]).
    pub signer_expired: bool,
    /// The reference measurements, by index.
    pub measurements: Vec<RimMeasurement>,
}

/// The result of [`appraise`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Appraisal {
    /// Active reference measurements compared.
    pub checked: usize,
    /// Indices skipped (NVDEC0 disabled).
    pub skipped: Vec<u8>,
}

impl RimError {
    /// The stable reason code: a failed appraisal is a measurement
    /// mismatch; a RIM that does not verify is invalid GPU evidence.
    pub fn reason(&self) -> crate::reason::ReasonCode {
        use crate::reason::ReasonCode;
        match self {
            Self::MeasurementMismatch(_) | Self::IndexConflict(..) => ReasonCode::GpuMeasurementMismatch,
            Self::TooLarge(_)
            | Self::Malformed(_)
            | Self::UnsupportedSignature(_)
            | Self::DigestMismatch
            | Self::SignatureInvalid
            | Self::ChainInvalid(_)
            | Self::CertificateExpired(_) => ReasonCode::GpuEvidenceInvalid,
        }
    }
}

fn malformed(what: impl Into<String>) -> RimError {
    RimError::Malformed(what.into())
}

/// Verifies a RIM (see the module documentation for the checks).
pub fn verify_rim(xml: &[u8], check: &RimCheck<'_>) -> Result<Rim, RimError> {
    if xml.len() > MAX_RIM_LEN {
        return Err(RimError::TooLarge(xml.len()));
    }
    let text = std::str::from_utf8(xml).map_err(|_| malformed("not UTF-8"))?;
    if text.contains('\r') {
        // The parser folds line ends; a signed document with CRs would
        // need them kept as `&#xD;` in the canonical form.
        return Err(malformed("carriage returns are not accepted"));
    }
    let options = ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES };
    let doc = Document::parse_with_options(text, options).map_err(|e| malformed(e.to_string()))?;
    for node in doc.descendants() {
        match node.node_type() {
            NodeType::Comment => return Err(malformed("comments are not accepted")),
            NodeType::PI => return Err(malformed("processing instructions are not accepted")),
            NodeType::Element => {
                if node.attributes().any(|a| a.namespace() == Some(NS_XML)) {
                    return Err(malformed("xml: attributes are not accepted"));
                }
            }
            NodeType::Root | NodeType::Text => {}
        }
    }
    let root = doc.root_element();
    if root.tag_name().namespace() != Some(NS_SWID) || root.tag_name().name() != "SoftwareIdentity" {
        return Err(malformed("the root is not a SWID SoftwareIdentity"));
    }
    let signatures: Vec<Node<'_, '_>> =
        doc.descendants().filter(|n| n.is_element() && is_dsig(n, "Signature")).collect();
    let [signature] = signatures.as_slice() else {
        return Err(RimError::UnsupportedSignature(format!("{} signatures, expected one", signatures.len())));
    };
    if signature.parent() != Some(root) {
        return Err(RimError::UnsupportedSignature("the signature is not a child of the root".into()));
    }

    // 2. The signature's shape.
    let signed_info = only_child(signature, "SignedInfo")?;
    let algorithm = |node: Node<'_, '_>| node.attribute("Algorithm").unwrap_or_default().to_owned();
    let children: Vec<Node<'_, '_>> = signed_info.children().filter(Node::is_element).collect();
    let [c14n, method, reference] = children.as_slice() else {
        return Err(RimError::UnsupportedSignature("SignedInfo must hold exactly one Reference".into()));
    };
    if !is_dsig(c14n, "CanonicalizationMethod") || algorithm(*c14n) != ALG_C14N11 {
        return Err(RimError::UnsupportedSignature(format!("canonicalization {}", algorithm(*c14n))));
    }
    if !is_dsig(method, "SignatureMethod") || algorithm(*method) != ALG_ECDSA_SHA384 {
        return Err(RimError::UnsupportedSignature(format!("signature method {}", algorithm(*method))));
    }
    if !is_dsig(reference, "Reference") || reference.attribute("URI") != Some("") {
        return Err(RimError::UnsupportedSignature("the reference must be to the whole document (URI=\"\")".into()));
    }
    let ref_children: Vec<Node<'_, '_>> = reference.children().filter(Node::is_element).collect();
    let [transforms, digest_method, digest_value] = ref_children.as_slice() else {
        return Err(RimError::UnsupportedSignature("Reference must hold Transforms, DigestMethod, DigestValue".into()));
    };
    let transform_algs: Vec<String> = transforms.children().filter(Node::is_element).map(algorithm).collect();
    if !is_dsig(transforms, "Transforms") || transform_algs != [ALG_ENVELOPED, ALG_C14N11] {
        return Err(RimError::UnsupportedSignature(format!("transforms {transform_algs:?}")));
    }
    let digest_alg = algorithm(*digest_method);
    if !is_dsig(digest_method, "DigestMethod") || (digest_alg != ALG_SHA384 && digest_alg != ALG_SHA384_ENC) {
        return Err(RimError::UnsupportedSignature(format!("digest method {digest_alg}")));
    }
    if !is_dsig(digest_value, "DigestValue") {
        return Err(RimError::UnsupportedSignature("no DigestValue".into()));
    }
    let expected_digest = base64_text(*digest_value, "DigestValue")?;

    // 3. The digest of the document without its signature.
    let mut canonical = String::with_capacity(text.len());
    canonicalize(root, text, &BTreeMap::new(), Some(*signature), &mut canonical)?;
    if Sha384::digest(canonical.as_bytes()).as_slice() != expected_digest.as_slice() {
        return Err(RimError::DigestMismatch);
    }

    // 4. The signer's chain.
    let key_info = only_child(signature, "KeyInfo")?;
    let x509_data = only_child(&key_info, "X509Data")?;
    let ders: Vec<Vec<u8>> = x509_data
        .children()
        .filter(|n| n.is_element())
        .map(|n| match is_dsig(&n, "X509Certificate") {
            true => base64_text(n, "X509Certificate"),
            false => Err(malformed("X509Data holds something other than certificates")),
        })
        .collect::<Result<_, _>>()?;
    if ders.len() < 2 || ders.len() > MAX_CERTS {
        return Err(RimError::ChainInvalid(format!("{} certificates, expected 2 to {MAX_CERTS}", ders.len())));
    }
    let certs: Vec<X509Certificate<'_>> = ders
        .iter()
        .map(|d| parse_cert(d).map_err(|e| RimError::ChainInvalid(e.to_string())))
        .collect::<Result<_, _>>()?;
    check_chain(&certs, &ders, check.anchors)?;

    // 5. The signature over the canonical SignedInfo.
    let signature_value = base64_text(only_child(signature, "SignatureValue")?, "SignatureValue")?;
    let mut signed = String::new();
    canonicalize(signed_info, text, &BTreeMap::new(), None, &mut signed)?;
    let leaf = certs.first().ok_or_else(|| RimError::ChainInvalid("empty chain".into()))?;
    let key = p384_key(leaf).map_err(|e| RimError::ChainInvalid(e.to_string()))?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, key)
        .verify(signed.as_bytes(), &signature_value)
        .map_err(|_| RimError::SignatureInvalid)?;

    // 6. Validity.
    let mut signer_expired = false;
    for cert in &certs {
        let window = CertWindow::of(cert);
        if !window.contains(check.now) {
            if !check.accept_expired {
                return Err(RimError::CertificateExpired(format!(
                    "{} valid {} to {}",
                    window.label, window.not_before, window.not_after
                )));
            }
            signer_expired = true;
        }
    }

    // 7. The content.
    let meta = only_child(&root, "Meta")?;
    let version = meta.attribute("colloquialVersion").ok_or_else(|| malformed("Meta has no colloquialVersion"))?;
    let payload = only_child(&root, "Payload")?;
    let mut measurements = Vec::new();
    let mut seen = BTreeSet::new();
    for resource in payload.children().filter(Node::is_element) {
        let measurement = parse_resource(resource)?;
        if !seen.insert(measurement.index) {
            return Err(malformed(format!("measurement index {} appears twice", measurement.index)));
        }
        measurements.push(measurement);
    }
    if measurements.is_empty() {
        return Err(malformed("the payload lists no measurements"));
    }
    Ok(Rim {
        tag_id: root.attribute("tagId").unwrap_or_default().to_owned(),
        name: root.attribute("name").unwrap_or_default().to_owned(),
        version: version.to_owned(),
        product: meta.attribute("product").map(str::to_owned),
        edition: meta.attribute("edition").map(str::to_owned),
        signer: anchors::common_name(leaf),
        signer_expired,
        measurements,
    })
}

/// Compares a device's measurement blocks with its RIMs (see the module
/// documentation). `rims` are `(label, rim)` pairs; the labels name them
/// in errors.
pub fn appraise(
    blocks: &[MeasurementBlock],
    nvdec0_disabled: bool,
    rims: &[(&str, &Rim)],
) -> Result<Appraisal, RimError> {
    let mut claimed: BTreeMap<u8, &str> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut skipped = Vec::new();
    let mut checked = 0;
    for (label, rim) in rims {
        for m in rim.measurements.iter().filter(|m| m.active) {
            if let Some(other) = claimed.insert(m.index, label) {
                return Err(RimError::IndexConflict((*other).to_owned(), (*label).to_owned(), m.index));
            }
            if nvdec0_disabled && m.index == NVDEC0_INDEX {
                skipped.push(m.index);
                continue;
            }
            checked += 1;
            let block = m.index.checked_add(1).and_then(|i| blocks.iter().find(|b| b.index == i));
            if !block.is_some_and(|b| m.alternatives.contains(&b.digest)) {
                mismatches.push(m.index);
            }
        }
    }
    if !mismatches.is_empty() {
        mismatches.sort_unstable();
        return Err(RimError::MeasurementMismatch(mismatches));
    }
    Ok(Appraisal { checked, skipped })
}

/// Verified RIMs by the firmware version they describe (`colloquialVersion`,
/// compared without case): the store a broker appraises devices against.
/// Filled from bytes the caller read (a directory, an import); it does no
/// I/O itself.
#[derive(Debug, Default, Clone)]
pub struct RimStore {
    by_version: std::collections::HashMap<String, Rim>,
}

/// How a device fared against the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceAppraisal {
    /// Every active measurement of its driver and VBIOS RIMs matched.
    Match(Appraisal),
    /// A RIM for the device's driver or VBIOS version is missing.
    Missing(Vec<String>),
}

impl RimStore {
    /// Verifies `xml` and adds it; a second RIM for the same version must
    /// be byte-for-byte the same RIM (same tag id), else it is refused.
    pub fn add(&mut self, xml: &[u8], check: &RimCheck<'_>) -> Result<&Rim, RimError> {
        let rim = verify_rim(xml, check)?;
        let key = rim.version.to_ascii_lowercase();
        if let Some(existing) = self.by_version.get(&key)
            && existing.tag_id != rim.tag_id
        {
            return Err(malformed(format!("two different RIMs for version {}", rim.version)));
        }
        Ok(self.by_version.entry(key).or_insert(rim))
    }

    /// The RIM for a version, if stored.
    pub fn get(&self, version: &str) -> Option<&Rim> {
        self.by_version.get(&version.to_ascii_lowercase())
    }

    /// Number of RIMs stored.
    pub fn len(&self) -> usize {
        self.by_version.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }

    /// Appraises a verified device report against the RIMs of the driver
    /// and VBIOS versions it reports: a missing RIM is reported (the
    /// caller decides whether that refuses), a mismatch is an error.
    pub fn appraise_report(&self, report: &super::GpuReport<'_>) -> Result<DeviceAppraisal, RimError> {
        let fields = report.opaque_fields().map_err(|e| malformed(e.to_string()))?;
        let mut rims = Vec::new();
        let mut missing = Vec::new();
        for (kind, version) in [("driver", &fields.driver_version), ("vbios", &fields.vbios_version)] {
            match version.as_deref() {
                Some(v) => match self.get(v) {
                    Some(rim) => rims.push((kind, rim)),
                    None => missing.push(format!("{kind} {v}")),
                },
                None => missing.push(format!("{kind} (not reported)")),
            }
        }
        if !missing.is_empty() {
            return Ok(DeviceAppraisal::Missing(missing));
        }
        let nvdec0_disabled = fields.nvdec0 == Some(super::Nvdec0::Disabled);
        appraise(&report.response.blocks, nvdec0_disabled, &rims).map(DeviceAppraisal::Match)
    }
}

/// Default bound on the appraisal cache of a [`RimAppraiser`].
pub const DEFAULT_APPRAISAL_CACHE_CAPACITY: usize = 1024;

/// The outcome of a device's reference-value appraisal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RimResult {
    /// Every active measurement of the device's RIMs matched.
    Match,
    /// At least one active measurement differs (or two RIMs claim one index).
    Mismatch,
    /// The store holds no RIM for the device's driver or VBIOS version.
    Missing,
    /// Not appraised (claims made without a RIM store).
    #[default]
    NotAppraised,
}

/// One RIM an appraisal used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RimRef {
    /// The RIM's `tagId`.
    pub id: String,
    /// The version it describes.
    pub version: String,
    /// It was loaded with an expired signer certificate.
    pub signer_expired: bool,
}

impl RimRef {
    fn of(rim: &Rim) -> Self {
        Self { id: rim.tag_id.clone(), version: rim.version.clone(), signer_expired: rim.signer_expired }
    }
}

/// A device's reference-value appraisal, as policy sees it
/// (`input.claims.gpu.devices[i].rim`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RimClaims {
    /// The outcome.
    pub result: RimResult,
    /// The driver RIM compared (GPUs), when the store holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<RimRef>,
    /// The VBIOS (NVSwitch: BIOS) RIM compared, when the store holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbios: Option<RimRef>,
    /// Active reference measurements compared.
    pub appraised: usize,
    /// RIM indices whose measurement differs (block `index + 1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatched: Vec<u8>,
    /// The RIMs the store lacks (`"vbios 96.00.CF.00.02"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Why the RIMs could not be compared together, when they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
}

/// A device's measurements and the RIMs compared with them.
type AppraisalKey = ([u8; DIGEST_LEN], Vec<(String, String)>);

/// Appraises devices against a fixed [`RimStore`], caching the outcomes
/// (bounded, oldest evicted first).
#[derive(Debug)]
pub struct RimAppraiser {
    store: RimStore,
    cache: Mutex<AppraisalCache>,
}

type AppraisalCache = BoundedMap<AppraisalKey, RimClaims>;

impl Default for RimAppraiser {
    fn default() -> Self {
        Self::new(RimStore::default())
    }
}

impl RimAppraiser {
    /// An appraiser over `store` with the default cache bound.
    pub fn new(store: RimStore) -> Self {
        Self::with_cache_capacity(store, DEFAULT_APPRAISAL_CACHE_CAPACITY)
    }

    /// An appraiser whose cache holds at most `capacity` outcomes (zero:
    /// no cache).
    pub fn with_cache_capacity(store: RimStore, capacity: usize) -> Self {
        let cache = AppraisalCache::new(capacity);
        Self { store, cache: Mutex::new(cache) }
    }

    /// The RIMs it appraises against.
    pub fn store(&self) -> &RimStore {
        &self.store
    }

    /// How many outcomes are cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Appraises a verified device report: a GPU against the RIMs of its
    /// driver and VBIOS versions, an NVSwitch against its BIOS's.
    pub fn appraise(&self, report: &super::GpuReport<'_>, class: DeviceClass) -> RimClaims {
        let missing = |driver, vbios, missing| RimClaims {
            result: RimResult::Missing,
            driver,
            vbios,
            appraised: 0,
            mismatched: Vec::new(),
            missing,
            conflict: None,
        };
        let Ok(fields) = report.opaque_fields() else {
            return missing(None, None, vec!["the versions of the report (opaque data)".into()]);
        };
        let wanted: &[(&str, &Option<String>)] = match class {
            DeviceClass::Gpu => &[("driver", &fields.driver_version), ("vbios", &fields.vbios_version)],
            DeviceClass::Nvswitch => &[("vbios", &fields.vbios_version)],
        };
        let mut rims: Vec<(&str, &Rim)> = Vec::with_capacity(2);
        let mut absent = Vec::new();
        for (kind, version) in wanted {
            match version.as_deref() {
                Some(v) => match self.store.get(v) {
                    Some(rim) => rims.push((kind, rim)),
                    None => absent.push(format!("{kind} {v}")),
                },
                None => absent.push(format!("{kind} (version not reported)")),
            }
        }
        let find = |kind: &str| rims.iter().find(|(k, _)| *k == kind).map(|(_, rim)| RimRef::of(rim));
        let (driver, vbios) = (find("driver"), find("vbios"));
        if !absent.is_empty() {
            return missing(driver, vbios, absent);
        }
        let nvdec0_disabled = fields.nvdec0 == Some(super::Nvdec0::Disabled);
        let mut digest = Sha384::new();
        digest.update([u8::from(nvdec0_disabled)]);
        for block in &report.response.blocks {
            digest.update([block.index, block.value_type]);
            digest.update(block.digest);
        }
        let key: AppraisalKey =
            (digest.finalize().into(), rims.iter().map(|(_, r)| (r.version.clone(), r.tag_id.clone())).collect());
        if let Some(hit) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return hit.clone();
        }
        let base = RimClaims {
            result: RimResult::Match,
            driver,
            vbios,
            appraised: 0,
            mismatched: Vec::new(),
            missing: Vec::new(),
            conflict: None,
        };
        let claims = match appraise(&report.response.blocks, nvdec0_disabled, &rims) {
            Ok(a) => RimClaims { appraised: a.checked, ..base },
            Err(RimError::MeasurementMismatch(indices)) => {
                RimClaims { result: RimResult::Mismatch, mismatched: indices, ..base }
            }
            Err(e) => RimClaims { result: RimResult::Mismatch, conflict: Some(e.to_string()), ..base },
        };
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(key, claims.clone());
        claims
    }
}

fn parse_resource(resource: Node<'_, '_>) -> Result<RimMeasurement, RimError> {
    if resource.tag_name().namespace() != Some(NS_SWID) || resource.tag_name().name() != "Resource" {
        return Err(malformed("the payload holds something other than Resource elements"));
    }
    if resource.attribute("type") != Some("Measurement") {
        return Err(malformed("a resource is not a measurement"));
    }
    let number = |name: &str| -> Result<usize, RimError> {
        let value = resource.attribute(name).ok_or_else(|| malformed(format!("a measurement has no {name}")))?;
        value
            .parse::<usize>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| malformed(format!("measurement {name} {value:?} is not a number")))
    };
    let index = u8::try_from(number("index")?).map_err(|_| malformed("measurement index out of range"))?;
    let active = match resource.attribute("active") {
        Some("True" | "true") => true,
        Some("False" | "false") => false,
        _ => return Err(malformed(format!("measurement {index}: active must be True or False"))),
    };
    if number("size")? != DIGEST_LEN {
        return Err(malformed(format!("measurement {index}: size must be {DIGEST_LEN}")));
    }
    let count = number("alternatives")?;
    if count == 0 || count > MAX_ALTERNATIVES {
        return Err(malformed(format!("measurement {index}: 1 to {MAX_ALTERNATIVES} alternatives")));
    }
    let alternatives = (0..count)
        .map(|k| {
            let value = resource
                .attribute((NS_SHA384, format!("Hash{k}").as_str()))
                .ok_or_else(|| malformed(format!("measurement {index}: no SHA-384 Hash{k}")))?;
            let mut digest = [0u8; DIGEST_LEN];
            hex::decode_to_slice(value, &mut digest)
                .map_err(|_| malformed(format!("measurement {index}: Hash{k} is not 96 hex digits")))?;
            Ok(digest)
        })
        .collect::<Result<Vec<_>, RimError>>()?;
    Ok(RimMeasurement { index, active, alternatives })
}

fn check_chain(certs: &[X509Certificate<'_>], ders: &[Vec<u8>], anchors: &GpuAnchors) -> Result<(), RimError> {
    let chain = |e: super::GpuError| RimError::ChainInvalid(e.to_string());
    let (Some(leaf), Some(root), Some(root_der)) = (certs.first(), certs.last(), ders.last()) else {
        return Err(RimError::ChainInvalid("empty chain".into()));
    };
    if is_ca(leaf) {
        return Err(RimError::ChainInvalid(format!("signer {} is a CA certificate", anchors::common_name(leaf))));
    }
    for pair in certs.windows(2) {
        let [cert, issuer] = pair else { continue };
        if !is_ca(issuer) {
            return Err(RimError::ChainInvalid(format!("{} is not a CA", anchors::common_name(issuer))));
        }
        verify_link(cert, issuer).map_err(chain)?;
    }
    if !anchors.pins(root_der) {
        return Err(RimError::ChainInvalid(format!(
            "{} (SHA-256 {}) is not a pinned RIM root",
            anchors::common_name(root),
            hex::encode(anchors::sha256(root_der))
        )));
    }
    verify_link(root, root).map_err(chain)
}

fn is_dsig(node: &Node<'_, '_>, name: &str) -> bool {
    node.tag_name().namespace() == Some(NS_DSIG) && node.tag_name().name() == name
}

/// The one child element of `parent` in the signature or SWID namespace
/// named `name`.
fn only_child<'a, 'i>(parent: &Node<'a, 'i>, name: &str) -> Result<Node<'a, 'i>, RimError> {
    let mut found = parent
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == name)
        .filter(|n| matches!(n.tag_name().namespace(), Some(NS_DSIG | NS_SWID)));
    match (found.next(), found.next()) {
        (Some(node), None) => Ok(node),
        (None, _) => Err(malformed(format!("no {name}"))),
        (Some(_), Some(_)) => Err(malformed(format!("more than one {name}"))),
    }
}

/// The base64 text of an element (whitespace ignored).
fn base64_text(node: Node<'_, '_>, what: &str) -> Result<Vec<u8>, RimError> {
    if node.children().any(|n| n.is_element()) {
        return Err(malformed(format!("{what} holds elements")));
    }
    let text: String =
        node.children().filter_map(|n| n.text()).flat_map(str::chars).filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(text).map_err(|_| malformed(format!("{what} is not base64")))
}

/// Appends the C14N 1.1 form (without comments) of `element` to `out`:
/// `rendered` holds the namespace declarations the nearest rendered
/// ancestor has in scope (empty for the apex of a subset, so the apex
/// declares every namespace in scope); `omit` is left out with its
/// subtree (the enveloped signature).
fn canonicalize(
    element: Node<'_, '_>,
    source: &str,
    rendered: &BTreeMap<String, String>,
    omit: Option<Node<'_, '_>>,
    out: &mut String,
) -> Result<(), RimError> {
    let qname = qname(element, source)?;
    out.push('<');
    out.push_str(qname);

    // Namespace declarations: those in scope that the parent's rendering
    // does not already have, sorted by prefix (the default first).
    let mut in_scope = BTreeMap::new();
    for ns in element.namespaces() {
        if ns.uri() == NS_XML {
            continue;
        }
        in_scope.insert(ns.name().unwrap_or_default().to_owned(), ns.uri().to_owned());
    }
    for (prefix, uri) in &in_scope {
        if rendered.get(prefix) != Some(uri) {
            match prefix.as_str() {
                "" => out.push_str(" xmlns=\""),
                p => {
                    out.push_str(" xmlns:");
                    out.push_str(p);
                    out.push_str("=\"");
                }
            }
            escape_attribute(uri, out);
            out.push('"');
        }
    }
    if !in_scope.contains_key("") && rendered.get("").is_some_and(|uri| !uri.is_empty()) {
        out.push_str(" xmlns=\"\"");
    }

    // Attributes, sorted by namespace URI (none first), then local name.
    let mut attributes: Vec<(&str, &str, &str, &str)> = element
        .attributes()
        .map(|a| (a.namespace().unwrap_or_default(), a.name(), &source[a.range_qname()], a.value()))
        .collect();
    attributes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (_, _, qname, value) in attributes {
        out.push(' ');
        out.push_str(qname);
        out.push_str("=\"");
        escape_attribute(value, out);
        out.push('"');
    }
    out.push('>');

    for child in element.children() {
        if Some(child) == omit {
            continue;
        }
        match child.node_type() {
            NodeType::Element => canonicalize(child, source, &in_scope, omit, out)?,
            NodeType::Text => escape_text(child.text().unwrap_or_default(), out),
            NodeType::Root | NodeType::Comment | NodeType::PI => {
                return Err(malformed("unexpected node in an element"));
            }
        }
    }
    out.push_str("</");
    out.push_str(qname);
    out.push('>');
    Ok(())
}

/// The element's qualified name as written in its start tag.
fn qname<'s>(element: Node<'_, '_>, source: &'s str) -> Result<&'s str, RimError> {
    let tag =
        source.get(element.range()).and_then(|t| t.strip_prefix('<')).ok_or_else(|| malformed("element range"))?;
    let end = tag.find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>').unwrap_or(tag.len());
    let name = &tag[..end];
    if name.is_empty() {
        return Err(malformed("element without a name"));
    }
    Ok(name)
}

fn escape_text(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attribute(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn canonical(xml: &str) -> String {
        let doc = Document::parse(xml).unwrap();
        let mut out = String::new();
        canonicalize(doc.root_element(), xml, &BTreeMap::new(), None, &mut out).unwrap();
        out
    }

    /// Known answers from the C14N specifications' examples (3.3 start
    /// and end tags, 3.5 entity references as far as this subset goes).
    #[test]
    fn canonical_form_known_answers() {
        assert_eq!(
            canonical(
                "<doc>\n   <e1   />\n   <e2   ></e2>\n   <e3   name = \"elem3\"   id=\"elem3\"   />\n   <e5 a:attr=\"out\" b:attr=\"sorted\" attr2=\"all\" attr=\"I'm\"\n      xmlns:b=\"http://www.ietf.org\"\n      xmlns:a=\"http://www.w3.org\"\n      xmlns=\"http://example.org\"/>\n</doc>"
            ),
            "<doc>\n   <e1></e1>\n   <e2></e2>\n   <e3 id=\"elem3\" name=\"elem3\"></e3>\n   <e5 xmlns=\"http://example.org\" xmlns:a=\"http://www.w3.org\" xmlns:b=\"http://www.ietf.org\" attr=\"I'm\" attr2=\"all\" b:attr=\"sorted\" a:attr=\"out\"></e5>\n</doc>"
        );
        assert_eq!(
            canonical("<doc><t a=\"&lt;&amp;&quot;&#9;&#10;x\">&lt;&amp;&gt;&#65;</t></doc>"),
            "<doc><t a=\"&lt;&amp;&quot;&#x9;&#xA;x\">&lt;&amp;&gt;A</t></doc>"
        );
        // A namespace declared again with the same value is not repeated;
        // an undeclared default is, as xmlns="".
        assert_eq!(
            canonical("<a xmlns=\"u\" xmlns:p=\"v\"><p:b xmlns:p=\"v\"><c xmlns=\"\"/></p:b></a>"),
            "<a xmlns=\"u\" xmlns:p=\"v\"><p:b><c xmlns=\"\"></c></p:b></a>"
        );
    }

    #[test]
    fn documents_outside_the_subset_are_refused() {
        let anchors = GpuAnchors::empty();
        let check = RimCheck { anchors: &anchors, now: OffsetDateTime::UNIX_EPOCH, accept_expired: false };
        let swid = "<SoftwareIdentity xmlns=\"http://standards.iso.org/iso/19770/-2/2015/schema.xsd\">";
        for (xml, why) in [
            (format!("<!DOCTYPE x [<!ENTITY e \"x\">]>{swid}</SoftwareIdentity>"), "DTD"),
            (format!("{swid}<!-- c --></SoftwareIdentity>"), "comments"),
            (format!("{swid}<?pi x?></SoftwareIdentity>"), "processing"),
            (format!("{swid}<x xml:lang=\"en\"/></SoftwareIdentity>"), "xml:"),
            (format!("{swid}\r\n</SoftwareIdentity>"), "carriage"),
            ("<x/>".to_owned(), "SoftwareIdentity"),
            (format!("{swid}</SoftwareIdentity>"), "0 signatures"),
        ] {
            let err = verify_rim(xml.as_bytes(), &check).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        assert_eq!(verify_rim(&vec![b' '; MAX_RIM_LEN + 1], &check), Err(RimError::TooLarge(MAX_RIM_LEN + 1)));
    }

    fn block(index: u8, byte: u8) -> MeasurementBlock {
        MeasurementBlock { index, value_type: 0, digest: [byte; DIGEST_LEN] }
    }

    fn rim(entries: &[(u8, bool, &[u8])]) -> Rim {
        Rim {
            tag_id: String::new(),
            name: String::new(),
            version: "1".into(),
            product: None,
            edition: None,
            signer: String::new(),
            signer_expired: false,
            measurements: entries
                .iter()
                .map(|(index, active, alts)| RimMeasurement {
                    index: *index,
                    active: *active,
                    alternatives: alts.iter().map(|b| [*b; DIGEST_LEN]).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn appraisal_matches_alternatives_and_finds_conflicts() {
        let blocks = [block(1, 0xa), block(2, 0xb), block(36, 0xc)];
        let driver = rim(&[(0, true, &[0xa]), (1, true, &[0x1, 0xb]), (2, false, &[0xff])]);
        let vbios = rim(&[(35, true, &[0xd])]);
        // Index 35 (block 36) differs: refused unless NVDEC0 is disabled.
        assert_eq!(
            appraise(&blocks, false, &[("driver", &driver), ("vbios", &vbios)]),
            Err(RimError::MeasurementMismatch(vec![35]))
        );
        assert_eq!(
            appraise(&blocks, true, &[("driver", &driver), ("vbios", &vbios)]),
            Ok(Appraisal { checked: 2, skipped: vec![35] })
        );
        // A block the device does not report is a mismatch.
        let missing = rim(&[(7, true, &[0xa])]);
        assert_eq!(appraise(&blocks, false, &[("m", &missing)]), Err(RimError::MeasurementMismatch(vec![7])));
        // Two RIMs may not both claim an active index.
        let clash = rim(&[(1, true, &[0xb])]);
        assert_eq!(
            appraise(&blocks, false, &[("driver", &driver), ("clash", &clash)]),
            Err(RimError::IndexConflict("driver".into(), "clash".into(), 1))
        );
    }
}
