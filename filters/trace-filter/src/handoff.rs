//! The tagging filters' hand-off: the [`SPAN_ATTRIBUTES_PROPERTY`](crate::SPAN_ATTRIBUTES_PROPERTY)
//! filter state, a JSON object of attribute names to values (what the tagging filter and the
//! component host's `add-span-attributes` write, and any filter in Envoy may set with
//! `proxy_set_property`).
//!
//! It is read the way `serde_json` reads it into a map — keys in sorted order, a repeated key's
//! last value winning; strings as they are, booleans, integers that fit an `i64` as integers,
//! other numbers as doubles, anything else (`null`, arrays, objects) as its JSON text; nothing at
//! all from a value that is not a JSON object — but the objects the filters write (flat, plain
//! strings, booleans and integers) are read by a scanner that borrows from the bytes instead of
//! building a JSON tree. Anything it does not expect goes to `serde_json`, so the result is the
//! same for every input.

use wasmtrace_trace_core::SpanId;
use wasmtrace_trace_core::span::{Attributes, Event, Span, SpanKind, StatusCode, Value, ValueRef};

/// Attributes only the trace filter itself sets (which code made the span): a hand-off's are
/// ignored, so no other filter can pose as another generation.
pub const RESERVED_PREFIX: &str = "wasmtrace.filter.";

/// Adds the attributes the hand-off `bytes` carry to `span` (set, or replacing what is there),
/// but none under [`RESERVED_PREFIX`]; nothing from one larger than [`MAX_HANDOFF_BYTES`] (the
/// bound the host's `add-span-attributes` keeps too).
pub fn apply(bytes: &[u8], span: &mut Span) {
    if bytes.len() > MAX_HANDOFF_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    match scan(text) {
        Some(mut entries) => {
            // A map's order: sorted by key, the last of equal keys kept (the sort is stable).
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (i, (key, value)) in entries.iter().enumerate() {
                if entries.get(i + 1).is_none_or(|next| next.0 != *key) && !key.starts_with(RESERVED_PREFIX) {
                    span.set(key, *value);
                }
            }
        }
        None => apply_json(text, span),
    }
}

/// Largest hand-off (callout spans, events) the trace filter reads: another filter writes it, and
/// parsing a larger one on every request could cost the request its deadline.
pub const MAX_HANDOFF_BYTES: usize = 64 << 10;
/// Most attributes one callout span or event takes from a hand-off.
const MAX_HANDOFF_ATTRIBUTES: usize = 32;
/// Longest name a callout span or event takes from a hand-off.
const MAX_HANDOFF_NAME: usize = 256;

/// A hand-off's JSON array, if it is one and small enough to read.
fn handoff_array(bytes: &[u8]) -> Vec<serde_json::Value> {
    if bytes.len() > MAX_HANDOFF_BYTES {
        return Vec::new();
    }
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Array(entries)) => entries,
        _ => Vec::new(),
    }
}

