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

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, UPGRADE};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpInfo;
use tokio::sync::oneshot;
use wasmtrace_config::{Cluster, HttpConnectionManager, Listener, RouteAction, TrafficDirection, UpgradeFilters};
use wasmtrace_runtime::properties::Metadata;
use wasmtrace_runtime::{Direction, HeaderMap, HttpExchange, LocalResponse, StreamInfo};

use crate::body::{
    ChannelBody, FrameSink, FrameSlot, ProxyBody, PumpedBody, ResponseBody, TrailerGate, boxed, full, response_body,
};
use crate::chain::{self, DataVerdict, FilterChain, SharedChain, Verdict};
use crate::cluster::{ChosenEndpoint, ClusterClient, ConnectError};
use crate::in_process::{Application, HopBody, SendError};
use crate::message::{
    Hop, UnfilteredRequest, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID, http_headers, protocol_name,
    request_header_map, response_header_map, status_of, strip_hop_by_hop, trailer_map,
};
use crate::rescue::UpstreamFailure;
use crate::route;
use crate::stats::{ClusterStats, DownstreamError, ListenerStats};
use crate::swap::WorkerPlugin;
use crate::upgrade::{self, PendingUpgrade};

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
        Err(upgrade::MalformedUpgrade) => {
            ctx.stats.downstream_error(DownstreamError::UpgradeFailed);
            ctx.stats.response(400);
            return Ok(upgrade_refused_400("an upgrade's Connection header must be visible ASCII\n"));
        }
    };
    match &requested_upgrade {
        Some(requested) => {
            strip_hop_by_hop(&mut parts.headers, Hop::Upgrade);
            upgrade::set_headers(&mut parts.headers, &requested.spelled);
        }
        None => strip_hop_by_hop(&mut parts.headers, Hop::Request),
    }
    if let Some((error, response)) = refuse_before_filters(&ctx.listener.http.limits, &parts) {
        ctx.stats.downstream_error(error);
        ctx.stats.response(response.status().as_u16());
        tracing::debug!(target: "wasmtrace::access", listener = %ctx.listener.name, refused = error.label(), "request");
        return Ok(response);
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
        ctx.stats.downstream_error(DownstreamError::UpgradeFailed);
        ctx.stats.response(400);
        return Ok(upgrade_refused_400("an upgrade request cannot carry a body here\n"));
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

/// The 400 for an upgrade request refused before the filters (a body before the switch, a
/// `Connection` header this proxy cannot read as the next hop would), closing the connection.
fn upgrade_refused_400(text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(text));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Envoy's default request handling before filters see the request.
fn apply_envoy_defaults(http: &HttpConnectionManager, conn: &ConnectionInfo, headers: &mut http::HeaderMap) {
    if http.generate_request_id
        && !headers.contains_key(X_REQUEST_ID)
        && let Ok(id) =
            HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()))
    {
        headers.insert(X_REQUEST_ID, id);
    }
    if http.use_remote_address
        && let Some(peer) = conn.peer
    {
        let peer = peer.ip().to_string();
        let forwarded = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) => format!("{existing}, {peer}"),
            None => peer,
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// What becomes of a request's upgrade (decided before the filters, as Envoy chooses the filter
/// chain by it).
enum UpgradeDecision {
    /// A plain request.
    None,
    /// Allowed: tunnelled if the upstream switches protocols.
    Tunnel(PendingUpgrade),
    /// Refused on the route the request has: answered 403 `upgrade_failed` through the response
    /// filters, and the connection closed (no upgraded bytes may be read as a request).
    Refused,
    /// Allowed, but the request carries a body: refused 400 before the filters (they would see
    /// the body's end before the upgraded bytes).
    WithBody,
}

/// Whether the upgrade `requested` goes on (and through which filters), by the route the request
/// has before the filters. A refused upgrade with no route goes on as a plain request (its upgrade
/// headers dropped), as in Envoy, which answers 403 only on a route (`if (hasCachedRoute())` in
/// `ConnectionManagerImpl::ActiveStream::decodeHeaders`): it is answered 404 unless a filter
/// routes it, and the connection closed after the answer ([`serve`]). An upgrade request that
/// also carries a body is refused 400 (the filters would see its end before the upgraded bytes).
fn decide_upgrade<'a>(
    ctx: &'a ListenerContext,
    parts: &mut http::request::Parts,
    requested: upgrade::Requested,
    body: &DownstreamBody,
) -> (UpgradeDecision, &'a [Rc<WorkerPlugin>]) {
    let http = &ctx.listener.http;
    let selected = route::pick(&http.virtual_hosts, &UnfilteredRequest(parts));
    let on_route = match selected.map(|(_, route)| &route.action) {
        Some(RouteAction::Cluster { upgrades, .. }) => upgrades.as_slice(),
        _ => &[],
    };
    let Some(chosen) = upgrade::allowed(http, on_route, &requested.kind) else {
        if selected.is_some() {
            return (UpgradeDecision::Refused, ctx.filters.as_slice());
        }
        strip_hop_by_hop(&mut parts.headers, Hop::Request);
        return (UpgradeDecision::None, ctx.filters.as_slice());
    };
    if !body.is_end_stream() {
        return (UpgradeDecision::WithBody, ctx.filters.as_slice());
    }
    let Some(downstream) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        // hyper hands every HTTP/1.1 request with `Upgrade` its connection; without it there is
        // nothing to switch.
        strip_hop_by_hop(&mut parts.headers, Hop::Request);
        return (UpgradeDecision::None, ctx.filters.as_slice());
    };
    let filters = match chosen {
        UpgradeFilters::Listener => ctx.filters.as_slice(),
        UpgradeFilters::RouterOnly => &[],
    };
    (UpgradeDecision::Tunnel(PendingUpgrade { downstream, requested }), filters)
}

