//! {{name}} in the wasmtrace runtime: the module `wasmtrace build` makes, started with a
//! configuration, requests through it, and what it hands the trace filter.

use wasmtrace_testing::{Action, FilterForm, FilterUnderTest, TRACE_CONTEXT};

const FORM: FilterForm = {{form}};
const CONFIG: &str = r#"{"header": "x-customer", "value": "acme", "decision": "sample", "trace_id_header": "x-trace-id"}"#;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn the_customers_requests_are_sampled_and_answered_with_the_trace_id() {
    let filter = FilterUnderTest::build(env!("CARGO_MANIFEST_DIR"), FORM, CONFIG).expect("builds and starts");
    let mut request = filter.request(&[("x-customer", "acme")]);
    assert_eq!(request.send_request_headers(), Action::Continue);
    assert_eq!(request.filter_state("wasmtrace_sampling").as_deref(), Some(&b"sample"[..]));
    let events = request.span_events();
    assert_eq!(events.first().and_then(|e| e["name"].as_str()), Some("sampling.decided"), "{events:?}");
    // The trace filter, after this filter, publishes the context it chose.
    request.set_filter_state(TRACE_CONTEXT, TRACEPARENT.as_bytes());
    assert_eq!(request.send_response_headers(200, &[]), Action::Continue);
    assert_eq!(request.response_header("x-trace-id").as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    request.finish();
}

#[test]
fn other_customers_requests_get_no_hint() {
    let filter = FilterUnderTest::build(env!("CARGO_MANIFEST_DIR"), FORM, CONFIG).expect("builds and starts");
    let mut request = filter.request(&[("x-customer", "globex")]);
    assert_eq!(request.send_request_headers(), Action::Continue);
    assert_eq!(request.filter_state("wasmtrace_sampling"), None);
    request.finish();
}
