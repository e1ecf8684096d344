//! The control thread: one thread beside the workers with its own tokio runtime, serving the
//! admin API (when the bootstrap names an address) and running the file watcher (when asked),
//! so neither takes time from a worker's requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;
use wasmtrace_config::Bootstrap;

use crate::admin::{self, AdminState};
use crate::error::{ProxyError, WorkerError};
use crate::{ProxyOptions, swap};

/// The control thread: the admin API (when configured) and the file watcher (when asked for).
pub(crate) struct Control {
    /// Where the admin API listens, if it does.
    pub(crate) admin: Option<SocketAddr>,
    /// The thread.
    pub(crate) thread: JoinHandle<()>,
}

/// Binds the admin API (refusing an exposed one without a token) and starts the control thread;
/// returns once it serves.
pub(crate) fn start_control(
    bootstrap: &Arc<Bootstrap>,
    options: &ProxyOptions,
    state: Arc<AdminState>,
    stop: watch::Receiver<bool>,
) -> Result<Control, ProxyError> {
    let admin = match bootstrap.admin {
        Some(configured) => {
            let address = if configured.ip().is_loopback() || options.admin_any_address {
                configured
            } else {
                tracing::warn!(%configured, "admin API bound to loopback instead (pass --admin-any-address to expose it)");
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), configured.port())
            };
            if !address.ip().is_loopback() && state.token.is_none() {
                return Err(ProxyError::AdminWithoutToken(address));
            }
            let bind_error = |source| ProxyError::Bind { name: "admin".into(), address, source };
            let socket = std::net::TcpListener::bind(address).map_err(bind_error)?;
            socket.set_nonblocking(true).map_err(bind_error)?;
            let bound = socket.local_addr().map_err(bind_error)?;
            Some((socket, bound))
        }
        None => None,
    };
    let bound = admin.as_ref().map(|(_, bound)| *bound);
    let watch = (options.watch_modules || options.watch_config.is_some())
        .then(|| (options.watch_config.clone(), options.watch_modules, bootstrap.clone()));
    let (started_tx, started) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("wasmtrace-control".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started_tx.send(Err(WorkerError::ControlRuntime(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                if let Some((config, modules, bootstrap)) = watch {
                    let coordinator = state.coordinator.clone();
                    let watching = swap::file_watch::spawn(coordinator, config, modules, bootstrap, stop.clone());
                    if let Err(e) = watching {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                }
                let _ = started_tx.send(Ok(()));
                match admin.map(|(socket, _)| tokio::net::TcpListener::from_std(socket)) {
                    Some(Ok(listener)) => admin::serve(listener, state, stop).await,
                    Some(Err(e)) => tracing::error!("admin API socket: {e}"),
                    None => {
                        let mut stop = stop;
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    }
                }
            });
        })
        .map_err(WorkerError::Spawn)?;
    match started.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ProxyError::Worker(e)),
        Err(_) => return Err(ProxyError::Worker(WorkerError::ControlExited)),
    }
    if let Some(bound) = bound {
        tracing::info!(address = %bound, "admin API");
    }
    Ok(Control { admin: bound, thread })
}
