//! Parsing Envoy bootstrap files: what loads, and how refusals name the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmtrace_config::{
    Bootstrap, CodecType, DiscoveryType, FailurePolicy, HeaderRule, PathMatch, RouteAction, TrafficDirection,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn the_sdk_examples_style_config_loads_unchanged() {
    let config = Bootstrap::from_file(&fixture("sdk-http-headers.yaml")).expect("loads");
    let listener = &config.listeners[0];
    assert_eq!(listener.name, "main");
    assert_eq!(listener.address, "0.0.0.0:10000".parse().expect("addr"));
    assert_eq!(listener.http.stat_prefix, "ingress_http");
    let filter = &listener.http.wasm_filters[0];
    assert_eq!(filter.name, "http_headers");
    assert_eq!(filter.module_path, Path::new("/etc/envoy/proxy-wasm-plugins/http_headers.wasm"));
    assert_eq!(filter.failure_policy, FailurePolicy::FailClosed);
    let route = &listener.http.virtual_hosts[0].routes[0];
    assert_eq!(route.matcher.path, PathMatch::Prefix("/".into()));
    assert!(
        matches!(&route.action, RouteAction::Direct { status: 200, body } if body == "Request /hello and be welcomed!\n")
    );
}

#[test]
fn a_string_value_configuration_and_a_dns_cluster_load() {
    let config = Bootstrap::from_file(&fixture("sdk-http-config-with-cluster.yaml")).expect("loads");
    let filter = &config.listeners[0].http.wasm_filters[0];
    assert_eq!(filter.plugin_configuration, b"The secret to life is meaningless unless you discover it yourself");
    let cluster = config.cluster("httpbin").expect("cluster");
    assert_eq!(cluster.discovery, DiscoveryType::StrictDns);
    assert_eq!(cluster.connect_timeout, Duration::from_secs(5));
    assert_eq!((cluster.endpoints[0].host.as_str(), cluster.endpoints[0].port), ("httpbin", 80));
    assert!(matches!(&config.listeners[0].http.virtual_hosts[0].routes[0].action,
        RouteAction::Cluster { cluster, timeout: Some(t), .. } if cluster == "httpbin" && *t == Duration::from_secs(15)));
}

fn with(original: &str, replacement: &str) -> String {
    let text = std::fs::read_to_string(fixture("sdk-http-config-with-cluster.yaml")).expect("fixture");
    assert!(text.contains(original), "fixture lacks {original:?}");
    text.replacen(original, replacement, 1)
}

fn refusal(yaml: &str) -> String {
    Bootstrap::from_yaml(yaml).expect_err("must be refused").to_string()
}

#[test]
fn an_unsupported_field_is_refused_with_its_yaml_path_and_a_hint() {
    let text = refusal(&with("stat_prefix: ingress_http", "stat_prefix: ingress_http\n                tracing: {}"));
    assert!(
        text.contains("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tracing: is not supported by wasmtrace"),
        "{text}"
    );
    assert!(text.contains("supported here: stat_prefix"), "{text}");
}

#[test]
fn every_bad_field_is_reported_not_just_the_first() {
    let yaml = with("connect_timeout: 5s", "connect_timeout: soon\n      circuit_breakers: {}");
    let text = refusal(&yaml);
    assert!(text.contains("static_resources.clusters[0].connect_timeout: expected a duration"), "{text}");
    assert!(text.contains("static_resources.clusters[0].circuit_breakers: is not supported"), "{text}");
    assert!(text.starts_with("2 configuration errors"), "{text}");
}

#[test]
fn an_unknown_http_filter_and_a_missing_router_are_refused() {
    let yaml = with("name: envoy.filters.http.router", "name: envoy.filters.http.lua").replace(
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
    );
    let text = refusal(&yaml);
    assert!(text.contains("HTTP filter `envoy.filters.http.lua` is not supported"), "{text}");
    assert!(text.contains("must end with envoy.filters.http.router"), "{text}");
}

#[test]
fn a_route_to_an_undefined_cluster_is_refused() {
    let text = refusal(&with("cluster: httpbin", "cluster: nowhere"));
    assert!(text.contains("no cluster named `nowhere`"), "{text}");
}

