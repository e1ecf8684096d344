//! What tracing costs a service, per request, four ways, side by side in one run: the same small
//! axum service (`GET /hello`, a JSON body, a 2-thread multi-threaded runtime) and the same
//! closed-loop load, with
//!
//! 1. no tracing;
//! 2. OpenTelemetry SDK middleware: the gallery's SERVER-span middleware (`trace_requests`), an
//!    SDK span per request, batched and exported over OTLP/HTTP;
//! 3. the trace filter in-process: `wasmtrace-tower`'s server layer under `axum::serve` (2
//!    filter workers), and the filter workers serving the socket themselves
//!    (`InProcessFilters::serve`);
//! 4. the trace filter in a wasmtrace sidecar (2 workers) in front of the bare service.
//!
//! Spans go to a sink (OTLP/HTTP, answers 200). CPU per request is the service side's: the CPU
//! time of every thread of this process except the load generator's (`load`), the sink's and the
//! main thread, read from `/proc/self/task/*/stat` around each measured window, over the
//! requests answered 200. Rounds are interleaved (every row, then every row again).
//!
//! `cargo bench -p wasmtrace-demo --bench in_process` (`BENCH_CONNECTIONS`, default 32;
//! `BENCH_SECONDS`, default 5; `BENCH_ROUNDS`, default 2; `BENCH_ONLY=in-process` runs the rows
//! whose title contains it, e.g. under `perf record`; `BENCH_RATE=8000` offers every row the
//! same load, that many requests a second, instead of as many as it answers — CPU per request
//! then compares the rows at the same load, while a closed loop charges the slower rows for
//! the wake-ups their lower rate leaves unbatched; `WASMTRACE_PROFILE=perfmap` names the guests'
//! functions for `perf`). Informational: nothing here passes or fails on time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use gallery_service::server_span::trace_requests;
use gallery_service::telemetry::TelemetryConfig;
use gallery_service::{InProcessTracing, Telemetry};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use wasmtrace_build::{BuildOptions, build_filter};
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::{ProxyOptions, RunningProxy};

/// The `wasmtrace` binary's allocator, for every row alike (the sidecar's is that binary's; an
/// application embedding the filters picks its own, and glibc's costs every row more).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The ways the service is traced.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Row {
    NoTracing,
    SdkMiddleware,
    InProcess,
    InPlace,
    Sidecar,
}

impl Row {
    const ALL: [Row; 5] = [Row::NoTracing, Row::SdkMiddleware, Row::InProcess, Row::InPlace, Row::Sidecar];

    fn title(self) -> &'static str {
        match self {
            Row::NoTracing => "no tracing",
            Row::SdkMiddleware => "OpenTelemetry SDK middleware",
            Row::InProcess => "trace filter in-process, layer under axum::serve",
            Row::InPlace => "trace filter in-process, served by the filter workers",
            Row::Sidecar => "trace filter in a wasmtrace sidecar",
        }
    }
}

/// Workers of the in-process filters and of the sidecar (`BENCH_FILTER_WORKERS`, default 2).
fn filter_workers() -> usize {
    env_number("BENCH_FILTER_WORKERS", 2) as usize
}

/// The in-process filters' and the sidecar's options: [`filter_workers`], and with
/// `WASMTRACE_PROFILE=perfmap` the guests' functions named for `perf`.
fn filter_options() -> ProxyOptions {
    let mut options = ProxyOptions { workers: filter_workers(), ..ProxyOptions::default() };
    if let Ok(profiler) = std::env::var("WASMTRACE_PROFILE") {
        options.runtime.profiler = profiler.parse().unwrap_or_else(|e| panic!("WASMTRACE_PROFILE: {e}"));
    }
    options
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn trace_module() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    build_filter(&BuildOptions {
        crate_dir: root.join("filters/trace-filter"),
        target_dir: Some(root.join("target/wasm-filters")),
        out: Some(root.join("target/bench/trace-filter.wasm")),
        quiet: true,
        form: Default::default(),
    })
    .unwrap_or_else(|e| panic!("building the trace filter: {e}"))
    .wasm_path
}

