//! OTLP/HTTP trace export encoding: protobuf (`application/x-protobuf`) and JSON
//! (`application/json`, with OTLP's deviations from proto3 JSON: hex ids, integer enums).
//!
//! The protobuf messages mirror `opentelemetry/proto/{collector/trace/v1,trace/v1,common/v1,
//! resource/v1}` field for field (same numbers and types), derived with prost rather than generated
//! so a filter does not carry the whole OpenTelemetry SDK. The tests decode our bytes with the
//! official definitions (the `opentelemetry-proto` crate) to prove they match.

use prost::Message;

use crate::span::{Attribute, Resource, Span, ValueRef};

/// Instrumentation scope name on every exported span.
pub const SCOPE_NAME: &str = "wasmtrace";

/// Content type of the protobuf encoding.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";
/// Content type of the JSON encoding.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Span flags bit: the flags field carries the parent-is-remote information.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// Span flags bit: the parent is remote.
const FLAG_IS_REMOTE: u32 = 0x200;
/// W3C sampled bit.
const FLAG_SAMPLED: u32 = 0x01;
/// The protobuf messages.
pub mod proto;

mod json;

pub(crate) use json::join_items;
pub use json::{encode_json, encode_json_items, encode_span_json, is_json_span};

fn key_value_ref(key: &str, value: ValueRef<'_>) -> proto::KeyValue {
    use proto::any_value::Value as V;
    let value = match value {
        ValueRef::String(s) => V::StringValue(s.to_owned()),
        ValueRef::Int(i) => V::IntValue(i),
        ValueRef::Double(d) => V::DoubleValue(d),
        ValueRef::Bool(b) => V::BoolValue(b),
    };
    proto::KeyValue { key: key.to_owned(), value: Some(proto::AnyValue { value: Some(value) }) }
}

fn key_value((key, value): &Attribute) -> proto::KeyValue {
    key_value_ref(key, value.into())
}

fn flags(span: &Span) -> u32 {
    let remote = if span.parent_is_remote { FLAG_IS_REMOTE } else { 0 };
    FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | remote
}

fn proto_span(span: &Span) -> proto::Span {
    proto::Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        trace_state: span.trace_state.clone(),
        parent_span_id: span.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: flags(span),
        name: span.name.clone(),
        kind: span.kind as i32,
        start_time_unix_nano: span.start_unix_nanos,
        end_time_unix_nano: span.end_unix_nanos,
        attributes: span.attributes.iter().map(|(k, v)| key_value_ref(k, v)).collect(),
        events: span
            .events
            .iter()
            .map(|event| proto::SpanEvent {
                time_unix_nano: event.time_unix_nanos,
                name: event.name.clone(),
                attributes: event.attributes.iter().map(key_value).collect(),
            })
            .collect(),
        status: Some(proto::Status { message: span.status_message.clone(), code: span.status as i32 }),
    }
}

/// The `ExportTraceServiceRequest` for `spans` of `resource`.
pub fn request(resource: &Resource, spans: &[Span]) -> proto::ExportTraceServiceRequest {
    let mut request = envelope(resource);
    if let Some(scope) = request.resource_spans.first_mut().and_then(|r| r.scope_spans.first_mut()) {
        scope.spans = spans.iter().map(proto_span).collect();
    }
    request
}

