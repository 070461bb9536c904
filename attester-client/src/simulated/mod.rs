//! INSECURE simulated SEV-SNP TEE, for tests and demos only.
//!
//! **Nothing here is a TEE.** [`SimulatedSnp`] writes SEV-SNP attestation
//! reports in the exact production binary format and signs them with VCEK
//! private keys that are committed to this repository
//! (`attester-client/testdata/snp-pki`), under a test ARK/ASK that no real
//! AMD part chains to. Evidence from it proves nothing about the machine it
//! ran on. A broker accepts it only when it pins the test ARK, which it does
//! only when started with an explicit development flag. This module exists
//! only with the cargo feature `insecure-simulated-tee`; never enable that
//! feature in a production build.
//!
//! # The test PKI
//! `testdata/snp-pki/generate.sh` made it once with the `openssl` CLI (see
//! the README there): a test ARK and ASK (RSA-4096, RSASSA-PSS SHA-384
//! signatures), VCEKs (EC P-384) for the chips of [`Chip`] with AMD's TCB and
//! hwID extensions, a Genoa VCEK certificate that expired in 2020, and an
//! independent "foreign" ARK/ASK/VCEK for untrusted-root tests. The fixtures
//! are embedded in the library ([`Pki`], [`Vcek`]) and their directory is
//! [`fixture_dir`], so a broker's tests and development configuration can pin
//! the test ARK.
//!
//! # Report format
//! 1184 bytes, little-endian, per the ATTESTATION_REPORT table of AMD's
//! SEV-SNP ABI specification; every reserved byte zero. The signature is
//! ECDSA P-384 with SHA-384 over bytes `[0, 0x2A0)`, stored at `0x2A0` as
//! `r` then `s`, each 72 bytes little-endian (48 significant bytes, zero
//! padded).
//!
//! # Certificate table
//! The GHCB / Linux extended-report format ([`encode_cert_table`]), with
//! VCEK, ASK and ARK entries. GUID bytes are in RFC 9562 order, the order of
//! the canonical string (`63da758d-e664-...` is stored `63 da 75 8d e6 64
//! ...`), as Linux `uuid_t`, libuuid, AMD's `sev-guest` tools, `go-sev-guest`
//! and the `sev` crate lay them out; not the mixed-endian EFI `guid_t`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use sha2::{Digest, Sha512};

use crate::evidence::{Error, EvidenceSource, SNP_REPORT_LEN, SnpEvidence, TdxEvidence, Tee};

mod cert_table;
mod gpu;
mod gpu_rim;
mod pki;
mod tdx;
mod x509;

pub use cert_table::{
    ARK_GUID, ASK_GUID, CERT_TABLE_ENTRY_LEN, CertTableEntry, VCEK_GUID, decode_cert_table, encode_cert_table,
};
pub use gpu::{
    GpuMode, SIMULATED_BLOCKS, SIMULATED_DRIVER_VERSION, SIMULATED_GPUS_MAX, SIMULATED_VBIOS_VERSION, SimulatedGpu,
    SimulatedGpus, WRONG_FIRMWARE_BLOCK, generate as generate_gpu_test_pki, gpu_test_root_pem, simulated_fwid,
    simulated_measurement,
};
pub use gpu_rim::{
    RimKind, SIMULATED_DRIVER_INDICES, SIMULATED_DRIVER_RIM_ID, SIMULATED_VBIOS_INDICES, SIMULATED_VBIOS_RIM_ID,
    SimulatedRim, generate_rim_pki as generate_gpu_rim_test_pki, gpu_test_rim_root_pem, simulated_gpu_rims,
    simulated_rim,
};
pub use pki::{
    Chip, Generation, Pki, Tcb, TestCrl, Vcek, fixture_dir, foreign_ark_pem, test_ark_der, test_ark_pem, test_ask_der,
    test_ask_pem, test_crl_dir,
};
pub use tdx::{
    INTEL_QE_VENDOR_ID, Pck, Platform, SimulatedTdx, TD_ATTR_DEBUG, TD_ATTR_MIGRATABLE, TD_ATTR_SEPT_VE_DISABLE,
    TdxTestPki, tdx_test_root_pem,
};

