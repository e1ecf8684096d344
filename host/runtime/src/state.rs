//! The data every host function reaches through its `Caller`: the VM's context table, the
//! context a call acts on, and handles to the process-wide services.
//!
//! One `VmState` lives in each wasmtime `Store`; a store belongs to one worker thread, so nothing
//! here is locked. WASI (for component filters) requires the store data to be `Send`; the
//! worker-bound parts (`Rc`s of the worker's streams and callout dispatcher) are kept in
//! [`SendWrapper`]s, which panic on use from any other thread rather than race.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use send_wrapper::SendWrapper;
use wasmtime::component::ResourceTable;
use wasmtime::{Memory, ResourceLimiter, TypedFunc};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Most a component's stdout and stderr keep per VM; later writes fail (Rust's panic message
/// printing ignores that).
pub(crate) const GUEST_OUTPUT_LIMIT: usize = 64 << 10;

use crate::callout::{CalloutDispatcher, CalloutFailure, CalloutResponse};
use crate::exchange::HttpExchange;
use crate::grpc_callout::{GrpcBudget, GrpcCallControl, GrpcEvent};
use crate::metrics::Metric;
use crate::plugin::PluginConfig;
use crate::services::HostServices;
use crate::shared_queue::QueueInbox;
use crate::stream::StreamSignals;
use crate::vm::PluginVm;

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

/// A gRPC call or stream the guest holds (see [`crate::GrpcCallControl`]).
pub(crate) struct GrpcCall {
    /// `None` once the server closed the stream: the entry stays, as in Envoy, until the guest
    /// closes or cancels it too (the SDK unwraps those calls, so they must find it).
    pub control: Option<Box<dyn GrpcCallControl>>,
    /// A stream (`proxy_grpc_stream`), not a unary call.
    pub stream: bool,
    /// The guest half-closed it: it sends nothing more.
    pub local_closed: bool,
    /// The context that made the call: its end cancels the call, as Envoy's context teardown
    /// does.
    pub owner: u32,
}

impl GrpcCall {
    pub(crate) fn new(control: Box<dyn GrpcCallControl>, stream: bool, owner: u32) -> Self {
        Self { control: Some(control), stream, local_closed: false, owner }
    }

