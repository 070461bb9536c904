//! INSECURE simulated NVIDIA GPUs in confidential-computing mode, for tests
//! and demos only.
//!
//! **Nothing here is a GPU.** [`SimulatedGpus`] writes SPDM 1.1
//! GET_MEASUREMENTS requests and signed MEASUREMENTS responses in the exact
//! format an H100 returns through NVML, signed (ECDSA P-384, SHA-384) by
//! leaf keys committed to this repository (`attester-client/testdata/gpu-pki`)
//! under a test "NVIDIA-shaped" PKI that no NVIDIA part chains to. A broker
//! accepts such evidence only when it pins the test root ([`gpu_test_root_pem`]),
//! which it does only when started with an explicit development flag.
//!
//! # The test PKI
//! Made once by [`generate`] (the ignored test `regenerate_gpu_test_pki`
//! writes it) and committed, so that every process (a broker, `kbs-attester`,
//! a test) sees the same bytes: a self-signed `KBS TEST NVIDIA Device
//! Identity CA` → `NVIDIA GH100 Identity` → `NVIDIA GH100 Provisioner ICA 1`
//! → per device `GH100 A01 GSP BROM` (the device identity) → `GH100 A01 GSP
//! FMC LF` (the firmware alias key that signs reports). All keys are P-384,
//! all certificates ECDSA-with-SHA384, valid 2024-01-01 to 9999-12-31 like
//! NVIDIA's. The leaf carries NVIDIA's Hopper FWID extension
//! (`2.23.133.5.4.1`: `SEQ { INT 1, SPKI of the BROM key, SEQ { sha384,
//! OCTET fwid } }`) and the device-id otherName (`1.3.6.1.4.1.412.274.1`,
//! `NVIDIA:GH100:<hex>`) in its subjectAltName.
//!
//! # Report layout
//! Request (37 bytes): `11 E0 01 FF`, the 32-byte nonce, slot `00`.
//! Response: `11 60 00 00`, 64 blocks, their u24 length, each block `index,
//! 01, u16 51, 01, u16 48, SHA-384`; a 32-byte responder nonce; u16 opaque
//! length and NVIDIA's legacy opaque TLVs (u16 type, u16 size, value; all
//! little-endian): driver and VBIOS version, NVDEC0 status, chip SKU,
//! project, project SKU, FWID, opaque data version, multi-GPU mode; then the
//! 96-byte signature `r || s` over request and response up to it.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use kbs_proto::spdm::{self, opaque_type};
use sha2::{Digest, Sha256, Sha384};

use super::x509::{self, tlv};
use crate::evidence::{Error, GpuEvidence, GpuEvidenceSource};

/// How many simulated GPUs the test PKI holds.
pub const SIMULATED_GPUS_MAX: usize = 10;

/// The driver version the simulated GPUs report.
pub const SIMULATED_DRIVER_VERSION: &str = "570.124.06";
/// The VBIOS version the simulated GPUs report.
pub const SIMULATED_VBIOS_VERSION: &str = "96.00.CF.00.02";
/// Measurement blocks per report, as on a real H100.
pub const SIMULATED_BLOCKS: u8 = 64;

const ROOT_PEM: &str = include_str!("../../testdata/gpu-pki/root.pem");
const CHAINS: [&str; SIMULATED_GPUS_MAX] = [
    include_str!("../../testdata/gpu-pki/gpu-0.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-1.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-2.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-3.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-4.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-5.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-6.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-7.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-8.chain.pem"),
    include_str!("../../testdata/gpu-pki/gpu-9.chain.pem"),
];
const KEYS: [&str; SIMULATED_GPUS_MAX] = [
    include_str!("../../testdata/gpu-pki/gpu-0.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-1.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-2.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-3.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-4.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-5.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-6.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-7.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-8.key.pem"),
    include_str!("../../testdata/gpu-pki/gpu-9.key.pem"),
];

/// The test GPU root (PEM): what a development broker pins.
pub fn gpu_test_root_pem() -> &'static str {
    ROOT_PEM
}

