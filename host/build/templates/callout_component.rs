//! {{name}}: asks another service before each request goes on (an auth check, say), with the
//! request's trace context, so the call appears in the trace as a CLIENT span under the request's
//! span — and a traced callee's spans beneath it. The answer's status is recorded on the request's
//! span (`auth.status`). `wasmtrace_span::start_callout` needs the context the trace filter
//! chose, so this filter comes after the trace filter.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Deserialize;
use wasmtrace_filter_guest::host::{self, PendingCallout};
use wasmtrace_filter_guest::{Action, CalloutError, CalloutRequest, CalloutResponse, Filter, HttpStream};
use wasmtrace_span::{TracedCallout, Value, add_attributes, current, start_callout};

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
    pub timeout_ms: u32,
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

/// A callout in flight: its handle (dropping it would mean the answer is not wanted) and its
/// span, finished when the answer comes.
struct Asking {
    _pending: PendingCallout,
    span: Option<TracedCallout>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    static ASKING: RefCell<HashMap<u32, Asking>> = RefCell::new(HashMap::new());
}

struct Ask;

impl Filter for Ask {
    fn configure(configuration: Vec<u8>, _vm_configuration: Vec<u8>) -> Result<(), String> {
        let config = parse_config(&configuration)?;
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }

    fn on_request_headers(_stream: &HttpStream, _end_of_stream: bool) -> Action {
        let config = CONFIG.with(|c| c.borrow().clone());
        let span = start_callout(&current(), &format!("GET {}", config.cluster), "GET", &config.cluster);
        let mut headers = vec![
            (":method".to_owned(), "GET".to_owned()),
            (":path".to_owned(), config.path.clone()),
            (":authority".to_owned(), config.cluster.clone()),
        ];
        if let Some(span) = &span {
            headers.push(("traceparent".to_owned(), span.traceparent()));
        }
        let request = CalloutRequest { cluster: config.cluster.clone(), headers, body: Vec::new(), timeout_ms: config.timeout_ms };
        match host::http_call(&request) {
            Ok(pending) => {
                ASKING.with(|a| a.borrow_mut().insert(pending.id(), Asking { _pending: pending, span }));
                // Held until the answer: `on_callout_response` resumes the request.
                Action::Pause
            }
            Err(_) => {
                if let Some(span) = span {
                    span.finish(&current(), None);
                }
                add_attributes(&current(), &[(config.attribute.as_str(), Value::from("not sent"))]);
                Action::Continue
            }
        }
    }

    fn on_callout_response(stream: Option<&HttpStream>, callout: u32, outcome: Result<CalloutResponse, CalloutError>) {
        let Some(asking) = ASKING.with(|a| a.borrow_mut().remove(&callout)) else { return };
        // `None`: the request has gone meanwhile; there is nothing left to tag or resume.
        let Some(stream) = stream else { return };
        let status = outcome.as_ref().ok().map(|response| response.status);
        if let Some(span) = asking.span {
            span.finish(&current(), status);
        }
        let attribute = CONFIG.with(|c| c.borrow().attribute.clone());
        let status = status.map_or_else(|| "no answer".to_owned(), |s| s.to_string());
        add_attributes(&current(), &[(attribute.as_str(), Value::from(status))]);
        stream.resume(true);
    }
}

wasmtrace_filter_guest::export_filter!(Ask);

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
