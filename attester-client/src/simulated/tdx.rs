//! INSECURE simulated Intel TDX TEE, for tests and demos only.
//!
//! **Nothing here is a TEE.** [`SimulatedTdx`] writes TDX DCAP quotes (v4,
//! and v5 with TD 1.0 / TD 1.5 bodies) in the exact production binary
//! format and signs them with keys made by this process, under a test PKI
//! that no Intel part chains to ([`TdxTestPki`]): a test SGX root CA, a PCK
//! Platform CA, PCK certificates carrying Intel's SGX extension, a TCB
//! signing certificate, a root CA CRL and a PCK CRL. The same PKI signs
//! matching collateral (TCB info, QE identity, CRLs) in dcap-qvl's
//! `QuoteCollateralV3` JSON layout ([`TdxTestPki::write_collateral_dir`]).
//! A broker accepts such evidence only when it pins the test root, which it
//! does only when started with an explicit development flag.
//!
//! The PKI is made once per process (P-256 key generation is cheap) and
//! its windows are relative to the time it was made: certificates from one
//! day before to a year after, collateral from one day before to 30 days
//! after (and, for [`Platform::ExpiredCollateral`], expired 30 days ago).
//!
//! # Quote layout (all integers little-endian)
//! Header (48): version, attestation key type 2, TEE type 0x81, 4 reserved
//! zero bytes, Intel's QE vendor id, 20 bytes user data; on v5 the body
//! descriptor (type u16, size u32); the TD report body; then the signature
//! data: u32 length, ECDSA P-256 signature `r || s` by the attestation key
//! over header, descriptor and body, the attestation public key `x || y`,
//! certification data type 6: the QE report (an SGX report whose
//! `report_data[0..32]` is SHA-256(attestation key || QE auth data)), the
//! PCK's signature over it, QE auth data (32 bytes), and certification data
//! type 5: the PEM chain PCK, Platform CA, root.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, OnceLock, PoisonError};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rcgen::{
    CertificateParams, CertificateRevocationListParams, CustomExtension, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevokedCertParams, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::x509::{self, tlv};
use crate::evidence::{Error, EvidenceSource, SnpEvidence, TdxEvidence, Tee};

/// Intel's QE vendor id (the only one verifiers accept).
pub const INTEL_QE_VENDOR_ID: [u8; 16] =
    [0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07];

/// TD attribute bit 0: DEBUG.
pub const TD_ATTR_DEBUG: u64 = 1;
/// TD attribute bit 28: SEPT_VE_DISABLE (verifiers require it).
pub const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;
/// TD attribute bit 29: MIGRATABLE.
pub const TD_ATTR_MIGRATABLE: u64 = 1 << 29;

/// The simulated QE's MRSIGNER, ISVPRODID and ISVSVN (matched by the QE identity).
const QE_MRSIGNER: [u8; 32] = [0x5a; 32];
const QE_ISVPRODID: u16 = 2;
const QE_ISVSVN: u16 = 8;
/// QE report ATTRIBUTES: INIT | MODE64BIT, not DEBUG.
const QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The platform TCB every simulated PCK certifies, and the TDX module's.
const CPU_SVN: [u8; 16] = [3, 3, 2, 2, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const PCE_SVN: u16 = 13;
const PCE_ID: [u8; 2] = [0, 0];
const TEE_TCB_SVN: [u8; 16] = [3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The SGX extension arc, 1.2.840.113741.1.13.1, DER-encoded.
const SGX_EXT_ARC: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];
const SGX_EXT_OID: [u64; 7] = [1, 2, 840, 113_741, 1, 13, 1];

/// A simulated platform: its FMSPC decides which collateral applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Current collateral; the platform's TCB is `UpToDate`.
    UpToDate,
    /// Current collateral; the platform's TCB is `OutOfDate` (with an advisory).
    OutOfDate,
    /// Collateral that expired 30 days ago.
    ExpiredCollateral,
}

impl Platform {
    /// Every simulated platform.
    pub const ALL: [Platform; 3] = [Platform::UpToDate, Platform::OutOfDate, Platform::ExpiredCollateral];

    /// The platform's FMSPC.
    pub fn fmspc(self) -> [u8; 6] {
        match self {
            Self::UpToDate => [0x00, 0x90, 0x6e, 0xd5, 0x00, 0x00],
            Self::OutOfDate => [0x00, 0x90, 0x6e, 0xd5, 0x00, 0x01],
            Self::ExpiredCollateral => [0x00, 0x90, 0x6e, 0xd5, 0x00, 0x02],
        }
    }

    fn index(self) -> usize {
        match self {
            Self::UpToDate => 0,
            Self::OutOfDate => 1,
            Self::ExpiredCollateral => 2,
        }
    }
}

