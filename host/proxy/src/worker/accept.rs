//! A worker's connections: the accept loop of one listener (its connection cap, backoff on
//! accept errors), hyper serving each connection with the listener's limits and the watchdog,
//! and the tunnel of a stream that switched protocols.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use wasmtrace_config::{CodecType, ConnectionLimits};

use crate::connection::{Activity, ActivityIo, CLOSE_GRACE, DRAIN_GRACE, Expiry, GuardedBody};
use crate::handler::{self, ConnectionInfo, ListenerContext};
use crate::in_process::ApplicationFactory;
use crate::stats::ListenerStats;

use super::ConnectionTracker;

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

/// hyper's builder for a listener: its codec, and the header limits and timeouts hyper enforces
/// itself (the rest is the connection watchdog's, [`crate::connection`]).
fn connection_builder(codec: CodecType, limits: &ConnectionLimits) -> auto::Builder<LocalExec> {
    let mut builder = auto::Builder::new(LocalExec);
    let header_bytes = header_bytes_bound(limits);
    {
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(limits.request_headers_timeout)
            // The read buffer bounds the request head: past it hyper answers 431.
            .max_buf_size(header_bytes.max(MIN_READ_BUFFER));
        // hyper keeps up to 100 headers on the stack; only a larger limit needs the heap.
        if limits.max_headers_count > 100 {
            http1.max_headers(limits.max_headers_count as usize);
        }
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        // Every stream may hold an upstream connection: one client must not open hundreds.
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
    match codec {
        CodecType::Auto => builder,
        CodecType::Http1 => builder.http1_only(),
        CodecType::Http2 => builder.http2_only(),
    }
}

/// Streams one downstream HTTP/2 connection may have open at once (nginx's default is 128).
const MAX_CONCURRENT_STREAMS: u32 = 100;

/// hyper's read buffer never goes below this (its own minimum).
const MIN_READ_BUFFER: usize = 8 << 10;

/// What hyper may buffer of a request head: the configured header bytes plus the wire's framing
/// (request line, `: ` and CRLF per header, HTTP/2's 32 bytes per entry). hyper answers 431
/// beyond it; within it the handler counts names and values exactly as Envoy does.
pub(crate) fn header_bytes_bound(limits: &ConnectionLimits) -> usize {
    limits.max_request_headers_kb as usize * 1024 + limits.max_headers_count as usize * 32 + (16 << 10)
}

/// Accept failures (out of file descriptors) back off from this ...
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// ... doubling up to this, so a full descriptor table is not a hot loop.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this long for accept failures and connections over the cap.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Logs a repeated condition at most once per [`WARN_EVERY`], with how often it happened.
struct RateLimitedWarning {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    fn new() -> Self {
        Self { last: None, suppressed: 0 }
    }

    fn warn(&mut self, listener: &str, message: std::fmt::Arguments<'_>) {
        if self.last.is_some_and(|last| last.elapsed() < WARN_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(listener, suppressed = self.suppressed, "{message}");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// Counts a connection as open on its listener until dropped.
struct OpenConnection {
    stats: Arc<ListenerStats>,
    tracker: Rc<ConnectionTracker>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        self.tracker.open.set(self.tracker.open.get() - 1);
        self.tracker.closed.notify_waiters();
    }
}

/// A socket served in place: the application answering its routes to clusters, and the token
/// that tells the application this worker still serves it (held until the accept loop and
/// every connection from the socket ended).
pub(super) struct InPlace {
    pub(super) application: ApplicationFactory,
    pub(super) _serving: tokio::sync::mpsc::Sender<std::convert::Infallible>,
}

/// Accepts `listener`'s connections until `stop` and serves each on this worker (`in_place`: a
/// socket of the application's, whose routes to clusters the application answers).
pub(super) async fn accept(
    ctx: Rc<ListenerContext>,
    listener: TcpListener,
    tracker: Rc<ConnectionTracker>,
    ids: Arc<AtomicU64>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
    in_place: Option<Rc<InPlace>>,
) {
    let limits = ctx.listener.http.limits.clone();
    let builder = connection_builder(ctx.listener.http.codec, &limits);
    let serving = Rc::new(ConnectionSetup { ctx: ctx.clone(), builder, limits, in_place });
    let local = listener.local_addr().ok();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut accept_warning = RateLimitedWarning::new();
    let mut overflow_warning = RateLimitedWarning::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) => {
                // Out of file descriptors or similar: the pending connection stays in the
                // backlog; back off instead of spinning on it.
                accept_warning.warn(&ctx.listener.name, format_args!("accept failed: {e}; retrying in {backoff:?}"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let stats = ctx.stats.clone();
        if stats.connections_active.load(Ordering::Relaxed) >= max_connections as u64 {
            // Over the cap the connection is closed at once (as Envoy's connection limit does),
            // which keeps the backlog moving and tells the client straight away.
            stats.connections_overflow.fetch_add(1, Ordering::Relaxed);
            overflow_warning.warn(
                &ctx.listener.name,
                format_args!("{max_connections} connections open: closing new connections until some close"),
            );
            drop(stream);
            continue;
        }
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        stats.connections_total.fetch_add(1, Ordering::Relaxed);
        tracker.open.set(tracker.open.get() + 1);
        let open = OpenConnection { stats, tracker: tracker.clone() };
        let _ = stream.set_nodelay(true);
        let conn = Rc::new(ConnectionInfo {
            peer: Some(peer),
            local: stream.local_addr().ok().or(local),
            id: ids.fetch_add(1, Ordering::Relaxed),
            tunnel: Default::default(),
        });
        tokio::task::spawn_local(serve_connection(serving.clone(), conn, stream, open, stop.clone()));
    }
}

/// What every connection of one accept loop is served with.
struct ConnectionSetup {
    ctx: Rc<ListenerContext>,
    builder: auto::Builder<LocalExec>,
    limits: ConnectionLimits,
    in_place: Option<Rc<InPlace>>,
}

/// Serves one downstream connection until it ends, shutdown drains it, or a limit closes it;
/// then carries its tunnel, if a stream switched protocols. The connection counts as open
/// (`open`) until both are done.
async fn serve_connection(
    serving: Rc<ConnectionSetup>,
    conn: Rc<ConnectionInfo>,
    stream: tokio::net::TcpStream,
    open: OpenConnection,
    mut stop: watch::Receiver<bool>,
) {
    let (ctx, limits) = (&serving.ctx, &serving.limits);
    let activity = Activity::new();
    let stream_activity = activity.clone();
    let for_streams = serving.clone();
    let info = conn.clone();
    let service = hyper::service::service_fn(move |request| {
        let guard = stream_activity.stream();
        let application = for_streams.in_place.as_ref().map(|in_place| (in_place.application)(conn.peer));
        // Boxed where it is made: the stream's future is several KB, and hyper moves the
        // service future more than once (memcpy was 5 % of a request's CPU in the profile).
        let served = Box::pin(handler::serve(for_streams.ctx.clone(), conn.clone(), request, application));
        async move { served.await.map(|response| response.map(|body| GuardedBody::new(body, guard))) }
    });
    let mut draining = false;
    let mut close_at: Option<tokio::time::Instant> = None;
    let ended = {
        // With upgrades: a `101` hands the connection to the stream's tunnel (`crate::upgrade`).
        let connection = serving
            .builder
            .serve_connection_with_upgrades(TokioIo::new(ActivityIo::new(stream, activity.clone())), service);
        tokio::pin!(connection);
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection ended: {e}");
                    }
                    break true;
                }
                _ = stop.wait_for(|stopped| *stopped), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                expiry = activity.expired(limits), if close_at.is_none() => {
                    ctx.stats.connection_timeout(expiry);
                    tracing::debug!(listener = %ctx.listener.name, limit = expiry.label(), "closing a connection past its limit");
                    if !draining {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    let grace = if expiry.drains() { DRAIN_GRACE } else { CLOSE_GRACE };
                    close_at = Some(tokio::time::Instant::now() + grace);
                }
                _ = sleep_until_some(close_at) => break false,
                () = open.tracker.closing() => break false,
            }
        }
        // hyper's connection goes here: an upgrade it did not hand over (the client left before
        // its `101` was written) fails now rather than keep the tunnel waiting.
    };
    // Closed by a limit or at the drain timeout: a tunnel left there is dropped unstarted.
    if let Some(tunnel) = info.tunnel.take().filter(|_| ended) {
        carry_tunnel(ctx, tunnel, &activity, limits, &open.tracker, close_at).await;
    }
    drop(open);
}

/// Carries a connection's tunnel (its stream switched protocols and hyper wrote the `101`)
/// until it ends, the worker closes what is left at the drain timeout, or the connection's
/// `max_connection_duration` passes: then, after the drain grace any stream past that limit
/// gets, both sides are closed (the tunnel cannot be told to finish). `close_at`: a limit the
/// connection passed before the switch.
async fn carry_tunnel(
    ctx: &ListenerContext,
    tunnel: impl Future<Output = ()>,
    activity: &Activity,
    limits: &ConnectionLimits,
    tracker: &ConnectionTracker,
    mut close_at: Option<tokio::time::Instant>,
) {
    let too_old_at = activity.max_duration_at(limits);
    tokio::pin!(tunnel);
    loop {
        tokio::select! {
            () = &mut tunnel => return,
            () = sleep_until_some(too_old_at), if close_at.is_none() => {
                ctx.stats.connection_timeout(Expiry::MaxDuration);
                tracing::debug!(listener = %ctx.listener.name, "closing a tunnel past max_connection_duration");
                close_at = Some(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            _ = sleep_until_some(close_at) => return,
            () = tracker.closing() => {
                tracing::debug!(listener = %ctx.listener.name, "closing a tunnel still open at the drain timeout");
                return;
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
