//! What tracing costs one small axum service, in CPU per request: the same service (`GET /hello`
//! answering a small JSON body, on a 2-worker multi-threaded tokio runtime whose threads are
//! named `app-N`) under the same closed-loop load, four ways:
//!
//! 1. `no tracing`: the bare service;
//! 2. `OpenTelemetry SDK middleware`: `gallery_service::server_span::trace_requests` as a route
//!    layer, an SDK SERVER span per request exported over OTLP/HTTP by a `BatchSpanProcessor`;
//! 3. `trace filter in-process`: the bare service behind `wasmtrace_tower`'s server layer, the
//!    trace filter (`filters/trace-filter`) running on 2 in-process wasmtrace workers;
//! 4. `trace filter in a wasmtrace sidecar`: the bare service behind `wasmtrace_proxy::start`
//!    (2 workers) with the same trace filter configuration, the load sent to the sidecar.
//!
//! Both exporters send OTLP/HTTP protobuf to a span sink (a tiny HTTP/1 server on its own
//! thread, `sink`, answering `200 {}`), which counts the spans it gets. The load generator runs
//! on its own single thread (`load-0`): N keep-alive HTTP/1.1 connections each sending
//! `GET /hello` in a loop, counting 200s, other statuses, connection errors and latencies.
//!
//! CPU per request: the utime + stime of every thread of this process (`/proc/self/task/*/stat`)
//! at the start and the end of each measured window, summed over every thread except the load
//! generator's, the sink's and the bench's main thread (the service side: the application's
//! threads, the wasmtrace workers, and the other threads a row starts — the SDK's batch
//! processor and its HTTP client, the proxy's control thread), divided by the requests answered
//! 200 in the window. Rows are interleaved over rounds; each row of each round starts everything
//! afresh, warms up for 1 s and measures for `BENCH_SECONDS`. Nothing is asserted: the table
//! and the two goal ratios are printed.
//!
//! `cargo bench -p wasmtrace-e2e --bench in_process`, with `BENCH_CONNECTIONS` (default 32),
//! `BENCH_SECONDS` (default 5) and `BENCH_ROUNDS` (default 2).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use bytes::Bytes;
use gallery_service::server_span::trace_requests;
use gallery_service::telemetry::{Telemetry, TelemetryConfig};
use http::header::{CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use wasmtrace_build::{BuildOptions, build_filter};
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::{ProxyOptions, RunningProxy};
use wasmtrace_tower::InProcessFilters;

/// Load before each measured window.
const WARM_UP: Duration = Duration::from_secs(1);
/// The application's tokio worker threads.
const APP_WORKERS: usize = 2;
/// wasmtrace workers, in-process and in the sidecar.
const FILTER_WORKERS: usize = 2;
/// The trace filter's configuration, in-process and in the sidecar.
const TRACE_CONFIG: &str = r#"{"service_name": "bench", "span_kind": "server", "exporter": {"cluster": "collector", "flush_interval_ms": 1000}}"#;

/// One way of running the service.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Row {
    NoTracing,
    SdkMiddleware,
    InProcess,
    Sidecar,
}

const ROWS: [Row; 4] = [Row::NoTracing, Row::SdkMiddleware, Row::InProcess, Row::Sidecar];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::NoTracing => "no tracing",
            Row::SdkMiddleware => "OpenTelemetry SDK middleware",
            Row::InProcess => "trace filter in-process",
            Row::Sidecar => "trace filter in a wasmtrace sidecar",
        }
    }

    fn index(self) -> usize {
        ROWS.iter().position(|row| *row == self).unwrap_or(0)
    }
}

