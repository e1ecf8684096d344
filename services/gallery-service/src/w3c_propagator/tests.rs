use std::collections::HashMap;
use std::str::FromStr;

use opentelemetry::trace::{Tracer, TracerProvider as _};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use super::*;

const TRACE: &str = "12345678901234567890123456789012";
const PARENT: &str = "1234567890123456";

fn valid(flags: &str) -> String {
    format!("00-{TRACE}-{PARENT}-{flags}")
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        headers.append(name, HeaderValue::from_bytes(value).expect("header value"));
    }
    headers
}

fn extract(pairs: &[(&str, &[u8])]) -> Context {
    W3cPropagator::new().extract(&HeaderValues(&headers(pairs)))
}

/// The SDK as the services set it up: the default (parent-based, always-on) sampler and id
/// generator.
fn tracer() -> SdkTracer {
    SdkTracerProvider::builder().build().tracer("test")
}

/// `cx` with a span of its own, as the SERVER and CLIENT spans are made.
fn child(cx: &Context) -> Context {
    let tracer = tracer();
    cx.with_span(tracer.start_with_context("child", cx))
}

fn injected(cx: &Context) -> HashMap<String, String> {
    let mut out = HashMap::new();
    W3cPropagator::new().inject_context(cx, &mut out);
    out
}

/// The (trace id, parent id, flags) sent with `cx`.
fn sent(cx: &Context) -> (String, String, String) {
    let out = injected(cx);
    let traceparent = out.get(TRACEPARENT).expect("a traceparent is sent");
    assert!(w3c::parse_traceparent(&[traceparent.as_str()]).is_some(), "{traceparent} is valid");
    let fields: Vec<&str> = traceparent.split('-').collect();
    (fields[1].to_owned(), fields[2].to_owned(), fields[3].to_owned())
}

fn sent_tracestate(cx: &Context) -> Option<String> {
    injected(cx).get(TRACESTATE).cloned()
}

#[test]
fn a_valid_traceparent_continues_the_trace_under_a_new_parent_id() {
    let cx = extract(&[("traceparent", valid("01").as_bytes())]);
    let remote = cx.span().span_context().clone();
    assert!(remote.is_remote() && remote.is_sampled());
    assert_eq!(remote.trace_id().to_string(), TRACE);
    let (trace, parent, flags) = sent(&child(&cx));
    assert_eq!(trace, TRACE);
    assert_ne!(parent, PARENT);
    assert_eq!(flags, "01");
}

#[test]
fn every_traceparent_value_is_read_so_two_of_them_restart_the_trace() {
    let tp = valid("01");
    let twice = extract(&[("traceparent", tp.as_bytes()), ("traceparent", tp.as_bytes())]);
    assert!(!twice.span().span_context().is_valid(), "two identical traceparents are invalid too");
    // A second value that is not visible ASCII: opentelemetry-http's extractor hides it, so the
    // first would pass for the only one.
    let garbled = headers(&[("traceparent", tp.as_bytes()), ("traceparent", b"00-\xff")]);
    assert_eq!(HeaderExtractor(&garbled).get_all(TRACEPARENT).map(|v| v.len()), Some(1));
    assert_eq!(HeaderValues(&garbled).get_all(TRACEPARENT).map(|v| v.len()), Some(2));
    let cx = W3cPropagator::new().extract(&HeaderValues(&garbled));
    assert!(!cx.span().span_context().is_valid());
    assert_ne!(sent(&child(&cx)).0, TRACE, "the trace restarts");
}

#[test]
fn future_versions_are_read_by_their_first_four_fields_and_version_00_is_not() {
    let future = format!("cc-{TRACE}-{PARENT}-01");
    for accepted in [future.clone(), format!("{future}-what-the-future-will-be-like")] {
        let cx = extract(&[("traceparent", accepted.as_bytes())]);
        assert_eq!(sent(&child(&cx)).0, TRACE, "{accepted}");
    }
    for refused in [
        format!("{future}what"),
        format!("{}-what-the-future-will-be-like", valid("01")),
        format!("ff-{TRACE}-{PARENT}-01"),
        format!("00-{}-{PARENT}-01", "ABCDEF78901234567890123456789012"),
    ] {
        let cx = extract(&[("traceparent", refused.as_bytes())]);
        assert!(!cx.span().span_context().is_valid(), "{refused}");
    }
}

#[test]
fn unknown_flags_are_dropped_and_random_is_kept() {
    let cx = extract(&[("traceparent", valid("ff").as_bytes())]);
    assert_eq!(cx.span().span_context().trace_flags().to_u8(), 0x03);
    assert_eq!(sent(&child(&cx)).2, "03");
}

#[test]
fn an_unsampled_parent_keeps_its_random_flag_through_the_span_the_sdk_drops() {
    let cx = extract(&[("traceparent", valid("02").as_bytes())]);
    let span = child(&cx);
    // The SDK zeroes every flag of a span it does not sample.
    assert_eq!(span.span().span_context().trace_flags().to_u8(), 0);
    let (trace, _, flags) = sent(&span);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "02"));
    assert_eq!(sent(&child(&extract(&[("traceparent", valid("00").as_bytes())]))).2, "00");
}

