//! `proxy_http_call` to a second cluster over real HTTP: the request pauses and resumes.

use http::StatusCode;

use crate::fixture::client::get;
use crate::fixture::proxy::{bootstrap_yaml, cluster, ingress, route, start, wasm_filter};
use crate::fixture::upstream::{Upstream, closed_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_paused_for_a_callout_resumes_with_the_callouts_answer() {
    let service = Upstream::start();
    let auth = Upstream::start();
    let yaml = bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &route("/", "service", "5s"),
        &[cluster("service", service.addr, ""), cluster("auth", auth.addr, "")],
    );
    let proxy = start(&yaml);
    for _ in 0..3 {
        let reply = get(ingress(&proxy), "/callout", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.upstream_saw("x-callout-status").as_deref(), Some("200"));
        assert_eq!(reply.upstream_saw("x-callout-body").as_deref(), Some("pong"));
    }
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_to_a_dead_cluster_is_delivered_as_a_failure() {
    let service = Upstream::start();
    let yaml = bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &route("/", "service", "5s"),
        &[cluster("service", service.addr, ""), cluster("auth", closed_port(), "")],
    );
    let proxy = start(&yaml);
    let reply = get(ingress(&proxy), "/callout", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.text().starts_with("callout failed: connection failure"), "{}", reply.text());
    proxy.shutdown();
}
