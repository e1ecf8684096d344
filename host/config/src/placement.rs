//! Placing one bootstrap file on a different machine layout without editing it.
//!
//! The files under `deploy/envoy/` name fixed loopback ports and module paths relative to the
//! repository, as Envoy reads them (relative to its working directory). The demo and the tests
//! run those same files, but on ephemeral ports and from other working directories; a
//! [`Placement`] moves listeners, cluster endpoints and the admin interface, and anchors relative
//! module paths, while filter chains, routes and plugin configurations stay exactly as written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::model::{Bootstrap, Endpoint};

/// Where a bootstrap's sockets go instead of where the file puts them. Names not mentioned stay
/// where the file puts them; naming a listener or cluster the file lacks is an error, so a
/// renamed listener cannot silently keep a fixed port in a test.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    listeners: HashMap<String, SocketAddr>,
    clusters: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
}

impl Placement {
    /// Moves the listener named `name` to `address` (port 0: any free port).
    pub fn listener(mut self, name: &str, address: SocketAddr) -> Self {
        self.listeners.insert(name.to_owned(), address);
        self
    }

    /// Points the cluster named `name` at the single endpoint `address` (a static one).
    pub fn cluster(mut self, name: &str, address: SocketAddr) -> Self {
        self.clusters.insert(name.to_owned(), address);
        self
    }

    /// Moves the admin interface to `address`.
    pub fn admin(mut self, address: SocketAddr) -> Self {
        self.admin = Some(address);
        self
    }
}

/// The listeners and clusters a [`Placement`] names that the bootstrap lacks (`listener `x``,
/// `cluster `y``), sorted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the bootstrap has no {}", .0.join(", no "))]
pub struct UnknownNames(pub Vec<String>);

impl Bootstrap {
    /// Applies `placement`; names it mentions that the bootstrap lacks are reported together.
    pub fn place(&mut self, placement: &Placement) -> Result<(), UnknownNames> {
        let mut unknown = Vec::new();
        for (name, address) in &placement.listeners {
            match self.listeners.iter_mut().find(|l| &l.name == name) {
                Some(listener) => listener.address = *address,
                None => unknown.push(format!("listener `{name}`")),
            }
        }
        for (name, address) in &placement.clusters {
            match self.clusters.iter_mut().find(|c| &c.name == name) {
                Some(cluster) => {
                    cluster.discovery = crate::model::DiscoveryType::Static;
                    cluster.endpoints = vec![Endpoint { host: address.ip().to_string(), port: address.port() }];
                }
                None => unknown.push(format!("cluster `{name}`")),
            }
        }
        if let Some(admin) = placement.admin {
            self.admin = Some(admin);
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            unknown.sort();
            Err(UnknownNames(unknown))
        }
    }

    /// Makes every relative module path relative to `base` instead of the working directory
    /// (Envoy's reading), e.g. the repository root the deploy files are written against.
    pub fn anchor_module_paths(&mut self, base: &Path) {
        for listener in &mut self.listeners {
            for filter in &mut listener.http.wasm_filters {
                if filter.module_path.is_relative() {
                    filter.module_path = base.join(&filter.module_path);
                }
            }
        }
    }

    /// The address of the listener named `name`, as configured.
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.name == name).map(|l| l.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
static_resources:
  listeners:
    - name: inbound
      address: { socket_address: { address: 127.0.0.1, port_value: 8080 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: inbound
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes: [{ match: { prefix: "/" }, route: { cluster: app } }]
                http_filters:
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: trace
                        vm_config: { runtime: envoy.wasm.runtime.v8, code: { local: { filename: target/wasm/trace-filter.wasm } } }
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
    - name: app
      type: STRICT_DNS
      load_assignment:
        cluster_name: app
        endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: app.local, port_value: 9080 } } } }] }]
"#;

    #[test]
    fn placement_moves_named_sockets_and_refuses_unknown_names() {
        let mut bootstrap = Bootstrap::from_yaml(YAML).expect("valid");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let app: SocketAddr = "127.0.0.1:4000".parse().expect("address");
        bootstrap.place(&Placement::default().listener("inbound", any).cluster("app", app).admin(any)).expect("placed");
        assert_eq!(bootstrap.listener_address("inbound"), Some(any));
        let cluster = bootstrap.cluster("app").expect("cluster");
        assert_eq!(cluster.endpoints, vec![Endpoint { host: "127.0.0.1".into(), port: 4000 }]);
        assert_eq!(cluster.discovery, crate::model::DiscoveryType::Static);
        assert_eq!(bootstrap.admin, Some(any));

        let error = bootstrap.place(&Placement::default().listener("outbound", any).cluster("otel", any)).unwrap_err();
        assert_eq!(error.to_string(), "the bootstrap has no cluster `otel`, no listener `outbound`");
    }

    #[test]
    fn relative_module_paths_are_anchored_and_absolute_ones_kept() {
        let mut bootstrap = Bootstrap::from_yaml(YAML).expect("valid");
        bootstrap.anchor_module_paths(Path::new("/repo"));
        let module = bootstrap.listeners[0].http.wasm_filters[0].module_path.clone();
        assert_eq!(module, Path::new("/repo/target/wasm/trace-filter.wasm"));
        bootstrap.anchor_module_paths(Path::new("/elsewhere"));
        assert_eq!(bootstrap.listeners[0].http.wasm_filters[0].module_path, module);
    }
}