/// Which PCK certificate the quote carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pck {
    /// The platform's own PCK.
    Own,
    /// A PCK listed in the test PCK CRL (signs its own QE report).
    Revoked,
    /// Another platform's valid PCK certificate, while the QE report is
    /// signed by this platform's PCK key: the signature check must fail.
    Wrong,
}

/// The `format` of a saved PKI file.
const SAVED_FORMAT: &str = "kbs-tdx-test-pki/1";

/// One certified key.
struct Leaf {
    pkcs8: Vec<u8>,
    pem: String,
}

/// The test PKI and the signing keys the simulated TEE uses.
pub struct TdxTestPki {
    made_at: OffsetDateTime,
    root_der: Vec<u8>,
    root_pem: String,
    ca_pem: String,
    /// PCKs per platform (own), plus the revoked and the "other" one.
    pcks: Vec<Leaf>,
    revoked: Leaf,
    other: Leaf,
    tcb_signer: Leaf,
    attestation_key: Vec<u8>,
    root_crl: Vec<u8>,
    pck_crl: Vec<u8>,
    /// The PCK signature over each platform's QE report, made once: a real
    /// QE has its attestation key certified when it makes the key, and
    /// every later quote carries the same certification data.
    qe_report_signatures: Mutex<HashMap<(Platform, Pck), Vec<u8>>>,
}

impl std::fmt::Debug for TdxTestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdxTestPki").field("made_at", &self.made_at).finish_non_exhaustive()
    }
}

const SIM: fn(rcgen::Error) -> Error = |_| Error::Simulated("test PKI generation failed");

/// A test certificate's parameters; PCK leaves sign and commit.
fn params(cn: &str, ca: bool, serial: &[u8], from: OffsetDateTime, until: OffsetDateTime) -> CertificateParams {
    x509::params(
        cn,
        ca,
        serial,
        (from, until),
        &[KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::ContentCommitment],
    )
}

/// `SEQUENCE { OID arc.sub, value }`.
fn sgx_entry(sub: &[u8], value: Vec<u8>) -> Vec<u8> {
    let mut oid = SGX_EXT_ARC.to_vec();
    oid.extend_from_slice(sub);
    let mut content = tlv(0x06, &oid);
    content.extend(value);
    tlv(0x30, &content)
}

/// A DER INTEGER of a small non-negative value.
fn der_int(v: u16) -> Vec<u8> {
    let [hi, lo] = v.to_be_bytes();
    if hi == 0 && lo < 0x80 {
        tlv(0x02, &[lo])
    } else if hi == 0 {
        tlv(0x02, &[0, lo])
    } else if hi < 0x80 {
        tlv(0x02, &[hi, lo])
    } else {
        tlv(0x02, &[0, hi, lo])
    }
}

/// Intel's SGX extension (1.2.840.113741.1.13.1): PPID, TCB, PCE-ID, FMSPC, SGX type.
fn sgx_extension(fmspc: [u8; 6], ppid: [u8; 16]) -> Vec<u8> {
    let mut tcb = Vec::new();
    for (i, svn) in (1u8..).zip(CPU_SVN) {
        tcb.extend(sgx_entry(&[2, i], der_int(u16::from(svn))));
    }
    tcb.extend(sgx_entry(&[2, 17], der_int(PCE_SVN)));
    tcb.extend(sgx_entry(&[2, 18], tlv(0x04, &CPU_SVN)));
    let mut all = sgx_entry(&[1], tlv(0x04, &ppid));
    all.extend(sgx_entry(&[2], tlv(0x30, &tcb)));
    all.extend(sgx_entry(&[3], tlv(0x04, &PCE_ID)));
    all.extend(sgx_entry(&[4], tlv(0x04, &fmspc)));
    all.extend(sgx_entry(&[5], tlv(0x0a, &[0])));
    tlv(0x30, &all)
}

