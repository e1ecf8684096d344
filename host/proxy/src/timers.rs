//! The background life of a plugin on a worker: its root context's tick timer and its shared
//! queue notifications, delivered on the worker thread.

use std::rc::Rc;
use std::time::{Duration, Instant};

use wasmtrace_runtime::{PluginInstance, PluginVm};

/// How often to look again when nothing is armed (a re-created VM may arm a timer).
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// How often a finishing VM gets its due ticks and queue deliveries (its callouts complete on
/// their own).
const FLUSH_POLL: Duration = Duration::from_millis(5);

/// Runs ticks and queue deliveries for `plugin` until `stop` completes.
pub async fn drive(plugin: Rc<PluginInstance>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let Some(vm) = plugin.vm() else {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_CHECK) => continue,
                () = &mut stop => return,
            }
        };
        let next_tick = vm.next_tick().unwrap_or_else(|| Instant::now() + IDLE_CHECK);
        let inbox = vm.queue_inbox().clone();
        let queue_ready = std::future::poll_fn(|cx| {
            if inbox.has_pending() {
                return std::task::Poll::Ready(());
            }
            inbox.set_waker(cx.waker());
            // Re-check: an item may have arrived between the test and the registration.
            if inbox.has_pending() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
        });
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick.into()) => {
                let _ = vm.tick_if_due(Instant::now());
            }
            () = queue_ready => {
                let _ = vm.deliver_queue_ready();
            }
            () = &mut stop => return,
        }
    }
}

/// Asks a VM's root context to finish (`proxy_on_done`) and, when it flushes (callouts, ticks,
/// queues), keeps delivering to it until it calls `proxy_done` or `deadline` passes. Returns
/// whether it finished in time.
pub async fn finish(vm: &PluginVm, deadline: Instant) -> bool {
    // What was enqueued for it until now (by filters that finished first) is delivered before it
    // is asked to finish: a root context that says done at once would never see it.
    let _ = vm.deliver_queue_ready();
    if vm.shutdown() {
        return true;
    }
    while !vm.is_done() {
        if Instant::now() >= deadline {
            tracing::warn!(plugin = %vm.plugin().name, "plugin did not finish flushing before the drain deadline");
            return false;
        }
        tokio::time::sleep(FLUSH_POLL).await;
        let _ = vm.tick_if_due(Instant::now());
        let _ = vm.deliver_queue_ready();
    }
    true
}
