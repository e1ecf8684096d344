//! Spans across a VM restart: a trace filter VM that fails (here: a request whose headers make
//! it grow past the plugin's memory cap, a legitimate input that still makes a correct filter
//! fail) is re-created with empty memory, yet every span it had finished reaches the collector:
//! finished spans wait in the host's shared queue, not in the VM. Only the failing request's own
//! span may be missing.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::{ProxyOptions, RunningProxy};

use crate::fixture::client::{client, get, send};
use crate::fixture::collector::{Collector, Received};
use crate::fixture::proxy::{
    bootstrap_yaml, cluster, component_module, filter_module, ingress, route, wasm_filter_yaml,
};
use crate::fixture::upstream::Upstream;

/// Requests served before the VM fails.
const CLEAN: usize = 30;
/// A wasm page.
const PAGE: usize = 64 << 10;
/// Memory a trace filter VM may grow by beyond what its module declares: ample room for its own
/// start-up, for requests with ordinary headers and for exporting their spans, but not for the
/// copies the filter makes of a request with 375 KB of headers.
const HEADROOM: usize = 4 * PAGE;
/// The listener's `max_request_headers_kb`: large headers are allowed (as for big cookies or
/// tokens), so the failing request is one the proxy accepts.
const MAX_REQUEST_HEADERS_KB: usize = 2048;
/// Large headers on the failing request, each recorded as a span attribute by the configuration
/// (what an operator asks for when a header matters): 15 × 25 KB, within what the echo upstream
/// (hyper's default buffer) reads.
const FILLERS: usize = 15;
const FILLER_BYTES: usize = 25_000;

