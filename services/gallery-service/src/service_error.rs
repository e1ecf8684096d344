//! Why a gallery service does not start: every cause with its source kept.

use std::net::SocketAddr;

pub use wasmtrace_proxy::error::chain;

/// Errors crossing the crate boundary from a service's own start-up steps (a database, a store).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a service could not start. A message says what failed; why is its source (print it with
/// [`chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// One service of several (the demo's, the collector's two) failed: which one.
    #[error("{name}")]
    Service {
        /// The service.
        name: String,
        /// Why.
        #[source]
        source: Box<ServiceError>,
    },
    /// Its address could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket could not be set up for serving.
    #[error("the listening socket")]
    Socket(#[source] std::io::Error),
    /// Its thread or tokio runtime could not start.
    #[error("cannot start the service's thread or runtime")]
    Runtime(#[source] std::io::Error),
    /// Its thread ended before it served.
    #[error("the service exited during start-up")]
    Exited,
    /// The environment configures it wrongly.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A step of building its router failed (opening the database or the object store).
    #[error("{step}")]
    Build {
        /// The step (a fixed phrase, "opening the catalog database").
        step: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The in-process filters did not start.
    #[error("the in-process filters")]
    Filters(#[source] BoxError),
    /// Serving failed after it started.
    #[error("serving")]
    Serve(#[source] std::io::Error),
}

impl ServiceError {
    /// A failed router-building step.
    pub fn build(step: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Build { step, source: source.into() }
    }
}

/// A configuration value a service cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `GALLERY_TRACING` has another value.
    #[error("GALLERY_TRACING={0}: expected sdk, sidecar or in-process")]
    TracingMode(String),
    /// `GALLERY_TRACING=in-process` without `GALLERY_FILTERS_CONFIG`.
    #[error("GALLERY_TRACING=in-process needs GALLERY_FILTERS_CONFIG (the sidecar file whose filters to run)")]
    NoFiltersConfig,
    /// The filters' bootstrap file does not load.
    #[error("{path}")]
    FiltersConfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: wasmtrace_config::ConfigErrors,
    },
    /// An upstream service's URL or Host is not usable.
    #[error("{service} URL `{value}`: expected http://host:port")]
    UpstreamUrl {
        /// The upstream service.
        service: String,
        /// The value given.
        value: String,
    },
    /// The `Host` to send an upstream service is not a header value.
    #[error("{service} host `{value}` is not a valid Host header value")]
    UpstreamHost {
        /// The upstream service.
        service: String,
        /// The value given.
        value: String,
    },
}