/// The bench's parameters.
struct Settings {
    connections: usize,
    seconds: u64,
    rounds: usize,
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().unwrap_or_else(|_| panic!("{name}={value}: not a number"))
        }
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        Self {
            connections: env_number("BENCH_CONNECTIONS", 32usize).max(1),
            seconds: env_number("BENCH_SECONDS", 5u64).max(1),
            rounds: env_number("BENCH_ROUNDS", 2usize).max(1),
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The trace filter's module, built as the proxy bench builds it (into its own output file).
fn trace_filter_module() -> PathBuf {
    let root = workspace_root();
    build_filter(&BuildOptions {
        crate_dir: root.join("filters/trace-filter"),
        target_dir: Some(root.join("target/wasm-filters")),
        out: Some(root.join("target/bench/in-process/trace-filter.wasm")),
        quiet: true,
        form: Default::default(),
    })
    .unwrap_or_else(|e| panic!("building filters/trace-filter: {e}"))
    .wasm_path
}

/// A bootstrap whose listener `ingress` (a free port) runs the trace filter and routes `/` to
/// cluster `app` (`app`), with cluster `collector` at the span sink.
fn bootstrap(module: &std::path::Path, app: SocketAddr, collector: SocketAddr) -> Bootstrap {
    let yaml = format!(
        r#"
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
      traffic_direction: INBOUND
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: app, timeout: 5s }} }}]
                http_filters:
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: trace
                        configuration: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: '{TRACE_CONFIG}' }}
                        vm_config: {{ vm_id: trace_vm, runtime: envoy.wasm.runtime.v8, code: {{ local: {{ filename: {module} }} }} }}
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: app
      type: STATIC
      connect_timeout: 0.5s
      load_assignment:
        cluster_name: app
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {app_ip}, port_value: {app_port} }} }} }} }}] }}]
    - name: collector
      type: STATIC
      connect_timeout: 0.5s
      load_assignment:
        cluster_name: collector
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {sink_ip}, port_value: {sink_port} }} }} }} }}] }}]
"#,
        module = module.display(),
        app_ip = app.ip(),
        app_port = app.port(),
        sink_ip = collector.ip(),
        sink_port = collector.port(),
    );
    Bootstrap::from_yaml(&yaml).unwrap_or_else(|e| panic!("the bench's bootstrap: {e}\n{yaml}"))
}

fn proxy_options() -> ProxyOptions {
    ProxyOptions { workers: FILTER_WORKERS, drain_timeout: Duration::from_secs(5), ..ProxyOptions::default() }
}

// ---------------------------------------------------------------------------------------------
// The span sink.

/// What the sink received.
#[derive(Default)]
struct SinkCounts {
    exports: AtomicU64,
    spans: AtomicU64,
    undecodable: AtomicU64,
}

/// Where the sink listens, and its counts.
struct Sink {
    addr: SocketAddr,
    counts: Arc<SinkCounts>,
}

/// Starts the span sink on its own thread (`sink`): `POST /v1/traces` answers `200 {}` and its
/// spans are counted; anything else answers 404.
fn start_sink() -> Sink {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("sink: bind: {e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("sink: non-blocking: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("sink: address: {e}"));
    let counts = Arc::new(SinkCounts::default());
    let thread_counts = counts.clone();
    std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("sink: runtime: {e}"));
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("sink: listener: {e}"));
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let _ = stream.set_nodelay(true);
                    let counts = thread_counts.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                            let counts = counts.clone();
                            async move { Ok::<_, Infallible>(sink_answer(&counts, request).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        })
        .unwrap_or_else(|e| panic!("sink: thread: {e}"));
    Sink { addr, counts }
}

async fn sink_answer(counts: &SinkCounts, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let export = request.method() == Method::POST && request.uri().path() == "/v1/traces";
    let body = request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if !export {
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    counts.exports.fetch_add(1, Ordering::Relaxed);
    match ExportTraceServiceRequest::decode(body) {
        Ok(export) => {
            let spans: usize = export
                .resource_spans
                .iter()
                .flat_map(|resource| &resource.scope_spans)
                .map(|scope| scope.spans.len())
                .sum();
            counts.spans.fetch_add(spans as u64, Ordering::Relaxed);
        }
        Err(_) => {
            counts.undecodable.fetch_add(1, Ordering::Relaxed);
        }
    }
    response
}

// ---------------------------------------------------------------------------------------------
// The service.

async fn hello() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "message": "hello", "service": "bench" }))
}

/// The bare service: one route.
fn service() -> Router {
    Router::new().route("/hello", get(hello))
}

/// The application's runtime: 2 workers, threads `app-N`.
fn app_runtime() -> tokio::runtime::Runtime {
    let next = Arc::new(AtomicUsize::new(0));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(APP_WORKERS)
        .thread_name_fn(move || format!("app-{}", next.fetch_add(1, Ordering::Relaxed)))
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("the application's runtime: {e}"))
}

