//! One stream after the connection manager let it in: the request filters, routing, local
//! replies through the response filters, and the end of the stream (the access-log point). The
//! upstream side is [`super::forward`].

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body;
use hyper_util::client::legacy::connect::HttpInfo;
use wasmtrace_config::RouteAction;
use wasmtrace_runtime::{Direction, HeaderMap, HttpExchange, LocalResponse, StreamInfo};

use crate::body::{ResponseBody, full};
use crate::chain::{self, DataVerdict, SharedChain, Verdict};
use crate::cluster::ChosenEndpoint;
use crate::downstream_body::DownstreamBody;
use crate::in_process::Application;
use crate::message::{UnfilteredRequest, http_headers, status_of};
use crate::pump::finish_stream;
use crate::rescue::{Rescue, plain};
use crate::route;

use super::before_filters::UpgradeDecision;
use super::{ConnectionInfo, ListenerContext, StreamReset, runtime_metadata};

pub(super) struct Stream {
    pub(super) ctx: Rc<ListenerContext>,
    /// The connection it arrived on (where a tunnel is left for the connection's task).
    pub(super) conn: Rc<ConnectionInfo>,
    pub(super) chain: SharedChain,
    pub(super) exchange: Rc<RefCell<HttpExchange>>,
    /// The request head as received, on a listener without filters (`exchange` then has no
    /// request header map); taken when the request is sent upstream.
    pub(super) head: Option<http::request::Parts>,
    /// In-process: the service the filters wrap, where a route to a cluster goes.
    pub(super) application: Option<Application>,
    /// A body pump now ends the stream; dropping this handle must not.
    pub(super) handed_off: std::cell::Cell<bool>,
    /// The client's request body broke its framing (set by [`DownstreamBody`]).
    pub(super) downstream_failed: Arc<AtomicBool>,
    /// The request's upgrade, if it asked for one.
    pub(super) upgrade: UpgradeDecision,
    /// The client speaks HTTP/1 (trailers to it need `enable_trailers`).
    pub(super) downstream_h1: bool,
    /// The connection manager's `http_protocol_options.enable_trailers`: HTTP/1 trailers pass
    /// the downstream hop.
    pub(super) trailers: bool,
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
    pub(super) fn filter_count(&self) -> usize {
        self.chain.borrow().len()
    }

    /// A reply the proxy makes itself after the request filters started ([`Rescue`]), as a
    /// local response for the response filters; a client's error is counted as one.
    pub(super) fn rescue(&self, rescue: Rescue) -> LocalResponse {
        if let Some(error) = rescue.downstream_error() {
            self.ctx.stats.downstream_error(error);
        }
        rescue.local_response()
    }

    /// Records the route `request headers` select now in the stream's attributes
    /// (`xds.route_name`, `xds.cluster_name`, `xds.virtual_host_name` and their metadata), for
    /// the filters to read.
    pub(super) fn note_route(&self, selected: Option<(&wasmtrace_config::VirtualHost, &wasmtrace_config::Route)>) {
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
    pub(super) fn note_upstream_host(&self, info: &mut StreamInfo, extensions: &http::Extensions) {
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

    pub(super) async fn run(self, body: DownstreamBody) -> Result<Response<ResponseBody>, StreamReset> {
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
            let response = self.rescue(Rescue::RouteNotFound);
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
    pub(super) async fn refuse_upgrade(self) -> Result<Response<ResponseBody>, StreamReset> {
        let refused = self.rescue(Rescue::UpgradeRefused);
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
        let mut response = self.local_reply(refused, all).await?;
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        Ok(response)
    }

    /// A response the proxy or a filter produced, through the response filters `0..upto`.
    pub(super) async fn local_reply(
        self,
        response: LocalResponse,
        upto: usize,
    ) -> Result<Response<ResponseBody>, StreamReset> {
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
    pub(super) fn finish_local(self, response: LocalResponse) -> Response<ResponseBody> {
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

    pub(super) fn close(self) -> Result<Response<ResponseBody>, StreamReset> {
        self.finish();
        Err(StreamReset)
    }

    /// The access-log point: `proxy_on_log`, then the stream contexts end (when the last
    /// reference to the chain goes).
    pub(super) fn finish(self) {
        finish_stream(&self.chain, &self.exchange);
    }
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
