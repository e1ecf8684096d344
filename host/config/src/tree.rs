//! Walking the parsed document with the YAML path of every value at hand, and collecting every
//! error with that path.
//!
//! The walker reads values the way Envoy's loader does. Envoy turns YAML into JSON and parses it
//! with protobuf's JSON parser in its legacy mode (`MessageUtil::loadFromYaml` →
//! `JsonStringToMessage`, which always sets `allow_legacy_syntax`, with
//! `case_insensitive_enum_parsing`), so in one place here, for every field:
//!
//! - a field is named by its proto name or its JSON name (`stat_prefix` or `statPrefix`);
//!   giving both in one mapping is refused ([`Node::get`], [`Node::expect_fields`]);
//! - a repeated field takes a single value for a one-element list, as the proxy-wasm SDK
//!   examples write `listeners:` with one mapping, and a list nested in the list is spliced into
//!   it ([`Node::items`]);
//! - durations take the proto3 string and the `{seconds, nanos}` form, with Envoy's refusals
//!   ([`crate::duration`]);
//! - enum names match in any letter case; booleans also come as the strings protobuf reads;
//!   integers as whole numbers, in strings too.

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::duration::{DurationError, ProtoDuration};

/// One problem in a configuration: where, what, and what to do instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path of the offending field, e.g. `static_resources.listeners[0].name`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What is supported instead.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(f, "{count} configuration error{}:", if count == 1 { "" } else { "s" })?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

/// The errors collected while walking a document.
#[derive(Default)]
pub(crate) struct Errors(Vec<ConfigError>);

impl Errors {
    pub fn push(&mut self, path: String, message: String, hint: Option<String>) {
        self.0.push(ConfigError { path, message, hint });
    }

    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() { Ok(value) } else { Err(ConfigErrors(self.0)) }
    }
}

