//! A Rust SDK filter built as the SDK's own CI builds its examples: a `bin` for wasm32-wasip1
//! with `-Z wasi-exec-model=reactor`, which exports `_initialize` and `__main_void` and no
//! `main`. The host runs `_initialize` then `__main_void` (proxy-wasm-cpp-host's start-up), so
//! the SDK's `main` sets the root context up and the filter works.
//!
//! The flag is unstable; stable rustc takes it with `RUSTC_BOOTSTRAP=1`, so the test needs no
//! second toolchain (the SDK's CI uses nightly for the same flag).

use std::path::PathBuf;
use std::process::Command;

use http::StatusCode;

use crate::fixture::client::get;
use crate::fixture::proxy::{bootstrap_yaml, cluster, ingress, route, start, wasm_filter_yaml, workspace_root};
use crate::fixture::upstream::Upstream;

/// Builds `filters/test-filters/reactor-bin` as a reactor module.
fn reactor_module() -> PathBuf {
    let root = workspace_root();
    let target_dir = root.join("target/wasm-filters");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["rustc", "--quiet", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(root.join("filters/test-filters/reactor-bin/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--", "-Z", "wasi-exec-model=reactor"])
        .env("RUSTC_BOOTSTRAP", "1")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the reactor bin failed: {status}");
    target_dir.join("wasm32-wasip1/release/reactor-bin-filter.wasm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_bin_built_as_the_sdk_ci_builds_it_starts_through_main_void() {
    let module = reactor_module();
    let engine = wasmtime::Engine::default();
    let compiled = wasmtime::Module::from_file(&engine, &module).expect("a module");
    let exports: Vec<&str> = compiled.exports().map(|e| e.name()).collect();
    for expected in ["_initialize", "__main_void"] {
        assert!(exports.contains(&expected), "a reactor exports {expected}: {exports:?}");
    }
    for absent in ["main", "_start"] {
        assert!(!exports.contains(&absent), "a reactor bin exports no {absent}: {exports:?}");
    }

    let upstream = Upstream::start();
    let yaml = bootstrap_yaml(
        &[wasm_filter_yaml("reactor", &module, "", false, "reactor")],
        &route("/", "upstream", "5s"),
        &[cluster("upstream", upstream.addr, "")],
    );
    let proxy = start(&yaml);
    for _ in 0..3 {
        let reply = get(ingress(&proxy), "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("x-reactor"), Some("main ran"), "the SDK's main set the root context up");
    }
    proxy.shutdown();
}
