//! A filter's part in the request's span, for any filter that runs beside the wasmtrace trace
//! filter — in the wasmtrace sidecar, in-process, or in Envoy:
//!
//! - [`add_attributes`]: attributes on the request's span;
//! - [`add_event`]: an event on it (something that happened, when, with attributes);
//! - [`set_sampling`]: trace this request or not, whatever the sampler would decide (a hint the
//!   trace filter honours when it starts the span, so set it in a filter before the trace filter);
//! - [`trace_context`]: the trace id, span id and sampling decision the trace filter chose for
//!   this request (from the trace filter's request headers on: a filter after it reads it in
//!   `on_request_headers`, one before it from `on_response_headers` on);
//! - [`start_callout`] and [`TracedCallout::finish`]: a callout that carries the request's context
//!   (its `traceparent` header) and is recorded as a CLIENT span under the request's span, so a
//!   traced callee's spans nest beneath it.
//!
//! Everything goes through the stream's filter state (`proxy_set_property` /
//! `proxy_get_property`), which Envoy has too, under the keys and formats of [`handoff`] (version
//! [`handoff::VERSION`]). Each function takes the stream as a [`Stream`]; [`current`] is the
//! stream of the callback running, in whichever form the crate is built (`wasm32-wasip1`: a
//! proxy-wasm module; `wasm32-wasip2`: a `wasmtrace:filter` component):
//!
//! ```ignore
//! use wasmtrace_span::{Value, add_attributes, current};
//! add_attributes(&current(), &[("tenant.id", Value::from("acme"))]);
//! ```

pub mod handoff;

use serde_json::{Map, Number};
use wasmtrace_trace_core::w3c;

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text.
    String(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number (a non-finite one is recorded as its text).
    Double(f64),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::String(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::String(text)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Self::Double(value)
    }
}

impl Value {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::String(s) => serde_json::Value::from(s.as_str()),
            Self::Bool(b) => serde_json::Value::from(*b),
            Self::Int(i) => serde_json::Value::from(*i),
            Self::Double(d) => {
                Number::from_f64(*d).map_or_else(|| serde_json::Value::from(d.to_string()), serde_json::Value::Number)
            }
        }
    }
}

/// A sampling hint for this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// Trace it (and tell the next hops it is sampled).
    Sample,
    /// Do not trace it.
    Drop,
}

/// The trace context the trace filter chose for this request: its span is the request's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The request's span id (the parent of whatever this request calls).
    pub span_id: [u8; 8],
    /// Whether the request is traced.
    pub sampled: bool,
    /// W3C Level 2's `random` flag: the trace id's right-most 7 bytes are random.
    pub random: bool,
}

impl TraceContext {
    /// The trace id in hex (32 digits), as viewers and `wasmtrace traces` show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id in hex (16 digits).
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

/// The filter state of the stream a callback runs for, and the host's clock.
pub trait Stream {
    /// The filter state `key` (a property path of one segment), if set.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Sets the filter state `key`.
    fn set(&self, key: &str, value: &[u8]);
    /// The host's wall clock, ns since the Unix epoch.
    fn now_unix_nanos(&self) -> u64;
}

/// A callout in flight that carries the request's trace context: send [`traceparent`] with it,
/// and [`finish`] it when it is answered (or failed) to record it as a CLIENT span, child of the
/// request's span.
///
/// [`traceparent`]: TracedCallout::traceparent
/// [`finish`]: TracedCallout::finish
#[derive(Clone, Debug)]
pub struct TracedCallout {
    context: TraceContext,
    span_id: [u8; 8],
    name: String,
    attributes: Map<String, serde_json::Value>,
    start_unix_nanos: u64,
}

/// Starts a callout named `name` (`GET auth`, say) to `cluster`: `None` before the trace filter
/// chose the request's context. Unsampled requests get a context too (the callee must not sample
/// them either), but no span.
pub fn start_callout(stream: &impl Stream, name: &str, method: &str, cluster: &str) -> Option<TracedCallout> {
    let context = trace_context(stream)?;
    let mut attributes = Map::new();
    attributes.insert("http.request.method".into(), method.into());
    attributes.insert("server.address".into(), cluster.into());
    Some(TracedCallout {
        context,
        span_id: wasmtrace_trace_core::SpanId::random().0,
        name: name.to_owned(),
        attributes,
        start_unix_nanos: stream.now_unix_nanos(),
    })
}

impl TracedCallout {
    /// The `traceparent` header to send with the callout: the callout's span is the callee's
    /// parent.
    pub fn traceparent(&self) -> String {
        let trace_id = wasmtrace_trace_core::TraceId(self.context.trace_id);
        let span_id = wasmtrace_trace_core::SpanId(self.span_id);
        w3c::format_traceparent(&trace_id, &span_id, self.context.sampled, self.context.random)
    }

