//! Upstream down, slow or resetting: 503, 504, 502 with bodies that name the cluster and cause.

use http::StatusCode;

use crate::fixture::client::get;
use crate::fixture::proxy::{bootstrap_yaml, cluster, ingress, route, start, wasm_filter};
use crate::fixture::upstream::{Upstream, closed_port, resetting_upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_slow_and_resetting_upstreams_get_503_504_and_502() {
    let slow = Upstream::start();
    let routes =
        [route("/down", "down", "5s"), route("/slow", "slow", "0.2s"), route("/reset", "reset", "5s")].concat();
    let yaml = bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &routes,
        &[
            cluster("down", closed_port(), ""),
            cluster("slow", slow.addr, ""),
            cluster("reset", resetting_upstream(), ""),
        ],
    );
    let proxy = start(&yaml);

    let down = get(ingress(&proxy), "/down", &[]).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.text().starts_with("upstream connect error: cluster `down`:"), "{}", down.text());
    assert!(
        down.text().contains("Connection refused") || down.text().contains("connection refused"),
        "{}",
        down.text()
    );
    assert_eq!(down.header("x-probe-response"), Some("yes"), "proxy-made responses pass the filters too");

    let slow_reply = get(ingress(&proxy), "/slow", &[]).await;
    assert_eq!(slow_reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(slow_reply.text(), "upstream request timeout: cluster `slow` did not respond within 200ms\n");

    let reset = get(ingress(&proxy), "/reset", &[]).await;
    assert_eq!(reset.status, StatusCode::BAD_GATEWAY);
    assert!(reset.text().starts_with("upstream reset: cluster `reset`:"), "{}", reset.text());

    let admin = proxy.admin_address().expect("admin");
    let stats = get(admin, "/stats/prometheus", &[]).await.text();
    for line in [
        r#"wasmtrace_upstream_errors_total{cluster="down",kind="connect_failure"} 1"#,
        r#"wasmtrace_upstream_errors_total{cluster="slow",kind="timeout"} 1"#,
        r#"wasmtrace_upstream_errors_total{cluster="reset",kind="reset"} 1"#,
    ] {
        assert!(stats.contains(line), "missing {line} in\n{stats}");
    }
    proxy.shutdown();
}
