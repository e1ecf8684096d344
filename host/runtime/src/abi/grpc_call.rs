//! gRPC callouts: `proxy_grpc_call`, `proxy_grpc_stream`, `proxy_grpc_send`,
//! `proxy_grpc_cancel` and `proxy_grpc_close`, answered with the statuses the Rust SDK accepts from
//! each (anything else panics the guest).
//!
//! Tokens come from the same counter as HTTP callouts, so a token names one call of any kind:
//! the SDK looks a token up among its unary calls before its streams.

use std::rc::{Rc, Weak};
use std::time::Duration;

use wasmtime::Caller;

use super::Registrar;
use super::log::emit;
use super::memory;
use super::types::{LogLevel, Status};
use crate::error::GuestFault;
use crate::grpc_callout::{GrpcCallKind, GrpcCallRequest, GrpcEvents, grpc_target};
use crate::header_map::HeaderMap;
use crate::state::{GrpcCall, VmState};

/// Most gRPC calls and streams one VM keeps in flight; more are refused (`INTERNAL_FAILURE`), so
/// a guest that opens streams in a loop cannot hold unbounded connections and buffers.
pub(crate) const MAX_GRPC_CALLS: usize = 1024;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_grpc_call", grpc_call)?;
    r.env("proxy_grpc_stream", grpc_stream)?;
    r.env("proxy_grpc_send", grpc_send)?;
    r.env("proxy_grpc_cancel", grpc_cancel)?;
    r.env("proxy_grpc_close", grpc_close)?;
    Ok(())
}

