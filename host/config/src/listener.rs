//! Listeners, the HTTP connection manager, routes and the HTTP filter chain.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::model::*;
use crate::tree::{Errors, Node};
use crate::wasm;

use crate::metadata::metadata_of;

const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_NAME: &str = "envoy.filters.http.router";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// `address.socket_address` with an IP address.
pub(crate) fn socket_address(address: &Node<'_>, errors: &mut Errors) -> Option<SocketAddr> {
    let (host, port) = host_and_port(address, errors)?;
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(SocketAddr::new(ip, port)),
        Err(_) => {
            address.error(
                errors,
                format!("`{host}` is not an IP address"),
                Some("listeners bind to an IP such as 127.0.0.1 or 0.0.0.0"),
            );
            None
        }
    }
}

/// `address.socket_address.{address, port_value}` as written.
pub(crate) fn host_and_port(address: &Node<'_>, errors: &mut Errors) -> Option<(String, u16)> {
    address.expect_fields(errors, &["socket_address"], "only TCP socket addresses are supported");
    let socket = address.require("socket_address", errors)?;
    socket.expect_fields(
        errors,
        &["address", "port_value", "protocol"],
        "a socket address is an address and a port_value",
    );
    if let Some(protocol) = socket.get("protocol") {
        protocol.enumeration(errors, &["TCP"]);
    }
    let host = socket.require("address", errors)?.string(errors)?;
    let port = socket.require("port_value", errors)?.unsigned(errors, u64::from(u16::MAX))?;
    Some((host, u16::try_from(port).ok()?))
}

pub(crate) fn parse_listener(listener: &Node<'_>, errors: &mut Errors) -> Option<Listener> {
    listener.expect_fields(
        errors,
        &["name", "address", "filter_chains", "traffic_direction", "metadata", "enable_reuse_port"],
        "a listener is an address and one filter chain with the HTTP connection manager",
    );
    let name = listener.get("name").and_then(|n| n.string(errors)).unwrap_or_default();
    let address = listener.require("address", errors).and_then(|a| socket_address(&a, errors));
    let direction = match listener
        .get("traffic_direction")
        .and_then(|d| d.enumeration(errors, &["UNSPECIFIED", "INBOUND", "OUTBOUND"]))
    {
        Some(d) if d == "INBOUND" => TrafficDirection::Inbound,
        Some(d) if d == "OUTBOUND" => TrafficDirection::Outbound,
        _ => TrafficDirection::Unspecified,
    };
    let chains = listener.require("filter_chains", errors).map(|c| c.items(errors)).unwrap_or_default();
    if chains.len() != 1 {
        listener.error(
            errors,
            format!("has {} filter chains", chains.len()),
            Some("exactly one filter chain is supported"),
        );
    }
    let metadata = metadata_of(listener, errors);
    let mut http = None;
    let mut filter_chain_name = String::new();
    for chain in &chains {
        chain.expect_fields(errors, &["filters", "name"], "a filter chain holds filters");
        filter_chain_name = chain.get("name").and_then(|n| n.string(errors)).unwrap_or_default();
        let filters = chain.require("filters", errors).map(|f| f.items(errors)).unwrap_or_default();
        if filters.len() != 1 {
            chain.error(
                errors,
                format!("has {} network filters", filters.len()),
                Some("exactly one, the HTTP connection manager, is supported"),
            );
        }
        for filter in &filters {
            filter.expect_fields(errors, &["name", "typed_config"], "a network filter is a name and a typed_config");
            let name = filter.get("name").and_then(|n| n.string(errors));
            if name.as_deref() != Some(HCM_NAME) {
                filter.error(
                    errors,
                    format!("network filter {name:?} is not supported"),
                    Some(&format!("use {HCM_NAME}")),
                );
                continue;
            }
            if let Some(config) = filter.require("typed_config", errors) {
                http = parse_hcm(&config, errors);
            }
        }
    }
    // On by default, as in Envoy: see `docs/sidecar.md`.
    let reuse_port = bool_value(listener.get("enable_reuse_port"), errors, true);
    Some(Listener { name, address: address?, direction, metadata, filter_chain_name, reuse_port, http: http? })
}

