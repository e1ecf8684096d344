//! The upstream receives exactly the path the route matched: a Host or `:authority` value can
//! never move text into the request-target.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{bootstrap, raw_exchange, stat, status_of};
use crate::fixture::client::get;
use crate::fixture::proxy::{cluster, ingress, start, wasm_filter};
use crate::fixture::upstream::Upstream;

/// `/public` to the service, `/api/` rewritten to `/v1/`, and nothing else routed.
fn routes() -> &'static str {
    r#"                        - match: { prefix: "/public" }
                          route: { cluster: service, timeout: 5s }
                        - match: { prefix: "/api/" }
                          route: { cluster: service, timeout: 5s, prefix_rewrite: "/v1/" }
                        - match: { prefix: "/" }
                          direct_response: { status: 404, body: { inline_string: "not routed" } }
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_value_cannot_reach_the_upstream_path() {
    let upstream = Upstream::start();
    // With and without a filter in the chain: the probe sees the headers the router matched.
    for filters in [vec![], vec![wasm_filter("probe", "abi-probe", "", false)]] {
        let proxy = start(&bootstrap("", routes(), &filters, &[cluster("service", upstream.addr, "")]));
        let addr = ingress(&proxy);
        for host in ["x/admin/secret#", "x/admin/secret?", "x#", "user@x", "x:80/admin", "a b", "[::1"] {
            let request = format!("GET /public/page HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let response = raw_exchange(addr, request.as_bytes()).await;
            assert_eq!(status_of(&response), 400, "Host {host:?}: {response}");
            assert!(!response.contains("/admin"), "the refusal does not route: {response}");
        }
        // An absolute-form target with a userinfo authority is refused the same way.
        let response =
            raw_exchange(addr, b"GET http://x@y/public/page HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_of(&response), 400, "{response}");

        // A valid host reaches the upstream with the path exactly as sent; a rewrite is applied to
        // the matched prefix only.
        let echoed = get(addr, "/public/page?q=%2F..%2Fadmin#ignored", &[("host", "gallery.local:8080")]).await;
        assert_eq!(echoed.status, StatusCode::OK);
        assert_eq!(echoed.json()["path"], "/public/page?q=%2F..%2Fadmin");
        assert_eq!(echoed.json()["headers"]["host"], "gallery.local:8080");
        let rewritten = get(addr, "/api/images?x=1", &[]).await;
        assert_eq!(rewritten.json()["path"], "/v1/images?x=1");
        assert_eq!(get(addr, "/admin/secret", &[("host", "x")]).await.status, StatusCode::NOT_FOUND);

        // `Connection` cannot nominate the Host for removal (which would route the request by the
        // cluster's name instead), and a request without a Host is refused.
        let nominated = get(addr, "/public/page", &[("host", "gallery.local"), ("connection", "host")]).await;
        assert_eq!(nominated.json()["headers"]["host"], "gallery.local");
        let hostless = raw_exchange(addr, b"GET /public/page HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_of(&hostless), 400, "{hostless}");

        let admin = proxy.admin_address().expect("admin");
        let refused =
            stat(admin, r#"wasmtrace_downstream_errors_total{listener="ingress",kind="invalid_authority"}"#).await;
        assert!(refused >= 7, "{refused} refusals counted");
        proxy.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_host_header_without_authority_is_checked_too() {
    let upstream = Upstream::start();
    let proxy = start(&bootstrap("", routes(), &[], &[cluster("service", upstream.addr, "")]));
    let stream = tokio::net::TcpStream::connect(ingress(&proxy)).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c handshake");
    tokio::spawn(connection);
    for (host, expected) in [("x/admin/secret#", StatusCode::BAD_REQUEST), ("gallery.local", StatusCode::OK)] {
        // An origin-form URI: no `:authority`, only a `host` header.
        let request =
            http::Request::get("/public/page").header("host", host).body(Full::new(Bytes::new())).expect("request");
        let response = sender.send_request(request).await.expect("an answer");
        assert_eq!(response.status(), expected, "host {host:?}");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        if expected == StatusCode::OK {
            let echoed: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(echoed["path"], "/public/page");
        }
    }
    proxy.shutdown();
}
