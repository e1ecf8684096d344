//! The request-id filter: keeps the request id a client sent (when it looks like one) or
//! generates a UUID v4, sets it on the request for everything downstream (the trace filter records
//! it) and echoes it on the response so a user can quote it.
//!
//! A client's id that is not acceptable (too long, other characters, bytes that are not UTF-8)
//! is replaced, never passed on.
//!
//! Configuration (JSON, all optional): `{"header": "x-request-id", "preserve_external": true,
//! "echo_in_response": true}`.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RequestIdRoot { config: Rc::new(Config::default()) }) });
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    header: String,
    preserve_external: bool,
    echo_in_response: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { header: "x-request-id".into(), preserve_external: true, echo_in_response: true }
    }
}

struct RequestIdRoot {
    config: Rc<Config>,
}

impl Context for RequestIdRoot {}

impl RootContext for RequestIdRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) if !config.header.is_empty() => {
                self.config = Rc::new(Config { header: config.header.to_ascii_lowercase(), ..config });
                true
            }
            Ok(_) => {
                let _ = proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    "request-id configuration refused: field `header` is empty",
                );
                false
            }
            Err(e) => {
                let _ = proxy_wasm::hostcalls::log(LogLevel::Error, &format!("request-id configuration refused: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RequestId { config: self.config.clone(), id: String::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RequestId {
    config: Rc<Config>,
    id: String,
}

impl Context for RequestId {}

/// An id a client may choose: 1–128 visible ASCII characters (no spaces or separators).
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A random (version 4) UUID.
fn uuid_v4() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        bytes = nanos.to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

impl HttpContext for RequestId {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Read as bytes: the SDK's `String` call panics on a value that is not UTF-8 (obs-text is
        // legal HTTP). Such an id is not one a client may choose; a fresh one replaces it.
        let incoming = self
            .get_http_request_header_bytes(&self.config.header)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|id| self.config.preserve_external && acceptable(id));
        self.id = incoming.unwrap_or_else(uuid_v4);
        self.set_http_request_header(&self.config.header, Some(&self.id));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.config.echo_in_response && !self.id.is_empty() {
            self.set_http_response_header(&self.config.header, Some(&self.id));
        }
        Action::Continue
    }
}
