//! Properties of the propagation parsers over arbitrary input: they never panic, and what they
//! accept re-formats to something they accept again with the same meaning.

use proptest::prelude::*;
use wasmtrace_trace_core::{SpanId, TraceId, b3, baggage, jaeger, w3c};

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
