//! Jaeger's v3 query API, as Jaeger UI 2.15+ and Grafana read it: each answer compared with the
//! shape of its Jaeger message (`data/jaeger-v3-*.json`, written from Jaeger's `api_v3` protos
//! and OTLP's JSON encoding, not from our output), plus the values a user would check: which
//! traces, which counts, which kinds; and bad parameters answered 400 in Jaeger's error shape.
//! Also the UI's upload (`POST /api/transform`): OTLP/JSON in, the v1 trace out.

use http::StatusCode;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};

use crate::fixture::client::get;
use crate::fixture::traces::start_collector;
use crate::trace_collector::{post, request, same_shape, span};

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("a JSON fixture")
}

fn typed(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
}

fn is_hex(text: &Value, digits: usize) -> bool {
    text.as_str().is_some_and(|t| t.len() == digits && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_decimal(text: &Value) -> bool {
    text.as_str().is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
}

/// The fixed window the test spans fall in (they start at 1,700,000,000 s).
const WINDOW: &str = "query.startTimeMin=2023-11-14T22%3A00%3A00Z&query.startTimeMax=2023-11-14T23%3A00%3A00.000Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v3_api_answers_in_jaegers_shapes() {
    let collector = start_collector();
    let (otlp, query) = (collector.otlp.addr, collector.query.addr);
    // Trace 1: api SERVER → api CLIENT → catalog SERVER (error), an api span of unspecified kind,
    // and a catalog span whose parent was never stored (an orphan).
    let mut root = span(1, 1, None, "GET /v0/images", 2, (0, 30), false);
    root.attributes.extend([
        typed("http.response.status_code", any_value::Value::IntValue(200)),
        typed("wasmtrace.sampled", any_value::Value::BoolValue(true)),
        typed("ratio", any_value::Value::DoubleValue(0.5)),
    ]);
    let api = request(
        "api",
        vec![root, span(1, 2, Some(1), "GET", 3, (2, 20), false), span(1, 5, Some(1), "render", 0, (25, 2), false)],
    );
    let catalog = request(
        "catalog",
        vec![span(1, 3, Some(2), "SELECT images", 2, (5, 10), true), span(1, 6, Some(0x77), "late", 1, (40, 1), false)],
    );
    // Trace 2, later and shorter: one store span.
    let store = request("store", vec![span(2, 7, None, "put", 2, (1000, 1), false)]);
    for batch in [api, catalog, store] {
        let reply =
            post(otlp, "/v1/traces", &[("content-type", "application/x-protobuf")], batch.encode_to_vec()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let (trace_1, trace_2) = ("01".repeat(16), "02".repeat(16));

    // Services and operations.
    let services = get(query, "/api/v3/services", &[]).await.json();
    same_shape(&fixture(include_str!("data/jaeger-v3-services.json")), &services, "$");
    assert_eq!(services, json!({ "services": ["api", "catalog", "store"] }));
    let operations = get(query, "/api/v3/operations?service=api", &[]).await.json();
    same_shape(&fixture(include_str!("data/jaeger-v3-operations.json")), &operations, "$");
    assert_eq!(
        operations["operations"],
        json!([
            { "name": "GET", "spanKind": "client" },
            { "name": "GET /v0/images", "spanKind": "server" },
            { "name": "render", "spanKind": "internal" },
        ]),
        "an unspecified kind is listed as internal"
    );
    let servers = get(query, "/api/v3/operations?service=api&spanKind=server", &[]).await.json();
    assert_eq!(servers["operations"], json!([{ "name": "GET /v0/images", "spanKind": "server" }]));
    assert_eq!(get(query, "/api/v3/operations?service=nobody", &[]).await.json(), json!({ "operations": [] }));

    // One trace, as OTLP/JSON.
    let reply = get(query, &format!("/api/v3/traces/{trace_1}"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let trace = reply.json();
    same_shape(&fixture(include_str!("data/jaeger-v3-traces.json")), &trace, "$");
    let resource_spans = trace["result"]["resourceSpans"].as_array().expect("resourceSpans");
    let spans: Vec<&Value> = resource_spans
        .iter()
        .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
        .flat_map(|s| s["spans"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(spans.len(), 5);
    for span in &spans {
        assert!(is_hex(&span["traceId"], 32) && is_hex(&span["spanId"], 16), "{span}");
        assert!(is_decimal(&span["startTimeUnixNano"]) && is_decimal(&span["endTimeUnixNano"]), "{span}");
    }
    let named = |name: &str| *spans.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{name}"));
    let root = named("GET /v0/images");
    assert_eq!((&root["kind"], &root["startTimeUnixNano"]), (&json!(2), &json!("1700000000000000000")));
    let attribute = |key: &str| {
        root["attributes"].as_array().and_then(|a| a.iter().find(|kv| kv["key"] == key)).map(|kv| kv["value"].clone())
    };
    assert_eq!(attribute("http.response.status_code"), Some(json!({ "intValue": "200" })));
    assert_eq!(attribute("wasmtrace.sampled"), Some(json!({ "boolValue": true })));
    assert_eq!(attribute("ratio"), Some(json!({ "doubleValue": 0.5 })));
    let select = named("SELECT images");
    assert_eq!((&select["parentSpanId"], &select["status"]["code"]), (&json!("02".repeat(8)), &json!(2)));
    assert!(named("render").get("kind").is_none(), "an unspecified kind is left out, as protobuf's JSON does");

    // Jaeger UI's upload: the same trace as OTLP/JSON, posted to `/api/transform`, comes back as
    // the v1 trace the UI shows, span for span, without being stored.
    let upload = serde_json::to_vec(&trace["result"]).expect("JSON");
    let reply = post(query, "/api/transform", &[("content-type", "application/json")], upload).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let shown = reply.json();
    same_shape(&fixture(include_str!("data/jaeger-trace-response.json")), &shown, "$");
    assert_eq!(shown["data"][0]["traceID"], trace_1.as_str());
    assert_eq!(shown["data"][0]["spans"].as_array().map(Vec::len), Some(5));
    let refused = post(query, "/api/transform", &[("content-type", "application/json")], b"{not json".to_vec()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    same_shape(&fixture(include_str!("data/jaeger-v1-answers.json"))["error"], &refused.json(), "$");
    assert!(!refused.text().contains("not json"), "the upload is not repeated: {}", refused.text());
    // A form a web page of another origin could post without asking is refused.
    let plain = post(query, "/api/transform", &[("content-type", "text/plain")], b"{}".to_vec()).await;
    assert_eq!(plain.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A search: every span of the matching traces; nothing found is 404.
    let found = get(query, &format!("/api/v3/traces?query.serviceName=catalog&{WINDOW}"), &[]).await.json();
    same_shape(&fixture(include_str!("data/jaeger-v3-traces.json")), &found, "$");
    let found_ids: std::collections::BTreeSet<&str> = found["result"]["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["scopeSpans"][0]["spans"].as_array().into_iter().flatten())
        .filter_map(|s| s["traceId"].as_str())
        .collect();
    assert_eq!(found_ids.into_iter().collect::<Vec<_>>(), vec![trace_1.as_str()]);
    let none = get(query, &format!("/api/v3/traces?query.serviceName=nobody&{WINDOW}"), &[]).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(none.json(), json!({ "error": { "httpCode": 404, "message": "No traces found" } }));
    assert_eq!(get(query, &format!("/api/v3/traces/{}", "0f".repeat(16)), &[]).await.status, StatusCode::NOT_FOUND);

    // Summaries, as Jaeger UI's search lists them: most recent first, counted in the database.
    let summaries = get(query, &format!("/api/v3/trace-summaries?{WINDOW}&query.searchDepth=20"), &[]).await.json();
    same_shape(&fixture(include_str!("data/jaeger-v3-trace-summaries.json")), &summaries, "$");
    let list = summaries["summaries"].as_array().expect("summaries");
    let ids: Vec<&str> = list.iter().filter_map(|s| s["traceId"].as_str()).collect();
    assert_eq!(ids, vec![trace_2.as_str(), trace_1.as_str()]);
    let first = &list[1];
    assert_eq!(
        (&first["rootServiceName"], &first["rootOperationName"], &first["spanCount"], &first["errorSpanCount"]),
        (&json!("api"), &json!("GET /v0/images"), &json!(5), &json!(1))
    );
    assert_eq!(first["orphanSpanCount"], 1);
    assert_eq!(
        (&first["minStartTimeUnixNano"], &first["maxEndTimeUnixNano"]),
        (&json!("1700000000000000000"), &json!("1700000000041000000"))
    );
    assert_eq!(
        first["services"],
        json!([{ "name": "api", "spanCount": 3 }, { "name": "catalog", "spanCount": 2, "errorSpanCount": 1 }]),
        "by name; zero counts left out"
    );
    // Grafana's snake_case spellings, attributes as JSON, and a search that finds nothing (200, empty).
    let errors = get(
        query,
        "/api/v3/trace-summaries?query.start_time_min=2023-11-14T22:00:00Z&query.start_time_max=2023-11-14T23:00:00Z\
         &query.attributes=%7B%22error%22%3A%22true%22%7D",
        &[],
    )
    .await
    .json();
    assert_eq!(
        errors["summaries"].as_array().map(|l| l.iter().map(|s| s["traceId"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(trace_1)])
    );
    let empty = get(query, &format!("/api/v3/trace-summaries?{WINDOW}&query.serviceName=nobody"), &[]).await;
    assert_eq!((empty.status, empty.json()), (StatusCode::OK, json!({ "summaries": [] })));

    // Bad parameters: 400, Jaeger's error shape, the parameter named and its value not repeated.
    let error_shape = fixture(include_str!("data/jaeger-v3-error.json"));
    for (path, says) in [
        (
            "/api/v3/trace-summaries?query.serviceName=api".to_owned(),
            "query.startTimeMin and query.startTimeMax are required",
        ),
        (
            format!("/api/v3/trace-summaries?{WINDOW}&query.durationMin=%3Cb%3Esoon"),
            "malformed parameter query.durationMin",
        ),
        (format!("/api/v3/traces?{WINDOW}&query.attributes=%3Cb%3E"), "malformed parameter query.attributes"),
        (format!("/api/v3/traces?{WINDOW}&query.search_depth=%3Cb%3E"), "malformed parameter query.search_depth"),
        (
            "/api/v3/traces?query.startTimeMin=yesterday&query.startTimeMax=2023-11-14T23:00:00Z".to_owned(),
            "malformed parameter query.startTimeMin",
        ),
        ("/api/v3/traces/%3Cb%3E".to_owned(), "malformed parameter trace_id"),
        (
            format!("/api/v3/traces?{WINDOW}&query.attributes=%7B%22a%5C%22%3Cb%3E%22%3A%221%22%7D"),
            "malformed parameter query.attributes",
        ),
        (
            format!("/api/v3/traces?{WINDOW}&query.attributes=%7B%22a%5Cu0000%3Cb%3E%22%3A%221%22%7D"),
            "malformed parameter query.attributes",
        ),
    ] {
        let reply = get(query, &path, &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        let body = reply.json();
        same_shape(&error_shape, &body, "$");
        assert_eq!(body["error"]["httpCode"], 400);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(says), "{path}: {message}");
        assert!(!message.contains("<b>"), "{path}: the value is not repeated: {message}");
    }
}
