//! The filters inside the application's own process (the `wasmtrace-tower` layers).
//!
//! The workers are the sidecar's — one thread and one single-threaded runtime each, owning their
//! VMs — but a worker takes requests from an inbox instead of a socket: a layer in the
//! application hands a request over ([`InProcessRequest`]) with the service it wraps
//! ([`Application`]); the worker runs it through [`crate::handler::serve`] exactly as a request
//! off the wire (Envoy's defaults, the request filters, the route, the response filters), except
//! that a route to a cluster calls the application in place of the cluster; the answer goes back
//! with a body the application's thread can read ([`ReplyBody`]).
//!
//! The VMs and the filter chain are single-threaded by design (a callback is a plain function
//! call on the worker's thread), while the application's server runs on a multi-threaded runtime
//! whose tasks move between threads: a stream's contexts live in one VM, so the stream stays on
//! the worker that owns that VM, and only the request and the answer cross threads.
//!
//! Crossing threads costs a wake-up of the other thread each way, which in the benchmarks cost
//! more than the trace filter itself. So the workers can also serve the application's socket in
//! place ([`InProcessInbox::serve_in_place`]): each worker accepts connections from it as a
//! sidecar listener's, and a route to a cluster calls the application on the worker's thread —
//! nothing crosses a thread. And a request handed over from a worker's own thread (a client layer
//! called by an application served in place) goes to that worker's inbox, so its wake-ups stay on
//! the thread.

use std::cell::Cell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot, watch};

use crate::BoxError;
use crate::body::{CHANNEL_FRAMES, FrameResult, ProxyBody, ResponseBody};
use crate::handler::{self, ConnectionInfo, ListenerContext};

/// A body on one hop of a stream: off the wire (hyper's), or the application's (in-process).
pub enum HopBody {
    /// hyper's body of a request or response it read.
    Wire(Incoming),
    /// A body the application made or its server read.
    Application(ProxyBody),
}

impl From<Incoming> for HopBody {
    fn from(body: Incoming) -> Self {
        Self::Wire(body)
    }
}

impl From<ProxyBody> for HopBody {
    fn from(body: ProxyBody) -> Self {
        Self::Application(body)
    }
}

impl Body for HopBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        match self.get_mut() {
            Self::Wire(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Application(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Wire(body) => body.is_end_stream(),
            Self::Application(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Wire(body) => body.size_hint(),
            Self::Application(body) => body.size_hint(),
        }
    }
}

/// Why a request sent on got no response: the cluster's client failed, or the application did.
pub enum SendError {
    /// The pooled client of a cluster.
    Client(hyper_util::client::legacy::Error),
    /// The application's service (in-process).
    App(BoxError),
}

/// The application's side of one in-process request: calling it with the filtered request.
pub type ApplicationCall = Box<dyn FnOnce(Request<ProxyBody>) -> ApplicationFuture + Send>;

/// The application's answer to a filtered request.
pub type ApplicationFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

/// The service the filters wrap in-process, for one request: where a route to a cluster goes.
pub struct Application {
    call: ApplicationCall,
    /// Where a client's request was going (its URI's scheme and authority): the filters see, and
    /// may change, `:authority` (the `Host` header), never the connection's target.
    target: Option<(Scheme, Authority)>,
    /// What the application's server put on the request (its connection's address, say).
    extensions: http::Extensions,
}

impl Application {
    /// The application `call` answers; `target`: a client layer's destination (`None` on the
    /// server side, where the application gets an origin-form URI as from its own server).
    pub fn new(call: ApplicationCall, target: Option<(Scheme, Authority)>) -> Self {
        Self { call, target, extensions: http::Extensions::new() }
    }

    /// The same, carrying `extensions` to the application's request (besides any it carries).
    pub fn keeping(mut self, extensions: http::Extensions) -> Self {
        self.extensions.extend(extensions);
        self
    }

