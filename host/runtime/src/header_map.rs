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
///
/// The map is kept in the SDK wire form's two parts: the length table and the data section
/// (`name \0 value \0`, pair after pair). Building a map costs two allocations however many
/// headers it has, and handing it to a guest is copying those parts ([`encode_into`]), not
/// serialising pair by pair: every filter of a chain reads the request's headers.
///
/// [`encode_into`]: Self::encode_into
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    /// `(name length, value length)` per pair, in order.
    lengths: Vec<(usize, usize)>,
    /// Every pair's `name \0 value \0`, in order.
    data: Vec<u8>,
}

/// The pairs of a [`HeaderMap`], in order.
#[derive(Clone)]
pub struct Iter<'a> {
    lengths: std::slice::Iter<'a, (usize, usize)>,
    data: &'a [u8],
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let &(name_len, value_len) = self.lengths.next()?;
        let (name, rest) = self.data.split_at_checked(name_len)?;
        let value = rest.get(1..1 + value_len)?;
        self.data = rest.get(value_len + 2..).unwrap_or_default();
        Some((name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.lengths.size_hint()
    }
}

impl std::fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderMap").field("pairs", &self.iter().collect::<Vec<_>>()).finish()
    }
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
        let pairs = pairs.into_iter();
        let mut map = Self { lengths: Vec::with_capacity(pairs.size_hint().0), data: Vec::new() };
        for (k, v) in pairs {
            map.add(k.as_ref(), v.as_ref());
        }
        map
    }

    /// Number of entries (a repeated header counts once per value).
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The entries in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter { lengths: self.lengths.iter(), data: &self.data }
    }

    /// The first value of `name` (case-insensitive), like Envoy's `get_header_map_value`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The first value of `name` as UTF-8, if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name.as_bytes()).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All values of `name` joined with `,` — the form of Envoy's `request.headers` attribute.
    pub fn get_joined(&self, name: &[u8]) -> Option<Vec<u8>> {
        let mut values = self.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
        let mut joined = values.next()?.1.to_vec();
        for (_, v) in values {
            joined.push(b',');
            joined.extend_from_slice(v);
        }
        Some(joined)
    }

    /// Appends an entry (the name is lower-cased).
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.lengths.push((name.len(), value.len()));
        self.data.reserve(name.len() + value.len() + 2);
        let start = self.data.len();
        self.data.extend_from_slice(name);
        self.data[start..].make_ascii_lowercase();
        self.data.push(0);
        self.data.extend_from_slice(value);
        self.data.push(0);
    }

    /// Replaces every value of `name` by one entry, or adds it when absent.
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        // In place: the first entry of `name` takes the value, later ones go.
        let mut replaced = false;
        let (mut index, mut at) = (0, 0);
        while let Some(&(name_len, value_len)) = self.lengths.get(index) {
            let size = name_len + value_len + 2;
            let matches = self.data.get(at..at + name_len).is_some_and(|k| k.eq_ignore_ascii_case(name));
            if !matches {
                (index, at) = (index + 1, at + size);
            } else if replaced {
                self.data.drain(at..(at + size).min(self.data.len()));
                self.lengths.remove(index);
            } else {
                let value_at = (at + name_len + 1).min(self.data.len());
                let value_end = (value_at + value_len).min(self.data.len());
                self.splice(value_at..value_end, value);
                self.lengths[index].1 = value.len();
                replaced = true;
                (index, at) = (index + 1, at + name_len + value.len() + 2);
            }
        }
        if !replaced {
            self.add(name, value);
        }
    }

    /// Replaces `range` of the data section by `bytes`, moving what follows (a value of the same
    /// length, as a rewritten `traceparent` is, is just copied over).
    fn splice(&mut self, range: std::ops::Range<usize>, bytes: &[u8]) {
        let (start, end, len) = (range.start, range.end, self.data.len());
        let new_end = start + bytes.len();
        if bytes.len() > end - start {
            self.data.resize(len + bytes.len() - (end - start), 0);
            self.data.copy_within(end..len, new_end);
        } else if bytes.len() < end - start {
            self.data.copy_within(end..len, new_end);
            self.data.truncate(len - (end - start - bytes.len()));
        }
        self.data[start..new_end].copy_from_slice(bytes);
    }

    /// Keeps the entries `keep` approves of, in order; returns how many went.
    fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) -> usize {
        let (mut read, mut write, mut kept) = (0, 0, 0);
        for index in 0..self.lengths.len() {
            let (name_len, value_len) = self.lengths[index];
            let size = name_len + value_len + 2;
            let Some(pair) = self.data.get(read..read + size) else { break };
            let (name, value) = (&pair[..name_len], &pair[name_len + 1..name_len + 1 + value_len]);
            if keep(name, value) {
                self.data.copy_within(read..read + size, write);
                self.lengths[kept] = (name_len, value_len);
                kept += 1;
                write += size;
            }
            read += size;
        }
        self.data.truncate(write);
        let removed = self.lengths.len() - kept;
        self.lengths.truncate(kept);
        removed
    }

    /// Drops every entry that is not valid HTTP — a name that is not a token (`:`-prefixed
    /// for pseudo-headers), a value with NUL, CR or LF — and returns how many went. Guests may
    /// write any bytes; what they write must not reach the wire, nor trap the filters after them
    /// (SDKs turn names into strings without checking).
    pub fn retain_valid(&mut self) -> usize {
        self.retain(|name, value| is_valid_name(name) && is_valid_value(value))
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &[u8]) {
        self.retain(|k, _| !k.eq_ignore_ascii_case(name));
    }

    /// Sum of name and value lengths: Envoy's `byteSize()`, the answer of `proxy_get_header_map_size`.
    pub fn byte_size(&self) -> usize {
        self.lengths.iter().map(|(k, v)| k + v).sum()
    }

    /// The length of [`encode`](Self::encode)'s bytes.
    pub fn encoded_len(&self) -> usize {
        if self.is_empty() { 0 } else { 4 + self.lengths.len() * 8 + self.data.len() }
    }

    /// Writes the SDK wire form into `out`, which must be [`encoded_len`](Self::encoded_len)
    /// bytes long (a buffer in a guest's memory, say): the count, the length table, then the
    /// data section as it is kept. False, with nothing written, when `out` is not that long.
    pub fn encode_into(&self, out: &mut [u8]) -> bool {
        if out.len() != self.encoded_len() {
            return false;
        }
        if self.is_empty() {
            return true;
        }
        let (table, data) = out.split_at_mut(4 + self.lengths.len() * 8);
        table[..4].copy_from_slice(&wire_u32(self.lengths.len()).to_le_bytes());
        for (lengths, entry) in self.lengths.iter().zip(table[4..].chunks_exact_mut(8)) {
            entry[..4].copy_from_slice(&wire_u32(lengths.0).to_le_bytes());
            entry[4..].copy_from_slice(&wire_u32(lengths.1).to_le_bytes());
        }
        data.copy_from_slice(&self.data);
        true
    }

    /// Serialises the map in the SDK wire form. An empty map serialises to no bytes at all
    /// (the host then hands the guest a null pointer, as Envoy does).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0; self.encoded_len()];
        self.encode_into(&mut out);
        out
    }

    /// Parses the SDK wire form strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderMapDecodeError> {
        let mut map = Self::new();
        walk_pairs(bytes, |k, v| map.add(k, v))?;
        Ok(map)
    }
}

