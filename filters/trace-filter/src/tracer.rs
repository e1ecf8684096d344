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

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtrace_trace_core::span::{Attributes, Resource, Span, SpanKind, StatusCode, Value, ValueRef};
use wasmtrace_trace_core::{SpanContext, SpanId, TraceId, b3, jaeger, otlp, w3c, zipkin};

use crate::config::{ExportFormat, Format, TraceConfig};
use crate::handoff;
use crate::headers::{Headers, text};
use crate::naming;
use crate::spool::{self, Spool, SpoolHost};

/// The property a tagging filter sets (a JSON object of attribute names to values) for the trace
/// filter to add to the span.
pub const SPAN_ATTRIBUTES_PROPERTY: &str = "wasmtrace_span_attributes";
/// The OTLP/gRPC trace service.
const OTLP_TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// How often the root looks at the queue.
pub const TICK: Duration = Duration::from_millis(50);
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
}

/// The root side: configuration, the spool and its export.
#[derive(Default)]
pub struct Exporter {
    shared: Option<Rc<RefCell<Shared>>>,
    /// The batch being exported: the token of its callout and its items, kept to go back into
    /// the spool if the collector asks for a retry.
    in_flight: Option<(u32, Vec<Vec<u8>>)>,
    /// When this VM last sent a batch.
    last_flush: Option<SystemTime>,
    /// When this VM last looked into a spool its count said was empty (the count lags behind
    /// the other workers by a tick, and can be off after a VM died).
    last_probe: Option<SystemTime>,
    /// The last drain found the queue empty.
    drained: bool,
    /// Shutting down: how many more spans this VM drains before it reports done. Bounded, so an
    /// old generation does not drain forever a queue a new one (with the same configuration)
    /// keeps filling.
    finishing: Option<usize>,
}

