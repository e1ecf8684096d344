//! The trace filter's behaviour, independent of how the proxy is reached: extract (or start) a
//! trace, sample, rewrite the propagation headers so the next hop is the span's child, tag the
//! span with OpenTelemetry HTTP semantic conventions, end it at the stream's end, and export
//! batches over HTTP from the root.
//!
//! Export never delays a request: spans go to a bounded queue; the tick sends a batch when it is
//! full or old enough; a collector that is down or slow only fills the queue, and what does not
//! fit is dropped and counted.
//!
//! Both front doors drive this: the proxy-wasm filter (`proxy_wasm_filter`, what Envoy loads) and
//! the `wasmtrace:filter` component (`component_filter`). Each implements [`RootHost`] and
//! [`StreamHost`] over its own calls, so the spans are the same whichever form runs.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtrace_trace_core::span::{Resource, Span, SpanKind, StatusCode, Value};
use wasmtrace_trace_core::{SpanContext, SpanId, TraceId, b3, jaeger, otlp, w3c, zipkin};

use crate::config::{ExportFormat, Format, TraceConfig};
use crate::naming;

/// The property a tagging filter sets (a JSON object of attribute names to values) for the trace
/// filter to add to the span.
pub const SPAN_ATTRIBUTES_PROPERTY: &str = "wasmtrace_span_attributes";
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
pub trait RootHost {
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
    /// Arms the tick.
    fn set_tick_period(&self, period: Duration);
}

/// What a stream needs from the proxy (during that stream's callbacks).
pub trait StreamHost {
    /// Wall-clock time.
    fn now(&self) -> SystemTime;
    /// The request headers.
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Sets (or with `None` removes) a request header.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    /// A response header.
    fn response_header(&self, name: &str) -> Option<String>;
    /// A property by path, in proxy-wasm's encoding.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Adds to a counter.
    fn increment(&self, counter: u32, delta: i64);
}

/// A callout's answer as the exporter needs it.
pub struct ExportResponse<'a> {
    /// The HTTP status (`None`: no response at all).
    pub status: Option<u16>,
    /// The `Retry-After` header.
    pub retry_after: Option<&'a str>,
}

fn now_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
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
    queue: VecDeque<Span>,
    counters: Counters,
}

/// The root side: configuration, the span queue and its export.
#[derive(Default)]
pub struct Exporter {
    shared: Option<Rc<RefCell<Shared>>>,
    in_flight: Option<(u32, Vec<Span>)>,
    last_flush: Option<SystemTime>,
    retry_at: Option<SystemTime>,
    finishing: bool,
}

