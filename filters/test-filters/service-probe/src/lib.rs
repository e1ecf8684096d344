//! A Wasm service and its reporter, for the wasmtrace host's tests of `bootstrap_extensions`.
//!
//! Loaded with root id `service` (as an `envoy.bootstrap.wasm` WasmService), the root context
//! ticks every 50 ms and, on each tick with no callout in flight, calls `GET /check` on cluster
//! `upstream`; each answer adds one to the shared-data count `service.callouts` and records the
//! plugin configuration (the service's tag) as `service.tag` and the answer's body as
//! `service.last`. Loaded with any other root id (as an HTTP filter, same `vm_id`), every request
//! is answered locally with `callouts=<n> tag=<tag> last=<body>`.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

#[derive(Default)]
struct ProbeRoot {
    /// Running as the service (root id `service`), not as the reporting filter.
    service: bool,
    tag: String,
    in_flight: bool,
}

fn shared_text(key: &str) -> String {
    match hostcalls::get_shared_data(key) {
        Ok((Some(bytes), _)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    }
}

impl Context for ProbeRoot {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        self.in_flight = false;
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        // Compare-and-swap: every worker's VM of a non-singleton service counts here too.
        loop {
            let (count, cas) = match hostcalls::get_shared_data("service.callouts") {
                Ok((Some(bytes), cas)) => (String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0), cas),
                _ => (0, None),
            };
            let next = (count + 1).to_string();
            if hostcalls::set_shared_data("service.callouts", Some(next.as_bytes()), cas).is_ok() {
                break;
            }
        }
        let _ = hostcalls::set_shared_data("service.tag", Some(self.tag.as_bytes()), None);
        let _ = hostcalls::set_shared_data("service.last", Some(&body), None);
    }
}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let root_id = self.get_property(vec!["plugin_root_id"]).unwrap_or_default();
        self.service = root_id == b"service";
        self.tag = String::from_utf8_lossy(&self.get_plugin_configuration().unwrap_or_default()).into_owned();
        if self.service {
            self.set_tick_period(Duration::from_millis(50));
        }
        true
    }

    fn on_tick(&mut self) {
        if self.in_flight {
            return;
        }
        let headers = vec![(":method", "GET"), (":path", "/check"), (":authority", "upstream")];
        self.in_flight = self.dispatch_http_call("upstream", headers, None, vec![], Duration::from_secs(2)).is_ok();
    }

    fn get_type(&self) -> Option<ContextType> {
        (!self.service).then_some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        (!self.service).then(|| Box::new(Reporter) as Box<dyn HttpContext>)
    }
}

struct Reporter;

impl Context for Reporter {}

impl HttpContext for Reporter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let report = format!(
            "callouts={} tag={} last={}",
            shared_text("service.callouts"),
            shared_text("service.tag"),
            shared_text("service.last")
        );
        self.send_http_response(200, vec![], Some(report.as_bytes()));
        Action::Pause
    }
}
