//! The `wasmtrace` binary as a user runs it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::workspace_root;

/// The binary, with its compiled-module cache in the build's scratch space rather than the
/// user's `~/.cache` (tests never write outside `target/`).
fn wasmtrace() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmtrace"));
    command.env("WASMTRACE_MODULE_CACHE", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("module-cache"));
    command
}

#[test]
fn build_produces_a_module_that_inspect_accepts() {
    let root = workspace_root();
    let out = root.join("target/cli-test/build-command-output.wasm");
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
    assert!(stdout.contains("build-command-output.wasm") && stdout.contains("sha256"), "{stdout}");
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
    assert!(stderr.contains("is not a loadable filter"), "{stderr}");
}

/// A configuration serving `/` with a direct response through the filter at `module`, with an
/// admin API, on free ports, with `extra` spliced into the HTTP connection manager.
fn config_with(module: &std::path::Path, extra: &str, configuration: &str) -> String {
    let admin = "\nadmin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: 0 }";
    format!("{admin}{}", common::one_filter_config(module, "served by wasmtrace run\n", extra, configuration))
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let path = workspace_root().join("target/cli-test").join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_accepts_a_valid_configuration_after_starting_its_plugins() {
    let config = write_config("valid.yaml", &config_with(&common::built_test_filter("header-reader"), "", ""));
    let output = wasmtrace().arg("check").arg(&config).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("plugin `reader`") && stdout.contains("starts and configures"), "{stdout}");
    assert!(stdout.trim_end().ends_with(": OK"), "{stdout}");
}

#[test]
fn check_names_an_unsupported_field_by_its_yaml_path() {
    let config = write_config(
        "unsupported.yaml",
        &config_with(&common::built_test_filter("header-reader"), "\n                tracing: { provider: {} }", ""),
    );
    let output = wasmtrace().arg("check").arg(&config).output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tracing: is not supported by wasmtrace"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_plugin_that_will_not_configure() {
    let config =
        write_config("refusing.yaml", &config_with(&common::built_test_filter("hostile"), "", "refuse-configure"));
    let output = wasmtrace().arg("check").arg(&config).output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reader") && stderr.contains("proxy_on_configure"), "{stderr}");
}

#[test]
fn run_serves_until_sigterm_then_exits_cleanly() {
    use std::io::{BufRead, BufReader, Read, Write};
    let config = write_config("run.yaml", &config_with(&common::built_test_filter("header-reader"), "", ""));
    let mut child = wasmtrace()
        .args(["run", "--workers", "1", "--drain-timeout-secs", "2", "-c"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start wasmtrace run");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("text");
    let address = first.strip_prefix("listener ingress on http://").expect("listener line").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("served by wasmtrace run\n"), "{response}");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("exit");
    assert!(status.success(), "exit status {status:?}");
}

/// A request asking the hostile filter to trap: 503 when it serves (fail closed), 200 otherwise.
fn raw_get(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nx-hostile: trap\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

/// Kills the proxy if the test fails before stopping it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn swap_replaces_a_running_plugin_reports_refusals_and_rolls_back() {
    use std::io::{BufRead, BufReader};
    let config = write_config("swap.yaml", &config_with(&common::built_test_filter("header-reader"), "", ""));
    let hostile = common::built_test_filter("hostile");
    let mut child = Running(
        wasmtrace()
            .args(["run", "--workers", "2", "--drain-timeout-secs", "2", "--no-watch", "-c"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start wasmtrace run"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let mut next_address = |prefix: &str| {
        let line = lines.next().expect("a line").expect("text");
        line.strip_prefix(prefix).unwrap_or_else(|| panic!("{line:?} lacks {prefix:?}")).to_owned()
    };
    let listener = next_address("listener ingress on http://");
    let admin = next_address("admin on http://");
    assert!(raw_get(&listener).starts_with("HTTP/1.1 200"));

    let swap = |args: &[&str]| {
        let output =
            wasmtrace().args(["swap", "--admin", &admin, "--plugin", "reader"]).args(args).output().expect("swap");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let hostile_path = hostile.display().to_string();
    let (ok, stdout, stderr) = swap(&["--module", &hostile_path]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("swapped ingress/reader (module): generation 1 -> 2, sha256 "), "{stdout}");
    assert!(raw_get(&listener).starts_with("HTTP/1.1 503"), "the new module serves");

    let (ok, stdout, stderr) = swap(&["--config", "trap-on-configure"]);
    assert!(!ok, "a trap in on_configure is refused: {stdout}");
    assert!(stdout.contains("refused; the serving generation keeps serving"), "{stdout}");
    assert!(stderr.contains("proxy_on_configure"), "{stderr}");
    assert!(raw_get(&listener).starts_with("HTTP/1.1 503"), "the refused swap changed nothing");

    let (ok, stdout, stderr) = swap(&["--rollback"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("generation 2 -> 4"), "{stdout}");
    assert!(raw_get(&listener).starts_with("HTTP/1.1 200"), "back to the header-reader");

    let (ok, _, stderr) = swap(&[]);
    assert!(!ok && stderr.contains("nothing to swap"), "{stderr}");
    let killed = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    assert!(child.0.wait().expect("exit").success());
}

/// Under a 256 open-file limit (soft and hard, so the proxy cannot raise it), 400 connections that
/// never speak exhaust the proxy's descriptors. It backs off instead of spinning on accept, logs
/// the condition a few times rather than in a hot loop, closes the silent connections by the
/// header timeout, and then serves a normal client.
#[test]
fn run_survives_running_out_of_file_descriptors() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::time::{Duration, Instant};
    let config = write_config(
        "fd-exhaustion.yaml",
        &config_with(&common::built_test_filter("header-reader"), "\n                request_headers_timeout: 2s", ""),
    );
    let stderr_path = workspace_root().join("target/cli-test/fd-exhaustion.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" run --workers 1 --no-watch --max-connections 100000 -c \"$1\"")
        .arg(env!("CARGO_BIN_EXE_wasmtrace"))
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("WASMTRACE_MODULE_CACHE", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("module-cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start wasmtrace run");
    let mut child = Running(child);
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("text");
    let address = first.strip_prefix("listener ingress on http://").expect("listener line").to_owned();

    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(std::net::TcpStream::connect(&address).expect("the kernel accepts into the backlog"));
    }
    // While the descriptors are gone and then freed by the header timeout, a normal client is
    // eventually served; it is never answered with an error.
    let patience = Instant::now() + Duration::from_secs(60);
    let response = loop {
        let attempt = std::net::TcpStream::connect(&address).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        });
        match attempt {
            Ok(response) if response.starts_with("HTTP/1.1 200") => break response,
            _ => {
                assert!(Instant::now() < patience, "the proxy serves again once the silent connections are closed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(response.ends_with("served by wasmtrace run\n"), "{response}");
    drop(silent);
    assert!(child.0.try_wait().expect("status").is_none(), "the proxy is still running");
    let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
    let _ = child.0.wait();
    let log = std::fs::read_to_string(&stderr_path).expect("stderr");
    let accept_failures = log.lines().filter(|line| line.contains("accept failed")).count();
    assert!(accept_failures <= 20, "accept failures are logged rate-limited, not in a hot loop:\n{log}");
}
