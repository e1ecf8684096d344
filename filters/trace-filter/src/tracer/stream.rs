//! One request's span: extract (or start) the trace, sample, inject the propagation headers,
//! tag the span with HTTP semantic conventions, and end it at the stream's end.

// One module in three files: the parent's names (its imports, the host traits, the shared state) are this file's.
use super::*;

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
    let mut parents = headers.known_all(Known::Traceparent);
    let (trace_id, span_id, flags) = match (parents.next(), parents.next()) {
        (Some(only), None) => w3c::parse_traceparent(&[&text(only)])?,
        // None, or more than one: invalid.
        _ => return None,
    };
    let mut tracestate = String::new();
    // An invalid tracestate is dropped whole (left empty).
    w3c::normalize_tracestate(headers.known_all(Known::Tracestate).map(text), &mut tracestate);
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

/// Properties read together at one point of the stream ([`StreamHost::properties`]), taken out
/// by name.
struct Fetched {
    which: &'static [Property],
    values: Vec<Option<Vec<u8>>>,
}

impl Fetched {
    fn read(host: &dyn StreamHost, which: &'static [Property]) -> Self {
        Self { which, values: host.properties(which) }
    }

    /// `property`'s value, if it was asked for and the host has it.
    fn take(&mut self, property: Property) -> Option<Vec<u8>> {
        let index = self.which.iter().position(|p| *p == property)?;
        self.values.get_mut(index)?.take()
    }

    fn text(&mut self, property: Property) -> Option<String> {
        self.take(property).and_then(|b| String::from_utf8(b).ok())
    }

    fn int(&mut self, property: Property) -> Option<i64> {
        let word: [u8; 8] = self.take(property)?.as_slice().try_into().ok()?;
        Some(i64::from_le_bytes(word))
    }
}

/// What a span's start reads, by what the configuration already says of its kind: the
/// listener's direction only when it decides the kind, the client's address only for a SERVER
/// span.
fn at_span_start(configured: Option<SpanKind>) -> &'static [Property] {
    match configured {
        Some(SpanKind::Client) => &[Property::RequestProtocol],
        Some(_) => &[Property::RequestProtocol, Property::SourceAddress],
        None => &[Property::ListenerDirection, Property::RequestProtocol, Property::SourceAddress],
    }
}

