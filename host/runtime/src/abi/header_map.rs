//! Header maps: `proxy_get_header_map_*`, `proxy_set_header_map_pairs`,
//! `proxy_{add,replace,remove}_header_map_value`.
//!
//! Stream maps live in the stream's shared [`crate::HttpExchange`]; the callout maps exist only
//! while `proxy_on_http_call_response` runs. A change to a map that no longer has an effect (it was
//! already sent, or does not exist in this phase) is ignored with a warning: Envoy answers
//! `BAD_ARGUMENT` there, which the Rust SDK turns into a panic of the filter.

use wasmtime::Caller;

use super::Registrar;
use super::log::emit;
use super::memory;
use super::types::{LogLevel, MapType, Status};
use crate::error::GuestFault;
use crate::header_map::HeaderMap;
use crate::state::VmState;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_get_header_map_size", get_header_map_size)?;
    r.env("proxy_get_header_map_pairs", get_header_map_pairs)?;
    r.env("proxy_set_header_map_pairs", set_header_map_pairs)?;
    r.env("proxy_get_header_map_value", get_header_map_value)?;
    r.env("proxy_add_header_map_value", add_header_map_value)?;
    r.env("proxy_replace_header_map_value", replace_header_map_value)?;
    r.env("proxy_remove_header_map_value", remove_header_map_value)?;
    Ok(())
}

fn map_type(call: &'static str, raw: u32) -> wasmtime::Result<MapType> {
    MapType::from_raw(raw).ok_or_else(|| GuestFault::trap(call, format!("unknown map type {raw}")))
}

/// Runs `f` on the map, if it exists for the acting context in this phase.
pub(crate) fn read_map<R>(state: &VmState, map: MapType, f: impl FnOnce(&HeaderMap) -> R) -> Option<R> {
    match map {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => {
            let response = state.callout_response.as_ref()?.as_ref().ok()?;
            Some(f(if map == MapType::HttpCallResponseHeaders { &response.headers } else { &response.trailers }))
        }
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => None,
        _ => {
            let exchange = state.acting_stream()?.exchange.borrow();
            let map = match map {
                MapType::HttpRequestHeaders => exchange.request_headers.as_ref(),
                MapType::HttpRequestTrailers => exchange.request_trailers.as_ref(),
                MapType::HttpResponseHeaders => exchange.response_headers.as_ref(),
                _ => exchange.response_trailers.as_ref(),
            }?;
            Some(f(map))
        }
    }
}

/// Runs `f` on a stream map the acting context may change; logs and skips otherwise.
pub(crate) fn write_map(state: &VmState, call: &'static str, map: MapType, f: impl FnOnce(&mut HeaderMap)) {
    let refused = |why: &str| emit(state, LogLevel::Warn, &format!("{call} ignored: {why}"));
    let Some(stream) = state.acting_stream() else {
        return refused(&format!("{map:?} is not available outside a stream context"));
    };
    let mut exchange = stream.exchange.borrow_mut();
    let exchange = &mut *exchange;
    let sent = match map {
        MapType::HttpRequestHeaders | MapType::HttpRequestTrailers => exchange.info.request_headers_sent,
        MapType::HttpResponseHeaders | MapType::HttpResponseTrailers => exchange.info.response_headers_sent,
        _ => return refused(&format!("{map:?} cannot be modified")),
    };
    let slot = match map {
        MapType::HttpRequestHeaders => &mut exchange.request_headers,
        MapType::HttpRequestTrailers => &mut exchange.request_trailers,
        MapType::HttpResponseHeaders => &mut exchange.response_headers,
        _ => &mut exchange.response_trailers,
    };
    let is_trailers = matches!(map, MapType::HttpRequestTrailers | MapType::HttpResponseTrailers);
    if sent && !is_trailers {
        return refused(&format!("{map:?} were already sent"));
    }
    let headers = match slot {
        Some(headers) => headers,
        // Trailers can be created by a filter (Envoy's addDecodedTrailers at end of stream).
        None if is_trailers => slot.get_or_insert_with(HeaderMap::new),
        None => return refused(&format!("{map:?} have not arrived yet")),
    };
    f(headers);
    let dropped = headers.retain_valid();
    if dropped > 0 {
        refused(&format!("{dropped} header(s) that are not valid HTTP (name not a token, or CR/LF/NUL in the value)"));
    }
}

