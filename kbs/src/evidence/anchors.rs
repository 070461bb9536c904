//! Trust anchors: the pinned AMD roots (ARKs) and the intermediates (ASKs,
//! ASVKs) that are accepted only because a pinned root signed them.
//!
//! Trust in the SEV-SNP chain starts at one AMD Root Key (ARK) per processor
//! generation. The ARKs built into [`SnpAnchors::amd`] are the certificates
//! AMD's Key Distribution Service publishes at
//! `https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,Turin}/cert_chain`; they are
//! pinned twice: by their exact DER encoding embedded below and by SHA-256
//! fingerprints committed as separate constants, and [`SnpAnchors::amd`]
//! refuses to build if the two ever disagree (a stray edit to the PEM text
//! cannot silently move the root).
//!
//! Intermediates (the ASK that signs VCEKs and the ASVK that signs VLEKs)
//! are never trusted by themselves. Whether they come from this file, from an
//! operator's file ([`SnpAnchors::add_intermediate`]) or from the guest's
//! certificate table, they are used only after their RSASSA-PSS signature
//! verifies under a pinned ARK.
//!
//! AMD certificates are checked by signature, not with a generic X.509 path
//! validator: VCEKs carry serial number 0 and non-standard extensions that
//! strict validators reject. Every AMD certificate signature is RSASSA-PSS
//! with SHA-384, MGF1-SHA-384 and a 48-byte salt; anything else is refused.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, ParsedPublicKey, RSA_PSS_2048_8192_SHA384, UnparsedPublicKey,
};
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::AlgorithmIdentifier;

use super::EvidenceError;

/// SHA-256 of the DER encoding of ARK-Milan.
pub const ARK_MILAN_SHA256: [u8; 32] = [
    0x69, 0xd0, 0x63, 0xb4, 0x53, 0x44, 0xd2, 0x6a, 0x2e, 0x94, 0xe1, 0xf4, 0x21, 0x0d, 0xe4, 0x9e, 0xf5, 0x55, 0x30,
    0x82, 0x87, 0xd4, 0xc1, 0x74, 0x44, 0x5c, 0x95, 0x63, 0x9a, 0x54, 0x0b, 0xcd,
];
/// SHA-256 of the DER encoding of ARK-Genoa.
pub const ARK_GENOA_SHA256: [u8; 32] = [
    0x4c, 0x65, 0x98, 0xd1, 0x9c, 0x18, 0x71, 0x9c, 0x5d, 0xfd, 0x4a, 0x7d, 0x33, 0x5f, 0x67, 0x4e, 0x5b, 0xfe, 0x1d,
    0x8f, 0x80, 0x0c, 0xea, 0x2c, 0xf2, 0x70, 0xc1, 0x0d, 0x10, 0x3d, 0xb2, 0xf1,
];
/// SHA-256 of the DER encoding of ARK-Turin.
pub const ARK_TURIN_SHA256: [u8; 32] = [
    0x1f, 0x08, 0x41, 0x61, 0xa4, 0x4b, 0xb6, 0xd9, 0x37, 0x78, 0xa9, 0x04, 0x87, 0x7d, 0x48, 0x19, 0xca, 0xfa, 0x5d,
    0x05, 0xef, 0x41, 0x93, 0xb2, 0xde, 0xd9, 0xdd, 0x9c, 0x73, 0xdd, 0x3f, 0x6a,
];
/// SHA-256 of the DER encoding of the built-in ASK SEV-Milan.
pub const ASK_MILAN_SHA256: [u8; 32] = [
    0x67, 0xd3, 0x03, 0xbd, 0x39, 0x05, 0xfd, 0x38, 0xdb, 0x8b, 0x20, 0xe0, 0x79, 0x36, 0x99, 0x87, 0x0e, 0x7f, 0xa6,
    0x12, 0xea, 0xad, 0x5d, 0xec, 0x35, 0x82, 0x93, 0xfd, 0x8c, 0x0b, 0xac, 0x1b,
];
/// SHA-256 of the DER encoding of the built-in ASK SEV-Genoa.
pub const ASK_GENOA_SHA256: [u8; 32] = [
    0x54, 0x64, 0x73, 0x8c, 0x15, 0x46, 0xae, 0xd5, 0xf2, 0xce, 0xcf, 0x1d, 0xc9, 0x8c, 0x5c, 0x96, 0x0a, 0x92, 0xe8,
    0x91, 0x32, 0x38, 0xa6, 0x17, 0x11, 0xbc, 0x90, 0xec, 0x6e, 0x82, 0x85, 0x21,
];
/// SHA-256 of the DER encoding of the built-in ASK SEV-Turin.
pub const ASK_TURIN_SHA256: [u8; 32] = [
    0x5b, 0x77, 0xef, 0x5f, 0xe7, 0xa7, 0xa0, 0x04, 0xfd, 0x90, 0x32, 0x66, 0x8f, 0xba, 0x9d, 0x0f, 0xda, 0x22, 0xf8,
    0x8c, 0x44, 0x42, 0x06, 0x9a, 0x47, 0x96, 0x36, 0xa6, 0xae, 0x3b, 0x31, 0x85,
];

/// SHA-256 of the DER encoding of the built-in ASVK SEV-VLEK-Milan.
pub const ASVK_MILAN_SHA256: [u8; 32] = [
    0xc5, 0xe0, 0x81, 0xf5, 0x9b, 0x7e, 0xfa, 0xb1, 0xfe, 0x2f, 0x8b, 0x50, 0x5e, 0x15, 0x97, 0x04, 0xe7, 0x2f, 0x29,
    0xca, 0xb7, 0xef, 0x7c, 0xf6, 0x28, 0xa0, 0x5a, 0x42, 0x43, 0x90, 0x82, 0xf5,
];
/// SHA-256 of the DER encoding of the built-in ASVK SEV-VLEK-Genoa.
pub const ASVK_GENOA_SHA256: [u8; 32] = [
    0x19, 0x7e, 0x61, 0x07, 0x43, 0xa9, 0x17, 0xd6, 0xb9, 0xbb, 0x98, 0x2a, 0x5a, 0x92, 0x26, 0xcc, 0xc0, 0xa1, 0x5b,
    0x61, 0x1b, 0xe0, 0x61, 0x9e, 0x62, 0x6a, 0xca, 0x91, 0x51, 0x45, 0x73, 0x72,
];
/// SHA-256 of the DER encoding of the built-in ASVK SEV-VLEK-Turin.
pub const ASVK_TURIN_SHA256: [u8; 32] = [
    0x10, 0x4e, 0x10, 0xa8, 0xbd, 0x06, 0x0a, 0x3c, 0x20, 0xa4, 0x34, 0x26, 0x1a, 0x57, 0xd0, 0x58, 0x8f, 0xd6, 0x5a,
    0x88, 0x91, 0x5b, 0x4f, 0x65, 0xb0, 0x8b, 0xde, 0xca, 0xf8, 0xdf, 0x1a, 0x3c,
];

/// Largest certificate accepted anywhere: the AMD chain, the Intel PCK chain,
/// certificates in CoCo evidence. AMD's are 1.3-1.7 KiB; the cap keeps a
/// hostile "certificate" from costing more than a parse.
pub const MAX_CERT_LEN: usize = 16 * 1024;

/// Largest operator intermediate file ([`SnpAnchors::add_intermediate`]).
pub const MAX_INTERMEDIATE_FILE_LEN: usize = 1024 * 1024;

/// Most intermediates one anchor set holds; operator files are small bundles.
const MAX_INTERMEDIATES: usize = 256;

/// Most roots one anchor set holds.
const MAX_ROOTS: usize = 64;

const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";
const OID_MGF1: &str = "1.2.840.113549.1.1.8";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
/// Salt length AMD uses for RSASSA-PSS: the SHA-384 digest length.
const PSS_SALT_LEN: u32 = 48;

/// An AMD SEV-SNP processor generation. Each has its own ARK, ASK and ASVK,
/// and its own byte layout of the TCB version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004/8004 (Zen 4, including Bergamo and Siena).
    Genoa,
    /// EPYC 9005 (Zen 5).
    Turin,
}

impl Generation {
    /// Every generation this broker knows, oldest first.
    pub const ALL: [Generation; 3] = [Generation::Milan, Generation::Genoa, Generation::Turin];

    /// The lowercase name used in claims and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Milan => "milan",
            Self::Genoa => "genoa",
            Self::Turin => "turin",
        }
    }

    /// The product name as AMD KDS spells it in URLs (`/vcek/v1/{product}/..`).
    pub const fn kds_product(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// The generation named by a VCEK/VLEK `productName` extension
    /// (`Milan-B0`, `Genoa`, `Turin`, ...): the part before the stepping.
    pub fn from_product_name(name: &str) -> Option<Self> {
        let product = name.split('-').next().unwrap_or_default();
        Self::ALL.into_iter().find(|g| g.kds_product() == product)
    }

    /// The generation of a CPUID family and model as the report (v3+)
    /// carries them: family 19h models 00h-0Fh Milan, 10h-1Fh and A0h-AFh
    /// Genoa; family 1Ah models 00h-11h Turin.
    pub const fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0f) => Some(Self::Milan),
            (0x19, 0x10..=0x1f) | (0x19, 0xa0..=0xaf) => Some(Self::Genoa),
            (0x1a, 0x00..=0x11) => Some(Self::Turin),
            _ => None,
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kds_product())
    }
}

/// What an intermediate signs: the ASK signs VCEKs, the ASVK signs VLEKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntermediateKind {
    /// AMD SEV Signing Key (`SEV-<Product>`), issuer of VCEKs.
    Ask,
    /// AMD SEV VLEK Signing Key (`SEV-VLEK-<Product>`), issuer of VLEKs.
    Asvk,
}

/// The validity period of one certificate in a chain, kept so the verifier
/// can check every link against the caller's `now` (check 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CertWindow {
    /// Which certificate (its common name), for the error message.
    pub(crate) label: String,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

impl CertWindow {
    pub(crate) fn of(cert: &X509Certificate<'_>) -> Self {
        Self {
            label: common_name(cert),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        }
    }