/// Serves `router` on `listener` in `runtime` (TCP_NODELAY, the client's address as
/// `ConnectInfo`), until the runtime stops.
fn serve(runtime: &tokio::runtime::Runtime, listener: std::net::TcpListener, router: Router) {
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("app: listener: {e}"));
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await {
            eprintln!("app: serve: {e}");
        }
    });
}

/// A row's running service and what it takes to stop it.
struct Running {
    /// Where the load goes.
    target: SocketAddr,
    runtime: tokio::runtime::Runtime,
    telemetry: Option<Arc<Telemetry>>,
    filters: Option<InProcessFilters>,
    sidecar: Option<RunningProxy>,
}

/// Starts `row`'s service (from the main thread, outside every runtime).
fn start_row(row: Row, module: &std::path::Path, sink: SocketAddr) -> Running {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("app: bind: {e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("app: non-blocking: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("app: address: {e}"));
    let runtime = app_runtime();
    let mut running = Running { target: addr, runtime, telemetry: None, filters: None, sidecar: None };
    let router = match row {
        Row::NoTracing => service(),
        Row::SdkMiddleware => {
            let telemetry = Arc::new(Telemetry::start(&TelemetryConfig {
                service_name: "bench".into(),
                enabled: true,
                traces_endpoint: Some(format!("http://{sink}/v1/traces")),
                batch_delay: Some(Duration::from_millis(200)),
                http_spans: true,
                in_process: None,
            }));
            running.telemetry = Some(telemetry.clone());
            service().route_layer(axum::middleware::from_fn_with_state(telemetry, trace_requests))
        }
        Row::InProcess => {
            let filters = InProcessFilters::start(bootstrap(module, addr, sink), proxy_options())
                .unwrap_or_else(|e| panic!("the in-process filters: {e}"));
            let layer = filters
                .server_layer("ingress")
                .unwrap_or_else(|e| panic!("the in-process server layer: {e}"))
                .with_local_address(addr);
            running.filters = Some(filters);
            service().layer(layer)
        }
        Row::Sidecar => {
            let sidecar = wasmtrace_proxy::start(bootstrap(module, addr, sink), proxy_options())
                .unwrap_or_else(|e| panic!("the sidecar: {e}"));
            running.target =
                sidecar.listener_address("ingress").unwrap_or_else(|| panic!("the sidecar has no listener `ingress`"));
            running.sidecar = Some(sidecar);
            service()
        }
    };
    serve(&running.runtime, listener, router);
    running
}

