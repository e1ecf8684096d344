//! One VM: a wasmtime store and instance of a plugin module on one worker thread, its root
//! context, its stream contexts, and the guarded way every callback is called.
//!
//! Every guest call goes through [`PluginVm::call`], which arms the epoch deadline, sets the
//! acting context, and turns any error into a [`GuestFailure`]. The first failure poisons the VM:
//! it is logged with plugin and callback, counted, every stream still on the VM is woken so its
//! data plane can apply the failure policy, and [`crate::PluginInstance`] starts a fresh VM for the
//! next stream (Envoy's `FAIL_RELOAD`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, TypedFunc};

use crate::callout::{CalloutDispatcher, CalloutFailure, CalloutResponse};
use crate::component::ComponentExports;
use crate::error::{FailureKind, GuestFailure, GuestFault, StartError};
use crate::exchange::HttpExchange;
use crate::grpc_callout::GrpcEvent;
use crate::module::{CompiledCode, PluginModule};
use crate::plugin::PluginConfig;
use crate::runtime::Runtime;
use crate::services::HostServices;
use crate::shared_queue::QueueInbox;
use crate::state::{GrpcCall, StartupLog, StreamContext, VmState};
use crate::stream::StreamSignals;

type Callback1 = TypedFunc<u32, ()>;
type Callback2 = TypedFunc<(u32, u32), ()>;
type Callback3 = TypedFunc<(u32, u32, u32), ()>;
type Decision2 = TypedFunc<(u32, u32), u32>;
type Decision3 = TypedFunc<(u32, u32, u32), u32>;
type CalloutCallback = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The WASI entry points a core module's start-up runs, resolved as proxy-wasm-cpp-host's
/// `WasmBase::getFunctions` resolves them: `main` and `__main_void` are looked for only in a
/// reactor (a module exporting `_initialize`), `_start` only in a command (one that does not).
#[derive(Default)]
struct WasiEntries {
    initialize: Option<TypedFunc<(), ()>>,
    main: Option<TypedFunc<(u32, u32), u32>>,
    main_void: Option<TypedFunc<(), u32>>,
    start: Option<TypedFunc<(), ()>>,
}

/// One start-up call into a WASI entry point.
#[derive(Clone, Copy)]
enum WasiEntry {
    Initialize,
    Main,
    MainVoid,
    Start,
}

impl WasiEntry {
    /// The export's name, which is also the callback a failure names.
    fn export(self) -> &'static str {
        match self {
            Self::Initialize => "_initialize",
            Self::Main => "main",
            Self::MainVoid => "__main_void",
            Self::Start => "_start",
        }
    }
}

impl WasiEntries {
    fn resolve(store: &mut Store<VmState>, instance: &wasmtime::Instance) -> Self {
        let initialize = lookup(store, instance, "_initialize");
        if initialize.is_some() {
            Self {
                initialize,
                main: lookup(store, instance, "main"),
                main_void: lookup(store, instance, "__main_void"),
                start: None,
            }
        } else {
            Self { start: lookup(store, instance, "_start"), ..Self::default() }
        }
    }

    /// The calls start-up makes, in order (cpp-host's `WasmBase::startVm`): a reactor gets
    /// `_initialize`, then `main(0, 0)` if exported, else `__main_void` if exported (what a Rust
    /// `bin` built as a reactor exports instead of `main`); a command gets `_start`.
    fn sequence(&self) -> [Option<WasiEntry>; 2] {
        if self.initialize.is_some() {
            let main = if self.main.is_some() {
                Some(WasiEntry::Main)
            } else {
                self.main_void.as_ref().map(|_| WasiEntry::MainVoid)
            };
            [Some(WasiEntry::Initialize), main]
        } else {
            [self.start.as_ref().map(|_| WasiEntry::Start), None]
        }
    }

    /// Calls `entry`; what `main` and `__main_void` return is ignored, as in cpp-host.
    fn run(&self, entry: WasiEntry, store: &mut Store<VmState>) -> wasmtime::Result<()> {
        match entry {
            WasiEntry::Initialize => self.initialize.as_ref().map_or(Ok(()), |f| f.call(store, ())),
            WasiEntry::Main => self.main.as_ref().map_or(Ok(()), |f| f.call(store, (0, 0)).map(drop)),
            WasiEntry::MainVoid => self.main_void.as_ref().map_or(Ok(()), |f| f.call(store, ()).map(drop)),
            WasiEntry::Start => self.start.as_ref().map_or(Ok(()), |f| f.call(store, ())),
        }
    }
}