/// The arguments both calls share, read from guest memory.
struct CallTarget {
    service: Vec<u8>,
    service_name: String,
    method: String,
    metadata: HeaderMap,
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn read_target(
    caller: &Caller<'_, VmState>,
    call: &'static str,
    service: (u32, u32),
    service_name: (u32, u32),
    method: (u32, u32),
    metadata: (u32, u32),
) -> wasmtime::Result<CallTarget> {
    let service = memory::read(caller, call, service.0, service.1)?;
    let service_name = memory::read_string(caller, call, service_name.0, service_name.1)?;
    let method = memory::read_string(caller, call, method.0, method.1)?;
    let metadata = memory::read(caller, call, metadata.0, metadata.1)?;
    let metadata =
        HeaderMap::decode(&metadata).map_err(|e| GuestFault::trap(call, format!("initial metadata: {e}")))?;
    Ok(CallTarget { service, service_name, method, metadata })
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn grpc_call(
    mut caller: Caller<'_, VmState>,
    service_ptr: u32,
    service_len: u32,
    service_name_ptr: u32,
    service_name_len: u32,
    method_ptr: u32,
    method_len: u32,
    metadata_ptr: u32,
    metadata_len: u32,
    message_ptr: u32,
    message_len: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_grpc_call";
    let target = read_target(
        &caller,
        CALL,
        (service_ptr, service_len),
        (service_name_ptr, service_name_len),
        (method_ptr, method_len),
        (metadata_ptr, metadata_len),
    )?;
    let message = memory::read(&caller, CALL, message_ptr, message_len)?;
    let timeout = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
    start(&mut caller, CALL, target, GrpcCallKind::Unary { message, timeout }, ret_token)
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn grpc_stream(
    mut caller: Caller<'_, VmState>,
    service_ptr: u32,
    service_len: u32,
    service_name_ptr: u32,
    service_name_len: u32,
    method_ptr: u32,
    method_len: u32,
    metadata_ptr: u32,
    metadata_len: u32,
    ret_token: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_grpc_stream";
    let target = read_target(
        &caller,
        CALL,
        (service_ptr, service_len),
        (service_name_ptr, service_name_len),
        (method_ptr, method_len),
        (metadata_ptr, metadata_len),
    )?;
    start(&mut caller, CALL, target, GrpcCallKind::Stream, ret_token)
}

/// A name that can stand in a gRPC path (`/{service}/{method}`).
fn is_path_segment(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn start(
    caller: &mut Caller<'_, VmState>,
    call: &'static str,
    target: CallTarget,
    kind: GrpcCallKind,
    ret_token: u32,
) -> wasmtime::Result<i32> {
    // A bad token pointer traps before anything is sent.
    memory::write_u32(caller, call, ret_token, 0)?;
    let refuse = |caller: &Caller<'_, VmState>, status: Status, why: String| {
        emit(caller.data(), LogLevel::Warn, &format!("{call} refused: {why}"));
        Ok(status.code())
    };
    // Envoy answers PARSE_FAILURE for a service it cannot resolve to a cluster; it is also the
    // one refusal besides INTERNAL_FAILURE the SDK hands back to the filter.
    let Some((cluster, authority)) = grpc_target(&target.service) else {
        return refuse(caller, Status::ParseFailure, "the service is neither a GrpcService nor a cluster name".into());
    };
    for (what, name) in [("service", &target.service_name), ("method", &target.method)] {
        if !is_path_segment(name) {
            return refuse(caller, Status::ParseFailure, format!("the {what} name {name:?} cannot form a gRPC path"));
        }
    }
    let state = caller.data_mut();
    if !state.dispatcher.has_cluster(&cluster) {
        return refuse(caller, Status::ParseFailure, format!("no cluster named `{cluster}`"));
    }
    if state.grpc.open_count() >= MAX_GRPC_CALLS {
        return refuse(caller, Status::InternalFailure, format!("{MAX_GRPC_CALLS} gRPC calls are already in flight"));
    }
    // One counter for HTTP and gRPC callouts; a token the guest still holds is skipped (after
    // the counter wraps), as Envoy's token allocation does.
    let grpc = &state.grpc;
    let token = state.callouts.next_token(|token| grpc.holds(token));
    let stream = matches!(kind, GrpcCallKind::Stream);
    let request = GrpcCallRequest {
        token,
        authority: authority.unwrap_or_else(|| cluster.clone()),
        cluster,
        service: target.service_name,
        method: target.method,
        initial_metadata: target.metadata,
        kind,
        budget: state.grpc.budget.clone(),
    };
    let owner = state.acting_context();
    let events = GrpcEvents { vm: Weak::clone(&state.self_ref), token };
    let dispatcher = Rc::clone(&state.dispatcher);
    match dispatcher.dispatch_grpc(request, events) {
        Ok(control) => {
            caller.data_mut().grpc.calls.insert(token, GrpcCall::new(control, stream, owner));
            memory::write_u32(caller, call, ret_token, token)?;
            Ok(Status::Ok.code())
        }
        Err(refusal) => refuse(caller, Status::InternalFailure, format!("{refusal:?}")),
    }
}

/// Sends on a stream. Envoy answers `OK` for a stream that is closed either way (the message
/// goes nowhere), and the SDK unwraps anything else; a unary call's token is `NOT_FOUND`
/// (Envoy looks only among streams).
fn grpc_send(
    mut caller: Caller<'_, VmState>,
    token: u32,
    ptr: u32,
    len: u32,
    end_stream: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_grpc_send";
    // The call is looked up before the message is read: a guest looping on a dead token costs
    // no copies.
    let sendable = match caller.data().grpc.calls.get(&token) {
        Some(call) if call.stream => call.is_open() && !call.local_closed,
        _ => return Ok(Status::NotFound.code()),
    };
    let (memory_data, state) = memory::view(&caller, CALL)?;
    let message = memory::slice(memory_data, CALL, ptr, len)?;
    if !sendable {
        return Ok(Status::Ok.code());
    }
    let end_stream = end_stream != 0;
    let outcome = match state.grpc.calls.get(&token).and_then(|call| call.control.as_ref()) {
        Some(control) => control.send(message, end_stream),
        None => Ok(()),
    };
    if let Err(refused) = outcome {
        emit(caller.data(), LogLevel::Warn, &format!("{CALL}: {refused}"));
    }
    if let Some(call) = caller.data_mut().grpc.calls.get_mut(&token) {
        call.local_closed |= end_stream;
    }
    Ok(Status::Ok.code())
}

/// Abandons a call or stream: nothing more is delivered for it.
fn grpc_cancel(mut caller: Caller<'_, VmState>, token: u32) -> i32 {
    match caller.data_mut().grpc.calls.remove(&token) {
        Some(call) => {
            if let Some(control) = call.control {
                control.cancel();
            }
            Status::Ok.code()
        }
        None => Status::NotFound.code(),
    }
}

/// Half-closes a stream (the server may still answer); a unary call is cancelled, as in Envoy.
/// A stream the server closed already is let go.
fn grpc_close(mut caller: Caller<'_, VmState>, token: u32) -> i32 {
    let calls = &mut caller.data_mut().grpc.calls;
    let Some(call) = calls.get_mut(&token) else {
        return Status::NotFound.code();
    };
    match (&call.control, call.stream) {
        (Some(control), true) => {
            control.close();
            call.local_closed = true;
        }
        (control, _) => {
            if let Some(control) = control {
                control.cancel();
            }
            calls.remove(&token);
        }
    }
    Status::Ok.code()
}
