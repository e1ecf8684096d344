//! Why the proxy does not start, or a configuration does not check: every error with its
//! source kept, so a caller (the CLI, an embedding service) can tell an OS failure from a module
//! that does not load from a plugin that refused to start.

use std::net::SocketAddr;

use thiserror::Error;
use wasmtrace_runtime::{LoadError, StartError};

use crate::admin;
use crate::module_file::ModuleFileError;

/// Why the proxy could not start (or a configuration does not check).
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The runtime could not be created.
    #[error("wasm runtime: {0}")]
    Runtime(#[source] LoadError),
    /// A module could not be read, compiled or validated.
    #[error("{plugin}: {source}")]
    Module {
        /// Which filter.
        plugin: String,
        /// Why.
        #[source]
        source: ModuleError,
    },
    /// A plugin did not start or configure (`wasmtrace check`).
    #[error("{scope}: {source}")]
    PluginStart {
        /// Where it is configured (a listener, or the Wasm services).
        scope: String,
        /// Why.
        #[source]
        source: StartError,
    },
    /// A socket could not be bound.
    #[error("cannot listen on {address} ({name}): {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        address: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// A worker (or the control thread) could not start.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The admin token could not be read.
    #[error(transparent)]
    AdminToken(#[from] admin::guard::AdminTokenError),
    /// The admin API would be reachable off loopback with nothing guarding its changes.
    #[error(
        "refusing to serve the admin API on {0} without a bearer token: pass --admin-token-file FILE \
         (or bind it to loopback)"
    )]
    AdminWithoutToken(SocketAddr),
}

/// Why a plugin's module file did not become a module.
#[derive(Debug, Error)]
pub enum ModuleError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] ModuleFileError),
    /// Its bytes are not a module the runtime loads.
    #[error("{path} does not load: {source}")]
    Load {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: LoadError,
    },
}

/// Why a worker thread (or the control thread) did not start.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// Its thread could not be spawned.
    #[error("cannot start a thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// Its tokio runtime could not be built.
    #[error("worker {index}: cannot start its runtime: {source}")]
    Runtime {
        /// The worker.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A listener socket could not be shared with it.
    #[error("worker {index}: listener socket: {source}")]
    Socket {
        /// The worker.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A plugin did not start on it.
    #[error("worker {index}: {source}")]
    Plugin {
        /// The worker.
        index: usize,
        /// Why.
        #[source]
        source: StageError,
    },
    /// The control thread's tokio runtime could not be built.
    #[error("control thread: cannot start its runtime: {0}")]
    ControlRuntime(#[source] std::io::Error),
    /// It exited before saying it was ready.
    #[error("a worker exited during start-up")]
    Exited,
    /// The control thread exited before saying it was ready.
    #[error("the control thread exited during start-up")]
    ControlExited,
    /// The file watcher could not start.
    #[error("cannot watch files: {0}")]
    Watch(#[source] notify::Error),
}

/// Why a generation of a plugin did not start on a worker.
#[derive(Debug, Error)]
pub enum StageError {
    /// Its VM did not start or configure.
    #[error("listener `{listener}`: {source}")]
    Start {
        /// The plugin's listener (or the Wasm services' scope).
        listener: String,
        /// Why.
        #[source]
        source: StartError,
    },
    /// The worker is shutting down and starts nothing new.
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// The worker stopped (or did not answer in time) while starting it.
    #[error("worker {index} {what}")]
    Worker {
        /// The worker.
        index: usize,
        /// What happened (a fixed text).
        what: &'static str,
    },
}