    /// The callout's span id (hex).
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// Adds an attribute to the callout's span.
    pub fn set_attribute(&mut self, name: &str, value: Value) {
        self.attributes.insert(name.to_owned(), value.to_json());
    }

    /// The callout was answered with `status` (`None`: no answer): its span is handed to the
    /// trace filter, which exports it with the request's. Nothing is recorded for an unsampled
    /// request, or beyond [`handoff::MAX_CALLOUT_SPANS`] callouts.
    pub fn finish(self, stream: &impl Stream, status: Option<u16>) {
        if !self.context.sampled {
            return;
        }
        let mut spans: Vec<serde_json::Value> = stream
            .get(handoff::CALLOUT_SPANS)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        if spans.len() >= handoff::MAX_CALLOUT_SPANS {
            return;
        }
        let mut span = Map::new();
        span.insert("span_id".into(), hex(&self.span_id).into());
        span.insert("name".into(), self.name.into());
        span.insert("start_unix_nano".into(), self.start_unix_nanos.into());
        span.insert("end_unix_nano".into(), stream.now_unix_nanos().max(self.start_unix_nanos).into());
        if let Some(status) = status {
            span.insert("status_code".into(), status.into());
        }
        span.insert("attributes".into(), serde_json::Value::Object(self.attributes));
        spans.push(serde_json::Value::Object(span));
        stream.set(handoff::CALLOUT_SPANS, serde_json::Value::Array(spans).to_string().as_bytes());
    }
}

/// Adds `attributes` to the request's span (replacing those of the same name), keeping what other
/// filters added. Names under `wasmtrace.filter.` are the trace filter's own and are not taken.
pub fn add_attributes(stream: &impl Stream, attributes: &[(&str, Value)]) {
    let mut merged: Map<String, serde_json::Value> =
        stream.get(handoff::ATTRIBUTES).and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
    for (name, value) in attributes {
        merged.insert((*name).to_owned(), value.to_json());
    }
    let text = serde_json::Value::Object(merged).to_string();
    stream.set(handoff::ATTRIBUTES, text.as_bytes());
}

/// Adds an event named `name`, happening now, to the request's span (at most
/// [`handoff::MAX_EVENTS`] a request; more are not recorded).
pub fn add_event(stream: &impl Stream, name: &str, attributes: &[(&str, Value)]) {
    let mut events: Vec<serde_json::Value> =
        stream.get(handoff::EVENTS).and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
    if events.len() >= handoff::MAX_EVENTS {
        return;
    }
    let attributes: Map<String, serde_json::Value> =
        attributes.iter().map(|(name, value)| ((*name).to_owned(), value.to_json())).collect();
    let mut event = Map::new();
    event.insert("name".into(), name.into());
    event.insert("time_unix_nano".into(), stream.now_unix_nanos().into());
    event.insert("attributes".into(), serde_json::Value::Object(attributes));
    events.push(serde_json::Value::Object(event));
    stream.set(handoff::EVENTS, serde_json::Value::Array(events).to_string().as_bytes());
}

/// Asks the trace filter to trace this request, or not, whatever its sampler would decide; the
/// last hint before the trace filter's request headers wins.
pub fn set_sampling(stream: &impl Stream, sampling: Sampling) {
    let value: &[u8] = match sampling {
        Sampling::Sample => handoff::SAMPLE,
        Sampling::Drop => handoff::DROP,
    };
    stream.set(handoff::SAMPLING, value);
}

/// The trace context the trace filter chose for this request, once it has (see the crate docs
/// for when); `None` before, or without a trace filter.
pub fn trace_context(stream: &impl Stream) -> Option<TraceContext> {
    let bytes = stream.get(handoff::TRACE_CONTEXT)?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let (trace_id, span_id, flags) = w3c::parse_traceparent(&[text])?;
    Some(TraceContext {
        trace_id: trace_id.0,
        span_id: span_id.0,
        sampled: flags & w3c::FLAG_SAMPLED != 0,
        random: flags & w3c::FLAG_RANDOM != 0,
    })
}

/// The stream of the callback running, in a proxy-wasm module.
#[cfg(not(target_env = "p2"))]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyWasmStream;

#[cfg(not(target_env = "p2"))]
impl Stream for ProxyWasmStream {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        proxy_wasm::hostcalls::get_property(vec![key]).ok().flatten()
    }

