//! Broker configuration: a raw serde struct that mirrors the TOML file
//! (unknown keys refused), then a validated [`Config`] built from it.
//! Defaults are the secure choice; paths are resolved against the config
//! file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    challenge: RawChallenge,
    store: RawStore,
    #[serde(default)]
    snp: RawSnp,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    dev: RawDev,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    guest_listen: String,
    admin_listen: String,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    #[serde(default)]
    replica_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChallenge {
    key_file: PathBuf,
    #[serde(default)]
    previous_key_files: Vec<PathBuf>,
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
enum RawStore {
    Local {
        dir: PathBuf,
        kek_file: PathBuf,
        #[serde(default)]
        max_secret_bytes: Option<usize>,
    },
    Vault {
        address: String,
        #[serde(default)]
        mount: Option<String>,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        ca_bundle: Option<PathBuf>,
        #[serde(default)]
        insecure_skip_verify: bool,
        #[serde(default)]
        request_timeout_seconds: Option<u64>,
        #[serde(default)]
        max_secret_bytes: Option<usize>,
        auth: RawVaultAuth,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "method", rename_all = "lowercase")]
enum RawVaultAuth {
    Token {
        token_file: PathBuf,
    },
    Approle {
        role_id: String,
        secret_id_file: PathBuf,
        #[serde(default)]
        mount: Option<String>,
    },
    Kubernetes {
        role: String,
        #[serde(default)]
        jwt_file: Option<PathBuf>,
        #[serde(default)]
        mount: Option<String>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnp {
    #[serde(default)]
    collateral_dir: Option<PathBuf>,
    #[serde(default)]
    kds_url: Option<String>,
    #[serde(default)]
    kds_cache_dir: Option<PathBuf>,
    #[serde(default)]
    intermediates: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    role: Role,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDev {
    #[serde(default)]
    insecure_simulated_tee: bool,
    #[serde(default)]
    snp_test_roots: Vec<PathBuf>,
}

/// An admin role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Put, generate, list, metadata.
    Uploader,
    /// List, metadata, audit read.
    Auditor,
}

impl Role {
    /// The role's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Uploader => "uploader",
            Self::Auditor => "auditor",
        }
    }
}

/// An admin bearer token, stored only as its SHA-256.
#[derive(Clone, Debug)]
pub struct TokenEntry {
    /// Who holds it (for audit).
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// Its role.
    pub role: Role,
}

/// Where the secrets live.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// The embedded encrypted store.
    Local {
        /// Directory.
        dir: PathBuf,
        /// Key-encryption key file.
        kek_file: PathBuf,
    },
    /// Vault/OpenBao KV v2, shared by every replica.
    Vault(Box<crate::store::vault::VaultConfig>),
}

/// SEV-SNP collateral settings.
#[derive(Clone, Debug, Default)]
pub struct SnpConfig {
    /// Offline VCEK/VLEK directory.
    pub collateral_dir: Option<PathBuf>,
    /// AMD KDS base URL, when fetching is enabled.
    pub kds_url: Option<String>,
    /// KDS cache directory.
    pub kds_cache_dir: Option<PathBuf>,
    /// Operator-supplied ASK/ASVK files (accepted only if signed by a pinned ARK).
    pub intermediates: Vec<PathBuf>,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Guest (KeyBroker) listener.
    pub guest_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// Server key (PEM).
    pub tls_key: PathBuf,
    /// This replica's id, for audit records.
    pub replica_id: String,
    /// Challenge sealing key file (32 bytes raw or 64 hex digits).
    pub challenge_key_file: PathBuf,
    /// Older challenge keys still accepted.
    pub previous_challenge_key_files: Vec<PathBuf>,
    /// Challenge lifetime.
    pub challenge_ttl: Duration,
    /// The secret store.
    pub store: StoreConfig,
    /// Largest secret value accepted.
    pub max_secret_bytes: usize,
    /// SNP collateral.
    pub snp: SnpConfig,
    /// Admin tokens.
    pub admin_tokens: Vec<TokenEntry>,
    /// Audit destination: a file path, or `None` for stdout.
    pub audit_path: Option<PathBuf>,
    /// INSECURE: accept evidence from the simulated TEE (test roots).
    pub insecure_simulated_tee: bool,
    /// INSECURE: test ARKs pinned for every SNP generation.
    pub snp_test_roots: Vec<PathBuf>,
}

