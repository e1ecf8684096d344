//! Component filters (the `wasmtrace:filter` world): which the runtime accepts, and how it says
//! no — the same refusal-before-any-guest-code as for proxy-wasm modules, naming what is wrong.

use std::path::PathBuf;

use wasmtrace_build::{BuildOptions, FilterForm, build_filter};
use wasmtrace_runtime::component::{WORLD, is_component};
use wasmtrace_runtime::{FilterForm as LoadedForm, LoadError};

use crate::fixture::runtime;

fn compile_wat(text: &str) -> Result<(), LoadError> {
    let bytes = wat::parse_str(text).expect("test component is valid WAT");
    assert!(is_component(&bytes));
    runtime().compile(&bytes).map(drop)
}

#[test]
fn the_trace_filter_built_as_a_component_loads_as_one() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = build_filter(&BuildOptions {
        crate_dir: root.join("filters/trace-filter"),
        target_dir: Some(root.join("target/wasm-filters")),
        out: None,
        quiet: true,
        form: FilterForm::Component,
    })
    .expect("wasmtrace build --component");
    let bytes = std::fs::read(&built.wasm_path).expect("read");
    assert!(is_component(&bytes), "wasm32-wasip2 writes a component");
    let module = runtime().compile(&bytes).expect("the host implements the world it imports");
    assert_eq!(module.form(), LoadedForm::Component);
    assert_eq!(module.abi_version(), None);
}

#[test]
fn a_component_without_the_handler_export_is_refused_naming_it() {
    let err = compile_wat("(component)").expect_err("refused");
    let message = err.to_string();
    assert!(message.contains(WORLD), "{message}");
    assert!(message.contains("wasmtrace:filter/handler"), "names the missing export: {message}");
}

#[test]
fn a_component_of_another_world_is_refused_naming_the_import() {
    let err = compile_wat(
        r#"(component
             (import "acme:proxy/hooks@1.0.0" (instance (export "before" (func)))))"#,
    )
    .expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("acme:proxy/hooks@1.0.0"), "names the import the host lacks: {message}");
}

#[test]
fn a_handler_missing_a_callback_is_refused_naming_it() {
    // Only a `configure` (of the wrong type, too): the world's handler has every callback.
    let err = compile_wat(
        r#"(component
             (core module $m (func (export "configure")))
             (core instance $i (instantiate $m))
             (func $configure (canon lift (core func $i "configure")))
             (instance $handler (export "configure" (func $configure)))
             (export "wasmtrace:filter/handler@0.1.0" (instance $handler)))"#,
    )
    .expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("does not have export `on-request-headers`"), "names the callback: {message}");
}

#[test]
fn bytes_that_only_look_like_a_component_are_refused_as_not_compiling() {
    let mut bytes = b"\0asm".to_vec();
    bytes.extend_from_slice(&[0x0d, 0x00, 0x01, 0x00]);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    let err = runtime().compile(&bytes).map(drop).expect_err("refused");
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
}
