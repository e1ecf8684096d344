//! The wasmtrace trace filter: for every request it extracts (or starts) a trace, decides
//! sampling, rewrites the propagation headers so the next hop is its span's child, tags the span
//! with OpenTelemetry HTTP semantic conventions, ends it at the access-log point, and exports
//! batches over OTLP/HTTP with `proxy_http_call` from the root context — the one export path that
//! also works inside Envoy.
//!
//! Export never delays a request: spans go to a bounded queue; the root context's tick sends a
//! batch when it is full or old enough; a collector that is down or slow only fills the queue, and
//! what does not fit is dropped and counted.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

pub mod config;
pub mod naming;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use config::{ExportFormat, Format, TraceConfig};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use wasmtrace_trace_core::span::{Resource, Span, SpanKind, StatusCode, Value};
use wasmtrace_trace_core::{SpanContext, SpanId, TraceId, b3, jaeger, otlp, w3c, zipkin};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TraceRoot::default()) });
}}

/// The property a tagging filter sets (a JSON object of attribute names to values) for the trace
/// filter to add to the span.
pub const SPAN_ATTRIBUTES_PROPERTY: &str = "wasmtrace_span_attributes";
/// How often the root context looks at the queue.
const TICK: Duration = Duration::from_millis(50);
/// Wait before retrying a batch the collector could not take, unless it said `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

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
    fn define() -> Self {
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name).ok();
        Self {
            exported: counter("wasmtrace_trace_spans_exported_total"),
            dropped: counter("wasmtrace_trace_spans_dropped_total"),
            failed: counter("wasmtrace_trace_spans_failed_total"),
        }
    }

    fn add(id: Option<u32>, n: usize) {
        if let (Some(id), Ok(n)) = (id, i64::try_from(n))
            && n > 0
        {
            let _ = hostcalls::increment_metric(id, n);
        }
    }
}

/// State shared by the root context and every stream context of this VM.
struct Shared {
    config: Rc<TraceConfig>,
    resource: Resource,
    queue: VecDeque<Span>,
    counters: Counters,
}

impl Shared {
    fn enqueue(&mut self, span: Span) {
        if self.queue.len() >= self.config.exporter.max_queued_spans {
            Counters::add(self.counters.dropped, 1);
            return;
        }
        self.queue.push_back(span);
    }
}

#[derive(Default)]
struct TraceRoot {
    shared: Option<Rc<RefCell<Shared>>>,
    in_flight: Option<(u32, Vec<Span>)>,
    last_flush: Option<SystemTime>,
    retry_at: Option<SystemTime>,
    finishing: bool,
}

impl Context for TraceRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        let Some((token, spans)) = self.in_flight.take() else { return };
        if token != token_id {
            return;
        }
        let Some(shared) = self.shared.clone() else { return };
        let status: u16 = self.get_http_call_response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let counters = shared.borrow().counters;
        let now = self.get_current_time();
        let retryable = num_headers == 0 || matches!(status, 429 | 502 | 503 | 504);
        if (200..300).contains(&status) {
            Counters::add(counters.exported, spans.len());
        } else if retryable && !self.finishing {
            let wait = self
                .get_http_call_response_header("retry-after")
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
            self.retry_at = Some(now + wait);
            let mut shared = shared.borrow_mut();
            for span in spans.into_iter().rev() {
                if shared.queue.len() >= shared.config.exporter.max_queued_spans {
                    Counters::add(counters.dropped, 1);
                } else {
                    shared.queue.push_front(span);
                }
            }
        } else {
            let _ = hostcalls::log(
                LogLevel::Warn,
                &format!("span export failed with status {status}; {} spans lost", spans.len()),
            );
            Counters::add(counters.failed, spans.len());
        }
        if self.finishing {
            self.flush(now);
            if self.in_flight.is_none() {
                self.done();
            }
        }
    }

    fn on_done(&mut self) -> bool {
        // Flush what is queued before the VM goes (shutdown or hot swap).
        self.finishing = true;
        if self.in_flight.is_none() {
            self.flush(self.get_current_time());
        }
        self.in_flight.is_none()
    }
}

impl TraceRoot {
    fn flush(&mut self, now: SystemTime) {
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
        let headers = vec![
            (":method", "POST"),
            (":path", exporter.path.as_str()),
            (":authority", exporter.authority.as_str()),
            ("content-type", content_type),
        ];
        self.last_flush = Some(now);
        match self.dispatch_http_call(&exporter.cluster, headers, Some(&body), vec![], exporter.timeout) {
            Ok(token) => self.in_flight = Some((token, spans)),
            Err(status) => {
                let _ = hostcalls::log(
                    LogLevel::Warn,
                    &format!("cannot export to cluster `{}`: {status:?}", exporter.cluster),
                );
                Counters::add(shared.borrow().counters.failed, spans.len());
            }
        }
    }
}

