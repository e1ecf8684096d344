//! The Wasm filters of a configuration, loaded once per process: module bytes read and compiled
//! (once per sha256), plugin configurations converted for the runtime, and the status the admin
//! API reports.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::SystemTime;

use serde_json::json;
use wasmtrace_config::{Bootstrap, FailurePolicy as ConfigFailurePolicy, WasmFilter};
use wasmtrace_runtime::{FailurePolicy, PluginConfig, PluginModule, Runtime, VmLimits};

use crate::ProxyError;

/// A plugin's live status, shared by the workers (which update it) and the admin API.
#[derive(Default)]
pub struct PluginStatus {
    /// Configuration generation (1 at start; hot swap increments it).
    pub generation: AtomicU64,
    /// VMs of this plugin currently running across workers.
    pub vms_alive: AtomicUsize,
}

/// One Wasm filter of one listener, ready to start on every worker.
pub struct LoadedPlugin {
    /// Listener name.
    pub listener: String,
    /// The filter as configured.
    pub filter: WasmFilter,
    /// The runtime's view of the configuration.
    pub config: Arc<PluginConfig>,
    /// The compiled module.
    pub module: Arc<PluginModule>,
    /// Live status.
    pub status: Arc<PluginStatus>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl LoadedPlugin {
    /// The `/plugins` entry.
    pub fn describe(&self, restarts: u64) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        json!({
            "listener": self.listener,
            "name": self.filter.name,
            "root_id": self.filter.root_id,
            "vm_id": self.filter.vm_id,
            "runtime": self.filter.runtime,
            "module_path": self.filter.module_path,
            "sha256": self.module.sha256(),
            "module_bytes": self.module.size(),
            "generation": self.status.generation.load(Relaxed),
            "vms_alive": self.status.vms_alive.load(Relaxed),
            "vm_restarts": restarts,
            "failure_policy": format!("{:?}", self.filter.failure_policy),
            "loaded_at_unix_ms": self.loaded_at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
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
    }
}

/// Reads and compiles every filter's module; the result is indexed like `bootstrap.listeners`.
pub fn load_plugins(
    runtime: &Runtime,
    bootstrap: &Bootstrap,
    limits: &VmLimits,
) -> Result<Vec<Vec<Arc<LoadedPlugin>>>, ProxyError> {
    let mut loaded = Vec::new();
    for listener in &bootstrap.listeners {
        let mut filters = Vec::new();
        for filter in &listener.http.wasm_filters {
            let where_ =
                |path: &PathBuf| format!("listener `{}`, filter `{}` ({})", listener.name, filter.name, path.display());
            let bytes = std::fs::read(&filter.module_path).map_err(|e| ProxyError::Module {
                plugin: where_(&filter.module_path),
                reason: format!("cannot read the module: {e}"),
            })?;
            let module = runtime
                .compile(&bytes)
                .map_err(|e| ProxyError::Module { plugin: where_(&filter.module_path), reason: e.to_string() })?;
            let status = Arc::new(PluginStatus::default());
            status.generation.store(1, std::sync::atomic::Ordering::Relaxed);
            filters.push(Arc::new(LoadedPlugin {
                listener: listener.name.clone(),
                filter: filter.clone(),
                config: Arc::new(plugin_config(filter, limits)),
                module,
                status,
                loaded_at: SystemTime::now(),
            }));
        }
        loaded.push(filters);
    }
    Ok(loaded)
}
