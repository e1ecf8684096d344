//! The upstream request head built from a stream's request headers: the URI from its parts
//! (never from a formatted string), the route's `prefix_rewrite`, `Host` for HTTP/1.

use http::header::{HOST, HeaderValue};
use http::uri::Authority;
use http::{Request, Uri, Version};
use wasmtrace_runtime::HeaderMap;

use crate::message::http_headers;

/// Why a request cannot be sent upstream after the request filters ran.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamRequestError {
    /// `:authority` is not `host[:port]` (a filter wrote it, or it came that way).
    #[error("`:authority` is not a valid host[:port]")]
    Authority,
    /// `:path` is not an origin-form path, or would not reach the upstream as written.
    #[error("`:path` is not a valid request path")]
    Path,
    /// `:method` is not a method.
    #[error("`:method` is not a valid method")]
    Method,
}

/// The upstream request head from the filtered request headers. The URI is built from its parts,
/// never from a formatted string: the upstream receives exactly the `:path` the route matched
/// (after `prefix_rewrite`), and an authority is only ever an authority.
pub(crate) fn upstream_request(
    headers: &HeaderMap,
    rewrite: Option<(&str, &str)>,
    http2: bool,
    cluster: &str,
) -> Result<Request<()>, UpstreamRequestError> {
    let method = http::Method::from_bytes(headers.get(b":method").unwrap_or(b"GET"))
        .map_err(|_| UpstreamRequestError::Method)?;
    let target = UpstreamTarget {
        authority: headers.get(b":authority"),
        path: headers.get_str(":path").unwrap_or("/"),
        rewrite,
        http2,
        cluster,
    };
    target.request(method, http_headers(headers))
}

/// The upstream request head of a request no filter saw: its own method and headers, moved.
pub(crate) fn unfiltered_upstream_request(
    mut head: http::request::Parts,
    rewrite: Option<(&str, &str)>,
    http2: bool,
    cluster: &str,
) -> Result<Request<()>, UpstreamRequestError> {
    let mut headers = std::mem::take(&mut head.headers);
    let host = headers.remove(HOST);
    let target = UpstreamTarget {
        authority: head.uri.authority().map(|a| a.as_str().as_bytes()).or(host.as_ref().map(HeaderValue::as_bytes)),
        path: head.uri.path_and_query().map_or("/", |p| p.as_str()),
        rewrite,
        http2,
        cluster,
    };
    target.request(head.method, headers)
}

/// Where a request goes upstream, as the route decided.
struct UpstreamTarget<'a> {
    /// The request's `:authority` (the cluster name when it has none).
    authority: Option<&'a [u8]>,
    /// The request's `:path`.
    path: &'a str,
    /// `(replacement, matched prefix)` of the route's `prefix_rewrite`.
    rewrite: Option<(&'a str, &'a str)>,
    /// Whether the cluster speaks HTTP/2 (no Host header then).
    http2: bool,
    cluster: &'a str,
}

impl UpstreamTarget<'_> {
    /// The request head with `method` and `headers` (hop-by-hop and Host already removed).
    fn request(&self, method: http::Method, headers: http::HeaderMap) -> Result<Request<()>, UpstreamRequestError> {
        let authority = match self.authority.filter(|a| !a.is_empty()) {
            Some(value) if crate::authority::is_valid(value) => {
                Authority::try_from(value).map_err(|_| UpstreamRequestError::Authority)?
            }
            Some(_) => return Err(UpstreamRequestError::Authority),
            None => Authority::try_from(self.cluster).map_err(|_| UpstreamRequestError::Authority)?,
        };
        let rewritten = self.rewrite.and_then(|(replacement, prefix)| {
            self.path.strip_prefix(prefix).map(|rest| format!("{replacement}{rest}"))
        });
        let path = rewritten.as_deref().unwrap_or(self.path);
        let path_and_query = origin_form(path).ok_or(UpstreamRequestError::Path)?;
        let uri = Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| UpstreamRequestError::Path)?;
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = if self.http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        *request.headers_mut() = headers;
        if !self.http2
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(HOST, host);
        }
        Ok(request)
    }
}

/// `path` as an origin-form request target, only if it reaches the upstream byte for byte: the
/// `http` crate drops a `#fragment` silently, so a path it would change is refused.
fn origin_form(path: &str) -> Option<http::uri::PathAndQuery> {
    if !path.starts_with('/') {
        return None;
    }
    let parsed = http::uri::PathAndQuery::try_from(path).ok()?;
    (parsed.as_str() == path).then_some(parsed)
}
