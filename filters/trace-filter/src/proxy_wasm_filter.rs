//! The proxy-wasm front door (what Envoy and the wasmtrace host load): the root and stream
//! contexts hand the proxy-wasm calls to [`crate::tracer`].

use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use crate::tracer::{ExportResponse, Exporter, RootHost, Severity, StreamHost, StreamTracer};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TraceRoot::default()) });
}}

/// The host as proxy-wasm calls reach it (the acting context decides which stream).
struct ProxyWasmHost;

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

    fn set_tick_period(&self, period: Duration) {
        let _ = hostcalls::set_tick_period(period);
    }
}

impl StreamHost for ProxyWasmHost {
    fn now(&self) -> SystemTime {
        RootHost::now(self)
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, name).ok().flatten()
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
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
        let header = |name: &str| hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name).ok().flatten();
        let status = (num_headers > 0).then(|| header(":status").and_then(|s| s.parse().ok()).unwrap_or(0));
        let retry_after = header("retry-after");
        let response = ExportResponse { status, retry_after: retry_after.as_deref() };
        if self.exporter.on_response(&ProxyWasmHost, token_id, &response) {
            let _ = hostcalls::done();
        }
    }

    fn on_done(&mut self) -> bool {
        // Flush what is queued before the VM goes (shutdown or hot swap).
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
