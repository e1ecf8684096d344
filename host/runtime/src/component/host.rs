//! The world's imports, implemented on [`VmState`] with the same internals as the proxy-wasm
//! host functions (header maps, bodies, properties, signals, callouts, shared data, queues,
//! metrics, timers): typed arguments instead of guest pointers, nothing else differs.

use std::time::Duration;

use wasmtime::component::Resource;

use super::bindings::wasmtrace::filter::exchange::{self, HttpStream};
use super::bindings::wasmtrace::filter::host::{self, PendingCallout};
use super::bindings::wasmtrace::filter::types::{
    self, AttributeValue, BodyPart, CalloutError, CalloutRequest, HeaderPart, LocalResponse as WitLocalResponse,
    LogLevel as WitLogLevel, MetricError, MetricKind, QueueError, SharedDataError,
};
use crate::abi::buffer::{read_buffer, splice_body};
use crate::abi::header_map::{Edit, read_map, write_map};
use crate::abi::http_call::{CalloutRefusal, start_callout};
use crate::abi::log::emit;
use crate::abi::metric::metric;
use crate::abi::property::{read_property, with_segments as with_serialized_segments, write_filter_state};
use crate::abi::shared::{queue_fault, shared_data_full};
use crate::abi::stream_control::signal;
use crate::abi::timer::{set_tick_period, unix_nanos};
use crate::abi::types::{BufferType, LogLevel, MapType, MetricType};
use crate::error::GuestFault;
use crate::header_map::HeaderMap;
use crate::properties::filter_state_key;
use crate::shared_data::SharedDataError as HostSharedDataError;
use crate::shared_queue::QueueError as HostQueueError;
use crate::state::{ComponentCallout, VmState};
use crate::stream::LocalResponse;

/// The property the trace filter reads span attributes from (a JSON object), shared with
/// proxy-wasm filters that set it with `proxy_set_property`.
const SPAN_ATTRIBUTES_PROPERTY: &str = "wasmtrace_span_attributes";
/// Most bytes the span-attribute hand-off holds (encoded); a span's attributes are a few hundred
/// as a rule.
const MAX_SPAN_ATTRIBUTES_BYTES: usize = 64 << 10;

/// Most paths one `get-properties` call may ask for: more than any filter reads at one point
/// of a stream, few enough that one call cannot make the host resolve without end.
const MAX_PROPERTIES_PER_CALL: usize = 64;

/// Most path segments passed on the stack; longer paths (which resolve to nothing) use the heap.
const SEGMENTS_ON_STACK: usize = 8;

/// Runs `f` on `path`'s segments as bytes, without collecting them into a vector when they are
/// few (a property read on every request).
fn with_segments<R>(path: &[String], f: impl FnOnce(&[&[u8]]) -> R) -> R {
    if path.len() > SEGMENTS_ON_STACK {
        let segments: Vec<&[u8]> = path.iter().map(String::as_bytes).collect();
        return f(&segments);
    }
    let mut stack: [&[u8]; SEGMENTS_ON_STACK] = [&[]; SEGMENTS_ON_STACK];
    for (slot, segment) in stack.iter_mut().zip(path) {
        *slot = segment.as_bytes();
    }
    f(&stack[..path.len()])
}

/// A header map as the world's `header-fields`.
pub(super) fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec())).collect()
}

fn log_level(level: WitLogLevel) -> LogLevel {
    match level {
        WitLogLevel::Trace => LogLevel::Trace,
        WitLogLevel::Debug => LogLevel::Debug,
        WitLogLevel::Info => LogLevel::Info,
        WitLogLevel::Warn => LogLevel::Warn,
        WitLogLevel::Error => LogLevel::Error,
        WitLogLevel::Critical => LogLevel::Critical,
    }
}

fn map_type(part: HeaderPart) -> MapType {
    match part {
        HeaderPart::RequestHeaders => MapType::HttpRequestHeaders,
        HeaderPart::RequestTrailers => MapType::HttpRequestTrailers,
        HeaderPart::ResponseHeaders => MapType::HttpResponseHeaders,
        HeaderPart::ResponseTrailers => MapType::HttpResponseTrailers,
    }
}