/// What a span's end reads: the upstream's address only for a CLIENT span (a SERVER span's
/// peer is the client).
fn at_span_end(kind: SpanKind) -> &'static [Property] {
    // A SERVER span reads all but the last.
    const AT_END: [Property; 8] = [
        Property::ResponseCode,
        Property::RouteName,
        Property::RequestSize,
        Property::ResponseSize,
        Property::SpanAttributes,
        Property::SpanEvents,
        Property::CalloutSpans,
        Property::UpstreamAddress,
    ];
    if kind == SpanKind::Client { &AT_END } else { &AT_END[..AT_END.len() - 1] }
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
    /// A stream's tracer over the VM's shared state; its span starts with the request headers.
    pub(super) fn new(shared: Rc<RefCell<Shared>>) -> Self {
        Self { shared, span: None }
    }

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
    fn listener_span_kind(fetched: &mut Fetched) -> SpanKind {
        match fetched.int(Property::ListenerDirection) {
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
        // A filter before this one may have decided (`wasmtrace_span::set_sampling`).
        let sampled = match host.property(Property::SamplingHint).as_deref() {
            Some(contract::SAMPLE) => true,
            Some(contract::DROP) => false,
            _ => config.sampler.should_sample(parent.as_ref().map(|p| &p.context), &trace_id),
        };
        let span_id = SpanId::random();
        let parent_span = parent.as_ref().map(|p| p.context.span_id);
        let tracestate = parent.map(|p| p.tracestate).unwrap_or_default();
        let outgoing = Outgoing { trace_id, span_id, sampled, random, tracestate: &tracestate, parent: parent_span };
        Self::inject(host, config, &outgoing);
        // The request's context, for the filters after this one (`wasmtrace_span::trace_context`),
        // whichever formats are injected.
        host.set_filter_state(contract::TRACE_CONTEXT, &w3c::traceparent(&trace_id, &span_id, sampled, random));
        if !sampled {
            return;
        }
        let header = |name: Known| headers.known_text(name);
        let method = header(Known::Method);
        let method = method.as_deref().unwrap_or("GET");
        let full_path = header(Known::Path);
        let full_path = full_path.as_deref().unwrap_or("/");
        let (path, query) = full_path.split_once('?').map_or((full_path, None), |(p, q)| (p, Some(q)));
        let mut fetched = Fetched::read(host, at_span_start(config.span_kind));
        let mut span = Span {
            trace_id,
            span_id,
            parent_span_id: parent_span,
            parent_is_remote: parent_span.is_some(),
            trace_state: tracestate,
            // Named at the stream's end, when the attributes are complete.
            name: String::new(),
            kind: config.span_kind.unwrap_or_else(|| Self::listener_span_kind(&mut fetched)),
            start_unix_nanos: now_nanos(host.now()),
            end_unix_nanos: 0,
            attributes: Attributes::with_capacity(ATTRIBUTES + config.attribute_count(), ATTRIBUTE_TEXT),
            status: StatusCode::Unset,
            events: Vec::new(),
            status_message: String::new(),
        };
        // The span's own attributes first, each once: added without looking for them.
        span.attributes.push_new("http.request.method", method);
        span.attributes.push_new("url.path", path);
        let scheme = header(Known::Scheme);
        let scheme = scheme.as_deref().unwrap_or("http");
        span.attributes.push_new("url.scheme", scheme);
        if config.record_query
            && let Some(query) = query
        {
            span.attributes.push_new("url.query", query);
        }
        let client = span.kind == SpanKind::Client;
        if let Some(authority) = header(Known::Authority) {
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
        if let Some(agent) = header(Known::UserAgent) {
            span.attributes.push_new("user_agent.original", &agent);
        }
        if let Some(protocol) = fetched.text(Property::RequestProtocol)
            && let Some(version) = protocol.strip_prefix("HTTP/").filter(|v| !v.is_empty())
        {
            span.attributes.push_new("network.protocol.version", version);
        }
        if let Some(id) = header(Known::RequestId) {
            span.attributes.push_new("http.request.header.x-request-id", &id);
        }
        // A SERVER span's peer is the client; a CLIENT span's is the upstream, known once the
        // request went out (see `on_stream_done`): the local application is not its peer.
        if !client && let Some(source) = fetched.text(Property::SourceAddress) {
            let (ip, port) = naming::split_authority(&source);
            span.attributes.push_new("client.address", ip);
            span.attributes.push_new("network.peer.address", ip);
            if let Some(port) = port {
                span.attributes.push_new("network.peer.port", i64::from(port));
            }
        }
        for (name, attribute) in &config.request_header_attributes {
            if let Some(value) = headers.first_text(name) {
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
        let mut fetched = Fetched::read(host, at_span_end(span.kind));
        let code = fetched.int(Property::ResponseCode).filter(|c| *c > 0);
        let route = fetched.text(Property::RouteName).filter(|r| !r.is_empty());
        if let Some(size) = fetched.int(Property::RequestSize).filter(|s| *s > 0) {
            span.set("http.request.body.size", size);
        }
        if let Some(size) = fetched.int(Property::ResponseSize).filter(|s| *s > 0) {
            span.set("http.response.body.size", size);
        }
        if let Some(upstream) = fetched.text(Property::UpstreamAddress) {
            let (ip, port) = naming::split_authority(&upstream);
            span.set("network.peer.address", ip);
            if let Some(port) = port {
                span.set("network.peer.port", i64::from(port));
            }
        }
        if let Some(tags) = fetched.take(Property::SpanAttributes) {
            handoff::apply(&tags, &mut span);
        }
        if let Some(events) = fetched.take(Property::SpanEvents) {
            span.events = handoff::events(&events);
        }
        span.name = Self::name(&span);
        // After the hand-off: another filter cannot say which code made this span.
        self.shared.borrow().provenance.record(&mut span);
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
        // The callouts filters made for the request, as its children (`wasmtrace_span`).
        let callouts = fetched.take(Property::CalloutSpans).map(|bytes| handoff::callout_spans(&bytes, &span));
        let mut shared = self.shared.borrow_mut();
        let Shared { config, resource, spool, counters, scratch, provenance } = &mut *shared;
        for span in std::iter::once(span).chain(callouts.into_iter().flatten().map(|mut callout| {
            provenance.record(&mut callout);
            callout
        })) {
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
}
