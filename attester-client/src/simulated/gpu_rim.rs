//! INSECURE reference values (RIMs) for the simulated NVIDIA GPUs, for tests
//! and demos only.
//!
//! **Nothing here comes from NVIDIA.** [`simulated_gpu_rims`] writes a driver
//! RIM and a VBIOS RIM (SWID tags with an enveloped XML signature: C14N 1.1,
//! ECDSA P-384/SHA-384, the signer's chain in `KeyInfo`) whose active
//! measurements are exactly what a [`super::SimulatedGpu`] with genuine
//! firmware reports, signed by a key committed to this repository
//! (`attester-client/testdata/gpu-rim-pki`) under a test root that no NVIDIA
//! RIM chains to. A broker accepts them only when it pins the test RIM root
//! ([`gpu_test_rim_root_pem`]), which it does only in its explicit insecure
//! development mode.
//!
//! # The test RIM PKI
//! Made once by [`generate_rim_pki`] (the ignored test
//! `regenerate_gpu_rim_test_pki` writes it) and committed, with the shape
//! of NVIDIA's RIM chain: a self-signed `KBS TEST NVIDIA CoRIM signing Root
//! CA` → `NVIDIA Reference Value GH100 CA` → `NVIDIA Reference Value L3 GH100
//! 001` → `HCC RIM L4 Signer` (the leaf, an end-entity certificate). All keys
//! P-384, all certificates ECDSA-with-SHA384, valid 2024-01-01 to
//! 9999-12-31.
//!
//! # Document form
//! The documents are written in their canonical form (C14N 1.1: namespace
//! declarations on the root, sorted; attributes sorted; no whitespace
//! between elements; empty elements as start and end tag), so the signed
//! digest is SHA-384 of the document without its `ds:Signature`, and the
//! signed `SignedInfo` is its text with the root's namespace declarations.
//! RIM index `i` describes measurement block `i + 1`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha384};

use super::gpu::{SIMULATED_BLOCKS, SIMULATED_DRIVER_VERSION, simulated_measurement};
use super::x509;
use crate::evidence::Error;

const RIM_ROOT_PEM: &str = include_str!("../../testdata/gpu-rim-pki/root.pem");
const RIM_SIGNER_CHAIN_PEM: &str = include_str!("../../testdata/gpu-rim-pki/signer.chain.pem");
const RIM_SIGNER_KEY_PEM: &str = include_str!("../../testdata/gpu-rim-pki/signer.key.pem");

/// NVIDIA's RIM id of the simulated GPUs' driver RIM.
pub const SIMULATED_DRIVER_RIM_ID: &str = "NV_GPU_DRIVER_GH100_570.124.06";
/// NVIDIA's RIM id of the simulated GPUs' VBIOS RIM.
pub const SIMULATED_VBIOS_RIM_ID: &str = "NV_GPU_VBIOS_G520_0280_895_9600CF0002";
/// The RIM indices the driver RIM holds as active (`[0, 32)`); the VBIOS
/// RIM holds `[32, 48)` active and the rest of the 64 inactive.
pub const SIMULATED_DRIVER_INDICES: std::ops::Range<u8> = 0..32;
/// The RIM indices the VBIOS RIM holds as active.
pub const SIMULATED_VBIOS_INDICES: std::ops::Range<u8> = 32..48;

const NS_SWID: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const NS_SHA384: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";

/// The test RIM root (PEM): what a development broker pins for RIMs.
pub fn gpu_test_rim_root_pem() -> &'static str {
    RIM_ROOT_PEM
}

/// The RIM the simulated GPUs' driver or VBIOS needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RimKind {
    /// The driver RIM ([`SIMULATED_DRIVER_RIM_ID`]).
    Driver,
    /// The VBIOS RIM ([`SIMULATED_VBIOS_RIM_ID`]).
    Vbios,
}

/// One signed test RIM.
#[derive(Clone, Debug)]
pub struct SimulatedRim {
    /// NVIDIA's id for it (also a good file stem).
    pub id: &'static str,
    /// The version it describes (`colloquialVersion`).
    pub version: &'static str,
    /// The signed XML.
    pub xml: String,
}

/// The driver and VBIOS RIMs of the simulated GPUs, signed under the test
/// RIM PKI. INSECURE.
pub fn simulated_gpu_rims() -> Result<[SimulatedRim; 2], Error> {
    Ok([simulated_rim(RimKind::Driver)?, simulated_rim(RimKind::Vbios)?])
}

