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
    if text.is_empty() || text.len() > 2 * N {
        return None;
    }
    let padded = format!("{:0>width$}", text.to_ascii_lowercase(), width = 2 * N);
    parse_lower_hex(&padded)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
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

    /// True for the invalid all-zero id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
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
    }
}
