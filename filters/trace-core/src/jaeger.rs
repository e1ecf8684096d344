//! Jaeger propagation: `uber-trace-id: {trace}:{span}:{parent}:{flags}` (hex, possibly
//! URL-encoded) and `uberctx-{key}` baggage headers.

use crate::ids::{StackText, parse_any_hex};
use crate::{SpanContext, SpanId, TraceId};

/// Jaeger's sampled flag.
const SAMPLED: u8 = 0x01;
/// Jaeger's debug flag (forces sampling).
const DEBUG: u8 = 0x02;
/// Prefix of Jaeger baggage headers.
pub const BAGGAGE_PREFIX: &str = "uberctx-";

/// Parses an `uber-trace-id` value.
pub fn parse(value: &str) -> Option<SpanContext> {
    let decoded = value.trim().replace("%3A", ":").replace("%3a", ":");
    let parts: Vec<&str> = decoded.split(':').collect();
    let [trace, span, _parent, flags] = parts.as_slice() else { return None };
    let trace_id = TraceId(parse_any_hex::<16>(trace)?);
    let span_id = SpanId(parse_any_hex::<8>(span)?);
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id.is_zero() || span_id.is_zero() {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: Some(flags & (SAMPLED | DEBUG) != 0),
        random: false,
        tracestate: Vec::new(),
    })
}

/// Length of the `uber-trace-id` values [`header`] makes.
pub const HEADER_LEN: usize = 32 + 1 + 16 + 4;

/// An `uber-trace-id` value (parent 0, as current Jaeger clients send), on the stack.
pub fn header(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> StackText<HEADER_LEN> {
    let mut value = StackText::new();
    value.push(&trace_id.hex());
    value.push(b":");
    value.push(&span_id.hex());
    value.push(if sampled { b":0:1" } else { b":0:0" });
    value
}

/// Formats an `uber-trace-id` value (parent 0, as current Jaeger clients send).
pub fn format(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> String {
    header(trace_id, span_id, sampled).as_str().to_owned()
}

/// The baggage items among `headers` (`uberctx-key: value`).
pub fn baggage<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(BAGGAGE_PREFIX)?;
            (!key.is_empty()).then(|| (key.to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uber_trace_id_forms() {
        let c = parse("7e39a6fb2ba1e3a9c1d1ff69fe7a40ad:1b7f2f3a9a1b2c3d:0:1").expect("valid");
        assert_eq!(c.trace_id.to_hex(), "7e39a6fb2ba1e3a9c1d1ff69fe7a40ad");
        assert_eq!(c.sampled, Some(true));
        let short = parse("abc%3Adef%3A0%3A0").expect("URL-encoded, short ids");
        assert_eq!(short.trace_id.to_hex(), "00000000000000000000000000000abc");
        assert_eq!(short.sampled, Some(false));
        assert_eq!(parse("abc:def:0:2").and_then(|c| c.sampled), Some(true), "debug samples");
        for bad in ["", "abc:def:0", "0:def:0:1", "abc:0:0:1", "xyz:def:0:1", "abc:def:0:zz"] {
            assert!(parse(bad).is_none(), "accepted {bad:?}");
        }
        assert_eq!(format(&c.trace_id, &c.span_id, false), "7e39a6fb2ba1e3a9c1d1ff69fe7a40ad:1b7f2f3a9a1b2c3d:0:0");
        let round = parse(&format(&c.trace_id, &c.span_id, true)).expect("round trip");
        assert_eq!(round.trace_id, c.trace_id);
    }

    #[test]
    fn baggage_comes_from_uberctx_headers() {
        let items = baggage([("uberctx-tenant", "acme"), ("x-other", "1"), ("uberctx-", "x")]);
        assert_eq!(items, vec![("tenant".to_owned(), "acme".to_owned())]);
    }
}
