//! The component front door: the `wasmtrace:filter` world's exports hand the typed calls to
//! [`crate::tracer`], exactly as the proxy-wasm contexts do.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::headers::Headers;
use crate::spool::SpoolHost;
use crate::tracer::{ExportResponse, ExportStatus, Exporter, Property, RootHost, Severity, StreamHost, StreamTracer};

use wasmtrace_filter_guest::{
    Action, CalloutError, CalloutRequest, CalloutResponse, Filter as ComponentFilter, HeaderPart, HttpStream, LogLevel,
    MetricKind, host,
};

/// The filter's state in this VM (one instance, one thread).
#[derive(Default)]
struct Filter {
    exporter: Exporter,
    streams: HashMap<u32, StreamTracer>,
}

thread_local! {
    static FILTER: RefCell<Filter> = RefCell::new(Filter::default());
    /// Export requests in flight: holding the handle keeps the answer coming. Apart from
    /// [`FILTER`] because the exporter starts them while it is borrowed.
    static CALLOUTS: RefCell<HashMap<u32, host::PendingCallout>> = RefCell::new(HashMap::new());
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(host::now_unix_nanos())
}

/// The host as the world's imports reach it.
struct WorldHost;

impl SpoolHost for WorldHost {
    fn register_queue(&self, name: &str) -> Option<u32> {
        Some(host::register_queue(name))
    }

    fn enqueue(&self, queue: u32, item: &[u8]) -> bool {
        host::enqueue(queue, item).is_ok()
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        host::dequeue(queue).ok().flatten()
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        host::get_shared_data(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        host::set_shared_data(key, value, cas).is_ok()
    }
}

impl RootHost for WorldHost {
    fn now(&self) -> SystemTime {
        now()
    }

    fn log(&self, severity: Severity, message: &str) {
        let level = match severity {
            Severity::Warn => LogLevel::Warn,
            Severity::Error => LogLevel::Error,
        };
        host::log(level, message);
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        host::define_metric(MetricKind::Counter, name).ok()
    }

    fn increment(&self, counter: u32, delta: i64) {
        let _ = host::increment_metric(counter, delta);
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, String> {
        let request = CalloutRequest {
            cluster: cluster.to_owned(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: body.to_vec(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        };
        let callout = host::http_call(&request).map_err(|e| format!("{e:?}"))?;
        let id = callout.id();
        CALLOUTS.with(|c| c.borrow_mut().insert(id, callout));
        Ok(id)
    }

    fn grpc_call(&self, _: &[u8], _: &str, _: &str, _: &[u8], _: Duration) -> Result<u32, String> {
        Err("the component world has no gRPC callouts".into())
    }

    fn has_grpc(&self) -> bool {
        false
    }

    fn set_tick_period(&self, period: Duration) {
        host::set_tick_period(u32::try_from(period.as_millis()).unwrap_or(u32::MAX));
    }

    fn property(&self, property: Property) -> Option<Vec<u8>> {
        host::get_property(property_path(property))
    }
}

/// The path of `property` as the world's `list<string>`, built once: the import takes owned
/// strings, which would otherwise be allocated on every read.
fn property_path(property: Property) -> &'static [String] {
    const ALL: [Property; 14] = [
        Property::SourceAddress,
        Property::ListenerDirection,
        Property::ResponseCode,
        Property::RouteName,
        Property::RequestSize,
        Property::ResponseSize,
        Property::SpanAttributes,
        Property::UpstreamAddress,
        Property::RequestProtocol,
        Property::PluginGeneration,
        Property::PluginSha256,
        Property::SamplingHint,
        Property::CalloutSpans,
        Property::SpanEvents,
    ];
    static PATHS: OnceLock<Vec<Vec<String>>> = OnceLock::new();
    let paths = PATHS
        .get_or_init(|| ALL.iter().map(|p| p.path().iter().map(|segment| (*segment).to_owned()).collect()).collect());
    ALL.iter().position(|p| *p == property).and_then(|i| paths.get(i)).map_or(&[], Vec::as_slice)
}

/// The serialised paths of a batch of properties as the world's `list<list<u8>>`, built once
/// per batch: the import takes owned lists, which would otherwise be allocated on every read.
fn serialized_paths(which: &'static [Property]) -> &'static [Vec<u8>] {
    /// A batch and its paths, lowered once.
    type Lowered = (&'static [Property], &'static [Vec<u8>]);
    thread_local! {
        static BATCHES: RefCell<Vec<Lowered>> = const { RefCell::new(Vec::new()) };
    }
    BATCHES.with_borrow_mut(|batches| {
        if let Some((_, paths)) = batches.iter().find(|(batch, _)| *batch == which) {
            return *paths;
        }
        // Leaked once per batch: the tracer reads a few fixed ones, which live as long as the VM.
        let paths: &'static [Vec<u8>] =
            Vec::leak(which.iter().map(|property| property.serialized().to_vec()).collect());
        batches.push((which, paths));
        paths
    })
}

/// One stream, during its callback.
struct WorldStream<'a>(&'a HttpStream);

/// Queues and shared data are the host's, not the stream's.
impl SpoolHost for WorldStream<'_> {
    fn register_queue(&self, name: &str) -> Option<u32> {
        WorldHost.register_queue(name)
    }

    fn enqueue(&self, queue: u32, item: &[u8]) -> bool {
        WorldHost.enqueue(queue, item)
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        WorldHost.dequeue(queue)
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        WorldHost.shared_data(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        WorldHost.set_shared_data(key, value, cas)
    }
}

impl StreamHost for WorldStream<'_> {
    fn now(&self) -> SystemTime {
        now()
    }

    fn request_headers(&self) -> Headers {
        Headers::serialized(self.0.headers_serialized(HeaderPart::RequestHeaders))
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) {
        match value {
            Some(value) => self.0.set_header(HeaderPart::RequestHeaders, name, value),
            None => self.0.remove_header(HeaderPart::RequestHeaders, name),
        }
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.header(HeaderPart::ResponseHeaders, name)
    }

    fn property(&self, property: Property) -> Option<Vec<u8>> {
        host::get_property(property_path(property))
    }

    fn properties(&self, which: &'static [Property]) -> Vec<Option<Vec<u8>>> {
        let mut values = host::get_properties(serialized_paths(which));
        // A host answers every path; should one not, the missing answers are absent properties.
        values.resize(which.len(), None);
        values
    }

    fn set_filter_state(&self, key: &str, value: &[u8]) {
        // The one key the tracer writes on every request, as the import takes it, made once.
        static TRACE_CONTEXT: OnceLock<[String; 1]> = OnceLock::new();
        let context = TRACE_CONTEXT.get_or_init(|| [wasmtrace_span::handoff::TRACE_CONTEXT.to_owned()]);
        if key == wasmtrace_span::handoff::TRACE_CONTEXT {
            host::set_property(context, value);
        } else {
            host::set_property(&[key.to_owned()], value);
        }
    }

    fn increment(&self, counter: u32, delta: i64) {
        let _ = host::increment_metric(counter, delta);
    }
}

struct TraceFilter;

impl ComponentFilter for TraceFilter {
    fn configure(configuration: Vec<u8>, _vm_configuration: Vec<u8>) -> Result<(), String> {
        FILTER.with(|f| f.borrow_mut().exporter.configure(&WorldHost, &configuration))
    }

