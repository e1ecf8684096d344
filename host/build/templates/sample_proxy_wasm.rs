//! {{name}}: traces every request of one customer, whatever the sampler says, and tells the
//! caller its trace id. A request whose `x-customer` header is `acme` (both configurable) is
//! sampled through `wasmtrace_span::set_sampling` (or, with `"decision": "drop"`, never traced) —
//! so this filter must come before the trace filter — and a traced request's response carries
//! the trace id the trace filter chose (`x-trace-id`), read with `wasmtrace_span::trace_context`
//! once the trace filter has run.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use wasmtrace_span::{Sampling, Value, add_event, current, set_sampling, trace_context};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Rc::new(Config::default()) }) });
}}

/// The plugin configuration:
/// `{"header": "x-customer", "value": "acme", "decision": "sample", "trace_id_header": "x-trace-id"}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The request header that names the customer.
    pub header: String,
    /// The customer whose requests are decided.
    pub value: String,
    /// Trace them all (`sample`) or none (`drop`).
    pub decision: Decision,
    /// The response header that carries the trace id (empty: none).
    pub trace_id_header: String,
}

/// What happens to the customer's requests.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Traced, whatever the sampler says.
    Sample,
    /// Never traced.
    Drop,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            header: "x-customer".into(),
            value: "acme".into(),
            decision: Decision::Sample,
            trace_id_header: "x-trace-id".into(),
        }
    }
}

impl Decision {
    fn sampling(self) -> Sampling {
        match self {
            Self::Sample => Sampling::Sample,
            Self::Drop => Sampling::Drop,
        }
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
        Some(Box::new(Sample { config: self.config.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Sample {
    config: Rc<Config>,
}

impl Context for Sample {}

impl HttpContext for Sample {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header(&self.config.header).as_deref() == Some(self.config.value.as_str()) {
            set_sampling(&current(), self.config.decision.sampling());
            // Says on the span (when there is one) why it was traced.
            add_event(&current(), "sampling.decided", &[("customer", Value::from(self.config.value.as_str()))]);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if !self.config.trace_id_header.is_empty()
            && let Some(context) = trace_context(&current()).filter(|c| c.sampled)
        {
            self.set_http_response_header(&self.config.trace_id_header, Some(&context.trace_id_hex()));
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_defaults_and_refuses_unknown_fields() {
        assert_eq!(parse_config(b""), Ok(Config::default()));
        let config = parse_config(br#"{"value": "globex", "decision": "drop"}"#).expect("valid");
        assert_eq!((config.header.as_str(), config.value.as_str()), ("x-customer", "globex"));
        assert_eq!(config.decision, Decision::Drop);
        assert!(parse_config(br#"{"other": 1}"#).is_err());
    }
}