#[test]
fn struct_and_bytes_configurations_are_passed_as_envoy_passes_them() {
    let yaml = with(
        "\"@type\": type.googleapis.com/google.protobuf.StringValue\n                          value: \"The secret to life is meaningless unless you discover it yourself\"",
        "\"@type\": type.googleapis.com/google.protobuf.Struct\n                          value: {sample: 0.5, service: gallery}",
    );
    let config = Bootstrap::from_yaml(&yaml).expect("loads");
    let json: serde_json::Value =
        serde_json::from_slice(&config.listeners[0].http.wasm_filters[0].plugin_configuration).expect("JSON");
    assert_eq!(json, serde_json::json!({"sample": 0.5, "service": "gallery"}));

    let yaml = with(
        "\"@type\": type.googleapis.com/google.protobuf.StringValue\n                          value: \"The secret to life is meaningless unless you discover it yourself\"",
        "\"@type\": type.googleapis.com/google.protobuf.BytesValue\n                          value: aGVsbG8=",
    );
    let config = Bootstrap::from_yaml(&yaml).expect("loads");
    assert_eq!(config.listeners[0].http.wasm_filters[0].plugin_configuration, b"hello");
}

#[test]
fn fail_open_header_matchers_and_camel_case_are_understood() {
    let yaml = with("name: \"http_config\"", "name: \"http_config\"\n                        failOpen: true")
        .replace("prefix: \"/\"", "prefix: \"/\"\n                            headers:\n                              - name: X-Tenant\n                                string_match: {exact: gallery}");
    let config = Bootstrap::from_yaml(&yaml).expect("loads");
    assert_eq!(config.listeners[0].http.wasm_filters[0].failure_policy, FailurePolicy::FailOpen);
    let header = &config.listeners[0].http.virtual_hosts[0].routes[0].matcher.headers[0];
    assert_eq!((header.name.as_str(), &header.rule), ("x-tenant", &HeaderRule::Exact("gallery".into())));
}

#[test]
fn broken_yaml_is_refused_with_the_position() {
    let text = refusal("static_resources: [unclosed");
    assert!(text.contains("not valid YAML"), "{text}");
}

#[test]
fn every_configuration_under_deploy_parses() {
    // The Envoy bootstraps (Kubernetes manifests and kustomizations live beside them).
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut parsed = 0;
    for dir in ["envoy", "examples", "k8s/components/sidecar/bootstraps"] {
        for entry in std::fs::read_dir(deploy.join(dir)).expect("deploy directory").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Bootstrap::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                parsed += 1;
            }
        }
    }
    assert!(parsed >= 8, "deploy/ holds the bootstraps");
}

#[test]
fn a_bootstrap_without_static_resources_loads_as_envoy_loads_it() {
    let yaml = "admin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: 9901 }\n";
    let bootstrap = Bootstrap::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert!(bootstrap.listeners.is_empty() && bootstrap.clusters.is_empty());
    assert!(bootstrap.admin.is_some());
}

fn forms(original: &str, replacement: &str) -> String {
    let text = std::fs::read_to_string(fixture("envoy-json-forms.yaml")).expect("fixture");
    assert!(text.contains(original), "fixture lacks {original:?}");
    text.replacen(original, replacement, 1)
}

