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
use wasmtrace_trace_core::span::{Attributes, Span, SpanKind, StatusCode, ValueRef};

/// Attributes only the trace filter itself sets (which code made the span): a hand-off's are
/// ignored, so no other filter can pose as another generation.
pub const RESERVED_PREFIX: &str = "wasmtrace.filter.";

/// Adds the attributes the hand-off `bytes` carry to `span` (set, or replacing what is there),
/// but none under [`RESERVED_PREFIX`].
pub fn apply(bytes: &[u8], span: &mut Span) {
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

/// The callouts a filter recorded (`wasmtrace_span::handoff::CALLOUT_SPANS`) as CLIENT spans,
/// children of `request`: at most `MAX_CALLOUT_SPANS`; an entry without a valid span id is left
/// out. No status means the callout was not answered: an error.
pub fn callout_spans(bytes: &[u8], request: &Span) -> Vec<Span> {
    let Ok(serde_json::Value::Array(entries)) = serde_json::from_slice(bytes) else { return Vec::new() };
    entries
        .iter()
        .take(wasmtrace_span::handoff::MAX_CALLOUT_SPANS)
        .filter_map(|entry| {
            let span_id = entry["span_id"].as_str().and_then(span_id)?;
            let mut span = Span {
                trace_id: request.trace_id,
                span_id,
                parent_span_id: Some(request.span_id),
                parent_is_remote: false,
                trace_state: request.trace_state.clone(),
                name: entry["name"].as_str().unwrap_or("callout").to_owned(),
                kind: SpanKind::Client,
                start_unix_nanos: entry["start_unix_nano"].as_u64().unwrap_or(request.start_unix_nanos),
                end_unix_nanos: entry["end_unix_nano"].as_u64().unwrap_or(request.start_unix_nanos),
                attributes: Attributes::default(),
                status: StatusCode::Unset,
                status_message: String::new(),
            };
            if let Some(serde_json::Value::Object(attributes)) = entry.get("attributes") {
                set_all(attributes.clone(), &mut span);
            }
            match entry["status_code"].as_i64() {
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
