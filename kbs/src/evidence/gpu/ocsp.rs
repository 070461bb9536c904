//! OCSP responses for NVIDIA device certificates (RFC 6960), checked as a
//! pure function: a stapled or cached response, the certificate it is about
//! and that certificate's issuer in, the verified status out.
//!
//! NVIDIA's responder (`ocsp.ndis.nvidia.com`) covers every certificate of a
//! device chain but the leaf and the root. Its responses identify the
//! certificate by a SHA-384 CertID, are signed (ECDSA P-384/SHA-384) by a
//! delegated responder certificate the target's own issuer signed, and are
//! valid for 24 hours (`nextUpdate = thisUpdate + 86 400 s`).
//!
//! [`verify_ocsp_response`] runs these checks in this order:
//!
//! 1. **Parse**: at most [`MAX_OCSP_LEN`] bytes; status `successful`, a
//!    basic response, strict DER layout, at most [`MAX_SINGLE_RESPONSES`]
//!    single responses and [`MAX_RESPONDER_CERTS`] certificates
//!    (`Malformed`).
//! 2. **CertID**: a single response whose CertID is SHA-384 of the issuer's
//!    name and key and the target's serial (`Unauthentic` if none; other
//!    hash algorithms are not accepted).
//! 3. **Signer**: the issuer itself, or a certificate in the response that
//!    the `responderID` names, the issuer signed, carries the OCSPSigning
//!    extended key usage and is valid at `producedAt` (`Unauthentic`).
//! 4. **Signature**: ECDSA P-384/SHA-384 over `tbsResponseData` under the
//!    signer's key (`Unauthentic`).
//! 5. **Freshness**: `producedAt <= now` and `thisUpdate <= now <=
//!    nextUpdate`; a response without `nextUpdate` is never fresh (`Stale`).
//!    Responder validity is judged at `producedAt` and freshness at `now`,
//!    so a cached response stays usable for its window even after its
//!    short-lived responder certificate expires.
//! 6. **Status**: `good` is the only success (`Revoked`, `Unknown`).

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1, UnparsedPublicKey};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use super::chain::{self, SHA384_OID_DER};
use super::der;
use crate::evidence::anchors;
use crate::reason::ReasonCode;

/// Largest response accepted (real: about 2 KiB).
pub const MAX_OCSP_LEN: usize = 16 * 1024;

/// Most single responses looked at in one response.
pub const MAX_SINGLE_RESPONSES: usize = 16;

/// Most certificates accepted in one response.
pub const MAX_RESPONDER_CERTS: usize = 4;

/// Most responses accepted for one device chain.
pub const MAX_STAPLED_RESPONSES: usize = 16;

/// DER of id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1).
const OID_OCSP_BASIC: [u8; 9] = [0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// id-ad-ocsp, the AIA access method of an OCSP responder.
const OID_AD_OCSP: &str = "1.3.6.1.5.5.7.48.1";
/// DER of ecdsa-with-SHA384 (1.2.840.10045.4.3.3).
const OID_ECDSA_WITH_SHA384: [u8; 8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];

/// Why an OCSP response did not show a certificate as good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    /// The response does not parse, or is not a successful basic response.
    #[error("malformed OCSP response: {0}")]
    Malformed(String),
    /// The response is not about this certificate, or not signed by its
    /// issuer or a responder the issuer authorized.
    #[error("OCSP response not authentic: {0}")]
    Unauthentic(String),
    /// The response is outside its validity window at the verification time.
    #[error("OCSP response not fresh: {0}")]
    Stale(String),
    /// The certificate is revoked.
    #[error("certificate revoked at {revoked_at} (reason {reason:?})")]
    Revoked {
        /// When.
        revoked_at: OffsetDateTime,
        /// The CRLReason code, if given.
        reason: Option<u8>,
    },
    /// The responder does not know the certificate.
    #[error("OCSP status unknown")]
    Unknown,
    /// No response covers this certificate.
    #[error("no OCSP response for {0}")]
    Missing(String),
}

