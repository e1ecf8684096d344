//! A pass over a JSON request (OTLP/JSON or Zipkin v2) before serde decodes it: a tokenizer that
//! knows which key each array or object sits under, counts spans, and adds up what decoding will
//! allocate. JSON is the worse case for expansion (`{}` is three bytes and becomes a whole
//! `Span`), so every array element is priced at the Rust size of what it decodes to.
//!
//! Only what the count needs is checked (strings terminated, nesting depth); serde judges the
//! rest afterwards. Keys are compared as written: an escaped key (`"sp\u0061ns"`) is priced as
//! unknown (at the largest element size), and the decoded spans are counted again after
//! decoding, so no spelling slips past a limit.

use std::mem::size_of;

use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::IngestError;
use super::budget::Budget;

/// Deepest nesting scanned: serde_json's own recursion limit.
pub(crate) const MAX_DEPTH: usize = 128;

/// Which request format: the keys that hold spans and what elements decode to differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// OTLP/JSON (`{"resourceSpans": [...]}`).
    Otlp,
    /// Zipkin v2 (`[span, ...]`).
    Zipkin {
        /// `size_of` the decoded Zipkin span.
        span: usize,
        /// `size_of` the decoded annotation.
        annotation: usize,
    },
}

/// The keys whose arrays and objects the prices depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    /// The top level (Zipkin's array of spans).
    Root,
    ResourceSpans,
    ScopeSpans,
    Spans,
    Attributes,
    Values,
    Events,
    Links,
    EntityRefs,
    StringList,
    Tags,
    Annotations,
    /// Anything else, or a container directly inside an array.
    Other,
}

fn classify(raw: &[u8]) -> Key {
    match raw {
        b"resourceSpans" | b"resource_spans" => Key::ResourceSpans,
        b"scopeSpans" | b"scope_spans" => Key::ScopeSpans,
        b"spans" => Key::Spans,
        b"attributes" => Key::Attributes,
        b"values" => Key::Values,
        b"events" => Key::Events,
        b"links" => Key::Links,
        b"entityRefs" | b"entity_refs" => Key::EntityRefs,
        b"idKeys" | b"descriptionKeys" | b"id_keys" | b"description_keys" => Key::StringList,
        b"tags" => Key::Tags,
        b"annotations" => Key::Annotations,
        _ => Key::Other,
    }
}

/// A `BTreeMap` leaf holds up to 11 entries; one is allocated for the first.
const MAP_NODE: usize = 11 * 2 * size_of::<String>() + 64;
/// One more entry of a string map, with its share of node overhead.
const MAP_ENTRY: usize = 4 * size_of::<String>();

impl Dialect {
    /// The heap of one element of an array under `key` (twice its size: `Vec` doubling).
    fn element_cost(self, key: Key) -> usize {
        let largest = size_of::<Span>().max(size_of::<ResourceSpans>()).max(size_of::<ScopeSpans>());
        let size = match (self, key) {
            (Dialect::Otlp, Key::ResourceSpans) => size_of::<ResourceSpans>(),
            (Dialect::Otlp, Key::ScopeSpans) => size_of::<ScopeSpans>(),
            (Dialect::Otlp, Key::Spans) => size_of::<Span>(),
            (Dialect::Otlp, Key::Attributes) => size_of::<KeyValue>(),
            (Dialect::Otlp, Key::Values) => size_of::<KeyValue>().max(size_of::<AnyValue>()),
            (Dialect::Otlp, Key::Events) => size_of::<Event>(),
            (Dialect::Otlp, Key::Links) => size_of::<Link>(),
            (Dialect::Otlp, Key::EntityRefs) => size_of::<EntityRef>(),
            (Dialect::Otlp, Key::StringList) => size_of::<String>(),
            (Dialect::Zipkin { span, .. }, Key::Root) => span,
            (Dialect::Zipkin { annotation, .. }, Key::Annotations) => annotation,
            (Dialect::Zipkin { span, .. }, _) => span.max(largest),
            (Dialect::Otlp, _) => largest,
        };
        2 * size
    }

    /// Whether an element of an array under `key` is a span.
    fn is_span(self, key: Key) -> bool {
        matches!((self, key), (Dialect::Otlp, Key::Spans) | (Dialect::Zipkin { .. }, Key::Root))
    }

    /// The heap an object under `key` takes before its members.
    fn object_cost(self, key: Key) -> usize {
        match (self, key) {
            (Dialect::Zipkin { .. }, Key::Tags) => MAP_NODE,
            _ => 0,
        }
    }

    /// The heap of one member (besides its strings) of an object under `key`.
    fn member_cost(self, key: Key) -> usize {
        match (self, key) {
            (Dialect::Zipkin { .. }, Key::Tags) => MAP_ENTRY,
            _ => 0,
        }
    }
}

fn malformed(why: &str) -> IngestError {
    IngestError::Malformed(format!("JSON: {why}"))
}

/// The index just past the string whose opening quote is at `start`.
fn string_end(bytes: &[u8], start: usize) -> Result<usize, IngestError> {
    let mut at = start + 1;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'\\' => at += 2,
            b'"' => return Ok(at + 1),
            _ => at += 1,
        }
    }
    Err(malformed("a string is not terminated"))
}

/// An open array or object, and the key it sits under.
struct Frame {
    array: bool,
    key: Key,
}

/// Scans a JSON request in `dialect`, stopping at the first limit `budget` crosses.
pub(crate) fn scan(bytes: &[u8], dialect: Dialect, budget: &mut Budget) -> Result<(), IngestError> {
    let mut stack: Vec<Frame> = Vec::new();
    // The key of the member whose value comes next, and whether a key comes next.
    let mut key = Key::Root;
    let mut key_next = false;
    let mut at = 0;
    // Called at the start of every value: an array element is priced (and maybe a span).
    let value = |stack: &[Frame], budget: &mut Budget| -> Result<(), IngestError> {
        if let Some(parent) = stack.last().filter(|f| f.array) {
            budget.charge(dialect.element_cost(parent.key))?;
            if dialect.is_span(parent.key) {
                budget.span()?;
            }
        }
        Ok(())
    };
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => at += 1,
            b',' => {
                key_next = stack.last().is_some_and(|f| !f.array);
                at += 1;
            }
            b'"' => {
                let end = string_end(bytes, at)?;
                let raw = &bytes[at + 1..end - 1];
                if key_next {
                    key = classify(raw);
                    key_next = false;
                    let parent = stack.last().map_or(Key::Other, |f| f.key);
                    budget.charge(raw.len() + dialect.member_cost(parent))?;
                } else {
                    value(&stack, budget)?;
                    budget.charge(raw.len())?;
                }
                at = end;
            }
            b'{' | b'[' => {
                value(&stack, budget)?;
                let under = match stack.last() {
                    None => Key::Root,
                    Some(parent) if parent.array => Key::Other,
                    Some(_) => key,
                };
                if stack.len() >= MAX_DEPTH {
                    return Err(malformed(&format!("arrays and objects nest deeper than {MAX_DEPTH}")));
                }
                let array = byte == b'[';
                if !array {
                    budget.charge(dialect.object_cost(under))?;
                }
                stack.push(Frame { array, key: under });
                key_next = !array;
                at += 1;
            }
            b'}' | b']' => {
                stack.pop();
                key_next = false;
                at += 1;
            }
            _ => {
                // A number, `true`, `false` or `null`: no heap of its own.
                value(&stack, budget)?;
                while bytes.get(at).is_some_and(|b| !b" \t\n\r,:]}\"[{".contains(b)) {
                    at += 1;
                }
            }
        }
    }
    Ok(())
}