/// Whether `callback` is a start-up step, which runs under the start deadline.
fn is_start_up(callback: &str) -> bool {
    matches!(
        callback,
        "_initialize" | "main" | "__main_void" | "_start" | "proxy_on_vm_start" | "proxy_on_configure" | "configure"
    )
}

/// The guest exports the host calls, looked up once per instance.
pub(crate) struct Callbacks {
    wasi: WasiEntries,
    context_create: Callback2,
    vm_start: Option<Decision2>,
    configure: Option<Decision2>,
    tick: Option<Callback1>,
    pub(crate) request_headers: Option<Decision3>,
    pub(crate) request_body: Option<Decision3>,
    pub(crate) request_trailers: Option<Decision2>,
    pub(crate) response_headers: Option<Decision3>,
    pub(crate) response_body: Option<Decision3>,
    pub(crate) response_trailers: Option<Decision2>,
    log: Option<Callback1>,
    done: Option<TypedFunc<u32, u32>>,
    delete: Option<Callback1>,
    http_call_response: Option<CalloutCallback>,
    queue_ready: Option<Callback2>,
    grpc: GrpcCallbacks,
}

/// The gRPC callbacks, `(context_id, token, count/size/status)` each.
struct GrpcCallbacks {
    initial_metadata: Option<Callback3>,
    message: Option<Callback3>,
    trailing_metadata: Option<Callback3>,
    close: Option<Callback3>,
}

impl GrpcCallbacks {
    /// No callbacks: names events for failure reports.
    const NAMES: Self = Self { initial_metadata: None, message: None, trailing_metadata: None, close: None };

    fn resolve(store: &mut Store<VmState>, instance: &wasmtime::Instance) -> Self {
        Self {
            initial_metadata: lookup(store, instance, "proxy_on_grpc_receive_initial_metadata"),
            message: lookup(store, instance, "proxy_on_grpc_receive"),
            trailing_metadata: lookup(store, instance, "proxy_on_grpc_receive_trailing_metadata"),
            close: lookup(store, instance, "proxy_on_grpc_close"),
        }
    }

    /// The export for `event` and its third argument.
    fn for_event(&self, event: &GrpcEvent) -> (&'static str, Option<&Callback3>, u32) {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match event {
            GrpcEvent::InitialMetadata(map) => {
                ("proxy_on_grpc_receive_initial_metadata", self.initial_metadata.as_ref(), count(map.len()))
            }
            GrpcEvent::Message(message) => ("proxy_on_grpc_receive", self.message.as_ref(), count(message.len())),
            GrpcEvent::TrailingMetadata(map) => {
                ("proxy_on_grpc_receive_trailing_metadata", self.trailing_metadata.as_ref(), count(map.len()))
            }
            GrpcEvent::Close { status, .. } => ("proxy_on_grpc_close", self.close.as_ref(), *status),
        }
    }
}

/// The guest's side, per form: proxy-wasm exports looked up by name, or the component world's
/// typed exports. Each method is one callback of the VM's life, in proxy-wasm's terms (codes:
/// 0 continue, 1 pause; `proxy_on_done`'s 1 = done).
#[allow(clippy::large_enum_variant, reason = "one per VM, built once; boxing buys nothing")]
pub(crate) enum Guest {
    Core(Callbacks),
    Component(ComponentExports),
}

impl Guest {
    pub(crate) fn request_headers(
        &self,
        store: &mut Store<VmState>,
        id: u32,
        count: u32,
        end: bool,
    ) -> wasmtime::Result<u32> {
        match self {
            Self::Core(cb) => cb.request_headers.as_ref().map_or(Ok(0), |f| f.call(store, (id, count, u32::from(end)))),
            Self::Component(c) => c.request_headers(store, id, end),
        }
    }

