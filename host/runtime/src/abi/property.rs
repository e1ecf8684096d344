//! Properties: `proxy_get_property` (see [`crate::properties`] for the vocabulary) and
//! `proxy_set_property`, which writes filter state every filter of the stream can read back.

use wasmtime::Caller;

use super::Registrar;
use super::memory;
use super::types::Status;
use crate::properties::{PropertyScope, filter_state_key, resolve};
use crate::state::VmState;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_get_property", get_property)?;
    r.env("proxy_set_property", set_property)?;
    Ok(())
}

/// Splits a serialised property path (`a\0b\0c`, trailing NUL tolerated) into segments.
pub(crate) fn segments(path: &[u8]) -> Vec<&[u8]> {
    let path = path.strip_suffix(b"\0").unwrap_or(path);
    path.split(|b| *b == 0).collect()
}

fn get_property(
    mut caller: Caller<'_, VmState>,
    path_ptr: u32,
    path_len: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_property";
    let path = memory::read(&caller, CALL, path_ptr, path_len)?;
    let Some(value) = read_property(caller.data(), &segments(&path)) else {
        return Ok(Status::NotFound.code());
    };
    memory::hand_over(&mut caller, CALL, &value, ret_ptr, ret_len)?;
    Ok(Status::Ok.code())
}

/// A property for the acting context, encoded as proxy-wasm hands it over.
pub(crate) fn read_property(state: &VmState, path: &[&[u8]]) -> Option<Vec<u8>> {
    let exchange = state.acting_stream().map(|s| s.exchange.borrow());
    let scope = PropertyScope {
        plugin: &state.plugin,
        node: &state.services.node,
        exchange: exchange.as_deref(),
        root_filter_state: &state.root_filter_state,
    };
    resolve(path, &scope).map(|value| value.encode())
}

/// Sets filter state under `path`: on the acting stream, else on the root context.
pub(crate) fn write_property(state: &mut VmState, path: &[&[u8]], value: Vec<u8>) {
    let key = filter_state_key(path);
    match state.acting_stream() {
        Some(stream) => {
            stream.exchange.borrow_mut().info.filter_state.insert(key, value);
        }
        None => {
            state.root_filter_state.insert(key, value);
        }
    }
}

fn set_property(
    mut caller: Caller<'_, VmState>,
    path_ptr: u32,
    path_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_set_property";
    let path = memory::read(&caller, CALL, path_ptr, path_len)?;
    let value = memory::read(&caller, CALL, value_ptr, value_len)?;
    write_property(caller.data_mut(), &segments(&path), value);
    Ok(Status::Ok.code())
}
