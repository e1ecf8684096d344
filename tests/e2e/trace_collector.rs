//! The local trace collector: OTLP (protobuf, JSON, gzip) and Zipkin in, partial success for bad
//! spans, limits; Jaeger's query API out in Jaeger's JSON shape; retention; and the gallery's
//! real spans searchable and linked into a dependency graph.

use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::Value;

use crate::fixture::client::{client, get, send_bytes};
use crate::fixture::gallery::{Database, Gallery, GalleryOptions};
use crate::fixture::traces::{start_collector, trace_id_of, upload_png, wait_for_trace};

pub(crate) fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..KeyValue::default()
    }
}

/// A span of trace `[trace; 16]`, id `[id; 8]`, lasting `(start_ms, ms)` after a fixed base time.
pub(crate) fn span(
    trace: u8,
    id: u8,
    parent: Option<u8>,
    name: &str,
    kind: i32,
    (start_ms, ms): (u64, u64),
    error: bool,
) -> Span {
    let base = 1_700_000_000_000_000_000u64;
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: base + start_ms * 1_000_000,
        end_time_unix_nano: base + (start_ms + ms) * 1_000_000,
        attributes: vec![string("http.request.method", "GET")],
        status: Some(Status {
            message: if error { "boom".into() } else { String::new() },
            code: if error { 2 } else { 0 },
        }),
        ..Span::default()
    }
}

pub(crate) fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service), string("host.name", "test")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..ScopeSpans::default() }],
            ..ResourceSpans::default()
        }],
    }
}

pub(crate) async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> crate::fixture::client::Reply {
    send_bytes(&client(false), addr, "POST", path, headers, Bytes::from(body)).await
}