/// One RIM of the simulated GPUs. INSECURE.
pub fn simulated_rim(kind: RimKind) -> Result<SimulatedRim, Error> {
    let (id, version, active) = match kind {
        RimKind::Driver => (SIMULATED_DRIVER_RIM_ID, SIMULATED_DRIVER_VERSION, SIMULATED_DRIVER_INDICES),
        RimKind::Vbios => (SIMULATED_VBIOS_RIM_ID, super::gpu::SIMULATED_VBIOS_VERSION, SIMULATED_VBIOS_INDICES),
    };
    let mut payload = String::new();
    for index in 0..SIMULATED_BLOCKS {
        let is_active = active.contains(&index);
        // Inactive entries of the other RIM's range carry a digest that the
        // device does not report: never compared.
        let value = match is_active {
            true => simulated_measurement(index.saturating_add(1)),
            false => [0u8; 48],
        };
        // One entry with two alternatives, as NVIDIA writes for measurements
        // with more than one valid value.
        let hashes = match is_active && index == active.start {
            true => format!(" SHA384:Hash0=\"{}\" SHA384:Hash1=\"{}\"", hex::encode([0xee; 48]), hex::encode(value)),
            false => format!(" SHA384:Hash0=\"{}\"", hex::encode(value)),
        };
        let alternatives = if is_active && index == active.start { 2 } else { 1 };
        payload.push_str(&format!(
            "<Resource active=\"{}\" alternatives=\"{alternatives}\" index=\"{index}\" name=\"Measurement_{index}\" size=\"48\" type=\"Measurement\"{hashes}></Resource>",
            if is_active { "True" } else { "False" },
        ));
    }
    let tag_id = hex::encode(Sha384::digest(format!("kbs test RIM {id}").as_bytes()));
    let root_open = format!(
        "<SoftwareIdentity xmlns=\"{NS_SWID}\" xmlns:SHA384=\"{NS_SHA384}\" xmlns:ds=\"{NS_DSIG}\" corpus=\"false\" name=\"GH100\" patch=\"false\" supplemental=\"false\" tagId=\"{tag_id}\" tagVersion=\"0\" version=\"1.0\">"
    );
    let body = format!(
        "<Entity name=\"KBS test (INSECURE)\" role=\"softwareCreator tagCreator\"></Entity><Meta colloquialVersion=\"{version}\" edition=\"GPU\" product=\"GH100\" revision=\"r1\"></Meta><Payload>{payload}</Payload>"
    );
    let close = "</SoftwareIdentity>";
    let digest = Sha384::digest(format!("{root_open}{body}{close}").as_bytes());
    let signed_info = format!(
        "<ds:SignedInfo><ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2006/12/xml-c14n11\"></ds:CanonicalizationMethod><ds:SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384\"></ds:SignatureMethod><ds:Reference URI=\"\"><ds:Transforms><ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"></ds:Transform><ds:Transform Algorithm=\"http://www.w3.org/2006/12/xml-c14n11\"></ds:Transform></ds:Transforms><ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha384\"></ds:DigestMethod><ds:DigestValue>{}</ds:DigestValue></ds:Reference></ds:SignedInfo>",
        STANDARD.encode(digest)
    );
    // As the apex of a canonical subset, SignedInfo declares every
    // namespace in scope.
    let canonical_signed_info = signed_info.replacen(
        "<ds:SignedInfo>",
        &format!("<ds:SignedInfo xmlns=\"{NS_SWID}\" xmlns:SHA384=\"{NS_SHA384}\" xmlns:ds=\"{NS_DSIG}\">"),
        1,
    );
    let key = signer_key()?;
    let signature = key
        .sign(&SystemRandom::new(), canonical_signed_info.as_bytes())
        .map_err(|_| Error::Simulated("ECDSA P-384 signing failed"))?;
    let certificates: String = pem_blocks(RIM_SIGNER_CHAIN_PEM)?
        .iter()
        .map(|der| format!("<ds:X509Certificate>{}</ds:X509Certificate>", STANDARD.encode(der)))
        .collect();
    let signature_element = format!(
        "<ds:Signature>{signed_info}<ds:SignatureValue>{}</ds:SignatureValue><ds:KeyInfo><ds:X509Data>{certificates}</ds:X509Data></ds:KeyInfo></ds:Signature>",
        STANDARD.encode(signature.as_ref())
    );
    Ok(SimulatedRim { id, version, xml: format!("{root_open}{body}{signature_element}{close}") })
}

fn signer_key() -> Result<EcdsaKeyPair, Error> {
    let der = rcgen::KeyPair::from_pem(RIM_SIGNER_KEY_PEM)
        .map_err(|_| Error::Simulated("RIM test key is not PEM"))?
        .serialize_der();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der)
        .map_err(|_| Error::Simulated("RIM test key is not a P-384 PKCS#8 key"))
}

