//! Hostile clients, upstreams and admin callers against a running sidecar: each module takes one
//! class of attack and shows what a user would see (the status, what reached the upstream, what
//! the stats say), and that everyone else is still served.

mod admin;
mod connections;
mod framing;
mod routing;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a test waits for an answer or a close it expects; far beyond any configured timeout,
/// so a slow machine never fails a test, while a proxy that never answers still does.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Sends `request` as raw bytes and reads until the server closes or `PATIENCE` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    read_to_close(&mut stream).await
}

/// Everything the peer sends until it closes (or `PATIENCE` passes), as text.
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 16 << 10];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

/// The status code of a raw HTTP/1.1 response, or 0 when there was none.
pub fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// Whether the server closed `stream` (EOF or reset) within `PATIENCE`.
pub async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// The value of one Prometheus sample line (`name{labels} value`) on the admin API.
pub async fn stat(admin: SocketAddr, sample: &str) -> u64 {
    let text = crate::fixture::client::get(admin, "/stats/prometheus", &[]).await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

pub use crate::fixture::proxy::bootstrap_with_hcm as bootstrap;