/// The firmware digest (FWID) of every simulated GPU; the leaf certificates
/// certify it.
pub fn simulated_fwid() -> [u8; 48] {
    Sha384::digest(b"kbs test GPU firmware (INSECURE)").into()
}

/// The digest a simulated GPU reports in measurement block `index`.
pub fn simulated_measurement(index: u8) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(b"kbs test GPU measurement (INSECURE)");
    h.update([index]);
    h.finalize().into()
}

/// The measurement block a simulated GPU with wrong firmware
/// ([`SimulatedGpu::wrong_firmware`]) reports differently: block 10, RIM
/// index 9, which the driver RIM holds active.
pub const WRONG_FIRMWARE_BLOCK: u8 = 10;

/// The multi-GPU mode a simulated GPU reports (opaque `feature_flag`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuMode {
    /// Single GPU passthrough (0).
    Spt,
    /// Multi-GPU protected passthrough (1).
    Mpt,
}

/// One simulated GPU of the test PKI. INSECURE.
#[derive(Clone, Debug)]
pub struct SimulatedGpu {
    index: usize,
    mode: GpuMode,
    wrong_firmware: bool,
}

impl SimulatedGpu {
    /// GPU `index` (below [`SIMULATED_GPUS_MAX`]) in single-GPU mode.
    pub fn new(index: usize) -> Result<Self, Error> {
        if index >= SIMULATED_GPUS_MAX {
            return Err(Error::Simulated("the GPU test PKI has no such device"));
        }
        Ok(Self { index, mode: GpuMode::Spt, wrong_firmware: false })
    }

    /// Runs firmware its reference values do not describe: block
    /// [`WRONG_FIRMWARE_BLOCK`] differs from [`simulated_measurement`] (the
    /// report is still genuine and signed; only the appraisal fails).
    pub fn wrong_firmware(mut self) -> Self {
        self.wrong_firmware = true;
        self
    }

    /// Reports `mode` instead.
    pub fn mode(mut self, mode: GpuMode) -> Self {
        self.mode = mode;
        self
    }

    /// Its certificate chain (PEM, leaf first), as NVML returns it.
    pub fn cert_chain(&self) -> &'static str {
        CHAINS.get(self.index).copied().unwrap_or_default()
    }

    /// The signed SPDM request and response for `nonce`.
    pub fn report(&self, nonce: &[u8; 32]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(4200);
        // GET_MEASUREMENTS: SPDM 1.1, signature requested, all blocks, slot 0.
        out.extend_from_slice(&spdm::REQUEST_HEADER);
        out.extend_from_slice(nonce);
        out.push(0);
        // MEASUREMENTS.
        out.extend_from_slice(&spdm::RESPONSE_HEADER);
        out.extend_from_slice(&[0x00, 0x00, SIMULATED_BLOCKS]);
        let record_len = u32::from(SIMULATED_BLOCKS) * (4 + 3 + 48);
        out.extend_from_slice(record_len.to_le_bytes().get(..3).unwrap_or_default());
        for index in 1..=SIMULATED_BLOCKS {
            out.extend_from_slice(&[index, 0x01, 51, 0, 0x01, 48, 0]);
            let mut digest = simulated_measurement(index);
            if self.wrong_firmware && index == WRONG_FIRMWARE_BLOCK {
                digest = Sha384::digest(b"kbs test GPU firmware nobody signed (INSECURE)").into();
            }
            out.extend_from_slice(&digest);
        }
        let mut responder = Sha256::new();
        responder.update(b"kbs test GPU responder nonce");
        responder.update(nonce);
        responder.update(self.index.to_le_bytes());
        out.extend_from_slice(&responder.finalize());
        let opaque = self.opaque_data();
        let opaque_len = u16::try_from(opaque.len()).map_err(|_| Error::Simulated("opaque data too long"))?;
        out.extend_from_slice(&opaque_len.to_le_bytes());
        out.extend_from_slice(&opaque);
        let key = leaf_key(self.index)?;
        let signature =
            key.sign(&SystemRandom::new(), &out).map_err(|_| Error::Simulated("ECDSA P-384 signing failed"))?;
        out.extend_from_slice(signature.as_ref());
        Ok(out)
    }

    /// Report and chain for `nonce`.
    pub fn evidence(&self, nonce: &[u8; 32]) -> Result<GpuEvidence, Error> {
        Ok(GpuEvidence { report: self.report(nonce)?, cert_chain: self.cert_chain().as_bytes().to_vec() })
    }

    fn opaque_data(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut tlv = |kind: u16, value: &[u8]| {
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(value);
        };
        let mut driver = SIMULATED_DRIVER_VERSION.as_bytes().to_vec();
        driver.push(0);
        tlv(opaque_type::DRIVER_VERSION, &driver);
        // "96.00.CF.00.02" as the GPU writes it: four bytes reversed, then the fifth.
        tlv(opaque_type::VBIOS_VERSION, &[0x00, 0xCF, 0x00, 0x96, 0x02, 0, 0, 0]);
        tlv(opaque_type::NVDEC0_STATUS, &[0x55]);
        tlv(opaque_type::CHIP_SKU, b"895");
        tlv(opaque_type::PROJECT, b"G520");
        tlv(opaque_type::PROJECT_SKU, b"0280");
        tlv(opaque_type::FWID, &simulated_fwid());
        tlv(opaque_type::OPAQUE_DATA_VERSION, &1u16.to_le_bytes());
        let mode: u16 = match self.mode {
            GpuMode::Spt => 0,
            GpuMode::Mpt => 1,
        };
        tlv(opaque_type::FEATURE_FLAG, &mode.to_le_bytes());
        out
    }
}