impl RootContext for TraceRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match TraceConfig::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("trace filter configuration refused: {e}"));
                return false;
            }
        };
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
            counters: Counters::define(),
        })));
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let now = self.get_current_time();
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
            self.flush(now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(TraceStream { shared, span: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TraceStream {
    shared: Rc<RefCell<Shared>>,
    span: Option<Span>,
}

impl Context for TraceStream {}

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

impl TraceStream {
    /// Writes the configured propagation headers for `outgoing` (the new span's context).
    fn inject(&self, config: &TraceConfig, outgoing: &SpanContext, parent: Option<&SpanId>) {
        let (trace_id, span_id, tracestate) = (&outgoing.trace_id, &outgoing.span_id, &outgoing.tracestate);
        let (sampled, random) = (outgoing.sampled == Some(true), outgoing.random);
        if config.strip_uninjected {
            for format in config.extract.iter().filter(|f| !config.inject.contains(f)) {
                for name in format.headers() {
                    self.remove_http_request_header(name);
                }
            }
        }
        for format in &config.inject {
            match format {
                Format::W3c => {
                    self.set_http_request_header(
                        "traceparent",
                        Some(&w3c::format_traceparent(trace_id, span_id, sampled, random)),
                    );
                    self.set_http_request_header("tracestate", w3c::format_tracestate(tracestate).as_deref());
                }
                Format::B3 => {
                    self.set_http_request_header("b3", Some(&b3::format_single(trace_id, span_id, sampled, parent)))
                }
                Format::Jaeger => {
                    self.set_http_request_header("uber-trace-id", Some(&jaeger::format(trace_id, span_id, sampled)))
                }
                Format::B3multi => {
                    for name in Format::B3multi.headers() {
                        self.remove_http_request_header(name);
                    }
                    for (name, value) in b3::format_multi(trace_id, span_id, sampled, parent) {
                        self.set_http_request_header(name, Some(&value));
                    }
                }
            }
        }
    }

    /// CLIENT on an outbound listener, SERVER otherwise (`xds.listener_direction`: 1 inbound,
    /// 2 outbound, as Envoy and Istio set it), for configurations that leave `span_kind` out.
    fn listener_span_kind(&self) -> SpanKind {
        match self.property_int(vec!["xds", "listener_direction"]) {
            Some(2) => SpanKind::Client,
            _ => SpanKind::Server,
        }
    }

    fn property_text(&self, path: Vec<&str>) -> Option<String> {
        self.get_property(path).and_then(|b| String::from_utf8(b).ok())
    }

    fn property_int(&self, path: Vec<&str>) -> Option<i64> {
        let bytes = self.get_property(path)?;
        let word: [u8; 8] = bytes.as_slice().try_into().ok()?;
        Some(i64::from_le_bytes(word))
    }
}

impl HttpContext for TraceStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = self.shared.borrow().config.clone();
        let headers = self.get_http_request_headers();
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
        self.inject(&config, &outgoing, parent_span.as_ref());
        if !sampled {
            return Action::Continue;
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
            kind: config.span_kind.unwrap_or_else(|| self.listener_span_kind()),
            start_unix_nanos: now_nanos(self.get_current_time()),
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
        if let Some(source) = self.property_text(vec!["source", "address"]) {
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
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.span.is_none() {
            return Action::Continue;
        }
        let config = self.shared.borrow().config.clone();
        let mut attributes = Vec::new();
        for (name, attribute) in &config.response_header_attributes {
            if let Some(value) = self.get_http_response_header(name) {
                attributes.push((attribute.clone(), value));
            }
        }
        if let Some(span) = self.span.as_mut() {
            for (key, value) in attributes {
                span.set(&key, value);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(mut span) = self.span.take() else { return };
        span.end_unix_nanos = now_nanos(self.get_current_time());
        let code = self.property_int(vec!["response", "code"]).filter(|c| *c > 0);
        let route = self.property_text(vec!["xds", "route_name"]).filter(|r| !r.is_empty());
        if let Some(size) = self.property_int(vec!["request", "size"]).filter(|s| *s > 0) {
            span.set("http.request.body.size", size);
        }
        if let Some(size) = self.property_int(vec!["response", "size"]).filter(|s| *s > 0) {
            span.set("http.response.body.size", size);
        }
        if let Some(tags) = self.property_text(vec![SPAN_ATTRIBUTES_PROPERTY])
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
        self.shared.borrow_mut().enqueue(span);
    }
}
