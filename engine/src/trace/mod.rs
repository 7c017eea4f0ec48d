//! Traces: a span per saga and, as its children, a span per step attempt,
//! per compensation attempt and per operator action, exported through an
//! OpenTelemetry span processor the host gives ([`Tracing`]).
//!
//! A saga's trace context is recorded in its `Started` event (see
//! [`skald_model::TraceContext`]): the caller's trace and span when it had
//! one (W3C `traceparent`), and the saga's own span id. Every span id of a
//! saga derives from that record ([`attempt_span`]), so a saga resumed
//! after a crash, in another process, continues the same trace, and the
//! `traceparent` a step hands to the service it calls is the same for the
//! same attempt before and after a restart.
//!
//! Spans are built from the events as they are recorded and handed to the
//! processor once their batch is durable: a span describes history the log
//! holds. Tracing off (no [`Tracing`] given) costs one branch per event;
//! a saga not sampled costs one more.

#[cfg(any(feature = "otlp", feature = "zipkin"))]
mod export;
mod parent;
mod spans;

use std::fmt;
use std::sync::Arc;

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use skald_model::{Run, TraceContext};

#[cfg(any(feature = "otlp", feature = "zipkin"))]
pub use export::TraceExportError;
pub use parent::{ParseTraceParentError, TraceParent};
pub(crate) use spans::SagaTraces;

/// How the engine exports its spans: to an OpenTelemetry span processor
/// (a `BatchSpanProcessor` around an OTLP or Zipkin exporter, say), with a
/// ratio of new traces sampled.
///
/// The engine builds its spans itself, with ids derived from the log, and
/// hands each finished span to the processor; give it its own processor
/// (with the host's resource set on it, `SpanProcessor::set_resource`),
/// not the one inside the host's tracer provider, and one per engine (the
/// engine's shutdown shuts it down). `on_end` is called on a partition's
/// thread: the processor must not block there (OpenTelemetry's
/// `BatchSpanProcessor` queues; a `SimpleSpanProcessor` around a network
/// exporter would stall the partition on every span).
///
/// ```no_run
/// # fn doc(exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static) {
/// use opentelemetry_sdk::trace::BatchSpanProcessor;
/// let tracing = skald_engine::Tracing::new(BatchSpanProcessor::builder(exporter).build())
///     .sample_ratio(0.25);
/// # }
/// ```
pub struct Tracing {
    processor: Arc<dyn SpanProcessor>,
    sample_ratio: f64,
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing")
            .field("processor", &self.processor)
            .field("sample_ratio", &self.sample_ratio)
            .finish()
    }
}

impl Tracing {
    /// Every saga started without a caller's context is sampled.
    pub fn new(processor: impl SpanProcessor + 'static) -> Tracing {
        Tracing {
            processor: Arc::new(processor),
            sample_ratio: 1.0,
        }
    }

    /// The share of sagas started without a caller's context whose spans
    /// are recorded, from 0 to 1 (default 1), decided from the trace id as
    /// OpenTelemetry's `TraceIdRatioBased` sampler does. A saga started
    /// with a caller's context follows the caller's sampled flag.
    pub fn sample_ratio(mut self, ratio: f64) -> Tracing {
        self.sample_ratio = ratio;
        self
    }

    /// The ratio, checked by the engine's open.
    pub(crate) fn ratio(&self) -> f64 {
        self.sample_ratio
    }
}

/// The engine's side of tracing, shared by its partitions.
pub(crate) struct Tracer {
    processor: Arc<dyn SpanProcessor>,
    /// Trace ids whose low 63 bits fall below this are sampled.
    threshold: u64,
    scope: InstrumentationScope,
    shut: std::sync::atomic::AtomicBool,
}

