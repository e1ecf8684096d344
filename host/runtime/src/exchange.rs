//! The state of one HTTP stream that every filter in a chain sees: header maps, the body buffer
//! currently being filtered, trailers, connection facts and filter state.
//!
//! The data plane owns it (`Rc<RefCell<HttpExchange>>`, one per stream, on one worker) and hands
//! the same exchange to each plugin's [`crate::HttpStream`], so a header one filter adds is what the
//! next filter reads, and filter state one filter sets (`proxy_set_property`) the next can read.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::filter_state::FilterState;
use crate::header_map::HeaderMap;
use crate::properties::Metadata;

/// Facts about a stream that are not headers or bodies: the source of `request.*`, `response.*`,
/// `source.*`, `destination.*`, `upstream.*`, `connection.*`, `metadata.*` and `xds.*`
/// properties.
///
/// What the configuration says (route, virtual host, cluster and listener, and their metadata)
/// is known from before the request filters run; what the upstream says (`upstream.*`,
/// `xds.upstream_host_metadata`) once an upstream host was chosen.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// When the request's first byte arrived (`request.time`).
    pub start_time: SystemTime,
    /// When the stream completed (`request.duration` is measured up to here).
    pub end_time: Option<SystemTime>,
    /// `request.protocol`: `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// Downstream peer (`source.address`, `source.port`).
    pub source: Option<SocketAddr>,
    /// Local address the request arrived on (`destination.*`).
    pub destination: Option<SocketAddr>,
    /// Upstream host the request went to (`upstream.address`, `upstream.port`). Once it is set,
    /// the stream has Envoy's upstream info: the other `upstream.*` attributes and
    /// `xds.upstream_host_metadata` are read from the fields below.
    pub upstream: Option<SocketAddr>,
    /// Our end of the upstream connection (`upstream.local_address`).
    pub upstream_local_address: Option<SocketAddr>,
    /// Why the upstream connection failed (`upstream.transport_failure_reason`; empty when it
    /// did not).
    pub upstream_transport_failure_reason: String,
    /// The chosen endpoint's `lb_endpoints[].metadata` (`xds.upstream_host_metadata`).
    pub upstream_host_metadata: Metadata,
    /// How many times the request was sent upstream (`upstream.request_attempt_count`): 0 until
    /// the router forwards it.
    pub attempt_count: u32,
    /// Downstream connection id (`connection.id`, `connection_id`).
    pub connection_id: u64,
    /// Route that matched (`xds.route_name`).
    pub route_name: Option<String>,
    /// Upstream cluster (`xds.cluster_name`).
    pub cluster_name: Option<String>,
    /// Virtual host that matched (`xds.virtual_host_name`).
    pub virtual_host_name: Option<String>,
    /// The matched route's `metadata` (`xds.route_metadata`).
    pub route_metadata: Option<Metadata>,
    /// The matched virtual host's `metadata` (`xds.virtual_host_metadata`).
    pub virtual_host_metadata: Option<Metadata>,
    /// The upstream cluster's `metadata` (`xds.cluster_metadata`).
    pub cluster_metadata: Option<Metadata>,
    /// Listener direction (`xds.listener_direction`: 0 unspecified, 1 inbound, 2 outbound).
    pub listener_direction: u8,
    /// The listener's `metadata` (`xds.listener_metadata`).
    pub listener_metadata: Metadata,
    /// The name of the listener's filter chain (`xds.filter_chain_name`; empty when unnamed).
    pub filter_chain_name: String,
    /// Dynamic metadata (`metadata.*`). Envoy's writers of it are native filters (and its
    /// `proxy_set_property` writes filter state, not this), so with Wasm filters and the router
    /// alone — all this proxy runs — it stays empty, as in Envoy.
    pub dynamic_metadata: Metadata,
    /// Request body bytes received (`request.size`).
    pub request_body_bytes: u64,
    /// Response body bytes sent (`response.size`).
    pub response_body_bytes: u64,
    /// Why the response is what it is (`response.code_details`), e.g. `via_upstream`.
    pub response_code_details: Option<String>,
    /// Request headers were forwarded upstream: changing them no longer has an effect.
    pub request_headers_sent: bool,
    /// Response headers were sent downstream: changing them no longer has an effect.
    pub response_headers_sent: bool,
    /// Filter state: `proxy_set_property` writes `wasm.<path>` here; readable by every filter
    /// of the stream and by the data plane.
    pub filter_state: FilterState,
}

impl Default for StreamInfo {
    fn default() -> Self {
        Self {
            start_time: SystemTime::now(),
            end_time: None,
            protocol: "HTTP/1.1".to_owned(),
            source: None,
            destination: None,
            upstream: None,
            upstream_local_address: None,
            upstream_transport_failure_reason: String::new(),
            upstream_host_metadata: Metadata::default(),
            attempt_count: 0,
            connection_id: 0,
            route_name: None,
            cluster_name: None,
            virtual_host_name: None,
            route_metadata: None,
            virtual_host_metadata: None,
            cluster_metadata: None,
            listener_direction: 0,
            listener_metadata: Metadata::default(),
            filter_chain_name: String::new(),
            dynamic_metadata: Metadata::default(),
            request_body_bytes: 0,
            response_body_bytes: 0,
            response_code_details: None,
            request_headers_sent: false,
            response_headers_sent: false,
            filter_state: FilterState::default(),
        }
    }
}

/// One HTTP stream as the filters see it.
#[derive(Clone, Debug, Default)]
pub struct HttpExchange {
    /// Request headers, with HTTP/2-style pseudo-headers (`:method`, `:path`, `:authority`,
    /// `:scheme`); `None` until they arrive.
    pub request_headers: Option<HeaderMap>,
    /// The request body bytes being filtered now (a chunk, or everything buffered so far).
    pub request_body: Vec<u8>,
    /// Request trailers, if any.
    pub request_trailers: Option<HeaderMap>,
    /// Response headers (with `:status`); `None` until they arrive.
    pub response_headers: Option<HeaderMap>,
    /// The response body bytes being filtered now.
    pub response_body: Vec<u8>,
    /// Response trailers, if any.
    pub response_trailers: Option<HeaderMap>,
    /// Everything else.
    pub info: StreamInfo,
}

impl HttpExchange {
    /// An exchange whose request headers have arrived.
    pub fn with_request_headers(headers: HeaderMap) -> Self {
        Self { request_headers: Some(headers), ..Self::default() }
    }
}