    /// Still open at the server.
    pub(crate) fn is_open(&self) -> bool {
        self.control.is_some()
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

/// The store data of one VM.
pub struct VmState {
    pub(crate) plugin: Arc<PluginConfig>,
    pub(crate) services: Arc<HostServices>,
    pub(crate) memory_cap: MemoryCap,
    pub(crate) memory: Option<Memory>,
    /// Shared, because a host function calls it with the store it is borrowed from: cloning
    /// the typed function itself clones its type's registration (several atomic counts) on
    /// every buffer handed to the guest.
    pub(crate) allocator: Option<Arc<TypedFunc<u32, u32>>>,
    pub(crate) root_context_id: u32,
    pub(crate) streams: SendWrapper<HashMap<u32, StreamContext, BuildHasherDefault<ContextIdHasher>>>,
    /// The context of the callback in progress.
    pub(crate) active_context: u32,
    /// Set by `proxy_set_effective_context` for the rest of the callback.
    pub(crate) effective_context: Option<u32>,
    /// The callout response being delivered, during `proxy_on_http_call_response`.
    pub(crate) callout_response: Option<Result<CalloutResponse, CalloutFailure>>,
    pub(crate) callout_tokens: u32,
    /// gRPC calls and streams the guest holds, by token.
    pub(crate) grpc_calls: SendWrapper<HashMap<u32, GrpcCall>>,
    /// Streams the server closed and the guest has not, oldest first: kept for the guest's
    /// close, up to a bound (see [`crate::abi::grpc_call`]).
    pub(crate) grpc_closed: std::collections::VecDeque<u32>,
    /// Bytes this VM's gRPC calls hold on the host (send backlogs, partly received messages).
    pub(crate) grpc_budget: GrpcBudget,
    /// The gRPC event being delivered, during a `proxy_on_grpc_*` callback.
    pub(crate) grpc_event: Option<GrpcEvent>,
    pub(crate) dispatcher: SendWrapper<Rc<dyn CalloutDispatcher>>,
    pub(crate) self_ref: SendWrapper<Weak<PluginVm>>,
    pub(crate) tick: TickTimer,
    pub(crate) inbox: Arc<QueueInbox>,
    pub(crate) metric_cache: HashMap<u32, Arc<Metric>>,
    /// Properties set on the root context (no stream to hold them).
    pub(crate) root_filter_state: HashMap<String, Vec<u8>>,
    /// The root context's `proxy_on_done` returned false and `proxy_done` has not come yet.
    pub(crate) done_pending: bool,
    /// While the VM starts: what the guest logs, so a refused start can say why (see
    /// [`StartupLog`]).
    pub(crate) startup_log: std::sync::Mutex<Option<StartupLog>>,
    /// A component filter's callouts in flight, and whether it still holds their handle (a
    /// dropped handle means the answer is not delivered).
    pub(crate) component_callouts: HashMap<u32, bool>,
    /// WASI for component filters: no arguments, environment, files or network; real clocks and
    /// randomness; stdout and stderr into [`guest_output`](Self::guest_output).
    pub(crate) wasi: WasiCtx,
    /// What a component wrote to stdout and stderr (its panic message, mostly), up to
    /// [`GUEST_OUTPUT_LIMIT`] bytes per VM: attached to the report of a failing callback.
    pub(crate) guest_output: MemoryOutputPipe,
    /// How much of `guest_output` has been reported.
    pub(crate) guest_output_seen: usize,
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
        let guest_output = MemoryOutputPipe::new(GUEST_OUTPUT_LIMIT);
        Self {
            plugin,
            services,
            memory_cap: MemoryCap { max_bytes, hit: false },
            memory: None,
            allocator: None,
            root_context_id: 0,
            streams: SendWrapper::new(HashMap::default()),
            active_context: 0,
            effective_context: None,
            callout_response: None,
            callout_tokens: 0,
            grpc_calls: SendWrapper::new(HashMap::new()),
            grpc_closed: std::collections::VecDeque::new(),
            grpc_budget: GrpcBudget::new(GrpcBudget::PER_VM),
            grpc_event: None,
            dispatcher: SendWrapper::new(dispatcher),
            self_ref: SendWrapper::new(Weak::new()),
            tick: TickTimer::default(),
            inbox: Arc::new(QueueInbox::default()),
            metric_cache: HashMap::new(),
            root_filter_state: HashMap::new(),
            done_pending: false,
            startup_log: std::sync::Mutex::new(None),
            component_callouts: HashMap::new(),
            wasi: WasiCtx::builder().stdout(guest_output.clone()).stderr(guest_output.clone()).build(),
            guest_output,
            guest_output_seen: 0,
            table: ResourceTable::new(),
        }
    }

    /// The context host calls act on: the effective context if one was set, else the context
    /// whose callback is running.
    pub(crate) fn acting_context(&self) -> u32 {
        self.effective_context.unwrap_or(self.active_context)
    }

    /// What the guest wrote since it was last asked, if anything (lossy UTF-8, trimmed).
    pub(crate) fn take_guest_output(&mut self) -> Option<String> {
        let written = self.guest_output.contents();
        let new = written.get(self.guest_output_seen..).filter(|b| !b.is_empty())?;
        let text = String::from_utf8_lossy(new).trim().to_owned();
        self.guest_output_seen = written.len();
        (!text.is_empty()).then_some(text)
    }

    /// The stream context `id`, if it is live.
    pub(crate) fn stream(&self, id: u32) -> Option<&StreamContext> {
        self.streams.get(&id)
    }

    /// The stream the acting context belongs to, if it is a stream context.
    pub(crate) fn acting_stream(&self) -> Option<&StreamContext> {
        self.streams.get(&self.acting_context())
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
