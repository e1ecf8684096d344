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
//! UTF-8: see [`Headers`].
//!
//! Both front doors drive this: the proxy-wasm filter (`proxy_wasm_filter`, what Envoy loads) and
//! the `wasmtrace:filter` component (`component_filter`). Each implements [`RootHost`] and
//! [`StreamHost`] over its own calls, so the spans are the same whichever form runs.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtrace_trace_core::span::{Resource, Span, SpanKind, StatusCode, Value};
use wasmtrace_trace_core::{SpanContext, SpanId, TraceId, b3, jaeger, otlp, w3c, zipkin};

use crate::config::{ExportFormat, Format, TraceConfig};
use crate::naming;
use crate::spool::{self, Spool, SpoolHost};

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
    /// Arms the tick.
    fn set_tick_period(&self, period: Duration);
}

/// What a stream needs from the proxy (during that stream's callbacks).
pub trait StreamHost: SpoolHost {
    /// Wall-clock time.
    fn now(&self) -> SystemTime;
    /// The request headers, values as the client sent them.
    fn request_headers(&self) -> Vec<(String, Vec<u8>)>;
    /// Sets (or with `None` removes) a request header.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    /// A response header's value.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
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
        let status = response.status.unwrap_or(0);
        let retryable = response.status.is_none() || matches!(status, 429 | 502 | 503 | 504);
        let sent = items.len();
        let batch = {
            let mut shared = shared.borrow_mut();
            let counters = shared.counters;
            if (200..300).contains(&status) {
                add(host, counters.exported, sent);
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
                host.log(Severity::Warn, &format!("span export failed with status {status}; {sent} spans lost"));
                add(host, counters.failed, sent);
            }
            shared.config.exporter.batch_size
        };
        let Some(budget) = self.finishing else { return false };
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
        };
        let headers = [
            (":method", "POST"),
            (":path", exporter.path.as_str()),
            (":authority", exporter.authority.as_str()),
            ("content-type", content_type),
        ];
        self.last_flush = Some(now);
        match host.http_call(&exporter.cluster, &headers, &body, exporter.timeout) {
            Ok(token) => self.in_flight = Some((token, items)),
            Err(why) => {
                host.log(Severity::Warn, &format!("cannot export to cluster `{}`: {why}", exporter.cluster));
                add(host, shared.borrow().counters.failed, items.len());
            }
        }
    }
}

/// A stream's request headers. Values are bytes: HTTP/1.1 allows obs-text (bytes ≥ 0x80) in a
/// field value, so nothing here assumes UTF-8. Text is made with U+FFFD for what is not UTF-8,
/// which decides per header what such bytes mean:
/// - a propagation header (`traceparent`, `tracestate`, `b3`, `x-b3-*`, `uber-trace-id`) is
///   ASCII by its grammar and U+FFFD is outside every one of them, so the value is simply
///   invalid, as those bytes make it (an invalid `traceparent` starts a new trace; an invalid
///   `tracestate` is dropped whole);
/// - a header recorded on the span (`user-agent`, `x-request-id`, configured attributes) is
///   recorded as it came, with U+FFFD where a byte was not UTF-8 (attributes are strings).
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    /// Every value of `name`, in order.
    fn all(&self, name: &str) -> Vec<Cow<'_, str>> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v)).collect()
    }

    /// The first value of `name`.
    fn first(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v))
    }
}

/// The first valid context among the configured formats.
fn extract(formats: &[Format], headers: &Headers) -> Option<SpanContext> {
    let one = |name: &str| headers.first(name);
    formats.iter().find_map(|format| match format {
        Format::W3c => {
            let (parents, states) = (headers.all("traceparent"), headers.all("tracestate"));
            let parents: Vec<&str> = parents.iter().map(|v| v.as_ref()).collect();
            let states: Vec<&str> = states.iter().map(|v| v.as_ref()).collect();
            w3c::extract(&parents, &states)
        }
        Format::B3 => match b3::parse_single(&one("b3")?)? {
            b3::B3::Context(c) => Some(c),
            b3::B3::DecisionOnly(_) => None,
        },
        Format::B3multi => {
            let (trace, span) = (one("x-b3-traceid"), one("x-b3-spanid"));
            let (sampled, flags) = (one("x-b3-sampled"), one("x-b3-flags"));
            match b3::parse_multi(trace.as_deref(), span.as_deref(), sampled.as_deref(), flags.as_deref())? {
                b3::B3::Context(c) => Some(c),
                b3::B3::DecisionOnly(_) => None,
            }
        }
        Format::Jaeger => jaeger::parse(&one("uber-trace-id")?),
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
        let headers = Headers(host.request_headers());
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
        let header = |name: &str| headers.first(name).map(Cow::into_owned);
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
                // Recorded as it came, U+FFFD for bytes that are not UTF-8 (see [`Headers`]).
                attributes.push((attribute.clone(), String::from_utf8_lossy(&value).into_owned()));
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
        let item = spool::encode(shared.config.exporter.format, &shared.resource, &span);
        // Full (the collector is slow or down) or gone (the host lost the queue): either way
        // the span is dropped and counted, never held in this VM.
        if shared.spool.push(host, &item).is_err()
            && let Some(dropped) = shared.counters.dropped
        {
            host.increment(dropped, 1);
        }
    }
}
