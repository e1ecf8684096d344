//! Why the proxy does not start, or a configuration does not check: every error with its
//! source kept, so a caller (the CLI, an embedding service) can tell an OS failure from a module
//! that does not load from a plugin that refused to start.
//!
//! A message says what failed; why is its source, never repeated in the message. Where an error
//! reaches a person as one line (a log, an admin answer, a service's exit), [`chain`] writes the
//! message and every cause.

use std::net::SocketAddr;

use thiserror::Error;
use wasmtrace_runtime::{LoadError, StartError};

use crate::admin;
use crate::module_file::ModuleFileError;

/// `error` and its causes, outermost first, joined by `: ` (what `anyhow`'s `{:#}` prints).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why the proxy could not start (or a configuration does not check).
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The runtime could not be created.
    #[error("wasm runtime")]
    Runtime(#[source] LoadError),
    /// A module could not be read, compiled or validated.
    #[error("{plugin}")]
    Module {
        /// Which filter.
        plugin: String,
        /// Why.
        #[source]
        source: ModuleError,
    },
    /// A plugin did not start or configure (`wasmtrace check`).
    #[error("{scope}")]
    PluginStart {
        /// Where it is configured (a listener, or the Wasm services).
        scope: String,
        /// Why.
        #[source]
        source: StartError,
    },
    /// A socket could not be bound.
    #[error("cannot listen on {address} ({name})")]
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
    #[error("{path} does not load")]
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
    #[error("cannot start a thread")]
    Spawn(#[source] std::io::Error),
    /// Its tokio runtime could not be built.
    #[error("worker {index}: cannot start its runtime")]
    Runtime {
        /// The worker.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A listener socket could not be shared with it.
    #[error("worker {index}: listener socket")]
    Socket {
        /// The worker.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A plugin did not start on it.
    #[error("worker {index}")]
    Plugin {
        /// The worker.
        index: usize,
        /// Why.
        #[source]
        source: StageError,
    },
    /// The control thread's tokio runtime could not be built.
    #[error("control thread: cannot start its runtime")]
    ControlRuntime(#[source] std::io::Error),
    /// It exited before saying it was ready.
    #[error("a worker exited during start-up")]
    Exited,
    /// The control thread exited before saying it was ready.
    #[error("the control thread exited during start-up")]
    ControlExited,
    /// The file watcher could not start.
    #[error("cannot watch files")]
    Watch(#[source] notify::Error),
}

/// Why a generation of a plugin did not start on a worker.
#[derive(Debug, Error)]
pub enum StageError {
    /// Its VM did not start or configure.
    #[error("listener `{listener}`")]
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
    /// The worker did not start it within `wait` (the start deadline and a margin).
    #[error("worker {index} did not start the plugin within {wait:?}")]
    Timeout {
        /// The worker.
        index: usize,
        /// How long it was waited for.
        wait: std::time::Duration,
    },
    /// The worker stopped while starting it.
    #[error("worker {index} {what}")]
    Worker {
        /// The worker.
        index: usize,
        /// What happened (a fixed text).
        what: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_says_what_failed_and_the_chain_adds_each_cause_once() {
        let address: SocketAddr = "127.0.0.1:1".parse().expect("an address");
        let source = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let error = ProxyError::Bind { name: "ingress".into(), address, source };
        assert_eq!(error.to_string(), "cannot listen on 127.0.0.1:1 (ingress)");
        assert_eq!(chain(&error), "cannot listen on 127.0.0.1:1 (ingress): address in use");
    }
}
