//! Property paths (`proxy_get_property`): Envoy's attribute vocabulary resolved against a stream,
//! the plugin and the node, and serialised the way Envoy serialises CEL values.
//!
//! Serialisation: strings and bytes raw; integers, doubles, timestamps (ns since epoch) and
//! durations (ns) as 8 little-endian bytes; booleans as one byte; maps as header-map pairs;
//! `xds.node` as the protobuf bytes of `envoy.config.core.v3.Node` (id, cluster, metadata).

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::Value as Json;

use crate::abi::unix_nanos;
use crate::exchange::HttpExchange;
use crate::header_map::{HeaderMap, encode_pairs};
use crate::plugin::PluginConfig;
use crate::services::NodeInfo;

/// A resolved property value.
#[derive(Clone, Debug, PartialEq)]
pub enum PropertyValue {
    /// String or bytes, passed raw.
    Bytes(Vec<u8>),
    /// Signed integer (also timestamps and durations in ns).
    Int(i64),
    /// Unsigned integer.
    UInt(u64),
    /// Double.
    Double(f64),
    /// Boolean.
    Bool(bool),
    /// A string map, serialised like a header map.
    Map(Vec<(Vec<u8>, Vec<u8>)>),
}

impl PropertyValue {
    fn text(s: impl Into<String>) -> Self {
        Self::Bytes(s.into().into_bytes())
    }

    /// The bytes the guest receives.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Bytes(b) => b.clone(),
            Self::Int(i) => i.to_le_bytes().to_vec(),
            Self::UInt(u) => u.to_le_bytes().to_vec(),
            Self::Double(d) => d.to_le_bytes().to_vec(),
            Self::Bool(b) => vec![u8::from(*b)],
            Self::Map(pairs) => encode_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))),
        }
    }

    /// The bytes the guest receives, owned: the value's own buffer when it has one, instead of
    /// a copy of it.
    pub fn into_encoded(self) -> Vec<u8> {
        match self {
            Self::Bytes(b) => b,
            other => other.encode(),
        }
    }

    /// Writes [`encode`](Self::encode)'s bytes into `out` (the guest's buffer) when that is
    /// their length; false otherwise.
    pub fn encode_into(&self, out: &mut [u8]) -> bool {
        let word: [u8; 8] = match self {
            Self::Int(i) => i.to_le_bytes(),
            Self::UInt(u) => u.to_le_bytes(),
            Self::Double(d) => d.to_le_bytes(),
            Self::Bool(b) if out.len() == 1 => {
                out[0] = u8::from(*b);
                return true;
            }
            Self::Bytes(b) if out.len() == b.len() => {
                out.copy_from_slice(b);
                return true;
            }
            Self::Map(_) => {
                let encoded = self.encode();
                if encoded.len() != out.len() {
                    return false;
                }
                out.copy_from_slice(&encoded);
                return true;
            }
            Self::Bool(_) | Self::Bytes(_) => return false,
        };
        if out.len() != word.len() {
            return false;
        }
        out.copy_from_slice(&word);
        true
    }

    /// The length of [`encode`](Self::encode)'s bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Int(_) | Self::UInt(_) | Self::Double(_) => 8,
            Self::Bool(_) => 1,
            Self::Map(_) => self.encode().len(),
        }
    }
}

/// What a property lookup can see.
pub(crate) struct PropertyScope<'a> {
    pub plugin: &'a PluginConfig,
    pub node: &'a NodeInfo,
    pub exchange: Option<&'a HttpExchange>,
    pub root_filter_state: &'a HashMap<String, Vec<u8>>,
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
fn filter_state<'a>(state: &'a std::collections::BTreeMap<String, Vec<u8>>, path: &[&[u8]]) -> Option<&'a Vec<u8>> {
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

fn json_property(value: &Json, rest: &[&[u8]]) -> Option<PropertyValue> {
    match (value, rest) {
        (Json::Object(map), [key, tail @ ..]) => json_property(map.get(std::str::from_utf8(key).ok()?)?, tail),
        (_, [_, ..]) => None,
        (Json::String(s), []) => Some(PropertyValue::text(s.clone())),
        (Json::Number(n), []) => n.as_f64().map(PropertyValue::Double),
        (Json::Bool(b), []) => Some(PropertyValue::Bool(*b)),
        (Json::Null, []) => None,
        (Json::Object(map), []) => Some(PropertyValue::Map(
            map.iter()
                .map(|(k, v)| {
                    let text = match v {
                        Json::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone().into_bytes(), text.into_bytes())
                })
                .collect(),
        )),
        (Json::Array(_), []) => Some(PropertyValue::text(value.to_string())),
    }
}

fn node_property(node: &NodeInfo, rest: &[&[u8]]) -> Option<PropertyValue> {
    match rest {
        [] => Some(PropertyValue::Bytes(node_protobuf(node))),
        [b"id"] => Some(PropertyValue::text(node.id.clone())),
        [b"cluster"] => Some(PropertyValue::text(node.cluster.clone())),
        [b"metadata", tail @ ..] => json_property(&Json::Object(node.metadata.clone()), tail),
        _ => None,
    }
}