impl<'a> IntoIterator for &'a HeaderMap {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
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
    let mut pairs = Vec::new();
    walk_pairs(bytes, |k, v| pairs.push((k.to_vec(), v.to_vec())))?;
    Ok(pairs)
}

/// Checks the SDK wire form strictly and hands each pair to `each`, borrowed from `bytes`. On
/// an error some pairs may have been handed over already: callers discard what they built.
fn walk_pairs<'a>(bytes: &'a [u8], mut each: impl FnMut(&'a [u8], &'a [u8])) -> Result<(), HeaderMapDecodeError> {
    if bytes.is_empty() || bytes == [0] {
        return Ok(());
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
    // The whole length table first: a table cut short is refused for its first missing word,
    // before any pair is looked at.
    let table_end = 4 + count * 8;
    if table_end > bytes.len() {
        let first_missing = (4..table_end).step_by(4).find(|at| at + 4 > bytes.len()).unwrap_or(4);
        return Err(HeaderMapDecodeError::Truncated { needed: first_missing + 4, actual: bytes.len() });
    }
    let mut pos = table_end;
    for i in 0..count {
        let (klen, vlen) = (read_u32(4 + i * 8)?, read_u32(8 + i * 8)?);
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
        each(key, value);
        pos = needed;
    }
    if pos != bytes.len() {
        return Err(HeaderMapDecodeError::TrailingBytes(bytes.len() - pos));
    }
    Ok(())
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

    /// The map as plain pairs: what the kept wire form must always describe.
    fn pairs(map: &HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
        map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn edits_in_place_keep_the_wire_form_whole() {
        let mut map = HeaderMap::from_pairs([("a", "1"), ("B", "22"), ("a", "333"), ("c", ""), ("A", "4")]);
        map.replace(b"A", b"longer value");
        assert_eq!(
            pairs(&map),
            [(b"a".to_vec(), b"longer value".to_vec()), (b"b".to_vec(), b"22".to_vec()), (b"c".to_vec(), vec![])]
        );
        map.replace(b"b", b"");
        map.replace(b"d", b"new");
        map.remove(b"C");
        assert_eq!(
            pairs(&map),
            [(b"a".to_vec(), b"longer value".to_vec()), (b"b".to_vec(), vec![]), (b"d".to_vec(), b"new".to_vec())]
        );
        assert_eq!(HeaderMap::decode(&map.encode()), Ok(map.clone()), "the wire form decodes to the same map");
        assert_eq!(map.encode(), encode_pairs(map.iter()), "and is what pair-by-pair serialisation gives");
        assert_eq!(map.encoded_len(), map.encode().len());
        assert_eq!(map, HeaderMap::from_pairs(map.iter()), "equal maps compare equal whatever their history");
        assert_eq!(format!("{:?}", HeaderMap::from_pairs([("x", "1")])), "HeaderMap { pairs: [([120], [49])] }");
        map.remove(b"a");
        map.remove(b"b");
        map.remove(b"d");
        assert!(map.is_empty());
        assert_eq!(map, HeaderMap::new());
        assert!(map.encode().is_empty());
    }

    #[test]
    fn a_truncated_length_table_is_refused_for_its_first_missing_word() {
        for len in 4..12 {
            let mut bytes = vec![0u8; len];
            bytes[0] = 1;
            let needed = if len < 8 { 8 } else { 12 };
            assert_eq!(decode_pairs(&bytes), Err(HeaderMapDecodeError::Truncated { needed, actual: len }), "{len}");
        }
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
