//! Byte buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status`.
//!
//! Bodies are the bytes the data plane is filtering right now (a chunk, or everything buffered
//! while a filter pauses). Configuration buffers are readable at any time.

use wasmtime::Caller;

use super::Registrar;
use super::log::emit;
use super::memory;
use super::types::{BufferType, LogLevel, Status};
use crate::error::GuestFault;
use crate::grpc_callout::GrpcEvent;
use crate::state::VmState;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_get_buffer_bytes", get_buffer_bytes)?;
    r.env("proxy_set_buffer_bytes", set_buffer_bytes)?;
    r.env("proxy_get_buffer_status", get_buffer_status)?;
    Ok(())
}

fn buffer_type(call: &'static str, raw: u32) -> wasmtime::Result<BufferType> {
    BufferType::from_raw(raw).ok_or_else(|| GuestFault::trap(call, format!("unknown buffer type {raw}")))
}

/// Runs `f` on the buffer, if it exists for the acting context.
pub(crate) fn read_buffer<R>(state: &VmState, buffer: BufferType, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    match buffer {
        BufferType::HttpRequestBody => Some(f(&state.acting_stream()?.exchange.borrow().request_body)),
        BufferType::HttpResponseBody => Some(f(&state.acting_stream()?.exchange.borrow().response_body)),
        BufferType::HttpCallResponseBody => Some(f(&state.callouts.response.as_ref()?.as_ref().ok()?.body)),
        BufferType::GrpcReceiveBuffer => match &state.grpc.event {
            Some(GrpcEvent::Message(message)) => Some(f(message)),
            _ => None,
        },
        BufferType::VmConfiguration => Some(f(&state.plugin.vm_configuration)),
        BufferType::PluginConfiguration => Some(f(&state.plugin.plugin_configuration)),
        BufferType::DownstreamData | BufferType::UpstreamData | BufferType::CallData => None,
    }
}

fn get_buffer_bytes(
    mut caller: Caller<'_, VmState>,
    buffer: u32,
    start: u32,
    max_size: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_buffer_bytes";
    let buffer = buffer_type(CALL, buffer)?;
    let slice = read_buffer(caller.data(), buffer, |bytes| {
        let start = (start as usize).min(bytes.len());
        let end = start.saturating_add(max_size as usize).min(bytes.len());
        bytes[start..end].to_vec()
    });
    let Some(slice) = slice else {
        return Ok(Status::NotFound.code());
    };
    memory::hand_over(&mut caller, CALL, &slice, ret_ptr, ret_len)?;
    Ok(Status::Ok.code())
}

fn set_buffer_bytes(
    caller: Caller<'_, VmState>,
    buffer: u32,
    start: u32,
    size: u32,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_set_buffer_bytes";
    let buffer = buffer_type(CALL, buffer)?;
    let data = memory::read(&caller, CALL, ptr, len)?;
    splice_body(caller.data(), CALL, buffer, start, size, data);
    Ok(Status::Ok.code())
}

/// Replaces bytes `[start, start + size)` of the acting stream's body with `data`; logs and
/// skips when there is no such body.
pub(crate) fn splice_body(state: &VmState, call: &str, buffer: BufferType, start: u32, size: u32, data: Vec<u8>) {
    let Some(stream) = state.acting_stream() else {
        emit(state, LogLevel::Warn, &format!("{call} ignored: no stream body outside a stream context"));
        return;
    };
    let mut exchange = stream.exchange.borrow_mut();
    let body = match buffer {
        BufferType::HttpRequestBody => &mut exchange.request_body,
        BufferType::HttpResponseBody => &mut exchange.response_body,
        other => {
            drop(exchange);
            emit(state, LogLevel::Warn, &format!("{call} ignored: {other:?} cannot be modified"));
            return;
        }
    };
    // A splice of [start, start+size): covers Envoy's prepend (0,0), replace (0, >=len) and
    // append (>=len, _), and also allows the middle ranges Envoy refuses.
    let start = (start as usize).min(body.len());
    let end = start.saturating_add(size as usize).min(body.len());
    body.splice(start..end, data);
}

fn get_buffer_status(
    mut caller: Caller<'_, VmState>,
    buffer: u32,
    ret_len: u32,
    ret_flags: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_buffer_status";
    let buffer = buffer_type(CALL, buffer)?;
    let Some(len) = read_buffer(caller.data(), buffer, <[u8]>::len) else {
        return Ok(Status::NotFound.code());
    };
    memory::write_u32(&mut caller, CALL, ret_len, u32::try_from(len).unwrap_or(u32::MAX))?;
    memory::write_u32(&mut caller, CALL, ret_flags, 0)?;
    Ok(Status::Ok.code())
}
