//! The guest's side of the `kbs.v1.KeyBroker` protocol.
//!
//! [`KbsClient::fetch`] runs one whole exchange:
//! 1. `GetChallenge{tee, secret_names}` returns a 32-byte nonce, an opaque
//!    sealed challenge and the HPKE suites the broker offers;
//! 2. pick a suite (X25519 preferred, then P-256) and make an ephemeral key;
//! 3. `report_data = kbs_proto::report_data(nonce, suite, public_key)`, and
//!    ask the [`EvidenceSource`] for evidence carrying it; with GPUs
//!    ([`KbsClient::fetch_release_with_gpus`]), first the GPUs' evidence for
//!    `kbs_proto::gpu_nonce(nonce, suite, public_key)`, then CPU evidence
//!    carrying `kbs_proto::device_report_data` over exactly those bytes;
//! 4. `ReleaseSecrets` with the challenge, evidence (and the GPUs', in the
//!    order bound), suite, key and names;
//! 5. check that exactly the requested names came back, once each, and open
//!    each with `info = kbs_proto::secret_info(nonce)` and
//!    `aad = kbs_proto::secret_aad(name, version)`.
//!
//! The connection is gRPC over TLS; the broker's certificate must chain to
//! the CA given in [`ClientConfig`] (no system roots are used). A broker
//! refusal keeps its gRPC code and its stable reason code (the `kbs-reason`
//! response metadata) in [`Error::Refused`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kbs_proto::v1::key_broker_client::KeyBrokerClient;
use kbs_proto::v1::{
    GetChallengeRequest, HpkeSuite, ReleaseSecretsRequest, ReleaseSecretsResponse, release_secrets_request,
};
use kbs_proto::{NONCE_LEN, SuiteId};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

use crate::evidence::{self, EvidenceSource, GpuEvidenceSource, Tee};
use crate::hpke::{self, EphemeralKey, SUPPORTED_SUITES};

/// The response metadata key that carries the broker's reason code.
pub const REASON_METADATA_KEY: &str = "kbs-reason";

/// Largest response accepted from the broker. Released secrets are keys and
/// small credentials; this bounds what a misbehaving broker can make the
/// guest buffer.
pub const MAX_RESPONSE_LEN: usize = 16 * 1024 * 1024;

