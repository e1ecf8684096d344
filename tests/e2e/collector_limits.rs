//! The local trace collector against hostile senders and callers, over real HTTP: a huge search
//! `limit` or an answer too large to build is refused in Jaeger's error shape; a resource sent
//! with thousands of spans is stored once (the database grows by about twice the request, not
//! by the resource times the spans); ingests beyond the in-flight cap are told to come back
//! (503 + `Retry-After`); and requests over the span, decoded-size or body limits are refused
//! with a message — the span count before the request is decoded.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trace_collector::limits::Limits;
use trace_collector::{CollectorConfig, RunningCollector};

use crate::fixture::client::{Reply, client, get, send_bytes};
use crate::fixture::proxy::workspace_root;
use crate::fixture::traces::start_collector;

const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..KeyValue::default()
    }
}

/// Ids that look random (a B-tree sees them in no particular order), distinct for every `n`.
fn mixed(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31) | 1
}

/// `count` spans in traces of 100, numbered from `first`: ids, a name, a kind and times only.
fn spans(first: u64, count: u64) -> Vec<Span> {
    (first..first + count)
        .map(|n| Span {
            trace_id: [mixed(n / 100).to_be_bytes(), mixed(n / 100 + 1).to_be_bytes()].concat(),
            span_id: mixed(n).to_be_bytes().to_vec(),
            name: format!("op-{}", n % 10),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000 + n * 1_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_000 + n * 1_000_000 + 250_000,
            ..Span::default()
        })
        .collect()
}

fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: resource, ..Resource::default() }),
            scope_spans: vec![ScopeSpans { spans, ..ScopeSpans::default() }],
            ..ResourceSpans::default()
        }],
    }
}

/// `bytes` as field `number` of a message (length-delimited).
fn framed(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    send_bytes(&client(false), addr, "POST", path, headers, Bytes::from(body)).await
}

/// A fresh directory under `target/`.
fn scratch() -> PathBuf {
    let dir = workspace_root().join("target/e2e-collector").join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn collector(database: &str, limits: Limits) -> RunningCollector {
    let config = CollectorConfig {
        otlp_listen: "127.0.0.1:0".parse().expect("address"),
        query_listen: "127.0.0.1:0".parse().expect("address"),
        database: database.to_owned(),
        retention_hours: 24,
        max_spans: 1_000_000,
    };
    trace_collector::start_with_limits(config, limits).expect("collector starts")
}

/// The database's size on disk: its file and its write-ahead log, after folding the log into
/// the file (as SQLite does when the last connection closes).
async fn database_bytes(path: &Path) -> u64 {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let pool = sqlx::SqlitePool::connect_with(options).await.expect("open the span database");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&pool).await.expect("checkpoint");
    pool.close().await;
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    size(path) + size(&PathBuf::from(format!("{}-wal", path.display())))
}

