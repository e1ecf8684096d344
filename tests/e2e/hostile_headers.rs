//! Header values that are not UTF-8 (obs-text, bytes ≥ 0x80: legal in HTTP/1.1 field values, and
//! sent as is over HTTP/2) through every shipped filter: the gallery's inbound chain (request-id,
//! tagging, trace), the component build of the trace filter, and the header-reader test filter.
//! Every request is served, every trace-filtered request leaves its span at a real OTLP
//! receiver, and no VM fails. (The Rust SDK's `String` header calls panic on such a value; a
//! filter that used them would answer these requests with 503 and lose its queued spans.)

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_proto::tonic::trace::v1::Span;
use wasmtrace_proxy::RunningProxy;

use crate::fixture::client::{Reply, client, get};
use crate::fixture::collector::{Collector, Received, attribute, string};
use crate::fixture::proxy::{
    cluster, component_module, filter_module, listener_yaml as listener, sidecar, wasm_filter_yaml,
};
use crate::fixture::upstream::Upstream;

/// The parent every hostile request names (valid apart from the byte added to it).
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// Sends `GET path` with header values as raw bytes, the way a client puts them on the wire.
async fn send_raw(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Reply {
    let mut request = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, HeaderValue::from_bytes(value).expect("obs-text is a valid field value"));
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    let response = client.request(request).await.expect("the proxy answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("whole body").to_bytes();
    Reply { status, headers, body }
}

/// What a request carried.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    /// Every propagation header invalid only by its obs-text, plus recorded headers with it.
    Everything,
    /// A valid `traceparent`, and a `tracestate` with obs-text.
    BadTracestate,
}

