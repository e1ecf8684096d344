//! A property's value as the guest receives it: Envoy's serialisation of CEL values (raw bytes,
//! 8-byte little-endian numbers, one-byte booleans, maps as header-map pairs).

use std::sync::Arc;

use serde_json::Value as Json;

use crate::header_map::encode_pairs;

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
    /// A map (or a list: items as keys, empty values), serialised as proxy-wasm pairs.
    Map(Vec<(Vec<u8>, Vec<u8>)>),
}

/// `envoy.config.core.v3.Metadata` as filters read it: `filter_metadata`, each namespace's
/// `google.protobuf.Struct` as a JSON object. Shared with the configuration it came from, so a
/// stream carries it without a copy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    /// Namespace → its `Struct` (a JSON object; anything else reads as an empty `Struct`).
    pub filter_metadata: Arc<serde_json::Map<String, Json>>,
}

/// Envoy's serialisation of an empty map: the pair count, zero.
pub(super) const EMPTY_PAIRS: [u8; 4] = [0; 4];

pub(super) fn encode_map(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    if pairs.is_empty() {
        return EMPTY_PAIRS.to_vec();
    }
    encode_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

impl PropertyValue {
    pub(crate) fn text(s: impl Into<String>) -> Self {
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
            Self::Map(pairs) => encode_map(pairs),
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
