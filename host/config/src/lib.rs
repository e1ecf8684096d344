//! The configuration wasmtrace serves: the subset of Envoy's v3 bootstrap YAML that Wasm HTTP
//! filters need, so one file runs in Envoy and in the wasmtrace host.
//!
//! [`Bootstrap::from_yaml`] parses YAML (or JSON) into plain, documented data ([`model`]). Every
//! field outside the subset is refused with its YAML path and a one-line hint, and every bad field
//! is reported, not just the first.
//!
//! Values are read by Envoy's rules for YAML, which are protobuf's JSON parser's in its legacy
//! mode, applied in one place (the tree walker) to every field: either spelling of a field name
//! (`stat_prefix`, `statPrefix`); a single value for a repeated field (`listeners:` holding one
//! mapping, as the proxy-wasm SDK examples write it); `google.protobuf.Duration` as `"0.25s"` or
//! `{seconds, nanos}`, with Envoy's refusals (`"1000ms"`, negative); enum names in any case.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cluster;
mod duration;
mod listener;
mod metadata;
pub mod model;
mod placement;
mod tree;
mod wasm;
mod wasm_service;
mod yaml;

pub use model::*;
pub use placement::{Placement, UnknownNames};
pub use tree::{ConfigError, ConfigErrors};
pub use yaml::yaml_documents;

use tree::{Errors, Node};

impl Bootstrap {
    /// Parses and validates a bootstrap document.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let value = yaml::to_json(text).map_err(|e| ConfigErrors(vec![e]))?;
        let mut errors = Errors::default();
        let root = Node::root(&value);
        let bootstrap = parse_bootstrap(&root, &mut errors);
        errors.finish(bootstrap)
    }

    /// Reads and parses a bootstrap file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read the configuration: {e}"),
                hint: None,
            }])
        })?;
        Self::from_yaml(&text)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

fn parse_bootstrap(root: &Node<'_>, errors: &mut Errors) -> Bootstrap {
    root.expect_fields(
        errors,
        &["node", "admin", "static_resources", "bootstrap_extensions"],
        "a bootstrap holds node, admin, static_resources and bootstrap_extensions",
    );
    let node = root.get("node").map(|n| parse_node(&n, errors)).unwrap_or_default();
    let admin = root.get("admin").and_then(|a| {
        a.expect_fields(errors, &["address"], "the admin interface takes only an address");
        a.require("address", errors).and_then(|addr| listener::socket_address(&addr, errors))
    });
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    // Envoy needs no `static_resources` (an admin-only bootstrap, or one whose resources come
    // later): neither do we.
    if let Some(resources) = root.get("static_resources") {
        resources.expect_fields(errors, &["listeners", "clusters"], "only static listeners and clusters are supported");
        for l in resources.get("listeners").map(|l| l.items(errors)).unwrap_or_default() {
            if let Some(parsed) = listener::parse_listener(&l, errors) {
                listeners.push(parsed);
            }
        }
        for c in resources.get("clusters").map(|c| c.items(errors)).unwrap_or_default() {
            if let Some(parsed) = cluster::parse_cluster(&c, errors) {
                clusters.push(parsed);
            }
        }
    }
    let wasm_services = root
        .get("bootstrap_extensions")
        .map(|e| wasm_service::parse_bootstrap_extensions(&e, errors))
        .unwrap_or_default();
    let bootstrap = Bootstrap { node, admin, listeners, clusters, wasm_services };
    check_references(&bootstrap, root, errors);
    bootstrap
}

fn parse_node(node: &Node<'_>, errors: &mut Errors) -> NodeIdentity {
    node.expect_fields(errors, &["id", "cluster", "metadata"], "the node takes id, cluster and metadata");
    NodeIdentity {
        id: node.get("id").and_then(|n| n.string(errors)).unwrap_or_default(),
        cluster: node.get("cluster").and_then(|n| n.string(errors)).unwrap_or_default(),
        metadata: node.get("metadata").and_then(|m| m.value().as_object().cloned()).unwrap_or_default(),
    }
}

/// Cross-references: every route's cluster exists, names are unique, listeners' addresses do
/// not overlap.
fn check_references(bootstrap: &Bootstrap, root: &Node<'_>, errors: &mut Errors) {
    let path = |suffix: &str| format!("{}{suffix}", root.path());
    for (i, listener) in bootstrap.listeners.iter().enumerate() {
        for (v, host) in listener.http.virtual_hosts.iter().enumerate() {
            for (r, route) in host.routes.iter().enumerate() {
                if let RouteAction::Cluster { cluster, .. } = &route.action
                    && bootstrap.cluster(cluster).is_none()
                {
                    errors.push(
                        path(&format!(
                            "static_resources.listeners[{i}]...route_config.virtual_hosts[{v}].routes[{r}].route.cluster"
                        )),
                        format!("no cluster named `{cluster}`"),
                        Some("add it under static_resources.clusters".into()),
                    );
                }
            }
        }
    }
    let filter_names: std::collections::HashSet<&String> =
        bootstrap.listeners.iter().flat_map(|l| &l.http.wasm_filters).map(|f| &f.name).collect();
    let mut services = std::collections::HashSet::new();
    for (i, service) in bootstrap.wasm_services.iter().enumerate() {
        if filter_names.contains(&service.filter.name) {
            errors.push(
                path(&format!("bootstrap_extensions[{i}].typed_config.config.name")),
                format!("a Wasm filter is named `{}` too", service.filter.name),
                Some("a swap by name would replace both: give the service its own name".into()),
            );
        }
        if !services.insert(&service.filter.name) {
            errors.push(
                path(&format!("bootstrap_extensions[{i}].typed_config.config.name")),
                format!("duplicate Wasm service name `{}`", service.filter.name),
                Some("each service is swapped and reported by its name".into()),
            );
        }
    }
    for (i, listener) in bootstrap.listeners.iter().enumerate() {
        if listener.name == SERVICE_SCOPE {
            errors.push(
                path(&format!("static_resources.listeners[{i}].name")),
                format!("`{SERVICE_SCOPE}` names where Wasm services are reported"),
                Some("give the listener another name".into()),
            );
        }
    }
    // Two listeners on one address would both bind it (SO_REUSEPORT is on by default) and the
    // kernel would split connections between their filter chains; Envoy refuses them too. A
    // wildcard address overlaps every address of its family on the same port.
    for (i, listener) in bootstrap.listeners.iter().enumerate() {
        let address = listener.address;
        let overlaps = |other: &std::net::SocketAddr| {
            other.port() == address.port()
                && other.is_ipv4() == address.is_ipv4()
                && (other.ip() == address.ip() || other.ip().is_unspecified() || address.ip().is_unspecified())
        };
        if address.port() == 0 {
            continue;
        }
        if let Some(earlier) = bootstrap.listeners[..i].iter().find(|earlier| overlaps(&earlier.address)) {
            errors.push(
                path(&format!("static_resources.listeners[{i}].address")),
                format!(
                    "`{}` listens on {address}, which listener `{}` ({}) takes",
                    listener.name, earlier.name, earlier.address
                ),
                Some("give each listener an address of its own".into()),
            );
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, cluster) in bootstrap.clusters.iter().enumerate() {
        if !seen.insert(&cluster.name) {
            errors.push(
                path(&format!("static_resources.clusters[{i}].name")),
                format!("duplicate cluster name `{}`", cluster.name),
                None,
            );
        }
    }
}
