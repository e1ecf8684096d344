//! Why a gallery service does not start: every cause with its source kept.

use std::net::SocketAddr;

/// Errors crossing the crate boundary from a service's own start-up steps (a database, a store).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Its address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket could not be set up for serving.
    #[error("the listening socket: {0}")]
    Socket(#[source] std::io::Error),
    /// Its thread or tokio runtime could not start.
    #[error("cannot start the service's thread or runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Its thread ended before it served.
    #[error("the service exited during start-up")]
    Exited,
    /// The environment configures it wrongly.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A step of building its router failed (opening the database or the object store).
    #[error("{step}: {source}")]
    Build {
        /// The step (a fixed phrase, "opening the catalog database").
        step: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The in-process filters did not start.
    #[error("the in-process filters: {0}")]
    Filters(#[source] BoxError),
    /// Serving failed after it started.
    #[error("serving: {0}")]
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
    #[error("{path}: {source}")]
    FiltersConfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: wasmtrace_config::ConfigErrors,
    },
    /// An upstream service's URL or Host is not usable.
    #[error("{service} {what} `{value}`: expected http://host:port")]
    Upstream {
        /// The upstream service.
        service: String,
        /// `URL` or `host`.
        what: &'static str,
        /// The value given.
        value: String,
    },
}
