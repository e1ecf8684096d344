//! The `wasmtrace` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn wasmtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasmtrace"))
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn build_produces_a_module_that_inspect_accepts() {
    let root = workspace_root();
    let out = root.join("target/cli-test/header-reader.wasm");
    let _ = std::fs::remove_file(&out);
    let built = wasmtrace()
        .arg("build")
        .arg(root.join("filters/test-filters/header-reader"))
        .arg("-o")
        .arg(&out)
        .arg("--target-dir")
        .arg(root.join("target/wasm-filters"))
        .output()
        .expect("run wasmtrace build");
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(built.status.success(), "build failed: {}", String::from_utf8_lossy(&built.stderr));
    assert!(stdout.contains("header-reader.wasm") && stdout.contains("sha256"), "{stdout}");
    let module = std::fs::read(&out).expect("module written");
    assert_eq!(&module[..4], b"\0asm");

    let inspected = wasmtrace().arg("inspect").arg(&out).output().expect("run wasmtrace inspect");
    let stdout = String::from_utf8_lossy(&inspected.stdout);
    assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
    assert!(stdout.contains("proxy-wasm V0_2_1"), "{stdout}");
}

#[test]
fn build_of_a_directory_without_a_crate_fails_with_a_clear_message() {
    let output = wasmtrace().args(["build", "/nonexistent/filter"]).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/filter has no Cargo.toml"), "{stderr}");
}

#[test]
fn inspect_refuses_a_file_that_is_not_a_proxy_wasm_module() {
    let path = workspace_root().join("target/cli-test/not-a-module.wasm");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, b"definitely not wasm").expect("write");
    let output = wasmtrace().arg("inspect").arg(&path).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a loadable proxy-wasm module"), "{stderr}");
}
