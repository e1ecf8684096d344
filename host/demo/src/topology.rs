//! The demo's processes, started in this one: collector, three services, three sidecars.
//!
//! ```text
//! browser ─▶ [api sidecar :gallery] ─▶ gallery-api ─▶ [api sidecar outbound] ─▶ [catalog sidecar] ─▶ image-catalog ─▶ SQLite
//!                                                                                           image-catalog ─▶ [catalog outbound] ─▶ [store sidecar] ─▶ image-store ─▶ files
//! every sidecar and service ─▶ trace-collector (OTLP :otlp) ◀─ viewer (:viewer)
//! ```
//!
//! The services run with `http_spans` off: the sidecars make the HTTP spans, the services add
//! their database and storage spans under them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gallery_service::RunningService;
use gallery_service::telemetry::TelemetryConfig;
use trace_collector::{CollectorConfig, RunningCollector};
use wasmtrace_build::{BuildOptions, build_filter};
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::{ProxyOptions, RunningProxy};

/// Where the demo listens and keeps its state.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// The gallery (the API's inbound sidecar): what the user opens.
    pub gallery: SocketAddr,
    /// The trace viewer and Jaeger-compatible API.
    pub viewer: SocketAddr,
    /// The collector's OTLP/HTTP receiver.
    pub otlp: SocketAddr,
    /// SQLite files and images.
    pub state_dir: PathBuf,
    /// The workspace (filter crates are built from `filters/`).
    pub workspace: PathBuf,
    /// How often sidecars export their spans.
    pub flush_interval: Duration,
}

/// The three filter modules the sidecars load.
#[derive(Clone, Debug)]
pub struct FilterModules {
    /// `filters/trace-filter`.
    pub trace: PathBuf,
    /// `filters/request-id-filter`.
    pub request_id: PathBuf,
    /// `filters/tagging-filter`.
    pub tagging: PathBuf,
}

/// Builds the filters with `wasmtrace build` (cached by cargo: fast after the first time). On a
/// fresh machine with rustup but without the Wasm target, installs the target first: the demo is
/// meant to be the first command a user runs.
pub fn build_filters(workspace: &Path, progress: &dyn Fn(&str)) -> Result<FilterModules, String> {
    if wasmtrace_build::detect_toolchain().is_err() {
        progress("installing the wasm32-wasip1 target (rustup target add wasm32-wasip1)");
        let _ = std::process::Command::new("rustup").args(["target", "add", "wasm32-wasip1"]).status();
        // Still none: the build error says what to install.
        wasmtrace_build::detect_toolchain().map_err(|e| e.to_string())?;
    }
    let build = |name: &str| {
        progress(&format!("building filters/{name}"));
        build_filter(&BuildOptions {
            crate_dir: workspace.join("filters").join(name),
            target_dir: Some(workspace.join("target/wasm-filters")),
            out: Some(workspace.join("target/demo").join(format!("{name}.wasm"))),
            quiet: true,
        })
        .map(|built| built.wasm_path)
        .map_err(|e| format!("building filters/{name}: {e}"))
    };
    Ok(FilterModules {
        trace: build("trace-filter")?,
        request_id: build("request-id-filter")?,
        tagging: build("tagging-filter")?,
    })
}

/// Any free loopback port, chosen by the listener itself.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A free loopback port, released for a process started right after (the sidecars must know
/// their services' ports before the services start, and the services their sidecars').
fn reserve_port() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("no free port: {e}"))
}

fn wasm_filter(name: &str, module: &Path, configuration: &str) -> String {
    format!(
        r#"
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: {name}
                        fail_open: true
                        configuration: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: '{configuration}' }}
                        vm_config: {{ vm_id: {name}, runtime: envoy.wasm.runtime.v8, code: {{ local: {{ filename: {module} }} }} }}"#,
        module = module.display()
    )
}

fn listener(name: &str, direction: &str, address: SocketAddr, filters: &str, cluster: &str) -> String {
    format!(
        r#"
    - name: {name}
      address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }}
      traffic_direction: {direction}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: {name}
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: {cluster}, timeout: 60s }} }}]
                http_filters:{filters}
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#,
        ip = address.ip(),
        port = address.port()
    )
}