async fn within<F: std::future::Future>(timeout: Option<Duration>, future: F) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, future).await.ok(),
        None => Some(future.await),
    }
}

struct Stream {
    ctx: Rc<ListenerContext>,
    /// The connection it arrived on (where a tunnel is left for the connection's task).
    conn: Rc<ConnectionInfo>,
    chain: SharedChain,
    exchange: Rc<RefCell<HttpExchange>>,
    /// The request head as received, on a listener without filters (`exchange` then has no
    /// request header map); taken when the request is sent upstream.
    head: Option<http::request::Parts>,
    /// In-process: the service the filters wrap, where a route to a cluster goes.
    application: Option<Application>,
    /// A body pump now ends the stream; dropping this handle must not.
    handed_off: std::cell::Cell<bool>,
    /// The client's request body broke its framing (set by [`DownstreamBody`]).
    downstream_failed: Arc<AtomicBool>,
    /// The request's upgrade, if it asked for one.
    upgrade: UpgradeDecision,
    /// The client speaks HTTP/1 (trailers to it need `enable_trailers`).
    downstream_h1: bool,
    /// The connection manager's `http_protocol_options.enable_trailers`: HTTP/1 trailers pass
    /// the downstream hop.
    trailers: bool,
}

impl Drop for Stream {
    /// A stream abandoned mid-way (the client went away while a filter or the upstream was
    /// pending) still reaches the access-log point; `log` runs once however the stream ends.
    fn drop(&mut self) {
        if !self.handed_off.get() {
            finish_stream(&self.chain, &self.exchange);
        }
    }
}

impl Stream {
    fn filter_count(&self) -> usize {
        self.chain.borrow().len()
    }

    /// The answer to a request whose body broke its framing, counted as the client's error.
    fn malformed_body(&self) -> LocalResponse {
        self.ctx.stats.downstream_error(DownstreamError::Framing);
        plain(400, "downstream_protocol_error", "the request body is malformed or cut short\n")
    }

    /// Records the route `request headers` select now in the stream's attributes
    /// (`xds.route_name`, `xds.cluster_name`, `xds.virtual_host_name` and their metadata), for
    /// the filters to read.
    fn note_route(&self, selected: Option<(&wasmtrace_config::VirtualHost, &wasmtrace_config::Route)>) {
        let cluster = selected.and_then(|(_, route)| match &route.action {
            RouteAction::Cluster { cluster, .. } => Some(cluster.as_str()),
            RouteAction::Direct { .. } => None,
        });
        let mut exchange = self.exchange.borrow_mut();
        let info = &mut exchange.info;
        info.route_name = selected.map(|(_, route)| route.name.clone());
        info.route_metadata = selected.map(|(_, route)| runtime_metadata(&route.metadata));
        info.virtual_host_name = selected.map(|(virtual_host, _)| virtual_host.name.clone());
        info.virtual_host_metadata = selected.map(|(virtual_host, _)| runtime_metadata(&virtual_host.metadata));
        info.cluster_name = cluster.map(str::to_owned);
        info.cluster_metadata = cluster
            .and_then(|name| self.ctx.clusters.get(name))
            .map(|client| runtime_metadata(&client.cluster.metadata));
    }

    /// Records the upstream host a response came from (`upstream.*`,
    /// `xds.upstream_host_metadata`): the connection's addresses and the configured endpoint it
    /// went to.
    fn note_upstream_host(&self, info: &mut StreamInfo, extensions: &http::Extensions) {
        let connection = extensions.get::<HttpInfo>();
        info.upstream = connection.map(HttpInfo::remote_addr);
        info.upstream_local_address = connection.map(HttpInfo::local_addr);
        info.upstream_host_metadata = match (info.cluster_name.as_deref(), extensions.get::<ChosenEndpoint>()) {
            (Some(cluster), Some(ChosenEndpoint(index))) => self
                .ctx
                .clusters
                .get(cluster)
                .and_then(|client| client.cluster.endpoint_metadata(*index))
                .map(runtime_metadata)
                .unwrap_or_default(),
            _ => Default::default(),
        };
    }

    async fn run(self, body: DownstreamBody) -> Result<Response<ResponseBody>, StreamReset> {
        let body_ended = body.is_end_stream();
        // An upgrade's stream goes on after its (empty) body: the upgraded bytes follow.
        let end_of_stream = body_ended && matches!(self.upgrade, UpgradeDecision::None);
        if matches!(self.upgrade, UpgradeDecision::Refused) {
            return self.refuse_upgrade().await;
        }
        if self.filter_count() > 0 {
            // As in Envoy, the route is resolved before the request filters run, so they can read
            // it; it is resolved again after them (Envoy clears its route cache when a Wasm filter
            // changes request headers, and re-resolving unchanged headers picks the same route).
            let ctx = self.ctx.clone();
            let selected = match self.exchange.borrow().request_headers.as_ref() {
                Some(headers) => route::pick(&ctx.listener.http.virtual_hosts, headers),
                None => None,
            };
            self.note_route(selected);
        }
        match chain::request_headers(&self.chain, end_of_stream).await {
            Verdict::Local(response, index) => return self.local_reply(response, index + 1).await,
            Verdict::Close => return self.close(),
            Verdict::Continue => {}
        }
        let all = self.filter_count();
        // The route borrows the listener's configuration, not the stream (which `forward` takes).
        let ctx = self.ctx.clone();
        let hosts = &ctx.listener.http.virtual_hosts;
        let selected = match &self.head {
            Some(head) => route::pick(hosts, &UnfilteredRequest(head)),
            None => match self.exchange.borrow().request_headers.as_ref() {
                Some(headers) => route::pick(hosts, headers),
                None => route::pick(hosts, &HeaderMap::new()),
            },
        };
        let Some((virtual_host, route)) = selected else {
            if all > 0 {
                self.note_route(None);
            }
            let response = plain(404, "route_not_found", "no route matches this request\n");
            return self.local_reply(response, all).await;
        };
        if all > 0 {
            self.note_route(Some((virtual_host, route)));
        }
        match &route.action {
            RouteAction::Direct { status, body } => {
                self.local_reply(plain(*status, "direct_response", body), all).await
            }
            RouteAction::Cluster { cluster, timeout, prefix_rewrite, .. } => {
                let prefix = match &route.matcher.path {
                    wasmtrace_config::PathMatch::Prefix(p) => Some(p.as_str()),
                    wasmtrace_config::PathMatch::Exact(p) => Some(p.as_str()),
                };
                let rewrite = prefix_rewrite.as_deref().zip(prefix);
                // Boxed: the upstream call's future is most of the stream's size, and an
                // inline one is copied into every future that awaits it.
                Box::pin(self.forward(cluster, *timeout, rewrite, body, body_ended)).await
            }
        }
    }