/// The first `count` simulated GPUs, as one VM's devices: single-GPU mode
/// for one, multi-GPU mode for more. INSECURE.
#[derive(Clone, Debug)]
pub struct SimulatedGpus {
    gpus: Vec<SimulatedGpu>,
}

impl SimulatedGpus {
    /// GPUs `0..count`.
    pub fn new(count: usize) -> Result<Self, Error> {
        let mode = if count > 1 { GpuMode::Mpt } else { GpuMode::Spt };
        let gpus = (0..count).map(|i| SimulatedGpu::new(i).map(|g| g.mode(mode))).collect::<Result<_, _>>()?;
        Ok(Self { gpus })
    }

    /// GPU `index` of the set runs wrong firmware
    /// ([`SimulatedGpu::wrong_firmware`]); an index outside the set changes
    /// nothing.
    pub fn with_wrong_firmware(mut self, index: usize) -> Self {
        if let Some(gpu) = self.gpus.get_mut(index) {
            gpu.wrong_firmware = true;
        }
        self
    }

    /// The GPUs.
    pub fn gpus(&self) -> &[SimulatedGpu] {
        &self.gpus
    }
}

impl GpuEvidenceSource for SimulatedGpus {
    fn gpu_evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, Error> {
        self.gpus.iter().map(|g| g.evidence(nonce)).collect()
    }
}

fn leaf_key(index: usize) -> Result<EcdsaKeyPair, Error> {
    let pem = KEYS.get(index).ok_or(Error::Simulated("the GPU test PKI has no such device"))?;
    let der = rcgen::KeyPair::from_pem(pem).map_err(|_| Error::Simulated("GPU test key is not PEM"))?.serialize_der();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der)
        .map_err(|_| Error::Simulated("GPU test key is not a P-384 PKCS#8 key"))
}

