//! The trace filter's behaviour, independent of how the proxy is reached: extract (or start) a
//! trace, sample, rewrite the propagation headers so the next hop is the span's child, tag the
//! span with OpenTelemetry HTTP semantic conventions, end it at the stream's end, and export
//! batches over HTTP from the root.
//!
//! Export never delays a request, and a VM that fails loses no span but those it was working on:
//! a finished span is encoded and handed to the host's shared queue ([`crate::spool`]), outside
//! the VM's memory; a root context's tick (any worker's) takes a batch when it is full or old
//! enough and sends it. A collector that is down or slow only fills the queue, and what does not
//! fit is dropped and counted.
//!
//! Header values are bytes (HTTP allows obs-text, bytes ≥ 0x80, in them), never assumed to be
//! UTF-8: see [`crate::headers`].
//!
//! A request's work is done without allocating what it need not: headers are read in place from
//! the buffer the host filled, ids and propagation headers are formatted on the stack, the
//! attributes go into one pre-sized buffer per span ([`Attributes`]), the span is encoded straight
//! into a buffer the VM reuses, and properties are read by paths serialised once.
//!
//! Both front doors drive this: the proxy-wasm filter (`proxy_wasm_filter`, what Envoy loads) and
//! the `wasmtrace:filter` component (`component_filter`). Each implements [`RootHost`] and
//! [`StreamHost`] over its own calls, so the spans are the same whichever form runs.
//!
//! This module holds what both sides share (the host traits, the properties read, the VM's
//! shared state); [`exporter`] is the root side, [`stream`] a request's span.

mod exporter;
mod stream;

pub use exporter::Exporter;
pub use stream::StreamTracer;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtrace_trace_core::span::{Attributes, Resource, Span, SpanKind, StatusCode, Value, ValueRef};
use wasmtrace_trace_core::{SpanContext, SpanId, TraceId, b3, jaeger, otlp, w3c, zipkin};

use crate::config::{ExportFormat, Format, TraceConfig};
use crate::handoff;
use crate::headers::{Headers, Known, text};
use crate::naming;
use crate::spool::{self, Spool, SpoolHost};
use wasmtrace_span::handoff as contract;

/// The property a tagging filter sets (a JSON object of attribute names to values) for the trace
/// filter to add to the span (the hand-off contract is `wasmtrace_span::handoff`).
pub const SPAN_ATTRIBUTES_PROPERTY: &str = wasmtrace_span::handoff::ATTRIBUTES;
/// The OTLP/gRPC trace service.
const OTLP_TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// How often the root looks at the queue.
pub const TICK: Duration = Duration::from_millis(50);
/// Least time between two looks at the spool prompted by the host's "queue ready".
const READY_INTERVAL: Duration = Duration::from_millis(1);
/// Wait before retrying a batch the collector could not take, unless it said `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Log severities the tracer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something went wrong but the filter goes on.
    Warn,
    /// The filter cannot do its job (e.g. a refused configuration).
    Error,
}

/// What the root side needs from the proxy.
pub trait RootHost: SpoolHost {
    /// Wall-clock time.
    fn now(&self) -> SystemTime;
    /// A log line.
    fn log(&self, severity: Severity, message: &str);
    /// Defines a counter; `None` if the host refuses.
    fn define_counter(&self, name: &str) -> Option<u32>;
    /// Adds to a counter.
    fn increment(&self, counter: u32, delta: i64);
    /// Starts an HTTP request to `cluster`; the answer comes to [`Exporter::on_response`] with
    /// the returned token.
    fn http_call(&self, cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout: Duration)
    -> Result<u32, String>;
    /// Starts a unary gRPC call (`service` as `proxy_grpc_call` takes it: a cluster name or a
    /// serialized `GrpcService`); the answer comes to [`Exporter::on_response`] with the token.
    fn grpc_call(
        &self,
        service: &[u8],
        service_name: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, String>;
    /// Whether [`grpc_call`](Self::grpc_call) can work in this build (the component world has no
    /// gRPC callouts): an `otlp_grpc` configuration is refused up front where it cannot.
    fn has_grpc(&self) -> bool {
        true
    }
    /// Arms the tick.
    fn set_tick_period(&self, period: Duration);
    /// A property, in proxy-wasm's encoding (the root reads only the plugin's own).
    fn property(&self, property: Property) -> Option<Vec<u8>>;
}

/// The properties a stream reads, each at most once per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// `source.address`: the client's `ip:port`.
    SourceAddress,
    /// `xds.listener_direction`: 1 inbound, 2 outbound (only without a configured `span_kind`).
    ListenerDirection,
    /// `response.code`.
    ResponseCode,
    /// `xds.route_name`.
    RouteName,
    /// `request.size`: request body bytes.
    RequestSize,
    /// `response.size`: response body bytes.
    ResponseSize,
    /// The tagging filters' hand-off ([`SPAN_ATTRIBUTES_PROPERTY`]).
    SpanAttributes,
    /// `upstream.address`: the upstream host's `ip:port` (the peer of a CLIENT span).
    UpstreamAddress,
    /// `request.protocol`: `HTTP/1.1`, `HTTP/2`...
    RequestProtocol,
    /// `plugin_generation`: the hot-swap generation this VM runs (a wasmtrace property).
    PluginGeneration,
    /// `plugin_sha256`: the sha256 of this VM's module (a wasmtrace property).
    PluginSha256,
    /// A filter's sampling hint (`wasmtrace_span::handoff::SAMPLING`).
    SamplingHint,
    /// The callouts filters made for the request (`wasmtrace_span::handoff::CALLOUT_SPANS`).
    CalloutSpans,
    /// Events filters added to the request's span (`wasmtrace_span::handoff::EVENTS`).
    SpanEvents,
}

