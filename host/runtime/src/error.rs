//! The runtime's errors: a module refused at load, a VM that failed to start, and a guest that
//! failed during a callback.

use thiserror::Error;

use crate::vm::Callback;

/// Why a module was refused before any of its code ran.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Not valid WebAssembly, or wasmtime could not compile it.
    #[error("module does not compile: {0}")]
    Compile(String),
    /// The module imports something the host does not provide.
    #[error(
        "module imports {kind} `{module}.{name}`, which the wasmtrace host does not provide \
         (it provides the proxy-wasm ABI v0.2.1 under `env` and Envoy's WASI preview1 subset)"
    )]
    UnknownImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
        /// "function", "memory", "table", "global", ...
        kind: &'static str,
    },
    /// A required export is absent.
    #[error("module is missing the export `{name}`: {why}")]
    MissingExport {
        /// Export name.
        name: &'static str,
        /// What it is for.
        why: &'static str,
    },
    /// An export exists with the wrong type.
    #[error("export `{name}` has type {found}, expected {expected}")]
    BadExportType {
        /// Export name.
        name: String,
        /// Expected signature.
        expected: String,
        /// Actual signature.
        found: String,
    },
    /// The module declares an ABI version the host does not speak.
    #[error("module targets proxy-wasm ABI {0}, the host speaks v0.2.0 and v0.2.1")]
    UnsupportedAbi(String),
    /// Linking failed (an import with the right name but the wrong signature).
    #[error("module cannot be linked: {0}")]
    Link(String),
}

/// What kind of failure stopped a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, ...).
    Trap,
    /// The callback ran past its deadline and was interrupted.
    DeadlineExceeded,
    /// The guest tried to grow its memory past the VM's cap.
    MemoryLimit,
    /// The guest handed the host an invalid pointer or malformed data.
    BadGuestInput,
    /// The guest returned `false` from a lifecycle callback, refusing to start.
    Refused,
    /// The VM is unusable because of an earlier failure.
    VmFailed,
}

/// A guest failure: which plugin, which callback, what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("wasm plugin `{plugin}` failed in {callback}: {detail}")]
pub struct GuestFailure {
    /// Plugin name.
    pub plugin: String,
    /// The callback (or start-up step) that failed.
    pub callback: Callback,
    /// The failure class.
    pub kind: FailureKind,
    /// Human-readable details (the trap message and guest backtrace where available).
    pub detail: String,
}

/// Why a VM could not be started.
#[derive(Debug, Error)]
pub enum StartError {
    /// Instantiation failed (e.g. a data segment does not fit the memory cap).
    #[error("wasm plugin `{plugin}` could not be instantiated: {detail}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// Details.
        detail: String,
    },
    /// A start-up step failed or refused.
    #[error(transparent)]
    Guest(#[from] GuestFailure),
}

/// A guest-caused error raised inside a host function; it becomes a trap whose cause is kept so
/// the failure can be classified as [`FailureKind::BadGuestInput`].
#[derive(Debug, Error)]
#[error("{call}: {reason}")]
pub struct GuestFault {
    /// The host function.
    pub call: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl GuestFault {
    /// A fault as a wasmtime error, ready to be returned from a host function.
    pub fn trap(call: &'static str, reason: impl Into<String>) -> wasmtime::Error {
        wasmtime::Error::new(GuestFault { call, reason: reason.into() })
    }
}
