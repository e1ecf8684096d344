//! A plugin on one worker: the VM that serves its new streams, re-created after a failure.
//!
//! A `PluginInstance` pairs one module generation (compiled [`PluginModule`] + [`PluginConfig`])
//! with the worker's current VM of it. Streams keep a reference to the VM they started on, so a
//! replacement VM (after a failure now, after a hot swap later) never disturbs streams in flight.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::callout::CalloutDispatcher;
use crate::error::StartError;
use crate::error::{FailureKind, GuestFailure};
use crate::exchange::HttpExchange;
use crate::module::PluginModule;
use crate::plugin::PluginConfig;
use crate::runtime::Runtime;
use crate::services::HostServices;
use crate::stream::HttpStream;
use crate::vm::{Callback, PluginVm};

/// A plugin's VM on one worker thread.
pub struct PluginInstance {
    module: Arc<PluginModule>,
    plugin: Arc<PluginConfig>,
    services: Arc<HostServices>,
    dispatcher: Rc<dyn CalloutDispatcher>,
    vm: RefCell<Option<Rc<PluginVm>>>,
    /// No restart attempt before this instant (after a failed restart).
    backoff_until: Cell<Option<Instant>>,
    last_start_error: RefCell<Option<String>>,
    restarts: Cell<u64>,
    /// VMs in a row that failed in their root context right after starting.
    crash_loops: Cell<u32>,
}

/// A VM that fails in its root context within this long of starting counts as a crash loop.
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(1);
/// The longest wait before re-creating a crash-looping VM.
const MAX_CRASH_LOOP_BACKOFF: Duration = Duration::from_secs(30);

impl PluginInstance {
    /// Starts the first VM. Fails when the module cannot start or configure: a plugin that does
    /// not start is refused, not served.
    pub fn start(
        runtime: &Runtime,
        module: Arc<PluginModule>,
        plugin: Arc<PluginConfig>,
        dispatcher: Rc<dyn CalloutDispatcher>,
    ) -> Result<Self, StartError> {
        let services = runtime.services().clone();
        let vm = PluginVm::start(module.clone(), plugin.clone(), services.clone(), dispatcher.clone())?;
        Ok(Self {
            module,
            plugin,
            services,
            dispatcher,
            vm: RefCell::new(Some(vm)),
            backoff_until: Cell::new(None),
            last_start_error: RefCell::new(None),
            restarts: Cell::new(0),
            crash_loops: Cell::new(0),
        })
    }

    /// The plugin's configuration.
    pub fn plugin(&self) -> &Arc<PluginConfig> {
        &self.plugin
    }

    /// The module it runs.
    pub fn module(&self) -> &Arc<PluginModule> {
        &self.module
    }

    /// The VM new streams go to, re-created first if the current one failed.
    pub fn vm(&self) -> Option<Rc<PluginVm>> {
        self.ensure_healthy_vm();
        self.vm.borrow().clone()
    }

    /// The VM as it is, without re-creating a failed one: what a generation being retired
    /// drains and flushes.
    pub fn current_vm(&self) -> Option<Rc<PluginVm>> {
        self.vm.borrow().clone()
    }

    /// How many times the VM was re-created after a failure.
    pub fn restarts(&self) -> u64 {
        self.restarts.get()
    }

    fn ensure_healthy_vm(&self) {
        let healthy = self.vm.borrow().as_ref().is_some_and(|vm| !vm.is_failed());
        if healthy {
            return;
        }
        if self.backoff_until.get().is_some_and(|until| Instant::now() < until) {
            return;
        }
        // A root context that fails again right after every re-creation (a tick that traps)
        // would re-create at tick rate: wait, twice as long each time in a row.
        let crash_loop = self.vm.borrow().as_ref().is_some_and(|vm| vm.failed_early_off_stream(CRASH_LOOP_WINDOW));
        if crash_loop {
            let loops = self.crash_loops.get().saturating_add(1);
            self.crash_loops.set(loops);
            let wait =
                self.plugin.limits.restart_backoff.saturating_mul(1 << (loops - 1).min(5)).min(MAX_CRASH_LOOP_BACKOFF);
            tracing::warn!(plugin = %self.plugin.name, ?wait, "wasm VM failed in its root context right after starting; re-created after a wait");
            *self.vm.borrow_mut() = None;
            self.backoff_until.set(Some(Instant::now() + wait));
            return;
        } else if self.vm.borrow().is_some() {
            self.crash_loops.set(0);
        }
        match PluginVm::start(self.module.clone(), self.plugin.clone(), self.services.clone(), self.dispatcher.clone())
        {
            Ok(vm) => {
                tracing::info!(plugin = %self.plugin.name, "wasm VM re-created after a failure");
                *self.vm.borrow_mut() = Some(vm);
                self.backoff_until.set(None);
                self.restarts.set(self.restarts.get() + 1);
                self.services.update_failures(&self.plugin.name, |s| s.vm_restarts += 1);
            }
            Err(error) => {
                tracing::error!(plugin = %self.plugin.name, "wasm VM could not be re-created: {error}");
                *self.vm.borrow_mut() = None;
                *self.last_start_error.borrow_mut() = Some(error.to_string());
                self.backoff_until.set(Some(Instant::now() + self.plugin.limits.restart_backoff));
                self.services.update_failures(&self.plugin.name, |s| s.start_failures += 1);
            }
        }
    }

    /// Opens this plugin's stream context over `exchange`. Never fails: without a working VM the
    /// stream applies the plugin's failure policy at its first callback.
    pub fn new_stream(&self, exchange: Rc<RefCell<HttpExchange>>) -> HttpStream {
        match self.vm() {
            Some(vm) => HttpStream::start(vm, exchange),
            None => {
                let detail = self.last_start_error.borrow().clone().unwrap_or_else(|| "no VM is running".into());
                HttpStream::without_vm(
                    self.plugin.name.clone(),
                    self.plugin.failure_policy,
                    exchange,
                    GuestFailure {
                        plugin: self.plugin.name.clone(),
                        callback: Callback::StreamContextCreate,
                        kind: FailureKind::VmFailed,
                        detail,
                    },
                )
            }
        }
    }
}
