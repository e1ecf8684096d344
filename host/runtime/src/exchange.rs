//! The state of one HTTP stream that every filter in a chain sees: header maps, the body buffer
//! currently being filtered, trailers, connection facts and filter state.
//!
//! The data plane owns it (`Rc<RefCell<HttpExchange>>`, one per stream, on one worker) and hands
//! the same exchange to each plugin's [`crate::HttpStream`], so a header one filter adds is what the
//! next filter reads, and filter state one filter sets (`proxy_set_property`) the next can read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::header_map::HeaderMap;

/// Facts about a stream that are not headers or bodies: the source of `request.*`, `response.*`,
/// `source.*`, `destination.*`, `upstream.*`, `connection.*` and `xds.*` properties.
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
    /// Upstream host the request went to (`upstream.*`).
    pub upstream: Option<SocketAddr>,
    /// Downstream connection id (`connection.id`, `connection_id`).
    pub connection_id: u64,
    /// Route that matched (`xds.route_name`).
    pub route_name: Option<String>,
    /// Upstream cluster (`xds.cluster_name`).
    pub cluster_name: Option<String>,
    /// Virtual host that matched (`xds.virtual_host_name`).
    pub virtual_host_name: Option<String>,
    /// Listener direction (`xds.listener_direction`: 0 unspecified, 1 inbound, 2 outbound).
    pub listener_direction: u8,
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
    pub filter_state: BTreeMap<String, Vec<u8>>,
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
            connection_id: 0,
            route_name: None,
            cluster_name: None,
            virtual_host_name: None,
            listener_direction: 0,
            request_body_bytes: 0,
            response_body_bytes: 0,
            response_code_details: None,
            request_headers_sent: false,
            response_headers_sent: false,
            filter_state: BTreeMap::new(),
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
