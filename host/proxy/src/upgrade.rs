//! HTTP/1.1 upgrades (WebSocket, or any protocol a listener's `upgrade_configs` names), carried
//! as Envoy's connection manager carries them.
//!
//! - [`requested`] tells an upgrade request (HTTP/1.1, `Connection: upgrade`, an `Upgrade`
//!   header other than `h2c`) as Envoy's `isUpgrade` does. Several `Upgrade` values are one kind,
//!   joined with commas as Envoy's header map joins them (`websocket,h2c`), which no
//!   configuration names: refused. An upgrade whose `Connection` is not visible ASCII is refused
//!   400 before the filters.
//! - [`allowed`] decides, from the connection manager's `upgrade_configs` and the route's, whether
//!   the upgrade goes on and through which filters (Envoy's `createUpgradeFilterChain`); a refused
//!   upgrade on a routed request is answered 403 `upgrade_failed` and the connection closed.
//! - What goes upstream is rebuilt, never forwarded as sent ([`set_headers`]): `Connection:
//!   upgrade` and the one `Upgrade` value the upgrade was allowed by, as the client spelled it
//!   (no other hop can read another protocol, or a header to drop, into them); `HTTP2-Settings`
//!   never passes. The upstream's `101` starts a tunnel only if its `Upgrade` is that kind
//!   ([`accepts`]): anything else is answered 502 `upgrade_failed`.
//! - The filters see the request headers (not the end of the stream: the upgraded bytes follow)
//!   and the upstream's `101`; a `101` they leave without its status or upgrade headers is not
//!   tunnelled. Once both sides switched, [`tunnel`] carries the bytes each way as body data
//!   through the filters' body callbacks (request body client → upstream, response body upstream
//!   → client), as Envoy does. The tunnel runs in the connection's own task ([`TunnelSlot`]), so
//!   it counts as an open connection, is closed by the worker at the drain timeout and by
//!   `max_connection_duration`. The stream ends (`on_log`) when either side closes (Envoy's
//!   connection manager does not half-close: a client's close closes the connection, and a
//!   response that completed first resets the stream), a side failed, a filter stopped it, or
//!   nothing moved for the listener's `stream_idle_timeout`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http::header::{CONNECTION, UPGRADE};
use http_body::{Body, Frame};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use wasmtrace_config::{HttpConnectionManager, RouteUpgrade, UpgradeFilters};
use wasmtrace_runtime::Direction;

use crate::body::{CHANNEL_FRAMES, FrameResult};
use crate::message::{is_upgrade, tokens};
use crate::pump::{StreamEnd, pump_upgraded};
use crate::stats::ListenerStats;

/// An upgrade a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// The protocol, lower-cased, as configurations name it (`websocket`). Several `Upgrade`
    /// values come joined with commas (`websocket,h2c`), as Envoy's header map joins them.
    pub kind: String,
    /// The `Upgrade` value as the client wrote it (`WebSocket`): what the upstream is sent.
    pub spelled: HeaderValue,
}

/// An upgrade request that cannot be read: its `Connection` has bytes that are not visible
/// ASCII, so the tokens a next hop reads in it may not be the ones this proxy read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedUpgrade;

/// The upgrade a request asks for, or `None` for a plain request. An `h2c` upgrade is not one
/// (Envoy strips it and serves the request as HTTP/1.1), and neither is anything over HTTP/2
/// (which has no `Upgrade`).
pub fn requested(parts: &http::request::Parts) -> Result<Option<Requested>, MalformedUpgrade> {
    if parts.version != http::Version::HTTP_11 || !is_upgrade(&parts.headers) {
        return Ok(None);
    }
    let visible = |value: &HeaderValue| value.as_bytes().iter().all(|b| matches!(b, b'\t' | b' '..=b'~'));
    if !parts.headers.get_all(CONNECTION).iter().all(visible) {
        return Err(MalformedUpgrade);
    }
    let mut values = parts.headers.get_all(UPGRADE).iter();
    let Some(first) = values.next() else { return Ok(None) };
    let spelled = match values.next() {
        None => first.clone(),
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for value in std::iter::once(second).chain(values) {
                joined.push(b',');
                joined.extend_from_slice(value.as_bytes());
            }
            HeaderValue::from_bytes(&joined).map_err(|_| MalformedUpgrade)?
        }
    };
    let kind = String::from_utf8_lossy(spelled.as_bytes().trim_ascii()).to_ascii_lowercase();
    if kind == "h2c" || kind.is_empty() {
        return Ok(None);
    }
    let spelled = HeaderValue::from_bytes(spelled.as_bytes().trim_ascii()).map_err(|_| MalformedUpgrade)?;
    Ok(Some(Requested { kind, spelled }))
}

/// Sets an upgrade's own hop-by-hop headers on a message whose others were stripped
/// ([`crate::message::Hop::Upgrade`]): `Connection: upgrade` and the one `Upgrade` value `spelled`.
pub fn set_headers(headers: &mut http::HeaderMap, spelled: &HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, spelled.clone());
}

/// Whether a response (the upstream's `101`, or that `101` as the filters left it) switches to
/// upgrade `kind`: `Connection: upgrade` and exactly one `Upgrade`, that protocol (compared
/// ignoring case, as RFC 9110 §7.8 has protocol names).
pub fn accepts(headers: &http::HeaderMap, kind: &str) -> bool {
    let mut upgrade = tokens(headers, &UPGRADE);
    is_upgrade(headers)
        && upgrade.next().is_some_and(|protocol| protocol.eq_ignore_ascii_case(kind.as_bytes()))
        && upgrade.next().is_none()
}