fn leb128(bytes: &[u8], at: &mut usize) -> Option<usize> {
    let mut value = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The largest linear memory a module declares (its minimum size, in bytes), looking into the
/// core modules of a component too: what a VM of it holds before the filter allocates anything.
fn declared_memory(wasm: &[u8]) -> Option<usize> {
    let is_component = wasm.get(4..8)? != [1, 0, 0, 0];
    let mut at = 8;
    let mut largest = 0;
    while at < wasm.len() {
        let id = *wasm.get(at)?;
        at += 1;
        let size = leb128(wasm, &mut at)?;
        let section = wasm.get(at..at + size)?;
        match (is_component, id) {
            // A core module (1) or a nested component (4) inside a component.
            (true, 1 | 4) => largest = largest.max(declared_memory(section)?),
            // A core module's memory section: count, then (flags, minimum pages[, maximum]).
            (false, 5) => {
                let mut inner = 0;
                for _ in 0..leb128(section, &mut inner)? {
                    let flags = *section.get(inner)?;
                    inner += 1;
                    largest = largest.max(leb128(section, &mut inner)? * PAGE);
                    if flags & 1 == 1 {
                        leb128(section, &mut inner)?;
                    }
                }
            }
            _ => {}
        }
        at += size;
    }
    Some(largest)
}

/// A proxy with the trace filter from `module` (fail-open) whose VMs may use at most `cap`
/// bytes of memory, on a listener that accepts large headers. Spans wait: a long flush interval,
/// batches larger than the test sends.
fn capped_proxy(module: &Path, cap: usize, upstream: &Upstream, collector: &Collector) -> RunningProxy {
    let recorded: Vec<String> = (0..FILLERS).map(|i| format!(r#""x-filler-{i}": "app.filler.{i}""#)).collect();
    let config = format!(
        r#"{{"service_name": "span-loss", "request_header_attributes": {{{}}}, "exporter": {{"cluster": "otel", "flush_interval_ms": 60000, "batch_size": 64}}}}"#,
        recorded.join(", ")
    );
    let yaml = bootstrap_yaml(
        &[wasm_filter_yaml("trace", module, &config, true, "trace")],
        &route("/", "service", "5s"),
        &[cluster("service", upstream.addr, ""), cluster("otel", collector.addr, "")],
    )
    .replacen(
        "use_remote_address: true",
        &format!("use_remote_address: true\n                max_request_headers_kb: {MAX_REQUEST_HEADERS_KB}"),
        1,
    );
    let bootstrap = Bootstrap::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let mut options = ProxyOptions { workers: 2, drain_timeout: Duration::from_secs(5), ..ProxyOptions::default() };
    options.limits.max_memory_bytes = cap;
    wasmtrace_proxy::start(bootstrap, options).unwrap_or_else(|e| panic!("proxy start: {e}"))
}

fn trace_id(request: usize) -> String {
    format!("5e55{request:028x}")
}

fn traceparent(request: usize) -> String {
    format!("00-{}-00f067aa0ba902b7-01", trace_id(request))
}

fn by_trace(spans: &[Received]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for span in spans {
        let id: String = span.span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
        *count.entry(id).or_default() += 1;
    }
    count
}

/// The trace plugin's callback failures, once they reach `at_least` (or ten seconds passed).
async fn wait_for_failures(admin: std::net::SocketAddr, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(admin, "/stats/prometheus", &[]).await.text();
        let failures: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("wasmtrace_wasm_callback_failures_total{plugin=\"trace\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if failures >= at_least || std::time::Instant::now() > deadline {
            return failures;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn a_vm_restart_loses_no_finished_span(module: &Path) {
    let upstream = Upstream::start();
    let collector = Collector::start();
    let declared = declared_memory(&std::fs::read(module).expect("module")).expect("a wasm binary");
    let proxy = capped_proxy(module, declared + HEADROOM, &upstream, &collector);
    let addr = ingress(&proxy);
    // One connection: one worker, so one VM serves every request, the failing one included.
    let client = client(false);

    for request in 0..CLEAN {
        let reply = send(&client, addr, "GET", "/echo", &[("traceparent", &traceparent(request))], "").await;
        assert_eq!(reply.status, StatusCode::OK, "clean request {request}: {}", reply.text());
    }
    // 375 KB of headers (within the listener's limit, and the upstream's): the filter's copies of
    // them are more than the VM may grow by.
    let hostile = CLEAN;
    let filler = "f".repeat(FILLER_BYTES);
    let names: Vec<String> = (0..FILLERS).map(|i| format!("x-filler-{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), filler.as_str())).collect();
    let hostile_parent = traceparent(hostile);
    headers.push(("traceparent", &hostile_parent));
    let reply = send(&client, addr, "GET", "/echo", &headers, "").await;
    assert_eq!(reply.status, StatusCode::OK, "fail-open serves the failing request: {}", reply.text());

    // The VM did fail (in whichever callback of that request ran out of memory; `on_log` may
    // run after the client has its answer).
    let admin = proxy.admin_address().expect("admin");
    let failures = wait_for_failures(admin, 1).await;
    assert_eq!(failures, 1, "the oversized request failed its VM, and nothing else did");

    // A request after the failure, served by a fresh VM.
    let after = CLEAN + 1;
    let reply = send(&client, addr, "GET", "/echo", &[("traceparent", &traceparent(after))], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(wait_for_failures(admin, 0).await, 1, "the fresh VM serves the next request");

    // The new VM (or the other worker's) exports what the failed one had finished, without
    // waiting for the flush interval or a shutdown.
    let wanted: Vec<String> = (0..CLEAN).chain([after]).map(trace_id).collect();
    let spans = collector.wait_until(|spans| wanted.iter().all(|id| by_trace(spans).contains_key(id))).await;
    let before_shutdown = by_trace(&spans);
    let missing: Vec<&String> = wanted.iter().filter(|id| !before_shutdown.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{} of {} finished spans lost with the VM: {missing:?}", missing.len(), wanted.len());

    tokio::task::spawn_blocking(move || proxy.shutdown()).await.expect("shutdown");
    let count = by_trace(&collector.wait_for(wanted.len()).await);
    for id in &wanted {
        assert_eq!(count.get(id), Some(&1), "exactly one span for trace {id}");
    }
    assert!(count.get(&trace_id(hostile)).is_none_or(|n| *n <= 1));
    assert!(count.keys().all(|id| id.starts_with("5e55")), "spans of no request: {count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_filter_vm_that_fails_loses_no_span_it_had_finished() {
    a_vm_restart_loses_no_finished_span(&filter_module("trace-filter")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_filter_component_that_fails_loses_no_span_it_had_finished() {
    a_vm_restart_loses_no_finished_span(&component_module("trace-filter")).await;
}

/// Requests the export-throughput test sends, over [`LOAD_CONNECTIONS`] connections at once.
const LOAD_REQUESTS: usize = 2_000;
const LOAD_CONNECTIONS: usize = 16;

/// Spans finished faster than one batch a tick are exported as fast as the collector answers,
/// not dropped: with batches of 16 and room for 512 spans, exporting one batch per 50 ms tick
/// per VM would keep up with 640 spans a second for two workers and drop the rest of this load.
/// The listener spreads the connections over both workers (`SO_REUSEPORT`, the default), so both
/// VMs fill the spool at once, faster than one tick's worth fits in it: the export must start
/// when a batch is there, not at the next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_faster_than_one_batch_a_tick_loses_no_span() {
    a_load_loses_no_span(&filter_module("trace-filter")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_faster_than_one_batch_a_tick_loses_no_span_of_the_component() {
    a_load_loses_no_span(&component_module("trace-filter")).await;
}

async fn a_load_loses_no_span(module: &Path) {
    let upstream = Upstream::start();
    let collector = Collector::start();
    let config = r#"{"service_name": "export-rate", "exporter": {"cluster": "otel", "flush_interval_ms": 200, "batch_size": 16, "max_queued_spans": 512}}"#;
    let yaml = bootstrap_yaml(
        &[wasm_filter_yaml("trace", module, config, true, "trace")],
        &route("/", "service", "5s"),
        &[cluster("service", upstream.addr, ""), cluster("otel", collector.addr, "")],
    );
    let bootstrap = Bootstrap::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let options = ProxyOptions { workers: 2, drain_timeout: Duration::from_secs(5), ..ProxyOptions::default() };
    let proxy = wasmtrace_proxy::start(bootstrap, options).unwrap_or_else(|e| panic!("proxy start: {e}"));
    let addr = ingress(&proxy);

    let senders: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|connection| {
            tokio::spawn(async move {
                let client = client(false);
                for i in (connection..LOAD_REQUESTS).step_by(LOAD_CONNECTIONS) {
                    let reply = send(&client, addr, "GET", "/echo", &[("traceparent", &traceparent(i))], "").await;
                    assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.text());
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender");
    }

    let spans = collector.wait_for(LOAD_REQUESTS).await;
    let admin = proxy.admin_address().expect("admin");
    let metrics = get(admin, "/stats/prometheus", &[]).await.text();
    let dropped = metrics.lines().find_map(|l| l.strip_prefix("wasmtrace_trace_spans_dropped_total "));
    let export: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("wasmtrace_trace_") || l.starts_with("wasmtrace_upstream")).collect();
    assert!(dropped.is_none_or(|d| d == "0"), "spans dropped under load: {export:#?}");
    let count = by_trace(&spans);
    let missing = (0..LOAD_REQUESTS).filter(|i| !count.contains_key(&trace_id(*i))).count();
    assert_eq!(missing, 0, "{missing} of {LOAD_REQUESTS} spans never reached the collector");
    tokio::task::spawn_blocking(move || proxy.shutdown()).await.expect("shutdown");
}
