//! `wasmtrace demo`: the whole system on one machine.
//!
//! - [`topology`]: the trace collector and viewer, and the three gallery services each behind its
//!   own wasmtrace sidecar (an inbound listener with the request-id, tagging and trace filters,
//!   an outbound listener with the trace filter), exporting to the collector.
//! - [`traffic`]: seed images and a burst of requests, so there are traces to look at.
//! - [`terminal_waterfall`]: a trace drawn in the terminal (also `wasmtrace traces`).

#![deny(missing_docs)]

pub mod demo_error;
pub mod terminal_waterfall;
pub mod topology;
pub mod traffic;

pub use demo_error::DemoError;
