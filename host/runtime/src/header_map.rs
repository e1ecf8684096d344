//! Header maps as the ABI sees them: ordered `(name, value)` byte pairs, and the wire codec the
//! SDKs use to pass them across the guest boundary.
//!
//! Wire form (little-endian): `u32 count`, `count × (u32 name_len, u32 value_len)`, then for each
//! pair `name \0 value \0`. Lengths exclude the NULs. The decoder is strict like Envoy's: the
//! length must match exactly, and at most [`MAX_PAIRS`] pairs / [`MAX_SERIALIZED_BYTES`] bytes.

use thiserror::Error;

/// One `(name, value)` entry as raw bytes.
pub type RawPair = (Vec<u8>, Vec<u8>);

/// Most pairs a serialised map may hold (Envoy's limit).
pub const MAX_PAIRS: usize = 1024;
/// Largest serialised map accepted from a guest (Envoy's limit).
pub const MAX_SERIALIZED_BYTES: usize = 1 << 20;

/// An ordered multimap of header names to values.
///
/// Names are stored lower-cased (as Envoy's `LowerCaseString` does) so lookups are
/// case-insensitive; values are raw bytes because HTTP allows non-UTF-8 octets in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a serialised header map from a guest was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderMapDecodeError {
    /// The buffer ends before the data its header promises.
    #[error("serialized header map is truncated: needs {needed} bytes, has {actual}")]
    Truncated {
        /// Bytes the encoded lengths require.
        needed: usize,
        /// Bytes supplied.
        actual: usize,
    },
    /// Bytes remain after the last pair.
    #[error("serialized header map has {0} trailing bytes")]
    TrailingBytes(usize),
    /// A name or value is not followed by its NUL terminator.
    #[error("serialized header map pair {0} is missing a NUL terminator")]
    MissingNul(usize),
    /// Beyond [`MAX_PAIRS`] or [`MAX_SERIALIZED_BYTES`].
    #[error(
        "serialized header map too large: {pairs} pairs, {bytes} bytes (limits {MAX_PAIRS} pairs, {MAX_SERIALIZED_BYTES} bytes)"
    )]
    TooLarge {
        /// Pair count declared.
        pairs: usize,
        /// Buffer length.
        bytes: usize,
    },
}

/// An RFC 9110 token (`tchar`s), or `:` and a token for a pseudo-header.
pub fn is_valid_name(name: &[u8]) -> bool {
    let token = name.strip_prefix(b":").unwrap_or(name);
    !token.is_empty()
        && token.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_')
                || matches!(b, b'`' | b'|' | b'~')
        })
}

/// A field value without NUL, CR or LF (obs-text and other octets are allowed, as in HTTP/1.1).
pub fn is_valid_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n'))
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from pairs, lower-casing the names.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut map = Self::new();
        for (k, v) in pairs {
            map.add(k.as_ref(), v.as_ref());
        }
        map
    }

    /// Number of entries (a repeated header counts once per value).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The first value of `name` (case-insensitive), like Envoy's `get_header_map_value`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as UTF-8, if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name.as_bytes()).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All values of `name` joined with `,` — the form of Envoy's `request.headers` attribute.
    pub fn get_joined(&self, name: &[u8]) -> Option<Vec<u8>> {
        let mut values = self.pairs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
        let mut joined = values.next()?.1.clone();
        for (_, v) in values {
            joined.push(b',');
            joined.extend_from_slice(v);
        }
        Some(joined)
    }

    /// Appends an entry (the name is lower-cased).
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.pairs.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// Replaces every value of `name` by one entry, or adds it when absent.
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        let lower = name.to_ascii_lowercase();
        match self.pairs.iter().position(|(k, _)| *k == lower) {
            Some(first) => {
                self.pairs[first].1 = value.to_vec();
                let mut index = 0;
                self.pairs.retain(|(k, _)| {
                    let keep = index <= first || *k != lower;
                    index += 1;
                    keep
                });
            }
            None => self.pairs.push((lower, value.to_vec())),
        }
    }

    /// Drops every entry that is not valid HTTP — a name that is not a token (`:`-prefixed
    /// for pseudo-headers), a value with NUL, CR or LF — and returns how many went. Guests may
    /// write any bytes; what they write must not reach the wire, nor trap the filters after them
    /// (SDKs turn names into strings without checking).
    pub fn retain_valid(&mut self) -> usize {
        let before = self.pairs.len();
        self.pairs.retain(|(name, value)| is_valid_name(name) && is_valid_value(value));
        before - self.pairs.len()
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &[u8]) {
        self.pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// Sum of name and value lengths: Envoy's `byteSize()`, the answer of `proxy_get_header_map_size`.
    pub fn byte_size(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Serialises the map in the SDK wire form. An empty map serialises to no bytes at all
    /// (the host then hands the guest a null pointer, as Envoy does).
    pub fn encode(&self) -> Vec<u8> {
        encode_pairs(self.iter())
    }

    /// Parses the SDK wire form strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderMapDecodeError> {
        let pairs = decode_pairs(bytes)?;
        Ok(Self::from_pairs(pairs))
    }
}