/// Whether upgrade `kind` goes on, and through which filters: a route that names the upgrade
/// decides (its `enabled`), else the connection manager's `upgrade_configs` (an upgrade it does
/// not list is refused). A route may enable an upgrade the connection manager does not list; it
/// then runs the listener's filters. `None`: refused.
pub fn allowed(http: &HttpConnectionManager, route: &[RouteUpgrade], kind: &str) -> Option<UpgradeFilters> {
    // Several protocols at once (several `Upgrade` headers, or a list in one) is no one kind;
    // Envoy looks the joined value up and finds nothing.
    if kind.contains(',') {
        return None;
    }
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
    /// The upgrade allowed: only a `101` to it is tunnelled.
    pub requested: Requested,
}

/// A tunnel, as the connection's task drives it.
type TunnelFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Where the stream that switched protocols leaves its tunnel for the connection's task
/// (`crate::worker`), which drives it once hyper let go of the connection: the tunnel then
/// counts as an open connection (`max_connections`, the drain at shutdown) until it ends, and
/// is closed by the connection's limits. An HTTP/1.1 connection has at most one.
#[derive(Default)]
pub struct TunnelSlot(RefCell<Option<TunnelFuture>>);

impl TunnelSlot {
    /// Leaves `tunnel` for the connection's task (replacing, and so closing, any earlier one).
    pub(crate) fn put(&self, tunnel: impl Future<Output = ()> + 'static) {
        self.0.replace(Some(Box::pin(tunnel)));
    }

    /// The tunnel left here, if any.
    pub fn take(&self) -> Option<TunnelFuture> {
        self.0.take()
    }
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

/// Carries an upgraded stream once the client has its `101`: both directions at once, until
/// either side closes (Envoy's connection manager does no half-close: a client's close closes
/// its connection, and a response that completed first resets the stream), a direction failed
/// or a filter stopped it, or nothing moved for `idle` (`stream_idle_timeout`). Both sides are
/// closed when it returns (or when it is dropped, by the connection's limits). The stream ends
/// with `end` (dropped last, whatever happened: `on_log` runs once).
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
    tokio::select! {
        // The client's end (its close passed on to the upstream first) is the stream's end.
        _ = requests => {}
        // The response's end is the stream's end, whether or not the client finished.
        _ = responses => {}
        () = idle_for(&activity, idle) => {
            tracing::debug!("closing an upgraded stream idle for its stream_idle_timeout");
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

    fn parts(version: http::Version, headers: &[(&str, &[u8])]) -> http::request::Parts {
        let mut request = http::Request::builder().version(version);
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_bytes(value).expect("value"));
        }
        request.body(()).expect("request").into_parts().0
    }

    fn kind(version: http::Version, connection: &'static str, upgrade: &'static str) -> Option<String> {
        let parts = parts(version, &[("connection", connection.as_bytes()), ("upgrade", upgrade.as_bytes())]);
        requested(&parts).expect("readable").map(|requested| requested.kind)
    }

    #[test]
    fn only_an_http11_connection_upgrade_other_than_h2c_is_an_upgrade() {
        assert_eq!(kind(http::Version::HTTP_11, "Upgrade", "WebSocket").as_deref(), Some("websocket"));
        assert_eq!(kind(http::Version::HTTP_11, "Upgrade, HTTP2-Settings", "h2c"), None);
        assert_eq!(kind(http::Version::HTTP_11, "keep-alive", "websocket"), None);
        assert_eq!(kind(http::Version::HTTP_10, "upgrade", "websocket"), None);
    }

    #[test]
    fn several_upgrade_values_are_one_kind_no_configuration_allows() {
        let on = hcm(&[("websocket", true), ("h2c", true)]);
        let two = parts(
            http::Version::HTTP_11,
            &[("connection", b"Upgrade"), ("upgrade", b"WebSocket"), ("upgrade", b"h2c")],
        );
        let requested = requested(&two).expect("readable").expect("an upgrade");
        assert_eq!(requested.kind, "websocket,h2c");
        assert!(allowed(&on, &[], &requested.kind).is_none());
        let listed = kind(http::Version::HTTP_11, "upgrade", "websocket, h2c").expect("an upgrade");
        assert!(allowed(&on, &route(&[("websocket, h2c", true)]), &listed).is_none());
        let one = parts(http::Version::HTTP_11, &[("connection", b"Upgrade"), ("upgrade", b" WebSocket ")]);
        assert_eq!(super::requested(&one).expect("readable").expect("an upgrade").spelled, "WebSocket");
    }

    #[test]
    fn an_upgrade_whose_connection_is_not_visible_ascii_cannot_be_read() {
        let hidden = parts(
            http::Version::HTTP_11,
            &[("connection", b"Upgrade, HTTP2-Settings, \xff"), ("upgrade", b"websocket")],
        );
        assert_eq!(requested(&hidden), Err(MalformedUpgrade));
    }

    #[test]
    fn only_a_101_to_the_allowed_kind_switches() {
        let response = |pairs: &[(&str, &'static str)]| {
            let mut headers = http::HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    HeaderValue::from_static(value),
                );
            }
            headers
        };
        assert!(accepts(&response(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]), "websocket"));
        assert!(!accepts(&response(&[("connection", "Upgrade"), ("upgrade", "h2c")]), "websocket"));
        assert!(!accepts(&response(&[("connection", "Upgrade"), ("upgrade", "websocket, h2c")]), "websocket"));
        assert!(!accepts(&response(&[("upgrade", "websocket")]), "websocket"));
        assert!(!accepts(&response(&[("connection", "upgrade")]), "websocket"));
    }
}
