//! Hot swap under load: the trace filter's module and configuration are replaced while client
//! tasks keep sending requests, and every request still succeeds and leaves exactly one span
//! at a real OTLP receiver, carrying the behaviour of the generation that served it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::{ProxyOptions, RunningProxy};

use crate::fixture::client::{Reply, client, get, send};
use crate::fixture::collector::{Collector, Received, string};
use crate::fixture::proxy::{
    bootstrap_yaml, cluster, component_module, filter_module, ingress, route, start, start_with, wasm_filter_yaml,
    workspace_root,
};
use crate::fixture::upstream::Upstream;

/// The trace filter's configuration for generation `tag`: the tag shows on every span. Spans
/// leave a VM only when it is replaced (or shut down), unless `flush_ms` is short: the drain
/// flush is what is under test.
pub(crate) fn trace_config(tag: &str, flush_ms: u64) -> String {
    format!(
        r#"{{"service_name": "swapped", "static_attributes": {{"swap.generation": "{tag}"}}, "exporter": {{"cluster": "otel", "flush_interval_ms": {flush_ms}, "batch_size": 4096, "max_queued_spans": 65536}}}}"#
    )
}

fn trace_proxy_yaml(module: &Path, config: &str, upstream: SocketAddr, collector: SocketAddr) -> String {
    bootstrap_yaml(
        &[wasm_filter_yaml("trace", module, config, false, "trace")],
        &route("/", "service", "5s"),
        &[cluster("service", upstream, ""), cluster("otel", collector, "")],
    )
}

/// An upstream, a collector, and a proxy with the trace filter (plugin `trace`) in front of them.
fn trace_proxy(tag: &str, flush_ms: u64) -> (Upstream, Collector, RunningProxy) {
    let upstream = Upstream::start();
    let collector = Collector::start();
    let module = filter_module("trace-filter");
    let proxy = start(&trace_proxy_yaml(&module, &trace_config(tag, flush_ms), upstream.addr, collector.addr));
    (upstream, collector, proxy)
}

/// A copy of `module` with a custom section appended: other bytes and sha256, the same code.
pub(crate) fn module_variant(module: &Path, tag: &str) -> PathBuf {
    let mut bytes = std::fs::read(module).expect("module");
    let name = b"wasmtrace.variant";
    let payload = tag.as_bytes();
    let content_len = 1 + name.len() + payload.len();
    assert!(content_len < 128 && name.len() < 128, "one-byte LEB128 sizes");
    bytes.push(0); // custom section
    bytes.push(content_len as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = workspace_root().join(format!("target/e2e-modules/trace-filter-{tag}.wasm"));
    std::fs::write(&path, bytes).expect("write variant");
    path
}

/// One request as the client saw it.
pub(crate) struct Sent {
    pub(crate) trace_id: String,
    pub(crate) started: Instant,
    pub(crate) finished: Instant,
    pub(crate) status: StatusCode,
}

/// Client tasks sending requests with their own trace ids until `stop` is set.
pub(crate) fn load(addr: SocketAddr, tasks: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Sent>>> {
    (0..tasks)
        .map(|task| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client(task % 2 == 1);
                let mut sent = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let trace_id = format!("{:08x}{:024x}", 0xabc0_0000u32 + task as u32, sent.len() + 1);
                    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
                    let started = Instant::now();
                    let reply = send(&client, addr, "GET", "/echo", &[("traceparent", &traceparent)], "").await;
                    sent.push(Sent { trace_id, started, finished: Instant::now(), status: reply.status });
                }
                sent
            })
        })
        .collect()
}

pub(crate) async fn stop_load(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<Vec<Sent>>>) -> Vec<Sent> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all
}

pub(crate) async fn post(admin: SocketAddr, path: &str, body: serde_json::Value) -> Reply {
    send(&client(false), admin, "POST", path, &[("content-type", "application/json")], &body.to_string()).await
}

