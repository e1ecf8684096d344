//! {{name}}: tags each request's span with an attribute taken from a request header (by default
//! `x-tenant` as `tenant.id`), through `wasmtrace_span::add_attributes`: the trace filter records
//! it when it ends the span, so this filter may sit before or after the trace filter.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use wasmtrace_span::{Value, add_attributes, current};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Rc::new(Config::default()) }) });
}}

/// The plugin configuration: `{"header": "x-tenant", "attribute": "tenant.id"}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The request header to read.
    pub header: String,
    /// The span attribute to set to its value.
    pub attribute: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { header: "x-tenant".into(), attribute: "tenant.id".into() }
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
        Some(Box::new(Tag { config: self.config.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Tag {
    config: Rc<Config>,
}

impl Context for Tag {}

impl HttpContext for Tag {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(value) = self.get_http_request_header(&self.config.header) {
            add_attributes(&current(), &[(self.config.attribute.as_str(), Value::from(value))]);
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
        let config = parse_config(br#"{"header": "x-customer", "attribute": "customer.id"}"#).expect("valid");
        assert_eq!(config.attribute, "customer.id");
        assert!(parse_config(br#"{"header": "x", "attribute": "y", "other": 1}"#).is_err());
    }
}