impl Exporter {
    /// Parses the plugin configuration, opens the spool and starts the tick; the error is logged
    /// and refuses the configuration.
    pub fn configure(&mut self, host: &dyn RootHost, bytes: &[u8]) -> Result<(), String> {
        let refuse = |message: String| {
            let message = format!("trace filter configuration refused: {message}");
            host.log(Severity::Error, &message);
            message
        };
        let config = TraceConfig::parse(bytes).map_err(refuse)?;
        if config.exporter.format == ExportFormat::OtlpGrpc && !host.has_grpc() {
            return Err(refuse("`otlp_grpc` needs gRPC callouts, which this build of the filter has not: use the proxy-wasm module, or `otlp_proto`".into()));
        }
        let spool = Spool::open(host, bytes, config.exporter.max_queued_spans)
            .ok_or_else(|| refuse("the proxy has no shared queue for the spans".into()))?;
        let mut resource =
            Resource { attributes: vec![("service.name".into(), Value::from(config.service_name.as_str()))] };
        for (k, v) in &config.resource_attributes {
            resource.attributes.push((k.clone(), Value::from(v.as_str())));
        }
        resource.attributes.push(("telemetry.sdk.name".into(), "wasmtrace".into()));
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config: Rc::new(config),
            resource,
            spool,
            counters: Counters::define(host),
            scratch: Vec::new(),
        })));
        host.set_tick_period(TICK);
        Ok(())
    }

    /// A stream's tracer, once configured.
    pub fn stream(&self) -> Option<StreamTracer> {
        Some(StreamTracer { shared: self.shared.clone()?, span: None })
    }

    /// The tick: folds this VM's count into the spool's, and sends a batch when one is due.
    pub fn on_tick(&mut self, host: &dyn RootHost) {
        let Some(shared) = self.shared.clone() else { return };
        let now = host.now();
        let batch = {
            let mut shared = shared.borrow_mut();
            shared.spool.fold(host);
            // While shutting down, the drain runs from the export answers alone (a tick's
            // export would report `done` a second time).
            if self.in_flight.is_some() || self.finishing.is_some() {
                return;
            }
            let exporter = &shared.config.exporter;
            let queued = shared.spool.queued();
            let elapsed = |at: Option<SystemTime>| {
                at.is_none_or(|at| now.duration_since(at).unwrap_or_default() >= exporter.flush_interval)
            };
            let due = if queued > 0 { elapsed(self.last_flush) } else { elapsed(self.last_probe) };
            if queued < exporter.batch_size && !due {
                return;
            }
            if shared.spool.retry_at(host).is_some_and(|at| now_nanos(now) < at) {
                return;
            }
            exporter.batch_size
        };
        self.flush(host, now, batch);
    }

    /// An export's answer. Returns true when a shutdown flush has finished (the host's `done`).
    pub fn on_response(&mut self, host: &dyn RootHost, token: u32, response: &ExportResponse<'_>) -> bool {
        let Some((expected, items)) = self.in_flight.take() else { return false };
        if token != expected {
            self.in_flight = Some((expected, items));
            return false;
        }
        let Some(shared) = self.shared.clone() else { return false };
        let now = host.now();
        let status = response.status;
        let retryable = status.retryable();
        let sent = items.len();
        // Spans still waiting once this batch is in: the collector keeps up, so the next batch
        // goes at once rather than at the next tick (one batch a tick per VM would cap export
        // at a few thousand spans a second, and drop the rest).
        let mut backlog = false;
        let batch = {
            let mut shared = shared.borrow_mut();
            let counters = shared.counters;
            if status.accepted() {
                add(host, counters.exported, sent);
                // The last take filled its batch without finding the queue empty: there may be
                // more (the count would not say: other workers' spans are in it a tick late).
                // Unless a collector asked every VM of the spool to wait (a 429 to another).
                backlog = !self.drained && shared.spool.retry_at(host).is_none_or(|at| now_nanos(now) >= at);
            } else if retryable {
                // Back into the spool, outside this VM: whichever VM exports next (this one, a
                // worker's, the next generation's) sends them, once the collector's wait is over.
                let wait = response
                    .retry_after
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
                shared.spool.set_retry_at(host, now_nanos(now + wait));
                let kept = items.iter().filter(|item| shared.spool.push(host, item).is_ok()).count();
                add(host, counters.dropped, sent - kept);
                if self.finishing.is_some() {
                    // The collector asked to wait: the spans wait in the spool, not in this VM.
                    self.finishing = Some(0);
                }
            } else {
                host.log(Severity::Warn, &format!("span export failed with {status}; {sent} spans lost"));
                add(host, counters.failed, sent);
            }
            shared.config.exporter.batch_size
        };
        let Some(budget) = self.finishing else {
            if backlog {
                self.flush(host, now, batch);
            }
            return false;
        };
        let budget = budget.saturating_sub(sent);
        self.finishing = Some(budget);
        if budget > 0 && !self.drained {
            self.flush(host, now, batch.min(budget));
        }
        self.in_flight.is_none()
    }

    /// The VM is going: drain the spool. True when done now; false when an export is in flight
    /// (the host hears `done` from [`on_response`](Self::on_response)).
    pub fn on_shutdown(&mut self, host: &dyn RootHost) -> bool {
        let Some(shared) = self.shared.clone() else { return true };
        let (budget, batch) = {
            let mut shared = shared.borrow_mut();
            shared.spool.fold(host);
            // Slack for what the count has not seen yet (the other workers' last tick).
            let batch = shared.config.exporter.batch_size;
            (shared.spool.queued().saturating_add(batch), batch)
        };
        self.finishing = Some(budget);
        self.drained = false;
        if self.in_flight.is_none() {
            self.flush(host, host.now(), batch.min(budget));
        }
        self.in_flight.is_none()
    }

    /// Takes up to `limit` spans from the spool and sends them.
    fn flush(&mut self, host: &dyn RootHost, now: SystemTime, limit: usize) {
        let Some(shared) = self.shared.clone() else { return };
        let (body, items, config) = {
            let mut shared = shared.borrow_mut();
            let format = shared.config.exporter.format;
            let taken = shared.spool.take(host, limit, format);
            shared.spool.fold(host);
            self.last_probe = Some(now);
            self.drained = taken.empty;
            if taken.malformed > 0 {
                host.log(
                    Severity::Warn,
                    &format!("{} items in the span queue were not spans; dropped", taken.malformed),
                );
                add(host, shared.counters.dropped, taken.malformed);
            }
            if taken.items.is_empty() {
                return;
            }
            (spool::body(format, &shared.resource, &taken.items), taken.items, shared.config.clone())
        };
        let exporter = &config.exporter;
        let content_type = match exporter.format {
            ExportFormat::OtlpProto => otlp::PROTOBUF_CONTENT_TYPE,
            ExportFormat::OtlpJson => otlp::JSON_CONTENT_TYPE,
            ExportFormat::ZipkinJson => zipkin::CONTENT_TYPE,
            ExportFormat::OtlpGrpc => "application/grpc",
        };
        let headers = [
            (":method", "POST"),
            (":path", exporter.path.as_str()),
            (":authority", exporter.authority.as_str()),
            ("content-type", content_type),
        ];
        self.last_flush = Some(now);
        let sent = match exporter.format {
            ExportFormat::OtlpGrpc => {
                host.grpc_call(&exporter.grpc_service, OTLP_TRACE_SERVICE, "Export", &body, exporter.timeout)
            }
            _ => host.http_call(&exporter.cluster, &headers, &body, exporter.timeout),
        };
        match sent {
            Ok(token) => self.in_flight = Some((token, items)),
            Err(why) => {
                host.log(Severity::Warn, &format!("cannot export to cluster `{}`: {why}", exporter.cluster));
                add(host, shared.borrow().counters.failed, items.len());
            }
        }
    }
}