/// A bootstrap with listener `inbound` (the trace filter, every route to cluster `app`) and
/// cluster `collector` (the sink).
fn bootstrap(module: &std::path::Path, listen: SocketAddr, app: SocketAddr, sink: SocketAddr) -> Bootstrap {
    let cluster = |name: &str, addr: SocketAddr| {
        format!(
            "    - name: {name}\n      type: STATIC\n      connect_timeout: 1s\n      load_assignment:\n        cluster_name: {name}\n        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}] }}]\n",
            addr.ip(),
            addr.port()
        )
    };
    let yaml = format!(
        r#"static_resources:
  listeners:
    - name: inbound
      address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }}
      traffic_direction: INBOUND
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: inbound
                route_config:
                  virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: app }} }}] }}]
                http_filters:
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: trace
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: '{{"service_name": "bench", "span_kind": "server", "exporter": {{"cluster": "collector", "flush_interval_ms": 1000}}}}'
                        vm_config: {{ vm_id: trace, runtime: envoy.wasm.runtime.v8, code: {{ local: {{ filename: {module} }} }} }}
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{app}{sink}"#,
        ip = listen.ip(),
        port = listen.port(),
        module = module.display(),
        app = cluster("app", app),
        sink = cluster("collector", sink),
    );
    Bootstrap::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// The span sink: answers 200 `{}` to everything, on a thread named `sink`.
fn start_sink() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let spawned = std::thread::Builder::new().name("sink".into()).spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                            let _ = request.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    spawned.unwrap_or_else(|e| panic!("sink thread: {e}"));
    addr
}

async fn hello() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "hello": "world", "service": "bench" }))
}

/// The service as `row` runs it, and what stops it.
struct Service {
    /// Where the load goes (the service, or its sidecar).
    target: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    sidecar: Option<RunningProxy>,
}

fn start_service(row: Row, module: &std::path::Path, sink: SocketAddr) -> Service {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let telemetry = (row == Row::SdkMiddleware).then(|| {
        Arc::new(Telemetry::start(&TelemetryConfig {
            service_name: "bench".into(),
            enabled: true,
            traces_endpoint: Some(format!("http://{sink}/v1/traces")),
            batch_delay: Some(Duration::from_millis(200)),
            http_spans: true,
            in_process: None,
        }))
    });
    let in_process = matches!(row, Row::InProcess | Row::InPlace).then(|| {
        InProcessTracing::start_with(bootstrap(module, any, addr, sink), filter_options())
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let sidecar = (row == Row::Sidecar).then(|| {
        wasmtrace_proxy::start(bootstrap(module, any, addr, sink), filter_options())
            .unwrap_or_else(|e| panic!("sidecar: {e}"))
    });
    let target = match &sidecar {
        Some(sidecar) => sidecar.listener_address("inbound").unwrap_or_else(|| panic!("sidecar listener")),
        None => addr,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("app-main".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("app")
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            let filters = in_process.as_ref().map(|t| t.filters().clone());
            runtime.block_on(async move {
                let mut router = Router::new().route("/hello", get(hello));
                if let Some(telemetry) = &telemetry {
                    router =
                        router.route_layer(axum::middleware::from_fn_with_state(telemetry.clone(), trace_requests));
                }
                if row == Row::InPlace
                    && let Some(in_process) = &in_process
                {
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    let served = in_process.filters().serve("inbound", listener, router, shutdown).await;
                    served.unwrap_or_else(|e| panic!("serving in place: {e}"));
                    return;
                }
                if let Some(in_process) = &in_process {
                    router = router.layer(in_process.server_layer(addr));
                }
                let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
                let _ = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
                if let Some(telemetry) = telemetry {
                    telemetry.shutdown();
                }
            });
            if let Some(filters) = filters {
                filters.shutdown();
            }
        })
        .unwrap_or_else(|e| panic!("app thread: {e}"));
    Service { target, stop, thread, sidecar }
}

impl Service {
    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        if let Some(sidecar) = self.sidecar {
            sidecar.shutdown();
        }
    }
}

/// CPU time (µs) by thread group, of every thread now alive but the load's, the sink's and main.
fn cpu_by_group() -> BTreeMap<&'static str, f64> {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let main = std::process::id().to_string();
    let mut groups = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return groups };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        if tid == main {
            continue;
        }
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let name = name.trim();
        let group = match name {
            "load" | "sink" => continue,
            "app" => "application",
            n if n.starts_with("wasmtrace-work") => "filter workers",
            _ => "other (exporter, control)",
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let used: f64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<f64>().ok()).sum();
        *groups.entry(group).or_insert(0.0) += used / ticks * 1e6;
    }
    groups
}

