//! Spans end to end: two services, each behind its own wasmtrace host with the trace filter on
//! the inbound listener (SERVER spans) and service A's outbound listener (CLIENT spans); one
//! request through both; the spans arrive at a real OTLP receiver.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use wasmtrace_proxy::RunningProxy;

use crate::fixture::client::get;
use crate::fixture::collector::{Collector, Received, attribute, string};
use crate::fixture::proxy::{
    cluster, component_module, filter_module, listener_yaml as listener, sidecar, wasm_filter_yaml,
};
use crate::fixture::upstream::{Upstream, closed_port};

fn trace_filter(service: &str, kind: &str, collector: &str, format: &str, extra: &str) -> String {
    trace_filter_of(&filter_module("trace-filter"), service, kind, collector, format, extra)
}

/// The trace filter from `module` (the proxy-wasm or the component build).
fn trace_filter_of(module: &Path, service: &str, kind: &str, collector: &str, format: &str, extra: &str) -> String {
    let config = format!(
        r#"{{"service_name": "{service}", "span_kind": "{kind}", "resource_attributes": {{"deployment.environment": "e2e"}}, "exporter": {{"cluster": "{collector}", "format": "{format}", "flush_interval_ms": 50{extra}}}}}"#
    );
    wasm_filter_yaml(&format!("trace_{kind}"), module, &config, true, "trace")
}

/// The trace filter with a whole JSON configuration.
fn trace_filter_json(kind: &str, config: &str) -> String {
    wasm_filter_yaml(&format!("trace_{kind}"), &filter_module("trace-filter"), config, true, "trace")
}

