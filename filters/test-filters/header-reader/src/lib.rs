//! The smallest realistic filter: reads the request headers and one response header, the way a
//! tracing filter does on every request. The runtime benchmark measures its per-request cost.
//!
//! Values are read as bytes (the SDK's `_bytes` calls): its `String` calls panic on a value that
//! is not UTF-8, and obs-text (bytes ≥ 0x80) is legal in HTTP/1.1 field values.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(HeaderReader { traceparent: None }) });
}}

struct HeaderReader {
    traceparent: Option<Vec<u8>>,
}

impl Context for HeaderReader {}

impl HttpContext for HeaderReader {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers_bytes();
        self.traceparent = headers.into_iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let status = self.get_http_response_header_bytes(":status");
        std::hint::black_box((status, &self.traceparent));
        Action::Continue
    }
}