#[test]
fn envoy_yaml_forms_load_as_envoy_reads_them() {
    let config = Bootstrap::from_file(&fixture("envoy-json-forms.yaml")).unwrap_or_else(|e| panic!("{e}"));
    // Single mappings for listeners, filter_chains, filters, virtual_hosts, domains, clusters,
    // endpoints and lb_endpoints; camelCase names throughout.
    let listener = &config.listeners[0];
    assert_eq!((listener.name.as_str(), listener.address), ("main", "127.0.0.1:10000".parse().expect("addr")));
    // Enum names in lower case.
    assert_eq!(listener.direction, TrafficDirection::Inbound);
    assert_eq!(listener.http.codec, CodecType::Http1);
    assert_eq!(listener.http.stat_prefix, "ingress_http");
    // Durations as strings and as {seconds, nanos}; a uint32 in a string.
    let limits = &listener.http.limits;
    assert_eq!(limits.stream_idle_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(limits.request_headers_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(limits.idle_timeout, Some(Duration::from_millis(250)));
    assert_eq!(limits.max_headers_count, 50);
    let host = &listener.http.virtual_hosts[0];
    assert_eq!(host.domains, ["*"]);
    assert!(matches!(&host.routes[0].action,
        RouteAction::Cluster { cluster, timeout: Some(t), prefix_rewrite: Some(p), .. }
            if cluster == "backend" && *t == Duration::from_secs(3) && p == "/"));
    assert!(matches!(&host.routes[1].action, RouteAction::Direct { status: 200, body } if body == "hello"));
    // Inside the TypedStruct too, and a bool in a string.
    let filter = &listener.http.wasm_filters[0];
    assert_eq!(
        (filter.name.as_str(), filter.root_id.as_str(), filter.vm_id.as_str()),
        ("headers", "headers_root", "headers")
    );
    assert_eq!(filter.failure_policy, FailurePolicy::FailOpen);
    assert_eq!(filter.environment, [("MODE".to_owned(), "demo".to_owned())]);
    let cluster = config.cluster("backend").expect("cluster");
    assert_eq!(cluster.discovery, DiscoveryType::StrictDns);
    assert_eq!(cluster.connect_timeout, Duration::from_millis(250));
    // typed_extension_protocol_options is keyed by a type name, matched exactly.
    assert!(cluster.http2);
    assert_eq!((cluster.endpoints[0].host.as_str(), cluster.endpoints[0].port), ("backend.local", 8080));
}

#[test]
fn durations_envoy_refuses_are_refused_with_their_path() {
    for (written, reported) in [
        ("1000ms", "staticResources.clusters.connectTimeout: expected a duration such as \"0.25s\", found `1000ms`"),
        ("1m", "staticResources.clusters.connectTimeout: expected a duration such as \"0.25s\", found `1m`"),
        ("+1s", "staticResources.clusters.connectTimeout: expected a duration such as \"0.25s\", found `+1s`"),
        ("5", "staticResources.clusters.connectTimeout: expected a duration such as \"5s\", found a bare number"),
        ("-1s", "staticResources.clusters.connectTimeout: is a negative duration (Envoy refuses negative durations)"),
        ("0s", "staticResources.clusters.connectTimeout: must be longer than 0s"),
    ] {
        let text = refusal(&forms("connectTimeout: 0.25s", &format!("connectTimeout: {written}")));
        assert!(text.contains(reported), "{written}: {text}");
        assert!(text.starts_with("1 configuration error"), "{written}: {text}");
    }
}

#[test]
fn a_field_in_both_spellings_and_a_null_list_item_are_refused() {
    let text = refusal(&forms("statPrefix: ingress_http", "statPrefix: ingress_http\n          stat_prefix: other"));
    assert!(
        text.contains("staticResources.listeners.filterChains.filters.typedConfig.statPrefix: is `stat_prefix` again"),
        "{text}"
    );
    let text = refusal(&forms("domains: \"*\"", "domains: [\"*\", null]"));
    assert!(text.contains("virtualHosts.domains[1]: is null"), "{text}");
}

#[test]
fn a_list_nested_in_a_list_is_read_as_envoy_splices_it() {
    let config = Bootstrap::from_yaml(&forms("domains: \"*\"", "domains: [[a.example, b.example], c.example]"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listeners[0].http.virtual_hosts[0].domains, ["a.example", "b.example", "c.example"]);
}

#[test]
fn a_clusters_http1_trailers_follow_its_own_enable_trailers_in_either_form() {
    let cluster = |extra: &str| {
        let yaml = with("      lb_policy: ROUND_ROBIN", &format!("      lb_policy: ROUND_ROBIN\n{extra}"));
        Bootstrap::from_yaml(&yaml).map(|config| config.clusters[0].http1_trailers)
    };
    assert_eq!(cluster(""), Ok(false), "Envoy's default");
    assert_eq!(cluster("      http_protocol_options: { enable_trailers: true }"), Ok(true), "the legacy field");
    let typed = |options: &str| {
        format!(
            "      typed_extension_protocol_options:\n        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n          \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n          explicit_http_config: {{ {options} }}"
        )
    };
    assert_eq!(cluster(&typed("http_protocol_options: { enable_trailers: true }")), Ok(true));
    assert_eq!(cluster(&typed("http_protocol_options: {}")), Ok(false));
    assert_eq!(cluster(&typed("http2_protocol_options: {}")), Ok(false), "HTTP/2 carries trailers anyway");
    let text = refusal(&with(
        "      lb_policy: ROUND_ROBIN",
        "      lb_policy: ROUND_ROBIN\n      http_protocol_options: { accept_http_10: true }",
    ));
    assert!(text.contains("clusters[0].http_protocol_options.accept_http_10: is not supported"), "{text}");
    // The listener's setting is its own: it does not turn on the cluster's.
    let config = Bootstrap::from_yaml(&with(
        "                codec_type: AUTO",
        "                codec_type: AUTO\n                http_protocol_options: { enable_trailers: true }",
    ))
    .expect("loads");
    assert!(config.listeners[0].http.http1_trailers);
    assert!(!config.clusters[0].http1_trailers);
}

#[test]
fn a_clusters_metadata_and_its_endpoints_load_from_a_file() {
    let yaml = with(
        "      lb_policy: ROUND_ROBIN",
        "      lb_policy: ROUND_ROBIN\n      metadata:\n        filter_metadata:\n          com.acme: { shard: 7 }",
    );
    let config = Bootstrap::from_yaml(&yaml).expect("loads");
    let cluster = &config.clusters[0];
    assert_eq!(cluster.metadata.filter_metadata["com.acme"]["shard"], 7);
    assert_eq!(cluster.endpoint_metadata(0).map(|m| m.filter_metadata.is_empty()), Some(true));
    assert_eq!(cluster.endpoint_metadata(1), None, "no second endpoint");
}

/// The fixture with a second listener `second` on `address` (`ip:port`).
fn with_second_listener(address: &str) -> String {
    let text = std::fs::read_to_string(fixture("sdk-http-config-with-cluster.yaml")).expect("fixture");
    let (start, end) = (text.find("    - name: main").expect("listener"), text.find("  clusters:").expect("clusters"));
    let (ip, port) = address.rsplit_once(':').expect("ip:port");
    let second = text[start..end]
        .replacen("name: main", "name: second", 1)
        .replacen("address: 127.0.0.1", &format!("address: \"{ip}\""), 1)
        .replacen("port_value: 10000", &format!("port_value: {port}"), 1);
    format!("{}{second}{}", &text[..end], &text[end..])
}

#[test]
fn two_listeners_on_one_address_are_refused_as_envoy_refuses_them() {
    for (address, overlaps) in [
        ("127.0.0.1:10000", true),
        ("0.0.0.0:10000", true),
        ("127.0.0.1:10001", false),
        ("127.0.0.2:10000", false),
        ("::1:10000", false),
    ] {
        let yaml = with_second_listener(address);
        match Bootstrap::from_yaml(&yaml) {
            Ok(config) => {
                assert!(!overlaps, "{address} overlaps 127.0.0.1:10000 and was taken");
                assert_eq!(config.listeners.len(), 2);
            }
            Err(e) => {
                let text = e.to_string();
                assert!(overlaps, "{address} refused: {text}");
                assert!(text.contains("listeners[1].address") && text.contains("`main`"), "{text}");
            }
        }
    }
}

#[test]
fn a_listeners_reuse_port_is_on_unless_turned_off_in_either_form() {
    let reuse_port =
        |yaml: &str| Bootstrap::from_yaml(yaml).map(|config| config.listeners[0].reuse_port).map_err(|e| e.to_string());
    let original = "    - name: main\n";
    assert_eq!(reuse_port(&with(original, original)), Ok(true), "on unless said otherwise, as in Envoy");
    assert_eq!(reuse_port(&with(original, "    - name: main\n      enable_reuse_port: false\n")), Ok(false));
    assert_eq!(reuse_port(&with(original, "    - name: main\n      enable_reuse_port: { value: false }\n")), Ok(false));
    assert_eq!(reuse_port(&with(original, "    - name: main\n      enable_reuse_port: { value: true }\n")), Ok(true));
    let refused = reuse_port(&with(original, "    - name: main\n      enable_reuse_port: sometimes\n"));
    assert!(refused.is_err_and(|e| e.contains("enable_reuse_port")), "a value that is not a boolean is refused");
}
