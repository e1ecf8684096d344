//! The OTLP/JSON encoding (`application/json`), with OTLP's deviations from proto3 JSON: ids in
//! hex, enums as integers.

use serde_json::{Value as Json, json};

use super::{SCOPE_NAME, flags};
use crate::span::{Resource, Span, ValueRef};

fn json_value(value: ValueRef<'_>) -> Json {
    match value {
        ValueRef::String(s) => json!({ "stringValue": s }),
        // int64 is a decimal string in proto3 JSON.
        ValueRef::Int(i) => json!({ "intValue": i.to_string() }),
        ValueRef::Double(d) => json!({ "doubleValue": d }),
        ValueRef::Bool(b) => json!({ "boolValue": b }),
    }
}

fn json_attributes<'a>(attributes: impl Iterator<Item = (&'a str, ValueRef<'a>)>) -> Json {
    Json::Array(attributes.map(|(k, v)| json!({ "key": k, "value": json_value(v) })).collect())
}

fn json_span(span: &Span) -> Json {
    let mut object = json!({
        "traceId": span.trace_id.to_hex(),
        "spanId": span.span_id.to_hex(),
        "name": span.name,
        "kind": span.kind as i32,
        "flags": flags(span),
        "startTimeUnixNano": span.start_unix_nanos.to_string(),
        "endTimeUnixNano": span.end_unix_nanos.to_string(),
        "attributes": json_attributes(span.attributes.iter()),
        "status": { "code": span.status as i32, "message": span.status_message },
    });
    if let Some(parent) = span.parent_span_id {
        object["parentSpanId"] = Json::String(parent.to_hex());
    }
    if !span.events.is_empty() {
        let events = span.events.iter().map(|event| {
            json!({
                "timeUnixNano": event.time_unix_nanos.to_string(),
                "name": event.name,
                "attributes": json_attributes(event.attributes.iter().map(|(k, v)| (k.as_str(), v.into()))),
            })
        });
        object["events"] = Json::Array(events.collect());
    }
    if !span.trace_state.is_empty() {
        object["traceState"] = Json::String(span.trace_state.clone());
    }
    object
}

/// The JSON body.
pub fn encode_json(resource: &Resource, spans: &[Span]) -> Vec<u8> {
    let items: Vec<Vec<u8>> = spans.iter().map(encode_span_json).collect();
    encode_json_items(resource, &items)
}

/// One span as an OTLP/JSON span object: an item for [`encode_json_items`].
pub fn encode_span_json(span: &Span) -> Vec<u8> {
    json_span(span).to_string().into_bytes()
}

/// Whether `item` is a JSON object (what [`encode_span_json`] makes); see [`is_protobuf_span`].
pub fn is_json_span(item: &[u8]) -> bool {
    serde_json::from_slice::<Json>(item).is_ok_and(|v| v.is_object())
}

/// The JSON body for spans already encoded with [`encode_span_json`], joined into the envelope
/// as they are.
pub fn encode_json_items<I: AsRef<[u8]>>(resource: &Resource, items: &[I]) -> Vec<u8> {
    let resource =
        json!({ "attributes": json_attributes(resource.attributes.iter().map(|(k, v)| (k.as_str(), v.into()))) });
    let scope = json!({ "name": SCOPE_NAME, "version": env!("CARGO_PKG_VERSION") });
    let mut body =
        format!(r#"{{"resourceSpans":[{{"resource":{resource},"scopeSpans":[{{"scope":{scope},"spans":["#).into_bytes();
    join_items(items, &mut body);
    body.extend_from_slice(b"]}]}]}");
    body
}

/// Appends `items` separated by commas (the inside of a JSON array).
pub(crate) fn join_items<I: AsRef<[u8]>>(items: &[I], out: &mut Vec<u8>) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_ref());
    }
}