    /// The answer to an upgrade neither the connection manager nor the route allows: Envoy's
    /// empty 403 `upgrade_failed`, through the response filters (which never saw the request
    /// headers), and the connection closed after it.
    async fn refuse_upgrade(self) -> Result<Response<ResponseBody>, StreamReset> {
        self.ctx.stats.downstream_error(DownstreamError::UpgradeFailed);
        let all = self.filter_count();
        if all > 0 {
            let ctx = self.ctx.clone();
            let selected = match &self.head {
                Some(head) => route::pick(&ctx.listener.http.virtual_hosts, &UnfilteredRequest(head)),
                None => match self.exchange.borrow().request_headers.as_ref() {
                    Some(headers) => route::pick(&ctx.listener.http.virtual_hosts, headers),
                    None => None,
                },
            };
            self.note_route(selected);
        }
        let mut response = self.local_reply(plain(403, "upgrade_failed", ""), all).await?;
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        Ok(response)
    }

    /// Sends the request to `cluster` and the response back through the filters.
    async fn forward(
        mut self,
        cluster: &str,
        timeout: Option<Duration>,
        rewrite: Option<(&str, &str)>,
        body: DownstreamBody,
        end_of_stream: bool,
    ) -> Result<Response<ResponseBody>, StreamReset> {
        let all = self.filter_count();
        // Borrowed from the listener's context (cloning a pooled client costs several Arcs).
        let ctx = self.ctx.clone();
        let client = ctx.clusters.get(cluster);
        let in_process = self.application.is_some();
        if client.is_none() && !in_process {
            return self
                .local_reply(plain(503, "cluster_not_found", &format!("cluster `{cluster}` does not exist\n")), all)
                .await;
        }
        let http2 = !in_process && client.is_some_and(|client| client.cluster.http2);
        if matches!(self.upgrade, UpgradeDecision::Tunnel(_)) {
            let text = if in_process {
                // The application's own connection is hyper's, not the filters': nothing here
                // could carry the upgraded bytes through them.
                "in-process filters do not tunnel upgrades\n".to_owned()
            } else if http2 {
                // Envoy would send an extended CONNECT (RFC 8441); hyper's client has none.
                format!("cluster `{cluster}` speaks HTTP/2, which cannot carry an HTTP/1.1 upgrade here\n")
            } else {
                String::new()
            };
            if !text.is_empty() {
                return self.local_reply(plain(502, "upgrade_failed", &text), all).await;
            }
        }
        // The HTTP/1 upstream codec drops trailers without the cluster's `enable_trailers`; the
        // application takes them as its body gives them.
        let keep_trailers = in_process || client.is_some_and(|client| client.cluster.http1_trailers) || http2;
        let request = match self.head.take() {
            Some(head) => unfiltered_upstream_request(head, rewrite, http2, cluster),
            None => {
                let mut exchange = self.exchange.borrow_mut();
                exchange.info.cluster_name = Some(cluster.to_owned());
                exchange.info.request_headers_sent = true;
                // The router's first (and, without retries, only) attempt.
                exchange.info.attempt_count = 1;
                match exchange.request_headers.as_ref() {
                    Some(headers) => upstream_request(headers, rewrite, http2, cluster),
                    None => upstream_request(&HeaderMap::new(), rewrite, http2, cluster),
                }
            }
        };
        let mut request = match request {
            Ok(request) => request,
            Err(reason) => {
                let body = format!("the request cannot be forwarded: {reason}\n");
                return self.local_reply(plain(400, "invalid_request", &body), all).await;
            }
        };
        if let UpgradeDecision::Tunnel(pending) = &self.upgrade {
            // The upgrade that was allowed, whatever a filter did to the headers since: one
            // `Connection: upgrade`, the one `Upgrade` the client asked for, nothing hop-by-hop.
            strip_hop_by_hop(request.headers_mut(), Hop::Upgrade);
            upgrade::set_headers(request.headers_mut(), &pending.requested.spelled);
        }
        let (upstream_body, mut aborted): (ProxyBody, Option<oneshot::Receiver<Verdict>>) = if end_of_stream {
            (boxed(Empty::<Bytes>::new().map_err(|never| match never {})), None)
        } else if all == 0 {
            (boxed(TrailerGate::new(body, keep_trailers)), None)
        } else {
            let (tx, channel) = ChannelBody::new();
            let (abort_tx, abort_rx) = oneshot::channel();
            let pump =
                tokio::task::spawn_local(pump_request(self.chain.clone(), self.exchange.clone(), body, tx, abort_tx));
            self.chain.borrow_mut().set_request_pump(pump.abort_handle());
            (boxed(TrailerGate::new(channel, keep_trailers)), Some(abort_rx))
        };
        let stats = self.ctx.cluster_stats.get(cluster).cloned();
        if let Some(stats) = &stats {
            stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        let request = request.map(|()| upstream_body);
        let sent = within(timeout, async {
            match (self.application.take(), client) {
                (Some(application), _) => application
                    .call(request)
                    .await
                    .map(|response| response.map(HopBody::Application))
                    .map_err(SendError::App),
                (None, Some(client)) => client
                    .client
                    .request(request)
                    .await
                    .map(|response| response.map(HopBody::Wire))
                    .map_err(SendError::Client),
                (None, None) => unreachable!("checked above"),
            }
        });
        let aborted_by_filter = async {
            match aborted.as_mut() {
                Some(rx) => rx.await.ok(),
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            outcome = sent => outcome,
            Some(verdict) = aborted_by_filter => {
                return match verdict {
                    Verdict::Local(response, index) => self.local_reply(response, index + 1).await,
                    _ => self.close(),
                };
            }
        };
        let failure = match outcome {
            None => UpstreamFailure::Timeout(timeout.unwrap_or_default()),
            Some(Err(_)) if self.downstream_failed.load(Ordering::Relaxed) => {
                // The client's body broke off or broke its framing: the client's fault, not the
                // upstream's.
                let response = self.malformed_body();
                return self.local_reply(response, all).await;
            }
            Some(Err(SendError::Client(error))) => {
                if all > 0
                    && let Some(client) = client
                {
                    note_failed_host(&mut self.exchange.borrow_mut().info, &client.cluster, &error);
                }
                UpstreamFailure::from_client_error(&error)
            }
            Some(Err(SendError::App(error))) => UpstreamFailure::from_application_error(&*error),
            Some(Ok(response)) => return self.respond(response, keep_trailers).await,
        };
        if let Some(stats) = &stats {
            stats.failure(failure.kind());
        }
        let (status, details, text) = failure.response(cluster);
        // Counted per cluster; a log line per failed request would let a client flood the log.
        tracing::debug!(cluster, kind = failure.kind(), "{}", text.trim_end());
        self.local_reply(plain(status.as_u16(), details, &text), all).await
    }

    /// The upstream's response through the response filters (`upstream_trailers`: the upstream
    /// hop carries trailers, being HTTP/2 or with the cluster's `enable_trailers`).
    async fn respond(
        mut self,
        response: Response<HopBody>,
        upstream_trailers: bool,
    ) -> Result<Response<ResponseBody>, StreamReset> {
        if self.downstream_failed.load(Ordering::Relaxed) {
            // The upstream answered a request whose body broke off: that answer is about a
            // request the client never sent whole.
            let (response, all) = (self.malformed_body(), self.filter_count());
            return self.local_reply(response, all).await;
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let pending = std::mem::replace(&mut self.upgrade, UpgradeDecision::None);
            return match pending {
                UpgradeDecision::Tunnel(pending) if upgrade::accepts(response.headers(), &pending.requested.kind) => {
                    self.switch_protocols(response, pending).await
                }
                UpgradeDecision::Tunnel(pending) => {
                    // A `101` to another protocol (`h2c` to a WebSocket request) or none named:
                    // its bytes would pass routing and filters as a protocol nobody allowed.
                    let all = self.filter_count();
                    let text = format!(
                        "the upstream switched to a protocol other than the {} upgrade allowed\n",
                        pending.requested.kind
                    );
                    self.local_reply(plain(502, "upgrade_failed", &text), all).await
                }
                _ => {
                    let all = self.filter_count();
                    let text = "the upstream switched protocols without an upgrade this proxy tunnels\n";
                    self.local_reply(plain(502, "upstream_reset_before_response_started{protocol_error}", text), all)
                        .await
                }
            };
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, Hop::Response);
        // Trailers pass an HTTP/1 hop only with its `enable_trailers`: the upstream codec drops
        // what it reads (the filters never see them), the downstream one what it would write.
        let body = TrailerGate::new(body, upstream_trailers);
        let to_client = self.trailers || !self.downstream_h1;
        let all = self.filter_count();
        if all == 0 {
            return Ok(Response::from_parts(parts, response_body(TrailerGate::new(body, to_client))));
        }
        {
            let mut exchange = self.exchange.borrow_mut();
            exchange.response_headers = Some(response_header_map(parts.status, &parts.headers));
            exchange.info.response_code_details = Some("via_upstream".into());
            self.note_upstream_host(&mut exchange.info, &parts.extensions);
        }
        match chain::response_headers(&self.chain, body.is_end_stream(), all).await {
            Verdict::Local(response, _) => return Ok(self.finish_local(response)),
            Verdict::Close => return self.close(),
            Verdict::Continue => {}
        }
        let (status, headers) = {
            let mut exchange = self.exchange.borrow_mut();
            exchange.info.response_headers_sent = true;
            let map = exchange.response_headers.clone().unwrap_or_default();
            (status_of(&map), http_headers(&map))
        };
        if body.is_end_stream() {
            // No body (204, 304, HEAD): no body callbacks, as in Envoy.
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            self.finish();
            return Ok(response);
        }
        let slot = Rc::<FrameSlot>::default();
        let end = StreamEnd { chain: self.chain.clone(), exchange: self.exchange.clone() };
        let pumped = PumpedBody::new(slot.clone(), pump_response(end, body, slot));
        // The response pump owns the end of the stream from here.
        self.handed_off.set(true);
        let mut response: Response<ResponseBody> = Response::new(Box::pin(TrailerGate::new(pumped, to_client)));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// The upstream's `101` to an upgrade: through the response filters (not the end of the
    /// stream), to the client, and then the tunnel, which owns the end of the stream. A `101` the
    /// filters changed (another status, its upgrade headers gone or changed) is not tunnelled:
    /// it goes to the client as they left it, the connection closes after it, and the upstream's
    /// upgraded connection is dropped.
    async fn switch_protocols(
        self,
        mut response: Response<HopBody>,
        pending: PendingUpgrade,
    ) -> Result<Response<ResponseBody>, StreamReset> {
        let upstream = hyper::upgrade::on(&mut response);
        let (mut parts, _empty) = response.into_parts();
        // The upstream's own spelling of the protocol `accepts` checked, with nothing else
        // hop-by-hop.
        let protocol = parts.headers.get(UPGRADE).cloned().unwrap_or_else(|| pending.requested.spelled.clone());
        strip_hop_by_hop(&mut parts.headers, Hop::Upgrade);
        upgrade::set_headers(&mut parts.headers, &protocol);
        let all = self.filter_count();
        let mut reply = Response::new(full(Bytes::new()));
        if all == 0 {
            *reply.status_mut() = parts.status;
            *reply.headers_mut() = parts.headers;
        } else {
            {
                let mut exchange = self.exchange.borrow_mut();
                exchange.response_headers = Some(response_header_map(parts.status, &parts.headers));
                exchange.info.response_code_details = Some("via_upstream".into());
                self.note_upstream_host(&mut exchange.info, &parts.extensions);
            }
            match chain::response_headers(&self.chain, false, all).await {
                Verdict::Local(response, _) => return Ok(self.finish_local(response)),
                Verdict::Close => return self.close(),
                Verdict::Continue => {}
            }
            let mut exchange = self.exchange.borrow_mut();
            exchange.info.response_headers_sent = true;
            let map = exchange.response_headers.clone().unwrap_or_default();
            *reply.status_mut() = status_of(&map);
            *reply.headers_mut() = http_headers(&map);
        }
        if reply.status() != StatusCode::SWITCHING_PROTOCOLS
            || !upgrade::accepts(reply.headers(), &pending.requested.kind)
        {
            // Both sides' upgraded connections go with `pending` and `upstream`; `serve` closes
            // the client's connection after this answer (here too for a `101` left without its
            // headers).
            tracing::debug!("a response filter changed the 101: not tunnelling the upgrade");
            drop((pending, upstream));
            reply.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            self.finish();
            return Ok(reply);
        }
        let Ok(upstream) = upstream.await else {
            let text = "the upstream connection was lost as it switched protocols\n";
            return self
                .local_reply(plain(502, "upstream_reset_before_response_started{connection_termination}", text), all)
                .await;
        };
        let end = StreamEnd { chain: self.chain.clone(), exchange: self.exchange.clone() };
        let idle = self.ctx.listener.http.limits.stream_idle_timeout;
        let tunnel = upgrade::tunnel(end, pending.downstream, upstream, idle, self.ctx.stats.clone());
        // Carried by the connection's task once hyper wrote the 101 and let go of the connection.
        self.conn.tunnel.put(tunnel);
        // The tunnel owns the end of the stream from here.
        self.handed_off.set(true);
        Ok(reply)
    }

    /// A response the proxy or a filter produced, through the response filters `0..upto`.
    async fn local_reply(self, response: LocalResponse, upto: usize) -> Result<Response<ResponseBody>, StreamReset> {
        {
            let mut exchange = self.exchange.borrow_mut();
            let mut map = HeaderMap::from_pairs([(":status", response.status.to_string())]);
            for (name, value) in response.headers.iter() {
                map.add(name, value);
            }
            if map.get(b"content-type").is_none() && !response.body.is_empty() {
                map.add(b"content-type", b"text/plain");
            }
            if let Some(grpc) = response.grpc_status {
                map.add(b"grpc-status", grpc.to_string().as_bytes());
            }
            // The response filters see the length Envoy's local reply carries
            // (`Utility::prepareLocalReply`): the body's, over any the reply's maker set, and
            // none at all for an empty body.
            map.remove(b"content-length");
            if !response.body.is_empty() {
                map.add(b"content-length", response.body.len().to_string().as_bytes());
            }
            exchange.response_headers = Some(map);
            exchange.info.response_code_details = Some(response.details.clone());
        }
        match chain::response_headers(&self.chain, response.body.is_empty(), upto).await {
            Verdict::Local(replacement, _) => return Ok(self.finish_local(replacement)),
            Verdict::Close => return self.close(),
            Verdict::Continue => {}
        }
        let body = if response.body.is_empty() {
            Vec::new()
        } else {
            match chain::data(&self.chain, Direction::Response, response.body, true, upto).await {
                DataVerdict::Forward(bytes) => bytes,
                DataVerdict::Held => Vec::new(),
                DataVerdict::Stop(_) => return self.close(),
            }
        };
        let map = self.exchange.borrow().response_headers.clone().unwrap_or_default();
        let mut headers = http_headers(&map);
        keep_length_only_if_true(&mut headers, body.len());
        let mut reply = Response::new(full(body));
        *reply.status_mut() = status_of(&map);
        *reply.headers_mut() = headers;
        self.finish();
        Ok(reply)
    }

    /// A local response sent as is (from a response-phase filter), ending the stream.
    fn finish_local(self, response: LocalResponse) -> Response<ResponseBody> {
        let mut headers = http_headers(&response.headers);
        keep_length_only_if_true(&mut headers, response.body.len());
        let mut reply = Response::new(full(response.body));
        *reply.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *reply.headers_mut() = headers;
        if !reply.headers().contains_key(CONTENT_TYPE) {
            reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        self.exchange.borrow_mut().info.response_code_details = Some(response.details);
        self.finish();
        reply
    }

    fn close(self) -> Result<Response<ResponseBody>, StreamReset> {
        self.finish();
        Err(StreamReset)
    }

    /// The access-log point: `proxy_on_log`, then the stream contexts end (when the last
    /// reference to the chain goes).
    fn finish(self) {
        finish_stream(&self.chain, &self.exchange);
    }
}

/// A configuration's metadata as the filters read it (shared, not copied).
fn runtime_metadata(metadata: &wasmtrace_config::Metadata) -> Metadata {
    Metadata { filter_metadata: metadata.filter_metadata.clone() }
}

/// Records the host a failed connect went to, as Envoy does when its connection pool fails
/// (`upstream.address`, `upstream.transport_failure_reason`, `xds.upstream_host_metadata`); a
/// name that did not resolve chose no host.
fn note_failed_host(info: &mut StreamInfo, cluster: &Cluster, error: &hyper_util::client::legacy::Error) {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            let Some((addr, endpoint)) = connect.endpoint() else { return };
            info.upstream = Some(addr);
            info.upstream_transport_failure_reason = connect.transport_failure_reason();
            info.upstream_host_metadata = cluster.endpoint_metadata(endpoint).map(runtime_metadata).unwrap_or_default();
            return;
        }
        source = cause.source();
    }
}

fn finish_stream(chain: &SharedChain, exchange: &Rc<RefCell<HttpExchange>>) {
    exchange.borrow_mut().info.end_time.get_or_insert_with(SystemTime::now);
    chain.borrow_mut().log();
}

/// Keeps `content-length` on a proxy-made response only when it is exactly one value, the
/// length of the body being sent; otherwise removes it, and hyper writes the length of the body
/// it is handed. Envoy sends whatever length the filters left, so a filter that rewrote a local
/// reply's body without fixing the header would put a wrong length on the wire there (a client
/// reads too little or waits for more); here the wire always agrees with the body.
fn keep_length_only_if_true(headers: &mut http::HeaderMap, body_len: usize) {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let agrees = match (values.next(), values.next()) {
        // Compared as written: `+5` or `05` parse as 5 but are not a valid content-length.
        (Some(value), None) => value.as_bytes() == body_len.to_string().as_bytes(),
        (None, None) => true,
        _ => false,
    };
    if !agrees {
        headers.remove(CONTENT_LENGTH);
    }
}

/// A plain-text local response.
fn plain(status: u16, details: &str, body: &str) -> LocalResponse {
    // Envoy's local replies carry a content type only with a body (an empty `direct_response`
    // has neither `content-type` nor `content-length`).
    let headers =
        if body.is_empty() { HeaderMap::new() } else { HeaderMap::from_pairs([("content-type", "text/plain")]) };
    LocalResponse { status, body: body.as_bytes().to_vec(), headers, details: details.to_owned(), grpc_status: None }
}

/// Why a request cannot be sent upstream after the request filters ran.
#[derive(Debug, thiserror::Error)]
enum UpstreamRequestError {
    /// `:authority` is not `host[:port]` (a filter wrote it, or it came that way).
    #[error("`:authority` is not a valid host[:port]")]
    Authority,
    /// `:path` is not an origin-form path, or would not reach the upstream as written.
    #[error("`:path` is not a valid request path")]
    Path,
    /// `:method` is not a method.
    #[error("`:method` is not a valid method")]
    Method,
}

/// The upstream request head from the filtered request headers. The URI is built from its parts,
/// never from a formatted string: the upstream receives exactly the `:path` the route matched
/// (after `prefix_rewrite`), and an authority is only ever an authority.
fn upstream_request(
    headers: &HeaderMap,
    rewrite: Option<(&str, &str)>,
    http2: bool,
    cluster: &str,
) -> Result<Request<()>, UpstreamRequestError> {
    let method = http::Method::from_bytes(headers.get(b":method").unwrap_or(b"GET"))
        .map_err(|_| UpstreamRequestError::Method)?;
    let target = UpstreamTarget {
        authority: headers.get(b":authority"),
        path: headers.get_str(":path").unwrap_or("/"),
        rewrite,
        http2,
        cluster,
    };
    target.request(method, http_headers(headers))
}

/// The upstream request head of a request no filter saw: its own method and headers, moved.
fn unfiltered_upstream_request(
    mut head: http::request::Parts,
    rewrite: Option<(&str, &str)>,
    http2: bool,
    cluster: &str,
) -> Result<Request<()>, UpstreamRequestError> {
    let mut headers = std::mem::take(&mut head.headers);
    let host = headers.remove(HOST);
    let target = UpstreamTarget {
        authority: head.uri.authority().map(|a| a.as_str().as_bytes()).or(host.as_ref().map(HeaderValue::as_bytes)),
        path: head.uri.path_and_query().map_or("/", |p| p.as_str()),
        rewrite,
        http2,
        cluster,
    };
    target.request(head.method, headers)
}

/// Where a request goes upstream, as the route decided.
struct UpstreamTarget<'a> {
    /// The request's `:authority` (the cluster name when it has none).
    authority: Option<&'a [u8]>,
    /// The request's `:path`.
    path: &'a str,
    /// `(replacement, matched prefix)` of the route's `prefix_rewrite`.
    rewrite: Option<(&'a str, &'a str)>,
    /// Whether the cluster speaks HTTP/2 (no Host header then).
    http2: bool,
    cluster: &'a str,
}

impl UpstreamTarget<'_> {
    /// The request head with `method` and `headers` (hop-by-hop and Host already removed).
    fn request(&self, method: http::Method, headers: http::HeaderMap) -> Result<Request<()>, UpstreamRequestError> {
        let authority = match self.authority.filter(|a| !a.is_empty()) {
            Some(value) if crate::authority::is_valid(value) => {
                Authority::try_from(value).map_err(|_| UpstreamRequestError::Authority)?
            }
            Some(_) => return Err(UpstreamRequestError::Authority),
            None => Authority::try_from(self.cluster).map_err(|_| UpstreamRequestError::Authority)?,
        };
        let rewritten = self.rewrite.and_then(|(replacement, prefix)| {
            self.path.strip_prefix(prefix).map(|rest| format!("{replacement}{rest}"))
        });
        let path = rewritten.as_deref().unwrap_or(self.path);
        let path_and_query = origin_form(path).ok_or(UpstreamRequestError::Path)?;
        let uri = Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| UpstreamRequestError::Path)?;
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = if self.http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        *request.headers_mut() = headers;
        if !self.http2
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(HOST, host);
        }
        Ok(request)
    }
}