/// What the stream's route and listener say: `route_name`, `cluster_name`,
/// `virtual_host_name`, `listener_direction` (Envoy's `TrafficDirection` number). The route is
/// known from before the request filters run (see the data plane's routing).
fn stream_route_property(info: &crate::StreamInfo, attr: &[u8]) -> Option<PropertyValue> {
    match attr {
        b"route_name" => info.route_name.clone().map(PropertyValue::text),
        b"cluster_name" => info.cluster_name.clone().map(PropertyValue::text),
        b"virtual_host_name" => info.virtual_host_name.clone().map(PropertyValue::text),
        b"listener_direction" => Some(PropertyValue::Int(i64::from(info.listener_direction))),
        _ => None,
    }
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
        (b"node", rest) => node_property(scope.node, rest),
        (b"xds", [b"node", tail @ ..]) => node_property(scope.node, tail),
        (b"request", [attr, tail @ ..]) => request_property(exchange?, attr, tail),
        (b"response", [attr, tail @ ..]) => response_property(exchange?, attr, tail),
        (b"source", [attr, tail @ ..]) => address_property(exchange?.info.source, attr, tail),
        (b"destination", [attr, tail @ ..]) => address_property(exchange?.info.destination, attr, tail),
        (b"upstream", [attr, tail @ ..]) => address_property(exchange?.info.upstream, attr, tail),
        (b"connection_id", []) | (b"connection", [b"id"]) => Some(PropertyValue::UInt(exchange?.info.connection_id)),
        (b"connection", [b"mtls"]) => Some(PropertyValue::Bool(false)),
        // Envoy's top-level attributes of the route and listener, and their `xds.*` spellings.
        (b"xds", [attr]) => stream_route_property(&exchange?.info, attr),
        (attr @ (b"route_name" | b"cluster_name" | b"listener_direction"), []) => {
            stream_route_property(&exchange?.info, attr)
        }
        (b"filter_state", [key]) => {
            let key = String::from_utf8_lossy(key);
            let value = match exchange {
                Some(e) => e.info.filter_state.get(key.as_ref()),
                None => scope.root_filter_state.get(key.as_ref()),
            };
            value.cloned().map(PropertyValue::Bytes)
        }
        _ => {
            // Anything else may be filter state a filter set with proxy_set_property.
            let value = match exchange {
                Some(e) => filter_state(&e.info.filter_state, path),
                None => scope.root_filter_state.get(&filter_state_key(path)),
            };
            value.cloned().map(PropertyValue::Bytes)
        }
    }
}

// === protobuf encoding of envoy.config.core.v3.Node (id = 1, cluster = 2, metadata = 3) ===

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn struct_protobuf(map: &serde_json::Map<String, Json>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in map {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, k.as_bytes());
        put_bytes(&mut entry, 2, &value_protobuf(v));
        put_bytes(&mut out, 1, &entry);
    }
    out
}

fn value_protobuf(v: &Json) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        Json::Null => {
            put_varint(&mut out, 1 << 3);
            put_varint(&mut out, 0);
        }
        Json::Number(n) => {
            put_varint(&mut out, (2 << 3) | 1);
            out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
        }
        Json::String(s) => put_bytes(&mut out, 3, s.as_bytes()),
        Json::Bool(b) => {
            put_varint(&mut out, 4 << 3);
            put_varint(&mut out, u64::from(*b));
        }
        Json::Object(map) => put_bytes(&mut out, 5, &struct_protobuf(map)),
        Json::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                put_bytes(&mut list, 1, &value_protobuf(item));
            }
            put_bytes(&mut out, 6, &list);
        }
    }
    out
}

fn node_protobuf(node: &NodeInfo) -> Vec<u8> {
    let mut out = Vec::new();
    if !node.id.is_empty() {
        put_bytes(&mut out, 1, node.id.as_bytes());
    }
    if !node.cluster.is_empty() {
        put_bytes(&mut out, 2, node.cluster.as_bytes());
    }
    if !node.metadata.is_empty() {
        put_bytes(&mut out, 3, &struct_protobuf(&node.metadata));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope_with<'a>(
        plugin: &'a PluginConfig,
        node: &'a NodeInfo,
        exchange: &'a HttpExchange,
        empty: &'a HashMap<String, Vec<u8>>,
    ) -> PropertyScope<'a> {
        PropertyScope { plugin, node, exchange: Some(exchange), root_filter_state: empty }
    }

    #[test]
    fn request_attributes_come_from_the_headers() {
        let plugin = PluginConfig::named("p");
        let node = NodeInfo::default();
        let empty = HashMap::new();
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
        let empty = HashMap::new();
        let exchange = HttpExchange::default();
        let scope = scope_with(&plugin, &node, &exchange, &empty);
        assert_eq!(resolve(&[b"xds", b"node", b"metadata", b"region"], &scope), Some(PropertyValue::text("eu")));
        assert_eq!(resolve(&[b"node", b"id"], &scope), Some(PropertyValue::text("sidecar~1")));
        let Some(PropertyValue::Bytes(proto)) = resolve(&[b"xds", b"node"], &scope) else { panic!("node bytes") };
        assert_eq!(&proto[..11], b"\x0a\x09sidecar~1");
    }
}
