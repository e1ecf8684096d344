//! HTTP/1.1 upgrades and HTTP/1 trailers as Envoy carries them: a WebSocket echo through the
//! sidecar and its filters (a real WebSocket server upstream, a real client), the refusals of
//! an upgrade no `upgrade_configs` allows (403, connection closed) and a route's override of the
//! connection manager; trailers both ways over HTTP/1 with `enable_trailers` on the connection
//! manager and the cluster (the filter sees them in `on_http_request_trailers` /
//! `on_http_response_trailers`), none without it, and none on the upstream hop when only the
//! connection manager enables them (each HTTP/1 hop follows its own setting, as in Envoy);
//! `TE: trailers` forwarded, other codings not.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wasmtrace_proxy::RunningProxy;
use wasmtrace_proxy::body::{ChannelBody, ProxyBody, boxed};

use crate::fixture::client::get;
use crate::fixture::proxy::{bootstrap_with_hcm, cluster, ingress, route, start, wasm_filter};
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
