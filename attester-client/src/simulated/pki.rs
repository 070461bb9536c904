//! The committed test PKI: generations, chips, TCBs, and the ARK, ASK and
//! VCEK fixtures of `testdata/snp-pki` (made by its `generate.sh`).

use std::path::PathBuf;

use sha2::{Digest, Sha512};

/// An EPYC generation with SEV-SNP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Generation {
    /// 3rd generation EPYC (family 0x19, models 0x00-0x0F).
    Milan,
    /// 4th generation EPYC (family 0x19, models 0x10-0x1F, 0xA0-0xAF).
    Genoa,
    /// 5th generation EPYC (family 0x1A, models 0x00-0x11).
    Turin,
}

impl Generation {
    /// AMD's product name, as in the VCEK `productName` extension.
    pub fn product_name(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// CPUID family, model and stepping written into v3+ reports.
    pub fn cpuid(self) -> (u8, u8, u8) {
        match self {
            Self::Milan => (0x19, 0x01, 0x01),
            Self::Genoa => (0x19, 0x11, 0x01),
            Self::Turin => (0x1A, 0x02, 0x00),
        }
    }

    /// The report version this generation's firmware produces by default.
    pub fn default_report_version(self) -> u32 {
        match self {
            Self::Milan | Self::Genoa => 3,
            Self::Turin => 5,
        }
    }

    /// Firmware version (major, minor, build) reported as current and committed.
    pub(super) fn firmware(self) -> (u8, u8, u8) {
        match self {
            Self::Milan => (1, 55, 21),
            Self::Genoa => (1, 55, 38),
            Self::Turin => (1, 55, 7),
        }
    }
}

/// A TCB version: the security patch levels of the firmware components.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tcb {
    /// FMC SPL (Turin only; ignored for Milan and Genoa).
    pub fmc: u8,
    /// Bootloader SPL.
    pub bootloader: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl Tcb {
    /// The 8-byte TCB_VERSION layout of `generation`: Milan and Genoa
    /// `[bootloader, tee, 0, 0, 0, 0, snp, microcode]`, Turin
    /// `[fmc, bootloader, tee, snp, 0, 0, 0, microcode]`.
    pub fn to_bytes(self, generation: Generation) -> [u8; 8] {
        match generation {
            Generation::Milan | Generation::Genoa => [self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode],
            Generation::Turin => [self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode],
        }
    }
}

/// A simulated chip: one VCEK key, chip_id and TCB of the test PKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chip {
    /// A Milan chip (TCB bl 4, tee 0, snp 22, ucode 213).
    Milan,
    /// A Genoa chip (TCB bl 10, tee 0, snp 23, ucode 84).
    Genoa,
    /// A Turin chip (TCB fmc 1, bl 1, tee 1, snp 3, ucode 72; 8-byte chip id).
    Turin,
    /// A second Genoa chip with its own key and chip id (same TCB as Genoa).
    GenoaOther,
}

impl Chip {
    /// The default chip of a generation.
    pub fn of(generation: Generation) -> Self {
        match generation {
            Generation::Milan => Self::Milan,
            Generation::Genoa => Self::Genoa,
            Generation::Turin => Self::Turin,
        }
    }

    /// The chip's generation.
    pub fn generation(self) -> Generation {
        match self {
            Self::Milan => Generation::Milan,
            Self::Genoa | Self::GenoaOther => Generation::Genoa,
            Self::Turin => Generation::Turin,
        }
    }

    /// The name the fixtures use for this chip.
    fn fixture_name(self) -> &'static str {
        match self {
            Self::Milan => "milan",
            Self::Genoa => "genoa",
            Self::Turin => "turin",
            Self::GenoaOther => "genoa-other",
        }
    }

    /// The chip's TCB, as certified in its VCEK.
    pub fn tcb(self) -> Tcb {
        match self {
            Self::Milan => Tcb { fmc: 0, bootloader: 4, tee: 0, snp: 22, microcode: 213 },
            Self::Genoa | Self::GenoaOther => Tcb { fmc: 0, bootloader: 10, tee: 0, snp: 23, microcode: 84 },
            Self::Turin => Tcb { fmc: 1, bootloader: 1, tee: 1, snp: 3, microcode: 72 },
        }
    }

    /// The chip_id field of its reports: `SHA-512("kbs test chip <name>")`,
    /// of which Turin keeps the first 8 bytes (zero-padded), as in its VCEK
    /// hwID extension.
    pub fn chip_id(self) -> [u8; 64] {
        let digest: [u8; 64] = Sha512::new()
            .chain_update(b"kbs test chip ")
            .chain_update(self.fixture_name().as_bytes())
            .finalize()
            .into();
        match self {
            Self::Turin => {
                let mut id = [0u8; 64];
                id[..8].copy_from_slice(&digest[..8]);
                id
            }
            Self::Milan | Self::Genoa | Self::GenoaOther => digest,
        }
    }

    /// The chip's VCEK certificate fixture.
    pub fn vcek(self) -> Vcek {
        match self {
            Self::Milan => Vcek::Milan,
            Self::Genoa => Vcek::Genoa,
            Self::Turin => Vcek::Turin,
            Self::GenoaOther => Vcek::GenoaOther,
        }
    }
}