fn buffer_type(part: BodyPart) -> BufferType {
    match part {
        BodyPart::Request => BufferType::HttpRequestBody,
        BodyPart::Response => BufferType::HttpResponseBody,
    }
}

impl VmState {
    /// The stream a resource names. Borrows of `http-stream` exist only during that stream's
    /// callback, so anything else is a host bug or a forged handle: the call traps.
    fn checked_stream(&self, call: &'static str, handle: &Resource<HttpStream>) -> wasmtime::Result<()> {
        if handle.rep() == self.acting_context() && self.stream(handle.rep()).is_some() {
            Ok(())
        } else {
            Err(GuestFault::trap(call, format!("stream {} is not the stream of this callback", handle.rep())))
        }
    }
}

impl VmState {
    /// Applies `edit` to one of the acting stream's header maps, if it may still change.
    fn edit_headers(
        &mut self,
        call: &'static str,
        handle: &Resource<HttpStream>,
        part: HeaderPart,
        edit: Edit<'_>,
    ) -> wasmtime::Result<()> {
        self.checked_stream(call, handle)?;
        write_map(self, call, map_type(part), edit);
        Ok(())
    }
}

impl types::Host for VmState {}

impl host::Host for VmState {
    fn log(&mut self, level: WitLogLevel, message: String) -> wasmtime::Result<()> {
        emit(self, log_level(level), &message);
        Ok(())
    }

    fn current_log_level(&mut self) -> wasmtime::Result<WitLogLevel> {
        Ok(match self.services.log_level() {
            LogLevel::Trace => WitLogLevel::Trace,
            LogLevel::Debug => WitLogLevel::Debug,
            LogLevel::Info => WitLogLevel::Info,
            LogLevel::Warn => WitLogLevel::Warn,
            LogLevel::Error => WitLogLevel::Error,
            LogLevel::Critical => WitLogLevel::Critical,
        })
    }

    fn now_unix_nanos(&mut self) -> wasmtime::Result<u64> {
        Ok(unix_nanos(std::time::SystemTime::now()))
    }

    fn random_u64(&mut self) -> wasmtime::Result<u64> {
        let mut bytes = [0u8; 8];
        if !crate::randomness::fill(&mut bytes) {
            return Err(wasmtime::Error::msg("no randomness: the OS gave no seed"));
        }
        Ok(u64::from_le_bytes(bytes))
    }

    fn get_property(&mut self, path: Vec<String>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(with_segments(&path, |segments| read_property(self, segments)))
    }

    fn get_properties(&mut self, paths: Vec<Vec<u8>>) -> wasmtime::Result<Vec<Option<Vec<u8>>>> {
        const CALL: &str = "host.get-properties";
        if paths.len() > MAX_PROPERTIES_PER_CALL {
            return Err(GuestFault::trap(
                CALL,
                format!("{} paths asked for, at most {MAX_PROPERTIES_PER_CALL} per call", paths.len()),
            ));
        }
        // The same value may be asked for many times over: the answers are bounded together, by
        // what the guest's memory could hold of them at most.
        let budget = self.plugin.limits.max_memory_bytes;
        let mut answered = 0usize;
        let mut values = Vec::with_capacity(paths.len());
        for path in &paths {
            let value = with_serialized_segments(path, |segments| read_property(self, segments));
            answered = answered.saturating_add(value.as_ref().map_or(0, Vec::len));
            if answered > budget {
                return Err(GuestFault::trap(
                    CALL,
                    format!("the answers exceed the VM's memory limit of {budget} bytes"),
                ));
            }
            values.push(value);
        }
        Ok(values)
    }

    fn set_property(&mut self, path: Vec<String>, value: Vec<u8>) -> wasmtime::Result<()> {
        let key = with_segments(&path, filter_state_key);
        write_filter_state(self, "host.set-property", key, value)
    }

    fn set_tick_period(&mut self, period_ms: u32) -> wasmtime::Result<()> {
        set_tick_period(self, period_ms);
        Ok(())
    }