impl OcspError {
    /// The stable reason code.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::Malformed(_) => ReasonCode::EvidenceMalformed,
            Self::Unauthentic(_) => ReasonCode::GpuEvidenceInvalid,
            Self::Stale(_) => ReasonCode::CollateralExpired,
            Self::Revoked { .. } | Self::Unknown => ReasonCode::GpuRevoked,
            Self::Missing(_) => ReasonCode::CollateralUnavailable,
        }
    }
}

/// A verified `good` status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspGood {
    /// The target's common name.
    pub subject: String,
    /// The signer's common name (the issuer or its delegated responder).
    pub responder: String,
    /// When the response was signed.
    pub produced_at: OffsetDateTime,
    /// Start of the validity window.
    pub this_update: OffsetDateTime,
    /// End of the validity window.
    pub next_update: OffsetDateTime,
}

enum CertStatus {
    Good,
    Revoked { revoked_at: OffsetDateTime, reason: Option<u8> },
    Unknown,
}

struct SingleResponse<'a> {
    hash_oid: &'a [u8],
    name_hash: &'a [u8],
    key_hash: &'a [u8],
    serial: &'a [u8],
    status: CertStatus,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
}

enum ResponderId<'a> {
    /// Raw DER Name.
    ByName(&'a [u8]),
    /// SHA-1 of the responder's public key (the BIT STRING contents).
    ByKey(&'a [u8]),
}

struct BasicResponse<'a> {
    tbs: &'a [u8],
    signature: &'a [u8],
    responder: ResponderId<'a>,
    produced_at: OffsetDateTime,
    responses: Vec<SingleResponse<'a>>,
    certs: Vec<&'a [u8]>,
}

/// What an authentic response, fresh at the verification time, says about
/// a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspAnswer {
    /// `good`, or the error `Revoked` or `Unknown`.
    pub status: Result<OcspGood, OcspError>,
    /// End of the validity window.
    pub next_update: OffsetDateTime,
}

/// Checks that `response` shows `target` (DER), issued by `issuer` (DER),
/// as good at `now`. See the module docs for the checks.
pub fn verify_ocsp_response(
    response: &[u8],
    target: &[u8],
    issuer: &[u8],
    now: OffsetDateTime,
) -> Result<OcspGood, OcspError> {
    verify_ocsp_answer(response, target, issuer, now)?.status
}

/// Checks 1 to 5 of [`verify_ocsp_response`] (the response is authentic
/// and about `target`, and fresh at `now`) and returns what it says, good
/// or not, with the end of its window: for a cache, which may keep any
/// authentic answer until then.
pub fn verify_ocsp_answer(
    response: &[u8],
    target: &[u8],
    issuer: &[u8],
    now: OffsetDateTime,
) -> Result<OcspAnswer, OcspError> {
    // 1. Parse.
    if response.len() > MAX_OCSP_LEN {
        return Err(OcspError::Malformed(format!("{} bytes, at most {MAX_OCSP_LEN}", response.len())));
    }
    let basic = parse(response).ok_or_else(|| OcspError::Malformed("layout".into()))?;
    let target = chain::parse_cert(target).map_err(|e| OcspError::Malformed(e.to_string()))?;
    let issuer = chain::parse_cert(issuer).map_err(|e| OcspError::Malformed(e.to_string()))?;
    chain::verify_link(&target, &issuer).map_err(|e| OcspError::Unauthentic(e.to_string()))?;
    // 2. CertID.
    let name_hash = digest::digest(&digest::SHA384, issuer.subject().as_raw());
    let key_hash = digest::digest(&digest::SHA384, issuer.public_key().subject_public_key.data.as_ref());
    let serial = anchors::strip_serial_zeros(target.raw_serial());
    let single = basic
        .responses
        .iter()
        .find(|r| {
            r.hash_oid == SHA384_OID_DER
                && r.name_hash == name_hash.as_ref()
                && r.key_hash == key_hash.as_ref()
                && anchors::strip_serial_zeros(r.serial) == serial
        })
        .ok_or_else(|| OcspError::Unauthentic("no SHA-384 CertID for this certificate".into()))?;
    // 3. Signer.
    let signer_owned;
    let signer: &X509Certificate<'_> = if responder_is(&basic.responder, &issuer) {
        &issuer
    } else {
        signer_owned = delegated_responder(&basic, &issuer)?;
        &signer_owned
    };
    // 4. Signature.
    let key = chain::p384_key(signer).map_err(|e| OcspError::Unauthentic(e.to_string()))?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, key)
        .verify(basic.tbs, basic.signature)
        .map_err(|_| OcspError::Unauthentic("signature does not verify".into()))?;
    // 5. Freshness.
    let next_update = single.next_update.ok_or_else(|| OcspError::Stale("no nextUpdate".into()))?;
    if basic.produced_at > now || single.this_update > now || now > next_update {
        return Err(OcspError::Stale(format!(
            "valid {} to {}, produced {}, checked at {now}",
            single.this_update, next_update, basic.produced_at
        )));
    }
    // 6. Status.
    let status = match single.status {
        CertStatus::Good => Ok(OcspGood {
            subject: anchors::common_name(&target),
            responder: anchors::common_name(signer),
            produced_at: basic.produced_at,
            this_update: single.this_update,
            next_update,
        }),
        CertStatus::Revoked { revoked_at, reason } => Err(OcspError::Revoked { revoked_at, reason }),
        CertStatus::Unknown => Err(OcspError::Unknown),
    };
    Ok(OcspAnswer { status, next_update })
}