    /// Whether `now` lies inside the window (both ends inclusive, as RFC 5280).
    pub(crate) fn contains(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// A pinned ARK.
#[derive(Clone)]
struct Root {
    generation: Generation,
    fingerprint: [u8; 32],
    subject: Vec<u8>,
    key: Arc<ParsedPublicKey>,
    window: CertWindow,
}

/// An ASK or ASVK whose signature verified under a pinned ARK.
#[derive(Clone)]
pub(crate) struct Intermediate {
    pub(crate) generation: Generation,
    pub(crate) kind: IntermediateKind,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) subject: Vec<u8>,
    /// Serial number, big-endian without sign-padding zeros: what its
    /// ARK's CRL lists when AMD revokes it.
    pub(crate) serial: Vec<u8>,
    pub(crate) key: Arc<ParsedPublicKey>,
    /// The intermediate's own validity.
    pub(crate) window: CertWindow,
    /// The validity of the ARK that signed it.
    pub(crate) root_window: CertWindow,
}

/// The SEV-SNP trust anchors: pinned ARKs per generation and the
/// intermediates they signed.
#[derive(Clone)]
pub struct SnpAnchors {
    roots: Vec<Root>,
    intermediates: Vec<Intermediate>,
}

/// All trust anchors the broker verifies evidence against.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    /// AMD SEV-SNP roots and intermediates.
    pub snp: SnpAnchors,
    /// Intel SGX/TDX roots (the Intel SGX Root CA).
    pub tdx: TdxAnchors,
}

impl TrustAnchors {
    /// The production anchors: AMD's and Intel's pinned roots.
    pub fn production() -> Result<Self, EvidenceError> {
        Ok(Self { snp: SnpAnchors::amd()?, tdx: TdxAnchors::intel()? })
    }
}

/// SHA-256 of the DER encoding of the Intel SGX Root CA
/// (`CN=Intel SGX Root CA`, valid 2018-05-21 to 2049-12-31), the root of
/// every PCK certificate, TCB signing certificate and CRL of Intel DCAP.
pub const INTEL_SGX_ROOT_CA_SHA256: [u8; 32] = [
    0x44, 0xa0, 0x19, 0x6b, 0x2b, 0x99, 0xf8, 0x89, 0xb8, 0xe1, 0x49, 0xe9, 0x5b, 0x80, 0x7a, 0x35, 0x0e, 0x74, 0x24,
    0x96, 0x43, 0x99, 0xe8, 0x85, 0xa7, 0xcb, 0xb8, 0xcc, 0xfa, 0xb6, 0x74, 0xd3,
];

/// Most roots one TDX anchor set holds.
const MAX_TDX_ROOTS: usize = 16;

/// A pinned Intel (or, in development, test) SGX root: a self-signed
/// ECDSA P-256 CA certificate.
#[derive(Clone)]
pub(crate) struct TdxRoot {
    /// The DER encoding, handed to the DCAP engine as its trust anchor.
    pub(crate) der: Arc<[u8]>,
    pub(crate) fingerprint: [u8; 32],
    /// Raw DER subject name.
    pub(crate) subject: Vec<u8>,
    /// The uncompressed SEC1 public key point.
    pub(crate) key: Vec<u8>,
    pub(crate) window: CertWindow,
}

/// The Intel TDX trust anchors: pinned SGX root CAs. Nothing below a root
/// is pinned: PCK CAs and TCB signing certificates are accepted per
/// verification, only after their signature verifies under a pinned root.
#[derive(Clone, Default)]
pub struct TdxAnchors {
    roots: Vec<TdxRoot>,
}

impl TdxAnchors {
    /// Intel's SGX Root CA, checked against [`INTEL_SGX_ROOT_CA_SHA256`].
    pub fn intel() -> Result<Self, EvidenceError> {
        let der = single_pem(INTEL_SGX_ROOT_CA_PEM)?;
        if sha256(&der) != INTEL_SGX_ROOT_CA_SHA256 {
            return Err(EvidenceError::UntrustedRoot(
                "built-in Intel SGX Root CA does not match its pinned fingerprint".into(),
            ));
        }
        let mut anchors = Self::empty();
        anchors.add_root(&der)?;
        Ok(anchors)
    }

    /// No roots: verifies nothing until roots are added.
    pub fn empty() -> Self {
        Self { roots: Vec::new() }
    }

    /// Pins an extra root (a test PKI's SGX root). It must be a
    /// self-signed ECDSA P-256 CA certificate. Pinning a root is a trust
    /// decision: callers gate this behind a dev flag.
    pub fn add_root(&mut self, der: &[u8]) -> Result<(), EvidenceError> {
        let fingerprint = sha256(der);
        if self.roots.iter().any(|r| r.fingerprint == fingerprint) {
            return Ok(());
        }
        if self.roots.len() >= MAX_TDX_ROOTS {
            return Err(EvidenceError::UntrustedRoot("too many pinned roots".into()));
        }
        let cert = parse_der_cert(der)?;
        if cert.issuer().as_raw() != cert.subject().as_raw() {
            return Err(EvidenceError::UntrustedRoot(format!(
                "{} is not self-issued, so it cannot be a root",
                common_name(&cert)
            )));
        }
        require_ca(&cert)?;
        let key = cert.public_key().subject_public_key.data.to_vec();
        verify_p256_cert_signature(&cert, &key).map_err(|_| {
            EvidenceError::UntrustedRoot(format!("{} is not self-signed with ECDSA P-256/SHA-256", common_name(&cert)))
        })?;
        self.roots.push(TdxRoot {
            der: Arc::from(der),
            fingerprint,
            subject: cert.subject().as_raw().to_vec(),
            key,
            window: CertWindow::of(&cert),
        });
        Ok(())
    }

    /// The SHA-256 fingerprints of the pinned roots.
    pub fn root_fingerprints(&self) -> Vec<[u8; 32]> {
        self.roots.iter().map(|r| r.fingerprint).collect()
    }

    /// Pinned roots whose subject is `name` (raw DER).
    pub(crate) fn roots_named(&self, name: &[u8]) -> impl Iterator<Item = &TdxRoot> {
        self.roots.iter().filter(move |r| r.subject == name)
    }
}

impl fmt::Debug for TdxAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roots: Vec<String> =
            self.roots.iter().map(|r| format!("{} {}", r.window.label, hex::encode(r.fingerprint))).collect();
        f.debug_struct("TdxAnchors").field("roots", &roots).finish()
    }
}

const OID_ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";

/// Verifies that the holder of the uncompressed P-256 point `issuer_key`
/// signed `cert` with ECDSA/SHA-256, the only algorithm of Intel's DCAP
/// PKI; the inner and outer algorithm identifiers must agree.
pub(crate) fn verify_p256_cert_signature(cert: &X509Certificate<'_>, issuer_key: &[u8]) -> Result<(), EvidenceError> {
    let name = common_name(cert);
    if cert.signature_algorithm != cert.tbs_certificate.signature
        || cert.signature_algorithm.algorithm.to_id_string() != OID_ECDSA_WITH_SHA256
        || cert.signature_value.unused_bits != 0
    {
        return Err(EvidenceError::ChainInvalid(format!("{name}: signature algorithm is not ECDSA/SHA-256")));
    }
    verify_p256_der(issuer_key, cert.tbs_certificate.as_ref(), cert.signature_value.data.as_ref())
        .map_err(|()| EvidenceError::ChainInvalid(format!("{name}: signature does not verify under its issuer")))
}

/// ECDSA P-256/SHA-256 with an ASN.1 DER signature.
pub(crate) fn verify_p256_der(key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), ()> {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key).verify(message, signature).map_err(|_| ())
}

/// ECDSA P-256/SHA-256 with a raw `r || s` signature (32 + 32 bytes, big-endian).
pub(crate) fn verify_p256_raw(key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), ()> {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key).verify(message, signature).map_err(|_| ())
}

impl SnpAnchors {
    /// AMD's ARKs for Milan, Genoa and Turin, each checked against its
    /// pinned SHA-256 fingerprint, plus AMD's ASKs (VCEK signers) and
    /// ASVKs (VLEK signers), each checked against its fingerprint and by
    /// signature under its ARK. More intermediates (a re-issued ASK) can
    /// be added from an operator file with [`SnpAnchors::add_intermediate`].
    pub fn amd() -> Result<Self, EvidenceError> {
        let mut anchors = Self::empty();
        for (generation, ark_pem, ark_fp, intermediates) in [
            (
                Generation::Milan,
                MILAN_ARK_PEM,
                ARK_MILAN_SHA256,
                [(MILAN_ASK_PEM, ASK_MILAN_SHA256), (MILAN_ASVK_PEM, ASVK_MILAN_SHA256)],
            ),
            (
                Generation::Genoa,
                GENOA_ARK_PEM,
                ARK_GENOA_SHA256,
                [(GENOA_ASK_PEM, ASK_GENOA_SHA256), (GENOA_ASVK_PEM, ASVK_GENOA_SHA256)],
            ),
            (
                Generation::Turin,
                TURIN_ARK_PEM,
                ARK_TURIN_SHA256,
                [(TURIN_ASK_PEM, ASK_TURIN_SHA256), (TURIN_ASVK_PEM, ASVK_TURIN_SHA256)],
            ),
        ] {
            let ark = single_pem(ark_pem)?;
            if sha256(&ark) != ark_fp {
                return Err(EvidenceError::UntrustedRoot(format!(
                    "built-in ARK-{generation} does not match its pinned fingerprint"
                )));
            }
            anchors.add_root(generation, &ark)?;
            for (pem, fp) in intermediates {
                let der = single_pem(pem)?;
                if sha256(&der) != fp {
                    return Err(EvidenceError::UntrustedRoot(format!(
                        "a built-in intermediate for {generation} does not match its pinned fingerprint"
                    )));
                }
                anchors.add_intermediate(&der)?;
            }
        }
        Ok(anchors)
    }

    /// No roots and no intermediates: verifies nothing until roots are added.
    pub fn empty() -> Self {
        Self { roots: Vec::new(), intermediates: Vec::new() }
    }

