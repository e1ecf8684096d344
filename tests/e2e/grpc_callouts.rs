//! gRPC callouts from a filter built with the proxy-wasm Rust SDK (`filters/test-filters/
//! grpc-caller`) to a real tonic server over HTTP/2: unary calls (answer, error status,
//! timeout, unimplemented method, dead and unknown clusters), a bidirectional stream with
//! initial and trailing metadata, and cancellation of calls the server is working on; and the
//! trace filter's OTLP/gRPC exporter against a receiver built on the official protos.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;

use crate::fixture::client::{Reply, get};
use crate::fixture::grpc::{EchoLog, GrpcServer, echo_server, otlp_receiver};
use crate::fixture::proxy::{
    bootstrap_yaml, cluster, filter_module, ingress, route, start, wasm_filter, wasm_filter_yaml,
};
use crate::fixture::upstream::{Upstream, closed_port};

/// `http2_protocol_options` for a cluster (indented as [`cluster`]'s fields).
const HTTP2: &str = "      http2_protocol_options: {}";

struct Setup {
    proxy: wasmtrace_proxy::RunningProxy,
    log: std::sync::Arc<EchoLog>,
    _grpc: GrpcServer,
    _service: Upstream,
}

fn setup() -> Setup {
    let service = Upstream::start();
    let (grpc, log) = echo_server();
    let yaml = bootstrap_yaml(
        &[wasm_filter("grpc", "grpc-caller", "", false)],
        &route("/", "service", "5s"),
        &[
            cluster("service", service.addr, ""),
            cluster("grpc", grpc.addr, HTTP2),
            cluster("plain", grpc.addr, ""),
            cluster("dead", closed_port(), HTTP2),
        ],
    );
    Setup { proxy: start(&yaml), log, _grpc: grpc, _service: service }
}

async fn call(setup: &Setup, headers: &[(&str, &str)]) -> Reply {
    get(ingress(&setup.proxy), "/", headers).await
}

