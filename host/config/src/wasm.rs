//! `envoy.filters.http.wasm`: Envoy's `PluginConfig`, directly or wrapped in a `TypedStruct`.

use std::path::PathBuf;

use base64::Engine as _;

use crate::model::{FailurePolicy, WasmFilter};
use crate::tree::{Errors, Node};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const TYPED_STRUCTS: [&str; 2] =
    ["type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct"];
/// Envoy's runtime names; all run on the host's wasmtime.
const RUNTIMES: [&str; 4] =
    ["envoy.wasm.runtime.v8", "envoy.wasm.runtime.wasmtime", "envoy.wasm.runtime.wamr", "envoy.wasm.runtime.wavm"];

pub(crate) fn is_wasm_filter(name: &str, typed: &Node<'_>) -> bool {
    let type_url = typed.type_url();
    name == "envoy.filters.http.wasm"
        || type_url == Some(WASM_TYPE)
        || (type_url.is_some_and(|t| TYPED_STRUCTS.contains(&t))
            && typed.get("type_url").and_then(|t| t.value().as_str().map(str::to_owned)).as_deref() == Some(WASM_TYPE))
}

pub(crate) fn parse_wasm_filter(typed: &Node<'_>, errors: &mut Errors) -> Option<WasmFilter> {
    let wasm = match typed.type_url() {
        Some(t) if t == WASM_TYPE => {
            typed.expect_fields(errors, &["config"], "the Wasm filter takes a PluginConfig under `config`");
            typed.clone()
        }
        Some(t) if TYPED_STRUCTS.contains(&t) => {
            typed.expect_fields(errors, &["type_url", "value"], "a TypedStruct is a type_url and a value");
            let value = typed.require("value", errors)?;
            value.expect_fields(errors, &["config"], "the Wasm filter takes a PluginConfig under `config`");
            value
        }
        _ => {
            typed.error(errors, "`@type` must be the Wasm filter", Some(WASM_TYPE));
            return None;
        }
    };
    parse_plugin_config(&wasm.require("config", errors)?, errors)
}

/// Envoy's `envoy.extensions.wasm.v3.PluginConfig` (a filter's or a Wasm service's `config`).
pub(crate) fn parse_plugin_config(config: &Node<'_>, errors: &mut Errors) -> Option<WasmFilter> {
    config.expect_fields(
        errors,
        &["name", "root_id", "vm_config", "configuration", "fail_open", "failure_policy"],
        "a PluginConfig is a name, root_id, vm_config, configuration and failure policy",
    );
    let name = config.get("name").and_then(|n| n.string(errors)).unwrap_or_default();
    let root_id = config.get("root_id").and_then(|n| n.string(errors)).unwrap_or_default();
    let plugin_configuration = config.get("configuration").and_then(|c| any_bytes(&c, errors)).unwrap_or_default();
    let fail_open = config.get("fail_open").and_then(|f| f.boolean(errors)).unwrap_or(false);
    let failure_policy = match config.get("failure_policy") {
        Some(policy) => {
            match policy.enumeration(errors, &["UNSPECIFIED", "FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"]).as_deref() {
                Some("FAIL_OPEN") => FailurePolicy::FailOpen,
                // The host always reloads a failed VM; FAIL_RELOAD's stream answer is FAIL_CLOSED's.
                Some(_) | None if fail_open => FailurePolicy::FailOpen,
                _ => FailurePolicy::FailClosed,
            }
        }
        None if fail_open => FailurePolicy::FailOpen,
        None => FailurePolicy::FailClosed,
    };

    let vm = config.require("vm_config", errors)?;
    vm.expect_fields(
        errors,
        &["vm_id", "runtime", "code", "configuration", "environment_variables"],
        "a VmConfig is a vm_id, runtime, code, configuration and environment_variables",
    );
    let vm_id = vm.get("vm_id").and_then(|n| n.string(errors)).unwrap_or_default();
    let runtime = vm.require("runtime", errors).and_then(|r| r.enumeration(errors, &RUNTIMES)).unwrap_or_default();
    let vm_configuration = vm.get("configuration").and_then(|c| any_bytes(&c, errors)).unwrap_or_default();
    let environment = vm.get("environment_variables").map(|e| environment(&e, errors)).unwrap_or_default();
    let module_path = vm.require("code", errors).and_then(|code| {
        code.expect_fields(errors, &["local"], "code is loaded from a local file");
        let local = code.require("local", errors)?;
        local.expect_fields(errors, &["filename"], "local code is a filename");
        local.require("filename", errors)?.string(errors).map(PathBuf::from)
    });
    Some(WasmFilter {
        name,
        root_id,
        vm_id,
        runtime,
        module_path: module_path?,
        vm_configuration,
        plugin_configuration,
        environment,
        failure_policy,
    })
}

/// The bytes a filter sees for an `Any` configuration: `StringValue` and `BytesValue` raw,
/// `Struct` as its JSON text (as Envoy passes them).
fn any_bytes(any: &Node<'_>, errors: &mut Errors) -> Option<Vec<u8>> {
    const HINT: &str = "use google.protobuf.StringValue, BytesValue or Struct";
    let value = any.get("value");
    match any.type_url() {
        Some("type.googleapis.com/google.protobuf.StringValue") => {
            any.expect_fields(errors, &["value"], HINT);
            Some(value.and_then(|v| v.string(errors)).unwrap_or_default().into_bytes())
        }
        Some("type.googleapis.com/google.protobuf.BytesValue") => {
            any.expect_fields(errors, &["value"], HINT);
            let encoded = value.as_ref().and_then(|v| v.string(errors)).unwrap_or_default();
            match base64::engine::general_purpose::STANDARD.decode(encoded.as_bytes()) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    any.error(errors, format!("BytesValue is not base64: {e}"), None);
                    None
                }
            }
        }
        Some("type.googleapis.com/google.protobuf.Struct") => {
            any.expect_fields(errors, &["value"], HINT);
            let json = value.map(|v| v.value().clone()).unwrap_or_else(|| serde_json::json!({}));
            serde_json::to_vec(&json).ok()
        }
        Some(other) => {
            any.error(errors, format!("configuration type `{other}` is not supported"), Some(HINT));
            None
        }
        None => {
            any.error(errors, "configuration needs an `@type`", Some(HINT));
            None
        }
    }
}

fn environment(env: &Node<'_>, errors: &mut Errors) -> Vec<(String, String)> {
    env.expect_fields(errors, &["host_env_keys", "key_values"], "environment is host_env_keys and key_values");
    let mut vars = Vec::new();
    for key in env.get("host_env_keys").map(|k| k.items(errors)).unwrap_or_default() {
        if let Some(key) = key.string(errors)
            && let Ok(value) = std::env::var(&key)
        {
            vars.push((key, value));
        }
    }
    if let Some(pairs) = env.get("key_values") {
        match pairs.value().as_object() {
            Some(object) => {
                for (k, v) in object {
                    match v.as_str() {
                        Some(v) => vars.push((k.clone(), v.to_owned())),
                        None => pairs.error(errors, format!("value of `{k}` must be a string"), None),
                    }
                }
            }
            None => pairs.error(errors, "expected a mapping of names to values", None),
        }
    }
    vars
}