/// Offset of the signature; the signed bytes are `[0, SIGNED_LEN)`.
pub const SIGNED_LEN: usize = 0x2A0;

/// Default guest policy: SMT allowed (bit 16) and the must-be-one bit 17.
/// DEBUG (bit 19) is clear.
pub const DEFAULT_POLICY: u64 = 0x3_0000;
/// Guest policy bit 19: debugging allowed.
pub const POLICY_DEBUG: u64 = 1 << 19;

// Field offsets (AMD SEV-SNP ABI, ATTESTATION_REPORT).
const OFF_VERSION: usize = 0x000;
const OFF_GUEST_SVN: usize = 0x004;
const OFF_POLICY: usize = 0x008;
const OFF_FAMILY_ID: usize = 0x010;
const OFF_IMAGE_ID: usize = 0x020;
const OFF_VMPL: usize = 0x030;
const OFF_SIG_ALGO: usize = 0x034;
const OFF_CURRENT_TCB: usize = 0x038;
const OFF_PLATFORM_INFO: usize = 0x040;
const OFF_REPORT_DATA: usize = 0x050;
const OFF_MEASUREMENT: usize = 0x090;
const OFF_HOST_DATA: usize = 0x0C0;
const OFF_REPORT_ID: usize = 0x140;
const OFF_REPORT_ID_MA: usize = 0x160;
const OFF_REPORTED_TCB: usize = 0x180;
const OFF_CPUID_FAM: usize = 0x188;
const OFF_CHIP_ID: usize = 0x1A0;
const OFF_COMMITTED_TCB: usize = 0x1E0;
const OFF_CURRENT_FW: usize = 0x1E8;
const OFF_COMMITTED_FW: usize = 0x1EC;
const OFF_LAUNCH_TCB: usize = 0x1F0;
const OFF_SIG_R: usize = 0x2A0;
const OFF_SIG_S: usize = 0x2E8;
/// Width of each signature component in the report.
const SIG_COMPONENT_LEN: usize = 72;
/// Width of a P-384 scalar.
const P384_SCALAR_LEN: usize = 48;

/// Signature algorithm 1: ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Platform info bit 0: SMT enabled.
const PLATFORM_INFO_SMT_EN: u64 = 1;

/// A simulated SEV-SNP TEE: a builder of signed reports. INSECURE.
///
/// The defaults are a healthy guest: version 3 (Genoa), chip [`Chip::Genoa`],
/// policy [`DEFAULT_POLICY`], VMPL 0, measurement and host data zero, the
/// chip's own TCB, signed by the chip's VCEK, with a VCEK/ASK/ARK
/// certificate table of the test PKI. The overrides make evidence that a
/// verifier must refuse, one check at a time.
#[derive(Clone, Debug)]
pub struct SimulatedSnp {
    chip: Chip,
    measurement: [u8; 48],
    host_data: [u8; 32],
    policy: u64,
    vmpl: u32,
    guest_svn: u32,
    family_id: [u8; 16],
    image_id: [u8; 16],
    report_data: Option<[u8; 64]>,
    report_version: Option<u32>,
    reported_tcb: Option<Tcb>,
    vcek_cert: Option<Vcek>,
    sign_with: Option<Vcek>,
    foreign: bool,
    cert_table: bool,
}

impl Default for SimulatedSnp {
    fn default() -> Self {
        Self::new(Generation::Genoa)
    }
}

impl SimulatedSnp {
    /// A healthy guest on the default chip of `generation`.
    pub fn new(generation: Generation) -> Self {
        Self {
            chip: Chip::of(generation),
            measurement: [0u8; 48],
            host_data: [0u8; 32],
            policy: DEFAULT_POLICY,
            vmpl: 0,
            guest_svn: 0,
            family_id: [0u8; 16],
            image_id: [0u8; 16],
            report_data: None,
            report_version: None,
            reported_tcb: None,
            vcek_cert: None,
            sign_with: None,
            foreign: false,
            cert_table: true,
        }
    }

    /// Runs on the default chip of `generation`.
    pub fn generation(self, generation: Generation) -> Self {
        self.chip(Chip::of(generation))
    }

