//! Body buffering and replacement.

use std::rc::Rc;

use wasmtrace_runtime::{Action, HeaderMap};

use crate::fixture::{instance, plugin, request, runtime};

#[test]
fn a_request_body_is_buffered_until_the_end_then_replaced() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/body", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(false), Action::Continue);
    exchange.borrow_mut().request_body = b"hello ".to_vec();
    assert_eq!(stream.on_request_body(false), Action::Pause, "the filter asks for the whole body");
    exchange.borrow_mut().request_body.extend_from_slice(b"wasm world");
    assert_eq!(stream.on_request_body(true), Action::Continue);
    assert_eq!(exchange.borrow().request_body, b"HELLO WASM WORLD");
}

#[test]
fn a_response_body_is_replaced_and_its_length_header_dropped() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/redact", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    stream.on_request_headers(true);
    exchange.borrow_mut().response_headers =
        Some(HeaderMap::from_pairs([(":status", "200"), ("content-length", "17")]));
    assert_eq!(stream.on_response_headers(false), Action::Continue);
    assert_eq!(exchange.borrow().response_headers.as_ref().and_then(|h| h.get_str("content-length")), None);
    exchange.borrow_mut().response_body = b"secret: 12345678".to_vec();
    assert_eq!(stream.on_response_body(false), Action::Pause);
    exchange.borrow_mut().response_body.push(b'\n');
    assert_eq!(stream.on_response_body(true), Action::Continue);
    assert_eq!(exchange.borrow().response_body, b"redacted (17 bytes)\n");
}
