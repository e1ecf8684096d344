//! gRPC callouts on a worker (`proxy_grpc_call`, `proxy_grpc_stream`): an HTTP/2 request to the
//! named cluster through the worker's pooled client, length-prefixed messages both ways, and
//! what arrives delivered to the VM on the same thread as Envoy's Wasm host (its gRPC async
//! client) delivers it.
//!
//! Envoy's behaviour, which this follows: a unary call reports only its end, as its (last)
//! message on `OK` or as a close with the status; a stream reports the response headers as
//! initial metadata (empty for a trailers-only answer), each message, the trailers, then the
//! close. A non-200 answer closes with `CANCELLED` (as Envoy and the Google gRPC client do; the
//! `grpc-status` of a trailers-only answer wins); a broken frame with `INTERNAL`; a stream that
//! ends without trailers with `UNKNOWN`; a reset with `INTERNAL`; and each of those errors on a
//! stream first delivers empty trailing metadata, as Envoy's `streamError`. No connection closes
//! with `UNAVAILABLE` and a timeout with `DEADLINE_EXCEEDED`, what Envoy's gRPC-ified local
//! replies say.
//!
//! Bounds: what a VM's calls hold on the host (send backlogs, partly received messages, unary
//! request bodies) is charged to the VM's [`GrpcBudget`]; one message is at most
//! [`MAX_GRPC_MESSAGE`]. A cancelled or dropped call is reset (`RST_STREAM`), never half-closed.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use wasmtrace_runtime::{
    DispatchError, GrpcBudget, GrpcCallControl, GrpcCallKind, GrpcCallRequest, GrpcEvent, GrpcEvents, GrpcSendError,
    HeaderMap, grpc_status as status,
};

mod wire;

use crate::BoxError;
use crate::body::boxed;
use crate::cluster::{ClusterClient, UpstreamBody};
use crate::message::{http_headers, response_header_map, trailer_map};
use crate::rescue::UpstreamFailure;
use crate::stats::ClusterStats;
use wire::{MessageDecoder, frame, grpc_timeout, percent_decode};

/// Largest message delivered to a filter (gRPC's default receive limit); a larger one closes
/// the call with `RESOURCE_EXHAUSTED`.
pub const MAX_GRPC_MESSAGE: usize = 4 << 20;

/// Most bytes one stream keeps waiting to be sent while the upstream does not read; past it (or
/// past the VM's budget) the stream is reset and closes with `RESOURCE_EXHAUSTED`.
pub const MAX_SEND_BACKLOG: usize = 16 << 20;

/// Most bytes of `grpc-message` delivered to a filter.
const MAX_STATUS_MESSAGE: usize = 1024;

/// Messages delivered in a row before the worker's other tasks get a turn (a server can have a
/// whole flow-control window of tiny messages ready at once).
const MESSAGES_PER_TURN: usize = 32;

