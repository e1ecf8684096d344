//! gRPC callouts on a worker (`proxy_grpc_call`, `proxy_grpc_stream`): an HTTP/2 request to the
//! named cluster through the worker's pooled client, length-prefixed messages both ways, and
//! what arrives delivered to the VM on the same thread as Envoy's Wasm host delivers it.
//!
//! Envoy's behaviour, which this follows: a unary call reports only its end, as the one message
//! (status OK) or as a close with the status; a stream reports the response headers as initial
//! metadata (empty for a trailers-only answer), each message, the trailers, then the close. A
//! non-200 answer closes with the status the gRPC spec maps it to (`grpc-status` wins in a
//! trailers-only answer); a timeout closes with `DEADLINE_EXCEEDED`; no connection with
//! `UNAVAILABLE`; a reset with `INTERNAL`.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use wasmtrace_runtime::{
    DispatchError, GrpcCallControl, GrpcCallKind, GrpcCallRequest, GrpcEvent, GrpcEvents, GrpcSendError, HeaderMap,
    grpc_status as status,
};

use crate::BoxError;
use crate::body::boxed;
use crate::callouts::MAX_CALLOUT_BODY;
use crate::cluster::ClusterClient;
use crate::message::{http_headers, response_header_map, trailer_map};
use crate::rescue::UpstreamFailure;
use crate::stats::ClusterStats;

/// Largest message delivered to a filter; a larger one closes the call with
/// `RESOURCE_EXHAUSTED`.
pub const MAX_GRPC_MESSAGE: usize = MAX_CALLOUT_BODY;

/// Most bytes a stream keeps waiting to be sent while the upstream does not read; a send past
/// it is refused (`BAD_ARGUMENT`), so a guest cannot fill the worker's memory.
pub const MAX_SEND_BACKLOG: usize = 16 << 20;

/// Most bytes of `grpc-message` delivered to a filter.
const MAX_STATUS_MESSAGE: usize = 1024;

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
    let backlog = Arc::new(AtomicUsize::new(0));
    let (body, sender, timeout, unary) = match &request.kind {
        GrpcCallKind::Unary { message, timeout } => {
            (boxed(Full::new(frame(message)).map_err(|never| match never {})), None, *timeout, true)
        }
        GrpcCallKind::Stream => {
            let (sender, receiver) = mpsc::unbounded_channel();
            let body = Outbound { receiver, backlog: Arc::clone(&backlog) };
            (boxed(body), Some(sender), None, false)
        }
    };
    let upstream = upstream_request(&request, body, timeout)
        .map_err(|why| DispatchError::Refused(format!("the gRPC request cannot be built: {why}")))?;
    let task = tokio::task::spawn_local(async move {
        if let Some(stats) = &stats {
            stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        let ending = match timeout {
            Some(limit) => tokio::time::timeout(limit, exchange(&client, upstream, &events, unary))
                .await
                .unwrap_or_else(|_| Ending::Close(status::DEADLINE_EXCEEDED, format!("timeout after {limit:?}"))),
            None => exchange(&client, upstream, &events, unary).await,
        };
        if let (Ending::Close(code, _), Some(stats)) = (&ending, &stats)
            && *code != status::OK
        {
            stats.failure(if *code == status::DEADLINE_EXCEEDED { "timeout" } else { "grpc_status" });
        }
        match ending {
            Ending::Message(message) => events.deliver(GrpcEvent::Message(message)),
            Ending::Close(code, message) => events.deliver(GrpcEvent::Close { status: code, message }),
            Ending::Delivered => false,
        };
    });
    Ok(Box::new(Control { sender: RefCell::new(sender), unary, backlog, task: task.abort_handle() }))
}

/// How a call ends, for the last event.
enum Ending {
    /// A unary call's answer.
    Message(Vec<u8>),
    /// The status the call closes with.
    Close(u32, String),
    /// Everything was delivered already (or the guest stopped listening).
    Delivered,
}