/// A hand-off entry's name, cut to [`MAX_HANDOFF_NAME`] bytes (at a character boundary).
fn handoff_name(entry: &serde_json::Value) -> Option<String> {
    let name = entry["name"].as_str().filter(|n| !n.is_empty())?;
    let mut end = name.len().min(MAX_HANDOFF_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Some(name[..end].to_owned())
}

/// A hand-off entry's attributes: at most [`MAX_HANDOFF_ATTRIBUTES`], none under
/// [`RESERVED_PREFIX`].
fn handoff_attributes(entry: &mut serde_json::Value) -> Vec<(String, Value)> {
    let Some(serde_json::Value::Object(attributes)) = entry.get_mut("attributes").map(std::mem::take) else {
        return Vec::new();
    };
    attributes
        .into_iter()
        .filter(|(key, _)| !key.starts_with(RESERVED_PREFIX))
        .take(MAX_HANDOFF_ATTRIBUTES)
        .map(|(key, value)| (key, owned_value(&value)))
        .collect()
}

/// The callouts a filter recorded (`wasmtrace_span::handoff::CALLOUT_SPANS`) as CLIENT spans,
/// children of `request`, within the request's time: at most `MAX_CALLOUT_SPANS`, read only from
/// a hand-off of at most [`MAX_HANDOFF_BYTES`]; an entry without a valid span id of its own (not
/// the request's, not another entry's) is left out. No status means the callout was not
/// answered: an error; a status outside 100–599 is no status.
pub fn callout_spans(bytes: &[u8], request: &Span) -> Vec<Span> {
    let mut seen = vec![request.span_id];
    let (first, last) = (request.start_unix_nanos, request.end_unix_nanos.max(request.start_unix_nanos));
    handoff_array(bytes)
        .into_iter()
        .take(wasmtrace_span::handoff::MAX_CALLOUT_SPANS)
        .filter_map(|mut entry| {
            let span_id = entry["span_id"].as_str().and_then(span_id).filter(|id| !seen.contains(id))?;
            seen.push(span_id);
            let start = entry["start_unix_nano"].as_u64().unwrap_or(first).clamp(first, last);
            let end = entry["end_unix_nano"].as_u64().unwrap_or(last).clamp(start, last);
            let mut span = Span {
                trace_id: request.trace_id,
                span_id,
                parent_span_id: Some(request.span_id),
                parent_is_remote: false,
                trace_state: request.trace_state.clone(),
                name: handoff_name(&entry).unwrap_or_else(|| "callout".to_owned()),
                kind: SpanKind::Client,
                start_unix_nanos: start,
                end_unix_nanos: end,
                attributes: Attributes::default(),
                events: Vec::new(),
                status: StatusCode::Unset,
                status_message: String::new(),
            };
            for (key, value) in handoff_attributes(&mut entry) {
                span.set(&key, &value);
            }
            match entry["status_code"].as_i64().filter(|code| (100..=599).contains(code)) {
                Some(code) => {
                    span.set("http.response.status_code", code);
                    if code >= 400 {
                        span.status = StatusCode::Error;
                        span.set("error.type", code.to_string().as_str());
                    }
                }
                None => {
                    span.status = StatusCode::Error;
                    span.status_message = "no answer".into();
                    span.set("error.type", "no_response");
                }
            }
            Some(span)
        })
        .collect()
}

/// The events filters handed over (`wasmtrace_span::handoff::EVENTS`): at most `MAX_EVENTS`, read
/// only from a hand-off of at most [`MAX_HANDOFF_BYTES`], names cut to 256 bytes, attributes as
/// given (at most 32, none under [`RESERVED_PREFIX`]); an entry without a name is left out.
pub fn events(bytes: &[u8]) -> Vec<Event> {
    handoff_array(bytes)
        .into_iter()
        .take(wasmtrace_span::handoff::MAX_EVENTS)
        .filter_map(|mut entry| {
            let name = handoff_name(&entry)?;
            let time_unix_nanos = entry["time_unix_nano"].as_u64().unwrap_or(0);
            Some(Event { time_unix_nanos, name, attributes: handoff_attributes(&mut entry) })
        })
        .collect()
}

/// A JSON value as an attribute value, as [`apply_json`] reads it.
fn owned_value(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Double(n.as_f64().unwrap_or(0.0)),
        },
        other => Value::String(other.to_string()),
    }
}

/// 16 hex digits, not all zero.
fn span_id(hex: &str) -> Option<SpanId> {
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u64::from_str_radix(hex, 16).ok().filter(|v| *v != 0)?;
    Some(SpanId(value.to_be_bytes()))
}

/// The general case, through `serde_json`.
fn apply_json(text: &str, span: &mut Span) {
    let Ok(serde_json::Value::Object(tags)) = serde_json::from_str(text) else { return };
    set_all(tags, span);
}

/// Sets each of `tags` on `span`, but none under [`RESERVED_PREFIX`].
fn set_all(tags: serde_json::Map<String, serde_json::Value>, span: &mut Span) {
    for (key, value) in tags.into_iter().filter(|(key, _)| !key.starts_with(RESERVED_PREFIX)) {
        match value {
            serde_json::Value::String(s) => span.set(&key, &s),
            serde_json::Value::Bool(b) => span.set(&key, b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => span.set(&key, i),
                None => span.set(&key, ValueRef::Double(n.as_f64().unwrap_or(0.0))),
            },
            other => span.set(&key, other.to_string().as_str()),
        }
    }
}

/// JSON's insignificant whitespace.
fn skip_whitespace(text: &[u8], at: &mut usize) {
    while text.get(*at).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        *at += 1;
    }
}

