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

impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Self::Double(value)
    }
}

/// A key/value attribute (of a [`Resource`] or an [`Event`]).
pub type Attribute = (String, Value);

/// Something that happened during a span, when it happened (OTLP's span event, Zipkin's
/// annotation).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When, ns since the Unix epoch.
    pub time_unix_nanos: u64,
    /// What happened, e.g. `tenant.resolved`.
    pub name: String,
    /// Its attributes.
    pub attributes: Vec<Attribute>,
}

/// An attribute value as it is set and read, text borrowed: recording a header as an attribute
/// copies it once, into the span's [`Attributes`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    /// Text.
    String(&'a str),
    /// Integer.
    Int(i64),
    /// Floating point.
    Double(f64),
    /// Boolean.
    Bool(bool),
}

impl ValueRef<'_> {
    /// The owned value.
    pub fn to_value(self) -> Value {
        match self {
            Self::String(s) => Value::String(s.to_owned()),
            Self::Int(i) => Value::Int(i),
            Self::Double(d) => Value::Double(d),
            Self::Bool(b) => Value::Bool(b),
        }
    }
}

impl<'a> From<&'a str> for ValueRef<'a> {
    fn from(value: &'a str) -> Self {
        Self::String(value)
    }
}

impl<'a> From<&'a String> for ValueRef<'a> {
    fn from(value: &'a String) -> Self {
        Self::String(value)
    }
}

impl<'a> From<&'a std::borrow::Cow<'_, str>> for ValueRef<'a> {
    fn from(value: &'a std::borrow::Cow<'_, str>) -> Self {
        Self::String(value)
    }
}

impl From<i64> for ValueRef<'_> {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<bool> for ValueRef<'_> {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::String(s) => Self::String(s),
            Value::Int(i) => Self::Int(*i),
            Value::Double(d) => Self::Double(*d),
            Value::Bool(b) => Self::Bool(*b),
        }
    }
}

/// Where an attribute's text is in [`Attributes::text`].
#[derive(Clone, Copy, Debug)]
struct Text {
    start: usize,
    end: usize,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Text(Text),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// A span's attributes, in the order they were first set. Keys and text values live in one
/// buffer and the entries in another, so a span sized with [`with_capacity`](Self::with_capacity)
/// records its attributes without allocating: a filter sets a dozen of them on every request.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    text: String,
    entries: Vec<(Text, Slot)>,
}

impl Attributes {
    /// Empty, with room for `entries` attributes and `text` bytes of keys and text values.
    pub fn with_capacity(entries: usize, text: usize) -> Self {
        Self { text: String::with_capacity(text), entries: Vec::with_capacity(entries) }
    }

    #[inline]
    fn push_text(&mut self, text: &str) -> Text {
        let start = self.text.len();
        self.text.push_str(text);
        Text { start, end: self.text.len() }
    }

    #[inline]
    fn str(&self, text: Text) -> &str {
        self.text.get(text.start..text.end).unwrap_or_default()
    }

    #[inline]
    fn view(&self, slot: Slot) -> ValueRef<'_> {
        match slot {
            Slot::Text(text) => ValueRef::String(self.str(text)),
            Slot::Int(i) => ValueRef::Int(i),
            Slot::Double(d) => ValueRef::Double(d),
            Slot::Bool(b) => ValueRef::Bool(b),
        }
    }

    fn slot(&mut self, value: ValueRef<'_>) -> Slot {
        match value {
            ValueRef::String(s) => Slot::Text(self.push_text(s)),
            ValueRef::Int(i) => Slot::Int(i),
            ValueRef::Double(d) => Slot::Double(d),
            ValueRef::Bool(b) => Slot::Bool(b),
        }
    }

    /// Adds an attribute the caller knows is not set yet (the first ones of a span), without
    /// looking for it: [`set`](Self::set) compares the key with every attribute so far.
    pub fn push_new<'v>(&mut self, key: &str, value: impl Into<ValueRef<'v>>) {
        debug_assert!(self.get(key).is_none(), "{key} is set already");
        let slot = self.slot(value.into());
        let key = self.push_text(key);
        self.entries.push((key, slot));
    }

    /// Sets (or replaces, in place) an attribute.
    pub fn set<'v>(&mut self, key: &str, value: impl Into<ValueRef<'v>>) {
        let slot = self.slot(value.into());
        // A replaced text value stays in the buffer, unreferenced: replacing is rare (an
        // attribute a tagging filter also sets), and the buffer goes with the span.
        match self.entries.iter().position(|(k, _)| self.str(*k) == key) {
            Some(i) => self.entries[i].1 = slot,
            None => {
                let key = self.push_text(key);
                self.entries.push((key, slot));
            }
        }
    }

    /// The attribute `key`, if set.
    pub fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        self.entries.iter().find(|(k, _)| self.str(*k) == key).map(|(_, slot)| self.view(*slot))
    }

    /// The attributes in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, ValueRef<'_>)> + Clone {
        self.entries.iter().map(|(k, slot)| (self.str(*k), self.view(*slot)))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<'k, 'v, V: Into<ValueRef<'v>>> FromIterator<(&'k str, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (&'k str, V)>>(iter: I) -> Self {
        let mut attributes = Self::default();
        for (key, value) in iter {
            attributes.set(key, value);
        }
        attributes
    }
}

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
    pub attributes: Attributes,
    /// Events, in the order they happened.
    pub events: Vec<Event>,
    /// Status.
    pub status: StatusCode,
    /// Status message (set with errors).
    pub status_message: String,
}

impl Span {
    /// Sets (or replaces) an attribute.
    pub fn set<'v>(&mut self, key: &str, value: impl Into<ValueRef<'v>>) {
        self.attributes.set(key, value);
    }

    /// The attribute `key`, if set.
    pub fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        self.attributes.get(key)
    }
}

/// What produced the spans: `service.name` and friends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resource {
    /// Resource attributes (`service.name` first).
    pub attributes: Vec<Attribute>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_keep_their_order_and_replace_in_place() {
        let mut attributes = Attributes::with_capacity(4, 64);
        attributes.set("a", "one");
        attributes.set("b", 2i64);
        attributes.set("c", ValueRef::Double(0.5));
        attributes.set("a", true);
        attributes.set("b", "two");
        attributes.push_new("d", 4i64);
        assert_eq!(attributes.get("d"), Some(ValueRef::Int(4)));
        attributes.set("d", 5i64);
        assert_eq!(attributes.len(), 4);
        attributes = attributes.iter().filter(|(k, _)| *k != "d").collect();
        let all: Vec<(&str, ValueRef<'_>)> = attributes.iter().collect();
        assert_eq!(all, [("a", ValueRef::Bool(true)), ("b", ValueRef::String("two")), ("c", ValueRef::Double(0.5))]);
        assert_eq!(attributes.get("b"), Some(ValueRef::String("two")));
        assert_eq!(attributes.get("d"), None);
        assert_eq!(attributes.len(), 3);
        let same: Attributes =
            [("a", ValueRef::Bool(true)), ("b", "two".into()), ("c", ValueRef::Double(0.5))].into_iter().collect();
        assert_eq!(attributes, same, "equal by content, whatever the buffers hold");
        assert_eq!(ValueRef::String("x").to_value(), Value::String("x".into()));
    }
}
