//! The NVIDIA device certificate chain and its pinned root.
//!
//! Every NVIDIA GPU and NVSwitch presents five P-384 certificates, leaf
//! first: `<chip> A01 GSP FMC LF` (the alias key of the running firmware,
//! which signs reports) → `<chip> A01 GSP BROM` (the fused device identity)
//! → `NVIDIA <chip> Provisioner ICA …` → `NVIDIA <chip> Identity` →
//! `NVIDIA Device Identity CA`, the root. The root is pinned twice, by its
//! DER bytes embedded below and by [`NVIDIA_DEVICE_IDENTITY_CA_SHA256`];
//! [`GpuAnchors::nvidia`] refuses to build if the two disagree. The chain's
//! own last certificate must be byte-identical to a pinned root.
//!
//! The leaf binds the firmware: its FWID extension carries the SHA-384 the
//! report's opaque data repeats. Hopper and NVSwitch leaves use the RIoT
//! CompositeDeviceID shape under `2.23.133.5.4.1`
//! (`SEQ { INT version, SPKI (the BROM key), SEQ { hashAlg, OCTET fwid } }`);
//! Blackwell leaves a TCG DiceTcbInfo under `2.23.133.5.4.1.1`
//! (`fwids [6] SEQ OF SEQ { hashAlg, OCTET }`, the first one).

use std::fmt;

use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED, ParsedPublicKey, UnparsedPublicKey};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use super::GpuError;
use super::der;
use super::spdm::DIGEST_LEN;
use crate::evidence::anchors::{self, CertWindow};

/// SHA-256 of the DER encoding of `CN=NVIDIA Device Identity CA, O=NVIDIA`
/// (self-signed, P-384, valid 2021-11-05 to 9999-12-31), the root of every
/// NVIDIA GPU and NVSwitch identity chain.
pub const NVIDIA_DEVICE_IDENTITY_CA_SHA256: [u8; 32] = [
    0x10, 0x2b, 0xf6, 0x59, 0xd5, 0x41, 0x96, 0x14, 0xc9, 0xd8, 0xe6, 0xae, 0xce, 0xbc, 0x80, 0x45, 0x4e, 0xb2, 0x6b,
    0x1d, 0xf6, 0xa7, 0x69, 0xac, 0x72, 0x0b, 0x9a, 0x69, 0x0b, 0x16, 0x7b, 0x48,
];

/// Certificates in every NVIDIA device chain.
pub const CHAIN_LEN: usize = 5;

/// Largest chain file accepted (real: 4.8 KiB of PEM; NVML's buffer is 5 KiB).
pub const MAX_CHAIN_LEN: usize = 32 * 1024;

/// Most roots one anchor set holds.
const MAX_ROOTS: usize = 8;

const OID_ECDSA_WITH_SHA384: &str = "1.2.840.10045.4.3.3";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP384R1: &str = "1.3.132.0.34";
/// TCG DICE FWID (RIoT CompositeDeviceID shape), Hopper and NVSwitch.
const OID_FWID_RIOT: &str = "2.23.133.5.4.1";
/// TCG DiceTcbInfo, Blackwell.
const OID_FWID_DICE_TCB_INFO: &str = "2.23.133.5.4.1.1";
/// DER of `AlgorithmIdentifier { ecdsa-with-SHA384 }` (no parameters).
const ECDSA_WITH_SHA384_ALGORITHM: [u8; 12] = [0x30, 0x0A, 0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];
/// DER of the OID id-sha384 (2.16.840.1.101.3.4.2.2), without tag and length.
pub(crate) const SHA384_OID_DER: [u8; 9] = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
/// NVIDIA's device-identity otherName in the leaf's subjectAltName.
const OID_NVIDIA_DEVICE_ID: &str = "1.3.6.1.4.1.412.274.1";

/// A pinned root.
#[derive(Clone)]
struct GpuRoot {
    der: Vec<u8>,
    fingerprint: [u8; 32],
}

