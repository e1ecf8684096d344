//! Runtime conformance tests: real proxy-wasm filters written with the Rust SDK, built by
//! `wasmtrace build`, loaded into the runtime and driven through its public API.

mod fixture;

mod bodies;
mod callouts;
mod components;
mod headers;
mod lifecycle;
mod loading;
mod properties;
mod safety;
mod shared_state;
mod start_up;
