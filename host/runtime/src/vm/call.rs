//! The guarded call: every callback into a guest goes through [`PluginVm::call`], which arms the
//! callback's deadline, sets the acting context, catches host panics, and turns any error into a
//! [`GuestFailure`] that poisons the VM.

use std::time::Duration;

use wasmtime::{Store, Trap};

use crate::error::{FailureKind, GuestFailure, GuestFault};
use crate::runtime::Runtime;
use crate::state::VmState;

use super::{Callback, Guest, PluginVm, ROOT_CONTEXT_ID, VmInner};

impl PluginVm {
    /// Calls into the guest as `callback`, with `callback`'s deadline armed and `context` as the
    /// acting context. A failure is reported with the deadline that was armed.
    pub(crate) fn call<R>(
        &self,
        callback: Callback,
        context: u32,
        f: impl FnOnce(&mut Store<VmState>, &Guest) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFailure> {
        let deadline = callback.deadline().of(&self.plugin.limits);
        if let Some(failure) = self.failure.borrow().as_ref() {
            return Err(GuestFailure {
                callback,
                kind: FailureKind::VmFailed,
                detail: format!("the VM failed earlier in {}", failure.callback),
                ..failure.clone()
            });
        }
        let result = {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                return Err(GuestFailure {
                    plugin: self.plugin.name.clone(),
                    callback,
                    kind: FailureKind::VmFailed,
                    detail: "re-entrant call into a VM that is already running a callback".into(),
                });
            };
            let VmInner { store, callbacks } = &mut *inner;
            store.set_epoch_deadline(Runtime::deadline_ticks(deadline));
            let state = store.data_mut();
            let previous = (state.contexts.active, state.contexts.effective.take());
            state.contexts.active = context;
            // A host function that panics (a bug, or a library asked to do what a worker must
            // not) fails this VM like a trap instead of unwinding through the worker.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(store, callbacks))).unwrap_or_else(
                |panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)");
                    Err(wasmtime::Error::msg(format!("a host function panicked: {what}")))
                },
            );
            let state = store.data_mut();
            (state.contexts.active, state.contexts.effective) = previous;
            // The guest's output is read only when it failed (its panic message): copying it after
            // every callback would put a lock and a copy on every request.
            result.map_err(|error| {
                let mut failure = self.classify(callback, deadline, &error, state.memory_cap.hit);
                if let Some(output) = state.output.take() {
                    failure.detail = format!("{}; the filter wrote: {output}", failure.detail);
                }
                failure
            })
        };
        result.inspect_err(|failure| {
            if !self.is_failed() {
                self.failed_context.set(Some(context));
            }
            self.fail(failure.clone());
        })
    }

    /// Whether this VM failed in its root context (a tick, a queue, a callout's answer) soon
    /// after it started: a module that does so again each time it is re-created would spin,
    /// with no stream to stop it (a Wasm service), so its re-creation backs off.
    pub(crate) fn failed_early_off_stream(&self, window: Duration) -> bool {
        self.is_failed() && self.failed_context.get() == Some(ROOT_CONTEXT_ID) && self.started_at.elapsed() < window
    }

    /// What `error`, returned by a call of `callback` armed with `deadline`, says went wrong.
    fn classify(
        &self,
        callback: Callback,
        deadline: Duration,
        error: &wasmtime::Error,
        memory_limit_hit: bool,
    ) -> GuestFailure {
        let kind = if memory_limit_hit {
            FailureKind::MemoryLimit
        } else if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            FailureKind::DeadlineExceeded
        } else if error.downcast_ref::<GuestFault>().is_some() {
            FailureKind::BadGuestInput
        } else {
            FailureKind::Trap
        };
        let detail = match kind {
            FailureKind::DeadlineExceeded => {
                format!("callback exceeded its deadline of {deadline:?} and was interrupted")
            }
            FailureKind::MemoryLimit => {
                format!("memory limit of {} bytes exceeded ({error:#})", self.plugin.limits.max_memory_bytes)
            }
            _ => format!("{error:?}"),
        };
        GuestFailure { plugin: self.plugin.name.clone(), callback, kind, detail }
    }
}
