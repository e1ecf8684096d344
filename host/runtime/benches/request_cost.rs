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
//! Every filter is compiled and started first; then the rows are measured in interleaved rounds
//! (round 1 runs every row, then round 2 ...), so that a slow phase of a shared machine hits all
//! rows alike. A row's figure is its best round (the least disturbed one); the ratios at the end
//! are taken within each round and the median printed, so neighbours slowing a whole round do not
//! move them.
//!
//! `WASMTRACE_BENCH_ONLY=<text>` runs only the rows whose name contains the text,
//! `WASMTRACE_BENCH_ITERATIONS=<n>` measures `n` requests a round instead of 50,000 (for a
//! profiler run of one filter, long enough that compiling it is not most of the profile), and
//! `WASMTRACE_BENCH_ROUNDS=<n>` runs `n` rounds instead of 5. With `WASMTRACE_PROFILE=perfmap`
//! wasmtime names the guests' compiled functions for `perf report`.
//!
//! `WASMTRACE_BENCH_BASELINE=<file.wasm>` adds a row for a trace filter module built earlier (a
//! copy of `target/wasm-filters/wasm32-wasip1/release/trace_filter.wasm` from before a change) and
//! prints the current module ÷ that one: on a shared machine two runs minutes apart can differ by
//! more than a change does, rounds of one run do not.

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