/// Environment overrides, read through a lookup function so tests never
/// touch the process environment.
pub const ENV_OVERRIDES: &[&str] = &["KBS_GUEST_LISTEN", "KBS_ADMIN_LISTEN", "KBS_REPLICA_ID"];

impl Config {
    /// Loads `path`, then applies environment overrides from `env`
    /// (`KBS_GUEST_LISTEN`, `KBS_ADMIN_LISTEN`, `KBS_REPLICA_ID`).
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut raw: RawConfig = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })?;
        if let Some(v) = env("KBS_GUEST_LISTEN") {
            raw.server.guest_listen = v;
        }
        if let Some(v) = env("KBS_ADMIN_LISTEN") {
            raw.server.admin_listen = v;
        }
        if let Some(v) = env("KBS_REPLICA_ID") {
            raw.server.replica_id = Some(v);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        Self::validate(raw, base)
    }

    /// Parses TOML text with paths relative to `base` (for tests).
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: base.into(), source: Box::new(source) })?;
        Self::validate(raw, base)
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Self, ConfigError> {
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let addr = |s: &str, what: &str| {
            s.parse::<SocketAddr>().map_err(|e| ConfigError::Invalid(format!("{what} {s:?}: {e}")))
        };
        let guest_listen = addr(&raw.server.guest_listen, "server.guest_listen")?;
        let admin_listen = addr(&raw.server.admin_listen, "server.admin_listen")?;
        if guest_listen == admin_listen && guest_listen.port() != 0 {
            return Err(ConfigError::Invalid("guest and admin listeners must differ".into()));
        }
        if !(5..=600).contains(&raw.challenge.ttl_seconds) {
            return Err(ConfigError::Invalid("challenge.ttl_seconds must be within 5..=600".into()));
        }
        let (store, max_secret_bytes) = match raw.store {
            RawStore::Local { dir, kek_file, max_secret_bytes } => {
                (StoreConfig::Local { dir: resolve(&dir), kek_file: resolve(&kek_file) }, max_secret_bytes)
            }
            RawStore::Vault {
                address,
                mount,
                prefix,
                namespace,
                ca_bundle,
                insecure_skip_verify,
                request_timeout_seconds,
                max_secret_bytes,
                auth,
            } => {
                use crate::store::vault::{VaultAuth, VaultConfig};
                if !address.starts_with("https://") && !address.starts_with("http://") {
                    return Err(ConfigError::Invalid("store.address must be an http(s) URL".into()));
                }
                let auth = match auth {
                    RawVaultAuth::Token { token_file } => VaultAuth::token_from_file(&resolve(&token_file))
                        .map_err(|e| ConfigError::Invalid(format!("store.auth.token_file: {e}")))?,
                    RawVaultAuth::Approle { role_id, secret_id_file, mount } => {
                        let mut auth = VaultAuth::approle(role_id, resolve(&secret_id_file));
                        if let (VaultAuth::AppRole { mount: m, .. }, Some(mount)) = (&mut auth, mount) {
                            *m = mount;
                        }
                        auth
                    }
                    RawVaultAuth::Kubernetes { role, jwt_file, mount } => {
                        let mut auth = VaultAuth::kubernetes(role);
                        if let VaultAuth::Kubernetes { mount: m, jwt_file: j, .. } = &mut auth {
                            if let Some(mount) = mount {
                                *m = mount;
                            }
                            if let Some(jwt_file) = jwt_file {
                                *j = resolve(&jwt_file);
                            }
                        }
                        auth
                    }
                };
                let mut vault = VaultConfig::new(address, auth);
                if let Some(mount) = mount {
                    vault.mount = mount;
                }
                if let Some(prefix) = prefix {
                    vault.prefix = prefix;
                }
                vault.namespace = namespace;
                vault.ca_bundle = ca_bundle.map(|p| resolve(&p));
                vault.insecure_skip_verify = insecure_skip_verify;
                if let Some(secs) = request_timeout_seconds {
                    if !(1..=300).contains(&secs) {
                        return Err(ConfigError::Invalid(
                            "store.request_timeout_seconds must be within 1..=300".into(),
                        ));
                    }
                    vault.request_timeout = Duration::from_secs(secs);
                }
                (StoreConfig::Vault(Box::new(vault)), max_secret_bytes)
            }
        };
        let max_secret_bytes = max_secret_bytes.unwrap_or(crate::store::DEFAULT_MAX_SECRET_BYTES);
        if max_secret_bytes == 0 || max_secret_bytes > 64 << 20 {
            return Err(ConfigError::Invalid("store.max_secret_bytes must be within 1..=64 MiB".into()));
        }
        if let Some(url) = &raw.snp.kds_url
            && !url.starts_with("https://")
            && !url.starts_with("http://127.")
            && !url.starts_with("http://localhost")
        {
            return Err(ConfigError::Invalid("snp.kds_url must be https:// (or http on loopback)".into()));
        }
        let mut admin_tokens = Vec::new();
        for t in raw.admin.tokens {
            let digest =
                hex::decode(t.sha256.trim()).ok().and_then(|d| <[u8; 32]>::try_from(d).ok()).ok_or_else(|| {
                    ConfigError::Invalid(format!("admin token {:?}: sha256 must be 64 hex digits", t.name))
                })?;
            admin_tokens.push(TokenEntry { name: t.name, sha256: digest, role: t.role });
        }
        if !raw.dev.snp_test_roots.is_empty() && !raw.dev.insecure_simulated_tee {
            return Err(ConfigError::Invalid("dev.snp_test_roots needs dev.insecure_simulated_tee = true".into()));
        }
        let audit_path = match raw.audit.path.as_deref() {
            None | Some("-") => None,
            Some(p) => Some(resolve(Path::new(p))),
        };
        Ok(Self {
            guest_listen,
            admin_listen,
            tls_cert: resolve(&raw.server.tls_cert),
            tls_key: resolve(&raw.server.tls_key),
            replica_id: raw.server.replica_id.unwrap_or_else(|| "kbs-0".into()),
            challenge_key_file: resolve(&raw.challenge.key_file),
            previous_challenge_key_files: raw.challenge.previous_key_files.iter().map(|p| resolve(p)).collect(),
            challenge_ttl: Duration::from_secs(raw.challenge.ttl_seconds),
            store,
            max_secret_bytes,
            snp: SnpConfig {
                collateral_dir: raw.snp.collateral_dir.map(|p| resolve(&p)),
                kds_url: raw.snp.kds_url,
                kds_cache_dir: raw.snp.kds_cache_dir.map(|p| resolve(&p)),
                intermediates: raw.snp.intermediates.iter().map(|p| resolve(p)).collect(),
            },
            admin_tokens,
            audit_path,
            insecure_simulated_tee: raw.dev.insecure_simulated_tee,
            snp_test_roots: raw.dev.snp_test_roots.iter().map(|p| resolve(p)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        guest_listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        tls_cert = "tls/server.pem"
        tls_key = "tls/server.key"
        [challenge]
        key_file = "challenge.key"
        [store]
        kind = "local"
        dir = "secrets"
        kek_file = "kek"
    "#;

    #[test]
    fn defaults_are_secure_and_paths_resolve() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/kbs")).unwrap();
        assert_eq!(c.challenge_ttl, Duration::from_secs(60));
        assert!(!c.insecure_simulated_tee);
        assert!(c.admin_tokens.is_empty());
        assert_eq!(c.tls_cert, Path::new("/etc/kbs/tls/server.pem"));
        assert_eq!(c.max_secret_bytes, 1 << 20);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{MINIMAL}\n[dev]\ninsecure = true\n");
        assert!(matches!(Config::from_toml(&text, Path::new("/")), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn test_roots_need_the_dev_switch() {
        let text = format!("{MINIMAL}\n[dev]\nsnp_test_roots = [\"ark.pem\"]\n");
        assert!(matches!(Config::from_toml(&text, Path::new("/")), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn bad_values_are_refused() {
        let ttl = MINIMAL.replace("key_file = \"challenge.key\"", "key_file = \"c\"\nttl_seconds = 0");
        assert!(Config::from_toml(&ttl, Path::new("/")).is_err());
        let addr = MINIMAL.replace("127.0.0.1:0\"\n        admin", "nonsense\"\n        admin");
        assert!(Config::from_toml(&addr, Path::new("/")).is_err());
        let token = format!("{MINIMAL}\n[[admin.tokens]]\nname = \"x\"\nsha256 = \"zz\"\nrole = \"admin\"\n");
        assert!(Config::from_toml(&token, Path::new("/")).is_err());
        let kds = format!("{MINIMAL}\n[snp]\nkds_url = \"http://example.com\"\n");
        assert!(Config::from_toml(&kds, Path::new("/")).is_err());
    }

    #[test]
    fn env_overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbs.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path, |k| (k == "KBS_REPLICA_ID").then(|| "r7".to_owned())).unwrap();
        assert_eq!(c.replica_id, "r7");
    }
}
