//! The trace context a saga records with its start (W3C Trace Context),
//! so that every span of the saga, in whichever process and after however
//! many restarts, joins one trace.

use serde::{Deserialize, Serialize};

/// A saga's place in a distributed trace, recorded in its `Started` event.
///
/// `trace_id` and `parent_span` come from the caller's context when it had
/// one (W3C `traceparent`); `span` is the saga's own span, made at the
/// start, of which every attempt and compensation span is a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    /// The trace (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The saga's span (8 bytes, not all zero).
    pub span: [u8; 8],
    /// The caller's span, the saga span's parent, if the caller had one.
    pub parent_span: Option<[u8; 8]>,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// The sampled flag: the saga's spans are recorded and exported.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}