/// Checks a device chain's revocation with the given (stapled or cached)
/// responses: every certificate OCSP covers (all but the leaf and the
/// root) must have a response that shows it good at `now`. A revoked or
/// unknown status for a certificate wins over any good one; then a fresh
/// good one over a stale one; no authentic response at all is `Missing`.
/// The chain (DER, leaf first) is the one the verifier parsed and verified
/// ([`super::VerifiedDevice::chain`]); one of another length is `Malformed`.
pub fn verify_chain_ocsp(
    ders: &[Vec<u8>],
    responses: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<Vec<OcspGood>, OcspError> {
    if responses.len() > MAX_STAPLED_RESPONSES {
        return Err(OcspError::Malformed(format!("{} responses, at most {MAX_STAPLED_RESPONSES}", responses.len())));
    }
    if ders.len() != chain::CHAIN_LEN {
        return Err(OcspError::Malformed(format!("{} certificates, expected {}", ders.len(), chain::CHAIN_LEN)));
    }
    let mut out = Vec::new();
    for (target, issuer) in covered(ders) {
        let mut good: Option<OcspGood> = None;
        let mut stale = None;
        for response in responses {
            match verify_ocsp_response(response, target, issuer, now) {
                Ok(g) => {
                    if good.as_ref().is_none_or(|have| g.this_update > have.this_update) {
                        good = Some(g);
                    }
                }
                Err(e @ (OcspError::Revoked { .. } | OcspError::Unknown)) => return Err(e),
                Err(e @ OcspError::Stale(_)) => stale = Some(e),
                Err(_) => {}
            }
        }
        match (good, stale) {
            (Some(g), _) => out.push(g),
            (None, Some(e)) => return Err(e),
            (None, None) => {
                let name = chain::parse_cert(target).map(|c| anchors::common_name(&c)).unwrap_or_default();
                return Err(OcspError::Missing(name));
            }
        }
    }
    Ok(out)
}

/// The certificates of a device chain (DER, leaf first) that OCSP covers,
/// each with its issuer: all but the leaf and the root.
pub fn covered(ders: &[Vec<u8>]) -> impl Iterator<Item = (&[u8], &[u8])> {
    ders.windows(2).skip(1).filter_map(|pair| match pair {
        [target, issuer] => Some((target.as_slice(), issuer.as_slice())),
        _ => None,
    })
}

/// The DER OCSP request for `target` (DER), issued by `issuer` (DER), as
/// NVIDIA's responder expects it (RFC 6960 section 4.1.1): one `Request`
/// whose CertID is SHA-384 of the issuer's name and key and the target's
/// serial, unsigned, without a nonce (NVIDIA's responses carry none; their
/// freshness is their `thisUpdate`/`nextUpdate` window).
pub fn request(target: &[u8], issuer: &[u8]) -> Result<Vec<u8>, OcspError> {
    let target = chain::parse_cert(target).map_err(|e| OcspError::Malformed(e.to_string()))?;
    let issuer = chain::parse_cert(issuer).map_err(|e| OcspError::Malformed(e.to_string()))?;
    let name_hash = digest::digest(&digest::SHA384, issuer.subject().as_raw());
    let key_hash = digest::digest(&digest::SHA384, issuer.public_key().subject_public_key.data.as_ref());
    let encode = || -> Option<Vec<u8>> {
        let oid = der::encode(der::OID, &SHA384_OID_DER)?;
        let algorithm = der::encode(der::SEQUENCE, &[oid, vec![der::NULL, 0]].concat())?;
        let cert_id = der::encode(
            der::SEQUENCE,
            &[
                algorithm,
                der::encode(der::OCTET_STRING, name_hash.as_ref())?,
                der::encode(der::OCTET_STRING, key_hash.as_ref())?,
                der::encode(der::INTEGER, target.raw_serial())?,
            ]
            .concat(),
        )?;
        let request = der::encode(der::SEQUENCE, &cert_id)?;
        let request_list = der::encode(der::SEQUENCE, &request)?;
        let tbs_request = der::encode(der::SEQUENCE, &request_list)?;
        der::encode(der::SEQUENCE, &tbs_request)
    };
    encode().ok_or_else(|| OcspError::Malformed("OCSP request too large".into()))
}

/// The OCSP responder a certificate (DER) names in its Authority
/// Information Access extension (`id-ad-ocsp`, a URI), if it names one.
pub fn responder_url(cert: &[u8]) -> Option<String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let cert = chain::parse_cert(cert).ok()?;
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityInfoAccess(aia) => aia.accessdescs.iter().find_map(|desc| {
            match (desc.access_method.to_id_string() == OID_AD_OCSP, &desc.access_location) {
                (true, GeneralName::URI(uri)) if uri.len() <= 512 => Some((*uri).to_owned()),
                _ => None,
            }
        }),
        _ => None,
    })
}

