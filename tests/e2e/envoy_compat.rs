//! Envoy compatibility a filter can observe: the route resolved before the request filters run
//! (and again after them), the route and listener attributes, the configuration's metadata, the
//! connection's and the upstream's attributes, the `content-length` of local and direct replies,
//! as Envoy sets it before the response filters run (the body's length; none for an empty body),
//! and a wire length that always matches the body sent, whatever a response filter did to it.

use http::StatusCode;
use wasmtrace_proxy::RunningProxy;

use crate::fixture::client::{Reply, client, get, send};
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
        ("x-prop-xds-route-name", "props-route"),
        ("x-prop-xds-cluster-name", "service"),
        // The top-level spellings Envoy served up to 1.32 (removed in 1.33) answer as aliases.
        ("x-prop-route-name", "props-route"),
        ("x-prop-cluster-name", "service"),
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

/// The abi-probe on a listener, virtual host, route and cluster that all carry metadata, the
/// cluster's two endpoints too: the first refuses connections (`v-dead`), the second is
/// `upstream` (`v-live`). `/attrs` goes to `/echo/attrs` upstream.
fn metadata_proxy(upstream: &Upstream, dead: std::net::SocketAddr) -> RunningProxy {
    let yaml = format!(
        r#"
node: {{ id: e2e-proxy, cluster: e2e }}
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
      traffic_direction: INBOUND
      metadata: {{ filter_metadata: {{ acme: {{ tier: gold }} }} }}
      filter_chains:
        - name: chain-a
          filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      metadata: {{ filter_metadata: {{ acme: {{ zone: eu-1 }} }} }}
                      routes:
                        - name: attrs-route
                          match: {{ prefix: "/attrs" }}
                          route: {{ cluster: service, timeout: 5s, prefix_rewrite: "/echo/attrs" }}
                          metadata:
                            filter_metadata:
                              acme:
                                owner: team-x
                                weight: 3
                                canary: true
                                tags: [a, b]
                                nested: {{ k: v }}
                                nothing: null
                http_filters:{filter}
                - name: envoy.filters.http.router
                  typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: service
      type: STATIC
      connect_timeout: 1s
      metadata: {{ filter_metadata: {{ acme: {{ shard: 7 }} }} }}
      load_assignment:
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {dead_port} }} }} }}
                metadata: {{ filter_metadata: {{ envoy.lb: {{ version: v-dead }} }} }}
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {live_port} }} }} }}
                metadata: {{ filter_metadata: {{ envoy.lb: {{ version: v-live }} }} }}
"#,
        filter = wasm_filter("probe", "abi-probe", "", false),
        dead_port = dead.port(),
        live_port = upstream.addr.port(),
    );
    start(&yaml)
}

/// The `x-attr-*` response header the probe wrote in the response phase.
fn response_attr<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply.header(&format!("x-attr-{name}")).unwrap_or_else(|| panic!("x-attr-{name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_reads_the_configurations_metadata_and_the_connections_and_upstreams_attributes() {
    let upstream = Upstream::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let proxy = metadata_proxy(&upstream, dead);
    // Round-robin over the endpoints, per worker and per new connection: a worker's first request
    // goes to the dead endpoint (503), its next to the live one (pooled after that). Four
    // requests on two workers give both.
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(get(ingress(&proxy), "/attrs", &[]).await);
    }
    let (live, failed): (Vec<_>, Vec<_>) = replies.iter().partition(|r| r.status == StatusCode::OK);
    assert!(!live.is_empty() && !failed.is_empty(), "both endpoints were tried");

    // Before the upstream is chosen: the configuration, the connection, no upstream yet.
    let live_reply = live[0];
    for (name, expected) in [
        ("route-name", "attrs-route"),
        ("virtual-host-name", "all"),
        ("cluster-name", "service"),
        ("filter-chain-name", "chain-a"),
        ("listener-direction", "1"),
        ("listener-tier", "gold"),
        // envoy.config.core.v3.Metadata {filter_metadata {acme: {tier: "gold"}}} as protobuf.
        ("listener-metadata", "0a180a0461636d6512100a0e0a047469657212061a04676f6c64"),
        ("route-owner", "team-x"),
        ("route-weight", "3"),
        ("route-canary", "true"),
        ("route-tags", "a=;b="),
        ("route-tag-1", "b"),
        ("route-nested", "k=v"),
        ("route-null", "absent"),
        ("virtual-host-zone", "eu-1"),
        ("cluster-shard", "7"),
        // filter_metadata as a map: acme → its Struct as a map ({shard: 7.0}).
        ("cluster-namespaces", "acme=0x0100000005000000080000007368617264000000000000001c4000"),
        ("host-version", "absent"),
        ("dynamic-metadata", "empty"),
        ("dynamic-filter-metadata", "00000000"),
        ("connection-mtls", "false"),
        ("connection-sni", "empty"),
        ("connection-tls-version", "absent"),
        ("connection-peer-subject", "absent"),
        ("connection-termination", "absent"),
        ("upstream-address", "absent"),
        ("upstream-attempts", "0"),
        // Envoy ≤ 1.32's top-level spellings, kept as aliases.
        ("top-route-name", "attrs-route"),
        ("top-cluster-shard", "7"),
        ("top-node-id", "e2e-proxy"),
    ] {
        assert_eq!(live_reply.upstream_saw(&format!("x-attr-{name}")).as_deref(), Some(expected), "{name}");
    }
    let connection_id = live_reply.upstream_saw("x-attr-connection-id").unwrap_or_default();
    assert!(connection_id.parse::<u64>().is_ok(), "connection.id is a uint: {connection_id}");

    // After it: the host it went to, with that endpoint's metadata.
    let live_addr = upstream.addr.to_string();
    let live_port = upstream.addr.port().to_string();
    for reply in &live {
        for (name, expected) in [
            ("upstream-address", live_addr.as_str()),
            ("upstream-port", live_port.as_str()),
            ("upstream-failure", "empty"),
            ("upstream-attempts", "1"),
            ("upstream-tls-version", "absent"),
            ("upstream-locality", "empty"),
            ("host-version", "v-live"),
            ("host-metadata", "0a210a08656e766f792e6c6212150a130a0776657273696f6e12081a06762d6c697665"),
        ] {
            assert_eq!(response_attr(reply, name), expected, "{name}");
        }
        assert!(response_attr(reply, "upstream-local-address").starts_with("127.0.0.1:"));
    }
    // A refused connect still chose a host, as Envoy's pool failure does.
    let dead_addr = dead.to_string();
    for reply in &failed {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
        for (name, expected) in [
            ("upstream-address", dead_addr.as_str()),
            ("upstream-failure", "delayed connect error: Connection refused"),
            ("upstream-local-address", "absent"),
            ("upstream-attempts", "1"),
            ("host-version", "v-dead"),
        ] {
            assert_eq!(response_attr(reply, name), expected, "{name}");
        }
    }
    proxy.shutdown();
}