fn parse_hcm(config: &Node<'_>, errors: &mut Errors) -> Option<HttpConnectionManager> {
    if config.type_url() != Some(HCM_TYPE) {
        config.error(errors, "`@type` must be the HttpConnectionManager", Some(HCM_TYPE));
    }
    config.expect_fields(
        errors,
        &[
            "stat_prefix",
            "codec_type",
            "route_config",
            "http_filters",
            "generate_request_id",
            "use_remote_address",
            "common_http_protocol_options",
            "request_headers_timeout",
            "stream_idle_timeout",
            "max_request_headers_kb",
            "upgrade_configs",
            "http_protocol_options",
        ],
        "the HTTP connection manager takes routes, HTTP filters, timeouts, header limits, upgrades and HTTP/1 options",
    );
    let stat_prefix = config.require("stat_prefix", errors).and_then(|s| s.string(errors)).unwrap_or_default();
    let codec = match config.get("codec_type").and_then(|c| c.enumeration(errors, &["AUTO", "HTTP1", "HTTP2"])) {
        Some(c) if c == "HTTP1" => CodecType::Http1,
        Some(c) if c == "HTTP2" => CodecType::Http2,
        _ => CodecType::Auto,
    };
    let route_config = config.require("route_config", errors)?;
    route_config.expect_fields(errors, &["name", "virtual_hosts"], "a route configuration is a list of virtual hosts");
    let route_config_name = route_config.get("name").and_then(|n| n.string(errors)).unwrap_or_default();
    let virtual_hosts = route_config
        .require("virtual_hosts", errors)
        .map(|v| v.items(errors))
        .unwrap_or_default()
        .iter()
        .filter_map(|v| parse_virtual_host(v, errors))
        .collect();
    let wasm_filters = parse_http_filters(config, errors);
    Some(HttpConnectionManager {
        stat_prefix,
        codec,
        route_config_name,
        virtual_hosts,
        wasm_filters,
        generate_request_id: config.get("generate_request_id").and_then(|g| g.boolean(errors)).unwrap_or(true),
        use_remote_address: config.get("use_remote_address").and_then(|u| u.boolean(errors)).unwrap_or(false),
        limits: parse_connection_limits(config, errors),
        upgrade_configs: parse_upgrade_configs(config, errors),
        http1_trailers: parse_http1_options(config, errors),
    })
}

/// `http_protocol_options` (HTTP/1): only `enable_trailers` (default false).
fn parse_http1_options(config: &Node<'_>, errors: &mut Errors) -> bool {
    let Some(options) = config.get("http_protocol_options") else { return false };
    options.expect_fields(errors, &["enable_trailers"], "supported here: enable_trailers");
    options.get("enable_trailers").and_then(|e| e.boolean(errors)).unwrap_or(false)
}

/// A `google.protobuf.BoolValue` written bare (`enabled: false`) or wrapped
/// (`enabled: { value: false }`); `default` when absent.
fn bool_value(node: Option<Node<'_>>, errors: &mut Errors, default: bool) -> bool {
    let Some(node) = node else { return default };
    if node.value().is_object() {
        node.expect_fields(errors, &["value"], "a BoolValue is { value: true | false }");
        return node.get("value").and_then(|v| v.boolean(errors)).unwrap_or(false);
    }
    node.boolean(errors).unwrap_or(default)
}

