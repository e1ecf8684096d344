//! Zipkin v2 JSON (`POST /api/v2/spans`, a JSON array of spans): times in microseconds, tags as
//! strings, the service in `localEndpoint`, the peer in `remoteEndpoint`.

use serde_json::{Map, Value as Json, json};

use crate::span::{Resource, Span, SpanKind, StatusCode, ValueRef};

/// Content type of the encoding.
pub const CONTENT_TYPE: &str = "application/json";

fn text(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::String(s) => s.to_owned(),
        ValueRef::Int(i) => i.to_string(),
        ValueRef::Double(d) => d.to_string(),
        ValueRef::Bool(b) => b.to_string(),
    }
}

/// The body for `spans` of `resource`.
pub fn encode_json(resource: &Resource, spans: &[Span]) -> Vec<u8> {
    let items: Vec<Vec<u8>> = spans.iter().map(|span| encode_span(resource, span)).collect();
    encode_items(&items)
}

/// One span (with its service, from `resource`) as a Zipkin v2 span object: an item for
/// [`encode_items`].
pub fn encode_span(resource: &Resource, span: &Span) -> Vec<u8> {
    let service =
        resource.attributes.iter().find(|(k, _)| k == "service.name").map(|(_, v)| text(v.into())).unwrap_or_default();
    zipkin_span(&service, span).to_string().into_bytes()
}

/// The body for spans already encoded with [`encode_span`]: a JSON array of them, as they are.
pub fn encode_items<I: AsRef<[u8]>>(items: &[I]) -> Vec<u8> {
    let mut body = vec![b'['];
    crate::otlp::join_items(items, &mut body);
    body.push(b']');
    body
}

/// Whether `item` is a JSON object (what [`encode_span`] makes): items come back from a queue
/// other code can write to.
pub fn is_span(item: &[u8]) -> bool {
    crate::otlp::is_json_span(item)
}

fn zipkin_span(service: &str, span: &Span) -> Json {
    let mut tags = Map::new();
    for (key, value) in span.attributes.iter() {
        tags.insert(key.to_owned(), Json::String(text(value)));
    }
    if span.status == StatusCode::Error {
        let error = span.get("error.type").map(text).unwrap_or_else(|| span.status_message.clone());
        tags.insert("error".into(), Json::String(error));
    }
    let mut object = json!({
        "traceId": span.trace_id.to_hex(),
        "id": span.span_id.to_hex(),
        "name": span.name,
        "timestamp": span.start_unix_nanos / 1000,
        "duration": (span.end_unix_nanos.saturating_sub(span.start_unix_nanos) / 1000).max(1),
        "localEndpoint": { "serviceName": service },
        "tags": tags,
    });
    if let Some(parent) = span.parent_span_id {
        object["parentId"] = Json::String(parent.to_hex());
    }
    if !span.events.is_empty() {
        // Zipkin's annotations carry a name and a time, not attributes.
        let annotations =
            span.events.iter().map(|event| json!({ "timestamp": event.time_unix_nanos / 1000, "value": event.name }));
        object["annotations"] = Json::Array(annotations.collect());
    }
    match span.kind {
        SpanKind::Server => object["kind"] = Json::String("SERVER".into()),
        SpanKind::Client => object["kind"] = Json::String("CLIENT".into()),
        SpanKind::Internal => {}
    }
    let peer = span.get("network.peer.address").or_else(|| span.get("server.address")).map(text);
    if let Some(peer) = peer {
        let mut endpoint = Map::new();
        let key = if peer.parse::<std::net::Ipv6Addr>().is_ok() {
            "ipv6"
        } else if peer.parse::<std::net::Ipv4Addr>().is_ok() {
            "ipv4"
        } else {
            "serviceName"
        };
        endpoint.insert(key.into(), Json::String(peer));
        if let Some(ValueRef::Int(port)) = span.get("network.peer.port").or_else(|| span.get("server.port")) {
            endpoint.insert("port".into(), json!(port));
        }
        object["remoteEndpoint"] = Json::Object(endpoint);
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpanId, TraceId};

    #[test]
    fn spans_become_zipkin_v2_json() {
        let resource = Resource { attributes: vec![("service.name".into(), "catalog".into())] };
        let mut span = Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: Some(SpanId::random()),
            parent_is_remote: true,
            trace_state: String::new(),
            name: "GET /v0/images".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_002_500_000,
            attributes: Default::default(),
            status: StatusCode::Error,
            events: Vec::new(),
            status_message: String::new(),
        };
        span.set("http.response.status_code", 503i64);
        span.set("error.type", "503");
        span.set("network.peer.address", "10.0.0.7");
        span.set("network.peer.port", 51000i64);
        let json: Json = serde_json::from_slice(&encode_json(&resource, &[span.clone()])).expect("JSON");
        let z = &json[0];
        assert_eq!(z["traceId"], span.trace_id.to_hex());
        assert_eq!(z["kind"], "SERVER");
        assert_eq!(z["timestamp"], 1_700_000_000_000_000u64);
        assert_eq!(z["duration"], 2500);
        assert_eq!(z["localEndpoint"]["serviceName"], "catalog");
        assert_eq!(z["remoteEndpoint"]["ipv4"], "10.0.0.7");
        assert_eq!(z["tags"]["http.response.status_code"], "503");
        assert_eq!(z["tags"]["error"], "503");
    }

    #[test]
    fn spans_encoded_one_by_one_join_into_an_array() {
        let resource = Resource { attributes: vec![("service.name".into(), "catalog".into())] };
        let span = Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            parent_is_remote: false,
            trace_state: String::new(),
            name: "GET /".into(),
            kind: SpanKind::Client,
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_000,
            attributes: Default::default(),
            status: StatusCode::Unset,
            events: Vec::new(),
            status_message: String::new(),
        };
        let item = encode_span(&resource, &span);
        assert!(is_span(&item));
        assert!(!is_span(b"not json"));
        let json: Json = serde_json::from_slice(&encode_items(&[item.clone(), item])).expect("JSON");
        assert_eq!(json.as_array().map(Vec::len), Some(2));
        assert_eq!(json[1]["localEndpoint"]["serviceName"], "catalog");
        assert_eq!(encode_items::<Vec<u8>>(&[]), b"[]");
    }
}
