//! What arrives, turned into stored spans: OTLP/HTTP (`/v1/traces`, protobuf or JSON, optionally
//! gzip) and Zipkin v2 JSON (`/api/v2/spans`). Invalid spans (missing or all-zero ids) are
//! rejected one by one and reported in OTLP's partial-success answer; the rest are kept.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Map, Value, json};

use crate::span_store::StoredSpan;

/// Largest request body accepted (after decompression, too).
pub const MAX_BODY: usize = 64 << 20;

/// Spans decoded from one request, and how many were refused and why.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The valid spans.
    pub spans: Vec<StoredSpan>,
    /// Spans refused.
    pub rejected: usize,
    /// Why the first refused span was refused.
    pub reason: Option<String>,
}

impl Decoded {
    fn reject(&mut self, why: String) {
        self.rejected += 1;
        self.reason.get_or_insert(why);
    }
}

/// Why a whole request was refused.
#[derive(Debug)]
pub enum IngestError {
    /// Not decodable as what its content type says.
    Malformed(String),
    /// Larger than [`MAX_BODY`] once decompressed.
    TooLarge,
}

/// Undoes `Content-Encoding: gzip`, refusing bombs beyond [`MAX_BODY`].
pub fn decompress(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, IngestError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => Ok(body.to_vec()),
        Some(e) if e.is_empty() || e == "identity" => Ok(body.to_vec()),
        Some(e) if e == "gzip" => {
            use std::io::Read;
            let mut out = Vec::new();
            let read = flate2::read::GzDecoder::new(body)
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| IngestError::Malformed(format!("gzip: {e}")))?;
            if read > MAX_BODY {
                return Err(IngestError::TooLarge);
            }
            Ok(out)
        }
        Some(other) => Err(IngestError::Malformed(format!("unsupported Content-Encoding `{other}`"))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::from(s.as_str()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(value).collect()),
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attributes(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => Value::from(hex(b)),
        // Dictionary references belong to the profiles signal; traces carry no dictionary.
        Some(any_value::Value::StringValueStrindex(_)) | None => Value::Null,
    }
}

fn attributes(list: &[KeyValue]) -> Map<String, Value> {
    list.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, value))).collect()
}

fn micros(nanos: u64) -> i64 {
    i64::try_from(nanos / 1000).unwrap_or(i64::MAX)
}

/// An OTLP request: protobuf, or JSON when `json`.
pub fn otlp(body: &[u8], json: bool) -> Result<Decoded, IngestError> {
    let request = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(body)
            .map_err(|e| IngestError::Malformed(format!("OTLP JSON: {e}")))?
    } else {
        ExportTraceServiceRequest::decode(body).map_err(|e| IngestError::Malformed(format!("OTLP protobuf: {e}")))?
    };
    let mut decoded = Decoded::default();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").and_then(Value::as_str).unwrap_or("unknown_service").to_owned();
        let resource_json = Value::Object(resource).to_string();
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
                    decoded.reject(format!("span `{}`: trace_id must be 16 non-zero bytes", span.name));
                    continue;
                }
                if span.span_id.len() != 8 || span.span_id.iter().all(|b| *b == 0) {
                    decoded.reject(format!("span `{}`: span_id must be 8 non-zero bytes", span.name));
                    continue;
                }
                let start_us = micros(span.start_time_unix_nano);
                let end_us = micros(span.end_time_unix_nano).max(start_us);
                let status = span.status.as_ref();
                decoded.spans.push(StoredSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: if span.parent_span_id.iter().all(|b| *b == 0) {
                        String::new()
                    } else {
                        hex(&span.parent_span_id)
                    },
                    service: service.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    start_us,
                    duration_us: end_us - start_us,
                    status_code: status.map_or(0, |s| s.code),
                    status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                    attributes: Value::Object(attributes(&span.attributes)).to_string(),
                    resource: resource_json.clone(),
                    events: Value::Array(
                        span.events
                            .iter()
                            .map(|e| {
                                json!({ "time_us": micros(e.time_unix_nano), "name": e.name, "attributes": attributes(&e.attributes) })
                            })
                            .collect(),
                    )
                    .to_string(),
                    links: Value::Array(
                        span.links
                            .iter()
                            .map(|l| json!({ "trace_id": hex(&l.trace_id), "span_id": hex(&l.span_id) }))
                            .collect(),
                    )
                    .to_string(),
                });
            }
        }
    }
    Ok(decoded)
}

fn zipkin_kind(kind: Option<&str>) -> i32 {
    match kind {
        Some("SERVER") => 2,
        Some("CLIENT") => 3,
        Some("PRODUCER") => 4,
        Some("CONSUMER") => 5,
        _ => 1,
    }
}

fn valid_hex(id: &str, lengths: &[usize]) -> bool {
    lengths.contains(&id.len()) && id.chars().all(|c| c.is_ascii_hexdigit()) && id.chars().any(|c| c != '0')
}

/// A Zipkin v2 JSON array of spans.
pub fn zipkin(body: &[u8]) -> Result<Decoded, IngestError> {
    let spans: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| IngestError::Malformed(format!("Zipkin v2 JSON: {e}")))?;
    let mut decoded = Decoded::default();
    for span in spans {
        let text = |key: &str| span.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
        let (trace_id, id) = (text("traceId").to_ascii_lowercase(), text("id").to_ascii_lowercase());
        if !valid_hex(&trace_id, &[16, 32]) || !valid_hex(&id, &[16]) {
            decoded.reject(format!("span `{}`: traceId/id are not valid hex ids", text("name")));
            continue;
        }
        let service = span.pointer("/localEndpoint/serviceName").and_then(Value::as_str).unwrap_or("unknown_service");
        let tags = span.get("tags").and_then(Value::as_object).cloned().unwrap_or_default();
        let error = tags.get("error").map(|e| e.as_str().unwrap_or("true").to_owned());
        let annotations = span.get("annotations").and_then(Value::as_array).cloned().unwrap_or_default();
        decoded.spans.push(StoredSpan {
            trace_id: format!("{trace_id:0>32}"),
            span_id: id,
            parent_span_id: text("parentId").to_ascii_lowercase(),
            service: service.to_owned(),
            name: text("name"),
            kind: zipkin_kind(span.get("kind").and_then(Value::as_str)),
            start_us: span.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
            duration_us: span.get("duration").and_then(Value::as_i64).unwrap_or(0).max(0),
            status_code: if error.is_some() { 2 } else { 0 },
            status_message: error.unwrap_or_default(),
            attributes: Value::Object(tags).to_string(),
            resource: json!({ "service.name": service }).to_string(),
            events: Value::Array(
                annotations
                    .iter()
                    .map(|a| json!({ "time_us": a["timestamp"], "name": a["value"], "attributes": {} }))
                    .collect(),
            )
            .to_string(),
            links: "[]".to_owned(),
        });
    }
    Ok(decoded)
}