/// One of the two independent test PKIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pki {
    /// The test PKI a development broker pins.
    Test,
    /// A second, independent PKI no broker should pin (untrusted-root tests).
    Foreign,
}

impl Pki {
    /// The ARK certificate, PEM.
    pub fn ark_pem(self) -> &'static [u8] {
        match self {
            Self::Test => include_bytes!("../../testdata/snp-pki/ark.pem"),
            Self::Foreign => include_bytes!("../../testdata/snp-pki/foreign/ark.pem"),
        }
    }

    /// The ARK certificate, DER.
    pub fn ark_der(self) -> &'static [u8] {
        match self {
            Self::Test => include_bytes!("../../testdata/snp-pki/ark.der"),
            Self::Foreign => include_bytes!("../../testdata/snp-pki/foreign/ark.der"),
        }
    }

    /// The ASK certificate, PEM.
    pub fn ask_pem(self) -> &'static [u8] {
        match self {
            Self::Test => include_bytes!("../../testdata/snp-pki/ask.pem"),
            Self::Foreign => include_bytes!("../../testdata/snp-pki/foreign/ask.pem"),
        }
    }

    /// The ASK certificate, DER.
    pub fn ask_der(self) -> &'static [u8] {
        match self {
            Self::Test => include_bytes!("../../testdata/snp-pki/ask.der"),
            Self::Foreign => include_bytes!("../../testdata/snp-pki/foreign/ask.der"),
        }
    }

    /// The directory of this PKI's files.
    pub fn dir(self) -> PathBuf {
        match self {
            Self::Test => fixture_dir(),
            Self::Foreign => fixture_dir().join("foreign"),
        }
    }

    /// Path of the ARK certificate (PEM), e.g. for a development broker's
    /// trust-anchor configuration.
    pub fn ark_pem_path(self) -> PathBuf {
        self.dir().join("ark.pem")
    }

    /// Path of the ASK certificate (PEM).
    pub fn ask_pem_path(self) -> PathBuf {
        self.dir().join("ask.pem")
    }
}

/// A VCEK certificate fixture and the private key it certifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vcek {
    /// [`Chip::Milan`]'s VCEK.
    Milan,
    /// [`Chip::Genoa`]'s VCEK.
    Genoa,
    /// [`Chip::Turin`]'s VCEK.
    Turin,
    /// [`Chip::GenoaOther`]'s VCEK.
    GenoaOther,
    /// [`Chip::Genoa`]'s key, certified only from 2020-01-01 to 2020-12-31.
    GenoaExpired,
    /// A VCEK of the foreign PKI for [`Chip::Genoa`]'s chip id and TCB, with
    /// its own key.
    ForeignGenoa,
}