    /// Calls the application with the filtered `request` (built for a cluster: absolute URI,
    /// `Host` from `:authority`), its URI made what the application expects.
    pub(crate) async fn call(self, mut request: Request<ProxyBody>) -> Result<Response<ProxyBody>, BoxError> {
        let path = request.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let uri = match self.target {
            Some((scheme, authority)) => {
                Uri::builder().scheme(scheme).authority(authority).path_and_query(path).build()
            }
            None => Uri::builder().path_and_query(path).build(),
        };
        *request.uri_mut() = uri?;
        request.extensions_mut().extend(self.extensions);
        (self.call)(request).await
    }
}

/// One request handed to a worker.
pub struct InProcessRequest {
    /// Which listener's chain (index in the bootstrap's listeners).
    pub listener: usize,
    /// The request as the application's server (or its client code) has it.
    pub request: Request<ProxyBody>,
    /// The client's address, when the application's server says (`source.*`).
    pub peer: Option<SocketAddr>,
    /// The address the request arrived on, likewise (`destination.*`).
    pub local: Option<SocketAddr>,
    /// The service the filters wrap.
    pub application: Application,
    /// Where the answer goes.
    pub reply: oneshot::Sender<InProcessReply>,
}

/// A worker's answer to an in-process request.
pub enum InProcessReply {
    /// The response, through the filters.
    Response(Response<ReplyBody>),
    /// A filter closed the stream: the application's server should reset it.
    Reset,
}

/// A response body made on a worker, read on the application's thread: the frames the filters
/// had let through when the head was sent, then (if the body had not ended) the rest through a
/// bounded channel.
pub struct ReplyBody {
    ready: VecDeque<FrameResult>,
    rest: Option<mpsc::Receiver<FrameResult>>,
}

impl ReplyBody {
    /// A body of `bytes` (an answer made outside any worker).
    pub fn full(bytes: Bytes) -> Self {
        let ready = if bytes.is_empty() { VecDeque::new() } else { VecDeque::from([Ok(Frame::data(bytes))]) };
        Self { ready, rest: None }
    }

