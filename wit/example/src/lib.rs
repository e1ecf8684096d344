//! A minimal `wasmtrace:filter` component: answers 403 to requests carrying `x-deny`, and adds
//! an `x-hello` response header (its value is the plugin configuration) and a span attribute
//! to the rest. Build it with `wasmtrace build --component wit/example`.

// wit-bindgen's generated glue (canonical-ABI lifting and lowering) is unsafe code; nothing
// written by hand here is.
#![allow(unsafe_code, missing_docs, clippy::missing_safety_doc)]

use std::cell::RefCell;

wit_bindgen::generate!({ path: "..", world: "wasmtrace:filter/http-filter" });

use exports::wasmtrace::filter::handler::Guest;
use wasmtrace::filter::exchange::HttpStream;
use wasmtrace::filter::types::{Action, AttributeValue, CalloutError, CalloutResponse, HeaderPart, LocalResponse};

thread_local! {
    /// The configured greeting.
    static GREETING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Hello;

impl Guest for Hello {
    fn configure(configuration: Vec<u8>, _vm_configuration: Vec<u8>) -> Result<(), String> {
        if configuration.is_empty() {
            return Err("the configuration is the x-hello header's value; it is empty".into());
        }
        GREETING.with(|g| *g.borrow_mut() = configuration);
        Ok(())
    }

    fn on_request_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        if stream.header(HeaderPart::RequestHeaders, "x-deny").is_some() {
            stream.send_local_response(&LocalResponse {
                status: 403,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: b"denied\n".to_vec(),
                details: "hello_filter_denied".into(),
            });
        }
        Action::Continue
    }

    fn on_response_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        GREETING.with(|g| stream.set_header(HeaderPart::ResponseHeaders, "x-hello", &g.borrow()));
        stream.add_span_attributes(&[("hello.greeted".into(), AttributeValue::Flag(true))]);
        Action::Continue
    }

    fn on_request_body(_: &HttpStream, _: u32, _: bool) -> Action {
        Action::Continue
    }
    fn on_request_trailers(_: &HttpStream) -> Action {
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

export!(Hello);
