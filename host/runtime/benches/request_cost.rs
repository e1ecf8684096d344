//! Per-request cost of the proxy-wasm callback sequence, in µs per request:
//! context create → request headers → response headers → log → done → delete.
//!
//! `cargo bench -p wasmtrace-runtime --bench request_cost` prints one table, all rows measured
//! in the same run: the host-side work without any VM (baseline), a minimal filter that reads
//! one request header, a header-reading filter (all request headers + `:status`), the shape of a
//! tracing filter, and the trace filter itself — built as a proxy-wasm module and as a
//! `wasmtrace:filter` component, side by side.
//!
//! Each row has the wall-clock time per request and, on Linux, the CPU time the benchmark's
//! thread got for it (`/proc/thread-self/schedstat`): on a machine that is busy with other work
//! the wall clock also counts the time the thread waited for a core, the CPU time does not.
//!
//! `WASMTRACE_BENCH_ONLY=<text>` runs only the rows whose name contains the text, and
//! `WASMTRACE_BENCH_ITERATIONS=<n>` measures `n` requests instead of 50,000: for a profiler run
//! of one filter, long enough that compiling it is not most of the profile. With
//! `WASMTRACE_PROFILE=perfmap` wasmtime names the guests' compiled functions for `perf report`.

/// The allocator of the `wasmtrace` binary: the host side's allocations (header maps, property
/// values, queue items) cost what they cost in the proxy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtrace_build::{BuildOptions, FilterForm, build_filter};
use wasmtrace_runtime::{
    HeaderMap, HostServices, HttpExchange, LogLevel, NoClusters, NodeInfo, PluginConfig, PluginInstance, Profiler,
    Runtime, RuntimeOptions,
};

const WARMUP: usize = 2_000;
const DEFAULT_ITERATIONS: usize = 50_000;

/// Requests measured per row.
fn iterations() -> usize {
    std::env::var("WASMTRACE_BENCH_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_ITERATIONS)
}

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

/// Nanoseconds this thread has run on a CPU, if the kernel says (Linux's schedstat).
fn thread_cpu_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Wall-clock and CPU time per request.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Option<Duration>,
}

fn time_per_request(mut one_request: impl FnMut()) -> Cost {
    for _ in 0..WARMUP {
        one_request();
    }
    let iterations = u32::try_from(iterations()).unwrap_or(u32::MAX);
    let cpu_start = thread_cpu_nanos();
    let start = Instant::now();
    for _ in 0..iterations {
        one_request();
    }
    let wall = start.elapsed() / iterations;
    let cpu = cpu_start.zip(thread_cpu_nanos()).map(|(a, b)| Duration::from_nanos(b.saturating_sub(a)) / iterations);
    Cost { wall, cpu }
}

fn filter_sequence(runtime: &Runtime, name: &str, form: FilterForm, configuration: &str) -> (Cost, usize) {
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
    // `WASMTRACE_PROFILE=perfmap` names the guests' compiled functions for `perf report`.
    let profiler = match std::env::var("WASMTRACE_PROFILE") {
        Ok(name) => name.parse::<Profiler>().unwrap_or_else(|e| panic!("{e}")),
        Err(_) => Profiler::default(),
    };
    let options = RuntimeOptions { profiler, ..RuntimeOptions::default() };
    let runtime = match Runtime::with_options(HostServices::new(NodeInfo::default(), LogLevel::Warn), &options) {
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
    type Row<'a> = (&'a str, &'a dyn Fn() -> (Cost, usize));
    let rows: [Row<'_>; 5] = [
        ("host only: exchange + header maps, no VM", &|| (baseline, 0)),
        ("hostile (benign path): reads 1 header, adds 1", &|| {
            filter_sequence(&runtime, "hostile", FilterForm::ProxyWasm, "")
        }),
        ("header-reader: all request headers + :status", &|| {
            filter_sequence(&runtime, "header-reader", FilterForm::ProxyWasm, "")
        }),
        ("trace-filter, proxy-wasm module", &|| {
            filter_sequence(&runtime, "trace-filter", FilterForm::ProxyWasm, trace_config)
        }),
        ("trace-filter, wasmtrace:filter component", &|| {
            filter_sequence(&runtime, "trace-filter", FilterForm::Component, trace_config)
        }),
    ];
    let only = std::env::var("WASMTRACE_BENCH_ONLY").unwrap_or_default();
    let measured: Vec<(&str, (Cost, usize))> =
        rows.iter().filter(|(name, _)| name.contains(only.as_str())).map(|(name, run)| (*name, run())).collect();
    println!();
    println!("per-request callback sequence (create, request headers, response headers, log, done, delete)");
    println!("{} requests each, 10 request headers, after {WARMUP} warm-up requests", iterations());
    println!();
    println!(
        "| {:<48} | {:>12} | {:>12} | {:>14} | {:>12} |",
        "case", "µs/request", "CPU µs/req", "requests/s", "module bytes"
    );
    println!("|{:-<50}|{:->14}|{:->14}|{:->16}|{:->14}|", "", "", "", "", "");
    for (name, (cost, size)) in measured {
        let micros = cost.wall.as_secs_f64() * 1e6;
        let cpu = cost.cpu.map_or_else(|| "-".to_owned(), |cpu| format!("{:.2}", cpu.as_secs_f64() * 1e6));
        println!("| {name:<48} | {micros:>12.2} | {cpu:>12} | {:>14.0} | {size:>12} |", 1.0 / cost.wall.as_secs_f64());
    }
}