/// Where and how to reach the broker.
#[derive(Clone)]
pub struct ClientConfig {
    /// The broker's URL, `https://host:port`.
    pub url: String,
    /// The CA certificate(s), PEM, that the broker's TLS certificate must
    /// chain to. Nothing else is trusted.
    pub ca_pem: Vec<u8>,
    /// Verify the broker's certificate for this name instead of the URL's host
    /// (for brokers reached by IP address or through a tunnel).
    pub domain_name: Option<String>,
    /// Time allowed to establish the connection.
    pub connect_timeout: Duration,
    /// Time allowed for each call.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// A configuration with the default timeouts (10 s to connect, 30 s per
    /// call).
    pub fn new(url: impl Into<String>, ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            url: url.into(),
            ca_pem: ca_pem.into(),
            domain_name: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Sets the TLS name to verify instead of the URL's host.
    pub fn with_domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("ca_pem_len", &self.ca_pem.len())
            .field("domain_name", &self.domain_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// One released secret, opened. The value is zeroized when dropped and never
/// shown by `Debug`.
pub struct ReleasedSecret {
    /// The secret's name, e.g. `repo/type/tag`.
    pub name: String,
    /// The version the broker released.
    pub version: u64,
    /// The value.
    pub value: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ReleasedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleasedSecret")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("value", &format_args!("<{} bytes redacted>", self.value.len()))
            .finish()
    }
}

/// The outcome of one exchange.
#[derive(Debug)]
pub struct Release {
    /// The broker's identifier of this attestation (also in its audit log).
    pub attestation_id: String,
    /// The secrets, in the order they were requested.
    pub secrets: Vec<ReleasedSecret>,
}

/// What can go wrong fetching secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable (bad URL, not https, bad CA).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The request is unusable (no names, an empty or repeated name).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The broker could not be reached or TLS failed.
    #[error("cannot connect to the broker")]
    Connect(#[source] tonic::transport::Error),
    /// The broker refused, with its stable reason code.
    #[error("refused by the broker: {reason} ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The broker's reason code (`kbs-reason` metadata), e.g. `debug_enabled`.
        reason: String,
        /// The broker's short public message.
        message: String,
    },
    /// A call failed without a broker reason code (transport failure,
    /// timeout, or a server that is not a kbs.v1 broker).
    #[error("broker call failed ({code:?}): {message}")]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The broker offered no HPKE suite this client supports.
    #[error("the broker offers no supported HPKE suite")]
    NoCommonSuite,
    /// The broker's answer breaks the protocol.
    #[error("the broker's response is invalid: {0}")]
    Protocol(String),
    /// A released secret did not open under our key for its name and version.
    #[error("secret {name:?} (version {version}) could not be opened")]
    Open {
        /// The secret's name.
        name: String,
        /// The version the broker claimed.
        version: u64,
        /// The cause.
        #[source]
        source: hpke::Error,
    },
    /// Making the ephemeral HPKE key failed.
    #[error("cannot make the ephemeral HPKE key")]
    Key(#[source] hpke::Error),
    /// The TEE did not produce evidence.
    #[error("cannot collect evidence")]
    Evidence(#[from] evidence::Error),
    /// The evidence task stopped without an answer.
    #[error("the evidence collection task failed")]
    EvidenceTask(#[source] tokio::task::JoinError),
}

impl Error {
    /// The broker's reason code, if this is a broker refusal.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let reason = status.metadata().get(REASON_METADATA_KEY).and_then(|v| v.to_str().ok());
        match reason {
            Some(reason) => {
                Self::Refused { code: status.code(), reason: reason.to_owned(), message: status.message().to_owned() }
            }
            None => Self::Rpc { code: status.code(), message: status.message().to_owned() },
        }
    }
}

/// A connection to a broker's `KeyBroker` service.
#[derive(Clone, Debug)]
pub struct KbsClient {
    rpc: KeyBrokerClient<Channel>,
}

impl KbsClient {
    /// Connects over TLS, trusting only `config.ca_pem`.
    pub async fn connect(config: &ClientConfig) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|e| Error::Config(format!("broker URL {:?}: {e}", config.url)))?;
        if endpoint.uri().scheme_str() != Some("https") {
            return Err(Error::Config(format!("broker URL {:?} must use https", config.url)));
        }
        if config.ca_pem.is_empty() {
            return Err(Error::Config("the broker CA certificate is empty".into()));
        }
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&config.ca_pem));
        if let Some(name) = &config.domain_name {
            tls = tls.domain_name(name.clone());
        }
        let endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("TLS configuration: {e}")))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);
        let channel = endpoint.connect().await.map_err(Error::Connect)?;
        Ok(Self::from_channel(channel))
    }

    /// Uses an already configured channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self { rpc: KeyBrokerClient::new(channel).max_decoding_message_size(MAX_RESPONSE_LEN) }
    }

    /// Fetches and opens the named secrets; see the module docs.
    pub async fn fetch(
        &mut self,
        source: Arc<dyn EvidenceSource>,
        names: &[String],
    ) -> Result<Vec<ReleasedSecret>, Error> {
        Ok(self.fetch_release(source, names).await?.secrets)
    }

    /// Like [`Self::fetch`], also returning the broker's attestation id.
    pub async fn fetch_release(&mut self, source: Arc<dyn EvidenceSource>, names: &[String]) -> Result<Release, Error> {
        self.fetch_release_with_gpus(source, None, names).await
    }

    /// Like [`Self::fetch_release`], also presenting the evidence of the
    /// VM's GPUs from `gpus` (none: the device-free binding).
    pub async fn fetch_release_with_gpus(
        &mut self,
        source: Arc<dyn EvidenceSource>,
        gpus: Option<Arc<dyn GpuEvidenceSource>>,
        names: &[String],
    ) -> Result<Release, Error> {
        check_names(names)?;
        let tee = source.tee();
        if tee != Tee::Snp && tee != Tee::Tdx {
            return Err(evidence::Error::UnsupportedTee(tee).into());
        }

        let challenge = self
            .rpc
            .get_challenge(GetChallengeRequest { tee: tee.into(), secret_names: names.to_vec() })
            .await?
            .into_inner();
        let nonce: [u8; NONCE_LEN] = challenge.nonce.as_slice().try_into().map_err(|_| {
            Error::Protocol(format!("challenge nonce is {} bytes, not {NONCE_LEN}", challenge.nonce.len()))
        })?;
        let suite = choose_suite(&challenge.hpke_suites).ok_or(Error::NoCommonSuite)?;
        let key = EphemeralKey::generate(suite).map_err(Error::Key)?;

        let gpu_nonce = kbs_proto::gpu_nonce(&nonce, suite, key.public_key());
        let public_key = key.public_key().to_vec();
        let collect = Arc::clone(&source);
        // Evidence collection does blocking file I/O and waits for the
        // GPUs, the PSP (SNP) or the quoting enclave (TDX). The GPUs come
        // first: the CPU evidence commits to their exact bytes.
        type Collected = (release_secrets_request::Evidence, Vec<kbs_proto::v1::GpuEvidence>);
        let (evidence, gpu_evidence) = tokio::task::spawn_blocking(move || -> Result<Collected, Error> {
            let devices = match &gpus {
                Some(gpus) => gpus.gpu_evidence(&gpu_nonce)?,
                None => Vec::new(),
            };
            if devices.len() > kbs_proto::MAX_DEVICES {
                return Err(Error::InvalidRequest(format!(
                    "{} GPUs, at most {} per request",
                    devices.len(),
                    kbs_proto::MAX_DEVICES
                )));
            }
            let bound: Vec<kbs_proto::DeviceEvidence<'_>> = devices
                .iter()
                .map(|d| kbs_proto::DeviceEvidence { report: &d.report, cert_chain: &d.cert_chain })
                .collect();
            let report_data = kbs_proto::device_report_data(&nonce, suite, &public_key, &bound);
            tracing::debug!(gpus = devices.len(), "GPU evidence collected");
            let wire: Vec<kbs_proto::v1::GpuEvidence> = devices
                .into_iter()
                .map(|d| kbs_proto::v1::GpuEvidence { report: d.report, cert_chain: d.cert_chain, ocsp: Vec::new() })
                .collect();
            let cpu = if tee == Tee::Tdx {
                let tdx = collect.tdx_quote(&report_data)?;
                tracing::debug!(evidence = ?tdx, "collected evidence");
                release_secrets_request::Evidence::Tdx(kbs_proto::v1::TdxEvidence { quote: tdx.quote })
            } else {
                let snp = collect.snp_report(&report_data)?;
                tracing::debug!(evidence = ?snp, "collected evidence");
                release_secrets_request::Evidence::Snp(kbs_proto::v1::SnpEvidence {
                    report: snp.report,
                    cert_table: snp.cert_table,
                })
            };
            Ok((cpu, wire))
        })
        .await
        .map_err(Error::EvidenceTask)??;
        tracing::debug!(?suite, "evidence collected");

        let response = self
            .rpc
            .release_secrets(ReleaseSecretsRequest {
                challenge: challenge.challenge,
                evidence: Some(evidence),
                hpke_suite: Some(suite.to_wire()),
                hpke_public_key: key.public_key().to_vec(),
                secret_names: names.to_vec(),
                gpus: gpu_evidence,
                want_attestation_token: false,
            })
            .await?
            .into_inner();
        let release = open_response(&key, &nonce, names, response)?;
        tracing::info!(attestation_id = %release.attestation_id, count = release.secrets.len(), "secrets released");
        Ok(release)
    }
}

