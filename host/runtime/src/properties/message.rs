//! The messages a property path can walk into (a metadata's `filter_metadata`, its
//! `google.protobuf.Struct`s, the node), and their protobuf bytes for a path that stops at one.

use serde_json::Value as Json;

use crate::services::NodeInfo;

use super::{Metadata, PropertyValue};

/// A `google.protobuf.Value` (a JSON value) as Envoy's CEL hands it over: a string raw, a number
/// as a double, a bool, a `Struct` as a map, a `ListValue` as a list. `null` is not found
/// (Envoy answers `SERIALIZATION_FAILURE`, on which the Rust SDK panics).
pub(super) fn value_of(value: &Json) -> Option<PropertyValue> {
    match value {
        Json::String(s) => Some(PropertyValue::text(s.clone())),
        Json::Number(n) => n.as_f64().map(PropertyValue::Double),
        Json::Bool(b) => Some(PropertyValue::Bool(*b)),
        Json::Null => None,
        Json::Object(fields) => Some(struct_value(fields)),
        Json::Array(items) => Some(PropertyValue::Map(items.iter().map(|item| (nested(item), Vec::new())).collect())),
    }
}

/// The bytes of `value` inside a map or list (`null`, which Envoy cannot serialise, as none).
pub(super) fn nested(value: &Json) -> Vec<u8> {
    value_of(value).map(PropertyValue::into_encoded).unwrap_or_default()
}

/// A `Struct` as a map, each field's value serialised.
pub(super) fn struct_value(fields: &serde_json::Map<String, Json>) -> PropertyValue {
    PropertyValue::Map(fields.iter().map(|(k, v)| (k.clone().into_bytes(), nested(v))).collect())
}

/// `rest` walked into a `Struct`: field names, then list indexes (decimal) and field names.
pub(super) fn struct_property(fields: &serde_json::Map<String, Json>, rest: &[&[u8]]) -> Option<PropertyValue> {
    match rest {
        [] => Some(struct_value(fields)),
        [name, tail @ ..] => value_property(fields.get(std::str::from_utf8(name).ok()?)?, tail),
    }
}

pub(super) fn value_property(value: &Json, rest: &[&[u8]]) -> Option<PropertyValue> {
    match (value, rest) {
        (_, []) => value_of(value),
        (Json::Object(fields), _) => struct_property(fields, rest),
        (Json::Array(items), [index, tail @ ..]) => {
            // Envoy parses the index with absl::SimpleAtoi (surrounding spaces allowed).
            let index: usize = std::str::from_utf8(index).ok()?.trim_ascii().parse().ok()?;
            value_property(items.get(index)?, tail)
        }
        _ => None,
    }
}

/// `rest` walked into an `envoy.config.core.v3.Metadata`: the whole message as protobuf bytes,
/// `filter_metadata` as a map of namespaces (each a `Struct`), `typed_filter_metadata` as an
/// empty map (the configuration holds none).
pub(super) fn metadata_property(metadata: &Metadata, rest: &[&[u8]]) -> Option<PropertyValue> {
    let namespaces = &*metadata.filter_metadata;
    match rest {
        [] => Some(PropertyValue::Bytes(metadata_protobuf(metadata))),
        [b"filter_metadata"] => Some(PropertyValue::Map(
            namespaces.iter().map(|(ns, fields)| (ns.clone().into_bytes(), struct_of(fields).into_encoded())).collect(),
        )),
        [b"filter_metadata", ns, tail @ ..] => {
            let fields = namespaces.get(std::str::from_utf8(ns).ok()?)?;
            match fields {
                Json::Object(fields) => struct_property(fields, tail),
                _ => struct_property(&serde_json::Map::new(), tail),
            }
        }
        [b"typed_filter_metadata"] => Some(PropertyValue::Map(Vec::new())),
        _ => None,
    }
}

/// A namespace's `Struct` as a map (anything but an object reads as an empty one).
pub(super) fn struct_of(fields: &Json) -> PropertyValue {
    match fields {
        Json::Object(fields) => struct_value(fields),
        _ => PropertyValue::Map(Vec::new()),
    }
}

pub(super) fn node_property(node: &NodeInfo, rest: &[&[u8]]) -> Option<PropertyValue> {
    match rest {
        [] => Some(PropertyValue::Bytes(node_protobuf(node))),
        [b"id"] => Some(PropertyValue::text(node.id.clone())),
        [b"cluster"] => Some(PropertyValue::text(node.cluster.clone())),
        [b"metadata", tail @ ..] => struct_property(&node.metadata, tail),
        _ => None,
    }
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(super) fn struct_protobuf(map: &serde_json::Map<String, Json>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in map {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, k.as_bytes());
        put_bytes(&mut entry, 2, &value_protobuf(v));
        put_bytes(&mut out, 1, &entry);
    }
    out
}

pub(super) fn value_protobuf(v: &Json) -> Vec<u8> {
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

pub(super) fn metadata_protobuf(metadata: &Metadata) -> Vec<u8> {
    let empty = serde_json::Map::new();
    let mut out = Vec::new();
    for (namespace, fields) in metadata.filter_metadata.iter() {
        // A map entry: key = 1, value = 2.
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, namespace.as_bytes());
        put_bytes(&mut entry, 2, &struct_protobuf(fields.as_object().unwrap_or(&empty)));
        put_bytes(&mut out, 1, &entry);
    }
    out
}

pub(super) fn node_protobuf(node: &NodeInfo) -> Vec<u8> {
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