/// What one measured window saw.
struct Window {
    ok: u64,
    failed: u64,
    seconds: f64,
    latencies: Vec<Duration>,
    cpu: BTreeMap<&'static str, f64>,
}

/// `connections` keep-alive HTTP/1.1 connections sending `GET /hello` for `warm_up`, then for
/// `seconds` measured, on a thread named `load`: each as fast as answers come (`rate` `None`),
/// or all together `rate` requests a second, each connection its share at even intervals.
fn drive(target: SocketAddr, connections: usize, seconds: u64, rate: Option<u64>) -> Window {
    let spawned = std::thread::Builder::new().name("load".into()).spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async move {
            let warm_until = Instant::now() + Duration::from_secs(1);
            let until = warm_until + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            // Each connection's requests `period` apart, the connections' offset across one period.
            let period = rate.map(|rate| Duration::from_secs_f64(connections as f64 / rate.max(1) as f64));
            for connection in 0..connections {
                let mut pace = period.map(|period| {
                    let first = Instant::now() + period.mul_f64(connection as f64 / connections as f64);
                    let mut pace = tokio::time::interval_at(first.into(), period);
                    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    pace
                });
                tasks.push(tokio::spawn(async move {
                    let mut counts = (0u64, 0u64, Vec::new());
                    let Ok(stream) = tokio::net::TcpStream::connect(target).await else { return counts };
                    let _ = stream.set_nodelay(true);
                    let Ok((mut sender, connection)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                    else {
                        return counts;
                    };
                    tokio::spawn(connection);
                    loop {
                        if let Some(pace) = pace.as_mut() {
                            pace.tick().await;
                        }
                        let now = Instant::now();
                        if now >= until {
                            return counts;
                        }
                        let request = http::Request::builder()
                            .uri("/hello")
                            .header("host", "bench")
                            .body(Empty::<Bytes>::new())
                            .unwrap_or_else(|e| panic!("{e}"));
                        if sender.ready().await.is_err() {
                            return counts;
                        }
                        let ok = match sender.send_request(request).await {
                            Ok(response) => {
                                let status = response.status();
                                response.into_body().collect().await.is_ok() && status == http::StatusCode::OK
                            }
                            Err(_) => false,
                        };
                        if now >= warm_until {
                            if ok {
                                counts.0 += 1
                            } else {
                                counts.1 += 1
                            }
                            counts.2.push(now.elapsed());
                        }
                    }
                }));
            }
            // The measured window starts after the warm-up.
            tokio::time::sleep_until(warm_until.into()).await;
            let before = cpu_by_group();
            let started = Instant::now();
            let mut window = Window { ok: 0, failed: 0, seconds: 0.0, latencies: Vec::new(), cpu: BTreeMap::new() };
            for task in tasks {
                if let Ok((ok, failed, latencies)) = task.await {
                    window.ok += ok;
                    window.failed += failed;
                    window.latencies.extend(latencies);
                }
            }
            window.seconds = started.elapsed().as_secs_f64();
            let after = cpu_by_group();
            for (group, used) in after {
                window.cpu.insert(group, used - before.get(group).copied().unwrap_or(0.0));
            }
            window
        })
    });
    spawned.unwrap_or_else(|e| panic!("load thread: {e}")).join().unwrap_or_else(|_| panic!("the load thread panicked"))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn main() {
    let connections = env_number("BENCH_CONNECTIONS", 32) as usize;
    let seconds = env_number("BENCH_SECONDS", 5);
    let rounds = env_number("BENCH_ROUNDS", 2);
    // `BENCH_RATE=8000`: every row at the same offered load instead of as fast as it answers.
    let rate = std::env::var("BENCH_RATE").ok().and_then(|v| v.parse().ok()).filter(|rate| *rate > 0);
    let module = trace_module();
    let sink = start_sink();
    let mut windows: BTreeMap<Row, Vec<Window>> = BTreeMap::new();
    // `BENCH_ONLY=in-process` (a row title's words, any case) runs the rows that match.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default().to_lowercase();
    for round in 1..=rounds {
        for row in Row::ALL.into_iter().filter(|row| row.title().to_lowercase().contains(&only)) {
            eprintln!("[bench] round {round}: {}", row.title());
            let service = start_service(row, &module, sink);
            let window = drive(service.target, connections, seconds, rate);
            service.stop();
            windows.entry(row).or_default().push(window);
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "{connections} keep-alive HTTP/1.1 connections, {seconds} s per row after 1 s warm-up, {rounds} rounds interleaved, \
         {cores} cores shared by the load, the service, the filters and the span sink"
    );
    println!();
    struct Summary {
        rps: f64,
        p50: f64,
        p99: f64,
        cpu_us: f64,
        groups: BTreeMap<&'static str, f64>,
        failed: u64,
    }
    let summaries: BTreeMap<Row, Summary> = windows
        .into_iter()
        .map(|(row, windows)| {
            let ok: u64 = windows.iter().map(|w| w.ok).sum();
            let failed = windows.iter().map(|w| w.failed).sum();
            let seconds: f64 = windows.iter().map(|w| w.seconds).sum();
            let mut latencies: Vec<Duration> = windows.iter().flat_map(|w| w.latencies.iter().copied()).collect();
            latencies.sort();
            let mut groups = BTreeMap::new();
            for window in &windows {
                for (group, used) in &window.cpu {
                    *groups.entry(*group).or_insert(0.0) += used;
                }
            }
            let total: f64 = groups.values().sum();
            let per_request = |used: f64| if ok == 0 { 0.0 } else { used / ok as f64 };
            let summary = Summary {
                rps: ok as f64 / seconds.max(f64::EPSILON),
                p50: percentile(&latencies, 0.5),
                p99: percentile(&latencies, 0.99),
                cpu_us: per_request(total),
                groups: groups.into_iter().map(|(g, used)| (g, per_request(used))).collect(),
                failed,
            };
            (row, summary)
        })
        .collect();
    let of = |row: Row| summaries.get(&row);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    println!(
        "| service | req/s | p50 ms | p99 ms | CPU µs/request | ÷ SDK middleware | ÷ sidecar | req/s ÷ no tracing | CPU split µs/request | failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for row in Row::ALL {
        let Some(s) = of(row) else { continue };
        let split: Vec<String> = s.groups.iter().map(|(g, us)| format!("{g} {us:.1}")).collect();
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {} |",
            row.title(),
            s.rps,
            s.p50,
            s.p99,
            s.cpu_us,
            ratio(Some(s.cpu_us), of(Row::SdkMiddleware).map(|s| s.cpu_us)),
            ratio(Some(s.cpu_us), of(Row::Sidecar).map(|s| s.cpu_us)),
            ratio(Some(s.rps), of(Row::NoTracing).map(|s| s.rps)),
            split.join(", "),
            s.failed,
        );
    }
    println!();
    let cpu = |row: Row| of(row).map(|s| s.cpu_us);
    let added = |row: Row| Some(cpu(row)? - cpu(Row::NoTracing)?);
    for (in_process, how) in
        [(Row::InPlace, "served by the filter workers"), (Row::InProcess, "layer under axum::serve")]
    {
        println!(
            "in-process ({how}): CPU/request ÷ SDK middleware {} (goal ≤ 1.5); sidecar ÷ in-process {} (goal ≥ 3); \
             what tracing adds, in-process ÷ SDK middleware {}, sidecar ÷ in-process {}",
            ratio(cpu(in_process), cpu(Row::SdkMiddleware)),
            ratio(cpu(Row::Sidecar), cpu(in_process)),
            ratio(added(in_process), added(Row::SdkMiddleware)),
            ratio(added(Row::Sidecar), added(in_process)),
        );
    }
}