/// Connects with `config` and fetches `names` with evidence from `source`.
pub async fn fetch_secrets(
    config: &ClientConfig,
    source: Arc<dyn EvidenceSource>,
    names: &[String],
) -> Result<Vec<ReleasedSecret>, Error> {
    KbsClient::connect(config).await?.fetch(source, names).await
}

/// The first suite of ours (in our order of preference) that the broker
/// offers.
pub fn choose_suite(offered: &[HpkeSuite]) -> Option<SuiteId> {
    let offered: Vec<SuiteId> = offered.iter().filter_map(SuiteId::from_wire).collect();
    SUPPORTED_SUITES.into_iter().find(|ours| offered.contains(ours))
}

/// A request names at least one secret, each once, none empty.
fn check_names(names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Err(Error::InvalidRequest("no secret names".into()));
    }
    let mut seen = HashSet::new();
    for name in names {
        if name.is_empty() {
            return Err(Error::InvalidRequest("empty secret name".into()));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::InvalidRequest(format!("secret {name:?} requested twice")));
        }
    }
    Ok(())
}

/// Checks that the response holds exactly the requested names, once each,
/// and opens every secret. Returns them in request order.
fn open_response(
    key: &EphemeralKey,
    nonce: &[u8; NONCE_LEN],
    names: &[String],
    response: ReleaseSecretsResponse,
) -> Result<Release, Error> {
    let mut pending: Vec<Option<kbs_proto::v1::SealedSecret>> = names.iter().map(|_| None).collect();
    for sealed in response.secrets {
        let slot = names
            .iter()
            .position(|n| *n == sealed.name)
            .and_then(|i| pending.get_mut(i))
            .ok_or_else(|| Error::Protocol(format!("unrequested secret {:?}", sealed.name)))?;
        if slot.is_some() {
            return Err(Error::Protocol(format!("secret {:?} returned twice", sealed.name)));
        }
        *slot = Some(sealed);
    }

    let info = kbs_proto::secret_info(nonce);
    let mut secrets = Vec::with_capacity(names.len());
    for (name, sealed) in names.iter().zip(pending) {
        let sealed = sealed.ok_or_else(|| Error::Protocol(format!("secret {name:?} missing from the response")))?;
        let aad = kbs_proto::secret_aad(&sealed.name, sealed.version);
        let value = key.open(&sealed.enc, &sealed.ciphertext, &info, &aad).map_err(|source| Error::Open {
            name: sealed.name.clone(),
            version: sealed.version,
            source,
        })?;
        secrets.push(ReleasedSecret { name: sealed.name, version: sealed.version, value });
    }
    Ok(Release { attestation_id: response.attestation_id, secrets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::hpke::aead::AesGcm256;
    use ::hpke::kdf::HkdfSha256;
    use ::hpke::kem::{DhP256HkdfSha256, X25519HkdfSha256};
    use ::hpke::{Deserializable, Kem, OpModeS, Serializable};
    use kbs_proto::v1::SealedSecret;

    const NONCE: [u8; NONCE_LEN] = [3u8; NONCE_LEN];

    /// Seals like the broker does.
    fn seal(key: &EphemeralKey, name: &str, version: u64, value: &[u8]) -> SealedSecret {
        let info = kbs_proto::secret_info(&NONCE);
        let aad = kbs_proto::secret_aad(name, version);
        let (enc, ciphertext) = if key.suite() == SuiteId::X25519_SHA256_AES256GCM {
            let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(key.public_key()).unwrap();
            let (enc, ct) = ::hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
                &OpModeS::Base,
                &pk,
                &info,
                value,
                &aad,
            )
            .unwrap();
            (enc.to_bytes().to_vec(), ct)
        } else {
            let pk = <DhP256HkdfSha256 as Kem>::PublicKey::from_bytes(key.public_key()).unwrap();
            let (enc, ct) = ::hpke::single_shot_seal::<AesGcm256, HkdfSha256, DhP256HkdfSha256>(
                &OpModeS::Base,
                &pk,
                &info,
                value,
                &aad,
            )
            .unwrap();
            (enc.to_bytes().to_vec(), ct)
        };
        SealedSecret { name: name.into(), version, enc, ciphertext }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn response(secrets: Vec<SealedSecret>) -> ReleaseSecretsResponse {
        ReleaseSecretsResponse { attestation_id: "att-1".into(), secrets, attestation_token: String::new() }
    }

    #[test]
    fn opens_exactly_the_requested_secrets_in_request_order() {
        for suite in SUPPORTED_SUITES {
            let key = EphemeralKey::generate(suite).unwrap();
            let wanted = names(&["a/b/c", "models/llama/key"]);
            let resp = response(vec![seal(&key, "models/llama/key", 7, b"k2"), seal(&key, "a/b/c", 1, b"v1")]);
            let release = open_response(&key, &NONCE, &wanted, resp).unwrap();
            assert_eq!(release.attestation_id, "att-1");
            let got: Vec<_> = release.secrets.iter().map(|s| (s.name.as_str(), s.version, s.value.to_vec())).collect();
            assert_eq!(got, vec![("a/b/c", 1, b"v1".to_vec()), ("models/llama/key", 7, b"k2".to_vec())]);
        }
    }

    #[test]
    fn refuses_missing_extra_and_repeated_secrets() {
        let key = EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap();
        let wanted = names(&["a", "b"]);
        let missing = open_response(&key, &NONCE, &wanted, response(vec![seal(&key, "a", 1, b"x")]));
        assert!(matches!(missing, Err(Error::Protocol(m)) if m.contains("missing")));
        let extra = open_response(
            &key,
            &NONCE,
            &wanted,
            response(vec![seal(&key, "a", 1, b"x"), seal(&key, "b", 1, b"y"), seal(&key, "c", 1, b"z")]),
        );
        assert!(matches!(extra, Err(Error::Protocol(m)) if m.contains("unrequested")));
        let twice = open_response(
            &key,
            &NONCE,
            &wanted,
            response(vec![seal(&key, "a", 1, b"x"), seal(&key, "a", 1, b"x"), seal(&key, "b", 1, b"y")]),
        );
        assert!(matches!(twice, Err(Error::Protocol(m)) if m.contains("twice")));
    }

    #[test]
    fn refuses_a_secret_relabelled_with_another_name_or_version() {
        let key = EphemeralKey::generate(SuiteId::X25519_SHA256_AES256GCM).unwrap();
        let mut moved = seal(&key, "a", 1, b"x");
        moved.name = "b".into();
        let err = open_response(&key, &NONCE, &names(&["b"]), response(vec![moved])).unwrap_err();
        assert!(matches!(err, Error::Open { ref name, .. } if name == "b"));

        let mut bumped = seal(&key, "a", 1, b"x");
        bumped.version = 2;
        let err = open_response(&key, &NONCE, &names(&["a"]), response(vec![bumped])).unwrap_err();
        assert!(matches!(err, Error::Open { version: 2, .. }));

        // Sealed under another challenge's nonce.
        let sealed = seal(&key, "a", 1, b"x");
        let err = open_response(&key, &[4u8; NONCE_LEN], &names(&["a"]), response(vec![sealed]));
        assert!(matches!(err, Err(Error::Open { .. })));
    }

    #[test]
    fn suite_choice_prefers_x25519_and_needs_overlap() {
        let x = SuiteId::X25519_SHA256_AES256GCM.to_wire();
        let p = SuiteId::P256_SHA256_AES256GCM.to_wire();
        let other = HpkeSuite { kem: 0x11, kdf: 2, aead: 2 };
        assert_eq!(choose_suite(&[p, x]), Some(SuiteId::X25519_SHA256_AES256GCM));
        assert_eq!(choose_suite(&[other, p]), Some(SuiteId::P256_SHA256_AES256GCM));
        assert_eq!(choose_suite(&[other]), None);
        assert_eq!(choose_suite(&[]), None);
    }

    #[test]
    fn names_are_checked_before_anything_is_sent() {
        assert!(check_names(&[]).is_err());
        assert!(check_names(&names(&[""])).is_err());
        assert!(check_names(&names(&["a", "a"])).is_err());
        assert!(check_names(&names(&["a", "b/c"])).is_ok());
    }

    #[test]
    fn status_with_reason_becomes_refused() {
        let mut status = tonic::Status::permission_denied("debug_enabled: guest debugging is enabled");
        status.metadata_mut().insert(REASON_METADATA_KEY, "debug_enabled".parse().unwrap());
        let err = Error::from(status);
        assert!(matches!(
            &err,
            Error::Refused { code: tonic::Code::PermissionDenied, reason, .. } if reason == "debug_enabled"
        ));
        assert_eq!(err.reason(), Some("debug_enabled"));
        let err = Error::from(tonic::Status::unavailable("connection refused"));
        assert!(matches!(err, Error::Rpc { code: tonic::Code::Unavailable, .. }));
        assert_eq!(err.reason(), None);
    }

    #[test]
    fn released_secret_debug_redacts_the_value() {
        let secret = ReleasedSecret { name: "a".into(), version: 1, value: Zeroizing::new(b"topsecret".to_vec()) };
        let shown = format!("{secret:?}");
        assert!(!shown.contains("topsecret"));
        assert!(shown.contains("9 bytes redacted"));
    }

    #[tokio::test]
    async fn connect_refuses_plain_http_and_bad_urls() {
        let err = KbsClient::connect(&ClientConfig::new("http://127.0.0.1:1", b"x".to_vec())).await;
        assert!(matches!(err, Err(Error::Config(m)) if m.contains("https")));
        let err = KbsClient::connect(&ClientConfig::new("not a url", b"x".to_vec())).await;
        assert!(matches!(err, Err(Error::Config(_))));
        let err = KbsClient::connect(&ClientConfig::new("https://127.0.0.1:1", Vec::new())).await;
        assert!(matches!(err, Err(Error::Config(m)) if m.contains("empty")));
    }
}