    /// Runs on `chip`: its chip_id, TCB, CPUID and VCEK.
    pub fn chip(mut self, chip: Chip) -> Self {
        self.chip = chip;
        self
    }

    /// The launch measurement.
    pub fn measurement(mut self, measurement: [u8; 48]) -> Self {
        self.measurement = measurement;
        self
    }

    /// The host data (set by the host at launch).
    pub fn host_data(mut self, host_data: [u8; 32]) -> Self {
        self.host_data = host_data;
        self
    }

    /// The guest policy (bit 19 is DEBUG).
    pub fn policy(mut self, policy: u64) -> Self {
        self.policy = policy;
        self
    }

    /// The VMPL the report was requested at.
    pub fn vmpl(mut self, vmpl: u32) -> Self {
        self.vmpl = vmpl;
        self
    }

    /// The guest SVN.
    pub fn guest_svn(mut self, guest_svn: u32) -> Self {
        self.guest_svn = guest_svn;
        self
    }

    /// The family and image IDs from the ID block.
    pub fn ids(mut self, family_id: [u8; 16], image_id: [u8; 16]) -> Self {
        self.family_id = family_id;
        self.image_id = image_id;
        self
    }

    /// Negative tests: put this report_data in the report instead of the
    /// one requested.
    pub fn report_data(mut self, report_data: [u8; 64]) -> Self {
        self.report_data = Some(report_data);
        self
    }

    /// Negative tests: write this version number (v2 has no CPUID fields;
    /// unknown versions get the v3 layout).
    pub fn report_version(mut self, version: u32) -> Self {
        self.report_version = Some(version);
        self
    }

    /// Negative tests: report this TCB as `reported_tcb` instead of the
    /// chip's (the other TCB fields keep the chip's).
    pub fn reported_tcb(mut self, tcb: Tcb) -> Self {
        self.reported_tcb = Some(tcb);
        self
    }

    /// Negative tests: put this VCEK certificate in the certificate table.
    /// Unless [`Self::sign_with`] says otherwise, the report is signed with
    /// the key of this certificate, so the signature verifies and the chip
    /// id / TCB binding checks are what must refuse it.
    pub fn vcek_cert(mut self, vcek: Vcek) -> Self {
        self.vcek_cert = Some(vcek);
        self
    }

    /// Negative tests: sign with this fixture's key instead of that of the
    /// VCEK in the certificate table.
    pub fn sign_with(mut self, vcek: Vcek) -> Self {
        self.sign_with = Some(vcek);
        self
    }

    /// Negative tests: use the foreign PKI (its ARK, ASK and Genoa VCEK, and
    /// that VCEK's key) so the chain ends at a root no broker pins.
    pub fn foreign(mut self) -> Self {
        self.foreign = true;
        self
    }

    /// Returns an empty certificate table, as a host without certificates
    /// does; the broker then needs the VCEK from its collateral.
    pub fn without_cert_table(mut self) -> Self {
        self.cert_table = false;
        self
    }

    /// The VCEK certificate that goes into the table.
    pub fn vcek(&self) -> Vcek {
        match (self.vcek_cert, self.foreign) {
            (Some(vcek), _) => vcek,
            (None, true) => Vcek::ForeignGenoa,
            (None, false) => self.chip.vcek(),
        }
    }