/// Service A: answers by calling service B through its sidecar's outbound listener, passing the
/// trace context on (what an instrumented application does).
fn start_service_a(outbound: Arc<OnceLock<SocketAddr>>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (client, outbound) = (client.clone(), outbound.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (client, outbound) = (client.clone(), outbound.clone());
                        async move {
                            let target = outbound.get().copied().expect("outbound address set");
                            let mut call = Request::get(format!("http://{target}{}", request.uri().path()))
                                .header("host", "catalog.local");
                            for name in ["traceparent", "tracestate"] {
                                if let Some(value) = request.headers().get(name) {
                                    call = call.header(name, value);
                                }
                            }
                            let answer = client.request(call.body(Full::new(Bytes::new())).expect("request")).await;
                            let response = match answer {
                                Ok(answer) => {
                                    let status = answer.status();
                                    let body =
                                        answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                    let mut response = Response::new(Full::new(body));
                                    *response.status_mut() = status;
                                    response
                                }
                                Err(_) => Response::new(Full::new(Bytes::from_static(b"catalog unreachable"))),
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

struct Topology {
    a: RunningProxy,
    b: RunningProxy,
    _catalog: Upstream,
}

fn topology(collector: SocketAddr, format: &str) -> Topology {
    topology_with(&filter_module("trace-filter"), collector, format)
}

/// The two-service topology with the trace filter built as `module`.
fn topology_with(module: &Path, collector: SocketAddr, format: &str) -> Topology {
    let trace_filter = |service: &str, kind: &str, collector: &str, format: &str, extra: &str| {
        trace_filter_of(module, service, kind, collector, format, extra)
    };
    let catalog = Upstream::start();
    let b = sidecar(
        &[listener("inbound", "INBOUND", &trace_filter("catalog", "server", "otel", format, ""), "catalog")],
        &[cluster("catalog", catalog.addr, ""), cluster("otel", collector, "")],
    );
    let b_inbound = b.listener_address("inbound").expect("B inbound");
    let outbound = Arc::new(OnceLock::new());
    let service_a = start_service_a(outbound.clone());
    let a = sidecar(
        &[
            listener("inbound", "INBOUND", &trace_filter("api", "server", "otel", format, ""), "api"),
            listener("outbound", "OUTBOUND", &trace_filter("api", "client", "otel", format, ""), "catalog_sidecar"),
        ],
        &[cluster("api", service_a, ""), cluster("catalog_sidecar", b_inbound, ""), cluster("otel", collector, "")],
    );
    let _ = outbound.set(a.listener_address("outbound").expect("A outbound"));
    Topology { a, b, _catalog: catalog }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(AnyValue::IntValue(i)) => *i,
        other => panic!("{key} is {other:?} on {}", span.name),
    }
}

async fn one_request_gives_one_linked_trace(format: &str, content_type: &str) {
    let collector = Collector::start();
    let topology = topology(collector.addr, format);
    let reply = get(
        topology.a.listener_address("inbound").expect("A inbound"),
        "/v0/images/42?limit=3",
        &[("user-agent", "e2e-test/1")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let spans = collector.wait_for(3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(spans.iter().all(|r| r.content_type == content_type));
    let find = |service: &str, kind: i32| -> &Received {
        spans
            .iter()
            .find(|r| r.service == service && r.span.kind == kind)
            .unwrap_or_else(|| panic!("no {service} kind {kind} in {spans:#?}"))
    };
    let api_server = &find("api", 2).span;
    let api_client = &find("api", 3).span;
    let catalog_server = &find("catalog", 2).span;
    assert!(api_server.parent_span_id.is_empty(), "the first hop starts the trace");
    assert_eq!(api_client.trace_id, api_server.trace_id);
    assert_eq!(catalog_server.trace_id, api_server.trace_id);
    assert_eq!(api_client.parent_span_id, api_server.span_id, "the outbound call is a child of the inbound span");
    assert_eq!(catalog_server.parent_span_id, api_client.span_id, "the next service's span is a child of the call");
    assert_eq!(api_server.name, "GET /v0/images/{id}");
    assert_eq!(api_client.name, "GET catalog.local");
    assert_eq!(catalog_server.name, "GET /v0/images/{id}");
    assert_eq!(string(api_server, "http.request.method"), "GET");
    assert_eq!(string(api_server, "url.path"), "/v0/images/42");
    assert_eq!(string(api_server, "url.scheme"), "http");
    assert_eq!(string(api_server, "user_agent.original"), "e2e-test/1");
    assert_eq!(string(api_server, "client.address"), "127.0.0.1");
    assert_eq!(int(api_server, "http.response.status_code"), 200);
    assert_eq!(string(api_client, "server.address"), "catalog.local");
    assert_eq!(int(api_client, "server.port"), 80, "the scheme's port when the authority has none");
    assert_eq!(string(api_client, "url.full"), "http://catalog.local/v0/images/42");
    assert_eq!(string(api_client, "network.peer.address"), "127.0.0.1", "the upstream, not the local app");
    assert!(attribute(api_client, "client.address").is_none(), "a CLIENT span has no client.address");
    assert_eq!(string(api_server, "network.protocol.version"), "1.1");
    assert_eq!(int(catalog_server, "http.response.status_code"), 200);
    // OpenTelemetry's stable HTTP conventions: every required attribute (and every recommended
    // one a proxy can know) on each kind; conditionally required ones where they apply
    // (`user_agent.original` when the client sent one: checked above).
    let has = |span: &Span, keys: &[&str]| -> Vec<String> {
        keys.iter().filter(|key| attribute(span, key).is_none()).map(|key| (*key).to_owned()).collect()
    };
    let server = [
        "http.request.method",
        "url.path",
        "url.scheme",
        "http.response.status_code",
        "server.address",
        "client.address",
        "network.peer.address",
        "network.peer.port",
        "network.protocol.version",
    ];
    let client = [
        "http.request.method",
        "server.address",
        "server.port",
        "url.full",
        "http.response.status_code",
        "network.peer.address",
        "network.peer.port",
        "network.protocol.version",
    ];
    for (span, expected) in [(api_server, &server[..]), (catalog_server, &server[..]), (api_client, &client[..])] {
        assert_eq!(has(span, expected), Vec::<String>::new(), "missing on {} (kind {})", span.name, span.kind);
    }
    for span in [api_server, api_client, catalog_server] {
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(0), "2xx leaves the status unset");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
    assert!(api_server.start_time_unix_nano <= api_client.start_time_unix_nano);
    assert!(api_client.end_time_unix_nano <= api_server.end_time_unix_nano);
    topology.a.shutdown();
    topology.b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_services_gives_one_linked_trace_in_otlp_protobuf() {
    one_request_gives_one_linked_trace("otlp_proto", "application/x-protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_services_gives_one_linked_trace_in_otlp_json() {
    one_request_gives_one_linked_trace("otlp_json", "application/json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_mark_the_span_and_an_incoming_context_is_continued() {
    let collector = Collector::start();
    let upstream = Upstream::start();
    let proxy = sidecar(
        &[listener("inbound", "INBOUND", &trace_filter("api", "server", "otel", "otlp_proto", ""), "dead")],
        &[
            cluster("dead", closed_port(), ""),
            cluster("otel", collector.addr, ""),
            cluster("unused", upstream.addr, ""),
        ],
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = get(
        proxy.listener_address("inbound").expect("inbound"),
        "/v0/images",
        &[("traceparent", parent), ("tracestate", "vendor=opaque")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let spans = collector.wait_for(1).await;
    let span = &spans[0].span;
    assert_eq!(span.trace_id, hex("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(span.parent_span_id, hex("00f067aa0ba902b7"));
    assert_eq!(span.trace_state, "vendor=opaque");
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(2), "5xx on a SERVER span is an error");
    assert_eq!(string(span, "error.type"), "503");
    assert_eq!(span.flags & 0x300, 0x300, "the parent is remote");
    proxy.shutdown();
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_requests_are_served_and_lost_spans_are_counted() {
    let upstream = Upstream::start();
    let proxy = sidecar(
        &[listener(
            "inbound",
            "INBOUND",
            &trace_filter("api", "server", "otel", "otlp_proto", r#", "batch_size": 2, "max_queued_spans": 4"#),
            "service",
        )],
        &[cluster("service", upstream.addr, ""), cluster("otel", closed_port(), "")],
    );
    let inbound = proxy.listener_address("inbound").expect("inbound");
    for _ in 0..40 {
        assert_eq!(get(inbound, "/echo", &[]).await.status, StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stats = get(proxy.admin_address().expect("admin"), "/stats/prometheus", &[]).await.text();
    let value = |name: &str| -> u64 {
        stats.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let dropped = value("wasmtrace_trace_spans_dropped_total");
    assert_eq!(value("wasmtrace_trace_spans_exported_total"), 0);
    assert!(
        dropped >= 40 - 2 * (4 + 2),
        "dropped {dropped} of 40 with two workers each holding 4 queued and 2 in flight\n{stats}"
    );
    proxy.shutdown();
}

fn plain_filter(name: &str, crate_name: &str, configuration: &str) -> String {
    wasm_filter_yaml(name, &filter_module(crate_name), configuration, false, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_tagging_filters_compose_with_the_trace_filter() {
    let collector = Collector::start();
    let upstream = Upstream::start();
    let rules = r#"{"rules": [{"attribute": "gallery.tenant", "request_header": "x-tenant"}, {"attribute": "gallery.api_version", "path_segment": 0}, {"attribute": "gallery.failed", "status_at_least": 500, "value": "yes"}, {"attribute": "deployment.color", "value": "blue"}]}"#;
    let filters = [
        plain_filter("request_id", "request-id-filter", "{}"),
        plain_filter("tagging", "tagging-filter", rules),
        trace_filter("api", "server", "otel", "otlp_proto", ""),
    ]
    .concat();
    let yaml_listener = listener("inbound", "INBOUND", &filters, "service");
    let proxy =
        sidecar(&[yaml_listener], &[cluster("service", upstream.addr, ""), cluster("otel", collector.addr, "")]);
    let reply = get(
        proxy.listener_address("inbound").expect("inbound"),
        "/v0/images",
        &[("x-tenant", "acme"), ("x-request-id", "")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let request_id = reply.header("x-request-id").expect("echoed on the response").to_owned();
    assert_eq!(request_id.len(), 36, "generated UUID: {request_id}");
    assert_eq!(reply.upstream_saw("x-request-id").as_deref(), Some(request_id.as_str()));
    let spans = collector.wait_for(1).await;
    let span = &spans[0].span;
    assert_eq!(string(span, "gallery.tenant"), "acme");
    assert_eq!(string(span, "gallery.api_version"), "v0");
    assert_eq!(string(span, "deployment.color"), "blue");
    assert!(attribute(span, "gallery.failed").is_none(), "a 200 is not a failure");
    assert_eq!(string(span, "http.request.header.x-request-id"), request_id);
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_services_gives_one_linked_trace_in_zipkin_json() {
    let collector = Collector::start();
    let topology = topology(collector.addr, "zipkin_json");
    let reply = get(topology.a.listener_address("inbound").expect("A inbound"), "/v0/images/42", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let spans = collector.wait_for_zipkin(3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let find = |service: &str, kind: &str| {
        spans
            .iter()
            .find(|s| s["localEndpoint"]["serviceName"] == service && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {service} {kind} in {spans:#?}"))
    };
    let (api_server, api_client, catalog_server) =
        (find("api", "SERVER"), find("api", "CLIENT"), find("catalog", "SERVER"));
    assert!(api_server.get("parentId").is_none());
    assert_eq!(api_client["traceId"], api_server["traceId"]);
    assert_eq!(catalog_server["traceId"], api_server["traceId"]);
    assert_eq!(api_client["parentId"], api_server["id"]);
    assert_eq!(catalog_server["parentId"], api_client["id"]);
    assert_eq!(api_server["name"], "GET /v0/images/{id}");
    assert_eq!(api_client["name"], "GET catalog.local");
    assert_eq!(catalog_server["tags"]["http.response.status_code"], "200");
    assert!(api_server["duration"].as_u64().is_some_and(|d| d > 0));
    topology.a.shutdown();
    topology.b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b3_context_is_continued_as_w3c_and_the_b3_headers_are_stripped_when_configured() {
    let collector = Collector::start();
    let upstream = Upstream::start();
    let config = r#"{"service_name": "api", "extract": ["w3c", "b3multi"], "inject": ["w3c"], "strip_uninjected": true, "exporter": {"cluster": "otel"}}"#;
    let filter = trace_filter_json("server", config);
    let proxy = sidecar(
        &[listener("inbound", "INBOUND", &filter, "service")],
        &[cluster("service", upstream.addr, ""), cluster("otel", collector.addr, "")],
    );
    let reply = get(
        proxy.listener_address("inbound").expect("inbound"),
        "/echo",
        &[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let traceparent = reply.upstream_saw("traceparent").expect("W3C injected");
    assert!(traceparent.starts_with("00-463ac35c9f6413ad48485a3953bb6124-"), "{traceparent}");
    assert_eq!(reply.upstream_saw("x-b3-traceid"), None, "B3 headers stripped");
    assert_eq!(reply.upstream_saw("x-b3-spanid"), None);
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_span_kind_the_listener_direction_decides_server_or_client() {
    // One configuration on both listeners, as an Istio CLIENT_AND_SERVER WasmPlugin attaches it.
    let collector = Collector::start();
    let upstream = Upstream::start();
    let config = r#"{"service_name": "mesh", "exporter": {"cluster": "otel", "flush_interval_ms": 50}}"#;
    let proxy = sidecar(
        &[
            listener("inbound", "INBOUND", &trace_filter_json("inbound", config), "app"),
            listener("outbound", "OUTBOUND", &trace_filter_json("outbound", config), "app"),
        ],
        &[cluster("app", upstream.addr, ""), cluster("otel", collector.addr, "")],
    );
    for name in ["inbound", "outbound"] {
        let reply = get(proxy.listener_address(name).expect(name), "/v0/items", &[("host", "items.local")]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let spans = collector.wait_for(2).await;
    let mut kinds: Vec<(i32, String)> = spans.iter().map(|r| (r.span.kind, r.span.name.clone())).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![(2, "GET /v0/items".to_owned()), (3, "GET items.local".to_owned())],
        "SERVER inbound, CLIENT outbound"
    );
    proxy.shutdown();
}

/// A span with what differs between two runs of the same requests left out (ids, times,
/// ephemeral ports, and the module's sha256 once checked to be `module_sha256`), its parent
/// named by the same description.
fn comparable(spans: &[Received], module_sha256: &str) -> Vec<String> {
    let describe = |r: &Received| {
        let mut attributes: Vec<String> = r
            .span
            .attributes
            .iter()
            .filter(|kv| !matches!(kv.key.as_str(), "server.port" | "network.peer.port"))
            .map(|kv| match kv.key.as_str() {
                // Generated by the proxy per request: present in both, equal in neither.
                "http.request.header.x-request-id" => format!("{}=<generated>", kv.key),
                // Which module made the span: each build its own.
                "wasmtrace.filter.sha256" => {
                    let value = kv.value.as_ref().and_then(|v| v.value.clone());
                    let expected = Some(AnyValue::StringValue(module_sha256.to_owned()));
                    if value == expected {
                        format!("{}=<the module's>", kv.key)
                    } else {
                        format!("{}={value:?}", kv.key)
                    }
                }
                key => format!("{key}={:?}", kv.value.as_ref().and_then(|v| v.value.clone())),
            })
            .collect();
        attributes.sort();
        format!(
            "{} kind={} name={:?} status={:?} links={} attributes=[{}]",
            r.service,
            r.span.kind,
            r.span.name,
            r.span.status.as_ref().map(|s| s.code),
            r.span.links.len(),
            attributes.join(", ")
        )
    };
    let mut described: Vec<String> = spans
        .iter()
        .map(|r| {
            let parent =
                spans.iter().find(|p| p.span.span_id == r.span.parent_span_id && !r.span.parent_span_id.is_empty());
            format!(
                "{} <- {}",
                describe(r),
                parent.map_or("root".to_owned(), |p| format!("{} {}", p.service, p.span.name))
            )
        })
        .collect();
    described.sort();
    described
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_component_build_of_the_trace_filter_gives_the_same_spans_as_the_proxy_wasm_build() {
    let mut runs = Vec::new();
    for module in [filter_module("trace-filter"), component_module("trace-filter")] {
        let collector = Collector::start();
        let topology = topology_with(&module, collector.addr, "otlp_proto");
        let reply = get(
            topology.a.listener_address("inbound").expect("A inbound"),
            "/v0/images/42?limit=3",
            &[("user-agent", "e2e-test/1"), ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let spans = collector.wait_for(3).await;
        assert_eq!(spans.len(), 3, "{}: {spans:#?}", module.display());
        assert!(
            spans.iter().all(|r| r.span.trace_id == hex("4bf92f3577b34da6a3ce929d0e0e4736")),
            "{} continues the incoming trace",
            module.display()
        );
        let sha256 = wasmtrace_runtime::hex_sha256(&std::fs::read(&module).expect("the module"));
        runs.push(comparable(&spans, &sha256));
        topology.a.shutdown();
        topology.b.shutdown();
    }
    assert_eq!(runs[0].len(), 3);
    assert_eq!(runs[1], runs[0], "component spans (left) vs proxy-wasm spans (right)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_span_says_which_generation_and_module_made_it_unless_configured_not_to() {
    let sha256 = wasmtrace_runtime::hex_sha256(&std::fs::read(filter_module("trace-filter")).expect("the module"));
    for (record, expected) in [("", Some(1)), (r#""record_filter_provenance": false, "#, None)] {
        let collector = Collector::start();
        let upstream = Upstream::start();
        let config = format!(
            r#"{{"service_name": "api", "span_kind": "server", {record}"exporter": {{"cluster": "otel", "flush_interval_ms": 50}}}}"#
        );
        let proxy = sidecar(
            &[listener("inbound", "INBOUND", &trace_filter_json("server", &config), "app")],
            &[cluster("app", upstream.addr, ""), cluster("otel", collector.addr, "")],
        );
        let reply = get(proxy.listener_address("inbound").expect("inbound"), "/v0/images", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        let spans = collector.wait_for(1).await;
        let span = &spans[0].span;
        let generation = attribute(span, "wasmtrace.filter.generation").cloned();
        assert_eq!(generation, expected.map(AnyValue::IntValue), "{config}");
        let module = attribute(span, "wasmtrace.filter.sha256").cloned();
        assert_eq!(module, expected.map(|_| AnyValue::StringValue(sha256.clone())), "{config}");
        proxy.shutdown();
    }
}