fn get_header_map_size(mut caller: Caller<'_, VmState>, map: u32, ret_size: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_header_map_size";
    let map = map_type(CALL, map)?;
    let Some(size) = read_map(caller.data(), map, HeaderMap::byte_size) else {
        return Ok(Status::NotFound.code());
    };
    memory::write_u32(&mut caller, CALL, ret_size, u32::try_from(size).unwrap_or(u32::MAX))?;
    Ok(Status::Ok.code())
}

fn get_header_map_pairs(
    mut caller: Caller<'_, VmState>,
    map: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_header_map_pairs";
    let map = map_type(CALL, map)?;
    // A map that does not exist is handed over empty: the SDK accepts only OK here.
    let bytes = read_map(caller.data(), map, HeaderMap::encode).unwrap_or_default();
    memory::hand_over(&mut caller, CALL, &bytes, ret_ptr, ret_len)?;
    Ok(Status::Ok.code())
}

fn set_header_map_pairs(caller: Caller<'_, VmState>, map: u32, ptr: u32, len: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_set_header_map_pairs";
    let map = map_type(CALL, map)?;
    let bytes = memory::read(&caller, CALL, ptr, len)?;
    let new_map = HeaderMap::decode(&bytes).map_err(|e| GuestFault::trap(CALL, e.to_string()))?;
    write_map(caller.data(), CALL, map, |headers| *headers = new_map);
    Ok(Status::Ok.code())
}

fn get_header_map_value(
    mut caller: Caller<'_, VmState>,
    map: u32,
    key_ptr: u32,
    key_len: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_header_map_value";
    let map = map_type(CALL, map)?;
    let key = memory::read(&caller, CALL, key_ptr, key_len)?;
    let Some(Some(value)) = read_map(caller.data(), map, |headers| headers.get(&key).map(<[u8]>::to_vec)) else {
        return Ok(Status::NotFound.code());
    };
    memory::hand_over(&mut caller, CALL, &value, ret_ptr, ret_len)?;
    Ok(Status::Ok.code())
}

/// The shared body of `proxy_add_header_map_value` and `proxy_replace_header_map_value`.
fn write_value(
    caller: &Caller<'_, VmState>,
    call: &'static str,
    map: u32,
    [key_ptr, key_len, value_ptr, value_len]: [u32; 4],
    edit: impl FnOnce(&mut HeaderMap, &[u8], &[u8]),
) -> wasmtime::Result<i32> {
    let map = map_type(call, map)?;
    let key = memory::read(caller, call, key_ptr, key_len)?;
    let value = memory::read(caller, call, value_ptr, value_len)?;
    write_map(caller.data(), call, map, |headers| edit(headers, &key, &value));
    Ok(Status::Ok.code())
}

fn add_header_map_value(
    caller: Caller<'_, VmState>,
    map: u32,
    kp: u32,
    kl: u32,
    vp: u32,
    vl: u32,
) -> wasmtime::Result<i32> {
    write_value(&caller, "proxy_add_header_map_value", map, [kp, kl, vp, vl], HeaderMap::add)
}

fn replace_header_map_value(
    caller: Caller<'_, VmState>,
    map: u32,
    kp: u32,
    kl: u32,
    vp: u32,
    vl: u32,
) -> wasmtime::Result<i32> {
    write_value(&caller, "proxy_replace_header_map_value", map, [kp, kl, vp, vl], HeaderMap::replace)
}

fn remove_header_map_value(caller: Caller<'_, VmState>, map: u32, key_ptr: u32, key_len: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_remove_header_map_value";
    let map = map_type(CALL, map)?;
    let key = memory::read(&caller, CALL, key_ptr, key_len)?;
    write_map(caller.data(), CALL, map, |headers| headers.remove(&key));
    Ok(Status::Ok.code())
}
