//! The client's request body as the stream reads it: failures recorded as the client's, HTTP/1
//! trailers dropped without `enable_trailers`, and an unread rest discarded after the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use crate::in_process::HopBody;

/// The client's request body; records whether it failed (a malformed chunk, a connection cut
/// before the announced length), so the failure is answered as the client's (400), not as the
/// upstream's.
///
/// Dropped before its end — the upstream answered early (a 413 before reading an upload) or a
/// filter replied locally — the rest is read and discarded, as Envoy does, so the client gets
/// the answer instead of a reset while it is still sending.
pub struct DownstreamBody {
    inner: Option<HopBody>,
    pub(crate) failed: Arc<AtomicBool>,
    /// Trailers pass (HTTP/2, or HTTP/1 with `enable_trailers`); otherwise they end the body.
    keep_trailers: bool,
}

/// Most of an unwanted request body read and discarded after the answer.
const DISCARD_BYTES: u64 = 64 << 20;
/// Longest an unwanted request body is read after the answer.
const DISCARD_TIME: Duration = Duration::from_secs(10);

impl DownstreamBody {
    pub(crate) fn new(inner: HopBody, keep_trailers: bool) -> Self {
        Self { inner: Some(inner), failed: Arc::new(AtomicBool::new(false)), keep_trailers }
    }
}

impl Drop for DownstreamBody {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take().filter(|body| !body.is_end_stream()) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let discard = async {
                let mut read = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, |data| data.len() as u64);
                    if read > DISCARD_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DISCARD_TIME, discard).await;
        });
    }
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        let Some(inner) = self.inner.as_mut() else { return std::task::Poll::Ready(None) };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Err(_))) => self.failed.store(true, Ordering::Relaxed),
            std::task::Poll::Ready(Some(Ok(frame))) if frame.is_trailers() && !self.keep_trailers => {
                // Dropped as Envoy's HTTP/1 codec drops them: the body just ends.
                self.inner = None;
                return std::task::Poll::Ready(None);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HopBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map(HopBody::size_hint).unwrap_or_default()
    }
}
