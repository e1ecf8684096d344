//! End-to-end tests live in `e2e/main.rs` (`cargo test -p wasmtrace-e2e`); this library is empty.
