//! The smallest realistic filter: reads the request headers and one response header, the way a
//! tracing filter does on every request. The runtime benchmark measures its per-request cost.
//!
//! It reads the way a filter that minds its cost does: the whole request map with one host call,
//! kept as the host serialised it and searched in place (the SDK's `get_http_request_headers_bytes`
//! copies every name and value into pairs of their own, and unwraps each name as UTF-8), and
//! values as bytes (obs-text, bytes ≥ 0x80, is legal in HTTP/1.1 field values; the SDK's `String`
//! calls panic on it).

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::ops::Range;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> {
        Box::new(HeaderReader { headers: Vec::new(), traceparent: None })
    });
}}

#[allow(unsafe_code, reason = "the raw host call: the SDK's version copies every pair and unwraps names")]
mod raw {
    use proxy_wasm::types::MapType;

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        // The SDK declares the same import with its `Status` enum as the result; a plain u32
        // cannot hold a value that is not a variant, whatever the host answers.
        #[allow(clashing_extern_declarations, reason = "same import and ABI as the SDK's, result as u32")]
        fn proxy_get_header_map_pairs(map_type: MapType, ret_data: *mut *mut u8, ret_size: *mut usize) -> u32;
    }

    /// The serialised map, owned (empty when the host has none or refuses).
    pub fn serialized_map(map: MapType) -> Vec<u8> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: both out-pointers point at locals that live across the call; the host writes
        // a pointer and a length there and nothing else.
        let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
        if status != 0 || data.is_null() {
            return Vec::new();
        }
        // SAFETY: on OK the host handed over `size` bytes it allocated with this module's
        // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes, the SDK's allocator),
        // so the buffer is ours to own and free as a Vec of that length and capacity, exactly as
        // the SDK itself takes it.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// Where the first value of `name` is in a serialised map (u32 count, count × (u32 name length,
/// u32 value length), then each `name \0 value \0`, little-endian), bounds-checked: a map that
/// does not add up has no more values from where it stops adding up.
fn find(map: &[u8], name: &[u8]) -> Option<Range<usize>> {
    let word = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = map.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = word(0)?;
    let mut at = count.checked_mul(8)?.checked_add(4)?;
    for i in 0..count {
        let (name_len, value_len) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let name_end = at.checked_add(name_len)?;
        let value_at = name_end.checked_add(1)?;
        let value_end = value_at.checked_add(value_len)?;
        let (this, _value) = (map.get(at..name_end)?, map.get(value_at..value_end)?);
        if this == name {
            return Some(value_at..value_end);
        }
        at = value_end.checked_add(1)?;
    }
    None
}

struct HeaderReader {
    /// The request's headers as the host handed them over.
    headers: Vec<u8>,
    /// Where the `traceparent` value is in them.
    traceparent: Option<Range<usize>>,
}

impl Context for HeaderReader {}

impl HttpContext for HeaderReader {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.headers = raw::serialized_map(MapType::HttpRequestHeaders);
        self.traceparent = find(&self.headers, b"traceparent");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let status = self.get_http_response_header_bytes(":status");
        let traceparent = self.traceparent.clone().and_then(|range| self.headers.get(range));
        std::hint::black_box((status, traceparent));
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::find;

    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let len = |n: usize| u32::try_from(n).expect("short").to_le_bytes();
        let mut out = len(pairs.len()).to_vec();
        for (name, value) in pairs {
            out.extend(len(name.len()));
            out.extend(len(value.len()));
        }
        for (name, value) in pairs {
            out.extend([*name, b"\0", *value, b"\0"].concat());
        }
        out
    }

    #[test]
    fn values_are_found_in_place_and_bad_maps_find_nothing() {
        let map = serialize(&[(b"\xff", b"x"), (b"traceparent", b"00-ab"), (b"traceparent", b"second")]);
        let range = find(&map, b"traceparent").expect("found");
        assert_eq!(&map[range], b"00-ab");
        assert_eq!(find(&map, b"missing"), None);
        for cut in 0..map.len() {
            let _ = find(&map[..cut], b"traceparent");
        }
        assert_eq!(find(&[0xff, 0xff, 0xff, 0xff], b"x"), None);
        assert_eq!(find(&[], b"x"), None);
    }
}
