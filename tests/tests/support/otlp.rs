//! An OTLP/gRPC trace collector in the test process (a real tonic server on
//! a loopback port, decoding the export requests with the
//! `opentelemetry-proto` types), and the broker's exporter pointed at it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The collector: every export request it was sent.
#[derive(Clone, Default)]
pub struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// One exported span, flattened.
#[derive(Clone, Debug)]
pub struct Span {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, AnyValue>,
    /// 2 is `STATUS_CODE_ERROR`.
    pub status_code: i32,
}

impl Span {
    /// A string attribute.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key)?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key)?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }
}

impl Collector {
    /// Starts a collector on a loopback port; returns it and its endpoint.
    pub async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let collector = Collector::default();
        let server = tonic::transport::Server::builder().add_service(TraceServiceServer::new(collector.clone()));
        tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
        (collector, endpoint)
    }

    /// The export requests received so far.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.received.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let mut spans = Vec::new();
        for request in self.requests() {
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        spans.push(Span {
                            name: span.name,
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent_span_id: hex::encode(&span.parent_span_id),
                            attributes: span
                                .attributes
                                .into_iter()
                                .filter_map(|kv| Some((kv.key, kv.value?)))
                                .collect(),
                            status_code: span.status.map_or(0, |s| s.code),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Every string the collector received in a name, attribute (keys and
    /// values, bytes as hex and lossy UTF-8), event, link, status message
    /// or resource: what must never hold a secret.
    pub fn all_text(&self) -> Vec<String> {
        let mut out = Vec::new();
        for request in self.requests() {
            for resource in request.resource_spans {
                if let Some(r) = resource.resource {
                    attribute_text(&r.attributes, &mut out);
                }
                for scope in resource.scope_spans {
                    if let Some(s) = scope.scope {
                        out.push(s.name);
                        out.push(s.version);
                        attribute_text(&s.attributes, &mut out);
                    }
                    for span in scope.spans {
                        out.push(span.name);
                        out.push(span.trace_state);
                        attribute_text(&span.attributes, &mut out);
                        for event in span.events {
                            out.push(event.name);
                            attribute_text(&event.attributes, &mut out);
                        }
                        for link in span.links {
                            out.push(link.trace_state);
                            attribute_text(&link.attributes, &mut out);
                        }
                        if let Some(status) = span.status {
                            out.push(status.message);
                        }
                    }
                }
            }
        }
        out
    }
}

fn attribute_text(attributes: &[KeyValue], out: &mut Vec<String>) {
    for kv in attributes {
        out.push(kv.key.clone());
        if let Some(value) = &kv.value {
            value_text(value, out);
        }
    }
}

fn value_text(value: &AnyValue, out: &mut Vec<String>) {
    match &value.value {
        None => {}
        Some(any_value::Value::StringValue(s)) => out.push(s.clone()),
        Some(any_value::Value::BytesValue(b)) => {
            out.push(hex::encode(b));
            out.push(String::from_utf8_lossy(b).into_owned());
        }
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().for_each(|v| value_text(v, out)),
        Some(any_value::Value::KvlistValue(l)) => attribute_text(&l.values, out),
        Some(other) => out.push(format!("{other:?}")),
    }
}

/// The textual forms a byte string could take in a span: hex (both
/// cases), the four base64 alphabets, and UTF-8 when it is text.
pub fn forms(bytes: &[u8]) -> Vec<String> {
    let mut forms = vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    if let Ok(text) = std::str::from_utf8(bytes) {
        forms.push(text.to_owned());
    }
    forms
}

/// Fails if any text the collector received holds any form of any of
/// `secrets` (what, bytes), whole or as one of its 16-byte pieces (not
/// counting pieces of one repeated byte, such as reserved zeros).
pub fn assert_no_secret(collector: &Collector, secrets: &[(&str, &[u8])]) {
    let text = collector.all_text();
    assert!(!text.is_empty());
    for (what, bytes) in secrets {
        assert!(!bytes.is_empty(), "{what} is empty");
        let mut needles = forms(bytes);
        if bytes.len() > 32 {
            for piece in bytes.chunks(16).filter(|p| p.len() == 16 && p.iter().any(|b| *b != p[0])) {
                needles.push(hex::encode(piece));
                needles.push(hex::encode_upper(piece));
            }
        }
        for needle in needles.iter().filter(|n| n.len() >= 8) {
            for haystack in &text {
                assert!(
                    !haystack.contains(needle.as_str()),
                    "{what} ({needle}) appears in an exported span: {haystack}"
                );
            }
        }
    }
}

/// Starts the broker's exporter for the `[telemetry]` section of the
/// configuration at `config_path` and installs its layer as the process's
/// subscriber (each test runs in a process of its own).
pub fn install(config_path: &std::path::Path) -> kbs::telemetry::Telemetry {
    let config = kbs::config::Config::load(config_path, |_| None).unwrap();
    let telemetry = kbs::telemetry::Telemetry::start(config.telemetry.as_ref().unwrap(), &config.replica_id).unwrap();
    tracing_subscriber::registry().with(telemetry.layer()).init();
    telemetry
}

/// Flushes and stops the exporter (off the runtime's worker threads: it
/// blocks until the last batch is exported).
pub async fn shutdown(telemetry: kbs::telemetry::Telemetry) {
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap().unwrap();
}

/// A W3C `traceparent` for a sampled span of the caller: (header, trace
/// id, span id).
pub fn traceparent() -> (String, String, String) {
    let mut ids = [0u8; 24];
    aws_lc_rs::rand::fill(&mut ids).unwrap();
    let (trace_id, span_id) = (hex::encode(&ids[..16]), hex::encode(&ids[16..]));
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}
