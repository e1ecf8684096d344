//! W3C Trace Context Level 2: `traceparent` and `tracestate`, following the processing model
//! exactly — any invalid `traceparent` restarts the trace (and discards `tracestate`); an invalid
//! `tracestate` is dropped whole; multiple `tracestate` headers are combined in order.

use crate::ids::{ascii, parse_lower_hex, write_hex};
use crate::{SpanContext, SpanId, TraceId};

/// `sampled` trace flag.
pub const FLAG_SAMPLED: u8 = 0x01;
/// Level 2 `random` trace flag: the right-most 7 bytes of the trace id are random.
pub const FLAG_RANDOM: u8 = 0x02;
/// Most list members a `tracestate` may carry.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

fn trim_ows(value: &str) -> &str {
    value.trim_matches(|c| c == ' ' || c == '\t')
}

/// Parses the `traceparent` header values (all of them: more than one is invalid).
/// Returns `(trace_id, parent_id, flags)`.
pub fn parse_traceparent(values: &[&str]) -> Option<(TraceId, SpanId, u8)> {
    let [value] = values else { return None };
    let value = trim_ows(value);
    let bytes = value.as_bytes();
    // Non-ASCII is invalid anyway, and slicing below is by byte offset.
    if bytes.len() < 55 || !value.is_ascii() {
        return None;
    }
    let version = parse_lower_hex::<1>(&value[0..2])?[0];
    if version == 0xff {
        return None;
    }
    if version == 0 && bytes.len() != 55 {
        return None;
    }
    // A future version may append fields after a dash; only the first four are read.
    if bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let trace_id = TraceId(parse_lower_hex::<16>(&value[3..35])?);
    let parent_id = SpanId(parse_lower_hex::<8>(&value[36..52])?);
    let flags = parse_lower_hex::<1>(&value[53..55])?[0];
    if trace_id.is_zero() || parent_id.is_zero() {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// Level 2 key grammar: `( lcalpha / DIGIT ) 0*255 ( lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@" )`
/// (Level 1's `tenant@system` split is gone; `@` may appear anywhere after the first character).
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@'))
}

fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter().all(|c| (0x20..=0x7e).contains(c) && *c != b',' && *c != b'=')
        && b.last() != Some(&b' ')
}

/// Parses every `tracestate` header value, combined in order. `None` when the result is invalid
/// as a whole (a bad member, or more than 32 members). A repeated key keeps its first value (the
/// specification lets a participant discard duplicates).
pub fn parse_tracestate(values: &[&str]) -> Option<Vec<(String, String)>> {
    let mut members: Vec<(String, String)> = Vec::new();
    for member in values.iter().flat_map(|v| v.split(',')) {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !valid_key(key) || !valid_value(value) {
            return None;
        }
        if !members.iter().any(|(k, _)| k == key) {
            // Past the limit the whole list is invalid: stop here, so a header of thousands of
            // members costs no more than 33 (the duplicate check is quadratic in the members).
            if members.len() == MAX_TRACESTATE_MEMBERS {
                return None;
            }
            members.push((key.to_owned(), value.to_owned()));
        }
    }
    Some(members)
}

/// Extracts a context from the `traceparent` and `tracestate` header values.
pub fn extract(traceparent: &[&str], tracestate: &[&str]) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(traceparent)?;
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: Some(flags & FLAG_SAMPLED != 0),
        random: flags & FLAG_RANDOM != 0,
        tracestate: parse_tracestate(tracestate).unwrap_or_default(),
    })
}

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// The `traceparent` for a span (version 00), on the stack: what a filter writes on every
/// request, so it is made without an allocation.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool, random: bool) -> [u8; TRACEPARENT_LEN] {
    let flags = (if sampled { FLAG_SAMPLED } else { 0 }) | (if random { FLAG_RANDOM } else { 0 });
    let mut out = [b'-'; TRACEPARENT_LEN];
    out[..2].copy_from_slice(b"00");
    write_hex(&trace_id.0, &mut out[3..35]);
    write_hex(&span_id.0, &mut out[36..52]);
    write_hex(&[flags], &mut out[53..55]);
    out
}

/// The `traceparent` for a span (version 00).
pub fn format_traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool, random: bool) -> String {
    ascii(&traceparent(trace_id, span_id, sampled, random)).to_owned()
}

