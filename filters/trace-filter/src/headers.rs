//! A stream's request headers as a front door hands them over, read in place: names and values
//! are borrowed from the one buffer the host filled, never copied into pairs of their own.
//!
//! Values are bytes (HTTP/1.1 allows obs-text, bytes ≥ 0x80, in a field value), so nothing here
//! assumes UTF-8; [`text`] makes text of them, borrowing when they are UTF-8 (nearly always) and
//! with U+FFFD for what is not, which decides per header what such bytes mean:
//! - a propagation header (`traceparent`, `tracestate`, `b3`, `x-b3-*`, `uber-trace-id`) is
//!   ASCII by its grammar and U+FFFD is outside every one of them, so the value is simply
//!   invalid, as those bytes make it (an invalid `traceparent` starts a new trace; an invalid
//!   `tracestate` is dropped whole);
//! - a header recorded on the span (`user-agent`, `x-request-id`, configured attributes) is
//!   recorded as it came, with U+FFFD where a byte was not UTF-8 (attributes are strings).
//!
//! Names are compared as bytes with the lower-case ASCII names the tracer asks for (hosts hand
//! names over lower-cased): a name that is not UTF-8, which a filter earlier in the chain may have
//! set, matches nothing and cannot make anything here panic.

use std::borrow::Cow;

/// Text of a header value: borrowed when it is UTF-8, U+FFFD for the bytes that are not.
pub fn text(value: &[u8]) -> Cow<'_, str> {
    // Validating is cheaper than the lossy conversion's chunking, and nearly every value passes.
    match std::str::from_utf8(value) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(value),
    }
}

/// The request headers of one stream: proxy-wasm's serialised map, as both front doors hand it
/// over (`proxy_get_header_map_pairs`, `http-stream.headers-serialized`): u32 count, count × (u32
/// name length, u32 value length), then each `name \0 value \0`, little-endian; with where each
/// pair is in it, found once (the tracer looks up a dozen names).
pub struct Headers {
    /// The host's buffer.
    bytes: Vec<u8>,
    /// `(name start, name length, value length)` of each whole pair.
    pairs: Vec<(usize, usize, usize)>,
    /// Per [`Known`] name: the index in `pairs` of its first value, and how many it has.
    known: [(usize, usize); Known::COUNT],
}

/// The names the tracer reads on every request, located while the map is first walked: a
/// lookup of one is an index, where a lookup by name compares it with every pair before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// `:method`.
    Method,
    /// `:path`.
    Path,
    /// `:scheme`.
    Scheme,
    /// `:authority`.
    Authority,
    /// `user-agent`.
    UserAgent,
    /// `x-request-id`.
    RequestId,
    /// `traceparent`.
    Traceparent,
    /// `tracestate`.
    Tracestate,
}

impl Known {
    /// How many there are: the last one's index and one.
    const COUNT: usize = Self::Tracestate as usize + 1;

    /// The name, as hosts hand it over (lower case).
    pub fn name(self) -> &'static str {
        match self {
            Self::Method => ":method",
            Self::Path => ":path",
            Self::Scheme => ":scheme",
            Self::Authority => ":authority",
            Self::UserAgent => "user-agent",
            Self::RequestId => "x-request-id",
            Self::Traceparent => "traceparent",
            Self::Tracestate => "tracestate",
        }
    }

    /// Which known name `name` is: by length first, so most names are told apart without
    /// comparing their bytes.
    fn of(name: &[u8]) -> Option<Self> {
        let is = |known: Self| (name == known.name().as_bytes()).then_some(known);
        match name.len() {
            5 => is(Self::Path),
            7 => is(Self::Method).or_else(|| is(Self::Scheme)),
            10 => is(Self::Authority).or_else(|| is(Self::UserAgent)).or_else(|| is(Self::Tracestate)),
            11 => is(Self::Traceparent),
            12 => is(Self::RequestId),
            _ => None,
        }
    }
}

