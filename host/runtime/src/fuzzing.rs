//! Entry points for the fuzz targets in `host/fuzz`: the guest-facing decoders that are not
//! otherwise public. Hidden from the docs; not a stable API.

use crate::filter_state::FilterState;
use crate::properties::{PropertyScope, PropertyValue, resolve};
use crate::{HttpExchange, NodeInfo, PluginConfig};

/// `proxy_get_property` without the guest memory: splits the serialised `path` as the host
/// function does and resolves it against the given plugin, node and stream (`None`: the root
/// context, which reads `root_filter_state`).
pub fn get_property(
    path: &[u8],
    plugin: &PluginConfig,
    node: &NodeInfo,
    exchange: Option<&HttpExchange>,
    root_filter_state: &FilterState,
) -> Option<PropertyValue> {
    let scope = PropertyScope { plugin, node, exchange, root_filter_state };
    resolve(&crate::abi::property::segments(path), &scope)
}

/// The segments `proxy_get_property` and `proxy_set_property` see for a serialised path.
pub fn property_segments(path: &[u8]) -> Vec<&[u8]> {
    crate::abi::property::segments(path)
}
