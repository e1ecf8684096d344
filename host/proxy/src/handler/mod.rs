//! One HTTP stream from request to response: Envoy's defaults on the request, the request
//! filters, routing, the upstream call (or a direct/local response), the response filters, and
//! the body pumps that stream data through the filters in both directions (or, for an upgrade the
//! upstream accepted, the tunnel of [`crate::upgrade`]).
//!
//! HTTP/1 trailers pass an HTTP/1 hop only with that hop's `enable_trailers` (Envoy's HTTP/1
//! codec drops them otherwise): the connection manager's `http_protocol_options` on the downstream
//! side (trailers a client sends over HTTP/1 never reach the filters; none are written to an
//! HTTP/1 client), the cluster's on the upstream side (none are written to an HTTP/1 upstream;
//! those it sends never reach the filters). HTTP/2 carries trailers always.

mod before_filters;
mod forward;
mod stream;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use wasmtrace_config::{Listener, TrafficDirection};
use wasmtrace_runtime::properties::Metadata;
use wasmtrace_runtime::{HttpExchange, StreamInfo};

use crate::body::ResponseBody;
use crate::chain::FilterChain;
use crate::cluster::ClusterClient;
use crate::downstream_body::DownstreamBody;
use crate::in_process::{Application, HopBody};
use crate::message::{Hop, protocol_name, request_header_map, strip_hop_by_hop};
use crate::rescue::Rescue;
use crate::stats::{ClusterStats, ListenerStats};
use crate::swap::WorkerPlugin;
use crate::upgrade;

use before_filters::{UpgradeDecision, apply_envoy_defaults, decide_upgrade, refuse_before_filters};
use stream::Stream;

/// A stream a filter closed: hyper resets it (HTTP/2 `RST_STREAM`, HTTP/1 connection close).
#[derive(Debug, thiserror::Error)]
#[error("stream reset by a filter")]
pub struct StreamReset;

/// What one worker knows about one listener.
pub struct ListenerContext {
    /// The listener as configured.
    pub listener: Arc<Listener>,
    /// Its Wasm filters on this worker, in chain order.
    pub filters: Vec<Rc<WorkerPlugin>>,
    /// Upstream clients by cluster name.
    pub clusters: Rc<std::collections::HashMap<String, ClusterClient>>,
    /// This listener's counters.
    pub stats: Arc<ListenerStats>,
    /// Counters by cluster name.
    pub cluster_stats: Arc<std::collections::BTreeMap<String, Arc<ClusterStats>>>,
}

/// The downstream connection a stream arrived on.
pub struct ConnectionInfo {
    /// The client (in-process: when the application's server says, see [`crate::in_process`]).
    pub peer: Option<SocketAddr>,
    /// Our address (in-process: likewise).
    pub local: Option<SocketAddr>,
    /// Connection id (`connection.id`).
    pub id: u64,
    /// Where a stream that switched protocols leaves its tunnel, for the connection's task to
    /// carry.
    pub tunnel: upgrade::TunnelSlot,
}

