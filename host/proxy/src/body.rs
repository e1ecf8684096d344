//! Message bodies the proxy produces: a channel-fed streaming body (what filtered data flows
//! through), and boxing helpers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use crate::BoxError;

/// The body of every response the proxy sends downstream.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How many frames may wait between a pump and the connection (backpressure: a slow reader
/// slows the pump, which slows the reads from the other side).
pub const CHANNEL_FRAMES: usize = 4;

/// A body fed frame by frame through a channel.
pub struct ChannelBody {
    frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

/// The sending half of a [`ChannelBody`].
pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

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

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.frames.poll_recv(cx)
    }
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Any body with boxable errors, boxed.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