/// An `upgrade_type`, lower-cased; `CONNECT` is refused (this proxy does not tunnel CONNECT).
fn upgrade_type(config: &Node<'_>, errors: &mut Errors) -> Option<String> {
    let name = config.require("upgrade_type", errors)?.string(errors)?;
    if name.eq_ignore_ascii_case("connect") {
        config.error(
            errors,
            "CONNECT upgrades are not supported",
            Some("CONNECT is answered 403, as Envoy does without it"),
        );
        return None;
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        config.error(errors, format!("`{name}` is not an upgrade protocol name"), Some("for example websocket"));
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// The connection manager's `upgrade_configs`.
fn parse_upgrade_configs(config: &Node<'_>, errors: &mut Errors) -> Vec<UpgradeConfig> {
    let Some(list) = config.get("upgrade_configs") else { return Vec::new() };
    let mut upgrades: Vec<UpgradeConfig> = Vec::new();
    for item in list.items(errors) {
        item.expect_fields(
            errors,
            &["upgrade_type", "enabled", "filters"],
            "an upgrade config is an upgrade_type, enabled and filters",
        );
        let Some(upgrade_type) = upgrade_type(&item, errors) else { continue };
        if upgrades.iter().any(|u| u.upgrade_type == upgrade_type) {
            item.error(errors, format!("upgrade `{upgrade_type}` is configured twice"), None);
            continue;
        }
        let enabled = bool_value(item.get("enabled"), errors, true);
        let filters = item.get("filters").map(|f| parse_upgrade_filters(&f, errors)).unwrap_or_default();
        upgrades.push(UpgradeConfig { upgrade_type, enabled, filters });
    }
    upgrades
}

/// An upgrade's own `filters`: none (the listener's chain) or the router alone.
fn parse_upgrade_filters(filters: &Node<'_>, errors: &mut Errors) -> UpgradeFilters {
    let items = filters.items(errors);
    let is_router = |filter: &Node<'_>| {
        let name = filter.get("name").and_then(|n| n.value().as_str().map(str::to_owned)).unwrap_or_default();
        name == ROUTER_NAME || filter.get("typed_config").as_ref().and_then(Node::type_url) == Some(ROUTER_TYPE)
    };
    match items.as_slice() {
        [] => UpgradeFilters::Listener,
        [router] if is_router(router) => UpgradeFilters::RouterOnly,
        _ => {
            filters.error(
                errors,
                "an upgrade's own filter chain may hold only the router",
                Some("omit `filters` to run the listener's Wasm filters on upgrades, or list only envoy.filters.http.router to run none"),
            );
            UpgradeFilters::Listener
        }
    }
}

/// A route's `upgrade_configs`.
fn parse_route_upgrades(list: &Node<'_>, errors: &mut Errors) -> Vec<RouteUpgrade> {
    let mut upgrades: Vec<RouteUpgrade> = Vec::new();
    for item in list.items(errors) {
        item.expect_fields(
            errors,
            &["upgrade_type", "enabled"],
            "a route upgrade config is an upgrade_type and enabled",
        );
        let Some(upgrade_type) = upgrade_type(&item, errors) else { continue };
        if upgrades.iter().any(|u| u.upgrade_type == upgrade_type) {
            item.error(errors, format!("upgrade `{upgrade_type}` is configured twice"), None);
            continue;
        }
        let enabled = bool_value(item.get("enabled"), errors, true);
        upgrades.push(RouteUpgrade { upgrade_type, enabled });
    }
    upgrades
}

/// Largest `max_request_headers_kb` Envoy accepts.
const MAX_REQUEST_HEADERS_KB: u64 = 8192;

/// The HCM's timeouts and header limits; `0s` disables a timeout, as in Envoy.
fn parse_connection_limits(config: &Node<'_>, errors: &mut Errors) -> ConnectionLimits {
    let mut limits = ConnectionLimits::default();
    let timeout = |node: Option<Node<'_>>, errors: &mut Errors, default: Option<Duration>| match node {
        Some(node) => node.duration(errors).filter(|d| !d.is_zero()),
        None => default,
    };
    if let Some(common) = config.get("common_http_protocol_options") {
        common.expect_fields(
            errors,
            &["idle_timeout", "max_connection_duration", "max_headers_count"],
            "supported here: idle_timeout, max_connection_duration, max_headers_count",
        );
        limits.idle_timeout = timeout(common.get("idle_timeout"), errors, limits.idle_timeout);
        limits.max_connection_duration =
            timeout(common.get("max_connection_duration"), errors, limits.max_connection_duration);
        if let Some(count) = common.get("max_headers_count").and_then(|c| c.unsigned(errors, u64::from(u32::MAX))) {
            if count == 0 {
                common.error(errors, "max_headers_count must be at least 1", None);
            } else {
                limits.max_headers_count = u32::try_from(count).unwrap_or(u32::MAX);
            }
        }
    }
    limits.request_headers_timeout =
        timeout(config.get("request_headers_timeout"), errors, limits.request_headers_timeout);
    limits.stream_idle_timeout = timeout(config.get("stream_idle_timeout"), errors, limits.stream_idle_timeout);
    if let Some(node) = config.get("max_request_headers_kb")
        && let Some(kb) = node.unsigned(errors, MAX_REQUEST_HEADERS_KB)
    {
        if kb == 0 {
            node.error(errors, "max_request_headers_kb must be at least 1", Some("Envoy's default is 60"));
        } else {
            limits.max_request_headers_kb = u32::try_from(kb).unwrap_or(60);
        }
    }
    limits
}