fn rfc3339(t: OffsetDateTime) -> String {
    // Whole seconds, `Z`, as Intel writes them.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// Signs with a P-256 PKCS#8 key; the raw `r || s`.
fn sign_p256(pkcs8: &[u8], message: &[u8]) -> Result<Vec<u8>, Error> {
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
        .map_err(|_| Error::Simulated("not a P-256 PKCS#8 key"))?;
    let sig = key.sign(&SystemRandom::new(), message).map_err(|_| Error::Simulated("ECDSA signing failed"))?;
    Ok(sig.as_ref().to_vec())
}

/// The process-wide test PKI.
static PKI: OnceLock<Result<TdxTestPki, &'static str>> = OnceLock::new();

/// Largest saved PKI file read back (a saved PKI is about 8 KiB).
const MAX_SAVED_BYTES: u64 = 1 << 20;

impl TdxTestPki {
    /// The process-wide test PKI: the one [`TdxTestPki::install_saved`]
    /// installed, else one made on first use.
    pub fn get() -> Result<&'static TdxTestPki, Error> {
        PKI.get_or_init(|| Self::generate().map_err(|_| "test PKI generation failed"))
            .as_ref()
            .map_err(|e| Error::Simulated(e))
    }

    /// Writes this PKI, **private keys included**, to `path` (mode 0600 on
    /// Unix; an existing file is refused), so that another process can
    /// sign quotes under it with [`TdxTestPki::install_saved`]: a load
    /// generator driving a separately started development broker that pins
    /// this PKI's root. Test keys only; nothing here is secret elsewhere.
    pub fn save(&self, path: &std::path::Path) -> Result<(), Error> {
        use std::io::Write as _;
        let leaf = |l: &Leaf| serde_json::json!({ "pkcs8": hex::encode(&l.pkcs8), "pem": l.pem });
        let saved = serde_json::json!({
            "format": SAVED_FORMAT,
            "made_at": self.made_at.unix_timestamp(),
            "root_der": hex::encode(&self.root_der),
            "root_pem": self.root_pem,
            "ca_pem": self.ca_pem,
            "pcks": self.pcks.iter().map(leaf).collect::<Vec<_>>(),
            "revoked": leaf(&self.revoked),
            "other": leaf(&self.other),
            "tcb_signer": leaf(&self.tcb_signer),
            "attestation_key": hex::encode(&self.attestation_key),
            "root_crl": hex::encode(&self.root_crl),
            "pck_crl": hex::encode(&self.pck_crl),
        });
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|_| Error::Simulated("cannot create the saved test PKI file"))?;
        file.write_all(saved.to_string().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|_| Error::Simulated("cannot write the saved test PKI file"))
    }

    /// Reads a PKI written by [`TdxTestPki::save`]. Every key is checked
    /// to parse; the file is not trusted to be well formed.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        use std::io::Read as _;
        let bad = |_| Error::Simulated("not a saved test PKI");
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(|_| Error::Simulated("cannot open the saved test PKI file"))?
            .take(MAX_SAVED_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|_| Error::Simulated("cannot read the saved test PKI file"))?;
        if text.len() as u64 > MAX_SAVED_BYTES {
            return Err(Error::Simulated("the saved test PKI file is too large"));
        }
        let saved: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
        if saved.get("format").and_then(serde_json::Value::as_str) != Some(SAVED_FORMAT) {
            return Err(Error::Simulated("not a saved test PKI (format)"));
        }
        let string = |key: &str| {
            saved.get(key).and_then(serde_json::Value::as_str).ok_or(Error::Simulated("saved test PKI: missing field"))
        };
        let from_hex = |text: &str| hex::decode(text).map_err(|_| Error::Simulated("saved test PKI: bad hex"));
        let bytes = |key: &str| from_hex(string(key)?);
        let p256_key = |text: &str| {
            let pkcs8 = from_hex(text)?;
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                .map_err(|_| Error::Simulated("saved test PKI: a key is not P-256 PKCS#8"))?;
            Ok::<_, Error>(pkcs8)
        };
        let leaf = |value: Option<&serde_json::Value>| {
            let field = |key: &str| value.and_then(|v| v.get(key)).and_then(serde_json::Value::as_str);
            let pkcs8 = p256_key(field("pkcs8").unwrap_or_default())?;
            let pem = field("pem").ok_or(Error::Simulated("saved test PKI: missing certificate"))?.to_owned();
            Ok::<_, Error>(Leaf { pkcs8, pem })
        };
        let pcks = match saved.get("pcks").and_then(serde_json::Value::as_array) {
            Some(list) if list.len() == Platform::ALL.len() => {
                list.iter().map(|l| leaf(Some(l))).collect::<Result<Vec<_>, _>>()?
            }
            _ => return Err(Error::Simulated("saved test PKI: one PCK per platform expected")),
        };
        let made_at = saved
            .get("made_at")
            .and_then(serde_json::Value::as_i64)
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .ok_or(Error::Simulated("saved test PKI: bad made_at"))?;
        let attestation_key = p256_key(string("attestation_key")?)?;
        Ok(Self {
            made_at,
            root_der: bytes("root_der")?,
            root_pem: string("root_pem")?.to_owned(),
            ca_pem: string("ca_pem")?.to_owned(),
            pcks,
            revoked: leaf(saved.get("revoked"))?,
            other: leaf(saved.get("other"))?,
            tcb_signer: leaf(saved.get("tcb_signer"))?,
            attestation_key,
            root_crl: bytes("root_crl")?,
            pck_crl: bytes("pck_crl")?,
            qe_report_signatures: Mutex::default(),
        })
    }

    /// Makes the PKI saved at `path` this process's test PKI. Refused once
    /// the process has one (made or installed).
    pub fn install_saved(path: &std::path::Path) -> Result<&'static TdxTestPki, Error> {
        let pki = Self::load(path)?;
        PKI.set(Ok(pki)).map_err(|_| Error::Simulated("this process already has its test PKI"))?;
        Self::get()
    }

    /// A new test PKI, not the process-wide one (to [`save`](Self::save)).
    pub fn generate() -> Result<Self, Error> {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| OffsetDateTime::now_utc());
        let from = now - Duration::days(1);
        let until = now + Duration::days(365);
        let new_key = || KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(SIM);

        let root_key = new_key()?;
        let root_params = params("KBS TEST SGX Root CA", true, &[0x01], from, until);
        let root = root_params.self_signed(&root_key).map_err(SIM)?;
        let root_issuer = Issuer::new(root_params, &root_key);

        let ca_key = new_key()?;
        let ca_params = params("KBS TEST SGX PCK Platform CA", true, &[0x02], from, until);
        let ca = ca_params.signed_by(&ca_key, &root_issuer).map_err(SIM)?;
        let ca_issuer = Issuer::new(ca_params, &ca_key);

        let leaf = |cn: &str, serial: &[u8], fmspc: Option<[u8; 6]>, issuer: &Issuer<'_, &KeyPair>| {
            let key = new_key()?;
            let mut p = params(cn, false, serial, from, until);
            if let Some(fmspc) = fmspc {
                let mut ppid = [0u8; 16];
                ppid[..2].copy_from_slice(serial.get(..2).unwrap_or(&[0, 0]));
                p.custom_extensions = vec![CustomExtension::from_oid_content(&SGX_EXT_OID, sgx_extension(fmspc, ppid))];
            }
            let cert = p.signed_by(&key, issuer).map_err(SIM)?;
            Ok::<_, Error>(Leaf { pkcs8: key.serialize_der(), pem: cert.pem() })
        };
        let mut pcks = Vec::new();
        for (i, platform) in (0u8..).zip(Platform::ALL) {
            pcks.push(leaf("KBS TEST SGX PCK Certificate", &[0x10, i], Some(platform.fmspc()), &ca_issuer)?);
        }
        let revoked_serial = [0x20, 0x01];
        let revoked =
            leaf("KBS TEST SGX PCK Certificate", &revoked_serial, Some(Platform::UpToDate.fmspc()), &ca_issuer)?;
        let other = leaf("KBS TEST SGX PCK Certificate", &[0x30, 0x01], Some(Platform::UpToDate.fmspc()), &ca_issuer)?;
        let tcb_signer = leaf("KBS TEST SGX TCB Signing", &[0x40, 0x01], None, &root_issuer)?;

        let crl = |issuer: &Issuer<'_, &KeyPair>, revoked: Vec<RevokedCertParams>| {
            CertificateRevocationListParams {
                this_update: from,
                next_update: now + Duration::days(30),
                crl_number: SerialNumber::from_slice(&[1]),
                issuing_distribution_point: None,
                revoked_certs: revoked,
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(issuer)
            .map(|c| c.der().to_vec())
            .map_err(SIM)
        };
        let root_crl = crl(&root_issuer, Vec::new())?;
        let pck_crl = crl(
            &ca_issuer,
            vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(&revoked_serial),
                revocation_time: from,
                reason_code: None,
                invalidity_date: None,
            }],
        )?;
        let attestation_key = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| Error::Simulated("attestation key generation failed"))?
            .as_ref()
            .to_vec();
        Ok(Self {
            made_at: now,
            root_der: root.der().to_vec(),
            root_pem: root.pem(),
            ca_pem: ca.pem(),
            pcks,
            revoked,
            other,
            tcb_signer,
            attestation_key,
            root_crl,
            pck_crl,
            qe_report_signatures: Mutex::default(),
        })
    }

    /// The test SGX root CA (PEM): what a development broker pins.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The test SGX root CA (DER).
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// When the PKI was made; every window is relative to it.
    pub fn made_at(&self) -> OffsetDateTime {
        self.made_at
    }

    fn pck(&self, platform: Platform, pck: Pck) -> &Leaf {
        match pck {
            Pck::Own | Pck::Wrong => self.pcks.get(platform.index()).unwrap_or(&self.other),
            Pck::Revoked => &self.revoked,
        }
    }

    /// The collateral of `platform` as dcap-qvl `QuoteCollateralV3` JSON.
    pub fn collateral_json(&self, platform: Platform) -> Result<String, Error> {
        let (issue, next) = match platform {
            Platform::ExpiredCollateral => (self.made_at - Duration::days(60), self.made_at - Duration::days(30)),
            Platform::UpToDate | Platform::OutOfDate => {
                (self.made_at - Duration::days(1), self.made_at + Duration::days(30))
            }
        };
        let (status, advisories) = match platform {
            Platform::OutOfDate => ("OutOfDate", serde_json::json!(["INTEL-SA-00837"])),
            Platform::UpToDate | Platform::ExpiredCollateral => ("UpToDate", serde_json::json!([])),
        };
        let comps = |svns: &[u8]| svns.iter().map(|s| serde_json::json!({ "svn": s })).collect::<Vec<_>>();
        let tcb_info = serde_json::json!({
            "id": "TDX",
            "version": 3,
            "issueDate": rfc3339(issue),
            "nextUpdate": rfc3339(next),
            "fmspc": hex::encode_upper(platform.fmspc()),
            "pceId": hex::encode_upper(PCE_ID),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": {
                "mrsigner": hex::encode_upper([0u8; 48]),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF"
            },
            "tcbLevels": [{
                "tcb": {
                    "sgxtcbcomponents": comps(&CPU_SVN),
                    "pcesvn": PCE_SVN,
                    "tdxtcbcomponents": comps(&TEE_TCB_SVN)
                },
                "tcbDate": "2024-03-13T00:00:00Z",
                "tcbStatus": status,
                "advisoryIDs": advisories
            }]
        })
        .to_string();
        let qe_identity = serde_json::json!({
            "id": "TD_QE",
            "version": 2,
            "issueDate": rfc3339(issue),
            "nextUpdate": rfc3339(next),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": hex::encode_upper(QE_ATTRIBUTES),
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": hex::encode_upper(QE_MRSIGNER),
            "isvprodid": QE_ISVPRODID,
            "tcbLevels": [{ "tcb": { "isvsvn": QE_ISVSVN }, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate" }]
        })
        .to_string();
        let signer_chain = format!("{}{}", self.tcb_signer.pem, self.root_pem);
        // The CRLs are shared by every platform (the expired set's TCB
        // info and QE identity are past nextUpdate, which is refused first).
        let (root_crl, pck_crl) = (&self.root_crl, &self.pck_crl);
        let v3 = serde_json::json!({
            "pck_crl_issuer_chain": format!("{}{}", self.ca_pem, self.root_pem),
            "root_ca_crl": hex::encode(root_crl),
            "pck_crl": hex::encode(pck_crl),
            "tcb_info_issuer_chain": signer_chain,
            "tcb_info_signature": hex::encode(sign_p256(&self.tcb_signer.pkcs8, tcb_info.as_bytes())?),
            "tcb_info": tcb_info,
            "qe_identity_issuer_chain": signer_chain,
            "qe_identity_signature": hex::encode(sign_p256(&self.tcb_signer.pkcs8, qe_identity.as_bytes())?),
            "qe_identity": qe_identity,
        });
        serde_json::to_string_pretty(&v3).map_err(|_| Error::Simulated("collateral JSON"))
    }

    /// Writes the collateral of every [`Platform`] into `dir` as
    /// `<fmspc>-platform.json` (the layout of a broker's offline collateral
    /// directory).
    pub fn write_collateral_dir(&self, dir: &std::path::Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|_| Error::Simulated("cannot create the collateral directory"))?;
        for platform in Platform::ALL {
            let path = dir.join(format!("{}-platform.json", hex::encode(platform.fmspc())));
            std::fs::write(path, self.collateral_json(platform)?)
                .map_err(|_| Error::Simulated("cannot write collateral"))?;
        }
        Ok(())
    }

    /// Writes into `dir` what a development broker needs to accept this
    /// PKI's quotes: the root as `tdx-test-root.pem` (for `kbs dev-init
    /// --tdx-test-root`) and the collateral directory `tdx-collateral`
    /// (for `--tdx-collateral-dir`). Returns those two paths.
    pub fn write_broker_files(&self, dir: &std::path::Path) -> Result<(std::path::PathBuf, std::path::PathBuf), Error> {
        let (root, collateral) = (dir.join("tdx-test-root.pem"), dir.join("tdx-collateral"));
        std::fs::write(&root, self.root_pem()).map_err(|_| Error::Simulated("cannot write the test root"))?;
        self.write_collateral_dir(&collateral)?;
        Ok((root, collateral))
    }
}

