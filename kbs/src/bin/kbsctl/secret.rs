//! `kbsctl secret ...`: write-only secret management.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use kbs_proto::v1::{
    DeleteSecretRequest, DestroySecretVersionsRequest, GenerateSecretRequest, GetSecretMetadataRequest,
    ListSecretsRequest, PutSecretRequest, SecretMetadata,
};
use zeroize::Zeroizing;

use crate::connection::{Client, refused};
use crate::{Failure, Output};

#[derive(Subcommand, Debug)]
pub(crate) enum SecretCommand {
    /// Store a new version from a file (`-` for stdin); never from an argument.
    Put {
        /// Secret name (`repo/type/tag` style).
        name: String,
        /// File holding the value, or `-` for stdin.
        #[arg(long)]
        from_file: PathBuf,
        #[command(flatten)]
        common: WriteOptions,
    },
    /// Have the broker generate a random value (it never leaves broker and store in clear).
    Generate {
        /// Secret name.
        name: String,
        /// Number of random bytes.
        #[arg(long, default_value_t = 32)]
        bytes: u32,
        #[command(flatten)]
        common: WriteOptions,
    },
    /// Show a secret's metadata.
    Show {
        /// Secret name.
        name: String,
    },
    /// List secrets.
    List {
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Delete a secret and all its versions.
    Rm {
        /// Secret name.
        name: String,
    },
    /// Permanently destroy the values of some versions.
    Destroy {
        /// Secret name.
        name: String,
        /// Version to destroy; repeatable.
        #[arg(long = "version", required = true)]
        versions: Vec<u64>,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct WriteOptions {
    /// Launch measurement (96 hex digits) allowed to receive the secret; repeatable.
    #[arg(long = "allow-measurement")]
    allow_measurement: Vec<String>,
    /// Label `key=value`; repeatable.
    #[arg(long = "label")]
    label: Vec<String>,
    /// Write only if the current version is this (0: must not exist).
    #[arg(long)]
    expected_version: Option<u64>,
}
fn labels(raw: &[String]) -> Result<std::collections::HashMap<String, String>, Failure> {
    raw.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| Failure::Usage(format!("label {kv:?} is not key=value")))
        })
        .collect()
}

fn read_value(path: &Path) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut buf = Zeroizing::new(Vec::new());
    if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut buf).map_err(|e| Failure::Usage(format!("reading stdin: {e}")))?;
    } else {
        let mut file =
            std::fs::File::open(path).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))?;
        file.read_to_end(&mut buf).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))?;
    }
    Ok(buf)
}

fn print_meta(items: &[SecretMetadata], output: Output) {
    if output == Output::Json {
        let json: Vec<serde_json::Value> = items
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "version": m.version, "created_at": m.created_at, "size": m.size,
                    "labels": m.labels, "allowed_measurements": m.allowed_measurements, "versions": m.versions,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
        return;
    }
    outln!("{:<40} {:>7} {:>7} {:<20} ALLOWED MEASUREMENTS", "NAME", "VERSION", "SIZE", "CREATED");
    for m in items {
        let created = time::OffsetDateTime::from_unix_timestamp(m.created_at)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        outln!("{:<40} {:>7} {:>7} {:<20} {}", m.name, m.version, m.size, created, m.allowed_measurements.len());
    }
}

/// Runs one `secret` subcommand.
pub(crate) async fn run(client: &mut Client, cmd: &SecretCommand, output: Output) -> Result<(), Failure> {
    match cmd {
        SecretCommand::Put { name, from_file, common } => {
            let value = read_value(from_file)?;
            let meta = client
                .put_secret(PutSecretRequest {
                    name: name.clone(),
                    value: value.to_vec(),
                    labels: labels(&common.label)?,
                    allowed_measurements: common.allow_measurement.clone(),
                    expected_version: common.expected_version,
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_meta(&[meta], output);
        }
        SecretCommand::Generate { name, bytes, common } => {
            let meta = client
                .generate_secret(GenerateSecretRequest {
                    name: name.clone(),
                    bytes: *bytes,
                    labels: labels(&common.label)?,
                    allowed_measurements: common.allow_measurement.clone(),
                    expected_version: common.expected_version,
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_meta(&[meta], output);
        }
        SecretCommand::Show { name } => {
            let meta = client
                .get_secret_metadata(GetSecretMetadataRequest { name: name.clone() })
                .await
                .map_err(refused)?
                .into_inner();
            print_meta(&[meta], output);
        }
        SecretCommand::List { prefix } => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .list_secrets(ListSecretsRequest { prefix: prefix.clone(), page_size: 500, page_token: token })
                    .await
                    .map_err(refused)?
                    .into_inner();
                all.extend(page.secrets);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            print_meta(&all, output);
        }
        SecretCommand::Destroy { name, versions } => {
            let meta = client
                .destroy_secret_versions(DestroySecretVersionsRequest {
                    name: name.clone(),
                    versions: versions.clone(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            if meta.version == 0 {
                // The newest version is gone (perhaps every version): the
                // broker serves nothing until a new version is written.
                match output {
                    Output::Json => {
                        outln!("{}", serde_json::json!({ "name": name, "destroyed": versions, "served": false }))
                    }
                    Output::Table => outln!("destroyed; {name} is not served until a new version is written"),
                }
            } else {
                print_meta(&[meta], output);
            }
        }
        SecretCommand::Rm { name } => {
            client.delete_secret(DeleteSecretRequest { name: name.clone() }).await.map_err(refused)?;
            if output == Output::Json {
                outln!("{}", serde_json::json!({ "deleted": name }));
            } else {
                outln!("deleted {name}");
            }
        }
    }
    Ok(())
}
