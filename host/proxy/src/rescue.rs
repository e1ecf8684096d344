//! The one place where the proxy answers a request itself: every cause of a reply no upstream
//! and no filter wrote (a request refused before the filters, no route, an upstream that failed,
//! a filter that failed closed, a buffer that overflowed) is a [`Rescue`], and
//! [`Rescue::reply`] is the one table from cause to status, Envoy's `response.code_details` and
//! body text.
//!
//! A reply made before the filters goes out as [`Rescue::response`]; one made after the request
//! filters went through the response filters as [`Rescue::local_response`]. Bodies name the
//! cause and the configuration it involves (a cluster's name). An in-process application's own
//! error is logged, not sent; an upstream connect failure or reset names the endpoint and the
//! OS's reason (`connection refused`), as Envoy's `upstream connect error` body does.

use std::borrow::Cow;
use std::error::Error as _;
use std::time::Duration;

use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use wasmtrace_runtime::{GuestFailure, HeaderMap, LocalResponse};

use crate::body::{ResponseBody, full};
use crate::chain::MAX_BUFFERED_BODY;
use crate::cluster::ConnectError;
use crate::stats::DownstreamError;
use crate::upstream_request::UpstreamRequestError;

/// Why the proxy answers a request itself.
#[derive(Debug)]
pub enum Rescue {
    /// `CONNECT` on a listener without `upgrade_configs` for it.
    ConnectMethod,
    /// More header bytes or headers than the listener's limits.
    HeadersTooLarge,
    /// More than one `Host` header.
    DuplicateHost,
    /// An HTTP/1.1 or h2 request with neither `Host` nor `:authority`.
    MissingHost,
    /// `Host`/`:authority` is not `host[:port]`.
    InvalidHost,
    /// An upgrade request whose `Connection` header is not visible ASCII.
    UpgradeConnectionHeader,
    /// An allowed upgrade request that carries a body.
    UpgradeWithBody,
    /// An upgrade neither the connection manager nor the route allows (Envoy's empty 403).
    UpgradeRefused,
    /// In-process: the application's connection is hyper's, so no tunnel can pass the filters.
    UpgradeInProcess,
    /// The route's cluster speaks HTTP/2, which cannot carry an HTTP/1.1 upgrade here.
    UpgradeOverHttp2 {
        /// The cluster.
        cluster: String,
    },
    /// The upstream switched to another protocol than the one the upgrade allowed.
    UpgradeOtherProtocol {
        /// The protocol the upgrade allowed.
        allowed: String,
    },
    /// The upstream answered `101` to a request that asked for no upgrade this proxy tunnels.
    UnexpectedSwitch,
    /// The upstream connection broke as it switched protocols.
    SwitchLost,
    /// No route matches the request.
    RouteNotFound,
    /// The route names a cluster the configuration does not have.
    ClusterNotFound {
        /// The cluster.
        cluster: String,
    },
    /// After the request filters, the request cannot be sent (a filter wrote a bad
    /// `:authority`, `:path` or `:method`).
    InvalidRequest(UpstreamRequestError),
    /// The client's request body broke its framing or was cut short.
    MalformedBody,
    /// A request body overflowed the buffer of a filter that buffers it.
    BodyTooLarge,
    /// The upstream (or, in-process, the application) failed.
    Upstream {
        /// The cluster the request went to.
        cluster: String,
        /// How it failed.
        failure: UpstreamFailure,
    },
    /// A fail-closed filter failed.
    FailClosed(GuestFailure),
    /// In-process: a request through the client filters that names no destination they can
    /// send it to (a fixed text saying why).
    ClientTarget(&'static str),
    /// In-process: the filters have stopped, and no request passes unfiltered.
    FiltersStopped,
}

/// A rescue's answer, as [`Rescue::reply`] gives it.
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// Envoy's `response.code_details`.
    pub details: &'static str,
    /// The plain-text body (empty: no body, no content type).
    pub text: Cow<'static, str>,
    /// The connection closes after this reply (no byte after the request may be read as
    /// another request).
    pub close: bool,
}

