//! `kbs dev-init`: everything a single-node development broker needs, in
//! one directory: a dev CA and server certificate, a challenge key, a KEK,
//! an admin token and a configuration file.
//!
//! Not for production: the CA key sits next to the certificates, and the
//! admin token is written to a file.

use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use sha2::{Digest, Sha256};

/// Files written by [`init`].
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The configuration file.
    pub config: PathBuf,
    /// The dev CA certificate guests and kbsctl pin.
    pub ca: PathBuf,
    /// The admin bearer token file.
    pub admin_token: PathBuf,
}

/// Options for [`init`].
#[derive(Debug, Clone, Default)]
pub struct DevOptions {
    /// Guest listener address.
    pub guest_listen: String,
    /// Admin listener address.
    pub admin_listen: String,
    /// INSECURE: accept unsigned evidence: the simulated TEE's test roots
    /// below, and the CoCo front end's `sample` TEE (`dev.insecure_simulated_tee`).
    pub insecure_simulated_tee: bool,
    /// Enable the INSECURE simulated TEE with these test SNP roots (PEM).
    pub snp_test_roots: Vec<PathBuf>,
    /// Enable the INSECURE simulated TEE with these test SGX roots (PEM)
    /// for TDX.
    pub tdx_test_roots: Vec<PathBuf>,
    /// Enable the INSECURE simulated TEE with these test NVIDIA device
    /// identity roots (PEM) for simulated GPUs.
    pub gpu_test_roots: Vec<PathBuf>,
    /// Enable the INSECURE simulated TEE with these test RIM roots (PEM)
    /// for the simulated GPUs' reference values.
    pub gpu_test_rim_roots: Vec<PathBuf>,
    /// The GPU reference-value directory (`gpu.rim_dir`).
    pub gpu_rim_dir: Option<PathBuf>,
    /// A directory of TDX collateral (`tdx.collateral_dir`).
    pub tdx_collateral_dir: Option<PathBuf>,
    /// The secret read cache's TTL (`store.cache_ttl_ms`); the broker's
    /// default when `None`.
    pub cache_ttl_ms: Option<u64>,
    /// Enable the CoCo KBS protocol front end on this address (`[coco]`,
    /// with a new token-signing key in `coco-token.key`).
    pub coco_listen: Option<String>,
    /// Enable the Prometheus metrics listener on this address (`[metrics]`).
    pub metrics_listen: Option<String>,
}

/// The canonical paths of `paths`, as a TOML array's items.
fn toml_paths(paths: &[PathBuf]) -> Result<String, std::io::Error> {
    let quoted = paths
        .iter()
        .map(|p| Ok(format!("{:?}", fs::canonicalize(p)?.display().to_string())))
        .collect::<Result<Vec<String>, std::io::Error>>()?;
    Ok(quoted.join(", "))
}

/// Why dev set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Certificate generation.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// Randomness.
    #[error("random source failed")]
    Random,
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DevError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    std::io::Write::write_all(&mut options.open(path)?, bytes)?;
    Ok(())
}

fn random_hex(rng: &SystemRandom, n: usize) -> Result<String, DevError> {
    let mut bytes = vec![0u8; n];
    rng.fill(&mut bytes).map_err(|_| DevError::Random)?;
    Ok(hex::encode(bytes))
}