impl Property {
    /// The path's segments.
    pub fn path(self) -> &'static [&'static str] {
        match self {
            Self::SourceAddress => &["source", "address"],
            Self::ListenerDirection => &["xds", "listener_direction"],
            Self::ResponseCode => &["response", "code"],
            Self::RouteName => &["xds", "route_name"],
            Self::RequestSize => &["request", "size"],
            Self::ResponseSize => &["response", "size"],
            Self::SpanAttributes => &[SPAN_ATTRIBUTES_PROPERTY],
            Self::UpstreamAddress => &["upstream", "address"],
            Self::RequestProtocol => &["request", "protocol"],
            Self::PluginGeneration => &["plugin_generation"],
            Self::PluginSha256 => &["plugin_sha256"],
            Self::SamplingHint => &[wasmtrace_span::handoff::SAMPLING],
            Self::CalloutSpans => &[wasmtrace_span::handoff::CALLOUT_SPANS],
            Self::SpanEvents => &[wasmtrace_span::handoff::EVENTS],
        }
    }

    /// The path in proxy-wasm's serialisation (segments joined by NUL), made at compile time so
    /// a read serialises nothing.
    pub fn serialized(self) -> &'static [u8] {
        match self {
            Self::SourceAddress => b"source\0address",
            Self::ListenerDirection => b"xds\0listener_direction",
            Self::ResponseCode => b"response\0code",
            Self::RouteName => b"xds\0route_name",
            Self::RequestSize => b"request\0size",
            Self::ResponseSize => b"response\0size",
            Self::SpanAttributes => b"wasmtrace_span_attributes",
            Self::UpstreamAddress => b"upstream\0address",
            Self::RequestProtocol => b"request\0protocol",
            Self::PluginGeneration => b"plugin_generation",
            Self::PluginSha256 => b"plugin_sha256",
            Self::SamplingHint => b"wasmtrace_sampling",
            Self::CalloutSpans => b"wasmtrace_callout_spans",
            Self::SpanEvents => b"wasmtrace_span_events",
        }
    }
}

/// What a stream needs from the proxy (during that stream's callbacks).
pub trait StreamHost: SpoolHost {
    /// Wall-clock time.
    fn now(&self) -> SystemTime;
    /// The request headers, values as the client sent them.
    fn request_headers(&self) -> Headers;
    /// Sets (or with `None` removes) a request header.
    fn set_request_header(&self, name: &str, value: Option<&[u8]>);
    /// A response header's value.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// A property, in proxy-wasm's encoding.
    fn property(&self, property: Property) -> Option<Vec<u8>>;
    /// Several properties, answered in the order asked: one host call where the host has one
    /// (the component world's `get-properties`), else one call each.
    fn properties(&self, which: &'static [Property]) -> Vec<Option<Vec<u8>>> {
        which.iter().map(|property| self.property(*property)).collect()
    }
    /// Sets the stream's filter state `key` (what other filters read with `proxy_get_property`).
    fn set_filter_state(&self, key: &str, value: &[u8]);
    /// Adds to a counter.
    fn increment(&self, counter: u32, delta: i64);
}

