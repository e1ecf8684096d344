//! {{name}}: asks another service before each request goes on (an auth check, say), with the
//! request's trace context, so the call appears in the trace as a CLIENT span under the request's
//! span — and a traced callee's spans beneath it. The answer's status is recorded on the request's
//! span (`auth.status`). `wasmtrace_span::start_callout` needs the context the trace filter
//! chose, so this filter comes after the trace filter.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use wasmtrace_span::{TracedCallout, Value, add_attributes, current, start_callout};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Rc::new(Config::default()) }) });
}}

/// The plugin configuration:
/// `{"cluster": "auth", "path": "/check", "timeout_ms": 1000, "attribute": "auth.status"}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The cluster to call (a cluster of the proxy's configuration).
    pub cluster: String,
    /// The path to ask.
    pub path: String,
    /// How long to wait for the answer.
    pub timeout_ms: u64,
    /// The request span's attribute for the answer's status.
    pub attribute: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { cluster: "auth".into(), path: "/check".into(), timeout_ms: 1000, attribute: "auth.status".into() }
    }
}

/// The configuration in `bytes` (empty: the defaults), or why not.
pub fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    if bytes.is_empty() {
        return Ok(Config::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("{{name}} configuration refused: {e}"))
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        match parse_config(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(message) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Ask { config: self.config.clone(), callout: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Ask {
    config: Rc<Config>,
    callout: Option<TracedCallout>,
}

impl Context for Ask {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body_size: usize, _trailers: usize) {
        let status = self.get_http_call_response_header(":status").and_then(|s| s.parse::<u16>().ok());
        if let Some(callout) = self.callout.take() {
            callout.finish(&current(), status);
        }
        let status = status.map_or_else(|| "no answer".to_owned(), |s| s.to_string());
        add_attributes(&current(), &[(self.config.attribute.as_str(), Value::from(status))]);
        self.resume_http_request();
    }
}

impl HttpContext for Ask {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let config = self.config.clone();
        let callout = start_callout(&current(), &format!("GET {}", config.cluster), "GET", &config.cluster);
        let traceparent = callout.as_ref().map(TracedCallout::traceparent);
        let mut headers = vec![(":method", "GET"), (":path", config.path.as_str()), (":authority", config.cluster.as_str())];
        if let Some(traceparent) = &traceparent {
            headers.push(("traceparent", traceparent.as_str()));
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        match self.dispatch_http_call(&config.cluster, headers, None, vec![], timeout) {
            Ok(_) => {
                self.callout = callout;
                Action::Pause
            }
            Err(_) => {
                if let Some(callout) = callout {
                    callout.finish(&current(), None);
                }
                add_attributes(&current(), &[(config.attribute.as_str(), Value::from("not sent"))]);
                Action::Continue
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_defaults_and_refuses_unknown_fields() {
        assert_eq!(parse_config(b""), Ok(Config::default()));
        let config = parse_config(br#"{"cluster": "policy"}"#).expect("valid");
        assert_eq!((config.cluster.as_str(), config.path.as_str()), ("policy", "/check"));
        assert!(parse_config(br#"{"other": 1}"#).is_err());
    }
}