impl Vcek {
    /// The certificate, PEM.
    pub fn cert_pem(self) -> &'static [u8] {
        match self {
            Self::Milan => include_bytes!("../../testdata/snp-pki/vcek-milan.pem"),
            Self::Genoa => include_bytes!("../../testdata/snp-pki/vcek-genoa.pem"),
            Self::Turin => include_bytes!("../../testdata/snp-pki/vcek-turin.pem"),
            Self::GenoaOther => include_bytes!("../../testdata/snp-pki/vcek-genoa-other.pem"),
            Self::GenoaExpired => include_bytes!("../../testdata/snp-pki/vcek-genoa-expired.pem"),
            Self::ForeignGenoa => include_bytes!("../../testdata/snp-pki/foreign/vcek-genoa.pem"),
        }
    }

    /// The certificate, DER.
    pub fn cert_der(self) -> &'static [u8] {
        match self {
            Self::Milan => include_bytes!("../../testdata/snp-pki/vcek-milan.der"),
            Self::Genoa => include_bytes!("../../testdata/snp-pki/vcek-genoa.der"),
            Self::Turin => include_bytes!("../../testdata/snp-pki/vcek-turin.der"),
            Self::GenoaOther => include_bytes!("../../testdata/snp-pki/vcek-genoa-other.der"),
            Self::GenoaExpired => include_bytes!("../../testdata/snp-pki/vcek-genoa-expired.der"),
            Self::ForeignGenoa => include_bytes!("../../testdata/snp-pki/foreign/vcek-genoa.der"),
        }
    }

    /// The certified private key, PKCS#8 DER. Public test material.
    pub fn key_pkcs8_der(self) -> &'static [u8] {
        match self {
            Self::Milan => include_bytes!("../../testdata/snp-pki/vcek-milan-key.der"),
            Self::Genoa | Self::GenoaExpired => {
                include_bytes!("../../testdata/snp-pki/vcek-genoa-key.der")
            }
            Self::Turin => include_bytes!("../../testdata/snp-pki/vcek-turin-key.der"),
            Self::GenoaOther => include_bytes!("../../testdata/snp-pki/vcek-genoa-other-key.der"),
            Self::ForeignGenoa => include_bytes!("../../testdata/snp-pki/foreign/vcek-genoa-key.der"),
        }
    }

    /// The chip whose key (Genoa's for the expired and foreign certificates)
    /// and whose chip id and TCB this certificate carries.
    pub fn chip(self) -> Chip {
        match self {
            Self::Milan => Chip::Milan,
            Self::Genoa | Self::GenoaExpired | Self::ForeignGenoa => Chip::Genoa,
            Self::Turin => Chip::Turin,
            Self::GenoaOther => Chip::GenoaOther,
        }
    }

    /// The PKI whose ASK issued this certificate.
    pub fn pki(self) -> Pki {
        match self {
            Self::ForeignGenoa => Pki::Foreign,
            Self::Milan | Self::Genoa | Self::Turin | Self::GenoaOther | Self::GenoaExpired => Pki::Test,
        }
    }

    /// Path of the certificate (PEM), e.g. for an offline collateral directory.
    pub fn cert_pem_path(self) -> PathBuf {
        let name = match self {
            Self::Milan => "vcek-milan.pem",
            Self::Genoa | Self::ForeignGenoa => "vcek-genoa.pem",
            Self::Turin => "vcek-turin.pem",
            Self::GenoaOther => "vcek-genoa-other.pem",
            Self::GenoaExpired => "vcek-genoa-expired.pem",
        };
        self.pki().dir().join(name)
    }
}

/// The directory of the committed test PKI (`attester-client/testdata/snp-pki`).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join("snp-pki")
}

/// The test ARK certificate (PEM) a development broker pins.
pub fn test_ark_pem() -> &'static [u8] {
    Pki::Test.ark_pem()
}

/// The test ARK certificate (DER).
pub fn test_ark_der() -> &'static [u8] {
    Pki::Test.ark_der()
}

/// The test ASK certificate (PEM).
pub fn test_ask_pem() -> &'static [u8] {
    Pki::Test.ask_pem()
}

/// The test ASK certificate (DER).
pub fn test_ask_der() -> &'static [u8] {
    Pki::Test.ask_der()
}

/// The foreign ARK certificate (PEM), which no broker should pin.
pub fn foreign_ark_pem() -> &'static [u8] {
    Pki::Foreign.ark_pem()
}

/// The committed test CRLs (`testdata/snp-pki/crl`, made by
/// `generate-crl.sh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestCrl {
    /// The test ARK's CRL revoking nothing, 2024-01-01 to 2049-12-31, as
    /// [`test_crl_dir`] holds it for every product.
    Empty,
    /// The test ARK's later CRL (from 2024-06-01) revoking the test ASK.
    RevokesAsk,
    /// Like [`TestCrl::RevokesAsk`], revoking serials 01 and 38 x FF too.
    RevokesThree,
    /// The test ARK's CRL for 2024 only.
    Expired,
    /// Revokes nothing, signed with RSA PKCS#1 v1.5 instead of RSASSA-PSS.
    Pkcs1,
    /// The foreign ARK's CRL.
    Foreign,
}

impl TestCrl {
    /// The CRL, DER.
    pub fn der(self) -> &'static [u8] {
        match self {
            Self::Empty => include_bytes!("../../testdata/snp-pki/crl/vcek/v1/Genoa/crl"),
            Self::RevokesAsk => include_bytes!("../../testdata/snp-pki/crl/ark-revokes-ask.crl"),
            Self::RevokesThree => include_bytes!("../../testdata/snp-pki/crl/ark-revokes-three.crl"),
            Self::Expired => include_bytes!("../../testdata/snp-pki/crl/ark-expired.crl"),
            Self::Pkcs1 => include_bytes!("../../testdata/snp-pki/crl/ark-pkcs1.crl"),
            Self::Foreign => include_bytes!("../../testdata/snp-pki/crl/foreign-ark.crl"),
        }
    }
}