impl Rescue {
    /// The cause → answer table.
    pub fn reply(&self) -> Reply {
        use StatusCode as S;
        let (status, details, text, close): (StatusCode, &'static str, Cow<'static, str>, bool) = match self {
            Self::ConnectMethod => {
                (S::FORBIDDEN, "method_not_allowed", "CONNECT is not supported on this listener\n".into(), false)
            }
            Self::HeadersTooLarge => (
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_headers_too_large",
                "the request headers are larger than this listener accepts\n".into(),
                false,
            ),
            Self::DuplicateHost => (S::BAD_REQUEST, "invalid_authority", "more than one Host header\n".into(), false),
            Self::MissingHost => (S::BAD_REQUEST, "missing_host_header", "the request has no Host\n".into(), false),
            Self::InvalidHost => (
                S::BAD_REQUEST,
                "invalid_authority",
                "the Host (or :authority) is not a valid host[:port]\n".into(),
                false,
            ),
            Self::UpgradeConnectionHeader => (
                S::BAD_REQUEST,
                "upgrade_failed",
                "an upgrade's Connection header must be visible ASCII\n".into(),
                true,
            ),
            Self::UpgradeWithBody => {
                (S::BAD_REQUEST, "upgrade_failed", "an upgrade request cannot carry a body here\n".into(), true)
            }
            Self::UpgradeRefused => (S::FORBIDDEN, "upgrade_failed", "".into(), true),
            Self::UpgradeInProcess => {
                (S::BAD_GATEWAY, "upgrade_failed", "in-process filters do not tunnel upgrades\n".into(), false)
            }
            Self::UpgradeOverHttp2 { cluster } => (
                S::BAD_GATEWAY,
                "upgrade_failed",
                format!("cluster `{cluster}` speaks HTTP/2, which cannot carry an HTTP/1.1 upgrade here\n").into(),
                false,
            ),
            Self::UpgradeOtherProtocol { allowed } => (
                S::BAD_GATEWAY,
                "upgrade_failed",
                format!("the upstream switched to a protocol other than the {allowed} upgrade allowed\n").into(),
                false,
            ),
            Self::UnexpectedSwitch => (
                S::BAD_GATEWAY,
                "upstream_reset_before_response_started{protocol_error}",
                "the upstream switched protocols without an upgrade this proxy tunnels\n".into(),
                false,
            ),
            Self::SwitchLost => (
                S::BAD_GATEWAY,
                "upstream_reset_before_response_started{connection_termination}",
                "the upstream connection was lost as it switched protocols\n".into(),
                false,
            ),
            Self::RouteNotFound => (S::NOT_FOUND, "route_not_found", "no route matches this request\n".into(), false),
            Self::ClusterNotFound { cluster } => (
                S::SERVICE_UNAVAILABLE,
                "cluster_not_found",
                format!("cluster `{cluster}` does not exist\n").into(),
                false,
            ),
            Self::InvalidRequest(reason) => (
                S::BAD_REQUEST,
                "invalid_request",
                format!("the request cannot be forwarded: {reason}\n").into(),
                false,
            ),
            Self::MalformedBody => (
                S::BAD_REQUEST,
                "downstream_protocol_error",
                "the request body is malformed or cut short\n".into(),
                false,
            ),
            Self::BodyTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "request_payload_too_large",
                format!("request body exceeds the {MAX_BUFFERED_BODY}-byte buffer of a filter that buffers it\n")
                    .into(),
                false,
            ),
            Self::Upstream { cluster, failure } => match failure {
                UpstreamFailure::Connect(reason) => (
                    S::SERVICE_UNAVAILABLE,
                    "upstream_reset_before_response_started{connection_failure}",
                    format!("upstream connect error: cluster `{cluster}`: {reason}\n").into(),
                    false,
                ),
                UpstreamFailure::Timeout(after) => (
                    S::GATEWAY_TIMEOUT,
                    "upstream_response_timeout",
                    format!("upstream request timeout: cluster `{cluster}` did not respond within {after:?}\n").into(),
                    false,
                ),
                UpstreamFailure::Reset(reason) => (
                    S::BAD_GATEWAY,
                    "upstream_reset_before_response_started{remote_reset}",
                    format!("upstream reset: cluster `{cluster}`: {reason}\n").into(),
                    false,
                ),
            },
            Self::FailClosed(failure) => (
                S::SERVICE_UNAVAILABLE,
                "wasm_fail_stream",
                format!(
                    "wasm plugin `{}` failed in {}; the request was refused (fail-closed)\n",
                    failure.plugin, failure.callback
                )
                .into(),
                false,
            ),
            Self::ClientTarget(reason) => (S::BAD_REQUEST, "invalid_request", (*reason).into(), false),
            Self::FiltersStopped => {
                (S::SERVICE_UNAVAILABLE, "filters_stopped", "the in-process filters have stopped\n".into(), false)
            }
        };
        Reply { status, details, text, close }
    }

    /// The client error this rescue counts as, if it is the client's.
    pub fn downstream_error(&self) -> Option<DownstreamError> {
        Some(match self {
            Self::ConnectMethod => DownstreamError::MethodNotAllowed,
            Self::HeadersTooLarge => DownstreamError::HeadersTooLarge,
            Self::DuplicateHost | Self::MissingHost | Self::InvalidHost => DownstreamError::InvalidAuthority,
            Self::UpgradeConnectionHeader | Self::UpgradeWithBody | Self::UpgradeRefused => {
                DownstreamError::UpgradeFailed
            }
            Self::MalformedBody => DownstreamError::Framing,
            _ => return None,
        })
    }

    /// The reply as a local response, to pass through the response filters.
    pub fn local_response(&self) -> LocalResponse {
        let Reply { status, details, text, .. } = self.reply();
        plain(status.as_u16(), details, &text)
    }

    /// The reply sent as is, before any filter saw the request.
    pub fn response(&self) -> Response<ResponseBody> {
        let Reply { status, text, close, .. } = self.reply();
        let empty = text.is_empty();
        let mut response = Response::new(full(text.into_owned()));
        *response.status_mut() = status;
        if !empty {
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        if close {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A plain-text local response (a rescue's, or a route's `direct_response`).
pub fn plain(status: u16, details: &str, body: &str) -> LocalResponse {
    // Envoy's local replies carry a content type only with a body (an empty `direct_response`
    // has neither `content-type` nor `content-length`).
    let headers =
        if body.is_empty() { HeaderMap::new() } else { HeaderMap::from_pairs([("content-type", "text/plain")]) };
    LocalResponse { status, body: body.as_bytes().to_vec(), headers, details: details.to_owned(), grpc_status: None }
}

/// What went wrong talking to an upstream.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// No connection could be made.
    Connect(String),
    /// No response headers within the route timeout.
    Timeout(Duration),
    /// The connection failed after it was made.
    Reset(String),
}

impl UpstreamFailure {
    /// Classifies a client error.
    pub fn from_client_error(error: &hyper_util::client::legacy::Error) -> Self {
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(connect) = cause.downcast_ref::<ConnectError>() {
                return Self::Connect(connect.to_string());
            }
            source = cause.source();
        }
        if error.is_connect() {
            return Self::Connect(error.to_string());
        }
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        Self::Reset(reason)
    }

    /// Classifies the error of the service in-process filters wrap: a client's (a client layer
    /// over hyper's pooled client) as [`Self::from_client_error`], anything else as a reset.
    pub fn from_application_error(error: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(client) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
            return Self::from_client_error(client);
        }
        // The application's own error (a database's, say) is logged, never sent to its client.
        tracing::debug!(error = %error, "the in-process application failed");
        Self::Reset("the application failed to answer".into())
    }

    /// The stats label of this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect_failure",
            Self::Timeout(_) => "timeout",
            Self::Reset(_) => "reset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_made_before_the_filters_has_a_body_type_only_with_a_body_and_closes_when_it_must() {
        let refused = Rescue::UpgradeRefused.response();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.headers().get(CONTENT_TYPE).is_none(), "Envoy's empty 403");
        assert_eq!(refused.headers().get(CONNECTION).map(HeaderValue::as_bytes), Some(&b"close"[..]));
        let too_large = Rescue::HeadersTooLarge.response();
        assert_eq!(too_large.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(too_large.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes), Some(&b"text/plain"[..]));
        assert!(too_large.headers().get(CONNECTION).is_none());
    }

    #[test]
    fn an_upstream_failure_names_the_cluster_and_maps_to_envoys_status() {
        let cases = [
            (UpstreamFailure::Connect("refused".into()), 503),
            (UpstreamFailure::Timeout(Duration::from_secs(1)), 504),
            (UpstreamFailure::Reset("eof".into()), 502),
        ];
        for (failure, status) in cases {
            let reply = Rescue::Upstream { cluster: "images".into(), failure }.local_response();
            assert_eq!(reply.status, status);
            assert!(String::from_utf8_lossy(&reply.body).contains("cluster `images`"));
        }
    }
}
