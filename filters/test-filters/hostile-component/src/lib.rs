//! A `wasmtrace:filter` component that misbehaves on demand (request header `x-hostile: trap |
//! loop | grow`), so the tests can show components get the same limits as proxy-wasm modules:
//! a trap, an endless loop or a memory hoard fails only its own stream. Well-behaved requests
//! get `x-hostile-ok: <stream id>`.

use wasmtrace_filter_guest::{Action, Filter, HeaderPart, HttpStream};

struct Hostile;

impl Filter for Hostile {
    fn on_request_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        match stream.header(HeaderPart::RequestHeaders, "x-hostile").as_deref() {
            Some(b"trap") => panic!("asked to trap"),
            Some(b"loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some(b"grow") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => {
                stream.set_header(HeaderPart::RequestHeaders, "x-hostile-ok", stream.id().to_string().as_bytes());
                Action::Continue
            }
        }
    }
}

wasmtrace_filter_guest::export_filter!(Hostile);
