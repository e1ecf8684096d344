//! Property paths (`proxy_get_property`): Envoy's attribute vocabulary resolved against a stream,
//! the plugin and the node, and serialised the way Envoy serialises CEL values.
//!
//! The vocabulary is Envoy's (1.33 and later): `request.*`, `response.*`, `source.*`,
//! `destination.*`, `connection.*`, `upstream.*`, `metadata` (dynamic metadata), `filter_state`,
//! `xds.*` (`node`, `cluster_name`, `cluster_metadata`, `route_name`, `route_metadata`,
//! `virtual_host_name`, `virtual_host_metadata`, `upstream_host_metadata`, `listener_direction`,
//! `listener_metadata`, `filter_chain_name`), `plugin_name`, `plugin_root_id`, `plugin_vm_id` and
//! `connection_id`. Two wasmtrace additions sit beside `plugin_name` (Envoy has neither):
//! `plugin_generation` (an integer: which hot-swap generation of the filter this VM runs) and
//! `plugin_sha256` (its module's sha256, hex), so a filter can say which code made its output. Any other first segment names filter state a filter set with
//! `proxy_set_property`.
//!
//! One deliberate extension: the Wasm-only top-level spellings of `xds.*` that Envoy served up to
//! 1.32 and removed in 1.33 (`node`, `cluster_name`, `cluster_metadata`, `route_name`,
//! `route_metadata`, `listener_direction`, `listener_metadata`, `upstream_host_metadata`) still
//! answer, as aliases: filters written for those Envoys (Higress plugins read `cluster_name`,
//! Istio's older ones `listener_direction`) keep working. They answer as Envoy 1.32 did, never
//! from filter state: a filter cannot pose as the route or the upstream to the filters after it.
//!
//! Serialisation: strings and bytes raw; integers, doubles, timestamps (ns since epoch) and
//! durations (ns) as 8 little-endian bytes; booleans as one byte; maps as header-map pairs (a
//! count and nothing else for an empty one), each value serialised by these rules (so a nested
//! map is pairs inside a value); lists as pairs whose keys are the items and whose values are
//! empty; messages (`xds.node`, `envoy.config.core.v3.Metadata`) as their protobuf bytes.
//! A path may go on into a message: a metadata's `filter_metadata` is a map of namespaces, each a
//! `google.protobuf.Struct`, whose fields go on as maps, lists (by index) and values.

mod message;
mod value;

use std::time::SystemTime;

use crate::abi::unix_nanos;
use crate::exchange::HttpExchange;
use crate::filter_state::FilterState;
use crate::header_map::HeaderMap;
use crate::plugin::PluginConfig;
use crate::services::NodeInfo;

use message::{metadata_property, node_property};
pub use value::{Metadata, PropertyValue};

/// What a property lookup can see.
pub(crate) struct PropertyScope<'a> {
    pub plugin: &'a PluginConfig,
    pub node: &'a NodeInfo,
    pub exchange: Option<&'a HttpExchange>,
    pub root_filter_state: &'a FilterState,
}

/// Key under which `proxy_set_property(path)` stores filter state (Envoy's `wasm.` prefix).
pub fn filter_state_key(path: &[&[u8]]) -> String {
    let mut key = String::with_capacity(5 + path.iter().map(|p| p.len() + 1).sum::<usize>());
    key.push_str("wasm");
    for segment in path {
        key.push('.');
        key.push_str(&String::from_utf8_lossy(segment));
    }
    key
}

/// Longest filter-state key looked up without an allocation.
const KEY_ON_STACK: usize = 128;

/// The filter state under `path`'s key ([`filter_state_key`]), looked up with the key built on
/// the stack when it is short and UTF-8 (a lookup on every request).
fn filter_state<'a>(state: &'a FilterState, path: &[&[u8]]) -> Option<&'a Vec<u8>> {
    let mut stack = [0u8; KEY_ON_STACK];
    let mut len = 4;
    stack[..4].copy_from_slice(b"wasm");
    for segment in path {
        let end = len + 1 + segment.len();
        if end > KEY_ON_STACK {
            return state.get(&filter_state_key(path));
        }
        stack[len] = b'.';
        stack[len + 1..end].copy_from_slice(segment);
        len = end;
    }
    match std::str::from_utf8(&stack[..len]) {
        Ok(key) => state.get(key),
        Err(_) => state.get(&filter_state_key(path)),
    }
}