/// `path` as an origin-form request target, only if it reaches the upstream byte for byte: the
/// `http` crate drops a `#fragment` silently, so a path it would change is refused.
fn origin_form(path: &str) -> Option<http::uri::PathAndQuery> {
    if !path.starts_with('/') {
        return None;
    }
    let parsed = http::uri::PathAndQuery::try_from(path).ok()?;
    (parsed.as_str() == path).then_some(parsed)
}

/// Why a request is answered before any filter sees it, and the answer: what Envoy's codec and
/// connection manager refuse (a malformed authority, oversized headers, `CONNECT` without
/// `upgrade_configs`).
fn refuse_before_filters(
    limits: &wasmtrace_config::ConnectionLimits,
    parts: &http::request::Parts,
) -> Option<(DownstreamError, Response<ResponseBody>)> {
    let refuse = |error, status: StatusCode, body: &'static str| {
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Some((error, response))
    };
    if parts.method == http::Method::CONNECT {
        return refuse(
            DownstreamError::MethodNotAllowed,
            StatusCode::FORBIDDEN,
            "CONNECT is not supported on this listener\n",
        );
    }
    // Envoy counts names and values, pseudo-headers included.
    let header_bytes: usize =
        parts.headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum::<usize>()
            + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
            + parts.method.as_str().len();
    if header_bytes > limits.max_request_headers_kb as usize * 1024
        || parts.headers.len() > limits.max_headers_count as usize
    {
        return refuse(
            DownstreamError::HeadersTooLarge,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request headers are larger than this listener accepts\n",
        );
    }
    let host = parts.headers.get_all(HOST);
    let mut hosts = host.iter();
    let from_host = hosts.next();
    if hosts.next().is_some() {
        return refuse(DownstreamError::InvalidAuthority, StatusCode::BAD_REQUEST, "more than one Host header\n");
    }
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes()).or(from_host.map(HeaderValue::as_bytes));
    if authority.is_none() && parts.version != http::Version::HTTP_10 {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400 (h2 likewise without
        // `:authority` or `host`); HTTP/1.0 may omit it.
        return refuse(DownstreamError::InvalidAuthority, StatusCode::BAD_REQUEST, "the request has no Host\n");
    }
    if authority.is_some_and(|value| !crate::authority::is_valid(value)) {
        return refuse(
            DownstreamError::InvalidAuthority,
            StatusCode::BAD_REQUEST,
            "the Host (or :authority) is not a valid host[:port]\n",
        );
    }
    None
}