/// The certificate in the response that `responderID` names: signed by
/// `issuer`, an OCSP signer, valid when the response was produced.
fn delegated_responder<'a>(
    basic: &BasicResponse<'a>,
    issuer: &X509Certificate<'_>,
) -> Result<X509Certificate<'a>, OcspError> {
    for der in &basic.certs {
        let cert = chain::parse_cert(der).map_err(|e| OcspError::Malformed(e.to_string()))?;
        if !responder_is(&basic.responder, &cert) {
            continue;
        }
        let name = anchors::common_name(&cert);
        chain::verify_link(&cert, issuer)
            .map_err(|e| OcspError::Unauthentic(format!("responder {name} not signed by the issuer: {e}")))?;
        if !matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.ocsp_signing) {
            return Err(OcspError::Unauthentic(format!("responder {name} lacks the OCSPSigning usage")));
        }
        if !anchors::CertWindow::of(&cert).contains(basic.produced_at) {
            return Err(OcspError::Unauthentic(format!("responder {name} not valid when the response was produced")));
        }
        return Ok(cert);
    }
    Err(OcspError::Unauthentic("no certificate matches the responder id".into()))
}

fn responder_is(id: &ResponderId<'_>, cert: &X509Certificate<'_>) -> bool {
    match id {
        ResponderId::ByName(name) => *name == cert.subject().as_raw(),
        ResponderId::ByKey(hash) => {
            let key = cert.public_key().subject_public_key.data.as_ref();
            digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key).as_ref() == *hash
        }
    }
}

