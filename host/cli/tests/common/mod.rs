//! What the CLI's integration tests share: the workspace, a one-filter configuration, and the
//! test filters built by the binary under test.

#![allow(dead_code, reason = "each test binary uses the part it needs")]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A configuration serving `/` with a direct response of `body` through the filter at `module`
/// (plugin `reader`, configured with `configuration`), on a free port, with `extra` spliced into
/// the HTTP connection manager; no admin API.
pub fn one_filter_config(module: &Path, body: &str, extra: &str, configuration: &str) -> String {
    format!(
        r#"
static_resources:
  listeners:
    - name: ingress
      address:
        socket_address: {{ address: 127.0.0.1, port_value: 0 }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress{extra}
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          direct_response: {{ status: 200, body: {{ inline_string: "{body}" }} }}
                http_filters:
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: reader
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: "{configuration}"
                        vm_config:
                          runtime: envoy.wasm.runtime.v8
                          code: {{ local: {{ filename: {module} }} }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        module = module.display(),
        body = body.escape_default()
    )
}

/// Test filter `name` (under `filters/test-filters`) built into `target/cli-test` by the binary
/// under test, once per test process.
pub fn built_test_filter(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let root = workspace_root();
    let out = root.join(format!("target/cli-test/{name}.wasm"));
    let status = Command::new(env!("CARGO_BIN_EXE_wasmtrace"))
        .arg("build")
        .arg(root.join("filters/test-filters").join(name))
        .arg("-o")
        .arg(&out)
        .arg("--target-dir")
        .arg(root.join("target/wasm-filters"))
        .output()
        .expect("run wasmtrace build");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    built.push((name.to_owned(), out.clone()));
    out
}
