//! The hand-off between filters and the trace filter, version 1: filter-state keys (property
//! paths of one segment, which Envoy stores as `wasm.<key>`) and what their values hold. This is
//! the contract; the trace filter reads and writes exactly these. A change that is not backward
//! compatible gets new keys and a new [`VERSION`].
//!
//! | key | written by | read by | value |
//! |---|---|---|---|
//! | [`ATTRIBUTES`] | any filter before the trace filter ends the span (tagging filters) | the trace filter, at the stream's end | a JSON object of attribute names to strings, booleans or numbers; names under `wasmtrace.filter.` are ignored |
//! | [`EVENTS`] | any filter before the trace filter ends the span | the trace filter, at the stream's end | a JSON array of `{"name", "time_unix_nano", "attributes": {...}}`, at most [`MAX_EVENTS`] |
//! | [`SAMPLING`] | a filter before the trace filter | the trace filter, in its request headers | `sample` or `drop` |
//! | [`TRACE_CONTEXT`] | the trace filter, in its request headers | any filter after that | the request span's context as a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) |
//! | [`CALLOUT_SPANS`] | a filter whose callouts finished | the trace filter, at the stream's end | a JSON array of `{"span_id": "<16 hex>", "name", "start_unix_nano", "end_unix_nano", "status_code" (absent: no answer), "attributes": {...}}`, each a CLIENT span, child of the request's span |

/// The version of this contract.
pub const VERSION: u32 = 1;
/// Attributes for the request's span.
pub const ATTRIBUTES: &str = "wasmtrace_span_attributes";
/// Events for the request's span.
pub const EVENTS: &str = "wasmtrace_span_events";
/// Most events one request's span records (more are not recorded).
pub const MAX_EVENTS: usize = 32;
/// A sampling hint.
pub const SAMPLING: &str = "wasmtrace_sampling";
/// The trace context the trace filter chose.
pub const TRACE_CONTEXT: &str = "wasmtrace_trace_context";
/// The callouts a filter made for the request, finished.
pub const CALLOUT_SPANS: &str = "wasmtrace_callout_spans";
/// Most callout spans one request records (more are not recorded).
pub const MAX_CALLOUT_SPANS: usize = 32;
/// [`SAMPLING`]'s value to trace the request.
pub const SAMPLE: &[u8] = b"sample";
/// [`SAMPLING`]'s value not to trace it.
pub const DROP: &[u8] = b"drop";
