//! The wasmtrace sidecar data plane: `wasmtrace run -c envoy.yaml`.
//!
//! How the pieces fit:
//!
//! - [`start`] loads the configuration's modules once ([`plugins`]), binds every listener, and
//!   starts N [`worker`]s (default: one per core). Each worker is a thread with a single-threaded
//!   tokio runtime that owns its VMs and upstream pools; each worker accepts from a socket of its
//!   own on every listener's address ([`listen_sockets`]).
//! - A connection is served by hyper (HTTP/1.1 or h2c). Each request goes through
//!   [`handler::serve`]: Envoy's request defaults, the Wasm [`chain`], routing ([`route`]), the
//!   upstream call through the cluster's pooled client ([`cluster`]), and the response filters;
//!   bodies stream through the filters frame by frame ([`body`]); an HTTP/1.1 upgrade
//!   (WebSocket) is tunnelled through the filters' body callbacks ([`upgrade`]).
//! - The control thread ([`control`]) serves the admin API and watches files.
//! - Callouts go through the same clients ([`callouts`]); ticks and queues run beside the
//!   streams ([`timers`]).
//! - Upstream failures and every other reply the proxy makes itself come from one table
//!   ([`rescue`]); errors that stop the proxy starting are in [`error`].
//! - The [`admin`] API reads the [`stats`], the runtime's counters and the plugins' status, and
//!   takes hot swaps; [`swap`] carries them out (also when a module or the configuration file
//!   changes on disk).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod authority;
pub mod body;
pub mod callouts;
pub mod chain;
pub mod cluster;
pub mod connection;
mod control;
pub mod downstream_body;
pub mod error;
pub mod grpc_callouts;
pub mod handler;
pub mod in_process;
mod listen_sockets;
pub mod message;
pub mod module_file;
pub mod plugins;
pub mod pump;
pub mod rescue;
pub mod route;
pub mod stats;
pub mod swap;
pub mod timers;
pub mod upgrade;
pub mod upstream_request;
pub mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use wasmtrace_config::{Bootstrap, SERVICE_SCOPE};
use wasmtrace_runtime::{
    CalloutCompletion, CalloutDispatcher, CalloutRequest, DispatchError, HostServices, LogLevel, NodeInfo,
    PluginInstance, Runtime, RuntimeOptions, VmLimits,
};

use crate::admin::AdminState;
use crate::control::start_control;
use crate::plugins::PluginSlot;
use crate::stats::{ClusterStats, ProxyStats};
use crate::swap::SwapCoordinator;

pub use error::{ModuleError, ProxyError, StageError, WorkerError};

/// Errors crossing the crate boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// File descriptors kept free of downstream connections (upstream pools, module files, logs).
const RESERVED_FILES: u64 = 128;

/// Raises this process's soft open-file limit to its hard limit (a proxy holds a descriptor per
/// connection, and 1024 is a common soft default) and returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // "Unlimited" is not a number the kernel takes for files; its own ceiling is nr_open (1 Mi).
    let wanted = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|current| current < wanted) {
        let raised = Rlimit { current: Some(wanted), maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("cannot raise the open-file limit to {wanted}: {e}");
            return limit.current.unwrap_or(wanted);
        }
        tracing::debug!(from = ?limit.current, to = wanted, "raised the open-file limit");
    }
    getrlimit(Resource::Nofile).current.unwrap_or(wanted)
}

/// The default connection cap per listener: what the open-file limit leaves after a reserve,
/// shared by the listeners, with room for one upstream connection per downstream one.
pub fn default_max_connections(open_files: u64, listeners: usize) -> usize {
    let per_listener = open_files.saturating_sub(RESERVED_FILES) / (2 * listeners.max(1) as u64);
    usize::try_from(per_listener.max(16)).unwrap_or(usize::MAX)
}

/// How the proxy runs, beyond what the configuration says.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Worker threads (default: available cores).
    pub workers: usize,
    /// How long shutdown waits for open streams and for filters to flush.
    pub drain_timeout: Duration,
    /// Bind the admin API where configured even if that is not loopback (default: loopback only).
    pub admin_any_address: bool,
    /// Limits of every VM.
    pub limits: VmLimits,
    /// Lowest guest log level emitted.
    pub log_level: LogLevel,
    /// Hot-swap plugins when their module files change on disk.
    pub watch_modules: bool,
    /// The configuration file the bootstrap came from: when set, its changes hot-swap plugin
    /// modules and configurations.
    pub watch_config: Option<PathBuf>,
    /// Most downstream connections open at once per listener; more are closed at accept.
    /// `None`: derived from the open-file limit (see [`default_max_connections`]).
    pub max_connections_per_listener: Option<usize>,
    /// A file holding the bearer token admin changes must carry; required when the admin API
    /// is bound off loopback.
    pub admin_token_file: Option<PathBuf>,
    /// How the Wasm runtime is set up: the on-disk module cache (none by default) and the
    /// profiler.
    pub runtime: RuntimeOptions,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            drain_timeout: Duration::from_secs(10),
            admin_any_address: false,
            limits: VmLimits::default(),
            log_level: LogLevel::Info,
            watch_modules: false,
            watch_config: None,
            max_connections_per_listener: None,
            admin_token_file: None,
            runtime: RuntimeOptions::default(),
        }
    }
}

