//! Serving a service's router: until SIGINT/SIGTERM in a binary, or on its own thread in a test
//! (each service keeps its own runtime, as separate processes would).

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::Router;
use tokio::sync::oneshot;

use crate::Telemetry;
use crate::in_process_tracing::InProcessTracing;
use crate::service_error::{ConfigError, ServiceError};
use crate::telemetry::{TelemetryConfig, TracingMode, init_logging};

/// The whole life of a service binary: logging, telemetry from the `OTEL_*` environment (service
/// name `name` unless `OTEL_SERVICE_NAME` says otherwise), the router from `build`, serving on
/// `listen` until SIGINT/SIGTERM, and the last spans flushed.
///
/// `GALLERY_TRACING=in-process` runs the Wasm filters of the Envoy bootstrap named by
/// `GALLERY_FILTERS_CONFIG` inside the service ([`crate::in_process_tracing`]).
pub async fn run_binary<F, Fut>(name: &str, listen: SocketAddr, build: F) -> ExitCode
where
    F: FnOnce(Arc<Telemetry>) -> Fut,
    Fut: Future<Output = Result<Router, ServiceError>>,
{
    init_logging();
    let mut config = TelemetryConfig::from_env(name);
    let in_process = match in_process_from_env() {
        Ok(in_process) => in_process,
        Err(e) => {
            eprintln!("error: {}", crate::service_error::chain(&e));
            return ExitCode::FAILURE;
        }
    };
    config.in_process = in_process.clone();
    let telemetry = Arc::new(Telemetry::start(&config));
    let served = async {
        let router = build(telemetry.clone()).await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ServiceError::Bind { address: listen, source })?;
        tracing::info!("{name} serving on http://{listen}");
        serve_until_signal(listener, with_filters(router, &telemetry, listen)).await.map_err(ServiceError::Serve)
    }
    .await;
    if let Some(in_process) = in_process {
        // The filters flush their last spans once the server has stopped sending them requests.
        let filters = in_process.filters().clone();
        let _ = tokio::task::spawn_blocking(move || filters.shutdown()).await;
    }
    telemetry.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::service_error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The in-process filters `GALLERY_TRACING=in-process` asks for.
fn in_process_from_env() -> Result<Option<InProcessTracing>, ServiceError> {
    if TracingMode::from_env()? != TracingMode::InProcess {
        return Ok(None);
    }
    let config = std::env::var_os("GALLERY_FILTERS_CONFIG").ok_or(ConfigError::NoFiltersConfig)?;
    InProcessTracing::from_file(std::path::Path::new(&config)).map(Some)
}

/// `router` behind the in-process filters' inbound layer, when the service runs them.
fn with_filters(router: Router, telemetry: &Telemetry, listen: SocketAddr) -> Router {
    match telemetry.in_process() {
        Some(in_process) => router.layer(in_process.server_layer(listen)),
        None => router,
    }
}

/// Serves `router` on `listener` until SIGINT or SIGTERM, then finishes open requests. The
/// client's address reaches the handlers (and in-process filters) as `ConnectInfo`.
pub async fn serve_until_signal(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// A service running on its own thread and runtime; it stops when dropped.
pub struct RunningService {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its telemetry (flush it before reading exported spans).
    pub telemetry: Arc<Telemetry>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningService {
    /// Starts `telemetry`, binds `listen`, builds the router with `build` (on the service's
    /// runtime: it may connect to a database), and serves. Returns once serving, or the error
    /// that prevented it.
    pub fn start<F, Fut>(
        name: &str,
        listen: SocketAddr,
        telemetry: &TelemetryConfig,
        build: F,
    ) -> Result<Self, ServiceError>
    where
        F: FnOnce(Arc<Telemetry>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Router, ServiceError>>,
    {
        Self::start_named(name, listen, telemetry, build)
            .map_err(|source| ServiceError::Service { name: name.to_owned(), source: Box::new(source) })
    }

    fn start_named<F, Fut>(
        name: &str,
        listen: SocketAddr,
        telemetry: &TelemetryConfig,
        build: F,
    ) -> Result<Self, ServiceError>
    where
        F: FnOnce(Arc<Telemetry>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Router, ServiceError>>,
    {
        let telemetry = Arc::new(Telemetry::start(telemetry));
        let for_build = telemetry.clone();
        let for_serve = telemetry.clone();
        let listener =
            std::net::TcpListener::bind(listen).map_err(|source| ServiceError::Bind { address: listen, source })?;
        listener.set_nonblocking(true).map_err(ServiceError::Socket)?;
        let addr = listener.local_addr().map_err(ServiceError::Socket)?;
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServiceError::Runtime(e)));
                        return;
                    }
                };
                let in_process_filters = for_serve.in_process().map(|t| t.filters().clone());
                runtime.block_on(async move {
                    let router = match build(for_build).await {
                        Ok(router) => router,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = ready_tx.send(Err(ServiceError::Socket(e)));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let router = with_filters(router, &for_serve, addr);
                    let _ = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
                // The filters flush their last spans once the server has stopped sending them
                // requests (outside the runtime: shutting them down blocks).
                if let Some(filters) = in_process_filters {
                    filters.shutdown();
                }
            })
            .map_err(ServiceError::Runtime)?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Self { addr, telemetry, stop: Some(stop), thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ServiceError::Exited),
        }
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.shutdown();
    }
}