/// Makes a new GPU test PKI: the root (PEM), and per device its chain (PEM,
/// leaf first) and leaf key (PKCS#8 PEM). Deterministic in shape, not in
/// bytes (keys are fresh); the committed fixtures are one output of it.
pub fn generate(devices: usize) -> Result<(String, Vec<(String, String)>), Error> {
    use rcgen::{
        CustomExtension, DnType, Issuer, KeyPair, KeyUsagePurpose, OtherNameValue, PKCS_ECDSA_P384_SHA384,
        PublicKeyData as _, SanType,
    };
    let sim = |_| Error::Simulated("GPU test PKI generation failed");
    let from = time::macros::datetime!(2024-01-01 00:00 UTC);
    let until = time::macros::datetime!(9999-12-31 23:59:59 UTC);
    let params = |cn: &str, ca: bool, serial: &[u8]| {
        x509::params(cn, ca, serial, (from, until), &[KeyUsagePurpose::DigitalSignature])
    };

    let new_key = || KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(sim);

    let root_key = new_key()?;
    let root_params = params("KBS TEST NVIDIA Device Identity CA", true, &[0x01]);
    let root = root_params.self_signed(&root_key).map_err(sim)?;
    let root_issuer = Issuer::new(root_params, &root_key);
    let identity_key = new_key()?;
    let identity_params = params("NVIDIA GH100 Identity", true, &[0x02]);
    let identity = identity_params.signed_by(&identity_key, &root_issuer).map_err(sim)?;
    let identity_issuer = Issuer::new(identity_params, &identity_key);
    let ica_key = new_key()?;
    let ica_params = params("NVIDIA GH100 Provisioner ICA 1", true, &[0x03]);
    let ica = ica_params.signed_by(&ica_key, &identity_issuer).map_err(sim)?;
    let ica_issuer = Issuer::new(ica_params, &ica_key);

    let mut out = Vec::with_capacity(devices);
    for i in 0..devices {
        let n = u8::try_from(i).map_err(|_| Error::Simulated("too many test GPUs"))?;
        let chip_id = format!("4B5354475055{n:04X}");
        let brom_key = new_key()?;
        let mut brom_params = params("GH100 A01 GSP BROM", true, &[0x10, n]);
        brom_params.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 5]), chip_id.as_str());
        let brom = brom_params.signed_by(&brom_key, &ica_issuer).map_err(sim)?;
        let brom_issuer = Issuer::new(brom_params, &brom_key);

        let leaf_key = new_key()?;
        let mut leaf_params = params("GH100 A01 GSP FMC LF", false, &[0x20, n, 0x5A, 0xA5]);
        leaf_params.custom_extensions = vec![CustomExtension::from_oid_content(
            &[2, 23, 133, 5, 4, 1],
            riot_fwid(&brom_key.subject_public_key_info()),
        )];
        leaf_params.subject_alt_names = vec![SanType::OtherName((
            vec![1, 3, 6, 1, 4, 1, 412, 274, 1],
            OtherNameValue::Utf8String(format!("NVIDIA:GH100:{chip_id}")),
        ))];
        let leaf = leaf_params.signed_by(&leaf_key, &brom_issuer).map_err(sim)?;
        let chain = [leaf.pem(), brom.pem(), ica.pem(), identity.pem(), root.pem()].concat();
        out.push((chain, leaf_key.serialize_pem()));
    }
    Ok((root.pem(), out))
}

