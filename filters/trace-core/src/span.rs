//! The span model a filter fills in: what OTLP and Zipkin encode.

use crate::{SpanId, TraceId};

/// OTLP `SpanKind` (numbers as in the protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Internal operation.
    Internal = 1,
    /// Handling an incoming request.
    Server = 2,
    /// Making an outgoing request.
    Client = 3,
}

/// OTLP status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatusCode {
    /// No status set.
    #[default]
    Unset = 0,
    /// Explicitly OK.
    Ok = 1,
    /// The operation failed.
    Error = 2,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text.
    String(String),
    /// Integer.
    Int(i64),
    /// Floating point.
    Double(f64),
    /// Boolean.
    Bool(bool),
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Self::String(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Self::String(value)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

/// A key/value attribute.
pub type Attribute = (String, Value);

/// One span.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// Trace id.
    pub trace_id: TraceId,
    /// This span's id.
    pub span_id: SpanId,
    /// Parent span, if any.
    pub parent_span_id: Option<SpanId>,
    /// Whether the parent came from another process.
    pub parent_is_remote: bool,
    /// W3C `tracestate` as sent onwards.
    pub trace_state: String,
    /// Name, e.g. `GET /v0/images`.
    pub name: String,
    /// Kind.
    pub kind: SpanKind,
    /// Start, ns since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, ns since the Unix epoch.
    pub end_unix_nanos: u64,
    /// Attributes, in the order they were set.
    pub attributes: Vec<Attribute>,
    /// Status.
    pub status: StatusCode,
    /// Status message (set with errors).
    pub status_message: String,
}

impl Span {
    /// Sets (or replaces) an attribute.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key.to_owned(), value)),
        }
    }

    /// The attribute `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// What produced the spans: `service.name` and friends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resource {
    /// Resource attributes (`service.name` first).
    pub attributes: Vec<Attribute>,
}
