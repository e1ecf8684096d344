//! A filter that exercises the proxy-wasm host functions and makes every result observable, for
//! the wasmtrace runtime's conformance tests. Behaviour is chosen by the request path; every
//! response carries `x-probe-saw-content-length`, the `content-length` (or `none`) the probe saw.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

const QUEUE: &str = "probe-queue";

#[derive(Default)]
struct ProbeRoot {
    queue_id: Option<u32>,
    /// Configured `delay_done`: finish only on the tick after `on_done`.
    delay_done: bool,
    done_requested: bool,
}

fn counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

impl Context for ProbeRoot {
    fn on_done(&mut self) -> bool {
        if !self.delay_done {
            return true;
        }
        // Like a tracing filter flushing its last batch: done later, through `proxy_done`.
        log::info_line("done requested; finishing on the next tick");
        self.done_requested = true;
        self.set_tick_period(Duration::from_millis(10));
        false
    }
}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        let vm_config = self.get_vm_configuration().unwrap_or_default();
        log::info_line(&format!("vm start: {}", String::from_utf8_lossy(&vm_config)));
        // Standard output goes through WASI fd_write and must come out as a log line.
        println!("stdout reaches the host log");
        if let Ok(greeting) = std::env::var("PROBE_GREETING") {
            log::info_line(&format!("env PROBE_GREETING={greeting}"));
        }
        self.queue_id = Some(self.register_shared_queue(QUEUE));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config).into_owned();
        log::info_line(&format!("configured: {config}"));
        self.delay_done = config == "delay_done";
        if let Some(ms) = config.strip_prefix("tick_ms=").and_then(|ms| ms.trim().parse::<u64>().ok()) {
            self.set_tick_period(Duration::from_millis(ms));
        }
        true
    }

    fn on_tick(&mut self) {
        if self.done_requested {
            log::info_line("finishing");
            self.done();
            return;
        }
        if let Some(id) = counter("probe_ticks_total") {
            let _ = hostcalls::increment_metric(id, 1);
        }
        log::info_line("tick");
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            log::info_line(&format!("dequeued: {}", String::from_utf8_lossy(&item)));
            if let Some(id) = counter("probe_dequeued_total") {
                let _ = hostcalls::increment_metric(id, 1);
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe { context_id, path: String::new(), body_paused: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    context_id: u32,
    path: String,
    /// `/stream-echo/paused`: the first request body chunk was held for a callout.
    body_paused: bool,
}

/// `proxy_get_property` called directly, to tell a present empty value (status `OK`, no bytes)
/// from an absent one (`NOT_FOUND`): the SDK reports both as `None`.
mod raw_property {
    use std::ptr::null_mut;

    #[allow(unsafe_code, reason = "the host function the SDK's get_property wraps")]
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
    }

    /// What the host answered for `path`.
    pub enum Answer {
        /// `OK` with these bytes (none for an empty value).
        Value(Vec<u8>),
        /// `NOT_FOUND`.
        Absent,
        /// Any other status.
        Status(u32),
    }

    pub fn get(path: &[&str]) -> Answer {
        let mut serialized = Vec::new();
        for segment in path {
            serialized.extend_from_slice(segment.as_bytes());
            serialized.push(0);
        }
        serialized.pop();
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        #[allow(unsafe_code, reason = "the one raw host call; the SDK's wrapper hides empty values")]
        // SAFETY: the path buffer outlives the call; the host writes the two out-parameters and,
        // for a non-empty value, hands over a buffer it allocated with this module's allocator,
        // which the Vec then owns (as the SDK's own wrapper does).
        let status = unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
        match status {
            0 if data.is_null() => Answer::Value(Vec::new()),
            #[allow(unsafe_code, reason = "taking ownership of the host's buffer")]
            // SAFETY: see above; `data` points at `size` initialised bytes allocated for us.
            0 => Answer::Value(unsafe { Vec::from_raw_parts(data, size, size) }),
            1 => Answer::Absent,
            other => Answer::Status(other),
        }
    }
}

/// How `/attrs` renders an attribute of a known type into a header value.
#[derive(Clone, Copy)]
enum Shape {
    Text,
    Int,
    UInt,
    Double,
    Bool,
    /// Proxy-wasm pairs (a map or a list), rendered `key=value` joined by `;`.
    Pairs,
    /// Raw bytes in hex (protobuf messages).
    Hex,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text when it is printable ASCII, else `0x` and hex.
fn printable(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        format!("0x{}", hex(bytes))
    }
}

fn word(bytes: &[u8]) -> Option<[u8; 8]> {
    bytes.try_into().ok()
}

/// Proxy-wasm pairs: a u32 count, the lengths, then NUL-terminated keys and values.
fn pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let u32_at =
        |at: usize| -> Option<usize> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize) };
    let count = u32_at(0)?;
    let mut lengths = Vec::new();
    for i in 0..count {
        lengths.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::new();
    for (k, v) in lengths {
        let key = bytes.get(at..at + k)?.to_vec();
        at += k + 1;
        let value = bytes.get(at..at + v)?.to_vec();
        at += v + 1;
        out.push((key, value));
    }
    Some(out)
}