impl Running {
    /// Stops the filters or the sidecar (letting them flush their spans), then the application,
    /// then the SDK's pipeline (flushing it). Blocking: called from the main thread.
    fn stop(self) {
        if let Some(sidecar) = self.sidecar {
            sidecar.shutdown();
        }
        if let Some(filters) = self.filters {
            filters.shutdown();
        }
        self.runtime.shutdown_timeout(Duration::from_secs(2));
        if let Some(telemetry) = self.telemetry {
            telemetry.shutdown();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load.

/// What the load generator saw.
#[derive(Default)]
struct Load {
    /// 200s completed inside the measured window.
    ok_window: u64,
    /// Every 200 (warm-up included).
    ok_total: u64,
    /// Answers other than 200.
    non_200: u64,
    /// Connections that failed (connect, handshake, send, body).
    errors: u64,
    /// The first non-200 or error, to print.
    first_problem: Option<String>,
    /// Latencies of the window's 200s.
    latencies: Vec<Duration>,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.ok_window += other.ok_window;
        self.ok_total += other.ok_total;
        self.non_200 += other.non_200;
        self.errors += other.errors;
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
        self.latencies.extend(other.latencies);
    }

    fn problem(&mut self, text: String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(text);
        }
    }
}

/// One keep-alive connection sending `GET /hello` until `until` (reconnecting after errors).
async fn connection(target: SocketAddr, warm_until: Instant, until: Instant) -> Load {
    let mut load = Load::default();
    'connect: while Instant::now() < until {
        let stream = match tokio::net::TcpStream::connect(target).await {
            Ok(stream) => stream,
            Err(e) => {
                load.errors += 1;
                load.problem(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await {
                Ok(handshake) => handshake,
                Err(e) => {
                    load.errors += 1;
                    load.problem(format!("handshake: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
        tokio::spawn(connection);
        while Instant::now() < until {
            if let Err(e) = sender.ready().await {
                load.errors += 1;
                load.problem(format!("connection: {e}"));
                continue 'connect;
            }
            let request = Request::get("/hello")
                .header(HOST, "bench.local")
                .header(USER_AGENT, "wasmtrace-bench")
                .body(Empty::new())
                .unwrap_or_else(|e| panic!("the load's request: {e}"));
            let started = Instant::now();
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(e) => {
                    load.errors += 1;
                    load.problem(format!("request: {e}"));
                    continue 'connect;
                }
            };
            let status = response.status();
            if let Err(e) = response.into_body().collect().await {
                load.errors += 1;
                load.problem(format!("response body: {e}"));
                continue 'connect;
            }
            let finished = Instant::now();
            if status != StatusCode::OK {
                load.non_200 += 1;
                load.problem(format!("answered {status}"));
                continue;
            }
            load.ok_total += 1;
            if finished >= warm_until && finished <= until {
                load.ok_window += 1;
                load.latencies.push(finished - started);
            }
        }
    }
    load
}

/// The load generator on its own thread (`load-0`, a current-thread runtime): `connections`
/// connections until `until`.
fn start_load(target: SocketAddr, connections: usize, warm_until: Instant, until: Instant) -> JoinHandle<Load> {
    std::thread::Builder::new()
        .name("load-0".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("the load's runtime: {e}"));
            runtime.block_on(async move {
                let tasks: Vec<_> =
                    (0..connections).map(|_| tokio::spawn(connection(target, warm_until, until))).collect();
                let mut load = Load::default();
                for task in tasks {
                    match task.await {
                        Ok(one) => load.add(one),
                        Err(e) => {
                            load.errors += 1;
                            load.problem(format!("a connection task: {e}"));
                        }
                    }
                }
                load
            })
        })
        .unwrap_or_else(|e| panic!("the load's thread: {e}"))
}

// ---------------------------------------------------------------------------------------------
// CPU per thread.

/// Every thread's name and CPU time (utime + stime, clock ticks), by thread id.
type ThreadTimes = HashMap<u32, (String, u64)>;

fn thread_times() -> ThreadTimes {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap_or_else(|e| panic!("/proc/self/task: {e}"));
    let mut times = HashMap::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // A thread that ended meanwhile has no files left: skip it.
        let (Ok(stat), Ok(comm)) =
            (std::fs::read_to_string(task.path().join("stat")), std::fs::read_to_string(task.path().join("comm")))
        else {
            continue;
        };
        // The name in `stat` is in parentheses and may hold spaces: the fields after the last
        // `)` start at field 3 (state); utime and stime are fields 14 and 15.
        let Some((_, fields)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        times.insert(tid, (comm.trim_end().to_owned(), field(14) + field(15)));
    }
    times
}

/// CPU over a window, in clock ticks, by thread group.
#[derive(Default)]
struct CpuSplit {
    /// The application's runtime threads (`app-N`).
    app: u64,
    /// wasmtrace workers (`wasmtrace-worker-N`, in-process or the sidecar's).
    workers: u64,
    /// Every other service-side thread.
    other: u64,
    /// [`CpuSplit::other`] by thread name (digits dropped).
    other_by_name: BTreeMap<String, u64>,
    /// Not the service's: the load generator, the sink, the bench's main thread.
    load: u64,
    sink: u64,
    main: u64,
}

impl CpuSplit {
    fn between(before: &ThreadTimes, after: &ThreadTimes) -> Self {
        let main = std::process::id();
        let mut split = CpuSplit::default();
        for (tid, (name, ticks)) in after {
            let ticks = ticks.saturating_sub(before.get(tid).map_or(0, |(_, ticks)| *ticks));
            if *tid == main {
                split.main += ticks;
            } else if name.starts_with("load-") {
                split.load += ticks;
            } else if name == "sink" {
                split.sink += ticks;
            } else if name.starts_with("app-") {
                split.app += ticks;
            } else if name.starts_with("wasmtrace-work") {
                // `comm` keeps 15 bytes: `wasmtrace-worke`.
                split.workers += ticks;
            } else {
                split.other += ticks;
                let group = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
                *split.other_by_name.entry(group.to_owned()).or_default() += ticks;
            }
        }
        split
    }

    fn service(&self) -> u64 {
        self.app + self.workers + self.other
    }

    fn add(&mut self, other: CpuSplit) {
        self.app += other.app;
        self.workers += other.workers;
        self.other += other.other;
        for (name, ticks) in other.other_by_name {
            *self.other_by_name.entry(name).or_default() += ticks;
        }
        self.load += other.load;
        self.sink += other.sink;
        self.main += other.main;
    }
}

// ---------------------------------------------------------------------------------------------
// One measurement.

/// A row's totals over the rounds.
#[derive(Default)]
struct Totals {
    load: Load,
    window: Duration,
    cpu: CpuSplit,
    spans: u64,
    exports: u64,
    undecodable: u64,
    /// Per round: requests/s and service CPU µs/request.
    rounds: Vec<(f64, f64)>,
}

/// One row, once: start it, load it (warm-up, then the measured window with CPU read at both
/// ends), stop it, and count the spans its exporters sent.
fn measure(row: Row, settings: &Settings, module: &std::path::Path, sink: &Sink, ticks_per_second: f64) -> Totals {
    let spans_before = sink.counts.spans.load(Ordering::Relaxed);
    let exports_before = sink.counts.exports.load(Ordering::Relaxed);
    let undecodable_before = sink.counts.undecodable.load(Ordering::Relaxed);
    let running = start_row(row, module, sink.addr);
    let warm_until = Instant::now() + WARM_UP;
    let until = warm_until + Duration::from_secs(settings.seconds);
    let load = start_load(running.target, settings.connections, warm_until, until);
    std::thread::sleep(warm_until.saturating_duration_since(Instant::now()));
    let before = thread_times();
    let started = Instant::now();
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let after = thread_times();
    let window = started.elapsed();
    let load = load.join().unwrap_or_else(|_| panic!("the load generator panicked"));
    running.stop();
    let cpu = CpuSplit::between(&before, &after);
    let rate = load.ok_window as f64 / window.as_secs_f64();
    let per_request = micros_per_request(cpu.service(), load.ok_window, ticks_per_second);
    Totals {
        rounds: vec![(rate, per_request)],
        load,
        window,
        cpu,
        spans: sink.counts.spans.load(Ordering::Relaxed) - spans_before,
        exports: sink.counts.exports.load(Ordering::Relaxed) - exports_before,
        undecodable: sink.counts.undecodable.load(Ordering::Relaxed) - undecodable_before,
    }
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.load.add(other.load);
        self.window += other.window;
        self.cpu.add(other.cpu);
        self.spans += other.spans;
        self.exports += other.exports;
        self.undecodable += other.undecodable;
        self.rounds.extend(other.rounds);
    }

    fn rate(&self) -> f64 {
        self.load.ok_window as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

fn micros_per_request(ticks: u64, requests: u64, ticks_per_second: f64) -> f64 {
    if requests == 0 {
        return f64::NAN;
    }
    ticks as f64 / ticks_per_second * 1e6 / requests as f64
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() {
    let settings = Settings::from_env();
    let ticks_per_second = rustix::param::clock_ticks_per_second() as f64;
    eprintln!("building filters/trace-filter …");
    let module = trace_filter_module();
    let sink = start_sink();
    let mut totals: Vec<Totals> = ROWS.iter().map(|_| Totals::default()).collect();
    for round in 1..=settings.rounds {
        for row in ROWS {
            eprintln!("round {round}/{}: {} …", settings.rounds, row.name());
            let measured = measure(row, &settings, &module, &sink, ticks_per_second);
            eprintln!(
                "  {:.0} req/s, {:.1} µs CPU/request, {} non-200, {} errors",
                measured.rate(),
                micros_per_request(measured.cpu.service(), measured.load.ok_window, ticks_per_second),
                measured.load.non_200,
                measured.load.errors
            );
            totals[row.index()].add(measured);
        }
    }
    for row in &mut totals {
        row.load.latencies.sort_unstable();
    }
    let cpu = |row: Row| {
        let totals = &totals[row.index()];
        micros_per_request(totals.cpu.service(), totals.load.ok_window, ticks_per_second)
    };
    let (sdk, in_process, sidecar) = (cpu(Row::SdkMiddleware), cpu(Row::InProcess), cpu(Row::Sidecar));
    let bare_rate = totals[Row::NoTracing.index()].rate();

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("## CPU per request: the same axum service, four ways");
    println!();
    println!(
        "Machine: {cores} cores ({}). {} keep-alive HTTP/1.1 connections from one load thread, closed loop; \
         {} round(s), each row {} s after {} s warm-up, rows interleaved. Service: axum on {APP_WORKERS} tokio \
         workers; wasmtrace workers: {FILTER_WORKERS}; SDK batch delay 200 ms; trace filter flush 1000 ms. \
         CPU: utime+stime of every thread but the load generator's, the sink's and main ({} ticks/s).",
        cpu_model(),
        settings.connections,
        settings.rounds,
        settings.seconds,
        WARM_UP.as_secs(),
        ticks_per_second
    );
    println!();
    println!(
        "| row | req/s | p50 ms | p99 ms | CPU µs/request | CPU ÷ SDK middleware | CPU ÷ sidecar | req/s ÷ no tracing |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in ROWS {
        let t = &totals[row.index()];
        let per_request = cpu(row);
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.1} | {:.2} | {:.2} | {:.2} |",
            row.name(),
            t.rate(),
            percentile_ms(&t.load.latencies, 0.50),
            percentile_ms(&t.load.latencies, 0.99),
            per_request,
            per_request / sdk,
            per_request / sidecar,
            t.rate() / bare_rate
        );
    }
    println!();
    println!("Where the service-side CPU went (µs per request), and what else ran:");
    println!();
    println!(
        "| row | app threads | wasmtrace workers | other | other threads | load generator | sink | spans exported / 200s | non-200 | errors |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for row in ROWS {
        let t = &totals[row.index()];
        let us = |ticks: u64| micros_per_request(ticks, t.load.ok_window, ticks_per_second);
        let others: Vec<String> = t
            .cpu
            .other_by_name
            .iter()
            .filter(|(_, ticks)| **ticks > 0)
            .map(|(name, ticks)| format!("{name} {:.1}", us(*ticks)))
            .collect();
        let spans = if t.load.ok_total == 0 {
            "-".to_owned()
        } else {
            format!("{} / {} ({:.3})", t.spans, t.load.ok_total, t.spans as f64 / t.load.ok_total as f64)
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {spans} | {} | {} |",
            row.name(),
            us(t.cpu.app),
            us(t.cpu.workers),
            us(t.cpu.other),
            if others.is_empty() { "-".to_owned() } else { others.join(", ") },
            us(t.cpu.load),
            us(t.cpu.sink),
            t.load.non_200,
            t.load.errors
        );
    }
    println!();
    println!("Per round (req/s, CPU µs/request):");
    println!();
    for row in ROWS {
        let t = &totals[row.index()];
        let rounds: Vec<String> = t.rounds.iter().map(|(rate, us)| format!("{rate:.0} req/s, {us:.1} µs")).collect();
        println!("- {}: {}", row.name(), rounds.join("; "));
    }
    let problems: Vec<String> = ROWS
        .iter()
        .filter_map(|row| {
            let t = &totals[row.index()];
            let mut notes = Vec::new();
            if let Some(problem) = &t.load.first_problem {
                notes.push(format!("first problem: {problem}"));
            }
            if t.undecodable > 0 {
                notes.push(format!("{} of {} exports the sink could not decode", t.undecodable, t.exports));
            }
            (!notes.is_empty()).then(|| format!("- {}: {}", row.name(), notes.join("; ")))
        })
        .collect();
    if !problems.is_empty() {
        println!();
        println!("Problems:");
        for problem in problems {
            println!("{problem}");
        }
    }
    println!();
    println!("in-process CPU/request ÷ SDK middleware CPU/request: {:.2} (goal ≤ 1.5)", in_process / sdk);
    println!("sidecar CPU/request ÷ in-process CPU/request: {:.2} (goal ≥ 3)", sidecar / in_process);
}
