//! A filter no Rust SDK had a hand in: the AssemblyScript probe (`filters/assemblyscript-probe/`,
//! the `@solo-io/proxy-runtime` SDK, ABI 0.2.0, AssemblyScript's `abort` routed to WASI
//! `proc_exit` as the SDK asks) loads unchanged and sees what a filter sees in Envoy: the route
//! and cluster from `on_http_request_headers`, its own local reply, and the `content-length` of
//! local and direct replies in `on_http_response_headers`.

use std::path::Path;

use http::StatusCode;
use wasmtrace_proxy::RunningProxy;

use crate::fixture::assemblyscript::assemblyscript_probe;
use crate::fixture::client::{client, get, send};
use crate::fixture::proxy::{bootstrap_yaml, cluster, ingress, start, wasm_filter_yaml};
use crate::fixture::upstream::Upstream;

/// The body the probe answers `/as-local` with.
const LOCAL_BODY: &str = "denied by the AssemblyScript probe\n";

/// The body of the direct reply at `/as-direct`.
const DIRECT_BODY: &str = "direct from the proxy\n";

/// The probe in front of direct replies at `/as-direct` (a body) and `/as-empty` (none), and of
/// the route `as-route` that sends everything else to `service`.
fn proxy(upstream: &Upstream, module: &Path) -> RunningProxy {
    let routes = format!(
        r#"                        - name: as-direct-route
                          match: {{ path: "/as-direct" }}
                          direct_response: {{ status: 200, body: {{ inline_string: "{direct}" }} }}
                        - name: as-empty-route
                          match: {{ path: "/as-empty" }}
                          direct_response: {{ status: 200 }}
                        - name: as-route
                          match: {{ prefix: "/" }}
                          route: {{ cluster: service, timeout: 5s }}
"#,
        direct = DIRECT_BODY.escape_default()
    );
    start(&bootstrap_yaml(
        &[wasm_filter_yaml("as_probe", module, "", false, "as_probe_vm")],
        &routes,
        &[cluster("service", upstream.addr, "")],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assemblyscript_filter_tells_the_upstream_the_route_and_cluster_it_read() {
    let Some(module) = assemblyscript_probe() else { return };
    let upstream = Upstream::start();
    let proxy = proxy(&upstream, &module);
    let reply = get(ingress(&proxy), "/echo/as", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.upstream_saw("x-as-route").as_deref(), Some("as-route"), "from xds.route_name");
    assert_eq!(reply.upstream_saw("x-as-cluster").as_deref(), Some("service"), "from xds.cluster_name");
    // The top-level spellings are Envoy's older Wasm-only attributes (gone from Envoy 1.33): a
    // host may know them or say NotFound, never another route's name, and a NotFound does not
    // stop the filter.
    for (header, name) in [("x-as-legacy-route", "as-route"), ("x-as-legacy-cluster", "service")] {
        let seen = reply.upstream_saw(header);
        assert!(matches!(seen.as_deref(), Some(v) if v == name || v == "none"), "{header}: {seen:?}");
    }
    // The upstream's own reply passes the probe's response filter with its length.
    let length = reply.body.len().to_string();
    assert_eq!(reply.header("x-as-saw-content-length"), Some(length.as_str()));
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assemblyscript_filters_local_reply_reaches_the_client_and_its_response_filter_sees_the_length() {
    let Some(module) = assemblyscript_probe() else { return };
    let upstream = Upstream::start();
    let proxy = proxy(&upstream, &module);
    for http2 in [false, true] {
        let reply = send(&client(http2), ingress(&proxy), "GET", "/as-local", &[], "").await;
        assert_eq!((reply.status, reply.text().as_str()), (StatusCode::FORBIDDEN, LOCAL_BODY), "http2: {http2}");
        assert_eq!(reply.header("x-as-local"), Some("yes"), "the reply's extra header, http2: {http2}");
        let length = LOCAL_BODY.len().to_string();
        assert_eq!(reply.header("x-as-saw-content-length"), Some(length.as_str()), "http2: {http2}");
        assert_eq!(reply.header("content-length"), Some(length.as_str()), "http2: {http2}");
        assert_eq!(reply.header("x-upstream"), None, "answered before the upstream, http2: {http2}");
    }
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assemblyscript_response_filter_sees_a_direct_replys_length_and_none_for_an_empty_one() {
    let Some(module) = assemblyscript_probe() else { return };
    let upstream = Upstream::start();
    let proxy = proxy(&upstream, &module);
    let direct = get(ingress(&proxy), "/as-direct", &[]).await;
    assert_eq!((direct.status, direct.text().as_str()), (StatusCode::OK, DIRECT_BODY));
    let length = DIRECT_BODY.len().to_string();
    assert_eq!(direct.header("x-as-saw-content-length"), Some(length.as_str()));
    assert_eq!(direct.header("content-length"), Some(length.as_str()));

    let empty = get(ingress(&proxy), "/as-empty", &[]).await;
    assert_eq!((empty.status, empty.body.len()), (StatusCode::OK, 0));
    assert_eq!(
        empty.header("x-as-saw-content-length"),
        Some("none"),
        "Envoy removes content-length from an empty local reply before the filters see it"
    );
    proxy.shutdown();
}
