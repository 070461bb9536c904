//! OpenTelemetry traces of the release flow, exported over OTLP/gRPC.
//!
//! Off unless an OTLP endpoint is configured (`[telemetry]` in kbs.toml or
//! the standard `OTEL_*` variables; `config` resolves both into a
//! [`TelemetryConfig`]). When on, [`Telemetry::layer`] exports the crate's
//! `tracing` spans (targets `kbs::*`) and nothing else: no span of another
//! crate, and no event (log line) at all, so what a trace can hold is what
//! the spans declare here and in the hooks of the front ends and the release
//! flow:
//!
//! - a root span per release ([`release_span`]: the gRPC `ReleaseSecrets`
//!   call, or a CoCo `/kbs/v0/...` request), a child of the caller's span
//!   when the call carries a W3C `traceparent`, with the TEE, the outcome,
//!   the reason code, the number of secrets asked for and the attestation id
//!   (which ties the trace to the audit record);
//! - a root span per gRPC `GetChallenge` call ([`challenge_span`]), likewise
//!   a child of the caller's span, with the same attributes but the
//!   attestation id (a challenge has none yet);
//! - a child span per phase ([`phase`] names them): evidence verification,
//!   with evidence parsing and collateral inside it, then per secret the
//!   store read, the policy decision and the sealing.
//!
//! Never in a span: a secret's name, value or version, a key, a challenge
//! or attestation token, evidence bytes, claims, or an error's text (the
//! reason code says why; the cause is in the log and the audit record).

use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Subscriber;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The names of the phase spans, children of a release span. The same
/// phases as the `phase` label of the duration metrics, plus the two
/// steps inside verification.
pub mod phase {
    /// Evidence verification (parse, collateral, chain, signature, binding).
    pub const VERIFY: &str = "verify";
    /// Parsing the evidence (inside `verify`).
    pub const EVIDENCE_PARSE: &str = "evidence_parse";
    /// Getting the collateral: the VEK from the certificate table or its
    /// source, the TDX collateral (inside `verify`).
    pub const COLLATERAL: &str = "collateral";
    /// Reading one secret from the store.
    pub const STORE: &str = "store";
    /// Evaluating the release policy for one secret.
    pub const POLICY: &str = "policy";
    /// Sealing one secret to the guest's key.
    pub const SEAL: &str = "seal";
}

/// The root span of a gRPC release.
pub const RELEASE_SPAN: &str = "kbs.release";

/// The root span of a gRPC challenge request.
pub const CHALLENGE_SPAN: &str = "kbs.challenge";

/// Where the spans go and which are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// The collector's OTLP/gRPC endpoint (`http://` or `https://` URL).
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Which traces are kept.
    pub sampling: Sampling,
    /// The CA (PEM) an `https` collector's certificate chains to.
    pub ca_file: Option<PathBuf>,
}

/// The sampler: a ratio of trace ids, optionally following the caller's
/// sampling decision when the call carries one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Follow the sampled flag of a caller's `traceparent`; the ratio then
    /// applies to calls without one.
    pub parent_based: bool,
    /// The share of traces kept, from 0 to 1.
    pub ratio: f64,
}

impl Default for Sampling {
    /// `parentbased_always_on`, the OpenTelemetry default.
    fn default() -> Self {
        Self { parent_based: true, ratio: 1.0 }
    }
}

impl Sampling {
    /// The sampler named by `OTEL_TRACES_SAMPLER` (and, for the ratio
    /// samplers, `OTEL_TRACES_SAMPLER_ARG`, default 1).
    pub fn from_otel(name: &str, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || -> Result<f64, String> {
            match arg {
                None => Ok(1.0),
                Some(arg) => Self::check_ratio(arg.trim().parse().map_err(|_| format!("{arg:?} is not a number"))?),
            }
        };
        Ok(match name.trim() {
            "always_on" => Self { parent_based: false, ratio: 1.0 },
            "always_off" => Self { parent_based: false, ratio: 0.0 },
            "traceidratio" => Self { parent_based: false, ratio: ratio()? },
            "parentbased_always_on" => Self { parent_based: true, ratio: 1.0 },
            "parentbased_always_off" => Self { parent_based: true, ratio: 0.0 },
            "parentbased_traceidratio" => Self { parent_based: true, ratio: ratio()? },
            other => return Err(format!("unsupported sampler {other:?}")),
        })
    }