fn parse_http_filters(config: &Node<'_>, errors: &mut Errors) -> Vec<WasmFilter> {
    let Some(filters) = config.require("http_filters", errors) else {
        return Vec::new();
    };
    let filters = filters.items(errors);
    let mut wasm_filters = Vec::new();
    let mut router_seen = false;
    for (i, filter) in filters.iter().enumerate() {
        filter.expect_fields(errors, &["name", "typed_config"], "an HTTP filter is a name and a typed_config");
        let name = filter.get("name").and_then(|n| n.string(errors)).unwrap_or_default();
        let typed = filter.get("typed_config");
        let is_router = name == ROUTER_NAME || typed.as_ref().and_then(Node::type_url) == Some(ROUTER_TYPE);
        if is_router {
            router_seen = true;
            if i + 1 != filters.len() {
                filter.error(errors, "the router must be the last HTTP filter", None);
            }
            if let Some(typed) = typed {
                typed.expect_fields(errors, &[], "router options are not supported");
            }
            continue;
        }
        match typed {
            Some(typed) if wasm::is_wasm_filter(&name, &typed) => {
                if let Some(parsed) = wasm::parse_wasm_filter(&typed, errors) {
                    wasm_filters.push(parsed);
                }
            }
            _ => filter.error(
                errors,
                format!("HTTP filter `{name}` is not supported"),
                Some("use envoy.filters.http.wasm filters followed by envoy.filters.http.router"),
            ),
        }
    }
    if !router_seen {
        config.error(errors, "`http_filters` must end with envoy.filters.http.router", None);
    }
    wasm_filters
}

fn parse_virtual_host(host: &Node<'_>, errors: &mut Errors) -> Option<VirtualHost> {
    host.expect_fields(errors, &["name", "domains", "routes", "metadata"], "a virtual host is domains and routes");
    let name = host.get("name").and_then(|n| n.string(errors)).unwrap_or_default();
    let domains: Vec<String> = host
        .require("domains", errors)
        .map(|d| d.items(errors))
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d.string(errors))
        .collect();
    let routes = host
        .require("routes", errors)
        .map(|r| r.items(errors))
        .unwrap_or_default()
        .iter()
        .filter_map(|r| parse_route(r, errors))
        .collect();
    let metadata = metadata_of(host, errors);
    Some(VirtualHost { name, domains, routes, metadata })
}

