//! What the connection manager does to a request before the filters: the refusals of Envoy's
//! codec and connection manager, its default request headers, and whether an upgrade goes on.

use std::rc::Rc;

use http::header::{HOST, HeaderValue};
use http_body::Body;
use wasmtrace_config::{HttpConnectionManager, RouteAction, UpgradeFilters};

use crate::downstream_body::DownstreamBody;
use crate::message::{Hop, UnfilteredRequest, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID, strip_hop_by_hop};
use crate::rescue::Rescue;
use crate::route;
use crate::swap::WorkerPlugin;
use crate::upgrade::{self, PendingUpgrade};

use super::{ConnectionInfo, ListenerContext};

/// What Envoy's codec and connection manager refuse before any filter sees a request: a
/// malformed authority, oversized headers, `CONNECT` without `upgrade_configs`.
pub(super) fn refuse_before_filters(
    limits: &wasmtrace_config::ConnectionLimits,
    parts: &http::request::Parts,
) -> Option<Rescue> {
    if parts.method == http::Method::CONNECT {
        return Some(Rescue::ConnectMethod);
    }
    // Envoy counts names and values, pseudo-headers included.
    let header_bytes: usize =
        parts.headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum::<usize>()
            + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
            + parts.method.as_str().len();
    if header_bytes > limits.max_request_headers_kb as usize * 1024
        || parts.headers.len() > limits.max_headers_count as usize
    {
        return Some(Rescue::HeadersTooLarge);
    }
    let host = parts.headers.get_all(HOST);
    let mut hosts = host.iter();
    let from_host = hosts.next();
    if hosts.next().is_some() {
        return Some(Rescue::DuplicateHost);
    }
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes()).or(from_host.map(HeaderValue::as_bytes));
    if authority.is_none() && parts.version != http::Version::HTTP_10 {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400 (h2 likewise without
        // `:authority` or `host`); HTTP/1.0 may omit it.
        return Some(Rescue::MissingHost);
    }
    if authority.is_some_and(|value| !crate::authority::is_valid(value)) {
        return Some(Rescue::InvalidHost);
    }
    None
}

/// Envoy's default request handling before filters see the request.
pub(super) fn apply_envoy_defaults(http: &HttpConnectionManager, conn: &ConnectionInfo, headers: &mut http::HeaderMap) {
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
pub(super) enum UpgradeDecision {
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
pub(super) fn decide_upgrade<'a>(
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
