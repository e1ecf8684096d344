//! What the gallery services (`gallery-api`, `image-catalog`, `image-store`) share.
//!
//! - [`telemetry`]: an OpenTelemetry tracer provider per service, configured by the standard
//!   `OTEL_*` environment variables, exporting OTLP/HTTP.
//! - [`w3c_propagator`]: W3C Trace Context Level 2 for the SDK over `wasmtrace-trace-core`'s
//!   parser, so a service run alone passes the W3C test suite as a sidecar does.
//! - [`server_span`]: the axum middleware that continues the caller's trace (the sidecar's span)
//!   with a SERVER span per request, and tells the client its trace id.
//! - [`operation_span`]: CLIENT spans around database and storage calls.
//! - [`upstream`]: calls to another service, with a CLIENT span and the context injected.
//! - [`in_process_tracing`]: the wasmtrace filters of the service's sidecar file, run inside the
//!   service instead (`GALLERY_TRACING=in-process`).
//! - [`request_id`]: the caller's `x-request-id`, passed on to the services a request calls.
//! - [`api_error`]: the `{"message": ...}` error body every endpoint answers with.
//! - [`media`]: the image types all three accept (one allow-list) and the headers images are
//!   served with.
//! - [`serve`]: serving a router until shutdown, in a process or in a test.
//! - [`w3c_suite_service`]: the W3C trace-context test suite's service interface, made of the
//!   gallery's middleware and client, to run the suite against the gallery standalone.

#![deny(missing_docs)]

pub mod api_error;
pub mod in_process_tracing;
pub mod media;
pub mod operation_span;
pub mod request_id;
pub mod serve;
pub mod server_span;
pub mod service_error;
pub mod telemetry;
pub mod upstream;
pub mod w3c_propagator;
pub mod w3c_suite_service;

pub use api_error::ApiError;
pub use in_process_tracing::InProcessTracing;
pub use operation_span::ClientOperation;
pub use request_id::RequestId;
pub use serve::RunningService;
pub use service_error::{ConfigError, ServiceError};
pub use telemetry::Telemetry;
pub use upstream::UpstreamClient;