    /// The raw report for `report_data`, signed. INSECURE.
    pub fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, Error> {
        let generation = self.chip.generation();
        let version = self.report_version.unwrap_or_else(|| generation.default_report_version());
        let tcb = self.chip.tcb().to_bytes(generation);
        let reported_tcb = self.reported_tcb.map_or(tcb, |t| t.to_bytes(generation));
        let report_data = self.report_data.as_ref().unwrap_or(report_data);

        let mut r = [0u8; SNP_REPORT_LEN];
        put(&mut r, OFF_VERSION, &version.to_le_bytes());
        put(&mut r, OFF_GUEST_SVN, &self.guest_svn.to_le_bytes());
        put(&mut r, OFF_POLICY, &self.policy.to_le_bytes());
        put(&mut r, OFF_FAMILY_ID, &self.family_id);
        put(&mut r, OFF_IMAGE_ID, &self.image_id);
        put(&mut r, OFF_VMPL, &self.vmpl.to_le_bytes());
        put(&mut r, OFF_SIG_ALGO, &SIG_ALGO_ECDSA_P384_SHA384.to_le_bytes());
        put(&mut r, OFF_CURRENT_TCB, &tcb);
        put(&mut r, OFF_PLATFORM_INFO, &PLATFORM_INFO_SMT_EN.to_le_bytes());
        // KEY_INFO (0x048) stays zero: signed by the VCEK, no author key.
        put(&mut r, OFF_REPORT_DATA, report_data);
        put(&mut r, OFF_MEASUREMENT, &self.measurement);
        put(&mut r, OFF_HOST_DATA, &self.host_data);
        put(&mut r, OFF_REPORT_ID, &self.report_id());
        // No migration agent: REPORT_ID_MA is all ones.
        put(&mut r, OFF_REPORT_ID_MA, &[0xFF; 32]);
        put(&mut r, OFF_REPORTED_TCB, &reported_tcb);
        if version >= 3 {
            let (family, model, stepping) = generation.cpuid();
            put(&mut r, OFF_CPUID_FAM, &[family, model, stepping]);
        }
        put(&mut r, OFF_CHIP_ID, &self.chip.chip_id());
        put(&mut r, OFF_COMMITTED_TCB, &tcb);
        let (major, minor, build) = generation.firmware();
        put(&mut r, OFF_CURRENT_FW, &[build, minor, major]);
        put(&mut r, OFF_COMMITTED_FW, &[build, minor, major]);
        put(&mut r, OFF_LAUNCH_TCB, &tcb);
        // v5 mitigation vectors (0x1F8, 0x200) stay zero.

        let signer = self.sign_with.unwrap_or_else(|| self.vcek());
        let (r_be, s_be) = sign_p384(signer.key_pkcs8_der(), r.get(..SIGNED_LEN).unwrap_or(&[]))?;
        put(&mut r, OFF_SIG_R, &le_component(&r_be));
        put(&mut r, OFF_SIG_S, &le_component(&s_be));
        Ok(r.to_vec())
    }

    /// The certificate table this simulated host supplies.
    pub fn cert_table(&self) -> Result<Vec<u8>, Error> {
        if !self.cert_table {
            return Ok(Vec::new());
        }
        let pki = if self.foreign { Pki::Foreign } else { Pki::Test };
        encode_cert_table(&[
            CertTableEntry { guid: VCEK_GUID, data: self.vcek().cert_der().to_vec() },
            CertTableEntry { guid: ASK_GUID, data: pki.ask_der().to_vec() },
            CertTableEntry { guid: ARK_GUID, data: pki.ark_der().to_vec() },
        ])
    }

    /// A stable per-guest report ID (real firmware draws one at launch).
    fn report_id(&self) -> [u8; 32] {
        let digest = Sha512::new()
            .chain_update(b"kbs simulated report id")
            .chain_update(self.chip.chip_id())
            .chain_update(self.measurement)
            .finalize();
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.get(..32).unwrap_or(&[0u8; 32]));
        id
    }
}

impl EvidenceSource for SimulatedSnp {
    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn snp_report(&self, report_data: &[u8; 64]) -> Result<SnpEvidence, Error> {
        tracing::warn!("INSECURE simulated SEV-SNP TEE: this evidence is signed by test keys");
        Ok(SnpEvidence { report: self.report(report_data)?, cert_table: self.cert_table()? })
    }

    fn tdx_quote(&self, _report_data: &[u8; 64]) -> Result<TdxEvidence, Error> {
        Err(Error::UnsupportedTee(Tee::Tdx))
    }
}

/// Copies `bytes` to `report[offset..]`. Every call site writes a fixed field
/// that lies inside the 1184-byte report, so the bounds always hold.
fn put(report: &mut [u8; SNP_REPORT_LEN], offset: usize, bytes: &[u8]) {
    if let Some(field) = report.get_mut(offset..offset.saturating_add(bytes.len())) {
        field.copy_from_slice(bytes);
    }
}