fn grpc_status(reply: &Reply) -> (Option<&str>, Option<&str>) {
    (reply.header("x-grpc-status"), reply.header("x-grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_delivers_the_answer_and_sends_the_filters_metadata() {
    let setup = setup();
    for _ in 0..3 {
        let reply = call(&setup, &[("x-grpc", "unary"), ("x-grpc-message", "ping")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(grpc_status(&reply), (Some("0"), Some("")));
        assert_eq!(reply.text(), "echo:ping md:from-filter");
    }
    setup.proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_call_delivers_its_status_and_message_at_close() {
    let setup = setup();
    let reply = call(&setup, &[("x-grpc", "unary"), ("x-grpc-method", "Fail")]).await;
    assert_eq!(grpc_status(&reply), (Some("7"), Some("not allowed: \\u{2713}")), "PERMISSION_DENIED, decoded");
    assert_eq!(reply.text(), "", "a failed call has no message");

    let reply = call(&setup, &[("x-grpc", "unary"), ("x-grpc-method", "Nope")]).await;
    assert_eq!(grpc_status(&reply).0, Some("12"), "UNIMPLEMENTED from a trailers-only answer");

    let reply = call(&setup, &[("x-grpc", "unary"), ("x-grpc-method", "Slow"), ("x-grpc-timeout-ms", "50")]).await;
    assert_eq!(grpc_status(&reply).0, Some("4"), "DEADLINE_EXCEEDED: {:?}", grpc_status(&reply));

    let reply = call(&setup, &[("x-grpc", "unary"), ("x-grpc-cluster", "dead")]).await;
    assert_eq!(grpc_status(&reply).0, Some("14"), "UNAVAILABLE: {:?}", grpc_status(&reply));
    assert!(grpc_status(&reply).1.is_some_and(|m| m.contains("connection")), "{:?}", grpc_status(&reply));
    setup.proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_no_grpc_server_gives_close_the_call_as_envoys_grpc_client_does() {
    let setup = setup();
    for (method, expected, why) in [
        ("Http503", "1", "a non-200 answer is CANCELLED, as Envoy and the Google client have it"),
        ("NoTrailers", "2", "a stream that ends without trailers is UNKNOWN"),
        ("Compressed", "13", "a compressed message nobody offered is INTERNAL"),
    ] {
        let reply = call(&setup, &[("x-grpc", "unary"), ("x-grpc-method", method)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.text());
        assert_eq!(grpc_status(&reply).0, Some(expected), "{method}: {why}: {:?}", grpc_status(&reply));
    }
    // On a stream the same failure first delivers empty trailing metadata (Envoy's streamError).
    let reply = call(&setup, &[("x-grpc", "stream"), ("x-grpc-method", "Http503"), ("x-grpc-message", "a")]).await;
    let lines: Vec<String> = reply.text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].starts_with("initial ("), "{lines:#?}");
    assert_eq!(lines[1], "trailing (0): ", "{lines:#?}");
    assert!(lines[2].starts_with("close: 1 "), "{lines:#?}");
    setup.proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_may_send_and_close_after_the_server_closed_as_envoy_answers_ok() {
    let setup = setup();
    // The SDK unwraps send and close: a status other than OK would fail the filter (503).
    for _ in 0..2 {
        let reply = call(&setup, &[("x-grpc", "stream-hangup"), ("x-grpc-message", "x")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let lines: Vec<String> = reply.text().lines().map(str::to_owned).collect();
        assert_eq!(lines[1], "message: echo:x", "{lines:#?}");
        assert!(lines[2].ends_with("): bye"), "{lines:#?}");
        assert_eq!(lines[3].trim_end(), "close: 0", "{lines:#?}");
        assert_eq!(lines[4], "closed our side", "{lines:#?}");
    }
    setup.proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_open_by_a_request_is_reset_when_the_request_ends() {
    let setup = setup();
    let reply = call(&setup, &[("x-grpc", "abandon")]).await;
    assert_eq!(reply.status, StatusCode::OK, "the request went on upstream: {}", reply.text());
    assert_eq!(wait_for_cancelled(&setup, 1).await, 1, "the stream died with the context that opened it");
    setup.proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_the_host_cannot_make_are_refused_up_front_as_the_sdk_expects() {
    let setup = setup();
    let reply = call(&setup, &[("x-grpc", "unary"), ("x-grpc-cluster", "nowhere")]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), "the call refused: ParseFailure", "Envoy's answer for an unknown cluster");
    let reply = call(&setup, &[("x-grpc", "stream"), ("x-grpc-cluster", "plain"), ("x-grpc-message", "a")]).await;
    assert_eq!(reply.text(), "the stream refused: InternalFailure", "a cluster without HTTP/2 carries no gRPC");
    // The filter is still healthy after both refusals.
    let reply = call(&setup, &[("x-grpc", "unary"), ("x-grpc-message", "again")]).await;
    assert_eq!(reply.text(), "echo:again md:from-filter");
    setup.proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_delivers_metadata_messages_trailers_and_close_in_order() {
    let setup = setup();
    let reply = call(&setup, &[("x-grpc", "stream"), ("x-grpc-message", "a,b,c")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let lines: Vec<String> = reply.text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert!(lines[0].starts_with("initial (") && lines[0].ends_with("): hi"), "{lines:#?}");
    assert_eq!(lines[1..4], ["message: echo:a", "message: echo:b", "message: echo:c"], "ping-pong, in order");
    assert!(lines[4].starts_with("trailing (") && lines[4].ends_with("): bye"), "{lines:#?}");
    assert_eq!(lines[5].trim_end(), "close: 0", "{lines:#?}");
    assert_eq!(grpc_status(&reply).0, Some("0"));
    setup.proxy.shutdown();
}

/// Waits until the server has counted `count` cancelled calls.
async fn wait_for_cancelled(setup: &Setup, count: usize) -> usize {
    for _ in 0..250 {
        let seen = setup.log.cancelled.load(Ordering::SeqCst);
        if seen >= count {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    setup.log.cancelled.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_reset_at_the_server_and_delivers_nothing_more() {
    let setup = setup();
    let reply = call(&setup, &[("x-grpc", "cancel-unary")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "slow:timer", "the call that outlived the cancelled one answered");
    assert_eq!(reply.header("x-late-callbacks"), Some("0"), "no callback for the cancelled call");
    assert_eq!(wait_for_cancelled(&setup, 1).await, 1, "the server saw the slow call abandoned");

    let reply = call(&setup, &[("x-grpc", "cancel-stream")]).await;
    assert_eq!(reply.text(), "slow:timer");
    assert_eq!(reply.header("x-late-callbacks"), Some("0"), "no trailers or close for the cancelled stream");
    assert_eq!(wait_for_cancelled(&setup, 2).await, 2, "the server saw the stream reset");
    setup.proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_filter_exports_over_otlp_grpc_to_a_receiver_decoding_the_official_protos() {
    let service = Upstream::start();
    // The receiver refuses the first export as a collector still starting would: the batch is
    // sent again (OTLP's retryable UNAVAILABLE) and no span is lost.
    let (grpc, receiver) = otlp_receiver(1);
    let configuration = r#"{"service_name": "grpc-exported", "span_kind": "server", "exporter": {"cluster": "otel", "authority": "collector.example", "format": "otlp_grpc", "flush_interval_ms": 50}}"#;
    let yaml = bootstrap_yaml(
        &[wasm_filter_yaml("trace", &filter_module("trace-filter"), configuration, false, "trace")],
        &route("/", "service", "5s"),
        &[cluster("service", service.addr, ""), cluster("otel", grpc.addr, HTTP2)],
    );
    let proxy = start(&yaml);
    for i in 0..3 {
        let reply = get(ingress(&proxy), &format!("/exported/{i}"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let mut spans = Vec::new();
    for _ in 0..200 {
        spans = receiver
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource| {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .map(|v| format!("{:?}", v.value));
                resource
                    .scope_spans
                    .iter()
                    .flat_map(|scope| &scope.spans)
                    .map(move |span| (service.clone(), span.clone()))
            })
            .collect::<Vec<_>>();
        if spans.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spans.len(), 3, "one SERVER span per request, decoded by the official protos");
    for (service, span) in &spans {
        assert!(service.as_deref().is_some_and(|s| s.contains("grpc-exported")), "{service:?}");
        assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
        assert_eq!(span.trace_id.len(), 16);
        assert!(span.name.starts_with("GET"), "{}", span.name);
    }
    assert_eq!(receiver.refused.load(Ordering::SeqCst), 1, "the first export was refused, then retried");
    let authorities = receiver.authorities.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        !authorities.is_empty() && authorities.iter().all(|a| a == "collector.example"),
        "the configured authority: {authorities:?}"
    );
    proxy.shutdown();
    drop(grpc);
}
