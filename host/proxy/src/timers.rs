//! The background life of a plugin on a worker: its root context's tick timer and its shared
//! queue notifications, delivered on the worker thread.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wasmtrace_runtime::PluginInstance;

/// How often to look again when nothing is armed (a re-created VM may arm a timer).
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Runs ticks and queue deliveries for `plugin` until `stop` changes.
pub async fn drive(plugin: Rc<PluginInstance>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(vm) = plugin.vm() else {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_CHECK) => continue,
                _ = stop.changed() => return,
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
            _ = stop.changed() => return,
        }
    }
}
