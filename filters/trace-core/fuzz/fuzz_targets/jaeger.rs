//! Fuzz target: `cargo +nightly fuzz run jaeger` (from filters/trace-core).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmtrace_trace_core::jaeger;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(context) = jaeger::parse(text) {
        let formatted = jaeger::format(&context.trace_id, &context.span_id, context.sampled == Some(true));
        assert!(jaeger::parse(&formatted).is_some());
    }
});