fn jaeger_error(reply: &Reply) -> String {
    let body = reply.json();
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(body["errors"][0]["code"], reply.status.as_u16(), "{body}");
    body["errors"][0]["msg"].as_str().expect("an error message").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_search_limit_is_refused_with_a_jaeger_error_not_a_huge_answer() {
    let collector = start_collector();
    let (otlp, query) = (collector.otlp.addr, collector.query.addr);
    let body = request(vec![string("service.name", "api")], spans(0, 500)).encode_to_vec();
    assert_eq!(post(otlp, "/v1/traces", &[PROTOBUF], body).await.status, StatusCode::OK);

    let huge = get(query, "/api/traces?service=api&limit=100000", &[]).await;
    assert_eq!(huge.status, StatusCode::BAD_REQUEST);
    let message = jaeger_error(&huge);
    assert!(message.contains("`limit`") && message.contains("1000") && message.contains("100000"), "{message}");
    for path in ["/api/traces?limit=0", "/api/traces?limit=-5", "/api/traces?limit=lots"] {
        let refused = get(query, path, &[]).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{path}");
        jaeger_error(&refused);
    }
    let tags: serde_json::Map<String, serde_json::Value> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    let tags = serde_json::Value::Object(tags).to_string();
    let many_tags = get(
        query,
        &format!("/api/traces?tags={}", url::form_urlencoded::byte_serialize(tags.as_bytes()).collect::<String>()),
        &[],
    )
    .await;
    assert_eq!(many_tags.status, StatusCode::BAD_REQUEST);
    assert!(jaeger_error(&many_tags).contains("32 tags"));

    // At the cap, the search answers as before.
    let found = get(query, "/api/traces?service=api&limit=1000", &[]).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text());
    assert_eq!(found.json()["data"].as_array().map(Vec::len), Some(5), "500 spans in traces of 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_size_bound_is_refused_with_what_to_ask_instead() {
    let limits = Limits { max_answer_bytes: 256 << 10, ..Limits::default() };
    let collector = collector(":memory:", limits);
    let (otlp, query) = (collector.otlp.addr, collector.query.addr);
    // One trace of 100 spans, each with a 4 KiB attribute: about 800 KiB of Jaeger JSON.
    let mut big = spans(0, 100);
    for span in &mut big {
        span.attributes.push(string("payload", &"x".repeat(4096)));
    }
    let body = request(vec![string("service.name", "big")], big).encode_to_vec();
    assert_eq!(post(otlp, "/v1/traces", &[PROTOBUF], body).await.status, StatusCode::OK);
    let small = request(vec![string("service.name", "small")], spans(1_000, 10)).encode_to_vec();
    assert_eq!(post(otlp, "/v1/traces", &[PROTOBUF], small).await.status, StatusCode::OK);

    let search = get(query, "/api/traces?service=big", &[]).await;
    assert_eq!(search.status, StatusCode::BAD_REQUEST);
    let message = jaeger_error(&search);
    assert!(message.contains("262144 bytes") && message.contains("`limit`"), "{message}");
    let trace_id = {
        let store = get(query, "/api/traces?service=small", &[]).await;
        assert_eq!(store.status, StatusCode::OK, "{}", store.text());
        assert_eq!(store.json()["data"][0]["spans"].as_array().map(Vec::len), Some(10));
        // The big trace's id: the same mixing as `spans(0, ..)`.
        let mut id = mixed(0).to_be_bytes().to_vec();
        id.extend_from_slice(&mixed(1).to_be_bytes());
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let trace = get(query, &format!("/api/traces/{trace_id}"), &[]).await;
    assert_eq!(trace.status, StatusCode::BAD_REQUEST);
    assert!(jaeger_error(&trace).contains("too large"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_resource_on_many_spans_is_stored_once() {
    let dir = scratch();
    let database = dir.join("traces.db");
    let collector = collector(&database.display().to_string(), Limits::default());
    let (otlp, query) = (collector.otlp.addr, collector.query.addr);
    // The reproduction: a 64 KiB resource and 2,000 spans (ids, a name, times), about 170 KiB.
    let resource = vec![string("service.name", "big-resource"), string("host.labels", &"l".repeat(64 << 10))];
    let first = request(resource.clone(), spans(0, 2_000)).encode_to_vec();
    assert!((150 << 10..200 << 10).contains(&first.len()), "{} bytes", first.len());
    let before = database_bytes(&database).await;
    let reply = post(otlp, "/v1/traces", &[PROTOBUF], first.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let after_first = database_bytes(&database).await;
    let growth = after_first - before;
    // Pages are allocated 4 KiB at a time and index pages split: allow 64 KiB on top.
    let bound = 2 * first.len() as u64 + (64 << 10);
    assert!(growth <= bound, "the database grew by {growth} bytes for a request of {} (bound {bound})", first.len());

    // More spans with the same resource, in another request: the resource is not stored again.
    let second = request(resource, spans(2_000, 2_000)).encode_to_vec();
    assert_eq!(post(otlp, "/v1/traces", &[PROTOBUF], second.clone()).await.status, StatusCode::OK);
    let growth_second = database_bytes(&database).await - after_first;
    assert!(growth_second <= 2 * second.len() as u64 + (64 << 10), "{growth_second} bytes for {}", second.len());
    assert!(growth_second + (32 << 10) < growth, "without the resource: {growth_second} vs {growth} bytes");
    println!(
        "request {} bytes: database +{growth} bytes ({:.2}x); same resource again: +{growth_second} bytes",
        first.len(),
        growth as f64 / first.len() as f64
    );

    // Jaeger's answers are as before: every span, the resource as the process's tags.
    let found = get(query, "/api/traces?service=big-resource&limit=40", &[]).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text());
    let traces = found.json()["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(traces.len(), 40);
    assert!(traces.iter().all(|t| t["spans"].as_array().map(Vec::len) == Some(100)));
    let process = &traces[0]["processes"]["p1"];
    assert_eq!(process["serviceName"], "big-resource");
    let tags = process["tags"].as_array().expect("process tags");
    assert!(tags.iter().any(|t| t["key"] == "host.labels" && t["value"].as_str().map(str::len) == Some(64 << 10)));
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The status line of the response on a raw connection.
/// An ingest whose head and `part` of its `length`-byte body have been sent.
async fn hold_open(otlp: SocketAddr, part: &[u8], length: usize) -> tokio::net::TcpStream {
    let mut held = tokio::net::TcpStream::connect(otlp).await.expect("connect");
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: collector\r\ncontent-type: application/x-protobuf\r\ncontent-length: {length}\r\n\r\n"
    );
    held.write_all(head.as_bytes()).await.expect("send the head");
    held.write_all(part).await.expect("send part of the body");
    held
}

/// Whether the collector has already answered (or closed) `connection`.
async fn answered_already(connection: &mut tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(50), connection.peek(&mut byte)).await.is_ok()
}

async fn status_line(connection: &mut tokio::net::TcpStream) -> String {
    let mut read = Vec::new();
    let mut buffer = [0u8; 1024];
    while !read.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), connection.read(&mut buffer))
            .await
            .expect("the collector answers")
            .expect("read");
        assert!(n > 0, "the collector closed the connection: {}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&read).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_beyond_the_in_flight_cap_are_told_to_retry_later() {
    let limits = Limits { max_concurrent_ingests: 1, ingest_body_timeout_secs: 600, ..Limits::default() };
    let collector = collector(":memory:", limits);
    let (otlp, query) = (collector.otlp.addr, collector.query.addr);
    let held_body = request(vec![string("service.name", "held")], spans(0, 50)).encode_to_vec();
    let other = request(vec![string("service.name", "other")], spans(1_000, 5)).encode_to_vec();

    // One ingest held open: its headers and half its body sent, the rest still to come. A probe
    // sent before the collector has admitted the held request may take the only slot itself, and
    // the held request is then refused: when that happens, the held request is sent again.
    let half = held_body.len() / 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut held, busy) = 'attempt: loop {
        assert!(Instant::now() < deadline, "the held request never took the only ingest slot");
        let mut held = hold_open(otlp, &held_body[..half], held_body.len()).await;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let reply = post(otlp, "/v1/traces", &[PROTOBUF], other.clone()).await;
            if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                break 'attempt (held, reply);
            }
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            if answered_already(&mut held).await {
                continue 'attempt; // the probe won the race for the slot
            }
        }
    };
    let retry_after: u64 = busy.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    assert!(busy.text().contains("at once"), "{}", busy.text());
    let zipkin = post(otlp, "/api/v2/spans", &[("content-type", "application/json")], b"[]".to_vec()).await;
    assert_eq!(zipkin.status, StatusCode::SERVICE_UNAVAILABLE, "Zipkin shares the cap");
    assert!(zipkin.header("retry-after").is_some());

    // The held request completes and is stored; the slot is free again.
    held.write_all(&held_body[half..]).await.expect("send the rest");
    assert!(status_line(&mut held).await.starts_with("HTTP/1.1 200"));
    assert_eq!(post(otlp, "/v1/traces", &[PROTOBUF], other).await.status, StatusCode::OK);
    let services = get(query, "/api/services", &[]).await.json();
    assert!(services["data"].as_array().is_some_and(|s| s.contains(&"held".into())), "{services}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_span_decoded_size_and_body_limits_are_refused_with_a_message() {
    let collector = start_collector();
    let (otlp, query) = (collector.otlp.addr, collector.query.addr);
    let max = trace_collector::limits::DEFAULT_MAX_SPANS_PER_REQUEST as u64;

    // Protobuf over the span cap, with bytes after the spans that would fail decoding (400):
    // the 413 shows the request was refused before it was decoded.
    let mut over = request(vec![string("service.name", "flood")], spans(0, max + 10_000)).encode_to_vec();
    over.extend_from_slice(&[0xff; 32]);
    let refused = post(otlp, "/v1/traces", &[PROTOBUF], over).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", refused.text());
    assert!(refused.text().contains(&format!("at most {max} spans")), "{}", refused.text());

    // OTLP/JSON: three bytes a span (`{}`), each a whole span once decoded.
    let empty = vec!["{}"; max as usize + 1].join(",");
    let json = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{empty}]}}]}}]}}"#).into_bytes();
    let refused = post(otlp, "/v1/traces", &[("content-type", "application/json")], json).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", refused.text());
    assert!(refused.text().contains("spans"), "{}", refused.text());

    // Zipkin: the same cap.
    let zipkin_span = format!(r#"{{"traceId":"{}","id":"{}","name":"op"}}"#, "ab".repeat(16), "cd".repeat(8));
    let zipkin = format!("[{}]", vec![zipkin_span; max as usize + 1].join(","));
    let refused = post(otlp, "/api/v2/spans", &[("content-type", "application/json")], zipkin.into_bytes()).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", refused.text());

    // One span with four million empty attributes: 8 MB sent, half a gigabyte once decoded.
    // (Framed by hand: building them as structs would cost the test that half gigabyte.)
    let mut span = spans(0, 1)[0].encode_to_vec();
    for _ in 0..4_000_000 {
        span.extend_from_slice(&[0x4a, 0x00]); // field 9 (attributes), length 0
    }
    let heavy = framed(1, &framed(2, &framed(2, &span)));
    let refused = post(otlp, "/v1/traces", &[PROTOBUF], heavy).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", refused.text());
    assert!(refused.text().contains("once decoded"), "{}", refused.text());

    // A gzip bomb: 64 MiB of zeros in 64 KiB, stopped at the body limit once decompressed.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gzip.write_all(&zeros).expect("gzip");
    }
    let bomb = gzip.finish().expect("gzip");
    let refused = post(otlp, "/v1/traces", &[PROTOBUF, ("content-encoding", "gzip")], bomb).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", refused.text());
    assert!(refused.text().contains("compressed or not"), "{}", refused.text());

    // Nothing of it was stored, and the collector still takes ordinary requests.
    let ok = request(vec![string("service.name", "fine")], spans(0, 10)).encode_to_vec();
    assert_eq!(post(otlp, "/v1/traces", &[PROTOBUF], ok).await.status, StatusCode::OK);
    assert_eq!(get(query, "/api/services", &[]).await.json()["data"], serde_json::json!(["fine"]));
}
