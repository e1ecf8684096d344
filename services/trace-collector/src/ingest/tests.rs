//! The scans and decoders on hand-made requests: counts, early refusals, estimates that let
//! ordinary batches through, and per-span rejections.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::*;

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..KeyValue::default()
    }
}

/// `n` gallery-like spans (eight attributes each) under one resource.
fn request(n: u64, attributes: usize) -> ExportTraceServiceRequest {
    let spans = (1..=n)
        .map(|i| Span {
            trace_id: [&[1u8; 8][..], &i.to_be_bytes()].concat(),
            span_id: i.to_be_bytes().to_vec(),
            name: "SELECT images".into(),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i,
            end_time_unix_nano: 1_700_000_000_000_250_000 + i,
            attributes: (0..attributes)
                .map(|a| string(&format!("db.attribute.{a}"), "SELECT id FROM images"))
                .collect(),
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![string("service.name", "catalog")], ..Resource::default() }),
            scope_spans: vec![ScopeSpans { spans, ..ScopeSpans::default() }],
            ..ResourceSpans::default()
        }],
    }
}

fn limits(max_spans: usize, max_decoded_bytes: usize) -> Limits {
    Limits { max_spans_per_request: max_spans, max_decoded_bytes, ..Limits::default() }
}

fn scanned(body: &[u8]) -> Result<(usize, usize), IngestError> {
    let mut budget = Budget::new(usize::MAX, usize::MAX);
    protobuf_scan::scan(body, &mut budget)?;
    Ok((budget.spans(), budget.bytes()))
}

#[test]
fn the_protobuf_scan_counts_every_span() {
    let body = request(300, 8).encode_to_vec();
    assert_eq!(scanned(&body).map(|(spans, _)| spans).ok(), Some(300));
    assert_eq!(otlp(&body, false).map(|d| d.spans.len()).ok(), Some(300));
}

#[test]
fn an_ordinary_batch_is_estimated_at_a_few_times_its_size() {
    // The default decoded-size limit must let a full-size request of ordinary spans through.
    let body = request(2_000, 8).encode_to_vec();
    let (_, estimate) = scanned(&body).unwrap_or_default();
    let ratio = estimate as f64 / body.len() as f64;
    assert!((1.0..6.0).contains(&ratio), "estimated {estimate} bytes for {} ({ratio:.1}×)", body.len());
    let full_size = ratio * crate::limits::DEFAULT_MAX_REQUEST_BYTES as f64;
    assert!(full_size < crate::limits::DEFAULT_MAX_DECODED_BYTES as f64, "a full request: {full_size} bytes");
}

#[test]
fn a_request_over_the_span_limit_is_refused_before_the_rest_is_read() {
    let mut body = request(11, 0).encode_to_vec();
    // Garbage after the spans: a decoder would fail on it; the scan stops before it.
    body.extend_from_slice(&[0xff; 16]);
    let refused = otlp_within(&body, false, &limits(10, usize::MAX));
    assert!(matches!(refused, Err(IngestError::TooManySpans { max: 10 })), "{refused:?}");
    assert!(matches!(otlp_within(&body, false, &limits(100, usize::MAX)), Err(IngestError::Malformed(_))));
}

#[test]
fn empty_attributes_by_the_million_are_refused_by_their_decoded_size() {
    // Two bytes on the wire each, a whole `KeyValue` (doubled for `Vec` growth) once decoded.
    let mut span = request(1, 0).resource_spans[0].scope_spans[0].spans[0].clone();
    span.attributes = vec![KeyValue::default(); 100_000];
    let mut body = request(0, 0);
    body.resource_spans[0].scope_spans[0].spans.push(span);
    let body = body.encode_to_vec();
    let refused = otlp_within(&body, false, &limits(10, 4 << 20));
    assert!(matches!(refused, Err(IngestError::DecodesTooLarge { max })  if max == 4 << 20), "{refused:?}");
}

#[test]
fn broken_framing_is_malformed() {
    for body in [&[0x0a, 0x05, 0x01][..], &[0x0a][..], &[0x0b, 0x00][..], &[0xff; 11][..], &[0x00, 0x00][..]] {
        assert!(matches!(scanned(body), Err(IngestError::Malformed(_))), "{body:?}");
    }
}

