//! One VM: a wasmtime store and instance of a plugin module on one worker thread, its root
//! context, its stream contexts, and the guarded way every callback is called.
//!
//! Every guest call goes through [`PluginVm::call`], which arms the epoch deadline, sets the
//! acting context, and turns any error into a [`GuestFailure`]. The first failure poisons the VM:
//! it is logged with plugin and callback, counted, every stream still on the VM is woken so its
//! data plane can apply the failure policy, and [`crate::PluginInstance`] starts a fresh VM for the
//! next stream (Envoy's `FAIL_RELOAD`).

mod call;
mod callback;
mod guest;
mod root_events;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;

use crate::callout::CalloutDispatcher;
use crate::component::ComponentExports;
use crate::error::{FailureKind, GuestFailure, StartError};
use crate::exchange::HttpExchange;
use crate::module::{CompiledCode, PluginModule};
use crate::plugin::PluginConfig;
use crate::runtime::Runtime;
use crate::services::HostServices;
use crate::shared_queue::QueueInbox;
use crate::state::{StartupLog, StreamContext, VmState};
use crate::stream::StreamSignals;

pub use callback::{Callback, Deadline};
pub(crate) use guest::Guest;
use guest::{Callbacks, lookup};

struct VmInner {
    store: Store<VmState>,
    callbacks: Guest,
}

/// The root context id: context ids count from 1 per VM (0 is the VM itself), as in Envoy.
pub const ROOT_CONTEXT_ID: u32 = 1;

/// A running VM of one plugin on one worker.
pub struct PluginVm {
    inner: RefCell<VmInner>,
    failure: RefCell<Option<GuestFailure>>,
    plugin: Arc<PluginConfig>,
    module: Arc<PluginModule>,
    services: Arc<HostServices>,
    inbox: Arc<QueueInbox>,
    next_context_id: Cell<u32>,
    started_at: Instant,
    /// The context whose callback failed the VM (the root's, or a stream's).
    failed_context: Cell<Option<u32>>,
}

impl PluginVm {
    /// Instantiates `module` and runs the start-up sequence Envoy runs: `_initialize` then
    /// `main(0, 0)` or else `__main_void` (a WASI reactor), or `_start` (a WASI command); root
    /// context create; `proxy_on_vm_start`; `proxy_on_configure`. Fails if any step traps, runs
    /// past the start deadline or returns false.
    pub fn start(
        module: Arc<PluginModule>,
        plugin: Arc<PluginConfig>,
        services: Arc<HostServices>,
        dispatcher: Rc<dyn CalloutDispatcher>,
    ) -> Result<Rc<Self>, StartError> {
        let instantiate_error = |detail: String| StartError::Instantiate { plugin: plugin.name.clone(), detail };
        let state = VmState::new(plugin.clone(), services.clone(), dispatcher);
        let inbox = state.inbox.clone();
        let mut store = Store::new(module_engine(&module), state);
        store.limiter(|state| &mut state.memory_cap);
        store.set_epoch_deadline(Runtime::deadline_ticks(plugin.limits.start_deadline));
        let (callbacks, memory, allocator) = match module.code() {
            CompiledCode::Component(compiled) => {
                let exports = ComponentExports::instantiate(compiled, &mut store)
                    .map_err(|e| instantiate_error(format!("{e:#}")))?;
                (Guest::Component(exports), None, None)
            }
            CompiledCode::Core { pre, .. } => {
                let instance = pre.instantiate(&mut store).map_err(|e| instantiate_error(format!("{e:#}")))?;
                let memory = instance.get_memory(&mut store, "memory");
                let allocator = lookup::<u32, u32>(&mut store, &instance, "malloc")
                    .or_else(|| lookup::<u32, u32>(&mut store, &instance, "proxy_on_memory_allocate"));
                let callbacks = Callbacks::resolve(&mut store, &instance)
                    .ok_or_else(|| instantiate_error("proxy_on_context_create has the wrong signature".into()))?;
                (Guest::Core(callbacks), memory, allocator)
            }
        };
        let state = store.data_mut();
        state.memory = memory;
        state.allocator = allocator.map(Arc::new);
        state.contexts.root_id = ROOT_CONTEXT_ID;
        let vm = Rc::new(Self {
            inner: RefCell::new(VmInner { store, callbacks }),
            failure: RefCell::new(None),
            plugin,
            module,
            services,
            inbox,
            next_context_id: Cell::new(ROOT_CONTEXT_ID + 1),
            started_at: Instant::now(),
            failed_context: Cell::new(None),
        });
        vm.inner.borrow_mut().store.data_mut().self_ref = crate::state::WorkerBound::new(Rc::downgrade(&vm));
        vm.set_startup_log(Some(StartupLog::default()));
        let started = vm.run_start_sequence();
        let log = vm.set_startup_log(None);
        started.map_err(|mut failure| {
            // What the guest said while starting is usually why it refused.
            failure.detail.push_str(&log.map(|log| log.summary()).unwrap_or_default());
            failure
        })?;
        Ok(vm)
    }

