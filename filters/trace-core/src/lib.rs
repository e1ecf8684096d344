//! The tracing logic of wasmtrace's filters, free of any proxy or Wasm dependency so it is tested
//! natively and runs unchanged inside a proxy-wasm filter (or anywhere else).
//!
//! - [`ids`]: trace and span ids (random from the platform: WASI `random_get` inside a filter).
//! - [`w3c`]: W3C Trace Context Level 2 (`traceparent`, `tracestate`), exactly the processing model.
//! - [`b3`]: Zipkin B3, single and multi header.
//! - [`jaeger`]: Jaeger `uber-trace-id` and `uberctx-*` baggage; [`baggage`]: W3C Baggage.
//! - [`sampler`]: always on/off, trace-id ratio, parent-based.
//! - [`span`]: the span model a filter fills in.
//! - [`otlp`]: OTLP/HTTP encoding, protobuf and JSON.
//! - [`zipkin`]: Zipkin v2 JSON.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod b3;
pub mod baggage;
pub mod ids;
pub mod jaeger;
pub mod otlp;
mod protobuf_check;
pub mod sampler;
pub mod span;
pub mod w3c;
pub mod zipkin;

pub use ids::{SpanId, TraceId};

/// A propagated span context: what one hop tells the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: TraceId,
    /// The span on the sending side (the receiver's parent).
    pub span_id: SpanId,
    /// The sender's sampling decision (`None`: deferred, e.g. B3 without one).
    pub sampled: Option<bool>,
    /// W3C Level 2 `random` flag: the trace id's right 7 bytes are random.
    pub random: bool,
    /// W3C `tracestate`, already validated, in order (`key=value` list members).
    pub tracestate: Vec<(String, String)>,
}
