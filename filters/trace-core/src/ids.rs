//! Trace and span ids: random, never all zero, lower-case hex on the wire.

use std::fmt;

/// A 16-byte trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    loop {
        if getrandom::fill(&mut bytes).is_err() {
            // No entropy source at all: fall back to the clock so ids still differ.
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1);
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (nanos >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(0x9d);
            }
        }
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

/// Parses exactly `2 * N` lower-case hex digits.
pub(crate) fn parse_lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

/// Parses hex digits of either case (B3 and Jaeger accept upper case), left-padding short ids.
pub(crate) fn parse_any_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.is_empty() || digits.len() > 2 * N {
        return None;
    }
    let value = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    // Right-aligned: the missing leading digits are zeros.
    let pad = 2 * N - digits.len();
    let mut out = [0u8; N];
    for (i, &c) in digits.iter().enumerate() {
        let nibble = pad + i;
        let v = value(c)?;
        out[nibble / 2] |= if nibble.is_multiple_of(2) { v << 4 } else { v };
    }
    Some(out)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lower-case hex into `out`, which must be exactly twice as long: the
/// allocation-free form ids take on the wire (headers, JSON) on the request path.
pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = HEX_DIGITS[usize::from(b & 0xf)];
    }
}

/// Lower-case hex of `N` bytes in `2 * N` bytes, on the stack (`M` must be `2 * N`).
fn hex_array<const N: usize, const M: usize>(bytes: &[u8; N]) -> [u8; M] {
    let mut out = [0u8; M];
    write_hex(bytes, &mut out);
    out
}

/// The hex digits as text (they are ASCII, so this cannot fail).
pub(crate) fn ascii(digits: &[u8]) -> &str {
    std::str::from_utf8(digits).unwrap_or_default()
}

/// ASCII text of at most `N` bytes, on the stack: a propagation header's value, which a filter
/// makes on every request and hands straight to the host.
#[derive(Clone, Copy)]
pub struct StackText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    pub(crate) fn new() -> Self {
        Self { bytes: [0; N], len: 0 }
    }

    /// Appends `bytes`; callers size `N` for the longest value they make, and anything beyond it
    /// is cut (never reached: the values are ids and fixed separators).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(N);
        let taken = end - self.len;
        self.bytes[self.len..end].copy_from_slice(&bytes[..taken]);
        self.len = end;
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The text (only ASCII is ever pushed).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    ascii(&out).to_owned()
}

impl TraceId {
    /// A new random trace id (all 16 bytes random, so the W3C `random` flag holds).
    pub fn random() -> Self {
        Self(random_nonzero())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Lower-case hex, on the stack.
    pub fn hex(&self) -> [u8; 32] {
        hex_array(&self.0)
    }

    /// True for the invalid all-zero id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The low 8 bytes as an integer (what ratio samplers compare).
    pub fn low_u64(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    /// A new random span id.
    pub fn random() -> Self {
        Self(random_nonzero())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Lower-case hex, on the stack.
    pub fn hex(&self) -> [u8; 16] {
        hex_array(&self.0)
    }

    /// True for the invalid all-zero id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ascii(&self.hex()))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ascii(&self.hex()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_nonzero_and_round_trip_through_hex() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert!(!a.is_zero());
        assert_eq!(parse_lower_hex::<16>(&a.to_hex()), Some(a.0));
        let s = SpanId::random();
        assert_eq!(parse_lower_hex::<8>(&s.to_hex()), Some(s.0));
    }

    #[test]
    fn strict_hex_refuses_upper_case_and_wrong_lengths() {
        assert_eq!(parse_lower_hex::<2>("ab01"), Some([0xab, 0x01]));
        assert_eq!(parse_lower_hex::<2>("AB01"), None);
        assert_eq!(parse_lower_hex::<2>("ab0"), None);
        assert_eq!(parse_lower_hex::<2>("zz01"), None);
        assert_eq!(parse_any_hex::<2>("AB1"), Some([0x0a, 0xb1]));
        assert_eq!(parse_any_hex::<2>("aB01"), Some([0xab, 0x01]));
        assert_eq!(parse_any_hex::<2>("1"), Some([0x00, 0x01]));
        assert_eq!(parse_any_hex::<2>(""), None);
        assert_eq!(parse_any_hex::<2>("12345"), None);
        assert_eq!(parse_any_hex::<2>("\u{e9}"), None, "non-ASCII");
        assert_eq!(parse_any_hex::<2>("0x1"), None);
    }
}
