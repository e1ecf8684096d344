//! Per-request cost of the proxy-wasm callback sequence, in µs per request:
//! context create → request headers → response headers → log → done → delete.
//!
//! `cargo bench -p wasmtrace-runtime --bench request_cost` prints one table, all rows measured
//! in the same run: the host-side work without any VM (baseline), a minimal filter that reads
//! one request header, a header-reading filter (all request headers + `:status`), the shape of a
//! tracing filter, and the trace filter itself — built as a proxy-wasm module and as a
//! `wasmtrace:filter` component, side by side.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtrace_build::{BuildOptions, FilterForm, build_filter};
use wasmtrace_runtime::{
    HeaderMap, HostServices, HttpExchange, LogLevel, NoClusters, NodeInfo, PluginConfig, PluginInstance, Runtime,
};

const WARMUP: usize = 2_000;
const ITERATIONS: usize = 50_000;

fn request_headers() -> HeaderMap {
    HeaderMap::from_pairs([
        (":method", "GET"),
        (":path", "/v0/images?limit=20"),
        (":authority", "gallery-api.local:8080"),
        (":scheme", "http"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "vendor=opaque"),
        ("x-request-id", "5f1c2a9e-6a51-4f7c-9a1e-3b2d4c5e6f70"),
    ])
}

fn response_headers() -> HeaderMap {
    HeaderMap::from_pairs([(":status", "200"), ("content-type", "application/json"), ("content-length", "512")])
}

fn exchange() -> Rc<RefCell<HttpExchange>> {
    Rc::new(RefCell::new(HttpExchange::with_request_headers(request_headers())))
}

fn module(name: &str, form: FilterForm) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let crate_dir = [root.join("filters").join(name), root.join("filters/test-filters").join(name)]
        .into_iter()
        .find(|dir| dir.join("Cargo.toml").is_file())
        .unwrap_or_else(|| panic!("no filter crate {name}"));
    let built = build_filter(&BuildOptions {
        crate_dir,
        target_dir: Some(root.join("target/wasm-filters")),
        out: None,
        quiet: true,
        form,
    })
    .unwrap_or_else(|e| panic!("building {name}: {e}"));
    std::fs::read(built.wasm_path).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn time_per_request(mut one_request: impl FnMut()) -> Duration {
    for _ in 0..WARMUP {
        one_request();
    }
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        one_request();
    }
    start.elapsed() / u32::try_from(ITERATIONS).unwrap_or(u32::MAX)
}

fn filter_sequence(runtime: &Runtime, name: &str, form: FilterForm, configuration: &str) -> (Duration, usize) {
    let bytes = module(name, form);
    let size = bytes.len();
    let compiled = runtime.compile(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let plugin =
        Arc::new(PluginConfig { plugin_configuration: configuration.as_bytes().to_vec(), ..PluginConfig::named(name) });
    let instance =
        PluginInstance::start(runtime, compiled, plugin, Rc::new(NoClusters)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cost = time_per_request(|| {
        let exchange = exchange();
        let mut stream = instance.new_stream(exchange.clone());
        stream.on_request_headers(true);
        exchange.borrow_mut().response_headers = Some(response_headers());
        stream.on_response_headers(false);
        stream.on_log();
        drop(stream);
    });
    (cost, size)
}

fn main() {
    let runtime = match Runtime::with_services(HostServices::new(NodeInfo::default(), LogLevel::Warn)) {
        Ok(runtime) => runtime,
        Err(e) => panic!("runtime: {e}"),
    };
    let baseline = time_per_request(|| {
        let exchange = exchange();
        exchange.borrow_mut().response_headers = Some(response_headers());
        std::hint::black_box(&exchange);
    });
    // The trace filter exports from its tick, which this loop never runs: this is the cost a
    // request pays (extract, sample, inject, tag, queue), not the export's.
    let trace_config = r#"{"service_name": "bench", "exporter": {"cluster": "otel", "max_queued_spans": 100000000, "batch_size": 128}}"#;
    let rows = [
        ("host only: exchange + header maps, no VM", (baseline, 0)),
        (
            "hostile (benign path): reads 1 header, adds 1",
            filter_sequence(&runtime, "hostile", FilterForm::ProxyWasm, ""),
        ),
        (
            "header-reader: all request headers + :status",
            filter_sequence(&runtime, "header-reader", FilterForm::ProxyWasm, ""),
        ),
        (
            "trace-filter, proxy-wasm module",
            filter_sequence(&runtime, "trace-filter", FilterForm::ProxyWasm, trace_config),
        ),
        (
            "trace-filter, wasmtrace:filter component",
            filter_sequence(&runtime, "trace-filter", FilterForm::Component, trace_config),
        ),
    ];
    println!();
    println!("per-request callback sequence (create, request headers, response headers, log, done, delete)");
    println!("{ITERATIONS} requests each, 10 request headers, after {WARMUP} warm-up requests");
    println!();
    println!("| {:<48} | {:>12} | {:>14} | {:>12} |", "case", "µs/request", "requests/s", "module bytes");
    println!("|{:-<50}|{:->14}|{:->16}|{:->14}|", "", "", "", "");
    for (name, (per_request, size)) in rows {
        let micros = per_request.as_secs_f64() * 1e6;
        println!("| {name:<48} | {micros:>12.2} | {:>14.0} | {size:>12} |", 1.0 / per_request.as_secs_f64());
    }
}
