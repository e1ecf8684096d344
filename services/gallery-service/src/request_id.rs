//! The request id (`x-request-id`) a service was called with, passed on to every service it
//! calls while serving that request. Envoy (and a wasmtrace sidecar) generates the id at the edge
//! and asks the applications behind it to forward it; without that, each hop's sidecar makes a
//! new one and one user request carries several ids.
//!
//! The id travels in the OpenTelemetry [`Context`] the request is served in, next to its span,
//! so a call made anywhere in the handler finds it without threading it through arguments.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;

/// The header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id in `headers`, if there is exactly one non-empty value.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(X_REQUEST_ID).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if !value.is_empty() => Some(Self(value.clone())),
            _ => None,
        }
    }

    /// `cx` carrying the id of the request in `headers` (unchanged when it has none).
    pub fn carried_in(cx: Context, headers: &HeaderMap) -> Context {
        match Self::of(headers) {
            Some(id) => cx.with_value(id),
            None => cx,
        }
    }

    /// Writes the id `cx` carries into an outgoing request's `headers`, unless the caller set
    /// one itself.
    pub fn pass_on(cx: &Context, headers: &mut HeaderMap) {
        if let Some(Self(id)) = cx.get::<Self>()
            && !headers.contains_key(X_REQUEST_ID)
        {
            headers.insert(X_REQUEST_ID, id.clone());
        }
    }
}
