//! The data every host function reaches through its `Caller`: the VM's context table, the
//! context a call acts on, and handles to the process-wide services.
//!
//! One `VmState` lives in each wasmtime `Store`; a store belongs to one worker thread, so nothing
//! here is locked. WASI (for component filters) requires the store data to be `Send`; the
//! worker-bound parts (`Rc`s of the worker's streams and callout dispatcher) are kept in
//! [`WorkerBound`]s, which panic on use from any other thread rather than race.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Memory, ResourceLimiter, TypedFunc};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Most a component's stdout and stderr keep per VM; later writes fail (Rust's panic message
/// printing ignores that).
pub(crate) const GUEST_OUTPUT_LIMIT: usize = 64 << 10;

use crate::callout::{CalloutDispatcher, CalloutFailure, CalloutResponse};
use crate::exchange::HttpExchange;
use crate::filter_state::{FilterState, FilterStateBudget};
use crate::metrics::Metric;
use crate::plugin::PluginConfig;
use crate::services::HostServices;
use crate::shared_queue::QueueInbox;
use crate::stream::StreamSignals;
use crate::vm::PluginVm;

mod grpc_calls;
mod worker_bound;

pub(crate) use grpc_calls::{GrpcCall, GrpcCalls, Settled};
pub(crate) use worker_bound::WorkerBound;

/// The per-stream part of a VM's context table.
pub(crate) struct StreamContext {
    pub exchange: Rc<RefCell<HttpExchange>>,
    pub signals: Rc<RefCell<StreamSignals>>,
    /// A component filter has been told the stream is done (`on-stream-done` runs once).
    pub done_delivered: bool,
}

/// Hashes context ids for the stream table, which every host call of a stream looks into: the
/// ids are the host's own (counted up per VM), so a guest cannot pick colliding ones, and
/// SipHash's protection is not needed.
#[derive(Default)]
pub(crate) struct ContextIdHasher(u64);

impl Hasher for ContextIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        // Fibonacci hashing: consecutive ids spread over the table's buckets.
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The root context's tick timer (one per root context, re-armed after each tick as in Envoy).
#[derive(Default)]
pub(crate) struct TickTimer {
    pub period: Option<Duration>,
    pub next: Option<Instant>,
}

/// Caps linear memory growth and remembers that the cap was hit, so the resulting trap can be
/// reported as a memory-limit failure rather than a generic one.
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit exceeded: the guest asked for {desired} bytes, the cap is {}",
                self.max_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The contexts of a VM: its root, its streams, and which one a host call acts on.
pub(crate) struct Contexts {
    /// The root context's id.
    pub root_id: u32,
    /// The stream contexts, by id.
    pub streams: WorkerBound<HashMap<u32, StreamContext, BuildHasherDefault<ContextIdHasher>>>,
    /// The context of the callback in progress.
    pub active: u32,
    /// Set by `proxy_set_effective_context` for the rest of the callback.
    pub effective: Option<u32>,
}

impl Contexts {
    /// The effective context if one was set, else the context whose callback is running.
    pub(crate) fn acting(&self) -> u32 {
        self.effective.unwrap_or(self.active)
    }

    /// Whether `id` is the root or a live stream (what `proxy_set_effective_context` may pick).
    pub(crate) fn exists(&self, id: u32) -> bool {
        id == self.root_id || self.streams.contains_key(&id)
    }
}

/// A VM's HTTP callouts: the token counter (shared with gRPC calls, as in Envoy), the answer
/// being delivered, and a component's callouts in flight.
#[derive(Default)]
pub(crate) struct Callouts {
    last_token: u32,
    /// The callout response being delivered, during `proxy_on_http_call_response`.
    pub response: Option<Result<CalloutResponse, CalloutFailure>>,
    /// A component filter's callouts in flight, by token.
    pub component: HashMap<u32, ComponentCallout>,
}

/// A component filter's callout in flight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ComponentCallout {
    /// Whether the filter still holds the callout's handle (a dropped handle means the answer is
    /// not delivered).
    pub wanted: bool,
    /// The stream whose callback made the call, if one did: the answer is delivered acting for
    /// it while it lives, so the filter can resume it.
    pub stream: Option<u32>,
}

impl Callouts {
    /// The next callout token (never 0), skipping those `taken` says are still held (after the
    /// counter wraps), as Envoy's token allocation does.
    pub(crate) fn next_token(&mut self, taken: impl Fn(u32) -> bool) -> u32 {
        loop {
            self.last_token = self.last_token.wrapping_add(1).max(1);
            if !taken(self.last_token) {
                return self.last_token;
            }
        }
    }
}

/// What a component wrote to stdout and stderr (its panic message, mostly), up to
/// [`GUEST_OUTPUT_LIMIT`] bytes per VM: attached to the report of a failing callback.
pub(crate) struct GuestOutput {
    pipe: MemoryOutputPipe,
    /// How much of `pipe` has been reported.
    seen: usize,
}

impl GuestOutput {
    fn new() -> Self {
        Self { pipe: MemoryOutputPipe::new(GUEST_OUTPUT_LIMIT), seen: 0 }
    }

    /// What the guest wrote since it was last asked, if anything (lossy UTF-8, trimmed).
    pub(crate) fn take(&mut self) -> Option<String> {
        let written = self.pipe.contents();
        let new = written.get(self.seen..).filter(|b| !b.is_empty())?;
        let text = String::from_utf8_lossy(new).trim().to_owned();
        self.seen = written.len();
        (!text.is_empty()).then_some(text)
    }
}