/// The JSON name protoc gives the proto field `field`: each `_` dropped and the character after
/// it upper-cased (`stat_prefix` → `statPrefix`, `http2_protocol_options` →
/// `http2ProtocolOptions`). A name without `_` (a map key such as a type name) is its own JSON
/// name.
fn json_name(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `key` names the proto field `field` in either spelling.
fn names(key: &str, field: &str) -> bool {
    key == field || key == json_name(field)
}

/// A whole number as protobuf's JSON parser reads one into an integer field: a JSON integer, a
/// JSON number without a fractional part (within 2^53), or a string holding an integer (no
/// spaces).
fn integer(value: &Value) -> Option<i128> {
    // The largest integer a double holds exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Some(i128::from(i)),
            (None, Some(u), _) => Some(i128::from(u)),
            #[allow(clippy::cast_possible_truncation, reason = "whole and within 2^53, so exact")]
            (None, None, Some(f)) if f.fract() == 0.0 && f.abs() <= EXACT => Some(f as i128),
            _ => None,
        },
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A value in the document and its path.
#[derive(Clone)]
pub(crate) struct Node<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Node<'a> {
    pub fn root(value: &'a Value) -> Self {
        Self { value, path: String::new() }
    }

    pub fn value(&self) -> &'a Value {
        self.value
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// Reports an error at this node.
    pub fn error(&self, errors: &mut Errors, message: impl Into<String>, hint: Option<&str>) {
        let path = if self.path.is_empty() { "(document)".to_owned() } else { self.path.clone() };
        errors.push(path, message.into(), hint.map(str::to_owned));
    }

    /// The field `key` (its proto name or its JSON name), if present and not null.
    pub fn get(&self, key: &str) -> Option<Node<'a>> {
        let object = self.value.as_object()?;
        let camel = json_name(key);
        object
            .iter()
            .find(|(k, v)| (k.as_str() == key || **k == camel) && !v.is_null())
            .map(|(k, v)| Node { value: v, path: self.child_path(k) })
    }

    /// The field `key`, reporting its absence.
    pub fn require(&self, key: &str, errors: &mut Errors) -> Option<Node<'a>> {
        let found = self.get(key);
        if found.is_none() {
            self.error(errors, format!("`{key}` is required"), None);
        }
        found
    }

    /// Checks this is a mapping whose keys are all in `allowed` (in either spelling); reports
    /// each other key, and each field given in both spellings (Envoy would keep one of them,
    /// whichever its map order puts last).
    pub fn expect_fields(&self, errors: &mut Errors, allowed: &[&str], hint: &str) {
        let Some(object) = self.value.as_object() else {
            self.error(errors, "expected a mapping", None);
            return;
        };
        for key in object.keys() {
            if key == "@type" || allowed.iter().any(|field| names(key, field)) {
                continue;
            }
            errors.push(
                self.child_path(key),
                "is not supported by wasmtrace".into(),
                Some(format!("{hint}; supported here: {}", allowed.join(", "))),
            );
        }
        for field in allowed {
            let camel = json_name(field);
            if camel != *field && object.contains_key(*field) && object.contains_key(&camel) {
                errors.push(
                    self.child_path(&camel),
                    format!("is `{field}` again, in its JSON spelling"),
                    Some("give each field once, as `snake_case` or as `camelCase`".into()),
                );
            }
        }
    }

    /// The elements of a repeated field, as Envoy's parser reads them: a list's items, with a
    /// list nested in it spliced in (`[[a, b], c]` is `[a, b, c]`), or a single value standing
    /// for a one-element list (`listeners:` holding one mapping). A null item is refused: Envoy
    /// would read it as an empty item.
    pub fn items(&self, errors: &mut Errors) -> Vec<Node<'a>> {
        let mut found = Vec::new();
        match self.value {
            Value::Array(_) => self.splice_into(&mut found, errors),
            _ => found.push(self.clone()),
        }
        found
    }

    fn splice_into(&self, found: &mut Vec<Node<'a>>, errors: &mut Errors) {
        for (i, value) in self.value.as_array().into_iter().flatten().enumerate() {
            let item = Node { value, path: format!("{}[{i}]", self.path) };
            match value {
                Value::Array(_) => item.splice_into(found, errors),
                Value::Null => item.error(errors, "is null", Some("remove it, or write the item")),
                _ => found.push(item),
            }
        }
    }

    pub fn string(&self, errors: &mut Errors) -> Option<String> {
        match self.value {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.error(errors, "expected a string", None);
                None
            }
        }
    }

    /// The `@type` of an `Any`.
    pub fn type_url(&self) -> Option<&'a str> {
        self.value.as_object()?.get("@type")?.as_str()
    }

    /// A `bool`: `true`/`false`, or a string protobuf's parser reads as one (`"true"`, `"yes"`,
    /// `"1"`, ... in any case), or YAML 1.1's `on`/`off`, which Envoy's YAML parser reads as
    /// booleans.
    pub fn boolean(&self, errors: &mut Errors) -> Option<bool> {
        const TRUE: [&str; 6] = ["true", "t", "yes", "y", "1", "on"];
        const FALSE: [&str; 6] = ["false", "f", "no", "n", "0", "off"];
        let word = |s: &str, words: &[&str]| words.iter().any(|w| w.eq_ignore_ascii_case(s));
        match self.value {
            Value::Bool(b) => Some(*b),
            Value::String(s) if word(s, &TRUE) => Some(true),
            Value::String(s) if word(s, &FALSE) => Some(false),
            _ => {
                self.error(errors, "expected true or false", None);
                None
            }
        }
    }

    /// An unsigned integer up to `max`: a whole number, also in a string (proto3 JSON writes
    /// 64-bit integers as strings) or written `80.0`.
    pub fn unsigned(&self, errors: &mut Errors, max: u64) -> Option<u64> {
        match integer(self.value).and_then(|n| u64::try_from(n).ok()).filter(|n| *n <= max) {
            Some(n) => Some(n),
            None => {
                self.error(errors, format!("expected a whole number from 0 to {max}"), None);
                None
            }
        }
    }

    /// A `google.protobuf.Duration` Envoy accepts: `"1.5s"` or `{seconds, nanos}` (see
    /// [`crate::duration`]).
    pub fn duration(&self, errors: &mut Errors) -> Option<Duration> {
        let parsed = match self.value {
            Value::String(s) => ProtoDuration::parse(s),
            Value::Object(_) => Ok(self.duration_parts(errors)?),
            Value::Number(_) => Err(DurationError::BareNumber),
            _ => Err(DurationError::NotADuration),
        };
        match parsed.and_then(ProtoDuration::to_std) {
            Ok(duration) => Some(duration),
            Err(e) => {
                self.error(errors, e.to_string(), e.hint());
                None
            }
        }
    }

    /// The `{seconds, nanos}` form: `seconds` an int64, `nanos` an int32.
    fn duration_parts(&self, errors: &mut Errors) -> Option<ProtoDuration> {
        self.expect_fields(errors, &["seconds", "nanos"], "a google.protobuf.Duration is seconds and nanos");
        let part = |key: &str, in_range: fn(i128) -> Option<i64>, kind: &str, errors: &mut Errors| match self.get(key) {
            None => Some(0),
            Some(node) => {
                let parsed = integer(node.value).and_then(in_range);
                if parsed.is_none() {
                    node.error(errors, format!("expected a whole number ({kind})"), None);
                }
                parsed
            }
        };
        let seconds = part("seconds", |n| i64::try_from(n).ok(), "an int64", errors);
        let nanos = part("nanos", |n| i32::try_from(n).ok().map(i64::from), "an int32", errors);
        Some(ProtoDuration { seconds: seconds?, nanos: nanos? })
    }

    /// One of `allowed` enum names, matched in any letter case (Envoy parses enums with
    /// `case_insensitive_enum_parsing`), returned as written in `allowed`.
    pub fn enumeration(&self, errors: &mut Errors, allowed: &[&str]) -> Option<String> {
        let value = self.string(errors)?;
        if let Some(name) = allowed.iter().find(|name| name.eq_ignore_ascii_case(&value)) {
            Some((*name).to_owned())
        } else {
            self.error(
                errors,
                format!("`{value}` is not supported"),
                Some(&format!("use one of: {}", allowed.join(", "))),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
