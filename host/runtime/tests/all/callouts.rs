//! HTTP callouts: a paused stream resumes when the callout answers.

use std::rc::Rc;
use std::time::Duration;

use wasmtrace_runtime::{Action, CalloutFailure, CalloutResponse, Direction, HeaderMap};

use crate::fixture::{HeldCallouts, instance, plugin, request, request_header, runtime};

#[test]
fn a_stream_paused_for_a_callout_resumes_with_what_the_callout_returned() {
    let runtime = runtime();
    let callouts = Rc::new(HeldCallouts::default());
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), callouts.clone());
    let exchange = request("/callout", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Pause);
    assert_eq!(stream.try_resume(Direction::Request), None, "still waiting for the callout");

    let (callout, completion) = callouts.held.borrow_mut().pop().expect("one callout dispatched");
    assert_eq!(callout.cluster, "auth");
    assert_eq!(callout.headers.get_str(":method"), Some("POST"));
    assert_eq!(callout.headers.get_str(":path"), Some("/check"));
    assert_eq!(callout.headers.get_str("x-from"), Some("probe"));
    assert_eq!(callout.body, b"ping");
    assert_eq!(callout.timeout, Some(Duration::from_secs(1)));
    assert_eq!(completion.token(), callout.token);

    completion.complete(Ok(CalloutResponse {
        headers: HeaderMap::from_pairs([(":status", "200")]),
        body: b"pong".to_vec(),
        trailers: HeaderMap::new(),
    }));
    assert_eq!(stream.try_resume(Direction::Request), Some(Action::Continue));
    assert_eq!(request_header(&exchange, "x-callout-status"), Some("200".into()));
    assert_eq!(request_header(&exchange, "x-callout-body"), Some("pong".into()));
}

#[test]
fn a_failed_callout_is_delivered_as_zero_headers_with_its_reason() {
    let runtime = runtime();
    let callouts = Rc::new(HeldCallouts::default());
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), callouts.clone());
    let mut stream = probe.new_stream(request("/callout", &[]));
    assert_eq!(stream.on_request_headers(true), Action::Pause);
    let (_, completion) = callouts.held.borrow_mut().pop().expect("dispatched");
    completion.complete(Err(CalloutFailure { reason: "reset".into() }));
    let Some(Action::LocalResponse(response)) = stream.try_resume(Direction::Request) else {
        panic!("the filter answers locally when its callout fails")
    };
    assert_eq!(response.status, 503);
    assert_eq!(response.body, b"callout failed: reset\n");
}

#[test]
fn a_callout_to_an_unknown_cluster_is_refused_and_the_filter_can_carry_on() {
    let runtime = runtime();
    let callouts = Rc::new(HeldCallouts::default());
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), callouts.clone());
    let exchange = request("/callout-to-unknown-cluster", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    assert_eq!(request_header(&exchange, "x-callout-error"), Some("BadArgument".into()));
    assert!(callouts.held.borrow().is_empty());
}

#[test]
fn a_callout_answering_after_its_stream_ended_is_harmless() {
    let runtime = runtime();
    let callouts = Rc::new(HeldCallouts::default());
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), callouts.clone());
    let mut stream = probe.new_stream(request("/callout", &[]));
    assert_eq!(stream.on_request_headers(true), Action::Pause);
    drop(stream);
    let (_, completion) = callouts.held.borrow_mut().pop().expect("dispatched");
    completion.complete(Ok(CalloutResponse::default()));
    // The VM is still healthy and serves the next stream.
    let exchange = request("/", &[]);
    let mut next = probe.new_stream(exchange.clone());
    assert_eq!(next.on_request_headers(true), Action::Continue);
    assert!(!probe.vm().expect("vm").is_failed());
}
