//! Fuzz target: `cargo +nightly fuzz run zipkin` (from services/trace-collector/fuzz).
//!
//! A Zipkin v2 JSON body (`POST /api/v2/spans`): scanned, then decoded by serde, then converted.
//! Beyond not crashing: the stored spans are well-formed (kinds 1 to 5, tags a JSON object of
//! strings), and the scan's span count is exact (the limit refuses one span too many, and allows
//! exactly as many as there are).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use trace_collector::ingest::{zipkin, zipkin_within};
use trace_collector::limits::Limits;

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = zipkin(data) else { return };
    common::check(&decoded);
    for span in &decoded.spans {
        assert!((1..=5).contains(&span.kind), "Zipkin kinds map to OTLP's 1 to 5");
        let tags: serde_json::Value = serde_json::from_str(&span.attributes).expect("tags are JSON");
        assert!(tags.as_object().is_some_and(|t| t.values().all(serde_json::Value::is_string)));
    }
    common::limit_holds(&decoded, |limits| zipkin_within(data, limits));
    let exact = Limits { max_spans_per_request: common::total(&decoded), ..Limits::default() };
    assert!(zipkin_within(data, &exact).is_ok(), "a limit of exactly the request's spans allows it");
});
