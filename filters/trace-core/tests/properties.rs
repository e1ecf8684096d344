//! Properties of the propagation parsers over arbitrary input: they never panic, and what they
//! accept re-formats to something they accept again with the same meaning.

use proptest::prelude::*;
use wasmtrace_trace_core::span::{Resource, Span, SpanKind, StatusCode, ValueRef};
use wasmtrace_trace_core::{SpanId, TraceId, b3, baggage, jaeger, otlp, w3c};

/// An attribute value of any kind.
fn value() -> impl Strategy<Value = (u8, String, i64, f64)> {
    (0u8..4, "\\PC{0,40}", any::<i64>(), any::<f64>())
}

proptest! {
    #[test]
    fn traceparent_round_trips(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), sampled: bool, random: bool) {
        let (trace, span) = (TraceId(trace), SpanId(span));
        prop_assume!(!trace.is_zero() && !span.is_zero());
        let header = w3c::format_traceparent(&trace, &span, sampled, random);
        let (t, s, flags) = w3c::parse_traceparent(&[&header]).expect("what we format parses");
        prop_assert_eq!((t, s), (trace, span));
        prop_assert_eq!(flags & 1 == 1, sampled);
        prop_assert_eq!(flags & 2 == 2, random);
    }

    #[test]
    fn accepted_traceparents_are_canonical_version_00_or_a_future_version(text in "\\PC{0,80}") {
        if let Some((trace, span, flags)) = w3c::parse_traceparent(&[&text]) {
            let trimmed = text.trim_matches(|c| c == ' ' || c == '\t');
            prop_assert!(trimmed.contains(&trace.to_hex()) && trimmed.contains(&span.to_hex()));
            prop_assert!(!trimmed.starts_with("ff"));
            let canonical = w3c::format_traceparent(&trace, &span, flags & 1 == 1, flags & 2 == 2);
            prop_assert!(w3c::parse_traceparent(&[&canonical]).is_some());
        }
    }

    #[test]
    fn accepted_tracestates_reparse_to_the_same_members(values in proptest::collection::vec("[a-z0-9=,@ _*/-]{0,40}", 0..4)) {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        if let Some(members) = w3c::parse_tracestate(&refs) {
            prop_assert!(members.len() <= w3c::MAX_TRACESTATE_MEMBERS);
            if let Some(formatted) = w3c::format_tracestate(&members) {
                prop_assert_eq!(w3c::parse_tracestate(&[&formatted]), Some(members));
            }
        }
    }

    #[test]
    fn normalized_tracestate_is_parsed_then_formatted(values in proptest::collection::vec("[a-z0-9=,@ _*/-]{0,40}", 0..4)) {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let expected = w3c::parse_tracestate(&refs).map(|m| w3c::format_tracestate(&m).unwrap_or_default());
        let mut out = String::new();
        let valid = w3c::normalize_tracestate(refs.iter().copied(), &mut out);
        prop_assert_eq!(valid.then_some(out), expected);
    }

    #[test]
    fn a_span_encodes_to_the_bytes_prost_gives(
        attributes in proptest::collection::vec(("[a-z._]{0,12}", value()), 0..10),
        name in "\\PC{0,30}",
        trace_state in "[a-z0-9=,]{0,20}",
        message in "\\PC{0,20}",
        (start, end) in (any::<u64>(), any::<u64>()),
        parent in proptest::option::of(any::<[u8; 8]>()),
        (kind, status, remote) in (0u8..3, 0u8..3, any::<bool>()),
    ) {
        let mut span = Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: parent.map(SpanId),
            parent_is_remote: remote,
            trace_state,
            name,
            kind: [SpanKind::Internal, SpanKind::Server, SpanKind::Client][usize::from(kind)],
            start_unix_nanos: start,
            end_unix_nanos: end,
            attributes: Default::default(),
            status: [StatusCode::Unset, StatusCode::Ok, StatusCode::Error][usize::from(status)],
            events: Vec::new(),
            status_message: message,
        };
        for (key, (which, text, int, double)) in &attributes {
            let value = match which {
                0 => ValueRef::String(text),
                1 => ValueRef::Int(*int),
                2 => ValueRef::Double(*double),
                _ => ValueRef::Bool(int % 2 == 0),
            };
            span.set(key, value);
        }
        let resource = Resource::default();
        let item = otlp::encode_span_protobuf(&span);
        prop_assert!(otlp::is_protobuf_span(&item), "what we encode passes the spool's check");
        let by_hand = otlp::encode_protobuf_items(&resource, &[item]);
        prop_assert_eq!(by_hand, otlp::encode_protobuf(&resource, std::slice::from_ref(&span)));
    }

    /// The spool's check never passes what prost (and so the collector) would refuse, over
    /// arbitrary bytes and over real spans with a byte changed or cut short.
    #[test]
    fn the_protobuf_span_check_passes_only_what_prost_decodes(
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        name in "\\PC{0,12}",
        (at, byte, cut) in (any::<usize>(), any::<u8>(), any::<usize>()),
    ) {
        use prost::Message as _;
        let decodes = |bytes: &[u8]| otlp::proto::Span::decode(bytes).is_ok();
        prop_assert!(!otlp::is_protobuf_span(&noise) || decodes(&noise), "noise {:?}", noise);
        let mut span = Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: Some(SpanId::random()),
            parent_is_remote: true,
            trace_state: "k=v".into(),
            name,
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Default::default(),
            status: StatusCode::Error,
            events: Vec::new(),
            status_message: "boom".into(),
        };
        span.set("http.request.method", ValueRef::String("GET"));
        span.set("http.response.status_code", ValueRef::Int(200));
        let mut item = otlp::encode_span_protobuf(&span);
        let at = at % item.len();
        item[at] = byte;
        prop_assert!(!otlp::is_protobuf_span(&item) || decodes(&item), "changed {:?}", item);
        item.truncate(cut % (item.len() + 1));
        prop_assert!(!otlp::is_protobuf_span(&item) || decodes(&item), "cut {:?}", item);
    }

    #[test]
    fn b3_jaeger_and_baggage_parsers_never_panic(text in "\\PC{0,120}") {
        let _ = b3::parse_single(&text);
        let _ = b3::parse_multi(Some(&text), Some(&text), Some(&text), Some(&text));
        let _ = jaeger::parse(&text);
        let _ = baggage::parse(&[&text]);
        let _ = w3c::parse_tracestate(&[&text]);
    }

    #[test]
    fn b3_single_round_trips(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), sampled: bool) {
        let (trace, span) = (TraceId(trace), SpanId(span));
        prop_assume!(!trace.is_zero() && !span.is_zero());
        let Some(b3::B3::Context(context)) = b3::parse_single(&b3::format_single(&trace, &span, sampled, None)) else {
            return Err(TestCaseError::fail("formatted b3 does not parse"));
        };
        prop_assert_eq!((context.trace_id, context.span_id, context.sampled), (trace, span, Some(sampled)));
    }
}
