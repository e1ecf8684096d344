//! The demo's processes, started in this one: collector, three services, three sidecars.
//!
//! ```text
//! browser ─▶ [api sidecar :gallery] ─▶ gallery-api ─▶ [api sidecar outbound] ─▶ [catalog sidecar] ─▶ image-catalog ─▶ SQLite
//!                                                                                           image-catalog ─▶ [catalog outbound] ─▶ [store sidecar] ─▶ image-store ─▶ files
//! every sidecar and service ─▶ trace-collector (OTLP :otlp) ◀─ viewer (:viewer)
//! ```
//!
//! The sidecars run `deploy/envoy/{service}.yaml` as written — the files the README starts
//! Envoy with — moved to free ports when [`Ports::Ephemeral`] asks for it.
//!
//! The services run with `http_spans` off: the sidecars make the HTTP spans, the services add
//! their database and storage spans under them.
//!
//! With [`Tracing::InProcess`] (`wasmtrace demo --in-process`) there are no sidecars: each
//! service runs its sidecar file's filters inside itself (`wasmtrace-tower`), listening where
//! its sidecar's inbound listener would, and calls the next service directly through its
//! outbound filters. The trace has the same spans.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gallery_service::telemetry::TelemetryConfig;
use gallery_service::{InProcessTracing, RunningService};
use trace_collector::{CollectorConfig, RunningCollector};
use wasmtrace_build::{BuildOptions, build_filter};
use wasmtrace_config::{Bootstrap, Placement};
use wasmtrace_proxy::{ProxyOptions, RunningProxy};

use crate::DemoError;

/// Where the demo's sockets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    /// Where `deploy/envoy/*.yaml` put them (gallery on 8080, OTLP on 4318, ...): the same
    /// layout as the README's Envoy commands.
    AsDeployed,
    /// Every socket on a free port: tests, or a demo next to another one.
    Ephemeral,
}

/// Where the gallery's HTTP spans are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tracing {
    /// A wasmtrace sidecar in front of each service.
    #[default]
    Sidecars,
    /// The same filters inside each service.
    InProcess,
}

/// Where the demo listens and keeps its state.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Sidecars, or the filters in-process.
    pub tracing: Tracing,
    /// The trace viewer and Jaeger-compatible API (not part of the sidecar files).
    pub viewer: SocketAddr,
    /// Where the sidecars, services and the collector's OTLP receiver listen.
    pub ports: Ports,
    /// SQLite files and images.
    pub state_dir: PathBuf,
    /// The workspace (filter crates are built from `filters/`, sidecars read from `deploy/envoy/`).
    pub workspace: PathBuf,
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

/// Where the deploy files expect the filter modules, relative to the workspace (and to Envoy's
/// working directory): `target/wasm/{crate}.wasm`.
pub fn deployed_module_path(workspace: &Path, filter_crate: &str) -> PathBuf {
    workspace.join("target/wasm").join(format!("{filter_crate}.wasm"))
}

/// Builds the filters with `wasmtrace build` into `target/wasm/` (where the deploy files load
/// them from; cached by cargo: fast after the first time). On a fresh machine with rustup but
/// without the Wasm target, installs the target first: the demo is meant to be the first command
/// a user runs.
pub fn build_filters(workspace: &Path, progress: &dyn Fn(&str)) -> Result<FilterModules, DemoError> {
    if wasmtrace_build::detect_toolchain().is_err() {
        progress("installing the wasm32-wasip1 target (rustup target add wasm32-wasip1)");
        let _ = std::process::Command::new("rustup").args(["target", "add", "wasm32-wasip1"]).status();
        // Still none: the build error says what to install.
        wasmtrace_build::detect_toolchain().map_err(DemoError::Toolchain)?;
    }
    let build = |name: &str| {
        progress(&format!("building filters/{name}"));
        build_filter(&BuildOptions {
            crate_dir: workspace.join("filters").join(name),
            target_dir: Some(workspace.join("target/wasm-filters")),
            out: Some(deployed_module_path(workspace, name)),
            quiet: true,
            form: Default::default(),
        })
        .map(|built| built.wasm_path)
        .map_err(|source| DemoError::Build { name: name.to_owned(), source })
    };
    Ok(FilterModules {
        trace: build("trace-filter")?,
        request_id: build("request-id-filter")?,
        tagging: build("tagging-filter")?,
    })
}

/// The gallery services, in the order their sidecars start (each calls the one before).
const SERVICES: [&str; 3] = ["image-store", "image-catalog", "gallery-api"];

/// `deploy/envoy/{service}.yaml`, read and validated, with module paths anchored at the workspace.
pub fn sidecar_bootstrap(workspace: &Path, service: &str) -> Result<Bootstrap, DemoError> {
    let path = workspace.join("deploy/envoy").join(format!("{service}.yaml"));
    let mut bootstrap =
        Bootstrap::from_file(&path).map_err(|source| DemoError::Config { path: path.clone(), source })?;
    bootstrap.anchor_module_paths(workspace);
    Ok(bootstrap)
}

