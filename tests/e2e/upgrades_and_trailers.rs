//! HTTP/1.1 upgrades and HTTP/1 trailers as Envoy carries them: a WebSocket echo through the
//! sidecar and its filters (a real WebSocket server upstream, a real client), the refusals of
//! an upgrade no `upgrade_configs` allows (403, connection closed) and a route's override of the
//! connection manager; trailers both ways over HTTP/1 with `enable_trailers` on the connection
//! manager and the cluster (the filter sees them in `on_http_request_trailers` /
//! `on_http_response_trailers`), none without it, and none on the upstream hop when only the
//! connection manager enables them (each HTTP/1 hop follows its own setting, as in Envoy);
//! `TE: trailers` forwarded, other codings not.
//!
//! The hostile side of upgrades with raw TCP clients and upstreams (bytes a library would
//! normalise): several `Upgrade` values or an unreadable `Connection` are refused before any
//! upstream sees them, the upstream gets a rebuilt `Connection`/`Upgrade` and no
//! `HTTP2-Settings`, a `101` to another protocol is refused 502, a `101` a filter rewrote is not
//! tunnelled; a tunnel counts as an open connection (`max_connections`, the drain at shutdown,
//! `max_connection_duration`) and ends whole when the client closes; an answer to an upgrade
//! other than its tunnel closes the connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wasmtrace_proxy::body::{ChannelBody, ProxyBody, boxed};
use wasmtrace_proxy::{ProxyOptions, RunningProxy};

use crate::fixture::client::get;
use crate::fixture::proxy::{
    bootstrap_with_hcm, cluster, ingress, route, start, start_with, wasm_filter, wasm_filter_yaml,
};
use crate::fixture::upstream::Upstream;
use crate::hardening::stat;

const PATIENCE: Duration = Duration::from_secs(10);

/// The request headers a WebSocket upstream saw in each handshake.
type Handshakes = Arc<Mutex<Vec<HeaderMap>>>;

/// A WebSocket echo server (tokio-tungstenite) on a free port: every text or binary message
/// comes back as sent; a close is answered and ends the connection.
fn websocket_upstream() -> (SocketAddr, Handshakes) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    let seen: Handshakes = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let record = record.clone();
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err, reason = "tungstenite's Callback signature")]
                    let callback = |request: &tokio_tungstenite::tungstenite::handshake::server::Request, response| {
                        record.lock().unwrap_or_else(|p| p.into_inner()).push(request.headers().clone());
                        Ok(response)
                    };
                    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                    while let Some(Ok(message)) = socket.next().await {
                        match message {
                            Message::Text(_) | Message::Binary(_) => {
                                let echoed = socket.send(message).await;
                                if echoed.is_err() {
                                    return;
                                }
                            }
                            Message::Close(_) => return,
                            _ => {}
                        }
                    }
                });
            }
        });
    });
    (addr, seen)
}

/// A sidecar with the abi-probe in front of cluster `ws` at `addr`, with `hcm` spliced into the
/// connection manager and `route_extra` into the route (`, upgrade_configs: [...]`).
fn websocket_proxy(addr: SocketAddr, hcm: &str, route_extra: &str) -> RunningProxy {
    let routes = format!(
        r#"                        - match: {{ prefix: "/" }}
                          route: {{ cluster: ws, timeout: 5s{route_extra} }}
"#
    );
    start(&bootstrap_with_hcm(
        hcm,
        &routes,
        &[wasm_filter("probe", "abi-probe", "", false)],
        &[cluster("ws", addr, "")],
    ))
}