/// The test SGX root CA (PEM).
pub fn tdx_test_root_pem() -> Result<String, Error> {
    Ok(TdxTestPki::get()?.root_pem().to_owned())
}

/// An INSECURE simulated TDX guest; see the module docs.
#[derive(Clone, Debug)]
pub struct SimulatedTdx {
    version: u16,
    td15: bool,
    platform: Platform,
    pck: Pck,
    td_attributes: u64,
    xfam: u64,
    mr_td: [u8; 48],
    mr_config_id: [u8; 48],
    mr_owner: [u8; 48],
    rtmr: [[u8; 48]; 4],
    report_data: Option<[u8; 64]>,
}

impl Default for SimulatedTdx {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatedTdx {
    /// A v4 quote (TD 1.0 body) from an up-to-date platform, not debug.
    pub fn new() -> Self {
        Self {
            version: 4,
            td15: false,
            platform: Platform::UpToDate,
            pck: Pck::Own,
            td_attributes: TD_ATTR_SEPT_VE_DISABLE,
            xfam: 0x0006_02e7,
            mr_td: [0; 48],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            rtmr: [[0; 48]; 4],
            report_data: None,
        }
    }

    /// Quote v5: `td15` selects a TD 1.5 body (type 3), else TD 1.0 (type 2).
    pub fn v5(mut self, td15: bool) -> Self {
        self.version = 5;
        self.td15 = td15;
        self
    }

