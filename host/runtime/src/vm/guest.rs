//! The guest's side of a VM, per form: a core module's proxy-wasm exports looked up once by
//! name (with the WASI entry points its start-up runs), or a component's typed exports.

use wasmtime::{Store, TypedFunc};

use crate::component::ComponentExports;
use crate::grpc_callout::GrpcEvent;
use crate::state::VmState;

use super::Callback;

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
pub(super) struct WasiEntries {
    initialize: Option<TypedFunc<(), ()>>,
    main: Option<TypedFunc<(u32, u32), u32>>,
    main_void: Option<TypedFunc<(), u32>>,
    start: Option<TypedFunc<(), ()>>,
}

/// One start-up call into a WASI entry point.
#[derive(Clone, Copy)]
pub(super) enum WasiEntry {
    Initialize,
    Main,
    MainVoid,
    Start,
}

impl WasiEntry {
    /// The callback a call of this entry point is.
    pub(super) fn callback(self) -> Callback {
        match self {
            Self::Initialize => Callback::WasiInitialize,
            Self::Main => Callback::WasiMain,
            Self::MainVoid => Callback::WasiMainVoid,
            Self::Start => Callback::WasiStart,
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
    pub(super) fn sequence(&self) -> [Option<WasiEntry>; 2] {
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
    pub(super) fn run(&self, entry: WasiEntry, store: &mut Store<VmState>) -> wasmtime::Result<()> {
        match entry {
            WasiEntry::Initialize => self.initialize.as_ref().map_or(Ok(()), |f| f.call(store, ())),
            WasiEntry::Main => self.main.as_ref().map_or(Ok(()), |f| f.call(store, (0, 0)).map(drop)),
            WasiEntry::MainVoid => self.main_void.as_ref().map_or(Ok(()), |f| f.call(store, ()).map(drop)),
            WasiEntry::Start => self.start.as_ref().map_or(Ok(()), |f| f.call(store, ())),
        }
    }
}

/// The guest exports the host calls, looked up once per instance.
pub(crate) struct Callbacks {
    pub(super) wasi: WasiEntries,
    pub(super) context_create: Callback2,
    pub(super) vm_start: Option<Decision2>,
    pub(super) configure: Option<Decision2>,
    pub(super) tick: Option<Callback1>,
    request_headers: Option<Decision3>,
    request_body: Option<Decision3>,
    request_trailers: Option<Decision2>,
    response_headers: Option<Decision3>,
    response_body: Option<Decision3>,
    response_trailers: Option<Decision2>,
    pub(super) log: Option<Callback1>,
    pub(super) done: Option<TypedFunc<u32, u32>>,
    pub(super) delete: Option<Callback1>,
    pub(super) http_call_response: Option<CalloutCallback>,
    pub(super) queue_ready: Option<Callback2>,
    pub(super) grpc: GrpcCallbacks,
}

impl Callbacks {
    /// Looks up every export of a core module's `instance` (an absent one is a callback the
    /// module does not implement). `None` only if `proxy_on_context_create`, which every
    /// proxy-wasm module has, has the wrong signature.
    pub(super) fn resolve(store: &mut Store<VmState>, instance: &wasmtime::Instance) -> Option<Self> {
        let context_create = lookup(store, instance, "proxy_on_context_create")?;
        Some(Self {
            wasi: WasiEntries::resolve(store, instance),
            context_create,
            vm_start: lookup(store, instance, "proxy_on_vm_start"),
            configure: lookup(store, instance, "proxy_on_configure"),
            tick: lookup(store, instance, "proxy_on_tick"),
            request_headers: lookup(store, instance, "proxy_on_request_headers"),
            request_body: lookup(store, instance, "proxy_on_request_body"),
            request_trailers: lookup(store, instance, "proxy_on_request_trailers"),
            response_headers: lookup(store, instance, "proxy_on_response_headers"),
            response_body: lookup(store, instance, "proxy_on_response_body"),
            response_trailers: lookup(store, instance, "proxy_on_response_trailers"),
            log: lookup(store, instance, "proxy_on_log"),
            done: lookup(store, instance, "proxy_on_done"),
            delete: lookup(store, instance, "proxy_on_delete"),
            http_call_response: lookup(store, instance, "proxy_on_http_call_response"),
            queue_ready: lookup(store, instance, "proxy_on_queue_ready"),
            grpc: GrpcCallbacks::resolve(store, instance),
        })
    }
}

/// The gRPC callbacks, `(context_id, token, count/size/status)` each.
pub(super) struct GrpcCallbacks {
    initial_metadata: Option<Callback3>,
    message: Option<Callback3>,
    trailing_metadata: Option<Callback3>,
    close: Option<Callback3>,
}

impl GrpcCallbacks {
    /// No callbacks: names events for failure reports.
    pub(super) const NAMES: Self = Self { initial_metadata: None, message: None, trailing_metadata: None, close: None };

    fn resolve(store: &mut Store<VmState>, instance: &wasmtime::Instance) -> Self {
        Self {
            initial_metadata: lookup(store, instance, "proxy_on_grpc_receive_initial_metadata"),
            message: lookup(store, instance, "proxy_on_grpc_receive"),
            trailing_metadata: lookup(store, instance, "proxy_on_grpc_receive_trailing_metadata"),
            close: lookup(store, instance, "proxy_on_grpc_close"),
        }
    }

    /// The export for `event` and its third argument.
    pub(super) fn for_event(&self, event: &GrpcEvent) -> (Callback, Option<&Callback3>, u32) {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match event {
            GrpcEvent::InitialMetadata(map) => {
                (Callback::GrpcInitialMetadata, self.initial_metadata.as_ref(), count(map.len()))
            }
            GrpcEvent::Message(message) => (Callback::GrpcMessage, self.message.as_ref(), count(message.len())),
            GrpcEvent::TrailingMetadata(map) => {
                (Callback::GrpcTrailingMetadata, self.trailing_metadata.as_ref(), count(map.len()))
            }
            GrpcEvent::Close { status, .. } => (Callback::GrpcClose, self.close.as_ref(), *status),
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

pub(super) fn lookup<P, R>(
    store: &mut Store<VmState>,
    instance: &wasmtime::Instance,
    name: &str,
) -> Option<TypedFunc<P, R>>
where
    P: wasmtime::WasmParams,
    R: wasmtime::WasmResults,
{
    instance.get_typed_func::<P, R>(&mut *store, name).ok()
}
