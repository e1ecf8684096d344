//! The in-process layers' requests on a worker: each a stream of its listener's chain, counted
//! in the drain as a connection is; and the sockets the application has the workers serve in
//! place, each accepted from as a sidecar listener's.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};

use crate::handler::ListenerContext;
use crate::in_process::{self, InPlaceListener, InProcessRequest};

use super::ConnectionTracker;
use super::accept::{self, InPlace};

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

/// What both intakes serve with: the worker's listener chains, its drain tracker, the connection
/// ids, the listeners' connection cap, and the filters' stop.
pub(super) struct Intake {
    pub(super) contexts: Vec<Rc<ListenerContext>>,
    pub(super) tracker: Rc<ConnectionTracker>,
    pub(super) ids: Arc<AtomicU64>,
    pub(super) max_connections: usize,
    pub(super) stop: watch::Receiver<bool>,
}

/// Takes the in-process layers' requests until `stop`; each is a stream of its listener's chain,
/// counted in the drain as a connection is (`connection.id` numbers streams here: there is no
/// connection of the filters' own). At most `max_streams` are open at once on this worker (the
/// listeners' connection cap): past it the inbox fills and the layers' calls wait.
pub(super) async fn take_in_process(intake: Intake, mut inbox: mpsc::Receiver<InProcessRequest>) {
    let Intake { contexts, tracker, ids, max_connections: max_streams, mut stop } = intake;
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

/// Takes the sockets the application has the workers serve in place until `stop`: each is
/// accepted from as a sidecar listener's socket (its listener's connection cap, limits and
/// watchdog; its connections counted in the drain), until the application or the filters stop.
pub(super) async fn take_in_place(intake: Intake, mut sockets: mpsc::UnboundedReceiver<InPlaceListener>) {
    let Intake { contexts, tracker, ids, max_connections, stop } = intake;
    loop {
        let mut stopped = stop.clone();
        let served = tokio::select! {
            served = sockets.recv() => served,
            _ = stopped.wait_for(|stopped| *stopped) => return,
        };
        let Some(InPlaceListener { listener, socket, application, stop: app_stop, serving }) = served else { return };
        let Some(ctx) = contexts.get(listener).cloned() else {
            tracing::error!(listener, "a socket to serve for a listener this worker does not have");
            continue;
        };
        let socket = match tokio::net::TcpListener::from_std(socket) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::error!(listener = %ctx.listener.name, "serving the application's socket: {e}");
                continue;
            }
        };
        // One stop for both ends: the application stopping serving, or the filters shutting down.
        let (either_tx, either) = watch::channel(false);
        let (mut filters_stop, mut app_stop) = (stop.clone(), app_stop);
        tokio::task::spawn_local(async move {
            tokio::select! {
                _ = filters_stop.wait_for(|stopped| *stopped) => {}
                _ = app_stop.wait_for(|stopped| *stopped) => {}
                () = either_tx.closed() => return,
            }
            let _ = either_tx.send(true);
        });
        let in_place = Rc::new(InPlace { application, _serving: serving });
        tokio::task::spawn_local(accept::accept(
            ctx,
            socket,
            tracker.clone(),
            ids.clone(),
            max_connections,
            either,
            Some(in_place),
        ));
    }
}