fn nanos_since_epoch(at: SystemTime) -> i64 {
    i64::try_from(unix_nanos(at)).unwrap_or(i64::MAX)
}

fn header_map_value(map: &HeaderMap) -> PropertyValue {
    // Repeated headers are joined with commas, as Envoy's `request.headers` does.
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (k, _) in map.iter() {
        if !pairs.iter().any(|(seen, _)| seen == k) {
            pairs.push((k.to_vec(), map.get_joined(k).unwrap_or_default()));
        }
    }
    PropertyValue::Map(pairs)
}

fn headers_property(map: Option<&HeaderMap>, rest: &[&[u8]]) -> Option<PropertyValue> {
    let map = map?;
    match rest {
        [] => Some(header_map_value(map)),
        [name] => map.get_joined(name).map(PropertyValue::Bytes),
        _ => None,
    }
}

fn single(rest: &[&[u8]], value: Option<PropertyValue>) -> Option<PropertyValue> {
    if rest.is_empty() { value } else { None }
}

fn request_property(exchange: &HttpExchange, attr: &[u8], rest: &[&[u8]]) -> Option<PropertyValue> {
    let headers = exchange.request_headers.as_ref();
    let header = |name: &str| headers.and_then(|h| h.get(name.as_bytes())).map(|v| PropertyValue::Bytes(v.to_vec()));
    let path = headers.and_then(|h| h.get(b":path")).unwrap_or_default();
    let (url_path, query) = match path.iter().position(|b| *b == b'?') {
        Some(q) => (&path[..q], &path[q + 1..]),
        None => (path, &b""[..]),
    };
    let value = match attr {
        b"headers" => return headers_property(headers, rest),
        b"path" => header(":path"),
        b"url_path" => Some(PropertyValue::Bytes(url_path.to_vec())),
        b"query" => Some(PropertyValue::Bytes(query.to_vec())),
        b"host" => header(":authority"),
        b"scheme" => header(":scheme"),
        b"method" => header(":method"),
        b"referer" => header("referer"),
        b"useragent" => header("user-agent"),
        b"id" => header("x-request-id"),
        b"protocol" => Some(PropertyValue::text(exchange.info.protocol.clone())),
        b"time" => Some(PropertyValue::Int(nanos_since_epoch(exchange.info.start_time))),
        b"duration" => exchange.info.end_time.map(|end| {
            let d = end.duration_since(exchange.info.start_time).unwrap_or_default();
            PropertyValue::Int(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        }),
        b"size" => Some(PropertyValue::Int(i64::try_from(exchange.info.request_body_bytes).unwrap_or(i64::MAX))),
        b"total_size" => {
            let header_bytes = headers.map_or(0, HeaderMap::byte_size) as u64;
            Some(PropertyValue::Int(
                i64::try_from(exchange.info.request_body_bytes.saturating_add(header_bytes)).unwrap_or(i64::MAX),
            ))
        }
        _ => None,
    };
    single(rest, value)
}

fn response_property(exchange: &HttpExchange, attr: &[u8], rest: &[&[u8]]) -> Option<PropertyValue> {
    let headers = exchange.response_headers.as_ref();
    let value = match attr {
        b"headers" => return headers_property(headers, rest),
        b"trailers" => return headers_property(exchange.response_trailers.as_ref(), rest),
        b"code" => {
            headers.and_then(|h| h.get_str(":status")).and_then(|s| s.parse::<i64>().ok()).map(PropertyValue::Int)
        }
        b"code_details" => exchange.info.response_code_details.clone().map(PropertyValue::text),
        b"flags" => Some(PropertyValue::Int(0)),
        b"size" => Some(PropertyValue::Int(i64::try_from(exchange.info.response_body_bytes).unwrap_or(i64::MAX))),
        b"total_size" => {
            let header_bytes = headers.map_or(0, HeaderMap::byte_size) as u64;
            Some(PropertyValue::Int(
                i64::try_from(exchange.info.response_body_bytes.saturating_add(header_bytes)).unwrap_or(i64::MAX),
            ))
        }
        _ => None,
    };
    single(rest, value)
}

fn address_property(addr: Option<std::net::SocketAddr>, attr: &[u8], rest: &[&[u8]]) -> Option<PropertyValue> {
    let addr = addr?;
    let value = match attr {
        b"address" => PropertyValue::text(addr.to_string()),
        b"port" => PropertyValue::Int(i64::from(addr.port())),
        _ => return None,
    };
    single(rest, Some(value))
}

/// `connection.*` of a plaintext downstream connection, as Envoy answers without TLS:
/// `mtls` false, `requested_server_name` empty, the TLS attributes (`tls_version`,
/// `subject_*`, `dns_san_*`, `uri_san_*`, `sha256_peer_certificate_digest`) absent, and
/// `termination_details` and `transport_failure_reason` absent (nothing failed or ended).
fn connection_property(info: &crate::StreamInfo, attr: &[u8], rest: &[&[u8]]) -> Option<PropertyValue> {
    let value = match attr {
        b"id" => PropertyValue::UInt(info.connection_id),
        b"mtls" => PropertyValue::Bool(false),
        b"requested_server_name" => PropertyValue::Bytes(Vec::new()),
        _ => return None,
    };
    single(rest, Some(value))
}

/// `upstream.*`: `request_attempt_count` always (0 before the request is forwarded); the rest
/// once an upstream host was chosen, for a plaintext connection (no TLS attributes). `locality`
/// is an empty `envoy.config.core.v3.Locality` (this proxy reads no locality, so none is
/// configured).
fn upstream_property(info: &crate::StreamInfo, attr: &[u8], rest: &[&[u8]]) -> Option<PropertyValue> {
    if attr == b"request_attempt_count" {
        return single(rest, Some(PropertyValue::UInt(u64::from(info.attempt_count))));
    }
    let host = info.upstream?;
    let value = match attr {
        b"address" | b"port" => return address_property(Some(host), attr, rest),
        b"local_address" => info.upstream_local_address.map(|a| PropertyValue::text(a.to_string())),
        b"transport_failure_reason" => Some(PropertyValue::text(info.upstream_transport_failure_reason.clone())),
        b"locality" => {
            return match rest {
                [] | [b"region" | b"zone" | b"sub_zone"] => Some(PropertyValue::Bytes(Vec::new())),
                _ => None,
            };
        }
        _ => None,
    };
    single(rest, value)
}

/// `xds.*`: the node (also from a root context), and what the stream's listener, route, cluster
/// and upstream host say. The route (and with it the cluster) is known from before the request
/// filters run (see the data plane's routing); the upstream host once it is chosen.
fn xds_property(scope: &PropertyScope<'_>, attr: &[u8], rest: &[&[u8]]) -> Option<PropertyValue> {
    if attr == b"node" {
        return node_property(scope.node, rest);
    }
    let info = &scope.exchange?.info;
    let text = |value: &Option<String>| value.clone().map(PropertyValue::text);
    let value = match attr {
        b"route_name" => text(&info.route_name),
        b"cluster_name" => text(&info.cluster_name),
        b"virtual_host_name" => text(&info.virtual_host_name),
        b"filter_chain_name" => Some(PropertyValue::text(info.filter_chain_name.clone())),
        b"listener_direction" => Some(PropertyValue::Int(i64::from(info.listener_direction))),
        b"listener_metadata" => return metadata_property(&info.listener_metadata, rest),
        b"route_metadata" => return metadata_property(info.route_metadata.as_ref()?, rest),
        b"virtual_host_metadata" => return metadata_property(info.virtual_host_metadata.as_ref()?, rest),
        b"cluster_metadata" => return metadata_property(info.cluster_metadata.as_ref()?, rest),
        b"upstream_host_metadata" => {
            info.upstream?;
            return metadata_property(&info.upstream_host_metadata, rest);
        }
        _ => None,
    };
    single(rest, value)
}

/// The top-level spellings of `xds.*` Envoy served up to 1.32 (see the module docs).
macro_rules! LEGACY_XDS {
    () => {
        b"node"
            | b"cluster_name"
            | b"cluster_metadata"
            | b"route_name"
            | b"route_metadata"
            | b"listener_direction"
            | b"listener_metadata"
            | b"upstream_host_metadata"
    };
}

/// Resolves `path` (segments as the guest sent them, split at NUL).
pub(crate) fn resolve(path: &[&[u8]], scope: &PropertyScope<'_>) -> Option<PropertyValue> {
    let (first, rest) = path.split_first()?;
    let exchange = scope.exchange;
    let plugin = scope.plugin;
    match (*first, rest) {
        (b"plugin_name", []) => Some(PropertyValue::text(plugin.name.clone())),
        (b"plugin_root_id", []) => Some(PropertyValue::text(plugin.root_id.clone())),
        (b"plugin_vm_id", []) => Some(PropertyValue::text(plugin.vm_id.clone())),
        (b"plugin_generation", []) => plugin.provenance.as_ref().map(|p| PropertyValue::UInt(p.generation)),
        (b"plugin_sha256", []) => plugin.provenance.as_ref().map(|p| PropertyValue::text(p.module_sha256.clone())),
        (b"xds", [attr, tail @ ..]) => xds_property(scope, attr, tail),
        (b"request", [attr, tail @ ..]) => request_property(exchange?, attr, tail),
        (b"response", [attr, tail @ ..]) => response_property(exchange?, attr, tail),
        (b"source", [attr, tail @ ..]) => address_property(exchange?.info.source, attr, tail),
        (b"destination", [attr, tail @ ..]) => address_property(exchange?.info.destination, attr, tail),
        (b"upstream", [attr, tail @ ..]) => upstream_property(&exchange?.info, attr, tail),
        (b"connection", [attr, tail @ ..]) => connection_property(&exchange?.info, attr, tail),
        (b"connection_id", []) => Some(PropertyValue::UInt(exchange?.info.connection_id)),
        (b"metadata", rest) => metadata_property(&exchange?.info.dynamic_metadata, rest),
        // Authoritative, as in Envoy ≤ 1.32: never answered from filter state another filter set.
        (attr @ LEGACY_XDS!(), rest) => xds_property(scope, attr, rest),
        (b"filter_state", [key]) => {
            let key = String::from_utf8_lossy(key);
            let value = match exchange {
                Some(e) => e.info.filter_state.get(key.as_ref()),
                None => scope.root_filter_state.get(key.as_ref()),
            };
            value.cloned().map(PropertyValue::Bytes)
        }
        // Anything else may be filter state a filter set with proxy_set_property.
        _ => filter_state_value(exchange, scope, path),
    }
}

/// The filter state a filter set with `proxy_set_property(path)`.
fn filter_state_value(
    exchange: Option<&HttpExchange>,
    scope: &PropertyScope<'_>,
    path: &[&[u8]],
) -> Option<PropertyValue> {
    let value = match exchange {
        Some(e) => filter_state(&e.info.filter_state, path),
        None => filter_state(scope.root_filter_state, path),
    };
    value.cloned().map(PropertyValue::Bytes)
}

// === protobuf encoding of envoy.config.core.v3.Node (id = 1, cluster = 2, metadata = 3),
// envoy.config.core.v3.Metadata (filter_metadata = 1, a map of Struct) and google.protobuf.Struct ===

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value as Json;

    use super::message::metadata_protobuf;
    use super::value::{EMPTY_PAIRS, encode_map};
    use super::*;

    fn scope_with<'a>(
        plugin: &'a PluginConfig,
        node: &'a NodeInfo,
        exchange: &'a HttpExchange,
        empty: &'a FilterState,
    ) -> PropertyScope<'a> {
        PropertyScope { plugin, node, exchange: Some(exchange), root_filter_state: empty }
    }

    #[test]
    fn request_attributes_come_from_the_headers() {
        let plugin = PluginConfig::named("p");
        let node = NodeInfo::default();
        let empty = FilterState::default();
        let mut exchange = HttpExchange::with_request_headers(HeaderMap::from_pairs([
            (":path", "/a/b?x=1"),
            (":method", "GET"),
            ("x-tag", "1"),
            ("x-tag", "2"),
        ]));
        exchange.info.source = Some("10.1.2.3:4567".parse().expect("addr"));
        let scope = scope_with(&plugin, &node, &exchange, &empty);
        let get = |p: &[&[u8]]| resolve(p, &scope);
        assert_eq!(get(&[b"request", b"url_path"]), Some(PropertyValue::text("/a/b")));
        assert_eq!(get(&[b"request", b"query"]), Some(PropertyValue::text("x=1")));
        assert_eq!(get(&[b"request", b"headers", b"x-tag"]), Some(PropertyValue::text("1,2")));
        assert_eq!(get(&[b"source", b"address"]), Some(PropertyValue::text("10.1.2.3:4567")));
        assert_eq!(get(&[b"source", b"port"]).map(|v| v.encode()), Some(4567i64.to_le_bytes().to_vec()));
        assert_eq!(get(&[b"response", b"code"]), None);
        assert_eq!(get(&[b"request", b"method", b"extra"]), None);
    }

    #[test]
    fn node_metadata_is_walked_and_the_whole_node_is_protobuf() {
        let plugin = PluginConfig::named("p");
        let mut node = NodeInfo { id: "sidecar~1".into(), cluster: "gallery".into(), ..NodeInfo::default() };
        node.metadata.insert("region".into(), Json::String("eu".into()));
        node.metadata.insert("weight".into(), serde_json::json!(2));
        let empty = FilterState::default();
        let exchange = HttpExchange::default();
        let scope = scope_with(&plugin, &node, &exchange, &empty);
        assert_eq!(resolve(&[b"xds", b"node", b"metadata", b"region"], &scope), Some(PropertyValue::text("eu")));
        assert_eq!(resolve(&[b"xds", b"node", b"id"], &scope), Some(PropertyValue::text("sidecar~1")));
        let Some(PropertyValue::Bytes(proto)) = resolve(&[b"xds", b"node"], &scope) else { panic!("node bytes") };
        assert_eq!(&proto[..11], b"\x0a\x09sidecar~1");
        // A Struct read whole is a map whose values are serialised by type, as Envoy's.
        assert_eq!(
            resolve(&[b"xds", b"node", b"metadata"], &scope),
            Some(PropertyValue::Map(vec![
                (b"region".to_vec(), b"eu".to_vec()),
                (b"weight".to_vec(), 2f64.to_le_bytes().to_vec()),
            ]))
        );
    }

    /// `{"acme": {"b": true, "l": ["x", 1], "n": 2.5, "s": {"t": "u"}, "z": null}, "empty": {}}`.
    fn sample_metadata() -> Metadata {
        let value = serde_json::json!({
            "acme": {"b": true, "l": ["x", 1], "n": 2.5, "s": {"t": "u"}, "z": null},
            "empty": {},
        });
        Metadata { filter_metadata: Arc::new(value.as_object().cloned().unwrap_or_default()) }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap_or(0)).collect()
    }

    #[test]
    fn metadata_read_whole_is_the_protobuf_of_envoy_config_core_v3_metadata() {
        // Golden bytes: protobuf's own serialisation (deterministic: map keys in order) of the
        // same Metadata parsed from JSON with the Envoy protos.
        let one = Metadata {
            filter_metadata: Arc::new(serde_json::json!({"acme": {"k": "v"}}).as_object().cloned().unwrap_or_default()),
        };
        assert_eq!(metadata_protobuf(&one), hex("0a120a0461636d65120a0a080a016b12031a0176"));
        assert_eq!(
            metadata_protobuf(&sample_metadata()),
            hex(concat!(
                "0a560a0461636d65124e0a070a0162120220010a170a016c121232100a031a01780a0911000000000000f03f",
                "0a0e0a016e12091100000000000004400a110a0173120c2a0a0a080a017412031a01750a070a017a12020800",
                "0a090a05656d7074791200"
            ))
        );
        assert_eq!(metadata_protobuf(&Metadata::default()), Vec::<u8>::new(), "an empty message is no bytes");
    }

    #[test]
    fn metadata_is_navigated_into_its_structs_as_envoy_converts_them() {
        let metadata = sample_metadata();
        let get = |path: &[&[u8]]| metadata_property(&metadata, path).map(PropertyValue::into_encoded);
        let acme: &[&[u8]] = &[b"filter_metadata", b"acme"];
        let at = |tail: &[&[u8]]| get(&[acme, tail].concat());
        assert_eq!(at(&[b"b"]), Some(vec![1]), "a bool is one byte");
        assert_eq!(at(&[b"n"]), Some(2.5f64.to_le_bytes().to_vec()), "a number is a double");
        assert_eq!(at(&[b"s", b"t"]), Some(b"u".to_vec()), "a string is raw");
        assert_eq!(at(&[b"l", b"0"]), Some(b"x".to_vec()), "a list is indexed");
        assert_eq!(at(&[b"l", b"1"]), Some(1f64.to_le_bytes().to_vec()));
        assert_eq!(at(&[b"l", b"2"]), None, "past the end");
        assert_eq!(at(&[b"z"]), None, "null is not found (Envoy cannot serialise it)");
        assert_eq!(at(&[b"missing"]), None);
        assert_eq!(at(&[b"n", b"deeper"]), None, "a number has no fields");
        // A list is pairs of items and empty values; a Struct is pairs of fields and values.
        let list = encode_map(&[(b"x".to_vec(), vec![]), (1f64.to_le_bytes().to_vec(), vec![])]);
        assert_eq!(at(&[b"l"]), Some(list.clone()));
        let inner = encode_map(&[(b"t".to_vec(), b"u".to_vec())]);
        assert_eq!(at(&[b"s"]), Some(inner.clone()));
        let whole = encode_map(&[
            (b"b".to_vec(), vec![1]),
            (b"l".to_vec(), list),
            (b"n".to_vec(), 2.5f64.to_le_bytes().to_vec()),
            (b"s".to_vec(), inner),
            (b"z".to_vec(), vec![]),
        ]);
        assert_eq!(at(&[]), Some(whole.clone()));
        assert_eq!(
            get(&[b"filter_metadata"]),
            Some(encode_map(&[(b"acme".to_vec(), whole), (b"empty".to_vec(), EMPTY_PAIRS.to_vec())]))
        );
        assert_eq!(get(&[b"filter_metadata", b"empty"]), Some(EMPTY_PAIRS.to_vec()), "an empty map is a zero count");
        assert_eq!(get(&[b"filter_metadata", b"nope"]), None);
        assert_eq!(get(&[b"typed_filter_metadata"]), Some(EMPTY_PAIRS.to_vec()));
        assert_eq!(get(&[b"no_such_field"]), None);
    }

    #[test]
    fn configuration_metadata_is_there_from_the_route_on_and_the_hosts_from_the_upstream_on() {
        let plugin = PluginConfig::named("p");
        let node = NodeInfo::default();
        let empty = FilterState::default();
        let mut exchange = HttpExchange::default();
        exchange.info.listener_metadata = sample_metadata();
        exchange.info.upstream_host_metadata = sample_metadata();
        let region: &[&[u8]] = &[b"filter_metadata", b"acme", b"s", b"t"];
        let xds = |attr: &'static [u8]| [&[b"xds".as_slice(), attr][..], region].concat();
        {
            let scope = scope_with(&plugin, &node, &exchange, &empty);
            let get = |path: &[&[u8]]| resolve(path, &scope);
            assert_eq!(get(&xds(b"listener_metadata")), Some(PropertyValue::text("u")), "the listener's, always");
            assert_eq!(get(&[b"xds", b"route_metadata"]), None, "no route yet");
            assert_eq!(get(&[b"xds", b"cluster_metadata"]), None);
            assert_eq!(get(&xds(b"upstream_host_metadata")), None, "no upstream host chosen yet");
            assert_eq!(get(&[b"xds", b"filter_chain_name"]), Some(PropertyValue::text("")));
        }
        exchange.info.route_metadata = Some(Metadata::default());
        exchange.info.virtual_host_metadata = Some(sample_metadata());
        exchange.info.cluster_metadata = Some(sample_metadata());
        exchange.info.upstream = Some("10.0.0.9:8080".parse().expect("addr"));
        let scope = scope_with(&plugin, &node, &exchange, &empty);
        let get = |path: &[&[u8]]| resolve(path, &scope);
        assert_eq!(get(&[b"xds", b"route_metadata"]), Some(PropertyValue::Bytes(vec![])), "an empty Metadata");
        assert_eq!(
            get(&[b"xds", b"route_metadata", b"filter_metadata"]).map(|v| v.encode()),
            Some(EMPTY_PAIRS.to_vec())
        );
        assert_eq!(get(&xds(b"virtual_host_metadata")), Some(PropertyValue::text("u")));
        assert_eq!(get(&xds(b"cluster_metadata")), Some(PropertyValue::text("u")));
        assert_eq!(get(&xds(b"upstream_host_metadata")), Some(PropertyValue::text("u")));
        // The top-level spellings Envoy served up to 1.32 answer the same.
        assert_eq!(get(&[b"cluster_metadata"]), get(&xds(b"cluster_metadata")[..2]));
        assert_eq!(get(&[b"listener_metadata"]), get(&[b"xds", b"listener_metadata"]));
    }

    #[test]
    fn a_plaintext_connection_and_its_upstream_answer_as_envoy_without_tls() {
        let plugin = PluginConfig::named("p");
        let node = NodeInfo::default();
        let empty = FilterState::default();
        let mut exchange = HttpExchange::default();
        exchange.info.connection_id = 7;
        {
            let scope = scope_with(&plugin, &node, &exchange, &empty);
            let get = |path: &[&[u8]]| resolve(path, &scope);
            assert_eq!(get(&[b"connection", b"id"]), Some(PropertyValue::UInt(7)));
            assert_eq!(get(&[b"connection_id"]), Some(PropertyValue::UInt(7)));
            assert_eq!(get(&[b"connection", b"mtls"]), Some(PropertyValue::Bool(false)));
            assert_eq!(get(&[b"connection", b"requested_server_name"]), Some(PropertyValue::Bytes(vec![])));
            for absent in [
                &b"tls_version"[..],
                b"subject_local_certificate",
                b"subject_peer_certificate",
                b"dns_san_local_certificate",
                b"dns_san_peer_certificate",
                b"uri_san_local_certificate",
                b"uri_san_peer_certificate",
                b"sha256_peer_certificate_digest",
                b"termination_details",
                b"transport_failure_reason",
            ] {
                assert_eq!(get(&[b"connection", absent]), None, "{}", String::from_utf8_lossy(absent));
            }
            assert_eq!(get(&[b"upstream", b"request_attempt_count"]), Some(PropertyValue::UInt(0)));
            for absent in [&b"address"[..], b"port", b"local_address", b"transport_failure_reason", b"locality"] {
                assert_eq!(get(&[b"upstream", absent]), None, "no upstream yet");
            }
        }
        exchange.info.upstream = Some("10.0.0.9:8080".parse().expect("addr"));
        exchange.info.upstream_local_address = Some("10.0.0.1:40000".parse().expect("addr"));
        exchange.info.attempt_count = 1;
        let scope = scope_with(&plugin, &node, &exchange, &empty);
        let get = |path: &[&[u8]]| resolve(path, &scope);
        assert_eq!(get(&[b"upstream", b"address"]), Some(PropertyValue::text("10.0.0.9:8080")));
        assert_eq!(get(&[b"upstream", b"port"]), Some(PropertyValue::Int(8080)));
        assert_eq!(get(&[b"upstream", b"local_address"]), Some(PropertyValue::text("10.0.0.1:40000")));
        assert_eq!(get(&[b"upstream", b"transport_failure_reason"]), Some(PropertyValue::text("")));
        assert_eq!(get(&[b"upstream", b"request_attempt_count"]), Some(PropertyValue::UInt(1)));
        assert_eq!(get(&[b"upstream", b"locality"]), Some(PropertyValue::Bytes(vec![])));
        assert_eq!(get(&[b"upstream", b"locality", b"zone"]), Some(PropertyValue::Bytes(vec![])));
        assert_eq!(get(&[b"upstream", b"tls_version"]), None);
        assert_eq!(get(&[b"upstream", b"cx_pool_ready_duration"]), None, "not measured here");
    }

    #[test]
    fn dynamic_metadata_is_an_empty_metadata_and_the_old_spellings_are_aliases() {
        let plugin = PluginConfig::named("p");
        let node = NodeInfo { id: "n".into(), ..NodeInfo::default() };
        let empty = FilterState::default();
        let mut exchange = HttpExchange::default();
        exchange.info.route_name = Some("r".into());
        exchange.info.cluster_name = Some("c".into());
        {
            let scope = scope_with(&plugin, &node, &exchange, &empty);
            let get = |path: &[&[u8]]| resolve(path, &scope);
            assert_eq!(get(&[b"metadata"]), Some(PropertyValue::Bytes(vec![])));
            assert_eq!(get(&[b"metadata", b"filter_metadata"]).map(|v| v.encode()), Some(EMPTY_PAIRS.to_vec()));
            assert_eq!(get(&[b"metadata", b"filter_metadata", b"envoy.lb"]), None);
            assert_eq!(get(&[b"xds", b"route_name"]), Some(PropertyValue::text("r")));
            assert_eq!(get(&[b"xds", b"cluster_name"]), Some(PropertyValue::text("c")));
            for old in [&b"route_name"[..], b"cluster_name", b"listener_direction", b"node"] {
                assert_eq!(get(&[old]), get(&[b"xds", old]), "{}", String::from_utf8_lossy(old));
            }
            assert_eq!(get(&[b"route_name"]), Some(PropertyValue::text("r")));
            assert_eq!(get(&[b"node", b"id"]), Some(PropertyValue::text("n")));
        }
        // Not even with no route does another filter's property of that name answer.
        exchange.info.route_name = None;
        exchange.info.filter_state.insert("wasm.route_name".into(), b"spoofed".to_vec());
        let scope = scope_with(&plugin, &node, &exchange, &empty);
        assert_eq!(resolve(&[b"route_name"], &scope), None, "the route's name or nothing");
        assert_eq!(resolve(&[b"other_name"], &scope), None);
        // Without a stream only the node is known.
        let root = PropertyScope { plugin: &plugin, node: &node, exchange: None, root_filter_state: &empty };
        assert_eq!(resolve(&[b"metadata"], &root), None);
        assert_eq!(resolve(&[b"xds", b"listener_metadata"], &root), None);
        assert_eq!(resolve(&[b"xds", b"node", b"id"], &root), Some(PropertyValue::text("n")));
    }

    #[test]
    fn the_generation_and_sha256_answer_only_where_the_host_publishes_generations() {
        let node = NodeInfo::default();
        let empty = FilterState::default();
        let bare = PluginConfig::named("trace");
        let root = PropertyScope { plugin: &bare, node: &node, exchange: None, root_filter_state: &empty };
        assert_eq!(resolve(&[b"plugin_generation"], &root), None, "absent, as in Envoy");
        assert_eq!(resolve(&[b"plugin_sha256"], &root), None);
        let provenance = crate::plugin::Provenance { generation: 7, module_sha256: "ab12".into() };
        let swapped = PluginConfig { provenance: Some(provenance), ..PluginConfig::named("trace") };
        // Filter state of the same name never answers for it.
        let spoof: FilterState = [("wasm.plugin_generation", b"99".to_vec())].into_iter().collect();
        let root = PropertyScope { plugin: &swapped, node: &node, exchange: None, root_filter_state: &spoof };
        assert_eq!(resolve(&[b"plugin_generation"], &root).map(|v| v.encode()), Some(7u64.to_le_bytes().to_vec()));
        assert_eq!(resolve(&[b"plugin_sha256"], &root), Some(PropertyValue::text("ab12")));
    }
}