/// The single static IP endpoint of cluster `name` (how the deploy files address local things).
fn static_endpoint(bootstrap: &Bootstrap, name: &str) -> Result<SocketAddr, DemoError> {
    let topology = |text: String| DemoError::Topology(text);
    let cluster =
        bootstrap.cluster(name).ok_or_else(|| topology(format!("the sidecar file has no cluster `{name}`")))?;
    match cluster.endpoints.as_slice() {
        [endpoint] => format!("{}:{}", endpoint.host, endpoint.port)
            .parse()
            .map_err(|_| topology(format!("cluster `{name}` is not one IP address and port"))),
        _ => Err(topology(format!("cluster `{name}` should have exactly one endpoint"))),
    }
}

/// Any free loopback port, chosen by the listener itself.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A free loopback port, released for a process started right after (the sidecars must know
/// their services' ports before the services start, and the services their sidecars').
fn reserve_port() -> Result<SocketAddr, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(DemoError::Port)
}

fn start_sidecar(service: &str, bootstrap: Bootstrap) -> Result<RunningProxy, DemoError> {
    let options = ProxyOptions { workers: 1, drain_timeout: Duration::from_secs(5), ..ProxyOptions::default() };
    wasmtrace_proxy::start(bootstrap, options)
        .map_err(|source| DemoError::Sidecar { service: service.to_owned(), source: Box::new(source) })
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
    /// Their sidecars, in the same order (each with an admin API: `wasmtrace swap` works on
    /// them); none with the filters in-process.
    pub sidecars: Vec<RunningProxy>,
}