    /// Pins an extra ARK for `generation` (a test PKI's root, say). The
    /// certificate must be a self-signed CA certificate, RSASSA-PSS/SHA-384. Pinning a
    /// root is a trust decision: callers gate this behind a dev flag.
    pub fn add_root(&mut self, generation: Generation, ark_der: &[u8]) -> Result<(), EvidenceError> {
        let fingerprint = sha256(ark_der);
        if self.roots.iter().any(|r| r.fingerprint == fingerprint && r.generation == generation) {
            return Ok(());
        }
        if self.roots.len() >= MAX_ROOTS {
            return Err(EvidenceError::UntrustedRoot("too many pinned roots".into()));
        }
        let cert = parse_der_cert(ark_der)?;
        if cert.issuer().as_raw() != cert.subject().as_raw() {
            return Err(EvidenceError::UntrustedRoot(format!(
                "{} is not self-issued, so it cannot be a root",
                common_name(&cert)
            )));
        }
        require_ca(&cert)?;
        let key = Arc::new(rsa_key(&cert)?);
        verify_cert_signature(&cert, &key).map_err(|_| {
            EvidenceError::UntrustedRoot(format!("{} is not self-signed with RSASSA-PSS/SHA-384", common_name(&cert)))
        })?;
        self.roots.push(Root {
            generation,
            fingerprint,
            subject: cert.subject().as_raw().to_vec(),
            key,
            window: CertWindow::of(&cert),
        });
        Ok(())
    }

    /// Adds ASKs/ASVKs from an operator file: one DER certificate or a PEM
    /// bundle (AMD's `cert_chain` files carry the ARK too; a pinned ARK in
    /// the bundle is skipped). Every other certificate must be a CA
    /// certificate signed by a pinned ARK, or nothing from the file is
    /// added. One whose common name starts with `SEV-VLEK` is an ASVK (it
    /// may only vouch for VLEKs); any other is an ASK (VCEKs only). Returns
    /// how many new intermediates were added (known ones are not counted).
    pub fn add_intermediate(&mut self, der_or_pem: &[u8]) -> Result<usize, EvidenceError> {
        if der_or_pem.len() > MAX_INTERMEDIATE_FILE_LEN {
            return Err(EvidenceError::TooLarge { len: der_or_pem.len(), max: MAX_INTERMEDIATE_FILE_LEN });
        }
        let ders = if looks_like_pem(der_or_pem) { pem_certificates(der_or_pem)? } else { vec![der_or_pem.to_vec()] };
        let mut fresh: Vec<Intermediate> = Vec::new();
        let mut added = 0usize;
        for der in &ders {
            let fingerprint = sha256(der);
            if self.roots.iter().any(|r| r.fingerprint == fingerprint)
                || self.intermediates.iter().chain(fresh.iter()).any(|i| i.fingerprint == fingerprint)
            {
                continue;
            }
            fresh.extend(self.check_intermediate(der)?);
            added = added.saturating_add(1);
        }
        if self.intermediates.len().saturating_add(fresh.len()) > MAX_INTERMEDIATES {
            return Err(EvidenceError::UntrustedRoot("too many intermediates".into()));
        }
        self.intermediates.extend(fresh);
        Ok(added)
    }

    /// The SHA-256 fingerprints of the pinned roots, with their generation.
    pub fn root_fingerprints(&self) -> Vec<(Generation, [u8; 32])> {
        self.roots.iter().map(|r| (r.generation, r.fingerprint)).collect()
    }

    /// The SHA-256 fingerprints of the accepted intermediates.
    pub fn intermediate_fingerprints(&self) -> Vec<(Generation, IntermediateKind, [u8; 32])> {
        self.intermediates.iter().map(|i| (i.generation, i.kind, i.fingerprint)).collect()
    }

    /// Intermediates already accepted whose subject is `issuer` (raw DER name).
    pub(crate) fn intermediates_named(&self, issuer: &[u8]) -> impl Iterator<Item = &Intermediate> {
        self.intermediates.iter().filter(move |i| i.subject == issuer)
    }

    /// The pinned roots whose subject is `issuer`: generation, key and
    /// fingerprint, for checking a CRL they issued.
    pub(crate) fn roots_named<'a>(
        &'a self,
        issuer: &'a [u8],
    ) -> impl Iterator<Item = (Generation, &'a ParsedPublicKey, [u8; 32])> + 'a {
        self.roots.iter().filter(move |r| r.subject == issuer).map(|r| (r.generation, r.key.as_ref(), r.fingerprint))
    }

    /// Whether `der` is a pinned root or an intermediate already accepted.
    pub(crate) fn knows(&self, fingerprint: &[u8; 32]) -> bool {
        self.roots.iter().any(|r| &r.fingerprint == fingerprint)
            || self.intermediates.iter().any(|i| &i.fingerprint == fingerprint)
    }

    /// Checks that `der` is an intermediate signed by a pinned ARK and
    /// returns it, once per generation that ARK is pinned for (a test root
    /// may be pinned for several); the anchors are not changed. Used for
    /// operator files and for the ASK/ASVK a guest sends in its table.
    pub(crate) fn check_intermediate(&self, der: &[u8]) -> Result<Vec<Intermediate>, EvidenceError> {
        let cert = parse_der_cert(der)?;
        let name = common_name(&cert);
        let issuer = cert.issuer().as_raw();
        // A root (or a re-encoding of one) is not an intermediate: its key
        // would then sign VEKs directly, which AMD never does.
        if issuer == cert.subject().as_raw() {
            return Err(EvidenceError::UntrustedRoot(format!("{name} is self-issued, not an intermediate")));
        }
        require_ca(&cert)?;
        let kind = if name.starts_with("SEV-VLEK") { IntermediateKind::Asvk } else { IntermediateKind::Ask };
        let fingerprint = sha256(der);
        let mut key: Option<Arc<ParsedPublicKey>> = None;
        let mut signed_by: Vec<[u8; 32]> = Vec::new();
        let mut out: Vec<Intermediate> = Vec::new();
        for root in self.roots.iter().filter(|r| r.subject == issuer) {
            // One signature check per distinct root certificate.
            if !signed_by.contains(&root.fingerprint) {
                if verify_cert_signature(&cert, &root.key).is_err() {
                    continue;
                }
                signed_by.push(root.fingerprint);
            }
            if out.iter().any(|i| i.generation == root.generation) {
                continue;
            }
            let key = match &key {
                Some(k) => Arc::clone(k),
                None => Arc::clone(key.insert(Arc::new(rsa_key(&cert)?))),
            };
            out.push(Intermediate {
                generation: root.generation,
                kind,
                fingerprint,
                subject: cert.subject().as_raw().to_vec(),
                serial: strip_serial_zeros(cert.raw_serial()).to_vec(),
                key,
                window: CertWindow::of(&cert),
                root_window: root.window.clone(),
            });
        }
        if out.is_empty() {
            return Err(EvidenceError::UntrustedRoot(format!("{name} is not signed by a pinned AMD root")));
        }
        Ok(out)
    }
}

impl fmt::Debug for SnpAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roots: Vec<String> = self
            .roots
            .iter()
            .map(|r| format!("{} {} {}", r.generation, r.window.label, hex::encode(r.fingerprint)))
            .collect();
        let intermediates: Vec<String> = self
            .intermediates
            .iter()
            .map(|i| format!("{} {} {}", i.generation, i.window.label, hex::encode(i.fingerprint)))
            .collect();
        f.debug_struct("SnpAnchors").field("roots", &roots).field("intermediates", &intermediates).finish()
    }
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// Parses one DER certificate, refusing oversize input and trailing bytes.
pub(crate) fn parse_der_cert(der: &[u8]) -> Result<X509Certificate<'_>, EvidenceError> {
    if der.len() > MAX_CERT_LEN {
        return Err(EvidenceError::TooLarge { len: der.len(), max: MAX_CERT_LEN });
    }
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(EvidenceError::CertificateMalformed("trailing bytes after the certificate".into())),
        Err(e) => Err(EvidenceError::CertificateMalformed(e.to_string())),
    }
}

/// The certificate's first common name, or a placeholder for messages.
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("<no common name>").to_owned()
}

/// ARKs, ASKs and ASVKs are CA certificates (basicConstraints CA:TRUE);
/// a VEK or any other end-entity certificate cannot stand in for one.
fn require_ca(cert: &X509Certificate<'_>) -> Result<(), EvidenceError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        _ => Err(EvidenceError::UntrustedRoot(format!("{} is not a CA certificate", common_name(cert)))),
    }
}

/// The RSA public key of an ARK/ASK/ASVK, parsed once for PSS verification.
fn rsa_key(cert: &X509Certificate<'_>) -> Result<ParsedPublicKey, EvidenceError> {
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    if alg != OID_RSA_ENCRYPTION && alg != OID_RSASSA_PSS {
        return Err(EvidenceError::CertificateMalformed(format!("{} does not carry an RSA key", common_name(cert))));
    }
    ParsedPublicKey::new(&RSA_PSS_2048_8192_SHA384, spki.subject_public_key.data.as_ref())
        .map_err(|e| EvidenceError::CertificateMalformed(format!("{}: unusable RSA key: {e}", common_name(cert))))
}

/// Refuses any signature algorithm but AMD's: RSASSA-PSS, SHA-384,
/// MGF1-SHA-384, 48-byte salt, trailer 1; the inner and outer algorithm
/// identifiers must agree (RFC 5280, 4.1.1.2).
pub(crate) fn check_amd_signature_algorithm(cert: &X509Certificate<'_>) -> Result<(), EvidenceError> {
    check_amd_algorithm(&cert.signature_algorithm, &cert.tbs_certificate.signature)
        .map_err(|what| EvidenceError::ChainInvalid(format!("{}: {what}", common_name(cert))))
}

/// [`check_amd_signature_algorithm`] for any signed AMD object (a
/// certificate or a CRL): `outer` is the algorithm next to the signature,
/// `inner` the one inside the signed part. The error says what is wrong.
pub(crate) fn check_amd_algorithm(
    outer: &AlgorithmIdentifier<'_>,
    inner: &AlgorithmIdentifier<'_>,
) -> Result<(), String> {
    let bad = |what: &str| format!("signature algorithm is not RSASSA-PSS/SHA-384 ({what})");
    if outer != inner {
        return Err(bad("inner and outer algorithms differ"));
    }
    if outer.algorithm.to_id_string() != OID_RSASSA_PSS {
        return Err(bad("not RSASSA-PSS"));
    }
    let Ok(SignatureAlgorithm::RSASSA_PSS(params)) = SignatureAlgorithm::try_from(outer) else {
        return Err(bad("bad parameters"));
    };
    if params.hash_algorithm_oid().to_id_string() != OID_SHA384 {
        return Err(bad("hash"));
    }
    match params.mask_gen_algorithm() {
        Ok(mgf) if mgf.mgf.to_id_string() == OID_MGF1 && mgf.hash.to_id_string() == OID_SHA384 => {}
        _ => return Err(bad("mask generation")),
    }
    if params.salt_length() != PSS_SALT_LEN || params.trailer_field() != 1 {
        return Err(bad("salt or trailer"));
    }
    Ok(())
}

