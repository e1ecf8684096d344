//! Properties and filter state, as the filter reads them back into request headers.

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtrace_runtime::{Action, PluginConfig};

use crate::fixture::{instance, plugin, request, request_header, runtime};

#[test]
fn properties_describe_the_plugin_the_request_the_peer_and_the_node() {
    let runtime = runtime();
    let config = PluginConfig { root_id: "probe_root".into(), ..plugin("probe", "probe_vm", "") };
    let probe = instance(&runtime, "abi-probe", config, Rc::default());
    let exchange = request("/props", &[]);
    exchange.borrow_mut().info.source = Some("192.0.2.7:51234".parse().expect("address"));
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    let header = |name: &str| request_header(&exchange, name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(header("x-prop-plugin-name"), "probe");
    assert_eq!(header("x-prop-root-id"), "probe_root");
    assert_eq!(header("x-prop-vm-id"), "probe_vm");
    assert_eq!(header("x-prop-path"), "/props");
    assert_eq!(header("x-prop-method"), "GET");
    assert_eq!(header("x-prop-source"), "192.0.2.7:51234");
    assert_eq!(header("x-prop-source-port"), "51234");
    assert_eq!(header("x-prop-region"), "eu-west");
    assert_eq!(header("x-prop-node-id"), "sidecar~10.0.0.1~gallery-api");
    assert_eq!(header("x-prop-missing"), "none");
    assert_eq!(header("x-prop-roundtrip"), "set-by-probe");
}

#[test]
fn filter_state_set_by_a_filter_is_visible_to_the_data_plane_and_other_filters() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/props", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    stream.on_request_headers(true);
    let state = exchange.borrow().info.filter_state.get("wasm.probe_state").cloned();
    assert_eq!(state.as_deref(), Some(&b"set-by-probe"[..]));
}

#[test]
fn log_level_time_foreign_functions_and_grpc_answer_like_envoy() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/misc", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    assert_eq!(request_header(&exchange, "x-log-level"), Some("Trace".into()));
    let guest_nanos: u128 = request_header(&exchange, "x-time-nanos").and_then(|v| v.parse().ok()).expect("time");
    let host_nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos();
    assert!(host_nanos >= guest_nanos && host_nanos - guest_nanos < 10_000_000_000, "guest clock is the host's");
    assert_eq!(request_header(&exchange, "x-foreign"), Some("Some(NotFound)".into()));
    assert_eq!(request_header(&exchange, "x-grpc"), Some("Some(InternalFailure)".into()));
}

fn metadata(value: serde_json::Value) -> wasmtrace_runtime::properties::Metadata {
    wasmtrace_runtime::properties::Metadata {
        filter_metadata: std::sync::Arc::new(value.as_object().cloned().unwrap_or_default()),
    }
}

#[test]
fn a_filter_reads_configuration_metadata_by_type_and_the_plaintext_connection_as_envoy_answers() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let exchange = request("/attrs", &[]);
    {
        let info = &mut exchange.borrow_mut().info;
        info.connection_id = 42;
        info.route_name = Some("r".into());
        info.listener_metadata = metadata(serde_json::json!({"acme": {"tier": "gold"}}));
        info.route_metadata = Some(metadata(serde_json::json!({
            "acme": {"owner": "team-x", "weight": 3, "canary": true, "tags": ["a", "b"], "nothing": null}
        })));
    }
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    let header = |name: &str| request_header(&exchange, &format!("x-attr-{name}")).unwrap_or_else(|| panic!("{name}"));
    for (name, expected) in [
        ("route-name", "r"),
        ("listener-tier", "gold"),
        ("route-owner", "team-x"),
        ("route-weight", "3"),
        ("route-canary", "true"),
        ("route-tags", "a=;b="),
        ("route-tag-1", "b"),
        ("route-null", "absent"),
        ("cluster-shard", "absent"),
        ("dynamic-metadata", "empty"),
        ("dynamic-filter-metadata", "00000000"),
        ("connection-id", "42"),
        ("connection-mtls", "false"),
        ("connection-sni", "empty"),
        ("connection-tls-version", "absent"),
        ("upstream-address", "absent"),
        ("upstream-attempts", "0"),
        // Envoy ≤ 1.32's top-level spelling, kept as an alias.
        ("top-route-name", "r"),
    ] {
        assert_eq!(header(name), expected, "{name}");
    }
}