    fn run_start_sequence(&self) -> Result<(), GuestFailure> {
        let root = ROOT_CONTEXT_ID;
        if self.is_component() {
            let configured = self.call(Callback::Configure, root, |store, guest| match guest {
                Guest::Component(c) => {
                    c.configure(store, &self.plugin.plugin_configuration, &self.plugin.vm_configuration)
                }
                Guest::Core(_) => Ok(Ok(())),
            })?;
            return configured.map_err(|reason| {
                let failure = GuestFailure {
                    plugin: self.plugin.name.clone(),
                    callback: Callback::Configure,
                    kind: FailureKind::Refused,
                    detail: format!("the filter refused its configuration: {reason}"),
                };
                self.fail(failure.clone());
                failure
            });
        }
        // Each entry point is its own guarded call: a trap names the export that trapped, and
        // each gets the start deadline afresh (cpp-host arms the deadline per call too).
        let sequence = match &self.inner.borrow().callbacks {
            Guest::Core(cb) => cb.wasi.sequence(),
            Guest::Component(_) => [None, None],
        };
        for entry in sequence.into_iter().flatten() {
            // Context 0 is the VM itself, the context cpp-host runs these in.
            self.call(entry.callback(), 0, |store, guest| match guest {
                Guest::Core(cb) => cb.wasi.run(entry, store),
                Guest::Component(_) => Ok(()),
            })?;
        }
        self.call(Callback::RootContextCreate, root, |store, cb| match cb {
            Guest::Core(cb) => cb.context_create.call(store, (root, 0)),
            Guest::Component(_) => Ok(()),
        })?;
        let vm_config_len = u32::try_from(self.plugin.vm_configuration.len()).unwrap_or(u32::MAX);
        let started = self.call(Callback::VmStart, root, |store, cb| match cb {
            Guest::Core(Callbacks { vm_start: Some(f), .. }) => f.call(store, (root, vm_config_len)),
            _ => Ok(1),
        })?;
        if started == 0 {
            return Err(self.refuse(Callback::VmStart));
        }
        let config_len = u32::try_from(self.plugin.plugin_configuration.len()).unwrap_or(u32::MAX);
        let configured = self.call(Callback::Configure, root, |store, cb| match cb {
            Guest::Core(Callbacks { configure: Some(f), .. }) => f.call(store, (root, config_len)),
            _ => Ok(1),
        })?;
        if configured == 0 {
            return Err(self.refuse(Callback::Configure));
        }
        Ok(())
    }

