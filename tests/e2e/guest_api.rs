//! Filters of one's own beside the trace filter, through `wasmtrace-span`: the tutorial's
//! commands as written (`wasmtrace new` → `wasmtrace build` → `wasmtrace swap` into the running
//! demo, the new attribute found on the spans at the demo's collector), each guest API call —
//! attributes, events, sampling up and down, the trace context — in both module forms, and a
//! traced callout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::StatusCode;
use serde_json::Value;
use wasmtrace_demo::topology::{DemoConfig, Ports, Tracing, start};

use crate::fixture::client::get;
use crate::fixture::collector::{Collector, attribute};
use crate::fixture::proxy::{cluster, filter_module, listener_yaml, sidecar, wasm_filter_yaml, workspace_root};
use crate::fixture::traces::{trace_id_of, wait_for_span};
use crate::fixture::upstream::Upstream;

/// Runs one `wasmtrace` command line, as typed (off the async workers: some commands run their
/// own runtime).
async fn wasmtrace(args: &[&str]) {
    let line: Vec<String> = std::iter::once("wasmtrace").chain(args.iter().copied()).map(str::to_owned).collect();
    let shown = line.join(" ");
    tokio::task::spawn_blocking(move || wasmtrace::run_command_line(line))
        .await
        .expect("the command ran")
        .unwrap_or_else(|e| panic!("`{shown}` failed: {e:#}"));
}

/// A fresh directory for this test's crates.
fn work_dir(name: &str) -> PathBuf {
    let dir = workspace_root().join("target/e2e-guest").join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work directory");
    dir
}

