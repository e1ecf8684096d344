//! Wasm services from `bootstrap_extensions` (`envoy.bootstrap.wasm`): a plugin with a root
//! context and no stream, ticking and calling out, shown in `/plugins` and hot-swapped like a
//! filter. The service is `filters/test-filters/service-probe` with root id `service`; the same
//! module as a filter on the listener (same `vm_id`, so the same shared data) reports what the
//! service did.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use wasmtrace_config::Bootstrap;

use crate::fixture::client::{client, get, send};
use crate::fixture::deploy::deploy_tools;
use crate::fixture::proxy::{
    bootstrap_yaml, cluster, filter_module, ingress, route, start, wasm_filter_yaml, workspace_root,
};
use crate::fixture::upstream::Upstream;

/// A bootstrap with the service (`singleton` as given, configuration `tag`) and the reporter.
fn bootstrap(upstream: SocketAddr, singleton: bool, tag: &str) -> String {
    let module = filter_module("service-probe");
    let reporter = wasm_filter_yaml("reporter", &module, "", false, "probe");
    let base = bootstrap_yaml(&[reporter], &route("/", "upstream", "5s"), &[cluster("upstream", upstream, "")]);
    format!(
        r#"{base}
bootstrap_extensions:
  name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: {singleton}
    config:
      name: ticker
      root_id: service
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {tag}
      vm_config:
        vm_id: probe
        runtime: envoy.wasm.runtime.v8
        code: {{ local: {{ filename: "{module}" }} }}
"#,
        module = module.display()
    )
}

/// The reporter's answer: `(callouts, tag, last)`.
async fn report(proxy: &wasmtrace_proxy::RunningProxy) -> (u64, String, String) {
    let reply = get(ingress(proxy), "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let text = reply.text();
    let field = |name: &str| {
        text.split(' ').find_map(|part| part.strip_prefix(&format!("{name}="))).unwrap_or_default().to_owned()
    };
    (field("callouts").parse().unwrap_or(0), field("tag"), field("last"))
}

/// Waits until the service has made more than `after` callouts with tag `tag`.
async fn wait_for_callouts(proxy: &wasmtrace_proxy::RunningProxy, after: u64, tag: &str) -> u64 {
    let mut last = (0, String::new(), String::new());
    for _ in 0..100 {
        last = report(proxy).await;
        if last.0 > after && last.1 == tag {
            assert_eq!(last.2, "pong", "the callout's answer");
            return last.0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the service made no callout with tag {tag:?} after {after}: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_service_ticks_calls_out_shows_in_plugins_and_is_hot_swapped() {
    let upstream = Upstream::start();
    let yaml = bootstrap(upstream.addr, true, "one");
    Bootstrap::from_yaml(&yaml).expect("the bootstrap with a Wasm service loads");
    let proxy = start(&yaml);
    let admin = proxy.admin_address().expect("admin");

    let first = wait_for_callouts(&proxy, 2, "one").await;
    let plugins = get(admin, "/plugins", &[]).await.json();
    let service = plugins["plugins"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "ticker"))
        .cloned()
        .unwrap_or_else(|| panic!("no service in {plugins}"));
    assert_eq!(service["kind"], "service");
    assert_eq!(service["singleton"], true);
    assert_eq!(service["listener"], "bootstrap_extensions");
    assert_eq!(service["vms_alive"], 1, "a singleton runs one VM, whatever the workers: {service}");

    let body = serde_json::json!({ "configuration": "two" }).to_string();
    let headers = [("content-type", "application/json")];
    let reply = send(&client(false), admin, "POST", "/plugins/ticker/swap", &headers, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["outcome"], "swapped", "{}", reply.text());
    wait_for_callouts(&proxy, first, "two").await;
    let plugins = get(admin, "/plugins", &[]).await.json();
    let service = plugins["plugins"].as_array().and_then(|all| all.iter().find(|p| p["name"] == "ticker")).cloned();
    assert_eq!(service.as_ref().map(|s| s["generation"].clone()), Some(2.into()), "{plugins}");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_not_a_singleton_runs_on_every_worker() {
    let upstream = Upstream::start();
    let proxy = start(&bootstrap(upstream.addr, false, "many"));
    wait_for_callouts(&proxy, 2, "many").await;
    let plugins = get(proxy.admin_address().expect("admin"), "/plugins", &[]).await.json();
    let service = plugins["plugins"].as_array().and_then(|all| all.iter().find(|p| p["name"] == "ticker")).cloned();
    assert_eq!(service.as_ref().map(|s| s["vms_alive"].clone()), Some(2.into()), "one per worker: {plugins}");
    proxy.shutdown();
}

#[test]
fn an_extension_other_than_a_wasm_service_is_refused_with_its_path() {
    let yaml = r#"
bootstrap_extensions:
  - name: envoy.bootstrap.internal_listener
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
"#;
    let errors = Bootstrap::from_yaml(yaml).expect_err("not a Wasm service").to_string();
    assert!(errors.contains("bootstrap_extensions[0].typed_config"), "{errors}");
    assert!(errors.contains("envoy.bootstrap.wasm"), "{errors}");
}

#[test]
fn the_wasm_service_example_passes_wasmtrace_check_and_the_envoy_schema_check() {
    // `wasmtrace check -c deploy/examples/wasm-service.yaml` with the module built where it says.
    let example = workspace_root().join("deploy/examples/wasm-service.yaml");
    let text = std::fs::read_to_string(&example).expect("example");
    let built = filter_module("service-probe");
    let mut bootstrap = Bootstrap::from_yaml(&text.replace("target/service-probe.wasm", &built.display().to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    bootstrap.anchor_module_paths(&workspace_root());
    assert_eq!(bootstrap.wasm_services.len(), 1);
    assert!(bootstrap.wasm_services[0].singleton);
    let report = wasmtrace_proxy::check(&bootstrap, &wasmtrace_proxy::ProxyOptions::default())
        .unwrap_or_else(|e| panic!("wasmtrace check: {e}"));
    assert!(report.iter().any(|line| line.contains("ticker") && line.contains("starts and configures")), "{report:?}");

    let Some(tools) = deploy_tools() else { return };
    let run = tools.check("envoy_schema.py", &[&example]);
    assert!(run.success, "{}", run.output);
    assert!(run.output.contains("valid envoy.config.bootstrap.v3.Bootstrap"), "{}", run.output);
}

#[test]
fn a_service_named_like_a_filter_is_refused() {
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let yaml = bootstrap(upstream, true, "one").replace("name: ticker", "name: reporter");
    let errors = Bootstrap::from_yaml(&yaml).expect_err("one name for a filter and a service").to_string();
    assert!(errors.contains("a Wasm filter is named `reporter` too"), "{errors}");
}
