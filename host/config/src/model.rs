//! The configuration as plain data. Durations and sizes carry their units in their names or
//! types; nothing here holds a socket, a VM or a handle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A whole bootstrap: what `wasmtrace run -c FILE` serves.
#[derive(Clone, Debug, Serialize)]
pub struct Bootstrap {
    /// `node`: this proxy's identity, readable by filters as `xds.node.*`.
    pub node: NodeIdentity,
    /// `admin.address`: where the admin API listens, if anywhere.
    pub admin: Option<SocketAddr>,
    /// `static_resources.listeners`.
    pub listeners: Vec<Listener>,
    /// `static_resources.clusters`.
    pub clusters: Vec<Cluster>,
    /// `bootstrap_extensions` with `envoy.bootstrap.wasm`.
    pub wasm_services: Vec<WasmService>,
}

/// A Wasm service (`envoy.extensions.wasm.v3.WasmService`): a plugin with a root context and no
/// HTTP stream. Its `PluginConfig` is a filter's (`failure_policy` has nothing to fail).
#[derive(Clone, Debug, Serialize)]
pub struct WasmService {
    /// `config`.
    pub filter: WasmFilter,
    /// `singleton`: one VM for the process (Envoy's main thread); otherwise one per worker.
    pub singleton: bool,
}

/// The name under which Wasm services appear where a filter's listener would (`/plugins`,
/// metrics labels, `wasmtrace swap --listener`): where they are configured.
pub const SERVICE_SCOPE: &str = "bootstrap_extensions";

/// `node`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeIdentity {
    /// `node.id`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.metadata`.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// `traffic_direction` of a listener (`xds.listener_direction`: 1 inbound, 2 outbound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum TrafficDirection {
    /// Not set.
    #[default]
    Unspecified,
    /// In front of the local service.
    Inbound,
    /// For the local service's calls to others.
    Outbound,
}

/// `metadata` (`envoy.config.core.v3.Metadata`) of a listener, virtual host, route, cluster or
/// endpoint: what filters read as `xds.listener_metadata`, `xds.route_metadata`, ... Only
/// `filter_metadata` is supported (a non-empty `typed_filter_metadata` is refused).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    /// `filter_metadata`: namespace → its `google.protobuf.Struct`, as a JSON object. Shared, so a
    /// stream holds it without a copy.
    pub filter_metadata: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("Metadata", 1)?;
        out.serialize_field("filter_metadata", &*self.filter_metadata)?;
        out.end()
    }
}

/// A listener with one HTTP connection manager.
#[derive(Clone, Debug, Serialize)]
pub struct Listener {
    /// `name`.
    pub name: String,
    /// `address.socket_address` (port 0 picks a free port).
    pub address: SocketAddr,
    /// `traffic_direction`.
    pub direction: TrafficDirection,
    /// `metadata` (`xds.listener_metadata`).
    pub metadata: Metadata,
    /// The filter chain's `name` (`xds.filter_chain_name`; empty when it has none).
    pub filter_chain_name: String,
    /// `enable_reuse_port` (true unless set false, as in Envoy on Linux): every worker binds a
    /// socket of its own to the address with `SO_REUSEPORT`, and the kernel spreads new
    /// connections evenly across them; false: every worker accepts from one shared socket, where
    /// whichever worker wakes first takes the connection (one busy worker can end up with most of
    /// them), and a second process on the address fails to start.
    pub reuse_port: bool,
    /// The `envoy.filters.network.http_connection_manager`.
    pub http: HttpConnectionManager,
}

/// Which HTTP versions a listener speaks (`codec_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum CodecType {
    /// HTTP/1.1 and HTTP/2 (h2c prior knowledge), detected per connection.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// `envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`.
#[derive(Clone, Debug, Serialize)]
pub struct HttpConnectionManager {
    /// `stat_prefix`: names this listener in stats.
    pub stat_prefix: String,
    /// `codec_type`.
    pub codec: CodecType,
    /// `route_config.name`.
    pub route_config_name: String,
    /// `route_config.virtual_hosts`.
    pub virtual_hosts: Vec<VirtualHost>,
    /// `http_filters` before the router: the Wasm filters, in order.
    pub wasm_filters: Vec<WasmFilter>,
    /// `generate_request_id` (default true): add `x-request-id` when absent.
    pub generate_request_id: bool,
    /// `use_remote_address` (default false): append the peer to `x-forwarded-for`.
    pub use_remote_address: bool,
    /// Timeouts and size limits of the downstream connections and their streams.
    pub limits: ConnectionLimits,
    /// `upgrade_configs`: the upgrades (`websocket`, ...) this listener tunnels, and whether each
    /// is on by default (routes may turn it on or off). An upgrade listed nowhere is refused 403.
    pub upgrade_configs: Vec<UpgradeConfig>,
    /// `http_protocol_options.enable_trailers` (default false, as Envoy): HTTP/1 trailers are
    /// proxied on the downstream side. Off, the downstream HTTP/1 codec drops them: trailers a
    /// client sends over HTTP/1 never reach the filters, and trailers are not written to an
    /// HTTP/1 client. The upstream HTTP/1 hop follows the cluster's own setting
    /// ([`Cluster::http1_trailers`]).
    pub http1_trailers: bool,
}