/// A DER serial number without its sign-padding zeros, the form CRL
/// entries are compared in.
pub(crate) fn strip_serial_zeros(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial.get(start..).unwrap_or_default()
}

/// Verifies that `issuer_key` signed `cert` with AMD's algorithm.
pub(crate) fn verify_cert_signature(
    cert: &X509Certificate<'_>,
    issuer_key: &ParsedPublicKey,
) -> Result<(), EvidenceError> {
    check_amd_signature_algorithm(cert)?;
    if cert.signature_value.unused_bits != 0 {
        return Err(EvidenceError::ChainInvalid(format!(
            "{}: signature is not a whole number of bytes",
            common_name(cert)
        )));
    }
    issuer_key.verify_sig(cert.tbs_certificate.as_ref(), cert.signature_value.data.as_ref()).map_err(|_| {
        EvidenceError::ChainInvalid(format!("{}: signature does not verify under its issuer", common_name(cert)))
    })
}

/// Whether the bytes look like PEM text rather than DER.
fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// The DER contents of every `CERTIFICATE` block of a PEM file.
pub(crate) fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, EvidenceError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| EvidenceError::CertificateMalformed(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(EvidenceError::CertificateMalformed("no CERTIFICATE block in PEM input".into()));
    }
    Ok(out)
}

/// The one certificate of a built-in PEM constant.
fn single_pem(pem: &str) -> Result<Vec<u8>, EvidenceError> {
    let mut ders = pem_certificates(pem.as_bytes())?;
    match (ders.pop(), ders.is_empty()) {
        (Some(der), true) => Ok(der),
        _ => Err(EvidenceError::CertificateMalformed("built-in PEM must hold exactly one certificate".into())),
    }
}

// Built-in AMD certificates, as AMD KDS serves them at /vcek/v1/{product}/cert_chain
// (ARKs, ASKs) and /vlek/v1/{product}/cert_chain (ASVKs).
/// Milan AMD Root Key (PEM).
const MILAN_ARK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGYzCCBBKgAwIBAgIDAQAAMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstTWlsYW4wHhcNMjAxMDIyMTcyMzA1WhcNNDUxMDIy\n\
MTcyMzA1WjB7MRQwEgYDVQQLDAtFbmdpbmVlcmluZzELMAkGA1UEBhMCVVMxFDAS\n\
BgNVBAcMC1NhbnRhIENsYXJhMQswCQYDVQQIDAJDQTEfMB0GA1UECgwWQWR2YW5j\n\
ZWQgTWljcm8gRGV2aWNlczESMBAGA1UEAwwJQVJLLU1pbGFuMIICIjANBgkqhkiG\n\
9w0BAQEFAAOCAg8AMIICCgKCAgEA0Ld52RJOdeiJlqK2JdsVmD7FktuotWwX1fNg\n\
W41XY9Xz1HEhSUmhLz9Cu9DHRlvgJSNxbeYYsnJfvyjx1MfU0V5tkKiU1EesNFta\n\
1kTA0szNisdYc9isqk7mXT5+KfGRbfc4V/9zRIcE8jlHN61S1ju8X93+6dxDUrG2\n\
SzxqJ4BhqyYmUDruPXJSX4vUc01P7j98MpqOS95rORdGHeI52Naz5m2B+O+vjsC0\n\
60d37jY9LFeuOP4Meri8qgfi2S5kKqg/aF6aPtuAZQVR7u3KFYXP59XmJgtcog05\n\
gmI0T/OitLhuzVvpZcLph0odh/1IPXqx3+MnjD97A7fXpqGd/y8KxX7jksTEzAOg\n\
bKAeam3lm+3yKIcTYMlsRMXPcjNbIvmsBykD//xSniusuHBkgnlENEWx1UcbQQrs\n\
+gVDkuVPhsnzIRNgYvM48Y+7LGiJYnrmE8xcrexekBxrva2V9TJQqnN3Q53kt5vi\n\
Qi3+gCfmkwC0F0tirIZbLkXPrPwzZ0M9eNxhIySb2npJfgnqz55I0u33wh4r0ZNQ\n\
eTGfw03MBUtyuzGesGkcw+loqMaq1qR4tjGbPYxCvpCq7+OgpCCoMNit2uLo9M18\n\
fHz10lOMT8nWAUvRZFzteXCm+7PHdYPlmQwUw3LvenJ/ILXoQPHfbkH0CyPfhl1j\n\
WhJFZasCAwEAAaN+MHwwDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBSFrBrRQ/fI\n\
rFXUxR1BSKvVeErUUzAPBgNVHRMBAf8EBTADAQH/MDoGA1UdHwQzMDEwL6AtoCuG\n\
KWh0dHBzOi8va2RzaW50Zi5hbWQuY29tL3ZjZWsvdjEvTWlsYW4vY3JsMEYGCSqG\n\
SIb3DQEBCjA5oA8wDQYJYIZIAWUDBAICBQChHDAaBgkqhkiG9w0BAQgwDQYJYIZI\n\
AWUDBAICBQCiAwIBMKMDAgEBA4ICAQC6m0kDp6zv4Ojfgy+zleehsx6ol0ocgVel\n\
ETobpx+EuCsqVFRPK1jZ1sp/lyd9+0fQ0r66n7kagRk4Ca39g66WGTJMeJdqYriw\n\
STjjDCKVPSesWXYPVAyDhmP5n2v+BYipZWhpvqpaiO+EGK5IBP+578QeW/sSokrK\n\
dHaLAxG2LhZxj9aF73fqC7OAJZ5aPonw4RE299FVarh1Tx2eT3wSgkDgutCTB1Yq\n\
zT5DuwvAe+co2CIVIzMDamYuSFjPN0BCgojl7V+bTou7dMsqIu/TW/rPCX9/EUcp\n\
KGKqPQ3P+N9r1hjEFY1plBg93t53OOo49GNI+V1zvXPLI6xIFVsh+mto2RtgEX/e\n\
pmMKTNN6psW88qg7c1hTWtN6MbRuQ0vm+O+/2tKBF2h8THb94OvvHHoFDpbCELlq\n\
HnIYhxy0YKXGyaW1NjfULxrrmxVW4wcn5E8GddmvNa6yYm8scJagEi13mhGu4Jqh\n\
3QU3sf8iUSUr09xQDwHtOQUVIqx4maBZPBtSMf+qUDtjXSSq8lfWcd8bLr9mdsUn\n\
JZJ0+tuPMKmBnSH860llKk+VpVQsgqbzDIvOLvD6W1Umq25boxCYJ+TuBoa4s+HH\n\
CViAvgT9kf/rBq1d+ivj6skkHxuzcxbk1xv6ZGxrteJxVH7KlX7YRdZ6eARKwLe4\n\
AFZEAwoKCQ==\n\
-----END CERTIFICATE-----\n\
";

/// Milan AMD SEV Signing Key (PEM).
const MILAN_ASK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGiTCCBDigAwIBAgIDAQABMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstTWlsYW4wHhcNMjAxMDIyMTgyNDIwWhcNNDUxMDIy\n\
MTgyNDIwWjB7MRQwEgYDVQQLDAtFbmdpbmVlcmluZzELMAkGA1UEBhMCVVMxFDAS\n\
BgNVBAcMC1NhbnRhIENsYXJhMQswCQYDVQQIDAJDQTEfMB0GA1UECgwWQWR2YW5j\n\
ZWQgTWljcm8gRGV2aWNlczESMBAGA1UEAwwJU0VWLU1pbGFuMIICIjANBgkqhkiG\n\
9w0BAQEFAAOCAg8AMIICCgKCAgEAnU2drrNTfbhNQIllf+W2y+ROCbSzId1aKZft\n\
2T9zjZQOzjGccl17i1mIKWl7NTcB0VYXt3JxZSzOZjsjLNVAEN2MGj9TiedL+Qew\n\
KZX0JmQEuYjm+WKksLtxgdLp9E7EZNwNDqV1r0qRP5tB8OWkyQbIdLeu4aCz7j/S\n\
l1FkBytev9sbFGzt7cwnjzi9m7noqsk+uRVBp3+In35QPdcj8YflEmnHBNvuUDJh\n\
LCJMW8KOjP6++Phbs3iCitJcANEtW4qTNFoKW3CHlbcSCjTM8KsNbUx3A8ek5EVL\n\
jZWH1pt9E3TfpR6XyfQKnY6kl5aEIPwdW3eFYaqCFPrIo9pQT6WuDSP4JCYJbZne\n\
KKIbZjzXkJt3NQG32EukYImBb9SCkm9+fS5LZFg9ojzubMX3+NkBoSXI7OPvnHMx\n\
jup9mw5se6QUV7GqpCA2TNypolmuQ+cAaxV7JqHE8dl9pWf+Y3arb+9iiFCwFt4l\n\
AlJw5D0CTRTC1Y5YWFDBCrA/vGnmTnqG8C+jjUAS7cjjR8q4OPhyDmJRPnaC/ZG5\n\
uP0K0z6GoO/3uen9wqshCuHegLTpOeHEJRKrQFr4PVIwVOB0+ebO5FgoyOw43nyF\n\
D5UKBDxEB4BKo/0uAiKHLRvvgLbORbU8KARIs1EoqEjmF8UtrmQWV2hUjwzqwvHF\n\
ei8rPxMCAwEAAaOBozCBoDAdBgNVHQ4EFgQUO8ZuGCrD/T1iZEib47dHLLT8v/gw\n\
HwYDVR0jBBgwFoAUhawa0UP3yKxV1MUdQUir1XhK1FMwEgYDVR0TAQH/BAgwBgEB\n\
/wIBADAOBgNVHQ8BAf8EBAMCAQQwOgYDVR0fBDMwMTAvoC2gK4YpaHR0cHM6Ly9r\n\
ZHNpbnRmLmFtZC5jb20vdmNlay92MS9NaWxhbi9jcmwwRgYJKoZIhvcNAQEKMDmg\n\
DzANBglghkgBZQMEAgIFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQMEAgIFAKID\n\
AgEwowMCAQEDggIBAIgeUQScAf3lDYqgWU1VtlDbmIN8S2dC5kmQzsZ/HtAjQnLE\n\
PI1jh3gJbLxL6gf3K8jxctzOWnkYcbdfMOOr28KT35IaAR20rekKRFptTHhe+DFr\n\
3AFzZLDD7cWK29/GpPitPJDKCvI7A4Ug06rk7J0zBe1fz/qe4i2/F12rvfwCGYhc\n\
RxPy7QF3q8fR6GCJdB1UQ5SlwCjFxD4uezURztIlIAjMkt7DFvKRh+2zK+5plVGG\n\
FsjDJtMz2ud9y0pvOE4j3dH5IW9jGxaSGStqNrabnnpF236ETr1/a43b8FFKL5QN\n\
mt8Vr9xnXRpznqCRvqjr+kVrb6dlfuTlliXeQTMlBoRWFJORL8AcBJxGZ4K2mXft\n\
l1jU5TLeh5KXL9NW7a/qAOIUs2FiOhqrtzAhJRg9Ij8QkQ9Pk+cKGzw6El3T3kFr\n\
Eg6zkxmvMuabZOsdKfRkWfhH2ZKcTlDfmH1H0zq0Q2bG3uvaVdiCtFY1LlWyB38J\n\
S2fNsR/Py6t5brEJCFNvzaDky6KeC4ion/cVgUai7zzS3bGQWzKDKU35SqNU2WkP\n\
I8xCZ00WtIiKKFnXWUQxvlKmmgZBIYPe01zD0N8atFxmWiSnfJl690B9rJpNR/fI\n\
ajxCW3Seiws6r1Zm+tCuVbMiNtpS9ThjNX4uve5thyfE2DgoxRFvY1CsoF5M\n\
-----END CERTIFICATE-----\n\
";

