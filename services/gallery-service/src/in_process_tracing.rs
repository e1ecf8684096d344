//! The wasmtrace filters inside the service's own process (`GALLERY_TRACING=in-process`): the
//! sidecar file's `inbound` listener runs around the service's router, its `outbound` listener
//! around the calls it makes to other services — the same modules and configuration the sidecar
//! runs, with no hop through one. The service's own database and storage spans are children of
//! the in-process SERVER span through the `traceparent` the trace filter puts on the request
//! the router receives, as behind a sidecar. The service serves its router with axum, the
//! filters as its layer: the filter workers serving the socket themselves
//! (`InProcessFilters::serve`) measured no cheaper per request and took a burst of connections
//! on one worker.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::ProxyOptions;
use wasmtrace_tower::{FilterLayer, InProcessFilters};

use crate::{ConfigError, ServiceError};

/// The listener whose filters wrap the service's server.
pub const INBOUND_LISTENER: &str = "inbound";
/// The listener whose filters wrap the service's calls, when the file has one.
pub const OUTBOUND_LISTENER: &str = "outbound";

/// A service's in-process filters and the layers it puts them in.
#[derive(Clone)]
pub struct InProcessTracing {
    filters: InProcessFilters,
    inbound: FilterLayer,
    outbound: Option<FilterLayer>,
}

impl std::fmt::Debug for InProcessTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessTracing").field("admin", &self.filters.admin_address()).finish_non_exhaustive()
    }
}

impl InProcessTracing {
    /// Starts `bootstrap`'s filters in this process (`workers` threads of VMs).
    pub fn start(bootstrap: Bootstrap, workers: usize) -> Result<Self, ServiceError> {
        Self::start_with(
            bootstrap,
            ProxyOptions { workers, drain_timeout: Duration::from_secs(5), ..ProxyOptions::default() },
        )
    }

    /// Starts `bootstrap`'s filters in this process with the sidecar's `options` (workers, limits,
    /// the runtime's profiler...).
    pub fn start_with(bootstrap: Bootstrap, options: ProxyOptions) -> Result<Self, ServiceError> {
        let filters = InProcessFilters::start(bootstrap, options).map_err(|e| ServiceError::Filters(e.into()))?;
        let inbound = filters.server_layer(INBOUND_LISTENER).map_err(|e| ServiceError::Filters(e.into()))?;
        let outbound = filters.client_layer(OUTBOUND_LISTENER).ok();
        Ok(Self { filters, inbound, outbound })
    }

    /// Starts the filters of the Envoy bootstrap at `path` (a service binary's
    /// `GALLERY_FILTERS_CONFIG`, e.g. `deploy/envoy/gallery-api.yaml`).
    pub fn from_file(path: &Path) -> Result<Self, ServiceError> {
        let bootstrap = Bootstrap::from_file(path)
            .map_err(|source| ConfigError::FiltersConfig { path: path.display().to_string(), source })?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::start(bootstrap, workers)
    }

    /// The layer for the service's router (served by `axum::serve`), telling the filters where it
    /// listens (each request crosses to a filter worker and back).
    pub fn server_layer(&self, listen: SocketAddr) -> FilterLayer {
        self.inbound.clone().with_local_address(listen)
    }

    /// The layer for the service's calls to other services.
    pub fn client_layer(&self) -> Option<&FilterLayer> {
        self.outbound.as_ref()
    }

    /// The filters (their admin API, their shutdown).
    pub fn filters(&self) -> &InProcessFilters {
        &self.filters
    }
}
