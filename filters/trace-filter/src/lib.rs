//! The wasmtrace trace filter: for every request it extracts (or starts) a trace, decides
//! sampling, rewrites the propagation headers so the next hop is its span's child, tags the span
//! with OpenTelemetry HTTP semantic conventions, ends it at the stream's end, and exports batches
//! over OTLP/HTTP through a callout from the root — the one export path that also works inside
//! Envoy.
//!
//! Finished spans wait for export in the host's shared queue ([`spool`]), not in the VM: a VM
//! that traps and is re-created loses only the spans of the requests it was serving.
//!
//! One crate, two forms, one behaviour ([`tracer`]):
//! - `wasm32-wasip1`: a proxy-wasm module (`proxy_wasm_filter`), for Envoy and the wasmtrace host;
//! - `wasm32-wasip2`: a component of the `wasmtrace:filter` world in `wit/`
//!   (`component_filter`), for the wasmtrace host (`wasmtrace build --component`).

#![allow(missing_docs, reason = "the front doors' macros define undocumented exports")]

pub mod config;
pub mod handoff;
pub mod headers;
pub mod naming;
pub mod spool;
pub mod tracer;

#[cfg(target_env = "p2")]
mod component_filter;
#[cfg(not(target_env = "p2"))]
mod proxy_wasm_filter;

pub use tracer::SPAN_ATTRIBUTES_PROPERTY;
