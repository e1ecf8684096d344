//! Fuzz target: `cargo +nightly fuzz run b3` (from filters/trace-core).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmtrace_trace_core::b3;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = b3::parse_single(text);
    let mut parts = text.splitn(4, '\n');
    let _ = b3::parse_multi(parts.next(), parts.next(), parts.next(), parts.next());
});