/// The client's request body; records whether it failed (a malformed chunk, a connection cut
/// before the announced length), so the failure is answered as the client's (400), not as the
/// upstream's.
///
/// Dropped before its end — the upstream answered early (a 413 before reading an upload) or a
/// filter replied locally — the rest is read and discarded, as Envoy does, so the client gets
/// the answer instead of a reset while it is still sending.
pub struct DownstreamBody {
    inner: Option<HopBody>,
    failed: Arc<AtomicBool>,
    /// Trailers pass (HTTP/2, or HTTP/1 with `enable_trailers`); otherwise they end the body.
    keep_trailers: bool,
}

/// Most of an unwanted request body read and discarded after the answer.
const DISCARD_BYTES: u64 = 64 << 20;
/// Longest an unwanted request body is read after the answer.
const DISCARD_TIME: Duration = Duration::from_secs(10);

impl DownstreamBody {
    fn new(inner: HopBody, keep_trailers: bool) -> Self {
        Self { inner: Some(inner), failed: Arc::new(AtomicBool::new(false)), keep_trailers }
    }
}

impl Drop for DownstreamBody {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take().filter(|body| !body.is_end_stream()) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let discard = async {
                let mut read = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, |data| data.len() as u64);
                    if read > DISCARD_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DISCARD_TIME, discard).await;
        });
    }
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        let Some(inner) = self.inner.as_mut() else { return std::task::Poll::Ready(None) };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Err(_))) => self.failed.store(true, Ordering::Relaxed),
            std::task::Poll::Ready(Some(Ok(frame))) if frame.is_trailers() && !self.keep_trailers => {
                // Dropped as Envoy's HTTP/1 codec drops them: the body just ends.
                self.inner = None;
                return std::task::Poll::Ready(None);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HopBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map(HopBody::size_hint).unwrap_or_default()
    }
}

