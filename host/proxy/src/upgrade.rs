//! HTTP/1.1 upgrades (WebSocket, or any protocol a listener's `upgrade_configs` names), carried
//! as Envoy's connection manager carries them.
//!
//! - [`requested`] tells an upgrade request (HTTP/1.1, `Connection: upgrade`, an `Upgrade`
//!   header other than `h2c`) as Envoy's `isUpgrade` does; its `Connection` and `Upgrade` then go
//!   upstream verbatim ([`crate::message::Hop::Upgrade`]).
//! - [`allowed`] decides, from the connection manager's `upgrade_configs` and the route's, whether
//!   the upgrade goes on and through which filters (Envoy's `createUpgradeFilterChain`); a refused
//!   upgrade on a routed request is answered 403 `upgrade_failed` and the connection closed.
//! - The filters see the request headers (not the end of the stream: the upgraded bytes follow)
//!   and the upstream's `101`. Once both sides switched, [`tunnel`] carries the bytes each way as
//!   body data through the filters' body callbacks (request body client → upstream, response
//!   body upstream → client), as Envoy does; a side that closes ends that direction's body. The
//!   stream ends (`on_log`) when the response ended (the upstream closed: as Envoy resets a stream
//!   whose response completed before its request, the client's connection is closed too; a client
//!   that closes first only ends the request body, and the upstream decides), a side failed, a
//!   filter stopped it, or nothing moved for the listener's `stream_idle_timeout`.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::UPGRADE;
use http_body::{Body, Frame};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use wasmtrace_config::{HttpConnectionManager, RouteUpgrade, UpgradeFilters};
use wasmtrace_runtime::Direction;

use crate::body::{CHANNEL_FRAMES, FrameResult};
use crate::handler::{StreamEnd, pump_upgraded};
use crate::message::is_upgrade;
use crate::stats::ListenerStats;

/// The upgrade a request asks for, lower-cased (`websocket`), or `None` for a plain request. An
/// `h2c` upgrade is not one (Envoy strips it and serves the request as HTTP/1.1), and neither is
/// anything over HTTP/2 (which has no `Upgrade`).
pub fn requested(parts: &http::request::Parts) -> Option<String> {
    if parts.version != http::Version::HTTP_11 || !is_upgrade(&parts.headers) {
        return None;
    }
    let kind = parts.headers.get(UPGRADE)?.to_str().ok()?.trim().to_ascii_lowercase();
    (kind != "h2c" && !kind.is_empty()).then_some(kind)
}

/// Whether upgrade `kind` goes on, and through which filters: a route that names the upgrade
/// decides (its `enabled`), else the connection manager's `upgrade_configs` (an upgrade it does
/// not list is refused). A route may enable an upgrade the connection manager does not list; it
/// then runs the listener's filters. `None`: refused.
pub fn allowed(http: &HttpConnectionManager, route: &[RouteUpgrade], kind: &str) -> Option<UpgradeFilters> {
    let on_route = route.iter().find(|u| u.upgrade_type == kind).map(|u| u.enabled);
    if on_route == Some(false) {
        return None;
    }
    let configured = http.upgrade_configs.iter().find(|u| u.upgrade_type == kind);
    match configured {
        Some(config) if config.enabled || on_route == Some(true) => Some(config.filters),
        None if on_route == Some(true) => Some(UpgradeFilters::Listener),
        _ => None,
    }
}

/// The client's side of an upgrade the filters let through, waiting for the upstream's `101`.
pub struct PendingUpgrade {
    /// Resolves to the client's connection once its `101` is written.
    pub downstream: OnUpgrade,
}

/// Most bytes read from one side before they go through the filters as one body chunk.
const READ_CHUNK: usize = 16 << 10;

/// One side of a tunnel read as a body: every read is a data frame, the end of the stream (the
/// peer's half-close) is the end of the body. Each read records that bytes moved.
struct ReadBody<R> {
    reader: R,
    buffer: Box<[u8; READ_CHUNK]>,
    ended: bool,
    activity: Rc<Cell<Instant>>,
}

