//! Fuzz target: `cargo +nightly fuzz run traceparent` (from filters/trace-core).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmtrace_trace_core::w3c;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some((trace, span, flags)) = w3c::parse_traceparent(&[text]) {
        let canonical = w3c::format_traceparent(&trace, &span, flags & 1 == 1, flags & 2 == 2);
        assert!(w3c::parse_traceparent(&[&canonical]).is_some());
    }
});
