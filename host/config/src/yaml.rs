//! YAML (and JSON, which is YAML) to a JSON value tree.

use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

use crate::tree::ConfigError;

fn error(message: String) -> ConfigError {
    ConfigError { path: "(document)".into(), message, hint: None }
}

/// Parses one YAML document.
pub(crate) fn to_json(text: &str) -> Result<Value, ConfigError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| error(format!("not valid YAML: {e}")))?;
    match docs.as_slice() {
        [] => Err(error("the configuration is empty".into())),
        [doc] => convert(doc, 0),
        _ => Err(error("expected one YAML document, found several".into())),
    }
}

/// Parses a stream of YAML documents (`---`-separated, as `kubectl kustomize` prints them) into
/// JSON values; empty documents are skipped.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, ConfigError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| error(format!("not valid YAML: {e}")))?;
    docs.iter().filter(|doc| !matches!(doc, Yaml::Null)).map(|doc| convert(doc, 0)).collect()
}

/// Deepest nesting of mappings and lists accepted: Envoy's protobuf parser stops at 100, and
/// everything that walks a configuration value later (metadata read by filters on a worker's
/// stack) recurses as deep as it goes.
const MAX_DEPTH: usize = 100;

fn convert(yaml: &Yaml, depth: usize) -> Result<Value, ConfigError> {
    if depth > MAX_DEPTH {
        return Err(error(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::Real(text) => {
            let parsed: f64 = text.parse().map_err(|_| error(format!("`{text}` is not a number")))?;
            Number::from_f64(parsed).map_or(Value::Null, Value::Number)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => {
            Value::Array(items.iter().map(|item| convert(item, depth + 1)).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(hash) => {
            let mut map = Map::new();
            for (k, v) in hash {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(error(format!("unsupported mapping key {other:?}"))),
                };
                map.insert(key, convert(v, depth + 1)?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(error("YAML aliases and invalid values are not supported".into()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_past_envoys_limit_is_refused() {
        let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        assert!(to_json(&deep(MAX_DEPTH)).is_ok());
        let err = to_json(&deep(MAX_DEPTH + 5)).expect_err("too deep");
        assert!(err.message.contains("nested deeper"), "{err}");
    }
}
