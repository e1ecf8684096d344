//! Hot-swap benchmark (not a pass/fail test): how long a swap takes from the admin request to
//! publication — configuration only, a module already compiled, a module never seen — and what
//! swapping every 100 ms does to request latency, against the same proxy without swaps, in one
//! run on this machine. First, what a (re)start pays to load the trace filter: a compile, or a
//! read from a warm on-disk module cache.
//!
//! `cargo bench -p wasmtrace-proxy --bench swap [-- CONNECTIONS SECONDS]`

mod harness;

/// The allocator of the `wasmtrace` binary: compile times depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use harness::{drive, module, percentile, print_load_table, proxy_with_admin, proxy_with_options, start_server};

fn trace_config(tag: usize) -> String {
    format!(
        r#"{{"service_name": "swap-bench", "static_attributes": {{"swap.generation": "{tag}"}}, "exporter": {{"cluster": "collector"}}}}"#
    )
}

/// `module` with a custom section appended: new bytes and sha256 (so a full compile), same code.
fn variant(module: &Path, tag: usize) -> PathBuf {
    let mut bytes = std::fs::read(module).unwrap_or_else(|e| panic!("{e}"));
    let name = b"wasmtrace.bench";
    let payload = format!("{tag:08}");
    // Custom section: id 0, content size, name size, name, payload (sizes fit one LEB128 byte).
    bytes.extend_from_slice(&[0, (1 + name.len() + payload.len()) as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    let path = module.with_file_name(format!("trace-filter-variant-{tag}.wasm"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// One request to the admin API: its status and JSON answer.
async fn admin_call(admin: SocketAddr, request: http::Request<Full<Bytes>>) -> (http::StatusCode, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(admin).await.unwrap_or_else(|e| panic!("admin: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("admin: {e}"));
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap_or_else(|e| panic!("admin: {e}"));
    let status = response.status();
    let reply = response.into_body().collect().await.unwrap_or_else(|e| panic!("{e}")).to_bytes();
    (status, serde_json::from_slice(&reply).unwrap_or_else(|e| panic!("{e}")))
}

/// One swap; the coordinator's own `published_after_ms` and the client's round trip.
async fn swap(admin: SocketAddr, body: serde_json::Value) -> (f64, f64) {
    let started = Instant::now();
    let request = http::Request::post("/plugins/filter/swap")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, reply) = admin_call(admin, request).await;
    assert!(status.is_success() && reply["outcome"] == "swapped", "swap failed: {status} {reply}");
    (reply["published_after_ms"].as_f64().unwrap_or(f64::NAN), started.elapsed().as_secs_f64() * 1e3)
}

/// Swaps to modules never seen on a proxy with `--tiered-swaps`: the quick tier's code is what is
/// published; each swap waits for the optimised generation to follow before the next.
fn tiered_swaps(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    collector: SocketAddr,
    trace: &Path,
    config: &str,
) -> SwapRow {
    let options = wasmtrace_proxy::ProxyOptions {
        runtime: wasmtrace_runtime::RuntimeOptions { tiered_swaps: true, ..Default::default() },
        ..Default::default()
    };
    let trace = trace.to_path_buf();
    let running = proxy_with_options(upstream, Some((&trace, config)), collector, true, options);
    let admin = running.admin_address().unwrap_or_else(|| panic!("admin"));
    let mut published = Vec::new();
    let mut round_trip = Vec::new();
    for i in 11..=15 {
        let body = serde_json::json!({ "module_path": variant(&trace, i).display().to_string() });
        let (at, rt) = runtime.block_on(swap(admin, body));
        published.push(at);
        round_trip.push(rt);
        runtime.block_on(optimised_generation_published(admin));
    }
    running.shutdown();
    SwapRow {
        name: "module, never seen, --tiered-swaps",
        count: published.len(),
        published: median_and_max(published),
        round_trip: median_and_max(round_trip),
    }
}

/// Waits until the plugin's serving code is no longer the quick tier's.
async fn optimised_generation_published(admin: SocketAddr) {
    for _ in 0..600 {
        let request = http::Request::get("/plugins")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        let (_, plugins) = admin_call(admin, request).await;
        let active = &plugins["plugins"][0]["generations"][0];
        if active["state"] == "active" && active["module_source"] != "quick compile" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the optimised code was not published within 30 s");
}

fn median_and_max(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(f64::NAN);
    (median, values.last().copied().unwrap_or(f64::NAN))
}

struct SwapRow {
    name: &'static str,
    count: usize,
    published: (f64, f64),
    round_trip: (f64, f64),
}

fn measure_swaps(
    runtime: &tokio::runtime::Runtime,
    admin: SocketAddr,
    name: &'static str,
    bodies: Vec<serde_json::Value>,
) -> SwapRow {
    let count = bodies.len();
    let (published, round_trip): (Vec<f64>, Vec<f64>) =
        runtime.block_on(async { swap_in_turn(admin, bodies).await }).into_iter().unzip();
    SwapRow { name, count, published: median_and_max(published), round_trip: median_and_max(round_trip) }
}

async fn swap_in_turn(admin: SocketAddr, bodies: Vec<serde_json::Value>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for body in bodies {
        out.push(swap(admin, body).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

/// Median and max milliseconds a fresh runtime takes to load `module` (a new runtime per round,
/// as after a restart), with the disk cache at `cache` (warmed by a first, unmeasured load).
fn startup_load(module: &Path, cache: Option<&Path>) -> (f64, f64) {
    use wasmtrace_runtime::{HostServices, ModuleSource, Runtime, RuntimeOptions};
    let bytes = std::fs::read(module).unwrap_or_else(|e| panic!("{e}"));
    let options = RuntimeOptions { module_cache: cache.map(Path::to_path_buf), ..RuntimeOptions::default() };
    let runtime = || Runtime::with_options(HostServices::default(), &options).unwrap_or_else(|e| panic!("{e}"));
    if cache.is_some() {
        runtime().compile(&bytes).unwrap_or_else(|e| panic!("{e}"));
    }
    let rounds = (0..5)
        .map(|_| {
            let runtime = runtime();
            let started = Instant::now();
            let loaded = runtime.compile(&bytes).unwrap_or_else(|e| panic!("{e}"));
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            let expected = if cache.is_some() { ModuleSource::DiskCache } else { ModuleSource::Compiled };
            assert_eq!(loaded.source(), expected);
            elapsed
        })
        .collect();
    median_and_max(rounds)
}

fn print_startup(module: &Path) {
    let cache = std::env::temp_dir().join(format!("wasmtrace-swap-bench-cache-{}", std::process::id()));
    let compiled = startup_load(module, None);
    let warm = startup_load(module, Some(&cache));
    let _ = std::fs::remove_dir_all(&cache);
    println!();
    println!("Start-up: loading the trace filter in a new runtime (5 rounds)");
    println!();
    println!("| {:<38} | {:>14} | {:>14} |", "load", "p50", "max");
    println!("|{:-<40}|{:->16}|{:->16}|", "", "", "");
    for (name, (p50, max)) in [("compile (no module cache)", compiled), ("warm disk module cache", warm)] {
        println!("| {name:<38} | {p50:>11.1} ms | {max:>11.1} ms |");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let connections: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let upstream = start_server(b"hello from upstream\n", Duration::ZERO);
    let collector = start_server(b"{}", Duration::ZERO);
    let trace = module("filters/trace-filter");
    let cached_variant = variant(&trace, 0);
    let config = trace_config(0);
    let running = proxy_with_admin(upstream, Some((&trace, &config)), collector, true);
    let admin = running.admin_address().unwrap_or_else(|| panic!("admin"));
    let address = running.listener_address("ingress").unwrap_or_else(|| panic!("listener"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    let path = |p: &PathBuf| serde_json::Value::from(p.display().to_string());

    // Idle proxy: swap latency by kind.
    let mut rows = Vec::new();
    let configs: Vec<_> = (1..=30).map(|i| serde_json::json!({ "configuration": trace_config(i) })).collect();
    rows.push(measure_swaps(&runtime, admin, "configuration only (module reused)", configs));
    // Compile the variant once, then swap between two compiled modules.
    runtime.block_on(swap(admin, serde_json::json!({ "module_path": path(&cached_variant) })));
    let cached: Vec<_> = (0..30)
        .map(|i| serde_json::json!({ "module_path": path(if i % 2 == 0 { &trace } else { &cached_variant }) }))
        .collect();
    rows.push(measure_swaps(&runtime, admin, "module, compiled before (cached)", cached));
    let uncached: Vec<_> = (1..=5).map(|i| serde_json::json!({ "module_path": path(&variant(&trace, i)) })).collect();
    rows.push(measure_swaps(&runtime, admin, "module, never seen (full compile)", uncached));
    rows.push(tiered_swaps(&runtime, upstream, collector, &trace, &config));

    // Load: steady state, then the same load while swapping every 100 ms (configuration, and
    // every other time the module, between the two compiled above).
    let steady = drive(address, connections, seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, trace, cached_variant) = (stop.clone(), trace.clone(), cached_variant.clone());
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
            let mut published = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let mut body = serde_json::json!({ "configuration": trace_config(1000 + i) });
                if i % 2 == 0 {
                    let module = if i % 4 == 0 { &trace } else { &cached_variant };
                    body["module_path"] = module.display().to_string().into();
                }
                published.push(runtime.block_on(swap(admin, body)).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            published
        })
    };
    let swapping = drive(address, connections, seconds);
    stop.store(true, Ordering::Relaxed);
    let under_load = swapper.join().unwrap_or_else(|_| panic!("swapper thread"));
    let swaps_under_load = under_load.len();
    rows.push(SwapRow {
        name: "config + cached module, under load",
        count: swaps_under_load,
        published: median_and_max(under_load),
        round_trip: (f64::NAN, f64::NAN),
    });
    running.shutdown();

    print_startup(&trace);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("Swap latency: admin request to published on every worker ({cores} cores)");
    println!();
    println!(
        "| {:<38} | {:>5} | {:>14} | {:>14} | {:>15} |",
        "swap", "count", "published p50", "published max", "round trip p50"
    );
    println!("|{:-<40}|{:->7}|{:->16}|{:->16}|{:->17}|", "", "", "", "", "");
    for row in &rows {
        println!(
            "| {:<38} | {:>5} | {:>11.1} ms | {:>11.1} ms | {:>12.1} ms |",
            row.name, row.count, row.published.0, row.published.1, row.round_trip.0
        );
    }
    println!();
    println!(
        "Request latency with the trace filter: {connections} keep-alive HTTP/1.1 connections, {seconds} s per row after 1 s warm-up"
    );
    println!();
    let ratio = percentile(&swapping.latencies, 0.99).as_secs_f64() / percentile(&steady.latencies, 0.99).as_secs_f64();
    let rows = [
        ("steady state (no swaps)".to_owned(), steady),
        (format!("swapping every 100 ms ({swaps_under_load} swaps)"), swapping),
    ];
    print_load_table("load", &rows);
    println!();
    println!("p99 during swaps / steady p99: {ratio:.2}x (target: at most 2x)");
}