/// Intel SGX Root CA (PEM), as Intel publishes it at
/// `https://certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.cer`.
const INTEL_SGX_ROOT_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw\n\
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv\n\
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ\n\
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG\n\
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0\n\
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT\n\
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7\n\
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB\n\
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ\n\
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50\n\
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV\n\
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI\n\
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg\n\
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=\n\
-----END CERTIFICATE-----\n\
";

/// Genoa AMD Root Key (PEM).
const GENOA_ARK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGYzCCBBKgAwIBAgIDAgAAMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstR2Vub2EwHhcNMjIwMTI2MTUzNDM3WhcNNDcwMTI2\n\
MTUzNDM3WjB7MRQwEgYDVQQLDAtFbmdpbmVlcmluZzELMAkGA1UEBhMCVVMxFDAS\n\
BgNVBAcMC1NhbnRhIENsYXJhMQswCQYDVQQIDAJDQTEfMB0GA1UECgwWQWR2YW5j\n\
ZWQgTWljcm8gRGV2aWNlczESMBAGA1UEAwwJQVJLLUdlbm9hMIICIjANBgkqhkiG\n\
9w0BAQEFAAOCAg8AMIICCgKCAgEA3Cd95S/uFOuRIskW9vz9VDBF69NDQF79oRhL\n\
/L2PVQGhK3YdfEBgpF/JiwWFBsT/fXDhzA01p3LkcT/7LdjcRfKXjHl+0Qq/M4dZ\n\
kh6QDoUeKzNBLDcBKDDGWo3v35NyrxbA1DnkYwUKU5AAk4P94tKXLp80oxt84ahy\n\
HoLmc/LqsGsp+oq1Bz4PPsYLwTG4iMKVaaT90/oZ4I8oibSru92vJhlqWO27d/Rx\n\
c3iUMyhNeGToOvgx/iUo4gGpG61NDpkEUvIzuKcaMx8IdTpWg2DF6SwF0IgVMffn\n\
vtJmA68BwJNWo1E4PLJdaPfBifcJpuBFwNVQIPQEVX3aP89HJSp8YbY9lySS6PlV\n\
EqTBBtaQmi4ATGmMR+n2K/e+JAhU2Gj7jIpJhOkdH9firQDnmlA2SFfJ/Cc0mGNz\n\
W9RmIhyOUnNFoclmkRhl3/AQU5Ys9Qsan1jT/EiyT+pCpmnA+y9edvhDCbOG8F2o\n\
xHGRdTBkylungrkXJGYiwGrR8kaiqv7NN8QhOBMqYjcbrkEr0f8QMKklIS5ruOfq\n\
lLMCBw8JLB3LkjpWgtD7OpxkzSsohN47Uom86RY6lp72g8eXHP1qYrnvhzaG1S70\n\
vw6OkbaaC9EjiH/uHgAJQGxon7u0Q7xgoREWA/e7JcBQwLg80Hq/sbRuqesxz7wB\n\
WSY254cCAwEAAaN+MHwwDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBSfXfn+Ddjz\n\
WtAzGiXvgSlPvjGoWzAPBgNVHRMBAf8EBTADAQH/MDoGA1UdHwQzMDEwL6AtoCuG\n\
KWh0dHBzOi8va2RzaW50Zi5hbWQuY29tL3ZjZWsvdjEvR2Vub2EvY3JsMEYGCSqG\n\
SIb3DQEBCjA5oA8wDQYJYIZIAWUDBAICBQChHDAaBgkqhkiG9w0BAQgwDQYJYIZI\n\
AWUDBAICBQCiAwIBMKMDAgEBA4ICAQAdIlPBC7DQmvH7kjlOznFx3i21SzOPDs5L\n\
7SgFjMC9rR07292GQCA7Z7Ulq97JQaWeD2ofGGse5swj4OQfKfVv/zaJUFjvosZO\n\
nfZ63epu8MjWgBSXJg5QE/Al0zRsZsp53DBTdA+Uv/s33fexdenT1mpKYzhIg/cK\n\
tz4oMxq8JKWJ8Po1CXLzKcfrTphjlbkh8AVKMXeBd2SpM33B1YP4g1BOdk013kqb\n\
7bRHZ1iB2JHG5cMKKbwRCSAAGHLTzASgDcXr9Fp7Z3liDhGu/ci1opGmkp12QNiJ\n\
uBbkTU+xDZHm5X8Jm99BX7NEpzlOwIVR8ClgBDyuBkBC2ljtr3ZSaUIYj2xuyWN9\n\
5KFY49nWxcz90CFa3Hzmy4zMQmBe9dVyls5eL5p9bkXcgRMDTbgmVZiAf4afe8DL\n\
dmQcYcMFQbHhgVzMiyZHGJgcCrQmA7MkTwEIds1wx/HzMcwU4qqNBAoZV7oeIIPx\n\
dqFXfPqHqiRlEbRDfX1TG5NFVaeByX0GyH6jzYVuezETzruaky6fp2bl2bczxPE8\n\
HdS38ijiJmm9vl50RGUeOAXjSuInGR4bsRufeGPB9peTa9BcBOeTWzstqTUB/F/q\n\
aZCIZKr4X6TyfUuSDz/1JDAGl+lxdM0P9+lLaP9NahQjHCVf0zf1c1salVuGFk2w\n\
/wMz1R1BHg==\n\
-----END CERTIFICATE-----\n\
";

/// Genoa AMD SEV Signing Key (PEM).
const GENOA_ASK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGiTCCBDigAwIBAgIDAgACMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstR2Vub2EwHhcNMjIxMDMxMTMzMzQ4WhcNNDcxMDMx\n\
MTMzMzQ4WjB7MRQwEgYDVQQLDAtFbmdpbmVlcmluZzELMAkGA1UEBhMCVVMxFDAS\n\
BgNVBAcMC1NhbnRhIENsYXJhMQswCQYDVQQIDAJDQTEfMB0GA1UECgwWQWR2YW5j\n\
ZWQgTWljcm8gRGV2aWNlczESMBAGA1UEAwwJU0VWLUdlbm9hMIICIjANBgkqhkiG\n\
9w0BAQEFAAOCAg8AMIICCgKCAgEAoHJhvk4Fwwkwb03AMfLySXJSXmEaCZMTRbLg\n\
Paj4oEzaD9tGfxCSw/nsCAiXHQaWUt++bnbjJO05TKT5d+Cdrz4/fiRBpbhf0xzv\n\
h11O+wJTBPj3uCzDm48vEZ8l5SXMO4wd/QqwsrejFERPD/Hdfv1mGCMW7ac0ug8t\n\
rDzqGe+l+p8NMjp/EqBDY2vd8hLaVLmS+XjAqlYVNRksh9aTzSYL19/cTrBDmqQ2\n\
y8k23zNl2lW6q/BtQOpWGVs3EWvBHb/Qnf3f3S9+lC4H2jdDy9yn7kqyTWq4WCBn\n\
E4qhYJRokulYtzMZM1Ilk4Z6RPkOTR1MJ4gdFtj7lKmrkSuOoJYmqhJIsQJ854lA\n\
bJybgU7zyzWAwu3uaslkYKUEAQf2ja5Hyl3IBqOzpqY31SpKzbl8NXveZybRMklw\n\
fe4iDLI25T9ku9CVetDYifCbdGeuHdTwZBBemW4NE57L7iEV8+zz8nxng8OMX//4\n\
pXntWqmQbEAnBLv2ToTgd1H2zYRthyDLc3V119/+FnTW17LK6bKzTCgEnCHQEcAt\n\
0hDQLLF799+2lZTxxfBEoduAZax6IjgAMCi6e1ZfKPJSkdvb2m3BwfP8bniG7+AE\n\
Jv1WOEmnBJc1pVQCttbJUodbi07Vfen5JRUqAvSM3ObWQOzSAGzsGnpIigwFpW6m\n\
9F7uYVUCAwEAAaOBozCBoDAdBgNVHQ4EFgQUssZ7pDW7HJVkHAmgQf/F3EmGFVow\n\
HwYDVR0jBBgwFoAUn135/g3Y81rQMxol74EpT74xqFswEgYDVR0TAQH/BAgwBgEB\n\
/wIBADAOBgNVHQ8BAf8EBAMCAQQwOgYDVR0fBDMwMTAvoC2gK4YpaHR0cHM6Ly9r\n\
ZHNpbnRmLmFtZC5jb20vdmNlay92MS9HZW5vYS9jcmwwRgYJKoZIhvcNAQEKMDmg\n\
DzANBglghkgBZQMEAgIFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQMEAgIFAKID\n\
AgEwowMCAQEDggIBAIgu3V2tQJOo0/6GvNmwLXbLDrsLKXqHUqdGyOZUpPHM3ujT\n\
aex1G+8bEgBswwBa+wNvl1SQqRqy2x2QwP+i//BcWr3lMrUxci4G7/P8hZBV821n\n\
rAUZtbvfqla5MrRH9AKJXWW/pmtd10czqCHkzdLQNZNjt2dnZHMQAMtGs1AtynRE\n\
HNwEBiH2KAt7gUc/sKWnSCipztKE76puN/XXbSx+Ws+VPiFw6CBAeI9dqnEiQ1tp\n\
EgqtWEtcKm7Ggb1XH6oWbISoowvc00/ADWfNom0xl6v2C6RIWYgUoZ2f7PCyV3Dt\n\
bu/fQfyyZvmtVLA4gB2Ehc6Omjy21Y55WY9IweHlKENMPEUVtRqOvRVI0ml9Wbal\n\
f049joCu2j33XPqwp3IrzevmPBDGpR2Stdm3K66a/g/BSY7Wc9/VeykP3RXlxY1T\n\
MMJ8F1lpg6Tmu+c+vow7cliyqOoayAnR71U8+rWrL3HRHheSVX8GPYOaDNBTt831\n\
Z027vDWv3811vMoxYxhuTRaokvNWCSzmJ2EWrPYHcHOtkjSFKN7ot0Rc70fIRZEY\n\
c2rb3ywLSicEq3JQCnnz6iCZ1tMfplzcrJ2LnW2F1C8yRV+okylyORlsaxOLKYOW\n\
jaDTSFaq1NIwodHp7X9fOG48uRuJWS8GmifD969sC4Ut2FJFoklceBVUNCHR\n\
-----END CERTIFICATE-----\n\
";

