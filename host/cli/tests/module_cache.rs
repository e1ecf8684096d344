//! `wasmtrace run --module-cache DIR`: the second start on a warm cache serves its first request
//! without compiling the filter (its log says `compiled=false source="disk cache"`), and
//! `--no-module-cache` writes nothing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn scratch() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-module-cache")
}

/// A listener on a free port answering `/` directly, through the filter at `module`.
fn config(module: &Path, name: &str) -> PathBuf {
    let text = common::one_filter_config(module, "cached\n", "", "");
    std::fs::create_dir_all(scratch()).expect("scratch dir");
    let path = scratch().join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `wasmtrace run` with `flags`, serves one request, stops it with SIGTERM; returns its
/// log (stderr). `HOME` and `XDG_CACHE_HOME` point into the scratch space, so the default cache
/// (when a test relies on it) never lands in the real home directory.
fn run_once(config: &Path, flags: &[&str]) -> String {
    let home = scratch().join("home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmtrace"))
        .args(["run", "--workers", "1", "--drain-timeout-secs", "1", "--no-watch", "-c"])
        .arg(config)
        .args(flags)
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env_remove("WASMTRACE_MODULE_CACHE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wasmtrace run");
    let stdout = child.stdout.take().expect("stdout");
    let first = BufReader::new(stdout).lines().next().expect("a line").expect("text");
    let address = first.strip_prefix("listener ingress on http://").expect("listener line").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("cached\n"), "{response}");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let output = child.wait_with_output().expect("exit");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "exit status {:?}: {log}", output.status);
    log
}

fn load_line(log: &str) -> &str {
    log.lines().find(|l| l.contains("module loaded")).unwrap_or_else(|| panic!("no `module loaded` line:\n{log}"))
}

#[test]
fn a_restart_with_a_warm_module_cache_serves_its_first_request_without_compiling() {
    let config = config(&common::built_test_filter("header-reader"), "warm-cache.yaml");
    let cache = scratch().join("modules");
    let _ = std::fs::remove_dir_all(&cache);
    let cache_flag = cache.to_str().expect("utf-8 path");

    let cold = run_once(&config, &["--module-cache", cache_flag]);
    assert!(load_line(&cold).contains("compiled=true"), "{cold}");

    let warm = run_once(&config, &["--module-cache", cache_flag]);
    let line = load_line(&warm);
    assert!(line.contains("compiled=false") && line.contains("disk cache"), "{warm}");
}

#[test]
fn no_module_cache_compiles_and_writes_nothing() {
    let config = config(&common::built_test_filter("header-reader"), "no-cache.yaml");
    let default_dir = scratch().join("home/.cache/wasmtrace/modules");
    let _ = std::fs::remove_dir_all(&default_dir);
    let log = run_once(&config, &["--no-module-cache"]);
    assert!(load_line(&log).contains("compiled=true"), "{log}");
    assert!(!default_dir.exists(), "nothing written to the default cache");
    // Without the flag the default (under XDG_CACHE_HOME) is used.
    run_once(&config, &[]);
    assert!(default_dir.is_dir(), "the default cache is created");
}