/// Room for a span's attributes: the dozen or so the tracer sets, and their text (keys and
/// values) for ordinary requests; more grows the buffers.
const ATTRIBUTES: usize = 24;
const ATTRIBUTE_TEXT: usize = 640;

/// A context extracted from the request, with the `tracestate` it carried (W3C only) as it will
/// be sent on.
struct Parent {
    context: SpanContext,
    tracestate: String,
}

/// The W3C context: exactly [`w3c::extract`], with the `tracestate` normalised straight into
/// the string that is sent on and recorded.
fn extract_w3c(headers: &Headers) -> Option<Parent> {
    let mut parents = headers.all("traceparent");
    let (trace_id, span_id, flags) = match (parents.next(), parents.next()) {
        (Some(only), None) => w3c::parse_traceparent(&[&text(only)])?,
        // None, or more than one: invalid.
        _ => return None,
    };
    let mut tracestate = String::new();
    // An invalid tracestate is dropped whole (left empty).
    w3c::normalize_tracestate(headers.all("tracestate").map(text), &mut tracestate);
    let context = SpanContext {
        trace_id,
        span_id,
        sampled: Some(flags & w3c::FLAG_SAMPLED != 0),
        random: flags & w3c::FLAG_RANDOM != 0,
        tracestate: Vec::new(),
    };
    Some(Parent { context, tracestate })
}

/// The first valid context among the configured formats.
fn extract(formats: &[Format], headers: &Headers) -> Option<Parent> {
    let one = |name: &str| headers.first_text(name);
    let context = |b3: b3::B3| match b3 {
        b3::B3::Context(context) => Some(Parent { context, tracestate: String::new() }),
        b3::B3::DecisionOnly(_) => None,
    };
    formats.iter().find_map(|format| match format {
        Format::W3c => extract_w3c(headers),
        Format::B3 => context(b3::parse_single(&one("b3")?)?),
        Format::B3multi => {
            let (trace, span) = (one("x-b3-traceid"), one("x-b3-spanid"));
            let (sampled, flags) = (one("x-b3-sampled"), one("x-b3-flags"));
            context(b3::parse_multi(trace.as_deref(), span.as_deref(), sampled.as_deref(), flags.as_deref())?)
        }
        Format::Jaeger => {
            jaeger::parse(&one("uber-trace-id")?).map(|context| Parent { context, tracestate: String::new() })
        }
    })
}

