//! The admin API: readiness, Prometheus stats with filter-defined metrics, plugins, config.

use bytes::Bytes;
use http::StatusCode;

use crate::fixture::client::{client, get, send_bytes};
use crate::fixture::proxy::{ingress, probe_proxy};
use crate::fixture::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_readiness_stats_plugins_and_config() {
    let upstream = Upstream::start();
    let proxy = probe_proxy(upstream.addr);
    for _ in 0..3 {
        assert_eq!(get(ingress(&proxy), "/echo", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(get(ingress(&proxy), "/local", &[]).await.status, StatusCode::FORBIDDEN);
    let admin = proxy.admin_address().expect("admin listener");
    assert!(admin.ip().is_loopback());

    let ready = get(admin, "/ready", &[]).await;
    assert_eq!((ready.status, ready.text().as_str()), (StatusCode::OK, "LIVE\n"));

    let stats = get(admin, "/stats/prometheus", &[]).await.text();
    for line in [
        r#"wasmtrace_http_requests_total{listener="ingress"} 4"#,
        r#"wasmtrace_http_responses_total{listener="ingress",code_class="2xx"} 3"#,
        r#"wasmtrace_http_responses_total{listener="ingress",code_class="4xx"} 1"#,
        r#"wasmtrace_upstream_requests_total{cluster="service"} 3"#,
        "probe_requests_total 4",
        "# TYPE probe_request_header_count histogram",
    ] {
        assert!(stats.contains(line), "missing {line:?} in\n{stats}");
    }

    let plugins = get(admin, "/plugins", &[]).await.json();
    let probe = &plugins["plugins"][0];
    assert_eq!(probe["name"], "probe");
    assert_eq!(probe["vm_id"], "probe_vm");
    assert_eq!(probe["generation"], 1);
    assert_eq!(probe["vms_alive"], 2, "one VM per worker");
    assert_eq!(probe["sha256"].as_str().map(str::len), Some(64));
    assert!(probe["module_path"].as_str().is_some_and(|p| p.ends_with("abi-probe.wasm")));

    let config = get(admin, "/config_dump", &[]).await.json();
    assert_eq!(config["listeners"][0]["name"], "ingress");
    assert_eq!(config["node"]["id"], "e2e-proxy");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_read_the_node_and_peer_from_properties() {
    let upstream = Upstream::start();
    let proxy = probe_proxy(upstream.addr);
    let reply = get(ingress(&proxy), "/props", &[]).await;
    assert_eq!(reply.upstream_saw("x-prop-region").as_deref(), Some("test-region"));
    assert_eq!(reply.upstream_saw("x-prop-node-id").as_deref(), Some("e2e-proxy"));
    assert!(reply.upstream_saw("x-prop-source").is_some_and(|s| s.starts_with("127.0.0.1:")));
    assert_eq!(reply.upstream_saw("x-prop-plugin-name").as_deref(), Some("probe"));
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_request_over_64_mib_is_refused_as_too_large_and_nothing_changes() {
    let upstream = Upstream::start();
    let proxy = probe_proxy(upstream.addr);
    let admin = proxy.admin_address().expect("admin listener");
    let before = get(admin, "/plugins", &[]).await.json();
    let oversized = format!(r#"{{"module_base64": "{}"}}"#, "A".repeat((64 << 20) + 16));
    let reply = send_bytes(
        &client(false),
        admin,
        "POST",
        "/plugins/probe/swap",
        &[("content-type", "application/json")],
        Bytes::from(oversized),
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.text());
    assert!(reply.text().contains("module_path"), "says what to do instead: {}", reply.text());
    let after = get(admin, "/plugins", &[]).await.json();
    assert_eq!(after["plugins"][0]["generation"], before["plugins"][0]["generation"]);
    assert_eq!(get(ingress(&proxy), "/echo", &[]).await.status, StatusCode::OK);
    proxy.shutdown();
}