/// The NVIDIA device trust anchors: pinned roots, nothing below them.
#[derive(Clone, Default)]
pub struct GpuAnchors {
    roots: Vec<GpuRoot>,
}

impl GpuAnchors {
    /// The NVIDIA Device Identity CA, checked against
    /// [`NVIDIA_DEVICE_IDENTITY_CA_SHA256`].
    pub fn nvidia() -> Result<Self, GpuError> {
        let der = pem_chain(NVIDIA_DEVICE_IDENTITY_CA_PEM.as_bytes())?;
        let [root] = <[Vec<u8>; 1]>::try_from(der)
            .map_err(|_| GpuError::CertificateMalformed("built-in root must be one certificate".into()))?;
        if anchors::sha256(&root) != NVIDIA_DEVICE_IDENTITY_CA_SHA256 {
            return Err(GpuError::UntrustedRoot("built-in NVIDIA root does not match its pinned fingerprint".into()));
        }
        let mut out = Self::empty();
        out.add_root(&root)?;
        Ok(out)
    }

    /// The NVIDIA CoRIM signing root, checked against
    /// [`super::rim::NVIDIA_RIM_ROOT_SHA256`]: the anchors of RIM signers.
    pub fn nvidia_rim() -> Result<Self, GpuError> {
        let der = pem_chain(NVIDIA_RIM_ROOT_PEM.as_bytes())?;
        let [root] = <[Vec<u8>; 1]>::try_from(der)
            .map_err(|_| GpuError::CertificateMalformed("built-in root must be one certificate".into()))?;
        if anchors::sha256(&root) != super::rim::NVIDIA_RIM_ROOT_SHA256 {
            return Err(GpuError::UntrustedRoot(
                "built-in NVIDIA RIM root does not match its pinned fingerprint".into(),
            ));
        }
        let mut out = Self::empty();
        out.add_root(&root)?;
        Ok(out)
    }

    /// No roots: every chain is refused until one is added.
    pub fn empty() -> Self {
        Self { roots: Vec::new() }
    }

    /// Pins a self-signed P-384 CA certificate as a root (tests pin their
    /// own; production uses [`GpuAnchors::nvidia`]).
    pub fn add_root(&mut self, der: &[u8]) -> Result<(), GpuError> {
        let cert = parse_cert(der)?;
        if !is_ca(&cert) || cert.subject().as_raw() != cert.issuer().as_raw() {
            return Err(GpuError::UntrustedRoot(format!("{} is not a self-signed CA", anchors::common_name(&cert))));
        }
        verify_link(&cert, &cert)?;
        let fingerprint = anchors::sha256(der);
        if self.roots.iter().any(|r| r.fingerprint == fingerprint) {
            return Ok(());
        }
        if self.roots.len() == MAX_ROOTS {
            return Err(GpuError::UntrustedRoot("too many roots".into()));
        }
        self.roots.push(GpuRoot { der: der.to_vec(), fingerprint });
        Ok(())
    }

    /// The SHA-256 fingerprints of the pinned roots.
    pub fn root_fingerprints(&self) -> Vec<[u8; 32]> {
        self.roots.iter().map(|r| r.fingerprint).collect()
    }

    pub(crate) fn pins(&self, der: &[u8]) -> bool {
        self.roots.iter().any(|r| r.der == der)
    }
}

impl fmt::Debug for GpuAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roots: Vec<String> = self.roots.iter().map(|r| hex::encode(r.fingerprint)).collect();
        f.debug_struct("GpuAnchors").field("roots", &roots).finish()
    }
}

/// The DER certificates of a PEM chain, in order, at most one more than a
/// chain holds (so a long chain is reported as such, not as garbage).
pub fn pem_chain(pem: &[u8]) -> Result<Vec<Vec<u8>>, GpuError> {
    if pem.len() > MAX_CHAIN_LEN {
        return Err(GpuError::TooLarge { what: "certificate chain", len: pem.len(), max: MAX_CHAIN_LEN });
    }
    let ders = anchors::pem_certificates(pem).map_err(|e| GpuError::CertificateMalformed(e.to_string()))?;
    if ders.len() > CHAIN_LEN + 1 {
        return Err(GpuError::ChainInvalid(format!("{} certificates, expected {CHAIN_LEN}", ders.len())));
    }
    Ok(ders)
}