#[test]
fn nesting_beyond_the_limit_is_malformed() {
    // AnyValue → ArrayValue → AnyValue ... as deep as it goes.
    let mut value = AnyValue { value: Some(any_value::Value::IntValue(1)) };
    for _ in 0..60 {
        value = AnyValue {
            value: Some(any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: vec![value],
            })),
        };
    }
    let mut body = request(1, 0);
    body.resource_spans[0].scope_spans[0].spans[0].attributes =
        vec![KeyValue { key: "deep".into(), value: Some(value), ..KeyValue::default() }];
    let refused = scanned(&body.encode_to_vec());
    assert!(matches!(&refused, Err(IngestError::Malformed(m)) if m.contains("nest")), "{refused:?}");
}

#[test]
fn the_json_scan_counts_spans_and_is_not_fooled_by_strings() {
    let body =
        br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a]}\"{["}}]},
        "scopeSpans":[{"spans":[{"traceId":"01010101010101010101010101010101","spanId":"0101010101010101","name":"x"},
        {"traceId":"01010101010101010101010101010101","spanId":"0202020202020202","name":"spans"}]}]}]}"#;
    let mut budget = Budget::new(usize::MAX, usize::MAX);
    json_scan::scan(body, Dialect::Otlp, &mut budget).map_err(|e| e.to_string()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(budget.spans(), 2);
    let decoded = otlp(body, true).map_err(|e| e.to_string()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decoded.spans.len(), 2);
    assert_eq!(decoded.spans[0].resource.service, "a]}\"{[");
}

#[test]
fn empty_json_spans_over_the_limit_are_refused_before_decoding() {
    let spans = vec!["{}"; 1_001].join(",");
    let body = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#);
    let refused = otlp_within(body.as_bytes(), true, &limits(1_000, usize::MAX));
    assert!(matches!(refused, Err(IngestError::TooManySpans { max: 1_000 })), "{refused:?}");
    // The same bytes under a key spelled with an escape are caught after decoding.
    let escaped = body.replace("\"spans\"", "\"sp\\u0061ns\"");
    let refused = otlp_within(escaped.as_bytes(), true, &limits(1_000, usize::MAX));
    assert!(matches!(refused, Err(IngestError::TooManySpans { max: 1_000 })), "{refused:?}");
}

#[test]
fn json_nested_too_deep_is_malformed() {
    let body = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let refused = otlp(body.as_bytes(), true);
    assert!(matches!(&refused, Err(IngestError::Malformed(m)) if m.contains("nest")), "{refused:?}");
}

#[test]
fn zipkin_spans_over_the_limit_and_bad_parents_are_refused() {
    let span = |id: &str, parent: &str| {
        format!(
            r#"{{"traceId":"{}","id":"{id}","parentId":"{parent}","name":"op","localEndpoint":{{"serviceName":"svc"}},"tags":{{"k":"v"}}}}"#,
            "ab".repeat(8)
        )
    };
    let body = format!("[{},{}]", span(&"01".repeat(8), ""), span(&"02".repeat(8), "not-hex-at-all!!"));
    let decoded = zipkin(body.as_bytes()).map_err(|e| e.to_string()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((decoded.spans.len(), decoded.rejected), (1, 1));
    assert!(decoded.reason.is_some_and(|r| r.contains("parentId")));
    assert_eq!(decoded.spans[0].trace_id[..8], [0; 8], "64-bit trace ids are padded");
    let many = format!("[{}]", vec![span(&"01".repeat(8), ""); 11].join(","));
    let refused = zipkin_within(many.as_bytes(), &limits(10, usize::MAX));
    assert!(matches!(refused, Err(IngestError::TooManySpans { max: 10 })), "{refused:?}");
}

#[test]
fn spans_of_one_resource_share_it_and_bad_parents_are_rejected() {
    let mut body = request(3, 1);
    body.resource_spans[0].scope_spans[0].spans[2].parent_span_id = vec![7; 5];
    let decoded = otlp(&body.encode_to_vec(), false).map_err(|e| e.to_string()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((decoded.spans.len(), decoded.rejected), (2, 1));
    assert!(decoded.reason.is_some_and(|r| r.contains("parent_span_id")));
    assert!(Arc::ptr_eq(&decoded.spans[0].resource, &decoded.spans[1].resource));
}

#[test]
fn a_gzip_bomb_stops_at_the_limit() {
    use std::io::Write as _;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..8 {
        gzip.write_all(&zeros).unwrap_or_else(|e| panic!("{e}"));
    }
    let bomb = gzip.finish().unwrap_or_else(|e| panic!("{e}"));
    let refused = decompress_within(Some("gzip"), &bomb, 1 << 20);
    assert!(matches!(refused, Err(IngestError::TooLarge { max }) if max == 1 << 20), "{refused:?}");
}
