//! What arrives, turned into stored spans: OTLP/HTTP (`/v1/traces`, protobuf or JSON, optionally
//! gzip) and Zipkin v2 JSON (`/api/v2/spans`). Invalid spans (missing or all-zero ids) are
//! rejected one by one and reported in OTLP's partial-success answer; the rest are kept.
//!
//! Memory is bounded before it is spent ([`Limits`]): the body is decompressed with a cap, then
//! scanned undecoded ([`protobuf_scan`], [`json_scan`]) to count its spans and estimate what
//! decoding allocates, and only then decoded; the spans produced are counted again as they are
//! built. Each resource is converted once and shared by its spans ([`StoredResource`]).

mod budget;
mod json_scan;
mod protobuf_scan;

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::limits::Limits;
use crate::span_store::{StoredResource, StoredSpan};
use budget::Budget;
use json_scan::Dialect;

/// Largest request body accepted by default (after decompression, too).
pub const MAX_BODY: usize = crate::limits::DEFAULT_MAX_REQUEST_BYTES;

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
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Not decodable as what its content type says (400).
    #[error("{0}")]
    Malformed(String),
    /// Larger than the body limit, as sent or once decompressed (413).
    #[error("request bodies are limited to {max} bytes, compressed or not; send smaller batches")]
    TooLarge {
        /// The limit, bytes.
        max: usize,
    },
    /// More spans than one request may carry (413).
    #[error("a request may carry at most {max} spans; send smaller batches")]
    TooManySpans {
        /// The limit.
        max: usize,
    },
    /// Its decoded form would take more memory than one request may (413).
    #[error("this request would take more than {max} bytes of memory once decoded; send smaller batches")]
    DecodesTooLarge {
        /// The limit, bytes.
        max: usize,
    },
}

/// Undoes `Content-Encoding: gzip`, refusing bombs beyond [`MAX_BODY`].
pub fn decompress(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, IngestError> {
    decompress_within(encoding, body, MAX_BODY)
}

/// Undoes `Content-Encoding: gzip`, refusing output beyond `max` bytes (read with a cap, so a
/// bomb stops at `max + 1`).
pub fn decompress_within(encoding: Option<&str>, body: &[u8], max: usize) -> Result<Vec<u8>, IngestError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => Ok(body.to_vec()),
        Some(e) if e.is_empty() || e == "identity" => Ok(body.to_vec()),
        Some(e) if e == "gzip" => {
            use std::io::Read;
            let mut out = Vec::new();
            let read = flate2::read::GzDecoder::new(body)
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| IngestError::Malformed(format!("gzip: {e}")))?;
            if read > max {
                return Err(IngestError::TooLarge { max });
            }
            Ok(out)
        }
        Some(other) => Err(IngestError::Malformed(format!("unsupported Content-Encoding `{other}`"))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: AnyValue) -> Value {
    match v.value {
        Some(any_value::Value::StringValue(s)) => Value::from(s),
        Some(any_value::Value::BoolValue(b)) => Value::from(b),
        Some(any_value::Value::IntValue(i)) => Value::from(i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.into_iter().map(value).collect()),
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attributes(kv.values)),
        Some(any_value::Value::BytesValue(b)) => Value::from(hex(&b)),
        // Dictionary references belong to the profiles signal; traces carry no dictionary.
        Some(any_value::Value::StringValueStrindex(_)) | None => Value::Null,
    }
}

fn attributes(list: Vec<KeyValue>) -> Map<String, Value> {
    list.into_iter().map(|kv| (kv.key, kv.value.map_or(Value::Null, value))).collect()
}

fn micros(nanos: u64) -> i64 {
    i64::try_from(nanos / 1000).unwrap_or(i64::MAX)
}

/// A non-zero id of exactly `N` bytes.
fn id<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    <[u8; N]>::try_from(bytes).ok().filter(|id| id.iter().any(|b| *b != 0))
}

/// Counts the heap of the spans built against the decoded-size limit.
struct Output {
    bytes: usize,
    max: usize,
}

impl Output {
    fn add(&mut self, bytes: usize) -> Result<(), IngestError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.max {
            return Err(IngestError::DecodesTooLarge { max: self.max });
        }
        Ok(())
    }
}

