//! Envoy compatibility a filter can observe: the route resolved before the request filters run
//! (and again after them), the route and listener attributes, the `content-length` of local and direct replies,
//! as Envoy sets it before the response filters run (the body's length; none for an empty body),
//! and a wire length that always matches the body sent, whatever a response filter did to it.

use http::StatusCode;
use wasmtrace_proxy::RunningProxy;

use crate::fixture::client::{client, get, send};
use crate::fixture::proxy::{bootstrap_yaml, cluster, ingress, route, start, wasm_filter};
use crate::fixture::upstream::Upstream;

/// The abi-probe in front of direct responses at `/health` (a body), `/empty` (none),
/// `/rewrite-keep-length` and `/redact` (bodies the probe rewrites), and `service` at `/api`.
fn proxy(upstream: &Upstream) -> RunningProxy {
    let direct = |path: &str, body: &str| {
        format!(
            r#"                        - match: {{ path: "{path}" }}
                          direct_response: {{ status: 200{body} }}
"#
        )
    };
    let routes = [
        direct("/health", r#", body: { inline_string: "proxy ok\n" }"#),
        direct("/empty", ""),
        direct("/rewrite-keep-length", r#", body: { inline_string: "short\n" }"#),
        direct("/redact", r#", body: { inline_string: "a secret the probe redacts\n" }"#),
        route("/api", "service", "5s"),
    ]
    .concat();
    start(&bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &routes,
        &[cluster("service", upstream.addr, "")],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_filters_see_a_direct_responses_body_length_and_none_for_an_empty_one() {
    let upstream = Upstream::start();
    let proxy = proxy(&upstream);
    let health = get(ingress(&proxy), "/health", &[]).await;
    assert_eq!((health.status, health.text().as_str()), (StatusCode::OK, "proxy ok\n"));
    assert_eq!(health.header("x-probe-saw-content-length"), Some("9"), "the filter saw the body's length");
    assert_eq!(health.header("content-length"), Some("9"));

    let empty = get(ingress(&proxy), "/empty", &[]).await;
    assert_eq!((empty.status, empty.body.len()), (StatusCode::OK, 0));
    assert_eq!(
        empty.header("x-probe-saw-content-length"),
        Some("none"),
        "Envoy removes content-length from an empty local reply before the filters see it"
    );
    assert_eq!(empty.header("content-length"), Some("0"), "HTTP/1.1 frames the empty body");
    assert_eq!(empty.header("content-type"), None, "Envoy gives an empty local reply no content type");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_filters_see_the_body_length_of_a_filters_local_reply_and_of_a_proxy_error() {
    let upstream = Upstream::start();
    let proxy = proxy(&upstream);
    let local = get(ingress(&proxy), "/local", &[]).await;
    assert_eq!((local.status, local.text().as_str()), (StatusCode::FORBIDDEN, "denied by probe\n"));
    assert_eq!(local.header("x-probe-saw-content-length"), Some("16"));
    assert_eq!(local.header("content-length"), Some("16"));

    let unrouted = get(ingress(&proxy), "/elsewhere", &[]).await;
    assert_eq!(unrouted.status, StatusCode::NOT_FOUND);
    let length = unrouted.body.len().to_string();
    assert_eq!(unrouted.header("x-probe-saw-content-length"), Some(length.as_str()));
    assert_eq!(unrouted.header("content-length"), Some(length.as_str()));
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reply_whose_body_a_filter_rewrites_reaches_the_client_with_its_true_length() {
    let upstream = Upstream::start();
    let proxy = proxy(&upstream);
    for http2 in [false, true] {
        let client = client(http2);
        // The probe rewrites the body into a longer one and leaves content-length at 6.
        let rewritten = send(&client, ingress(&proxy), "GET", "/rewrite-keep-length", &[], "").await;
        assert_eq!(rewritten.status, StatusCode::OK, "http2: {http2}");
        assert_eq!(rewritten.header("x-probe-saw-content-length"), Some("6"), "http2: {http2}");
        assert_eq!(rewritten.text(), "rewritten by the probe, content-length left alone\n", "http2: {http2}");
        let length = rewritten.body.len().to_string();
        assert_eq!(rewritten.header("content-length"), Some(length.as_str()), "http2: {http2}");

        // The SDK way: the probe removes content-length, then rewrites.
        let redacted = send(&client, ingress(&proxy), "GET", "/redact", &[], "").await;
        assert_eq!(redacted.text(), "redacted (27 bytes)\n", "http2: {http2}");
        let length = redacted.body.len().to_string();
        assert_eq!(redacted.header("content-length"), Some(length.as_str()), "http2: {http2}");
    }
    proxy.shutdown();
}

/// The abi-probe in front of named routes: `/props` and `/api` to `service`, `/reroute` answered
/// directly (unless a filter moves the request elsewhere).
fn routed_proxy(upstream: &Upstream) -> RunningProxy {
    let routes = r#"                        - name: props-route
                          match: { prefix: "/props" }
                          route: { cluster: service, timeout: 5s }
                        - name: moved-route
                          match: { path: "/reroute" }
                          direct_response: { status: 418, body: { inline_string: "not moved\n" } }
                        - name: api-route
                          match: { prefix: "/api" }
                          route: { cluster: service, timeout: 5s }
"#;
    start(&bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        routes,
        &[cluster("service", upstream.addr, "")],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_filters_read_the_route_cluster_and_listener_direction_before_routing() {
    let upstream = Upstream::start();
    let proxy = routed_proxy(&upstream);
    let reply = get(ingress(&proxy), "/props", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    for (header, expected) in [
        ("x-prop-route-name", "props-route"),
        ("x-prop-xds-route-name", "props-route"),
        ("x-prop-cluster-name", "service"),
        ("x-prop-xds-cluster-name", "service"),
        ("x-prop-listener-direction", "1"),
    ] {
        assert_eq!(reply.upstream_saw(header).as_deref(), Some(expected), "{header}");
    }
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_filter_that_changes_the_path_is_routed_by_the_new_path() {
    let upstream = Upstream::start();
    let proxy = routed_proxy(&upstream);
    let reply = get(ingress(&proxy), "/reroute", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "routed to the service, not the direct reply: {}", reply.text());
    assert_eq!(reply.upstream_saw("x-probe-route-before").as_deref(), Some("moved-route"));
    assert_eq!(reply.json()["path"], "/api/rerouted");
    proxy.shutdown();
}
