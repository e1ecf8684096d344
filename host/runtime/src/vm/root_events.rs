//! Events the root context hears off any stream: its timer, shared-queue notifications, the
//! answers to its HTTP callouts and the events of its gRPC calls.

use std::sync::Arc;
use std::time::Instant;

use crate::callout::{CalloutFailure, CalloutResponse};
use crate::error::GuestFailure;
use crate::grpc_callout::GrpcEvent;
use crate::shared_queue::QueueInbox;
use crate::state::{GrpcCall, Settled};

use super::guest::{Callbacks, GrpcCallbacks};
use super::{Callback, Guest, PluginVm, ROOT_CONTEXT_ID};

impl PluginVm {
    /// When the root context's timer fires next, if it is armed.
    pub fn next_tick(&self) -> Option<Instant> {
        self.inner.try_borrow().ok()?.store.data().tick.next
    }

    /// Runs `proxy_on_tick` if the timer is due at `now`, re-arming it first (Envoy re-arms after
    /// each tick). Returns whether a tick ran.
    pub fn tick_if_due(&self, now: Instant) -> Result<bool, GuestFailure> {
        {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                return Ok(false);
            };
            let tick = &mut inner.store.data_mut().tick;
            match (tick.next, tick.period) {
                (Some(next), Some(period)) if next <= now => tick.next = Some(now + period),
                _ => return Ok(false),
            }
        }
        self.call(Callback::Tick, ROOT_CONTEXT_ID, |store, cb| match cb {
            Guest::Core(Callbacks { tick: Some(f), .. }) => f.call(store, ROOT_CONTEXT_ID),
            Guest::Component(c) => c.tick(store),
            Guest::Core(_) => Ok(()),
        })?;
        Ok(true)
    }

    /// The inbox that receives this VM's queue notifications (register a waker on it).
    pub fn queue_inbox(&self) -> &Arc<QueueInbox> {
        &self.inbox
    }

    /// Runs `proxy_on_queue_ready` for every queue that received items. Returns how many ran.
    pub fn deliver_queue_ready(&self) -> Result<usize, GuestFailure> {
        let ready = self.inbox.drain();
        for &queue_id in &ready {
            self.call(Callback::QueueReady, ROOT_CONTEXT_ID, |store, cb| match cb {
                Guest::Core(Callbacks { queue_ready: Some(f), .. }) => f.call(store, (ROOT_CONTEXT_ID, queue_id)),
                Guest::Component(c) => c.queue_ready(store, queue_id),
                Guest::Core(_) => Ok(()),
            })?;
        }
        Ok(ready.len())
    }

    /// Delivers a callout's outcome to the root context (`proxy_on_http_call_response`). A failure
    /// is delivered as zero headers, zero body and zero trailers, as Envoy does.
    pub(crate) fn deliver_callout(&self, token: u32, outcome: Result<CalloutResponse, CalloutFailure>) {
        let counts = match &outcome {
            Ok(r) => (r.headers.len(), r.body.len(), r.trailers.len()),
            Err(_) => (0, 0, 0),
        };
        let [headers, body, trailers] = [counts.0, counts.1, counts.2].map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        if self.is_component() {
            // Delivered acting for the stream that made the call while it lives (its handle
            // passed along, its filter state reachable), else for the root; not at all if the
            // filter dropped the call's handle.
            let Some(stream) = self.component_callout_target(token) else { return };
            let context = stream.unwrap_or(ROOT_CONTEXT_ID);
            let _ = self.call(Callback::HttpCallResponse, context, |store, cb| match cb {
                Guest::Component(c) => c.callout_response(store, token, stream, &outcome),
                Guest::Core(_) => Ok(()),
            });
            return;
        }
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.store.data_mut().callouts.response = Some(outcome);
        }
        let _ = self.call(Callback::HttpCallResponse, ROOT_CONTEXT_ID, |store, cb| match cb {
            Guest::Core(Callbacks { http_call_response: Some(f), .. }) => {
                f.call(store, (ROOT_CONTEXT_ID, token, headers, body, trailers))
            }
            _ => Ok(()),
        });
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.store.data_mut().callouts.response = None;
        }
    }

    /// Takes a component's callout `token` off its list: `None` if the filter dropped its handle
    /// (the answer is not delivered), else the stream to deliver it for, if that stream made the
    /// call and is still live.
    fn component_callout_target(&self, token: u32) -> Option<Option<u32>> {
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            // Re-entrant: `call` reports it; deliver as to the root.
            return Some(None);
        };
        let state = inner.store.data_mut();
        match state.callouts.component.remove(&token) {
            Some(callout) if !callout.wanted => None,
            Some(callout) => Some(callout.stream.filter(|id| state.stream(*id).is_some())),
            None => Some(None),
        }
    }

    /// Delivers a gRPC event to the root context (the matching `proxy_on_grpc_*`), for a call
    /// the guest still holds, as Envoy does: the call stays the guest's during the callback (it
    /// may close or cancel it there); afterwards a unary call's answer or close ends it, and a
    /// stream's close ends it if the guest half-closed, else leaves it for the guest to close.
    /// Returns whether the call still takes events.
    pub(crate) fn deliver_grpc(&self, token: u32, event: GrpcEvent) -> bool {
        if self.is_failed() {
            return false;
        }
        let (callback, _, _) = GrpcCallbacks::NAMES.for_event(&event);
        let closes = matches!(event, GrpcEvent::Close { .. });
        {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                return false;
            };
            let state = inner.store.data_mut();
            if !state.grpc.is_open(token) {
                return false;
            }
            state.grpc.event = Some(event);
        }
        let _ = self.call(callback, ROOT_CONTEXT_ID, |store, cb| {
            let Guest::Core(callbacks) = cb else { return Ok(()) };
            let Some(event) = store.data().grpc.event.as_ref() else { return Ok(()) };
            match callbacks.grpc.for_event(event) {
                (_, Some(f), argument) => f.call(store, (ROOT_CONTEXT_ID, token, argument)),
                (_, None, _) => Ok(()),
            }
        });
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return false;
        };
        let grpc = &mut inner.store.data_mut().grpc;
        let delivered = grpc.event.take();
        match grpc.settle(token, closes, delivered.as_ref()) {
            Settled::Open => !self.is_failed(),
            Settled::Over(control, evicted) => {
                // Dropped after the store is released: a control may abort the task running this.
                drop(inner);
                drop((control, evicted));
                false
            }
        }
    }

    /// Drops every gRPC call `owner` made (the context ended): each is reset, as Envoy's
    /// context teardown cancels them. `None`: every call (the VM failed).
    pub(super) fn drop_grpc_calls(&self, owner: Option<u32>) {
        let dropped: Vec<GrpcCall> = match self.inner.try_borrow_mut() {
            Ok(mut inner) => inner.store.data_mut().grpc.take_made_by(owner),
            Err(_) => return,
        };
        drop(dropped);
    }
}
