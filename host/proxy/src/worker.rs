//! A worker: one thread, one single-threaded tokio runtime, its own VM of every plugin, its own
//! upstream connection pools. Connections accepted on a worker stay on it, so a filter callback is
//! a plain function call on the worker's thread.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use wasmtrace_config::CodecType;

use crate::Shared;
use crate::callouts::WorkerCallouts;
use crate::cluster::ClusterClient;
use crate::handler::{self, ConnectionInfo, ListenerContext};
use crate::swap::{WorkerCommand, WorkerEnv, WorkerPlugin};

/// Runs hyper's per-stream HTTP/2 tasks on the worker's own thread.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Counts open connections so shutdown can wait for them to drain.
#[derive(Default)]
struct ConnectionTracker {
    open: Cell<usize>,
    closed: Notify,
}

impl ConnectionTracker {
    async fn drained(&self) {
        while self.open.get() > 0 {
            self.closed.notified().await;
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
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(format!("worker {index}: cannot start its runtime: {e}")));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(index, shared, sockets, commands, stop, ready));
}

async fn serve(
    index: usize,
    shared: Arc<Shared>,
    sockets: WorkerSockets,
    commands: mpsc::UnboundedReceiver<WorkerCommand>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let clusters: Rc<HashMap<String, ClusterClient>> =
        Rc::new(shared.bootstrap.clusters.iter().map(|c| (c.name.clone(), ClusterClient::new(c))).collect());
    let callouts = Rc::new(WorkerCallouts { clusters: clusters.clone(), stats: shared.cluster_stats.clone() });
    let env = Rc::new(WorkerEnv::new(shared.runtime.clone(), callouts, stop.clone(), shared.options.drain_timeout));
    let mut plugins = Vec::new();
    for slot in &shared.slots {
        match WorkerPlugin::start(slot.clone(), env.clone()) {
            Ok(plugin) => plugins.push(Rc::new(plugin)),
            Err(e) => {
                let _ = ready.send(Err(format!("worker {index}: {e}")));
                return;
            }
        }
    }
    let mut contexts = Vec::new();
    for (listener_index, listener) in shared.bootstrap.listeners.iter().enumerate() {
        let filters = shared
            .slots
            .iter()
            .filter(|slot| slot.listener_index == listener_index)
            .map(|slot| plugins[slot.index].clone())
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
                let _ = ready.send(Err(format!("worker {index}: listener socket: {e}")));
                return;
            }
        };
        let ctx = contexts[listener_index].clone();
        accept_loops.push(tokio::task::spawn_local(accept(
            ctx,
            listener,
            tracker.clone(),
            shared.connection_ids.clone(),
            stop.clone(),
        )));
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
    }
    // Every root context finishes and may flush: the serving generations and any replaced
    // generation still draining after a hot swap. Flushing gets its own budget, so streams that
    // used up the drain timeout do not cost the filters their buffered telemetry.
    let flush_deadline = Instant::now() + shared.options.drain_timeout.min(FLUSH_BUDGET);
    for plugin in &plugins {
        plugin.finish(flush_deadline).await;
    }
    env.retirements_done(flush_deadline).await;
}

/// Carries out the swap coordinator's commands on this worker.
async fn follow_commands(plugins: Vec<Rc<WorkerPlugin>>, mut commands: mpsc::UnboundedReceiver<WorkerCommand>) {
    while let Some(command) = commands.recv().await {
        let slot = match &command {
            WorkerCommand::Stage { slot, .. }
            | WorkerCommand::Publish { slot }
            | WorkerCommand::Discard { slot, .. } => *slot,
        };
        match plugins.get(slot) {
            Some(plugin) => plugin.apply(command),
            None => tracing::error!(slot, "swap command for a plugin this worker does not have"),
        }
    }
}

fn connection_builder(codec: CodecType) -> auto::Builder<LocalExec> {
    let mut builder = auto::Builder::new(LocalExec);
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    match codec {
        CodecType::Auto => builder,
        CodecType::Http1 => builder.http1_only(),
        CodecType::Http2 => builder.http2_only(),
    }
}

async fn accept(
    ctx: Rc<ListenerContext>,
    listener: TcpListener,
    tracker: Rc<ConnectionTracker>,
    ids: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Rc::new(connection_builder(ctx.listener.http.codec));
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(listener = %ctx.listener.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Rc::new(ConnectionInfo {
            peer,
            local: stream.local_addr().ok().or(local).unwrap_or(peer),
            id: ids.fetch_add(1, Ordering::Relaxed),
        });
        tracker.open.set(tracker.open.get() + 1);
        let (ctx, builder, tracker, mut stop) = (ctx.clone(), builder.clone(), tracker.clone(), stop.clone());
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |request| handler::serve(ctx.clone(), conn.clone(), request));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("connection ended: {e}");
                        }
                        break;
                    }
                    _ = stop.wait_for(|stopped| *stopped), if !draining => {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            tracker.open.set(tracker.open.get() - 1);
            tracker.closed.notify_waiters();
        });
    }
}
