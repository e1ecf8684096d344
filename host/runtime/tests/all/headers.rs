//! Header maps and the stream actions a filter can take on them.

use std::rc::Rc;

use wasmtrace_runtime::{Action, HeaderMap};

use crate::fixture::{LogCapture, instance, plugin, request, request_header, respond, runtime};

#[test]
fn request_headers_are_added_replaced_and_removed() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/", &[("X-Replace-Me", "original"), ("x-remove-me", "bye"), ("x-keep", "1")]);
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    assert_eq!(request_header(&exchange, "x-probe"), Some("ctx=2".into()));
    assert_eq!(request_header(&exchange, "x-replace-me"), Some("replaced".into()));
    assert_eq!(request_header(&exchange, "x-remove-me"), None);
    assert_eq!(request_header(&exchange, "x-keep"), Some("1".into()));
}

#[test]
fn response_headers_are_read_and_extended() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    stream.on_request_headers(true);
    respond(&exchange, 201);
    assert_eq!(stream.on_response_headers(false), Action::Continue);
    let exchange = exchange.borrow();
    let headers = exchange.response_headers.as_ref().expect("present");
    assert_eq!(headers.get_str("x-probe-response"), Some("yes"));
    logs.assert_line("#2 <- content-type: text/plain");
}

#[test]
fn a_local_response_stops_the_stream_with_status_body_and_headers() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let mut stream = probe.new_stream(request("/local", &[]));
    let Action::LocalResponse(response) = stream.on_request_headers(true) else { panic!("expected a local response") };
    assert_eq!(response.status, 403);
    assert_eq!(response.body, b"denied by probe\n");
    assert_eq!(response.headers, HeaderMap::from_pairs([("x-local", "yes")]));
    assert_eq!(response.grpc_status, None, "the SDK's -1 means no grpc-status");
}

#[test]
fn closing_the_stream_asks_the_data_plane_to_reset_it_and_the_filter_still_logs_it() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let mut stream = probe.new_stream(request("/close", &[]));
    assert_eq!(stream.on_request_headers(true), Action::Close);
    assert_eq!(stream.on_response_headers(true), Action::Continue, "no stream callback after the close");
    stream.on_log();
    // As in Envoy, the access-log point reaches a filter that closed its stream.
    logs.assert_line("completed with");
}

#[test]
fn changes_to_headers_already_sent_are_ignored_with_a_warning() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/", &[]);
    exchange.borrow_mut().info.request_headers_sent = true;
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue, "the filter keeps running");
    assert_eq!(request_header(&exchange, "x-probe"), None);
    logs.assert_line("proxy_add_header_map_value ignored: HttpRequestHeaders were already sent");
}

#[test]
fn trailers_are_read_and_extended_in_both_directions() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/upload", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(false), Action::Continue);
    exchange.borrow_mut().request_trailers = Some(HeaderMap::from_pairs([("x-checksum", "abc123")]));
    assert_eq!(stream.on_request_trailers(), Action::Continue);
    let trailers = exchange.borrow().request_trailers.clone().expect("present");
    assert_eq!(trailers.get_str("x-probe-saw-checksum"), Some("abc123"));
    respond(&exchange, 200);
    stream.on_response_headers(false);
    exchange.borrow_mut().response_trailers = Some(HeaderMap::from_pairs([("grpc-status", "0")]));
    assert_eq!(stream.on_response_trailers(), Action::Continue);
    logs.assert_line("#2 <- trailer grpc-status: 0");
}