impl Tracer {
    pub(crate) fn new(tracing: Tracing) -> Tracer {
        let ratio = tracing.sample_ratio.clamp(0.0, 1.0);
        Tracer {
            processor: tracing.processor,
            threshold: (ratio * (1u64 << 63) as f64) as u64,
            scope: InstrumentationScope::builder("skald")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            shut: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The trace context a new saga records: under the caller's trace if
    /// it gave one, else in a new trace sampled by the ratio.
    pub(crate) fn context(
        &self,
        parent: Option<TraceParent>,
        rng: &mut impl rand::Rng,
    ) -> TraceContext {
        match parent {
            Some(parent) => child_of(parent, rng),
            None => {
                let trace_id = nonzero(|| rng.random::<[u8; 16]>(), [0; 16]);
                let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes")) >> 1;
                TraceContext {
                    trace_id,
                    span: nonzero(|| rng.random::<[u8; 8]>(), [0; 8]),
                    parent_span: None,
                    flags: u8::from(low < self.threshold),
                }
            }
        }
    }

    /// Hands spans whose events are durable to the processor.
    pub(crate) fn export(&self, spans: Vec<SpanData>) {
        for span in spans {
            self.processor.on_end(span);
        }
    }

    /// Exports what the processor still holds and shuts it down (once:
    /// a second engine shutdown does nothing here).
    pub(crate) fn shutdown(&self) {
        if self.shut.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        if let Err(error) = self.processor.shutdown() {
            tracing::warn!(%error, "shutting the span processor down failed");
        }
    }
}

/// The context of a saga started under `parent` (tracing on or off: the
/// caller asked for it).
pub(crate) fn child_of(parent: TraceParent, rng: &mut impl rand::Rng) -> TraceContext {
    TraceContext {
        trace_id: parent.trace_id,
        span: nonzero(|| rng.random::<[u8; 8]>(), [0; 8]),
        parent_span: Some(parent.span_id),
        // Only the flags W3C defines are handed on (sampled, random).
        flags: parent.flags & 0b11,
    }
}

fn nonzero<T: PartialEq>(mut draw: impl FnMut() -> T, zero: T) -> T {
    loop {
        let value = draw();
        if value != zero {
            return value;
        }
    }
}

/// The span id of an attempt (or compensation attempt) of `step`: derived
/// from the saga's span, so the same before and after a restart.
pub(crate) fn attempt_span(
    context: &TraceContext,
    step: u16,
    attempt: u32,
    compensation: bool,
) -> [u8; 8] {
    let which = (u64::from(step) << 33) | (u64::from(attempt) << 1) | u64::from(compensation);
    let mut x = u64::from_be_bytes(context.span) ^ which.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64's finaliser: every input bit moves every output bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    if x == 0 {
        x = 1;
    }
    x.to_be_bytes()
}

/// The `traceparent` a step of a saga with a trace context hands on: its
/// attempt's span when the engine exports spans (`traced`); without
/// tracing, the caller's span (the attempt's span would never be
/// exported, and the service's spans would hang off nothing).
pub(crate) fn attempt_parent(
    context: Option<&TraceContext>,
    run: &Run,
    traced: bool,
) -> Option<TraceParent> {
    let context = context?;
    let span_id = match traced {
        true => attempt_span(context, run.step, run.attempt, run.compensation),
        false => context.parent_span?,
    };
    Some(TraceParent {
        trace_id: context.trace_id,
        span_id,
        flags: context.flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[derive(Debug)]
    struct Discard;

    impl SpanProcessor for Discard {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, _: SpanData) {}
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(
            &self,
            _: std::time::Duration,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn attempt_spans_differ_by_step_attempt_and_direction_and_are_stable() {
        let context = TraceContext {
            trace_id: [7; 16],
            span: [9; 8],
            parent_span: None,
            flags: 1,
        };
        let mut seen = std::collections::HashSet::new();
        for step in 0..20u16 {
            for attempt in 1..20u32 {
                for compensation in [false, true] {
                    let span = attempt_span(&context, step, attempt, compensation);
                    assert_eq!(span, attempt_span(&context, step, attempt, compensation));
                    assert_ne!(span, [0; 8]);
                    assert_ne!(span, context.span);
                    assert!(seen.insert(span), "{step} {attempt} {compensation}");
                }
            }
        }
    }

    #[test]
    fn the_ratio_samples_about_its_share_and_follows_a_caller() {
        let tracer = |ratio| Tracer::new(Tracing::new(Discard).sample_ratio(ratio));
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (ratio, low, high) in [(0.0, 0, 0), (1.0, 10_000, 10_000), (0.25, 2_300, 2_700)] {
            let tracer = tracer(ratio);
            let sampled = (0..10_000)
                .filter(|_| tracer.context(None, &mut rng).sampled())
                .count();
            assert!((low..=high).contains(&sampled), "{ratio}: {sampled}");
        }
        let parent: TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
            .parse()
            .unwrap();
        let context = tracer(1.0).context(Some(parent), &mut rng);
        assert_eq!(context.trace_id, parent.trace_id);
        assert_eq!(context.parent_span, Some(parent.span_id));
        assert!(!context.sampled(), "the caller's flag wins");
    }
}
