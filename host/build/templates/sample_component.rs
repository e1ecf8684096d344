//! {{name}}: traces every request of one customer, whatever the sampler says, and tells the
//! caller its trace id. A request whose `x-customer` header is `acme` (both configurable) is
//! sampled through `wasmtrace_span::set_sampling` (or, with `"decision": "drop"`, never traced) —
//! so this filter must come before the trace filter — and a traced request's response carries
//! the trace id the trace filter chose (`x-trace-id`), read with `wasmtrace_span::trace_context`
//! once the trace filter has run.

use std::cell::RefCell;

use serde::Deserialize;
use wasmtrace_filter_guest::{Action, Filter, HeaderPart, HttpStream};
use wasmtrace_span::{Sampling, Value, add_event, current, set_sampling, trace_context};

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

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct Sample;

impl Filter for Sample {
    fn configure(configuration: Vec<u8>, _vm_configuration: Vec<u8>) -> Result<(), String> {
        let config = parse_config(&configuration)?;
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }

    fn on_request_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        CONFIG.with(|config| {
            let config = config.borrow();
            if stream.header_text(HeaderPart::RequestHeaders, &config.header).as_deref() == Some(config.value.as_str()) {
                set_sampling(&current(), config.decision.sampling());
                // Says on the span (when there is one) why it was traced.
                add_event(&current(), "sampling.decided", &[("customer", Value::from(config.value.as_str()))]);
            }
        });
        Action::Continue
    }

    fn on_response_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        CONFIG.with(|config| {
            let config = config.borrow();
            if !config.trace_id_header.is_empty()
                && let Some(context) = trace_context(&current()).filter(|c| c.sampled)
            {
                stream.set_header(HeaderPart::ResponseHeaders, &config.trace_id_header, context.trace_id_hex().as_bytes());
            }
        });
        Action::Continue
    }
}

wasmtrace_filter_guest::export_filter!(Sample);
