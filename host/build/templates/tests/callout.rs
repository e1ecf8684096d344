//! {{name}} in the wasmtrace runtime: the module `wasmtrace build` makes, started with a
//! configuration, a request held for its callout, the answer, and what it hands the trace
//! filter.

use wasmtrace_testing::{Action, FilterForm, FilterUnderTest, TRACE_CONTEXT};

const FORM: FilterForm = {{form}};
const CONFIG: &str = r#"{"cluster": "auth", "path": "/check", "timeout_ms": 1000, "attribute": "auth.status"}"#;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn the_request_waits_for_the_traced_callout_and_records_its_answer() {
    let filter = FilterUnderTest::build(env!("CARGO_MANIFEST_DIR"), FORM, CONFIG).expect("builds and starts");
    let mut request = filter.request(&[]);
    // The trace filter, before this filter, published the request's context.
    request.set_filter_state(TRACE_CONTEXT, TRACEPARENT.as_bytes());
    assert_eq!(request.send_request_headers(), Action::Pause, "held for the callout");
    let callouts = request.callouts();
    assert_eq!(callouts.len(), 1, "{callouts:?}");
    let header = |name: &str| callouts[0].headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!((callouts[0].cluster.as_str(), header(":path").as_deref()), ("auth", Some("/check")));
    let traceparent = header("traceparent").expect("the callout carries the context");
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");

    assert_eq!(request.answer_callout(200, b""), Some(Action::Continue), "resumed by the answer");
    assert_eq!(request.span_attributes().get("auth.status"), Some(&"200".into()));
    let spans = request.callout_spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0]["status_code"], 200);
    assert!(traceparent.contains(spans[0]["span_id"].as_str().unwrap_or("?")), "the callee's parent is the span");
    request.finish();
}

#[test]
fn a_callout_to_a_cluster_the_proxy_lacks_lets_the_request_go_on() {
    let filter = FilterUnderTest::build(env!("CARGO_MANIFEST_DIR"), FORM, r#"{"cluster": "nowhere"}"#)
        .expect("builds and starts");
    let mut request = filter.request(&[]);
    assert_eq!(request.send_request_headers(), Action::Continue);
    assert_eq!(request.span_attributes().get("auth.status"), Some(&"not sent".into()));
    request.finish();
}
