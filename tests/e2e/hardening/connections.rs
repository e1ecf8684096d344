//! Connections that never speak, stop half way, or sit idle are closed by the configured
//! timeouts, a normal client is served meanwhile, and a listener at its connection cap closes
//! new connections instead of running out of file descriptors.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wasmtrace_proxy::ProxyOptions;

use super::{bootstrap, closed_by_server, stat};
use crate::fixture::client::get;
use crate::fixture::proxy::{cluster, ingress, route, start_with};
use crate::fixture::upstream::Upstream;

/// Short timeouts, as an operator would set them on an exposed listener.
const LIMITS: &str = r#"                request_headers_timeout: 1s
                stream_idle_timeout: 2s
                common_http_protocol_options: { idle_timeout: 2s }
"#;

fn proxy(upstream: std::net::SocketAddr, max_connections: Option<usize>) -> wasmtrace_proxy::RunningProxy {
    let yaml = bootstrap(LIMITS, &route("/", "service", "5s"), &[], &[cluster("service", upstream, "")]);
    let options = ProxyOptions { workers: 2, max_connections_per_listener: max_connections, ..ProxyOptions::default() };
    start_with(&yaml, options)
}

async fn timeouts(admin: std::net::SocketAddr, kind: &str) -> u64 {
    stat(admin, &format!(r#"wasmtrace_downstream_connection_timeouts_total{{listener="ingress",kind="{kind}"}}"#)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_open_and_idle_connections_are_closed_while_others_are_served() {
    let upstream = Upstream::start();
    let proxy = proxy(upstream.addr, None);
    let addr = ingress(&proxy);
    let admin = proxy.admin_address().expect("admin");

    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut half_preface = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"PRI * HTTP/2.0\r\n").await.expect("part of the preface");
        half_preface.push(stream);
    }
    let mut half_headers = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("part of the headers");
        half_headers.push(stream);
    }
    // Idle keep-alive HTTP/1.1 connections after one request.
    let mut idle_h1 = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /check HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("request");
        let mut buf = [0u8; 1024];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await.expect("response");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        idle_h1.push(stream);
    }
    // Idle h2c connections: the handshake done, then nothing.
    let mut idle_h2 = Vec::new();
    for _ in 0..50 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c");
        let done = tokio::spawn(connection);
        idle_h2.push((sender, done));
    }

    // Everyone else is served while 400 connections are held open.
    for _ in 0..5 {
        assert_eq!(get(addr, "/check", &[]).await.status, StatusCode::OK);
    }

    for stream in silent.iter_mut().chain(&mut half_preface).chain(&mut half_headers).chain(&mut idle_h1) {
        assert!(closed_by_server(stream).await, "the proxy closes a connection past its timeout");
    }
    for (mut sender, done) in idle_h2 {
        let closed = tokio::time::timeout(super::PATIENCE, done).await;
        assert!(closed.is_ok(), "an idle h2c connection is closed by the proxy");
        let request = http::Request::get("http://x/check").body(Full::new(Bytes::new())).expect("request");
        assert!(sender.send_request(request).await.is_err());
    }
    // Silent and half-preface connections by the header timeout, idle ones by the idle timeout
    // (hyper itself closes the slow-header ones).
    let closed = timeouts(admin, "request_headers").await + timeouts(admin, "idle").await;
    assert!(closed >= 250, "{closed} connections closed by the watchdog");
    assert_eq!(get(addr, "/check", &[]).await.status, StatusCode::OK);
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_moving_is_closed_by_the_stream_idle_timeout() {
    let upstream = Upstream::start();
    let proxy = proxy(upstream.addr, None);
    let mut stream = TcpStream::connect(ingress(&proxy)).await.expect("connect");
    // Headers announce a body that never comes.
    stream.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123").await.expect("send");
    assert!(closed_by_server(&mut stream).await);
    let admin = proxy.admin_address().expect("admin");
    assert_eq!(
        stat(admin, r#"wasmtrace_downstream_connection_timeouts_total{listener="ingress",kind="stream_idle"}"#).await,
        1
    );
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_its_connection_cap_closes_new_connections_and_recovers() {
    let upstream = Upstream::start();
    let proxy = proxy(upstream.addr, Some(20));
    let addr = ingress(&proxy);
    let admin = proxy.admin_address().expect("admin");
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Wait until the proxy has accepted all of them.
    let deadline = tokio::time::Instant::now() + super::PATIENCE;
    while stat(admin, r#"wasmtrace_downstream_connections{listener="ingress"}"#).await < 20 {
        assert!(tokio::time::Instant::now() < deadline, "the proxy accepts the held connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut over = TcpStream::connect(addr).await.expect("the kernel accepts");
    assert!(closed_by_server(&mut over).await, "over the cap: closed at once");
    assert!(stat(admin, r#"wasmtrace_downstream_connections_overflow_total{listener="ingress"}"#).await >= 1);
    drop(held);
    // Once the held connections are gone, new ones are served again.
    let deadline = tokio::time::Instant::now() + super::PATIENCE;
    while stat(admin, r#"wasmtrace_downstream_connections{listener="ingress"}"#).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "closed connections leave the count");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(addr, "/check", &[]).await.status, StatusCode::OK);
    proxy.shutdown();
}
