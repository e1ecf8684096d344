//! The host side of the proxy-wasm ABI v0.2.1: every `env.proxy_*` host function Envoy
//! implements and Envoy's WASI preview1 subset, one file per area.
//!
//! Each area registers its functions through [`Registrar`], which records the names so a module
//! importing anything else is refused at load with the import named (see [`crate::module`]).
//! Host functions are named after the ABI call without the `proxy_` prefix.

pub(crate) mod buffer;
pub(crate) mod grpc_call;
pub(crate) mod header_map;
pub(crate) mod http_call;
pub(crate) mod log;
pub(crate) mod memory;
pub(crate) mod metric;
pub(crate) mod property;
pub(crate) mod shared;
pub(crate) mod stream_control;
pub(crate) mod timer;
pub mod types;

pub(crate) use timer::unix_nanos;
mod wasi;

use std::collections::HashSet;

use wasmtime::{IntoFunc, Linker};

use crate::state::VmState;

/// The `(module, name)` pairs the host provides.
#[derive(Default)]
pub struct ProvidedImports {
    names: HashSet<(String, String)>,
}

impl ProvidedImports {
    /// True if `module.name` is provided.
    pub fn contains(&self, module: &str, name: &str) -> bool {
        self.names.contains(&(module.to_owned(), name.to_owned()))
    }

    /// Number of provided functions.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True if nothing is provided.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Registers host functions in the linker and remembers their names.
pub(crate) struct Registrar<'a> {
    linker: &'a mut Linker<VmState>,
    provided: ProvidedImports,
}

/// Import module of the proxy-wasm host functions.
pub(crate) const ENV: &str = "env";

impl Registrar<'_> {
    /// Registers `func` as `module.name`.
    pub(crate) fn func<Params, Results>(
        &mut self,
        module: &str,
        name: &str,
        func: impl IntoFunc<VmState, Params, Results>,
    ) -> wasmtime::Result<()> {
        self.linker.func_wrap(module, name, func)?;
        self.provided.names.insert((module.to_owned(), name.to_owned()));
        Ok(())
    }

    /// Registers `func` as `env.name`.
    pub(crate) fn env<Params, Results>(
        &mut self,
        name: &str,
        func: impl IntoFunc<VmState, Params, Results>,
    ) -> wasmtime::Result<()> {
        self.func(ENV, name, func)
    }
}

/// Adds every host function to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<VmState>) -> wasmtime::Result<ProvidedImports> {
    let mut registrar = Registrar { linker, provided: ProvidedImports::default() };
    log::add_to_linker(&mut registrar)?;
    timer::add_to_linker(&mut registrar)?;
    header_map::add_to_linker(&mut registrar)?;
    buffer::add_to_linker(&mut registrar)?;
    property::add_to_linker(&mut registrar)?;
    http_call::add_to_linker(&mut registrar)?;
    grpc_call::add_to_linker(&mut registrar)?;
    stream_control::add_to_linker(&mut registrar)?;
    metric::add_to_linker(&mut registrar)?;
    shared::add_to_linker(&mut registrar)?;
    wasi::add_to_linker(&mut registrar)?;
    Ok(registrar.provided)
}
