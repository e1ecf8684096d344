//! Hot swap: replace a plugin's module or configuration while the proxy serves.
//!
//! The sequence (DESIGN.md, "Hot swap"):
//!
//! 1. A trigger — the admin API, `wasmtrace swap`, or a changed file ([`file_watch`]) — hands a
//!    [`SwapRequest`] to the [`SwapCoordinator`], which runs swaps one at a time.
//! 2. The module is compiled off the request path (once per sha256; a configuration-only swap
//!    reuses the compiled module).
//! 3. Every worker starts a VM of the new generation and runs `on_vm_start`/`on_configure`
//!    ([`WorkerCommand::Stage`]). One failure refuses the whole swap: the staged VMs are dropped
//!    and the serving generation never notices.
//! 4. Publication is one atomic store of the generation number in the plugin's
//!    [`PluginSlot`](crate::plugins::PluginSlot); a worker switches when it opens its next
//!    stream (or when nudged). Streams in flight keep the VM they started on.
//! 5. The replaced generation drains on each worker ([`WorkerPlugin`]): once its last stream has
//!    ended, its root context gets `on_done`, may flush (a trace filter exports its buffered
//!    spans through a callout), and is dropped — or the drain timeout ends it.

mod coordinator;
pub mod file_watch;
mod worker_plugin;

pub use coordinator::{ModuleSource, SwapCoordinator, SwapError, SwapOutcome, SwapRequest, Swapped};
pub use worker_plugin::{WorkerCommand, WorkerEnv, WorkerPlugin};