/// Bytes charged to a budget, given back when dropped.
struct Charge {
    budget: GrpcBudget,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Starts `request` on `client`; what arrives goes to `events`.
pub(crate) fn dispatch(
    client: ClusterClient,
    stats: Option<Arc<ClusterStats>>,
    request: GrpcCallRequest,
    events: GrpcEvents,
) -> Result<Box<dyn GrpcCallControl>, DispatchError> {
    if !client.cluster.http2 {
        return Err(DispatchError::Refused(format!(
            "cluster `{}` does not speak HTTP/2 (gRPC needs `http2_protocol_options`)",
            client.cluster.name
        )));
    }
    let shared = Arc::new(Shared::default());
    let budget = request.budget.clone();
    let (body, sender, timeout, unary, charge) = match &request.kind {
        GrpcCallKind::Unary { message, timeout } => {
            let bytes = message.len() + 5;
            if !budget.charge(bytes) {
                return Err(DispatchError::Refused(format!(
                    "the VM's gRPC calls already hold {} bytes; a {bytes}-byte request does not fit",
                    budget.used()
                )));
            }
            let charge = Charge { budget: budget.clone(), bytes };
            (boxed(Full::new(frame(message)).map_err(|never| match never {})), None, *timeout, true, Some(charge))
        }
        GrpcCallKind::Stream => {
            let (sender, receiver) = mpsc::unbounded_channel();
            let body = Outbound { receiver, shared: Arc::clone(&shared), budget: budget.clone() };
            (boxed(body), Some(sender), None, false, None)
        }
    };
    let upstream = upstream_request(&request, body, timeout).map_err(|why| {
        DispatchError::Refused(format!("the gRPC request cannot be built: {}", crate::error::chain(&why)))
    })?;
    let overflowed = Arc::clone(&shared);
    let task = tokio::task::spawn_local(async move {
        let _charge = charge;
        if let Some(stats) = &stats {
            stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        let exchange = exchange(&client, upstream, &events, unary, budget);
        let mut ending = match timeout {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .unwrap_or_else(|_| Ending::Close(status::DEADLINE_EXCEEDED, format!("timeout after {limit:?}"))),
            None => exchange.await,
        };
        if overflowed.overflowed.load(Ordering::Acquire) {
            let why = "the upstream did not read what the filter sent; the stream was reset".to_owned();
            ending = Ending::Error(status::RESOURCE_EXHAUSTED, why);
        }
        if let (Ending::Close(code, _) | Ending::Error(code, _), Some(stats)) = (&ending, &stats) {
            stats.failure(if *code == status::DEADLINE_EXCEEDED { "timeout" } else { "grpc_status" });
        }
        match ending {
            Ending::Message(message) => {
                events.deliver(GrpcEvent::Message(message));
            }
            Ending::Error(code, message) => {
                if unary || events.deliver(GrpcEvent::TrailingMetadata(HeaderMap::new())) {
                    events.deliver(GrpcEvent::Close { status: code, message });
                }
            }
            Ending::Close(code, message) => {
                events.deliver(GrpcEvent::Close { status: code, message });
            }
            Ending::Delivered => {}
        }
    });
    Ok(Box::new(Control {
        sender: RefCell::new(sender),
        unary,
        shared,
        budget: request.budget,
        task: task.abort_handle(),
    }))
}

/// How a call ends, for its last events.
enum Ending {
    /// A unary call's answer.
    Message(Vec<u8>),
    /// The call closes with this status; its trailers (if any) were delivered.
    Close(u32, String),
    /// The call failed: a stream first hears empty trailing metadata (Envoy's `streamError`).
    Error(u32, String),
    /// Everything was delivered already (or the guest stopped listening).
    Delivered,
}

/// Why a gRPC call's request cannot be built from what the guest gave.
#[derive(Debug, thiserror::Error)]
enum GrpcRequestError {
    /// The authority is not `host[:port]`.
    #[error("the authority is not host[:port]")]
    Authority(#[source] http::uri::InvalidUri),
    /// Service and method do not make a request path.
    #[error("service and method do not make a path")]
    Path(#[source] http::uri::InvalidUri),
    /// The request could not be assembled.
    #[error(transparent)]
    Http(#[from] http::Error),
}

fn upstream_request(
    request: &GrpcCallRequest,
    body: UpstreamBody,
    timeout: Option<Duration>,
) -> Result<Request<UpstreamBody>, GrpcRequestError> {
    // Built from checked parts: an authority with a path or query in it cannot change the path.
    let authority: Authority = request.authority.parse().map_err(GrpcRequestError::Authority)?;
    let path: PathAndQuery =
        format!("/{}/{}", request.service, request.method).parse().map_err(GrpcRequestError::Path)?;
    let uri = Uri::builder().scheme("http").authority(authority).path_and_query(path).build()?;
    let mut upstream = Request::builder().method("POST").uri(uri).version(Version::HTTP_2).body(body)?;
    let headers = upstream.headers_mut();
    *headers = http_headers(&request.initial_metadata);
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    headers.remove("grpc-encoding");
    if let Some(limit) = timeout
        && let Ok(value) = HeaderValue::from_str(&grpc_timeout(limit))
    {
        headers.insert("grpc-timeout", value);
    }
    Ok(upstream)
}

async fn exchange(
    client: &ClusterClient,
    upstream: Request<UpstreamBody>,
    events: &GrpcEvents,
    unary: bool,
    budget: GrpcBudget,
) -> Ending {
    let response = match client.client.request(upstream).await {
        Ok(response) => response,
        Err(e) => {
            let (code, why) = match UpstreamFailure::from_client_error(&e) {
                UpstreamFailure::Connect(why) => (status::UNAVAILABLE, format!("connection failure: {why}")),
                UpstreamFailure::Timeout(after) => (status::DEADLINE_EXCEEDED, format!("timeout after {after:?}")),
                UpstreamFailure::Reset(why) => (status::UNAVAILABLE, format!("reset: {why}")),
            };
            // Envoy answers with a trailers-only local reply: empty initial metadata first.
            if !unary && !events.deliver(GrpcEvent::InitialMetadata(HeaderMap::new())) {
                return Ending::Delivered;
            }
            return Ending::Error(code, why);
        }
    };
    let (parts, mut body) = response.into_parts();
    let trailers_only = body.is_end_stream();
    if !unary {
        let initial = if trailers_only { HeaderMap::new() } else { response_header_map(parts.status, &parts.headers) };
        if !events.deliver(GrpcEvent::InitialMetadata(initial)) {
            return Ending::Delivered;
        }
    }
    if trailers_only && (parts.status == StatusCode::OK || parts.headers.contains_key("grpc-status")) {
        return finish(events, unary, None, trailer_map(&parts.headers));
    }
    if parts.status != StatusCode::OK {
        let why = format!("the upstream answered HTTP {} instead of gRPC", parts.status.as_u16());
        return Ending::Error(status::CANCELLED, why);
    }
    let mut decoder = MessageDecoder::new(budget);
    let mut answer = None;
    let mut in_a_row = 0;
    loop {
        let frame = match body.frame().await {
            None => return Ending::Error(status::UNKNOWN, "the upstream ended the stream without trailers".into()),
            Some(Err(e)) => return Ending::Error(status::INTERNAL, format!("the stream was reset: {e}")),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if let Err(failed) = decoder.push(&data) {
                    return failed;
                }
                while let Some(message) = decoder.next() {
                    match message {
                        Err(failed) => return failed,
                        // Envoy keeps a unary call's last message.
                        Ok(message) if unary => answer = Some(message),
                        Ok(message) => {
                            if !events.deliver(GrpcEvent::Message(message)) {
                                return Ending::Delivered;
                            }
                            in_a_row += 1;
                            if in_a_row % MESSAGES_PER_TURN == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            return finish(events, unary, answer, trailer_map(&trailers));
        }
    }
}

/// The end as the trailers say: a stream hears the trailers, then the close; a unary call its
/// answer (status OK) or the close.
fn finish(events: &GrpcEvents, unary: bool, answer: Option<Vec<u8>>, trailers: HeaderMap) -> Ending {
    let code = trailers.get_str("grpc-status").and_then(|s| s.trim().parse::<u32>().ok()).unwrap_or(status::UNKNOWN);
    let message = trailers.get(b"grpc-message").map(percent_decode).unwrap_or_default();
    if unary {
        return match (code, answer) {
            (status::OK, Some(answer)) => Ending::Message(answer),
            (status::OK, None) => Ending::Close(status::INTERNAL, String::new()),
            (code, _) => Ending::Close(code, message),
        };
    }
    if !events.deliver(GrpcEvent::TrailingMetadata(trailers)) {
        return Ending::Delivered;
    }
    Ending::Close(code, message)
}

/// What a call's control and its request body share.
#[derive(Default)]
struct Shared {
    /// Bytes sent and not yet taken by the connection.
    backlog: AtomicUsize,
    /// Cancelled or dropped: the request body ends in an error, so the stream is reset.
    reset: AtomicBool,
    /// Reset because the upstream did not read: the call closes with `RESOURCE_EXHAUSTED`.
    overflowed: AtomicBool,
}

/// The guest's hold on a call: sends go into the request body's channel.
struct Control {
    /// `None` once half-closed, and always for a unary call.
    sender: RefCell<Option<mpsc::UnboundedSender<Bytes>>>,
    unary: bool,
    shared: Arc<Shared>,
    budget: GrpcBudget,
    task: AbortHandle,
}

impl Control {
    /// Ends the request body in an error (hyper resets the stream).
    fn reset(&self) {
        self.shared.reset.store(true, Ordering::Release);
        self.sender.borrow_mut().take();
    }
}

impl GrpcCallControl for Control {
    fn send(&self, message: &[u8], end_stream: bool) -> Result<(), GrpcSendError> {
        let Some(channel) = self.sender.borrow().clone() else {
            return Err(if self.unary { GrpcSendError::Unary } else { GrpcSendError::Closed });
        };
        let size = message.len() + 5;
        let queued = self.shared.backlog.load(Ordering::Acquire);
        if queued.saturating_add(size) > MAX_SEND_BACKLOG || !self.budget.charge(size) {
            // The task sees the flag when the reset ends its exchange, and closes the call.
            self.shared.overflowed.store(true, Ordering::Release);
            self.reset();
            return Err(GrpcSendError::Backlog { queued });
        }
        self.shared.backlog.fetch_add(size, Ordering::AcqRel);
        if channel.send(frame(message)).is_err() {
            self.shared.backlog.fetch_sub(size, Ordering::AcqRel);
            self.budget.release(size);
            return Err(GrpcSendError::Closed);
        }
        if end_stream {
            self.sender.borrow_mut().take();
        }
        Ok(())
    }

    fn close(&self) {
        self.sender.borrow_mut().take();
    }

    fn cancel(&self) {
        self.reset();
        self.task.abort();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.reset();
        self.task.abort();
    }
}

/// A stream's request body: the messages the guest sends, ended when it half-closes, failed
/// (so the stream is reset) when the call is cancelled.
struct Outbound {
    receiver: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Shared>,
    budget: GrpcBudget,
}

impl Body for Outbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(message)) => {
                self.shared.backlog.fetch_sub(message.len(), Ordering::AcqRel);
                self.budget.release(message.len());
                Poll::Ready(Some(Ok(Frame::data(message))))
            }
            Poll::Ready(None) if self.shared.reset.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err("the gRPC call was cancelled".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // What was sent and never taken goes back to the budget.
        self.receiver.close();
        while let Ok(message) = self.receiver.try_recv() {
            self.budget.release(message.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(ending: Option<Result<Vec<u8>, Ending>>) -> Option<u32> {
        match ending {
            Some(Err(Ending::Error(code, _))) => Some(code),
            _ => None,
        }
    }

    #[test]
    fn messages_split_across_frames_come_out_whole_and_give_their_budget_back() {
        let budget = GrpcBudget::new(1024);
        let mut decoder = MessageDecoder::new(budget.clone());
        let wire = [frame(b"first"), frame(b""), frame(b"third")].concat();
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            assert!(decoder.push(chunk).is_ok());
            while let Some(message) = decoder.next() {
                got.push(message.ok());
            }
        }
        assert_eq!(got, [Some(b"first".to_vec()), Some(Vec::new()), Some(b"third".to_vec())]);
        assert_eq!(budget.used(), 0);
        assert!(decoder.push(&[0, 0, 0]).is_ok());
        drop(decoder);
        assert_eq!(budget.used(), 0, "a partial message goes back when the call ends");
    }

    #[test]
    fn a_huge_or_flagged_message_or_a_full_budget_ends_the_call() {
        let mut decoder = MessageDecoder::new(GrpcBudget::new(1024));
        assert!(decoder.push(&[0, 0xff, 0xff, 0xff, 0xff]).is_ok());
        assert_eq!(code(decoder.next()), Some(status::RESOURCE_EXHAUSTED));
        let mut decoder = MessageDecoder::new(GrpcBudget::new(1024));
        assert!(decoder.push(&[1, 0, 0, 0, 1, 7]).is_ok());
        assert_eq!(code(decoder.next()), Some(status::INTERNAL), "compressed, though not offered");
        let mut decoder = MessageDecoder::new(GrpcBudget::new(1024));
        assert!(decoder.push(&[1, 0, 0, 0, 0]).is_ok());
        assert_eq!(decoder.next().and_then(Result::ok), Some(Vec::new()), "an empty message's flags, as Envoy");
        let mut decoder = MessageDecoder::new(GrpcBudget::new(4));
        assert!(matches!(decoder.push(&[0; 5]), Err(Ending::Error(status::RESOURCE_EXHAUSTED, _))));
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(percent_decode(b"not%20allowed%3A%20%E2%9C%93"), "not allowed: \u{2713}");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(&[b'a'; 5000]).len(), MAX_STATUS_MESSAGE);
        let long = "\u{2713}".repeat(600);
        assert!(percent_decode(long.as_bytes()).chars().all(|c| c == '\u{2713}'), "cut at a character boundary");
    }

    #[test]
    fn timeouts_fit_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }
}