fn property_text(host: &dyn StreamHost, property: Property) -> Option<String> {
    host.property(property).and_then(|b| String::from_utf8(b).ok())
}

fn property_int(host: &dyn StreamHost, property: Property) -> Option<i64> {
    let bytes = host.property(property)?;
    let word: [u8; 8] = bytes.as_slice().try_into().ok()?;
    Some(i64::from_le_bytes(word))
}

/// The outgoing context, as [`StreamTracer::inject`] writes it.
struct Outgoing<'a> {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    random: bool,
    tracestate: &'a str,
    parent: Option<SpanId>,
}

/// One stream's span, from request headers to the stream's end.
pub struct StreamTracer {
    shared: Rc<RefCell<Shared>>,
    span: Option<Span>,
}

impl StreamTracer {
    /// Writes the configured propagation headers for `outgoing` (the new span's context).
    fn inject(host: &dyn StreamHost, config: &TraceConfig, outgoing: &Outgoing<'_>) {
        let Outgoing { trace_id, span_id, sampled, random, tracestate, parent } = outgoing;
        let (sampled, parent) = (*sampled, parent.as_ref());
        if config.strip_uninjected {
            for format in config.extract.iter().filter(|f| !config.inject.contains(f)) {
                for name in format.headers() {
                    host.set_request_header(name, None);
                }
            }
        }
        for format in &config.inject {
            match format {
                Format::W3c => {
                    host.set_request_header(
                        "traceparent",
                        Some(&w3c::traceparent(trace_id, span_id, sampled, *random)),
                    );
                    host.set_request_header("tracestate", Some(tracestate.as_bytes()).filter(|t| !t.is_empty()));
                }
                Format::B3 => {
                    host.set_request_header("b3", Some(b3::single(trace_id, span_id, sampled, parent).as_bytes()))
                }
                Format::Jaeger => host
                    .set_request_header("uber-trace-id", Some(jaeger::header(trace_id, span_id, sampled).as_bytes())),
                Format::B3multi => {
                    for name in Format::B3multi.headers() {
                        host.set_request_header(name, None);
                    }
                    // What `b3::format_multi` gives, formatted on the stack.
                    host.set_request_header("x-b3-traceid", Some(&trace_id.hex()));
                    host.set_request_header("x-b3-spanid", Some(&span_id.hex()));
                    host.set_request_header("x-b3-sampled", Some(if sampled { b"1" } else { b"0" }));
                    if let Some(parent) = parent {
                        host.set_request_header("x-b3-parentspanid", Some(&parent.hex()));
                    }
                }
            }
        }
    }

    /// CLIENT on an outbound listener, SERVER otherwise (`xds.listener_direction`: 1 inbound,
    /// 2 outbound, as Envoy and Istio set it), for configurations that leave `span_kind` out.
    fn listener_span_kind(host: &dyn StreamHost) -> SpanKind {
        match property_int(host, Property::ListenerDirection) {
            Some(2) => SpanKind::Client,
            _ => SpanKind::Server,
        }
    }

