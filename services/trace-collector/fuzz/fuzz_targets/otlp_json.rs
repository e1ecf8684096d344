//! Fuzz target: `cargo +nightly fuzz run otlp_json` (from services/trace-collector/fuzz).
//!
//! An OTLP/HTTP JSON body (`POST /v1/traces`, `application/json`): scanned, then decoded by
//! serde, then converted. Beyond not crashing: the stored spans are well-formed and the span
//! limit cannot be slipped past (the scan may over-count, never under-count).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use trace_collector::ingest::{otlp, otlp_within};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = otlp(data, true) else { return };
    common::check(&decoded);
    common::limit_holds(&decoded, |limits| otlp_within(data, true, limits));
});