/// A string without escapes or control characters, borrowed; `None` for anything else.
fn plain_string<'a>(text: &'a str, at: &mut usize) -> Option<&'a str> {
    let bytes = text.as_bytes();
    if bytes.get(*at) != Some(&b'"') {
        return None;
    }
    let start = *at + 1;
    let len = bytes.get(start..)?.iter().position(|b| *b == b'"' || *b == b'\\' || *b < 0x20)?;
    let end = start + len;
    if bytes[end] != b'"' {
        return None;
    }
    *at = end + 1;
    // Both ends are at ASCII bytes, so they are character boundaries.
    text.get(start..end)
}

/// An integer in JSON's grammar that fits an `i64` (and is not `-0`, which `serde_json` reads
/// as a double); `None` for anything else.
fn integer(text: &str, at: &mut usize) -> Option<i64> {
    let bytes = text.as_bytes();
    let start = *at;
    let digits_from = start + usize::from(bytes.get(start) == Some(&b'-'));
    let len = bytes.get(digits_from..)?.iter().take_while(|b| b.is_ascii_digit()).count();
    let digits = bytes.get(digits_from..digits_from + len)?;
    let follows = bytes.get(digits_from + len);
    if digits.is_empty() || (digits[0] == b'0' && len > 1) || follows.is_some_and(|b| matches!(b, b'.' | b'e' | b'E')) {
        return None;
    }
    let number = text.get(start..digits_from + len)?;
    if number == "-0" {
        return None;
    }
    *at = digits_from + len;
    number.parse().ok()
}

fn scan_value<'a>(text: &'a str, at: &mut usize) -> Option<ValueRef<'a>> {
    let rest = text.as_bytes().get(*at..)?;
    if rest.starts_with(b"true") {
        *at += 4;
        Some(ValueRef::Bool(true))
    } else if rest.starts_with(b"false") {
        *at += 5;
        Some(ValueRef::Bool(false))
    } else if rest.first() == Some(&b'"') {
        plain_string(text, at).map(ValueRef::String)
    } else {
        integer(text, at).map(ValueRef::Int)
    }
}

