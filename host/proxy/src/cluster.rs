//! Upstream clusters: endpoint selection (round-robin, static or DNS), connecting with the
//! cluster's connect timeout, and one pooled hyper client per cluster per worker.
//!
//! The client pool is keyed by the request's authority, which is the original `:authority`
//! (the upstream sees the Host the client sent, as through Envoy); the connector ignores it and
//! connects to the cluster's next endpoint. Every response on a connection carries which
//! configured endpoint the connection went to ([`ChosenEndpoint`]), as a failed connect does
//! ([`ConnectError::endpoint`]): its metadata is `xds.upstream_host_metadata`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use thiserror::Error;
use tokio::net::TcpStream;
use wasmtrace_config::{Cluster, DiscoveryType};

use crate::BoxError;

/// Body of a request sent upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why a connection to a cluster could not be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// DNS gave no address.
    #[error("cannot resolve `{host}`: {reason}")]
    Resolve {
        /// The name.
        host: String,
        /// Why.
        reason: String,
    },
    /// The TCP connect failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The endpoint's address.
        addr: SocketAddr,
        /// Which of the cluster's configured endpoints it is.
        endpoint: usize,
        /// The OS error.
        source: io::Error,
    },
    /// The TCP connect took longer than `connect_timeout`.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The endpoint's address.
        addr: SocketAddr,
        /// Which of the cluster's configured endpoints it is.
        endpoint: usize,
        /// The cluster's connect timeout.
        timeout: Duration,
    },
}

impl ConnectError {
    /// The host the connect went to, when one was chosen: its address and its index among the
    /// cluster's configured endpoints.
    pub fn endpoint(&self) -> Option<(SocketAddr, usize)> {
        match self {
            Self::Resolve { .. } => None,
            Self::Connect { addr, endpoint, .. } | Self::Timeout { addr, endpoint, .. } => Some((*addr, *endpoint)),
        }
    }

    /// Envoy's `upstream.transport_failure_reason` for this failure: `delayed connect error: `
    /// and the OS's description of a refused or failed connect; empty for a timeout or a name
    /// that did not resolve.
    pub fn transport_failure_reason(&self) -> String {
        match self {
            Self::Connect { source, .. } => {
                let text = source.to_string();
                // Rust appends ` (os error N)` to the OS's strerror text; Envoy prints the text.
                let text = text.split(" (os error").next().unwrap_or_default();
                format!("delayed connect error: {text}")
            }
            Self::Resolve { .. } | Self::Timeout { .. } => String::new(),
        }
    }
}

/// Which of a cluster's configured endpoints (`load_assignment` order) a connection went to: in
/// the extensions of every response on that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChosenEndpoint(pub usize);

struct Endpoints {
    cluster: Cluster,
    next: AtomicUsize,
}

impl Endpoints {
    /// The next endpoint in turn: its address and its index in the configuration.
    async fn resolve_next(&self) -> Result<(SocketAddr, usize), ConnectError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let index = turn % self.cluster.endpoints.len().max(1);
        let endpoint = &self.cluster.endpoints[index];
        if let Ok(ip) = endpoint.host.parse() {
            return Ok((SocketAddr::new(ip, endpoint.port), index));
        }
        let resolve_error = |reason: String| ConnectError::Resolve { host: endpoint.host.clone(), reason };
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| resolve_error(e.to_string()))?
            .collect();
        let chosen = match self.cluster.discovery {
            // STRICT_DNS: every address is an endpoint.
            DiscoveryType::StrictDns => {
                addresses.get((turn / self.cluster.endpoints.len().max(1)) % addresses.len().max(1))
            }
            // LOGICAL_DNS (and a name in STATIC, refused by the config): the first address.
            _ => addresses.first(),
        };
        chosen.map(|addr| (*addr, index)).ok_or_else(|| resolve_error("no addresses".into()))
    }
}

/// Connects to a cluster's endpoints in turn.
#[derive(Clone)]
pub struct ClusterConnector {
    endpoints: Arc<Endpoints>,
}

/// An upstream connection. An upstream may answer before it read the whole request (a 413
/// before an upload) and then close: writing the rest fails with a broken pipe or a reset,
/// which hyper would report instead of the answer it can still read. Once the write side is
/// dead, writes are dropped, so hyper reads the answer and the rest of the request body is
/// discarded, as Envoy does; if no answer comes, the read fails and the request is a reset.
pub struct UpstreamIo {
    inner: TokioIo<TcpStream>,
    write_side_closed: bool,
    /// The configured endpoint this connection went to.
    endpoint: ChosenEndpoint,
}

impl UpstreamIo {
    /// Whether `result` says the peer stopped reading; then this and every later write is
    /// dropped.
    fn peer_stopped_reading<T>(&mut self, result: &Poll<io::Result<T>>) -> bool {
        if let Poll::Ready(Err(e)) = result
            && matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
        {
            self.write_side_closed = true;
        }
        self.write_side_closed
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.write_side_closed {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if self.peer_stopped_reading(&result) { Poll::Ready(Ok(buf.len())) } else { result }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total = bufs.iter().map(|b| b.len()).sum();
        if self.write_side_closed {
            return Poll::Ready(Ok(total));
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if self.peer_stopped_reading(&result) { Poll::Ready(Ok(total)) } else { result }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_side_closed {
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if self.peer_stopped_reading(&result) { Poll::Ready(Ok(())) } else { result }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_side_closed {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.endpoint)
    }
}

impl tower_service::Service<Uri> for ClusterConnector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let endpoints = self.endpoints.clone();
        Box::pin(async move {
            let (addr, endpoint) = endpoints.resolve_next().await?;
            let timeout = endpoints.cluster.connect_timeout;
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| ConnectError::Timeout { addr, endpoint, timeout })?
                .map_err(|source| ConnectError::Connect { addr, endpoint, source })?;
            let _ = stream.set_nodelay(true);
            Ok(UpstreamIo { inner: TokioIo::new(stream), write_side_closed: false, endpoint: ChosenEndpoint(endpoint) })
        })
    }
}

/// A cluster's client on one worker: pooled connections, HTTP/1.1 or HTTP/2.
#[derive(Clone)]
pub struct ClusterClient {
    /// The cluster as configured.
    pub cluster: Arc<Cluster>,
    /// The pooled client.
    pub client: Client<ClusterConnector, UpstreamBody>,
}

impl ClusterClient {
    /// A client for `cluster`.
    pub fn new(cluster: &Cluster) -> Self {
        let connector =
            ClusterConnector { endpoints: Arc::new(Endpoints { cluster: cluster.clone(), next: AtomicUsize::new(0) }) };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(cluster.http2)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self { cluster: Arc::new(cluster.clone()), client }
    }
}
