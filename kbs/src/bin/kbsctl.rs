//! `kbsctl`: the operator CLI.
//!
//! Exit codes: 0 success; 1 usage, configuration or local I/O error;
//! 2 refused (by the broker, or evidence rejected by `verify`);
//! 3 the broker could not be reached.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kbs_proto::v1::admin_client::AdminClient;
use kbs_proto::v1::{
    DeleteSecretRequest, GenerateSecretRequest, GetSecretMetadataRequest, ListSecretsRequest, PutSecretRequest,
    SecretMetadata,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zeroize::Zeroizing;

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  usage, configuration or local I/O error
  2  refused: the broker refused the call, or `verify` rejected the evidence
  3  the broker could not be reached";

#[derive(Parser, Debug)]
#[command(name = "kbsctl", version, about = "Operator CLI for the key broker", after_help = EXIT_CODES)]
struct Cli {
    /// Admin endpoint, e.g. https://127.0.0.1:8444.
    #[arg(long, global = true, env = "KBS_ADMIN_URL")]
    url: Option<String>,
    /// File holding the admin bearer token (or set KBS_ADMIN_TOKEN).
    #[arg(long, global = true, env = "KBS_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the broker's certificate.
    #[arg(long, global = true, env = "KBS_CA")]
    ca: Option<PathBuf>,
    /// TLS server name to expect, when it differs from the URL's host.
    #[arg(long, global = true)]
    domain: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage secrets (values are write-only).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Verify captured evidence offline with the shipped AMD anchors and
    /// print its claims as JSON.
    Verify {
        /// TEE kind.
        #[arg(long, value_enum)]
        tee: Tee,
        /// The report (raw 1184 bytes, or hex text).
        #[arg(long)]
        evidence: PathBuf,
        /// The VCEK or VLEK (DER or PEM).
        #[arg(long)]
        cert: PathBuf,
        /// ASK or ASVK (and ARK) PEM bundle, used only if it chains to a pinned AMD root.
        #[arg(long)]
        chain: Vec<PathBuf>,
        /// Verification time (RFC 3339); default now.
        #[arg(long)]
        time: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Tee {
    Snp,
}

#[derive(Subcommand, Debug)]
enum SecretCommand {
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
}

#[derive(clap::Args, Debug)]
struct WriteOptions {
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

#[derive(Debug)]
enum Failure {
    Usage(String),
    Refused(String),
    Unreachable(String),
}

impl Failure {
    fn exit(&self) -> ExitCode {
        match self {
            Self::Usage(m) => {
                eprintln!("error: {m}");
                ExitCode::from(1)
            }
            Self::Refused(m) => {
                eprintln!("{m}");
                ExitCode::from(2)
            }
            Self::Unreachable(m) => {
                eprintln!("error: broker unreachable: {m}");
                ExitCode::from(3)
            }
        }
    }
}

fn refused(status: tonic::Status) -> Failure {
    if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
        && status.metadata().get("kbs-reason").is_none()
    {
        return Failure::Unreachable(status.message().to_owned());
    }
    let reason = status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()).unwrap_or("unknown").to_owned();
    Failure::Refused(format!("refused: {reason}: {} ({:?})", status.message(), status.code()))
}

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with 2 on usage errors; 2 means "refused" here, so usage
    // errors are mapped to 1.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Verify { tee: Tee::Snp, evidence, cert, chain, time } => {
            verify(evidence, cert, chain, time.as_deref())
        }
        Command::Secret(cmd) => {
            let mut client = connect(&cli).await?;
            secret(&mut client, cmd, cli.output).await
        }
    }
}

fn token(cli: &Cli) -> Result<Zeroizing<String>, Failure> {
    if let Some(path) = &cli.token_file {
        let text =
            std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))?;
        return Ok(Zeroizing::new(text.trim().to_owned()));
    }
    std::env::var("KBS_ADMIN_TOKEN")
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .map_err(|_| Failure::Usage("no admin token: use --token-file or KBS_ADMIN_TOKEN".into()))
}