    pub(crate) fn request_body(
        &self,
        store: &mut Store<VmState>,
        id: u32,
        len: u32,
        end: bool,
    ) -> wasmtime::Result<u32> {
        match self {
            Self::Core(cb) => cb.request_body.as_ref().map_or(Ok(0), |f| f.call(store, (id, len, u32::from(end)))),
            Self::Component(c) => c.request_body(store, id, len, end),
        }
    }

    pub(crate) fn request_trailers(&self, store: &mut Store<VmState>, id: u32, count: u32) -> wasmtime::Result<u32> {
        match self {
            Self::Core(cb) => cb.request_trailers.as_ref().map_or(Ok(0), |f| f.call(store, (id, count))),
            Self::Component(c) => c.request_trailers(store, id),
        }
    }

    pub(crate) fn response_headers(
        &self,
        store: &mut Store<VmState>,
        id: u32,
        count: u32,
        end: bool,
    ) -> wasmtime::Result<u32> {
        match self {
            Self::Core(cb) => {
                cb.response_headers.as_ref().map_or(Ok(0), |f| f.call(store, (id, count, u32::from(end))))
            }
            Self::Component(c) => c.response_headers(store, id, end),
        }
    }

    pub(crate) fn response_body(
        &self,
        store: &mut Store<VmState>,
        id: u32,
        len: u32,
        end: bool,
    ) -> wasmtime::Result<u32> {
        match self {
            Self::Core(cb) => cb.response_body.as_ref().map_or(Ok(0), |f| f.call(store, (id, len, u32::from(end)))),
            Self::Component(c) => c.response_body(store, id, len, end),
        }
    }

    pub(crate) fn response_trailers(&self, store: &mut Store<VmState>, id: u32, count: u32) -> wasmtime::Result<u32> {
        match self {
            Self::Core(cb) => cb.response_trailers.as_ref().map_or(Ok(0), |f| f.call(store, (id, count))),
            Self::Component(c) => c.response_trailers(store, id),
        }
    }
}