fn parse_route(route: &Node<'_>, errors: &mut Errors) -> Option<Route> {
    route.expect_fields(
        errors,
        &["name", "match", "route", "direct_response", "metadata"],
        "a route is a match and a route or a direct_response",
    );
    let name = route.get("name").and_then(|n| n.string(errors)).unwrap_or_default();
    let matcher = route.require("match", errors).and_then(|m| parse_match(&m, errors));
    let action = match (route.get("route"), route.get("direct_response")) {
        (Some(forward), None) => parse_forward(&forward, errors),
        (None, Some(direct)) => parse_direct(&direct, errors),
        _ => {
            route.error(errors, "needs exactly one of `route` and `direct_response`", None);
            None
        }
    };
    let metadata = metadata_of(route, errors);
    Some(Route { name, matcher: matcher?, action: action?, metadata })
}

fn parse_match(matcher: &Node<'_>, errors: &mut Errors) -> Option<RouteMatch> {
    matcher.expect_fields(
        errors,
        &["prefix", "path", "headers"],
        "routes match a path prefix or an exact path, and headers",
    );
    let path = match (matcher.get("prefix"), matcher.get("path")) {
        (Some(prefix), None) => PathMatch::Prefix(prefix.string(errors)?),
        (None, Some(path)) => PathMatch::Exact(path.string(errors)?),
        _ => {
            matcher.error(errors, "needs exactly one of `prefix` and `path`", None);
            return None;
        }
    };
    let headers = matcher
        .get("headers")
        .map(|h| h.items(errors))
        .unwrap_or_default()
        .iter()
        .filter_map(|h| parse_header_matcher(h, errors))
        .collect();
    Some(RouteMatch { path, headers })
}

fn parse_header_matcher(header: &Node<'_>, errors: &mut Errors) -> Option<HeaderMatcher> {
    header.expect_fields(
        errors,
        &[
            "name",
            "exact_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "present_match",
            "string_match",
            "invert_match",
        ],
        "header matchers compare exactly, by prefix, suffix or substring, or test presence",
    );
    let name = header.require("name", errors)?.string(errors)?.to_ascii_lowercase();
    let legacy = |key: &str, make: fn(String) -> HeaderRule, errors: &mut Errors| {
        header.get(key).and_then(|v| v.string(errors)).map(make)
    };
    let rule = if let Some(string_match) = header.get("string_match") {
        string_match.expect_fields(
            errors,
            &["exact", "prefix", "suffix", "contains"],
            "string matchers compare exactly, by prefix, suffix or substring",
        );
        [
            ("exact", HeaderRule::Exact as fn(String) -> HeaderRule),
            ("prefix", HeaderRule::Prefix),
            ("suffix", HeaderRule::Suffix),
            ("contains", HeaderRule::Contains),
        ]
        .into_iter()
        .find_map(|(key, make)| string_match.get(key).and_then(|v| v.string(errors)).map(make))
        .unwrap_or(HeaderRule::Present)
    } else {
        legacy("exact_match", HeaderRule::Exact, errors)
            .or_else(|| legacy("prefix_match", HeaderRule::Prefix, errors))
            .or_else(|| legacy("suffix_match", HeaderRule::Suffix, errors))
            .or_else(|| legacy("contains_match", HeaderRule::Contains, errors))
            .unwrap_or(HeaderRule::Present)
    };
    let invert = header.get("invert_match").and_then(|i| i.boolean(errors)).unwrap_or(false);
    Some(HeaderMatcher { name, rule, invert })
}

fn parse_forward(forward: &Node<'_>, errors: &mut Errors) -> Option<RouteAction> {
    forward.expect_fields(
        errors,
        &["cluster", "timeout", "prefix_rewrite", "upgrade_configs"],
        "a route forwards to one cluster",
    );
    let cluster = forward.require("cluster", errors)?.string(errors)?;
    let timeout = match forward.get("timeout") {
        Some(t) => t.duration(errors).filter(|d| !d.is_zero()),
        None => Some(DEFAULT_ROUTE_TIMEOUT),
    };
    let prefix_rewrite = forward.get("prefix_rewrite").and_then(|p| p.string(errors));
    let upgrades = forward.get("upgrade_configs").map(|u| parse_route_upgrades(&u, errors)).unwrap_or_default();
    Some(RouteAction::Cluster { cluster, timeout, prefix_rewrite, upgrades })
}