/// Every key of `expected` is in `actual` with the same JSON type (null: any); a key ending in
/// `?` is one protobuf's JSON leaves out at its default, checked only when present; keys
/// starting with `_` are comments; arrays compare their first elements.
pub(crate) fn same_shape(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Null, _) => {}
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e.iter().filter(|(k, _)| !k.starts_with('_')) {
                let (key, optional) = key.strip_suffix('?').map_or((key.as_str(), false), |k| (k, true));
                match a.get(key) {
                    Some(inner) => same_shape(value, inner, &format!("{path}.{key}")),
                    None if optional => {}
                    None => panic!("{path}.{key} is missing in {actual}"),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let (Some(e), Some(a)) = (e.first(), a.first()) {
                same_shape(e, a, &format!("{path}[0]"));
            }
        }
        (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => {}
        (Value::Number(e), Value::Number(a)) => {
            assert_eq!(e.is_f64(), a.is_f64(), "{path}: integer vs float");
        }
        _ => panic!("{path}: expected {expected}, got {actual}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_and_zipkin_spans_are_stored_and_served_in_jaegers_shape() {
    let collector = start_collector();
    let (otlp, query) = (collector.otlp.addr, collector.query.addr);
    // Trace 1: api SERVER → api CLIENT → catalog SERVER (error); plus one invalid span.
    let mut invalid = span(1, 9, None, "no trace id", 2, (0, 1), false);
    invalid.trace_id = vec![0; 16];
    let api = request(
        "api",
        vec![
            span(1, 1, None, "GET /v0/images", 2, (0, 30), false),
            span(1, 2, Some(1), "GET", 3, (2, 20), false),
            invalid,
        ],
    );
    let reply = post(otlp, "/v1/traces", &[("content-type", "application/x-protobuf")], api.encode_to_vec()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let answer = ExportTraceServiceResponse::decode(reply.body.as_ref()).expect("OTLP response");
    let partial = answer.partial_success.expect("partial success for the invalid span");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("trace_id"), "{}", partial.error_message);

    // The catalog's span as OTLP JSON, gzip-compressed.
    let catalog = request("catalog", vec![span(1, 3, Some(2), "SELECT images", 2, (5, 10), true)]);
    let json = serde_json::to_vec(&catalog).expect("JSON");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&json).expect("gzip");
    let reply = post(
        otlp,
        "/v1/traces",
        &[("content-type", "application/json"), ("content-encoding", "gzip")],
        gzip.finish().expect("gzip"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json(), serde_json::json!({}));

    // A store span through Zipkin v2.
    let zipkin = serde_json::json!([{
        "traceId": "01".repeat(16), "id": "04".repeat(8), "parentId": "03".repeat(8), "name": "put local",
        "kind": "CLIENT", "timestamp": 1_700_000_000_007_000i64, "duration": 2000,
        "localEndpoint": { "serviceName": "store" }, "tags": { "object_store.bytes": "168" }
    }]);
    let reply =
        post(otlp, "/api/v2/spans", &[("content-type", "application/json")], zipkin.to_string().into_bytes()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());

    // Refusals.
    for (headers, body, status) in [
        (vec![("content-type", "text/plain")], b"x".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (vec![("content-type", "application/x-protobuf")], b"\xff\xff\xff".to_vec(), StatusCode::BAD_REQUEST),
        (vec![("content-type", "application/json")], b"{not json".to_vec(), StatusCode::BAD_REQUEST),
        (
            vec![("content-type", "application/json"), ("content-encoding", "br")],
            b"{}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (vec![("content-type", "application/x-protobuf")], vec![0u8; (64 << 20) + 1], StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let reply = post(otlp, "/v1/traces", &headers, body).await;
        assert_eq!(reply.status, status, "{headers:?}: {}", reply.text());
    }

    // Query API.
    let v1: Value = serde_json::from_str(include_str!("data/jaeger-v1-answers.json")).expect("recorded shapes");
    let services = get(query, "/api/services", &[]).await.json();
    same_shape(&v1["services"], &services, "services");
    assert_eq!(services["data"], serde_json::json!(["api", "catalog", "store"]));
    let operations = get(query, "/api/services/api/operations", &[]).await.json();
    same_shape(&v1["service_operations"], &operations, "service_operations");
    assert_eq!(operations["data"], serde_json::json!(["GET", "GET /v0/images"]));
    let typed = get(query, "/api/operations?service=api&spanKind=server", &[]).await.json();
    same_shape(&v1["operations"], &typed, "operations");
    assert_eq!(typed["data"], serde_json::json!([{ "name": "GET /v0/images", "spanKind": "server" }]));

    let trace_id = "01".repeat(16);
    let trace = get(query, &format!("/api/traces/{trace_id}"), &[]).await;
    assert_eq!(trace.status, StatusCode::OK);
    let trace = trace.json();
    let expected: Value =
        serde_json::from_str(include_str!("data/jaeger-trace-response.json")).expect("recorded shape");
    same_shape(&expected, &trace, "$");
    let spans = trace["data"][0]["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 4);
    let by_name = |name: &str| spans.iter().find(|s| s["operationName"] == name).unwrap_or_else(|| panic!("{name}"));
    let select = by_name("SELECT images");
    assert_eq!(select["references"][0]["spanID"], "02".repeat(8));
    assert_eq!(select["duration"], 10_000);
    let tags = select["tags"].as_array().expect("tags");
    assert!(tags.contains(&serde_json::json!({"key": "error", "type": "bool", "value": true})), "{tags:?}");
    let process = &trace["data"][0]["processes"][select["processID"].as_str().expect("process id")];
    assert_eq!(process["serviceName"], "catalog");
    assert_eq!(get(query, &format!("/api/traces/{}", "0f".repeat(16)), &[]).await.status, StatusCode::NOT_FOUND);
    let bad = get(query, "/api/traces/not-hex", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    same_shape(&v1["error"], &bad.json(), "error");

    // Traces by id on the search endpoint (Jaeger UI's compare and trace-id lookup), as Jaeger's
    // query service answers it: exactly those traces whatever else the query says, and an error
    // entry for each id that is not stored.
    let missing = "0f".repeat(16);
    let by_id = get(query, &format!("/api/traces?service=store&traceID={trace_id}&traceID={missing}"), &[]).await;
    assert_eq!(by_id.status, StatusCode::OK);
    let by_id = by_id.json();
    same_shape(&v1["traces_by_id"], &by_id, "traces_by_id");
    let ids: Vec<&str> = by_id["data"].as_array().expect("data").iter().filter_map(|t| t["traceID"].as_str()).collect();
    assert_eq!(ids, vec![trace_id.as_str()]);
    assert_eq!(by_id["errors"], serde_json::json!([{ "msg": "trace not found", "traceID": missing }]));
    let one = get(query, &format!("/api/traces?traceID={}", trace_id.to_uppercase()), &[]).await.json();
    assert_eq!((one["data"][0]["traceID"].as_str(), &one["errors"]), (Some(trace_id.as_str()), &Value::Null));
    assert_eq!(get(query, "/api/traces?traceID=not-hex", &[]).await.status, StatusCode::BAD_REQUEST);

    // Search: by service, operation, tags, duration, time.
    let found = |path: String| async move {
        let reply = get(query, &path, &[]).await.json();
        reply["data"]
            .as_array()
            .map(|traces| traces.iter().map(|t| t["traceID"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(found("/api/traces?service=catalog".into()).await, vec![trace_id.clone()]);
    assert_eq!(found("/api/traces?service=api&operation=GET%20%2Fv0%2Fimages".into()).await, vec![trace_id.clone()]);
    assert_eq!(
        found("/api/traces?service=catalog&tags=%7B%22error%22%3A%22true%22%7D".into()).await,
        vec![trace_id.clone()]
    );
    assert_eq!(
        found("/api/traces?service=store&tags=%7B%22object_store.bytes%22%3A%22168%22%7D".into()).await,
        vec![trace_id.clone()]
    );
    assert!(found("/api/traces?service=api&minDuration=31ms".into()).await.is_empty());
    assert_eq!(found("/api/traces?service=api&minDuration=25ms&maxDuration=1s".into()).await, vec![trace_id.clone()]);
    assert!(found("/api/traces?service=api&start=1800000000000000".into()).await.is_empty());
    assert_eq!(get(query, "/api/traces?minDuration=soon", &[]).await.status, StatusCode::BAD_REQUEST);

    let dependencies = get(query, "/api/dependencies?endTs=1800000000000&lookback=200000000000", &[]).await.json();
    same_shape(&v1["dependencies"], &dependencies, "dependencies");
    assert_eq!(
        dependencies["data"],
        serde_json::json!([{ "parent": "api", "child": "catalog", "callCount": 1 }, { "parent": "catalog", "child": "store", "callCount": 1 }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_the_oldest_spans_beyond_the_limit() {
    let store = trace_collector::span_store::SpanStore::open(":memory:").await.expect("store");
    let spans: Vec<_> = (1..=5u8)
        .map(|i| {
            let decoded = trace_collector::ingest::otlp(
                &request("svc", vec![span(i, i, None, "op", 2, (u64::from(i), 1), false)]).encode_to_vec(),
                false,
            )
            .expect("decodes");
            decoded.spans.into_iter().next().expect("one span")
        })
        .collect();
    store.insert(&spans).await.expect("insert");
    assert_eq!(store.prune(0, 3).await.expect("prune"), 2);
    assert_eq!(store.count().await.expect("count"), 3);
    let left = store
        .find_traces(&trace_collector::span_store::TraceQuery { limit: 10, ..Default::default() })
        .await
        .expect("find");
    assert_eq!(left, vec!["05".repeat(16), "04".repeat(16), "03".repeat(16)], "the newest stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gallerys_spans_are_searchable_and_form_a_dependency_graph() {
    let collector = start_collector();
    let options = GalleryOptions { collector: Some(collector.otlp.addr), ..GalleryOptions::on(Database::Sqlite) };
    let Some(gallery) = Gallery::start(options).await else { return };
    let reply = upload_png(gallery.api()).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let trace_id = trace_id_of(&reply);
    gallery.flush();
    let query = collector.query.addr;
    let trace = serde_json::json!({ "data": [wait_for_trace(query, &trace_id, 8).await] });
    let services: Vec<_> = trace["data"][0]["processes"]
        .as_object()
        .expect("processes")
        .values()
        .map(|p| p["serviceName"].clone())
        .collect();
    for service in ["gallery-api", "image-catalog", "image-store"] {
        assert!(services.contains(&Value::from(service)), "{service} in {services:?}");
    }
    let found = get(query, "/api/traces?service=image-catalog&operation=INSERT%20images", &[]).await.json();
    assert_eq!(found["data"][0]["traceID"], trace_id.as_str());
    let graph = get(query, "/api/dependencies", &[]).await.json();
    let edges: Vec<(String, String)> = graph["data"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| (e["parent"].as_str().unwrap_or("").to_owned(), e["child"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert!(edges.contains(&("gallery-api".into(), "image-catalog".into())), "{edges:?}");
    assert!(edges.contains(&("image-catalog".into(), "image-store".into())), "{edges:?}");
}
