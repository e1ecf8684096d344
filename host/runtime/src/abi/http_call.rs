//! HTTP callouts: `proxy_http_call`, and `proxy_get_status` (which also reports a gRPC call's
//! close status).

use std::rc::{Rc, Weak};
use std::time::Duration;

use wasmtime::Caller;

use super::Registrar;
use super::log::emit;
use super::memory;
use super::types::{LogLevel, Status};
use crate::callout::{CalloutCompletion, CalloutRequest};
use crate::error::GuestFault;
use crate::grpc_callout::GrpcEvent;
use crate::header_map::HeaderMap;
use crate::state::VmState;

/// `proxy_get_status` code for a failed callout (Envoy's `WasmResult::BrokenConnection`).
pub(crate) const BROKEN_CONNECTION: u32 = 11;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_http_call", http_call)?;
    r.env("proxy_get_status", get_status)?;
    Ok(())
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

    let timeout = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
    // A bad token pointer traps before anything is sent.
    memory::write_u32(&mut caller, CALL, ret_token, 0)?;
    match start_callout(caller.data_mut(), cluster, headers, body, trailers, timeout) {
        Ok(token) => {
            memory::write_u32(&mut caller, CALL, ret_token, token)?;
            Ok(Status::Ok.code())
        }
        Err(refusal) => {
            emit(caller.data(), LogLevel::Warn, &format!("{CALL} refused: {refusal}"));
            Ok(Status::BadArgument.code())
        }
    }
}

/// Why a callout was not started.
#[derive(Debug)]
pub(crate) enum CalloutRefusal {
    /// A required pseudo-header is missing.
    MissingHeader(&'static str),
    /// No cluster of that name.
    UnknownCluster(String),
    /// The data plane refused it.
    Dispatch(String),
}

impl std::fmt::Display for CalloutRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingHeader(name) => write!(f, "the request has no `{name}` header"),
            Self::UnknownCluster(cluster) => write!(f, "no cluster named `{cluster}`"),
            Self::Dispatch(why) => f.write_str(why),
        }
    }
}

/// Starts a callout for the VM of `state` (both front doors: `proxy_http_call` and the
/// component world's `http-call`); its outcome comes back through [`CalloutCompletion`].
pub(crate) fn start_callout(
    state: &mut VmState,
    cluster: String,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: HeaderMap,
    timeout: Option<Duration>,
) -> Result<u32, CalloutRefusal> {
    for required in [":method", ":path", ":authority"] {
        if headers.get(required.as_bytes()).is_none() {
            return Err(CalloutRefusal::MissingHeader(required));
        }
    }
    if !state.dispatcher.has_cluster(&cluster) {
        return Err(CalloutRefusal::UnknownCluster(cluster));
    }
    // One counter for HTTP and gRPC callouts: a token a gRPC call still holds is skipped.
    let grpc = &state.grpc;
    let token = state.callouts.next_token(|token| grpc.holds(token));
    let request = CalloutRequest { token, cluster, headers, body, trailers, timeout };
    let completion = CalloutCompletion { vm: Weak::clone(&state.self_ref), token };
    let dispatcher = Rc::clone(&state.dispatcher);
    dispatcher.dispatch(request, completion).map_err(|e| CalloutRefusal::Dispatch(format!("{e:?}")))?;
    Ok(token)
}

fn get_status(
    mut caller: Caller<'_, VmState>,
    ret_code: u32,
    ret_msg_ptr: u32,
    ret_msg_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_status";
    let state = caller.data();
    let (code, message) = match (&state.grpc.event, &state.callouts.response) {
        (Some(GrpcEvent::Close { status, message }), _) => (*status, message.clone().into_bytes()),
        (_, Some(Err(failure))) => (BROKEN_CONNECTION, failure.reason.clone().into_bytes()),
        _ => (0, Vec::new()),
    };
    memory::write_u32(&mut caller, CALL, ret_code, code)?;
    memory::hand_over(&mut caller, CALL, &message, ret_msg_ptr, ret_msg_len)?;
    Ok(Status::Ok.code())
}
