//! Process-wide state the host functions share across every VM: shared data, queues, metrics,
//! node metadata, the wasm log level and the runtime's own failure counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::abi::types::LogLevel;
use crate::filter_state::FilterStateBudget;
use crate::metrics::MetricRegistry;
use crate::shared_data::SharedDataStore;
use crate::shared_queue::SharedQueueRegistry;

/// Identity of this proxy, as Envoy's bootstrap `node`; readable as `xds.node.*` (and the older
/// top-level `node.*`).
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// `node.id`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.metadata`, a JSON object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Failure counters of one plugin, as exported on the admin API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginFailureStats {
    /// Callback failures by callback name.
    pub callback_failures: BTreeMap<&'static str, u64>,
    /// VMs re-created after a failure.
    pub vm_restarts: u64,
    /// VM (re)starts that failed.
    pub start_failures: u64,
    /// Filter state writes dropped because the plugin held its whole share over the streams it
    /// serves ([`crate::filter_state::MAX_BYTES_PER_PLUGIN`]).
    pub filter_state_dropped: u64,
}

/// Everything process-wide the host functions need.
pub struct HostServices {
    /// `proxy_{get,set}_shared_data`.
    pub shared_data: SharedDataStore,
    /// `proxy_*_shared_queue`.
    pub queues: SharedQueueRegistry,
    /// `proxy_*_metric`.
    pub metrics: MetricRegistry,
    /// The `xds.node` property.
    pub node: NodeInfo,
    log_level: AtomicU32,
    failures: Mutex<BTreeMap<String, PluginFailureStats>>,
    /// Per plugin, so that a VM re-created after a failure (while streams its predecessor wrote
    /// to still live) or a second worker's VM shares the one budget.
    filter_state_budgets: Mutex<BTreeMap<String, Arc<FilterStateBudget>>>,
}

impl HostServices {
    /// Services with the given node identity and guest log level.
    pub fn new(node: NodeInfo, log_level: LogLevel) -> Self {
        Self {
            shared_data: SharedDataStore::default(),
            queues: SharedQueueRegistry::default(),
            metrics: MetricRegistry::default(),
            node,
            log_level: AtomicU32::new(log_level as u32),
            failures: Mutex::new(BTreeMap::new()),
            filter_state_budgets: Mutex::new(BTreeMap::new()),
        }
    }

    /// The lowest level of guest log line that is emitted (`proxy_get_log_level`).
    pub fn log_level(&self) -> LogLevel {
        LogLevel::from_raw(self.log_level.load(Ordering::Relaxed)).unwrap_or(LogLevel::Info)
    }

    /// Changes the guest log level at run time.
    pub fn set_log_level(&self, level: LogLevel) {
        self.log_level.store(level as u32, Ordering::Relaxed);
    }

    /// What `plugin` holds in filter state over every stream of every VM of it.
    pub(crate) fn filter_state_budget(&self, plugin: &str) -> Arc<FilterStateBudget> {
        let mut budgets = self.filter_state_budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets.entry(plugin.to_owned()).or_default().clone()
    }

    pub(crate) fn update_failures(&self, plugin: &str, update: impl FnOnce(&mut PluginFailureStats)) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        update(failures.entry(plugin.to_owned()).or_default());
    }

    /// Failure counters of `plugin`.
    pub fn failure_stats(&self, plugin: &str) -> PluginFailureStats {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(plugin).cloned().unwrap_or_default()
    }

    /// Failure counters of every plugin that has failed at least once.
    pub fn all_failure_stats(&self) -> BTreeMap<String, PluginFailureStats> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Default for HostServices {
    fn default() -> Self {
        Self::new(NodeInfo::default(), LogLevel::Info)
    }
}
