//! The proxy-wasm front door (what Envoy and the wasmtrace host load): the root and stream
//! contexts hand the proxy-wasm calls to [`crate::tracer`].
//!
//! Nothing a client, an upstream, a collector or another filter sends can make this code panic:
//! header values are read as bytes (the SDK's `String` calls unwrap a UTF-8 conversion), and the
//! request's header map is read with [`header_pairs`], because even the SDK's `_bytes` map call
//! unwraps the names.

use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use crate::spool::SpoolHost;
use crate::tracer::{ExportResponse, Exporter, RootHost, Severity, StreamHost, StreamTracer};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TraceRoot::default()) });
}}

/// A header map, names and values as bytes, straight from `proxy_get_header_map_pairs`.
///
/// The SDK's `get_map_bytes` unwraps `String::from_utf8` on every name. Names from a client
/// are tokens (the proxy's codec refuses anything else), but a filter earlier in the chain can
/// set any bytes as a name, so the names are decoded here without trusting them either.
#[allow(unsafe_code, reason = "the one raw host call: the SDK's version panics on a non-UTF-8 name")]
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

/// Reads the proxy-wasm serialised map (u32 count, count × (u32 name length, u32 value length),
/// then each `name \0 value \0`), bounds-checked: a map that does not add up yields the pairs
/// that do. Names become text with U+FFFD for what is not UTF-8 (they are compared with ASCII
/// names only, so such a name matches nothing).
fn decode_pairs(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let Some(count) = word(0) else { return Vec::new() };
    let Some(mut at) = count.checked_mul(8).and_then(|n| n.checked_add(4)).filter(|end| *end <= bytes.len()) else {
        return Vec::new();
    };
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
    for i in 0..count {
        let (Some(name_len), Some(value_len)) = (word(4 + i * 8), word(8 + i * 8)) else { break };
        let mut field = |len: usize| -> Option<&[u8]> {
            let end = at.checked_add(len)?;
            let field = bytes.get(at..end)?;
            at = end.checked_add(1)?; // the NUL after it
            Some(field)
        };
        let (Some(name), Some(value)) = (field(name_len), field(value_len)) else { break };
        pairs.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    pairs
}

/// The host as proxy-wasm calls reach it (the acting context decides which stream).
struct ProxyWasmHost;

impl SpoolHost for ProxyWasmHost {
    fn register_queue(&self, name: &str) -> Option<u32> {
        hostcalls::register_shared_queue(name).ok()
    }

    fn enqueue(&self, queue: u32, item: &[u8]) -> bool {
        hostcalls::enqueue_shared_queue(queue, Some(item)).is_ok()
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        hostcalls::dequeue_shared_queue(queue).ok().flatten()
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            _ => None,
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

impl RootHost for ProxyWasmHost {
    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn log(&self, severity: Severity, message: &str) {
        let level = match severity {
            Severity::Warn => LogLevel::Warn,
            Severity::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn increment(&self, counter: u32, delta: i64) {
        let _ = hostcalls::increment_metric(counter, delta);
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), Some(body), vec![], timeout)
            .map_err(|status| format!("{status:?}"))
    }

    fn set_tick_period(&self, period: Duration) {
        let _ = hostcalls::set_tick_period(period);
    }
}

impl StreamHost for ProxyWasmHost {
    fn now(&self) -> SystemTime {
        RootHost::now(self)
    }

    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        decode_pairs(&raw::serialized_map(MapType::HttpRequestHeaders))
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn increment(&self, counter: u32, delta: i64) {
        RootHost::increment(self, counter, delta);
    }
}

#[derive(Default)]
struct TraceRoot {
    exporter: Exporter,
}

impl Context for TraceRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        // The collector's answer is as untrusted as a client's: bytes, parsed only if they are
        // what they should be.
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let status = (num_headers > 0).then(|| header(":status").and_then(|s| s.parse().ok()).unwrap_or(0));
        let retry_after = header("retry-after");
        let response = ExportResponse { status, retry_after: retry_after.as_deref() };
        if self.exporter.on_response(&ProxyWasmHost, token_id, &response) {
            let _ = hostcalls::done();
        }
    }

    fn on_done(&mut self) -> bool {
        // Drain the spool before the VM goes (shutdown or hot swap).
        self.exporter.on_shutdown(&ProxyWasmHost)
    }
}

impl RootContext for TraceRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        self.exporter.configure(&ProxyWasmHost, &bytes).is_ok()
    }

    fn on_tick(&mut self) {
        self.exporter.on_tick(&ProxyWasmHost);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TraceStream { tracer: self.exporter.stream()? }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TraceStream {
    tracer: StreamTracer,
}

impl Context for TraceStream {}

impl HttpContext for TraceStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.tracer.on_request_headers(&ProxyWasmHost);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.tracer.on_response_headers(&ProxyWasmHost);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.tracer.on_stream_done(&ProxyWasmHost);
    }
}

#[cfg(test)]
mod tests {
    use super::decode_pairs;

    /// The proxy-wasm serialisation of `pairs` (the layout of the SDK's `SERIALIZED_MAP`).
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let len = |b: &[u8]| u32::try_from(b.len()).expect("short").to_le_bytes();
        let mut out = len(&vec![0; pairs.len()]).to_vec();
        for (name, value) in pairs {
            out.extend(len(name));
            out.extend(len(value));
        }
        for (name, value) in pairs {
            out.extend([*name, b"\0", *value, b"\0"].concat());
        }
        out
    }

    #[test]
    fn the_sdk_example_map_decodes() {
        let pairs: [(&[u8], &[u8]); 4] = [
            (b":method", b"GET"),
            (b":path", b"/bytes/1"),
            (b":authority", b"httpbin.org"),
            (b"Powered-By", b"proxy-wasm"),
        ];
        let map = serialize(&pairs);
        assert_eq!(&map[..12], &[4, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0], "the SDK vector's first bytes");
        let decoded = decode_pairs(&map);
        assert_eq!(decoded.len(), 4);
        assert_eq!(decoded[1], (":path".to_owned(), b"/bytes/1".to_vec()));
        assert_eq!(decoded[3], ("Powered-By".to_owned(), b"proxy-wasm".to_vec()));
    }

    #[test]
    fn bytes_that_are_not_utf8_or_do_not_add_up_never_panic() {
        let pairs: [(&[u8], &[u8]); 2] = [(b"\xff\xfe", b"\x80\xff"), (b"user-agent", b"caf\xe9")];
        let map = serialize(&pairs);
        assert_eq!(
            decode_pairs(&map),
            vec![("\u{fffd}\u{fffd}".to_owned(), vec![0x80, 0xff]), ("user-agent".to_owned(), b"caf\xe9".to_vec())]
        );
        // The last value ends one byte before the map (its NUL).
        for cut in 0..map.len() - 1 {
            assert!(decode_pairs(&map[..cut]).len() < 2, "a truncated map yields only whole pairs");
        }
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0xff]).is_empty(), "a count the bytes cannot hold");
        assert!(decode_pairs(&[]).is_empty());
    }
}