/// What happened to a chunk after the filters.
enum Pumped {
    /// Sent (or held by a buffering filter): go on.
    Go,
    /// The other side went away.
    Gone,
    /// A filter stopped the stream.
    Stop(Verdict),
}

/// Sends what the filters forward.
async fn deliver(tx: &impl FrameSink, verdict: DataVerdict) -> Pumped {
    match verdict {
        DataVerdict::Forward(bytes) if bytes.is_empty() => Pumped::Go,
        DataVerdict::Forward(bytes) => match tx.deliver(Ok(Frame::data(Bytes::from(bytes)))).await {
            Ok(()) => Pumped::Go,
            Err(_) => Pumped::Gone,
        },
        DataVerdict::Held => Pumped::Go,
        DataVerdict::Stop(verdict) => Pumped::Stop(verdict),
    }
}

/// Streams `body` through the filters of `direction` into `tx`: data frame by frame (held back
/// while a filter buffers), then trailers, then the end of the stream. Returns how it ended.
async fn pump<B>(
    chain: &SharedChain,
    exchange: &Rc<RefCell<HttpExchange>>,
    mut body: B,
    tx: &impl FrameSink,
    direction: Direction,
) -> Pumped
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::BoxError>,
{
    let all = chain.borrow().len();
    let mut ended = false;
    let outcome = loop {
        let next = if chain::holds_body(chain, direction) {
            // A filter holds back bytes until it resumes (after a callout, say): what it releases
            // goes on at once, not with the next frame, which in a bidirectional stream may only
            // come as an answer to those very bytes.
            tokio::select! {
                frame = body.frame() => frame,
                (index, action) = chain::held_body_resumed(chain, direction) => {
                    let verdict = chain::release_held_body(chain, direction, index, action, all).await;
                    match deliver(tx, verdict).await {
                        Pumped::Go => continue,
                        other => break other,
                    }
                }
            }
        } else {
            body.frame().await
        };
        let Some(frame) = next else { break Pumped::Go };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                let _ = tx.deliver(Err(error.into())).await;
                break Pumped::Gone;
            }
        };
        match frame.into_data() {
            Ok(data) => {
                ended = body.is_end_stream();
                {
                    let info = &mut exchange.borrow_mut().info;
                    match direction {
                        Direction::Request => info.request_body_bytes += data.len() as u64,
                        Direction::Response => info.response_body_bytes += data.len() as u64,
                    }
                }
                let verdict = chain::data(chain, direction, data.to_vec(), ended, all).await;
                match deliver(tx, verdict).await {
                    Pumped::Go => {}
                    other => break other,
                }
            }
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else { continue };
                if !ended {
                    // Trailers end the body: filters waiting for the end see it now.
                    ended = true;
                    let verdict = chain::data(chain, direction, Vec::new(), true, all).await;
                    match deliver(tx, verdict).await {
                        Pumped::Go => {}
                        other => break other,
                    }
                }
                fn slot(
                    exchange: &mut HttpExchange,
                    direction: Direction,
                ) -> &mut Option<wasmtrace_runtime::HeaderMap> {
                    match direction {
                        Direction::Request => &mut exchange.request_trailers,
                        Direction::Response => &mut exchange.response_trailers,
                    }
                }
                *slot(&mut exchange.borrow_mut(), direction) = Some(trailer_map(&trailers));
                match chain::trailers(chain, direction).await {
                    Verdict::Continue => {
                        let map = slot(&mut exchange.borrow_mut(), direction).clone().unwrap_or_default();
                        let _ = tx.deliver(Ok(Frame::trailers(http_headers(&map)))).await;
                        break Pumped::Go;
                    }
                    verdict => break Pumped::Stop(verdict),
                }
            }
        }
    };
    match outcome {
        Pumped::Go if !ended => deliver(tx, chain::data(chain, direction, Vec::new(), true, all).await).await,
        other => other,
    }
}