/// Parses one DER certificate; no trailing bytes. The unsigned outer layout
/// is checked byte for byte first (`SEQUENCE { SEQUENCE tbs, the DER of
/// ecdsa-with-SHA384, BIT STRING }`): x509-parser accepts some wrong tags
/// there, and bytes outside the signed part must not vary unnoticed.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, GpuError> {
    let strict = || -> Option<()> {
        let (body, rest) = der::expect(der, der::SEQUENCE)?;
        let (tbs, body) = der::split_tlv(body)?;
        let (alg, body) = der::split_tlv(body)?;
        let (_sig, body) = der::expect(body, der::BIT_STRING)?;
        (tbs.first() == Some(&der::SEQUENCE)
            && alg == ECDSA_WITH_SHA384_ALGORITHM
            && body.is_empty()
            && rest.is_empty())
        .then_some(())
    };
    if strict().is_none() {
        return Err(GpuError::CertificateMalformed("not a DER ECDSA P-384/SHA-384 certificate".into()));
    }
    anchors::parse_der_cert(der).map_err(|e| GpuError::CertificateMalformed(e.to_string()))
}

pub(crate) fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// The uncompressed P-384 point of a certificate's key.
pub(crate) fn p384_key<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a [u8], GpuError> {
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    if spki.algorithm.algorithm.to_id_string() != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_SECP384R1) {
        return Err(GpuError::CertificateMalformed(format!("{}: key is not P-384", anchors::common_name(cert))));
    }
    Ok(spki.subject_public_key.data.as_ref())
}

/// Verifies that `issuer` signed `cert` with ECDSA P-384/SHA-384, the only
/// algorithm of NVIDIA's device PKI; inner and outer algorithms agree.
pub(crate) fn verify_link(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<(), GpuError> {
    let name = anchors::common_name(cert);
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(GpuError::ChainInvalid(format!(
            "issuer of {name} is not the subject of {}",
            anchors::common_name(issuer)
        )));
    }
    if cert.signature_algorithm != cert.tbs_certificate.signature
        || cert.signature_algorithm.algorithm.to_id_string() != OID_ECDSA_WITH_SHA384
        || cert.signature_value.unused_bits != 0
    {
        return Err(GpuError::ChainInvalid(format!("{name}: signature algorithm is not ECDSA/SHA-384")));
    }
    let key = p384_key(issuer).map_err(|e| GpuError::ChainInvalid(e.to_string()))?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, key)
        .verify(cert.tbs_certificate.as_ref(), cert.signature_value.data.as_ref())
        .map_err(|_| GpuError::ChainInvalid(format!("{name}: signature does not verify under its issuer")))
}

/// The leaf's key, parsed once for the report signatures it checks (`r ||
/// s`, [`ParsedPublicKey::verify_sig`]); a key that does not parse as a
/// P-384 point cannot have signed the report (`SignatureInvalid`).
pub(crate) fn report_key(leaf: &X509Certificate<'_>) -> Result<ParsedPublicKey, GpuError> {
    ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, p384_key(leaf)?).map_err(|_| GpuError::SignatureInvalid)
}

/// Checks that every certificate is valid at `now` (`CertificateExpired`).
pub(crate) fn check_validity(windows: &[CertWindow], now: OffsetDateTime) -> Result<(), GpuError> {
    match windows.iter().find(|w| !w.contains(now)) {
        Some(window) => Err(GpuError::CertificateExpired(format!(
            "{} valid {} to {}",
            window.label, window.not_before, window.not_after
        ))),
        None => Ok(()),
    }
}