#[test]
fn a_trace_started_here_is_flagged_random_and_carries_no_tracestate() {
    let cx = extract(&[("traceparent", b"00-garbage"), ("tracestate", b"foo=1")]);
    let root = child(&cx);
    let (trace, _, flags) = sent(&root);
    assert_ne!(trace, TRACE);
    assert_eq!(flags, "03", "sampled, and random: the SDK drew the ids");
    assert_eq!(sent(&child(&root)).0, trace, "its children are the same trace");
    assert_eq!(sent_tracestate(&root), None);
    assert_eq!(sent(&child(&extract(&[]))).2, "03");
}

#[test]
fn a_context_that_has_a_span_keeps_it_when_the_headers_are_invalid() {
    let served = child(&extract(&[("traceparent", valid("01").as_bytes())]));
    let cx = W3cPropagator::new().extract_with_context(&served, &HeaderValues(&headers(&[("traceparent", b"x")])));
    let (trace, _, flags) = sent(&cx);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "not marked as a new, random trace");
}

#[test]
fn tracestate_headers_combine_in_order_and_a_repeated_key_keeps_its_first_value() {
    let cx = extract(&[
        ("traceparent", valid("01").as_bytes()),
        ("tracestate", b"foo=1 ,  , bar=2"),
        ("tracestate", b"baz=3,foo=4"),
    ]);
    assert_eq!(sent_tracestate(&child(&cx)).as_deref(), Some("foo=1,bar=2,baz=3"));
}

#[test]
fn level_2_keys_the_sdk_refuses_are_sent_on_as_received() {
    let level_2 = "foo@=1,foo@@bar=2,tenant@a-vendor-of-many-letters=3,1foo=4";
    assert!(TraceState::from_str(level_2).is_err(), "OpenTelemetry's TraceState refuses them");
    let cx = extract(&[("traceparent", valid("01").as_bytes()), ("tracestate", level_2.as_bytes())]);
    let span = child(&cx);
    assert_eq!(sent_tracestate(&span).as_deref(), Some(level_2));
    assert_eq!(sent_tracestate(&child(&span)).as_deref(), Some(level_2), "and down the whole trace");
}

#[test]
fn a_tracestate_the_sdk_holds_goes_first_and_a_refused_one_follows() {
    let trace_id = TraceId::from_hex(TRACE).expect("trace id");
    let own = TraceState::from_key_value([("x", "1"), ("foo", "9")]).expect("valid");
    let remote = SpanContext::new(trace_id, SpanId::from_hex(PARENT).expect("id"), TraceFlags::SAMPLED, true, own);
    let cx = Context::new().with_remote_span_context(remote).with_value(Received::Parent {
        trace_id,
        random: false,
        tracestate: Some("foo@@bar=2,foo=1".into()),
    });
    assert_eq!(sent_tracestate(&cx).as_deref(), Some("x=1,foo=9,foo@@bar=2"));
}

#[test]
fn what_was_received_belongs_to_its_trace_only() {
    let cx = extract(&[("traceparent", valid("03").as_bytes()), ("tracestate", b"foo@@bar=1")]);
    let other = SpanContext::new(
        TraceId::from_hex(&"a".repeat(32)).expect("trace id"),
        SpanId::from_hex(PARENT).expect("id"),
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    );
    let foreign = cx.with_remote_span_context(other);
    assert_eq!(sent(&foreign).2, "01", "no random flag for another trace");
    assert_eq!(sent_tracestate(&foreign), None);
}

#[test]
fn an_invalid_or_overlong_tracestate_is_dropped_whole_and_the_trace_continues() {
    let members = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
    let tp = valid("01");
    let (twenty, thirty_three) = (members(20), members(33));
    let cases: [&[&[u8]]; 7] = [
        &[thirty_three.as_bytes()],
        &[twenty.as_bytes(), thirty_three.as_bytes()],
        &[b"foo=bar=baz"],
        &[b"foo=1", b"FOO=2"],
        &[b"foo=1", b"bar=\xff"],
        &[b""],
        &[b"foo="],
    ];
    for values in cases {
        let mut pairs: Vec<(&str, &[u8])> = vec![("traceparent", tp.as_bytes())];
        pairs.extend(values.iter().map(|v| ("tracestate", *v)));
        let cx = child(&extract(&pairs));
        assert_eq!(sent(&cx).0, TRACE, "{values:?}");
        assert_eq!(sent_tracestate(&cx), None, "{values:?}: no tracestate header at all, not an empty one");
    }
    let cx = child(&extract(&[("traceparent", tp.as_bytes()), ("tracestate", members(32).as_bytes())]));
    assert_eq!(sent_tracestate(&cx), Some(members(32)));
}

#[test]
fn a_context_without_a_span_injects_nothing() {
    assert!(injected(&Context::new()).is_empty());
    assert!(injected(&extract(&[])).is_empty(), "a new trace has no span until one is started");
}

#[test]
fn its_fields_are_the_two_w3c_headers() {
    assert_eq!(W3cPropagator::new().fields().collect::<Vec<_>>(), [TRACEPARENT, TRACESTATE]);
}