fn parse(input: &[u8]) -> Option<BasicResponse<'_>> {
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT ResponseBytes }
    let (resp, rest) = der::expect(input, der::SEQUENCE)?;
    empty(rest)?;
    let (status, resp) = der::expect(resp, der::ENUMERATED)?;
    if status != [0] {
        return None;
    }
    let (bytes, rest) = der::expect(resp, der::CONTEXT_CONSTRUCTED_0)?;
    empty(rest)?;
    // ResponseBytes ::= SEQUENCE { responseType OID, response OCTET STRING }
    let (bytes, rest) = der::expect(bytes, der::SEQUENCE)?;
    empty(rest)?;
    let (oid, bytes) = der::expect(bytes, der::OID)?;
    if oid != OID_OCSP_BASIC {
        return None;
    }
    let (basic, rest) = der::expect(bytes, der::OCTET_STRING)?;
    empty(rest)?;
    // BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm, signature BIT STRING, certs [0] OPTIONAL }
    let (basic, rest) = der::expect(basic, der::SEQUENCE)?;
    empty(rest)?;
    let (tbs, basic) = der::split_tlv(basic)?;
    let (alg, basic) = der::expect(basic, der::SEQUENCE)?;
    let (alg_oid, alg_rest) = der::expect(alg, der::OID)?;
    if alg_oid != OID_ECDSA_WITH_SHA384 || !alg_rest.is_empty() {
        return None;
    }
    let (signature, basic) = der::expect(basic, der::BIT_STRING)?;
    let (&unused, signature) = signature.split_first()?;
    if unused != 0 {
        return None;
    }
    let (certs_field, basic) = der::optional(basic, der::CONTEXT_CONSTRUCTED_0)?;
    empty(basic)?;
    let mut certs = Vec::new();
    if let Some(field) = certs_field {
        let (mut list, rest) = der::expect(field, der::SEQUENCE)?;
        empty(rest)?;
        while !list.is_empty() {
            let (cert, rest) = der::split_tlv(list)?;
            certs.push(cert);
            if certs.len() > MAX_RESPONDER_CERTS {
                return None;
            }
            list = rest;
        }
    }
    // ResponseData ::= SEQUENCE { version [0] DEFAULT v1, responderID, producedAt, responses, responseExtensions [1] OPTIONAL }
    let (data, rest) = der::expect(tbs, der::SEQUENCE)?;
    empty(rest)?;
    let (version, data) = der::optional(data, der::CONTEXT_CONSTRUCTED_0)?;
    if let Some(version) = version {
        let (v, rest) = der::expect(version, der::INTEGER)?;
        if v != [0] || !rest.is_empty() {
            return None;
        }
    }
    let (tag, id, data) = der::tlv(data)?;
    let responder = match tag {
        der::CONTEXT_CONSTRUCTED_1 => {
            let (name, rest) = der::split_tlv(id)?;
            empty(rest)?;
            ResponderId::ByName(name)
        }
        der::CONTEXT_CONSTRUCTED_2 => {
            let (hash, rest) = der::expect(id, der::OCTET_STRING)?;
            empty(rest)?;
            ResponderId::ByKey(hash)
        }
        _ => return None,
    };
    let (produced_at, data) = der::expect(data, der::GENERALIZED_TIME)?;
    let produced_at = der::generalized_time(produced_at)?;
    let (mut list, data) = der::expect(data, der::SEQUENCE)?;
    let (_extensions, data) = der::optional(data, der::CONTEXT_CONSTRUCTED_1)?;
    empty(data)?;
    let mut responses = Vec::new();
    while !list.is_empty() {
        let (single, rest) = der::expect(list, der::SEQUENCE)?;
        responses.push(single_response(single)?);
        if responses.len() > MAX_SINGLE_RESPONSES {
            return None;
        }
        list = rest;
    }
    Some(BasicResponse { tbs, signature, responder, produced_at, responses, certs })
}

