//! Connecting to the Admin listener: settings from flags, environment and
//! config file, TLS with the broker's CA, and a bearer token or a client
//! certificate.

use std::path::{Path, PathBuf};

use kbs_proto::v1::admin_client::AdminClient;
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use zeroize::Zeroizing;

use crate::{Cli, Failure};

/// `~/.config/kbsctl/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    ca: Option<PathBuf>,
    token_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    domain: Option<String>,
}

fn file_config(cli: &Cli) -> Result<FileConfig, Failure> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => match std::env::var_os("HOME") {
            Some(home) => (Path::new(&home).join(".config/kbsctl/config.toml"), false),
            None => return Ok(FileConfig::default()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display()))),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(Failure::Usage(format!("reading {}: {e}", path.display()))),
    }
}

/// The Admin client with its credential attached.
pub(crate) type Client = AdminClient<InterceptedService<Channel, Bearer>>;

/// Adds the bearer token (if any) to every call.
#[derive(Clone)]
pub(crate) struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, Failure> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))
}

/// Connects using flags, then environment, then the config file.
pub(crate) async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let file = file_config(cli)?;
    let url = cli
        .url
        .clone()
        .or(file.url)
        .ok_or_else(|| Failure::Usage("no broker URL: use --url, KBS_ADMIN_URL or the config file".into()))?;
    let ca_path = cli
        .ca
        .clone()
        .or(file.ca)
        .ok_or_else(|| Failure::Usage("no CA: use --ca, KBS_CA or the config file".into()))?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca_path)?.as_slice()));
    if let Some(domain) = cli.domain.clone().or(file.domain) {
        tls = tls.domain_name(domain);
    }
    let cert = cli.client_cert.clone().or(file.client_cert);
    let key = cli.client_key.clone().or(file.client_key);
    let bearer = match (cert, key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read(&cert)?.as_slice(), read(&key)?.as_slice()));
            None
        }
        (None, None) => {
            let token = token(cli.token_file.clone().or(file.token_file))?;
            let value = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| Failure::Usage("admin token has characters not allowed in a header".into()))?;
            Some(value)
        }
        _ => return Err(Failure::Usage("a client certificate needs both --client-cert and --client-key".into())),
    };
    let endpoint = Channel::from_shared(url.clone())
        .map_err(|e| Failure::Usage(format!("bad URL {url}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Failure::Usage(format!("TLS: {e}")))?;
    let channel = endpoint.connect().await.map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
    Ok(AdminClient::with_interceptor(channel, Bearer(bearer)))
}

fn token(file: Option<PathBuf>) -> Result<Zeroizing<String>, Failure> {
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(&path).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))?;
        return Ok(Zeroizing::new(text.trim().to_owned()));
    }
    std::env::var("KBS_ADMIN_TOKEN").map(|t| Zeroizing::new(t.trim().to_owned())).map_err(|_| {
        Failure::Usage(
            "no credential: use --token-file, KBS_ADMIN_TOKEN, a client certificate or the config file".into(),
        )
    })
}

/// Maps a refusal to its exit code, keeping the broker's reason code.
pub(crate) fn refused(status: tonic::Status) -> Failure {
    let reason = status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match reason {
        // The broker's message already starts with the reason code.
        Some(reason) if status.message().starts_with(reason.as_str()) => {
            Failure::Refused(format!("refused: {} ({:?})", status.message(), status.code()))
        }
        Some(reason) => Failure::Refused(format!("refused: {reason}: {} ({:?})", status.message(), status.code())),
        None if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
            Failure::Unreachable(status.message().to_owned())
        }
        None => Failure::Refused(format!("refused: {:?}: {}", status.code(), status.message())),
    }
}
