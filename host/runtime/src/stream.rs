//! The per-plugin view of one HTTP stream, as the data plane drives it.
//!
//! The data plane fills the shared [`HttpExchange`] (headers, the body bytes in flight, trailers)
//! and calls the phase methods of each filter's [`HttpStream`] in order. Each returns an
//! [`Action`]: go on, pause, answer locally, or close. A paused stream resumes when the filter
//! calls `proxy_continue_stream` — typically from a callout response — which the data plane
//! awaits with [`HttpStream::poll_resume`].
//!
//! When the VM fails, the stream gets the plugin's failure policy: fail-open skips the filter for
//! the rest of the stream; fail-closed gives [`Action::FailClosed`], which the data plane answers
//! 503 (`wasm_fail_stream`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::abi::types::action;
use crate::error::GuestFailure;
use crate::exchange::HttpExchange;
use crate::header_map::HeaderMap;
use crate::plugin::FailurePolicy;
use crate::vm::{Callback, PluginVm};

/// A response a filter (or the failure policy) produced instead of the upstream's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: HeaderMap,
    /// Why (Envoy's response code details), e.g. `wasm_fail_stream`.
    pub details: String,
    /// gRPC status to add as `grpc-status`, if any.
    pub grpc_status: Option<u8>,
}

/// What the data plane should do after a filter callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pass the data on to the next filter.
    Continue,
    /// Stop here until the filter resumes the stream. For headers, body data is held too; for a
    /// body, the data plane keeps buffering and calls again with everything so far.
    Pause,
    /// Stop the stream and send this response downstream.
    LocalResponse(LocalResponse),
    /// Reset the stream (`proxy_close_stream`).
    Close,
    /// The filter failed and its policy is fail-closed: the data plane refuses the stream
    /// (Envoy's 503 `wasm_fail_stream`).
    FailClosed(GuestFailure),
}

/// A direction of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Downstream to upstream.
    Request,
    /// Upstream to downstream.
    Response,
}

/// Requests a filter made outside its own callbacks, picked up by the data plane.
#[derive(Default)]
pub(crate) struct StreamSignals {
    pub resume_request: bool,
    pub resume_response: bool,
    pub close: bool,
    pub local_response: Option<LocalResponse>,
    pub vm_failed: bool,
    /// One waker per direction: the request and response halves of a stream can wait on the
    /// same filter at the same time.
    pub request_waker: Option<Waker>,
    pub response_waker: Option<Waker>,
}

