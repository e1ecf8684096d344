//! Properties: `proxy_get_property` (see [`crate::properties`] for the vocabulary) and
//! `proxy_set_property`, which writes filter state every filter of the stream can read back.

use wasmtime::Caller;

use super::Registrar;
use super::memory;
use super::types::Status;
use crate::error::GuestFault;
use crate::filter_state::FilterStateFull;
use crate::properties::{PropertyScope, PropertyValue, filter_state_key, resolve};
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

/// Most segments split onto the stack; longer paths (none that resolve to anything) go to the
/// heap.
const SEGMENTS_ON_STACK: usize = 8;

/// Runs `f` on the segments of `path` ([`segments`]), split onto the stack when there are few.
pub(crate) fn with_segments<R>(path: &[u8], f: impl FnOnce(&[&[u8]]) -> R) -> R {
    let trimmed = path.strip_suffix(b"\0").unwrap_or(path);
    let mut stack: [&[u8]; SEGMENTS_ON_STACK] = [&[]; SEGMENTS_ON_STACK];
    let mut count = 0;
    for segment in trimmed.split(|b| *b == 0) {
        if count == SEGMENTS_ON_STACK {
            return f(&segments(path));
        }
        stack[count] = segment;
        count += 1;
    }
    f(&stack[..count])
}

fn get_property(
    mut caller: Caller<'_, VmState>,
    path_ptr: u32,
    path_len: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_property";
    // The path is read in place; the value is resolved once and written into the guest's buffer.
    let value = {
        let (data, state) = memory::view(&caller, CALL)?;
        let path = memory::slice(data, CALL, path_ptr, path_len)?;
        with_segments(path, |segments| resolve_property(state, segments))
    };
    let Some(value) = value else {
        return Ok(Status::NotFound.code());
    };
    // A map is encoded once (measuring it would encode it a second time); scalars and bytes
    // are written straight into the guest's buffer.
    if let PropertyValue::Map(_) = value {
        memory::hand_over(&mut caller, CALL, &value.encode(), ret_ptr, ret_len)?;
        return Ok(Status::Ok.code());
    }
    memory::hand_over_with(&mut caller, CALL, value.encoded_len(), ret_ptr, ret_len, |out, _| {
        if !value.encode_into(out) {
            out.fill(0);
        }
    })?;
    Ok(Status::Ok.code())
}

/// A property for the acting context, resolved.
fn resolve_property(state: &VmState, path: &[&[u8]]) -> Option<PropertyValue> {
    let exchange = state.acting_stream().map(|s| s.exchange.borrow());
    let scope = PropertyScope {
        plugin: &state.plugin,
        node: &state.services.node,
        exchange: exchange.as_deref(),
        root_filter_state: &state.root_filter_state,
    };
    resolve(path, &scope)
}

/// A property for the acting context, encoded as proxy-wasm hands it over.
pub(crate) fn read_property(state: &VmState, path: &[&[u8]]) -> Option<Vec<u8>> {
    resolve_property(state, path).map(PropertyValue::into_encoded)
}

fn set_property(
    mut caller: Caller<'_, VmState>,
    path_ptr: u32,
    path_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_set_property";
    let (data, _) = memory::view(&caller, CALL)?;
    let path = memory::slice(data, CALL, path_ptr, path_len)?;
    let key = with_segments(path, filter_state_key);
    let value = memory::slice(data, CALL, value_ptr, value_len)?.to_vec();
    write_filter_state(caller.data_mut(), CALL, key, value)?;
    Ok(Status::Ok.code())
}

/// Stores filter state under `key`: on the acting stream, else on the root context, charged
/// to this VM's plugin. A write past the plugin's bounds on one stream ([`crate::filter_state`])
/// traps (the guest's fault, `call` named) and changes nothing. A write past its share over all
/// the streams it serves is dropped, counted and logged instead: how many streams are live is
/// the load's doing, and a trap would fail every stream of the VM, which a client could then
/// cause at will through any filter that copies what it sends into filter state.
pub(crate) fn write_filter_state(
    state: &mut VmState,
    call: &'static str,
    key: String,
    value: Vec<u8>,
) -> wasmtime::Result<()> {
    let writer = state.filter_state_budget.clone();
    let written = match state.acting_stream() {
        Some(stream) => stream.exchange.borrow_mut().info.filter_state.write(&writer, key, value),
        None => state.root_filter_state.write(&writer, key, value),
    };
    match written {
        Ok(()) => Ok(()),
        Err(FilterStateFull::PluginBytes) => {
            let mut dropped = 0;
            state.services.update_failures(&state.plugin.name, |stats| {
                stats.filter_state_dropped += 1;
                dropped = stats.filter_state_dropped;
            });
            if writer.may_log_drop() {
                tracing::warn!(
                    plugin = %state.plugin.name,
                    dropped,
                    "filter state write dropped: {}",
                    FilterStateFull::PluginBytes
                );
            }
            Ok(())
        }
        Err(full) => Err(GuestFault::trap(call, format!("filter state refused: {full}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_the_same_on_the_stack_and_on_the_heap() {
        let paths: [&[u8]; 6] = [
            b"",
            b"a",
            b"a\0b\0",
            b"a\0\0b",
            b"1\x002\x003\x004\x005\x006\x007\x008",
            b"1\x002\x003\x004\x005\x006\x007\x008\x009",
        ];
        for path in paths {
            let owned = |segments: &[&[u8]]| segments.iter().map(|s| s.to_vec()).collect::<Vec<_>>();
            assert_eq!(with_segments(path, owned), owned(&segments(path)), "{path:?}");
        }
    }
}
