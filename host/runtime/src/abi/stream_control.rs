//! Stream control and context plumbing: `proxy_continue_stream`, `proxy_close_stream`,
//! `proxy_send_local_response`, `proxy_set_effective_context`, `proxy_done`,
//! `proxy_call_foreign_function`.

use wasmtime::Caller;

use super::Registrar;
use super::log::emit;
use super::memory;
use super::types::{LogLevel, Status, StreamType};
use crate::error::GuestFault;
use crate::header_map::HeaderMap;
use crate::state::VmState;
use crate::stream::{LocalResponse, StreamSignals};

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_continue_stream", continue_stream)?;
    r.env("proxy_close_stream", close_stream)?;
    r.env("proxy_send_local_response", send_local_response)?;
    r.env("proxy_set_effective_context", set_effective_context)?;
    r.env("proxy_done", done)?;
    r.env("proxy_call_foreign_function", call_foreign_function)?;
    Ok(())
}

/// Applies `f` to the acting stream's signals and wakes whoever waits on them; warns when the
/// acting context is not a stream.
pub(crate) fn signal(state: &VmState, call: &str, f: impl FnOnce(&mut StreamSignals)) {
    match state.acting_stream() {
        Some(stream) => {
            let mut signals = stream.signals.borrow_mut();
            f(&mut signals);
            signals.wake();
        }
        None => emit(state, LogLevel::Warn, &format!("{call} ignored: the acting context is not an HTTP stream")),
    }
}

fn stream_type(call: &'static str, raw: u32) -> wasmtime::Result<StreamType> {
    StreamType::from_raw(raw).ok_or_else(|| GuestFault::trap(call, format!("unknown stream type {raw}")))
}

fn continue_stream(caller: Caller<'_, VmState>, stream: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_continue_stream";
    match stream_type(CALL, stream)? {
        StreamType::HttpRequest => signal(caller.data(), CALL, |s| s.resume_request = true),
        StreamType::HttpResponse => signal(caller.data(), CALL, |s| s.resume_response = true),
        // Envoy answers UNIMPLEMENTED, which the Rust SDK cannot accept: warn instead.
        other => emit(caller.data(), LogLevel::Warn, &format!("{CALL} ignored: {other:?} is a TCP stream")),
    }
    Ok(Status::Ok.code())
}

fn close_stream(caller: Caller<'_, VmState>, stream: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_close_stream";
    match stream_type(CALL, stream)? {
        StreamType::HttpRequest | StreamType::HttpResponse => signal(caller.data(), CALL, |s| s.close = true),
        other => emit(caller.data(), LogLevel::Warn, &format!("{CALL} ignored: {other:?} is a TCP stream")),
    }
    Ok(Status::Ok.code())
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn send_local_response(
    caller: Caller<'_, VmState>,
    status_code: u32,
    details_ptr: u32,
    details_len: u32,
    body_ptr: u32,
    body_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    grpc_status: i32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_send_local_response";
    let details = memory::read(&caller, CALL, details_ptr, details_len)?;
    let body = memory::read(&caller, CALL, body_ptr, body_len)?;
    let headers = memory::read(&caller, CALL, headers_ptr, headers_len)?;
    let mut headers = HeaderMap::decode(&headers).map_err(|e| GuestFault::trap(CALL, format!("headers: {e}")))?;
    // These become the response map the next filters read and edit: only valid HTTP goes in
    // (header edits check just what they write, trusting the map they edit).
    headers.retain_valid();
    let status = u16::try_from(status_code)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| GuestFault::trap(CALL, format!("{status_code} is not an HTTP status code")))?;
    let response = LocalResponse {
        status,
        body,
        headers,
        details: String::from_utf8_lossy(&details).into_owned(),
        // The SDK passes -1 for "not gRPC"; Envoy ignores anything outside 0..=16.
        grpc_status: u8::try_from(grpc_status).ok().filter(|s| *s <= 16),
    };
    signal(caller.data(), CALL, |s| s.local_response = Some(response));
    Ok(Status::Ok.code())
}

fn set_effective_context(mut caller: Caller<'_, VmState>, context_id: u32) -> wasmtime::Result<i32> {
    let state = caller.data_mut();
    if state.contexts.exists(context_id) {
        state.contexts.effective = Some(context_id);
        Ok(Status::Ok.code())
    } else {
        Ok(Status::BadArgument.code())
    }
}

fn done(mut caller: Caller<'_, VmState>) -> wasmtime::Result<i32> {
    caller.data_mut().done_pending = false;
    Ok(Status::Ok.code())
}

fn call_foreign_function(
    caller: Caller<'_, VmState>,
    name_ptr: u32,
    name_len: u32,
    _args_ptr: u32,
    _args_len: u32,
    _ret_ptr: u32,
    _ret_len: u32,
) -> wasmtime::Result<i32> {
    let name = memory::read(&caller, "proxy_call_foreign_function", name_ptr, name_len)?;
    emit(
        caller.data(),
        LogLevel::Debug,
        &format!("proxy_call_foreign_function: no foreign function `{}`", String::from_utf8_lossy(&name)),
    );
    Ok(Status::NotFound.code())
}