    /// A body that fails at once (the stream was reset).
    pub fn reset() -> Self {
        Self { ready: VecDeque::from([Err("stream reset by a filter".into())]), rest: None }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        if let Some(frame) = self.ready.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => rest.poll_recv(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Exact only for plain data: a failing frame must reach the server (which then resets the
        // stream, not end a response whose length it was told), and HTTP/1 drops trailers after
        // a known length.
        let plain_data = self.ready.iter().all(|frame| frame.as_ref().is_ok_and(Frame::is_data));
        if self.rest.is_some() || !plain_data {
            return SizeHint::default();
        }
        let length = self.ready.iter().filter_map(|f| f.as_ref().ok()?.data_ref()).map(|d| d.len() as u64).sum();
        SizeHint::with_exact(length)
    }
}

/// Requests one worker may have waiting before a layer's call waits for room.
pub const INBOX_REQUESTS: usize = 1024;

/// Makes the application's side of each request on a socket the workers serve in place: called
/// on the worker, with the client's address.
pub type ApplicationFactory = Arc<dyn Fn(Option<SocketAddr>) -> Application + Send + Sync>;

/// A socket every worker accepts from itself, its requests answered by the application in place
/// of the listener's clusters ([`InProcessInbox::serve_in_place`]).
pub struct InPlaceListener {
    /// Which listener's chain (index in the bootstrap's listeners).
    pub(crate) listener: usize,
    /// This worker's handle on the socket.
    pub(crate) socket: std::net::TcpListener,
    /// The application's side of each request.
    pub(crate) application: ApplicationFactory,
    /// Set when the application stops serving: accepting stops, connections drain.
    pub(crate) stop: watch::Receiver<bool>,
    /// Held while this worker accepts from the socket or has a connection from it open.
    pub(crate) serving: mpsc::Sender<Infallible>,
}

/// A worker's side of the in-process hand-over: the layers' requests, the sockets it serves in
/// place, and who it is (so a request handed over from its own thread stays on it).
pub struct InProcessIntake {
    pub(crate) requests: mpsc::Receiver<InProcessRequest>,
    pub(crate) in_place: mpsc::UnboundedReceiver<InPlaceListener>,
    pub(crate) worker: WorkerIdentity,
}

/// One worker of one set of in-process filters (a process may run several, say one per service
/// in a test).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct WorkerIdentity {
    filters: u64,
    index: usize,
}

thread_local! {
    /// The worker this thread is, if it is one.
    static CURRENT_WORKER: Cell<Option<WorkerIdentity>> = const { Cell::new(None) };
}

impl WorkerIdentity {
    /// Marks the calling thread as this worker, for the rest of its life.
    pub(crate) fn enter(self) {
        CURRENT_WORKER.with(|current| current.set(Some(self)));
    }
}

/// Numbers each set of in-process filters in this process.
static NEXT_FILTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Where layers hand requests to the workers: one bounded inbox per worker, taken in turn (or
/// the calling worker's own); and where sockets to serve in place go to every worker.
#[derive(Clone)]
pub struct InProcessInbox {
    workers: Arc<[mpsc::Sender<InProcessRequest>]>,
    in_place: Arc<[mpsc::UnboundedSender<InPlaceListener>]>,
    filters: u64,
    next: Arc<AtomicUsize>,
    listeners: Arc<[String]>,
}

/// The workers have stopped: the filters no longer take requests.
#[derive(Debug, thiserror::Error)]
#[error("the in-process filters have stopped")]
pub struct Stopped(pub Box<InProcessRequest>);

/// Why a socket cannot be served in place.
#[derive(Debug, thiserror::Error)]
pub enum InPlaceError {
    /// The socket could not be shared with the workers.
    #[error("sharing the socket with the filter workers: {0}")]
    Socket(#[source] std::io::Error),
    /// The workers have stopped.
    #[error("the in-process filters have stopped")]
    Stopped,
}

/// The workers serving a socket in place: [`Self::finished`] resolves once every worker stopped
/// accepting from it and its last connection closed.
pub struct InPlaceServing {
    serving: mpsc::Receiver<Infallible>,
}

impl InPlaceServing {
    /// Waits until no worker accepts from the socket or holds a connection from it.
    pub async fn finished(mut self) {
        while self.serving.recv().await.is_some() {}
    }
}

impl std::fmt::Debug for InProcessRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessRequest").field("listener", &self.listener).finish_non_exhaustive()
    }
}

impl InProcessInbox {
    /// The inboxes for `workers` workers: what the layers use, and what each worker takes.
    pub(crate) fn new(workers: usize, listeners: Vec<String>) -> (Self, Vec<InProcessIntake>) {
        let filters = NEXT_FILTERS.fetch_add(1, Ordering::Relaxed);
        let mut senders = Vec::with_capacity(workers);
        let mut in_place = Vec::with_capacity(workers);
        let mut intakes = Vec::with_capacity(workers);
        for index in 0..workers {
            let (tx, requests) = mpsc::channel(INBOX_REQUESTS);
            let (in_place_tx, in_place_rx) = mpsc::unbounded_channel();
            senders.push(tx);
            in_place.push(in_place_tx);
            intakes.push(InProcessIntake {
                requests,
                in_place: in_place_rx,
                worker: WorkerIdentity { filters, index },
            });
        }
        let inbox = Self {
            workers: senders.into(),
            in_place: in_place.into(),
            filters,
            next: Arc::default(),
            listeners: listeners.into(),
        };
        (inbox, intakes)
    }

    /// The index of listener `name` (what [`InProcessRequest::listener`] takes).
    pub fn listener_index(&self, name: &str) -> Option<usize> {
        self.listeners.iter().position(|listener| listener == name)
    }

    /// Hands `request` to a worker, waiting while its inbox is full: the calling thread's own
    /// when it is one of these workers (no wake-up crosses a thread), the next in turn otherwise.
    pub async fn send(&self, request: InProcessRequest) -> Result<(), Stopped> {
        let own = CURRENT_WORKER.with(Cell::get).filter(|worker| worker.filters == self.filters);
        let index = match own {
            Some(worker) => worker.index,
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len().max(1),
        };
        let Some(worker) = self.workers.get(index) else { return Err(Stopped(Box::new(request))) };
        worker.send(request).await.map_err(|refused| Stopped(Box::new(refused.0)))
    }