/// The `tracestate` header value, or `None` when there is nothing to send.
pub fn format_tracestate(members: &[(String, String)]) -> Option<String> {
    if members.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(members.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (k, v) in members {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    Some(out)
}

/// Whether the `tracestate` list `members` (as [`normalize_tracestate`] writes it) has `key`.
fn has_member(members: &str, key: &str) -> bool {
    members.split(',').any(|member| member.split_once('=').is_some_and(|(k, _)| k == key))
}

/// The `tracestate` to send on for the received header values, written into `out` (cleared
/// first): exactly `format_tracestate(&parse_tracestate(values)?)`, without building the
/// members. Returns false, with `out` empty, when the combined value is invalid (it is then
/// dropped whole); true otherwise (`out` is empty when there is nothing to send).
pub fn normalize_tracestate<S: AsRef<str>>(values: impl IntoIterator<Item = S>, out: &mut String) -> bool {
    out.clear();
    let mut members = 0;
    for value in values {
        if !normalize_value(value.as_ref(), out, &mut members) {
            out.clear();
            return false;
        }
    }
    if members > MAX_TRACESTATE_MEMBERS {
        out.clear();
        return false;
    }
    true
}

/// Appends the members of one `tracestate` value to `out`; false when one is invalid.
fn normalize_value(value: &str, out: &mut String, members: &mut usize) -> bool {
    for member in value.split(',') {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        let valid = member.split_once('=').filter(|(key, value)| valid_key(key) && valid_value(value));
        let Some((key, value)) = valid else { return false };
        // Keys and values cannot hold `,` or `=`, so the list written so far splits back into
        // its members.
        if !has_member(out, key) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(value);
            *members += 1;
            // Past the limit the whole list is invalid: stop at once, so a client's header of
            // thousands of members costs no more than 33 (`has_member` scans what is written).
            if *members > MAX_TRACESTATE_MEMBERS {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_read_with_its_flags() {
        let (trace, parent, flags) = parse_traceparent(&[VALID]).expect("valid");
        assert_eq!(trace.to_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parent.to_hex(), "b7ad6b7169203331");
        assert_eq!(flags, 1);
        assert!(parse_traceparent(&[&format!(" \t{VALID}\t ")]).is_some(), "OWS is trimmed");
    }

    #[test]
    fn every_invalid_traceparent_form_restarts_the_trace() {
        let cases = [
            VALID.replace("00-", "ff-"),
            VALID.to_uppercase(),
            VALID.replace("0af7651916cd43dd8448eb211c80319c", "00000000000000000000000000000000"),
            VALID.replace("b7ad6b7169203331", "0000000000000000"),
            format!("{VALID}-extra"),
            VALID[..54].to_owned(),
            VALID.replace('-', "_"),
            VALID.replace("b7ad6b7169203331", "b7ad6b716920333g"),
            VALID.replace("-01", "-1"),
            format!("{VALID}."),
        ];
        for case in &cases {
            assert!(parse_traceparent(&[case]).is_none(), "accepted {case:?}");
        }
        assert!(parse_traceparent(&[VALID, VALID]).is_none(), "duplicated traceparent headers");
        assert!(parse_traceparent(&[]).is_none());
    }

    #[test]
    fn future_versions_are_read_by_their_first_four_fields() {
        let future = VALID.replacen("00-", "cc-", 1);
        assert!(parse_traceparent(&[&future]).is_some());
        assert!(parse_traceparent(&[&format!("{future}-what-the-future-holds")]).is_some());
        assert!(parse_traceparent(&[&format!("{future}what")]).is_none());
    }

    #[test]
    fn tracestate_headers_combine_in_order_and_invalid_ones_are_dropped_whole() {
        assert_eq!(
            parse_tracestate(&["foo=1 , ", " bar=2,,baz@tenant=3"]),
            Some(vec![("foo".into(), "1".into()), ("bar".into(), "2".into()), ("baz@tenant".into(), "3".into())])
        );
        assert_eq!(
            parse_tracestate(&["foo=1,foo=2", "foo=3"]),
            Some(vec![("foo".into(), "1".into())]),
            "duplicates keep the first"
        );
        assert_eq!(parse_tracestate(&["1foo@@bar@=x"]).map(|m| m.len()), Some(1), "Level 2 keys");
        for bad in ["Foo=1", "foo", "foo=", "foo=a,b", "@foo=bar", "foo=bar=baz", "foo bar=1", "foo.bar=1"] {
            assert_eq!(parse_tracestate(&[bad]), None, "accepted {bad:?}");
        }
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_tracestate(&[&members.join(",")]).map(|m| m.len()), Some(32));
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_tracestate(&[&too_many.join(",")]), None);
        let long_value = "v".repeat(256);
        assert!(parse_tracestate(&[&format!("k={long_value}")]).is_some());
        assert!(parse_tracestate(&[&format!("k={long_value}v")]).is_none());
    }

    #[test]
    fn normalizing_is_parsing_then_formatting() {
        let cases: [&[&str]; 7] = [
            &["foo=1 , ", " bar=2,,baz@tenant=3"],
            &["foo=1,foo=2", "foo=3"],
            &["Foo=1"],
            &[],
            &["", " , "],
            &["a=1", "b=2,a=3", "c=4"],
            &["foo=bar=baz"],
        ];
        let mut out = String::from("stale");
        for values in cases {
            let expected = parse_tracestate(values).map(|m| format_tracestate(&m).unwrap_or_default());
            let valid = normalize_tracestate(values.iter().copied(), &mut out);
            assert_eq!(valid.then(|| out.clone()), expected, "{values:?}");
        }
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(!normalize_tracestate([too_many.join(",").as_str()], &mut out));
        assert!(out.is_empty());
        // A client's header of thousands of members (refused at the 33rd, so its cost stays
        // that of 33), and thousands of repeats of one (kept once).
        let flood: Vec<String> = (0..20_000).map(|i| format!("k{i}=v")).collect();
        assert!(!normalize_tracestate([flood.join(",").as_str()], &mut out));
        assert_eq!(parse_tracestate(&[&flood.join(",")]), None);
        let repeats = vec!["k=v"; 20_000].join(",");
        assert!(normalize_tracestate([repeats.as_str()], &mut out));
        assert_eq!(out, "k=v");
    }

    #[test]
    fn formatting_round_trips() {
        let (trace, parent, _) = parse_traceparent(&[VALID]).expect("valid");
        assert_eq!(format_traceparent(&trace, &parent, true, false), VALID);
        assert_eq!(format_traceparent(&trace, &parent, true, true), VALID.replace("-01", "-03"));
        assert_eq!(
            format_tracestate(&[("a".into(), "1".into()), ("b".into(), "2".into())]).as_deref(),
            Some("a=1,b=2")
        );
    }
}