/// Streams the downstream request body to the upstream. A filter that stops the stream hands
/// its verdict to the request's task through `abort`.
async fn pump_request(
    chain: SharedChain,
    exchange: Rc<RefCell<HttpExchange>>,
    body: DownstreamBody,
    tx: crate::body::FrameSender,
    abort: oneshot::Sender<Verdict>,
) {
    if let Pumped::Stop(verdict) = pump(&chain, &exchange, body, &tx, Direction::Request).await {
        let _ = abort.send(verdict);
        // The upstream must not take a cut-short body for a complete one.
        let _ = tx.deliver(Err("request reset by a filter".into())).await;
    }
}

/// One direction of an upgraded stream through the filters of `direction` into `tx`: true when
/// it ended cleanly, false when a side failed or a filter stopped the stream.
pub(crate) async fn pump_upgraded<B>(end: &StreamEnd, body: B, tx: &impl FrameSink, direction: Direction) -> bool
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::BoxError>,
{
    matches!(pump(&end.chain, &end.exchange, body, tx, direction).await, Pumped::Go)
}

/// The end of a stream whose response body is being pumped (or whose upgrade is tunnelled): the
/// access-log point runs when the pump is done, or when it is dropped unfinished (the client went
/// away mid-body).
pub(crate) struct StreamEnd {
    chain: SharedChain,
    exchange: Rc<RefCell<HttpExchange>>,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        finish_stream(&self.chain, &self.exchange);
    }
}

/// Streams the upstream response body to the downstream through the filters; the stream ends
/// (access log) when the pump is dropped, finished or not.
async fn pump_response(end: StreamEnd, body: TrailerGate<HopBody>, tx: Rc<FrameSlot>) {
    if let Pumped::Stop(_) = pump(&end.chain, &end.exchange, body, &tx, Direction::Response).await {
        let _ = tx.deliver(Err("a filter reset the response".into())).await;
    }
}