fn cluster(name: &str, address: SocketAddr) -> String {
    format!(
        r#"
    - name: {name}
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: {name}
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }} }}] }}]"#,
        ip = address.ip(),
        port = address.port()
    )
}

/// One service's sidecar: inbound → the service; outbound (when it calls another) → that
/// service's sidecar; spans → the collector.
struct Sidecar<'a> {
    service: &'a str,
    inbound: SocketAddr,
    app: SocketAddr,
    outbound: Option<(SocketAddr, SocketAddr)>,
}

fn sidecar_yaml(sidecar: &Sidecar<'_>, modules: &FilterModules, otlp: SocketAddr, flush: Duration) -> String {
    let trace = |kind: &str| {
        format!(
            r#"{{"service_name": "{}", "span_kind": "{kind}", "exporter": {{"cluster": "otel", "flush_interval_ms": {}}}}}"#,
            sidecar.service,
            flush.as_millis()
        )
    };
    let inbound_filters = [
        wasm_filter("request_id", &modules.request_id, "{}"),
        wasm_filter(
            "tagging",
            &modules.tagging,
            r#"{"rules": [{"attribute": "gallery.api_version", "path_segment": 0}, {"attribute": "gallery.failed", "status_at_least": 500, "value": "true"}]}"#,
        ),
        wasm_filter("trace_inbound", &modules.trace, &trace("server")),
    ]
    .concat();
    let mut listeners = listener("inbound", "INBOUND", sidecar.inbound, &inbound_filters, "app");
    let mut clusters = cluster("app", sidecar.app) + &cluster("otel", otlp);
    if let Some((outbound, next)) = sidecar.outbound {
        listeners += &listener(
            "outbound",
            "OUTBOUND",
            outbound,
            &wasm_filter("trace_outbound", &modules.trace, &trace("client")),
            "next",
        );
        clusters += &cluster("next", next);
    }
    format!(
        "node: {{ id: {service}-sidecar, cluster: {service} }}\nadmin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}\nstatic_resources:\n  listeners:{listeners}\n  clusters:{clusters}\n",
        service = sidecar.service
    )
}

fn start_sidecar(yaml: &str) -> Result<RunningProxy, String> {
    let bootstrap = Bootstrap::from_yaml(yaml).map_err(|e| format!("sidecar configuration: {e}"))?;
    let options = ProxyOptions { workers: 1, drain_timeout: Duration::from_secs(5), ..ProxyOptions::default() };
    wasmtrace_proxy::start(bootstrap, options).map_err(|e| format!("sidecar: {e}"))
}

/// Everything the demo runs; dropping it (or [`stop`](Self::stop)) stops it all.
pub struct RunningDemo {
    /// The gallery's address (the API's inbound sidecar).
    pub gallery: SocketAddr,
    /// The viewer's address.
    pub viewer: SocketAddr,
    /// The collector.
    pub collector: RunningCollector,
    /// gallery-api, image-catalog, image-store (in that order).
    pub services: Vec<RunningService>,
    /// Their sidecars, in the same order (each with an admin API: `wasmtrace swap` works on them).
    pub sidecars: Vec<RunningProxy>,
}

impl RunningDemo {
    /// Each sidecar's service name and admin address.
    pub fn sidecar_admins(&self) -> Vec<(&'static str, Option<SocketAddr>)> {
        ["gallery-api", "image-catalog", "image-store"]
            .into_iter()
            .zip(self.sidecars.iter().map(|s| s.admin_address()))
            .collect()
    }

    /// Stops the services, then the sidecars (flushing their spans), then the collector.
    pub fn stop(mut self) {
        for service in self.services.drain(..) {
            service.telemetry.flush();
            service.stop();
        }
        for sidecar in self.sidecars.drain(..) {
            sidecar.shutdown();
        }
    }

