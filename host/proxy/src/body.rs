//! Message bodies the proxy produces: a channel-fed streaming body (filtered request data, which
//! the upstream connection's task reads), a body that runs its own pump as it is polled
//! (filtered response data, read on the worker's thread), and boxing helpers.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use crate::BoxError;

/// The body of a request sent upstream: the upstream connection runs on its own task, so it
/// must be `Send`.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The body of every response the proxy sends downstream. The downstream connection is served
/// on the worker's thread, so the body need not be `Send`: a filtered body runs the filters in
/// place as hyper polls it.
pub type ResponseBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>;

/// One frame of a body, or the error that ends it.
pub type FrameResult = Result<Frame<Bytes>, BoxError>;

/// How many frames may wait between a pump and the connection (backpressure: a slow reader
/// slows the pump, which slows the reads from the other side).
pub const CHANNEL_FRAMES: usize = 4;

/// The reader of a pump's frames went away.
#[derive(Debug)]
pub struct ReaderGone;

/// Where a body pump delivers the frames the filters let through.
pub trait FrameSink {
    /// Delivers `frame`, waiting while the reader has not taken the previous ones.
    fn deliver(&self, frame: FrameResult) -> impl Future<Output = Result<(), ReaderGone>>;
}

/// A body fed frame by frame through a channel.
pub struct ChannelBody {
    frames: mpsc::Receiver<FrameResult>,
}

/// The sending half of a [`ChannelBody`].
pub type FrameSender = mpsc::Sender<FrameResult>;

impl ChannelBody {
    /// A body and the sender that feeds it; dropping the sender ends the body.
    pub fn new() -> (FrameSender, Self) {
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        (tx, Self { frames: rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        self.frames.poll_recv(cx)
    }
}

impl FrameSink for FrameSender {
    async fn deliver(&self, frame: FrameResult) -> Result<(), ReaderGone> {
        self.send(frame).await.map_err(|_| ReaderGone)
    }
}

/// The one frame a [`PumpedBody`]'s pump has produced and its reader not yet taken.
#[derive(Default)]
pub struct FrameSlot(RefCell<Option<FrameResult>>);

impl FrameSink for Rc<FrameSlot> {
    /// Pending while the slot is full. No waker is needed: only the body polls its pump, and it
    /// empties the slot before it polls again.
    async fn deliver(&self, frame: FrameResult) -> Result<(), ReaderGone> {
        let mut frame = Some(frame);
        std::future::poll_fn(|_| {
            let mut slot = self.0.borrow_mut();
            if slot.is_some() {
                return Poll::Pending;
            }
            *slot = frame.take();
            Poll::Ready(Ok(()))
        })
        .await
    }
}

/// A body whose frames come from a pump future polled in place, inside the downstream
/// connection's task, whenever hyper asks for data: no task, channel or wake-up per stream,
/// and a response whose body is ready goes out with its head in one write. Dropping the body
/// drops the pump (which must then finish the stream itself, from its own drop).
pub struct PumpedBody {
    slot: Rc<FrameSlot>,
    pump: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

impl PumpedBody {
    /// A body fed by `pump`, which delivers into `slot`.
    pub fn new(slot: Rc<FrameSlot>, pump: impl Future<Output = ()> + 'static) -> Self {
        Self { slot, pump: Some(Box::pin(pump)) }
    }
}

impl Body for PumpedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        loop {
            if let Some(frame) = self.slot.0.borrow_mut().take() {
                return Poll::Ready(Some(frame));
            }
            let Some(pump) = self.pump.as_mut() else { return Poll::Ready(None) };
            match pump.as_mut().poll(cx) {
                Poll::Ready(()) => self.pump = None,
                // Waiting for the other side (or a filter), unless it just filled the slot.
                Poll::Pending if self.slot.0.borrow().is_none() => return Poll::Pending,
                Poll::Pending => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pump.is_none() && self.slot.0.borrow().is_none()
    }
}

/// A body whose trailers pass or are dropped: Envoy's HTTP/1 codec drops trailers, reading and
/// writing, unless `http_protocol_options.enable_trailers` is on. Dropped trailers end the body
/// (the other side sees the end of the data, no trailers).
pub struct TrailerGate<B> {
    inner: B,
    keep: bool,
    ended: bool,
}

impl<B> TrailerGate<B> {
    /// `inner`, with its trailers kept when `keep`.
    pub fn new(inner: B, keep: bool) -> Self {
        Self { inner, keep, ended: false }
    }
}

impl<B: Body + Unpin> Body for TrailerGate<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() && !self.keep => {
                self.ended = true;
                Poll::Ready(None)
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A complete response body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Box::pin(Full::new(bytes.into()).map_err(|never| match never {}))
}

/// Any body with boxable errors, boxed as a response body.
pub fn response_body<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    Box::pin(body.map_err(Into::into))
}

/// Any sendable body with boxable errors, boxed as an upstream request body.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
