//! Fuzz target: `cargo +nightly fuzz run otlp_protobuf` (from services/trace-collector/fuzz).
//!
//! An OTLP/HTTP protobuf body (`POST /v1/traces`): scanned, then decoded by prost, then
//! converted. Beyond not crashing: the stored spans are well-formed, the scan's span count is
//! exact (the limit refuses one span too many, and allows exactly as many as there are), and the
//! same request sent as OTLP/JSON gives the same spans.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use trace_collector::ingest::{otlp, otlp_within};
use trace_collector::limits::Limits;

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = otlp(data, false) else { return };
    common::check(&decoded);
    common::limit_holds(&decoded, |limits| otlp_within(data, false, limits));
    let exact = Limits { max_spans_per_request: common::total(&decoded), ..Limits::default() };
    assert!(otlp_within(data, false, &exact).is_ok(), "a limit of exactly the request's spans allows it");

    // The same request as OTLP/JSON (opentelemetry-proto's serde mapping: hex ids, u64 as
    // strings). JSON cannot carry every protobuf value (a NaN double), so only a JSON body that
    // decodes is compared.
    let request = ExportTraceServiceRequest::decode(data).expect("otlp() decoded it");
    let Ok(json) = serde_json::to_vec(&request) else { return };
    let Ok(from_json) = otlp(&json, true) else { return };
    assert_eq!(from_json.rejected, decoded.rejected, "JSON refuses the spans protobuf refuses");
    assert_eq!(from_json.spans.len(), decoded.spans.len());
    for (a, b) in decoded.spans.iter().zip(&from_json.spans) {
        assert_eq!((a.trace_id, a.span_id, a.parent_span_id), (b.trace_id, b.span_id, b.parent_span_id));
        assert_eq!((&a.name, a.kind, a.start_us, a.duration_us), (&b.name, b.kind, b.start_us, b.duration_us));
        assert_eq!(a.resource.service, b.resource.service);
    }
});