/// Checks the chain's shape and links: exactly [`CHAIN_LEN`] certificates,
/// an end-entity leaf, CA certificates above it, each link signed by the
/// next, the last one byte-identical to a pinned root, and every
/// certificate valid at `now`.
pub(crate) fn verify_chain(
    certs: &[X509Certificate<'_>],
    ders: &[Vec<u8>],
    anchors: &GpuAnchors,
    now: OffsetDateTime,
) -> Result<(), GpuError> {
    if certs.len() != CHAIN_LEN || ders.len() != CHAIN_LEN {
        return Err(GpuError::ChainInvalid(format!("{} certificates, expected {CHAIN_LEN}", certs.len())));
    }
    let (Some(leaf), Some(root), Some(root_der)) = (certs.first(), certs.last(), ders.last()) else {
        return Err(GpuError::ChainInvalid("empty chain".into()));
    };
    if is_ca(leaf) {
        return Err(GpuError::ChainInvalid(format!("leaf {} is a CA certificate", anchors::common_name(leaf))));
    }
    for pair in certs.windows(2) {
        let [cert, issuer] = pair else { continue };
        if !is_ca(issuer) {
            return Err(GpuError::ChainInvalid(format!("{} is not a CA certificate", anchors::common_name(issuer))));
        }
        verify_link(cert, issuer)?;
    }
    if !anchors.pins(root_der) {
        return Err(GpuError::UntrustedRoot(format!(
            "{} (SHA-256 {}) is not a pinned root",
            anchors::common_name(root),
            hex::encode(anchors::sha256(root_der))
        )));
    }
    verify_link(root, root)?;
    check_validity(&certs.iter().map(CertWindow::of).collect::<Vec<_>>(), now)
}

/// The leaf's FWID and, for the RIoT shape, the device key it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafFwid {
    pub(crate) fwid: [u8; DIGEST_LEN],
    /// The SubjectPublicKeyInfo (DER) the RIoT shape carries.
    pub(crate) device_spki: Option<Vec<u8>>,
}

/// The FWID extension of the leaf: `None` if it has none; an error if it
/// has more than one or one that does not parse.
pub(crate) fn leaf_fwid(leaf: &X509Certificate<'_>) -> Result<Option<LeafFwid>, GpuError> {
    let mut found = None;
    for ext in leaf.extensions() {
        let oid = ext.oid.to_id_string();
        let parsed = match oid.as_str() {
            OID_FWID_RIOT => riot_fwid(ext.value),
            OID_FWID_DICE_TCB_INFO => dice_tcb_info_fwid(ext.value),
            _ => continue,
        }
        .ok_or_else(|| GpuError::CertificateMalformed(format!("leaf FWID extension {oid} does not parse")))?;
        if found.replace(parsed).is_some() {
            return Err(GpuError::CertificateMalformed("leaf has more than one FWID extension".into()));
        }
    }
    Ok(found)
}