/// SingleResponse ::= SEQUENCE { certID, certStatus, thisUpdate, nextUpdate [0] OPTIONAL, singleExtensions [1] OPTIONAL }
fn single_response(input: &[u8]) -> Option<SingleResponse<'_>> {
    // CertID ::= SEQUENCE { hashAlgorithm, issuerNameHash OCTET, issuerKeyHash OCTET, serialNumber INTEGER }
    let (cert_id, input) = der::expect(input, der::SEQUENCE)?;
    let (alg, cert_id) = der::expect(cert_id, der::SEQUENCE)?;
    let (hash_oid, alg_rest) = der::expect(alg, der::OID)?;
    if !(alg_rest.is_empty() || alg_rest == [der::NULL, 0]) {
        return None;
    }
    let (name_hash, cert_id) = der::expect(cert_id, der::OCTET_STRING)?;
    let (key_hash, cert_id) = der::expect(cert_id, der::OCTET_STRING)?;
    let (serial, cert_id) = der::expect(cert_id, der::INTEGER)?;
    empty(cert_id)?;
    let (tag, content, input) = der::tlv(input)?;
    let status = match tag {
        0x80 if content.is_empty() => CertStatus::Good,
        0x82 if content.is_empty() => CertStatus::Unknown,
        // RevokedInfo ::= SEQUENCE { revocationTime GeneralizedTime, revocationReason [0] EXPLICIT CRLReason OPTIONAL }
        0xA1 => {
            let (time, rest) = der::expect(content, der::GENERALIZED_TIME)?;
            let (reason, rest) = der::optional(rest, der::CONTEXT_CONSTRUCTED_0)?;
            empty(rest)?;
            let reason = match reason {
                Some(r) => match der::expect(r, der::ENUMERATED)? {
                    ([code], []) => Some(*code),
                    _ => return None,
                },
                None => None,
            };
            CertStatus::Revoked { revoked_at: der::generalized_time(time)?, reason }
        }
        _ => return None,
    };
    let (this_update, input) = der::expect(input, der::GENERALIZED_TIME)?;
    let this_update = der::generalized_time(this_update)?;
    let (next_update, input) = der::optional(input, der::CONTEXT_CONSTRUCTED_0)?;
    let next_update = match next_update {
        Some(n) => {
            let (t, rest) = der::expect(n, der::GENERALIZED_TIME)?;
            empty(rest)?;
            Some(der::generalized_time(t)?)
        }
        None => None,
    };
    let (_extensions, input) = der::optional(input, der::CONTEXT_CONSTRUCTED_1)?;
    empty(input)?;
    Some(SingleResponse { hash_oid, name_hash, key_hash, serial, status, this_update, next_update })
}

fn empty(rest: &[u8]) -> Option<()> {
    rest.is_empty().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(OcspError::Malformed("x".into()).reason(), ReasonCode::EvidenceMalformed);
        assert_eq!(OcspError::Unauthentic("x".into()).reason(), ReasonCode::GpuEvidenceInvalid);
        assert_eq!(OcspError::Stale("x".into()).reason(), ReasonCode::CollateralExpired);
        assert_eq!(OcspError::Unknown.reason(), ReasonCode::GpuRevoked);
        assert_eq!(OcspError::Missing("x".into()).reason(), ReasonCode::CollateralUnavailable);
        assert_eq!(ReasonCode::GpuRevoked.grpc_code(), tonic::Code::PermissionDenied);
        assert_eq!(ReasonCode::GpuRevoked.as_str(), "gpu_revoked");
    }

    #[test]
    fn garbage_is_malformed() {
        for bytes in [&b""[..], &[0x30, 0x00], &[0x30, 0x03, 0x0A, 0x01, 0x01], &[0x30, 0x80]] {
            assert!(parse(bytes).is_none());
        }
        let big = vec![0u8; MAX_OCSP_LEN + 1];
        let err = verify_ocsp_response(&big, &[], &[], OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert!(matches!(err, OcspError::Malformed(_)));
    }
}