impl RunningDemo {
    /// Each service's name and the admin address of its filters (its sidecar's, or its
    /// in-process filters').
    pub fn sidecar_admins(&self) -> Vec<(&'static str, Option<SocketAddr>)> {
        let admins: Vec<Option<SocketAddr>> = if self.sidecars.is_empty() {
            self.services
                .iter()
                .map(|s| s.telemetry.in_process().and_then(|filters| filters.filters().admin_address()))
                .collect()
        } else {
            self.sidecars.iter().map(|s| s.admin_address()).collect()
        };
        ["gallery-api", "image-catalog", "image-store"].into_iter().zip(admins).collect()
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

/// Starts collector, sidecars (from `deploy/envoy/`) and services; `progress` hears each step.
pub fn start(config: &DemoConfig, progress: &dyn Fn(&str)) -> Result<RunningDemo, DemoError> {
    let ephemeral = config.ports == Ports::Ephemeral;
    let mut bootstraps = Vec::new();
    for service in SERVICES {
        bootstraps.push(sidecar_bootstrap(&config.workspace, service)?);
    }
    progress("starting the trace collector and viewer");
    let otlp = if ephemeral { any_port() } else { static_endpoint(&bootstraps[0], "otel-collector")? };
    let collector = trace_collector::start(CollectorConfig {
        otlp_listen: otlp,
        query_listen: config.viewer,
        database: config.state_dir.join("traces.db").display().to_string(),
        retention_hours: 24,
        max_spans: 1_000_000,
    })?;
    let otlp = collector.otlp.addr;
    if config.tracing == Tracing::InProcess {
        return start_in_process(config, bootstraps, collector, progress);
    }

    progress("starting the sidecars (deploy/envoy/*.yaml)");
    let mut sidecars: Vec<RunningProxy> = Vec::new();
    let mut apps = Vec::new();
    for (index, (service, mut bootstrap)) in SERVICES.into_iter().zip(bootstraps).enumerate() {
        let app = if ephemeral { reserve_port()? } else { static_endpoint(&bootstrap, "local_app")? };
        let mut placement = Placement::default().cluster("otel-collector", otlp);
        if ephemeral {
            placement = placement.listener("inbound", any_port()).cluster("local_app", app).admin(any_port());
            if bootstrap.listener_address("outbound").is_some() {
                placement = placement.listener("outbound", any_port());
            }
            // Each service calls the one started before it, through that one's sidecar.
            if let (Some(callee), Some(previous)) = (index.checked_sub(1).map(|i| SERVICES[i]), sidecars.last()) {
                let inbound = previous
                    .listener_address("inbound")
                    .ok_or_else(|| DemoError::Topology("a sidecar has no inbound listener".into()))?;
                placement = placement.cluster(callee, inbound);
            }
        }
        bootstrap.place(&placement).map_err(|source| DemoError::Placement { service: service.to_string(), source })?;
        sidecars.push(start_sidecar(service, bootstrap)?);
        apps.push(app);
    }
    let outbound = |index: usize| {
        sidecars[index]
            .listener_address("outbound")
            .ok_or_else(|| DemoError::Topology(format!("the {} sidecar has no outbound listener", SERVICES[index])))
    };
    let (catalog_outbound, api_outbound) = (outbound(1)?, outbound(2)?);
    let gallery = sidecars[2]
        .listener_address("inbound")
        .ok_or_else(|| DemoError::Topology("the api sidecar has no inbound listener".into()))?;

    progress("starting image-store, image-catalog and gallery-api");
    let telemetry = |name: &str| service_telemetry(name, otlp, None);
    let services = start_services(config, &apps, &telemetry, collector.query.addr, (catalog_outbound, api_outbound))?;
    sidecars.reverse();
    Ok(RunningDemo { gallery, viewer: collector.query.addr, collector, services, sidecars })
}

/// How a demo service exports its spans (the HTTP spans are the filters').
fn service_telemetry(name: &str, otlp: SocketAddr, in_process: Option<InProcessTracing>) -> TelemetryConfig {
    TelemetryConfig {
        service_name: name.to_owned(),
        enabled: true,
        traces_endpoint: Some(format!("http://{otlp}/v1/traces")),
        batch_delay: Some(Duration::from_millis(200)),
        http_spans: false,
        in_process,
    }
}

/// The services without sidecars: each runs its sidecar file's filters itself, listens where
/// that file's inbound listener would, and calls the next service there.
fn start_in_process(
    config: &DemoConfig,
    bootstraps: Vec<Bootstrap>,
    collector: RunningCollector,
    progress: &dyn Fn(&str),
) -> Result<RunningDemo, DemoError> {
    let ephemeral = config.ports == Ports::Ephemeral;
    let otlp = collector.otlp.addr;
    progress("starting the filters of deploy/envoy/*.yaml inside each service");
    let mut apps = Vec::new();
    let mut filters = Vec::new();
    for (service, mut bootstrap) in SERVICES.into_iter().zip(bootstraps) {
        let inbound = bootstrap
            .listener_address("inbound")
            .ok_or_else(|| DemoError::Topology("a sidecar file has no inbound listener".into()))?;
        apps.push(if ephemeral { reserve_port()? } else { inbound });
        let mut placement = Placement::default().cluster("otel-collector", otlp);
        if ephemeral {
            placement = placement.admin(any_port());
        }
        bootstrap.place(&placement).map_err(|source| DemoError::Placement { service: service.to_string(), source })?;
        let started = InProcessTracing::start(bootstrap, 1).map_err(|source| {
            gallery_service::ServiceError::Service { name: service.to_string(), source: Box::new(source) }
        })?;
        filters.push(started);
    }
    progress("starting image-store, image-catalog and gallery-api");
    let mut filters = filters.into_iter();
    let mut next = || filters.next();
    let (store, catalog, api) = (next(), next(), next());
    let telemetry = |name: &str| {
        let in_process = match name {
            "image-store" => store.clone(),
            "image-catalog" => catalog.clone(),
            _ => api.clone(),
        };
        service_telemetry(name, otlp, in_process)
    };
    let services = start_services(config, &apps, &telemetry, collector.query.addr, (apps[0], apps[1]))?;
    Ok(RunningDemo { gallery: apps[2], viewer: collector.query.addr, collector, services, sidecars: Vec::new() })
}

/// The three services on `apps` (store, catalog, api), the catalog calling the store at
/// `callees.0` and the api the catalog at `callees.1` (with the callee's name as `Host`, which
/// the outbound filters route by); returned api first.
fn start_services(
    config: &DemoConfig,
    apps: &[SocketAddr],
    telemetry: &dyn Fn(&str) -> TelemetryConfig,
    viewer: SocketAddr,
    callees: (SocketAddr, SocketAddr),
) -> Result<Vec<RunningService>, DemoError> {
    let (catalog_outbound, api_outbound) = callees;
    let store = image_store::start(
        image_store::StoreConfig {
            listen: apps[0],
            location: config.state_dir.join("images").display().to_string(),
            max_bytes: 32 << 20,
        },
        telemetry("image-store"),
    )?;
    let catalog = image_catalog::start(
        image_catalog::CatalogConfig {
            listen: apps[1],
            database_url: format!("sqlite://{}", config.state_dir.join("catalog.db").display()),
            store_url: format!("http://{catalog_outbound}"),
            store_host: Some("image-store".into()),
            max_image_bytes: 32 << 20,
            sweep_interval_secs: 30,
        },
        telemetry("image-catalog"),
    )?;
    let api = gallery_api::start(
        gallery_api::ApiConfig {
            listen: apps[2],
            catalog_url: format!("http://{api_outbound}"),
            catalog_host: Some("image-catalog".into()),
            max_upload_bytes: 20 << 20,
            trace_viewer_url: format!("http://{viewer}/trace/{{trace_id}}"),
        },
        telemetry("gallery-api"),
    )?;
    Ok(vec![api, catalog, store])
}
