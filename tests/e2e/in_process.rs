//! The filters in the application's own process (`wasmtrace-tower`): the sidecar's stream
//! semantics (local replies, a pause for a callout, body rewrites, attributes) around a server and
//! around a client; a hostile module fails only its stream, never the application's threads; a
//! hot swap of the in-process trace filter under load fails no request and loses no span at a real
//! OTLP receiver. Each server-side test runs twice: the filters as the router's layer under
//! `axum::serve`, and the filter workers serving the application's socket in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::fixture::client::{client, get, send};
use crate::fixture::collector::{Collector, string};
use crate::fixture::in_process::{Serving, filtered_app};
use crate::fixture::proxy::{bootstrap_yaml, cluster, filter_module, route, wasm_filter, wasm_filter_yaml};
use crate::fixture::upstream::{Upstream, closed_port};
use crate::hot_swap::{Sent, exactly_one_span_each, load, module_variant, post, stop_load, trace_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_module_in_process_fails_only_its_stream_and_never_the_applications_thread() {
    hostile_module_fails_only_its_stream(Serving::Layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_module_in_process_fails_only_its_stream_and_never_the_applications_thread_served_in_place() {
    hostile_module_fails_only_its_stream(Serving::InPlace).await;
}

async fn hostile_module_fails_only_its_stream(serving: Serving) {
    // The route's cluster is a closed port: in-process, the application answers in its place.
    let yaml = bootstrap_yaml(
        &[wasm_filter("hostile", "hostile", "", false)],
        &route("/", "app", "5s"),
        &[cluster("app", closed_port(), "")],
    );
    let app = filtered_app(&yaml, 2, serving).await;
    let served = get(app.addr, "/echo", &[]).await;
    assert_eq!(served.status, StatusCode::OK, "{}", served.text());
    assert!(served.upstream_saw("x-hostile-ok").is_some(), "the filter ran before the application: {}", served.text());
    let thread = served.json()["thread"].as_str().unwrap_or("").to_owned();
    assert!(
        thread.starts_with("wasmtrace-worker-"),
        "the application's handler ran on the worker that owns the stream: {thread}"
    );
    let mut answered = 1;
    for kind in ["trap", "loop", "grow"] {
        // The application's own routes are served while a worker runs the guest's endless loop.
        let misbehaving = tokio::spawn(async move { get(app.addr, "/echo", &[("x-hostile", kind)]).await });
        let started = Instant::now();
        let mut alive = 0;
        while !misbehaving.is_finished() && started.elapsed() < Duration::from_secs(10) {
            assert_eq!(get(app.addr, "/health", &[]).await.text(), "alive");
            alive += 1;
        }
        let failed = misbehaving.await.expect("the request task");
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE, "{kind}: {}", failed.text());
        assert!(failed.text().contains("wasm plugin `hostile` failed"), "{kind}: {}", failed.text());
        assert!(alive > 0, "{kind}: the application answered while the guest misbehaved");
        for _ in 0..4 {
            let next = get(app.addr, "/echo", &[]).await;
            assert_eq!(next.status, StatusCode::OK, "{kind}: {}", next.text());
            assert!(next.upstream_saw("x-hostile-ok").is_some(), "{kind}: a fresh VM filters the next request");
            answered += 1;
        }
    }
    let admin = app.filters.admin_address().expect("the bootstrap's admin API");
    let restarted = r#"wasmtrace_wasm_vm_restarts_total{plugin="hostile"} 3"#;
    let mut metrics = get(admin, "/stats/prometheus", &[]).await.text();
    // A failed VM is re-created by the next stream on its worker. Served in place, which worker
    // takes a new connection is the kernel's doing: requests until one reached it.
    for _ in 0..200 {
        if metrics.contains(restarted) || serving == Serving::Layer {
            break;
        }
        assert_eq!(get(app.addr, "/echo", &[]).await.status, StatusCode::OK);
        answered += 1;
        metrics = get(admin, "/stats/prometheus", &[]).await.text();
    }
    // The failed streams never reached the application.
    assert_eq!(app.calls.load(Ordering::Relaxed), answered);
    assert!(metrics.contains(restarted), "one VM re-created per failure: {metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_of_the_in_process_trace_filter_under_load_fails_no_request_and_loses_no_span() {
    hot_swap_under_load(Serving::Layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_of_the_in_process_trace_filter_under_load_fails_no_request_and_loses_no_span_served_in_place() {
    hot_swap_under_load(Serving::InPlace).await;
}

async fn hot_swap_under_load(serving: Serving) {
    let collector = Collector::start();
    let module_a = filter_module("trace-filter");
    let module_b = module_variant(&module_a, "in-process-b");
    let yaml = bootstrap_yaml(
        &[wasm_filter_yaml("trace", &module_a, &trace_config("1", 60_000), false, "trace")],
        &route("/", "app", "5s"),
        &[cluster("app", closed_port(), ""), cluster("otel", collector.addr, "")],
    );
    let app = filtered_app(&yaml, 2, serving).await;
    let admin = app.filters.admin_address().expect("the bootstrap's admin API");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(app.addr, 4, stop.clone());
    let mut windows = Vec::new();
    for generation in 2..=13u64 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let mut body = serde_json::json!({ "configuration": trace_config(&generation.to_string(), 60_000) });
        if generation % 2 == 0 {
            let module = if generation % 4 == 0 { &module_a } else { &module_b };
            body["module_path"] = module.display().to_string().into();
        }
        let began = Instant::now();
        let reply = post(admin, "/plugins/trace/swap", body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["swapped"][0]["generation"], generation, "{}", reply.text());
        windows.push((generation, began, Instant::now()));
    }
    tokio::time::sleep(Duration::from_millis(80)).await;
    let plugins = get(admin, "/plugins", &[]).await.json();
    assert_eq!(plugins["plugins"][0]["generation"], 13, "{plugins}");
    assert_eq!(plugins["plugins"][0]["vms_alive"], 2, "one VM per worker: {plugins}");
    let sent: Vec<Sent> = stop_load(&stop, tasks).await;
    assert!(sent.len() >= 500, "only {} requests under load", sent.len());
    let calls = app.calls.load(Ordering::Relaxed);
    app.stop().await;
    assert_eq!(calls, sent.len(), "every request reached the application once");
    let spans = collector.wait_for(sent.len()).await;
    let mut by_trace: std::collections::HashMap<String, Vec<_>> = Default::default();
    for span in spans {
        let id = span.span.trace_id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        by_trace.entry(id).or_default().push(span);
    }
    let each = exactly_one_span_each(&sent, &by_trace);
    // A request between two swaps ran on the generation published before it.
    let mut checked = 0;
    for (request, span) in sent.iter().zip(each) {
        for (i, (generation, _, published)) in windows.iter().enumerate() {
            let next_began = windows.get(i + 1).map(|w| w.1);
            if request.started > *published && next_began.is_none_or(|b| request.finished < b) {
                assert_eq!(string(&span.span, "swap.generation"), generation.to_string());
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "requests between swaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_a_server_the_filters_reply_pause_rewrite_and_read_attributes_as_in_the_sidecar() {
    stream_semantics_around_a_server(Serving::Layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_a_server_the_filters_reply_pause_rewrite_and_read_attributes_as_in_the_sidecar_served_in_place() {
    stream_semantics_around_a_server(Serving::InPlace).await;
}

async fn stream_semantics_around_a_server(serving: Serving) {
    let auth = Upstream::start();
    let yaml = bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &route("/", "app", "5s"),
        &[cluster("app", closed_port(), ""), cluster("auth", auth.addr, "")],
    );
    let app = filtered_app(&yaml, 2, serving).await;

    let local = get(app.addr, "/local", &[]).await;
    assert_eq!((local.status, local.text().as_str()), (StatusCode::FORBIDDEN, "denied by probe\n"));
    assert_eq!(local.header("x-local"), Some("yes"));
    assert_eq!(app.calls.load(Ordering::Relaxed), 0, "a local reply never reaches the application");

    // The request waits for the filter's callout (to a cluster of the bootstrap), then goes on.
    let paused = get(app.addr, "/callout", &[]).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text());
    assert_eq!(paused.upstream_saw("x-callout-status").as_deref(), Some("200"));
    assert_eq!(paused.header("x-probe-response"), Some("yes"), "the response filters ran");

    let shouted = send(&client(false), app.addr, "POST", "/body", &[], "shout this please").await;
    assert_eq!(shouted.json()["body"], "SHOUT THIS PLEASE", "the filter rewrote the body the application read");

    let props = get(app.addr, "/props", &[]).await;
    let source = props.upstream_saw("x-prop-source").unwrap_or_default();
    assert!(source.starts_with("127.0.0.1:"), "source.address from axum's ConnectInfo: {source}");
    assert_eq!(props.upstream_saw("x-prop-xds-cluster-name").as_deref(), Some("app"));
    assert_eq!(props.upstream_saw("x-prop-region").as_deref(), Some("test-region"), "xds.node.* from the bootstrap");
    assert_eq!(props.upstream_saw("x-prop-listener-direction").as_deref(), Some("1"));
    assert_eq!(props.json()["path"], "/props", "the application gets an origin-form URI");
    // HTTP/2 to the application goes through the same chain.
    let h2 = send(&client(true), app.addr, "GET", "/props", &[], "").await;
    assert!(h2.upstream_saw("x-probe").is_some(), "{}", h2.text());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_a_client_the_filters_route_by_host_and_the_request_goes_where_its_uri_says() {
    use http_body_util::BodyExt as _;
    use tower_service::Service as _;
    let upstream = Upstream::start();
    // The outbound listener routes `Host: catalog` to a cluster that is a closed port: the
    // client sends to the URI's own authority, the upstream.
    let yaml = bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &route("/", "catalog", "5s"),
        &[cluster("catalog", closed_port(), ""), cluster("auth", upstream.addr, "")],
    );
    let bootstrap = wasmtrace_config::Bootstrap::from_yaml(&yaml).expect("bootstrap");
    let options = wasmtrace_proxy::ProxyOptions { workers: 1, ..Default::default() };
    let filters = wasmtrace_tower::InProcessFilters::start(bootstrap, options).expect("filters");
    let hyper_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut filtered = tower_layer::Layer::layer(&filters.client_layer("ingress").expect("listener"), hyper_client);
    let request = http::Request::builder()
        .uri(format!("http://{}/echo/from-client", upstream.addr))
        .header("host", "catalog")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let Ok(response) = filtered.call(request).await;
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let reply = crate::fixture::client::Reply { status, headers: Default::default(), body };
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.upstream_saw("x-probe").is_some(), "the request filters ran: {}", reply.text());
    assert_eq!(reply.upstream_saw("host").as_deref(), Some("catalog"), "the Host the filters routed by");
    let relative = "http://no-authority/";
    let Ok(refused) = filtered
        .call(
            http::Request::builder()
                .uri("/relative")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "a client request needs an absolute URI, like {relative}");
    tokio::task::spawn_blocking(move || filters.shutdown()).await.expect("shutdown");
}