/// Signs `message` with the P-384 key and returns big-endian `(r, s)`.
fn sign_p384(pkcs8: &[u8], message: &[u8]) -> Result<([u8; 48], [u8; 48]), Error> {
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8)
        .map_err(|_| Error::Simulated("the VCEK key fixture is not a P-384 PKCS#8 key"))?;
    let signature = key.sign(&SystemRandom::new(), message).map_err(|_| Error::Simulated("ECDSA signing failed"))?;
    // The FIXED encoding is r || s, each a 48-byte big-endian integer.
    let (r, s) =
        signature.as_ref().split_first_chunk::<P384_SCALAR_LEN>().ok_or(Error::Simulated("short signature"))?;
    let s: [u8; P384_SCALAR_LEN] = s.try_into().map_err(|_| Error::Simulated("unexpected signature length"))?;
    Ok((*r, s))
}

/// A 48-byte big-endian scalar as the report's 72-byte little-endian field.
fn le_component(be: &[u8; P384_SCALAR_LEN]) -> [u8; SIG_COMPONENT_LEN] {
    let mut out = [0u8; SIG_COMPONENT_LEN];
    for (dst, src) in out.iter_mut().zip(be.iter().rev()) {
        *dst = *src;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
    use x509_parser::prelude::*;

    fn u32_at(r: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(r[off..off + 4].try_into().unwrap())
    }

    fn u64_at(r: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(r[off..off + 8].try_into().unwrap())
    }

    /// Verifies the report signature the way a verifier does: r and s are
    /// 72-byte little-endian fields, of which the low 48 bytes are used.
    fn verify(report: &[u8], vcek: Vcek) -> bool {
        let (_, cert) = X509Certificate::from_der(vcek.cert_der()).unwrap();
        let point = cert.public_key().subject_public_key.data.to_vec();
        let mut sig = Vec::with_capacity(96);
        for off in [OFF_SIG_R, OFF_SIG_S] {
            let field = &report[off..off + SIG_COMPONENT_LEN];
            assert!(field[P384_SCALAR_LEN..].iter().all(|b| *b == 0), "padding must be zero");
            sig.extend(field[..P384_SCALAR_LEN].iter().rev());
        }
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point).verify(&report[..SIGNED_LEN], &sig).is_ok()
    }

    #[test]
    fn report_has_every_field_at_its_offset() {
        let report_data = [0x5Au8; 64];
        let measurement = [0x11u8; 48];
        let host_data = [0x22u8; 32];
        let sim =
            SimulatedSnp::new(Generation::Genoa).measurement(measurement).host_data(host_data).guest_svn(7).vmpl(0);
        let r = sim.report(&report_data).unwrap();
        assert_eq!(r.len(), 1184);
        assert_eq!(u32_at(&r, 0x000), 3);
        assert_eq!(u32_at(&r, 0x004), 7);
        assert_eq!(u64_at(&r, 0x008), 0x30000);
        assert_eq!(u32_at(&r, 0x030), 0);
        assert_eq!(u32_at(&r, 0x034), 1);
        let tcb = [10, 0, 0, 0, 0, 0, 23, 84];
        assert_eq!(&r[0x038..0x040], &tcb);
        assert_eq!(u32_at(&r, 0x048), 0, "signed by the VCEK");
        assert_eq!(&r[0x050..0x090], &report_data);
        assert_eq!(&r[0x090..0x0C0], &measurement);
        assert_eq!(&r[0x0C0..0x0E0], &host_data);
        assert_eq!(&r[0x180..0x188], &tcb);
        assert_eq!(&r[0x188..0x18B], &[0x19, 0x11, 0x01]);
        assert_eq!(&r[0x1A0..0x1E0], &Chip::Genoa.chip_id());
        assert_eq!(&r[0x1E0..0x1E8], &tcb);
        assert_eq!(&r[0x1F0..0x1F8], &tcb);
        // Reserved ranges are zero.
        for range in [0x04C..0x050, 0x18B..0x1A0, 0x1F8..0x2A0, 0x330..0x4A0] {
            assert!(r[range.clone()].iter().all(|b| *b == 0), "reserved {range:x?} not zero");
        }
        assert!(verify(&r, Vcek::Genoa));
    }

    #[test]
    fn generations_have_their_version_tcb_layout_and_cpuid() {
        let milan = SimulatedSnp::new(Generation::Milan).report(&[0; 64]).unwrap();
        assert_eq!(u32_at(&milan, 0), 3);
        assert_eq!(&milan[0x180..0x188], &[4, 0, 0, 0, 0, 0, 22, 213]);
        assert_eq!(&milan[0x188..0x18B], &[0x19, 0x01, 0x01]);
        assert!(verify(&milan, Vcek::Milan));

        let turin = SimulatedSnp::new(Generation::Turin).report(&[0; 64]).unwrap();
        assert_eq!(u32_at(&turin, 0), 5);
        assert_eq!(&turin[0x180..0x188], &[1, 1, 1, 3, 0, 0, 0, 72]);
        assert_eq!(&turin[0x188..0x18B], &[0x1A, 0x02, 0x00]);
        assert!(turin[0x1A8..0x1E0].iter().all(|b| *b == 0), "Turin chip id is 8 bytes");
        assert!(verify(&turin, Vcek::Turin));

        let v2 = SimulatedSnp::new(Generation::Milan).report_version(2).report(&[0; 64]).unwrap();
        assert_eq!(u32_at(&v2, 0), 2);
        assert_eq!(&v2[0x188..0x18B], &[0, 0, 0], "v2 has no CPUID fields");
    }

    #[test]
    fn overrides_produce_the_intended_defects() {
        let rd = [9u8; 64];
        // sign_with: the table's VCEK no longer verifies the signature.
        let r = SimulatedSnp::default().sign_with(Vcek::GenoaOther).report(&rd).unwrap();
        assert!(!verify(&r, Vcek::Genoa));
        assert!(verify(&r, Vcek::GenoaOther));
        // vcek_cert: signed by that certificate's key, chip id still Genoa's.
        let sim = SimulatedSnp::default().vcek_cert(Vcek::GenoaOther);
        let r = sim.report(&rd).unwrap();
        assert!(verify(&r, Vcek::GenoaOther));
        assert_eq!(&r[0x1A0..0x1E0], &Chip::Genoa.chip_id());
        assert_eq!(decode_cert_table(&sim.cert_table().unwrap()).unwrap()[0].data, Vcek::GenoaOther.cert_der());
        // foreign: signed by the foreign VCEK.
        let r = SimulatedSnp::default().foreign().report(&rd).unwrap();
        assert!(verify(&r, Vcek::ForeignGenoa));
        // reported_tcb, report_data, policy, vmpl, version.
        let low = Tcb { bootloader: 1, snp: 1, ..Tcb::default() };
        let forged = [1u8; 64];
        let r = SimulatedSnp::default()
            .reported_tcb(low)
            .report_data(forged)
            .policy(DEFAULT_POLICY | POLICY_DEBUG)
            .vmpl(2)
            .report_version(4)
            .report(&rd)
            .unwrap();
        assert_eq!(&r[0x180..0x188], &[1, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&r[0x038..0x040], &Chip::Genoa.tcb().to_bytes(Generation::Genoa));
        assert_eq!(&r[0x050..0x090], &forged);
        assert_eq!(u64_at(&r, 0x008), 0xB0000);
        assert_eq!(u32_at(&r, 0x030), 2);
        assert_eq!(u32_at(&r, 0x000), 4);
        assert!(verify(&r, Vcek::Genoa));
    }

    #[test]
    fn evidence_source_binds_the_requested_report_data() {
        let sim = SimulatedSnp::new(Generation::Turin);
        let rd = [0xEEu8; 64];
        let evidence = sim.snp_report(&rd).unwrap();
        assert_eq!(sim.tee(), Tee::Snp);
        assert_eq!(&evidence.report[0x50..0x90], &rd);
        assert!(verify(&evidence.report, Vcek::Turin));
        assert_eq!(decode_cert_table(&evidence.cert_table).unwrap()[0].data, Vcek::Turin.cert_der());
        // ECDSA signatures are randomized: two reports differ only there.
        let again = sim.snp_report(&rd).unwrap();
        assert_eq!(evidence.report[..SIGNED_LEN], again.report[..SIGNED_LEN]);
    }
}
