//! Why the demo did not start, or its traffic or a trace query failed: each cause with its
//! source kept.

use std::path::PathBuf;

/// Errors crossing a library boundary (hyper's client, building a request).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong running the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A filter could not be built.
    #[error("building filters/{name}")]
    Build {
        /// The filter crate.
        name: String,
        /// Why.
        #[source]
        source: wasmtrace_build::BuildError,
    },
    /// No Wasm toolchain, even after trying to install the target.
    #[error(transparent)]
    Toolchain(wasmtrace_build::BuildError),
    /// A sidecar file does not load.
    #[error("{}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: wasmtrace_config::ConfigErrors,
    },
    /// A sidecar file lacks a listener or cluster the demo places.
    #[error("deploy/envoy/{service}.yaml")]
    Placement {
        /// The service whose file it is.
        service: String,
        /// What is missing.
        #[source]
        source: wasmtrace_config::UnknownNames,
    },
    /// A sidecar file describes something the demo cannot run (a fixed text says what).
    #[error("{0}")]
    Topology(String),
    /// No free loopback port.
    #[error("no free port")]
    Port(#[source] std::io::Error),
    /// A sidecar (or a service's in-process filters) did not start.
    #[error("{service} sidecar")]
    Sidecar {
        /// The service.
        service: String,
        /// Why.
        #[source]
        source: Box<wasmtrace_proxy::ProxyError>,
    },
    /// A service (or the collector) did not start.
    #[error(transparent)]
    Service(#[from] gallery_service::ServiceError),
    /// A request to `url` failed.
    #[error("{url}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The collector does not answer at `url`.
    #[error("cannot reach the collector at {url}")]
    Unreachable {
        /// The query.
        url: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A service answered what the demo did not expect.
    #[error("{what} answered {status}: {body}")]
    Unexpected {
        /// The request (a fixed phrase).
        what: &'static str,
        /// The status.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// An answer that is not the JSON expected.
    #[error("{what}")]
    Json {
        /// The answer (a URL or a phrase).
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The collector refused a query.
    #[error("{url}: {status}: {message}")]
    Collector {
        /// The query.
        url: String,
        /// Its status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

impl DemoError {
    /// A failed request to `url`.
    pub fn http(url: &str, source: impl Into<BoxError>) -> Self {
        Self::Http { url: url.to_owned(), source: source.into() }
    }
}
