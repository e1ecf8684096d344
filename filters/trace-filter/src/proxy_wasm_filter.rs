//! The proxy-wasm front door (what Envoy and the wasmtrace host load): the root and stream
//! contexts hand the proxy-wasm calls to [`crate::tracer`].
//!
//! Nothing a client, an upstream, a collector or another filter sends can make this code panic:
//! header values are read as bytes (the SDK's `String` calls unwrap a UTF-8 conversion), and the
//! request's header map is taken as the host serialised it and read in place ([`Headers`]),
//! because even the SDK's `_bytes` map call unwraps the names (and copies every pair).

use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use crate::headers::Headers;
use crate::spool::SpoolHost;
use crate::tracer::{ExportResponse, ExportStatus, Exporter, Property, RootHost, Severity, StreamHost, StreamTracer};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TraceRoot::default()) });
}}

/// The two raw host calls whose SDK wrappers cost more than they must on every request.
#[allow(unsafe_code, reason = "raw host calls: the SDK's versions panic on a non-UTF-8 name, or copy")]
mod raw {
    use proxy_wasm::types::MapType;

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        // The SDK declares the same imports with its `Status` enum as the result; a plain u32
        // cannot hold a value that is not a variant, whatever the host answers.
        #[allow(clashing_extern_declarations, reason = "same import and ABI as the SDK's, result as u32")]
        fn proxy_get_header_map_pairs(map_type: MapType, ret_data: *mut *mut u8, ret_size: *mut usize) -> u32;
        #[allow(clashing_extern_declarations, reason = "same import and ABI as the SDK's, result as u32")]
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            ret_data: *mut *mut u8,
            ret_size: *mut usize,
        ) -> u32;
    }

    /// Takes ownership of what the host handed over: `size` bytes at `data` allocated with this
    /// module's `proxy_on_memory_allocate` (`None` for a null pointer).
    ///
    /// # Safety
    /// `data` is null or came from the host on an OK status with exactly `size` bytes.
    unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
        // SAFETY: on OK the host handed over `size` bytes it allocated with this module's
        // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes, the SDK's allocator),
        // so the buffer is ours to own and free as a Vec of that length and capacity, exactly as
        // the SDK itself takes it.
        (!data.is_null()).then(|| unsafe { Vec::from_raw_parts(data, size, size) })
    }

    /// The serialised map, owned (empty when the host has none or refuses).
    pub fn serialized_map(map: MapType) -> Vec<u8> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: both out-pointers point at locals that live across the call; the host writes
        // a pointer and a length there and nothing else.
        let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
        if status != 0 {
            return Vec::new();
        }
        // SAFETY: an OK status: the host's buffer of `size` bytes, or null.
        unsafe { owned(data, size) }.unwrap_or_default()
    }

    /// A property by its serialised path (the SDK's `get_property` serialises the path into a
    /// new vector on every call). `None` when absent, empty, or refused, as the SDK reads it.
    pub fn property(path: &[u8]) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the path is a live slice for the call's duration; both out-pointers point at
        // locals, where the host writes a pointer and a length and nothing else.
        let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        if status != 0 {
            return None;
        }
        // SAFETY: an OK status: the host's buffer of `size` bytes, or null.
        unsafe { owned(data, size) }
    }
}

/// The host as proxy-wasm calls reach it (the acting context decides which stream).
struct ProxyWasmHost;

impl SpoolHost for ProxyWasmHost {
    fn register_queue(&self, name: &str) -> Option<u32> {
        hostcalls::register_shared_queue(name).ok()
    }

    fn enqueue(&self, queue: u32, item: &[u8]) -> bool {
        hostcalls::enqueue_shared_queue(queue, Some(item)).is_ok()
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        hostcalls::dequeue_shared_queue(queue).ok().flatten()
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            _ => None,
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

impl RootHost for ProxyWasmHost {
    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn log(&self, severity: Severity, message: &str) {
        let level = match severity {
            Severity::Warn => LogLevel::Warn,
            Severity::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn increment(&self, counter: u32, delta: i64) {
        let _ = hostcalls::increment_metric(counter, delta);
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), Some(body), vec![], timeout)
            .map_err(|status| format!("{status:?}"))
    }

    fn grpc_call(
        &self,
        service: &[u8],
        service_name: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, String> {
        // The SDK takes the service as text; the configuration refused a GrpcService that is not.
        let service = std::str::from_utf8(service)
            .map_err(|_| "the exporter's cluster and authority names are too long for a gRPC call".to_owned())?;
        hostcalls::dispatch_grpc_call(service, service_name, method, vec![], Some(message), timeout)
            .map_err(|status| format!("{status:?}"))
    }

    fn set_tick_period(&self, period: Duration) {
        let _ = hostcalls::set_tick_period(period);
    }

    fn property(&self, property: Property) -> Option<Vec<u8>> {
        raw::property(property.serialized())
    }
}

impl StreamHost for ProxyWasmHost {
    fn now(&self) -> SystemTime {
        RootHost::now(self)
    }

    fn request_headers(&self) -> Headers {
        Headers::serialized(raw::serialized_map(MapType::HttpRequestHeaders))
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value);
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
    }

    fn property(&self, property: Property) -> Option<Vec<u8>> {
        RootHost::property(self, property)
    }

    fn set_filter_state(&self, key: &str, value: &[u8]) {
        let _ = hostcalls::set_property(vec![key], Some(value));
    }

    fn increment(&self, counter: u32, delta: i64) {
        RootHost::increment(self, counter, delta);
    }
}

#[derive(Default)]
struct TraceRoot {
    exporter: Exporter,
}

impl Context for TraceRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        // The collector's answer is as untrusted as a client's: bytes, parsed only if they are
        // what they should be.
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let status = if num_headers > 0 {
            ExportStatus::Http(header(":status").and_then(|s| s.parse().ok()).unwrap_or(0))
        } else {
            ExportStatus::NoAnswer
        };
        let retry_after = header("retry-after");
        let response = ExportResponse { status, retry_after: retry_after.as_deref() };
        if self.exporter.on_response(&ProxyWasmHost, token_id, &response) {
            let _ = hostcalls::done();
        }
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        // The answer's message (ExportTraceServiceResponse) may carry a partial success; its
        // rejected spans are not told apart from the accepted ones.
        let response = ExportResponse { status: ExportStatus::Grpc(status_code), retry_after: None };
        if self.exporter.on_response(&ProxyWasmHost, token_id, &response) {
            let _ = hostcalls::done();
        }
    }

    fn on_done(&mut self) -> bool {
        // Drain the spool before the VM goes (shutdown or hot swap).
        self.exporter.on_shutdown(&ProxyWasmHost)
    }
}

impl RootContext for TraceRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        self.exporter.configure(&ProxyWasmHost, &bytes).is_ok()
    }

    fn on_tick(&mut self) {
        self.exporter.on_tick(&ProxyWasmHost);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        self.exporter.on_queue_ready(&ProxyWasmHost, queue_id);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TraceStream { tracer: self.exporter.stream()? }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TraceStream {
    tracer: StreamTracer,
}

impl Context for TraceStream {}

impl HttpContext for TraceStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.tracer.on_request_headers(&ProxyWasmHost);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.tracer.on_response_headers(&ProxyWasmHost);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.tracer.on_stream_done(&ProxyWasmHost);
    }
}