/// An OTLP request (protobuf, or JSON when `json`) within the default [`Limits`].
pub fn otlp(body: &[u8], json: bool) -> Result<Decoded, IngestError> {
    otlp_within(body, json, &Limits::default())
}

/// An OTLP request (protobuf, or JSON when `json`) within `limits`: scanned, then decoded.
pub fn otlp_within(body: &[u8], json: bool, limits: &Limits) -> Result<Decoded, IngestError> {
    let mut budget = Budget::new(limits.max_spans_per_request, limits.max_decoded_bytes);
    let request = if json {
        json_scan::scan(body, Dialect::Otlp, &mut budget)?;
        serde_json::from_slice::<ExportTraceServiceRequest>(body)
            .map_err(|e| IngestError::Malformed(format!("OTLP JSON: {e}")))?
    } else {
        protobuf_scan::scan(body, &mut budget)?;
        ExportTraceServiceRequest::decode(body).map_err(|e| IngestError::Malformed(format!("OTLP protobuf: {e}")))?
    };
    tracing::debug!(spans = budget.spans(), estimated_bytes = budget.bytes(), "OTLP request scanned");
    convert(request, limits)
}

/// The stored form of a decoded request; consumes it, so each part is freed once converted.
fn convert(request: ExportTraceServiceRequest, limits: &Limits) -> Result<Decoded, IngestError> {
    let mut decoded = Decoded::default();
    let mut output = Output { bytes: 0, max: limits.max_decoded_bytes };
    let mut spans = 0usize;
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").and_then(Value::as_str).unwrap_or("unknown_service").to_owned();
        let resource = Arc::new(StoredResource { service, attributes: Value::Object(resource).to_string() });
        output.add(resource.heap_bytes())?;
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                // The scan counted spans under the keys it knows; this counts every spelling.
                spans += 1;
                if spans > limits.max_spans_per_request {
                    return Err(IngestError::TooManySpans { max: limits.max_spans_per_request });
                }
                let Some(trace_id) = id::<16>(&span.trace_id) else {
                    decoded.reject(format!("span `{}`: trace_id must be 16 non-zero bytes", span.name));
                    continue;
                };
                let Some(span_id) = id::<8>(&span.span_id) else {
                    decoded.reject(format!("span `{}`: span_id must be 8 non-zero bytes", span.name));
                    continue;
                };
                let parent_span_id = if span.parent_span_id.iter().all(|b| *b == 0) {
                    None
                } else if let Some(parent) = id::<8>(&span.parent_span_id) {
                    Some(parent)
                } else {
                    decoded.reject(format!("span `{}`: parent_span_id must be empty or 8 bytes", span.name));
                    continue;
                };
                let start_us = micros(span.start_time_unix_nano);
                let end_us = micros(span.end_time_unix_nano).max(start_us);
                let (status_code, status_message) = span.status.map_or((0, String::new()), |s| (s.code, s.message));
                let events = Value::Array(
                    span.events
                        .into_iter()
                        .map(|e| {
                            json!({ "time_us": micros(e.time_unix_nano), "name": e.name, "attributes": attributes(e.attributes) })
                        })
                        .collect(),
                );
                let links = Value::Array(
                    span.links
                        .iter()
                        .map(|l| json!({ "trace_id": hex(&l.trace_id), "span_id": hex(&l.span_id) }))
                        .collect(),
                );
                let stored = StoredSpan {
                    trace_id,
                    span_id,
                    parent_span_id,
                    resource: resource.clone(),
                    name: span.name,
                    kind: span.kind,
                    start_us,
                    duration_us: end_us - start_us,
                    status_code,
                    status_message,
                    attributes: Value::Object(attributes(span.attributes)).to_string(),
                    events: events.to_string(),
                    links: links.to_string(),
                };
                output.add(stored.heap_bytes() + size_of::<StoredSpan>())?;
                decoded.spans.push(stored);
            }
        }
    }
    Ok(decoded)
}

/// A Zipkin v2 span, as far as we keep it (other fields are skipped unread).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    #[serde(default)]
    trace_id: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    duration: Option<i64>,
    #[serde(default)]
    local_endpoint: Option<ZipkinEndpoint>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    annotations: Vec<ZipkinAnnotation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinEndpoint {
    #[serde(default)]
    service_name: Option<String>,
}