fn render(bytes: &[u8], shape: Shape) -> String {
    let number = |bytes: &[u8], f: fn([u8; 8]) -> String| word(bytes).map_or_else(|| format!("bad:{}", hex(bytes)), f);
    match shape {
        Shape::Text => printable(bytes),
        Shape::Int => number(bytes, |w| i64::from_le_bytes(w).to_string()),
        Shape::UInt => number(bytes, |w| u64::from_le_bytes(w).to_string()),
        Shape::Double => number(bytes, |w| f64::from_le_bytes(w).to_string()),
        Shape::Bool => match bytes {
            [0] => "false".to_owned(),
            [1] => "true".to_owned(),
            other => format!("bad:{}", hex(other)),
        },
        Shape::Pairs => match pairs(bytes) {
            Some(entries) => {
                entries.iter().map(|(k, v)| format!("{}={}", printable(k), printable(v))).collect::<Vec<_>>().join(";")
            }
            None => format!("bad:{}", hex(bytes)),
        },
        Shape::Hex => hex(bytes),
    }
}

/// An attribute as `/attrs` reports it: `absent`, `empty`, `status:N` or the rendered value.
fn attribute(path: &[&str], shape: Shape) -> String {
    match raw_property::get(path) {
        raw_property::Answer::Value(bytes) if bytes.is_empty() => "empty".to_owned(),
        raw_property::Answer::Value(bytes) => render(&bytes, shape),
        raw_property::Answer::Absent => "absent".to_owned(),
        raw_property::Answer::Status(status) => format!("status:{status}"),
    }
}

/// What `/attrs` reads in the request phase (`x-attr-<name>` request headers): the
/// configuration's attributes, the connection's, and the upstream's before there is one.
const REQUEST_ATTRIBUTES: &[(&str, &[&str], Shape)] = &[
    ("route-name", &["xds", "route_name"], Shape::Text),
    ("virtual-host-name", &["xds", "virtual_host_name"], Shape::Text),
    ("cluster-name", &["xds", "cluster_name"], Shape::Text),
    ("filter-chain-name", &["xds", "filter_chain_name"], Shape::Text),
    ("listener-direction", &["xds", "listener_direction"], Shape::Int),
    ("listener-tier", &["xds", "listener_metadata", "filter_metadata", "acme", "tier"], Shape::Text),
    ("listener-metadata", &["xds", "listener_metadata"], Shape::Hex),
    ("route-owner", &["xds", "route_metadata", "filter_metadata", "acme", "owner"], Shape::Text),
    ("route-weight", &["xds", "route_metadata", "filter_metadata", "acme", "weight"], Shape::Double),
    ("route-canary", &["xds", "route_metadata", "filter_metadata", "acme", "canary"], Shape::Bool),
    ("route-tags", &["xds", "route_metadata", "filter_metadata", "acme", "tags"], Shape::Pairs),
    ("route-tag-1", &["xds", "route_metadata", "filter_metadata", "acme", "tags", "1"], Shape::Text),
    ("route-nested", &["xds", "route_metadata", "filter_metadata", "acme", "nested"], Shape::Pairs),
    ("route-null", &["xds", "route_metadata", "filter_metadata", "acme", "nothing"], Shape::Text),
    ("virtual-host-zone", &["xds", "virtual_host_metadata", "filter_metadata", "acme", "zone"], Shape::Text),
    ("cluster-shard", &["xds", "cluster_metadata", "filter_metadata", "acme", "shard"], Shape::Double),
    ("cluster-namespaces", &["xds", "cluster_metadata", "filter_metadata"], Shape::Pairs),
    ("host-version", &["xds", "upstream_host_metadata", "filter_metadata", "envoy.lb", "version"], Shape::Text),
    ("dynamic-metadata", &["metadata"], Shape::Hex),
    ("dynamic-filter-metadata", &["metadata", "filter_metadata"], Shape::Hex),
    ("connection-id", &["connection", "id"], Shape::UInt),
    ("connection-mtls", &["connection", "mtls"], Shape::Bool),
    ("connection-sni", &["connection", "requested_server_name"], Shape::Text),
    ("connection-tls-version", &["connection", "tls_version"], Shape::Text),
    ("connection-peer-subject", &["connection", "subject_peer_certificate"], Shape::Text),
    ("connection-termination", &["connection", "termination_details"], Shape::Text),
    ("upstream-address", &["upstream", "address"], Shape::Text),
    ("upstream-attempts", &["upstream", "request_attempt_count"], Shape::UInt),
    ("top-route-name", &["route_name"], Shape::Text),
    ("top-cluster-shard", &["cluster_metadata", "filter_metadata", "acme", "shard"], Shape::Double),
    ("top-node-id", &["node", "id"], Shape::Text),
];