type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let url = cli.url.clone().ok_or_else(|| Failure::Usage("no broker URL: use --url or KBS_ADMIN_URL".into()))?;
    let ca_path = cli.ca.as_ref().ok_or_else(|| Failure::Usage("no CA: use --ca or KBS_CA".into()))?;
    let ca = std::fs::read(ca_path).map_err(|e| Failure::Usage(format!("reading {}: {e}", ca_path.display())))?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(domain) = &cli.domain {
        tls = tls.domain_name(domain.clone());
    }
    let endpoint = Channel::from_shared(url.clone())
        .map_err(|e| Failure::Usage(format!("bad URL {url}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Failure::Usage(format!("TLS: {e}")))?;
    let channel = endpoint.connect().await.map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
    let token = token(cli)?;
    let value = format!("Bearer {}", token.as_str())
        .parse()
        .map_err(|_| Failure::Usage("admin token has characters not allowed in a header".into()))?;
    Ok(AdminClient::with_interceptor(channel, Bearer(value)))
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
        println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
        return;
    }
    println!("{:<40} {:>7} {:>7} {:<20} ALLOWED MEASUREMENTS", "NAME", "VERSION", "SIZE", "CREATED");
    for m in items {
        let created = time::OffsetDateTime::from_unix_timestamp(m.created_at)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        println!("{:<40} {:>7} {:>7} {:<20} {}", m.name, m.version, m.size, created, m.allowed_measurements.len());
    }
}

async fn secret(client: &mut Client, cmd: &SecretCommand, output: Output) -> Result<(), Failure> {
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
        SecretCommand::Rm { name } => {
            client.delete_secret(DeleteSecretRequest { name: name.clone() }).await.map_err(refused)?;
            if output == Output::Json {
                println!("{}", serde_json::json!({ "deleted": name }));
            } else {
                println!("deleted {name}");
            }
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))
}

/// Accepts raw bytes, or hex text (whitespace ignored).
fn raw_or_hex(bytes: Vec<u8>) -> Vec<u8> {
    let text: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if !text.is_empty()
        && text.iter().all(u8::is_ascii_hexdigit)
        && let Ok(decoded) = hex::decode(&text)
    {
        return decoded;
    }
    bytes
}

fn verify(evidence: &Path, cert: &Path, chain: &[PathBuf], time: Option<&str>) -> Result<(), Failure> {
    use kbs::evidence::anchors::SnpAnchors;
    use kbs::evidence::snp::SnpVerifier;

    let report = raw_or_hex(read_file(evidence)?);
    let vek = pem_or_der(read_file(cert)?)
        .ok_or_else(|| Failure::Usage(format!("{}: no certificate found", cert.display())))?;
    let now = match time {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| Failure::Usage(format!("--time {t:?}: {e}")))?,
        None => time::OffsetDateTime::now_utc(),
    };
    let mut anchors = SnpAnchors::amd().map_err(|e| Failure::Usage(format!("AMD anchors: {e}")))?;
    for path in chain {
        let bytes = read_file(path)?;
        if let Err(e) = anchors.add_intermediate(&bytes) {
            let reason = kbs::error::Error::from(e);
            return Err(Failure::Refused(format!("rejected: {}: {reason}", reason.reason())));
        }
    }
    let verifier = SnpVerifier::new(anchors);
    match verifier.verify(&report, &vek, &[], now, None) {
        Ok(verified) => {
            let json = serde_json::to_string_pretty(&verified.claims)
                .map_err(|e| Failure::Usage(format!("encoding claims: {e}")))?;
            println!("{json}");
            Ok(())
        }
        Err(e) => Err(Failure::Refused(format!("rejected: {}: {e}", e.reason()))),
    }
}

fn pem_or_der(bytes: Vec<u8>) -> Option<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(&bytes) else { return Some(bytes) };
    let Some(start) = text.find("-----BEGIN CERTIFICATE-----") else { return Some(bytes) };
    let start = start + "-----BEGIN CERTIFICATE-----".len();
    let end = text.get(start..)?.find("-----END CERTIFICATE-----")? + start;
    let body: String = text.get(start..end)?.chars().filter(|c| !c.is_whitespace()).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).ok()
}