/// `SEQ { INT version, SPKI, SEQ { OID sha384, OCTET[48] } }`.
fn riot_fwid(value: &[u8]) -> Option<LeafFwid> {
    let (body, rest) = der::expect(value, der::SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (_version, body) = der::expect(body, der::INTEGER)?;
    let (spki, fwid_seq) = der::split_tlv(body)?;
    if spki.first() != Some(&der::SEQUENCE) {
        return None;
    }
    let (fwid, rest) = der::expect(fwid_seq, der::SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    Some(LeafFwid { fwid: sha384_fwid(fwid)?, device_spki: Some(spki.to_vec()) })
}

/// DiceTcbInfo: `SEQ { ... [6] IMPLICIT SEQ OF FWID ... }`, the first FWID.
fn dice_tcb_info_fwid(value: &[u8]) -> Option<LeafFwid> {
    let (mut body, rest) = der::expect(value, der::SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    while !body.is_empty() {
        let (tag, content, rest) = der::tlv(body)?;
        body = rest;
        if tag == der::CONTEXT_CONSTRUCTED_6 {
            let (first, _more) = der::expect(content, der::SEQUENCE)?;
            return Some(LeafFwid { fwid: sha384_fwid(first)?, device_spki: None });
        }
    }
    None
}

/// The content of `SEQ { OID sha384, OCTET[48] }`.
fn sha384_fwid(content: &[u8]) -> Option<[u8; DIGEST_LEN]> {
    let (oid, rest) = der::expect(content, der::OID)?;
    if oid != SHA384_OID_DER {
        return None;
    }
    let (digest, rest) = der::expect(rest, der::OCTET_STRING)?;
    if !rest.is_empty() {
        return None;
    }
    <[u8; DIGEST_LEN]>::try_from(digest).ok()
}

/// The leaf's NVIDIA device id (`NVIDIA:GH100:48B0…`), from its
/// subjectAltName otherName, if it has one.
pub(crate) fn device_id(leaf: &X509Certificate<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let san = leaf.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::OtherName(oid, value) if oid.to_id_string() == OID_NVIDIA_DEVICE_ID => {
            // `[0] EXPLICIT UTF8String`.
            let (inner, _) = der::expect(value, der::CONTEXT_CONSTRUCTED_0).unwrap_or((value, &[]));
            let (text, _) = der::expect(inner, der::UTF8_STRING)?;
            std::str::from_utf8(text).ok().filter(|s| s.len() <= 128).map(str::to_owned)
        }
        _ => None,
    })
}

/// NVIDIA Device Identity CA (PEM), as NVIDIA ships it in nvtrust
/// (`verifier_device_root.pem`) and trustee (`nvidia_device_root.pem`).
const NVIDIA_DEVICE_IDENTITY_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIICCzCCAZCgAwIBAgIQLTZwscoQBBHB/sDoKgZbVDAKBggqhkjOPQQDAzA1MSIw\n\
IAYDVQQDDBlOVklESUEgRGV2aWNlIElkZW50aXR5IENBMQ8wDQYDVQQKDAZOVklE\n\
SUEwIBcNMjExMTA1MDAwMDAwWhgPOTk5OTEyMzEyMzU5NTlaMDUxIjAgBgNVBAMM\n\
GU5WSURJQSBEZXZpY2UgSWRlbnRpdHkgQ0ExDzANBgNVBAoMBk5WSURJQTB2MBAG\n\
ByqGSM49AgEGBSuBBAAiA2IABA5MFKM7+KViZljbQSlgfky/RRnEQScW9NDZF8SX\n\
gAW96r6u/Ve8ZggtcYpPi2BS4VFu6KfEIrhN6FcHG7WP05W+oM+hxj7nyA1r1jkB\n\
2Ry70YfThX3Ba1zOryOP+MJ9vaNjMGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B\n\
Af8EBAMCAQYwHQYDVR0OBBYEFFeF/4PyY8xlfWi3Olv0jUrL+0lfMB8GA1UdIwQY\n\
MBaAFFeF/4PyY8xlfWi3Olv0jUrL+0lfMAoGCCqGSM49BAMDA2kAMGYCMQCPeFM3\n\
TASsKQVaT+8S0sO9u97PVGCpE9d/I42IT7k3UUOLSR/qvJynVOD1vQKVXf0CMQC+\n\
EY55WYoDBvs2wPAH1Gw4LbcwUN8QCff8bFmV4ZxjCRr4WXTLFHBKjbfneGSBWwA=\n\
-----END CERTIFICATE-----\n\
";

/// `CN=NVIDIA CoRIM signing Root CA, O=NVIDIA, C=US`, the root of NVIDIA's RIM signers.
const NVIDIA_RIM_ROOT_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIICKTCCAbCgAwIBAgIQRdrjoA5QN73fh1N17LXicDAKBggqhkjOPQQDAzBFMQsw\n\
CQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxOVklESUEgQ29S\n\
SU0gc2lnbmluZyBSb290IENBMCAXDTIzMDMxNjE1MzczNFoYDzIwNTMwMzA4MTUz\n\
NzM0WjBFMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxO\n\
VklESUEgQ29SSU0gc2lnbmluZyBSb290IENBMHYwEAYHKoZIzj0CAQYFK4EEACID\n\
YgAEuECyi9vNM+Iw2lfUzyBldHAwaC1HF7TCgp12QcEyUTm3Tagxwr48d55+K2VI\n\
lWYIDk7NlAIQdcV/Ff7euGLI+Qauj93HsSI4WX298PpW54RTgz9tC+Q684caR/BX\n\
WEeZo2MwYTAdBgNVHQ4EFgQUpaXrOPK4ZDAk08DBskn594zeZjAwHwYDVR0jBBgw\n\
FoAUpaXrOPK4ZDAk08DBskn594zeZjAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B\n\
Af8EBAMCAQYwCgYIKoZIzj0EAwMDZwAwZAIwHGDyscDP6ihHqRvZlI3eqZ4YkvjE\n\
1duaN84tAHRVgxVMvNrp5Tnom3idHYGW/dskAjATvjIx6VzHm/4e2GiZAyZEIUBD\n\
OKPzp5ei/A0iUZpdvngenDwV8Qa/wGdiTmJ7Bp4=\n\
-----END CERTIFICATE-----\n\
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nvidia_root_builds_and_matches_its_pin() {
        let anchors = GpuAnchors::nvidia().unwrap();
        assert_eq!(anchors.root_fingerprints(), vec![NVIDIA_DEVICE_IDENTITY_CA_SHA256]);
        assert!(format!("{anchors:?}").contains("102bf659"));
        assert!(GpuAnchors::empty().root_fingerprints().is_empty());
    }

    #[test]
    fn fwid_shapes_parse() {
        let digest = [0x42u8; 48];
        let mut fwid = vec![0x06, 0x09];
        fwid.extend_from_slice(&SHA384_OID_DER);
        fwid.extend_from_slice(&[0x04, 0x30]);
        fwid.extend_from_slice(&digest);
        let mut fwid_seq = vec![0x30, u8::try_from(fwid.len()).unwrap()];
        fwid_seq.extend_from_slice(&fwid);
        // RIoT: SEQ { INT 1, SEQ {} (a stand-in SPKI), fwid }.
        let mut body = vec![0x02, 0x01, 0x01, 0x30, 0x00];
        body.extend_from_slice(&fwid_seq);
        let mut riot = vec![0x30, 0x81, u8::try_from(body.len()).unwrap()];
        riot.extend_from_slice(&body);
        let parsed = riot_fwid(&riot).unwrap();
        assert_eq!(parsed.fwid, digest);
        assert_eq!(parsed.device_spki.as_deref(), Some(&[0x30, 0x00][..]));
        // Trailing garbage, a SHA-256 OID: refused.
        let mut trailing = riot.clone();
        trailing.push(0);
        assert!(riot_fwid(&trailing).is_none());
        let mut sha256 = riot.clone();
        let oid_at = riot.windows(9).position(|w| w == SHA384_OID_DER).unwrap();
        sha256[oid_at + 8] = 0x01;
        assert!(riot_fwid(&sha256).is_none());
        // DiceTcbInfo: SEQ { [0] "NVIDIA", [6] { fwid } }.
        let mut fwids = vec![0xA6, u8::try_from(fwid_seq.len()).unwrap()];
        fwids.extend_from_slice(&fwid_seq);
        let mut body = vec![0x80, 0x06];
        body.extend_from_slice(b"NVIDIA");
        body.extend_from_slice(&fwids);
        let mut dice = vec![0x30, 0x81, u8::try_from(body.len()).unwrap()];
        dice.extend_from_slice(&body);
        assert_eq!(dice_tcb_info_fwid(&dice).unwrap().fwid, digest);
        assert!(dice_tcb_info_fwid(&[0x30, 0x00]).is_none());
    }
}
