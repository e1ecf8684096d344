//! Zipkin B3 propagation: the single `b3` header and the `X-B3-*` headers, including debug
//! (`d`, `X-B3-Flags: 1`) and deferred sampling (no decision sent).

use crate::ids::{StackText, parse_any_hex};
use crate::{SpanContext, SpanId, TraceId};

fn trace_id(text: &str) -> Option<TraceId> {
    if text.len() != 16 && text.len() != 32 {
        return None;
    }
    Some(TraceId(parse_any_hex::<16>(text)?)).filter(|t| !t.is_zero())
}

fn span_id(text: &str) -> Option<SpanId> {
    if text.len() != 16 {
        return None;
    }
    Some(SpanId(parse_any_hex::<8>(text)?)).filter(|s| !s.is_zero())
}

fn decision(text: &str) -> Option<Option<bool>> {
    match text {
        "1" | "d" | "true" => Some(Some(true)),
        "0" | "false" => Some(Some(false)),
        _ => None,
    }
}

/// What a B3 header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum B3 {
    /// A context to continue (`sampled: None` = deferred decision).
    Context(SpanContext),
    /// Only a sampling decision (`b3: 0`, `b3: 1`, `b3: d`).
    DecisionOnly(bool),
}

/// Parses the single `b3` header: `{trace}-{span}[-{sampling}[-{parent}]]` or `{sampling}`.
pub fn parse_single(value: &str) -> Option<B3> {
    let value = value.trim();
    let parts: Vec<&str> = value.split('-').collect();
    match parts.as_slice() {
        [only] => decision(only)?.map(B3::DecisionOnly),
        [trace, span, rest @ ..] if rest.len() <= 2 => {
            let sampled = match rest.first() {
                Some(d) => decision(d)?,
                None => None,
            };
            if let Some(parent) = rest.get(1) {
                span_id(parent)?;
            }
            Some(B3::Context(SpanContext {
                trace_id: trace_id(trace)?,
                span_id: span_id(span)?,
                sampled,
                random: false,
                tracestate: Vec::new(),
            }))
        }
        _ => None,
    }
}

/// Parses the `X-B3-*` headers (values as received, `None` when absent).
pub fn parse_multi(trace: Option<&str>, span: Option<&str>, sampled: Option<&str>, flags: Option<&str>) -> Option<B3> {
    let debug = flags.map(str::trim) == Some("1");
    let decision = if debug { Some(true) } else { sampled.and_then(|s| decision(s.trim())).flatten() };
    match (trace, span) {
        (Some(trace), Some(span)) => Some(B3::Context(SpanContext {
            trace_id: trace_id(trace.trim())?,
            span_id: span_id(span.trim())?,
            sampled: decision,
            random: false,
            tracestate: Vec::new(),
        })),
        _ => decision.map(B3::DecisionOnly),
    }
}

/// Longest single `b3` value: `{trace}-{span}-{sampled}-{parent}`.
pub const SINGLE_MAX_LEN: usize = 32 + 1 + 16 + 2 + 1 + 16;

/// The single `b3` header for a span, on the stack.
pub fn single(
    trace_id: &TraceId,
    span_id: &SpanId,
    sampled: bool,
    parent: Option<&SpanId>,
) -> StackText<SINGLE_MAX_LEN> {
    let mut value = StackText::new();
    value.push(&trace_id.hex());
    value.push(b"-");
    value.push(&span_id.hex());
    value.push(if sampled { b"-1" } else { b"-0" });
    if let Some(parent) = parent {
        value.push(b"-");
        value.push(&parent.hex());
    }
    value
}

/// The single `b3` header for a span.
pub fn format_single(trace_id: &TraceId, span_id: &SpanId, sampled: bool, parent: Option<&SpanId>) -> String {
    single(trace_id, span_id, sampled, parent).as_str().to_owned()
}

/// The `X-B3-*` headers for a span.
pub fn format_multi(
    trace_id: &TraceId,
    span_id: &SpanId,
    sampled: bool,
    parent: Option<&SpanId>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("x-b3-traceid", trace_id.to_hex()),
        ("x-b3-spanid", span_id.to_hex()),
        ("x-b3-sampled", if sampled { "1" } else { "0" }.to_owned()),
    ];
    if let Some(parent) = parent {
        headers.push(("x-b3-parentspanid", parent.to_hex()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_header_forms() {
        let Some(B3::Context(c)) = parse_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
        else {
            panic!("full form")
        };
        assert_eq!((c.trace_id.to_hex().as_str(), c.sampled), ("80f198ee56343ba864fe8b2a57d3eff7", Some(true)));
        let Some(B3::Context(c)) = parse_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1") else { panic!("deferred") };
        assert_eq!(c.sampled, None);
        assert_eq!(c.trace_id.to_hex(), "000000000000000064fe8b2a57d3eff7", "64-bit ids are left-padded");
        assert_eq!(parse_single("d"), Some(B3::DecisionOnly(true)));
        assert_eq!(parse_single("0"), Some(B3::DecisionOnly(false)));
        let (trace, span) = (c.trace_id, c.span_id);
        assert_eq!(format_single(&trace, &span, true, Some(&span)), format!("{trace:?}-{span:?}-1-{span:?}"));
        assert_eq!(format_single(&trace, &span, false, None), format!("{trace:?}-{span:?}-0"));
        for bad in [
            "",
            "x",
            "abc-def",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "0000000000000000-e457b5a2e4d86bd1",
        ] {
            assert_eq!(parse_single(bad), None, "accepted {bad:?}");
        }
    }

    #[test]
    fn multi_header_debug_and_deferred() {
        let c = parse_multi(Some("463ac35c9f6413ad48485a3953bb6124"), Some("a2fb4a1d1a96d312"), None, Some("1"));
        assert!(matches!(c, Some(B3::Context(SpanContext { sampled: Some(true), .. }))));
        let c = parse_multi(Some("463ac35c9f6413ad48485a3953bb6124"), Some("a2fb4a1d1a96d312"), None, None);
        assert!(matches!(c, Some(B3::Context(SpanContext { sampled: None, .. }))));
        assert_eq!(parse_multi(None, None, Some("0"), None), Some(B3::DecisionOnly(false)));
        assert_eq!(parse_multi(Some("zz"), Some("a2fb4a1d1a96d312"), None, None), None);
    }
}