/// Turin AMD Root Key (PEM).
const TURIN_ARK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGYzCCBBKgAwIBAgIDAwAAMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstVHVyaW4wHhcNMjMwNTE1MjAwMzEyWhcNNDgwNTE1\n\
MjAwMzEyWjB7MRQwEgYDVQQLDAtFbmdpbmVlcmluZzELMAkGA1UEBhMCVVMxFDAS\n\
BgNVBAcMC1NhbnRhIENsYXJhMQswCQYDVQQIDAJDQTEfMB0GA1UECgwWQWR2YW5j\n\
ZWQgTWljcm8gRGV2aWNlczESMBAGA1UEAwwJQVJLLVR1cmluMIICIjANBgkqhkiG\n\
9w0BAQEFAAOCAg8AMIICCgKCAgEAwaAriB7EIuVc4ZB1wD3YfDxL+9eyS7+izm0J\n\
j3W772NINCWl8Bj3w/JD2ZjmbRxWdIq/4d9iarCKorXloJUB1jRdgxqccTx1aOoi\n\
g4+2w1XhVVJT7K457wT5ZLNJgQaxqa9Etkwjd6+9sOhlCDE9l43kQ0R2BikVJa/u\n\
yyVOSwEk5w5tXKOuG9jvq6QtAMJasW38wlqRDaKEGtZ9VUgGon27ZuL4sTJuC/az\n\
z9/iQBw8kEilzOl95AiTkeY5jSEBDWbAqnZk5qlM7kISKG20kgQm14mhNKDI2p2o\n\
ua+zuAG7i52epoRF2GfU0TYk/yf+vCNB2tnechFQuP2e8bLk95ZdqPi9/UWw4JXj\n\
tdEA4u2JYplSSUPQVAXKt6LVqujtJcM59JKr2u0XQ75KwxcMp15gSXhBfInvPAwu\n\
AY4dEwwGqT8oIg4esPHwEsmChhYeDIxPG9R4fx9O0q6p8Gb+HXlTiS47P9YNeOpi\n\
dOUKzDl/S1OvyhDtSL8LJc24QATFydo/iD/KUdvFTRlD0crkAMkZLoWQ8hLDGc6B\n\
ZJXsdd7Zf2e4UW3tI/1oh/2t23Ot3zyhTcv5gDbABu0LjVe98uRnS15SMwK//lJt\n\
9e5BqKvgABkSoABf+B4VFtPVEX0ygrYaFaI9i5ABrxnVBmzXpRb21iI1NlNCfOGU\n\
PIhVpWECAwEAAaN+MHwwDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBRkoF9x4wwK\n\
ZNg7deUBWZ4r7gYDRDAPBgNVHRMBAf8EBTADAQH/MDoGA1UdHwQzMDEwL6AtoCuG\n\
KWh0dHBzOi8va2RzaW50Zi5hbWQuY29tL3ZjZWsvdjEvVHVyaW4vY3JsMEYGCSqG\n\
SIb3DQEBCjA5oA8wDQYJYIZIAWUDBAICBQChHDAaBgkqhkiG9w0BAQgwDQYJYIZI\n\
AWUDBAICBQCiAwIBMKMDAgEBA4ICAQA/i6Mz4IETMK8YU/HxP7Bfej5i4aXhenJo\n\
TuiDX0nqx5CDJm9ELhskxAkJ/oLA1O92UoLybfFk4gEpKFtyfiUYex9LogZj5ix0\n\
sb2qfSSy9CRnOktGqfpel4e3KAhLgF5n2qZrqyq/8EPPldtSjEXn78sZMlIlUcQK\n\
SnnNCQZVFpktDfDiEiGNuitux3ghHUrcVuxSbZcrXDbsbMF7NDdfLUUS9TijrL33\n\
lrCXJs7m8kggGyCusiRQKHli1AEswiA4xU+8xsZrByYTopiGYtbJK8s0UCCXylyO\n\
uKSubvdAnMDJ5GDD0+DX46LSfv7fgGNSG+LOBWdif7KoQf9cIhKJtxGxZCn/tvHm\n\
wMzu4Jnx8N2vRnT+8DpBqhxtNvdXmrZUelSeQakx4djMKvmTR8Gd25EnC4RppCkj\n\
bmPxY3zPd1X7raalTn34EOF9DeLsC9JfzkDuojxpHWMm30wKnDo20mlDQk/zKCDa\n\
2Zc+YjtsTZCrTbvdgCukTKNZOUUVlWRu+sO/OwrmS2p16seHTIqHEbE1LntPv3gk\n\
CcHGDSUAKx9c0Aol+Dj9xpb2nmGqoDeJ59Ja6REkHCdw5TduXyqqMqfD1AX0/QDN\n\
devCMKlWBRCQ7DFlog3H1a+r/kuMUZ/Ij9yyKlSgYZMJ4VgNKDgTQdcsAL0MCEMr\n\
zpacMwFusA==\n\
-----END CERTIFICATE-----\n\
";

/// Turin AMD SEV Signing Key (PEM).
const TURIN_ASK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGiTCCBDigAwIBAgIDAwABMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstVHVyaW4wHhcNMjMwNTE1MjAyNTIxWhcNNDgwNTE1\n\
MjAyNTIxWjB7MRQwEgYDVQQLDAtFbmdpbmVlcmluZzELMAkGA1UEBhMCVVMxFDAS\n\
BgNVBAcMC1NhbnRhIENsYXJhMQswCQYDVQQIDAJDQTEfMB0GA1UECgwWQWR2YW5j\n\
ZWQgTWljcm8gRGV2aWNlczESMBAGA1UEAwwJU0VWLVR1cmluMIICIjANBgkqhkiG\n\
9w0BAQEFAAOCAg8AMIICCgKCAgEAnvg5Grv2Emd9lAhKdO64RXU3UESb6JTm0Hhz\n\
evx1PyxinxYqJL329qTJM0XmdozLYb7rsHxgM5I2pU18M8gect2pN/YB2LQ1/bIq\n\
37TPDbg7ym0MN6KkZ6aERxAX0voYtdDyNxjDAUjpRpCe1FccAev/Es2n/Fz1G1Tm\n\
C2XepTQqaKpmt6mnDWSCHCVsQoY0gSibeaG6doM6OiNUCbKXaC7KHH5b/96BD1DJ\n\
84M+JHqPClFhHqUJwzKF5Qxj4wgWAZzK8UPhiNGjrF6+TBdlFGdSzEqw1jOrCTHd\n\
uYyLK+5OQ3OIw4S+vZeOVoxJajTIWdsqYP2DLc0HkL0qWOumEOrrc2/4DeETShB0\n\
MyIpH05kSalyQN2eN5P6ptOB84hddCdbJPEepnD+FqQap1ukw3K8uBcgeBSAF23r\n\
6UtT8Uc5h7MsWX3MoZiEHcSkDQQ8IedTk7CLjsK6S7b/lfKqfYiRhKgGkRvsEd/M\n\
DNcumHZKIgzasJwgagzSggiUo9jXp3EWm84fqyxNXzSutPB7qD5P/ULAB+q9Qgvr\n\
zC8XneaLP0MNrHhM80UejmsBTIktMvFoWVIelYDLdcoi0eMD5DRccfsgrYaY6h/+\n\
/qf9tgg+mX09UJpuSPRF38oyqnNNFMl5v/tWLgUsChPU6NCQC17Qaqr8mu2ynyyu\n\
HEs5JVUCAwEAAaOBozCBoDAdBgNVHQ4EFgQUbYJXt6v2sMgUALjxD0WvG9aq628w\n\
HwYDVR0jBBgwFoAUZKBfceMMCmTYO3XlAVmeK+4GA0QwEgYDVR0TAQH/BAgwBgEB\n\
/wIBADAOBgNVHQ8BAf8EBAMCAQQwOgYDVR0fBDMwMTAvoC2gK4YpaHR0cHM6Ly9r\n\
ZHNpbnRmLmFtZC5jb20vdmNlay92MS9UdXJpbi9jcmwwRgYJKoZIhvcNAQEKMDmg\n\
DzANBglghkgBZQMEAgIFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQMEAgIFAKID\n\
AgEwowMCAQEDggIBAAXWJ3DPahralt5kXLPMm9oKlFRqeU3HcS7kA+VBlBA1lQRU\n\
hXkbXnTvW1GZcgdZvNCB/VlET61KbCzoFIhPIESVjjb/xWX2kg3X0HHmh1EtCDbH\n\
aUFM5rq6l+S1h7qOauRZebvrwApDzAANvW0LTHRumfGm/kqh9NDtVCIWPUZ1VQIg\n\
Gx1T3dwmgOK8ncT1J3W5xIyS0Xu3KC6w7oBlq8G2pPgTcCBJ4JBCTXCEXiAAGaTR\n\
/TJIaSzoZFLhxYhCMjP8WQGToPGDK2i/lZhkcGHnJOQ+lgrXfpLGqBtLlS3QODyV\n\
P0MomczG4dqw3THP3Y8Aq9c2KE7SylAKsS/bBKCqkj4OrABkDSkMQEz3BBoFD63a\n\
D5ZG/Qiz+tmhnptyPVcweC9uJlSWYm25KiV4lT52uBjxatDZKQcrpdgcU8+ozzKU\n\
8ICnZPOwfWeyuNMq/juyd/rzg5IePyyvt+13aJ5MlZBXZxJKoxCYIMKUwZigf0Xs\n\
BteT8gw10/xk5smIFIB2ERtTQPMuTENgrPTUjOeiqmBg663c2dLVol+MDiT4ltqf\n\
Em4Kl/cc4f+H6bEwhj1QKAN2ipRf+mP0NfzJb+6ZHNsOvyq/WByYpLXV9JJoiDW/\n\
8RZwPU/Mn7IuQBauCy78G7FS0ta3q1et74faYBBgeJ6awEasa25CvmsmlU0R\n\
-----END CERTIFICATE-----\n\
";

