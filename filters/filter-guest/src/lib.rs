//! Writing a `wasmtrace:filter` component in Rust.
//!
//! The world's bindings are generated here once, so a filter crate neither repeats
//! `wit_bindgen::generate!` nor implements the callbacks it does not use: it implements
//! [`Filter`], whose every callback defaults to doing nothing (continue, no state), and names its
//! type with [`export_filter!`]:
//!
//! ```ignore
//! use wasmtrace_filter_guest::{Action, Filter, HeaderPart, HttpStream, LocalResponse};
//!
//! struct Deny;
//!
//! impl Filter for Deny {
//!     fn on_request_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
//!         if stream.header(HeaderPart::RequestHeaders, "x-deny").is_some() {
//!             stream.send_local_response(&LocalResponse::text(403, "denied\n", "denied"));
//!         }
//!         Action::Continue
//!     }
//! }
//!
//! wasmtrace_filter_guest::export_filter!(Deny);
//! ```
//!
//! Build the crate (a `cdylib`) with `wasmtrace build --component`.

/// The world's generated bindings, whole (the WIT file documents them). wit-bindgen's glue
/// (canonical-ABI lifting and lowering, the export symbols) is unsafe code; nothing written by
/// hand here is.
#[allow(unsafe_code, missing_docs, clippy::missing_safety_doc)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasmtrace:filter/http-filter",
        pub_export_macro: true,
        export_macro_name: "export_handler",
    });
}

pub use bindings::exports::wasmtrace::filter::handler::Guest;
pub use bindings::wasmtrace::filter::exchange::HttpStream;
pub use bindings::wasmtrace::filter::host;
pub use bindings::wasmtrace::filter::types::{
    Action, AttributeValue, CalloutError, CalloutRequest, CalloutResponse, HeaderPart, LocalResponse, LogLevel,
    MetricKind,
};

/// A filter: the world's callbacks, each doing nothing unless the filter says otherwise.
///
/// The defaults are what a filter that ignores a callback would answer: continue the stream,
/// accept any configuration, and be done at once when the VM shuts down.
pub trait Filter {
    /// The plugin's configuration (and the VM's); an `Err` refuses it, with the reason.
    fn configure(_configuration: Vec<u8>, _vm_configuration: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
    /// The request headers arrived.
    fn on_request_headers(_stream: &HttpStream, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    /// A piece of the request body (`body_size` bytes buffered so far).
    fn on_request_body(_stream: &HttpStream, _body_size: u32, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    /// The request trailers arrived.
    fn on_request_trailers(_stream: &HttpStream) -> Action {
        Action::Continue
    }
    /// The response headers arrived.
    fn on_response_headers(_stream: &HttpStream, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    /// A piece of the response body.
    fn on_response_body(_stream: &HttpStream, _body_size: u32, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    /// The response trailers arrived.
    fn on_response_trailers(_stream: &HttpStream) -> Action {
        Action::Continue
    }
    /// The stream ended (the access-log point); its state can go.
    fn on_stream_done(_stream: &HttpStream) {}
    /// The filter's timer fired.
    fn on_tick() {}
    /// A callout the filter made was answered (or failed). `stream` is the stream whose callback
    /// made the call, while it is live: resume it here if the filter paused it for the answer.
    fn on_callout_response(
        _stream: Option<&HttpStream>,
        _callout: u32,
        _outcome: Result<CalloutResponse, CalloutError>,
    ) {
    }
    /// A shared queue the filter registered has items.
    fn on_queue_ready(_queue: u32) {}
    /// The VM is shutting down: `true` when done now, `false` to finish later with
    /// [`host::done`] (after flushing through a callout, say).
    fn on_shutdown() -> bool {
        true
    }
}

impl LocalResponse {
    /// A plain-text local response: `status`, `body` as `text/plain`, and `details` (Envoy's
    /// `response.code_details`).
    pub fn text(status: u16, body: &str, details: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            details: details.into(),
        }
    }
}

impl HttpStream {
    /// A header's value as text, if present and UTF-8.
    pub fn header_text(&self, part: HeaderPart, name: &str) -> Option<String> {
        self.header(part, name).and_then(|value| String::from_utf8(value).ok())
    }
}

/// Exports `$filter` (a type implementing [`Filter`]) as the component's handler. Use it once,
/// in the filter crate's `lib.rs`.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        /// The world's handler, calling the filter's callbacks.
        struct WasmtraceFilterHandler;

        impl $crate::Guest for WasmtraceFilterHandler {
            fn configure(configuration: Vec<u8>, vm_configuration: Vec<u8>) -> Result<(), String> {
                <$filter as $crate::Filter>::configure(configuration, vm_configuration)
            }
            fn on_request_headers(stream: &$crate::HttpStream, end_of_stream: bool) -> $crate::Action {
                <$filter as $crate::Filter>::on_request_headers(stream, end_of_stream)
            }
            fn on_request_body(stream: &$crate::HttpStream, body_size: u32, end_of_stream: bool) -> $crate::Action {
                <$filter as $crate::Filter>::on_request_body(stream, body_size, end_of_stream)
            }
            fn on_request_trailers(stream: &$crate::HttpStream) -> $crate::Action {
                <$filter as $crate::Filter>::on_request_trailers(stream)
            }
            fn on_response_headers(stream: &$crate::HttpStream, end_of_stream: bool) -> $crate::Action {
                <$filter as $crate::Filter>::on_response_headers(stream, end_of_stream)
            }
            fn on_response_body(stream: &$crate::HttpStream, body_size: u32, end_of_stream: bool) -> $crate::Action {
                <$filter as $crate::Filter>::on_response_body(stream, body_size, end_of_stream)
            }
            fn on_response_trailers(stream: &$crate::HttpStream) -> $crate::Action {
                <$filter as $crate::Filter>::on_response_trailers(stream)
            }
            fn on_stream_done(stream: &$crate::HttpStream) {
                <$filter as $crate::Filter>::on_stream_done(stream)
            }
            fn on_tick() {
                <$filter as $crate::Filter>::on_tick()
            }
            fn on_callout_response(
                stream: Option<&$crate::HttpStream>,
                callout: u32,
                outcome: Result<$crate::CalloutResponse, $crate::CalloutError>,
            ) {
                <$filter as $crate::Filter>::on_callout_response(stream, callout, outcome)
            }
            fn on_queue_ready(queue: u32) {
                <$filter as $crate::Filter>::on_queue_ready(queue)
            }
            fn on_shutdown() -> bool {
                <$filter as $crate::Filter>::on_shutdown()
            }
        }

        $crate::bindings::export_handler!(WasmtraceFilterHandler with_types_in $crate::bindings);
    };
}
