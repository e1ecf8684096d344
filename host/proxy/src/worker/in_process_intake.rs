//! The in-process layers' requests on a worker: each a stream of its listener's chain, counted
//! in the drain as a connection is.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};

use crate::handler::ListenerContext;
use crate::in_process::{self, InProcessRequest};

use super::ConnectionTracker;

/// Counts an in-process stream as open until dropped.
struct OpenStream {
    tracker: Rc<ConnectionTracker>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.tracker.open.set(self.tracker.open.get() - 1);
        self.tracker.closed.notify_waiters();
    }
}

/// Takes the in-process layers' requests until `stop`; each is a stream of its listener's chain,
/// counted in the drain as a connection is (`connection.id` numbers streams here: there is no
/// connection of the filters' own). At most `max_streams` are open at once on this worker (the
/// listeners' connection cap): past it the inbox fills and the layers' calls wait.
pub(super) async fn take_in_process(
    contexts: Vec<Rc<ListenerContext>>,
    mut inbox: mpsc::Receiver<InProcessRequest>,
    tracker: Rc<ConnectionTracker>,
    ids: Arc<AtomicU64>,
    max_streams: usize,
    mut stop: watch::Receiver<bool>,
) {
    let streams = Arc::new(tokio::sync::Semaphore::new(max_streams.max(1)));
    loop {
        let permit = tokio::select! {
            permit = streams.clone().acquire_owned() => permit,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let Ok(permit) = permit else { return };
        let request = tokio::select! {
            request = inbox.recv() => request,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let Some(request) = request else { return };
        let Some(ctx) = contexts.get(request.listener).cloned() else {
            tracing::error!(
                listener = request.listener,
                "an in-process request for a listener this worker does not have"
            );
            continue;
        };
        tracker.open.set(tracker.open.get() + 1);
        let open = OpenStream { tracker: tracker.clone() };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_local(async move {
            tokio::select! {
                () = in_process::serve(ctx, request, id) => {}
                () = open.tracker.closing() => {}
            }
            drop((open, permit));
        });
    }
}
