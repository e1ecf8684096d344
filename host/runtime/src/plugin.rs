//! What a plugin is, as configured: the Envoy `PluginConfig` fields the runtime needs, plus the
//! safety limits of its VMs. Plain data, separate from the running VMs it describes.

use std::time::Duration;

/// What happens to a stream when its plugin's VM fails (trap, deadline, bad pointer).
///
/// Mirrors Envoy's `failure_policy`; the VM is recreated for the next stream in every case
/// (Envoy's `FAIL_RELOAD`), because a failed VM's memory can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Skip the filter for the rest of the stream; the request carries on unfiltered.
    FailOpen,
    /// Answer the stream with a 503 local response (`wasm_fail_stream`).
    #[default]
    FailClosed,
}

/// Resource limits for every VM of a plugin.
#[derive(Clone, Debug)]
pub struct VmLimits {
    /// Largest linear memory a VM may grow to.
    pub max_memory_bytes: usize,
    /// Longest a single stream callback (headers, body, log, ...) may run.
    pub callback_deadline: Duration,
    /// Longest VM start-up may run: `_initialize`, `main`, `on_vm_start`, `on_configure`.
    pub start_deadline: Duration,
    /// Wait before re-creating a VM whose start-up itself failed (Envoy's reload backoff).
    pub restart_backoff: Duration,
}

impl Default for VmLimits {
    fn default() -> Self {
        Self {
            max_memory_bytes: 256 << 20,
            callback_deadline: Duration::from_millis(100),
            start_deadline: Duration::from_secs(5),
            restart_backoff: Duration::from_secs(1),
        }
    }
}

/// One plugin's configuration: Envoy's `envoy.extensions.wasm.v3.PluginConfig`, reduced to what
/// the runtime acts on.
#[derive(Clone, Debug, Default)]
pub struct PluginConfig {
    /// `name`: shown in logs (`wasm log <name>: ...`) and the `plugin_name` property.
    pub name: String,
    /// `root_id`: selects the root context in modules that have several; `plugin_root_id`.
    pub root_id: String,
    /// `vm_config.vm_id`: VMs with the same id share shared data and queues; `plugin_vm_id`.
    pub vm_id: String,
    /// `vm_config.configuration`: handed to `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// `configuration`: handed to `proxy_on_configure`.
    pub plugin_configuration: Vec<u8>,
    /// `vm_config.environment_variables`, as WASI environment.
    pub environment: Vec<(String, String)>,
    /// `fail_open` / `failure_policy`.
    pub failure_policy: FailurePolicy,
    /// Safety limits.
    pub limits: VmLimits,
    /// Which code this is, when the host publishes generations of it: served as the
    /// `plugin_generation` and `plugin_sha256` properties (wasmtrace additions, absent in Envoy).
    pub provenance: Option<Provenance>,
}

/// Which generation of a configured filter a VM runs, and which module: what lets a span say
/// which version of the tracing logic made it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// 1 at start; every published hot swap (module or configuration) takes the next number.
    pub generation: u64,
    /// The module's sha256, lowercase hex.
    pub module_sha256: String,
}

impl PluginConfig {
    /// A configuration with a name and defaults for everything else.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }

    /// The prefix of this plugin's guest log lines, Envoy's shape:
    /// `wasm log <name>[ <root_id>][ <vm_id>]`.
    pub fn log_prefix(&self) -> String {
        let mut prefix = String::from("wasm log");
        for part in [&self.name, &self.root_id, &self.vm_id] {
            if !part.is_empty() {
                prefix.push(' ');
                prefix.push_str(part);
            }
        }
        prefix
    }
}
