//! Ingestion benchmark (not a pass/fail test): OTLP batches of gallery-like spans posted by
//! concurrent exporters to the collector with an on-disk database; prints spans/s for protobuf
//! and JSON side by side in one run.
//!
//! `cargo bench -p trace-collector --bench ingest [-- SECONDS]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use trace_collector::CollectorConfig;

const BATCH: usize = 256;
const EXPORTERS: usize = 4;

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..KeyValue::default()
    }
}

/// A batch of spans shaped like the gallery's (8 attributes each), with fresh ids from `seed`.
fn batch(seed: u64) -> ExportTraceServiceRequest {
    let spans = (0..BATCH as u64)
        .map(|i| {
            let n = seed * BATCH as u64 + i + 1;
            let mut trace_id = vec![0u8; 8];
            trace_id.extend_from_slice(&(n / 8 + 1).to_be_bytes());
            Span {
                trace_id,
                span_id: n.to_be_bytes().to_vec(),
                name: "SELECT images".into(),
                kind: 3,
                start_time_unix_nano: 1_700_000_000_000_000_000 + n * 1000,
                end_time_unix_nano: 1_700_000_000_000_000_000 + n * 1000 + 250_000,
                attributes: vec![
                    attribute("db.system.name", "sqlite"),
                    attribute("db.namespace", "catalog.db"),
                    attribute("db.operation.name", "SELECT"),
                    attribute("db.collection.name", "images"),
                    attribute("db.query.text", "SELECT id, content_type FROM images WHERE id = $1"),
                    attribute("server.address", "127.0.0.1"),
                    attribute("http.request.method", "GET"),
                    attribute("url.path", "/v0/images/0190a5b6-0000-7000-8000-000000000000"),
                ],
                ..Span::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "image-catalog")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..ScopeSpans::default() }],
            ..ResourceSpans::default()
        }],
    }
}

fn run(addr: SocketAddr, json: bool, seconds: u64, seed_base: u64) -> (usize, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..EXPORTERS as u64)
            .map(|exporter| {
                tokio::spawn(async move {
                    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                    let mut sent = 0usize;
                    let mut seed = seed_base + exporter * 1_000_000;
                    while Instant::now() < until {
                        let request = batch(seed);
                        seed += 1;
                        let (body, content_type) = if json {
                            (serde_json::to_vec(&request).unwrap_or_default(), "application/json")
                        } else {
                            (request.encode_to_vec(), "application/x-protobuf")
                        };
                        let post = http::Request::post(format!("http://{addr}/v1/traces"))
                            .header("content-type", content_type)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_else(|e| panic!("{e}"));
                        let response = client.request(post).await.unwrap_or_else(|e| panic!("export: {e}"));
                        assert!(response.status().is_success(), "collector answered {}", response.status());
                        let _ = response.into_body().collect().await;
                        sent += BATCH;
                    }
                    sent
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap_or(0);
        }
        (total, started.elapsed())
    })
}

fn main() {
    let seconds: u64 = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("trace-collector-bench-{}", std::process::id()));
    let collector = trace_collector::start(CollectorConfig {
        otlp_listen: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        query_listen: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        database: dir.join("traces.db").display().to_string(),
        retention_hours: 24,
        max_spans: i64::MAX,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let rows = [("OTLP protobuf", false, 0), ("OTLP JSON", true, 1 << 40)];
    println!();
    println!("{EXPORTERS} concurrent exporters, batches of {BATCH} spans, {seconds} s per row, SQLite on disk (WAL)");
    println!();
    println!("| {:<14} | {:>10} | {:>10} |", "format", "spans", "spans/s");
    println!("|{:-<16}|{:->12}|{:->12}|", "", "", "");
    for (name, json, seed) in rows {
        let (spans, elapsed) = run(collector.otlp.addr, json, seconds, seed);
        println!("| {name:<14} | {spans:>10} | {:>10.0} |", spans as f64 / elapsed.as_secs_f64());
    }
    drop(collector);
    let _ = std::fs::remove_dir_all(dir);
}