    fn http_call(
        &mut self,
        request: CalloutRequest,
    ) -> wasmtime::Result<Result<Resource<PendingCallout>, CalloutError>> {
        let headers = HeaderMap::from_pairs(request.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        let timeout = (request.timeout_ms > 0).then(|| Duration::from_millis(u64::from(request.timeout_ms)));
        match start_callout(self, request.cluster, headers, request.body, HeaderMap::new(), timeout) {
            Ok(token) => {
                let acting = self.acting_context();
                let stream = self.stream(acting).is_some().then_some(acting);
                self.callouts.component.insert(token, ComponentCallout { wanted: true, stream });
                Ok(Ok(Resource::new_own(token)))
            }
            Err(refusal) => {
                emit(self, LogLevel::Warn, &format!("http-call refused: {refusal}"));
                Ok(Err(match refusal {
                    CalloutRefusal::MissingHeader(_) => CalloutError::BadRequest,
                    CalloutRefusal::UnknownCluster(_) => CalloutError::UnknownCluster,
                    CalloutRefusal::Dispatch(_) => CalloutError::Unreachable,
                }))
            }
        }
    }

    fn get_shared_data(&mut self, key: String) -> wasmtime::Result<Option<(Vec<u8>, u32)>> {
        Ok(self
            .services
            .shared_data
            .get(&self.plugin.vm_id, key.as_bytes())
            .map(|entry| (entry.value.clone(), entry.cas)))
    }

    fn set_shared_data(
        &mut self,
        key: String,
        value: Vec<u8>,
        cas: Option<u32>,
    ) -> wasmtime::Result<Result<(), SharedDataError>> {
        // proxy-wasm's "no CAS" is 0.
        Ok(
            match self.services.shared_data.set(
                &self.plugin.vm_id,
                &self.plugin.name,
                key.as_bytes(),
                &value,
                cas.unwrap_or(0),
            ) {
                Ok(_) => Ok(()),
                Err(HostSharedDataError::CasMismatch) => Err(SharedDataError::CasMismatch),
                // The world's error has no such case (adding one would change the type): a trap, as
                // for proxy-wasm modules.
                Err(HostSharedDataError::Full) => {
                    return Err(shared_data_full("host.set-shared-data", &self.plugin.vm_id));
                }
            },
        )
    }

    fn register_queue(&mut self, name: String) -> wasmtime::Result<u32> {
        const CALL: &str = "host.register-queue";
        self.services.queues.register(&self.plugin.vm_id, &self.plugin.name, name.as_bytes(), &self.inbox).map_err(
            |error| {
                let fault = queue_fault(CALL, &error);
                fault.unwrap_or_else(|| GuestFault::trap(CALL, "the queue could not be registered"))
            },
        )
    }

    fn resolve_queue(&mut self, vm_id: String, name: String) -> wasmtime::Result<Option<u32>> {
        let vm_id = if vm_id.is_empty() { self.plugin.vm_id.clone() } else { vm_id };
        Ok(self.services.queues.resolve(&vm_id, name.as_bytes()))
    }

    fn enqueue(&mut self, queue: u32, item: Vec<u8>) -> wasmtime::Result<Result<(), QueueError>> {
        match self.services.queues.enqueue(queue, &self.plugin.name, item) {
            Ok(()) => Ok(Ok(())),
            Err(error) => match queue_fault("host.enqueue", &error) {
                Some(fault) => Err(fault),
                None => Ok(Err(QueueError::NotFound)),
            },
        }
    }

    fn dequeue(&mut self, queue: u32) -> wasmtime::Result<Result<Option<Vec<u8>>, QueueError>> {
        Ok(match self.services.queues.dequeue(queue) {
            Ok(item) => Ok(Some(item)),
            Err(HostQueueError::Empty) => Ok(None),
            Err(_) => Err(QueueError::NotFound),
        })
    }

    fn define_metric(&mut self, kind: MetricKind, name: String) -> wasmtime::Result<Result<u32, MetricError>> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        Ok(self.services.metrics.define(kind, &name).map_err(|_| MetricError::BadArgument))
    }

    fn increment_metric(&mut self, id: u32, delta: i64) -> wasmtime::Result<Result<(), MetricError>> {
        Ok(match metric(self, id) {
            None => Err(MetricError::NotFound),
            Some(metric) => metric.increment(delta).map_err(|_| MetricError::BadArgument),
        })
    }

    fn record_metric(&mut self, id: u32, value: u64) -> wasmtime::Result<Result<(), MetricError>> {
        Ok(match metric(self, id) {
            None => Err(MetricError::NotFound),
            Some(metric) => {
                metric.record(value);
                Ok(())
            }
        })
    }

