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
use crate::grpc_callout::GrpcEvent;
use crate::header_map::{HeaderMap, is_valid_name, is_valid_value};
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
            let response = state.callouts.response.as_ref()?.as_ref().ok()?;
            Some(f(if map == MapType::HttpCallResponseHeaders { &response.headers } else { &response.trailers }))
        }
        MapType::GrpcReceiveInitialMetadata => match &state.grpc.event {
            Some(GrpcEvent::InitialMetadata(metadata)) => Some(f(metadata)),
            _ => None,
        },
        MapType::GrpcReceiveTrailingMetadata => match &state.grpc.event {
            Some(GrpcEvent::TrailingMetadata(metadata)) => Some(f(metadata)),
            _ => None,
        },
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

/// A guest's change to one header map.
pub(crate) enum Edit<'a> {
    /// Append a value.
    Add(&'a [u8], &'a [u8]),
    /// Replace every value of a name by one.
    Replace(&'a [u8], &'a [u8]),
    /// Remove every value of a name.
    Remove(&'a [u8]),
    /// Replace the whole map.
    Set(HeaderMap),
}

impl Edit<'_> {
    /// Applies the edit, keeping the map valid HTTP; returns how many entries were dropped for
    /// not being valid (see [`HeaderMap::retain_valid`]).
    ///
    /// Only what the edit writes is checked: the map was valid before it (every write keeps it
    /// so, and the data plane's maps come from its codecs), so scanning all of it on every header
    /// a guest sets would check the same entries over and over.
    fn apply(self, headers: &mut HeaderMap) -> usize {
        let valid = |name: &[u8], value: &[u8]| is_valid_name(name) && is_valid_value(value);
        match self {
            Self::Add(name, value) if valid(name, value) => headers.add(name, value),
            Self::Replace(name, value) if valid(name, value) => headers.replace(name, value),
            // An invalid entry would be dropped right away: an add adds nothing; a replace with
            // a valid name leaves no value of it (what replacing, then dropping, leaves). An
            // invalid name matches no entry of a valid map.
            Self::Add(..) => return 1,
            Self::Replace(name, _) => {
                if is_valid_name(name) {
                    headers.remove(name);
                }
                return 1;
            }
            Self::Remove(name) => headers.remove(name),
            Self::Set(map) => {
                *headers = map;
                return headers.retain_valid();
            }
        }
        0
    }
}

/// Applies `edit` to a stream map the acting context may change; logs and skips otherwise.
pub(crate) fn write_map(state: &VmState, call: &'static str, map: MapType, edit: Edit<'_>) {
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
    let dropped = edit.apply(headers);
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
    let len = read_map(caller.data(), map, HeaderMap::encoded_len).unwrap_or(0);
    // The map is kept in wire form: it is copied into the guest's buffer, not serialised first.
    memory::hand_over_with(&mut caller, CALL, len, ret_ptr, ret_len, |out, state| {
        if read_map(state, map, |headers| headers.encode_into(out)) != Some(true) {
            // The guest's allocator changed the map meanwhile: it gets an empty map (zero pairs)
            // in its own buffer.
            out.fill(0);
        }
    })?;
    Ok(Status::Ok.code())
}

fn set_header_map_pairs(caller: Caller<'_, VmState>, map: u32, ptr: u32, len: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_set_header_map_pairs";
    let map = map_type(CALL, map)?;
    let (data, state) = memory::view(&caller, CALL)?;
    let new_map =
        HeaderMap::decode(memory::slice(data, CALL, ptr, len)?).map_err(|e| GuestFault::trap(CALL, e.to_string()))?;
    write_map(state, CALL, map, Edit::Set(new_map));
    Ok(Status::Ok.code())
}

