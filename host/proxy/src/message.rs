//! Between hyper's HTTP messages and the header maps filters see.
//!
//! Filters see HTTP/2-style pseudo-headers whatever the wire protocol: `:method`, `:path`,
//! `:authority`, `:scheme` on requests and `:status` on responses, as Envoy presents them.
//! Hop-by-hop headers never reach filters or the other side, with Envoy's exceptions: `TE` keeps
//! `trailers` (the only value that means anything end to end), an upgrade's `TE` passes as sent,
//! and `Trailer` (an end-to-end header, RFC 9110 §6.6.2) passes. An upgrade's `Connection` and
//! `Upgrade` are rebuilt by [`crate::upgrade`], never forwarded as sent. `Connection` is read as
//! bytes: a value that is not UTF-8 still names the headers it names.

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, PROXY_AUTHENTICATE, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap as HttpHeaders, Method, StatusCode, Uri, Version};
use wasmtrace_runtime::HeaderMap;

/// `x-request-id`, which the connection manager generates (`generate_request_id`).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`, extended with the peer (`use_remote_address`).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`, set when absent.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// legacy ones proxies drop, and `HTTP2-Settings` (RFC 9113 §3.1: it belongs to an `h2c`
/// upgrade of one connection; Envoy's codec strips it with the `h2c` it ignores). Constants, so
/// removing them never parses a name. (`Trailer` is not one: it announces the message's
/// trailers, and hyper writes HTTP/1 trailers only when it is there.)
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    UPGRADE,
    TE,
    PROXY_AUTHENTICATE,
    HTTP2_SETTINGS,
];

/// `HTTP2-Settings`, which only an `h2c` upgrade carries.
pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Headers a `Connection` header may not nominate for removal: what routing, framing and the
/// proxy's own request defaults rest on. (`Connection: host` would otherwise drop the Host and
/// route the request to the default virtual host.)
const END_TO_END: [HeaderName; 6] =
    [HOST, CONTENT_LENGTH, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID, AUTHORIZATION];

/// Which message [`strip_hop_by_hop`] cleans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// A request: `TE` keeps `trailers` if it lists it (Envoy's `sanitize_te`).
    Request,
    /// A response.
    Response,
    /// The two halves of an upgrade (a request the proxy tunnels, its `101` answer): every
    /// hop-by-hop header goes, `Connection` and `Upgrade` too (the caller sets them again from
    /// the upgrade it allowed, [`crate::upgrade::set_headers`]); a request's `TE` passes as sent,
    /// as in Envoy.
    Upgrade,
}

