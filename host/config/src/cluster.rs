//! Clusters: static or DNS endpoints, round-robin, HTTP/1.1 or HTTP/2, and their metadata.

use std::time::Duration;

use crate::listener::host_and_port;
use crate::metadata::metadata_of;
use crate::model::{Cluster, DiscoveryType, Endpoint, Metadata};
use crate::tree::{Errors, Node};

/// Envoy's default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub(crate) fn parse_cluster(cluster: &Node<'_>, errors: &mut Errors) -> Option<Cluster> {
    cluster.expect_fields(
        errors,
        &[
            "name",
            "type",
            "connect_timeout",
            "lb_policy",
            "load_assignment",
            "http2_protocol_options",
            "typed_extension_protocol_options",
            "dns_lookup_family",
            "metadata",
            "http_protocol_options",
        ],
        "a cluster is a name, a type, endpoints and timeouts",
    );
    let name = cluster.require("name", errors)?.string(errors)?;
    let discovery = match cluster
        .get("type")
        .and_then(|t| t.enumeration(errors, &["STATIC", "STRICT_DNS", "LOGICAL_DNS"]))
        .as_deref()
    {
        Some("STRICT_DNS") => DiscoveryType::StrictDns,
        Some("LOGICAL_DNS") => DiscoveryType::LogicalDns,
        _ => DiscoveryType::Static,
    };
    if let Some(lb) = cluster.get("lb_policy") {
        lb.enumeration(errors, &["ROUND_ROBIN"]);
    }
    if let Some(family) = cluster.get("dns_lookup_family") {
        family.enumeration(errors, &["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"]);
    }
    let connect_timeout = match cluster.get("connect_timeout") {
        Some(node) => match node.duration(errors) {
            // Envoy's rule for this field (`duration.gt: {}`).
            Some(zero) if zero.is_zero() => {
                node.error(errors, "must be longer than 0s", Some("Envoy's default is 5s"));
                DEFAULT_CONNECT_TIMEOUT
            }
            Some(timeout) => timeout,
            None => DEFAULT_CONNECT_TIMEOUT,
        },
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    let mut http2 = cluster.get("http2_protocol_options").is_some();
    // The legacy `http_protocol_options` (HTTP/1), which the typed options replace.
    let mut http1_trailers = enable_trailers(cluster.get("http_protocol_options"), errors);
    if let Some(typed) = cluster.get("typed_extension_protocol_options") {
        typed.expect_fields(errors, &[HTTP_OPTIONS_KEY], "only HTTP protocol options are supported");
        if let Some(options) = typed.get(HTTP_OPTIONS_KEY) {
            options.expect_fields(
                errors,
                &["explicit_http_config"],
                "choose the upstream protocol with explicit_http_config",
            );
            if let Some(explicit) = options.get("explicit_http_config") {
                explicit.expect_fields(
                    errors,
                    &["http_protocol_options", "http2_protocol_options"],
                    "choose HTTP/1.1 or HTTP/2",
                );
                http2 = explicit.get("http2_protocol_options").is_some();
                if let Some(options) = explicit.get("http_protocol_options") {
                    http1_trailers = enable_trailers(Some(options), errors);
                }
            }
        }
    }
    let (endpoints, endpoint_metadata) =
        cluster.require("load_assignment", errors).map(|a| endpoints(&a, errors)).unwrap_or_default();
    if endpoints.is_empty() {
        cluster.error(
            errors,
            "has no endpoints",
            Some("add load_assignment.endpoints[].lb_endpoints[].endpoint.address"),
        );
    }
    if discovery == DiscoveryType::Static {
        for endpoint in &endpoints {
            if endpoint.host.parse::<std::net::IpAddr>().is_err() {
                cluster.error(
                    errors,
                    format!("STATIC endpoint `{}` is not an IP address", endpoint.host),
                    Some("use STRICT_DNS or LOGICAL_DNS for host names"),
                );
            }
        }
    }
    let metadata = metadata_of(cluster, errors);
    Some(Cluster { name, discovery, connect_timeout, endpoints, endpoint_metadata, metadata, http2, http1_trailers })
}

/// `enable_trailers` of an `Http1ProtocolOptions` (default false, as Envoy).
fn enable_trailers(options: Option<Node<'_>>, errors: &mut Errors) -> bool {
    let Some(options) = options else { return false };
    options.expect_fields(errors, &["enable_trailers"], "supported here: enable_trailers");
    options.get("enable_trailers").and_then(|e| e.boolean(errors)).unwrap_or(false)
}

/// The endpoints of a load assignment and, entry for entry, their `lb_endpoints[].metadata`.
fn endpoints(assignment: &Node<'_>, errors: &mut Errors) -> (Vec<Endpoint>, Vec<Metadata>) {
    assignment.expect_fields(errors, &["cluster_name", "endpoints"], "a load assignment lists endpoints");
    let (mut found, mut metadata) = (Vec::new(), Vec::new());
    for locality in assignment.get("endpoints").map(|e| e.items(errors)).unwrap_or_default() {
        locality.expect_fields(errors, &["lb_endpoints"], "endpoints are grouped in lb_endpoints");
        for lb in locality.get("lb_endpoints").map(|e| e.items(errors)).unwrap_or_default() {
            lb.expect_fields(errors, &["endpoint", "metadata"], "an lb_endpoint holds an endpoint and its metadata");
            let Some(endpoint) = lb.require("endpoint", errors) else { continue };
            endpoint.expect_fields(errors, &["address"], "an endpoint is an address");
            let lb_metadata = metadata_of(&lb, errors);
            if let Some((host, port)) = endpoint.require("address", errors).and_then(|a| host_and_port(&a, errors)) {
                found.push(Endpoint { host, port });
                metadata.push(lb_metadata);
            }
        }
    }
    (found, metadata)
}
