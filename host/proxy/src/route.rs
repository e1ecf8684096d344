//! Route selection: the virtual host by `:authority`, then the first route whose path and
//! header conditions hold — Envoy's order.

use std::borrow::Cow;

use wasmtrace_config::{HeaderMatcher, HeaderRule, PathMatch, Route, VirtualHost};
use wasmtrace_runtime::HeaderMap;

/// Does `domain` (a virtual host pattern) accept `host` (port already removed)? Both compared
/// ignoring ASCII case, without allocating (this runs for every request and every domain).
fn domain_matches(domain: &str, host: &str) -> bool {
    let (domain, host) = (domain.as_bytes(), host.as_bytes());
    if domain == b"*" {
        return true;
    }
    if let Some(suffix) = domain.strip_prefix(b"*") {
        return host.len() > suffix.len() && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
    }
    if let Some(prefix) = domain.strip_suffix(b"*") {
        return host.len() > prefix.len() && host[..prefix.len()].eq_ignore_ascii_case(prefix);
    }
    domain.eq_ignore_ascii_case(host)
        || domain.split(|&b| b == b':').next().is_some_and(|d| d.eq_ignore_ascii_case(host))
}

/// The virtual host for `authority`: exact domains first, then wildcards, then `*`.
pub fn virtual_host<'a>(hosts: &'a [VirtualHost], authority: &str) -> Option<&'a VirtualHost> {
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(authority, |(h, _)| h);
    let exact = hosts.iter().find(|v| v.domains.iter().any(|d| !d.contains('*') && domain_matches(d, host)));
    let wildcard =
        || hosts.iter().find(|v| v.domains.iter().any(|d| d != "*" && d.contains('*') && domain_matches(d, host)));
    let any = || hosts.iter().find(|v| v.domains.iter().any(|d| d == "*"));
    exact.or_else(wildcard).or_else(any)
}

/// What routing reads of a request: its `:path` and its header values, pseudo-headers included.
/// Implemented by the map filters see and, when a listener has no filters, by the request head
/// as hyper parsed it (so an unfiltered request is never converted).
pub trait RouteInput {
    /// The `:authority` (`host[:port]`), empty when the request has none.
    fn authority(&self) -> &str;
    /// The `:path` (with any query).
    fn path(&self) -> &str;
    /// Every value of `name` joined with `,` (Envoy matches a repeated header that way).
    fn joined(&self, name: &[u8]) -> Option<Cow<'_, [u8]>>;
}

impl RouteInput for HeaderMap {
    fn authority(&self) -> &str {
        self.get_str(":authority").unwrap_or("")
    }

    fn path(&self) -> &str {
        self.get_str(":path").unwrap_or("/")
    }

    fn joined(&self, name: &[u8]) -> Option<Cow<'_, [u8]>> {
        self.get_joined(name).map(Cow::Owned)
    }
}

fn header_matches(matcher: &HeaderMatcher, headers: &impl RouteInput) -> bool {
    let value = headers.joined(matcher.name.as_bytes());
    let holds = match (&matcher.rule, value) {
        (_, None) => false,
        (HeaderRule::Present, Some(_)) => true,
        (HeaderRule::Exact(v), Some(actual)) => *actual == *v.as_bytes(),
        (HeaderRule::Prefix(v), Some(actual)) => actual.starts_with(v.as_bytes()),
        (HeaderRule::Suffix(v), Some(actual)) => actual.ends_with(v.as_bytes()),
        (HeaderRule::Contains(v), Some(actual)) => actual.windows(v.len().max(1)).any(|w| w == v.as_bytes()),
    };
    holds != matcher.invert
}

/// The virtual host and the route a request goes to, in Envoy's order.
pub fn pick<'a>(hosts: &'a [VirtualHost], request: &impl RouteInput) -> Option<(&'a VirtualHost, &'a Route)> {
    let host = virtual_host(hosts, request.authority())?;
    select(host, request).map(|route| (host, route))
}

/// The first route of `host` matching the request headers.
pub fn select<'a>(host: &'a VirtualHost, headers: &impl RouteInput) -> Option<&'a Route> {
    let full_path = headers.path();
    let path = full_path.split(['?', '#']).next().unwrap_or("/");
    host.routes.iter().find(|route| {
        let path_ok = match &route.matcher.path {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
        };
        path_ok && route.matcher.headers.iter().all(|m| header_matches(m, headers))
    })
}

#[cfg(test)]
mod tests {
    use wasmtrace_config::{RouteAction, RouteMatch};

    use super::*;

    fn route(name: &str, path: PathMatch, headers: Vec<HeaderMatcher>) -> Route {
        Route {
            name: name.into(),
            matcher: RouteMatch { path, headers },
            action: RouteAction::Direct { status: 200, body: String::new() },
            metadata: Default::default(),
        }
    }

    #[test]
    fn virtual_hosts_prefer_exact_then_wildcard_then_any() {
        let host = |name: &str, domains: &[&str]| VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![],
            metadata: Default::default(),
        };
        let hosts = [host("any", &["*"]), host("wild", &["*.gallery.local"]), host("exact", &["api.gallery.local"])];
        assert_eq!(virtual_host(&hosts, "api.gallery.local:8080").map(|v| v.name.as_str()), Some("exact"));
        assert_eq!(virtual_host(&hosts, "store.gallery.local").map(|v| v.name.as_str()), Some("wild"));
        assert_eq!(virtual_host(&hosts, "example.com").map(|v| v.name.as_str()), Some("any"));
    }

    #[test]
    fn routes_match_path_and_headers_in_order() {
        let host = VirtualHost {
            name: "h".into(),
            domains: vec!["*".into()],
            routes: vec![
                route(
                    "canary",
                    PathMatch::Prefix("/v0".into()),
                    vec![HeaderMatcher { name: "x-canary".into(), rule: HeaderRule::Exact("1".into()), invert: false }],
                ),
                route("exact", PathMatch::Exact("/v0/healthz".into()), vec![]),
                route("api", PathMatch::Prefix("/v0".into()), vec![]),
            ],
            metadata: Default::default(),
        };
        let request = |path: &str, extra: &[(&str, &str)]| {
            let mut map = HeaderMap::from_pairs([(":path", path)]);
            for (k, v) in extra {
                map.add(k.as_bytes(), v.as_bytes());
            }
            map
        };
        assert_eq!(
            select(&host, &request("/v0/images", &[("x-canary", "1")])).map(|r| r.name.as_str()),
            Some("canary")
        );
        assert_eq!(select(&host, &request("/v0/healthz?x=1", &[])).map(|r| r.name.as_str()), Some("exact"));
        assert_eq!(select(&host, &request("/v0/images", &[("x-canary", "2")])).map(|r| r.name.as_str()), Some("api"));
        assert!(select(&host, &request("/other", &[])).is_none());
    }
}