/// The name a failure report gives a callback: the proxy-wasm export, or the component world's.
fn callback_name(component: bool, proxy_wasm: &'static str) -> &'static str {
    if !component {
        return proxy_wasm;
    }
    match proxy_wasm {
        "proxy_on_vm_start" | "proxy_on_configure" => "configure",
        "proxy_on_request_headers" => "on-request-headers",
        "proxy_on_request_body" => "on-request-body",
        "proxy_on_request_trailers" => "on-request-trailers",
        "proxy_on_response_headers" => "on-response-headers",
        "proxy_on_response_body" => "on-response-body",
        "proxy_on_response_trailers" => "on-response-trailers",
        "proxy_on_log" | "proxy_on_delete" => "on-stream-done",
        "proxy_on_tick" => "on-tick",
        "proxy_on_http_call_response" => "on-callout-response",
        "proxy_on_queue_ready" => "on-queue-ready",
        "proxy_on_done" => "on-shutdown",
        other => other,
    }
}

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

fn lookup<P, R>(store: &mut Store<VmState>, instance: &wasmtime::Instance, name: &str) -> Option<TypedFunc<P, R>>
where
    P: wasmtime::WasmParams,
    R: wasmtime::WasmResults,
{
    instance.get_typed_func::<P, R>(&mut *store, name).ok()
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
                let context_create = lookup(&mut store, &instance, "proxy_on_context_create")
                    .ok_or_else(|| instantiate_error("proxy_on_context_create has the wrong signature".into()))?;
                let callbacks = Callbacks {
                    wasi: WasiEntries::resolve(&mut store, &instance),
                    context_create,
                    vm_start: lookup(&mut store, &instance, "proxy_on_vm_start"),
                    configure: lookup(&mut store, &instance, "proxy_on_configure"),
                    tick: lookup(&mut store, &instance, "proxy_on_tick"),
                    request_headers: lookup(&mut store, &instance, "proxy_on_request_headers"),
                    request_body: lookup(&mut store, &instance, "proxy_on_request_body"),
                    request_trailers: lookup(&mut store, &instance, "proxy_on_request_trailers"),
                    response_headers: lookup(&mut store, &instance, "proxy_on_response_headers"),
                    response_body: lookup(&mut store, &instance, "proxy_on_response_body"),
                    response_trailers: lookup(&mut store, &instance, "proxy_on_response_trailers"),
                    log: lookup(&mut store, &instance, "proxy_on_log"),
                    done: lookup(&mut store, &instance, "proxy_on_done"),
                    delete: lookup(&mut store, &instance, "proxy_on_delete"),
                    http_call_response: lookup(&mut store, &instance, "proxy_on_http_call_response"),
                    queue_ready: lookup(&mut store, &instance, "proxy_on_queue_ready"),
                    grpc: GrpcCallbacks::resolve(&mut store, &instance),
                };
                (Guest::Core(callbacks), memory, allocator)
            }
        };
        let state = store.data_mut();
        state.memory = memory;
        state.allocator = allocator.map(Arc::new);
        state.root_context_id = ROOT_CONTEXT_ID;
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
        vm.inner.borrow_mut().store.data_mut().self_ref = send_wrapper::SendWrapper::new(Rc::downgrade(&vm));
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
        let deadline = self.plugin.limits.start_deadline;
        let root = ROOT_CONTEXT_ID;
        if self.is_component() {
            let configured = self.call("proxy_on_configure", root, deadline, |store, guest| match guest {
                Guest::Component(c) => {
                    c.configure(store, &self.plugin.plugin_configuration, &self.plugin.vm_configuration)
                }
                Guest::Core(_) => Ok(Ok(())),
            })?;
            return configured.map_err(|reason| {
                let failure = GuestFailure {
                    plugin: self.plugin.name.clone(),
                    callback: "configure",
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
            self.call(entry.export(), 0, deadline, |store, guest| match guest {
                Guest::Core(cb) => cb.wasi.run(entry, store),
                Guest::Component(_) => Ok(()),
            })?;
        }
        self.call("proxy_on_context_create", root, deadline, |store, cb| match cb {
            Guest::Core(cb) => cb.context_create.call(store, (root, 0)),
            Guest::Component(_) => Ok(()),
        })?;
        let vm_config_len = u32::try_from(self.plugin.vm_configuration.len()).unwrap_or(u32::MAX);
        let started = self.call("proxy_on_vm_start", root, deadline, |store, cb| match cb {
            Guest::Core(Callbacks { vm_start: Some(f), .. }) => f.call(store, (root, vm_config_len)),
            _ => Ok(1),
        })?;
        if started == 0 {
            return Err(self.refuse("proxy_on_vm_start"));
        }
        let config_len = u32::try_from(self.plugin.plugin_configuration.len()).unwrap_or(u32::MAX);
        let configured = self.call("proxy_on_configure", root, deadline, |store, cb| match cb {
            Guest::Core(Callbacks { configure: Some(f), .. }) => f.call(store, (root, config_len)),
            _ => Ok(1),
        })?;
        if configured == 0 {
            return Err(self.refuse("proxy_on_configure"));
        }
        Ok(())
    }

    /// Replaces the start-up log (`Some` starts keeping lines), returning the one it had.
    fn set_startup_log(&self, log: Option<StartupLog>) -> Option<StartupLog> {
        let mut inner = self.inner.borrow_mut();
        let mut slot = inner.store.data_mut().startup_log.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *slot, log)
    }

    fn refuse(&self, callback: &'static str) -> GuestFailure {
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
        self.inner.try_borrow().map_or(0, |inner| inner.store.data().streams.len())
    }

    /// Calls into the guest with the deadline armed and `context` as the acting context.
    pub(crate) fn call<R>(
        &self,
        callback: &'static str,
        context: u32,
        deadline: Duration,
        f: impl FnOnce(&mut Store<VmState>, &Guest) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFailure> {
        let callback = callback_name(self.is_component(), callback);
        if let Some(failure) = self.failure.borrow().as_ref() {
            return Err(GuestFailure {
                callback,
                kind: FailureKind::VmFailed,
                detail: format!("the VM failed earlier in {}", failure.callback),
                ..failure.clone()
            });
        }
        let result = {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                return Err(GuestFailure {
                    plugin: self.plugin.name.clone(),
                    callback,
                    kind: FailureKind::VmFailed,
                    detail: "re-entrant call into a VM that is already running a callback".into(),
                });
            };
            let VmInner { store, callbacks } = &mut *inner;
            store.set_epoch_deadline(Runtime::deadline_ticks(deadline));
            let state = store.data_mut();
            let previous = (state.active_context, state.effective_context.take());
            state.active_context = context;
            // A host function that panics (a bug, or a library asked to do what a worker must
            // not) fails this VM like a trap instead of unwinding through the worker.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(store, callbacks))).unwrap_or_else(
                |panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)");
                    Err(wasmtime::Error::msg(format!("a host function panicked: {what}")))
                },
            );
            let state = store.data_mut();
            (state.active_context, state.effective_context) = previous;
            // The guest's output is read only when it failed (its panic message): copying it after
            // every callback would put a lock and a copy on every request.
            result.map_err(|error| {
                let mut failure = self.classify(callback, &error, state.memory_cap.hit);
                if let Some(output) = state.take_guest_output() {
                    failure.detail = format!("{}; the filter wrote: {output}", failure.detail);
                }
                failure
            })
        };
        result.inspect_err(|failure| {
            if !self.is_failed() {
                self.failed_context.set(Some(context));
            }
            self.fail(failure.clone());
        })
    }

    /// Whether this VM failed in its root context (a tick, a queue, a callout's answer) soon
    /// after it started: a module that does so again each time it is re-created would spin,
    /// with no stream to stop it (a Wasm service), so its re-creation backs off.
    pub(crate) fn failed_early_off_stream(&self, window: Duration) -> bool {
        self.is_failed() && self.failed_context.get() == Some(ROOT_CONTEXT_ID) && self.started_at.elapsed() < window
    }

    fn classify(&self, callback: &'static str, error: &wasmtime::Error, memory_limit_hit: bool) -> GuestFailure {
        let kind = if memory_limit_hit {
            FailureKind::MemoryLimit
        } else if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            FailureKind::DeadlineExceeded
        } else if error.downcast_ref::<GuestFault>().is_some() {
            FailureKind::BadGuestInput
        } else {
            FailureKind::Trap
        };
        let detail = match kind {
            FailureKind::DeadlineExceeded => format!(
                "callback exceeded its deadline of {:?} and was interrupted",
                if is_start_up(callback) {
                    self.plugin.limits.start_deadline
                } else {
                    self.plugin.limits.callback_deadline
                }
            ),
            FailureKind::MemoryLimit => {
                format!("memory limit of {} bytes exceeded ({error:#})", self.plugin.limits.max_memory_bytes)
            }
            _ => format!("{error:?}"),
        };
        GuestFailure { plugin: self.plugin.name.clone(), callback, kind, detail }
    }

    /// Poisons the VM: logs, counts, and wakes every stream still on it.
    fn fail(&self, failure: GuestFailure) {
        if self.failure.borrow().is_some() {
            return;
        }
        tracing::error!(
            plugin = %self.plugin.name,
            callback = failure.callback,
            kind = ?failure.kind,
            "{failure}"
        );
        self.services.update_failures(&self.plugin.name, |stats| {
            *stats.callback_failures.entry(failure.callback).or_default() += 1;
        });
        *self.failure.borrow_mut() = Some(failure);
        if let Ok(inner) = self.inner.try_borrow() {
            for stream in inner.store.data().streams.values() {
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
            inner.store.data_mut().streams.insert(id, StreamContext { exchange, signals, done_delivered: false });
        }
        let created =
            self.call("proxy_on_context_create", id, self.plugin.limits.callback_deadline, |store, cb| match cb {
                Guest::Core(cb) => cb.context_create.call(store, (id, ROOT_CONTEXT_ID)),
                // A component learns of the stream with its first callback.
                Guest::Component(_) => Ok(()),
            });
        if created.is_err()
            && let Ok(mut inner) = self.inner.try_borrow_mut()
        {
            inner.store.data_mut().streams.remove(&id);
        }
        created.map(|()| id)
    }

    /// Ends a stream context: `proxy_on_done` then `proxy_on_delete`, and forgets it.
    pub(crate) fn destroy_stream(&self, id: u32) {
        let deadline = self.plugin.limits.callback_deadline;
        let _ = self.call("proxy_on_done", id, deadline, |store, cb| match cb {
            Guest::Core(Callbacks { done: Some(f), .. }) => f.call(&mut *store, id).map(drop),
            _ => Ok(()),
        });
        let _ = self.call("proxy_on_delete", id, deadline, |store, cb| match cb {
            Guest::Core(Callbacks { delete: Some(f), .. }) => f.call(&mut *store, id),
            Guest::Component(c) => c.stream_done(store, id),
            Guest::Core(_) => Ok(()),
        });
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.store.data_mut().streams.remove(&id);
        }
        self.drop_grpc_calls(Some(id));
    }

    /// `proxy_on_log` for a stream.
    pub(crate) fn log_stream(&self, id: u32) -> Result<(), GuestFailure> {
        self.call("proxy_on_log", id, self.plugin.limits.callback_deadline, |store, cb| match cb {
            Guest::Core(Callbacks { log: Some(f), .. }) => f.call(store, id),
            Guest::Component(c) => c.stream_done(store, id),
            Guest::Core(_) => Ok(()),
        })
    }

    /// When the root context's timer fires next, if it is armed.
    pub fn next_tick(&self) -> Option<Instant> {
        self.inner.try_borrow().ok()?.store.data().tick.next
    }

    /// Runs `proxy_on_tick` if the timer is due at `now`, re-arming it first (Envoy re-arms after
    /// each tick). Returns whether a tick ran.
    pub fn tick_if_due(&self, now: Instant) -> Result<bool, GuestFailure> {
        {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                return Ok(false);
            };
            let tick = &mut inner.store.data_mut().tick;
            match (tick.next, tick.period) {
                (Some(next), Some(period)) if next <= now => tick.next = Some(now + period),
                _ => return Ok(false),
            }
        }
        self.call("proxy_on_tick", ROOT_CONTEXT_ID, self.plugin.limits.callback_deadline, |store, cb| match cb {
            Guest::Core(Callbacks { tick: Some(f), .. }) => f.call(store, ROOT_CONTEXT_ID),
            Guest::Component(c) => c.tick(store),
            Guest::Core(_) => Ok(()),
        })?;
        Ok(true)
    }

    /// The inbox that receives this VM's queue notifications (register a waker on it).
    pub fn queue_inbox(&self) -> &Arc<QueueInbox> {
        &self.inbox
    }

    /// Runs `proxy_on_queue_ready` for every queue that received items. Returns how many ran.
    pub fn deliver_queue_ready(&self) -> Result<usize, GuestFailure> {
        let ready = self.inbox.drain();
        for &queue_id in &ready {
            self.call("proxy_on_queue_ready", ROOT_CONTEXT_ID, self.plugin.limits.callback_deadline, |store, cb| {
                match cb {
                    Guest::Core(Callbacks { queue_ready: Some(f), .. }) => f.call(store, (ROOT_CONTEXT_ID, queue_id)),
                    Guest::Component(c) => c.queue_ready(store, queue_id),
                    Guest::Core(_) => Ok(()),
                }
            })?;
        }
        Ok(ready.len())
    }

    /// Delivers a callout's outcome to the root context (`proxy_on_http_call_response`). A failure
    /// is delivered as zero headers, zero body and zero trailers, as Envoy does.
    pub(crate) fn deliver_callout(&self, token: u32, outcome: Result<CalloutResponse, CalloutFailure>) {
        let counts = match &outcome {
            Ok(r) => (r.headers.len(), r.body.len(), r.trailers.len()),
            Err(_) => (0, 0, 0),
        };
        let [headers, body, trailers] = [counts.0, counts.1, counts.2].map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        if self.is_component() {
            let _ = self.call(
                "proxy_on_http_call_response",
                ROOT_CONTEXT_ID,
                self.plugin.limits.callback_deadline,
                |store, cb| match cb {
                    Guest::Component(c) => c.callout_response(store, token, &outcome),
                    Guest::Core(_) => Ok(()),
                },
            );
            return;
        }
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.store.data_mut().callout_response = Some(outcome);
        }
        let _ = self.call(
            "proxy_on_http_call_response",
            ROOT_CONTEXT_ID,
            self.plugin.limits.callback_deadline,
            |store, cb| match cb {
                Guest::Core(Callbacks { http_call_response: Some(f), .. }) => {
                    f.call(store, (ROOT_CONTEXT_ID, token, headers, body, trailers))
                }
                _ => Ok(()),
            },
        );
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.store.data_mut().callout_response = None;
        }
    }

    /// Delivers a gRPC event to the root context (the matching `proxy_on_grpc_*`), for a call
    /// the guest still holds, as Envoy does: the call stays the guest's during the callback (it
    /// may close or cancel it there); afterwards a unary call's answer or close ends it, and a
    /// stream's close ends it if the guest half-closed, else leaves it for the guest to close.
    /// Returns whether the call still takes events.
    pub(crate) fn deliver_grpc(&self, token: u32, event: GrpcEvent) -> bool {
        if self.is_failed() {
            return false;
        }
        let (callback_name, _, _) = GrpcCallbacks::NAMES.for_event(&event);
        let closes = matches!(event, GrpcEvent::Close { .. });
        {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                return false;
            };
            let state = inner.store.data_mut();
            if !state.grpc_calls.get(&token).is_some_and(GrpcCall::is_open) {
                return false;
            }
            state.grpc_event = Some(event);
        }
        let _ = self.call(callback_name, ROOT_CONTEXT_ID, self.plugin.limits.callback_deadline, |store, cb| {
            let Guest::Core(callbacks) = cb else { return Ok(()) };
            let Some(event) = store.data().grpc_event.as_ref() else { return Ok(()) };
            match callbacks.grpc.for_event(event) {
                (_, Some(f), argument) => f.call(store, (ROOT_CONTEXT_ID, token, argument)),
                (_, None, _) => Ok(()),
            }
        });
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return false;
        };
        let state = inner.store.data_mut();
        let delivered = state.grpc_event.take();
        let Some(call) = state.grpc_calls.get_mut(&token) else {
            // Cancelled or closed by the guest in the callback.
            return false;
        };
        let unary_answered = !call.stream && matches!(delivered, Some(GrpcEvent::Message(_)));
        if !(closes || unary_answered) {
            return !self.is_failed();
        }
        // The control drops after the store is released (it may abort the task running this).
        let finished = if call.stream && !call.local_closed {
            state.grpc_closed.push_back(token);
            let control = call.control.take();
            let mut evicted = Vec::new();
            while state.grpc_closed.len() > crate::abi::grpc_call::MAX_CLOSED_STREAMS {
                if let Some(oldest) = state.grpc_closed.pop_front()
                    && state.grpc_calls.get(&oldest).is_some_and(|c| !c.is_open())
                {
                    evicted.extend(state.grpc_calls.remove(&oldest));
                }
            }
            (control, evicted)
        } else {
            (state.grpc_calls.remove(&token).and_then(|call| call.control), Vec::new())
        };
        drop(inner);
        drop(finished);
        false
    }

    /// Drops every gRPC call `owner` made (the context ended): each is reset, as Envoy's
    /// context teardown cancels them. `None`: every call (the VM failed).
    fn drop_grpc_calls(&self, owner: Option<u32>) {
        let dropped: Vec<GrpcCall> = match self.inner.try_borrow_mut() {
            Ok(mut inner) => {
                let calls = &mut inner.store.data_mut().grpc_calls;
                let tokens: Vec<u32> =
                    calls.iter().filter(|(_, c)| owner.is_none_or(|o| c.owner == o)).map(|(t, _)| *t).collect();
                tokens.into_iter().filter_map(|t| calls.remove(&t)).collect()
            }
            Err(_) => return,
        };
        drop(dropped);
    }

    /// Asks the root context to finish (`proxy_on_done`). Returns true when it is done now; false
    /// when it will call `proxy_done` later (e.g. after flushing through a callout).
    pub fn shutdown(&self) -> bool {
        let done =
            self.call("proxy_on_done", ROOT_CONTEXT_ID, self.plugin.limits.callback_deadline, |store, cb| match cb {
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
            let _ =
                self.call(
                    "proxy_on_delete",
                    ROOT_CONTEXT_ID,
                    self.plugin.limits.callback_deadline,
                    |store, cb| match cb {
                        Guest::Core(Callbacks { delete: Some(f), .. }) => f.call(store, ROOT_CONTEXT_ID),
                        _ => Ok(()),
                    },
                );
        }
    }
}

fn module_engine(module: &PluginModule) -> &wasmtime::Engine {
    match module.code() {
        CompiledCode::Core { module, .. } => module.engine(),
        CompiledCode::Component(compiled) => compiled.pre.engine(),
    }
}
