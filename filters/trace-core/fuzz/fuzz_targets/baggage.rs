//! Fuzz target: `cargo +nightly fuzz run baggage` (from filters/trace-core).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmtrace_trace_core::baggage;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = baggage::parse(&text.split('\n').collect::<Vec<_>>());
});