impl StreamSignals {
    /// Wakes the tasks waiting for this stream to resume (either direction).
    pub(crate) fn wake(&mut self) {
        for waker in [self.request_waker.take(), self.response_waker.take()].into_iter().flatten() {
            waker.wake();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Callbacks go to the guest.
    Active,
    /// The filter closed the stream: no more stream callbacks, but the access-log point still
    /// reaches it (Envoy calls `on_log` for every stream, closed or not).
    Closed,
    /// The filter failed: nothing more reaches it.
    Bypassed,
}

/// One filter's handle on one HTTP stream. Dropping it ends the stream context
/// (`proxy_on_done`, `proxy_on_delete`).
pub struct HttpStream {
    vm: Option<Rc<PluginVm>>,
    context_id: u32,
    exchange: Rc<RefCell<HttpExchange>>,
    signals: Rc<RefCell<StreamSignals>>,
    policy: FailurePolicy,
    plugin_name: String,
    phase: Cell<Phase>,
    /// A failure that happened before the stream could start (no VM could be created).
    startup_failure: RefCell<Option<GuestFailure>>,
}

impl HttpStream {
    pub(crate) fn start(vm: Rc<PluginVm>, exchange: Rc<RefCell<HttpExchange>>) -> Self {
        let signals = Rc::new(RefCell::new(StreamSignals::default()));
        let policy = vm.plugin().failure_policy;
        let plugin_name = vm.plugin().name.clone();
        let created = vm.create_stream(exchange.clone(), signals.clone());
        let (context_id, startup_failure) = match created {
            Ok(id) => (id, None),
            Err(failure) => (0, Some(failure)),
        };
        Self {
            vm: Some(vm),
            context_id,
            exchange,
            signals,
            policy,
            plugin_name,
            phase: Cell::new(Phase::Active),
            startup_failure: RefCell::new(startup_failure),
        }
    }

    pub(crate) fn without_vm(
        plugin_name: String,
        policy: FailurePolicy,
        exchange: Rc<RefCell<HttpExchange>>,
        failure: GuestFailure,
    ) -> Self {
        Self {
            vm: None,
            context_id: 0,
            exchange,
            signals: Rc::new(RefCell::new(StreamSignals::default())),
            policy,
            plugin_name,
            phase: Cell::new(Phase::Active),
            startup_failure: RefCell::new(Some(failure)),
        }
    }

    /// The stream's context id in the guest (0 when no VM could be started).
    pub fn context_id(&self) -> u32 {
        self.context_id
    }

    /// The exchange this stream filters.
    pub fn exchange(&self) -> &Rc<RefCell<HttpExchange>> {
        &self.exchange
    }

    /// True once the filter is out of the stream (after a failure or a close).
    pub fn is_bypassed(&self) -> bool {
        self.phase.get() != Phase::Active
    }

    fn header_count(map: Option<&HeaderMap>) -> u32 {
        u32::try_from(map.map_or(0, HeaderMap::len)).unwrap_or(u32::MAX)
    }

    fn body_len(body: &[u8]) -> u32 {
        u32::try_from(body.len()).unwrap_or(u32::MAX)
    }

    /// `proxy_on_request_headers`, with `exchange.request_headers` set.
    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let count = Self::header_count(self.exchange.borrow().request_headers.as_ref());
        self.run(Direction::Request, Callback::RequestHeaders, |vm, id| {
            vm.call(Callback::RequestHeaders, id, |store, g| g.request_headers(store, id, count, end_of_stream))
        })
    }

    /// `proxy_on_request_body`, with `exchange.request_body` holding the bytes to filter.
    pub fn on_request_body(&mut self, end_of_stream: bool) -> Action {
        let len = Self::body_len(&self.exchange.borrow().request_body);
        self.run(Direction::Request, Callback::RequestBody, |vm, id| {
            vm.call(Callback::RequestBody, id, |store, g| g.request_body(store, id, len, end_of_stream))
        })
    }

    /// `proxy_on_request_trailers`, with `exchange.request_trailers` set.
    pub fn on_request_trailers(&mut self) -> Action {
        let count = Self::header_count(self.exchange.borrow().request_trailers.as_ref());
        self.run(Direction::Request, Callback::RequestTrailers, |vm, id| {
            vm.call(Callback::RequestTrailers, id, |store, g| g.request_trailers(store, id, count))
        })
    }

    /// `proxy_on_response_headers`, with `exchange.response_headers` set.
    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        let count = Self::header_count(self.exchange.borrow().response_headers.as_ref());
        self.run(Direction::Response, Callback::ResponseHeaders, |vm, id| {
            vm.call(Callback::ResponseHeaders, id, |store, g| g.response_headers(store, id, count, end_of_stream))
        })
    }

    /// `proxy_on_response_body`, with `exchange.response_body` holding the bytes to filter.
    pub fn on_response_body(&mut self, end_of_stream: bool) -> Action {
        let len = Self::body_len(&self.exchange.borrow().response_body);
        self.run(Direction::Response, Callback::ResponseBody, |vm, id| {
            vm.call(Callback::ResponseBody, id, |store, g| g.response_body(store, id, len, end_of_stream))
        })
    }

    /// `proxy_on_response_trailers`, with `exchange.response_trailers` set.
    pub fn on_response_trailers(&mut self) -> Action {
        let count = Self::header_count(self.exchange.borrow().response_trailers.as_ref());
        self.run(Direction::Response, Callback::ResponseTrailers, |vm, id| {
            vm.call(Callback::ResponseTrailers, id, |store, g| g.response_trailers(store, id, count))
        })
    }