    /// Has every worker accept connections from `socket` itself and serve them through
    /// `listener`'s chain as a sidecar listener's, a route to a cluster calling `application`
    /// on the worker's thread, until `stop` is set (then the connections drain, as at shutdown)
    /// or the filters shut down.
    pub fn serve_in_place(
        &self,
        listener: usize,
        socket: &std::net::TcpListener,
        application: ApplicationFactory,
        stop: watch::Receiver<bool>,
    ) -> Result<InPlaceServing, InPlaceError> {
        socket.set_nonblocking(true).map_err(InPlaceError::Socket)?;
        let (serving, finished) = mpsc::channel(1);
        let handles = self
            .in_place
            .iter()
            .map(|_| socket.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(InPlaceError::Socket)?;
        for (worker, socket) in self.in_place.iter().zip(handles) {
            let listener = InPlaceListener {
                listener,
                socket,
                application: application.clone(),
                stop: stop.clone(),
                serving: serving.clone(),
            };
            worker.send(listener).map_err(|_| InPlaceError::Stopped)?;
        }
        Ok(InPlaceServing { serving: finished })
    }
}

/// Serves one in-process request on this worker, until its answer's body is handed over whole
/// or the application stops reading it (the worker counts it open until then, and drops it at
/// the drain timeout).
pub(crate) async fn serve(ctx: Rc<ListenerContext>, request: InProcessRequest, id: u64) {
    let InProcessRequest { request, peer, local, application, mut reply, .. } = request;
    let conn = Rc::new(ConnectionInfo { peer, local, id, tunnel: Default::default() });
    // The application stopped waiting (its client went away): the stream is dropped here, which
    // ends it as a client gone away ends a sidecar's.
    if reply.is_closed() {
        // Its client went away while it waited in the inbox: no filter sees it.
        return;
    }
    let served = tokio::select! {
        biased;
        () = reply.closed() => return,
        served = handler::serve(ctx, conn, request, Some(application)) => served,
    };
    let response = match served {
        Ok(response) => response,
        Err(handler::StreamReset) => {
            let _ = reply.send(InProcessReply::Reset);
            return;
        }
    };
    let (parts, mut body) = response.into_parts();
    let mut ready = VecDeque::new();
    let mut ready_bytes = 0;
    // Most answers are whole once their head is: sent at once, with no channel or task. Bounded:
    // a body that is always ready (a large or endless stream) goes on through the channel, so it
    // neither holds the worker's thread nor gathers in memory.
    let ended = loop {
        if ready.len() >= CHANNEL_FRAMES || ready_bytes >= READY_BYTES {
            break false;
        }
        match body.as_mut().poll_frame(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Some(frame)) => {
                let failed = frame.is_err();
                ready_bytes += frame.as_ref().ok().and_then(Frame::data_ref).map_or(0, Bytes::len);
                ready.push_back(frame);
                if failed {
                    break true;
                }
            }
            Poll::Ready(None) => break true,
            Poll::Pending => break false,
        }
    };
    if ended {
        let _ = reply.send(InProcessReply::Response(Response::from_parts(parts, ReplyBody { ready, rest: None })));
        return;
    }
    let (tx, rest) = mpsc::channel(CHANNEL_FRAMES);
    let head = Response::from_parts(parts, ReplyBody { ready, rest: Some(rest) });
    if reply.send(InProcessReply::Response(head)).is_ok() {
        // Ends as soon as the application drops the body (its client went away), not at the next
        // frame: an idle stream (server-sent events) would otherwise stay open until shutdown.
        tokio::select! {
            () = forward_body(body, &tx) => {}
            () = tx.closed() => {}
        }
    }
}

/// Most bytes of a response body sent with its head; the rest goes through the channel.
const READY_BYTES: usize = 64 << 10;

/// Moves `body`'s frames to the application's side until it ends or nobody reads it.
async fn forward_body(mut body: ResponseBody, tx: &mpsc::Sender<FrameResult>) {
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let failed = frame.is_err();
        if tx.send(frame).await.is_err() || failed {
            return;
        }
    }
}