/// What `/attrs` reads in the response phase (`x-attr-<name>` response headers): the upstream's.
const RESPONSE_ATTRIBUTES: &[(&str, &[&str], Shape)] = &[
    ("upstream-address", &["upstream", "address"], Shape::Text),
    ("upstream-port", &["upstream", "port"], Shape::Int),
    ("upstream-local-address", &["upstream", "local_address"], Shape::Text),
    ("upstream-failure", &["upstream", "transport_failure_reason"], Shape::Text),
    ("upstream-attempts", &["upstream", "request_attempt_count"], Shape::UInt),
    ("upstream-tls-version", &["upstream", "tls_version"], Shape::Text),
    ("upstream-locality", &["upstream", "locality"], Shape::Hex),
    ("host-version", &["xds", "upstream_host_metadata", "filter_metadata", "envoy.lb", "version"], Shape::Text),
    ("host-metadata", &["xds", "upstream_host_metadata"], Shape::Hex),
];

/// Logging through the SDK's `proxy_log` wrapper.
mod log {
    pub fn info_line(message: &str) {
        let _ = proxy_wasm::hostcalls::log(proxy_wasm::types::LogLevel::Info, message);
    }
}

impl Probe {
    fn property_text(&self, path: Vec<&str>) -> String {
        match self.get_property(path) {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => "none".to_owned(),
        }
    }

    fn property_int(&self, path: Vec<&str>) -> String {
        match self.get_property(path) {
            Some(bytes) if bytes.len() == 8 => {
                let mut word = [0u8; 8];
                word.copy_from_slice(&bytes);
                i64::from_le_bytes(word).to_string()
            }
            _ => "none".to_owned(),
        }
    }

    fn report_properties(&self) {
        self.set_property(vec!["probe_state"], Some(b"set-by-probe"));
        let reports = [
            ("x-prop-plugin-name", self.property_text(vec!["plugin_name"])),
            ("x-prop-root-id", self.property_text(vec!["plugin_root_id"])),
            ("x-prop-vm-id", self.property_text(vec!["plugin_vm_id"])),
            ("x-prop-path", self.property_text(vec!["request", "path"])),
            ("x-prop-method", self.property_text(vec!["request", "method"])),
            ("x-prop-source", self.property_text(vec!["source", "address"])),
            ("x-prop-source-port", self.property_int(vec!["source", "port"])),
            ("x-prop-region", self.property_text(vec!["xds", "node", "metadata", "region"])),
            ("x-prop-node-id", self.property_text(vec!["xds", "node", "id"])),
            ("x-prop-missing", self.property_text(vec!["no", "such", "thing"])),
            ("x-prop-roundtrip", self.property_text(vec!["probe_state"])),
            ("x-prop-route-name", self.property_text(vec!["route_name"])),
            ("x-prop-xds-route-name", self.property_text(vec!["xds", "route_name"])),
            ("x-prop-cluster-name", self.property_text(vec!["cluster_name"])),
            ("x-prop-xds-cluster-name", self.property_text(vec!["xds", "cluster_name"])),
            ("x-prop-listener-direction", self.property_int(vec!["listener_direction"])),
        ];
        for (name, value) in reports {
            self.add_http_request_header(name, &value);
        }
    }