/// An offline CRL directory laid out as KDS serves CRLs
/// (`vcek/v1/<Product>/crl`), holding [`TestCrl::Empty`] for every product.
pub fn test_crl_dir() -> PathBuf {
    fixture_dir().join("crl")
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    const ALL_VCEKS: [Vcek; 6] =
        [Vcek::Milan, Vcek::Genoa, Vcek::Turin, Vcek::GenoaOther, Vcek::GenoaExpired, Vcek::ForeignGenoa];

    /// The AMD extensions of a VCEK: (oid suffix after 1.3.6.1.4.1.3704.1., raw value).
    fn amd_extensions(vcek: Vcek) -> Vec<(String, Vec<u8>)> {
        let (_, cert) = X509Certificate::from_der(vcek.cert_der()).unwrap();
        cert.extensions()
            .iter()
            .filter_map(|ext| {
                let oid = ext.oid.to_id_string();
                oid.strip_prefix("1.3.6.1.4.1.3704.1.").map(|s| (s.to_owned(), ext.value.to_vec()))
            })
            .collect()
    }

    fn der_int(value: u8) -> Vec<u8> {
        if value >= 0x80 { vec![0x02, 0x02, 0x00, value] } else { vec![0x02, 0x01, value] }
    }

    #[test]
    fn every_fixture_vcek_carries_its_chip_tcb_and_hwid() {
        for vcek in ALL_VCEKS {
            let chip = vcek.chip();
            let tcb = chip.tcb();
            let ext = amd_extensions(vcek);
            let get = |oid: &str| ext.iter().find(|(o, _)| o == oid).map(|(_, v)| v.clone());
            let name = chip.generation().product_name();
            let mut product = vec![0x16, u8::try_from(name.len()).unwrap()];
            product.extend_from_slice(name.as_bytes());
            assert_eq!(get("1"), Some(der_int(1)), "{vcek:?}");
            assert_eq!(get("2"), Some(product), "{vcek:?}");
            assert_eq!(get("3.1"), Some(der_int(tcb.bootloader)), "{vcek:?}");
            assert_eq!(get("3.2"), Some(der_int(tcb.tee)), "{vcek:?}");
            assert_eq!(get("3.3"), Some(der_int(tcb.snp)), "{vcek:?}");
            for reserved in ["3.4", "3.5", "3.6", "3.7"] {
                assert_eq!(get(reserved), Some(der_int(0)), "{vcek:?}");
            }
            assert_eq!(get("3.8"), Some(der_int(tcb.microcode)), "{vcek:?}");
            let hwid_len = if chip == Chip::Turin { 8 } else { 64 };
            assert_eq!(get("4"), Some(chip.chip_id()[..hwid_len].to_vec()), "{vcek:?}");
            if chip == Chip::Turin {
                assert_eq!(get("3.9"), Some(der_int(tcb.fmc)));
            } else {
                assert_eq!(get("3.9"), None);
            }
        }
    }

    #[test]
    fn fixture_chains_and_validity() {
        let (_, test_ark) = X509Certificate::from_der(test_ark_der()).unwrap();
        let (_, test_ask) = X509Certificate::from_der(test_ask_der()).unwrap();
        let (_, foreign_ask) = X509Certificate::from_der(Pki::Foreign.ask_der()).unwrap();
        assert_eq!(test_ark.subject(), test_ark.issuer());
        assert_eq!(test_ask.issuer(), test_ark.subject());
        assert!(test_ark.is_ca() && test_ask.is_ca());
        assert_ne!(Pki::Test.ark_der(), Pki::Foreign.ark_der());
        for vcek in ALL_VCEKS {
            let (_, cert) = X509Certificate::from_der(vcek.cert_der()).unwrap();
            let issuer = if vcek.pki() == Pki::Foreign { &foreign_ask } else { &test_ask };
            assert_eq!(cert.issuer(), issuer.subject(), "{vcek:?}");
            // RSASSA-PSS (1.2.840.113549.1.1.10) signatures throughout.
            assert_eq!(cert.signature_algorithm.algorithm.to_id_string(), "1.2.840.113549.1.1.10");
            let not_after = cert.validity().not_after.timestamp();
            // 2021-01-01T00:00:00Z
            assert_eq!(vcek == Vcek::GenoaExpired, not_after < 1_609_459_200, "{vcek:?}");
        }
        // The expired certificate certifies the Genoa chip's own key.
        let key_of = |v: Vcek| X509Certificate::from_der(v.cert_der()).unwrap().1.public_key().raw.to_vec();
        assert_eq!(key_of(Vcek::GenoaExpired), key_of(Vcek::Genoa));
        assert_ne!(key_of(Vcek::ForeignGenoa), key_of(Vcek::Genoa));
        assert!(Pki::Test.ark_pem_path().is_file());
        assert!(Vcek::ForeignGenoa.cert_pem_path().is_file());
        assert_eq!(std::fs::read(Vcek::GenoaOther.cert_pem_path()).unwrap(), Vcek::GenoaOther.cert_pem());
    }
}