    /// The MRTD (launch measurement).
    pub fn mr_td(mut self, mr_td: [u8; 48]) -> Self {
        self.mr_td = mr_td;
        self
    }

    /// MRCONFIGID (the init-data digest).
    pub fn mr_config_id(mut self, v: [u8; 48]) -> Self {
        self.mr_config_id = v;
        self
    }

    /// RTMR `index` (0-3; others are ignored).
    pub fn rtmr(mut self, index: usize, value: [u8; 48]) -> Self {
        if let Some(slot) = self.rtmr.get_mut(index) {
            *slot = value;
        }
        self
    }

    /// Sets or clears the DEBUG attribute.
    pub fn debug(mut self, debug: bool) -> Self {
        if debug {
            self.td_attributes |= TD_ATTR_DEBUG;
        } else {
            self.td_attributes &= !TD_ATTR_DEBUG;
        }
        self
    }

    /// The raw TD attributes.
    pub fn td_attributes(mut self, attributes: u64) -> Self {
        self.td_attributes = attributes;
        self
    }

    /// Runs on `platform` (its FMSPC selects the collateral).
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// Negative tests: which PCK the quote carries.
    pub fn pck(mut self, pck: Pck) -> Self {
        self.pck = pck;
        self
    }

    /// Negative tests: put this REPORTDATA in the quote instead of the one
    /// requested.
    pub fn report_data(mut self, report_data: [u8; 64]) -> Self {
        self.report_data = Some(report_data);
        self
    }