/// What every worker shares.
pub struct Shared {
    bootstrap: Arc<Bootstrap>,
    runtime: Arc<Runtime>,
    slots: Vec<Arc<PluginSlot>>,
    stats: Arc<ProxyStats>,
    cluster_stats: Arc<BTreeMap<String, Arc<ClusterStats>>>,
    connection_ids: Arc<AtomicU64>,
    /// Downstream connections allowed per listener.
    max_connections: usize,
    options: ProxyOptions,
}

/// A running proxy.
pub struct RunningProxy {
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    control_thread: Option<JoinHandle<()>>,
    admin_state: Arc<AdminState>,
    /// In-process: where the layers hand the workers requests.
    inbox: Option<in_process::InProcessInbox>,
}

impl RunningProxy {
    /// The bound address of listener `name` (useful with port 0).
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Every listener's name and bound address.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// The admin API's bound address.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Where in-process layers hand the workers requests (started with [`start_in_process`]).
    pub fn in_process_inbox(&self) -> Option<&in_process::InProcessInbox> {
        self.inbox.as_ref()
    }

    /// The admin API's state: what an application serves it from (in-process).
    pub fn admin_state(&self) -> Arc<AdminState> {
        self.admin_state.clone()
    }

    /// Stops accepting, lets open streams finish (up to the drain timeout), lets filters flush,
    /// and waits for every worker to end.
    pub fn shutdown(mut self) {
        self.admin_state.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some(control) = self.control_thread.take() {
            let _ = control.join();
        }
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully. `ready` runs once both
    /// signals are caught: announce the listeners there, so whoever waits for the announcement
    /// may stop the proxy at once.
    pub fn run_until_signal(self, ready: impl FnOnce(&Self)) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            // Both handlers are in place before `ready` announces the listeners: a SIGTERM that
            // follows the announcement at once (a supervisor's quick stop) drains, instead of
            // killing the process by the signal's default action.
            let mut terminate = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            ready(&self);
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
                _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
            }
            Ok::<_, std::io::Error>(())
        })?;
        self.shutdown();
        tracing::info!("stopped");
        Ok(())
    }
}

fn runtime_for(bootstrap: &Bootstrap, options: &ProxyOptions) -> Result<Arc<Runtime>, ProxyError> {
    let node = NodeInfo {
        id: bootstrap.node.id.clone(),
        cluster: bootstrap.node.cluster.clone(),
        metadata: bootstrap.node.metadata.clone(),
    };
    Runtime::with_options(HostServices::new(node, options.log_level), &options.runtime).map_err(ProxyError::Runtime)
}

/// Callouts during `wasmtrace check`: clusters exist, nothing is sent.
struct CheckOnly {
    clusters: Vec<String>,
}

impl CalloutDispatcher for CheckOnly {
    fn has_cluster(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|c| c == cluster)
    }

    fn dispatch(&self, request: CalloutRequest, _completion: CalloutCompletion) -> Result<(), DispatchError> {
        Err(DispatchError::UnknownCluster(format!("{} (callouts are not sent by `wasmtrace check`)", request.cluster)))
    }
}

/// Validates a configuration without serving: every module loads, starts and configures.
/// Returns one line per plugin checked.
pub fn check(bootstrap: &Bootstrap, options: &ProxyOptions) -> Result<Vec<String>, ProxyError> {
    let runtime = runtime_for(bootstrap, options)?;
    let slots = plugins::load_plugins(&runtime, bootstrap, &options.limits)?;
    let mut report = Vec::new();
    for slot in &slots {
        let plugin = slot.active();
        let dispatcher: Rc<dyn CalloutDispatcher> =
            Rc::new(CheckOnly { clusters: bootstrap.clusters.iter().map(|c| c.name.clone()).collect() });
        let (scope, what) = match slot.role {
            plugins::SlotRole::Filter { .. } => {
                (format!("listener `{}`", plugin.listener), format!("listener `{}`: plugin", plugin.listener))
            }
            plugins::SlotRole::Service { .. } => (SERVICE_SCOPE.to_owned(), "Wasm service".to_owned()),
        };
        PluginInstance::start(&runtime, plugin.module.clone(), plugin.config.clone(), dispatcher)
            .map_err(|source| ProxyError::PluginStart { scope, source })?;
        report.push(format!(
            "{what} `{}` ({}, sha256 {}) starts and configures",
            plugin.filter.name,
            plugin.filter.module_path.display(),
            plugin.module.sha256()
        ));
    }
    runtime.shutdown();
    Ok(report)
}

/// Starts serving `bootstrap`.
pub fn start(bootstrap: Bootstrap, options: ProxyOptions) -> Result<RunningProxy, ProxyError> {
    launch(bootstrap, options, Serving::Listeners)
}

