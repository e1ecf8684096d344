//! A stream's upstream side: the request sent to its cluster (or, in-process, to the
//! application), the response through the response filters, and an upgrade's switch to a tunnel.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tokio::sync::oneshot;
use wasmtrace_config::Cluster;
use wasmtrace_runtime::{HeaderMap, StreamInfo};

use crate::body::{
    ChannelBody, FrameSlot, ProxyBody, PumpedBody, ResponseBody, TrailerGate, boxed, full, response_body,
};
use crate::chain::{self, Verdict};
use crate::cluster::ConnectError;
use crate::downstream_body::DownstreamBody;
use crate::in_process::{HopBody, SendError};
use crate::message::{Hop, http_headers, response_header_map, status_of, strip_hop_by_hop};
use crate::pump::{StreamEnd, pump_request, pump_response};
use crate::rescue::{Rescue, UpstreamFailure};
use crate::upgrade::{self, PendingUpgrade};
use crate::upstream_request::{unfiltered_upstream_request, upstream_request};

use super::before_filters::UpgradeDecision;
use super::stream::Stream;
use super::{StreamReset, runtime_metadata};

impl Stream {
    /// Sends the request to `cluster` and the response back through the filters.
    pub(super) async fn forward(
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
            let response = self.rescue(Rescue::ClusterNotFound { cluster: cluster.to_owned() });
            return self.local_reply(response, all).await;
        }
        let http2 = !in_process && client.is_some_and(|client| client.cluster.http2);
        if matches!(self.upgrade, UpgradeDecision::Tunnel(_)) {
            let refused = if in_process {
                // The application's own connection is hyper's, not the filters': nothing here
                // could carry the upgraded bytes through them.
                Some(Rescue::UpgradeInProcess)
            } else if http2 {
                // Envoy would send an extended CONNECT (RFC 8441); hyper's client has none.
                Some(Rescue::UpgradeOverHttp2 { cluster: cluster.to_owned() })
            } else {
                None
            };
            if let Some(refused) = refused {
                let response = self.rescue(refused);
                return self.local_reply(response, all).await;
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
                let response = self.rescue(Rescue::InvalidRequest(reason));
                return self.local_reply(response, all).await;
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
                let response = self.rescue(Rescue::MalformedBody);
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
        let kind = failure.kind();
        let response = self.rescue(Rescue::Upstream { cluster: cluster.to_owned(), failure });
        // Counted per cluster; a log line per failed request would let a client flood the log.
        tracing::debug!(cluster, kind, "{}", String::from_utf8_lossy(&response.body).trim_end());
        self.local_reply(response, all).await
    }

    /// The upstream's response through the response filters (`upstream_trailers`: the upstream
    /// hop carries trailers, being HTTP/2 or with the cluster's `enable_trailers`).
    pub(super) async fn respond(
        mut self,
        response: Response<HopBody>,
        upstream_trailers: bool,
    ) -> Result<Response<ResponseBody>, StreamReset> {
        if self.downstream_failed.load(Ordering::Relaxed) {
            // The upstream answered a request whose body broke off: that answer is about a
            // request the client never sent whole.
            let (response, all) = (self.rescue(Rescue::MalformedBody), self.filter_count());
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
                    let allowed = pending.requested.kind.to_string();
                    let response = self.rescue(Rescue::UpgradeOtherProtocol { allowed });
                    self.local_reply(response, all).await
                }
                _ => {
                    let all = self.filter_count();
                    let response = self.rescue(Rescue::UnexpectedSwitch);
                    self.local_reply(response, all).await
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
    pub(super) async fn switch_protocols(
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
            let response = self.rescue(Rescue::SwitchLost);
            return self.local_reply(response, all).await;
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
}

async fn within<F: std::future::Future>(timeout: Option<Duration>, future: F) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, future).await.ok(),
        None => Some(future.await),
    }
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