    fn count_in_shared_data(&self) {
        let (value, cas) = self.get_shared_data("probe-counter");
        let current: u64 = value.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        let next = (current + 1).to_string();
        let first = self.set_shared_data("probe-counter", Some(next.as_bytes()), cas);
        // Any version other than the current one must lose.
        let (_, current) = self.get_shared_data("probe-counter");
        let stale = self.set_shared_data("probe-counter", Some(b"stale"), current.map(|v| v.wrapping_add(1)));
        let outcome = |r: Result<(), Status>| match r {
            Ok(()) => "ok".to_owned(),
            Err(status) => format!("{status:?}"),
        };
        self.add_http_request_header("x-shared", &format!("{next},{},{}", outcome(first), outcome(stale)));
    }

    fn enqueue(&self) {
        let vm_id = self.property_text(vec!["plugin_vm_id"]);
        match self.resolve_shared_queue(&vm_id, QUEUE) {
            Some(queue) => {
                let result = self.enqueue_shared_queue(queue, Some(self.path.as_bytes()));
                self.add_http_request_header("x-enqueued", if result.is_ok() { "yes" } else { "failed" });
            }
            None => self.add_http_request_header("x-enqueued", "no queue"),
        }
    }
}

impl Context for Probe {
    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if num_headers == 0 {
            let (_, reason) = self.get_grpc_status();
            self.send_http_response(
                503,
                vec![("x-callout", "failed")],
                Some(format!("callout failed: {}\n", reason.unwrap_or_default()).as_bytes()),
            );
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        self.add_http_request_header("x-callout-status", &status);
        self.add_http_request_header("x-callout-body", &String::from_utf8_lossy(&body));
        self.resume_http_request();
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in self.get_http_request_headers() {
            log::info_line(&format!("#{} -> {name}: {value}", self.context_id));
        }
        if let Some(id) = counter("probe_requests_total") {
            let _ = hostcalls::increment_metric(id, 1);
        }
        if let Ok(id) = hostcalls::define_metric(MetricType::Histogram, "probe_request_header_count") {
            let _ = hostcalls::record_metric(id, num_headers as u64);
        }
        if let Ok(id) = hostcalls::define_metric(MetricType::Gauge, "probe_last_context_id") {
            let _ = hostcalls::record_metric(id, u64::from(self.context_id));
        }
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        self.add_http_request_header("x-probe", &format!("ctx={}", self.context_id));
        if self.get_http_request_header("x-replace-me").is_some() {
            self.set_http_request_header("x-replace-me", Some("replaced"));
        }
        self.remove_http_request_header("x-remove-me");

        match self.path.as_str() {
            "/local" => {
                self.send_http_response(403, vec![("x-local", "yes")], Some(b"denied by probe\n"));
                Action::Pause
            }
            "/callout" | "/callout-to-unknown-cluster" => {
                let cluster = if self.path == "/callout" { "auth" } else { "no-such-cluster" };
                match self.dispatch_http_call(
                    cluster,
                    vec![(":method", "POST"), (":path", "/check"), (":authority", "auth.local"), ("x-from", "probe")],
                    Some(b"ping"),
                    vec![],
                    Duration::from_secs(1),
                ) {
                    Ok(_token) => Action::Pause,
                    Err(status) => {
                        self.add_http_request_header("x-callout-error", &format!("{status:?}"));
                        Action::Continue
                    }
                }
            }
            "/shared" => {
                self.count_in_shared_data();
                Action::Continue
            }
            "/enqueue" => {
                self.enqueue();
                Action::Continue
            }
            "/props" => {
                self.report_properties();
                Action::Continue
            }
            path if path.starts_with("/attrs") => {
                for (name, path, shape) in REQUEST_ATTRIBUTES {
                    self.add_http_request_header(&format!("x-attr-{name}"), &attribute(path, *shape));
                }
                Action::Continue
            }
            "/reroute" => {
                // The route as resolved before this filter ran, then a path another route serves.
                let before = self.property_text(vec!["xds", "route_name"]);
                self.add_http_request_header("x-probe-route-before", &before);
                self.set_http_request_header(":path", Some("/api/rerouted"));
                Action::Continue
            }
            "/close" => {
                self.reset_http_request();
                Action::Pause
            }
            "/misc" => {
                let level = hostcalls::get_log_level().map(|l| format!("{l:?}")).unwrap_or_default();
                self.add_http_request_header("x-log-level", &level);
                let nanos =
                    self.get_current_time().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                self.add_http_request_header("x-time-nanos", &nanos.to_string());
                let foreign = hostcalls::call_foreign_function("no_such_function", None);
                self.add_http_request_header("x-foreign", &format!("{:?}", foreign.err()));
                let grpc = self.dispatch_grpc_call("auth", "svc", "method", vec![], None, Duration::from_secs(1));
                self.add_http_request_header("x-grpc", &format!("{:?}", grpc.err()));
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.path == "/stream-echo/paused" && !end_of_stream && !self.body_paused {
            // Hold the first chunk until a callout answers; the answer resumes the request.
            self.body_paused = true;
            let headers = vec![(":method", "POST"), (":path", "/check"), (":authority", "auth.local")];
            return match self.dispatch_http_call("auth", headers, Some(b"ping"), vec![], Duration::from_secs(1)) {
                Ok(_token) => Action::Pause,
                Err(_) => Action::Continue,
            };
        }
        if self.path != "/body" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let upper = String::from_utf8_lossy(&body).to_uppercase();
        self.set_http_request_body(0, body_size, upper.as_bytes());
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let checksum = self.get_http_request_trailer("x-checksum").unwrap_or_else(|| "none".into());
        self.add_http_request_trailer("x-probe-saw-checksum", &checksum);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        for (name, value) in self.get_http_response_trailers() {
            log::info_line(&format!("#{} <- trailer {name}: {value}", self.context_id));
        }
        // What it saw of the upstream's checksum, for the client to read (announced in the
        // response headers).
        if let Some(checksum) = self.get_http_response_trailer("x-upstream-checksum") {
            self.add_http_response_trailer("x-probe-saw-upstream-checksum", &checksum);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in self.get_http_response_headers() {
            log::info_line(&format!("#{} <- {name}: {value}", self.context_id));
        }
        self.add_http_response_header("x-probe-response", "yes");
        if self.path.starts_with("/attrs") {
            for (name, path, shape) in RESPONSE_ATTRIBUTES {
                self.add_http_response_header(&format!("x-attr-{name}"), &attribute(path, *shape));
            }
        }
        // What this filter was told the body's length is, for the client to read.
        let length = self.get_http_response_header("content-length").unwrap_or_else(|| "none".to_owned());
        self.add_http_response_header("x-probe-saw-content-length", &length);
        if self.path == "/redact" {
            self.set_http_response_header("content-length", None);
        }
        if let Some(announced) = self.get_http_response_header("trailer")
            && announced.contains("x-upstream-checksum")
        {
            // The trailer on_http_response_trailers adds, announced as HTTP/1 needs.
            self.set_http_response_header("trailer", Some(&format!("{announced}, x-probe-saw-upstream-checksum")));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.path == "/rewrite-keep-length" {
            // A careless rewrite: a longer body, and `content-length` left as it was.
            if !end_of_stream {
                return Action::Pause;
            }
            self.set_http_response_body(0, body_size, b"rewritten by the probe, content-length left alone\n");
            return Action::Continue;
        }
        if self.path != "/redact" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let replacement = format!("redacted ({body_size} bytes)\n");
        self.set_http_response_body(0, body_size, replacement.as_bytes());
        Action::Continue
    }

    fn on_log(&mut self) {
        let code = self.property_int(vec!["response", "code"]);
        log::info_line(&format!("#{} completed with {code}.", self.context_id));
    }
}
