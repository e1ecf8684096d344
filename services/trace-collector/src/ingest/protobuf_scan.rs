//! A pass over an OTLP protobuf request before prost decodes it: it follows the wire format with
//! the trace schema in hand, counts spans, and adds up what decoding will allocate (every element
//! of a repeated message field at its Rust size, doubled for `Vec` growth, plus every string and
//! byte field). Nothing is allocated, so a request over a limit is refused for the price of
//! reading part of it.
//!
//! Only framing is judged here (truncated fields, bad varints, groups, nesting); whether the
//! fields make a valid request is prost's call afterwards.

use std::mem::size_of;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::IngestError;
use super::budget::Budget;

/// Deepest message nesting scanned: prost's own recursion limit.
pub(crate) const MAX_DEPTH: usize = 100;

/// The messages of an OTLP trace request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    EntityRef,
}

/// What a field number of a message holds.
enum Field {
    /// A message; `repeated` ones are `Vec` elements on the heap, singular ones are inline.
    Message { of: Message, repeated: bool },
    /// A string or bytes field (`repeated`: each is also a `Vec` element).
    Bytes { repeated: bool },
    /// A number, or a field prost does not keep (unknown fields are skipped, not stored).
    Other,
}

fn message(of: Message, repeated: bool) -> Field {
    Field::Message { of, repeated }
}

/// The schema: `opentelemetry/proto/{collector/trace,trace,resource,common}/v1/*.proto`.
fn field(parent: Message, number: u64) -> Field {
    use Message as M;
    let bytes = Field::Bytes { repeated: false };
    match (parent, number) {
        (M::Request, 1) => message(M::ResourceSpans, true),
        (M::ResourceSpans, 1) => message(M::Resource, false),
        (M::ResourceSpans, 2) => message(M::ScopeSpans, true),
        (M::Resource, 1) | (M::Scope, 3) | (M::Span, 9) | (M::Event, 3) | (M::Link, 4) | (M::KeyValueList, 1) => {
            message(M::KeyValue, true)
        }
        (M::Resource, 3) => message(M::EntityRef, true),
        (M::ScopeSpans, 1) => message(M::Scope, false),
        (M::ScopeSpans, 2) => message(M::Span, true),
        (M::Span, 11) => message(M::Event, true),
        (M::Span, 13) => message(M::Link, true),
        (M::Span, 15) => message(M::Status, false),
        (M::KeyValue, 2) => message(M::AnyValue, false),
        (M::AnyValue, 5) => message(M::ArrayValue, false),
        (M::AnyValue, 6) => message(M::KeyValueList, false),
        (M::ArrayValue, 1) => message(M::AnyValue, true),
        (M::EntityRef, 3 | 4) => Field::Bytes { repeated: true },
        (M::ResourceSpans | M::ScopeSpans, 3)
        | (M::Scope, 1 | 2)
        | (M::Span, 1..=5)
        | (M::Event, 2)
        | (M::Link, 1..=3)
        | (M::Status, 2)
        | (M::KeyValue, 1)
        | (M::AnyValue, 1 | 7)
        | (M::EntityRef, 1 | 2) => bytes,
        _ => Field::Other,
    }
}

/// The heap one element of a repeated field of `message` takes: its size, twice (a `Vec` grows
/// by doubling).
fn element_cost(message: Message) -> usize {
    let size = match message {
        Message::ResourceSpans => size_of::<ResourceSpans>(),
        Message::ScopeSpans => size_of::<ScopeSpans>(),
        Message::Span => size_of::<Span>(),
        Message::Event => size_of::<Event>(),
        Message::Link => size_of::<Link>(),
        Message::KeyValue => size_of::<KeyValue>(),
        Message::AnyValue => size_of::<AnyValue>(),
        Message::EntityRef => size_of::<EntityRef>(),
        // Never repeated in the schema; priced like the largest to stay an upper bound.
        _ => size_of::<Span>(),
    };
    2 * size
}

fn malformed(why: &str) -> IngestError {
    IngestError::Malformed(format!("OTLP protobuf: {why}"))
}

/// Reads a varint at `*at`, moving past it.
fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, IngestError> {
    let mut value = 0u64;
    for shift in 0..10 {
        let byte = *bytes.get(*at).ok_or_else(|| malformed("a varint runs past the end"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << (shift * 7);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("a varint is longer than 10 bytes"))
}

/// Moves `*at` past `len` bytes, refusing to run past the end.
fn skip(bytes: &[u8], at: &mut usize, len: u64) -> Result<(), IngestError> {
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| at.checked_add(len))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| malformed("a field runs past the end of its message"))?;
    *at = end;
    Ok(())
}

fn scan_message(bytes: &[u8], of: Message, depth: usize, budget: &mut Budget) -> Result<(), IngestError> {
    if depth > MAX_DEPTH {
        return Err(malformed(&format!("messages nest deeper than {MAX_DEPTH}")));
    }
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let (number, wire_type) = (key >> 3, key & 7);
        if number == 0 {
            return Err(malformed("field number 0"));
        }
        match wire_type {
            0 => {
                varint(bytes, &mut at)?;
            }
            1 => skip(bytes, &mut at, 8)?,
            5 => skip(bytes, &mut at, 4)?,
            2 => {
                let len = varint(bytes, &mut at)?;
                let start = at;
                skip(bytes, &mut at, len)?;
                match field(of, number) {
                    Field::Message { of: inner, repeated } => {
                        if repeated {
                            budget.charge(element_cost(inner))?;
                        }
                        if inner == Message::Span {
                            budget.span()?;
                        }
                        scan_message(&bytes[start..at], inner, depth + 1, budget)?;
                    }
                    Field::Bytes { repeated } => {
                        let heap = at - start;
                        budget.charge(if repeated { heap + 2 * size_of::<String>() } else { heap })?;
                    }
                    Field::Other => {}
                }
            }
            3 | 4 => return Err(malformed("groups (wire types 3 and 4) are not part of OTLP")),
            other => return Err(malformed(&format!("unknown wire type {other}"))),
        }
    }
    Ok(())
}

/// Scans an `ExportTraceServiceRequest`, stopping at the first limit `budget` crosses.
pub(crate) fn scan(bytes: &[u8], budget: &mut Budget) -> Result<(), IngestError> {
    budget.charge(size_of::<ExportTraceServiceRequest>())?;
    scan_message(bytes, Message::Request, 0, budget)
}