/// `upgrade_configs[]` of the HTTP connection manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpgradeConfig {
    /// `upgrade_type`, lower-cased (the `Upgrade` header's value, compared ignoring case).
    pub upgrade_type: String,
    /// `enabled` (default true): whether the upgrade is allowed where a route does not say.
    pub enabled: bool,
    /// `filters`: which HTTP filters an upgraded stream runs.
    pub filters: UpgradeFilters,
}

/// The HTTP filters an upgraded stream runs (`UpgradeConfig.filters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum UpgradeFilters {
    /// No `filters` (or an empty list): the listener's own filter chain.
    #[default]
    Listener,
    /// `filters` holding only the router: no Wasm filter sees the upgrade.
    RouterOnly,
}

/// `route.upgrade_configs[]`: a route turning an upgrade on or off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteUpgrade {
    /// `upgrade_type`, lower-cased.
    pub upgrade_type: String,
    /// `enabled` (default true).
    pub enabled: bool,
}

/// How long a downstream connection or stream may stay quiet, and how large request headers may
/// be: Envoy's fields, with Envoy's defaults except where noted. `None` is "disabled" (Envoy's
/// `0s`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionLimits {
    /// `common_http_protocol_options.idle_timeout` (default 1 h): a connection with no active
    /// stream is closed after this long.
    pub idle_timeout: Option<Duration>,
    /// `request_headers_timeout` (default 10 s, Envoy's edge recommendation; Envoy's own default
    /// is disabled): a request's headers must arrive within this long, counted from the first
    /// byte of the request — and, for a connection's first request, from the accept, so a
    /// connection that never speaks (or stops inside the HTTP/2 preface) is closed too.
    pub request_headers_timeout: Option<Duration>,
    /// `stream_idle_timeout` (default 5 min): a connection with active streams on which no byte
    /// moves in either direction for this long is closed.
    pub stream_idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration` (default: none): a connection
    /// older than this is drained (HTTP/1: closed after the request in flight; HTTP/2: GOAWAY).
    pub max_connection_duration: Option<Duration>,
    /// `max_request_headers_kb` (default 60): request headers (names and values) larger than
    /// this many KiB are answered 431.
    pub max_request_headers_kb: u32,
    /// `common_http_protocol_options.max_headers_count` (default 100): more request headers
    /// than this are answered 431.
    pub max_headers_count: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(3600)),
            request_headers_timeout: Some(Duration::from_secs(10)),
            stream_idle_timeout: Some(Duration::from_secs(300)),
            max_connection_duration: None,
            max_request_headers_kb: 60,
            max_headers_count: 100,
        }
    }
}

/// `virtual_hosts[]`.
#[derive(Clone, Debug, Serialize)]
pub struct VirtualHost {
    /// `name`.
    pub name: String,
    /// `domains`: exact host names, `*`, `*.suffix` or `prefix.*`; ports are ignored when matching.
    pub domains: Vec<String>,
    /// `routes`, first match wins.
    pub routes: Vec<Route>,
    /// `metadata` (`xds.virtual_host_metadata`).
    pub metadata: Metadata,
}

/// `routes[]`.
#[derive(Clone, Debug, Serialize)]
pub struct Route {
    /// `name` (`xds.route_name`).
    pub name: String,
    /// `match`.
    pub matcher: RouteMatch,
    /// `route` or `direct_response`.
    pub action: RouteAction,
    /// `metadata` (`xds.route_metadata`).
    pub metadata: Metadata,
}

/// How a route's path is matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathMatch {
    /// `prefix`.
    Prefix(String),
    /// `path` (exact, without the query).
    Exact(String),
}

/// `match.headers[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderMatcher {
    /// Header name (lower-case).
    pub name: String,
    /// What the value must satisfy.
    pub rule: HeaderRule,
    /// `invert_match`.
    pub invert: bool,
}

/// A header condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum HeaderRule {
    /// `present_match: true` (or no value rule).
    Present,
    /// `string_match.exact` / `exact_match`.
    Exact(String),
    /// `string_match.prefix` / `prefix_match`.
    Prefix(String),
    /// `string_match.suffix` / `suffix_match`.
    Suffix(String),
    /// `string_match.contains` / `contains_match`.
    Contains(String),
}