/// Milan AMD SEV VLEK Signing Key (ASVK, PEM).
const MILAN_ASVK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGjzCCBD6gAwIBAgIDAQEBMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstTWlsYW4wHhcNMjIxMTE2MjI0NTI0WhcNNDcxMTE2\n\
MjI0NTI0WjCBgDEUMBIGA1UECwwLRW5naW5lZXJpbmcxCzAJBgNVBAYTAlVTMRQw\n\
EgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExHzAdBgNVBAoMFkFkdmFu\n\
Y2VkIE1pY3JvIERldmljZXMxFzAVBgNVBAMMDlNFVi1WTEVLLU1pbGFuMIICIjAN\n\
BgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEA1EUWkz5FTPz+uWT2hCEyisam8FRu\n\
XZAmS3l+rXgSCeS1Q0+1olcnFSJpiwfssfhoutJqePyicu+OhkX131PMeO/VOtH3\n\
upK4YNJmq36IJp7ZWIm5nK2fJNkYEHW0m/NXcIA9U2iHl5bAQ5cbGp97/FaOJ4Vm\n\
GoTMV658Yox/plFmZRFfRcsw2hyNhqUl1gzdpnIIgPkygUovFEgaa0IVSgGLHQhZ\n\
QiebNLLSVWRVReve0t94zlRIRRdrz84cckP9H9DTAUMyQaxSZbPINKbV6TPmtrwA\n\
V9UP1Qq418xn9I+C0SsWutP/5S1OiL8OTzQ4CvgbHOfd2F3yVv4xDBza4SelF2ig\n\
oDf+BF4XI/IIHJL2N5uKy3+gkSB2Xl6prohgVmqRFvBW9OTCEa32WhXu0t1Z1abE\n\
KDZ3LpZt9/Crg6zyPpXDLR/tLHHpSaPRj7CTzHieKMTz+Q6RrCCQcHGfaAD/ETNY\n\
56aHvNJRZgbzXDUJvnLr3dYyOvvn/DtKhCSimJynn7Len4ArDVQVwXRPe3hR/asC\n\
E2CajT7kGC1AOtUzQuIKZS2D0Qk74g297JhLHpEBlQiyjRJ+LCWZNx9uJcixGyza\n\
v6fiOWx4U8uWhRzHs8nvDAdcS4LW31tPlA9BeOK/BGimQTu7hM5MDFZL0C9dWK5p\n\
uCUJex6I2vSqvycCAwEAAaOBozCBoDAdBgNVHQ4EFgQUNuJXE6qi45/CgqkKRPtV\n\
LObC7pEwHwYDVR0jBBgwFoAUhawa0UP3yKxV1MUdQUir1XhK1FMwEgYDVR0TAQH/\n\
BAgwBgEB/wIBADAOBgNVHQ8BAf8EBAMCAQQwOgYDVR0fBDMwMTAvoC2gK4YpaHR0\n\
cHM6Ly9rZHNpbnRmLmFtZC5jb20vdmxlay92MS9NaWxhbi9jcmwwRgYJKoZIhvcN\n\
AQEKMDmgDzANBglghkgBZQMEAgIFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQME\n\
AgIFAKIDAgEwowMCAQEDggIBAI7ayEXDNj1rCVnjQFb6L91NNOmEIOmi6XtopAqr\n\
8fj7wqXap1MY82Y0AIi1K9R7C7G1sCmY8QyEyX0zqHsoNbU2IMcSdZrIp8neT8af\n\
v8tPt7qoW3hZ+QQRMtgVkVVrjJZelvlB74xr5ifDcDiBd2vu/C9IqoQS4pVBKNSF\n\
pofzjtYKvebBBBXxeM2b901UxNgVjCY26TtHEWN9cA6cDVqDDCCL6uOeR9UOvKDS\n\
SqlM6nXldSj7bgK7Wh9M9587IwRvNZluXc1CDiKMZybLdSKOlyMJH9ss1GPn0eBV\n\
EhVjf/gttn7HrcQ9xJZVXyDtL3tkGzemrPK14NOYzmph6xr1iiedAzOVpNdPiEXn\n\
2lvas0P4TD9UgBh0Y7xyf2yENHiSgJT4T8Iktm/TSzuh4vqkQ72A1HdNTGjoZcfz\n\
KCsQJ/YuFICeaNxw5cIAGBK/o+6Ek32NPv5XtixNOhEx7GsaVRG05bq5oTt14b4h\n\
KYhqV1CDrX5hiVRpFFDs/sAGfgTzLdiGXLcvYAUz1tCKIT/eQS9c4/yitn4F3mCP\n\
d4uQB+fggMtK0qPRthpFtc2SqVCTvHnhxyXqo7GpXMsssgLgKNwaFPe2+Ld5OwPR\n\
6Pokji9h55m05Dxob8XtD4gW6oFLo9Icg7XqdOr9Iip5RBIPxy7rKk/ReqGs9KH7\n\
0YPk\n\
-----END CERTIFICATE-----\n\
";

/// Genoa AMD SEV VLEK Signing Key (ASVK, PEM).
const GENOA_ASVK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGjzCCBD6gAwIBAgIDAgEBMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstR2Vub2EwHhcNMjIxMTE4MjA0ODM0WhcNNDcxMTE4\n\
MjA0ODM0WjCBgDEUMBIGA1UECwwLRW5naW5lZXJpbmcxCzAJBgNVBAYTAlVTMRQw\n\
EgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExHzAdBgNVBAoMFkFkdmFu\n\
Y2VkIE1pY3JvIERldmljZXMxFzAVBgNVBAMMDlNFVi1WTEVLLUdlbm9hMIICIjAN\n\
BgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAzL2/xihHscEpxS3+OsQZpAuNIJGS\n\
EQZrkoWPtqKMjjZOyXMMRHAheTm56Ei0Mb8TJZlbGDS5x/AdbowstGmpHqh2zvSv\n\
jZO7V4v6Ft84p71P6GXfOVEQgCuatiszfIwFrRQk/cmU7HuJadBq6XtYE+qBJMju\n\
s8C0WwW/IWY9j6pNbEA1SnUvVg6t89zfE+AcB5UDCKq09x7qw+rPt9pTpEch0f1b\n\
HdRFJlpgWGTq02ohH9bT+6au8kPpvMa3m2p8zdIIqtuuSG6srIimrpt24lsr4tLh\n\
QG65R/RbVJT9MsK4ULpbAUO5NwdlLwbnpLWHiUwoYrySMD8l3xRDvhPmInlXEFEo\n\
8lahcYllxiJJR8oqqA6x3jPFKmkfhEgaQefcn4P8nA4SScqAoLihn75iiDtU2+Zl\n\
kPnKgcNs5U1Le441ypen2n7BOnRyhmwyAUBGk3OcMXHsJ6KGpDJyTVCaC3fWX3ex\n\
4Iv4LkuKRA6O9yu3zHP23N/ubE8/YykffIjMbtBoOAzdWCn9lE4amo4VZ+8ewIut\n\
ZAYmC5TIQO+wWUqKYr0iAobccMnZdJjUORjVoqVQ+dLr+/1otk36gfPc0LpmhWZK\n\
fAXF9sgvYtQjcaR9wlGr8ySRtZ2YJWofuR7zgYFJPEXRwAnbAR/05hBmog7CMt1F\n\
9YKSmku6JfRecY8CAwEAAaOBozCBoDAdBgNVHQ4EFgQUhEdjn8HQNI9bN2NAKL9z\n\
gM6VNoowHwYDVR0jBBgwFoAUn135/g3Y81rQMxol74EpT74xqFswEgYDVR0TAQH/\n\
BAgwBgEB/wIBADAOBgNVHQ8BAf8EBAMCAQQwOgYDVR0fBDMwMTAvoC2gK4YpaHR0\n\
cHM6Ly9rZHNpbnRmLmFtZC5jb20vdmxlay92MS9HZW5vYS9jcmwwRgYJKoZIhvcN\n\
AQEKMDmgDzANBglghkgBZQMEAgIFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQME\n\
AgIFAKIDAgEwowMCAQEDggIBALgCTyTS/ppxo42n2LOox42LvNIsn2/ZaMs2NfCj\n\
4f2+VN5Xs1NNdptn2nq/SKu5aKnLS5XGWCnHfMSKZ7vqHLKMa0Wxfm+4JahOItQ3\n\
+PzbTa0EwUkq1u6oezhTHywX1PilNRc4EjWgQ6ba/z4BBxO3P10tW/C39VS0Cv8S\n\
N5G2bfZrPkjy6LBjGiaT4MBcsN+SM2o5QgKRG0qqn+edegHMmTPBDV2qCKbe5CBs\n\
a122q+F6S9hPEEiGkz/IpShnSGCaFvbEu0Uvh2dYUlrON2peZMDkevKurDXlGxTe\n\
hAflCiugBsNeJivx0j7B/HazAvxkLPTCkIdmQJccezF5PCgmMW0SeP4cMb5Ewzv/\n\
yCsTLyh13YsYBww5eW4DBREd/vCAS7F1JQUZ4twQy/jqBAJhcDyGuRnnwrRevGdW\n\
sb3cXBqeLCub7CKZ1n/zqSRHq8FRgoroPRpfFjSGhDVFbjj7bDzWU6WNmF/7Lpnq\n\
G+tIMyRc+3Y3yRAYchFNOFHyS6R2C0KTy1nRSYwBUdQtGaQ0rE3e5Mulcidh4qkI\n\
xpp089vzqV8JTSJsRzTOzkujOuHUYPKswJ1TvQr5S1C0gPN2qAESnCs7Nf2x82DS\n\
xmEqaiI7xS58pR6vZ8BeXMGPPQqgOm/oBzOypVR3iCG6MFdjsTNA6M8P7GCZe1p7\n\
2cko\n\
-----END CERTIFICATE-----\n\
";

