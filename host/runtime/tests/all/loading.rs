//! Which modules the runtime accepts, and how it says no.

use std::sync::Arc;

use wasmtrace_runtime::{AbiVersion, LoadError, hex_sha256};

use crate::fixture::{filter, runtime};

/// The smallest module that passes validation; tests remove or break one piece at a time.
const VALID: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32)))"#;

fn compile_wat(text: &str) -> Result<(), LoadError> {
    let bytes = wat::parse_str(text).expect("test module is valid WAT");
    runtime().compile(&bytes).map(drop)
}

#[test]
fn an_sdk_built_filter_loads_and_is_identified_by_its_sha256() {
    let runtime = runtime();
    let bytes = filter("abi-probe");
    let module = runtime.compile(&bytes).expect("loads");
    assert_eq!(module.abi_version(), Some(AbiVersion::V0_2_1));
    assert_eq!(module.sha256(), hex_sha256(&bytes));
    assert_eq!(module.sha256().len(), 64);
    let again = runtime.compile(&bytes).expect("loads");
    assert!(Arc::ptr_eq(&module, &again), "a module is compiled once per sha256");
    // Unused, it stays compiled among the recent ones: a swap back to it does not recompile.
    let address = Arc::as_ptr(&module);
    drop((module, again));
    let cached = runtime.cached(&hex_sha256(&bytes)).expect("still compiled");
    assert_eq!(Arc::as_ptr(&cached), address);
}

#[test]
fn the_minimal_valid_module_loads() {
    compile_wat(VALID).expect("valid");
}

#[test]
fn a_module_without_the_abi_marker_is_refused_naming_it() {
    let err = compile_wat(&VALID.replace(r#"(func (export "proxy_abi_version_0_2_1"))"#, ""))
        .expect_err("the module must be refused");
    assert!(err.to_string().contains("proxy_abi_version_0_2_1"), "{err}");
}

#[test]
fn an_abi_v0_1_0_module_is_refused_as_unsupported() {
    let err = compile_wat(&VALID.replace("proxy_abi_version_0_2_1", "proxy_abi_version_0_1_0"))
        .expect_err("the module must be refused");
    assert!(matches!(err, LoadError::UnsupportedAbi(_)), "{err}");
}

#[test]
fn a_module_without_an_allocator_is_refused_naming_it() {
    let err =
        compile_wat(&VALID.replace("proxy_on_memory_allocate", "my_alloc")).expect_err("the module must be refused");
    assert!(err.to_string().contains("proxy_on_memory_allocate"), "{err}");
}

#[test]
fn a_module_without_context_create_is_refused_naming_it() {
    let err =
        compile_wat(&VALID.replace("proxy_on_context_create", "on_create")).expect_err("the module must be refused");
    assert!(err.to_string().contains("missing the export `proxy_on_context_create`"), "{err}");
}

#[test]
fn an_unknown_import_is_refused_naming_it() {
    let module = VALID.replace(
        "(module",
        r#"(module (import "env" "proxy_set_active_span_tag" (func (param i32 i32) (result i32)))"#,
    );
    let err = compile_wat(&module).expect_err("the module must be refused");
    let text = err.to_string();
    assert!(text.contains("`env.proxy_set_active_span_tag`"), "{text}");

    let module = VALID.replace("(module", r#"(module (import "wasi:http/types" "send" (func))"#);
    let err = compile_wat(&module).expect_err("the module must be refused");
    assert!(err.to_string().contains("`wasi:http/types.send`"), "{err}");
}

#[test]
fn an_import_with_the_wrong_signature_is_refused() {
    let module = VALID.replace("(module", r#"(module (import "env" "proxy_log" (func (param i32) (result i32)))"#);
    let err = compile_wat(&module).expect_err("the module must be refused");
    assert!(matches!(err, LoadError::Link(_)), "{err}");
    assert!(err.to_string().contains("proxy_log"), "{err}");
}

#[test]
fn a_callback_with_the_wrong_signature_is_refused_naming_it() {
    let module = VALID.replace(
        "(module",
        r#"(module (func (export "proxy_on_request_headers") (param i32 i32) (result i32) i32.const 0)"#,
    );
    let err = compile_wat(&module).expect_err("the module must be refused");
    let text = err.to_string();
    assert!(text.contains("proxy_on_request_headers") && text.contains("(i32, i32, i32) -> (i32)"), "{text}");
}

#[test]
fn bytes_that_are_not_wasm_are_refused() {
    let err = runtime().compile(b"\0asm garbage").map(drop).expect_err("the module must be refused");
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
}

#[test]
fn a_module_the_quick_tier_cannot_compile_is_compiled_fully_instead_of_refused() {
    // `return_call` (tail calls): Cranelift compiles it, Winch (the quick tier) does not.
    let tail_call = VALID.replace(
        r#"(func (export "proxy_on_context_create") (param i32 i32)))"#,
        r#"(func $leaf (param i32 i32))
  (func (export "proxy_on_context_create") (param i32 i32) local.get 0 local.get 1 return_call $leaf))"#,
    );
    let bytes = wat::parse_str(&tail_call).expect("test module is valid WAT");
    let options = wasmtrace_runtime::RuntimeOptions { tiered_swaps: true, ..Default::default() };
    let runtime = wasmtrace_runtime::Runtime::with_options(
        wasmtrace_runtime::HostServices::new(wasmtrace_runtime::NodeInfo::default(), wasmtrace_runtime::LogLevel::Info),
        &options,
    )
    .expect("runtime");
    assert!(runtime.compile_quick(&bytes).expect("not refused").is_none(), "no quick code for it");
    let module = runtime.compile(&bytes).expect("the full tier loads it");
    assert!(!module.is_quick());
    // A module the quick tier can compile still gets quick code.
    let plain = wat::parse_str(VALID).expect("valid WAT");
    assert!(runtime.compile_quick(&plain).expect("compiles").is_some_and(|m| m.is_quick()));
}
