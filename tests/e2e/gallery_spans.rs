//! The gallery services' own spans at a real OTLP receiver: without sidecars each service makes
//! SERVER and CLIENT spans, its database and storage calls nest under the request's span with
//! the semantic conventions' attributes (no query values), and calls carry the context on.
//! Behind wasmtrace sidecars the services leave the HTTP spans to them, and the sidecar's
//! SERVER span is the parent of the service's database spans.

use std::collections::HashMap;

use bytes::Bytes;
use http::StatusCode;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;

use crate::fixture::client::{client, send_bytes};
use crate::fixture::collector::{Collector, Received, attribute, string};
use crate::fixture::gallery::{Database, Gallery, GalleryOptions, png};
use crate::fixture::proxy::{cluster, filter_module, listener_yaml, sidecar, wasm_filter_yaml};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span of `service` called `name`.
fn one<'a>(spans: &'a [Received], service: &str, name: &str) -> &'a Received {
    let found: Vec<_> = spans.iter().filter(|s| s.service == service && s.span.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "{service} `{name}` in {:?}",
        spans.iter().map(|s| (&s.service, &s.span.name)).collect::<Vec<_>>()
    );
    found[0]
}

/// The spans of trace `trace_id`, once there are `count` of them (or ten seconds passed).
async fn in_trace(collector: &Collector, trace_id: &str, count: usize) -> Vec<Received> {
    let of_trace = |spans: &[Received]| -> Vec<Received> {
        spans.iter().filter(|s| hex(&s.span.trace_id) == trace_id).cloned().collect()
    };
    of_trace(&collector.wait_until(|spans| of_trace(spans).len() >= count).await)
}

/// The SERVER span of `service`.
fn server<'a>(spans: &'a [Received], service: &str) -> &'a Received {
    let found: Vec<_> = spans.iter().filter(|s| s.service == service && kind(s) == SpanKind::Server).collect();
    assert_eq!(found.len(), 1, "one SERVER span of {service}");
    found[0]
}

fn parent_of(child: &Received, parent: &Received) {
    assert_eq!(
        hex(&child.span.parent_span_id),
        hex(&parent.span.span_id),
        "{} `{}` is a child of {} `{}`",
        child.service,
        child.span.name,
        parent.service,
        parent.span.name
    );
    assert_eq!(child.span.trace_id, parent.span.trace_id);
}

fn kind(span: &Received) -> SpanKind {
    SpanKind::try_from(span.span.kind).unwrap_or(SpanKind::Unspecified)
}

async fn upload(api: std::net::SocketAddr, traceparent: &str) -> (StatusCode, String) {
    let reply = send_bytes(
        &client(false),
        api,
        "POST",
        "/v0/images",
        &[("content-type", "image/png"), ("traceparent", traceparent)],
        Bytes::from(png()),
    )
    .await;
    let id = if reply.status == StatusCode::CREATED {
        reply.json()["id"].as_str().unwrap_or("").to_owned()
    } else {
        String::new()
    };
    (reply.status, id)
}