    /// `ratio` if it lies in 0..=1.
    pub fn check_ratio(ratio: f64) -> Result<f64, String> {
        if (0.0..=1.0).contains(&ratio) { Ok(ratio) } else { Err(format!("ratio {ratio} is not between 0 and 1")) }
    }

    fn sampler(self) -> Sampler {
        let root = if self.ratio >= 1.0 {
            Sampler::AlwaysOn
        } else if self.ratio <= 0.0 {
            Sampler::AlwaysOff
        } else {
            Sampler::TraceIdRatioBased(self.ratio)
        };
        if self.parent_based { Sampler::ParentBased(Box::new(root)) } else { root }
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The collector's CA file could not be read.
    #[error("telemetry.ca_file {path}: {why}")]
    CaFile {
        /// Path.
        path: String,
        /// Cause.
        why: String,
    },
    /// The exporter refused its settings, or flushing failed.
    #[error("OTLP trace exporter: {0}")]
    Exporter(String),
}

/// A running trace exporter (a batch span processor on its own thread).
/// [`Telemetry::shutdown`] flushes it; dropping it without that may lose
/// the last batch.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// How long a shutdown waits for the last batch to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Telemetry {
    /// Starts the exporter for `config`; `instance` becomes the
    /// `service.instance.id` resource attribute (the replica id). Must be
    /// called inside a Tokio runtime (the gRPC channel's worker runs on
    /// it); the collector is connected to lazily, so a collector that is
    /// down does not stop the broker (its spans are dropped).
    pub fn start(config: &TelemetryConfig, instance: &str) -> Result<Self, TelemetryError> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&config.endpoint);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| TelemetryError::CaFile { path: path.display().to_string(), why: e.to_string() })?;
            let tls =
                tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter.build().map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", instance.to_owned()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(config.sampling.sampler())
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that exports the crate's spans (and only them:
    /// no event, no span of another crate).
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("kbs")).with_threads(false).with_filter(
            tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && (meta.target() == "kbs" || meta.target().starts_with("kbs::"))
            }),
        )
    }

    /// Exports the spans ended so far. Blocks: call it off the runtime's
    /// worker threads (e.g. in `spawn_blocking`).
    pub fn flush(&self) -> Result<(), TelemetryError> {
        self.provider.force_flush().map_err(|e| TelemetryError::Exporter(e.to_string()))
    }

    /// Exports the spans ended so far and stops the exporter. Blocks, like
    /// [`Telemetry::flush`].
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT).map_err(|e| TelemetryError::Exporter(e.to_string()))
    }
}

/// The W3C trace context headers (`traceparent`, `tracestate`) of a call.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` a child of the span named by the W3C `traceparent` header
/// in `headers`, if any (a malformed one is ignored: the span starts a new
/// trace). Without the exporter's layer, this does nothing.
pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    if headers.get("traceparent").is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only when the span is disabled (no layer wants it).
    let _ = span.set_parent(parent);
}

/// The root span of a gRPC `ReleaseSecrets` call, a child of the caller's
/// span when `headers` (the call's metadata) carry one. The outcome is
/// recorded by [`record_outcome`].
pub fn release_span(headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        RELEASE_SPAN,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "kbs.v1.KeyBroker",
        rpc.method = "ReleaseSecrets",
        tee = Empty,
        outcome = Empty,
        reason = Empty,
        secrets = Empty,
        attestation_id = Empty,
        otel.status_code = Empty,
    );
    set_remote_parent(&span, headers);
    span
}