    fn get_metric(&mut self, id: u32) -> wasmtime::Result<Result<u64, MetricError>> {
        Ok(match metric(self, id) {
            None => Err(MetricError::NotFound),
            Some(metric) => metric.get().map_err(|_| MetricError::BadArgument),
        })
    }

    fn done(&mut self) -> wasmtime::Result<()> {
        self.done_pending = false;
        Ok(())
    }
}

impl host::HostPendingCallout for VmState {
    fn id(&mut self, callout: Resource<PendingCallout>) -> wasmtime::Result<u32> {
        Ok(callout.rep())
    }

    fn drop(&mut self, callout: Resource<PendingCallout>) -> wasmtime::Result<()> {
        if let Some(callout) = self.callouts.component.get_mut(&callout.rep()) {
            callout.wanted = false;
        }
        Ok(())
    }
}

impl exchange::Host for VmState {}

impl exchange::HostHttpStream for VmState {
    fn id(&mut self, handle: Resource<HttpStream>) -> wasmtime::Result<u32> {
        self.checked_stream("http-stream.id", &handle)?;
        Ok(handle.rep())
    }

    fn header(
        &mut self,
        handle: Resource<HttpStream>,
        part: HeaderPart,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        self.checked_stream("http-stream.header", &handle)?;
        Ok(read_map(self, map_type(part), |map| map.get(name.as_bytes()).map(<[u8]>::to_vec)).flatten())
    }