/// The request around the spans: one resource, one scope, no spans yet.
fn envelope(resource: &Resource) -> proto::ExportTraceServiceRequest {
    proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(proto::Resource {
                attributes: resource.attributes.iter().map(key_value).collect(),
                dropped_attributes_count: 0,
            }),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans: Vec::new(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The protobuf body.
pub fn encode_protobuf(resource: &Resource, spans: &[Span]) -> Vec<u8> {
    request(resource, spans).encode_to_vec()
}

/// One span as a protobuf `Span` message: an item for [`encode_protobuf_items`]. A filter encodes
/// each span when it ends and keeps only these bytes, outside its own memory, until export.
///
/// Written straight from the span (see [`wire`]) into one buffer of the exact size: the same
/// bytes prost gives for [`proto::Span`] (the tests compare them), without first copying every
/// attribute into prost's messages, which was most of a filter's cost per request.
pub fn encode_span_protobuf(span: &Span) -> Vec<u8> {
    let mut out = Vec::new();
    encode_span_protobuf_into(span, &mut out);
    out
}

/// Appends [`encode_span_protobuf`]'s bytes to `out` (a buffer reused span after span, which then
/// stops allocating).
pub fn encode_span_protobuf_into(span: &Span, out: &mut Vec<u8>) {
    out.reserve_exact(wire::span_len(span));
    wire::span(span, out);
}

/// The protobuf encoding of a [`Span`] by hand, field for field what prost derives for
/// [`proto::Span`]: fields in tag order, proto3 defaults (empty, zero) left out except inside a
/// oneof, `status` always present (prost's `Some`).
mod wire {
    use super::flags;
    use crate::span::{Event, Span, ValueRef};

    const LEN: u32 = 2;
    const VARINT: u32 = 0;
    const FIXED64: u32 = 1;
    const FIXED32: u32 = 5;

    #[inline]
    fn varint_len(v: u64) -> usize {
        // 7 bits per byte, at least one byte.
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    #[inline]
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    #[inline]
    fn key(tag: u32, wire_type: u32, out: &mut Vec<u8>) {
        varint(u64::from(tag << 3 | wire_type), out);
    }

    #[inline]
    fn key_len(tag: u32) -> usize {
        varint_len(u64::from(tag << 3))
    }

    /// A length-delimited field of `len` bytes: its key and length prefix.
    #[inline]
    fn delimited_len(tag: u32, len: usize) -> usize {
        key_len(tag) + varint_len(len as u64) + len
    }

    #[inline]
    fn delimited(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
        key(tag, LEN, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// proto3 `int32`: negative values take ten bytes, as the sign extends to 64 bits.
    #[inline]
    fn int32(v: i32) -> u64 {
        i64::from(v) as u64
    }

    #[inline]
    fn any_value_len(value: ValueRef<'_>) -> usize {
        match value {
            ValueRef::String(s) => delimited_len(1, s.len()),
            ValueRef::Bool(_) => 2,
            ValueRef::Int(i) => 1 + varint_len(i as u64),
            ValueRef::Double(_) => 9,
        }
    }

    #[inline]
    fn key_value_len(k: &str, value: ValueRef<'_>) -> usize {
        let key = if k.is_empty() { 0 } else { delimited_len(1, k.len()) };
        key + delimited_len(2, any_value_len(value))
    }

    fn event_len(event: &Event) -> usize {
        let time = if event.time_unix_nanos == 0 { 0 } else { 9 };
        let name = if event.name.is_empty() { 0 } else { delimited_len(2, event.name.len()) };
        let attributes: usize =
            event.attributes.iter().map(|(k, v)| delimited_len(3, key_value_len(k, v.into()))).sum();
        time + name + attributes
    }

    /// Appends one attribute (`KeyValue`) as field `tag`.
    fn key_value(tag: u32, k: &str, value: ValueRef<'_>, out: &mut Vec<u8>) {
        key(tag, LEN, out);
        varint(key_value_len(k, value) as u64, out);
        if !k.is_empty() {
            delimited(1, k.as_bytes(), out);
        }
        key(2, LEN, out);
        varint(any_value_len(value) as u64, out);
        match value {
            ValueRef::String(s) => delimited(1, s.as_bytes(), out),
            ValueRef::Bool(b) => {
                key(2, VARINT, out);
                out.push(u8::from(b));
            }
            ValueRef::Int(i) => {
                key(3, VARINT, out);
                varint(i as u64, out);
            }
            ValueRef::Double(d) => {
                key(4, FIXED64, out);
                out.extend_from_slice(&d.to_bits().to_le_bytes());
            }
        }
    }

    fn status_len(span: &Span) -> usize {
        let message = if span.status_message.is_empty() { 0 } else { delimited_len(2, span.status_message.len()) };
        let code = span.status as i32;
        message + if code == 0 { 0 } else { 1 + varint_len(int32(code)) }
    }

    /// The encoded length of `span`.
    pub(super) fn span_len(span: &Span) -> usize {
        let mut len = delimited_len(1, span.trace_id.0.len()) + delimited_len(2, span.span_id.0.len());
        if !span.trace_state.is_empty() {
            len += delimited_len(3, span.trace_state.len());
        }
        if let Some(parent) = &span.parent_span_id {
            len += delimited_len(4, parent.0.len());
        }
        if !span.name.is_empty() {
            len += delimited_len(5, span.name.len());
        }
        let kind = span.kind as i32;
        if kind != 0 {
            len += 1 + varint_len(int32(kind));
        }
        len += [span.start_unix_nanos, span.end_unix_nanos].iter().filter(|t| **t != 0).count() * 9;
        len += span.attributes.iter().map(|(k, v)| delimited_len(9, key_value_len(k, v))).sum::<usize>();
        len += span.events.iter().map(|e| delimited_len(11, event_len(e))).sum::<usize>();
        len += delimited_len(15, status_len(span));
        if flags(span) != 0 {
            len += key_len(16) + 4;
        }
        len
    }

    /// Appends `span`'s encoding.
    pub(super) fn span(span: &Span, out: &mut Vec<u8>) {
        delimited(1, &span.trace_id.0, out);
        delimited(2, &span.span_id.0, out);
        if !span.trace_state.is_empty() {
            delimited(3, span.trace_state.as_bytes(), out);
        }
        if let Some(parent) = &span.parent_span_id {
            delimited(4, &parent.0, out);
        }
        if !span.name.is_empty() {
            delimited(5, span.name.as_bytes(), out);
        }
        let kind = span.kind as i32;
        if kind != 0 {
            key(6, VARINT, out);
            varint(int32(kind), out);
        }
        for (tag, time) in [(7, span.start_unix_nanos), (8, span.end_unix_nanos)] {
            if time != 0 {
                key(tag, FIXED64, out);
                out.extend_from_slice(&time.to_le_bytes());
            }
        }
        for (k, value) in span.attributes.iter() {
            key_value(9, k, value, out);
        }
        for event in &span.events {
            key(11, LEN, out);
            varint(event_len(event) as u64, out);
            if event.time_unix_nanos != 0 {
                key(1, FIXED64, out);
                out.extend_from_slice(&event.time_unix_nanos.to_le_bytes());
            }
            if !event.name.is_empty() {
                delimited(2, event.name.as_bytes(), out);
            }
            for (k, value) in &event.attributes {
                key_value(3, k, value.into(), out);
            }
        }
        key(15, LEN, out);
        varint(status_len(span) as u64, out);
        if !span.status_message.is_empty() {
            delimited(2, span.status_message.as_bytes(), out);
        }
        let code = span.status as i32;
        if code != 0 {
            key(3, VARINT, out);
            varint(int32(code), out);
        }
        let flags = flags(span);
        if flags != 0 {
            key(16, FIXED32, out);
            out.extend_from_slice(&flags.to_le_bytes());
        }
    }
}

/// Whether `item` decodes as a protobuf `Span` (what [`encode_span_protobuf`] makes): items come
/// back from a queue other code can write to, and one bad item must not spoil a whole request.
pub fn is_protobuf_span(item: &[u8]) -> bool {
    crate::protobuf_check::is_span(item)
}

/// Appends field `tag` holding `payload` (a length-delimited field, as protobuf encodes
/// embedded messages and repeated messages alike).
fn length_delimited(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// The protobuf body for spans already encoded with [`encode_span_protobuf`]: the same bytes
/// [`encode_protobuf`] gives for those spans, without decoding them. A repeated message field is
/// its elements one after another, and fields may come in any order, so the envelope's fields
/// are encoded and the spans appended as `ScopeSpans.spans` (field 2).
pub fn encode_protobuf_items<I: AsRef<[u8]>>(resource: &Resource, items: &[I]) -> Vec<u8> {
    let envelope = envelope(resource);
    let Some(resource_spans) = envelope.resource_spans.first() else { return Vec::new() };
    let Some(scope_spans) = resource_spans.scope_spans.first() else { return Vec::new() };
    let mut scope = scope_spans.encode_to_vec();
    for item in items {
        length_delimited(2, item.as_ref(), &mut scope);
    }
    let mut outer = proto::ResourceSpans {
        resource: resource_spans.resource.clone(),
        scope_spans: Vec::new(),
        schema_url: resource_spans.schema_url.clone(),
    }
    .encode_to_vec();
    length_delimited(2, &scope, &mut outer);
    let mut body = Vec::with_capacity(outer.len() + 8);
    length_delimited(1, &outer, &mut body);
    body
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as Official;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as OfficialValue;

    use serde_json::Value as Json;

    use super::*;
    use crate::span::{Event, SpanKind, StatusCode};
    use crate::{SpanId, TraceId};

    fn sample() -> (Resource, Vec<Span>) {
        let resource = Resource { attributes: vec![("service.name".into(), "gallery-api".into())] };
        let mut span = Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: Some(SpanId::random()),
            parent_is_remote: true,
            trace_state: "vendor=x".into(),
            name: "GET /v0/images".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_250_000_000,
            attributes: Default::default(),
            status: StatusCode::Error,
            events: Vec::new(),
            status_message: "HTTP 503".into(),
        };
        span.set("http.request.method", "GET");
        span.set("http.response.status_code", 503i64);
        span.set("sample.ratio", ValueRef::Double(0.5));
        span.set("retried", false);
        span.events.push(Event {
            time_unix_nanos: 1_700_000_000_100_000_000,
            name: "tenant.resolved".into(),
            attributes: vec![("tenant.id".into(), "acme".into()), ("tier".into(), 2i64.into())],
        });
        (resource, vec![span])
    }

    #[test]
    fn protobuf_bytes_decode_with_the_official_definitions() {
        let (resource, spans) = sample();
        let bytes = encode_protobuf(&resource, &spans);
        let decoded = Official::decode(bytes.as_slice()).expect("official decode");
        let rs = &decoded.resource_spans[0];
        let res = rs.resource.as_ref().expect("resource");
        assert_eq!(res.attributes[0].key, "service.name");
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.trace_id, spans[0].trace_id.0.to_vec());
        assert_eq!(span.parent_span_id, spans[0].parent_span_id.expect("parent").0.to_vec());
        assert_eq!(span.name, "GET /v0/images");
        assert_eq!(span.kind, 2);
        assert_eq!(span.flags, 0x301);
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 250_000_000);
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
        let status_code =
            span.attributes.iter().find(|a| a.key == "http.response.status_code").and_then(|a| a.value.clone());
        assert_eq!(status_code.and_then(|v| v.value), Some(OfficialValue::IntValue(503)));
        assert_eq!(rs.scope_spans[0].scope.as_ref().map(|s| s.name.as_str()), Some("wasmtrace"));
        let event = &span.events[0];
        assert_eq!((event.name.as_str(), event.time_unix_nano), ("tenant.resolved", 1_700_000_000_100_000_000));
        assert_eq!(event.attributes[1].value.as_ref().and_then(|v| v.value.clone()), Some(OfficialValue::IntValue(2)));
    }

    /// What prost derives for the message: the reference [`encode_span_protobuf`] must match.
    fn prost_bytes(span: &Span) -> Vec<u8> {
        proto_span(span).encode_to_vec()
    }

    #[test]
    fn a_span_encoded_by_hand_is_byte_for_byte_what_prost_encodes() {
        let (_, spans) = sample();
        let mut span = spans[0].clone();
        assert_eq!(encode_span_protobuf(&span), prost_bytes(&span));
        // Defaults left out, and the values whose encodings differ in length.
        span.parent_span_id = None;
        span.trace_state.clear();
        span.status = StatusCode::Unset;
        span.status_message.clear();
        span.start_unix_nanos = 0;
        span.set("negative", -1i64);
        span.set("large", i64::MAX);
        span.set("", "");
        span.set("long", "x".repeat(300).as_str());
        span.set("nan", ValueRef::Double(f64::NAN));
        span.set("yes", true);
        span.name = "n".repeat(200);
        span.events.push(Event { time_unix_nanos: 0, name: String::new(), attributes: Vec::new() });
        span.events.push(Event {
            time_unix_nanos: u64::MAX,
            name: "e".repeat(150),
            attributes: vec![("".into(), "".into()), ("f".into(), 0.25.into()), ("b".into(), true.into())],
        });
        assert_eq!(encode_span_protobuf(&span), prost_bytes(&span));
        assert!(is_protobuf_span(&encode_span_protobuf(&span)), "events pass the queue's check");
        span.kind = SpanKind::Internal;
        span.attributes = Default::default();
        span.name.clear();
        assert_eq!(encode_span_protobuf(&span), prost_bytes(&span));
        let bytes = encode_span_protobuf(&span);
        assert_eq!(bytes.capacity(), bytes.len(), "sized exactly");
    }

    #[test]
    fn spans_encoded_one_by_one_make_the_same_request_bytes() {
        let (resource, mut spans) = sample();
        let mut second = spans[0].clone();
        second.span_id = SpanId::random();
        second.name = "GET /v0/images/{id}".into();
        spans.push(second);
        let items: Vec<Vec<u8>> = spans.iter().map(encode_span_protobuf).collect();
        assert!(items.iter().all(|item| is_protobuf_span(item)));
        let body = encode_protobuf_items(&resource, &items);
        assert_eq!(body, encode_protobuf(&resource, &spans), "byte for byte what the whole batch encodes to");
        let decoded = Official::decode(body.as_slice()).expect("official decode");
        let names: Vec<&str> = decoded.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["GET /v0/images", "GET /v0/images/{id}"]);
        let empty = Official::decode(encode_protobuf_items::<Vec<u8>>(&resource, &[]).as_slice()).expect("decode");
        assert!(empty.resource_spans[0].scope_spans[0].spans.is_empty());
    }

    #[test]
    fn items_that_are_not_spans_are_recognised() {
        assert!(!is_protobuf_span(&[0xff, 0xff, 0xff]), "a truncated varint key");
        assert!(!is_protobuf_span(&[0x0a, 0x05, 0x01]), "a field longer than the item");
        assert!(!is_protobuf_span(&[0x2d, 0, 0, 0, 0]), "name (field 5) with a fixed32 wire type");
        assert!(!is_json_span(b"[1]"));
        assert!(!is_json_span(b"{\"a\": "));
        assert!(is_json_span(&encode_span_json(&sample().1[0])));
    }

    #[test]
    fn json_items_join_into_one_request() {
        let (resource, spans) = sample();
        let items = vec![encode_span_json(&spans[0]), encode_span_json(&spans[0])];
        let joined: Json = serde_json::from_slice(&encode_json_items(&resource, &items)).expect("JSON");
        let whole: Json = serde_json::from_slice(&encode_json(&resource, &spans)).expect("JSON");
        assert_eq!(joined["resourceSpans"][0]["resource"], whole["resourceSpans"][0]["resource"]);
        let spans_of = |j: &Json| j["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().cloned();
        assert_eq!(spans_of(&joined).map(|s| s.len()), Some(2));
        assert_eq!(spans_of(&joined).map(|s| s[0].clone()), spans_of(&whole).map(|s| s[0].clone()));
        let empty: Json = serde_json::from_slice(&encode_json_items::<Vec<u8>>(&resource, &[])).expect("JSON");
        assert_eq!(spans_of(&empty).map(|s| s.len()), Some(0));
    }

    #[test]
    fn json_follows_otlps_rules() {
        let (resource, spans) = sample();
        let json: Json = serde_json::from_slice(&encode_json(&resource, &spans)).expect("JSON");
        let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], spans[0].trace_id.to_hex(), "hex ids, not base64");
        assert_eq!(span["kind"], 2, "enums are integers");
        assert_eq!(span["startTimeUnixNano"], "1700000000000000000", "fixed64 as a string");
        assert_eq!(span["status"]["code"], 2);
        let attrs = span["attributes"].as_array().expect("array");
        let code = attrs.iter().find(|a| a["key"] == "http.response.status_code").expect("attribute");
        assert_eq!(code["value"]["intValue"], "503", "int64 as a string");
        assert_eq!(json["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"], "gallery-api");
    }
}
