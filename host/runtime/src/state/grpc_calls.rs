//! A VM's gRPC calls as the guest holds them: the narrow part of the store data that the gRPC
//! host functions and the delivery of gRPC events work on.

use std::collections::{HashMap, VecDeque};

use super::WorkerBound;
use crate::grpc_callout::{GrpcBudget, GrpcCallControl, GrpcEvent};

/// Most streams the server closed that a VM keeps for the guest to close too; past it the
/// oldest are let go (a guest that never closes them then gets `NOT_FOUND` for those).
pub(crate) const MAX_CLOSED_STREAMS: usize = 1024;

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

/// What became of a call after one of its events was delivered.
pub(crate) enum Settled {
    /// It takes more events.
    Open,
    /// It is over (or the guest cancelled or closed it in the callback): nothing more comes.
    /// What it held, to drop once the store is released (dropping a control may abort the task
    /// that is delivering).
    Over(Option<Box<dyn GrpcCallControl>>, Vec<GrpcCall>),
}

/// The gRPC calls and streams of one VM.
pub(crate) struct GrpcCalls {
    /// By token.
    pub calls: WorkerBound<HashMap<u32, GrpcCall>>,
    /// Streams the server closed and the guest has not, oldest first: kept for the guest's
    /// close, up to [`MAX_CLOSED_STREAMS`].
    closed: VecDeque<u32>,
    /// Bytes this VM's calls hold on the host (send backlogs, partly received messages).
    pub budget: GrpcBudget,
    /// The event being delivered, during a `proxy_on_grpc_*` callback.
    pub event: Option<GrpcEvent>,
}

impl GrpcCalls {
    pub(crate) fn new() -> Self {
        Self {
            calls: WorkerBound::new(HashMap::new()),
            closed: VecDeque::new(),
            budget: GrpcBudget::new(GrpcBudget::PER_VM),
            event: None,
        }
    }

    /// Calls still open at the server.
    pub(crate) fn open_count(&self) -> usize {
        self.calls.values().filter(|call| call.is_open()).count()
    }

    /// Whether `token` names a call the guest holds.
    pub(crate) fn holds(&self, token: u32) -> bool {
        self.calls.contains_key(&token)
    }

    /// Whether `token` is a call that still takes events.
    pub(crate) fn is_open(&self, token: u32) -> bool {
        self.calls.get(&token).is_some_and(GrpcCall::is_open)
    }

    /// After `delivered` (which `closes` the call, or not) reached the guest, as Envoy does: a
    /// unary call's answer or close ends it; a stream's close ends it if the guest half-closed,
    /// else leaves it for the guest to close (up to [`MAX_CLOSED_STREAMS`] of those).
    pub(crate) fn settle(&mut self, token: u32, closes: bool, delivered: Option<&GrpcEvent>) -> Settled {
        let Some(call) = self.calls.get_mut(&token) else {
            // Cancelled or closed by the guest in the callback.
            return Settled::Over(None, Vec::new());
        };
        let unary_answered = !call.stream && matches!(delivered, Some(GrpcEvent::Message(_)));
        if !(closes || unary_answered) {
            return Settled::Open;
        }
        if call.stream && !call.local_closed {
            let control = call.control.take();
            self.closed.push_back(token);
            let mut evicted = Vec::new();
            while self.closed.len() > MAX_CLOSED_STREAMS {
                if let Some(oldest) = self.closed.pop_front()
                    && self.calls.get(&oldest).is_some_and(|c| !c.is_open())
                {
                    evicted.extend(self.calls.remove(&oldest));
                }
            }
            return Settled::Over(control, evicted);
        }
        Settled::Over(self.calls.remove(&token).and_then(|call| call.control), Vec::new())
    }

    /// Takes every call `owner` made (`None`: every call), for the caller to drop (each is then
    /// reset, as Envoy's context teardown cancels them).
    pub(crate) fn take_made_by(&mut self, owner: Option<u32>) -> Vec<GrpcCall> {
        let tokens: Vec<u32> =
            self.calls.iter().filter(|(_, c)| owner.is_none_or(|o| c.owner == o)).map(|(t, _)| *t).collect();
        tokens.into_iter().filter_map(|t| self.calls.remove(&t)).collect()
    }
}