    fn set(&self, key: &str, value: &[u8]) {
        let _ = proxy_wasm::hostcalls::set_property(vec![key], Some(value));
    }

    fn now_unix_nanos(&self) -> u64 {
        proxy_wasm::hostcalls::get_current_time()
            .ok()
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// The stream of the callback running.
#[cfg(not(target_env = "p2"))]
pub fn current() -> ProxyWasmStream {
    ProxyWasmStream
}

/// The stream of the callback running, in a `wasmtrace:filter` component.
#[cfg(target_env = "p2")]
#[derive(Clone, Copy, Debug, Default)]
pub struct ComponentStream;

#[cfg(target_env = "p2")]
impl Stream for ComponentStream {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        wasmtrace_filter_guest::host::get_property(&[key.to_owned()])
    }

    fn set(&self, key: &str, value: &[u8]) {
        wasmtrace_filter_guest::host::set_property(&[key.to_owned()], value);
    }

    fn now_unix_nanos(&self) -> u64 {
        wasmtrace_filter_guest::host::now_unix_nanos()
    }
}

/// The stream of the callback running.
#[cfg(target_env = "p2")]
pub fn current() -> ComponentStream {
    ComponentStream
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    /// Filter state as the host keeps it.
    #[derive(Default)]
    struct FilterState(RefCell<HashMap<String, Vec<u8>>>);

    impl Stream for FilterState {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.0.borrow().get(key).cloned()
        }

        fn set(&self, key: &str, value: &[u8]) {
            self.0.borrow_mut().insert(key.to_owned(), value.to_vec());
        }

        fn now_unix_nanos(&self) -> u64 {
            1_700_000_000_000_000_000
        }
    }