    fn on_request_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        FILTER.with(|f| {
            let mut filter = f.borrow_mut();
            if let Some(mut tracer) = filter.exporter.stream() {
                tracer.on_request_headers(&WorldStream(stream));
                filter.streams.insert(stream.id(), tracer);
            }
        });
        Action::Continue
    }

    fn on_response_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        FILTER.with(|f| {
            if let Some(tracer) = f.borrow_mut().streams.get_mut(&stream.id()) {
                tracer.on_response_headers(&WorldStream(stream));
            }
        });
        Action::Continue
    }

    fn on_stream_done(stream: &HttpStream) {
        FILTER.with(|f| {
            let tracer = f.borrow_mut().streams.remove(&stream.id());
            if let Some(mut tracer) = tracer {
                tracer.on_stream_done(&WorldStream(stream));
            }
        });
    }

    fn on_tick() {
        FILTER.with(|f| f.borrow_mut().exporter.on_tick(&WorldHost));
    }

    fn on_queue_ready(queue: u32) {
        FILTER.with(|f| f.borrow_mut().exporter.on_queue_ready(&WorldHost, queue));
    }

    fn on_callout_response(_stream: Option<&HttpStream>, callout: u32, outcome: Result<CalloutResponse, CalloutError>) {
        CALLOUTS.with(|c| c.borrow_mut().remove(&callout));
        let (status, retry_after) = match &outcome {
            Ok(response) => {
                let retry_after = response
                    .headers
                    .iter()
                    .find(|(name, _)| name == "retry-after")
                    .and_then(|(_, value)| String::from_utf8(value.clone()).ok());
                (ExportStatus::Http(response.status), retry_after)
            }
            Err(_) => (ExportStatus::NoAnswer, None),
        };
        let response = ExportResponse { status, retry_after: retry_after.as_deref() };
        let finished = FILTER.with(|f| f.borrow_mut().exporter.on_response(&WorldHost, callout, &response));
        if finished {
            host::done();
        }
    }

    fn on_shutdown() -> bool {
        FILTER.with(|f| f.borrow_mut().exporter.on_shutdown(&WorldHost))
    }
}

wasmtrace_filter_guest::export_filter!(TraceFilter);