/// Writes a development broker set-up into `dir`.
pub fn init(dir: &Path, options: &DevOptions) -> Result<DevFiles, DevError> {
    let rng = SystemRandom::new();
    fs::create_dir_all(dir.join("tls"))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "kbs dev CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])?;
    server_params.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    server_params.distinguished_name.push(DnType::CommonName, "kbs");
    let server_cert = server_params.signed_by(&server_key, &ca_issuer)?;

    let ca = dir.join("tls/ca.pem");
    fs::write(&ca, ca_cert.pem())?;
    fs::write(dir.join("tls/server.pem"), format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
    write_private(&dir.join("tls/server.key"), server_key.serialize_pem().as_bytes())?;
    write_private(&dir.join("challenge.key"), random_hex(&rng, 32)?.as_bytes())?;
    write_private(&dir.join("kek"), random_hex(&rng, 32)?.as_bytes())?;
    write_private(&dir.join("audit.key"), random_hex(&rng, 32)?.as_bytes())?;
    let token = random_hex(&rng, 32)?;
    let admin_token = dir.join("admin.token");
    write_private(&admin_token, token.as_bytes())?;
    let token_digest = hex::encode(Sha256::digest(token.as_bytes()));

    let mut dev_section = String::new();
    if options.insecure_simulated_tee
        || !options.snp_test_roots.is_empty()
        || !options.tdx_test_roots.is_empty()
        || !options.gpu_test_roots.is_empty()
        || !options.gpu_test_rim_roots.is_empty()
    {
        dev_section.push_str(
            "\n# INSECURE: accept evidence from the simulated TEE. Needs `kbs serve --insecure-dev`.\n[dev]\ninsecure_simulated_tee = true\n",
        );
        if !options.snp_test_roots.is_empty() {
            dev_section.push_str(&format!("snp_test_roots = [{}]\n", toml_paths(&options.snp_test_roots)?));
        }
        if !options.tdx_test_roots.is_empty() {
            dev_section.push_str(&format!("tdx_test_roots = [{}]\n", toml_paths(&options.tdx_test_roots)?));
        }
        if !options.gpu_test_roots.is_empty() {
            dev_section.push_str(&format!("gpu_test_roots = [{}]\n", toml_paths(&options.gpu_test_roots)?));
        }
        if !options.gpu_test_rim_roots.is_empty() {
            dev_section.push_str(&format!("gpu_test_rim_roots = [{}]\n", toml_paths(&options.gpu_test_rim_roots)?));
        }
    }
    if let Some(dir) = &options.gpu_rim_dir {
        dev_section.push_str(&format!(
            "\n# GPU reference values (RIMs), each verified at start-up.\n[gpu]\nrim_dir = {}\n",
            toml_paths(std::slice::from_ref(dir))?
        ));
    }
    if let Some(listen) = &options.coco_listen {
        let key = crate::api::coco::token::TokenKey::generate_pkcs8().map_err(|_| DevError::Random)?;
        write_private(&dir.join("coco-token.key"), &key)?;
        dev_section.push_str(&format!(
            "\n# The CoCo KBS protocol front end (/kbs/v0).\n[coco]\nlisten = {listen:?}\ntoken_key_file = \"coco-token.key\"\ntoken_ttl_seconds = 300\n"
        ));
    }
    if let Some(listen) = &options.metrics_listen {
        dev_section.push_str(&format!(
            "\n# Prometheus metrics, plain HTTP: GET /metrics (docs/metrics.md).\n[metrics]\nlisten = {listen:?}\n"
        ));
    }
    // Last, so that callers may append more `[tdx]` settings.
    if let Some(dir) = &options.tdx_collateral_dir {
        dev_section.push_str(&format!("\n[tdx]\ncollateral_dir = {}\n", toml_paths(std::slice::from_ref(dir))?));
    }
    let cache_ttl = options.cache_ttl_ms.map(|ms| format!("cache_ttl_ms = {ms}\n")).unwrap_or_default();
    let config = dir.join("kbs.toml");
    fs::write(
        &config,
        format!(
            r#"# Development broker configuration written by `kbs dev-init`.
[server]
guest_listen = "{guest}"
admin_listen = "{admin}"
tls_cert = "tls/server.pem"
tls_key = "tls/server.key"
replica_id = "kbs-dev"

[challenge]
key_file = "challenge.key"
ttl_seconds = 60

[store]
kind = "local"
dir = "secrets"
kek_file = "kek"
{cache_ttl}
[audit]
path = "audit.jsonl"
key_file = "audit.key"

# A development set-up drives load from one address (kbs-bench, the demo):
# rate limits high enough not to get in its way. Production keeps the
# defaults (2000 calls/s per address, 50000/s in total) or sets its own.
[rate_limit]
per_peer_per_second = 1000000
global_per_second = 1000000

[[admin.tokens]]
name = "dev-admin"
sha256 = "{token_digest}"
role = "admin"
{dev_section}"#,
            guest = options.guest_listen,
            admin = options.admin_listen,
        ),
    )?;
    Ok(DevFiles { config, ca, admin_token })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_option_lands_in_a_configuration_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.pem");
        fs::write(&root, "not read by Config::load").unwrap();
        let collateral = dir.path().join("collateral");
        fs::create_dir(&collateral).unwrap();

        let listen = DevOptions {
            guest_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            ..DevOptions::default()
        };
        let plain = init(dir.path(), &listen).unwrap();
        let config = Config::load(&plain.config, |_| None).unwrap();
        assert!(!config.insecure_simulated_tee);
        assert!(config.tdx.collateral_dir.is_none());
        assert!(config.metrics.is_none());

        // The sample TEE alone, without test roots (a CoCo client's first try).
        let sample =
            DevOptions { insecure_simulated_tee: true, coco_listen: Some("127.0.0.1:0".into()), ..listen.clone() };
        let files = init(dir.path(), &sample).unwrap();
        let config = Config::load(&files.config, |_| None).unwrap();
        assert!(config.insecure_simulated_tee);
        assert!(config.snp_test_roots.is_empty() && config.tdx_test_roots.is_empty());
        assert!(config.coco.is_some());

        let options = DevOptions {
            snp_test_roots: vec![root.clone()],
            tdx_test_roots: vec![root.clone()],
            gpu_test_roots: vec![root.clone()],
            gpu_test_rim_roots: vec![root.clone()],
            gpu_rim_dir: Some(collateral.clone()),
            tdx_collateral_dir: Some(collateral.clone()),
            cache_ttl_ms: Some(250),
            coco_listen: Some("127.0.0.1:0".into()),
            metrics_listen: Some("127.0.0.1:9464".into()),
            ..listen
        };
        let files = init(dir.path(), &options).unwrap();
        let config = Config::load(&files.config, |_| None).unwrap();
        let root = fs::canonicalize(root).unwrap();
        assert!(config.insecure_simulated_tee);
        assert_eq!(config.snp_test_roots, vec![root.clone()]);
        assert_eq!(config.tdx_test_roots, vec![root.clone()]);
        assert_eq!(config.gpu_test_roots, vec![root.clone()]);
        assert_eq!(config.gpu_test_rim_roots, vec![root]);
        assert_eq!(config.gpu.rim_dir, Some(fs::canonicalize(&collateral).unwrap()));
        assert_eq!(config.tdx.collateral_dir, Some(fs::canonicalize(collateral).unwrap()));
        assert_eq!(config.store_cache_ttl, std::time::Duration::from_millis(250));
        assert_eq!(config.metrics.unwrap().listen, "127.0.0.1:9464".parse().unwrap());
        let coco = config.coco.unwrap();
        assert_eq!(coco.listen, "127.0.0.1:0".parse().unwrap());
        let key = fs::read(coco.token_key_file.unwrap()).unwrap();
        assert!(crate::api::coco::token::TokenKey::from_pkcs8(&key).is_ok());
        // `[tdx]` is the last section, so more settings can be appended.
        let text = fs::read_to_string(&files.config).unwrap();
        assert!(text.trim_end().rsplit_once("\n[").unwrap().1.starts_with("tdx]"), "{text}");
    }
}