/// Serialises `(name, value)` pairs in the SDK wire form; no pairs give no bytes.
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let count = pairs.clone().count();
    if count == 0 {
        return Vec::new();
    }
    let data_len: usize = pairs.clone().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + count * 8 + data_len);
    out.extend_from_slice(&wire_u32(count).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&wire_u32(k.len()).to_le_bytes());
        out.extend_from_slice(&wire_u32(v.len()).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Lengths in the wire form are u32; our maps are bounded far below that.
fn wire_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parses the SDK wire form into raw pairs. Empty input (and the single zero byte the spec allows)
/// is the empty map.
pub fn decode_pairs(bytes: &[u8]) -> Result<Vec<RawPair>, HeaderMapDecodeError> {
    if bytes.is_empty() || bytes == [0] {
        return Ok(Vec::new());
    }
    let read_u32 = |at: usize| -> Result<usize, HeaderMapDecodeError> {
        let slice =
            bytes.get(at..at + 4).ok_or(HeaderMapDecodeError::Truncated { needed: at + 4, actual: bytes.len() })?;
        let mut word = [0u8; 4];
        word.copy_from_slice(slice);
        Ok(u32::from_le_bytes(word) as usize)
    };
    let count = read_u32(0)?;
    if count > MAX_PAIRS || bytes.len() > MAX_SERIALIZED_BYTES {
        return Err(HeaderMapDecodeError::TooLarge { pairs: count, bytes: bytes.len() });
    }
    let mut lengths = Vec::with_capacity(count);
    for i in 0..count {
        lengths.push((read_u32(4 + i * 8)?, read_u32(8 + i * 8)?));
    }
    let mut pos = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for (i, (klen, vlen)) in lengths.into_iter().enumerate() {
        let needed = pos + klen + 1 + vlen + 1;
        if needed > bytes.len() {
            return Err(HeaderMapDecodeError::Truncated { needed, actual: bytes.len() });
        }
        let key = &bytes[pos..pos + klen];
        if bytes[pos + klen] != 0 {
            return Err(HeaderMapDecodeError::MissingNul(i));
        }
        let vstart = pos + klen + 1;
        let value = &bytes[vstart..vstart + vlen];
        if bytes[vstart + vlen] != 0 {
            return Err(HeaderMapDecodeError::MissingNul(i));
        }
        pairs.push((key.to_vec(), value.to_vec()));
        pos = needed;
    }
    if pos != bytes.len() {
        return Err(HeaderMapDecodeError::TrailingBytes(bytes.len() - pos));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_and_values_written_by_a_guest_are_dropped() {
        let mut map = HeaderMap::from_pairs([
            (&b":path"[..], &b"/"[..]),
            (b"x-ok", b"caf\xe9"),
            (b"bad name", b"1"),
            (b"x-\xff", b"1"),
            (b"", b"1"),
            (b"x-split", b"a\r\nx-injected: 1"),
        ]);
        assert_eq!(map.retain_valid(), 4);
        assert_eq!(map.len(), 2);
    }

    /// The proxy-wasm Rust SDK's own test vector (`hostcalls.rs` `SERIALIZED_MAP`), re-derived
    /// from the documented layout: 4 pairs.
    fn sdk_vector() -> Vec<u8> {
        let pairs: [(&[u8], &[u8]); 4] = [
            (b":method", b"GET"),
            (b":path", b"/bytes/1"),
            (b":authority", b"httpbin.org"),
            (b"Powered-By", b"proxy-wasm"),
        ];
        let mut v = vec![4, 0, 0, 0];
        for (k, val) in pairs {
            v.extend_from_slice(&(k.len() as u32).to_le_bytes());
            v.extend_from_slice(&(val.len() as u32).to_le_bytes());
        }
        for (k, val) in pairs {
            v.extend_from_slice(k);
            v.push(0);
            v.extend_from_slice(val);
            v.push(0);
        }
        v
    }

    #[test]
    fn encoding_matches_the_sdk_layout_byte_for_byte() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":path", b"/bytes/1"),
            (b":authority", b"httpbin.org"),
            (b"Powered-By", b"proxy-wasm"),
        ];
        let encoded = encode_pairs(pairs.iter().copied());
        assert_eq!(encoded, sdk_vector());
        assert_eq!(&encoded[..12], &[4, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0]);
    }

    #[test]
    fn decoding_the_sdk_vector_gives_back_the_pairs() {
        let pairs = decode_pairs(&sdk_vector()).expect("valid vector");
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[3], (b"Powered-By".to_vec(), b"proxy-wasm".to_vec()));
    }

    #[test]
    fn empty_maps_are_empty_in_every_allowed_form() {
        assert!(HeaderMap::new().encode().is_empty());
        assert!(decode_pairs(&[]).expect("empty").is_empty());
        assert!(decode_pairs(&[0]).expect("single zero").is_empty());
        assert!(decode_pairs(&[0, 0, 0, 0]).expect("zero count").is_empty());
    }

    #[test]
    fn malformed_maps_are_refused_with_the_reason() {
        let mut v = sdk_vector();
        v.push(1);
        assert_eq!(decode_pairs(&v), Err(HeaderMapDecodeError::TrailingBytes(1)));
        let v = sdk_vector();
        assert!(matches!(decode_pairs(&v[..v.len() - 3]), Err(HeaderMapDecodeError::Truncated { .. })));
        let mut v = sdk_vector();
        let first_nul = 4 + 4 * 8 + 7;
        v[first_nul] = b'x';
        assert_eq!(decode_pairs(&v), Err(HeaderMapDecodeError::MissingNul(0)));
        let huge = (MAX_PAIRS as u32 + 1).to_le_bytes();
        assert!(matches!(decode_pairs(&huge), Err(HeaderMapDecodeError::TooLarge { .. })));
        // A count that promises more length words than exist.
        assert!(matches!(decode_pairs(&[2, 0, 0, 0, 1, 0]), Err(HeaderMapDecodeError::Truncated { .. })));
    }

    #[test]
    fn names_are_lower_cased_and_replace_collapses_repeats() {
        let mut map = HeaderMap::from_pairs([("X-A", "1"), ("x-b", "2"), ("X-a", "3")]);
        assert_eq!(map.get(b"x-a"), Some(&b"1"[..]));
        assert_eq!(map.get_joined(b"X-A"), Some(b"1,3".to_vec()));
        map.replace(b"X-A", b"9");
        assert_eq!(map.iter().collect::<Vec<_>>(), vec![(&b"x-a"[..], &b"9"[..]), (&b"x-b"[..], &b"2"[..])]);
        map.remove(b"X-B");
        assert_eq!(map.len(), 1);
        assert_eq!(map.byte_size(), 4);
    }
}
