//! A minimal `wasmtrace:filter` component: answers 403 to requests carrying `x-deny`, and adds
//! an `x-hello` response header (its value is the plugin configuration) and a span attribute
//! to the rest. Build it with `wasmtrace build --component wit/example`.

use std::cell::RefCell;

use wasmtrace_filter_guest::{Action, AttributeValue, Filter, HeaderPart, HttpStream, LocalResponse};

thread_local! {
    /// The configured greeting.
    static GREETING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Hello;

impl Filter for Hello {
    fn configure(configuration: Vec<u8>, _vm_configuration: Vec<u8>) -> Result<(), String> {
        if configuration.is_empty() {
            return Err("the configuration is the x-hello header's value; it is empty".into());
        }
        GREETING.with(|g| *g.borrow_mut() = configuration);
        Ok(())
    }

    fn on_request_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        if stream.header(HeaderPart::RequestHeaders, "x-deny").is_some() {
            stream.send_local_response(&LocalResponse::text(403, "denied\n", "hello_filter_denied"));
        }
        Action::Continue
    }

    fn on_response_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        GREETING.with(|g| stream.set_header(HeaderPart::ResponseHeaders, "x-hello", &g.borrow()));
        stream.add_span_attributes(&[("hello.greeted".into(), AttributeValue::Flag(true))]);
        Action::Continue
    }
}

wasmtrace_filter_guest::export_filter!(Hello);