/// The DER of every certificate of a PEM text, in order.
fn pem_blocks(pem: &str) -> Result<Vec<Vec<u8>>, Error> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = rest.get(start + BEGIN.len()..).unwrap_or_default();
        let end = after.find(END).ok_or(Error::Simulated("unterminated PEM certificate"))?;
        let body: String = after.get(..end).unwrap_or_default().chars().filter(|c| !c.is_whitespace()).collect();
        out.push(STANDARD.decode(body).map_err(|_| Error::Simulated("PEM certificate is not base64"))?);
        rest = after.get(end + END.len()..).unwrap_or_default();
    }
    Ok(out)
}

/// Makes a new test RIM PKI: the root (PEM), the signer's chain (PEM, leaf
/// first, root last, as `KeyInfo` carries it) and the signer's key (PKCS#8
/// PEM). The committed fixtures are one output of it.
pub fn generate_rim_pki() -> Result<(String, String, String), Error> {
    use rcgen::{Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P384_SHA384};
    let sim = |_| Error::Simulated("RIM test PKI generation failed");
    let validity = (time::macros::datetime!(2024-01-01 00:00 UTC), time::macros::datetime!(9999-12-31 23:59:59 UTC));
    let params = |cn: &str, ca: bool, serial: u8| {
        x509::params(cn, ca, &[0x52, serial], validity, &[KeyUsagePurpose::DigitalSignature])
    };

    let new_key = || KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(sim);
    let root_key = new_key()?;
    let root_params = params("KBS TEST NVIDIA CoRIM signing Root CA", true, 1);
    let root = root_params.self_signed(&root_key).map_err(sim)?;
    let root_issuer = Issuer::new(root_params, &root_key);
    let ca_key = new_key()?;
    let ca_params = params("NVIDIA Reference Value GH100 CA", true, 2);
    let ca = ca_params.signed_by(&ca_key, &root_issuer).map_err(sim)?;
    let ca_issuer = Issuer::new(ca_params, &ca_key);
    let l3_key = new_key()?;
    let l3_params = params("NVIDIA Reference Value L3 GH100 001", true, 3);
    let l3 = l3_params.signed_by(&l3_key, &ca_issuer).map_err(sim)?;
    let l3_issuer = Issuer::new(l3_params, &l3_key);
    let signer_key = new_key()?;
    let signer = params("HCC RIM L4 Signer", false, 4).signed_by(&signer_key, &l3_issuer).map_err(sim)?;
    let chain = [signer.pem(), l3.pem(), ca.pem(), root.pem()].concat();
    Ok((root.pem(), chain, signer_key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a new test RIM PKI over the committed one (run by hand:
    /// `cargo test -p attester-client --features insecure-simulated-tee
    /// regenerate_gpu_rim_test_pki -- --ignored`; brokers pinning the old
    /// root then refuse RIMs signed under the new one).
    #[test]
    #[ignore = "rewrites the committed GPU RIM test PKI"]
    fn regenerate_gpu_rim_test_pki() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/gpu-rim-pki");
        std::fs::create_dir_all(&dir).unwrap();
        let (root, chain, key) = generate_rim_pki().unwrap();
        std::fs::write(dir.join("root.pem"), root).unwrap();
        std::fs::write(dir.join("signer.chain.pem"), chain).unwrap();
        std::fs::write(dir.join("signer.key.pem"), key).unwrap();
    }

    #[test]
    fn rims_cover_the_simulated_measurements_and_sign_with_the_test_signer() {
        let [driver, vbios] = simulated_gpu_rims().unwrap();
        assert_eq!((driver.id, vbios.id), (SIMULATED_DRIVER_RIM_ID, SIMULATED_VBIOS_RIM_ID));
        assert!(driver.xml.contains("colloquialVersion=\"570.124.06\""));
        assert!(vbios.xml.contains("colloquialVersion=\"96.00.CF.00.02\""));
        // Block 1 is RIM index 0, with its second alternative.
        assert!(driver.xml.contains(&hex::encode(simulated_measurement(1))));
        assert_eq!(driver.xml.matches("active=\"True\"").count(), 32);
        assert_eq!(vbios.xml.matches("active=\"True\"").count(), 16);
        // The chain in KeyInfo ends in the test RIM root.
        let chain = pem_blocks(RIM_SIGNER_CHAIN_PEM).unwrap();
        assert_eq!(chain.len(), 4);
        assert_eq!(chain.last(), pem_blocks(gpu_test_rim_root_pem()).unwrap().first());
    }
}
