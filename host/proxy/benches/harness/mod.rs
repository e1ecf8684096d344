//! What the proxy benchmarks share: filter modules, a minimal upstream/collector server, a
//! proxy in front of it, and keep-alive HTTP/1.1 load with latency percentiles.

#![allow(dead_code, reason = "each bench uses the part it needs")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use wasmtrace_build::{BuildOptions, build_filter};
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::{ProxyOptions, RunningProxy};

/// The module of the filter crate at `crate_dir` (relative to the workspace), built once.
pub fn module(crate_dir: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let name = crate_dir.rsplit('/').next().unwrap_or(crate_dir);
    build_filter(&BuildOptions {
        crate_dir: root.join(crate_dir),
        target_dir: Some(root.join("target/wasm-filters")),
        out: Some(root.join(format!("target/bench/{name}.wasm"))),
        quiet: true,
        form: Default::default(),
    })
    .unwrap_or_else(|e| panic!("building {crate_dir}: {e}"))
    .wasm_path
}

/// A minimal HTTP/1.1 server on its own single-threaded runtime: reads the request, waits
/// `delay`, answers 200 with `body`. The upstream (no delay) and the collectors (up, slow).
pub fn start_server(body: &'static [u8], delay: Duration) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("non-blocking: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("address: {e}"));
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| async move {
                            let _ = request.into_body().collect().await;
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(body))))
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

/// A Wasm filter for a bench row: its module and plugin configuration.
pub type FilterUnderTest<'a> = Option<(&'a PathBuf, &'a str)>;

/// A proxy in front of `upstream` with an optional Wasm filter (`module`, `configuration`), and a
/// `collector` cluster the trace filter exports to.
pub fn proxy(upstream: SocketAddr, filter: FilterUnderTest<'_>, collector: SocketAddr) -> RunningProxy {
    proxy_with_admin(upstream, filter, collector, false)
}

/// [`proxy`], with an admin API on a free loopback port when `admin` is set.
pub fn proxy_with_admin(
    upstream: SocketAddr,
    filter: FilterUnderTest<'_>,
    collector: SocketAddr,
    admin: bool,
) -> RunningProxy {
    proxy_with_options(upstream, filter, collector, admin, ProxyOptions::default())
}

/// [`proxy_with_admin`] with `options`.
pub fn proxy_with_options(
    upstream: SocketAddr,
    filter: FilterUnderTest<'_>,
    collector: SocketAddr,
    admin: bool,
    options: ProxyOptions,
) -> RunningProxy {
    let filter = filter.map_or(String::new(), |(module, configuration)| {
        format!(
            r#"
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: filter
                        configuration: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: '{configuration}' }}
                        vm_config: {{ runtime: envoy.wasm.runtime.v8, code: {{ local: {{ filename: {} }} }} }}"#,
            module.display()
        )
    });
    let admin =
        if admin { "admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }" } else { "" };
    let yaml = format!(
        r#"
{admin}
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
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
                      routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: upstream }} }}]
                http_filters:{filter}
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: upstream
      type: STATIC
      load_assignment:
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}]
    - name: collector
      type: STATIC
      connect_timeout: 0.25s
      load_assignment:
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {collector_port} }} }} }} }}] }}]
"#,
        port = upstream.port(),
        collector_port = collector.port()
    );
    let bootstrap = Bootstrap::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    wasmtrace_proxy::start(bootstrap, options).unwrap_or_else(|e| panic!("{e}"))
}

/// One load run: requests completed after warm-up, errors, duration, sorted latencies.
pub struct Outcome {
    /// Requests measured.
    pub requests: usize,
    /// Connections that failed.
    pub errors: usize,
    /// Measured time.
    pub elapsed: Duration,
    /// Latencies, sorted.
    pub latencies: Vec<Duration>,
}

async fn one_connection(addr: SocketAddr, until: Instant, warm_until: Instant) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!("{addr}: connect: {e}");
            return (latencies, 1);
        }
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return (latencies, 1);
    };
    tokio::spawn(connection);
    while Instant::now() < until {
        let request = Request::get("/v0/images?limit=20")
            .header("host", "gallery.local")
            .header("user-agent", "wasmtrace-load")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .body(Empty::new())
            .unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        match sender.send_request(request).await {
            Ok(response) if response.status().is_success() => {
                let _ = response.into_body().collect().await;
                if started >= warm_until {
                    latencies.push(started.elapsed());
                }
            }
            Ok(response) => {
                eprintln!("{addr}: answered {}", response.status());
                errors += 1;
                break;
            }
            Err(e) => {
                eprintln!("{addr}: {e}");
                errors += 1;
                break;
            }
        }
    }
    (latencies, errors)
}

/// `connections` keep-alive connections for `seconds` after one second of warm-up.
pub fn drive(addr: SocketAddr, connections: usize, seconds: u64) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let warm_until = Instant::now() + Duration::from_secs(1);
        let until = warm_until + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..connections).map(|_| tokio::spawn(one_connection(addr, until, warm_until))).collect();
        let mut outcome =
            Outcome { requests: 0, errors: 0, elapsed: Duration::from_secs(seconds), latencies: Vec::new() };
        for task in tasks {
            if let Ok((latencies, errors)) = task.await {
                outcome.requests += latencies.len();
                outcome.errors += errors;
                outcome.latencies.extend(latencies);
            }
        }
        outcome.latencies.sort();
        outcome
    })
}

/// The `p` quantile of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Prints load rows as a Markdown table: requests/s, p50, p99, errors.
pub fn print_load_table(first_column: &str, rows: &[(String, Outcome)]) {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0).max(first_column.len());
    println!("| {first_column:<width$} | {:>10} | {:>9} | {:>9} | {:>6} |", "requests/s", "p50 ms", "p99 ms", "errors");
    println!("|{:-<w$}|{:->12}|{:->11}|{:->11}|{:->8}|", "", "", "", "", "", w = width + 2);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (name, outcome) in rows {
        println!(
            "| {name:<width$} | {:>10.0} | {:>9.3} | {:>9.3} | {:>6} |",
            outcome.requests as f64 / outcome.elapsed.as_secs_f64(),
            ms(percentile(&outcome.latencies, 0.50)),
            ms(percentile(&outcome.latencies, 0.99)),
            outcome.errors
        );
    }
}