fn upstream_request(
    request: &GrpcCallRequest,
    body: crate::cluster::UpstreamBody,
    timeout: Option<Duration>,
) -> Result<Request<crate::cluster::UpstreamBody>, http::Error> {
    let uri: Uri = format!("http://{}/{}/{}", request.authority, request.service, request.method).parse()?;
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

/// `grpc-timeout` for `limit`: at most eight digits, in milliseconds or, beyond, seconds.
fn grpc_timeout(limit: Duration) -> String {
    let millis = limit.as_millis();
    if millis < 100_000_000 { format!("{millis}m") } else { format!("{}S", limit.as_secs().min(99_999_999)) }
}

/// One message with the gRPC length prefix (uncompressed).
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(message);
    framed.freeze()
}

async fn exchange(
    client: &ClusterClient,
    upstream: Request<crate::cluster::UpstreamBody>,
    events: &GrpcEvents,
    unary: bool,
) -> Ending {
    let response = match client.client.request(upstream).await {
        Ok(response) => response,
        Err(e) => {
            let (code, why) = match UpstreamFailure::from_client_error(&e) {
                UpstreamFailure::Connect(why) => (status::UNAVAILABLE, format!("connection failure: {why}")),
                UpstreamFailure::Timeout(after) => (status::DEADLINE_EXCEEDED, format!("timeout after {after:?}")),
                UpstreamFailure::Reset(why) => (status::UNAVAILABLE, format!("reset: {why}")),
            };
            return Ending::Close(code, why);
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
    let headers_as_trailers = || trailer_map(&parts.headers);
    if parts.status != StatusCode::OK {
        if trailers_only && parts.headers.contains_key("grpc-status") {
            return finish(events, unary, None, headers_as_trailers());
        }
        return Ending::Close(
            http_to_grpc(parts.status),
            format!("the upstream answered HTTP {} instead of gRPC", parts.status.as_u16()),
        );
    }
    if trailers_only {
        return finish(events, unary, None, headers_as_trailers());
    }
    let mut decoder = MessageDecoder::default();
    let mut answer = None;
    loop {
        let frame = match body.frame().await {
            None => return Ending::Close(status::INTERNAL, "the upstream ended the stream without trailers".into()),
            Some(Err(e)) => return Ending::Close(status::INTERNAL, format!("the stream was reset: {e}")),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                decoder.buffer.extend_from_slice(&data);
                while let Some(message) = decoder.next() {
                    match message {
                        Err((code, why)) => return Ending::Close(code, why),
                        Ok(message) if unary => {
                            answer.get_or_insert(message);
                        }
                        Ok(message) => {
                            if !events.deliver(GrpcEvent::Message(message)) {
                                return Ending::Delivered;
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
            (status::OK, None) => Ending::Close(status::INTERNAL, "the answer carried no message".into()),
            (code, _) => Ending::Close(code, message),
        };
    }
    if !events.deliver(GrpcEvent::TrailingMetadata(trailers)) {
        return Ending::Delivered;
    }
    Ending::Close(code, message)
}

/// The gRPC status for an HTTP status (gRPC's `http-grpc-status-mapping`).
fn http_to_grpc(http: StatusCode) -> u32 {
    match http.as_u16() {
        400 => status::INTERNAL,
        401 => status::UNAUTHENTICATED,
        403 => status::PERMISSION_DENIED,
        404 => status::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => status::UNAVAILABLE,
        _ => status::UNKNOWN,
    }
}

/// `grpc-message` is percent-encoded UTF-8; what is not valid comes out lossily, bounded.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len().min(MAX_STATUS_MESSAGE));
    let mut rest = raw;
    while let Some((&first, tail)) = rest.split_first() {
        if out.len() >= MAX_STATUS_MESSAGE {
            break;
        }
        let hex = |b: u8| char::from(b).to_digit(16);
        match (first, tail) {
            (b'%', [high, low, more @ ..]) if hex(*high).is_some() && hex(*low).is_some() => {
                out.push((hex(*high).unwrap_or(0) * 16 + hex(*low).unwrap_or(0)) as u8);
                rest = more;
            }
            _ => {
                out.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a response body into messages.
#[derive(Default)]
struct MessageDecoder {
    buffer: BytesMut,
}

impl MessageDecoder {
    /// The next whole message, or the status a malformed one closes the call with.
    fn next(&mut self) -> Option<Result<Vec<u8>, (u32, String)>> {
        let header: [u8; 5] = self.buffer.get(..5)?.try_into().ok()?;
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if header[0] & 1 == 1 {
            return Some(Err((status::INTERNAL, "a compressed message, though no compression was offered".into())));
        }
        if length > MAX_GRPC_MESSAGE {
            return Some(Err((
                status::RESOURCE_EXHAUSTED,
                format!("a message of {length} bytes; the most delivered is {MAX_GRPC_MESSAGE}"),
            )));
        }
        if self.buffer.len() < 5 + length {
            return None;
        }
        self.buffer.advance(5);
        Some(Ok(self.buffer.split_to(length).to_vec()))
    }
}

/// The guest's hold on a call: sends go into the request body's channel.
struct Control {
    /// `None` once half-closed, and always for a unary call.
    sender: RefCell<Option<mpsc::UnboundedSender<Bytes>>>,
    unary: bool,
    /// Bytes sent and not yet taken by the connection (shared with [`Outbound`]).
    backlog: Arc<AtomicUsize>,
    task: AbortHandle,
}

impl GrpcCallControl for Control {
    fn send(&self, message: Vec<u8>, end_stream: bool) -> Result<(), GrpcSendError> {
        let mut sender = self.sender.borrow_mut();
        let Some(channel) = sender.as_ref() else {
            return Err(if self.unary { GrpcSendError::Unary } else { GrpcSendError::Closed });
        };
        let queued = self.backlog.load(Ordering::Relaxed);
        if queued.saturating_add(message.len()) > MAX_SEND_BACKLOG {
            return Err(GrpcSendError::Backlog { queued, limit: MAX_SEND_BACKLOG });
        }
        let framed = frame(&message);
        let size = framed.len();
        channel.send(framed).map_err(|_| GrpcSendError::Closed)?;
        self.backlog.fetch_add(size, Ordering::Relaxed);
        if end_stream {
            *sender = None;
        }
        Ok(())
    }

    fn close(&self) {
        self.sender.borrow_mut().take();
    }

    fn cancel(&self) {
        self.task.abort();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream's request body: the messages the guest sends, ended when it half-closes.
struct Outbound {
    receiver: mpsc::UnboundedReceiver<Bytes>,
    backlog: Arc<AtomicUsize>,
}

impl Body for Outbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.receiver.poll_recv(cx).map(|message| {
            message.map(|message| {
                self.backlog.fetch_sub(message.len(), Ordering::Relaxed);
                Ok(Frame::data(message))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_frames_come_out_whole() {
        let mut decoder = MessageDecoder::default();
        let wire = [frame(b"first"), frame(b""), frame(b"third")].concat();
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            decoder.buffer.extend_from_slice(chunk);
            while let Some(message) = decoder.next() {
                got.push(message.ok());
            }
        }
        assert_eq!(got, [Some(b"first".to_vec()), Some(Vec::new()), Some(b"third".to_vec())]);
    }

    #[test]
    fn a_huge_or_compressed_message_closes_the_call() {
        let mut decoder = MessageDecoder::default();
        decoder.buffer.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(decoder.next(), Some(Err((status::RESOURCE_EXHAUSTED, _)))));
        let mut decoder = MessageDecoder::default();
        decoder.buffer.extend_from_slice(&[1, 0, 0, 0, 1, 7]);
        assert!(matches!(decoder.next(), Some(Err((status::INTERNAL, _)))));
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(percent_decode(b"not%20allowed%3A%20%E2%9C%93"), "not allowed: \u{2713}");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(&[b'a'; 5000]).len(), MAX_STATUS_MESSAGE);
    }

    #[test]
    fn timeouts_fit_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn http_statuses_map_as_grpc_says() {
        assert_eq!(http_to_grpc(StatusCode::NOT_FOUND), status::UNIMPLEMENTED);
        assert_eq!(http_to_grpc(StatusCode::SERVICE_UNAVAILABLE), status::UNAVAILABLE);
        assert_eq!(http_to_grpc(StatusCode::IM_A_TEAPOT), status::UNKNOWN);
    }
}
