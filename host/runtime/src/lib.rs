//! The wasmtrace host runtime: proxy-wasm ABI v0.2.1 on wasmtime.
//!
//! How the pieces fit:
//!
//! - [`Runtime`] is process-wide: the wasmtime engine (epoch interruption for deadlines), the
//!   linker with every host function ([`abi`]), a cache of compiled [`PluginModule`]s keyed by
//!   sha256, and the [`HostServices`] all VMs share (shared data, queues, metrics, node).
//! - [`PluginInstance`] is one plugin on one worker thread: it owns the current [`PluginVm`]
//!   (store + instance + root context) and re-creates it after a failure.
//! - [`HttpStream`] is one plugin's context on one HTTP stream. The data plane keeps the stream's
//!   [`HttpExchange`] (headers, body in flight, trailers, connection facts, filter state), shares it
//!   with every filter of the chain, and calls the phase methods, which return an [`Action`].
//! - Callouts leave the VM through a [`CalloutDispatcher`] the data plane implements, and come back
//!   through [`CalloutCompletion::complete`].
//!
//! Guests are untrusted: every pointer is bounds-checked ([`abi`]'s memory module), memory is
//! capped, every callback has a deadline, and a failure poisons only that VM.

// Denied, not forbidden: the one exception is the module cache's `deserialize` call, fenced
// and justified where it is (`module_cache.rs`).
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod abi;
mod callout;
pub mod component;
mod error;
mod exchange;
pub mod filter_state;
#[doc(hidden)]
pub mod fuzzing;
mod grpc_callout;
pub mod header_map;
mod instance;
mod ledger;
pub mod metrics;
mod module;
mod module_cache;
mod plugin;
pub mod properties;
mod randomness;
mod runtime;
mod services;
pub mod shared_data;
pub mod shared_queue;
mod state;
mod stream;
mod vm;

pub use abi::types::{LogLevel, MetricType};
pub use callout::{
    CalloutCompletion, CalloutDispatcher, CalloutFailure, CalloutRequest, CalloutResponse, DispatchError, NoClusters,
};
pub use error::{FailureKind, GuestFailure, LoadError, StartError};
pub use exchange::{HttpExchange, StreamInfo};
pub use grpc_callout::{
    GrpcBudget, GrpcCallControl, GrpcCallKind, GrpcCallRequest, GrpcEvent, GrpcEvents, GrpcSendError,
    status as grpc_status,
};
pub use header_map::HeaderMap;
pub use instance::PluginInstance;
pub use module::{AbiVersion, FilterForm, ModuleSource, PluginModule};
pub use module_cache::{CacheLimits, default_cache_dir as default_module_cache_dir};
pub use plugin::{FailurePolicy, PluginConfig, Provenance, VmLimits};
pub use runtime::{EPOCH_TICK, ModuleLoadStats, Profiler, Runtime, RuntimeOptions, UnknownProfiler, hex_sha256};
pub use services::{HostServices, NodeInfo, PluginFailureStats};
pub use state::VmState;
pub use stream::{Action, Direction, HttpStream, LocalResponse};
pub use vm::{Callback, Deadline, PluginVm, ROOT_CONTEXT_ID};