    /// `proxy_on_log`: the access-log point, after the response is complete. Headers, trailers
    /// and `response.*` properties are readable.
    pub fn on_log(&mut self) {
        if let (Phase::Active | Phase::Closed, Some(vm)) = (self.phase.get(), &self.vm)
            && self.startup_failure.borrow().is_none()
        {
            let _ = vm.log_stream(self.context_id);
        }
    }

    fn run(
        &mut self,
        direction: Direction,
        callback: Callback,
        invoke: impl FnOnce(&PluginVm, u32) -> Result<u32, GuestFailure>,
    ) -> Action {
        if self.phase.get() != Phase::Active {
            return Action::Continue;
        }
        if let Some(failure) = self.startup_failure.borrow_mut().take() {
            return self.apply_failure_policy(&failure);
        }
        let Some(vm) = self.vm.clone() else {
            return Action::Continue;
        };
        {
            let mut signals = self.signals.borrow_mut();
            match direction {
                Direction::Request => signals.resume_request = false,
                Direction::Response => signals.resume_response = false,
            }
        }
        match invoke(&vm, self.context_id) {
            Ok(code) => self.action_after_callback(code),
            Err(failure) => {
                tracing::debug!(plugin = %self.plugin_name, callback = callback.name(), "stream gets the failure policy");
                self.apply_failure_policy(&failure)
            }
        }
    }

    fn action_after_callback(&self, code: u32) -> Action {
        let mut signals = self.signals.borrow_mut();
        if let Some(response) = signals.local_response.take() {
            // Like Envoy: a local response forces the callback's result to Stop.
            return Action::LocalResponse(response);
        }
        if signals.close {
            self.phase.set(Phase::Closed);
            return Action::Close;
        }
        if code == action::CONTINUE as u32 { Action::Continue } else { Action::Pause }
    }

    fn apply_failure_policy(&self, failure: &GuestFailure) -> Action {
        self.phase.set(Phase::Bypassed);
        match self.policy {
            FailurePolicy::FailOpen => Action::Continue,
            FailurePolicy::FailClosed => Action::FailClosed(failure.clone()),
        }
    }

    /// Polls for the end of a pause in `direction`: ready with [`Action::Continue`] once the filter
    /// resumed the stream, with a local response or close it asked for meanwhile, or with the
    /// failure policy if the VM failed. Registers `cx`'s waker otherwise.
    pub fn poll_resume(&self, cx: &mut Context<'_>, direction: Direction) -> Poll<Action> {
        let mut signals = self.signals.borrow_mut();
        if let Some(response) = signals.local_response.take() {
            return Poll::Ready(Action::LocalResponse(response));
        }
        if signals.close {
            self.phase.set(Phase::Closed);
            return Poll::Ready(Action::Close);
        }
        if signals.vm_failed && self.phase.get() == Phase::Active {
            drop(signals);
            let failure = self.vm.as_ref().and_then(|vm| vm.failure()).unwrap_or_else(|| GuestFailure {
                plugin: self.plugin_name.clone(),
                callback: Callback::HttpCallResponse,
                kind: crate::error::FailureKind::VmFailed,
                detail: "the VM failed while the stream was paused".into(),
            });
            return Poll::Ready(self.apply_failure_policy(&failure));
        }
        let resumed = match direction {
            Direction::Request => std::mem::take(&mut signals.resume_request),
            Direction::Response => std::mem::take(&mut signals.resume_response),
        };
        if resumed || self.phase.get() != Phase::Active {
            return Poll::Ready(Action::Continue);
        }
        let slot = match direction {
            Direction::Request => &mut signals.request_waker,
            Direction::Response => &mut signals.response_waker,
        };
        *slot = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Non-blocking form of [`poll_resume`](Self::poll_resume): `None` while still paused.
    pub fn try_resume(&self, direction: Direction) -> Option<Action> {
        match self.poll_resume(&mut Context::from_waker(Waker::noop()), direction) {
            Poll::Ready(action) => Some(action),
            Poll::Pending => None,
        }
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        if let Some(vm) = &self.vm
            && self.context_id != 0
        {
            vm.destroy_stream(self.context_id);
        }
    }
}
