//! What every decoded request must look like, whatever its wire format.

use trace_collector::ingest::{Decoded, IngestError};
use trace_collector::limits::Limits;

/// Spans kept and refused: the count the span limit applies to.
pub fn total(decoded: &Decoded) -> usize {
    decoded.spans.len() + decoded.rejected
}

/// Every kept span has non-zero ids, a non-negative duration and JSON where JSON is stored; a
/// refusal comes with its reason.
pub fn check(decoded: &Decoded) {
    assert_eq!(decoded.rejected > 0, decoded.reason.is_some(), "a refused span says why");
    for span in &decoded.spans {
        assert!(span.trace_id.iter().any(|b| *b != 0), "trace ids are non-zero");
        assert!(span.span_id.iter().any(|b| *b != 0), "span ids are non-zero");
        if let Some(parent) = span.parent_span_id {
            assert!(parent.iter().any(|b| *b != 0), "a parent id is non-zero (a zero one means a root)");
        }
        assert!(span.duration_us >= 0, "durations are not negative");
        json_object(&span.attributes);
        json_object(&span.resource.attributes);
        json_array(&span.events);
        json_array(&span.links);
    }
}

fn json_object(text: &str) {
    let value: serde_json::Value = serde_json::from_str(text).expect("stored JSON parses");
    assert!(value.is_object(), "attributes are a JSON object: {text}");
}

fn json_array(text: &str) {
    let value: serde_json::Value = serde_json::from_str(text).expect("stored JSON parses");
    assert!(value.is_array(), "events and links are a JSON array: {text}");
}

/// The span limit cannot be slipped past: one span fewer allowed than the request carries is a
/// refusal (`TooManySpans`, or `DecodesTooLarge` if that limit is reached first — never success).
pub fn limit_holds(decoded: &Decoded, decode: impl Fn(&Limits) -> Result<Decoded, IngestError>) {
    let count = total(decoded);
    if count == 0 {
        return;
    }
    let limits = Limits { max_spans_per_request: count - 1, ..Limits::default() };
    match decode(&limits) {
        Err(IngestError::TooManySpans { max }) => assert_eq!(max, count - 1),
        Err(other) => panic!("one span over the limit refused for another reason: {other}"),
        Ok(smaller) => panic!("{} spans accepted under a limit of {}", total(&smaller), count - 1),
    }
}
