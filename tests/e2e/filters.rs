//! Wasm filters on real traffic: header edits, local replies, Envoy's request defaults,
//! hop-by-hop handling, failure policies.

use http::StatusCode;

use crate::fixture::client::get;
use crate::fixture::proxy::{
    bootstrap_yaml, cluster, component_module, ingress, probe_proxy, route, start, wasm_filter, wasm_filter_yaml,
};
use crate::fixture::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_edits_request_and_response_headers_of_real_traffic() {
    let upstream = Upstream::start();
    let proxy = probe_proxy(upstream.addr);
    let reply = get(ingress(&proxy), "/echo?x=1", &[("x-replace-me", "original"), ("x-remove-me", "secret")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.upstream_saw("x-probe").is_some_and(|v| v.starts_with("ctx=")), "{}", reply.text());
    assert_eq!(reply.upstream_saw("x-replace-me").as_deref(), Some("replaced"));
    assert_eq!(reply.upstream_saw("x-remove-me"), None);
    assert_eq!(reply.json()["path"], "/echo?x=1");
    assert_eq!(reply.header("x-probe-response"), Some("yes"));
    assert_eq!(reply.header("x-upstream"), Some("yes"));
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_defaults_add_request_id_and_forwarding_headers_and_drop_hop_by_hop_headers() {
    let upstream = Upstream::start();
    let yaml = bootstrap_yaml(&[], &route("/", "service", "5s"), &[cluster("service", upstream.addr, "")]);
    let proxy = start(&yaml);
    let reply =
        get(ingress(&proxy), "/echo", &[("connection", "x-hop"), ("x-hop", "1"), ("x-forwarded-for", "203.0.113.9")])
            .await;
    let request_id = reply.upstream_saw("x-request-id").expect("generated");
    assert_eq!(request_id.len(), 36, "a UUID: {request_id}");
    assert_eq!(reply.upstream_saw("x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(reply.upstream_saw("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(reply.upstream_saw("x-hop"), None, "headers named by Connection are hop-by-hop");
    assert!(
        reply.upstream_saw("host").is_some_and(|h| h.starts_with("127.0.0.1:")),
        "the client's Host reaches the upstream"
    );

    let kept = get(ingress(&proxy), "/echo", &[("x-request-id", "client-chosen")]).await;
    assert_eq!(kept.upstream_saw("x-request-id").as_deref(), Some("client-chosen"));
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reply_from_a_filter_passes_back_through_the_response_filters() {
    let upstream = Upstream::start();
    let proxy = probe_proxy(upstream.addr);
    let reply = get(ingress(&proxy), "/local", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.text(), "denied by probe\n");
    assert_eq!(reply.header("x-local"), Some("yes"));
    assert_eq!(reply.header("x-probe-response"), Some("yes"), "the local reply went through on_response_headers");
    assert_eq!(reply.header("x-upstream"), None, "the upstream was never called");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_bodies_are_rewritten_by_a_buffering_filter() {
    let upstream = Upstream::start();
    let proxy = probe_proxy(upstream.addr);
    let client = crate::fixture::client::client(false);
    let reply = crate::fixture::client::send(&client, ingress(&proxy), "POST", "/body", &[], "shout this please").await;
    assert_eq!(reply.json()["body"], "SHOUT THIS PLEASE");
    let redacted = get(ingress(&proxy), "/redact", &[]).await;
    assert!(redacted.text().starts_with("redacted ("), "{}", redacted.text());
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_filter_fails_its_request_by_policy_and_the_next_request_is_served() {
    let upstream = Upstream::start();
    for (fail_open, expected) in [(false, StatusCode::SERVICE_UNAVAILABLE), (true, StatusCode::OK)] {
        let yaml = bootstrap_yaml(
            &[wasm_filter("hostile", "hostile", "", fail_open)],
            &route("/", "service", "5s"),
            &[cluster("service", upstream.addr, "")],
        );
        let proxy = start(&yaml);
        let failed = get(ingress(&proxy), "/echo", &[("x-hostile", "trap")]).await;
        assert_eq!(failed.status, expected, "fail_open: {fail_open}: {}", failed.text());
        if !fail_open {
            assert!(failed.text().contains("wasm plugin `hostile` failed"), "{}", failed.text());
        }
        for _ in 0..4 {
            let next = get(ingress(&proxy), "/echo", &[]).await;
            assert_eq!(next.status, StatusCode::OK);
            assert!(next.upstream_saw("x-hostile-ok").is_some(), "a fresh VM filters the next request");
        }
        proxy.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses_and_unrouted_requests_are_answered_by_the_proxy() {
    let upstream = Upstream::start();
    let routes = format!(
        r#"                        - match: {{ path: "/health" }}
                          direct_response: {{ status: 200, body: {{ inline_string: "proxy ok\n" }} }}
{}"#,
        route("/api", "service", "5s")
    );
    let yaml = bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &routes,
        &[cluster("service", upstream.addr, "")],
    );
    let proxy = start(&yaml);
    let health = get(ingress(&proxy), "/health", &[]).await;
    assert_eq!((health.status, health.text().as_str()), (StatusCode::OK, "proxy ok\n"));
    assert_eq!(health.header("x-probe-response"), Some("yes"));
    let missing = get(ingress(&proxy), "/elsewhere", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.text(), "no route matches this request\n");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_component_filter_fails_only_its_request_and_the_worker_serves_on() {
    // The component build of the hostile filter, on the proxy's workers (inside their tokio
    // runtimes): its panic message goes to WASI stderr on the way down.
    let upstream = Upstream::start();
    let module = component_module("hostile-component");
    let yaml = bootstrap_yaml(
        &[wasm_filter_yaml("hostile", &module, "", false, "hostile")],
        &route("/", "service", "5s"),
        &[cluster("service", upstream.addr, "")],
    );
    let proxy = start(&yaml);
    for kind in ["trap", "loop", "grow"] {
        let failed = get(ingress(&proxy), "/echo", &[("x-hostile", kind)]).await;
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE, "{kind}: {}", failed.text());
        assert!(
            failed.text().contains("wasm plugin `hostile` failed in proxy_on_request_headers"),
            "{kind}: {}",
            failed.text()
        );
        for _ in 0..4 {
            let next = get(ingress(&proxy), "/echo", &[]).await;
            assert_eq!(next.status, StatusCode::OK, "{kind}");
            assert!(next.upstream_saw("x-hostile-ok").is_some(), "{kind}: a fresh VM filters the next request");
        }
    }
    proxy.shutdown();
}