/// Turin AMD SEV VLEK Signing Key (ASVK, PEM).
const TURIN_ASVK_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIGjzCCBD6gAwIBAgIDAwEBMEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAIC\n\
BQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEBMHsxFDAS\n\
BgNVBAsMC0VuZ2luZWVyaW5nMQswCQYDVQQGEwJVUzEUMBIGA1UEBwwLU2FudGEg\n\
Q2xhcmExCzAJBgNVBAgMAkNBMR8wHQYDVQQKDBZBZHZhbmNlZCBNaWNybyBEZXZp\n\
Y2VzMRIwEAYDVQQDDAlBUkstVHVyaW4wHhcNMjMwNTE1MjEwOTQxWhcNNDgwNTE1\n\
MjEwOTQxWjCBgDEUMBIGA1UECwwLRW5naW5lZXJpbmcxCzAJBgNVBAYTAlVTMRQw\n\
EgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExHzAdBgNVBAoMFkFkdmFu\n\
Y2VkIE1pY3JvIERldmljZXMxFzAVBgNVBAMMDlNFVi1WTEVLLVR1cmluMIICIjAN\n\
BgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEApjrui4l0ZogEh0fDdVfJ4unowGGo\n\
lk2wXyzjbjC/fnqlhFqiFj1JSKdkYSvzPVfgDR0MU2WLlytrAGqOHYBdk4Moz3xH\n\
TXJus75Nef0EBZpGk9M4PQGF+nTqYi+hDguq14wQUEltN9wGunnUeaMz0e6hfCas\n\
DevkypILMponvTvaM49RAipCvTgmPRTkQA8hjl3tA6R7S/HKTn6/Q3T74A0BfygK\n\
49LLkdHF05Wo0pZ9qmPyhi0Rh9epY0L+/T2e17fohWcCavgE+KF5GO5XINzunwKo\n\
lCCyH3930iAmb1vv5v4PimnGsfH4ic4kIApR1hZApU3YG3qUE84qkb5SEASQsTZC\n\
T0Jv/AxC9So5h2wraVzWz6GvpPHEtRKvue5vehkwPjFipJMT5Z7CmNuXc+0lcVSZ\n\
MHSbswFSHKKtp4F0UDoPnuIWw/djGDjkGXS9W5M2N3zVSbn94cJxCMzOTzILhcX/\n\
lJatooslfxvqucFH8PpS9xBMhuN4fTPlNk/oVbQ6w8pxEMibo0K8Q+gOqqzdVm6i\n\
7jotobsuYxH1Httjsc61vSskSDT4JkPjqTWiyOmsFI+6Ob/hya/fqpe0EPy68TPk\n\
85COC7uqNMzu58xb0uAtt0beejDx29mRRbiPNL5tnwK9KFmZDpeZWSZgzvn2K+SQ\n\
TK80ZKn8Yq2SKfUCAwEAAaOBozCBoDAdBgNVHQ4EFgQUhcyC6bne81Yf2PT1B54X\n\
miyCCNMwHwYDVR0jBBgwFoAUZKBfceMMCmTYO3XlAVmeK+4GA0QwEgYDVR0TAQH/\n\
BAgwBgEB/wIBADAOBgNVHQ8BAf8EBAMCAQQwOgYDVR0fBDMwMTAvoC2gK4YpaHR0\n\
cHM6Ly9rZHNpbnRmLmFtZC5jb20vdmxlay92MS9UdXJpbi9jcmwwRgYJKoZIhvcN\n\
AQEKMDmgDzANBglghkgBZQMEAgIFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQME\n\
AgIFAKIDAgEwowMCAQEDggIBAH6VbG86NSqZ9yjcqVuBGCEYwK6uDBQQHbXmYJXV\n\
X81sPN9cclAs6J2yiHcyDFq1g7ICnHO0T36vcj3V/27x4o2pmjAk3SU0YbMl9pR+\n\
AMHZrIQQ7FTldVP9HdWYx/KenFF42EFCAtOzgs9yLkyTviwX+d3YrWX0SXLMcuf0\n\
TO5VsCPX5DqcggneHruZMVICGTukY12cKYmasT74cms5WLzcQ5BVbttJmX+eHW6v\n\
Dg3hlmvUmjuTNQVoF5k5KcbHVV6VzG9SITLFozwdLSr5MbmfYHv7adLoNA5F1Ihf\n\
f1it0sn5HktUD/2GVGtkXES/KFEnXzS7A9wUlMqAGQOsEBUhFcg3MUAt0SYnQ/B3\n\
JdV87+ZEawMRLxEIinKDERI/i+l9fw61+R5TpSI3yhuQ4NGJAQ97dRqiy8EdiJOL\n\
LeT2DYOvi9pSJw3UqNuelINDlDCjChGimRv5Idjh0zbT6IjzagYY0rpSHbPgiJWr\n\
I2dA3qeJDEiEXQ++v4WP10fq+Jr5FTXiIwNd+1VGxBizw184gLPnEoXv8br+YScn\n\
ZjB8YW/oWsGuHz2kMTxOVT5Zizn3yVXvOpXFiwiavWQDJS52woXOwBzIyEdTPUL1\n\
E8s4KS2HQBzK1VfwvWcYNE5S0bAIMX1bYiEyJkr49+VLypQx5sIDU1cbVw3Py5XI\n\
SUxr\n\
-----END CERTIFICATE-----\n\
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_anchors_build_and_match_pins() {
        let anchors = SnpAnchors::amd().unwrap();
        let roots = anchors.root_fingerprints();
        assert_eq!(
            roots,
            vec![
                (Generation::Milan, ARK_MILAN_SHA256),
                (Generation::Genoa, ARK_GENOA_SHA256),
                (Generation::Turin, ARK_TURIN_SHA256),
            ]
        );
        let intermediates = anchors.intermediate_fingerprints();
        assert_eq!(
            intermediates,
            vec![
                (Generation::Milan, IntermediateKind::Ask, ASK_MILAN_SHA256),
                (Generation::Milan, IntermediateKind::Asvk, ASVK_MILAN_SHA256),
                (Generation::Genoa, IntermediateKind::Ask, ASK_GENOA_SHA256),
                (Generation::Genoa, IntermediateKind::Asvk, ASVK_GENOA_SHA256),
                (Generation::Turin, IntermediateKind::Ask, ASK_TURIN_SHA256),
                (Generation::Turin, IntermediateKind::Asvk, ASVK_TURIN_SHA256),
            ]
        );
    }

    #[test]
    fn generation_names() {
        assert_eq!(Generation::from_product_name("Milan-B0"), Some(Generation::Milan));
        assert_eq!(Generation::from_product_name("Genoa"), Some(Generation::Genoa));
        assert_eq!(Generation::from_product_name("Turin"), Some(Generation::Turin));
        assert_eq!(Generation::from_product_name("milan"), None);
        assert_eq!(Generation::from_product_name(""), None);
        assert_eq!(Generation::from_cpuid(0x19, 0x01), Some(Generation::Milan));
        assert_eq!(Generation::from_cpuid(0x19, 0x11), Some(Generation::Genoa));
        assert_eq!(Generation::from_cpuid(0x19, 0xa0), Some(Generation::Genoa));
        assert_eq!(Generation::from_cpuid(0x1a, 0x02), Some(Generation::Turin));
        assert_eq!(Generation::from_cpuid(0x17, 0x01), None);
        assert_eq!(serde_json::to_string(&Generation::Genoa).unwrap(), "\"genoa\"");
        assert_eq!(Generation::Turin.as_str(), "turin");
        assert_eq!(Generation::Turin.kds_product(), "Turin");
    }

    #[test]
    fn an_ask_is_not_a_root() {
        let amd = SnpAnchors::amd().unwrap();
        let ask = single_pem(MILAN_ASK_PEM).unwrap();
        let mut anchors = SnpAnchors::empty();
        assert!(matches!(anchors.add_root(Generation::Milan, &ask), Err(EvidenceError::UntrustedRoot(_))));
        // Without its ARK pinned, the ASK is refused too.
        assert!(matches!(anchors.add_intermediate(&ask), Err(EvidenceError::UntrustedRoot(_))));
        // Re-adding known certificates adds nothing.
        let mut amd2 = amd.clone();
        assert_eq!(amd2.add_intermediate(MILAN_ASK_PEM.as_bytes()).unwrap(), 0);
        assert_eq!(amd2.add_intermediate(MILAN_ARK_PEM.as_bytes()).unwrap(), 0);
    }

    #[test]
    fn garbage_is_refused() {
        let mut anchors = SnpAnchors::amd().unwrap();
        assert!(anchors.add_intermediate(b"not a certificate").is_err());
        assert!(anchors.add_intermediate(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(anchors.add_root(Generation::Milan, &[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
        let big = vec![0u8; MAX_INTERMEDIATE_FILE_LEN + 1];
        assert!(matches!(anchors.add_intermediate(&big), Err(EvidenceError::TooLarge { .. })));
    }
}
