//! `metadata` (`envoy.config.core.v3.Metadata`) on listeners, virtual hosts, routes, clusters and
//! load-balancing endpoints: the values filters read as `xds.listener_metadata`,
//! `xds.virtual_host_metadata`, `xds.route_metadata`, `xds.cluster_metadata` and
//! `xds.upstream_host_metadata`.
//!
//! Only `filter_metadata` (a `google.protobuf.Struct` per namespace) is kept. A non-empty
//! `typed_filter_metadata` is refused: Envoy hands a filter each entry as the packed message
//! (its protobuf bytes, or a map for a well-known type), which needs the message type's
//! descriptor; the same data written under `filter_metadata` reads the same way in both proxies.

use std::sync::Arc;

use serde_json::Value;

use crate::model::Metadata;
use crate::tree::{Errors, Node};

/// The `metadata` field of `parent`, or empty metadata when it has none.
pub(crate) fn metadata_of(parent: &Node<'_>, errors: &mut Errors) -> Metadata {
    parent.get("metadata").map(|m| parse_metadata(&m, errors)).unwrap_or_default()
}

/// One `envoy.config.core.v3.Metadata`.
fn parse_metadata(metadata: &Node<'_>, errors: &mut Errors) -> Metadata {
    metadata.expect_fields(
        errors,
        &["filter_metadata", "typed_filter_metadata"],
        "metadata is filter_metadata: a google.protobuf.Struct per namespace",
    );
    if let Some(typed) = metadata.get("typed_filter_metadata")
        && typed.value().as_object().is_none_or(|entries| !entries.is_empty())
    {
        typed.error(
            errors,
            "typed_filter_metadata is not supported",
            Some(
                "filters read a typed entry as its packed message, which needs the type's descriptor; \
                 write the values under filter_metadata (a google.protobuf.Struct per namespace)",
            ),
        );
    }
    let Some(filter_metadata) = metadata.get("filter_metadata") else { return Metadata::default() };
    let Some(namespaces) = filter_metadata.value().as_object() else {
        filter_metadata.error(errors, "expected a mapping from namespace to a google.protobuf.Struct", None);
        return Metadata::default();
    };
    let mut kept = serde_json::Map::new();
    for (namespace, fields) in namespaces {
        match fields {
            Value::Object(_) => {
                kept.insert(namespace.clone(), fields.clone());
            }
            // protobuf's JSON parser reads a null map value as an empty message.
            Value::Null => {
                kept.insert(namespace.clone(), Value::Object(serde_json::Map::new()));
            }
            _ => {
                let at = filter_metadata.get(namespace).unwrap_or_else(|| filter_metadata.clone());
                at.error(errors, "expected a mapping (a google.protobuf.Struct)", None);
            }
        }
    }
    Metadata { filter_metadata: Arc::new(kept) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Bootstrap;

    fn bootstrap(
        listener: &str,
        host: &str,
        route: &str,
        cluster: &str,
        endpoint: &str,
    ) -> Result<Bootstrap, crate::ConfigErrors> {
        let yaml = format!(
            r#"
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{listener}
      filter_chains:
        - name: chain-a
          filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
{host}
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: service }}
{route}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: service
      type: STATIC
{cluster}
      load_assignment:
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }}
{endpoint}
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 2 }} }} }}
"#
        );
        Bootstrap::from_yaml(&yaml)
    }

    #[test]
    fn filter_metadata_is_read_on_every_resource_envoy_gives_metadata() {
        let config = bootstrap(
            "      metadata: { filter_metadata: { acme: { tier: gold, weight: 3, canary: true } } }",
            "                      metadata: { filter_metadata: { acme: { zone: a } } }",
            "                          metadata: { filter_metadata: { acme: { owner: team-x }, empty: {} } }",
            "      metadata: { filter_metadata: { acme: { nested: { list: [1, two] } } } }",
            "                metadata: { filter_metadata: { envoy.lb: { version: v1 } } }",
        )
        .expect("loads");
        let listener = &config.listeners[0];
        assert_eq!(
            *listener.metadata.filter_metadata,
            json!({"acme": {"tier": "gold", "weight": 3, "canary": true}}).as_object().cloned().unwrap_or_default()
        );
        assert_eq!(listener.filter_chain_name, "chain-a");
        let host = &listener.http.virtual_hosts[0];
        assert_eq!(host.metadata.filter_metadata["acme"], json!({"zone": "a"}));
        assert_eq!(host.routes[0].metadata.filter_metadata["empty"], json!({}));
        let cluster = &config.clusters[0];
        assert_eq!(cluster.metadata.filter_metadata["acme"]["nested"]["list"], json!([1, "two"]));
        assert_eq!(cluster.endpoint_metadata.len(), 2, "one entry per endpoint");
        assert_eq!(cluster.endpoint_metadata[0].filter_metadata["envoy.lb"], json!({"version": "v1"}));
        assert!(cluster.endpoint_metadata[1].filter_metadata.is_empty());
    }

    #[test]
    fn typed_filter_metadata_and_a_namespace_that_is_not_a_struct_are_refused() {
        let error = bootstrap(
            "      metadata: { typed_filter_metadata: { acme: { '@type': type.googleapis.com/google.protobuf.Struct } } }",
            "",
            "                          metadata: { filter_metadata: { acme: 5 } }",
            "      metadata: { filter_metadata: { acme: {} }, labels: {} }",
            "",
        )
        .expect_err("refused")
        .to_string();
        assert!(
            error.contains("listeners[0].metadata.typed_filter_metadata: typed_filter_metadata is not supported"),
            "{error}"
        );
        assert!(error.contains("routes[0].metadata.filter_metadata.acme: expected a mapping"), "{error}");
        assert!(error.contains("clusters[0].metadata.labels: is not supported"), "{error}");
    }

    #[test]
    fn an_empty_typed_filter_metadata_and_no_metadata_load() {
        let config = bootstrap("      metadata: { typed_filter_metadata: {} }", "", "", "", "").expect("loads");
        assert!(config.listeners[0].metadata.filter_metadata.is_empty());
        assert!(config.clusters[0].metadata.filter_metadata.is_empty());
        assert_eq!(config.listeners[0].http.virtual_hosts[0].routes[0].metadata, Default::default());
    }
}
