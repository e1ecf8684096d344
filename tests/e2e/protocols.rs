//! HTTP/1.1 and HTTP/2 (h2c) on both sides of the proxy.

use http::StatusCode;

use crate::fixture::client::{client, send};
use crate::fixture::proxy::{bootstrap_yaml, cluster, ingress, route, start, wasm_filter};
use crate::fixture::upstream::Upstream;

const HTTP2_UPSTREAM: &str = "      http2_protocol_options: {}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_combination_of_http1_and_http2_is_proxied_through_a_filter() {
    let upstream = Upstream::start();
    for upstream_http2 in [false, true] {
        let extra = if upstream_http2 { HTTP2_UPSTREAM } else { "" };
        let yaml = bootstrap_yaml(
            &[wasm_filter("probe", "abi-probe", "", false)],
            &route("/", "service", "5s"),
            &[cluster("service", upstream.addr, extra)],
        );
        let proxy = start(&yaml);
        for downstream_http2 in [false, true] {
            let client = client(downstream_http2);
            for _ in 0..3 {
                let reply = send(&client, ingress(&proxy), "POST", "/echo", &[("x-replace-me", "a")], "hello").await;
                assert_eq!(reply.status, StatusCode::OK);
                let seen = reply.json();
                assert_eq!(seen["version"], if upstream_http2 { "HTTP/2.0" } else { "HTTP/1.1" });
                assert_eq!(seen["body"], "hello");
                assert_eq!(reply.upstream_saw("x-replace-me").as_deref(), Some("replaced"));
                assert_eq!(reply.header("x-probe-response"), Some("yes"));
            }
        }
        proxy.shutdown();
    }
}