#[derive(Deserialize)]
struct ZipkinAnnotation {
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    value: Option<String>,
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

/// `N` bytes from `2 * N` hex digits, left-padded with zeros from `digits` (Zipkin's 64-bit trace
/// ids become 128-bit ones); `None` unless valid and non-zero.
fn hex_id<const N: usize>(text: &str, digits: &[usize]) -> Option<[u8; N]> {
    if !digits.contains(&text.len()) || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{text:0>width$}", width = 2 * N);
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(padded.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    id::<N>(&out)
}

/// A Zipkin v2 JSON array of spans within the default [`Limits`].
pub fn zipkin(body: &[u8]) -> Result<Decoded, IngestError> {
    zipkin_within(body, &Limits::default())
}

/// A Zipkin v2 JSON array of spans within `limits`: scanned, then decoded.
pub fn zipkin_within(body: &[u8], limits: &Limits) -> Result<Decoded, IngestError> {
    let mut budget = Budget::new(limits.max_spans_per_request, limits.max_decoded_bytes);
    let dialect = Dialect::Zipkin { span: size_of::<ZipkinSpan>(), annotation: size_of::<ZipkinAnnotation>() };
    json_scan::scan(body, dialect, &mut budget)?;
    let spans: Vec<ZipkinSpan> =
        serde_json::from_slice(body).map_err(|e| IngestError::Malformed(format!("Zipkin v2 JSON: {e}")))?;
    if spans.len() > limits.max_spans_per_request {
        return Err(IngestError::TooManySpans { max: limits.max_spans_per_request });
    }
    let mut decoded = Decoded::default();
    let mut output = Output { bytes: 0, max: limits.max_decoded_bytes };
    // One resource per service: Zipkin has no resources, only the local endpoint's name.
    let mut resources: HashMap<String, Arc<StoredResource>> = HashMap::new();
    for span in spans {
        let name = span.name.unwrap_or_default();
        let (Some(trace_id), Some(span_id)) =
            (hex_id::<16>(&span.trace_id.to_ascii_lowercase(), &[16, 32]), hex_id::<8>(&span.id, &[16]))
        else {
            decoded.reject(format!("span `{name}`: traceId/id are not valid hex ids"));
            continue;
        };
        let parent_span_id = match span.parent_id.as_deref() {
            None | Some("") => None,
            Some(parent) if parent.bytes().all(|c| c == b'0') => None,
            Some(parent) => match hex_id::<8>(parent, &[16]) {
                Some(parent) => Some(parent),
                None => {
                    decoded.reject(format!("span `{name}`: parentId is not a valid hex id"));
                    continue;
                }
            },
        };
        let service = span.local_endpoint.and_then(|e| e.service_name).unwrap_or_else(|| "unknown_service".into());
        let resource = match resources.get(&service) {
            Some(resource) => resource.clone(),
            None => {
                let resource = Arc::new(StoredResource {
                    attributes: json!({ "service.name": service }).to_string(),
                    service: service.clone(),
                });
                output.add(resource.heap_bytes())?;
                resources.insert(service, resource.clone());
                resource
            }
        };
        let error = span.tags.get("error").cloned();
        let events = Value::Array(
            span.annotations
                .into_iter()
                .map(|a| json!({ "time_us": a.timestamp, "name": a.value, "attributes": {} }))
                .collect(),
        );
        let stored = StoredSpan {
            trace_id,
            span_id,
            parent_span_id,
            resource,
            name,
            kind: zipkin_kind(span.kind.as_deref()),
            start_us: span.timestamp.unwrap_or(0),
            duration_us: span.duration.unwrap_or(0).max(0),
            status_code: if error.is_some() { 2 } else { 0 },
            status_message: error.unwrap_or_default(),
            attributes: serde_json::to_string(&span.tags).unwrap_or_else(|_| "{}".into()),
            events: events.to_string(),
            links: "[]".to_owned(),
        };
        output.add(stored.heap_bytes() + size_of::<StoredSpan>())?;
        decoded.spans.push(stored);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests;