/// The pairs of a serialised map, bounds-checked: a map that does not add up yields the pairs
/// that do, and nothing after them.
struct SerializedPairs<'a> {
    bytes: &'a [u8],
    /// The next pair's index and where its name starts.
    index: usize,
    at: usize,
    count: usize,
}

impl<'a> SerializedPairs<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let count = word(bytes, 0).unwrap_or(0);
        let start = count.checked_mul(8).and_then(|n| n.checked_add(4)).filter(|end| *end <= bytes.len());
        match start {
            Some(at) => Self { bytes, index: 0, at, count },
            // A count the bytes cannot hold: no pairs at all.
            None => Self { bytes, index: 0, at: 0, count: 0 },
        }
    }
}

fn word(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

impl Iterator for SerializedPairs<'_> {
    /// `(name start, name length, value length)`.
    type Item = (usize, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let lengths = 4 + self.index * 8;
        let whole = (|| {
            let (name_len, value_len) = (word(self.bytes, lengths)?, word(self.bytes, lengths + 4)?);
            let name_at = self.at;
            let value_at = name_at.checked_add(name_len)?.checked_add(1)?;
            let end = value_at.checked_add(value_len)?;
            // Both fields are there (the NUL after the last value is not needed).
            (end <= self.bytes.len()).then_some((name_at, name_len, value_len, end + 1))
        })();
        match whole {
            Some((name_at, name_len, value_len, next)) => {
                self.index += 1;
                self.at = next;
                Some((name_at, name_len, value_len))
            }
            None => {
                self.count = 0;
                None
            }
        }
    }
}

impl Headers {
    /// The headers of a serialised map.
    pub fn serialized(bytes: Vec<u8>) -> Self {
        let walk = SerializedPairs::new(&bytes);
        // The count is checked against the bytes: each pair takes 8 of them in the table.
        let mut pairs = Vec::with_capacity(walk.count);
        let mut known = [(0, 0); Known::COUNT];
        for (index, (at, name_len, value_len)) in walk.enumerate() {
            if let Some(name) = bytes.get(at..at + name_len).and_then(Known::of) {
                let (first, count) = &mut known[name as usize];
                if *count == 0 {
                    *first = index;
                }
                *count += 1;
            }
            pairs.push((at, name_len, value_len));
        }
        Self { bytes, pairs, known }
    }

    /// Pair `index`'s name and value.
    fn pair(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let &(at, name_len, value_len) = self.pairs.get(index)?;
        let name = self.bytes.get(at..at + name_len)?;
        let value = self.bytes.get(at + name_len + 1..at + name_len + 1 + value_len)?;
        Some((name, value))
    }

    /// The first value of a known name.
    pub fn known(&self, name: Known) -> Option<&[u8]> {
        self.known_all(name).next()
    }

