//! The wasmtrace filters inside a Rust service: the same `.wasm` modules, configured by the same
//! Envoy bootstrap, as tower layers — one around the service's server ([`InProcessFilters::server_layer`])
//! and one around its HTTP client ([`InProcessFilters::client_layer`]) — with no sidecar hop.
//!
//! ```no_run
//! # async fn example(router: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use wasmtrace_tower::InProcessFilters;
//! let bootstrap = wasmtrace_config::Bootstrap::from_file("deploy/envoy/gallery-api.yaml".as_ref())?;
//! let filters = InProcessFilters::start(bootstrap, Default::default())?;
//! // The `inbound` listener's filters around every route of the router.
//! let app = router.layer(filters.server_layer("inbound")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Or the filters' workers serve the application's socket themselves, with nothing crossing a
//! thread ([`InProcessFilters::serve`], the faster way when the application does not need to own
//! its server):
//!
//! ```no_run
//! # async fn example(router: axum::Router, filters: wasmtrace_tower::InProcessFilters) -> Result<(), Box<dyn std::error::Error>> {
//! let socket = std::net::TcpListener::bind("127.0.0.1:9080")?;
//! filters.serve("inbound", socket, router, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! How it runs: [`InProcessFilters::start`] starts the sidecar's own workers
//! ([`wasmtrace_proxy::start_in_process`]) — N threads, each with its own VM of every plugin —
//! without binding the listeners. A layer hands each request to a worker, which runs it through
//! the listener's chain exactly as the sidecar would (Envoy's defaults, the request filters, the
//! route, the response filters), calling the wrapped service where the route names a cluster;
//! the wrapped service's future runs on that worker inside the application's runtime context, so
//! what it spawns and the I/O it opens belong to the application. The request and its answer
//! cross threads twice (the application's server thread to the worker and back), and those
//! wake-ups cost more than the trace filter does; served by [`InProcessFilters::serve`], each
//! worker accepts connections from the socket as a sidecar listener does and calls the service
//! on its own thread, and a client layer called from there stays on that thread too. Callouts (span export) go to
//! the bootstrap's clusters. Hot swap, rollback, file watch, `/plugins`, `/stats/prometheus`,
//! drain and flush are the sidecar's: the bootstrap's `admin` address serves them, or the
//! application routes them to [`InProcessFilters::admin_service`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin_service;
mod application_call;
mod layer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use thiserror::Error;
use tower_service::Service;
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::in_process::{Application, ApplicationFactory, InPlaceError, InProcessInbox};
use wasmtrace_proxy::{BoxError, ProxyError, ProxyOptions, RunningProxy};

use crate::application_call::application_call;

pub use admin_service::AdminService;
pub use layer::{ConnectionAddresses, FilterLayer, Filtered, FilteredBody, Side};
pub use wasmtrace_proxy::in_process::ReplyBody;

