//! Checking that bytes are a protobuf `Span` of [`crate::otlp::proto`] without decoding them:
//! a walk over the wire format that accepts only what prost's decoder accepts for that schema
//! (known fields with their wire types, UTF-8 strings, nested messages, unknown fields skipped),
//! and allocates nothing. Spans taken from the shared queue are checked before export; decoding
//! each one into structs was most of the export's cost.
//!
//! The walk is stricter than prost in one way: unknown fields in the deprecated group encoding
//! (wire types 3 and 4) are refused. Nothing we encode has them, and refusing an item only
//! counts it as malformed.

/// What a field of a known message holds.
#[derive(Clone, Copy)]
enum Kind {
    Varint,
    Fixed64,
    Fixed32,
    Bytes,
    Utf8,
    Message(Schema),
}

/// A message's known fields: field number to kind (`None`: unknown, skipped if well-formed).
type Schema = fn(u32) -> Option<Kind>;

fn span(field: u32) -> Option<Kind> {
    Some(match field {
        1 | 2 | 4 => Kind::Bytes,
        3 | 5 => Kind::Utf8,
        6 => Kind::Varint,
        7 | 8 => Kind::Fixed64,
        9 => Kind::Message(key_value),
        11 => Kind::Message(event),
        15 => Kind::Message(status),
        16 => Kind::Fixed32,
        _ => return None,
    })
}

fn event(field: u32) -> Option<Kind> {
    Some(match field {
        1 => Kind::Fixed64,
        2 => Kind::Utf8,
        3 => Kind::Message(key_value),
        _ => return None,
    })
}

fn status(field: u32) -> Option<Kind> {
    Some(match field {
        2 => Kind::Utf8,
        3 => Kind::Varint,
        _ => return None,
    })
}

fn key_value(field: u32) -> Option<Kind> {
    Some(match field {
        1 => Kind::Utf8,
        2 => Kind::Message(any_value),
        _ => return None,
    })
}

fn any_value(field: u32) -> Option<Kind> {
    Some(match field {
        1 => Kind::Utf8,
        2 | 3 => Kind::Varint,
        4 => Kind::Fixed64,
        _ => return None,
    })
}

/// prost's limit on nested messages.
const MAX_DEPTH: usize = 100;

/// Reads a varint (at most ten bytes, the tenth at most 1, as prost requires).
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *bytes.get(*at)?;
        *at += 1;
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Whether `bytes` is a well-formed message of `schema`.
fn message(bytes: &[u8], schema: Schema, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let mut at = 0;
    while at < bytes.len() {
        let Some(key) = varint(bytes, &mut at).and_then(|key| u32::try_from(key).ok()) else { return false };
        let (field, wire_type) = (key >> 3, key & 7);
        if field == 0 {
            return false;
        }
        let kind = schema(field);
        let expected = matches!(
            (kind, wire_type),
            (None, _)
                | (Some(Kind::Varint), 0)
                | (Some(Kind::Fixed64), 1)
                | (Some(Kind::Fixed32), 5)
                | (Some(Kind::Bytes | Kind::Utf8 | Kind::Message(_)), 2)
        );
        if !expected {
            return false;
        }
        let well_formed = match wire_type {
            0 => varint(bytes, &mut at).is_some(),
            1 => skip(bytes, &mut at, 8).is_some(),
            5 => skip(bytes, &mut at, 4).is_some(),
            2 => {
                let Some(payload) = varint(bytes, &mut at)
                    .and_then(|length| usize::try_from(length).ok())
                    .and_then(|length| skip(bytes, &mut at, length))
                else {
                    return false;
                };
                match kind {
                    Some(Kind::Utf8) => std::str::from_utf8(payload).is_ok(),
                    Some(Kind::Message(inner)) => message(payload, inner, depth + 1),
                    _ => true,
                }
            }
            _ => false,
        };
        if !well_formed {
            return false;
        }
    }
    true
}

/// The next `length` bytes, moving past them.
fn skip<'a>(bytes: &'a [u8], at: &mut usize, length: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(length).filter(|end| *end <= bytes.len())?;
    let taken = &bytes[*at..end];
    *at = end;
    Some(taken)
}

/// Whether `item` is a protobuf `Span` that prost would decode.
pub(crate) fn is_span(item: &[u8]) -> bool {
    message(item, span, 0)
}