    fn headers(&mut self, handle: Resource<HttpStream>, part: HeaderPart) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        self.checked_stream("http-stream.headers", &handle)?;
        Ok(read_map(self, map_type(part), fields).unwrap_or_default())
    }

    fn headers_serialized(&mut self, handle: Resource<HttpStream>, part: HeaderPart) -> wasmtime::Result<Vec<u8>> {
        self.checked_stream("http-stream.headers-serialized", &handle)?;
        Ok(read_map(self, map_type(part), HeaderMap::encode).unwrap_or_default())
    }

    fn set_header(
        &mut self,
        handle: Resource<HttpStream>,
        part: HeaderPart,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<()> {
        self.edit_headers("http-stream.set-header", &handle, part, Edit::Replace(name.as_bytes(), &value))
    }

    fn add_header(
        &mut self,
        handle: Resource<HttpStream>,
        part: HeaderPart,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<()> {
        self.edit_headers("http-stream.add-header", &handle, part, Edit::Add(name.as_bytes(), &value))
    }

    fn remove_header(&mut self, handle: Resource<HttpStream>, part: HeaderPart, name: String) -> wasmtime::Result<()> {
        self.edit_headers("http-stream.remove-header", &handle, part, Edit::Remove(name.as_bytes()))
    }

    fn set_headers(
        &mut self,
        handle: Resource<HttpStream>,
        part: HeaderPart,
        new_fields: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<()> {
        let new_map = HeaderMap::from_pairs(new_fields.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())));
        self.edit_headers("http-stream.set-headers", &handle, part, Edit::Set(new_map))
    }

    fn body(
        &mut self,
        handle: Resource<HttpStream>,
        part: BodyPart,
        start: u32,
        length: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        self.checked_stream("http-stream.body", &handle)?;
        Ok(read_buffer(self, buffer_type(part), |bytes| {
            let start = (start as usize).min(bytes.len());
            let end = start.saturating_add(length as usize).min(bytes.len());
            bytes[start..end].to_vec()
        })
        .unwrap_or_default())
    }

    fn body_size(&mut self, handle: Resource<HttpStream>, part: BodyPart) -> wasmtime::Result<u32> {
        self.checked_stream("http-stream.body-size", &handle)?;
        Ok(read_buffer(self, buffer_type(part), |bytes| u32::try_from(bytes.len()).unwrap_or(u32::MAX)).unwrap_or(0))
    }

    fn splice_body(
        &mut self,
        handle: Resource<HttpStream>,
        part: BodyPart,
        start: u32,
        length: u32,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<()> {
        const CALL: &str = "http-stream.splice-body";
        self.checked_stream(CALL, &handle)?;
        splice_body(self, CALL, buffer_type(part), start, length, bytes);
        Ok(())
    }

    fn send_local_response(
        &mut self,
        handle: Resource<HttpStream>,
        response: WitLocalResponse,
    ) -> wasmtime::Result<()> {
        const CALL: &str = "http-stream.send-local-response";
        self.checked_stream(CALL, &handle)?;
        if !(100..=999).contains(&response.status) {
            return Err(GuestFault::trap(CALL, format!("{} is not an HTTP status code", response.status)));
        }
        let mut headers = HeaderMap::from_pairs(response.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        // As in `proxy_send_local_response`: only valid HTTP enters the map later filters edit.
        headers.retain_valid();
        let local = LocalResponse {
            status: response.status,
            body: response.body,
            headers,
            details: response.details,
            grpc_status: None,
        };
        signal(self, CALL, |s| s.local_response = Some(local));
        Ok(())
    }

    fn resume(&mut self, handle: Resource<HttpStream>, request: bool) -> wasmtime::Result<()> {
        const CALL: &str = "http-stream.resume";
        self.checked_stream(CALL, &handle)?;
        signal(self, CALL, |s| if request { s.resume_request = true } else { s.resume_response = true });
        Ok(())
    }

    fn close(&mut self, handle: Resource<HttpStream>) -> wasmtime::Result<()> {
        const CALL: &str = "http-stream.close";
        self.checked_stream(CALL, &handle)?;
        signal(self, CALL, |s| s.close = true);
        Ok(())
    }

    fn add_span_attributes(
        &mut self,
        handle: Resource<HttpStream>,
        attributes: Vec<(String, AttributeValue)>,
    ) -> wasmtime::Result<()> {
        const CALL: &str = "http-stream.add-span-attributes";
        self.checked_stream(CALL, &handle)?;
        let key = filter_state_key(&[SPAN_ATTRIBUTES_PROPERTY.as_bytes()]);
        let mut ours = serde_json::Map::new();
        for (name, value) in attributes {
            let value = match value {
                AttributeValue::Text(s) => serde_json::Value::from(s),
                AttributeValue::Flag(b) => serde_json::Value::from(b),
                AttributeValue::Integer(i) => serde_json::Value::from(i),
                AttributeValue::Double(d) => serde_json::Value::from(d),
            };
            ours.insert(name, value);
        }
        // What the stream's filters handed over so far, if it is a JSON object of a sane size
        // (a larger or malformed one is replaced, as a malformed one always was): anyone in the
        // chain may have written it, so it is measured before it is parsed, in place.
        let handed_over = {
            let exchange = self.acting_stream().map(|stream| stream.exchange.borrow());
            let bytes = match &exchange {
                Some(exchange) => exchange.info.filter_state.get(&key),
                None => self.root_filter_state.get(&key),
            };
            match bytes.filter(|bytes| bytes.len() <= MAX_SPAN_ATTRIBUTES_BYTES).map(|b| serde_json::from_slice(b)) {
                Some(Ok(serde_json::Value::Object(map))) => map,
                _ => serde_json::Map::new(),
            }
        };
        let encoded = if handed_over.is_empty() {
            serde_json::Value::Object(ours).to_string().into_bytes()
        } else {
            let mut merged = handed_over;
            merged.extend(ours.iter().map(|(name, value)| (name.clone(), value.clone())));
            let encoded = serde_json::Value::Object(merged).to_string().into_bytes();
            if encoded.len() <= MAX_SPAN_ATTRIBUTES_BYTES {
                encoded
            } else {
                // Others' attributes and ours do not fit together: ours win, so that what another
                // filter (or a client through it) put there cannot make this call fail.
                serde_json::Value::Object(ours).to_string().into_bytes()
            }
        };
        if encoded.len() > MAX_SPAN_ATTRIBUTES_BYTES {
            return Err(GuestFault::trap(
                CALL,
                format!("span attributes would exceed {MAX_SPAN_ATTRIBUTES_BYTES} bytes"),
            ));
        }
        write_filter_state(self, CALL, key, encoded)
    }

    fn drop(&mut self, _handle: Resource<HttpStream>) -> wasmtime::Result<()> {
        // Borrows only: the host owns streams; nothing to release.
        Ok(())
    }
}