const WEBSOCKET_ON: &str = "                upgrade_configs: [{ upgrade_type: websocket }]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_the_sidecar_and_its_filters_see_the_handshake() {
    let (upstream, handshakes) = websocket_upstream();
    let proxy = websocket_proxy(upstream, WEBSOCKET_ON, "");
    let url = format!("ws://{}/chat", ingress(&proxy));
    let (mut socket, response) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .expect("in time")
        .expect("handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response.headers().get("x-probe-response").map(HeaderValue::as_bytes),
        Some(&b"yes"[..]),
        "the 101 went through on_http_response_headers"
    );
    {
        let seen = handshakes.lock().unwrap_or_else(|p| p.into_inner());
        let headers = seen.last().expect("the upstream saw the handshake");
        assert_eq!(headers.get("upgrade").map(HeaderValue::as_bytes), Some(&b"websocket"[..]));
        assert!(headers.get("x-probe").is_some(), "the request headers went through on_http_request_headers");
    }
    for round in 0..3 {
        let text = format!("hello {round}");
        socket.send(Message::text(text.clone())).await.expect("send");
        let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.expect("echo in time").expect("open");
        assert_eq!(echoed.expect("frame").to_text().expect("text"), text);
    }
    // Larger than one read of the tunnel: many body chunks each way.
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    socket.send(Message::binary(large.clone())).await.expect("send");
    let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.expect("echo in time").expect("open");
    assert_eq!(echoed.expect("frame").into_data(), Bytes::from(large));
    let admin = proxy.admin_address().expect("admin");
    assert_eq!(stat(admin, r#"wasmtrace_downstream_upgrades_active{listener="ingress"}"#).await, 1);
    socket.close(None).await.expect("close");
    // The upstream closes after the close frame; the client sees the end.
    let ended = tokio::time::timeout(PATIENCE, async { while let Some(Ok(_)) = socket.next().await {} }).await;
    assert!(ended.is_ok(), "the tunnel passed the close on and ended");
    assert_eq!(stat(admin, r#"wasmtrace_downstream_upgrades_total{listener="ingress"}"#).await, 1);
    let mut active = u64::MAX;
    for _ in 0..50 {
        active = stat(admin, r#"wasmtrace_downstream_upgrades_active{listener="ingress"}"#).await;
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active, 0, "the upgraded stream ended");
    proxy.shutdown();
}

/// Sends a WebSocket handshake by hand (with `extra` header lines and body) and reads until the
/// proxy closes the connection.
async fn raw_handshake_with(proxy: SocketAddr, extra: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.expect("connect");
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: ws.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection after refusing the upgrade")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// [`raw_handshake_with`] nothing more.
async fn raw_handshake(proxy: SocketAddr) -> String {
    raw_handshake_with(proxy, "\r\n").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_nothing_allows_is_refused_403_and_the_connection_closed() {
    let (upstream, handshakes) = websocket_upstream();
    for (hcm, route_extra, why) in [
        ("", "", "no upgrade_configs"),
        (WEBSOCKET_ON, ", upgrade_configs: [{ upgrade_type: websocket, enabled: false }]", "the route turns it off"),
        ("                upgrade_configs: [{ upgrade_type: websocket, enabled: false }]\n", "", "off, route silent"),
    ] {
        let proxy = websocket_proxy(upstream, hcm, route_extra);
        let answer = raw_handshake(ingress(&proxy)).await;
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{why}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close\r\n"), "{why}: {answer}");
        let admin = proxy.admin_address().expect("admin");
        assert_eq!(
            stat(admin, r#"wasmtrace_downstream_errors_total{listener="ingress",kind="upgrade_failed"}"#).await,
            1
        );
        proxy.shutdown();
    }
    assert!(handshakes.lock().unwrap_or_else(|p| p.into_inner()).is_empty(), "no refused upgrade reached the upstream");

    // Off on the connection manager, on for the route: the route decides, as in Envoy's table.
    let proxy = websocket_proxy(
        upstream,
        "                upgrade_configs: [{ upgrade_type: websocket, enabled: false }]\n",
        ", upgrade_configs: [{ upgrade_type: websocket }]",
    );
    let url = format!("ws://{}/chat", ingress(&proxy));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the route enables the upgrade");
    socket.send(Message::text("routed")).await.expect("send");
    let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.expect("in time").expect("open").expect("frame");
    assert_eq!(echoed.to_text().expect("text"), "routed");
    // An allowed upgrade that carries a body is refused before the filters.
    let answer = raw_handshake_with(ingress(&proxy), "Content-Length: 5\r\n\r\nhello").await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_whose_filters_are_only_the_router_bypasses_the_wasm_filters() {
    let (upstream, handshakes) = websocket_upstream();
    let hcm = r#"                upgrade_configs:
                  - upgrade_type: websocket
                    filters:
                      - name: envoy.filters.http.router
                        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
    let proxy = websocket_proxy(upstream, hcm, "");
    let url = format!("ws://{}/chat", ingress(&proxy));
    let (mut socket, response) = tokio_tungstenite::connect_async(url).await.expect("handshake");
    assert!(response.headers().get("x-probe-response").is_none(), "no Wasm filter saw the 101");
    assert!(
        handshakes.lock().unwrap_or_else(|p| p.into_inner()).last().expect("seen").get("x-probe").is_none(),
        "no Wasm filter saw the request"
    );
    socket.send(Message::text("direct")).await.expect("send");
    let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.expect("in time").expect("open").expect("frame");
    assert_eq!(echoed.to_text().expect("text"), "direct");
    proxy.shutdown();
}

/// What the trailers upstream saw of a request: its trailers, as `name=value` pairs.
type SeenTrailers = Arc<Mutex<Vec<String>>>;

/// An HTTP/1.1 server that reads each request whole (trailers too), records the request's
/// trailers, and answers a chunked body with `Trailer: x-upstream-checksum` and that trailer.
fn trailers_upstream() -> (SocketAddr, SeenTrailers) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    let seen: SeenTrailers = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let collected = request.into_body().collect().await.expect("request body");
                            let trailers = collected.trailers().cloned().unwrap_or_default();
                            let mut seen = record.lock().unwrap_or_else(|p| p.into_inner());
                            seen.extend(
                                trailers.iter().map(|(name, value)| {
                                    format!("{name}={}", String::from_utf8_lossy(value.as_bytes()))
                                }),
                            );
                            drop(seen);
                            let (tx, body) = ChannelBody::new();
                            tokio::spawn(async move {
                                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"response body")))).await;
                                let mut trailers = HeaderMap::new();
                                trailers.insert("x-upstream-checksum", HeaderValue::from_static("up-7f3a"));
                                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                            });
                            let mut response = Response::new(boxed(body));
                            response.headers_mut().insert("trailer", HeaderValue::from_static("x-upstream-checksum"));
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    (addr, seen)
}

/// A sidecar with the abi-probe in front of cluster `service` at `addr`: `listener` sets the
/// connection manager's `http_protocol_options.enable_trailers`, `cluster` the cluster's (in
/// `explicit_http_config`, as Envoy's `HttpProtocolOptions` write it).
fn trailers_proxy(addr: SocketAddr, listener: bool, cluster_trailers: bool) -> RunningProxy {
    let hcm = if listener { "                http_protocol_options: { enable_trailers: true }\n" } else { "" };
    let options = if cluster_trailers {
        r#"      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http_protocol_options: { enable_trailers: true } }"#
    } else {
        ""
    };
    start(&bootstrap_with_hcm(
        hcm,
        &route("/", "service", "5s"),
        &[wasm_filter("probe", "abi-probe", "", false)],
        &[cluster("service", addr, options)],
    ))
}

/// An HTTP/1.1 POST with a chunked body and an `x-checksum` trailer (announced, as hyper sends
/// only announced trailers; the probe's `x-probe-saw-checksum` announced too), `TE: trailers`.
/// Returns the response trailers.
async fn post_with_trailers(proxy: SocketAddr) -> Option<HeaderMap> {
    let client: Client<_, ProxyBody> = Client::builder(TokioExecutor::new()).build_http();
    let (tx, body) = ChannelBody::new();
    let request = Request::post(format!("http://{proxy}/upload"))
        .header("trailer", "x-checksum, x-probe-saw-checksum")
        .header("te", "trailers")
        .body(boxed(body))
        .expect("request");
    let response = tokio::spawn(client.request(request));
    tx.send(Ok(Frame::data(Bytes::from_static(b"payload")))).await.expect("send");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("c0ffee"));
    tx.send(Ok(Frame::trailers(trailers))).await.expect("send trailers");
    drop(tx);
    let response = tokio::time::timeout(PATIENCE, response).await.expect("in time").expect("task").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let collected =
        tokio::time::timeout(PATIENCE, response.into_body().collect()).await.expect("in time").expect("body");
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"response body"));
    trailers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_enable_trailers_http1_trailers_go_both_ways_and_the_filter_sees_them() {
    let (upstream, seen) = trailers_upstream();
    let proxy = trailers_proxy(upstream, true, true);
    let trailers = post_with_trailers(ingress(&proxy)).await.expect("the client got the response's trailers");
    assert_eq!(trailers.get("x-upstream-checksum").map(HeaderValue::as_bytes), Some(&b"up-7f3a"[..]));
    assert_eq!(
        trailers.get("x-probe-saw-upstream-checksum").map(HeaderValue::as_bytes),
        Some(&b"up-7f3a"[..]),
        "on_http_response_trailers read the upstream's trailer and added its own"
    );
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(seen.contains(&"x-checksum=c0ffee".to_owned()), "the upstream got the client's trailer: {seen:?}");
    assert!(
        seen.contains(&"x-probe-saw-checksum=c0ffee".to_owned()),
        "on_http_request_trailers read it and added its own: {seen:?}"
    );
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_enable_trailers_http1_trailers_are_dropped_both_ways_as_envoys_codec_drops_them() {
    let (upstream, seen) = trailers_upstream();
    let proxy = trailers_proxy(upstream, false, false);
    let trailers = post_with_trailers(ingress(&proxy)).await;
    assert!(trailers.as_ref().is_none_or(HeaderMap::is_empty), "no trailers to the client: {trailers:?}");
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(seen.is_empty(), "no trailers to the upstream, and the filter saw none to copy: {seen:?}");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_enable_trailers_on_the_listener_alone_the_upstream_hop_drops_them_both_ways() {
    let (upstream, seen) = trailers_upstream();
    let proxy = trailers_proxy(upstream, true, false);
    // The client's trailers reach the filter (the downstream codec keeps them) but the upstream
    // codec does not write them; the upstream's are dropped as they are read, so the client,
    // whose own hop would carry them, gets none.
    let trailers = post_with_trailers(ingress(&proxy)).await;
    assert!(trailers.as_ref().is_none_or(HeaderMap::is_empty), "no trailers to the client: {trailers:?}");
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(seen.is_empty(), "no trailers on the upstream HTTP/1 hop without the cluster's enable_trailers: {seen:?}");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_is_forwarded_and_other_transfer_codings_are_not() {
    let upstream = Upstream::start();
    let proxy = trailers_proxy(upstream.addr, false, false);
    let addr = ingress(&proxy);
    for (te, connection, forwarded) in [
        ("trailers", None, Some("trailers")),
        ("gzip;q=0.5, trailers", Some("TE"), Some("trailers")),
        ("gzip", Some("te"), None),
    ] {
        let mut headers = vec![("te", te)];
        if let Some(connection) = connection {
            headers.push(("connection", connection));
        }
        let reply = get(addr, "/echo", &headers).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.upstream_saw("te").as_deref(), forwarded, "TE: {te}");
    }
    proxy.shutdown();
}

// === Hostile upgrades, with raw clients and a raw upstream ===

/// What a [`raw_upstream`] saw.
#[derive(Clone, Default)]
struct RawSeen {
    /// Each request head, as text (lossy).
    heads: Arc<Mutex<Vec<String>>>,
    /// Connections whose other side (the proxy) closed or reset.
    closed: Arc<AtomicUsize>,
}

impl RawSeen {
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `n` connections were closed by the proxy.
    async fn closed_by_proxy(&self, n: usize) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.closed.load(Ordering::SeqCst) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// An upstream speaking raw bytes: it records each request head, answers `answer` (a `101`
/// written by hand), then echoes what it reads. When the proxy closes its side it counts the
/// close, and 200 ms later writes `late` (to a half-closed connection) and holds it for 5 s.
fn raw_upstream(answer: &'static str) -> (SocketAddr, RawSeen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    let seen = RawSeen::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let record = record.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 16 << 10];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    record.heads.lock().unwrap_or_else(|p| p.into_inner()).push(String::from_utf8_lossy(&head).into());
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) => break,
                            Err(_) => {
                                record.closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    record.closed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = stream.write_all(b"late").await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
    });
    (addr, seen)
}

/// The `101` a WebSocket upstream answers (by hand, so the test says exactly what it sends).
const SWITCH_TO_WEBSOCKET: &str = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// A handshake's request line and the headers every case shares.
const HANDSHAKE: &str = "GET /chat HTTP/1.1\r\nHost: ws.local\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Sends `request` (raw bytes) and reads until the proxy closes the connection; a proxy that
/// keeps it open fails the test.
async fn exchange_closing(proxy: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("the proxy kept the connection open after: {}", String::from_utf8_lossy(&answer)))
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Opens a connection and completes a WebSocket handshake by hand (`extra` header lines), up to
/// the end of the proxy's `101`; returns the connection and the `101`.
async fn raw_switch(proxy: SocketAddr, extra: &str) -> (tokio::net::TcpStream, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.expect("connect");
    let request = format!("{HANDSHAKE}Connection: Upgrade\r\nUpgrade: websocket\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await.expect("in time").expect("read");
        assert_eq!(read, 1, "the proxy closed before its answer ended: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (stream, head)
}

/// Writes `bytes` into a tunnel and reads the same bytes back (the upstream echoes).
async fn echoes(stream: &mut tokio::net::TcpStream, bytes: &[u8]) -> bool {
    if stream.write_all(bytes).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; bytes.len()];
    matches!(tokio::time::timeout(PATIENCE, stream.read_exact(&mut back)).await, Ok(Ok(_))) && back == bytes
}

/// The values of header `name` (lower-case) in a raw message head, in order.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .filter(|(field, _)| field.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_owned())
        .collect()
}

/// Whether a raw response head says `Connection: close`.
fn says_close(answer: &str) -> bool {
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    header_values(head, "connection").iter().any(|value| value.eq_ignore_ascii_case("close"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_upgrade_values_or_an_unreadable_connection_are_refused_before_any_upstream() {
    let (upstream, seen) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let proxy = websocket_proxy(upstream, WEBSOCKET_ON, "");
    let admin = proxy.admin_address().expect("admin");
    // The attack: `websocket` first (allowed), `h2c` second (which an upstream that reads every
    // value may pick), the h2c settings, and a `Connection` line whose `\xff` hid its tokens.
    let attack = [
        HANDSHAKE.as_bytes(),
        b"Upgrade: websocket\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nConnection: HTTP2-Settings, \xff\r\n",
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ]
    .concat();
    let answer = exchange_closing(ingress(&proxy), &attack).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(says_close(&answer), "{answer}");
    for (extra, why) in [
        ("Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n", "two Upgrade headers"),
        ("Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n", "a list in one Upgrade header"),
    ] {
        let answer = exchange_closing(ingress(&proxy), format!("{HANDSHAKE}{extra}\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 403 "), "{why}: {answer}");
        assert!(says_close(&answer), "{why}: {answer}");
    }
    assert!(seen.heads().is_empty(), "no refused upgrade reached the upstream: {:?}", seen.heads());
    assert_eq!(stat(admin, r#"wasmtrace_downstream_errors_total{listener="ingress",kind="upgrade_failed"}"#).await, 3);
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_a_rebuilt_connection_and_upgrade_and_no_http2_settings() {
    let (upstream, seen) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let proxy = websocket_proxy(upstream, WEBSOCKET_ON, "");
    let mut stream = tokio::net::TcpStream::connect(ingress(&proxy)).await.expect("connect");
    // `x-forwarded-for` named in `Connection`, which a next hop reading it verbatim would drop.
    let request = format!(
        "{HANDSHAKE}Connection: keep-alive, Upgrade, x-forwarded-for, HTTP2-Settings\r\nUpgrade: WebSocket\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Forwarded-For: 10.9.8.7\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = [0u8; 12];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut answer)).await.expect("in time").expect("read");
    assert_eq!(&answer, b"HTTP/1.1 101");
    let heads = seen.heads();
    let head = heads.last().expect("the upstream saw the handshake");
    assert_eq!(header_values(head, "connection"), ["upgrade"], "{head}");
    assert_eq!(header_values(head, "upgrade"), ["WebSocket"], "the client's spelling: {head}");
    assert!(header_values(head, "http2-settings").is_empty(), "{head}");
    assert!(header_values(head, "keep-alive").is_empty(), "{head}");
    assert_eq!(header_values(head, "x-forwarded-for"), ["10.9.8.7"], "{head}");
    assert!(!header_values(head, "x-probe").is_empty(), "the filters ran: {head}");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_another_protocol_than_the_one_allowed_is_answered_502() {
    let (upstream, seen) =
        raw_upstream("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    let proxy = websocket_proxy(upstream, WEBSOCKET_ON, "");
    let request = format!("{HANDSHAKE}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let answer = exchange_closing(ingress(&proxy), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(says_close(&answer), "{answer}");
    assert!(seen.closed_by_proxy(1).await, "the upstream's switched connection was dropped");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_value_that_is_not_utf8_cannot_hide_the_headers_it_names() {
    let upstream = Upstream::start();
    let proxy = trailers_proxy(upstream.addr, false, false);
    let request = b"GET /echo HTTP/1.1\r\nHost: svc.local\r\nConnection: x-secret, \xff\r\nConnection: close\r\n\
                    X-Secret: 1\r\nX-Kept: 2\r\n\r\n";
    let answer = exchange_closing(ingress(&proxy), request).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("x-kept"), "the upstream's echo of the headers: {answer}");
    assert!(!answer.contains("x-secret"), "the header Connection named was dropped: {answer}");
    proxy.shutdown();
}

/// A proxy-wasm filter written by hand (the WebAssembly binary format; no test filter rewrites
/// a status): `proxy_on_response_headers` replaces `:status` with `200` and continues.
fn status_rewriting_filter() -> PathBuf {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn vec_of(items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        leb(items.len(), &mut out);
        items.iter().for_each(|item| out.extend_from_slice(item));
        out
    }
    fn name(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        leb(text.len(), &mut out);
        out.extend_from_slice(text.as_bytes());
        out
    }
    fn section(id: u8, content: Vec<u8>, out: &mut Vec<u8>) {
        out.push(id);
        leb(content.len(), out);
        out.extend(content);
    }
    fn body(code: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        leb(code.len() + 1, &mut out);
        out.push(0); // no locals
        out.extend_from_slice(code);
        out
    }
    const I32: u8 = 0x7f;
    let func = |params: &[u8], results: &[u8]| {
        [
            &[0x60][..],
            &vec_of(&params.iter().map(|p| vec![*p]).collect::<Vec<_>>()),
            &vec_of(&results.iter().map(|r| vec![*r]).collect::<Vec<_>>()),
        ]
        .concat()
    };
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    section(
        1,
        vec_of(&[
            func(&[I32; 5], &[I32]), // 0: proxy_replace_header_map_value
            func(&[], &[]),          // 1: the ABI marker
            func(&[I32], &[I32]),    // 2: proxy_on_memory_allocate
            func(&[I32; 2], &[]),    // 3: proxy_on_context_create
            func(&[I32; 3], &[I32]), // 4: proxy_on_response_headers
        ]),
        &mut wasm,
    );
    section(2, vec_of(&[[name("env"), name("proxy_replace_header_map_value"), vec![0x00, 0]].concat()]), &mut wasm);
    section(3, vec_of(&[vec![1], vec![2], vec![3], vec![4]]), &mut wasm);
    section(5, vec_of(&[vec![0x00, 1]]), &mut wasm);
    section(
        7,
        vec_of(&[
            [name("memory"), vec![0x02, 0]].concat(),
            [name("proxy_abi_version_0_2_1"), vec![0x00, 1]].concat(),
            [name("proxy_on_memory_allocate"), vec![0x00, 2]].concat(),
            [name("proxy_on_context_create"), vec![0x00, 3]].concat(),
            [name("proxy_on_response_headers"), vec![0x00, 4]].concat(),
        ]),
        &mut wasm,
    );
    // Map 2 is the response headers; ":status" at 0 (7 bytes), "200" at 8 (3 bytes).
    let replace = [0x41, 2, 0x41, 0, 0x41, 7, 0x41, 8, 0x41, 3, 0x10, 0, 0x1a, 0x41, 0, 0x0b];
    section(10, vec_of(&[body(&[0x0b]), body(&[0x41, 0x80, 0x08, 0x0b]), body(&[0x0b]), body(&replace)]), &mut wasm);
    section(11, vec_of(&[[vec![0x00, 0x41, 0, 0x0b], name(":status\x00200")].concat()]), &mut wasm);
    let path = std::env::temp_dir().join(format!("wasmtrace-e2e-status-to-200-{}.wasm", std::process::id()));
    std::fs::write(&path, wasm).expect("write the module");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_a_response_filter_rewrote_is_not_tunnelled_and_the_connection_closes() {
    let (upstream, seen) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let filter = wasm_filter_yaml("rewriter", &status_rewriting_filter(), "", false, "rewriter_vm");
    let proxy =
        start(&bootstrap_with_hcm(WEBSOCKET_ON, &route("/", "ws", "5s"), &[filter], &[cluster("ws", upstream, "")]));
    let request = format!("{HANDSHAKE}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let answer = exchange_closing(ingress(&proxy), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "the filter's status went out: {answer}");
    assert!(says_close(&answer), "{answer}");
    assert_eq!(seen.heads().len(), 1, "the upstream switched");
    assert!(seen.closed_by_proxy(1).await, "the upstream's switched connection was dropped");
    let admin = proxy.admin_address().expect("admin");
    assert_eq!(stat(admin, r#"wasmtrace_downstream_upgrades_total{listener="ingress"}"#).await, 0);
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_counts_against_max_connections_until_it_ends() {
    let (upstream, _) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let yaml = bootstrap_with_hcm(
        WEBSOCKET_ON,
        &route("/", "ws", "5s"),
        &[wasm_filter("probe", "abi-probe", "", false)],
        &[cluster("ws", upstream, "")],
    );
    let proxy = start_with(
        &yaml,
        ProxyOptions { workers: 1, max_connections_per_listener: Some(1), ..ProxyOptions::default() },
    );
    let admin = proxy.admin_address().expect("admin");
    let (mut tunnel, _) = raw_switch(ingress(&proxy), "").await;
    assert!(echoes(&mut tunnel, b"ping").await);
    assert_eq!(stat(admin, r#"wasmtrace_downstream_connections{listener="ingress"}"#).await, 1);
    let refused = crate::hardening::raw_exchange(ingress(&proxy), b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(refused.is_empty(), "the tunnel holds the only connection allowed: {refused}");
    assert_eq!(stat(admin, r#"wasmtrace_downstream_connections_overflow_total{listener="ingress"}"#).await, 1);
    assert!(echoes(&mut tunnel, b"still here").await);
    drop(tunnel);
    let mut active = u64::MAX;
    for _ in 0..100 {
        active = stat(admin, r#"wasmtrace_downstream_connections{listener="ingress"}"#).await;
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active, 0, "the connection ended with its tunnel");
    let (mut again, _) = raw_switch(ingress(&proxy), "").await;
    assert!(echoes(&mut again, b"next").await, "a new connection is accepted once the tunnel ended");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_tunnel_until_the_drain_timeout_then_closes_both_sides() {
    let (upstream, seen) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let yaml = bootstrap_with_hcm(
        WEBSOCKET_ON,
        &route("/", "ws", "5s"),
        &[wasm_filter("probe", "abi-probe", "", false)],
        &[cluster("ws", upstream, "")],
    );
    let drain = Duration::from_secs(2);
    let proxy = start_with(&yaml, ProxyOptions { workers: 1, drain_timeout: drain, ..ProxyOptions::default() });
    let (mut tunnel, _) = raw_switch(ingress(&proxy), "").await;
    assert!(echoes(&mut tunnel, b"before").await);
    let started = Instant::now();
    let shutdown = tokio::task::spawn_blocking(move || proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(echoes(&mut tunnel, b"while draining").await, "the tunnel is drained like any connection");
    assert!(crate::hardening::closed_by_server(&mut tunnel).await, "closed at the drain timeout");
    let closed_after = started.elapsed();
    assert!(closed_after >= drain - Duration::from_millis(200), "closed after {closed_after:?}");
    assert!(seen.closed_by_proxy(1).await, "the upstream side closed too");
    tokio::time::timeout(PATIENCE, shutdown).await.expect("shutdown ends").expect("shutdown");
    assert!(started.elapsed() >= closed_after, "shutdown waited for the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_past_max_connection_duration_is_closed_after_the_drain_grace() {
    let (upstream, seen) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let hcm =
        format!("{WEBSOCKET_ON}                common_http_protocol_options: {{ max_connection_duration: 1s }}\n");
    let proxy = websocket_proxy(upstream, &hcm, "");
    let admin = proxy.admin_address().expect("admin");
    let started = Instant::now();
    let (mut tunnel, _) = raw_switch(ingress(&proxy), "").await;
    assert!(echoes(&mut tunnel, b"young").await);
    assert!(crate::hardening::closed_by_server(&mut tunnel).await, "closed past max_connection_duration");
    // 1 s of age, then the 5 s any stream past that limit gets to finish.
    assert!(started.elapsed() >= Duration::from_secs(5), "closed after {:?}", started.elapsed());
    assert!(seen.closed_by_proxy(1).await, "the upstream side closed too");
    assert_eq!(
        stat(
            admin,
            r#"wasmtrace_downstream_connection_timeouts_total{listener="ingress",kind="max_connection_duration"}"#
        )
        .await,
        1
    );
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_its_side_ends_the_whole_tunnel() {
    let (upstream, seen) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let proxy = websocket_proxy(upstream, WEBSOCKET_ON, "");
    let (mut tunnel, _) = raw_switch(ingress(&proxy), "").await;
    assert!(echoes(&mut tunnel, b"hello").await);
    tunnel.shutdown().await.expect("half-close");
    // The upstream answers the close 200 ms later with `late`: a half-closed tunnel would carry
    // it, Envoy's connection manager (no half-close) has closed the client's connection by then.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(3), tunnel.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the proxy closed the client's side: {:?}", String::from_utf8_lossy(&rest));
    assert!(!String::from_utf8_lossy(&rest).contains("late"), "{:?}", String::from_utf8_lossy(&rest));
    assert!(seen.closed_by_proxy(1).await, "the upstream's side closed");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_no_route_is_answered_404_and_the_connection_closed() {
    let (upstream, seen) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let proxy = start(&bootstrap_with_hcm(
        WEBSOCKET_ON,
        &route("/only", "ws", "5s"),
        &[wasm_filter("probe", "abi-probe", "", false)],
        &[cluster("ws", upstream, "")],
    ));
    // Envoy answers 403 only on a route; without one the router's 404, and the connection (its
    // codec in upgrade mode) closes.
    let request =
        format!("{HANDSHAKE}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /only HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = exchange_closing(ingress(&proxy), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(says_close(&answer), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "the bytes after the upgrade request are no request: {answer}");
    assert!(seen.heads().is_empty());
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reply_to_an_allowed_upgrade_closes_the_connection() {
    let (upstream, seen) = raw_upstream(SWITCH_TO_WEBSOCKET);
    let proxy = websocket_proxy(upstream, WEBSOCKET_ON, "");
    // The probe answers /local itself.
    let request = "GET /local HTTP/1.1\r\nHost: ws.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let answer = exchange_closing(ingress(&proxy), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(says_close(&answer), "{answer}");
    proxy.shutdown();
    // An HTTP/2 cluster cannot carry it: the 502 closes the connection too.
    let proxy = start(&bootstrap_with_hcm(
        WEBSOCKET_ON,
        &route("/", "ws", "5s"),
        &[],
        &[cluster("ws", upstream, "      http2_protocol_options: {}")],
    ));
    let request = format!("{HANDSHAKE}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let answer = exchange_closing(ingress(&proxy), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(says_close(&answer), "{answer}");
    assert!(seen.heads().is_empty());
    proxy.shutdown();
}