impl Exporter {
    /// Parses the plugin configuration and starts the tick; the error is logged and refuses it.
    pub fn configure(&mut self, host: &dyn RootHost, bytes: &[u8]) -> Result<(), String> {
        let config = TraceConfig::parse(bytes).map_err(|e| {
            let message = format!("trace filter configuration refused: {e}");
            host.log(Severity::Error, &message);
            message
        })?;
        let mut resource =
            Resource { attributes: vec![("service.name".into(), Value::from(config.service_name.as_str()))] };
        for (k, v) in &config.resource_attributes {
            resource.attributes.push((k.clone(), Value::from(v.as_str())));
        }
        resource.attributes.push(("telemetry.sdk.name".into(), "wasmtrace".into()));
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config: Rc::new(config),
            resource,
            queue: VecDeque::new(),
            counters: Counters::define(host),
        })));
        host.set_tick_period(TICK);
        Ok(())
    }

    /// A stream's tracer, once configured.
    pub fn stream(&self) -> Option<StreamTracer> {
        Some(StreamTracer { shared: self.shared.clone()?, span: None })
    }

    /// The tick: sends a batch when one is due.
    pub fn on_tick(&mut self, host: &dyn RootHost) {
        let now = host.now();
        if self.in_flight.is_some() || self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        self.retry_at = None;
        let Some(shared) = &self.shared else { return };
        let (queued, batch, interval) = {
            let shared = shared.borrow();
            (shared.queue.len(), shared.config.exporter.batch_size, shared.config.exporter.flush_interval)
        };
        let due = self.last_flush.is_none_or(|last| now.duration_since(last).unwrap_or_default() >= interval);
        if queued > 0 && (queued >= batch || due) {
            self.flush(host, now);
        }
    }

    /// An export's answer. Returns true when a shutdown flush has finished (the host's `done`).
    pub fn on_response(&mut self, host: &dyn RootHost, token: u32, response: &ExportResponse<'_>) -> bool {
        let Some((expected, spans)) = self.in_flight.take() else { return false };
        if token != expected {
            self.in_flight = Some((expected, spans));
            return false;
        }
        let Some(shared) = self.shared.clone() else { return false };
        let counters = shared.borrow().counters;
        let now = host.now();
        let status = response.status.unwrap_or(0);
        let retryable = response.status.is_none() || matches!(status, 429 | 502 | 503 | 504);
        if (200..300).contains(&status) {
            add(host, counters.exported, spans.len());
        } else if retryable && !self.finishing {
            let wait = response
                .retry_after
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
            self.retry_at = Some(now + wait);
            let mut shared = shared.borrow_mut();
            for span in spans.into_iter().rev() {
                if shared.queue.len() >= shared.config.exporter.max_queued_spans {
                    add(host, counters.dropped, 1);
                } else {
                    shared.queue.push_front(span);
                }
            }
        } else {
            host.log(Severity::Warn, &format!("span export failed with status {status}; {} spans lost", spans.len()));
            add(host, counters.failed, spans.len());
        }
        if self.finishing {
            self.flush(host, now);
            return self.in_flight.is_none();
        }
        false
    }

    /// The VM is going: flush what is queued. True when done now; false when an export is in
    /// flight (the host hears `done` from [`on_response`](Self::on_response)).
    pub fn on_shutdown(&mut self, host: &dyn RootHost) -> bool {
        self.finishing = true;
        if self.in_flight.is_none() {
            self.flush(host, host.now());
        }
        self.in_flight.is_none()
    }

    fn flush(&mut self, host: &dyn RootHost, now: SystemTime) {
        let Some(shared) = self.shared.clone() else { return };
        let (body, spans, config) = {
            let mut shared = shared.borrow_mut();
            if shared.queue.is_empty() {
                return;
            }
            let n = shared.queue.len().min(shared.config.exporter.batch_size);
            let spans: Vec<Span> = shared.queue.drain(..n).collect();
            let body = match shared.config.exporter.format {
                ExportFormat::OtlpProto => otlp::encode_protobuf(&shared.resource, &spans),
                ExportFormat::OtlpJson => otlp::encode_json(&shared.resource, &spans),
                ExportFormat::ZipkinJson => zipkin::encode_json(&shared.resource, &spans),
            };
            (body, spans, shared.config.clone())
        };
        let exporter = &config.exporter;
        let content_type = match exporter.format {
            ExportFormat::OtlpProto => otlp::PROTOBUF_CONTENT_TYPE,
            ExportFormat::OtlpJson => otlp::JSON_CONTENT_TYPE,
            ExportFormat::ZipkinJson => zipkin::CONTENT_TYPE,
        };
        let headers = [
            (":method", "POST"),
            (":path", exporter.path.as_str()),
            (":authority", exporter.authority.as_str()),
            ("content-type", content_type),
        ];
        self.last_flush = Some(now);
        match host.http_call(&exporter.cluster, &headers, &body, exporter.timeout) {
            Ok(token) => self.in_flight = Some((token, spans)),
            Err(why) => {
                host.log(Severity::Warn, &format!("cannot export to cluster `{}`: {why}", exporter.cluster));
                add(host, shared.borrow().counters.failed, spans.len());
            }
        }
    }
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

/// The first valid context among the configured formats.
fn extract(formats: &[Format], headers: &[(String, String)]) -> Option<SpanContext> {
    let one = |name: &str| values(headers, name).first().copied();
    formats.iter().find_map(|format| match format {
        Format::W3c => w3c::extract(&values(headers, "traceparent"), &values(headers, "tracestate")),
        Format::B3 => match b3::parse_single(one("b3")?)? {
            b3::B3::Context(c) => Some(c),
            b3::B3::DecisionOnly(_) => None,
        },
        Format::B3multi => {
            match b3::parse_multi(one("x-b3-traceid"), one("x-b3-spanid"), one("x-b3-sampled"), one("x-b3-flags"))? {
                b3::B3::Context(c) => Some(c),
                b3::B3::DecisionOnly(_) => None,
            }
        }
        Format::Jaeger => jaeger::parse(one("uber-trace-id")?),
    })
}