/// Interleaved rounds.
fn rounds() -> usize {
    std::env::var("WASMTRACE_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).filter(|n| *n > 0).unwrap_or(5)
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

/// One row: what it is, how large its module is, and one request through it.
struct Row<'a> {
    name: &'static str,
    module_bytes: usize,
    one_request: Box<dyn FnMut() + 'a>,
}

/// Compiles and starts `name` in `form`: a row whose request runs the callback sequence.
fn filter_row(runtime: &Runtime, row: &'static str, name: &str, form: FilterForm, configuration: &str) -> Row<'static> {
    module_row(runtime, row, name, module(name, form), configuration)
}

/// A row for the module `bytes` (the filter `name`), started with `configuration`.
fn module_row(runtime: &Runtime, row: &'static str, name: &str, bytes: Vec<u8>, configuration: &str) -> Row<'static> {
    let compiled = runtime.compile(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let plugin =
        Arc::new(PluginConfig { plugin_configuration: configuration.as_bytes().to_vec(), ..PluginConfig::named(name) });
    let instance =
        PluginInstance::start(runtime, compiled, plugin, Rc::new(NoClusters)).unwrap_or_else(|e| panic!("{name}: {e}"));
    Row {
        name: row,
        module_bytes: bytes.len(),
        one_request: Box::new(move || {
            let exchange = exchange();
            let mut stream = instance.new_stream(exchange.clone());
            stream.on_request_headers(true);
            exchange.borrow_mut().response_headers = Some(response_headers());
            stream.on_response_headers(false);
            stream.on_log();
            drop(stream);
        }),
    }
}

/// The CPU time per request if the kernel says, else the wall clock's, in µs.
fn micros(cost: &Cost) -> f64 {
    cost.cpu.unwrap_or(cost.wall).as_secs_f64() * 1e6
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

const HOST_ONLY: &str = "host only: exchange + header maps, no VM";
const HEADER_READER: &str = "header-reader: all request headers + :status";
const TRACE_MODULE: &str = "trace-filter, proxy-wasm module";
const TRACE_COMPONENT: &str = "trace-filter, wasmtrace:filter component";
const TRACE_BASELINE: &str = "trace-filter, baseline module (BENCH_BASELINE)";

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
    // The trace filter exports from its tick, which this loop never runs: this is the cost a
    // request pays (extract, sample, inject, tag, queue), not the export's.
    let trace_config = r#"{"service_name": "bench", "exporter": {"cluster": "otel", "max_queued_spans": 100000000, "batch_size": 128}}"#;
    let only = std::env::var("WASMTRACE_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| name.contains(only.as_str());
    let mut rows: Vec<Row<'_>> = Vec::new();
    if wanted(HOST_ONLY) {
        let one_request = Box::new(|| {
            let exchange = exchange();
            exchange.borrow_mut().response_headers = Some(response_headers());
            std::hint::black_box(&exchange);
        });
        rows.push(Row { name: HOST_ONLY, module_bytes: 0, one_request });
    }
    let filters: [(&'static str, &str, FilterForm, &str); 4] = [
        ("hostile (benign path): reads 1 header, adds 1", "hostile", FilterForm::ProxyWasm, ""),
        (HEADER_READER, "header-reader", FilterForm::ProxyWasm, ""),
        (TRACE_MODULE, "trace-filter", FilterForm::ProxyWasm, trace_config),
        (TRACE_COMPONENT, "trace-filter", FilterForm::Component, trace_config),
    ];
    for (row, name, form, configuration) in filters {
        if wanted(row) {
            rows.push(filter_row(&runtime, row, name, form, configuration));
        }
    }
    if let Ok(path) = std::env::var("WASMTRACE_BENCH_BASELINE") {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("WASMTRACE_BENCH_BASELINE {path}: {e}"));
        rows.push(module_row(&runtime, TRACE_BASELINE, "trace-filter", bytes, trace_config));
    }
    let rounds = rounds();
    // costs[round][row]
    let mut costs: Vec<Vec<Cost>> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        costs.push(rows.iter_mut().map(|row| time_per_request(&mut row.one_request)).collect());
    }
    println!();
    println!("per-request callback sequence (create, request headers, response headers, log, done, delete)");
    println!(
        "{} requests a row a round, {rounds} interleaved rounds, 10 request headers, after {WARMUP} warm-up requests",
        iterations()
    );
    println!("a row's figures are its best round's (the least disturbed); CPU time is the thread's own");
    println!();
    println!(
        "| {:<48} | {:>12} | {:>12} | {:>14} | {:>12} | {:>12} |",
        "case", "µs/request", "CPU µs/req", "requests/s", "CPU range", "module bytes"
    );
    println!("|{:-<50}|{:->14}|{:->14}|{:->16}|{:->14}|{:->14}|", "", "", "", "", "", "");
    for (index, row) in rows.iter().enumerate() {
        let of_row: Vec<Cost> = costs.iter().map(|round| round[index]).collect();
        let best = of_row.iter().min_by(|a, b| micros(a).total_cmp(&micros(b))).copied().unwrap_or(of_row[0]);
        let worst = of_row.iter().map(micros).fold(0.0, f64::max);
        let cpu = best.cpu.map_or_else(|| "-".to_owned(), |cpu| format!("{:.2}", cpu.as_secs_f64() * 1e6));
        println!(
            "| {:<48} | {:>12.2} | {cpu:>12} | {:>14.0} | {:>12} | {:>12} |",
            row.name,
            best.wall.as_secs_f64() * 1e6,
            1.0 / best.wall.as_secs_f64(),
            format!("{:.2}–{worst:.2}", micros(&best)),
            row.module_bytes
        );
    }
    // Ratios within each round (the same minutes of the machine), the median over rounds.
    let position = |name: &str| rows.iter().position(|row| row.name == name);
    let ratio = |top: &str, bottom: &str| -> Option<f64> {
        let (top, bottom) = (position(top)?, position(bottom)?);
        Some(median(costs.iter().map(|round| micros(&round[top]) / micros(&round[bottom])).collect()))
    };
    println!();
    if let Some(r) = ratio(TRACE_COMPONENT, TRACE_MODULE) {
        println!("component ÷ proxy-wasm module (trace filter), median of the rounds: {r:.2}");
    }
    if let Some(r) = ratio(TRACE_MODULE, TRACE_BASELINE) {
        println!("proxy-wasm module ÷ baseline module (trace filter), median of the rounds: {r:.2}");
    }
    for name in [HEADER_READER, TRACE_MODULE, TRACE_COMPONENT] {
        if let Some(r) = ratio(name, HOST_ONLY) {
            println!("{name} ÷ host only, median of the rounds: {r:.2}");
        }
    }
}