/// NVIDIA's Hopper FWID extension value: `SEQ { INT 1, spki, SEQ { OID
/// sha384, OCTET fwid } }`.
fn riot_fwid(spki: &[u8]) -> Vec<u8> {
    const SHA384_OID: [u8; 9] = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    let mut fwid = tlv(0x06, &SHA384_OID);
    fwid.extend(tlv(0x04, &simulated_fwid()));
    let mut body = tlv(0x02, &[1]);
    body.extend_from_slice(spki);
    body.extend(tlv(0x30, &fwid));
    tlv(0x30, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a new test PKI over the committed one (run by hand:
    /// `cargo test -p attester-client --features insecure-simulated-tee
    /// regenerate_gpu_test_pki -- --ignored`; brokers pinning the old root
    /// then refuse the new evidence).
    #[test]
    #[ignore = "rewrites the committed GPU test PKI"]
    fn regenerate_gpu_test_pki() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/gpu-pki");
        std::fs::create_dir_all(&dir).unwrap();
        let (root, devices) = generate(SIMULATED_GPUS_MAX).unwrap();
        std::fs::write(dir.join("root.pem"), root).unwrap();
        for (i, (chain, key)) in devices.iter().enumerate() {
            std::fs::write(dir.join(format!("gpu-{i}.chain.pem")), chain).unwrap();
            std::fs::write(dir.join(format!("gpu-{i}.key.pem")), key).unwrap();
        }
    }

    #[test]
    fn reports_have_the_spdm_layout_and_sign_with_the_leaf() {
        let gpu = SimulatedGpu::new(3).unwrap();
        let nonce = [0x42; 32];
        let report = gpu.report(&nonce).unwrap();
        assert_eq!(&report[..4], &[0x11, 0xE0, 0x01, 0xFF]);
        assert_eq!(&report[4..36], &nonce);
        assert_eq!(&report[37..42], &[0x11, 0x60, 0, 0, 64]);
        // 37 + 8 + 64 * 55 + 32 + 2 + opaque + 96.
        let opaque_len = usize::from(u16::from_le_bytes([report[37 + 8 + 3520 + 32], report[37 + 8 + 3520 + 33]]));
        assert_eq!(report.len(), 37 + 8 + 3520 + 32 + 2 + opaque_len + 96);
        // The chain is five certificates, its last the test root.
        let chain = gpu.cert_chain();
        assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 5);
        assert!(chain.ends_with(gpu_test_root_pem()));
        // Each GPU its own chain; the signature is over request and response.
        assert_ne!(SimulatedGpu::new(4).unwrap().cert_chain(), chain);
        let signed = &report[..report.len() - 96];
        let (_, pem) = x509_parser::pem::parse_x509_pem(chain.as_bytes()).unwrap();
        let leaf = pem.parse_x509().unwrap();
        let key = leaf.public_key().subject_public_key.data.to_vec();
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED, key)
            .verify(signed, &report[report.len() - 96..])
            .unwrap();
        assert!(SimulatedGpu::new(SIMULATED_GPUS_MAX).is_err());
    }

    #[test]
    fn sets_choose_their_mode_and_bind_the_nonce() {
        let one = SimulatedGpus::new(1).unwrap().gpu_evidence(&[1; 32]).unwrap();
        let eight = SimulatedGpus::new(8).unwrap().gpu_evidence(&[2; 32]).unwrap();
        assert_eq!((one.len(), eight.len()), (1, 8));
        let flag = |r: &[u8]| r[r.len() - 96 - 2..r.len() - 96].to_vec();
        assert_eq!(flag(&one[0].report), [0, 0]);
        assert_eq!(flag(&eight[7].report), [1, 0]);
        assert_eq!(&eight[0].report[4..36], &[2; 32]);
        assert!(SimulatedGpus::new(SIMULATED_GPUS_MAX + 1).is_err());
    }

    #[test]
    fn wrong_firmware_changes_one_block_only() {
        let genuine = SimulatedGpus::new(2).unwrap().gpu_evidence(&[3; 32]).unwrap();
        let wrong = SimulatedGpus::new(2).unwrap().with_wrong_firmware(1).gpu_evidence(&[3; 32]).unwrap();
        let block = |r: &[u8], i: u8| {
            let at = 37 + 8 + usize::from(i - 1) * 55 + 7;
            r[at..at + 48].to_vec()
        };
        assert_eq!(block(&wrong[0].report, WRONG_FIRMWARE_BLOCK), simulated_measurement(WRONG_FIRMWARE_BLOCK));
        assert_ne!(block(&wrong[1].report, WRONG_FIRMWARE_BLOCK), simulated_measurement(WRONG_FIRMWARE_BLOCK));
        for i in (1..=SIMULATED_BLOCKS).filter(|i| *i != WRONG_FIRMWARE_BLOCK) {
            assert_eq!(block(&wrong[1].report, i), block(&genuine[1].report, i), "block {i}");
        }
    }
}
