//! Trace receivers for tests: an OTLP/HTTP (protobuf) endpoint, decoded
//! with the OpenTelemetry protocol's own types, and a Zipkin v2 JSON
//! endpoint. Each keeps every span it receives, normalised to
//! [`ReceivedSpan`], for a test to check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use parking_lot::Mutex;
use prost::Message;

/// One span as a receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Lowercase hex.
    pub trace_id: String,
    /// Lowercase hex.
    pub span_id: String,
    /// Lowercase hex; `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    /// Attributes, their values as text (`true`, `3`, `text`).
    pub attributes: BTreeMap<String, String>,
    /// Span event names, in order.
    pub events: Vec<String>,
    /// Milliseconds since the epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    /// The error description, for a span whose status is an error.
    pub error: Option<String>,
    /// The resource's `process.pid` (OTLP only).
    pub pid: Option<u32>,
}

impl ReceivedSpan {
    /// An attribute's value, or "" if it has none.
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// A receiver on a loopback port.
pub struct Collector {
    /// Where it listens.
    pub address: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// OTLP/HTTP: `POST /v1/traces` with an `ExportTraceServiceRequest`.
    pub async fn otlp() -> Collector {
        Collector::serve(Router::new().route("/v1/traces", post(otlp))).await
    }

    /// Zipkin: `POST /api/v2/spans` with a JSON list of spans.
    pub async fn zipkin() -> Collector {
        Collector::serve(Router::new().route("/api/v2/spans", post(zipkin))).await
    }

    async fn serve(router: Router<Arc<Mutex<Vec<ReceivedSpan>>>>) -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = router.with_state(spans.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Collector {
            address,
            spans,
            task,
        }
    }

    /// The OTLP base URL (`http://127.0.0.1:port`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().clone()
    }

    /// Polls until `done` holds for the spans received, or `limit`
    /// passes (then panics, naming `what`).
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let until = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < until,
                "waited {limit:?} for {what}; received: {:#?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn otlp(State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let pid = resource_spans.resource.as_ref().and_then(|resource| {
            let pid = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "process.pid");
            pid.and_then(|kv| text(kv.value.as_ref()).parse().ok())
        });
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            let error = span
                .status
                .as_ref()
                .filter(|status| status.code == 2)
                .map(|status| status.message.clone());
            received.push(ReceivedSpan {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: (!span.parent_span_id.is_empty())
                    .then(|| hex(&span.parent_span_id)),
                name: span.name,
                attributes: attributes(&span.attributes),
                events: span.events.into_iter().map(|e| e.name).collect(),
                start_ms: span.start_time_unix_nano / 1_000_000,
                end_ms: span.end_time_unix_nano / 1_000_000,
                error,
                pid,
            });
        }
    }
    spans.lock().extend(received);
    StatusCode::OK
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    trace_id: String,
    id: String,
    parent_id: Option<String>,
    name: Option<String>,
    timestamp: Option<u64>,
    duration: Option<u64>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    annotations: Vec<ZipkinAnnotation>,
}

#[derive(serde::Deserialize)]
struct ZipkinAnnotation {
    value: String,
}

async fn zipkin(State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>, body: Bytes) -> StatusCode {
    let Ok(list) = serde_json::from_slice::<Vec<ZipkinSpan>>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let received = list.into_iter().map(|span| {
        let start_us = span.timestamp.unwrap_or(0);
        let error = span.tags.get("error").cloned();
        ReceivedSpan {
            trace_id: span.trace_id,
            span_id: span.id,
            // OpenTelemetry's Zipkin exporter writes a root's parent as
            // zeros.
            parent_span_id: span.parent_id.filter(|id| id.bytes().any(|b| b != b'0')),
            name: span.name.unwrap_or_default(),
            events: span.annotations.into_iter().map(|a| a.value).collect(),
            attributes: span.tags,
            start_ms: start_us / 1_000,
            end_ms: (start_us + span.duration.unwrap_or(0)) / 1_000,
            error,
            pid: None,
        }
    });
    spans.lock().extend(received);
    StatusCode::ACCEPTED
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
