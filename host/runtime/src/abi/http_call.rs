//! Callouts: `proxy_http_call`, `proxy_get_status`, and the gRPC calls (not supported: refused
//! with the statuses the Rust SDK accepts, so a filter can handle it).

use std::time::Duration;

use wasmtime::Caller;

use super::Registrar;
use super::log::emit;
use super::memory;
use super::types::{LogLevel, Status};
use crate::callout::{CalloutCompletion, CalloutRequest};
use crate::error::GuestFault;
use crate::header_map::HeaderMap;
use crate::state::VmState;

/// `proxy_get_status` code for a failed callout (Envoy's `WasmResult::BrokenConnection`).
pub(crate) const BROKEN_CONNECTION: u32 = 11;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_http_call", http_call)?;
    r.env("proxy_get_status", get_status)?;
    r.env(
        "proxy_grpc_call",
        |caller: Caller<'_, VmState>,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32| { grpc_unsupported(&caller, "proxy_grpc_call") },
    )?;
    r.env(
        "proxy_grpc_stream",
        |caller: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| {
            grpc_unsupported(&caller, "proxy_grpc_stream")
        },
    )?;
    // No gRPC call can exist, so every token is unknown.
    r.env("proxy_grpc_send", |_: u32, _: u32, _: u32, _: u32| Status::NotFound.code())?;
    r.env("proxy_grpc_cancel", |_: u32| Status::NotFound.code())?;
    r.env("proxy_grpc_close", |_: u32| Status::NotFound.code())?;
    Ok(())
}

fn grpc_unsupported(caller: &Caller<'_, VmState>, call: &str) -> wasmtime::Result<i32> {
    emit(
        caller.data(),
        LogLevel::Warn,
        &format!("{call} refused: gRPC callouts are not supported by the wasmtrace host; use proxy_http_call"),
    );
    Ok(Status::InternalFailure.code())
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn http_call(
    mut caller: Caller<'_, VmState>,
    upstream_ptr: u32,
    upstream_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    body_ptr: u32,
    body_len: u32,
    trailers_ptr: u32,
    trailers_len: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_http_call";
    let cluster = memory::read_string(&caller, CALL, upstream_ptr, upstream_len)?;
    let headers = memory::read(&caller, CALL, headers_ptr, headers_len)?;
    let headers = HeaderMap::decode(&headers).map_err(|e| GuestFault::trap(CALL, format!("headers: {e}")))?;
    let body = memory::read(&caller, CALL, body_ptr, body_len)?;
    let trailers = memory::read(&caller, CALL, trailers_ptr, trailers_len)?;
    let trailers = HeaderMap::decode(&trailers).map_err(|e| GuestFault::trap(CALL, format!("trailers: {e}")))?;

    let refuse = |caller: &Caller<'_, VmState>, why: String| {
        emit(caller.data(), LogLevel::Warn, &format!("{CALL} refused: {why}"));
        Ok(Status::BadArgument.code())
    };
    for required in [":method", ":path", ":authority"] {
        if headers.get(required.as_bytes()).is_none() {
            return refuse(&caller, format!("the request has no `{required}` header"));
        }
    }
    if !caller.data().dispatcher.has_cluster(&cluster) {
        return refuse(&caller, format!("no cluster named `{cluster}`"));
    }
    let token = {
        let state = caller.data_mut();
        state.callout_tokens = state.callout_tokens.wrapping_add(1).max(1);
        state.callout_tokens
    };
    memory::write_u32(&mut caller, CALL, ret_token, token)?;
    let request = CalloutRequest {
        token,
        cluster,
        headers,
        body,
        trailers,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms))),
    };
    let completion = CalloutCompletion { vm: caller.data().self_ref.clone(), token };
    let dispatcher = caller.data().dispatcher.clone();
    if let Err(e) = dispatcher.dispatch(request, completion) {
        return refuse(&caller, format!("{e:?}"));
    }
    Ok(Status::Ok.code())
}

fn get_status(
    mut caller: Caller<'_, VmState>,
    ret_code: u32,
    ret_msg_ptr: u32,
    ret_msg_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_status";
    let (code, message) = match &caller.data().callout_response {
        Some(Err(failure)) => (BROKEN_CONNECTION, failure.reason.clone().into_bytes()),
        _ => (0, Vec::new()),
    };
    memory::write_u32(&mut caller, CALL, ret_code, code)?;
    memory::hand_over(&mut caller, CALL, &message, ret_msg_ptr, ret_msg_len)?;
    Ok(Status::Ok.code())
}
