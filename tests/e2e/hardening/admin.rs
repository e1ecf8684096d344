//! The admin API cannot be driven by a web page (foreign Host, foreign Origin, non-JSON bodies),
//! needs its bearer token when it has one, reads only regular module files, never quotes a file,
//! and a hostile `module_path` never holds up the next swap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::StatusCode;
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::ProxyOptions;

use super::bootstrap;
use crate::fixture::client::{Reply, client, get, send_bytes};
use crate::fixture::proxy::{cluster, filter_module, route, start_with, wasm_filter};
use crate::fixture::upstream::Upstream;

fn proxy(upstream: SocketAddr, token_file: Option<PathBuf>) -> wasmtrace_proxy::RunningProxy {
    let yaml = bootstrap(
        "",
        &route("/", "service", "5s"),
        &[wasm_filter("reader", "header-reader", "", false)],
        &[cluster("service", upstream, "")],
    );
    let options = ProxyOptions { workers: 1, admin_token_file: token_file, ..ProxyOptions::default() };
    start_with(&yaml, options)
}

async fn post(admin: SocketAddr, path: &str, headers: &[(&str, &str)], body: serde_json::Value) -> Reply {
    send_bytes(&client(false), admin, "POST", path, headers, Bytes::from(body.to_string())).await
}

async fn generation(admin: SocketAddr) -> serde_json::Value {
    get(admin, "/plugins", &[]).await.json()["plugins"][0]["generation"].clone()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmtrace-admin-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_drive_the_admin_api() {
    let upstream = Upstream::start();
    let proxy = proxy(upstream.addr, None);
    let admin = proxy.admin_address().expect("admin");
    let swap = serde_json::json!({ "configuration": "{}" });
    let before = generation(admin).await;

    // DNS rebinding: a name that resolves to loopback but is not a loopback name.
    let rebound = get(admin, "/plugins", &[("host", &format!("attacker.example:{}", admin.port()))]).await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN, "{}", rebound.text());
    let rebound = post(admin, "/plugins/reader/swap", &[JSON, ("host", "attacker.example")], swap.clone()).await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    // A simple cross-origin POST (no preflight): text/plain, or a foreign Origin.
    let simple = post(admin, "/plugins/reader/swap", &[("content-type", "text/plain")], swap.clone()).await;
    assert_eq!(simple.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", simple.text());
    let no_type = post(admin, "/plugins/reader/rollback", &[], serde_json::json!({})).await;
    assert_eq!(no_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for origin in ["http://attacker.example", "null"] {
        let foreign = post(admin, "/plugins/reader/swap", &[JSON, ("origin", origin)], swap.clone()).await;
        assert_eq!(foreign.status, StatusCode::FORBIDDEN, "Origin {origin}");
    }
    let fetched = post(admin, "/plugins/reader/swap", &[JSON, ("sec-fetch-site", "cross-site")], swap.clone()).await;
    assert_eq!(fetched.status, StatusCode::FORBIDDEN);
    assert_eq!(generation(admin).await, before, "nothing was swapped");

    // The operator's own tools still work: loopback names and IPs, JSON, no foreign origin.
    assert_eq!(get(admin, "/ready", &[("host", &format!("localhost:{}", admin.port()))]).await.status, StatusCode::OK);
    let own = post(admin, "/plugins/reader/swap", &[JSON], serde_json::json!({ "configuration": "{\"a\":1}" })).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text());
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_changes_need_it() {
    let upstream = Upstream::start();
    let dir = scratch("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-admin-token-0123456789\n").expect("token");
    let proxy = proxy(upstream.addr, Some(token_file));
    let admin = proxy.admin_address().expect("admin");
    let swap = serde_json::json!({ "configuration": "{\"b\":2}" });
    let missing = post(admin, "/plugins/reader/swap", &[JSON], swap.clone()).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let wrong = post(
        admin,
        "/plugins/reader/swap",
        &[JSON, ("authorization", "Bearer s3cret-admin-token-0123456788")],
        swap.clone(),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let right =
        post(admin, "/plugins/reader/swap", &[JSON, ("authorization", "Bearer s3cret-admin-token-0123456789")], swap)
            .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.text());
    // Reads stay open, as Envoy's admin's are.
    assert_eq!(get(admin, "/ready", &[]).await.status, StatusCode::OK);
    proxy.shutdown();
}

#[test]
fn an_admin_api_off_loopback_without_a_token_does_not_start() {
    let yaml = bootstrap(
        "",
        &route("/", "service", "5s"),
        &[],
        &[cluster("service", "127.0.0.1:9".parse().expect("addr"), "")],
    )
    // The admin address comes first in the file.
    .replacen("address: 127.0.0.1", "address: 0.0.0.0", 1);
    let options = ProxyOptions { workers: 1, admin_any_address: true, ..ProxyOptions::default() };
    let error = match wasmtrace_proxy::start(Bootstrap::from_yaml(&yaml).expect("config"), options) {
        Ok(proxy) => {
            proxy.shutdown();
            panic!("an unguarded admin API off loopback must not start");
        }
        Err(error) => error.to_string(),
    };
    assert!(error.contains("--admin-token-file"), "{error}");
}

async fn swap_path(admin: SocketAddr, path: &Path) -> Reply {
    post(admin, "/plugins/reader/swap", &[JSON], serde_json::json!({ "module_path": path })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_path_reads_only_regular_binary_modules_and_never_quotes_them() {
    let upstream = Upstream::start();
    let proxy = proxy(upstream.addr, None);
    let admin = proxy.admin_address().expect("admin");
    let dir = scratch("module-path");
    let before = generation(admin).await;

    let secret = dir.join("passwords.txt");
    std::fs::write(&secret, "(module) ;; root:TOPSECRET-LINE\n").expect("text file");
    let fifo = dir.join("fifo.wasm");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let sparse = dir.join("huge.wasm");
    let file = std::fs::File::create(&sparse).expect("create");
    file.set_len((64 << 20) + 1).expect("sparse 64 MiB + 1");
    let link_to_zero = dir.join("zero.wasm");
    std::os::unix::fs::symlink("/dev/zero", &link_to_zero).expect("symlink");

    for (path, says) in [
        (secret.clone(), "not a WebAssembly binary"),
        (PathBuf::from("/dev/zero"), "/proc, /sys or /dev"),
        (link_to_zero, "/proc, /sys or /dev"),
        (PathBuf::from("/proc/self/environ"), "/proc, /sys or /dev"),
        (fifo.clone(), "not a regular file"),
        (dir.clone(), "not a regular file"),
        (sparse, "larger than"),
        (dir.join("missing.wasm"), "cannot open"),
    ] {
        let reply = swap_path(admin, &path).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}: {}", path.display(), reply.text());
        let text = reply.text();
        assert!(text.contains(says), "{}: {text}", path.display());
        assert!(!text.contains("TOPSECRET"), "never quotes a file: {text}");
    }
    // Inline bytes in the text format are refused the same way.
    let inline =
        post(admin, "/plugins/reader/swap", &[JSON], serde_json::json!({ "module_base64": "KG1vZHVsZSk=" })).await;
    assert_eq!(inline.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", inline.text());
    assert_eq!(generation(admin).await, before);

    // None of that held up the next swap: a real module swaps at once.
    let module = filter_module("header-reader");
    let good = post(
        admin,
        "/plugins/reader/swap",
        &[JSON],
        serde_json::json!({ "module_path": module, "configuration": "{\"c\":3}" }),
    )
    .await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.text());
    assert_ne!(generation(admin).await, before);
    proxy.shutdown();
}