/// `match`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// Header conditions, all of which must hold.
    pub headers: Vec<HeaderMatcher>,
}

/// What a matched route does.
#[derive(Clone, Debug, Serialize)]
pub enum RouteAction {
    /// `route`: forward to a cluster.
    Cluster {
        /// `route.cluster`.
        cluster: String,
        /// `route.timeout` (default 15 s; zero disables).
        timeout: Option<Duration>,
        /// `route.prefix_rewrite`: replaces the matched prefix.
        prefix_rewrite: Option<String>,
        /// `route.upgrade_configs`: upgrades this route turns on or off, overriding the
        /// connection manager's `enabled`.
        upgrades: Vec<RouteUpgrade>,
    },
    /// `direct_response`: answer without an upstream.
    Direct {
        /// `direct_response.status`.
        status: u16,
        /// `direct_response.body.inline_string`.
        body: String,
    },
}

/// What a plugin does when its VM fails (`fail_open` / `failure_policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum FailurePolicy {
    /// `fail_open: true` / `FAIL_OPEN`: skip the filter.
    FailOpen,
    /// Default / `FAIL_CLOSED`: answer 503.
    #[default]
    FailClosed,
}

/// `envoy.filters.http.wasm` with its `PluginConfig`.
#[derive(Clone, Debug, Serialize)]
pub struct WasmFilter {
    /// `config.name`.
    pub name: String,
    /// `config.root_id`.
    pub root_id: String,
    /// `config.vm_config.vm_id`.
    pub vm_id: String,
    /// `config.vm_config.runtime` as written (every Envoy runtime name runs on wasmtime here).
    pub runtime: String,
    /// `config.vm_config.code.local.filename`.
    pub module_path: PathBuf,
    /// `config.vm_config.configuration`, decoded.
    pub vm_configuration: Vec<u8>,
    /// `config.configuration`, decoded (`StringValue`/`BytesValue` raw, `Struct` as JSON).
    pub plugin_configuration: Vec<u8>,
    /// `config.vm_config.environment_variables`, resolved (`host_env_keys` read at load).
    pub environment: Vec<(String, String)>,
    /// `config.fail_open` / `config.failure_policy`.
    pub failure_policy: FailurePolicy,
}

/// How a cluster finds its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DiscoveryType {
    /// `STATIC`: IP addresses.
    Static,
    /// `STRICT_DNS`: names resolved to every address.
    StrictDns,
    /// `LOGICAL_DNS`: names resolved, first address used.
    LogicalDns,
}

/// An endpoint as configured: an IP or a DNS name, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `socket_address.address`.
    pub host: String,
    /// `socket_address.port_value`.
    pub port: u16,
}

/// `static_resources.clusters[]`.
#[derive(Clone, Debug, Serialize)]
pub struct Cluster {
    /// `name`.
    pub name: String,
    /// `type`.
    pub discovery: DiscoveryType,
    /// `connect_timeout` (default 5 s, as Envoy).
    pub connect_timeout: Duration,
    /// `load_assignment.endpoints[].lb_endpoints[].endpoint.address`, round-robin.
    pub endpoints: Vec<Endpoint>,
    /// `load_assignment.endpoints[].lb_endpoints[].metadata` (`xds.upstream_host_metadata`):
    /// entry `i` belongs to `endpoints[i]`. When the endpoints were replaced (a
    /// [`crate::Placement`]) and the lengths differ, no endpoint has metadata.
    pub endpoint_metadata: Vec<Metadata>,
    /// `metadata` (`xds.cluster_metadata`).
    pub metadata: Metadata,
    /// HTTP/2 to the upstream (`http2_protocol_options` or `explicit_http_config.http2_protocol_options`).
    pub http2: bool,
    /// HTTP/1 trailers on the upstream hop (`enable_trailers` of the cluster's
    /// `explicit_http_config.http_protocol_options`, or of its legacy `http_protocol_options`;
    /// default false, as Envoy): off, request trailers are not written to an HTTP/1 upstream and
    /// the trailers it sends are dropped before the filters.
    pub http1_trailers: bool,
}

impl Cluster {
    /// The metadata of endpoint `index`; `None` when there is no such endpoint or the endpoints
    /// were replaced after the configuration was read.
    pub fn endpoint_metadata(&self, index: usize) -> Option<&Metadata> {
        if self.endpoint_metadata.len() != self.endpoints.len() {
            return None;
        }
        self.endpoint_metadata.get(index)
    }
}
