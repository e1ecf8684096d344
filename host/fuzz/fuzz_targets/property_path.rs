//! Fuzz target: `cargo +nightly fuzz run property_path` (from host/fuzz).
//!
//! A guest-supplied property path (`proxy_get_property`, `proxy_set_property`: segments split at
//! NUL) resolved against a stream whose request headers the fuzzer also picks. Every value
//! serialises in its documented shape, and what `proxy_set_property` stores reads back.

#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use wasmtrace_runtime::filter_state::FilterState;
use wasmtrace_runtime::fuzzing::{get_property, property_segments};
use wasmtrace_runtime::header_map::decode_pairs;
use wasmtrace_runtime::properties::{PropertyValue, filter_state_key};
use wasmtrace_runtime::{HeaderMap, HttpExchange, NodeInfo, PluginConfig};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Read on a stream (else on the root context, which has no stream).
    on_stream: bool,
    /// Request headers added to the fixed ones.
    request_headers: Vec<(&'a [u8], &'a [u8])>,
    /// `:status` of the response, when there is one.
    status: Option<&'a [u8]>,
    /// A value `proxy_set_property(path, value)` stores first.
    set: Option<&'a [u8]>,
    /// The serialised path, as the guest passes it.
    path: &'a [u8],
}

/// Paths whose first segment names one of the host's own attributes (which `proxy_set_property`
/// does not shadow).
const VOCABULARY: &[&[u8]] = &[
    b"plugin_name",
    b"plugin_root_id",
    b"plugin_vm_id",
    b"node",
    b"xds",
    b"request",
    b"response",
    b"source",
    b"destination",
    b"upstream",
    b"connection_id",
    b"connection",
    b"filter_state",
    b"metadata",
    // Envoy's pre-1.33 top-level spellings of `xds.*`, kept as aliases.
    b"cluster_name",
    b"cluster_metadata",
    b"route_name",
    b"route_metadata",
    b"listener_direction",
    b"listener_metadata",
    b"upstream_host_metadata",
];

fn node() -> NodeInfo {
    let metadata = serde_json::json!({
        "region": "eu",
        "zone": { "name": "a", "weight": 1.5, "canary": true, "none": null, "list": [1, "x", { "y": 2 }] },
    });
    let serde_json::Value::Object(metadata) = metadata else { unreachable!() };
    NodeInfo { id: "sidecar~1".into(), cluster: "gallery".into(), metadata }
}

fn exchange(input: &Input<'_>) -> HttpExchange {
    let mut request = HeaderMap::from_pairs([
        (":path", "/a/b?x=1"),
        (":method", "GET"),
        (":authority", "gallery"),
        (":scheme", "http"),
        ("x-tag", "1"),
        ("x-tag", "2"),
    ]);
    for (name, value) in &input.request_headers {
        request.add(name, value);
    }
    let mut exchange = HttpExchange::with_request_headers(request);
    if let Some(status) = input.status {
        exchange.response_headers = Some(HeaderMap::from_pairs([(&b":status"[..], status), (b"server", b"up")]));
        exchange.response_trailers = Some(HeaderMap::from_pairs([("grpc-status", "0")]));
    }
    let info = &mut exchange.info;
    info.start_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    info.end_time = Some(info.start_time + Duration::from_millis(12));
    info.source = "10.1.2.3:4567".parse().ok();
    info.destination = "[::1]:8080".parse().ok();
    info.upstream = "127.0.0.1:9000".parse().ok();
    info.connection_id = 7;
    info.route_name = Some("r".into());
    info.cluster_name = Some("c".into());
    info.request_body_bytes = 10;
    // Beyond i64: `response.size` and `response.total_size` saturate. (At u64::MAX,
    // `total_size`'s unchecked add overflows: reported, unreachable by counting real bytes.)
    info.response_body_bytes = 1 << 63;
    info.filter_state.insert("wasm.seen".into(), b"yes".to_vec());
    exchange
}

fn check_encoding(value: &PropertyValue) {
    let bytes = value.encode();
    match value {
        PropertyValue::Bytes(raw) => assert_eq!(&bytes, raw),
        PropertyValue::Int(_) | PropertyValue::UInt(_) | PropertyValue::Double(_) => assert_eq!(bytes.len(), 8),
        PropertyValue::Bool(_) => assert_eq!(bytes.len(), 1),
        PropertyValue::Map(pairs) => {
            assert_eq!(&decode_pairs(&bytes).expect("a map property decodes as a header map"), pairs);
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let plugin = PluginConfig { name: "p".into(), root_id: "root".into(), vm_id: "vm".into(), ..Default::default() };
    let node = node();
    let mut exchange = exchange(&input);
    let mut root_state = FilterState::default();

    let read = |exchange: &HttpExchange, root_state: &FilterState, path: &[u8]| {
        get_property(path, &plugin, &node, input.on_stream.then_some(exchange), root_state)
    };
    if let Some(value) = read(&exchange, &root_state, input.path) {
        check_encoding(&value);
    }

    // proxy_set_property(path, value), then read it back under its filter-state key and, unless
    // the path names a host attribute, under the path itself.
    let Some(value) = input.set else { return };
    let segments = property_segments(input.path);
    let key = filter_state_key(&segments);
    if input.on_stream {
        exchange.info.filter_state.insert(key.clone(), value.to_vec());
    } else {
        root_state.insert(key.clone(), value.to_vec());
    }
    let expected = Some(PropertyValue::Bytes(value.to_vec()));
    let by_key = [&b"filter_state\0"[..], key.as_bytes()].concat();
    assert_eq!(read(&exchange, &root_state, &by_key), expected, "set_property's value reads back by its key");
    if !VOCABULARY.contains(&segments[0]) {
        assert_eq!(read(&exchange, &root_state, input.path), expected, "and by its path");
    }
});