/// The entries of a flat object of plain strings, booleans and integers, in their order; `None`
/// when the text is anything else (or not JSON at all).
fn scan(text: &str) -> Option<Vec<(&str, ValueRef<'_>)>> {
    let bytes = text.as_bytes();
    let mut at = 0;
    skip_whitespace(bytes, &mut at);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut entries = Vec::new();
    skip_whitespace(bytes, &mut at);
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            skip_whitespace(bytes, &mut at);
            let key = plain_string(text, &mut at)?;
            skip_whitespace(bytes, &mut at);
            if bytes.get(at) != Some(&b':') {
                return None;
            }
            at += 1;
            skip_whitespace(bytes, &mut at);
            entries.push((key, scan_value(text, &mut at)?));
            skip_whitespace(bytes, &mut at);
            match bytes.get(at) {
                Some(b',') => at += 1,
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    skip_whitespace(bytes, &mut at);
    (at == bytes.len()).then_some(entries)
}

#[cfg(test)]
mod tests {
    use wasmtrace_trace_core::span::{Attributes, SpanKind, StatusCode};
    use wasmtrace_trace_core::{SpanId, TraceId};

    use super::*;

    fn span() -> Span {
        let mut span = Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: None,
            parent_is_remote: false,
            trace_state: String::new(),
            name: String::new(),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Attributes::default(),
            status: StatusCode::Unset,
            events: Vec::new(),
            status_message: String::new(),
        };
        span.set("http.request.method", "GET");
        span
    }

    fn both(text: &str) -> (Span, Span) {
        let (mut fast, mut general) = (span(), span());
        apply(text.as_bytes(), &mut fast);
        apply_json(text, &mut general);
        (fast, general)
    }

    #[test]
    fn what_the_tagging_filter_writes_is_scanned_without_serde() {
        let text = r#"{"gallery.tenant":"acme","a.flag":true, "n": -42 ,"http.request.method":"POST","z":false}"#;
        assert!(scan(text).is_some());
        let (fast, general) = both(text);
        assert_eq!(fast, general);
        let attributes: Vec<_> = fast.attributes.iter().collect();
        assert_eq!(
            attributes,
            [
                ("http.request.method", ValueRef::String("POST")),
                ("a.flag", ValueRef::Bool(true)),
                ("gallery.tenant", ValueRef::String("acme")),
                ("n", ValueRef::Int(-42)),
                ("z", ValueRef::Bool(false)),
            ],
            "replaced in place, then the new keys in sorted order"
        );
    }

    #[test]
    fn callout_spans_are_children_within_the_request_and_bounded() {
        let mut request = span();
        request.start_unix_nanos = 1_000;
        request.end_unix_nanos = 9_000;
        let own = hex16(request.span_id);
        let text = format!(
            r#"[{{"span_id":"00000000000000aa","name":"GET auth","start_unix_nano":5,"end_unix_nano":99999,"status_code":200,"attributes":{{"wasmtrace.filter.generation":7,"auth.user":"ada"}}}},
               {{"span_id":"00000000000000aa","name":"again"}},
               {{"span_id":"{own}","name":"posing as the request"}},
               {{"span_id":"00000000000000bb","status_code":99999}},
               {{"span_id":"zz"}}]"#
        );
        let spans = callout_spans(text.as_bytes(), &request);
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let (auth, unanswered) = (&spans[0], &spans[1]);
        assert_eq!((auth.parent_span_id, auth.kind), (Some(request.span_id), SpanKind::Client));
        assert_eq!((auth.start_unix_nanos, auth.end_unix_nanos), (1_000, 9_000), "clamped to the request");
        assert_eq!(auth.get("auth.user"), Some(ValueRef::String("ada")));
        assert_eq!(auth.get("wasmtrace.filter.generation"), None);
        assert_eq!(auth.get("http.response.status_code"), Some(ValueRef::Int(200)));
        assert_eq!((unanswered.name.as_str(), unanswered.status), ("callout", StatusCode::Error));
        let huge = format!(r#"[{{"span_id":"00000000000000cc","name":"{}"}}]"#, "x".repeat(MAX_HANDOFF_BYTES));
        assert!(callout_spans(huge.as_bytes(), &request).is_empty(), "too large to read");
        let long = format!(r#"[{{"name":"{}","time_unix_nano":3}}]"#, "é".repeat(300));
        let events = events(long.as_bytes());
        assert_eq!(events[0].name.len(), 256, "cut at a character boundary");
    }

    fn hex16(id: SpanId) -> String {
        id.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_hand_off_too_large_to_read_adds_nothing() {
        let mut read = span();
        apply(format!(r#"{{"tag.a":"{}"}}"#, "x".repeat(MAX_HANDOFF_BYTES - 20)).as_bytes(), &mut read);
        assert!(read.get("tag.a").is_some(), "at the bound: read");
        let mut skipped = span();
        apply(format!(r#"{{"tag.a":"{}"}}"#, "x".repeat(MAX_HANDOFF_BYTES)).as_bytes(), &mut skipped);
        assert_eq!(skipped.get("tag.a"), None, "past it: not even scanned");
    }

    #[test]
    fn no_hand_off_can_say_which_code_made_the_span() {
        for text in [
            r#"{"wasmtrace.filter.generation":99,"wasmtrace.filter.sha256":"00","ok":"yes"}"#,
            r#"{"wasmtrace.filter.generation":{"nested":1},"ok":"yes"}"#,
        ] {
            let (fast, general) = both(text);
            assert_eq!(fast, general, "{text}");
            assert_eq!(fast.get("wasmtrace.filter.generation"), None, "{text}");
            assert_eq!(fast.get("wasmtrace.filter.sha256"), None, "{text}");
            assert_eq!(fast.get("ok"), Some(ValueRef::String("yes")), "{text}");
        }
    }

    #[test]
    fn every_input_reads_as_serde_json_reads_it() {
        let cases = [
            r#"{}"#,
            r#" { } "#,
            r#"{"a":"1","a":"2"}"#,
            r#"{"b":1,"a":2,"b":3}"#,
            r#"{"esc":"a\"b\\c\u00e9\n"}"#,
            r#"{"f":1.5,"e":1e3,"big":18446744073709551615,"neg":-9223372036854775808}"#,
            r#"{"zero":0,"negzero":-0,"lead":01}"#,
            r#"{"n":null,"arr":[1,"x"],"obj":{"k":true}}"#,
            r#"{"ctl":"a	b"}"#,
            r#"{"u":"caf\u00e9 ✓"}"#,
            r#"[1,2]"#,
            r#""text""#,
            r#"{"a":1,}"#,
            r#"{"a":1} trailing"#,
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"a":-}"#,
            "",
            "{",
        ];
        for text in cases {
            let (fast, general) = both(text);
            assert_eq!(fast, general, "{text}");
        }
        let mut untouched = span();
        apply(b"{\"a\":\"\xff\"}", &mut untouched);
        assert_eq!(untouched, span(), "not UTF-8: nothing");
    }
}