/// How an export was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportStatus {
    /// No answer at all (no connection, reset, timeout of an HTTP callout).
    NoAnswer,
    /// An OTLP/HTTP answer's status.
    Http(u16),
    /// An OTLP/gRPC call's status code.
    Grpc(u32),
}

impl ExportStatus {
    /// The collector took the spans.
    fn accepted(self) -> bool {
        match self {
            Self::Http(status) => (200..300).contains(&status),
            Self::Grpc(code) => code == 0,
            Self::NoAnswer => false,
        }
    }

    /// Worth sending again later, as OTLP says: HTTP 429/502/503/504, and the gRPC codes
    /// CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and
    /// DATA_LOSS (RESOURCE_EXHAUSTED only with a retry hint in the spec; taken as retryable here,
    /// like HTTP's 429, since a collector says it when it is overloaded).
    fn retryable(self) -> bool {
        match self {
            Self::NoAnswer => true,
            Self::Http(status) => matches!(status, 429 | 502 | 503 | 504),
            Self::Grpc(code) => matches!(code, 1 | 4 | 8 | 10 | 11 | 14 | 15),
        }
    }
}

impl std::fmt::Display for ExportStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAnswer => f.write_str("no answer"),
            Self::Http(status) => write!(f, "status {status}"),
            Self::Grpc(code) => write!(f, "gRPC status {code}"),
        }
    }
}

/// A callout's answer as the exporter needs it.
pub struct ExportResponse<'a> {
    /// How it was answered.
    pub status: ExportStatus,
    /// The `Retry-After` header (OTLP/HTTP).
    pub retry_after: Option<&'a str>,
}

fn now_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Filter-defined metrics.
#[derive(Default, Clone, Copy)]
struct Counters {
    exported: Option<u32>,
    dropped: Option<u32>,
    failed: Option<u32>,
}

impl Counters {
    fn define(host: &dyn RootHost) -> Self {
        Self {
            exported: host.define_counter("wasmtrace_trace_spans_exported_total"),
            dropped: host.define_counter("wasmtrace_trace_spans_dropped_total"),
            failed: host.define_counter("wasmtrace_trace_spans_failed_total"),
        }
    }
}

fn add(host: &dyn RootHost, counter: Option<u32>, n: usize) {
    if let (Some(id), Ok(n)) = (counter, i64::try_from(n))
        && n > 0
    {
        host.increment(id, n);
    }
}

/// State shared by the root and every stream of this VM.
struct Shared {
    config: Rc<TraceConfig>,
    resource: Resource,
    spool: Spool,
    counters: Counters,
    /// The encoding of the span being queued: the host copies it, so one buffer serves every
    /// span of the VM.
    scratch: Vec<u8>,
    /// Which generation of the filter, and which module, this VM runs: read once, at
    /// configuration (a swap starts new VMs), and recorded on every span.
    provenance: Provenance,
}

/// The filter's own provenance, as the host tells it (nothing in Envoy).
#[derive(Default)]
struct Provenance {
    generation: Option<i64>,
    sha256: Option<String>,
}

impl Provenance {
    /// The attribute recording the generation.
    const GENERATION: &'static str = "wasmtrace.filter.generation";
    /// The attribute recording the module's sha256.
    const SHA256: &'static str = "wasmtrace.filter.sha256";

    fn read(host: &dyn RootHost) -> Self {
        let generation = host
            .property(Property::PluginGeneration)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .and_then(|word| i64::try_from(u64::from_le_bytes(word)).ok());
        // A sha256 is 64 hex digits; anything else is not recorded.
        let sha256 = host
            .property(Property::PluginSha256)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        Self { generation, sha256 }
    }

    fn record(&self, span: &mut Span) {
        if let Some(generation) = self.generation {
            span.set(Self::GENERATION, generation);
        }
        if let Some(sha256) = &self.sha256 {
            span.set(Self::SHA256, sha256.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_property_paths_are_the_segments_joined_by_nul() {
        use Property::*;
        for property in [
            SourceAddress,
            ListenerDirection,
            ResponseCode,
            RouteName,
            RequestSize,
            ResponseSize,
            SpanAttributes,
            UpstreamAddress,
            RequestProtocol,
            PluginGeneration,
            PluginSha256,
            SamplingHint,
            CalloutSpans,
            SpanEvents,
        ] {
            assert_eq!(property.serialized(), property.path().join("\0").as_bytes(), "{property:?}");
        }
    }
}