    #[test]
    fn a_callout_carries_the_context_and_is_recorded_as_a_child_span_when_sampled() {
        let state = FilterState::default();
        assert!(start_callout(&state, "GET auth", "GET", "auth").is_none(), "no context yet");
        state.set(handoff::TRACE_CONTEXT, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let mut callout = start_callout(&state, "GET auth", "GET", "auth").expect("a callout");
        let traceparent = callout.traceparent();
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");
        assert!(traceparent.ends_with("-01") && traceparent.contains(&callout.span_id_hex()), "{traceparent}");
        callout.set_attribute("auth.user", "ada".into());
        let span_id = callout.span_id_hex();
        callout.finish(&state, Some(200));
        let spans: serde_json::Value =
            serde_json::from_slice(&state.get(handoff::CALLOUT_SPANS).expect("set")).expect("JSON");
        assert_eq!(spans[0]["span_id"], span_id.as_str());
        assert_eq!(spans[0]["status_code"], 200);
        assert_eq!(spans[0]["attributes"]["auth.user"], "ada");
        assert_eq!(spans[0]["attributes"]["server.address"], "auth");
        // Unsampled: the context goes on, no span is recorded.
        state.set(handoff::TRACE_CONTEXT, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let unsampled = start_callout(&state, "GET auth", "GET", "auth").expect("a callout");
        assert!(unsampled.traceparent().ends_with("-00"));
        unsampled.finish(&state, None);
        let spans: serde_json::Value =
            serde_json::from_slice(&state.get(handoff::CALLOUT_SPANS).expect("set")).expect("JSON");
        assert_eq!(spans.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn attributes_from_several_filters_add_up_and_a_later_value_replaces_an_earlier() {
        let state = FilterState::default();
        state.set(handoff::ATTRIBUTES, br#"{"gallery.api_version":"v0","tenant.id":"old"}"#);
        add_attributes(&state, &[("tenant.id", "acme".into()), ("tenant.tier", 2i64.into()), ("beta", true.into())]);
        add_attributes(&state, &[("ratio", 0.25.into()), ("nan", f64::NAN.into())]);
        let written: serde_json::Value =
            serde_json::from_slice(&state.get(handoff::ATTRIBUTES).expect("set")).expect("JSON");
        assert_eq!(
            written,
            serde_json::json!({"gallery.api_version": "v0", "tenant.id": "acme", "tenant.tier": 2, "beta": true, "ratio": 0.25, "nan": "NaN"})
        );
    }

    #[test]
    fn attributes_over_a_hand_off_that_is_not_an_object_start_afresh() {
        let state = FilterState::default();
        state.set(handoff::ATTRIBUTES, b"[1, 2]");
        add_attributes(&state, &[("a", "b".into())]);
        assert_eq!(state.get(handoff::ATTRIBUTES).as_deref(), Some(&br#"{"a":"b"}"#[..]));
    }

    #[test]
    fn events_are_appended_with_the_hosts_time_up_to_the_bound() {
        let state = FilterState::default();
        add_event(&state, "tenant.resolved", &[("tenant.id", "acme".into())]);
        let events: serde_json::Value =
            serde_json::from_slice(&state.get(handoff::EVENTS).expect("set")).expect("JSON");
        assert_eq!(
            events,
            serde_json::json!([{"name": "tenant.resolved", "time_unix_nano": 1_700_000_000_000_000_000u64, "attributes": {"tenant.id": "acme"}}])
        );
        for _ in 0..handoff::MAX_EVENTS + 3 {
            add_event(&state, "again", &[]);
        }
        let events: serde_json::Value =
            serde_json::from_slice(&state.get(handoff::EVENTS).expect("set")).expect("JSON");
        assert_eq!(events.as_array().map(Vec::len), Some(handoff::MAX_EVENTS));
    }

    #[test]
    fn sampling_hints_are_the_words_the_trace_filter_reads() {
        let state = FilterState::default();
        set_sampling(&state, Sampling::Drop);
        assert_eq!(state.get(handoff::SAMPLING).as_deref(), Some(handoff::DROP));
        set_sampling(&state, Sampling::Sample);
        assert_eq!(state.get(handoff::SAMPLING).as_deref(), Some(handoff::SAMPLE));
    }

    #[test]
    fn the_trace_context_is_read_from_the_published_traceparent() {
        let state = FilterState::default();
        assert_eq!(trace_context(&state), None, "nothing before the trace filter ran");
        state.set(handoff::TRACE_CONTEXT, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let context = trace_context(&state).expect("a context");
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id_hex(), "00f067aa0ba902b7");
        assert!(context.sampled);
        state.set(handoff::TRACE_CONTEXT, b"not a traceparent");
        assert_eq!(trace_context(&state), None);
    }
}