impl<R: AsyncRead + Unpin> Body for ReadBody<R> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut buf = ReadBuf::new(&mut this.buffer[..]);
        match Pin::new(&mut this.reader).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => {
                this.ended = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Ok(())) => {
                this.activity.set(Instant::now());
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(buf.filled())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// Writes what a direction's pump lets through to the other side, then half-closes it. `Err`
/// when the pump failed the stream or the write failed.
async fn write_frames<W: AsyncWrite + Unpin>(mut frames: mpsc::Receiver<FrameResult>, mut writer: W) -> Result<(), ()> {
    while let Some(frame) = frames.recv().await {
        let Ok(data) = frame.map_err(drop)?.into_data() else { continue };
        writer.write_all(&data).await.map_err(drop)?;
        writer.flush().await.map_err(drop)?;
    }
    writer.shutdown().await.map_err(drop)
}

/// One direction of a tunnel: `reader`'s bytes through the filters of `direction` into
/// `writer`. `Err` when it failed or a filter stopped the stream.
async fn carry<R, W>(
    end: &StreamEnd,
    direction: Direction,
    reader: R,
    writer: W,
    activity: Rc<Cell<Instant>>,
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let body = ReadBody { reader, buffer: Box::new([0; READ_CHUNK]), ended: false, activity };
    let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
    let pumping = async move { pump_upgraded(end, body, &tx, direction).await };
    let (pumped, written) = tokio::join!(pumping, write_frames(rx, writer));
    if pumped { written } else { Err(()) }
}

/// Resolves when nothing moved for `limit` (never without a limit).
async fn idle_for(activity: &Cell<Instant>, limit: Option<Duration>) {
    let Some(limit) = limit else { return std::future::pending().await };
    loop {
        let Some(at) = activity.get().checked_add(limit) else { return std::future::pending().await };
        if at <= Instant::now() {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// Counts an upgraded stream as active while it lives.
struct ActiveUpgrade(Arc<ListenerStats>);

impl ActiveUpgrade {
    fn new(stats: Arc<ListenerStats>) -> Self {
        stats.upgrades_total.fetch_add(1, Ordering::Relaxed);
        stats.upgrades_active.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for ActiveUpgrade {
    fn drop(&mut self) {
        self.0.upgrades_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Carries an upgraded stream once the client has its `101`: both directions at once, until the
/// response ended (the upstream's close passed on to the client, whose connection then closes),
/// a direction failed or a filter stopped it, or nothing moved for `idle`
/// (`stream_idle_timeout`). The client's close is passed on and the upstream's answer awaited.
/// The stream ends with `end` (dropped last, whatever happened: `on_log` runs once).
pub(crate) async fn tunnel(
    end: StreamEnd,
    downstream: OnUpgrade,
    upstream: Upgraded,
    idle: Option<Duration>,
    stats: Arc<ListenerStats>,
) {
    // The client went away (or the 101 was not written) before the switch: nothing to carry.
    let Ok(downstream) = downstream.await else { return };
    let _active = ActiveUpgrade::new(stats);
    let (client_read, client_write) = tokio::io::split(TokioIo::new(downstream));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let activity = Rc::new(Cell::new(Instant::now()));
    let requests = carry(&end, Direction::Request, client_read, upstream_write, activity.clone());
    let responses = carry(&end, Direction::Response, upstream_read, client_write, activity.clone());
    tokio::pin!(requests, responses);
    let mut requests_done = false;
    loop {
        tokio::select! {
            carried = &mut requests, if !requests_done => match carried {
                Ok(()) => requests_done = true,
                Err(()) => break,
            },
            // The response's end is the stream's end, whether or not the client finished.
            _ = &mut responses => break,
            () = idle_for(&activity, idle) => {
                tracing::debug!("closing an upgraded stream idle for its stream_idle_timeout");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtrace_config::UpgradeConfig;

    fn hcm(upgrades: &[(&str, bool)]) -> HttpConnectionManager {
        let yaml = r#"
static_resources:
  listeners:
    - name: l
      address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: l
                route_config: { virtual_hosts: [] }
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
        let mut http = wasmtrace_config::Bootstrap::from_yaml(yaml).expect("config").listeners.remove(0).http;
        http.upgrade_configs = upgrades
            .iter()
            .map(|(kind, enabled)| UpgradeConfig {
                upgrade_type: (*kind).to_owned(),
                enabled: *enabled,
                filters: UpgradeFilters::Listener,
            })
            .collect();
        http
    }

    fn route(upgrades: &[(&str, bool)]) -> Vec<RouteUpgrade> {
        upgrades
            .iter()
            .map(|(kind, enabled)| RouteUpgrade { upgrade_type: (*kind).to_owned(), enabled: *enabled })
            .collect()
    }

    #[test]
    fn a_route_overrides_the_connection_manager_as_envoys_table_says() {
        let on = hcm(&[("websocket", true)]);
        let off = hcm(&[("websocket", false)]);
        let none = hcm(&[]);
        assert!(allowed(&on, &[], "websocket").is_some(), "HCM on, route silent");
        assert!(allowed(&on, &route(&[("websocket", false)]), "websocket").is_none(), "HCM on, route off");
        assert!(allowed(&off, &route(&[("websocket", true)]), "websocket").is_some(), "HCM off, route on");
        assert!(allowed(&off, &[], "websocket").is_none(), "HCM off, route silent");
        assert!(allowed(&none, &[], "websocket").is_none(), "not configured anywhere");
        assert!(allowed(&none, &route(&[("websocket", true)]), "websocket").is_some(), "only the route");
        assert!(allowed(&on, &[], "spdy/3").is_none(), "another protocol");
    }

    #[test]
    fn only_an_http11_connection_upgrade_other_than_h2c_is_an_upgrade() {
        let parts = |version, connection: &'static str, upgrade: &'static str| {
            let request = http::Request::builder()
                .version(version)
                .header("connection", connection)
                .header("upgrade", upgrade)
                .body(())
                .expect("request");
            request.into_parts().0
        };
        assert_eq!(requested(&parts(http::Version::HTTP_11, "Upgrade", "WebSocket")).as_deref(), Some("websocket"));
        assert_eq!(requested(&parts(http::Version::HTTP_11, "Upgrade, HTTP2-Settings", "h2c")), None);
        assert_eq!(requested(&parts(http::Version::HTTP_11, "keep-alive", "websocket")), None);
        assert_eq!(requested(&parts(http::Version::HTTP_10, "upgrade", "websocket")), None);
    }
}