/// Shuts the proxy down (its last generation flushes) and returns every span, indexed by trace id.
async fn spans_after_shutdown(
    proxy: RunningProxy,
    collector: &Collector,
    expected: usize,
) -> HashMap<String, Vec<Received>> {
    tokio::task::spawn_blocking(move || proxy.shutdown()).await.expect("shutdown");
    let spans = collector.wait_for(expected).await;
    let mut by_trace: HashMap<String, Vec<Received>> = HashMap::new();
    for span in spans {
        let id = span.span.trace_id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        by_trace.entry(id).or_default().push(span);
    }
    by_trace
}

/// Every request succeeded and left exactly one span; returns each request's span.
pub(crate) fn exactly_one_span_each<'a>(sent: &[Sent], spans: &'a HashMap<String, Vec<Received>>) -> Vec<&'a Received> {
    let failed = sent.iter().filter(|s| s.status != StatusCode::OK).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed", sent.len());
    let total: usize = spans.values().map(Vec::len).sum();
    let mut lost = 0;
    let mut duplicated = 0;
    let mut each = Vec::new();
    for request in sent {
        match spans.get(&request.trace_id).map(Vec::as_slice) {
            Some([one]) => each.push(one),
            Some(many) if many.len() > 1 => duplicated += 1,
            _ => lost += 1,
        }
    }
    assert_eq!((lost, duplicated), (0, 0), "spans lost / duplicated of {} requests", sent.len());
    assert_eq!(total, sent.len(), "spans that belong to no request");
    each
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_and_configuration_swaps_under_load_fail_no_request_and_lose_no_span() {
    let (_upstream, collector, proxy) = trace_proxy("1", 60_000);
    let module_a = filter_module("trace-filter");
    let module_b = module_variant(&module_a, "b");
    let admin = proxy.admin_address().expect("admin");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(ingress(&proxy), 4, stop.clone());

    // Generation k (2..=25) tags spans with "k"; even generations also change the module.
    let mut windows = Vec::new();
    let mut module_swaps = 0;
    for generation in 2..=25u64 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut body = serde_json::json!({ "configuration": trace_config(&generation.to_string(), 60_000) });
        if generation % 2 == 0 {
            let module = if generation % 4 == 0 { &module_a } else { &module_b };
            body["module_path"] = module.display().to_string().into();
            module_swaps += 1;
        }
        let began = Instant::now();
        let reply = post(admin, "/plugins/trace/swap", body).await;
        let ended = Instant::now();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let outcome = reply.json();
        assert_eq!(outcome["outcome"], "swapped", "{outcome}");
        assert_eq!(outcome["swapped"][0]["generation"], generation);
        assert_eq!(outcome["swapped"][0]["module_changed"], generation % 2 == 0);
        windows.push((generation, began, ended));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let plugins = get(admin, "/plugins", &[]).await.json();
    let trace = &plugins["plugins"][0];
    assert_eq!(trace["generation"], 25);
    assert_eq!(trace["swaps"], 24);
    assert_eq!(trace["swap_refusals"], 0);
    assert_eq!(trace["vms_alive"], 2, "one VM per worker");
    let metrics = get(admin, "/stats/prometheus", &[]).await.text();
    for line in [
        r#"wasmtrace_plugin_generation{listener="ingress",plugin="trace"} 25"#,
        r#"wasmtrace_plugin_swaps_total{listener="ingress",plugin="trace"} 24"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let sent = stop_load(&stop, tasks).await;
    assert!(sent.len() >= 1000, "only {} requests under load", sent.len());
    assert_eq!(module_swaps, 12);

    let spans = spans_after_shutdown(proxy, &collector, sent.len()).await;
    let each = exactly_one_span_each(&sent, &spans);

    // A request that started after swap k was published and ended before swap k+1 was asked for
    // ran on generation k.
    let mut checked = vec![0usize; windows.len()];
    for (request, span) in sent.iter().zip(each) {
        let tag = string(&span.span, "swap.generation");
        for (i, (generation, _, published)) in windows.iter().enumerate() {
            let next_began = windows.get(i + 1).map(|w| w.1);
            if request.started > *published && next_began.is_none_or(|b| request.finished < b) {
                assert_eq!(tag, generation.to_string(), "a request between swap {generation} and the next");
                checked[i] += 1;
            }
        }
    }
    assert!(checked.iter().all(|&n| n > 0), "requests between every pair of swaps: {checked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_swap_serves_quick_code_then_the_optimised_code_failing_no_request_and_losing_no_span() {
    let upstream = Upstream::start();
    let collector = Collector::start();
    let module_a = filter_module("trace-filter");
    let yaml = trace_proxy_yaml(&module_a, &trace_config("1", 60_000), upstream.addr, collector.addr);
    let options = ProxyOptions {
        workers: 2,
        runtime: wasmtrace_runtime::RuntimeOptions { tiered_swaps: true, ..Default::default() },
        ..ProxyOptions::default()
    };
    let proxy = start_with(&yaml, options);
    let admin = proxy.admin_address().expect("admin");
    let original = get(admin, "/plugins", &[]).await.json()["plugins"][0]["sha256"].clone();
    // A module this process never compiled (new bytes), so the quick tier compiles it.
    let never_seen = module_variant(&module_a, "tiered");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(ingress(&proxy), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let body = serde_json::json!({ "module_path": never_seen.display().to_string(), "configuration": trace_config("2", 60_000) });
    let reply = post(admin, "/plugins/trace/swap", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let outcome = reply.json();
    assert_eq!(outcome["optimising"], true, "{outcome}");
    assert_eq!(outcome["swapped"][0]["generation"], 2, "{outcome}");
    let swapped_sha = outcome["swapped"][0]["sha256"].clone();
    let source_of = |plugin: &serde_json::Value, generation: u64| {
        let generations = plugin["generations"].as_array().cloned().unwrap_or_default();
        generations.into_iter().find(|g| g["generation"] == generation).map(|g| g["module_source"].clone())
    };
    assert_eq!(outcome["swapped"][0]["module_source"], "quick compile", "{outcome}");
    // The optimised code follows as generation 3: same module, same configuration.
    let optimised = wait_for_plugin(admin, "the optimised generation", |p| p["generation"] == 3).await;
    assert_eq!(source_of(&optimised, 3), Some("compiled".into()), "{optimised}");
    assert_eq!(optimised["sha256"], swapped_sha, "{optimised}");
    assert_eq!(optimised["swaps"], 1, "a tier-up is the second half of one swap: {optimised}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = stop_load(&stop, tasks).await;

    // The rollback target is what served before the swap, not the quick code.
    let rolled = post(admin, "/plugins/trace/rollback", serde_json::json!({})).await;
    assert_eq!(rolled.status, StatusCode::OK, "{}", rolled.text());
    assert_eq!(rolled.json()["swapped"][0]["sha256"], original, "{}", rolled.text());

    let spans = spans_after_shutdown(proxy, &collector, sent.len()).await;
    let each = exactly_one_span_each(&sent, &spans);
    let after_swap = sent.iter().zip(each).filter(|(_, span)| string(&span.span, "swap.generation") == "2").count();
    assert!(after_swap > 0, "requests served by the swapped configuration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_between_the_proxy_wasm_and_the_component_build_under_load_fail_no_request_and_lose_no_span() {
    let (_upstream, collector, proxy) = trace_proxy("1", 60_000);
    let (proxy_wasm, component) = (filter_module("trace-filter"), component_module("trace-filter"));
    let admin = proxy.admin_address().expect("admin");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(ingress(&proxy), 4, stop.clone());
    // Even generations run the component, odd ones the proxy-wasm module; every replaced
    // generation flushes its spans on the way out (on-shutdown / proxy_on_done).
    for generation in 2..=9u64 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let module = if generation % 2 == 0 { &component } else { &proxy_wasm };
        let body = serde_json::json!({
            "module_path": module.display().to_string(),
            "configuration": trace_config(&generation.to_string(), 60_000),
        });
        let reply = post(admin, "/plugins/trace/swap", body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let outcome = reply.json();
        assert_eq!(outcome["swapped"][0]["module_changed"], true, "{outcome}");
    }
    tokio::time::sleep(Duration::from_millis(80)).await;
    let plugins = get(admin, "/plugins", &[]).await.json();
    assert_eq!(plugins["plugins"][0]["generation"], 9);
    let sent = stop_load(&stop, tasks).await;
    let spans = spans_after_shutdown(proxy, &collector, sent.len()).await;
    let each = exactly_one_span_each(&sent, &spans);
    let generations: std::collections::BTreeSet<String> =
        each.iter().map(|span| string(&span.span, "swap.generation")).collect();
    assert!(generations.len() >= 6, "requests on most generations of both forms: {generations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_swaps_are_refused_under_load_and_the_old_generation_keeps_serving() {
    let (_upstream, collector, proxy) = trace_proxy("1", 50);
    let admin = proxy.admin_address().expect("admin");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(ingress(&proxy), 4, stop.clone());

    let hostile = filter_module("hostile");
    let refusals = [
        (serde_json::json!({ "module_base64": "bm90IGEgd2FzbSBtb2R1bGU=" }), "not a WebAssembly binary"),
        // An empty but valid module: it has none of the proxy-wasm ABI.
        (serde_json::json!({ "module_base64": "AGFzbQEAAAA=" }), "does not load"),
        (
            serde_json::json!({ "module_path": hostile.display().to_string(), "configuration": "trap-on-configure" }),
            "proxy_on_configure",
        ),
        (serde_json::json!({ "configuration": "{\"service_name\": 7}" }), "proxy_on_configure"),
        // The answer carries what the filter logged while refusing, not only that it refused.
        (
            serde_json::json!({ "configuration": "{\"service_name\": \"x\", \"attributes\": {}, \"exporter\": {\"cluster\": \"otel\"}}" }),
            "unknown field `attributes`",
        ),
        (serde_json::json!({ "module_path": "/nonexistent/filter.wasm" }), "cannot open the module"),
    ];
    for (body, reason) in &refusals {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reply = post(admin, "/plugins/trace/swap", body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", reply.text());
        let outcome = reply.json();
        assert_eq!(outcome["outcome"], "refused");
        assert!(outcome["error"].as_str().is_some_and(|e| e.contains(reason)), "{body}: {outcome}");
    }
    assert_eq!(post(admin, "/plugins/nope/swap", serde_json::json!({"configuration": ""})).await.status, 404);
    assert_eq!(post(admin, "/plugins/trace/swap", serde_json::json!({"modul": 1})).await.status, 400);

    let plugins = get(admin, "/plugins", &[]).await.json();
    let trace = &plugins["plugins"][0];
    assert_eq!(trace["generation"], 1, "{trace}");
    assert_eq!(trace["swap_refusals"], refusals.len());
    let refused_at = Instant::now();

    // A good swap after the refusals, then a rollback to the first generation.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = post(admin, "/plugins/trace/swap", serde_json::json!({ "configuration": trace_config("2", 50) })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let swapped_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = post(admin, "/plugins/trace/rollback", serde_json::json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let rolled_back_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = stop_load(&stop, tasks).await;

    let plugins = get(admin, "/plugins", &[]).await.json();
    let trace = &plugins["plugins"][0];
    let generation = trace["generation"].as_u64().expect("generation");
    assert_eq!(trace["rollback_to"]["generation"], generation - 1, "{trace}");
    let spans = spans_after_shutdown(proxy, &collector, sent.len()).await;
    let each = exactly_one_span_each(&sent, &spans);
    let tag_of = |from: Option<Instant>, to: Instant| -> Vec<String> {
        sent.iter()
            .zip(&each)
            .filter(|(r, _)| from.is_none_or(|from| r.started > from) && r.finished < to)
            .map(|(_, span)| string(&span.span, "swap.generation"))
            .collect()
    };
    let before = tag_of(None, refused_at);
    assert!(!before.is_empty() && before.iter().all(|t| t == "1"), "refusals changed nothing");
    let after_swap = tag_of(Some(swapped_at), swapped_at + Duration::from_millis(90));
    assert!(!after_swap.is_empty() && after_swap.iter().all(|t| t == "2"));
    let after_rollback = tag_of(Some(rolled_back_at), Instant::now());
    assert!(!after_rollback.is_empty() && after_rollback.iter().all(|t| t == "1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_finishes_on_the_generation_it_started_on() {
    let (_upstream, collector, proxy) = trace_proxy("old", 50);
    let admin = proxy.admin_address().expect("admin");
    let addr = ingress(&proxy);
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    // `/slow` answers after two seconds: the swap happens while it is in flight.
    let slow = tokio::spawn(async move { get(addr, "/slow", &[("traceparent", traceparent)]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply =
        post(admin, "/plugins/trace/swap", serde_json::json!({ "configuration": trace_config("new", 50) })).await;
    assert_eq!(reply.status, StatusCode::OK);
    let plugins = get(admin, "/plugins", &[]).await.json();
    let generations = plugins["plugins"][0]["generations"].as_array().cloned().unwrap_or_default();
    assert!(
        generations.iter().any(|g| g["state"] == "draining" && g["generation"] == 1 && g["vms_alive"] != 0),
        "the old generation drains while its stream is open: {generations:?}"
    );
    assert_eq!(get(addr, "/echo", &[]).await.status, StatusCode::OK);
    assert_eq!(slow.await.expect("slow request").status, StatusCode::OK);
    let spans = collector.wait_for(2).await;
    let tags: HashMap<String, String> =
        spans.iter().map(|s| (s.span.name.clone(), string(&s.span, "swap.generation"))).collect();
    assert_eq!(tags.get("GET /slow").map(String::as_str), Some("old"), "{tags:?}");
    assert_eq!(tags.get("GET /echo").map(String::as_str), Some("new"), "{tags:?}");
    // Once its stream ended, the old generation flushed and went away.
    wait_for_plugin(admin, "the old generation finishes draining", |trace| {
        trace["generations"].as_array().is_some_and(|g| g.iter().all(|g| g["state"] == "active"))
    })
    .await;
    proxy.shutdown();
}

/// Writes `text` to `path` the way deploy tools do: a temporary file renamed over the old one.
fn replace_atomically(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

async fn wait_for_plugin(admin: SocketAddr, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let plugins = get(admin, "/plugins", &[]).await.json();
        let trace = plugins["plugins"][0].clone();
        if ok(&trace) {
            return trace;
        }
        assert!(Instant::now() < deadline, "{what}: {trace}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_module_and_configuration_files_are_swapped_in() {
    let upstream = Upstream::start();
    let collector = Collector::start();
    let dir = workspace_root().join("target/e2e-hot-swap-files");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let module = dir.join("trace.wasm");
    let original = std::fs::read(filter_module("trace-filter")).expect("module");
    std::fs::write(&module, &original).expect("copy module");
    let config_path = dir.join("envoy.yaml");
    let yaml = |tag: &str| trace_proxy_yaml(&module, &trace_config(tag, 50), upstream.addr, collector.addr);
    std::fs::write(&config_path, yaml("file-1")).expect("config");
    let options = ProxyOptions {
        workers: 2,
        watch_modules: true,
        watch_config: Some(config_path.clone()),
        ..ProxyOptions::default()
    };
    let bootstrap = Bootstrap::from_file(&config_path).expect("config loads");
    let proxy = wasmtrace_proxy::start(bootstrap, options).expect("proxy");
    let admin = proxy.admin_address().expect("admin");
    let addr = ingress(&proxy);
    let first = wait_for_plugin(admin, "started", |t| t["generation"] == 1).await;

    // The module file is replaced (same code, other bytes).
    let variant = std::fs::read(module_variant(&module, "file")).expect("variant");
    replace_atomically(&module, &variant);
    let swapped = wait_for_plugin(admin, "module file swapped in", |t| t["sha256"] != first["sha256"]).await;
    assert_eq!(swapped["generation"], 2);

    // The configuration file changes the plugin's configuration.
    replace_atomically(&config_path, yaml("file-2").as_bytes());
    wait_for_plugin(admin, "configuration change swapped in", |t| t["generation"] == 3).await;
    assert_eq!(get(addr, "/echo", &[]).await.status, StatusCode::OK);
    let spans = collector.wait_for(1).await;
    assert_eq!(string(&spans[0].span, "swap.generation"), "file-2");

    // A broken configuration file is ignored; so is a broken module file (refused).
    replace_atomically(&config_path, b"static_resources: [not, a, bootstrap");
    replace_atomically(&module, b"not wasm");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = wait_for_plugin(admin, "unchanged", |_| true).await;
    assert_eq!(after["generation"], 3, "{after}");
    assert_eq!(after["swap_refusals"], 1, "the broken module was refused: {after}");
    assert_eq!(get(addr, "/echo", &[]).await.status, StatusCode::OK);
    proxy.shutdown();
}

/// Publishes `files` the way Kubernetes updates a mounted ConfigMap: a new timestamped
/// directory, then the `..data` symlink swapped to it by rename; the visible names are symlinks
/// through `..data` and never change themselves.
fn publish_like_a_configmap(dir: &Path, version: u32, files: &[(&str, &[u8])]) {
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&data).expect("data dir");
    for (name, bytes) in files {
        std::fs::write(data.join(name), bytes).expect("file");
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &visible).expect("symlink");
        }
    }
    let staging = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(format!("..v{version}"), &staging).expect("staging link");
    std::fs::rename(&staging, dir.join("..data")).expect("swap ..data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_swaps_the_plugin() {
    let upstream = Upstream::start();
    let collector = Collector::start();
    let dir = workspace_root().join("target/e2e-hot-swap-configmap");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let module = std::fs::read(filter_module("trace-filter")).expect("module");
    let yaml =
        |tag: &str| trace_proxy_yaml(&dir.join("trace.wasm"), &trace_config(tag, 50), upstream.addr, collector.addr);
    publish_like_a_configmap(&dir, 1, &[("trace.wasm", &module), ("envoy.yaml", yaml("cm-1").as_bytes())]);
    let config_path = dir.join("envoy.yaml");
    let options = ProxyOptions {
        workers: 2,
        watch_modules: true,
        watch_config: Some(config_path.clone()),
        ..ProxyOptions::default()
    };
    let proxy = wasmtrace_proxy::start(Bootstrap::from_file(&config_path).expect("config"), options).expect("proxy");
    let admin = proxy.admin_address().expect("admin");
    wait_for_plugin(admin, "started", |t| t["generation"] == 1).await;

    publish_like_a_configmap(&dir, 2, &[("trace.wasm", &module), ("envoy.yaml", yaml("cm-2").as_bytes())]);
    wait_for_plugin(admin, "the ConfigMap update swapped the configuration", |t| t["generation"] == 2).await;
    assert_eq!(get(ingress(&proxy), "/echo", &[]).await.status, StatusCode::OK);
    let spans = collector.wait_for(1).await;
    assert_eq!(string(&spans[0].span, "swap.generation"), "cm-2");
    proxy.shutdown();
}
