//! The W3C trace-context test suite's service interface, made of the gallery's own parts, so the
//! suite checks the gallery's propagation in standalone mode (no sidecar): `POST /test` with a
//! JSON array of `{"url", "arguments"}`; for each element the service POSTs `arguments` to `url`.
//!
//! The request goes through [`trace_requests`] (the caller's context extracted, a SERVER span)
//! and every callback through an [`UpstreamClient`] (a CLIENT span, its context injected), as in
//! `gallery-api`, `image-catalog` and `image-store` — what the suite sees is what the gallery's
//! services send. `services/w3c-callback` is the same interface for a service behind a sidecar,
//! which passes on the headers it received for the sidecar to rewrite.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use serde::Deserialize;

use crate::api_error::ApiError;
use crate::serve::RunningService;
use crate::server_span::trace_requests;
use crate::telemetry::{Telemetry, TelemetryConfig};
use crate::upstream::UpstreamClient;

/// How long one callback may take.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One callback the suite asks for.
#[derive(Deserialize)]
struct Callback {
    /// Where to POST (`http://host:port/path`).
    url: String,
    /// What to POST (as JSON).
    #[serde(default)]
    arguments: serde_json::Value,
}

/// The interface's routes: `POST /test`, traced as every gallery route is.
pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/test", post(test))
        .route_layer(axum::middleware::from_fn_with_state(telemetry.clone(), trace_requests))
        .with_state(telemetry)
}

/// Serves [`router`] on `listen` on its own thread (tests; `listen` may have port 0).
pub fn start(listen: SocketAddr, telemetry: &TelemetryConfig) -> Result<RunningService, crate::ServiceError> {
    RunningService::start("w3c-suite-service", listen, telemetry, |telemetry| async move { Ok(router(telemetry)) })
}

async fn test(State(telemetry): State<Arc<Telemetry>>, body: Bytes) -> Result<&'static str, ApiError> {
    let callbacks: Vec<Callback> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected a JSON array of {{url, arguments}}: {e}")))?;
    for callback in callbacks {
        let (base, path) = split_url(&callback.url)?;
        let client = UpstreamClient::new("callback", &base, None, CALLBACK_TIMEOUT, telemetry.clone())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // Like the suite's reference services, any answer will do; only a failed call fails.
        client.send(Method::POST, &path, &path, headers, Bytes::from(callback.arguments.to_string())).await?;
    }
    Ok("ok")
}

/// `http://host:port/path?query` as (`http://host:port`, `/path?query`).
fn split_url(url: &str) -> Result<(String, String), ApiError> {
    let invalid = || ApiError::bad_request(format!("not an http://host:port/path URL: {url}"));
    let uri: Uri = url.parse().map_err(|_| invalid())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            Ok((format!("http://{authority}"), path.to_owned()))
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_url_splits_into_the_service_and_the_path() {
        let (base, path) = split_url("http://127.0.0.1:7777/callback?x=1").expect("valid");
        assert_eq!((base.as_str(), path.as_str()), ("http://127.0.0.1:7777", "/callback?x=1"));
        assert_eq!(split_url("http://harness").expect("valid").1, "/");
        for bad in ["https://127.0.0.1/callback", "/callback", "not a url"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