fn headers_of(case: Case) -> Vec<(&'static str, &'static [u8])> {
    match case {
        Case::Everything => vec![
            ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0\xe9"),
            ("tracestate", b"vendor=\xff"),
            ("b3", b"0af7651916cd43dd8448eb211c80319c-b7ad6b716920333\xb1-1"),
            ("x-b3-traceid", b"\x800af7651916cd43dd8448eb211c8031"),
            ("x-b3-spanid", b"b7ad6b71692033\xff"),
            ("x-b3-sampled", b"1\xa0"),
            ("uber-trace-id", b"0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331:0:\xe91"),
            ("user-agent", b"e2e-client/\xe9\xff"),
            ("x-request-id", b"req-\xff"),
            ("x-tenant", b"t\xe9nant"),
            ("x-custom", b"\xc3\x28"),
            ("x-anything", b"\x80\x81\x82\xfe\xff"),
        ],
        Case::BadTracestate => vec![
            ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("tracestate", b"vendor=caf\xe9,other=1"),
            ("user-agent", b"\xff"),
        ],
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace and span ids of the `traceparent` the upstream received (the filter always writes
/// one, naming its span).
fn forwarded_context(reply: &Reply) -> (String, String) {
    let traceparent = reply.upstream_saw("traceparent").expect("the trace filter writes a traceparent");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert!(
        fields.len() == 4 && fields[1].len() == 32 && fields[2].len() == 16 && traceparent.is_ascii(),
        "a valid traceparent goes on: {traceparent}"
    );
    (fields[1].to_owned(), fields[2].to_owned())
}

/// The gallery's inbound chain (request-id, tagging, trace), the component trace filter, and
/// header-reader, each on its own listener; fail-closed, so a VM failure would show as a 503.
fn hostile_sidecar(upstream: SocketAddr, collector: SocketAddr) -> RunningProxy {
    let tagging = r#"{"rules": [{"attribute": "gallery.tenant", "request_header": "x-tenant"}, {"attribute": "gallery.api_version", "path_segment": 0}, {"attribute": "gallery.failed", "status_at_least": 500, "value": "true"}]}"#;
    let trace = |service: &str| {
        format!(
            r#"{{"service_name": "{service}", "span_kind": "server", "request_header_attributes": {{"x-custom": "app.custom"}}, "exporter": {{"cluster": "otel", "flush_interval_ms": 50}}}}"#
        )
    };
    let inbound = [
        wasm_filter_yaml("request_id", &filter_module("request-id-filter"), "{}", false, "request_id"),
        wasm_filter_yaml("tagging", &filter_module("tagging-filter"), tagging, false, "tagging"),
        wasm_filter_yaml("trace_inbound", &filter_module("trace-filter"), &trace("inbound"), false, "trace"),
    ]
    .concat();
    let component = [
        wasm_filter_yaml("tagging_component", &filter_module("tagging-filter"), tagging, false, "tagging"),
        wasm_filter_yaml("trace_component", &component_module("trace-filter"), &trace("component"), false, "trace_c"),
    ]
    .concat();
    let reader = wasm_filter_yaml("reader", &filter_module("header-reader"), "", false, "reader");
    sidecar(
        &[
            listener("inbound", "INBOUND", &inbound, "service"),
            listener("component", "INBOUND", &component, "service"),
            listener("reader", "INBOUND", &reader, "service"),
        ],
        &[cluster("service", upstream, ""), cluster("otel", collector, "")],
    )
}

/// No plugin failed a callback or had its VM re-created, by the admin API and the metrics.
async fn assert_no_vm_failed(proxy: &RunningProxy) {
    let admin = proxy.admin_address().expect("admin");
    let plugins = get(admin, "/plugins", &[]).await.json();
    let plugins = plugins["plugins"].as_array().cloned().unwrap_or_default();
    assert_eq!(plugins.len(), 6, "{plugins:?}");
    for plugin in &plugins {
        assert_eq!(plugin["vm_restarts"], 0, "{plugin}");
    }
    let metrics = get(admin, "/stats/prometheus", &[]).await.text();
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("wasmtrace_wasm_callback_failures_total") || l.starts_with("wasmtrace_wasm_vm_restarts")
        })
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(failures.is_empty(), "failures counted: {failures:?}");
    let dropped = metrics.lines().find_map(|l| l.strip_prefix("wasmtrace_trace_spans_dropped_total "));
    assert!(dropped.is_none_or(|d| d == "0"), "spans dropped: {dropped:?}");
}

/// The span of service `service` whose context the upstream saw.
fn span_of<'a>(spans: &'a [Received], service: &str, (trace_id, span_id): &(String, String)) -> &'a Span {
    let found: Vec<&Received> = spans
        .iter()
        .filter(|r| r.service == service && hex(&r.span.trace_id) == *trace_id && hex(&r.span.span_id) == *span_id)
        .collect();
    assert_eq!(found.len(), 1, "one {service} span {trace_id}-{span_id}: {spans:#?}");
    &found[0].span
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_values_that_are_not_utf8_are_served_traced_and_fail_no_vm() {
    let upstream = Upstream::start();
    let collector = Collector::start();
    let proxy = hostile_sidecar(upstream.addr, collector.addr);

    // (listener, case, trace context the upstream saw, request id the upstream saw)
    let mut sent = Vec::new();
    for http2 in [false, true] {
        let client = client(http2);
        for listener in ["inbound", "component"] {
            let addr = proxy.listener_address(listener).expect("listener");
            for case in [Case::Everything, Case::BadTracestate] {
                let reply = send_raw(&client, addr, "/echo/v1", &headers_of(case)).await;
                assert_eq!(reply.status, StatusCode::OK, "{listener} {case:?} h2={http2}: {}", reply.text());
                let context = forwarded_context(&reply);
                match case {
                    Case::Everything => {
                        assert_ne!(context.0, TRACE_ID, "an invalid traceparent starts a new trace");
                    }
                    Case::BadTracestate => {
                        assert_eq!(context.0, TRACE_ID, "a valid traceparent is continued");
                        assert_eq!(reply.upstream_saw("tracestate"), None, "an invalid tracestate is dropped whole");
                    }
                }
                sent.push((listener, case, context, reply.upstream_saw("x-request-id")));
            }
        }
        // Header-reader reads every header and the response status as bytes: the request is
        // served and reaches the upstream as the client sent it.
        let reader = proxy.listener_address("reader").expect("reader");
        let reply = send_raw(&client, reader, "/echo", &headers_of(Case::Everything)).await;
        assert_eq!(reply.status, StatusCode::OK, "header-reader h2={http2}: {}", reply.text());
        assert_eq!(reply.upstream_saw("x-anything").as_deref(), Some("\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}"));
    }

    let spans = collector.wait_for(sent.len()).await;
    assert_eq!(spans.len(), sent.len(), "one span per request: {spans:#?}");
    for (listener, case, context, request_id) in &sent {
        let span = span_of(&spans, listener, context);
        match case {
            Case::Everything => {
                assert!(span.parent_span_id.is_empty(), "a new trace has no parent");
                assert_eq!(string(span, "user_agent.original"), "e2e-client/\u{fffd}\u{fffd}", "recorded lossily");
                assert_eq!(string(span, "gallery.tenant"), "t\u{fffd}nant", "the tagging filter's header");
                assert_eq!(string(span, "app.custom"), "\u{fffd}(");
                assert_eq!(string(span, "gallery.api_version"), "echo");
                if *listener == "inbound" {
                    // The request-id filter replaced the client's id, which was not acceptable.
                    let id = request_id.clone().expect("an id reaches the upstream");
                    assert!(id.len() == 36 && id.is_ascii(), "a fresh UUID: {id}");
                    assert_eq!(string(span, "http.request.header.x-request-id"), id);
                }
            }
            Case::BadTracestate => {
                assert_eq!(hex(&span.parent_span_id), PARENT_ID, "the client's span is the parent");
                assert_eq!(span.trace_state, "", "{span:?}");
                assert_eq!(string(span, "user_agent.original"), "\u{fffd}");
            }
        }
        assert!(attribute(span, "http.response.status_code").is_some());
    }
    assert_no_vm_failed(&proxy).await;
    proxy.shutdown();
}