fn assert_database_span(span: &Received, operation: &str, id: &str) {
    assert_eq!(kind(span), SpanKind::Client);
    assert_eq!(string(&span.span, "db.system.name"), "sqlite");
    assert_eq!(string(&span.span, "db.namespace"), "catalog.db");
    assert_eq!(string(&span.span, "db.collection.name"), "images");
    assert_eq!(string(&span.span, "db.operation.name"), operation);
    let query = string(&span.span, "db.query.text");
    assert!(query.starts_with(operation) && query.contains("$1"), "{query}");
    for attribute in &span.span.attributes {
        if let Some(AnyValue::StringValue(value)) = attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
            assert!(
                !value.contains(id) && !value.contains("image/png"),
                "a query value leaked into {}: {value}",
                attribute.key
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_spans_nest_under_the_request_and_carry_the_semantic_conventions() {
    let collector = Collector::start();
    let options = GalleryOptions { collector: Some(collector.addr), ..GalleryOptions::on(Database::Sqlite) };
    let Some(mut gallery) = Gallery::start(options).await else { return };
    let (status, id) = upload(gallery.api(), &format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")).await;
    assert_eq!(status, StatusCode::CREATED);
    gallery.flush();
    let spans = in_trace(&collector, CLIENT_TRACE, 8).await;

    let api_server = server(&spans, "gallery-api");
    assert_eq!(hex(&api_server.span.parent_span_id), CLIENT_SPAN, "continues the caller's trace");
    assert_eq!(string(&api_server.span, "http.route"), "/v0/images");
    let api_client = spans
        .iter()
        .find(|s| s.service == "gallery-api" && kind(s) == SpanKind::Client)
        .expect("gallery-api's call to the catalog");
    parent_of(api_client, api_server);
    assert_eq!(string(&api_client.span, "peer.service"), "image-catalog");

    let catalog_server = server(&spans, "image-catalog");
    parent_of(catalog_server, api_client);
    let insert = one(&spans, "image-catalog", "INSERT images");
    let update = one(&spans, "image-catalog", "UPDATE images");
    for db in [insert, update] {
        parent_of(db, catalog_server);
    }
    assert_database_span(insert, "INSERT", &id);
    assert_database_span(update, "UPDATE", &id);
    let store_call = one(&spans, "image-catalog", "PUT /v0/objects/{id}");
    parent_of(store_call, catalog_server);

    let store_server = server(&spans, "image-store");
    parent_of(store_server, store_call);
    let put = spans
        .iter()
        .find(|s| s.service == "image-store" && string(&s.span, "object_store.operation") == "put")
        .expect("storage span");
    parent_of(put, store_server);
    assert_eq!(kind(put), SpanKind::Client);
    assert_eq!(string(&put.span, "object_store.system"), "local");
    assert!(string(&put.span, "object_store.path").ends_with(&id));
    assert!(
        matches!(attribute(&put.span, "object_store.bytes"), Some(AnyValue::IntValue(n)) if *n == png().len() as i64)
    );

    // With the store down, the failure shows on the spans that saw it.
    gallery.stop_store();
    let failing = format!("00-{}-{CLIENT_SPAN}-01", "5".repeat(32));
    let (status, _) = upload(gallery.api(), &failing).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    gallery.flush();
    let failed = in_trace(&collector, &"5".repeat(32), 6).await;
    let call = one(&failed, "image-catalog", "PUT /v0/objects/{id}");
    assert_eq!(string(&call.span, "error.type"), "connection_failed");
    assert_eq!(call.span.status.as_ref().map(|s| s.code), Some(SpanStatus::Error as i32));
    let api_server = server(&failed, "gallery-api");
    assert_eq!(string(&api_server.span, "error.type"), "502");
    assert_eq!(api_server.span.status.as_ref().map(|s| s.code), Some(SpanStatus::Error as i32));
}

fn trace_filter(name: &str, service: &str, kind: &str) -> String {
    let config = format!(
        r#"{{"service_name": "{service}", "span_kind": "{kind}", "exporter": {{"cluster": "otel", "flush_interval_ms": 50}}}}"#
    );
    wasm_filter_yaml(name, &filter_module("trace-filter"), &config, true, "trace")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sidecars_the_sidecar_server_span_is_the_parent_of_the_database_spans() {
    let collector = Collector::start();
    // The catalog's sidecar: inbound -> catalog. Its address is only known once the catalog
    // runs, so the gallery starts first with the API calling the sidecar's inbound listener.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port");
    let inbound_addr = reserved.local_addr().expect("address");
    drop(reserved);
    let options =
        GalleryOptions { collector: Some(collector.addr), http_spans: false, ..GalleryOptions::on(Database::Sqlite) };
    let Some(gallery) = Gallery::start_via(options, None, Some(inbound_addr)).await else { return };
    let inbound = listener_yaml("inbound", "INBOUND", &trace_filter("trace_in", "image-catalog", "server"), "catalog")
        .replace("port_value: 0", &format!("port_value: {}", inbound_addr.port()));
    let proxy =
        sidecar(&[inbound], &[cluster("catalog", gallery.catalog.addr, ""), cluster("otel", collector.addr, "")]);

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, id) = upload(gallery.api(), &traceparent).await;
    assert_eq!(status, StatusCode::CREATED);
    gallery.flush();
    let spans = in_trace(&collector, CLIENT_TRACE, 4).await;
    let by_service: HashMap<_, usize> = spans.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.service.clone()).or_default() += 1;
        m
    });
    let sidecar_server = spans
        .iter()
        .find(|s| s.service == "image-catalog" && kind(s) == SpanKind::Server)
        .unwrap_or_else(|| panic!("the sidecar's SERVER span: {by_service:?}"));
    assert_eq!(string(&sidecar_server.span, "http.request.method"), "POST");
    assert!(
        !spans.iter().any(|s| s.service == "gallery-api" && kind(s) != SpanKind::Internal),
        "behind sidecars the services make no HTTP spans of their own"
    );
    for operation in ["INSERT images", "UPDATE images"] {
        let db = one(&spans, "image-catalog", operation);
        parent_of(db, sidecar_server);
        assert_database_span(db, operation.split(' ').next().unwrap_or(""), &id);
    }
    // The catalog carried the sidecar's context to the store.
    let put = spans
        .iter()
        .find(|s| s.service == "image-store" && string(&s.span, "object_store.operation") == "put")
        .expect("storage span");
    assert_eq!(hex(&put.span.parent_span_id), hex(&sidecar_server.span.span_id));
    drop(gallery);
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sidecars_health_probes_and_idle_sweeps_leave_no_traces() {
    // Kubernetes probes the services directly (not through the sidecar) every few seconds, and
    // the catalog sweeps every second here: neither may fill the trace backend with one-query
    // traces. A traced request right after shows the exporter works.
    let collector = Collector::start();
    let options = GalleryOptions {
        collector: Some(collector.addr),
        http_spans: false,
        sweep_secs: 1,
        ..GalleryOptions::on(Database::Sqlite)
    };
    let gallery = Gallery::start(options).await.expect("SQLite");
    for service in [gallery.api.addr, gallery.catalog.addr, gallery.store_addr()] {
        for path in ["/v0/readyz", "/v0/healthz"] {
            assert_eq!(crate::fixture::client::get(service, path, &[]).await.status, StatusCode::OK, "{path}");
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let traced = crate::fixture::client::get(
        gallery.catalog.addr,
        "/v0/images",
        &[("traceparent", &format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))],
    )
    .await;
    assert_eq!(traced.status, StatusCode::OK);
    for service in [&gallery.api, &gallery.catalog] {
        service.telemetry.flush();
    }
    let spans = collector.wait_until(|spans| !spans.is_empty()).await;
    let strays: Vec<_> =
        spans.iter().filter(|s| hex(&s.span.trace_id) != CLIENT_TRACE).map(|s| (&s.service, &s.span.name)).collect();
    assert!(strays.is_empty(), "spans outside any request's trace: {strays:?}");
    assert!(spans.iter().any(|s| s.service == "image-catalog" && s.span.name.starts_with("SELECT")), "{spans:?}");
}
