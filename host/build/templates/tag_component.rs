//! {{name}}: tags each request's span with an attribute taken from a request header (by default
//! `x-tenant` as `tenant.id`), through `wasmtrace_span::add_attributes`: the trace filter records
//! it when it ends the span, so this filter may sit before or after the trace filter.

use std::cell::RefCell;

use serde::Deserialize;
use wasmtrace_filter_guest::{Action, Filter, HeaderPart, HttpStream};
use wasmtrace_span::{Value, add_attributes, current};

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

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct Tag;

impl Filter for Tag {
    fn configure(configuration: Vec<u8>, _vm_configuration: Vec<u8>) -> Result<(), String> {
        let config = parse_config(&configuration)?;
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }

    fn on_request_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        CONFIG.with(|config| {
            let config = config.borrow();
            if let Some(value) = stream.header_text(HeaderPart::RequestHeaders, &config.header) {
                add_attributes(&current(), &[(config.attribute.as_str(), Value::from(value))]);
            }
        });
        Action::Continue
    }
}

wasmtrace_filter_guest::export_filter!(Tag);