    /// Request headers: extract, sample, inject, start the span.
    pub fn on_request_headers(&mut self, host: &dyn StreamHost) {
        let shared = self.shared.borrow();
        let config = &*shared.config;
        let headers = host.request_headers();
        let parent = extract(&config.extract, &headers);
        let (trace_id, random) = match &parent {
            Some(p) => (p.context.trace_id, p.context.random),
            None => (TraceId::random(), true),
        };
        let sampled = config.sampler.should_sample(parent.as_ref().map(|p| &p.context), &trace_id);
        let span_id = SpanId::random();
        let parent_span = parent.as_ref().map(|p| p.context.span_id);
        let tracestate = parent.map(|p| p.tracestate).unwrap_or_default();
        let outgoing = Outgoing { trace_id, span_id, sampled, random, tracestate: &tracestate, parent: parent_span };
        Self::inject(host, config, &outgoing);
        if !sampled {
            return;
        }
        let header = |name: &str| headers.first_text(name);
        let method = header(":method");
        let method = method.as_deref().unwrap_or("GET");
        let full_path = header(":path");
        let full_path = full_path.as_deref().unwrap_or("/");
        let (path, query) = full_path.split_once('?').map_or((full_path, None), |(p, q)| (p, Some(q)));
        let mut span = Span {
            trace_id,
            span_id,
            parent_span_id: parent_span,
            parent_is_remote: parent_span.is_some(),
            trace_state: tracestate,
            // Named at the stream's end, when the attributes are complete.
            name: String::new(),
            kind: config.span_kind.unwrap_or_else(|| Self::listener_span_kind(host)),
            start_unix_nanos: now_nanos(host.now()),
            end_unix_nanos: 0,
            attributes: Attributes::with_capacity(ATTRIBUTES + config.attribute_count(), ATTRIBUTE_TEXT),
            status: StatusCode::Unset,
            status_message: String::new(),
        };
        // The span's own attributes first, each once: added without looking for them.
        span.attributes.push_new("http.request.method", method);
        span.attributes.push_new("url.path", path);
        span.attributes.push_new("url.scheme", header(":scheme").as_deref().unwrap_or("http"));
        if config.record_query
            && let Some(query) = query
        {
            span.attributes.push_new("url.query", query);
        }
        let client = span.kind == SpanKind::Client;
        let scheme = header(":scheme");
        let scheme = scheme.as_deref().unwrap_or("http");
        if let Some(authority) = header(":authority") {
            let (host, port) = naming::split_authority(&authority);
            span.attributes.push_new("server.address", host);
            // A CLIENT span must name the port it calls (the scheme's when the authority has
            // none); a SERVER span records it only when the client sent one.
            let default_port = if scheme == "https" { 443 } else { 80 };
            match (port, client) {
                (Some(port), _) => span.attributes.push_new("server.port", i64::from(port)),
                (None, true) => span.attributes.push_new("server.port", default_port),
                (None, false) => {}
            }
            if client {
                // `url.full` carries the query only where the configuration records queries.
                let target = if config.record_query { full_path } else { path };
                let mut full = String::with_capacity(scheme.len() + 3 + authority.len() + target.len());
                full.push_str(scheme);
                full.push_str("://");
                full.push_str(&authority);
                full.push_str(target);
                span.attributes.push_new("url.full", &full);
            }
        }
        if let Some(agent) = header("user-agent") {
            span.attributes.push_new("user_agent.original", &agent);
        }
        if let Some(protocol) = property_text(host, Property::RequestProtocol)
            && let Some(version) = protocol.strip_prefix("HTTP/").filter(|v| !v.is_empty())
        {
            span.attributes.push_new("network.protocol.version", version);
        }
        if let Some(id) = header("x-request-id") {
            span.attributes.push_new("http.request.header.x-request-id", &id);
        }
        // A SERVER span's peer is the client; a CLIENT span's is the upstream, known once the
        // request went out (see `on_stream_done`): the local application is not its peer.
        if !client && let Some(source) = property_text(host, Property::SourceAddress) {
            let (ip, port) = naming::split_authority(&source);
            span.attributes.push_new("client.address", ip);
            span.attributes.push_new("network.peer.address", ip);
            if let Some(port) = port {
                span.attributes.push_new("network.peer.port", i64::from(port));
            }
        }
        for (name, attribute) in &config.request_header_attributes {
            if let Some(value) = header(name) {
                span.set(attribute, &value);
            }
        }
        for (key, value) in &config.static_attributes {
            span.set(key, value);
        }
        drop(shared);
        self.span = Some(span);
    }

