//! How long a downstream connection may live and stay quiet: the HTTP connection manager's
//! `idle_timeout`, `request_headers_timeout`, `stream_idle_timeout` and
//! `max_connection_duration`, enforced per connection by one watchdog.
//!
//! hyper bounds the header phase of a request once its first byte arrived, but a connection
//! that never sends a byte, stops inside the HTTP/2 preface, or sits idle between requests is
//! kept by hyper forever. So every connection carries an [`Activity`]: its socket is wrapped in
//! [`ActivityIo`] (records when bytes last moved) and every stream holds a [`StreamGuard`]
//! (counts streams in flight). [`Activity::expired`] resolves when one of the limits is passed.
//! The records are relaxed atomics touched by one task only, so they cost a plain store.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use wasmtrace_config::ConnectionLimits;

/// Which limit closed a connection (the `kind` label of the timeout counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No stream for `idle_timeout`.
    Idle,
    /// The first request's headers did not arrive within `request_headers_timeout` of the accept.
    RequestHeaders,
    /// Streams in flight, but no byte moved for `stream_idle_timeout`.
    StreamIdle,
    /// Older than `max_connection_duration`.
    MaxDuration,
}

impl Expiry {
    /// Every limit, in the order of the stats' counters.
    pub const ALL: [Self; 4] = [Self::Idle, Self::RequestHeaders, Self::StreamIdle, Self::MaxDuration];

    /// The stats label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::RequestHeaders => "request_headers",
            Self::StreamIdle => "stream_idle",
            Self::MaxDuration => "max_connection_duration",
        }
    }

    /// Whether streams may still finish (drain: HTTP/2 GOAWAY, HTTP/1 close after the response)
    /// rather than the connection being closed at once.
    pub fn drains(self) -> bool {
        self == Self::MaxDuration
    }
}

/// What one connection has done, for its watchdog.
pub struct Activity {
    accepted: Instant,
    /// Nanoseconds after `accepted` when a byte last moved.
    last_io: AtomicU64,
    /// Nanoseconds after `accepted` when the last stream ended (0: none yet).
    idle_since: AtomicU64,
    streams: AtomicUsize,
    /// Streams opened so far.
    opened: AtomicU64,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            last_io: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            streams: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
        })
    }

    fn since_accept(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn at(&self, nanos: &AtomicU64) -> Instant {
        self.accepted + Duration::from_nanos(nanos.load(Ordering::Relaxed))
    }

    /// `from + limit`, or `None` (never) when that is past what an `Instant` can hold (a limit
    /// of centuries).
    fn after(from: Instant, limit: Duration) -> Option<Instant> {
        from.checked_add(limit)
    }

    fn touch(&self) {
        self.last_io.store(self.since_accept(), Ordering::Relaxed);
    }

    /// When this connection passes `max_connection_duration` (`None`: never).
    pub fn max_duration_at(&self, limits: &ConnectionLimits) -> Option<Instant> {
        limits.max_connection_duration.and_then(|limit| Self::after(self.accepted, limit))
    }

    /// A stream starts; it counts until the guard is dropped (with the response body).
    pub fn stream(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.touch();
        StreamGuard { activity: self.clone() }
    }

    /// The first limit this connection will pass, as things stand.
    fn next_expiry(&self, limits: &ConnectionLimits) -> Option<(Instant, Expiry)> {
        let mut next: Option<(Instant, Expiry)> = None;
        let mut consider = |from: Instant, limit: Option<Duration>, expiry: Expiry| {
            if let Some(at) = limit.and_then(|limit| Self::after(from, limit))
                && next.is_none_or(|(earliest, _)| at < earliest)
            {
                next = Some((at, expiry));
            }
        };
        consider(self.accepted, limits.max_connection_duration, Expiry::MaxDuration);
        if self.streams.load(Ordering::Relaxed) > 0 {
            consider(self.at(&self.last_io), limits.stream_idle_timeout, Expiry::StreamIdle);
        } else {
            if self.opened.load(Ordering::Relaxed) == 0 {
                consider(self.accepted, limits.request_headers_timeout, Expiry::RequestHeaders);
            }
            consider(self.at(&self.idle_since), limits.idle_timeout, Expiry::Idle);
        }
        next
    }

    /// Resolves when a limit is passed. Deadlines move with the activity, so this sleeps until
    /// the earliest deadline and looks again.
    pub async fn expired(&self, limits: &ConnectionLimits) -> Expiry {
        loop {
            let Some((at, expiry)) = self.next_expiry(limits) else {
                // Nothing bounds this connection; a stream ending may arm a limit again, so
                // look again now and then.
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            };
            if at <= Instant::now() {
                return expiry;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Holds one stream open in its connection's [`Activity`].
pub struct StreamGuard {
    activity: Arc<Activity>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let now = self.activity.since_accept();
        self.activity.last_io.store(now, Ordering::Relaxed);
        if self.activity.streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.activity.idle_since.store(now, Ordering::Relaxed);
        }
    }
}

/// A socket that records in its [`Activity`] when bytes move.
pub struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> ActivityIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its stream counted until it is sent or dropped.
pub struct GuardedBody<B> {
    inner: B,
    guard: StreamGuard,
}

impl<B> GuardedBody<B> {
    /// `inner`, holding `guard` until it ends.
    pub fn new(inner: B, guard: StreamGuard) -> Self {
        Self { inner, guard }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            self.guard.activity.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a connection past a limit gets to go away by itself before it is closed.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection past `max_connection_duration` may finish its streams.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            idle_timeout: Some(Duration::from_secs(30)),
            request_headers_timeout: Some(Duration::from_secs(2)),
            stream_idle_timeout: Some(Duration::from_secs(5)),
            max_connection_duration: None,
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_by_the_header_timeout() {
        let activity = Activity::new();
        assert_eq!(activity.expired(&limits()).await, Expiry::RequestHeaders);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_between_requests_expires_by_the_idle_timeout() {
        let activity = Activity::new();
        drop(activity.stream());
        tokio::time::advance(Duration::from_secs(10)).await;
        let started = Instant::now();
        assert_eq!(activity.expired(&limits()).await, Expiry::Idle);
        assert!(started.elapsed() >= Duration::from_secs(19));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_expires_by_the_stream_idle_timeout() {
        let activity = Activity::new();
        let _stream = activity.stream();
        assert_eq!(activity.expired(&limits()).await, Expiry::StreamIdle);
    }
}
