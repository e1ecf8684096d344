//! Fuzz target: `cargo +nightly fuzz run header_map` (from host/fuzz).
//!
//! The serialised header map a guest hands the host (`proxy_set_header_map_pairs`, the pairs of
//! `proxy_send_local_response` and `proxy_http_call`): decoding is strict, so whatever decodes
//! encodes back to the very same bytes; and any pairs encode to bytes that decode to them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmtrace_runtime::header_map::{
    HeaderMap, HeaderMapDecodeError, MAX_PAIRS, MAX_SERIALIZED_BYTES, decode_pairs, encode_pairs,
};

fuzz_target!(|data: &[u8]| {
    decode_then_encode(data);
    encode_then_decode(data);
});

/// Guest bytes → pairs → bytes is the identity (the empty map has three spellings).
fn decode_then_encode(data: &[u8]) {
    match decode_pairs(data) {
        Ok(pairs) => {
            let encoded = encode_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            if pairs.is_empty() {
                assert!(matches!(data, [] | [0] | [0, 0, 0, 0]), "only the three empty forms decode to no pairs");
                assert!(encoded.is_empty());
            } else {
                assert_eq!(encoded, data, "decode → encode is the identity");
            }
            let map = HeaderMap::decode(data).expect("HeaderMap::decode accepts what decode_pairs accepts");
            assert_eq!(map.len(), pairs.len());
            assert_eq!(map.byte_size(), pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>());
            for ((name, value), (got_name, got_value)) in pairs.iter().zip(map.iter()) {
                assert_eq!(got_name, name.to_ascii_lowercase().as_slice());
                assert_eq!(got_value, value.as_slice());
                assert!(map.get(name).is_some(), "every decoded name can be looked up");
            }
            assert_eq!(HeaderMap::decode(&map.encode()).as_ref(), Ok(&map), "a map re-decodes to itself");
        }
        Err(error) => {
            match error {
                HeaderMapDecodeError::Truncated { needed, actual } => assert!(needed > actual),
                HeaderMapDecodeError::TrailingBytes(n) => assert!(n > 0 && n < data.len()),
                HeaderMapDecodeError::MissingNul(_) | HeaderMapDecodeError::TooLarge { .. } => {}
            }
            let _ = error.to_string();
        }
    }
}

/// Arbitrary pairs (lines of the input, split at the first `:`; NULs inside are allowed, the
/// lengths delimit) → bytes → the same pairs, within the decoder's limits; then the map's edits
/// keep their promises.
fn encode_then_decode(data: &[u8]) {
    let pairs: Vec<(&[u8], &[u8])> = data
        .split(|b| *b == b'\n')
        .map(|line| match line.iter().position(|b| *b == b':') {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &b""[..]),
        })
        .collect();
    let encoded = encode_pairs(pairs.iter().copied());
    let within_limits = pairs.len() <= MAX_PAIRS && encoded.len() <= MAX_SERIALIZED_BYTES;
    let decoded = match decode_pairs(&encoded) {
        Ok(decoded) => decoded,
        // Envoy's limits are on what a guest hands over; a larger map encodes but is refused.
        Err(HeaderMapDecodeError::TooLarge { .. }) if !within_limits => return,
        Err(error) => panic!("what the host encodes within the limits, it decodes: {error}"),
    };
    assert!(within_limits, "a map beyond the limits is refused");
    assert_eq!(decoded.len(), pairs.len());
    for ((name, value), (got_name, got_value)) in pairs.iter().zip(&decoded) {
        assert_eq!((*name, *value), (got_name.as_slice(), got_value.as_slice()));
    }

    let mut map = HeaderMap::from_pairs(pairs.iter().copied());
    let (name, value) = pairs[0];
    map.replace(name, value);
    assert_eq!(map.get(name), Some(value));
    assert_eq!(map.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).count(), 1, "replace leaves one entry");
    map.remove(name);
    assert_eq!(map.get(name), None);
}
