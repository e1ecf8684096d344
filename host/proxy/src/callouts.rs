//! `proxy_http_call` on a worker: the request goes to the named cluster through the worker's
//! pooled client, and its outcome comes back to the VM on the same thread.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use wasmtrace_runtime::{
    CalloutCompletion, CalloutDispatcher, CalloutFailure, CalloutRequest, CalloutResponse, DispatchError,
    GrpcCallControl, GrpcCallRequest, GrpcEvents,
};

use crate::body::boxed;
use crate::cluster::ClusterClient;
use crate::message::{http_headers, response_header_map, trailer_map};
use crate::rescue::UpstreamFailure;
use crate::stats::ClusterStats;

/// Largest callout response body delivered to a filter.
pub const MAX_CALLOUT_BODY: usize = 16 << 20;

/// Sends callouts through a worker's cluster clients.
pub struct WorkerCallouts {
    /// Clients by cluster name.
    pub clusters: Rc<HashMap<String, ClusterClient>>,
    /// Counters by cluster name.
    pub stats: Arc<BTreeMap<String, Arc<ClusterStats>>>,
}

impl CalloutDispatcher for WorkerCallouts {
    fn has_cluster(&self, cluster: &str) -> bool {
        self.clusters.contains_key(cluster)
    }

    fn dispatch(&self, request: CalloutRequest, completion: CalloutCompletion) -> Result<(), DispatchError> {
        let client = self
            .clusters
            .get(&request.cluster)
            .cloned()
            .ok_or_else(|| DispatchError::UnknownCluster(request.cluster.clone()))?;
        let stats = self.stats.get(&request.cluster).cloned();
        // Runs after the guest call that dispatched it has returned (same worker thread).
        tokio::task::spawn_local(async move {
            if let Some(stats) = &stats {
                stats.requests.fetch_add(1, Ordering::Relaxed);
            }
            let outcome = send(&client, request).await;
            if let (Err(failure), Some(stats)) = (&outcome, &stats) {
                stats.failure(&failure.reason);
            }
            completion.complete(outcome.map_err(|f| CalloutFailure { reason: f.reason_text }));
        });
        Ok(())
    }

    fn dispatch_grpc(
        &self,
        request: GrpcCallRequest,
        events: GrpcEvents,
    ) -> Result<Box<dyn GrpcCallControl>, DispatchError> {
        let client = self
            .clusters
            .get(&request.cluster)
            .cloned()
            .ok_or_else(|| DispatchError::UnknownCluster(request.cluster.clone()))?;
        let stats = self.stats.get(&request.cluster).cloned();
        crate::grpc_callouts::dispatch(client, stats, request, events)
    }
}

struct Failed {
    reason: String,
    reason_text: String,
}

impl From<UpstreamFailure> for Failed {
    fn from(failure: UpstreamFailure) -> Self {
        let reason_text = match &failure {
            UpstreamFailure::Connect(why) => format!("connection failure: {why}"),
            UpstreamFailure::Timeout(after) => format!("timeout after {after:?}"),
            UpstreamFailure::Reset(why) => format!("reset: {why}"),
        };
        Self { reason: failure.kind().to_owned(), reason_text }
    }
}

async fn send(client: &ClusterClient, request: CalloutRequest) -> Result<CalloutResponse, Failed> {
    let authority = request.headers.get_str(":authority").unwrap_or(&client.cluster.name).to_owned();
    let path = request.headers.get_str(":path").unwrap_or("/").to_owned();
    let uri: Uri = format!("http://{authority}{path}")
        .parse()
        .map_err(|e| Failed { reason: "reset".into(), reason_text: format!("invalid callout URI: {e}") })?;
    let mut upstream = Request::builder()
        .method(request.headers.get_str(":method").unwrap_or("GET"))
        .uri(uri)
        .version(if client.cluster.http2 { Version::HTTP_2 } else { Version::HTTP_11 })
        .body(boxed(Full::new(Bytes::from(request.body)).map_err(|never| match never {})))
        .map_err(|e| Failed { reason: "reset".into(), reason_text: format!("invalid callout request: {e}") })?;
    *upstream.headers_mut() = http_headers(&request.headers);
    if !client.cluster.http2
        && let Ok(host) = http::HeaderValue::from_str(&authority)
    {
        upstream.headers_mut().insert(http::header::HOST, host);
    }
    let exchange = async {
        let response =
            client.client.request(upstream).await.map_err(|e| Failed::from(UpstreamFailure::from_client_error(&e)))?;
        let (parts, body) = response.into_parts();
        let collected = Limited::new(body, MAX_CALLOUT_BODY)
            .collect()
            .await
            .map_err(|e| Failed { reason: "reset".into(), reason_text: format!("reading the response body: {e}") })?;
        let trailers = collected.trailers().map(trailer_map).unwrap_or_default();
        Ok(CalloutResponse {
            headers: response_header_map(parts.status, &parts.headers),
            body: collected.to_bytes().to_vec(),
            trailers,
        })
    };
    match request.timeout {
        Some(timeout) => tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Failed::from(UpstreamFailure::Timeout(timeout)))?,
        None => exchange.await,
    }
}
