//! W3C Trace Context's `traceparent`: the caller's context a saga starts
//! under, and the context a step hands to the service it calls.

use std::fmt;
use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

/// A W3C `traceparent`: a trace, a span in it, and flags (bit 0:
/// sampled). Parsed from and printed as the header value,
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace (not all zero).
    pub trace_id: [u8; 16],
    /// The span (not all zero).
    pub span_id: [u8; 8],
    /// Trace flags.
    pub flags: u8,
}

/// Why a `traceparent` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("traceparent {text:?}: {problem} (expected 00-<32 hex>-<16 hex>-<2 hex>)")]
pub struct ParseTraceParentError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl TraceParent {
    /// The sampled flag.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The span context of an OpenTelemetry context (the current one, a
    /// `tracing` span's through tracing-opentelemetry's
    /// `OpenTelemetrySpanExt::context`), if it has a valid one.
    pub fn from_context(context: &opentelemetry::Context) -> Option<TraceParent> {
        let span = context.span();
        let span = span.span_context();
        span.is_valid().then(|| TraceParent {
            trace_id: span.trace_id().to_bytes(),
            span_id: span.span_id().to_bytes(),
            flags: span.trace_flags().to_u8(),
        })
    }

    /// An OpenTelemetry context whose (remote) span is this one: a parent
    /// for spans a step makes (with tracing-opentelemetry,
    /// `span.set_parent(context)`).
    pub fn to_context(&self) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(self.span_context(true))
    }

    pub(crate) fn span_context(&self, remote: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            remote,
            TraceState::default(),
        )
    }
}

impl fmt::Display for TraceParent {
    /// The header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-")?;
        for byte in self.trace_id {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "-")?;
        for byte in self.span_id {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

impl FromStr for TraceParent {
    type Err = ParseTraceParentError;

    /// A header value of version `00` (or, as the specification asks, of a
    /// later version: its first four fields).
    fn from_str(text: &str) -> Result<TraceParent, ParseTraceParentError> {
        let fail = |problem| ParseTraceParentError {
            text: text.chars().take(80).collect(),
            problem,
        };
        let mut fields = text.trim().split('-');
        let version = fields.next().unwrap_or_default();
        let (trace, span, flags) = match (fields.next(), fields.next(), fields.next()) {
            (Some(trace), Some(span), Some(flags)) => (trace, span, flags),
            _ => return Err(fail("fewer than four fields")),
        };
        let version = hex::<1>(version).ok_or_else(|| fail("the version is not 2 hex digits"))?;
        if version == [0xff] {
            return Err(fail("version ff is invalid"));
        }
        if version == [0] && fields.next().is_some() {
            return Err(fail("version 00 has exactly four fields"));
        }
        let trace_id = hex::<16>(trace).ok_or_else(|| fail("the trace id is not 32 hex digits"))?;
        let span_id = hex::<8>(span).ok_or_else(|| fail("the parent id is not 16 hex digits"))?;
        let [flags] = hex::<1>(flags).ok_or_else(|| fail("the flags are not 2 hex digits"))?;
        if trace_id == [0; 16] {
            return Err(fail("the trace id is all zero"));
        }
        if span_id == [0; 8] {
            return Err(fail("the parent id is all zero"));
        }
        Ok(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }
}

/// `N` bytes from exactly `2N` lowercase hex digits.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let digit = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_specifications_example_round_trips() {
        let parent: TraceParent = SAMPLE.parse().unwrap();
        assert_eq!(parent.trace_id[0], 0x0a);
        assert_eq!(parent.span_id[7], 0x31);
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), SAMPLE);
        let context = parent.to_context();
        assert_eq!(TraceParent::from_context(&context), Some(parent));
        assert_eq!(
            TraceParent::from_context(&opentelemetry::Context::new()),
            None
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let problem = |text: &str| text.parse::<TraceParent>().unwrap_err().problem;
        assert_eq!(problem("00-abc"), "fewer than four fields");
        assert_eq!(
            problem(&SAMPLE.replace("0af7", "0AF7")),
            "the trace id is not 32 hex digits"
        );
        assert_eq!(
            problem(&SAMPLE.replacen("b7ad", "b7a", 1)),
            "the parent id is not 16 hex digits"
        );
        assert_eq!(
            problem("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            "the trace id is all zero"
        );
        assert_eq!(
            problem("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"),
            "the parent id is all zero"
        );
        assert_eq!(
            problem(&SAMPLE.replacen("00", "ff", 1)),
            "version ff is invalid"
        );
        assert_eq!(
            problem(&format!("{SAMPLE}-x")),
            "version 00 has exactly four fields"
        );
        assert_eq!(
            problem(&SAMPLE.replace("-01", "-1")),
            "the flags are not 2 hex digits"
        );
        let later = format!("{}-future", SAMPLE.replacen("00", "01", 1));
        assert!(
            later.parse::<TraceParent>().is_ok(),
            "a later version may add fields"
        );
    }
}