/// Starts `bootstrap`'s filters to run inside this process: its listeners are not bound; their
/// chains take requests from [`RunningProxy::in_process_inbox`] (the `wasmtrace-tower` layers).
/// The admin API, file watch, hot swap, drain and flush are the sidecar's.
pub fn start_in_process(bootstrap: Bootstrap, options: ProxyOptions) -> Result<RunningProxy, ProxyError> {
    launch(bootstrap, options, Serving::InProcess)
}

/// Where the workers' requests come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// The listeners' sockets (the sidecar).
    Listeners,
    /// In-process layers, through each worker's inbox.
    InProcess,
}

fn launch(bootstrap: Bootstrap, options: ProxyOptions, serving: Serving) -> Result<RunningProxy, ProxyError> {
    let open_files = raise_open_file_limit();
    let max_connections = options
        .max_connections_per_listener
        .unwrap_or_else(|| default_max_connections(open_files, bootstrap.listeners.len()));
    let token = options.admin_token_file.as_deref().map(admin::guard::AdminToken::from_file).transpose()?;
    let runtime = runtime_for(&bootstrap, &options)?;
    let slots = plugins::load_plugins(&runtime, &bootstrap, &options.limits)?;
    let stats = Arc::new(ProxyStats {
        listeners: bootstrap.listeners.iter().map(|l| (l.http.stat_prefix.clone(), Arc::default())).collect(),
        clusters: bootstrap.clusters.iter().map(|c| (c.name.clone(), Arc::default())).collect(),
    });
    let cluster_stats = Arc::new(stats.clusters.clone());
    let worker_count = options.workers.max(1);
    // By listener, one socket per worker.
    let mut sockets = Vec::new();
    let mut listeners = Vec::new();
    for listener in bootstrap.listeners.iter().filter(|_| serving == Serving::Listeners) {
        let bind_error = |source| ProxyError::Bind { name: listener.name.clone(), address: listener.address, source };
        let bound = listen_sockets::bind(listener.address, worker_count, listener.reuse_port).map_err(bind_error)?;
        listeners.push((listener.name.clone(), bound[0].local_addr().map_err(bind_error)?));
        sockets.push(bound.into_iter());
    }
    let bootstrap = Arc::new(bootstrap);
    let shared = Arc::new(Shared {
        bootstrap: bootstrap.clone(),
        runtime: runtime.clone(),
        slots: slots.clone(),
        stats: stats.clone(),
        cluster_stats,
        connection_ids: Arc::new(AtomicU64::new(1)),
        max_connections,
        options: options.clone(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut workers = Vec::new();
    let mut worker_commands = Vec::new();
    let (inbox, mut intakes) = match serving {
        Serving::InProcess => {
            let listeners = bootstrap.listeners.iter().map(|l| l.name.clone()).collect();
            let (inbox, intakes) = in_process::InProcessInbox::new(worker_count, listeners);
            (Some(inbox), intakes.into_iter().map(Some).collect())
        }
        Serving::Listeners => (None, Vec::new()),
    };
    intakes.resize_with(worker_count, || None);
    for (index, intake) in intakes.into_iter().enumerate() {
        let (commands_tx, commands) = mpsc::unbounded_channel();
        worker_commands.push(commands_tx);
        let mut worker_sockets = Vec::new();
        for (listener_index, bound) in sockets.iter_mut().enumerate() {
            let Some(socket) = bound.next() else { unreachable!("one socket bound per worker") };
            worker_sockets.push((listener_index, socket));
        }
        let (shared, stop_rx, ready_tx) = (shared.clone(), stop_rx.clone(), ready_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("wasmtrace-worker-{index}"))
            .spawn(move || worker::run(index, shared, worker_sockets, commands, intake, stop_rx, ready_tx))
            .map_err(WorkerError::Spawn)?;
        workers.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..workers.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(WorkerError::Exited),
        }
    }
    let coordinator =
        Arc::new(SwapCoordinator::new(runtime.clone(), slots.clone(), worker_commands, options.limits.clone()));
    let admin_state = Arc::new(AdminState {
        bootstrap: bootstrap.clone(),
        stats,
        runtime,
        coordinator: coordinator.clone(),
        ready: AtomicBool::new(failure.is_none()),
        draining: AtomicBool::new(false),
        token,
    });
    if let Some(failure) = failure {
        let _ = stop.send(true);
        for worker in workers {
            let _ = worker.join();
        }
        return Err(ProxyError::Worker(failure));
    }
    let control = match start_control(&bootstrap, &options, admin_state.clone(), stop_rx.clone()) {
        Ok(control) => control,
        Err(e) => {
            let _ = stop.send(true);
            for worker in workers {
                let _ = worker.join();
            }
            return Err(e);
        }
    };
    for (name, address) in &listeners {
        tracing::info!(listener = %name, %address, workers = workers.len(), "listening");
    }
    if serving == Serving::InProcess {
        tracing::info!(workers = workers.len(), "filters running in-process");
    }
    Ok(RunningProxy {
        listeners,
        admin: control.admin,
        stop,
        workers,
        control_thread: Some(control.thread),
        admin_state,
        inbox,
    })
}
