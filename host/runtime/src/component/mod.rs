//! The second front door: filters written against the `wasmtrace:filter` WIT world (`wit/`),
//! compiled as components.
//!
//! A component runs in the same [`crate::PluginVm`] as a proxy-wasm module: same store data
//! ([`VmState`]), same stream table and exchange, same limits (memory cap, epoch deadlines), same
//! failure handling and hot swap. Only the calling convention differs: the host functions in
//! [`host`] are the typed twins of the `proxy_*` ones in [`crate::abi`] and call the same
//! internals; [`ComponentExports`] maps the VM's callbacks onto the world's exports.
//!
//! WASI 0.2 is linked because Rust's `wasm32-wasip2` standard library imports it (clocks,
//! randomness, stdio for panic messages); the context grants nothing else, and [`wasi_io`]
//! keeps its blocking operations from blocking (or panicking) a proxy worker.

mod host;
mod wasi_io;

use wasmtime::component::{Component, HasSelf, Linker, Resource};
use wasmtime::{Engine, Store};

use crate::callout::{CalloutFailure, CalloutResponse};
use crate::error::LoadError;
use crate::state::VmState;

/// The host side of `wit/`, generated (documented there).
mod bindings {
    #![allow(missing_docs, reason = "generated from wit/, where every item is documented")]
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasmtrace:filter/http-filter",
        imports: { default: trappable },
    });
}

use bindings::exports::wasmtrace::filter::handler::Action;
use bindings::wasmtrace::filter::exchange::HttpStream;
use bindings::wasmtrace::filter::types::{CalloutError, CalloutResponse as WitCalloutResponse};
use bindings::{HttpFilter, HttpFilterPre};

/// The world this host implements, as components name it.
pub const WORLD: &str = "wasmtrace:filter/http-filter@0.2.2";

/// The first 8 bytes of a component binary: `\0asm`, then layer 1 version 0x0d. A core module
/// has version 1, layer 0.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

/// The linker for component filters: WASI 0.2 (sandboxed by the store's context) and the world's
/// imports.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<VmState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wasi_io::replace_blocking_io(&mut linker)?;
    HttpFilter::add_to_linker::<VmState, HasSelf<VmState>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// A compiled component checked against the world, ready to instantiate.
pub(crate) struct CompiledComponent {
    pub(crate) pre: HttpFilterPre<VmState>,
}

/// Compiles `bytes`, not yet linked: the module cache stores this, and [`link`] checks it
/// (compiled now or read from the cache) against the world.
pub(crate) fn compile_only(engine: &Engine, bytes: &[u8]) -> Result<Component, LoadError> {
    Component::new(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))
}

/// Links a compiled component against the world; the error says which import the host lacks or
/// which export is missing or has the wrong type.
pub(crate) fn link(linker: &Linker<VmState>, component: &Component) -> Result<CompiledComponent, LoadError> {
    let pre = linker.instantiate_pre(component).map_err(|e| {
        LoadError::Link(format!(
            "the component needs an import this host does not provide ({WORLD} and WASI 0.2 are provided): {e:#}"
        ))
    })?;
    let pre = HttpFilterPre::new(pre).map_err(|e| {
        LoadError::Link(format!(
            "the component does not export the {WORLD} world's `handler` as the host expects: {e:#}"
        ))
    })?;
    Ok(CompiledComponent { pre })
}

/// The instantiated world's exports: what the VM calls.
pub(crate) struct ComponentExports {
    filter: HttpFilter,
}

/// The proxy-wasm result codes the stream logic understands.
fn action_code(action: Action) -> u32 {
    match action {
        Action::Continue => 0,
        Action::Pause => 1,
    }
}

fn stream(id: u32) -> Resource<HttpStream> {
    Resource::new_borrow(id)
}

/// A component's refusal of its configuration: the text its `configure` returned.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigurationRefused(pub String);

impl ComponentExports {
    /// Instantiates the component in `store`.
    pub(crate) fn instantiate(compiled: &CompiledComponent, store: &mut Store<VmState>) -> wasmtime::Result<Self> {
        Ok(Self { filter: compiled.pre.instantiate(store)? })
    }