/// Names are short: one this long is copied to the heap instead.
const KEY_ON_STACK: usize = 64;

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
    // The key is copied out of guest memory (to the stack): the value is written into that
    // memory after the guest's allocator ran, and looked up again then.
    let (mut stack, heap);
    let key: &[u8] = {
        let (data, _) = memory::view(&caller, CALL)?;
        let key = memory::slice(data, CALL, key_ptr, key_len)?;
        if key.len() <= KEY_ON_STACK {
            stack = [0u8; KEY_ON_STACK];
            stack[..key.len()].copy_from_slice(key);
            &stack[..key.len()]
        } else {
            heap = key.to_vec();
            &heap
        }
    };
    let Some(Some(len)) = read_map(caller.data(), map, |headers| headers.get(key).map(<[u8]>::len)) else {
        return Ok(Status::NotFound.code());
    };
    memory::hand_over_with(&mut caller, CALL, len, ret_ptr, ret_len, |out, state| {
        let copied = read_map(state, map, |headers| match headers.get(key) {
            Some(value) if value.len() == out.len() => {
                out.copy_from_slice(value);
                true
            }
            _ => false,
        });
        if copied != Some(true) {
            // Changed by the guest's allocator meanwhile: zeros, in the guest's own buffer.
            out.fill(0);
        }
    })?;
    Ok(Status::Ok.code())
}

/// The shared body of `proxy_add_header_map_value` and `proxy_replace_header_map_value`.
fn write_value(
    caller: &Caller<'_, VmState>,
    call: &'static str,
    map: u32,
    [key_ptr, key_len, value_ptr, value_len]: [u32; 4],
    edit: impl for<'a> FnOnce(&'a [u8], &'a [u8]) -> Edit<'a>,
) -> wasmtime::Result<i32> {
    let map = map_type(call, map)?;
    // Read in place: nothing runs guest code while the edit is made.
    let (data, state) = memory::view(caller, call)?;
    let key = memory::slice(data, call, key_ptr, key_len)?;
    let value = memory::slice(data, call, value_ptr, value_len)?;
    write_map(state, call, map, edit(key, value));
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
    write_value(&caller, "proxy_add_header_map_value", map, [kp, kl, vp, vl], |k, v| Edit::Add(k, v))
}

fn replace_header_map_value(
    caller: Caller<'_, VmState>,
    map: u32,
    kp: u32,
    kl: u32,
    vp: u32,
    vl: u32,
) -> wasmtime::Result<i32> {
    write_value(&caller, "proxy_replace_header_map_value", map, [kp, kl, vp, vl], |k, v| Edit::Replace(k, v))
}

fn remove_header_map_value(caller: Caller<'_, VmState>, map: u32, key_ptr: u32, key_len: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_remove_header_map_value";
    let map = map_type(CALL, map)?;
    let (data, state) = memory::view(&caller, CALL)?;
    write_map(state, CALL, map, Edit::Remove(memory::slice(data, CALL, key_ptr, key_len)?));
    Ok(Status::Ok.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the edit did before it checked only what it wrote: apply, then drop every invalid
    /// entry of the map.
    fn by_full_scan(edit: &str, name: &[u8], value: &[u8], headers: &mut HeaderMap) -> usize {
        match edit {
            "add" => headers.add(name, value),
            _ => headers.replace(name, value),
        }
        headers.retain_valid()
    }

    #[test]
    fn checking_what_was_written_is_the_full_scan_of_a_valid_map() {
        let start = HeaderMap::from_pairs([(":path", "/"), ("x-a", "1"), ("x-b", "caf\u{e9}"), ("x-a", "2")]);
        let names: [&[u8]; 5] = [b"x-a", b"X-A", b"x-new", b"bad name", b"x-\xff"];
        let values: [&[u8]; 4] = [b"v", b"", b"a\r\nx-injected: 1", b"nul\0"];
        for edit in ["add", "replace"] {
            for name in names {
                for value in values {
                    let mut expected = start.clone();
                    let expected_dropped = by_full_scan(edit, name, value, &mut expected);
                    let mut actual = start.clone();
                    let edit_of = if edit == "add" { Edit::Add(name, value) } else { Edit::Replace(name, value) };
                    let dropped = edit_of.apply(&mut actual);
                    assert_eq!((actual, dropped), (expected, expected_dropped), "{edit} {name:?} {value:?}");
                }
            }
        }
        let mut map = start.clone();
        assert_eq!(Edit::Remove(b"X-A").apply(&mut map), 0);
        assert_eq!(map.len(), 2);
        let whole = HeaderMap::from_pairs([("ok", "1"), ("bad name", "2")]);
        assert_eq!(Edit::Set(whole).apply(&mut map), 1, "a whole map is checked whole");
        assert_eq!(map.len(), 1);
    }
}