/// The root span of a gRPC `GetChallenge` call, a child of the caller's
/// span when `headers` (the call's metadata) carry one. The outcome is
/// recorded by [`record_outcome`], without an attestation id.
pub fn challenge_span(headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        CHALLENGE_SPAN,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "kbs.v1.KeyBroker",
        rpc.method = "GetChallenge",
        tee = Empty,
        outcome = Empty,
        reason = Empty,
        secrets = Empty,
        otel.status_code = Empty,
    );
    set_remote_parent(&span, headers);
    span
}

/// The root span of a CoCo KBS protocol request to `path`, a child of the
/// caller's span when `headers` carry one.
pub fn coco_span(path: &str, headers: &HeaderMap) -> tracing::Span {
    macro_rules! span {
        ($name:literal) => {
            tracing::info_span!(
                $name,
                otel.kind = "server",
                tee = Empty,
                outcome = Empty,
                reason = Empty,
                secrets = Empty,
                attestation_id = Empty,
                http.response.status_code = Empty,
                otel.status_code = Empty,
            )
        };
    }
    let span = match path {
        "/kbs/v0/auth" => span!("kbs.coco.auth"),
        "/kbs/v0/attest" => span!("kbs.coco.attest"),
        p if p.starts_with("/kbs/v0/resource/") => span!("kbs.coco.resource"),
        _ => span!("kbs.coco.other"),
    };
    set_remote_parent(&span, headers);
    span
}

/// Records a decision on the current span (a release, challenge or CoCo
/// request span;
/// nothing happens outside one): the TEE, the attestation id, the number of
/// secrets asked for, and `allow` or `deny` with the reason code.
pub fn record_outcome(tee: Option<&str>, attestation_id: Option<&str>, secrets: usize, refused: Option<&'static str>) {
    let span = tracing::Span::current();
    if let Some(tee) = tee {
        span.record("tee", tee);
    }
    if let Some(id) = attestation_id {
        span.record("attestation_id", id);
    }
    // As i64: the bridge exports a u64 as a string.
    span.record("secrets", i64::try_from(secrets).unwrap_or(i64::MAX));
    match refused {
        None => {
            span.record("outcome", "allow");
        }
        Some(reason) => {
            span.record("outcome", "deny");
            span.record("reason", reason);
            span.record("otel.status_code", "ERROR");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_by_their_otel_names() {
        let s = |name, arg| Sampling::from_otel(name, arg);
        assert_eq!(s("always_on", None).unwrap(), Sampling { parent_based: false, ratio: 1.0 });
        assert_eq!(s("always_off", Some("0.5")).unwrap(), Sampling { parent_based: false, ratio: 0.0 });
        assert_eq!(s("traceidratio", Some("0.25")).unwrap(), Sampling { parent_based: false, ratio: 0.25 });
        assert_eq!(s("parentbased_traceidratio", None).unwrap(), Sampling { parent_based: true, ratio: 1.0 });
        assert_eq!(s("parentbased_always_off", None).unwrap(), Sampling { parent_based: true, ratio: 0.0 });
        assert_eq!(s("parentbased_always_on", None).unwrap(), Sampling::default());
        for (name, arg) in [("jaeger_remote", None), ("traceidratio", Some("2")), ("traceidratio", Some("half"))] {
            assert!(s(name, arg).is_err(), "{name} {arg:?}");
        }
        assert!(Sampling::check_ratio(-0.1).is_err());
        assert!(Sampling::check_ratio(f64::NAN).is_err());
    }

    #[test]
    fn a_remote_parent_is_read_from_w3c_headers_only() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        use opentelemetry::trace::TraceContextExt as _;
        let remote = cx.span().span_context().clone();
        assert!(remote.is_valid() && remote.is_remote() && remote.is_sampled());
        assert_eq!(remote.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        headers.insert("traceparent", "garbage".parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        assert!(!cx.span().span_context().is_valid());
    }
}