    /// The TD report body.
    fn body(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let mut b = Vec::with_capacity(648);
        b.extend_from_slice(&TEE_TCB_SVN);
        b.extend_from_slice(&[0x11; 48]); // MRSEAM
        b.extend_from_slice(&[0; 48]); // MRSIGNERSEAM: Intel's module signer is zero
        b.extend_from_slice(&0u64.to_le_bytes()); // SEAMATTRIBUTES
        b.extend_from_slice(&self.td_attributes.to_le_bytes());
        b.extend_from_slice(&self.xfam.to_le_bytes());
        b.extend_from_slice(&self.mr_td);
        b.extend_from_slice(&self.mr_config_id);
        b.extend_from_slice(&self.mr_owner);
        b.extend_from_slice(&[0; 48]); // MROWNERCONFIG
        for r in &self.rtmr {
            b.extend_from_slice(r);
        }
        b.extend_from_slice(self.report_data.as_ref().unwrap_or(report_data));
        if self.td15 {
            b.extend_from_slice(&TEE_TCB_SVN); // TEE_TCB_SVN2
            b.extend_from_slice(&[0; 48]); // MRSERVICETD
        }
        b
    }

    /// The raw quote for `report_data`, signed. INSECURE.
    pub fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, Error> {
        let pki = TdxTestPki::get()?;
        let body = self.body(report_data);
        let mut q = Vec::with_capacity(5200);
        q.extend_from_slice(&self.version.to_le_bytes());
        q.extend_from_slice(&2u16.to_le_bytes());
        q.extend_from_slice(&0x81u32.to_le_bytes());
        q.extend_from_slice(&[0; 4]);
        q.extend_from_slice(&INTEL_QE_VENDOR_ID);
        q.extend_from_slice(&[0; 20]);
        if self.version == 5 {
            q.extend_from_slice(&(if self.td15 { 3u16 } else { 2u16 }).to_le_bytes());
            q.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_le_bytes());
        }
        q.extend_from_slice(&body);

        let ak = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pki.attestation_key)
            .map_err(|_| Error::Simulated("attestation key"))?;
        let ak_public = ak.public_key().as_ref().get(1..).unwrap_or_default().to_vec();
        let signature = sign_p256(&pki.attestation_key, &q)?;

