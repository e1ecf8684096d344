//! `bootstrap_extensions` with `envoy.bootstrap.wasm`: Wasm services, plugins with a root context
//! and no HTTP stream (ticks, callouts, shared data and queues), as Envoy's
//! `envoy.extensions.wasm.v3.WasmService` configures them.

use crate::model::WasmService;
use crate::tree::{Errors, Node};
use crate::wasm::parse_plugin_config;

const WASM_SERVICE_TYPE: &str = "type.googleapis.com/envoy.extensions.wasm.v3.WasmService";
const HINT: &str = "the one bootstrap extension supported is envoy.bootstrap.wasm (a WasmService)";

/// The Wasm services of `bootstrap_extensions`; any other extension is refused with its path.
pub(crate) fn parse_bootstrap_extensions(extensions: &Node<'_>, errors: &mut Errors) -> Vec<WasmService> {
    let mut services = Vec::new();
    for extension in extensions.items(errors) {
        extension.expect_fields(errors, &["name", "typed_config"], "an extension is a name and a typed_config");
        let Some(typed) = extension.require("typed_config", errors) else { continue };
        if typed.type_url() != Some(WASM_SERVICE_TYPE) {
            typed.error(
                errors,
                format!("`@type` {:?} is not a WasmService", typed.type_url().unwrap_or("")),
                Some(HINT),
            );
            continue;
        }
        typed.expect_fields(errors, &["config", "singleton"], "a WasmService is a PluginConfig and `singleton`");
        let singleton = typed.get("singleton").and_then(|s| s.boolean(errors)).unwrap_or(false);
        if let Some(filter) = typed.require("config", errors).and_then(|config| parse_plugin_config(&config, errors)) {
            services.push(WasmService { filter, singleton });
        }
    }
    services
}