    /// Response headers: the configured response-header attributes.
    pub fn on_response_headers(&mut self, host: &dyn StreamHost) {
        let Some(span) = self.span.as_mut() else { return };
        let shared = self.shared.borrow();
        for (name, attribute) in &shared.config.response_header_attributes {
            if let Some(value) = host.response_header(name) {
                // Recorded as it came, U+FFFD for bytes that are not UTF-8 (see [`Headers`]).
                span.set(attribute, &text(&value));
            }
        }
    }

    /// The span's name, from its attributes as they ended up (a tagging filter may have set
    /// some): `{method} {server.address}` for a client, `{method} {path template}` otherwise.
    fn name(span: &Span) -> String {
        let method = match span.get("http.request.method") {
            Some(ValueRef::String(m)) => m,
            _ => "GET",
        };
        let target = match span.kind {
            SpanKind::Client => match span.get("server.address") {
                Some(ValueRef::String(host)) => Some(host),
                _ => None,
            },
            _ => Some(match span.get("url.path") {
                Some(ValueRef::String(p)) => p,
                _ => "/",
            }),
        };
        let mut name = String::with_capacity(method.len() + 1 + target.map_or(0, str::len));
        name.push_str(method);
        match (span.kind, target) {
            (SpanKind::Client, Some(host)) => {
                name.push(' ');
                name.push_str(host);
            }
            (SpanKind::Client, None) => {}
            (_, path) => {
                name.push(' ');
                naming::push_path_template(path.unwrap_or("/"), &mut name);
            }
        }
        name
    }

    /// The stream's end: status, sizes, route, hand-off attributes, name; then the queue.
    pub fn on_stream_done(&mut self, host: &dyn StreamHost) {
        let Some(mut span) = self.span.take() else { return };
        span.end_unix_nanos = now_nanos(host.now());
        let code = property_int(host, Property::ResponseCode).filter(|c| *c > 0);
        let route = property_text(host, Property::RouteName).filter(|r| !r.is_empty());
        if let Some(size) = property_int(host, Property::RequestSize).filter(|s| *s > 0) {
            span.set("http.request.body.size", size);
        }
        if let Some(size) = property_int(host, Property::ResponseSize).filter(|s| *s > 0) {
            span.set("http.response.body.size", size);
        }
        if span.kind == SpanKind::Client
            && let Some(upstream) = property_text(host, Property::UpstreamAddress)
        {
            let (ip, port) = naming::split_authority(&upstream);
            span.set("network.peer.address", ip);
            if let Some(port) = port {
                span.set("network.peer.port", i64::from(port));
            }
        }
        if let Some(tags) = host.property(Property::SpanAttributes) {
            handoff::apply(&tags, &mut span);
        }
        span.name = Self::name(&span);
        if let Some(route) = route {
            span.set("wasmtrace.route_name", &route);
        }
        match code {
            Some(code) => {
                span.set("http.response.status_code", code);
                let error_from = if span.kind == SpanKind::Client { 400 } else { 500 };
                if code >= error_from {
                    span.status = StatusCode::Error;
                    span.set("error.type", code.to_string().as_str());
                }
            }
            None => {
                span.status = StatusCode::Error;
                span.status_message = "no response".into();
                span.set("error.type", "no_response");
            }
        }
        let mut shared = self.shared.borrow_mut();
        let Shared { config, resource, spool, counters, scratch } = &mut *shared;
        spool::encode_into(config.exporter.format, resource, &span, scratch);
        // Full (the collector is slow or down) or gone (the host lost the queue): either way
        // the span is dropped and counted, never held in this VM.
        if spool.push(host, scratch).is_err()
            && let Some(dropped) = counters.dropped
        {
            host.increment(dropped, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_property_paths_are_the_segments_joined_by_nul() {
        use Property::*;
        for property in
            [SourceAddress, ListenerDirection, ResponseCode, RouteName, RequestSize, ResponseSize, SpanAttributes]
        {
            assert_eq!(property.serialized(), property.path().join("\0").as_bytes(), "{property:?}");
        }
    }
}