        let auth_data = [0x42u8; 32];
        let mut qe_report = vec![0u8; 384];
        put(&mut qe_report, 0, &CPU_SVN);
        put(&mut qe_report, 48, &QE_ATTRIBUTES);
        put(&mut qe_report, 64, &[0x33; 32]); // MRENCLAVE
        put(&mut qe_report, 128, &QE_MRSIGNER);
        put(&mut qe_report, 256, &QE_ISVPRODID.to_le_bytes());
        put(&mut qe_report, 258, &QE_ISVSVN.to_le_bytes());
        let bound = Sha256::new().chain_update(&ak_public).chain_update(auth_data).finalize();
        put(&mut qe_report, 320, &bound);
        let signer_kind = if self.pck == Pck::Revoked { Pck::Revoked } else { Pck::Own };
        let signer = pki.pck(self.platform, signer_kind);
        let qe_signature = {
            let mut signed = pki.qe_report_signatures.lock().unwrap_or_else(PoisonError::into_inner);
            match signed.entry((self.platform, signer_kind)) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(e) => e.insert(sign_p256(&signer.pkcs8, &qe_report)?).clone(),
            }
        };
        let carried = match self.pck {
            Pck::Wrong => &pki.other,
            Pck::Own | Pck::Revoked => signer,
        };
        let mut pem = format!("{}{}{}", carried.pem, pki.ca_pem, pki.root_pem).into_bytes();
        pem.push(0);

        let mut inner = qe_report;
        inner.extend_from_slice(&qe_signature);
        inner.extend_from_slice(&32u16.to_le_bytes());
        inner.extend_from_slice(&auth_data);
        inner.extend_from_slice(&5u16.to_le_bytes());
        inner.extend_from_slice(&u32::try_from(pem.len()).unwrap_or(0).to_le_bytes());
        inner.extend_from_slice(&pem);
        let mut sig = signature;
        sig.extend_from_slice(&ak_public);
        sig.extend_from_slice(&6u16.to_le_bytes());
        sig.extend_from_slice(&u32::try_from(inner.len()).unwrap_or(0).to_le_bytes());
        sig.extend_from_slice(&inner);
        q.extend_from_slice(&u32::try_from(sig.len()).unwrap_or(0).to_le_bytes());
        q.extend_from_slice(&sig);
        Ok(q)
    }
}

/// Copies `bytes` to `buf[offset..]` when it fits (every call site writes
/// a fixed field inside the 384-byte QE report).
fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(field) = buf.get_mut(offset..offset.saturating_add(bytes.len())) {
        field.copy_from_slice(bytes);
    }
}

impl EvidenceSource for SimulatedTdx {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn snp_report(&self, _report_data: &[u8; 64]) -> Result<SnpEvidence, Error> {
        Err(Error::UnsupportedTee(Tee::Snp))
    }

