//! The Wasm filters of a configuration: module bytes read and compiled (once per sha256), plugin
//! configurations converted for the runtime, and one [`PluginSlot`] per configured filter that
//! holds its generations across hot swaps.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::json;
use wasmtrace_config::{Bootstrap, FailurePolicy as ConfigFailurePolicy, SERVICE_SCOPE, WasmFilter};
use wasmtrace_runtime::{FailurePolicy, PluginConfig, PluginModule, Provenance, Runtime, VmLimits};

use crate::ProxyError;
use crate::error::ModuleError;

/// One generation of one configured filter: the module and configuration its VMs run.
pub struct LoadedPlugin {
    /// Listener name.
    pub listener: String,
    /// The filter as configured (for a swapped generation: with the new module path and
    /// configuration).
    pub filter: WasmFilter,
    /// The runtime's view of the configuration.
    pub config: Arc<PluginConfig>,
    /// The compiled module.
    pub module: Arc<PluginModule>,
    /// 1 at start; every published swap takes the next number.
    pub generation: u64,
    /// VMs of this generation running across workers (serving, or draining after a swap).
    pub vms_alive: AtomicUsize,
    /// When it was published.
    pub loaded_at: SystemTime,
}

impl LoadedPlugin {
    /// A generation of `filter` running `module`.
    pub fn new(
        listener: &str,
        filter: WasmFilter,
        module: Arc<PluginModule>,
        limits: &VmLimits,
        generation: u64,
    ) -> Self {
        let provenance = Provenance { generation, module_sha256: module.sha256().to_owned() };
        Self {
            listener: listener.to_owned(),
            config: Arc::new(PluginConfig { provenance: Some(provenance), ..plugin_config(&filter, limits) }),
            filter,
            module,
            generation,
            vms_alive: AtomicUsize::new(0),
            loaded_at: SystemTime::now(),
        }
    }

