//! Ready-made exports (cargo features `otlp` and `zipkin`): a batching
//! span processor around the OpenTelemetry OTLP (HTTP, protobuf) or
//! Zipkin (JSON v2) exporter.

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::Tracing;

/// Spans the batch processor queues at most, unless
/// `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise: some 13,000 sagas of four
/// steps between two exports.
const QUEUE_SPANS: usize = 65_536;

/// Why an export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("the {exporter} exporter to {endpoint:?}: {message}")]
pub struct TraceExportError {
    /// `otlp` or `zipkin`.
    pub exporter: &'static str,
    /// The endpoint given.
    pub endpoint: String,
    /// What went wrong.
    pub message: String,
}

impl Tracing {
    /// Exports over OTLP/HTTP in protobuf to `endpoint`: a collector's
    /// base URL (`http://127.0.0.1:4318`, to which `/v1/traces` is added)
    /// or the full traces URL. `service` names this process
    /// (`service.name`). Batched by OpenTelemetry's `BatchSpanProcessor`
    /// on its own thread, configured by the `OTEL_BSP_*` variables.
    #[cfg(feature = "otlp")]
    pub fn otlp(endpoint: &str, service: &str) -> Result<Tracing, TraceExportError> {
        use opentelemetry_otlp::WithExportConfig;
        let url = match endpoint.trim_end_matches('/') {
            full if full.ends_with("/v1/traces") => full.to_owned(),
            base => format!("{base}/v1/traces"),
        };
        let fail = |message: String| TraceExportError {
            exporter: "otlp",
            endpoint: endpoint.to_owned(),
            message,
        };
        check_url(&url).map_err(&fail)?;
        let exporter = off_runtime(move || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()
        })
        .map_err(|error| fail(error.to_string()))?;
        Ok(batched(exporter, service))
    }

    /// Exports in Zipkin's JSON v2 to `endpoint`, the collector's spans URL
    /// (`http://127.0.0.1:9411/api/v2/spans`), batched as
    /// [`Tracing::otlp`] is.
    ///
    /// OpenTelemetry deprecated its Zipkin exporter (0.33) in favour of
    /// Zipkin's own OTLP receiver: a Zipkin that has it takes
    /// [`Tracing::otlp`]; this is for one that speaks only its JSON API.
    #[cfg(feature = "zipkin")]
    #[allow(deprecated)]
    pub fn zipkin(endpoint: &str, service: &str) -> Result<Tracing, TraceExportError> {
        let fail = |message: String| TraceExportError {
            exporter: "zipkin",
            endpoint: endpoint.to_owned(),
            message,
        };
        check_url(endpoint).map_err(&fail)?;
        let url = endpoint.to_owned();
        let exporter = off_runtime(move || {
            opentelemetry_zipkin::ZipkinExporter::builder()
                .with_collector_endpoint(url)
                .build()
        })
        .map_err(|error| fail(error.to_string()))?;
        Ok(batched(exporter, service))
    }
}

fn check_url(url: &str) -> Result<(), String> {
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(()),
        _ => Err("expected an http:// or https:// URL".to_owned()),
    }
}

fn batched(exporter: impl SpanExporter + 'static, service: &str) -> Tracing {
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("process.pid", i64::from(std::process::id())))
        .build();
    // OpenTelemetry's default queue (2,048 spans, some 400 sagas) drops
    // spans under a busy engine's load; OTEL_BSP_MAX_QUEUE_SIZE still
    // decides when set.
    let mut config = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(QUEUE_SPANS);
    }
    let mut processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(config.build())
        .build();
    processor.set_resource(&resource);
    Tracing::new(processor)
}

/// Builds on a thread of its own: the exporters' blocking HTTP clients
/// must not be made (or dropped) on an async runtime's thread.
fn off_runtime<T: Send>(build: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(build)
            .join()
            .expect("building a span exporter panicked")
    })
}
