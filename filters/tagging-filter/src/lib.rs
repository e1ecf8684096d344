//! The tagging filter: adds span attributes from rules over request headers, path segments and
//! the response status, and hands them to the trace filter through the stream's filter state
//! (`proxy_set_property("wasmtrace_span_attributes", <JSON object>)`) — a mechanism Envoy has too,
//! so the filters compose the same way there.
//!
//! Configuration: `{"rules": [{"attribute": "gallery.tenant", "request_header": "x-tenant"},
//! {"attribute": "gallery.api_version", "path_segment": 0}, {"attribute": "gallery.failed",
//! "status_at_least": 500, "value": "true"}, {"attribute": "deployment.color", "value": "blue"}]}`.
//! Put it before the trace filter in `http_filters`.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use serde_json::{Map, Value};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TaggingRoot { rules: Rc::new(Vec::new()) }) });
}}

/// The property the trace filter reads.
const SPAN_ATTRIBUTES_PROPERTY: &str = "wasmtrace_span_attributes";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    attribute: String,
    #[serde(default)]
    request_header: Option<String>,
    #[serde(default)]
    path_segment: Option<usize>,
    #[serde(default)]
    status_at_least: Option<u16>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

struct TaggingRoot {
    rules: Rc<Vec<Rule>>,
}

impl Context for TaggingRoot {}

impl RootContext for TaggingRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                for (i, rule) in config.rules.iter().enumerate() {
                    let sources =
                        [rule.request_header.is_some(), rule.path_segment.is_some(), rule.status_at_least.is_some()];
                    let valid = !rule.attribute.is_empty()
                        && sources.iter().filter(|s| **s).count() <= 1
                        && (rule.value.is_some() || sources.iter().any(|s| *s))
                        && !(rule.status_at_least.is_some() && rule.value.is_none());
                    if !valid {
                        let _ = proxy_wasm::hostcalls::log(
                            LogLevel::Error,
                            &format!(
                                "tagging configuration refused: field `rules[{i}]` needs an attribute and one source (request_header, path_segment, or status_at_least with a value) or a static value"
                            ),
                        );
                        return false;
                    }
                }
                self.rules = Rc::new(config.rules);
                true
            }
            Err(e) => {
                let _ = proxy_wasm::hostcalls::log(LogLevel::Error, &format!("tagging configuration refused: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Tagging { rules: self.rules.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Tagging {
    rules: Rc<Vec<Rule>>,
}

impl Context for Tagging {}

impl Tagging {
    /// Adds `tags` to the attributes other filters already handed over.
    fn publish(&self, tags: Map<String, Value>) {
        if tags.is_empty() {
            return;
        }
        let mut all =
            match self.get_property(vec![SPAN_ATTRIBUTES_PROPERTY]).and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(Value::Object(existing)) => existing,
                _ => Map::new(),
            };
        all.extend(tags);
        if let Ok(bytes) = serde_json::to_vec(&Value::Object(all)) {
            self.set_property(vec![SPAN_ATTRIBUTES_PROPERTY], Some(&bytes));
        }
    }
}

impl HttpContext for Tagging {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Headers are read as bytes: the SDK's `String` calls panic on a value that is not UTF-8
        // (obs-text is legal HTTP). Values become attributes as they came, with U+FFFD for the
        // bytes that are not UTF-8 (attributes are strings).
        let header = |name: &str| {
            self.get_http_request_header_bytes(name).map(|value| String::from_utf8_lossy(&value).into_owned())
        };
        let path = header(":path").unwrap_or_default();
        let segments: Vec<&str> = path.split('?').next().unwrap_or("").split('/').filter(|s| !s.is_empty()).collect();
        let mut tags = Map::new();
        for rule in self.rules.iter() {
            let value = if let Some(name) = &rule.request_header {
                header(name)
            } else if let Some(index) = rule.path_segment {
                segments.get(index).map(|s| (*s).to_owned())
            } else if rule.status_at_least.is_some() {
                None
            } else {
                rule.value.clone()
            };
            if let Some(value) = value {
                tags.insert(rule.attribute.clone(), Value::String(value));
            }
        }
        self.publish(tags);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let status: u16 = self
            .get_http_response_header_bytes(":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
            .unwrap_or(0);
        let mut tags = Map::new();
        for rule in self.rules.iter() {
            if let (Some(threshold), Some(value)) = (rule.status_at_least, &rule.value)
                && status >= threshold
            {
                tags.insert(rule.attribute.clone(), Value::String(value.clone()));
            }
        }
        self.publish(tags);
        Action::Continue
    }
}
