//! Fuzz target: `cargo +nightly fuzz run tracestate` (from filters/trace-core).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmtrace_trace_core::w3c;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(members) = w3c::parse_tracestate(&text.split('\n').collect::<Vec<_>>())
        && let Some(formatted) = w3c::format_tracestate(&members)
    {
        assert_eq!(w3c::parse_tracestate(&[&formatted]), Some(members));
    }
});
