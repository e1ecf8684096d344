//! Walking the parsed document with the YAML path of every value at hand, and collecting every
//! error with that path.

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

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

/// proto3 JSON accepts `lowerCamelCase` as well as the proto field name.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
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

    /// The field `key` (either spelling), if present and not null.
    pub fn get(&self, key: &str) -> Option<Node<'a>> {
        let object = self.value.as_object()?;
        object
            .iter()
            .find(|(k, v)| snake_case(k) == key && !v.is_null())
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

    /// Checks this is a mapping whose keys are all in `allowed`; reports each other key.
    pub fn expect_fields(&self, errors: &mut Errors, allowed: &[&str], hint: &str) {
        let Some(object) = self.value.as_object() else {
            self.error(errors, "expected a mapping", None);
            return;
        };
        for key in object.keys() {
            let normal = snake_case(key);
            if normal == "@type" || allowed.contains(&normal.as_str()) {
                continue;
            }
            errors.push(
                self.child_path(key),
                "is not supported by wasmtrace".into(),
                Some(format!("{hint}; supported here: {}", allowed.join(", "))),
            );
        }
    }

    /// The elements of a sequence.
    pub fn items(&self, errors: &mut Errors) -> Vec<Node<'a>> {
        match self.value.as_array() {
            Some(items) => {
                items.iter().enumerate().map(|(i, v)| Node { value: v, path: format!("{}[{i}]", self.path) }).collect()
            }
            None => {
                self.error(errors, "expected a list", None);
                Vec::new()
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

    pub fn boolean(&self, errors: &mut Errors) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" || s == "false" => Some(s == "true"),
            _ => {
                self.error(errors, "expected true or false", None);
                None
            }
        }
    }

    pub fn unsigned(&self, errors: &mut Errors, max: u64) -> Option<u64> {
        let parsed = match self.value {
            Value::Number(n) => n.as_u64(),
            // proto3 JSON writes 64-bit integers as strings.
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        match parsed.filter(|n| *n <= max) {
            Some(n) => Some(n),
            None => {
                self.error(errors, format!("expected a whole number from 0 to {max}"), None);
                None
            }
        }
    }

    /// A `google.protobuf.Duration`: `"1.5s"` or `{seconds, nanos}`.
    pub fn duration(&self, errors: &mut Errors) -> Option<Duration> {
        let parsed = match self.value {
            Value::String(s) => s
                .strip_suffix('s')
                .and_then(|secs| secs.trim().parse::<f64>().ok())
                .and_then(|secs| Duration::try_from_secs_f64(secs).ok()),
            Value::Object(o) => {
                let seconds = o.get("seconds").and_then(|s| s.as_u64().or_else(|| s.as_str()?.parse().ok()));
                let nanos = o.get("nanos").and_then(Value::as_u64).unwrap_or(0);
                seconds.and_then(|s| Duration::from_secs(s).checked_add(Duration::from_nanos(nanos)))
            }
            _ => None,
        };
        // google.protobuf.Duration's own range: about 10,000 years.
        const MAX_SECONDS: u64 = 315_576_000_000;
        match parsed {
            Some(d) if d.as_secs() <= MAX_SECONDS => Some(d),
            Some(_) => {
                self.error(errors, "is longer than a google.protobuf.Duration can be (315576000000s)", None);
                None
            }
            None => {
                self.error(errors, "expected a duration such as \"0.25s\"", None);
                None
            }
        }
    }

    /// One of `allowed` enum names.
    pub fn enumeration(&self, errors: &mut Errors, allowed: &[&str]) -> Option<String> {
        let value = self.string(errors)?;
        if allowed.contains(&value.as_str()) {
            Some(value)
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
mod tests {
    use super::*;

    #[test]
    fn camel_case_keys_match_snake_case_names() {
        let value: Value = serde_json::json!({"statPrefix": "x", "route_config": {}});
        let root = Node::root(&value);
        assert_eq!(root.get("stat_prefix").map(|n| n.path().to_owned()), Some("statPrefix".into()));
        let mut errors = Errors::default();
        root.expect_fields(&mut errors, &["stat_prefix", "route_config"], "");
        assert!(errors.0.is_empty());
    }

    #[test]
    fn durations_take_both_json_forms() {
        let mut errors = Errors::default();
        for (json, expected) in [
            (serde_json::json!("0.25s"), Duration::from_millis(250)),
            (serde_json::json!("5s"), Duration::from_secs(5)),
            (serde_json::json!({"seconds": 2, "nanos": 500000000}), Duration::from_millis(2500)),
        ] {
            assert_eq!(Node::root(&json).duration(&mut errors), Some(expected));
        }
        let bad = serde_json::json!("5 minutes");
        assert_eq!(Node::root(&bad).duration(&mut errors), None);
        assert_eq!(errors.0.len(), 1);
    }
}