/// Runs a crate's own tests as its README says (`cargo test` in its directory): its unit tests
/// and `tests/runtime.rs`, which builds the module and runs it in the runtime. Every crate the
/// tests make shares one target directory, so the runtime is compiled once.
async fn cargo_test(crate_dir: &Path) {
    let (dir, target) = (crate_dir.to_owned(), workspace_root().join("target/e2e-scaffold-test"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cargo).arg("test").current_dir(dir).env("CARGO_TARGET_DIR", target).output()
    })
    .await
    .expect("cargo test ran")
    .expect("cargo starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "`cargo test` in {} failed:\n{stdout}\n{}",
        crate_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("running 2 tests"), "tests/runtime.rs ran its two tests:\n{stdout}");
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_tags_the_running_demos_spans_with_a_filter_made_by_wasmtrace_new() {
    let state_dir = workspace_root().join("target/e2e-demo").join(format!("{}-tutorial", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = DemoConfig {
        tracing: Tracing::Sidecars,
        viewer: any,
        ports: Ports::Ephemeral,
        state_dir,
        workspace: workspace_root(),
    };
    let demo = start(&config, &|_| {}).expect("the demo starts");
    let admin = demo.sidecar_admins()[0].1.expect("the gallery-api sidecar's admin API").to_string();
    let work = work_dir("tutorial");
    let (crate_dir, module) = (work.join("tenant-tag"), work.join("tenant-tag.wasm"));

    // docs/tutorial.md, step by step.
    wasmtrace(&["new", text(&crate_dir), "--template", "tag"]).await;
    wasmtrace(&["build", text(&crate_dir), "-o", text(&module)]).await;
    wasmtrace(&["inspect", text(&module)]).await;
    cargo_test(&crate_dir).await;
    wasmtrace(&[
        "swap",
        "--admin",
        &admin,
        "--plugin",
        "tagging",
        "--module",
        text(&module),
        "--config",
        r#"{"header": "x-tenant", "attribute": "tenant.id"}"#,
    ])
    .await;
    let reply = get(demo.gallery, "/v0/images", &[("x-tenant", "acme")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let trace_id = trace_id_of(&reply);
    demo.flush();
    let has_tenant = |span: &Value| {
        span["tags"].as_array().is_some_and(|tags| tags.iter().any(|t| t["key"] == "tenant.id" && t["value"] == "acme"))
    };
    let trace = wait_for_span(demo.viewer, &trace_id, "a span with the tenant", has_tenant).await;
    let tagged: Vec<&Value> = trace["spans"].as_array().into_iter().flatten().filter(|span| has_tenant(span)).collect();
    assert_eq!(tagged.len(), 1, "the API sidecar's SERVER span carries the tenant: {trace}");
    assert_eq!(tagged[0]["operationName"], "GET /v0/images");
    // The tutorial's last step: the traces with that tenant, listed from the terminal.
    let viewer = format!("http://{}", demo.viewer);
    wasmtrace(&["traces", "--collector", &viewer, "--service", "gallery-api", "--tag", "tenant.id=acme"]).await;
    demo.stop();
}

/// The next span the collector gets after the `before` it had, if one comes within a second.
async fn span_of(collector: &Collector, before: usize) -> Option<opentelemetry_proto::tonic::trace::v1::Span> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let received = collector.received();
        if received.len() > before {
            return received.last().map(|r| r.span.clone());
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_guest_api_call_works_in_both_module_forms() {
    let work = work_dir("forms");
    let target = workspace_root().join("target/e2e-guest-build");
    let trace = filter_module("trace-filter");
    for component in [false, true] {
        let form: &[&str] = if component { &["--component"] } else { &[] };
        let mut modules = Vec::new();
        for template in ["tag", "sample"] {
            let name = format!("{template}-{}", if component { "component" } else { "module" });
            let (crate_dir, module) = (work.join(&name), work.join(format!("{name}.wasm")));
            wasmtrace(&[&["new", text(&crate_dir), "--template", template][..], form].concat()).await;
            wasmtrace(
                &[&["build", text(&crate_dir), "-o", text(&module), "--target-dir", text(&target)][..], form].concat(),
            )
            .await;
            cargo_test(&crate_dir).await;
            modules.push(module);
        }
        let (tag, sample) = (&modules[0], &modules[1]);
        if !component {
            // The same modules, unchanged, are what Envoy loads.
            for module in [tag, sample] {
                crate::portability::imports_only_what_envoy_provides(text(module), module);
                crate::portability::starts_calling_nothing_but_logging(text(module), module);
            }
        }
        // The sampler never samples, and a filter before the trace filter raises one customer's
        // requests; or it always samples, and the filter lowers them.
        for (sampler, decision, decided, others) in
            [("always_off", "sample", true, false), ("always_on", "drop", false, true)]
        {
            let collector = Collector::start();
            let upstream = Upstream::start();
            let trace_config = format!(
                r#"{{"service_name": "api", "span_kind": "server", "sampler": {{"type": "{sampler}"}}, "exporter": {{"cluster": "otel", "flush_interval_ms": 50}}}}"#
            );
            let sample_config = format!(r#"{{"header": "x-customer", "value": "acme", "decision": "{decision}"}}"#);
            let filters = [
                wasm_filter_yaml("sample", sample, &sample_config, false, "sample"),
                wasm_filter_yaml("tag", tag, r#"{"header": "x-tenant", "attribute": "tenant.id"}"#, false, "tag"),
                wasm_filter_yaml("trace", &trace, &trace_config, true, "trace"),
            ]
            .concat();
            let proxy = sidecar(
                &[listener_yaml("inbound", "INBOUND", &filters, "app")],
                &[cluster("app", upstream.addr, ""), cluster("otel", collector.addr, "")],
            );
            let address = proxy.listener_address("inbound").expect("inbound");
            for (customer, traced) in [("acme", decided), ("globex", others)] {
                let before = collector.received().len();
                let reply = get(address, "/v0/items", &[("x-customer", customer), ("x-tenant", "t-1")]).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                let case = format!("component {component}, sampler {sampler}, {decision} acme, customer {customer}");
                let span = span_of(&collector, before).await;
                assert_eq!(span.is_some(), traced, "{case}: traced?");
                // The trace context the trace filter chose, read back by the sample filter.
                let sent_back = reply.header("x-trace-id").map(str::to_owned);
                match &span {
                    Some(span) => {
                        assert_eq!(sent_back, Some(hex(&span.trace_id)), "{case}: the trace id sent back");
                        let tenant = attribute(span, "tenant.id").cloned();
                        let expected =
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("t-1".into());
                        assert_eq!(tenant, Some(expected), "{case}: the tag filter's attribute");
                        // The sample filter's event, on the span it decided.
                        let events: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
                        let decided_here = customer == "acme";
                        assert_eq!(events.contains(&"sampling.decided"), decided_here, "{case}: events {events:?}");
                        if decided_here {
                            let event = &span.events[0];
                            assert!(
                                event.time_unix_nano >= span.start_time_unix_nano.saturating_sub(1_000_000_000),
                                "{case}"
                            );
                            let customer = event
                                .attributes
                                .iter()
                                .find(|a| a.key == "customer")
                                .and_then(|a| a.value.clone())
                                .and_then(|v| v.value);
                            assert_eq!(
                                customer,
                                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                    "acme".into()
                                ))
                            );
                        }
                    }
                    None => assert_eq!(sent_back, None, "{case}: nothing traced, no trace id"),
                }
            }
            proxy.shutdown();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_through_the_guest_crate_is_a_client_child_span_with_the_callees_spans_beneath() {
    let work = work_dir("callout");
    let target = workspace_root().join("target/e2e-guest-build");
    for component in [false, true] {
        let form: &[&str] = if component { &["--component"] } else { &[] };
        let name = if component { "auth-check-component" } else { "auth-check" };
        let (crate_dir, module) = (work.join(name), work.join(format!("{name}.wasm")));
        wasmtrace(&[&["new", text(&crate_dir), "--template", "callout"][..], form].concat()).await;
        wasmtrace(
            &[&["build", text(&crate_dir), "-o", text(&module), "--target-dir", text(&target)][..], form].concat(),
        )
        .await;
        cargo_test(&crate_dir).await;
        if !component {
            crate::portability::imports_only_what_envoy_provides(name, &module);
        }
        a_traced_callout_nests_the_callees_span(&module, &format!("component {component}")).await;
    }
}

/// A request through the trace filter and the callout filter `module` in one sidecar, calling a
/// traced callee: the callout is a CLIENT child of the request's SERVER span, the callee's span
/// beneath it.
async fn a_traced_callout_nests_the_callees_span(module: &Path, case: &str) {
    let collector = Collector::start();
    let trace = filter_module("trace-filter");
    let trace_config = |service: &str| {
        format!(
            r#"{{"service_name": "{service}", "span_kind": "server", "exporter": {{"cluster": "otel", "flush_interval_ms": 50}}}}"#
        )
    };
    // The callee: the auth service behind its own traced sidecar.
    let auth = Upstream::start();
    let auth_sidecar = sidecar(
        &[listener_yaml(
            "inbound",
            "INBOUND",
            &wasm_filter_yaml("trace", &trace, &trace_config("auth"), true, "trace"),
            "auth_app",
        )],
        &[cluster("auth_app", auth.addr, ""), cluster("otel", collector.addr, "")],
    );
    // The API's sidecar: the trace filter, then the filter that asks auth first.
    let app = Upstream::start();
    let filters = [
        wasm_filter_yaml("trace", &trace, &trace_config("api"), true, "trace"),
        wasm_filter_yaml("auth_check", module, r#"{"cluster": "auth", "path": "/check"}"#, false, "auth_check"),
    ]
    .concat();
    let api_sidecar = sidecar(
        &[listener_yaml("inbound", "INBOUND", &filters, "app")],
        &[
            cluster("app", app.addr, ""),
            cluster("auth", auth_sidecar.listener_address("inbound").expect("auth inbound"), ""),
            cluster("otel", collector.addr, ""),
        ],
    );
    let reply = get(api_sidecar.listener_address("inbound").expect("api inbound"), "/v0/items", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{case}: {}", reply.text());
    let spans = collector.wait_for(3).await;
    assert_eq!(spans.len(), 3, "{case}: {spans:#?}");
    let find = |service: &str, kind: i32| {
        spans
            .iter()
            .find(|r| r.service == service && r.span.kind == kind)
            .map(|r| &r.span)
            .unwrap_or_else(|| panic!("{case}: no {service} span of kind {kind}: {spans:#?}"))
    };
    let (server, callout, callee) = (find("api", 2), find("api", 3), find("auth", 2));
    assert!(server.parent_span_id.is_empty(), "the request starts the trace");
    assert_eq!(callout.parent_span_id, server.span_id, "the callout is a child of the request's span");
    assert_eq!(callout.name, "GET auth");
    assert_eq!(callee.parent_span_id, callout.span_id, "the callee's span is beneath the callout");
    assert!(server.trace_id == callout.trace_id && callout.trace_id == callee.trace_id, "one trace");
    let status = attribute(callout, "http.response.status_code").cloned();
    assert_eq!(status, Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(200)));
    let answered = attribute(server, "auth.status").cloned();
    assert_eq!(answered, Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("200".into())));
    api_sidecar.shutdown();
    auth_sidecar.shutdown();
}
