//! A worker: one thread, one single-threaded tokio runtime, its own VM of every plugin, its own
//! upstream connection pools. Connections accepted on a worker stay on it, so a filter callback is
//! a plain function call on the worker's thread.
//!
//! This module starts a worker and stops it (drain, then flush); [`accept`] takes its
//! connections and serves them with hyper, [`in_process_intake`] takes the in-process layers'
//! requests and the sockets the application has the workers serve in place.

mod accept;
mod in_process_intake;

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::Shared;
use crate::callouts::WorkerCallouts;
use crate::cluster::ClusterClient;
use crate::connection::CLOSE_GRACE;
use crate::error::WorkerError;
use crate::handler::ListenerContext;
use crate::in_process::InProcessIntake;
use crate::plugins::SlotRole;
use crate::swap::{WorkerCommand, WorkerEnv, WorkerPlugin};

/// Counts open connections (an upgraded one until its tunnel ends) so shutdown can wait for
/// them to drain, and closes those still open when the drain timeout passed.
#[derive(Default)]
pub(super) struct ConnectionTracker {
    pub(super) open: Cell<usize>,
    pub(super) closed: Notify,
    /// Set at the drain timeout: every connection still open closes now.
    closing: Cell<bool>,
    close: Notify,
}

impl ConnectionTracker {
    pub(super) async fn drained(&self) {
        while self.open.get() > 0 {
            self.closed.notified().await;
        }
    }

    /// Tells every connection to close now.
    pub(super) fn close_all(&self) {
        self.closing.set(true);
        self.close.notify_waiters();
    }

    /// Resolves once [`Self::close_all`] was called.
    pub(super) async fn closing(&self) {
        while !self.closing.get() {
            self.close.notified().await;
        }
    }
}

/// Longest the filters may take to flush at shutdown, after the streams drained.
const FLUSH_BUDGET: Duration = Duration::from_secs(5);

/// Sockets handed to a worker: `(listener index, socket)`.
pub type WorkerSockets = Vec<(usize, std::net::TcpListener)>;

/// The worker thread's body: set up, report readiness, serve until `stop`, drain, flush.
pub fn run(
    index: usize,
    shared: Arc<Shared>,
    sockets: WorkerSockets,
    commands: mpsc::UnboundedReceiver<WorkerCommand>,
    intake: Option<InProcessIntake>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), WorkerError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(WorkerError::Runtime { index, source: e }));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(index, shared, sockets, commands, intake, stop, ready));
}

async fn serve(
    index: usize,
    shared: Arc<Shared>,
    sockets: WorkerSockets,
    commands: mpsc::UnboundedReceiver<WorkerCommand>,
    intake: Option<InProcessIntake>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), WorkerError>>,
) {
    let clusters: Rc<HashMap<String, ClusterClient>> =
        Rc::new(shared.bootstrap.clusters.iter().map(|c| (c.name.clone(), ClusterClient::new(c))).collect());
    let callouts = Rc::new(WorkerCallouts { clusters: clusters.clone(), stats: shared.cluster_stats.clone() });
    let env = Rc::new(WorkerEnv::new(shared.runtime.clone(), callouts, stop.clone(), shared.options.drain_timeout));
    // By slot index; `None` for a singleton service another worker runs.
    let mut plugins: Vec<Option<Rc<WorkerPlugin>>> = Vec::new();
    for slot in &shared.slots {
        if !slot.role.runs_on(index) {
            plugins.push(None);
            continue;
        }
        match WorkerPlugin::start(slot.clone(), env.clone()) {
            Ok(plugin) => plugins.push(Some(Rc::new(plugin))),
            Err(e) => {
                let _ = ready.send(Err(WorkerError::Plugin { index, source: e }));
                return;
            }
        }
    }
    let mut contexts = Vec::new();
    for (listener_index, listener) in shared.bootstrap.listeners.iter().enumerate() {
        let filters = shared
            .slots
            .iter()
            .filter(|slot| slot.role == SlotRole::Filter { listener_index })
            .filter_map(|slot| plugins[slot.index].clone())
            .collect();
        contexts.push(Rc::new(ListenerContext {
            listener: Arc::new(listener.clone()),
            filters,
            clusters: clusters.clone(),
            stats: shared.stats.listeners.get(&listener.http.stat_prefix).cloned().unwrap_or_default(),
            cluster_stats: shared.cluster_stats.clone(),
        }));
    }
    tokio::task::spawn_local(follow_commands(plugins.clone(), commands));
    let tracker = Rc::new(ConnectionTracker::default());
    let mut accept_loops = Vec::new();
    for (listener_index, socket) in sockets {
        let listener = match TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(WorkerError::Socket { index, source: e }));
                return;
            }
        };
        let ctx = contexts[listener_index].clone();
        accept_loops.push(tokio::task::spawn_local(accept::accept(
            ctx,
            listener,
            tracker.clone(),
            shared.connection_ids.clone(),
            shared.max_connections,
            stop.clone(),
            None,
        )));
    }
    if let Some(InProcessIntake { requests, in_place, worker }) = intake {
        worker.enter();
        let intake = || in_process_intake::Intake {
            contexts: contexts.clone(),
            tracker: tracker.clone(),
            ids: shared.connection_ids.clone(),
            max_connections: shared.max_connections,
            stop: stop.clone(),
        };
        accept_loops.push(tokio::task::spawn_local(in_process_intake::take_in_process(intake(), requests)));
        accept_loops.push(tokio::task::spawn_local(in_process_intake::take_in_place(intake(), in_place)));
    }
    let _ = ready.send(Ok(()));

    let mut stop_signal = stop.clone();
    let _ = stop_signal.wait_for(|stopped| *stopped).await;
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    let deadline = Instant::now() + shared.options.drain_timeout;
    if tokio::time::timeout_at(deadline.into(), tracker.drained()).await.is_err() {
        tracing::warn!(worker = index, open = tracker.open.get(), "drain timeout: closing connections still open");
        // Each connection's task drops its sockets (both sides of a tunnel) when next polled,
        // and its streams reach their access-log point before the filters finish.
        tracker.close_all();
        let _ = tokio::time::timeout(CLOSE_GRACE, tracker.drained()).await;
    }
    // Every root context finishes and may flush: the serving generations and any replaced
    // generation still draining after a hot swap. Flushing gets its own budget, so streams that
    // used up the drain timeout do not cost the filters their buffered telemetry.
    let flush_deadline = Instant::now() + shared.options.drain_timeout.min(FLUSH_BUDGET);
    for plugin in plugins.iter().flatten() {
        plugin.finish(flush_deadline).await;
    }
    env.retirements_done(flush_deadline).await;
}

/// Carries out the swap coordinator's commands on this worker.
async fn follow_commands(plugins: Vec<Option<Rc<WorkerPlugin>>>, mut commands: mpsc::UnboundedReceiver<WorkerCommand>) {
    while let Some(command) = commands.recv().await {
        let slot = match &command {
            WorkerCommand::Stage { slot, .. }
            | WorkerCommand::Publish { slot }
            | WorkerCommand::Discard { slot, .. } => *slot,
        };
        match (plugins.get(slot), command) {
            (Some(Some(plugin)), command) => plugin.apply(command),
            // A singleton service another worker runs: nothing to stage here.
            (Some(None), WorkerCommand::Stage { reply, .. }) => {
                let _ = reply.send(Ok(()));
            }
            (Some(None), _) => {}
            (None, _) => tracing::error!(slot, "swap command for a plugin this worker does not have"),
        }
    }
}