/// Serves one request.
///
/// `application`: in-process, the service the filters wrap ([`crate::in_process`]); a route to
/// a cluster then sends the request there instead of to the cluster.
pub async fn serve<B: Into<HopBody>>(
    ctx: Rc<ListenerContext>,
    conn: Rc<ConnectionInfo>,
    request: Request<B>,
    application: Option<Application>,
) -> Result<Response<ResponseBody>, StreamReset> {
    ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let body = body.into();
    let requested_upgrade = match upgrade::requested(&parts) {
        Ok(requested) => requested,
        Err(upgrade::MalformedUpgrade) => return Ok(refuse(&ctx, &Rescue::UpgradeConnectionHeader)),
    };
    match &requested_upgrade {
        Some(requested) => {
            strip_hop_by_hop(&mut parts.headers, Hop::Upgrade);
            upgrade::set_headers(&mut parts.headers, &requested.spelled);
        }
        None => strip_hop_by_hop(&mut parts.headers, Hop::Request),
    }
    if let Some(rescue) = refuse_before_filters(&ctx.listener.http.limits, &parts) {
        return Ok(refuse(&ctx, &rescue));
    }
    let downstream_h1 = parts.version != Version::HTTP_2;
    let trailers = ctx.listener.http.http1_trailers;
    // Envoy's HTTP/1 codec drops the trailers it reads without `enable_trailers`.
    let body = DownstreamBody::new(body, trailers || !downstream_h1);
    apply_envoy_defaults(&ctx.listener.http, &conn, &mut parts.headers);
    // The upgrade is decided on the route of the request as the connection manager left it, before
    // the filters (Envoy picks the filter chain by it).
    let asked_to_upgrade = requested_upgrade.is_some();
    let (upgrade, filters) = match requested_upgrade {
        Some(requested) => decide_upgrade(&ctx, &mut parts, requested, &body),
        None => (UpgradeDecision::None, ctx.filters.as_slice()),
    };
    if matches!(upgrade, UpgradeDecision::WithBody) {
        return Ok(refuse(&ctx, &Rescue::UpgradeWithBody));
    }
    let info = StreamInfo {
        protocol: protocol_name(parts.version).to_owned(),
        source: conn.peer,
        destination: conn.local,
        connection_id: conn.id,
        listener_direction: match ctx.listener.direction {
            TrafficDirection::Unspecified => 0,
            TrafficDirection::Inbound => 1,
            TrafficDirection::Outbound => 2,
        },
        listener_metadata: runtime_metadata(&ctx.listener.metadata),
        filter_chain_name: ctx.listener.filter_chain_name.clone(),
        ..StreamInfo::default()
    };
    let access_log = tracing::enabled!(target: "wasmtrace::access", tracing::Level::DEBUG)
        .then(|| (parts.method.clone(), parts.uri.clone()));
    // Without filters nothing can read or change the request: it goes upstream as hyper parsed
    // it, never converted to the filters' header map and back.
    // In-process, what the application's server put on the request (its connection's address,
    // say) reaches the application as it would without the filters.
    let application = application.map(|application| application.keeping(std::mem::take(&mut parts.extensions)));
    let (request_headers, head) = if filters.is_empty() {
        (None, Some(parts))
    } else {
        (Some(request_header_map(&parts.method, &parts.uri, &parts.headers)), None)
    };
    let exchange = Rc::new(RefCell::new(HttpExchange { request_headers, info, ..HttpExchange::default() }));
    let chain = FilterChain::open(filters, exchange.clone());
    let stream = Stream {
        ctx: ctx.clone(),
        conn: conn.clone(),
        chain,
        exchange,
        head,
        application,
        handed_off: std::cell::Cell::new(false),
        downstream_failed: body.failed.clone(),
        upgrade,
        downstream_h1,
        trailers,
    };
    let mut result = stream.run(body).await;
    if let Ok(response) = &mut result {
        ctx.stats.response(response.status().as_u16());
        if asked_to_upgrade && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Whatever answered an upgrade request other than its tunnel (a refusal, a local
            // reply, the upstream's own answer, a filter's rewrite of the 101) closes the
            // connection, as Envoy's codec, in upgrade mode since the request's headers, closes
            // it: no byte the client sent after them is read as a request, and hyper never hands
            // the socket to an upgrade still pending.
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    if let Some((method, uri)) = access_log {
        match &result {
            Ok(response) => tracing::debug!(
                target: "wasmtrace::access",
                listener = %ctx.listener.name,
                %method,
                path = %uri,
                status = response.status().as_u16(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "request"
            ),
            Err(_) => tracing::debug!(target: "wasmtrace::access", listener = %ctx.listener.name, path = %uri, "reset"),
        }
    }
    result
}

/// The answer to a request refused before the filters, counted.
fn refuse(ctx: &ListenerContext, rescue: &Rescue) -> Response<ResponseBody> {
    let response = rescue.response();
    ctx.stats.response(response.status().as_u16());
    if let Some(error) = rescue.downstream_error() {
        ctx.stats.downstream_error(error);
        tracing::debug!(target: "wasmtrace::access", listener = %ctx.listener.name, refused = error.label(), "request");
    }
    response
}

/// A configuration's metadata as the filters read it (shared, not copied).
fn runtime_metadata(metadata: &wasmtrace_config::Metadata) -> Metadata {
    Metadata { filter_metadata: metadata.filter_metadata.clone() }
}