    /// Replaces the start-up log (`Some` starts keeping lines), returning the one it had.
    fn set_startup_log(&self, log: Option<StartupLog>) -> Option<StartupLog> {
        let mut inner = self.inner.borrow_mut();
        let mut slot = inner.store.data_mut().startup_log.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *slot, log)
    }

    fn refuse(&self, callback: Callback) -> GuestFailure {
        let failure = GuestFailure {
            plugin: self.plugin.name.clone(),
            callback,
            kind: FailureKind::Refused,
            detail: "the plugin returned false".into(),
        };
        self.fail(failure.clone());
        failure
    }

    fn is_component(&self) -> bool {
        matches!(self.module.code(), CompiledCode::Component(_))
    }

    /// The plugin this VM runs.
    pub fn plugin(&self) -> &Arc<PluginConfig> {
        &self.plugin
    }

    /// The module this VM runs.
    pub fn module(&self) -> &Arc<PluginModule> {
        &self.module
    }

    /// When the VM started.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// The failure that poisoned this VM, if any.
    pub fn failure(&self) -> Option<GuestFailure> {
        self.failure.borrow().clone()
    }

    /// True once a callback has failed; the VM takes no more calls.
    pub fn is_failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// Stream contexts currently alive on this VM.
    pub fn live_streams(&self) -> usize {
        self.inner.try_borrow().map_or(0, |inner| inner.store.data().contexts.streams.len())
    }

    /// Poisons the VM: logs, counts, and wakes every stream still on it.
    fn fail(&self, failure: GuestFailure) {
        if self.failure.borrow().is_some() {
            return;
        }
        tracing::error!(
            plugin = %self.plugin.name,
            callback = failure.callback.name(),
            kind = ?failure.kind,
            "{failure}"
        );
        self.services.update_failures(&self.plugin.name, |stats| {
            *stats.callback_failures.entry(failure.callback.name()).or_default() += 1;
        });
        *self.failure.borrow_mut() = Some(failure);
        if let Ok(inner) = self.inner.try_borrow() {
            for stream in inner.store.data().contexts.streams.values() {
                let mut signals = stream.signals.borrow_mut();
                signals.vm_failed = true;
                signals.wake();
            }
        }
        // A failed VM hears nothing more: its calls are reset rather than left reading.
        self.drop_grpc_calls(None);
    }

    /// Creates a stream context (`proxy_on_context_create(id, root)`) over `exchange`.
    pub(crate) fn create_stream(
        &self,
        exchange: Rc<RefCell<HttpExchange>>,
        signals: Rc<RefCell<StreamSignals>>,
    ) -> Result<u32, GuestFailure> {
        let id = self.next_context_id.get();
        self.next_context_id.set(id.wrapping_add(1).max(ROOT_CONTEXT_ID + 1));
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner
                .store
                .data_mut()
                .contexts
                .streams
                .insert(id, StreamContext { exchange, signals, done_delivered: false });
        }
        let created = self.call(Callback::StreamContextCreate, id, |store, cb| match cb {
            Guest::Core(cb) => cb.context_create.call(store, (id, ROOT_CONTEXT_ID)),
            // A component learns of the stream with its first callback.
            Guest::Component(_) => Ok(()),
        });
        if created.is_err()
            && let Ok(mut inner) = self.inner.try_borrow_mut()
        {
            inner.store.data_mut().contexts.streams.remove(&id);
        }
        created.map(|()| id)
    }

    /// Ends a stream context: `proxy_on_done` then `proxy_on_delete`, and forgets it.
    pub(crate) fn destroy_stream(&self, id: u32) {
        let _ = self.call(Callback::Done, id, |store, cb| match cb {
            Guest::Core(Callbacks { done: Some(f), .. }) => f.call(&mut *store, id).map(drop),
            _ => Ok(()),
        });
        let _ = self.call(Callback::Delete, id, |store, cb| match cb {
            Guest::Core(Callbacks { delete: Some(f), .. }) => f.call(&mut *store, id),
            Guest::Component(c) => c.stream_done(store, id),
            Guest::Core(_) => Ok(()),
        });
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.store.data_mut().contexts.streams.remove(&id);
        }
        self.drop_grpc_calls(Some(id));
    }

    /// `proxy_on_log` for a stream.
    pub(crate) fn log_stream(&self, id: u32) -> Result<(), GuestFailure> {
        self.call(Callback::Log, id, |store, cb| match cb {
            Guest::Core(Callbacks { log: Some(f), .. }) => f.call(store, id),
            Guest::Component(c) => c.stream_done(store, id),
            Guest::Core(_) => Ok(()),
        })
    }

    /// Asks the root context to finish (`proxy_on_done`). Returns true when it is done now; false
    /// when it will call `proxy_done` later (e.g. after flushing through a callout).
    pub fn shutdown(&self) -> bool {
        let done = self.call(Callback::Done, ROOT_CONTEXT_ID, |store, cb| match cb {
            Guest::Core(Callbacks { done: Some(f), .. }) => f.call(store, ROOT_CONTEXT_ID),
            Guest::Component(c) => c.shutdown(store),
            Guest::Core(_) => Ok(1),
        });
        match done {
            Ok(0) => {
                if let Ok(mut inner) = self.inner.try_borrow_mut() {
                    inner.store.data_mut().done_pending = true;
                }
                false
            }
            _ => true,
        }
    }

    /// True after [`shutdown`](Self::shutdown) once the root context is done.
    pub fn is_done(&self) -> bool {
        self.is_failed() || self.inner.try_borrow().is_ok_and(|inner| !inner.store.data().done_pending)
    }
}

impl Drop for PluginVm {
    fn drop(&mut self) {
        if !self.is_failed() {
            let _ = self.call(Callback::Delete, ROOT_CONTEXT_ID, |store, cb| match cb {
                Guest::Core(Callbacks { delete: Some(f), .. }) => f.call(store, ROOT_CONTEXT_ID),
                _ => Ok(()),
            });
        }
    }
}

fn module_engine(module: &PluginModule) -> &wasmtime::Engine {
    match module.code() {
        CompiledCode::Core { module, .. } => module.engine(),
        CompiledCode::Component(compiled) => compiled.pre.engine(),
    }
}