    fn tdx_quote(&self, report_data: &[u8; 64]) -> Result<TdxEvidence, Error> {
        tracing::warn!("INSECURE simulated TDX TEE: this evidence is signed by test keys");
        Ok(TdxEvidence { quote: self.quote(report_data)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    #[test]
    fn quotes_have_the_real_layout_and_verify() {
        let rd = [0x5au8; 64];
        for (sim, body_len, header) in [
            (SimulatedTdx::new(), 584, 48),
            (SimulatedTdx::new().v5(false), 584, 54),
            (SimulatedTdx::new().v5(true), 648, 54),
        ] {
            let q = sim.quote(&rd).unwrap();
            let signed = header + body_len;
            assert_eq!(&q[header + 520..header + 584], &rd);
            assert_eq!(u64::from_le_bytes(q[header + 120..header + 128].try_into().unwrap()), TD_ATTR_SEPT_VE_DISABLE);
            let sig = &q[signed + 4..signed + 68];
            let mut ak = vec![4u8];
            ak.extend_from_slice(&q[signed + 68..signed + 132]);
            assert!(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &ak).verify(&q[..signed], sig).is_ok());
            assert_eq!(u16::from_le_bytes([q[signed + 132], q[signed + 133]]), 6);
        }
        let v5 = SimulatedTdx::new().v5(true).quote(&rd).unwrap();
        assert_eq!(&v5[48..54], &[3, 0, 0x88, 2, 0, 0]);
    }

    #[test]
    fn the_pki_and_collateral_are_made_once() {
        let a = TdxTestPki::get().unwrap();
        let b = TdxTestPki::get().unwrap();
        assert!(std::ptr::eq(a, b));
        for platform in Platform::ALL {
            let json: serde_json::Value = serde_json::from_str(&a.collateral_json(platform).unwrap()).unwrap();
            let tcb: serde_json::Value = serde_json::from_str(json["tcb_info"].as_str().unwrap()).unwrap();
            assert_eq!(tcb["fmspc"], hex::encode_upper(platform.fmspc()));
        }
        assert!(tdx_test_root_pem().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn knobs_change_what_they_say() {
        let rd = [1u8; 64];
        let q = SimulatedTdx::new().debug(true).report_data([2; 64]).quote(&rd).unwrap();
        assert_eq!(u64::from_le_bytes(q[168..176].try_into().unwrap()), TD_ATTR_SEPT_VE_DISABLE | TD_ATTR_DEBUG);
        assert_eq!(&q[48 + 520..48 + 584], &[2; 64]);
        let sim = SimulatedTdx::new();
        assert_eq!(sim.tee(), Tee::Tdx);
        assert!(matches!(sim.snp_report(&rd), Err(Error::UnsupportedTee(Tee::Snp))));
        assert_eq!(sim.tdx_quote(&rd).unwrap().quote.len(), sim.quote(&rd).unwrap().len());
    }

    fn same_leaf(a: &Leaf, b: &Leaf) -> bool {
        a.pkcs8 == b.pkcs8 && a.pem == b.pem
    }

    #[test]
    fn a_saved_pki_loads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki.json");
        let pki = TdxTestPki::generate().unwrap();
        pki.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Never overwritten.
        assert!(pki.save(&path).is_err());
        let loaded = TdxTestPki::load(&path).unwrap();
        assert_eq!(loaded.made_at, pki.made_at);
        assert_eq!(loaded.root_der, pki.root_der);
        assert_eq!(loaded.root_pem, pki.root_pem);
        assert_eq!(loaded.ca_pem, pki.ca_pem);
        assert_eq!(loaded.pcks.len(), pki.pcks.len());
        assert!(loaded.pcks.iter().zip(&pki.pcks).all(|(a, b)| same_leaf(a, b)));
        assert!(same_leaf(&loaded.revoked, &pki.revoked));
        assert!(same_leaf(&loaded.other, &pki.other));
        assert!(same_leaf(&loaded.tcb_signer, &pki.tcb_signer));
        assert_eq!(loaded.attestation_key, pki.attestation_key);
        assert_eq!(loaded.root_crl, pki.root_crl);
        assert_eq!(loaded.pck_crl, pki.pck_crl);
        // Another PKI is another PKI.
        assert_ne!(TdxTestPki::generate().unwrap().root_der, pki.root_der);
    }

    #[test]
    fn broken_saved_pkis_are_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        TdxTestPki::generate().unwrap().save(&good).unwrap();
        let text = std::fs::read_to_string(&good).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let try_load = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            TdxTestPki::load(&path)
        };
        let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = value.clone();
            edit(&mut v);
            v.to_string()
        };
        assert!(TdxTestPki::load(&dir.path().join("missing.json")).is_err());
        let other_key = hex::encode(
            EcdsaKeyPair::generate_pkcs8(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .unwrap()
                .as_ref(),
        );
        let cases: Vec<(&str, String)> = vec![
            ("not JSON", "{".into()),
            ("an array", "[]".into()),
            ("no format", edited(&|v| v["format"] = serde_json::Value::Null)),
            ("another format", edited(&|v| v["format"] = "kbs-tdx-test-pki/2".into())),
            ("no root", edited(&|v| v["root_der"] = serde_json::Value::Null)),
            ("bad hex", edited(&|v| v["pck_crl"] = "zz".into())),
            ("made_at text", edited(&|v| v["made_at"] = "now".into())),
            ("made_at out of range", edited(&|v| v["made_at"] = i64::MAX.into())),
            ("two PCKs", edited(&|v| v["pcks"].as_array_mut().unwrap().truncate(2))),
            ("a PCK without a key", edited(&|v| v["pcks"][1]["pkcs8"] = serde_json::Value::Null)),
            ("a P-384 key", edited(&|v| v["tcb_signer"]["pkcs8"] = other_key.clone().into())),
            ("no certificate", edited(&|v| v["other"]["pem"] = serde_json::Value::Null)),
            ("a bad attestation key", edited(&|v| v["attestation_key"] = "00".into())),
        ];
        for (what, bytes) in &cases {
            assert!(try_load("case.json", bytes.as_bytes()).is_err(), "{what} was accepted");
        }
        // Every truncation of a good file is refused.
        for len in (0..text.len()).step_by(97) {
            assert!(try_load("cut.json", &text.as_bytes()[..len]).is_err(), "cut at {len} was accepted");
        }
        // Too large to be one.
        let mut huge = text.into_bytes();
        huge.resize(usize::try_from(MAX_SAVED_BYTES).unwrap() + 2, b' ');
        assert!(try_load("huge.json", &huge).is_err());
        // The unedited file still loads (the cases above failed for their edit).
        assert!(try_load("same.json", value.to_string().as_bytes()).is_ok());
    }
}