    fn handler(&self) -> &bindings::exports::wasmtrace::filter::handler::Guest {
        self.filter.wasmtrace_filter_handler()
    }

    /// `configure`; the guest's refusal comes back as `Err`.
    pub(crate) fn configure(
        &self,
        store: &mut Store<VmState>,
        configuration: &[u8],
        vm_configuration: &[u8],
    ) -> wasmtime::Result<Result<(), ConfigurationRefused>> {
        Ok(self.handler().call_configure(store, configuration, vm_configuration)?.map_err(ConfigurationRefused))
    }

    pub(crate) fn request_headers(&self, store: &mut Store<VmState>, id: u32, end: bool) -> wasmtime::Result<u32> {
        self.handler().call_on_request_headers(store, stream(id), end).map(action_code)
    }

    pub(crate) fn request_body(
        &self,
        store: &mut Store<VmState>,
        id: u32,
        len: u32,
        end: bool,
    ) -> wasmtime::Result<u32> {
        self.handler().call_on_request_body(store, stream(id), len, end).map(action_code)
    }

    pub(crate) fn request_trailers(&self, store: &mut Store<VmState>, id: u32) -> wasmtime::Result<u32> {
        self.handler().call_on_request_trailers(store, stream(id)).map(action_code)
    }

    pub(crate) fn response_headers(&self, store: &mut Store<VmState>, id: u32, end: bool) -> wasmtime::Result<u32> {
        self.handler().call_on_response_headers(store, stream(id), end).map(action_code)
    }

    pub(crate) fn response_body(
        &self,
        store: &mut Store<VmState>,
        id: u32,
        len: u32,
        end: bool,
    ) -> wasmtime::Result<u32> {
        self.handler().call_on_response_body(store, stream(id), len, end).map(action_code)
    }

    pub(crate) fn response_trailers(&self, store: &mut Store<VmState>, id: u32) -> wasmtime::Result<u32> {
        self.handler().call_on_response_trailers(store, stream(id)).map(action_code)
    }

    /// `on-stream-done`, once per stream (the access-log point, or the stream's end if the
    /// data plane never reached it).
    pub(crate) fn stream_done(&self, store: &mut Store<VmState>, id: u32) -> wasmtime::Result<()> {
        let first = store
            .data_mut()
            .contexts
            .streams
            .get_mut(&id)
            .is_some_and(|s| !std::mem::replace(&mut s.done_delivered, true));
        if first { self.handler().call_on_stream_done(store, stream(id)) } else { Ok(()) }
    }

    pub(crate) fn tick(&self, store: &mut Store<VmState>) -> wasmtime::Result<()> {
        self.handler().call_on_tick(store)
    }

    pub(crate) fn queue_ready(&self, store: &mut Store<VmState>, queue: u32) -> wasmtime::Result<()> {
        self.handler().call_on_queue_ready(store, queue)
    }

    /// `on-shutdown`, as proxy-wasm's `proxy_on_done` code (1: done now).
    pub(crate) fn shutdown(&self, store: &mut Store<VmState>) -> wasmtime::Result<u32> {
        self.handler().call_on_shutdown(store).map(u32::from)
    }

    /// `on-callout-response`, unless the guest dropped the callout's handle; `stream` is the
    /// live stream that made the call (the context the VM acts for, see
    /// [`PluginVm::deliver_callout`](crate::PluginVm)).
    pub(crate) fn callout_response(
        &self,
        store: &mut Store<VmState>,
        token: u32,
        stream_id: Option<u32>,
        outcome: &Result<CalloutResponse, CalloutFailure>,
    ) -> wasmtime::Result<()> {
        let outcome = match outcome {
            Ok(response) => Ok(WitCalloutResponse {
                status: response.headers.get_str(":status").and_then(|s| s.parse().ok()).unwrap_or(0),
                headers: host::fields(&response.headers),
                body: response.body.clone(),
                trailers: host::fields(&response.trailers),
            }),
            Err(failure) if failure.reason.contains("timeout") => Err(CalloutError::Timeout),
            Err(_) => Err(CalloutError::Unreachable),
        };
        self.handler().call_on_callout_response(store, stream_id.map(stream), token, outcome.as_ref().map_err(|e| *e))
    }
}