/// Why the in-process filters cannot start or a layer cannot be made.
#[derive(Debug, Error)]
pub enum InProcessError {
    /// The configuration's filters did not start (a module that does not load, a plugin that
    /// refuses its configuration, an admin address that cannot be bound).
    #[error("starting the in-process filters: {0}")]
    Start(#[source] ProxyError),
    /// No listener of that name in the bootstrap.
    #[error("the configuration has no listener `{0}`")]
    NoListener(String),
    /// Asked for a layer after [`InProcessFilters::shutdown`].
    #[error("the in-process filters have been shut down")]
    ShutDown,
    /// The workers could not serve the socket given to [`InProcessFilters::serve`].
    #[error("serving in place: {0}")]
    Serve(#[source] InPlaceError),
}

/// The filters of one Envoy bootstrap, running inside this process: the factory of its layers,
/// its admin API, and its shutdown. Cheap to clone (every clone is the same filters).
#[derive(Clone)]
pub struct InProcessFilters {
    inner: Arc<Shared>,
}

struct Shared {
    /// Taken by [`InProcessFilters::shutdown`].
    proxy: Mutex<Option<RunningProxy>>,
    inbox: InProcessInbox,
    admin: Arc<wasmtrace_proxy::admin::AdminState>,
    admin_address: Option<SocketAddr>,
}

impl InProcessFilters {
    /// Loads and starts the Wasm filters of every listener in `bootstrap` (module paths as the
    /// file gives them, relative to the working directory as Envoy reads them), one VM of each
    /// plugin per worker (`options.workers`, by default one per core). Serves the admin API if
    /// the bootstrap has an `admin` address, and watches module and configuration files as
    /// `options` asks.
    pub fn start(bootstrap: Bootstrap, options: ProxyOptions) -> Result<Self, InProcessError> {
        let proxy = wasmtrace_proxy::start_in_process(bootstrap, options).map_err(InProcessError::Start)?;
        let Some(inbox) = proxy.in_process_inbox().cloned() else {
            unreachable!("start_in_process always makes the workers' inboxes")
        };
        let admin = proxy.admin_state();
        let admin_address = proxy.admin_address();
        Ok(Self { inner: Arc::new(Shared { proxy: Mutex::new(Some(proxy)), inbox, admin, admin_address }) })
    }

    /// The layer running listener `listener`'s filters around a server: SERVER-side streams, the
    /// request as the application's server received it, the wrapped service answering where the
    /// route names a cluster.
    pub fn server_layer(&self, listener: &str) -> Result<FilterLayer, InProcessError> {
        self.layer(listener, Side::Server)
    }

    /// The layer running listener `listener`'s filters around an HTTP client (hyper's, or any
    /// `tower::Service` of requests with absolute URIs): the filters see the request's `Host` as
    /// `:authority`, the route is chosen by it, and the wrapped client sends the filtered request
    /// to the URI's own scheme and authority.
    pub fn client_layer(&self, listener: &str) -> Result<FilterLayer, InProcessError> {
        self.layer(listener, Side::Client)
    }

    fn layer(&self, listener: &str, side: Side) -> Result<FilterLayer, InProcessError> {
        let index = self.listener_index(listener)?;
        Ok(FilterLayer::new(self.inner.inbox.clone(), index, side))
    }

    fn listener_index(&self, listener: &str) -> Result<usize, InProcessError> {
        if self.inner.proxy.lock().map_or(true, |proxy| proxy.is_none()) {
            return Err(InProcessError::ShutDown);
        }
        self.inner.inbox.listener_index(listener).ok_or_else(|| InProcessError::NoListener(listener.to_owned()))
    }

    /// Serves `service` on `socket` behind listener `listener`'s filters, from the filter
    /// workers themselves, until `shutdown` resolves (then stops accepting and lets open
    /// connections finish, as the sidecar drains) or the filters shut down.
    ///
    /// Every worker accepts connections from `socket` (made non-blocking) and serves them as a
    /// sidecar listener's — the listener's codec, limits, connection cap and watchdog; the client's
    /// and the socket's addresses as `source.*`/`destination.*` — except that a route to a
    /// cluster calls `service` on the worker's thread, inside the calling runtime's context
    /// (what it spawns, and the I/O it opens, are the application's), with the client's address
    /// as axum's `ConnectInfo<SocketAddr>`. Nothing crosses a thread on the way, unlike
    /// [`Self::server_layer`] under the application's own server. The listener's own address in
    /// the bootstrap is not bound.
    pub async fn serve<S, ResBody>(
        &self,
        listener: &str,
        socket: std::net::TcpListener,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), InProcessError>
    where
        S: Service<Request<FilteredBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let index = self.listener_index(listener)?;
        let runtime = tokio::runtime::Handle::try_current().ok();
        let application: ApplicationFactory = Arc::new(move |peer| {
            let call = application_call(service.clone(), runtime.clone());
            let application = Application::new(call, None);
            match peer {
                Some(peer) => {
                    let mut extensions = http::Extensions::new();
                    extensions.insert(axum::extract::ConnectInfo(peer));
                    application.keeping(extensions)
                }
                None => application,
            }
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let serving =
            self.inner.inbox.serve_in_place(index, &socket, application, stopped).map_err(InProcessError::Serve)?;
        // The workers hold their own handles on the socket: it closes when the last one stops.
        drop(socket);
        let finished = serving.finished();
        tokio::pin!(finished);
        tokio::select! {
            () = shutdown => {
                let _ = stop.send(true);
                finished.await;
            }
            () = &mut finished => {}
        }
        Ok(())
    }

    /// The admin API as a `tower::Service`, for an application to route to (behind its own
    /// authentication, or on a loopback-only listener): the same endpoints, checks and bearer
    /// token as the admin listener's.
    pub fn admin_service(&self) -> AdminService {
        AdminService::new(self.inner.admin.clone())
    }

    /// Where the bootstrap's `admin` address serves the admin API, if it has one.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.inner.admin_address
    }

    /// Stops taking requests, lets open streams finish (up to the drain timeout), lets the
    /// filters flush their spans, and waits for the workers. Blocks: call it after the server
    /// stopped, outside the runtime (or in `spawn_blocking`). Layers made before answer `503`
    /// from then on. Later calls do nothing.
    pub fn shutdown(&self) {
        let proxy = self.inner.proxy.lock().ok().and_then(|mut proxy| proxy.take());
        if let Some(proxy) = proxy {
            proxy.shutdown();
        }
    }
}
