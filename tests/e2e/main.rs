//! The whole system on loopback: real upstream HTTP servers, the proxy serving an Envoy
//! configuration with real Wasm filters, and real HTTP/1.1 and HTTP/2 clients.

mod fixture;

mod admin;
mod assemblyscript;
mod callouts;
mod collector_limits;
mod demo;
mod deploy;
mod envoy_compat;
mod filters;
mod gallery_api;
mod gallery_content_types;
mod gallery_page;
mod gallery_spans;
mod grpc_callouts;
mod guest_api;
mod hardening;
mod hostile_headers;
mod hot_swap;
mod in_process;
mod jaeger_v3;
mod portability;
mod protocols;
mod reactor_build;
mod shutdown;
mod span_loss;
mod streaming;
mod trace_collector;
mod trace_viewer;
mod tracing;
mod upgrades_and_trailers;
mod upstream_failures;
mod w3c_conformance;
mod wasm_services;