fn parse_direct(direct: &Node<'_>, errors: &mut Errors) -> Option<RouteAction> {
    direct.expect_fields(errors, &["status", "body"], "a direct response is a status and a body");
    let status = direct.require("status", errors)?.unsigned(errors, 599)?;
    if status < 200 {
        direct.error(errors, "status must be from 200 to 599", None);
        return None;
    }
    let body = match direct.get("body") {
        Some(body) => {
            body.expect_fields(errors, &["inline_string"], "bodies are inline strings");
            body.get("inline_string").and_then(|s| s.string(errors)).unwrap_or_default()
        }
        None => String::new(),
    };
    Some(RouteAction::Direct { status: u16::try_from(status).ok()?, body })
}

#[cfg(test)]
mod tests {
    use crate::{Bootstrap, RouteAction, RouteUpgrade, UpgradeConfig, UpgradeFilters};

    fn bootstrap(hcm: &str, route: &str) -> Result<Bootstrap, crate::ConfigErrors> {
        let yaml = format!(
            r#"
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
{hcm}
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: service{route} }} }}]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: service
      type: STATIC
      load_assignment:
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }} }}] }}]
"#
        );
        Bootstrap::from_yaml(&yaml)
    }

    #[test]
    fn upgrade_configs_and_enable_trailers_are_read_as_envoy_writes_them() {
        let hcm = r#"                upgrade_configs:
                  - upgrade_type: WebSocket
                  - upgrade_type: spdy/3.1
                    enabled: { value: false }
                  - upgrade_type: custom
                    enabled: false
                    filters:
                      - name: envoy.filters.http.router
                        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
                http_protocol_options: { enable_trailers: true }"#;
        let route = r#", upgrade_configs: [{ upgrade_type: websocket, enabled: false }, { upgrade_type: custom }]"#;
        let config = bootstrap(hcm, route).expect("loads");
        let http = &config.listeners[0].http;
        assert!(http.http1_trailers);
        assert_eq!(
            http.upgrade_configs,
            [
                UpgradeConfig { upgrade_type: "websocket".into(), enabled: true, filters: UpgradeFilters::Listener },
                UpgradeConfig { upgrade_type: "spdy/3.1".into(), enabled: false, filters: UpgradeFilters::Listener },
                UpgradeConfig { upgrade_type: "custom".into(), enabled: false, filters: UpgradeFilters::RouterOnly },
            ]
        );
        let RouteAction::Cluster { upgrades, .. } = &http.virtual_hosts[0].routes[0].action else {
            panic!("a cluster route")
        };
        assert_eq!(
            upgrades,
            &[
                RouteUpgrade { upgrade_type: "websocket".into(), enabled: false },
                RouteUpgrade { upgrade_type: "custom".into(), enabled: true },
            ]
        );
    }

    #[test]
    fn without_them_no_upgrade_is_configured_and_http1_trailers_are_off() {
        let config = bootstrap("", "").expect("loads");
        assert!(config.listeners[0].http.upgrade_configs.is_empty());
        assert!(!config.listeners[0].http.http1_trailers, "Envoy's default");
    }

    #[test]
    fn connect_wasm_filters_in_an_upgrade_chain_and_unknown_http1_options_are_refused() {
        let error = bootstrap(
            r#"                upgrade_configs:
                  - upgrade_type: CONNECT
                  - upgrade_type: websocket
                    filters:
                      - name: envoy.filters.http.wasm
                        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm }
                      - name: envoy.filters.http.router
                  - upgrade_type: websocket
                http_protocol_options: { accept_http_10: true }"#,
            "",
        )
        .expect_err("refused")
        .to_string();
        assert!(error.contains("CONNECT upgrades are not supported"), "{error}");
        assert!(error.contains("may hold only the router"), "{error}");
        assert!(error.contains("configured twice"), "{error}");
        assert!(error.contains("accept_http_10"), "{error}");
    }
}