    /// The first value of a known name as text (see [`text`]).
    pub fn known_text(&self, name: Known) -> Option<Cow<'_, str>> {
        self.known(name).map(text)
    }

    /// Every value of a known name, in order: from its first pair on, and no further than its
    /// last (the only one, nearly always).
    pub fn known_all(&self, name: Known) -> impl Iterator<Item = &[u8]> + Clone {
        let (first, count) = self.known[name as usize];
        (first..self.pairs.len())
            .filter_map(move |index| self.pair(index))
            .filter(move |(k, _)| *k == name.name().as_bytes())
            .map(|(_, v)| v)
            .take(count)
    }

    /// Every `(name, value)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        (0..self.pairs.len()).filter_map(|index| self.pair(index))
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + Clone {
        self.iter().filter(move |(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
    }

    /// The first value of `name` as text (see [`text`]).
    pub fn first_text(&self, name: &str) -> Option<Cow<'_, str>> {
        self.first(name).map(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy-wasm serialisation of `pairs` (the layout of the SDK's `SERIALIZED_MAP`).
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let len = |b: &[u8]| u32::try_from(b.len()).expect("short").to_le_bytes();
        let mut out = len(&vec![0; pairs.len()]).to_vec();
        for (name, value) in pairs {
            out.extend(len(name));
            out.extend(len(value));
        }
        for (name, value) in pairs {
            out.extend([*name, b"\0", *value, b"\0"].concat());
        }
        out
    }

    #[test]
    fn the_sdk_example_map_decodes() {
        let pairs: [(&[u8], &[u8]); 4] = [
            (b":method", b"GET"),
            (b":path", b"/bytes/1"),
            (b":authority", b"httpbin.org"),
            (b"Powered-By", b"proxy-wasm"),
        ];
        let map = serialize(&pairs);
        assert_eq!(&map[..12], &[4, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0], "the SDK vector's first bytes");
        let headers = Headers::serialized(map);
        assert_eq!(headers.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(headers.first(":path"), Some(&b"/bytes/1"[..]));
        assert_eq!(headers.first("powered-by"), None, "names are compared as the host hands them over");
    }

    #[test]
    fn repeated_headers_come_in_order() {
        let pairs: [(&[u8], &[u8]); 3] = [(b"tracestate", b"a=1"), (b"x", b"y"), (b"tracestate", b"b=2")];
        let headers = Headers::serialized(serialize(&pairs));
        assert_eq!(headers.all("tracestate").collect::<Vec<_>>(), [&b"a=1"[..], b"b=2"]);
        assert_eq!(headers.first_text("x").as_deref(), Some("y"));
        assert_eq!(headers.first("missing"), None);
    }

    #[test]
    fn known_names_are_found_as_a_lookup_by_name_finds_them() {
        let pairs: [(&[u8], &[u8]); 9] = [
            (b":method", b"GET"),
            (b":path", b"/a?b"),
            (b":authority", b"example.com"),
            (b"user-agent", b"curl"),
            (b"tracestate", b"a=1"),
            (b"traceparent", b"00-x"),
            (b"x-request-id", b"r1"),
            (b"tracestate", b"b=2"),
            (b"user-agents", b"not user-agent"),
        ];
        let headers = Headers::serialized(serialize(&pairs));
        for known in [
            Known::Method,
            Known::Path,
            Known::Scheme,
            Known::Authority,
            Known::UserAgent,
            Known::RequestId,
            Known::Traceparent,
            Known::Tracestate,
        ] {
            assert_eq!(headers.known(known), headers.first(known.name()), "{known:?}");
            assert_eq!(
                headers.known_all(known).collect::<Vec<_>>(),
                headers.all(known.name()).collect::<Vec<_>>(),
                "{known:?}"
            );
        }
        assert_eq!(headers.known(Known::Scheme), None);
        assert_eq!(headers.known_all(Known::Tracestate).collect::<Vec<_>>(), [&b"a=1"[..], b"b=2"]);
        assert_eq!(headers.known_text(Known::UserAgent).as_deref(), Some("curl"));
    }

    #[test]
    fn bytes_that_are_not_utf8_or_do_not_add_up_never_panic() {
        let pairs: [(&[u8], &[u8]); 2] = [(b"\xff\xfe", b"\x80\xff"), (b"user-agent", b"caf\xe9")];
        let map = serialize(&pairs);
        let headers = Headers::serialized(map.clone());
        assert_eq!(headers.iter().count(), 2);
        assert_eq!(headers.first_text("user-agent").as_deref(), Some("caf\u{fffd}"));
        // The last value ends one byte before the map (its NUL).
        for cut in 0..map.len() - 1 {
            let truncated = Headers::serialized(map[..cut].to_vec());
            assert!(truncated.iter().count() < 2, "a truncated map yields only whole pairs");
        }
        assert_eq!(
            Headers::serialized(vec![0xff, 0xff, 0xff, 0xff]).iter().count(),
            0,
            "a count the bytes cannot hold"
        );
        assert_eq!(Headers::serialized(Vec::new()).iter().count(), 0);
    }
}
