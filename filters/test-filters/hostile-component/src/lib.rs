//! A `wasmtrace:filter` component that misbehaves on demand (request header `x-hostile: trap |
//! loop | grow`), so the tests can show components get the same limits as proxy-wasm modules:
//! a trap, an endless loop or a memory hoard fails only its own stream. Well-behaved requests
//! get `x-hostile-ok: <stream id>`.

// wit-bindgen's generated glue (canonical-ABI lifting and lowering) is unsafe code; nothing
// written by hand here is.
#![allow(unsafe_code, missing_docs, clippy::missing_safety_doc)]

wit_bindgen::generate!({ path: "../../../wit", world: "wasmtrace:filter/http-filter" });

use exports::wasmtrace::filter::handler::Guest;
use wasmtrace::filter::exchange::HttpStream;
use wasmtrace::filter::types::{Action, CalloutError, CalloutResponse, HeaderPart};

struct Hostile;

impl Guest for Hostile {
    fn configure(_configuration: Vec<u8>, _vm_configuration: Vec<u8>) -> Result<(), String> {
        Ok(())
    }

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

    fn on_request_body(_: &HttpStream, _: u32, _: bool) -> Action {
        Action::Continue
    }
    fn on_request_trailers(_: &HttpStream) -> Action {
        Action::Continue
    }
    fn on_response_headers(_: &HttpStream, _: bool) -> Action {
        Action::Continue
    }
    fn on_response_body(_: &HttpStream, _: u32, _: bool) -> Action {
        Action::Continue
    }
    fn on_response_trailers(_: &HttpStream) -> Action {
        Action::Continue
    }
    fn on_stream_done(_: &HttpStream) {}
    fn on_tick() {}
    fn on_callout_response(_: u32, _: Result<CalloutResponse, CalloutError>) {}
    fn on_queue_ready(_: u32) {}
    fn on_shutdown() -> bool {
        true
    }
}

export!(Hostile);