fn property_text(host: &dyn StreamHost, path: &[&str]) -> Option<String> {
    host.property(path).and_then(|b| String::from_utf8(b).ok())
}

fn property_int(host: &dyn StreamHost, path: &[&str]) -> Option<i64> {
    let bytes = host.property(path)?;
    let word: [u8; 8] = bytes.as_slice().try_into().ok()?;
    Some(i64::from_le_bytes(word))
}

/// One stream's span, from request headers to the stream's end.
pub struct StreamTracer {
    shared: Rc<RefCell<Shared>>,
    span: Option<Span>,
}

impl StreamTracer {
    /// Writes the configured propagation headers for `outgoing` (the new span's context).
    fn inject(host: &dyn StreamHost, config: &TraceConfig, outgoing: &SpanContext, parent: Option<&SpanId>) {
        let (trace_id, span_id, tracestate) = (&outgoing.trace_id, &outgoing.span_id, &outgoing.tracestate);
        let (sampled, random) = (outgoing.sampled == Some(true), outgoing.random);
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
                        Some(&w3c::format_traceparent(trace_id, span_id, sampled, random)),
                    );
                    host.set_request_header("tracestate", w3c::format_tracestate(tracestate).as_deref());
                }
                Format::B3 => {
                    host.set_request_header("b3", Some(&b3::format_single(trace_id, span_id, sampled, parent)))
                }
                Format::Jaeger => {
                    host.set_request_header("uber-trace-id", Some(&jaeger::format(trace_id, span_id, sampled)))
                }
                Format::B3multi => {
                    for name in Format::B3multi.headers() {
                        host.set_request_header(name, None);
                    }
                    for (name, value) in b3::format_multi(trace_id, span_id, sampled, parent) {
                        host.set_request_header(name, Some(&value));
                    }
                }
            }
        }
    }

    /// CLIENT on an outbound listener, SERVER otherwise (`xds.listener_direction`: 1 inbound,
    /// 2 outbound, as Envoy and Istio set it), for configurations that leave `span_kind` out.
    fn listener_span_kind(host: &dyn StreamHost) -> SpanKind {
        match property_int(host, &["xds", "listener_direction"]) {
            Some(2) => SpanKind::Client,
            _ => SpanKind::Server,
        }
    }

    /// Request headers: extract, sample, inject, start the span.
    pub fn on_request_headers(&mut self, host: &dyn StreamHost) {
        let config = self.shared.borrow().config.clone();
        let headers = host.request_headers();
        let parent = extract(&config.extract, &headers);
        let (trace_id, random) = match &parent {
            Some(p) => (p.trace_id, p.random),
            None => (TraceId::random(), true),
        };
        let sampled = config.sampler.should_sample(parent.as_ref(), &trace_id);
        let span_id = SpanId::random();
        let tracestate = parent.as_ref().map(|p| p.tracestate.clone()).unwrap_or_default();
        let parent_span = parent.as_ref().map(|p| p.span_id);
        let outgoing =
            SpanContext { trace_id, span_id, sampled: Some(sampled), random, tracestate: tracestate.clone() };
        Self::inject(host, &config, &outgoing, parent_span.as_ref());
        if !sampled {
            return;
        }
        let header = |name: &str| values(&headers, name).first().map(|v| (*v).to_owned());
        let method = header(":method").unwrap_or_else(|| "GET".into());
        let full_path = header(":path").unwrap_or_else(|| "/".into());
        let (path, query) = full_path.split_once('?').map_or((full_path.as_str(), None), |(p, q)| (p, Some(q)));
        let mut span = Span {
            trace_id,
            span_id,
            parent_span_id: parent_span,
            parent_is_remote: parent.is_some(),
            trace_state: w3c::format_tracestate(&tracestate).unwrap_or_default(),
            name: method.clone(),
            kind: config.span_kind.unwrap_or_else(|| Self::listener_span_kind(host)),
            start_unix_nanos: now_nanos(host.now()),
            end_unix_nanos: 0,
            attributes: Vec::new(),
            status: StatusCode::Unset,
            status_message: String::new(),
        };
        span.set("http.request.method", method.as_str());
        span.set("url.path", path);
        span.set("url.scheme", header(":scheme").unwrap_or_else(|| "http".into()));
        if config.record_query
            && let Some(query) = query
        {
            span.set("url.query", query);
        }
        if let Some(authority) = header(":authority") {
            let (host, port) = naming::split_authority(&authority);
            span.set("server.address", host);
            if let Some(port) = port {
                span.set("server.port", i64::from(port));
            }
        }
        if let Some(agent) = header("user-agent") {
            span.set("user_agent.original", agent);
        }
        if let Some(id) = header("x-request-id") {
            span.set("http.request.header.x-request-id", id);
        }
        if let Some(source) = property_text(host, &["source", "address"]) {
            let (ip, port) = naming::split_authority(&source);
            span.set("client.address", ip);
            span.set("network.peer.address", ip);
            if let Some(port) = port {
                span.set("network.peer.port", i64::from(port));
            }
        }
        for (name, attribute) in &config.request_header_attributes {
            if let Some(value) = header(name) {
                span.set(attribute, value);
            }
        }
        for (key, value) in &config.static_attributes {
            span.set(key, value.as_str());
        }
        self.span = Some(span);
    }

    /// Response headers: the configured response-header attributes.
    pub fn on_response_headers(&mut self, host: &dyn StreamHost) {
        if self.span.is_none() {
            return;
        }
        let config = self.shared.borrow().config.clone();
        let mut attributes = Vec::new();
        for (name, attribute) in &config.response_header_attributes {
            if let Some(value) = host.response_header(name) {
                attributes.push((attribute.clone(), value));
            }
        }
        if let Some(span) = self.span.as_mut() {
            for (key, value) in attributes {
                span.set(&key, value);
            }
        }
    }

    /// The stream's end: status, sizes, route, hand-off attributes, name; then the queue.
    pub fn on_stream_done(&mut self, host: &dyn StreamHost) {
        let Some(mut span) = self.span.take() else { return };
        span.end_unix_nanos = now_nanos(host.now());
        let code = property_int(host, &["response", "code"]).filter(|c| *c > 0);
        let route = property_text(host, &["xds", "route_name"]).filter(|r| !r.is_empty());
        if let Some(size) = property_int(host, &["request", "size"]).filter(|s| *s > 0) {
            span.set("http.request.body.size", size);
        }
        if let Some(size) = property_int(host, &["response", "size"]).filter(|s| *s > 0) {
            span.set("http.response.body.size", size);
        }
        if let Some(tags) = property_text(host, &[SPAN_ATTRIBUTES_PROPERTY])
            && let Ok(serde_json::Value::Object(tags)) = serde_json::from_str(&tags)
        {
            for (key, value) in tags {
                match value {
                    serde_json::Value::String(s) => span.set(&key, s),
                    serde_json::Value::Bool(b) => span.set(&key, Value::Bool(b)),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => span.set(&key, i),
                        None => span.set(&key, Value::Double(n.as_f64().unwrap_or(0.0))),
                    },
                    other => span.set(&key, other.to_string()),
                }
            }
        }
        let method = match span.get("http.request.method") {
            Some(Value::String(m)) => m.clone(),
            _ => "GET".into(),
        };
        span.name = match span.kind {
            SpanKind::Client => match span.get("server.address") {
                Some(Value::String(host)) => format!("{method} {host}"),
                _ => method,
            },
            _ => {
                let path = match span.get("url.path") {
                    Some(Value::String(p)) => p.clone(),
                    _ => "/".into(),
                };
                format!("{method} {}", naming::path_template(&path))
            }
        };
        if let Some(route) = route {
            span.set("wasmtrace.route_name", route);
        }
        match code {
            Some(code) => {
                span.set("http.response.status_code", code);
                let error_from = if span.kind == SpanKind::Client { 400 } else { 500 };
                if code >= error_from {
                    span.status = StatusCode::Error;
                    span.set("error.type", code.to_string());
                }
            }
            None => {
                span.status = StatusCode::Error;
                span.status_message = "no response".into();
                span.set("error.type", "no_response");
            }
        }
        let mut shared = self.shared.borrow_mut();
        if shared.queue.len() >= shared.config.exporter.max_queued_spans {
            if let Some(dropped) = shared.counters.dropped {
                host.increment(dropped, 1);
            }
            return;
        }
        shared.queue.push_back(span);
    }
}