    /// The image store (a test stops it to see an error trace).
    pub fn stop_store(&mut self) {
        if self.services.len() == 3 {
            self.services.remove(2).stop();
        }
    }

    /// Exports every finished span of the services now.
    pub fn flush(&self) {
        for service in &self.services {
            service.telemetry.flush();
        }
    }
}

/// Starts collector, sidecars and services; `progress` hears each step.
pub fn start(config: &DemoConfig, modules: &FilterModules, progress: &dyn Fn(&str)) -> Result<RunningDemo, String> {
    progress("starting the trace collector and viewer");
    let collector = trace_collector::start(CollectorConfig {
        otlp_listen: config.otlp,
        query_listen: config.viewer,
        database: config.state_dir.join("traces.db").display().to_string(),
        retention_hours: 24,
        max_spans: 1_000_000,
    })?;
    let otlp = collector.otlp.addr;
    let (api_app, catalog_app, store_app) = (reserve_port()?, reserve_port()?, reserve_port()?);
    progress("starting the sidecars");
    let flush = config.flush_interval;
    let store_sidecar = start_sidecar(&sidecar_yaml(
        &Sidecar { service: "image-store", inbound: any_port(), app: store_app, outbound: None },
        modules,
        otlp,
        flush,
    ))?;
    let store_inbound = store_sidecar.listener_address("inbound").ok_or("store sidecar has no inbound listener")?;
    let catalog_sidecar = start_sidecar(&sidecar_yaml(
        &Sidecar {
            service: "image-catalog",
            inbound: any_port(),
            app: catalog_app,
            outbound: Some((any_port(), store_inbound)),
        },
        modules,
        otlp,
        flush,
    ))?;
    let catalog_inbound =
        catalog_sidecar.listener_address("inbound").ok_or("catalog sidecar has no inbound listener")?;
    let catalog_outbound =
        catalog_sidecar.listener_address("outbound").ok_or("catalog sidecar has no outbound listener")?;
    let api_sidecar = start_sidecar(&sidecar_yaml(
        &Sidecar {
            service: "gallery-api",
            inbound: config.gallery,
            app: api_app,
            outbound: Some((any_port(), catalog_inbound)),
        },
        modules,
        otlp,
        flush,
    ))?;
    let gallery = api_sidecar.listener_address("inbound").ok_or("api sidecar has no inbound listener")?;
    let api_outbound = api_sidecar.listener_address("outbound").ok_or("api sidecar has no outbound listener")?;

    let telemetry = |name: &str| TelemetryConfig {
        service_name: name.to_owned(),
        enabled: true,
        traces_endpoint: Some(format!("http://{otlp}/v1/traces")),
        batch_delay: Some(Duration::from_millis(200)),
        http_spans: false,
    };
    progress("starting image-store, image-catalog and gallery-api");
    let store = image_store::start(
        image_store::StoreConfig {
            listen: store_app,
            location: config.state_dir.join("images").display().to_string(),
            max_bytes: 32 << 20,
        },
        telemetry("image-store"),
    )?;
    let catalog = image_catalog::start(
        image_catalog::CatalogConfig {
            listen: catalog_app,
            database_url: format!("sqlite://{}", config.state_dir.join("catalog.db").display()),
            store_url: format!("http://{catalog_outbound}"),
            store_host: Some("image-store".into()),
            max_image_bytes: 32 << 20,
            sweep_interval_secs: 30,
        },
        telemetry("image-catalog"),
    )?;
    let viewer = collector.query.addr;
    let api = gallery_api::start(
        gallery_api::ApiConfig {
            listen: api_app,
            catalog_url: format!("http://{api_outbound}"),
            catalog_host: Some("image-catalog".into()),
            max_upload_bytes: 20 << 20,
            trace_viewer_url: format!("http://{viewer}/trace/{{trace_id}}"),
        },
        telemetry("gallery-api"),
    )?;
    Ok(RunningDemo {
        gallery,
        viewer,
        collector,
        services: vec![api, catalog, store],
        sidecars: vec![api_sidecar, catalog_sidecar, store_sidecar],
    })
}