/// Removes hop-by-hop headers, including every header the `Connection` header names (except
/// those in [`END_TO_END`], and `TE`, which is cleaned instead), with the exceptions of `hop`.
///
/// `Connection` is split as bytes: a value with bytes that are not UTF-8 (`x-secret, \xff`) still
/// names `x-secret`, and a token that is no header name names nothing. The header itself always
/// goes, so no other hop reads a value this one could not. (Envoy's codec accepts such bytes as
/// `obs-text`; reading the value whole would let it hide the names before it.)
///
/// A message that came with `Transfer-Encoding` was framed by it (RFC 9112 §6.3: it overrides
/// `Content-Length`), so its `Content-Length` describes nothing and goes too; the other side
/// gets the body re-framed by hyper. Keeping it would let a sender make the proxy announce a
/// length the body does not have (a truncated response, or a smuggled request).
pub fn strip_hop_by_hop(headers: &mut HttpHeaders, hop: Hop) {
    // Most messages have none: one pass over the (few) names instead of a lookup per name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> =
        tokens(headers, &CONNECTION).filter_map(|name| HeaderName::from_bytes(name).ok()).collect();
    for name in named.iter().filter(|name| !END_TO_END.contains(name) && **name != TE) {
        headers.remove(name);
    }
    let trailers = hop == Hop::Request && te_lists_trailers(headers);
    // An upgrade's `TE` passes as sent (Envoy sanitises `TE` only on a plain request).
    for name in HOP_BY_HOP.iter().filter(|name| !(hop == Hop::Upgrade && **name == TE)) {
        headers.remove(name);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a `TE` header lists `trailers` (RFC 9110 §10.1.4: `trailers` is a bare token, the
/// other codings may carry a weight).
fn te_lists_trailers(headers: &HttpHeaders) -> bool {
    tokens(headers, &TE).any(|coding| coding.eq_ignore_ascii_case(b"trailers"))
}

/// The comma-separated elements of every `name` header, as bytes, trimmed, empty ones skipped
/// (RFC 9110 §5.6.1). Bytes, not text: a value that is not UTF-8 is still split.
pub fn tokens<'a>(headers: &'a HttpHeaders, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Whether a message asks for (or, a `101`, agrees to) an upgrade as Envoy's `isUpgrade`
/// reads it: a `Connection` header with the `upgrade` token and an `Upgrade` header.
pub fn is_upgrade(headers: &HttpHeaders) -> bool {
    headers.contains_key(UPGRADE) && tokens(headers, &CONNECTION).any(|token| token.eq_ignore_ascii_case(b"upgrade"))
}

/// The protocol name of `request.protocol`.
pub fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The request as filters see it: pseudo-headers first, then the message headers (Host
/// becomes `:authority`).
pub fn request_header_map(method: &Method, uri: &Uri, headers: &HttpHeaders) -> HeaderMap {
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut map = HeaderMap::from_pairs([
        (":authority", authority.as_str()),
        (":path", path),
        (":method", method.as_str()),
        (":scheme", uri.scheme_str().unwrap_or("http")),
    ]);
    for (name, value) in headers {
        if name != HOST {
            map.add(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    map
}

/// A request head as hyper parsed it, read by routing without converting it (a listener without
/// filters). Pseudo-headers are answered from the request line, as the filters' map has them.
pub struct UnfilteredRequest<'a>(pub &'a http::request::Parts);

impl UnfilteredRequest<'_> {
    /// The request's authority: the URI's (absolute form, HTTP/2), else the Host header.
    pub fn authority_bytes(&self) -> Option<&[u8]> {
        let parts = self.0;
        parts
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| parts.headers.get(HOST).map(HeaderValue::as_bytes))
    }
}

impl crate::route::RouteInput for UnfilteredRequest<'_> {
    fn authority(&self) -> &str {
        self.authority_bytes().and_then(|a| std::str::from_utf8(a).ok()).unwrap_or("")
    }

    fn path(&self) -> &str {
        self.0.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn joined(&self, name: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        let parts = self.0;
        // Names compare ignoring case, as in the filters' map.
        let is = |pseudo: &[u8]| name.eq_ignore_ascii_case(pseudo);
        let pseudo = if is(b":authority") {
            Some(self.authority_bytes().unwrap_or_default())
        } else if is(b":path") {
            Some(self.path().as_bytes())
        } else if is(b":method") {
            Some(parts.method.as_str().as_bytes())
        } else if is(b":scheme") {
            Some(parts.uri.scheme_str().unwrap_or("http").as_bytes())
        } else if name.first() == Some(&b':') {
            return None;
        } else {
            None
        };
        if let Some(value) = pseudo {
            return Some(Cow::Borrowed(value));
        }
        // The filters' map has no `host` entry (it became `:authority`).
        let name = HeaderName::from_bytes(name).ok().filter(|n| *n != HOST)?;
        let mut values = parts.headers.get_all(&name).iter();
        let first = values.next()?;
        let Some(second) = values.next() else { return Some(Cow::Borrowed(first.as_bytes())) };
        let mut joined = first.as_bytes().to_vec();
        for value in std::iter::once(second).chain(values) {
            joined.push(b',');
            joined.extend_from_slice(value.as_bytes());
        }
        Some(Cow::Owned(joined))
    }
}

/// The response as filters see it: `:status`, then the headers.
pub fn response_header_map(status: StatusCode, headers: &HttpHeaders) -> HeaderMap {
    let mut map = HeaderMap::from_pairs([(":status", status.as_str())]);
    for (name, value) in headers {
        map.add(name.as_str().as_bytes(), value.as_bytes());
    }
    map
}

/// Trailers as filters see them.
pub fn trailer_map(headers: &HttpHeaders) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.add(name.as_str().as_bytes(), value.as_bytes());
    }
    map
}

/// The non-pseudo headers of `map` as hyper headers; entries that are not valid HTTP are
/// dropped (a filter may write anything).
pub fn http_headers(map: &HeaderMap) -> HttpHeaders {
    let mut headers = HttpHeaders::with_capacity(map.len());
    for (name, value) in map.iter() {
        if name.first() == Some(&b':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        } else {
            tracing::debug!(header = %String::from_utf8_lossy(name), "dropping a header that is not valid HTTP");
        }
    }
    headers
}

/// The `:status` of a response map.
pub fn status_of(map: &HeaderMap) -> StatusCode {
    map.get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_and_hop_by_hop_headers_are_removed() {
        let mut headers = HttpHeaders::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers, Hop::Response);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-end-to-end"));
    }

    #[test]
    fn te_keeps_only_trailers_on_a_request_even_when_connection_names_it() {
        let te = |value: &'static str, hop: Hop| {
            let mut headers = HttpHeaders::new();
            headers.insert(CONNECTION, HeaderValue::from_static("TE"));
            headers.insert(TE, HeaderValue::from_static(value));
            strip_hop_by_hop(&mut headers, hop);
            headers.get(TE).map(|v| v.to_str().unwrap_or_default().to_owned())
        };
        assert_eq!(te("trailers", Hop::Request).as_deref(), Some("trailers"));
        assert_eq!(te("gzip;q=0.5, Trailers", Hop::Request).as_deref(), Some("trailers"));
        assert_eq!(te("gzip", Hop::Request), None);
        assert_eq!(te("trailers", Hop::Response), None);
        assert_eq!(te("gzip, trailers", Hop::Upgrade).as_deref(), Some("gzip, trailers"));
    }

    #[test]
    fn an_upgrade_loses_connection_and_upgrade_to_be_rebuilt_and_trailer_always_passes() {
        let mut headers = HttpHeaders::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade, HTTP2-Settings"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(HTTP2_SETTINGS, HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"));
        headers.insert(http::header::TRAILER, HeaderValue::from_static("x-checksum"));
        assert!(is_upgrade(&headers));
        let mut upgrade = headers.clone();
        strip_hop_by_hop(&mut upgrade, Hop::Upgrade);
        assert!(!upgrade.contains_key(UPGRADE) && !upgrade.contains_key(CONNECTION));
        assert!(!upgrade.contains_key("keep-alive") && !upgrade.contains_key(HTTP2_SETTINGS));
        strip_hop_by_hop(&mut headers, Hop::Request);
        assert!(!headers.contains_key(UPGRADE) && !headers.contains_key(CONNECTION));
        assert!(headers.contains_key(http::header::TRAILER), "Trailer is end to end");
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn a_connection_value_that_is_not_utf8_still_names_what_it_names() {
        let mut headers = HttpHeaders::new();
        headers.insert(CONNECTION, HeaderValue::from_bytes(b"x-secret, \xff, HTTP2-Settings").expect("obs-text"));
        headers.append(CONNECTION, HeaderValue::from_bytes(b"\xfe\xfd").expect("obs-text"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(HTTP2_SETTINGS, HeaderValue::from_static("AAMAAABk"));
        headers.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers, Hop::Request);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-end-to-end"]);
        let mut upgrade = HttpHeaders::new();
        upgrade.insert(UPGRADE, HeaderValue::from_static("websocket"));
        upgrade.insert(CONNECTION, HeaderValue::from_bytes(b"\xff, Upgrade").expect("obs-text"));
        assert!(is_upgrade(&upgrade), "the upgrade token is found past bytes that are not UTF-8");
    }

    #[test]
    fn only_connection_upgrade_with_an_upgrade_header_is_an_upgrade() {
        let mut headers = HttpHeaders::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&headers));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        assert!(!is_upgrade(&headers));
        headers.append(CONNECTION, HeaderValue::from_static("upgrade"));
        assert!(is_upgrade(&headers));
    }

    #[test]
    fn connection_cannot_remove_the_host() {
        let mut headers = HttpHeaders::new();
        headers.insert(CONNECTION, HeaderValue::from_static("host, x-forwarded-for"));
        headers.insert(HOST, HeaderValue::from_static("internal.local"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        strip_hop_by_hop(&mut headers, Hop::Request);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn transfer_encoding_overrides_content_length() {
        let mut headers = HttpHeaders::new();
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut headers, Hop::Response);
        assert!(headers.is_empty());
    }

    #[test]
    fn requests_get_pseudo_headers_and_host_becomes_authority() {
        let mut headers = HttpHeaders::new();
        headers.insert(HOST, HeaderValue::from_static("gallery.local:8080"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        let uri: Uri = "/v0/images?limit=2".parse().expect("uri");
        let map = request_header_map(&Method::POST, &uri, &headers);
        assert_eq!(map.get_str(":authority"), Some("gallery.local:8080"));
        assert_eq!(map.get_str(":path"), Some("/v0/images?limit=2"));
        assert_eq!(map.get_str(":method"), Some("POST"));
        assert_eq!(map.get_str(":scheme"), Some("http"));
        assert_eq!(map.get(b"host"), None);
        let back = http_headers(&map);
        assert_eq!(back.len(), 1, "pseudo-headers do not become HTTP headers");
    }
}