/// The store data of one VM. Host-function areas reach the parts they work on through narrow
/// views: [`Contexts`], [`Callouts`], [`GrpcCalls`], [`GuestOutput`].
pub struct VmState {
    pub(crate) plugin: Arc<PluginConfig>,
    pub(crate) services: Arc<HostServices>,
    pub(crate) memory_cap: MemoryCap,
    pub(crate) memory: Option<Memory>,
    /// Shared, because a host function calls it with the store it is borrowed from: cloning
    /// the typed function itself clones its type's registration (several atomic counts) on
    /// every buffer handed to the guest.
    pub(crate) allocator: Option<Arc<TypedFunc<u32, u32>>>,
    /// The root, the streams, and the context a host call acts on.
    pub(crate) contexts: Contexts,
    /// HTTP callouts.
    pub(crate) callouts: Callouts,
    /// gRPC calls and streams the guest holds.
    pub(crate) grpc: GrpcCalls,
    pub(crate) dispatcher: WorkerBound<Rc<dyn CalloutDispatcher>>,
    pub(crate) self_ref: WorkerBound<Weak<PluginVm>>,
    pub(crate) tick: TickTimer,
    pub(crate) inbox: Arc<QueueInbox>,
    pub(crate) metric_cache: HashMap<u32, Arc<Metric>>,
    /// Properties set on the root context (no stream to hold them).
    pub(crate) root_filter_state: FilterState,
    /// What this VM's plugin holds in filter state, over the root contexts and every stream its
    /// VMs serve.
    pub(crate) filter_state_budget: Arc<FilterStateBudget>,
    /// The root context's `proxy_on_done` returned false and `proxy_done` has not come yet.
    pub(crate) done_pending: bool,
    /// While the VM starts: what the guest logs, so a refused start can say why (see
    /// [`StartupLog`]).
    pub(crate) startup_log: std::sync::Mutex<Option<StartupLog>>,
    /// WASI for component filters: no arguments, environment, files or network; real clocks and
    /// randomness; stdout and stderr into [`output`](Self::output).
    pub(crate) wasi: WasiCtx,
    /// What a component wrote to stdout and stderr.
    pub(crate) output: GuestOutput,
    /// Component resources (WASI streams) of this VM.
    pub(crate) table: ResourceTable,
}

impl VmState {
    pub(crate) fn new(
        plugin: Arc<PluginConfig>,
        services: Arc<HostServices>,
        dispatcher: Rc<dyn CalloutDispatcher>,
    ) -> Self {
        let max_bytes = plugin.limits.max_memory_bytes;
        let output = GuestOutput::new();
        let filter_state_budget = services.filter_state_budget(&plugin.name);
        Self {
            plugin,
            services,
            memory_cap: MemoryCap { max_bytes, hit: false },
            memory: None,
            allocator: None,
            contexts: Contexts {
                root_id: 0,
                streams: WorkerBound::new(HashMap::default()),
                active: 0,
                effective: None,
            },
            callouts: Callouts::default(),
            grpc: GrpcCalls::new(),
            dispatcher: WorkerBound::new(dispatcher),
            self_ref: WorkerBound::new(Weak::new()),
            tick: TickTimer::default(),
            inbox: Arc::new(QueueInbox::default()),
            metric_cache: HashMap::new(),
            root_filter_state: FilterState::default(),
            filter_state_budget,
            done_pending: false,
            startup_log: std::sync::Mutex::new(None),
            wasi: WasiCtx::builder().stdout(output.pipe.clone()).stderr(output.pipe.clone()).build(),
            output,
            table: ResourceTable::new(),
        }
    }

    /// The context host calls act on: the effective context if one was set, else the context
    /// whose callback is running.
    pub(crate) fn acting_context(&self) -> u32 {
        self.contexts.acting()
    }

    /// The stream context `id`, if it is live.
    pub(crate) fn stream(&self, id: u32) -> Option<&StreamContext> {
        self.contexts.streams.get(&id)
    }

    /// The stream the acting context belongs to, if it is a stream context.
    pub(crate) fn acting_stream(&self) -> Option<&StreamContext> {
        self.contexts.streams.get(&self.acting_context())
    }
}

impl WasiView for VmState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The guest's log lines (info and above, whatever the log level) while its VM starts, bounded:
/// the first [`StartupLog::LINES`] lines of at most [`StartupLog::LINE_BYTES`] bytes each. A
/// start-up that fails or refuses reports them with its error, so a refused swap tells the admin
/// caller why (the caller supplied the module and configuration; the lines are the guest's own
/// words, never host internals).
#[derive(Debug, Default)]
pub(crate) struct StartupLog {
    lines: Vec<String>,
    dropped: usize,
}

impl StartupLog {
    /// Lines kept.
    pub(crate) const LINES: usize = 16;
    /// Bytes kept of one line.
    pub(crate) const LINE_BYTES: usize = 512;

    pub(crate) fn push(&mut self, message: &str) {
        if self.lines.len() >= Self::LINES {
            self.dropped += 1;
            return;
        }
        let mut end = message.len().min(Self::LINE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let mut line: String = message[..end].chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        if end < message.len() {
            line.push('…');
        }
        self.lines.push(line);
    }

    /// `; it logged: "…"; "…"` for an error message, or nothing when it logged nothing.
    pub(crate) fn summary(&self) -> String {
        if self.lines.is_empty() {
            return String::new();
        }
        let quoted: Vec<String> = self.lines.iter().map(|line| format!("{line:?}")).collect();
        let more = if self.dropped > 0 { format!(" (and {} more lines)", self.dropped) } else { String::new() };
        format!("; it logged: {}{more}", quoted.join("; "))
    }
}