    fn describe(&self, state: &str) -> serde_json::Value {
        json!({
            "generation": self.generation,
            "state": state,
            "sha256": self.module.sha256(),
            "module_source": self.module.source().label(),
            "module_path": self.filter.module_path,
            "vms_alive": self.vms_alive.load(Ordering::Relaxed),
            "since_unix_ms": unix_ms(self.loaded_at),
        })
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Swap counters of one configured filter, for `/plugins` and `/stats/prometheus`.
#[derive(Default)]
pub struct SwapCounters {
    /// Swaps published (including rollbacks).
    pub swaps: AtomicU64,
    /// Swaps refused (module or configuration did not load, start or configure).
    pub refusals: AtomicU64,
    /// Generations fully drained after being replaced.
    pub drains: AtomicU64,
    /// Total time those drains took (streams finished, root contexts flushed), in microseconds.
    pub drain_micros: AtomicU64,
}

impl SwapCounters {
    /// Records one finished drain.
    pub fn drained(&self, took: Duration) {
        self.drains.fetch_add(1, Ordering::Relaxed);
        self.drain_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The generations of a slot, changed only by the swap coordinator.
pub struct SlotGenerations {
    /// What new streams use.
    pub active: Arc<LoadedPlugin>,
    /// What a rollback returns to.
    pub previous: Option<Arc<LoadedPlugin>>,
    /// Replaced generations, kept while they still have VMs (draining).
    pub replaced: Vec<Arc<LoadedPlugin>>,
    /// The last generation number handed out (refused swaps use numbers too).
    pub last_generation: u64,
}

/// Where a slot's plugin runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRole {
    /// A filter in the chain of the listener at this position of the bootstrap.
    Filter {
        /// The listener's position.
        listener_index: usize,
    },
    /// A Wasm service (`bootstrap_extensions`): a root context with no streams.
    Service {
        /// One VM for the process, on the first worker (Envoy runs it on its main thread);
        /// otherwise one per worker.
        singleton: bool,
    },
}

impl SlotRole {
    /// Whether this is a Wasm service.
    pub fn is_service(self) -> bool {
        matches!(self, Self::Service { .. })
    }

    /// Whether worker `worker` runs a VM of this slot.
    pub fn runs_on(self, worker: usize) -> bool {
        !matches!(self, Self::Service { singleton: true }) || worker == 0
    }
}

/// One configured filter of one listener (or one Wasm service) across its hot-swap generations.
///
/// Workers read [`PluginSlot::published`] when they open a stream: a swap is published for the
/// whole process by one atomic store, after every worker has started the new generation.
pub struct PluginSlot {
    /// Position in the process-wide slot list (workers index their instances by it).
    pub index: usize,
    /// A filter of which listener, or a service.
    pub role: SlotRole,
    /// Listener name ([`wasmtrace_config::SERVICE_SCOPE`] for a service).
    pub listener: String,
    /// Plugin name (`config.name`).
    pub name: String,
    /// The generation new streams use.
    pub published: AtomicU64,
    /// Swap counters.
    pub counters: SwapCounters,
    generations: Mutex<SlotGenerations>,
}

impl PluginSlot {
    fn new(index: usize, role: SlotRole, plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            index,
            role,
            listener: plugin.listener.clone(),
            name: plugin.filter.name.clone(),
            published: AtomicU64::new(plugin.generation),
            counters: SwapCounters::default(),
            generations: Mutex::new(SlotGenerations {
                last_generation: plugin.generation,
                active: plugin,
                previous: None,
                replaced: Vec::new(),
            }),
        }
    }

    /// The generations, locked. A poisoned lock still holds consistent data (every update is a
    /// few field assignments), so it is used as is.
    pub fn generations(&self) -> MutexGuard<'_, SlotGenerations> {
        self.generations.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The generation new streams use.
    pub fn active(&self) -> Arc<LoadedPlugin> {
        self.generations().active.clone()
    }

    /// The `/plugins` entry.
    pub fn describe(&self, restarts: u64) -> serde_json::Value {
        let generations = self.generations();
        let active = &generations.active;
        let mut all = vec![active.describe("active")];
        all.extend(
            generations
                .replaced
                .iter()
                .filter(|g| g.vms_alive.load(Ordering::Relaxed) > 0)
                .map(|g| g.describe("draining")),
        );
        let counters = &self.counters;
        let (kind, singleton) = match self.role {
            SlotRole::Filter { .. } => ("filter", None),
            SlotRole::Service { singleton } => ("service", Some(singleton)),
        };
        json!({
            "listener": self.listener,
            "name": self.name,
            "kind": kind,
            "singleton": singleton,
            "root_id": active.filter.root_id,
            "vm_id": active.filter.vm_id,
            "runtime": active.filter.runtime,
            "module_path": active.filter.module_path,
            "sha256": active.module.sha256(),
            "module_bytes": active.module.size(),
            "generation": active.generation,
            "since_unix_ms": unix_ms(active.loaded_at),
            "vms_alive": active.vms_alive.load(Ordering::Relaxed),
            "generations": all,
            "rollback_to": generations.previous.as_ref().map(|p| json!({"generation": p.generation, "sha256": p.module.sha256()})),
            "swaps": counters.swaps.load(Ordering::Relaxed),
            "swap_refusals": counters.refusals.load(Ordering::Relaxed),
            "drains": counters.drains.load(Ordering::Relaxed),
            "drain_seconds_total": counters.drain_micros.load(Ordering::Relaxed) as f64 / 1e6,
            "vm_restarts": restarts,
            "failure_policy": format!("{:?}", active.filter.failure_policy),
        })
    }
}

/// The runtime configuration of a configured filter.
pub fn plugin_config(filter: &WasmFilter, limits: &VmLimits) -> PluginConfig {
    PluginConfig {
        name: filter.name.clone(),
        root_id: filter.root_id.clone(),
        vm_id: filter.vm_id.clone(),
        vm_configuration: filter.vm_configuration.clone(),
        plugin_configuration: filter.plugin_configuration.clone(),
        environment: filter.environment.clone(),
        failure_policy: match filter.failure_policy {
            ConfigFailurePolicy::FailOpen => FailurePolicy::FailOpen,
            ConfigFailurePolicy::FailClosed => FailurePolicy::FailClosed,
        },
        limits: limits.clone(),
        provenance: None,
    }
}

/// Reads and compiles the module at `path` (cached by sha256 in the runtime).
pub fn compile_file(runtime: &Runtime, path: &Path) -> Result<Arc<PluginModule>, ModuleError> {
    let bytes = crate::module_file::read_module_file(path)?;
    runtime.compile(&bytes).map_err(|source| ModuleError::Load { path: path.display().to_string(), source })
}

/// Reads and compiles every plugin's module: one slot per filter, listener by listener, then
/// one per Wasm service.
pub fn load_plugins(
    runtime: &Runtime,
    bootstrap: &Bootstrap,
    limits: &VmLimits,
) -> Result<Vec<Arc<PluginSlot>>, ProxyError> {
    let filters = bootstrap.listeners.iter().enumerate().flat_map(|(listener_index, listener)| {
        listener.http.wasm_filters.iter().map(move |f| (listener.name.as_str(), SlotRole::Filter { listener_index }, f))
    });
    let services = bootstrap
        .wasm_services
        .iter()
        .map(|s| (SERVICE_SCOPE, SlotRole::Service { singleton: s.singleton }, &s.filter));
    let mut slots = Vec::new();
    for (scope, role, filter) in filters.chain(services) {
        let what = match role {
            SlotRole::Filter { .. } => format!("listener `{scope}`, filter"),
            SlotRole::Service { .. } => "Wasm service".to_owned(),
        };
        let module = compile_file(runtime, &filter.module_path).map_err(|source| ProxyError::Module {
            plugin: format!("{what} `{}` ({})", filter.name, PathBuf::from(&filter.module_path).display()),
            source,
        })?;
        let plugin = Arc::new(LoadedPlugin::new(scope, filter.clone(), module, limits, 1));
        slots.push(Arc::new(PluginSlot::new(slots.len(), role, plugin)));
    }
    Ok(slots)
}
