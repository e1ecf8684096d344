//! Calls from one gallery service to another: a CLIENT span per call (HTTP semantic
//! conventions), the span's context and the served request's `x-request-id` injected into the
//! request, and a timeout. In a deployment
//! the base URL is the caller's outbound sidecar and `Host` names the service behind it; with the
//! filters in-process, the base URL is the service itself and the calls go through the
//! outbound filters' client layer (which routes by that same `Host`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use tower_layer::Layer as _;
use wasmtrace_tower::{Filtered, FilteredBody};

use crate::api_error::ApiError;
use crate::request_id::RequestId;
use crate::telemetry::{Telemetry, attribute};

/// A service this one calls.
#[derive(Clone)]
pub struct UpstreamClient {
    name: String,
    /// `http://host:port`, without a trailing slash.
    base: String,
    authority: String,
    host: Option<HeaderValue>,
    timeout: Duration,
    transport: Transport,
    telemetry: Arc<Telemetry>,
}

/// How a call reaches the other service: straight (or to a sidecar), or through the in-process
/// outbound filters.
#[derive(Clone)]
enum Transport {
    Direct(Client<HttpConnector, Full<Bytes>>),
    Filtered(Filtered<Client<HttpConnector, FilteredBody>>),
}

/// The body of another service's answer.
pub type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Why a call did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL could not be built.
    #[error("bad upstream URL: {0}")]
    Url(String),
    /// Connection refused, reset, or similar.
    #[error("{service} is unreachable: {detail}")]
    Unreachable {
        /// Which service.
        service: String,
        /// What the connection said.
        detail: String,
    },
    /// No response in time.
    #[error("{service} did not answer within {timeout:?}")]
    Timeout {
        /// Which service.
        service: String,
        /// The limit.
        timeout: Duration,
    },
}

impl From<UpstreamError> for ApiError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Timeout { .. } => ApiError::new(http::StatusCode::GATEWAY_TIMEOUT, error.to_string()),
            other => ApiError::bad_gateway(other.to_string()),
        }
    }
}

impl UpstreamClient {
    /// A client for the service `name` at `base_url` (`http://host:port`); `host` overrides the
    /// `Host` header (routing through a sidecar).
    pub fn new(
        name: &str,
        base_url: &str,
        host: Option<&str>,
        timeout: Duration,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, crate::ConfigError> {
        let bad_url = || crate::ConfigError::UpstreamUrl { service: name.to_owned(), value: base_url.to_owned() };
        let base = base_url.trim_end_matches('/').to_owned();
        let parsed: Uri = base.parse().map_err(|_| bad_url())?;
        let authority = match (parsed.scheme_str(), parsed.authority(), parsed.path()) {
            (Some("http"), Some(authority), "/" | "") => authority.as_str().to_owned(),
            _ => return Err(bad_url()),
        };
        let host = host
            .map(|h| {
                HeaderValue::from_str(h)
                    .map_err(|_| crate::ConfigError::UpstreamHost { service: name.to_owned(), value: h.to_owned() })
            })
            .transpose()?;
        let transport = match telemetry.in_process().and_then(|filters| filters.client_layer()) {
            Some(layer) => Transport::Filtered(layer.layer(Client::builder(TokioExecutor::new()).build_http())),
            None => Transport::Direct(Client::builder(TokioExecutor::new()).build_http()),
        };
        Ok(Self { name: name.to_owned(), base, authority, host, timeout, transport, telemetry })
    }

    /// Sends a request to `path` (`route` is its template, e.g. `/v0/objects/{id}`, for the span
    /// name), inside a CLIENT span that ends when the response headers arrive.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        route: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let uri: Uri = format!("{}{}", self.base, path).parse().map_err(|e| UpstreamError::Url(format!("{e}")))?;
        let parent = Context::current();
        RequestId::pass_on(&parent, &mut headers);
        if !self.telemetry.http_spans() {
            // The outbound sidecar makes the CLIENT span; pass the current context to it.
            self.telemetry.inject(&parent, &mut headers);
            return self.exchange(method, uri, headers, body).await;
        }
        let (address, port) = self.authority.rsplit_once(':').unwrap_or((self.authority.as_str(), "80"));
        let tracer = self.telemetry.tracer();
        let span = tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                attribute("http.request.method", method.as_str()),
                attribute("url.full", uri.to_string()),
                attribute("url.template", route),
                attribute("server.address", address),
                KeyValue::new("server.port", port.parse::<i64>().unwrap_or(80)),
                attribute("peer.service", self.name.clone()),
            ])
            .start_with_context(tracer, &parent);
        let cx = parent.with_span(span);
        self.telemetry.inject(&cx, &mut headers);
        let result = self.exchange(method, uri, headers, body).await;
        let span = cx.span();
        match &result {
            Ok(response) => {
                let status = response.status().as_u16();
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
                if status >= 400 {
                    span.set_attribute(attribute("error.type", status.to_string()));
                    span.set_status(Status::error(format!("{} answered {status}", self.name)));
                }
            }
            Err(e) => {
                let kind = match e {
                    UpstreamError::Timeout { .. } => "timeout",
                    _ => "connection_failed",
                };
                span.set_attribute(attribute("error.type", kind));
                span.set_status(Status::error(e.to_string()));
            }
        }
        span.end();
        result
    }

    /// The exchange itself: `Host` set, the timeout applied.
    async fn exchange(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if let Some(host) = &self.host {
            headers.insert(http::header::HOST, host.clone());
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let sent = async {
            match &self.transport {
                Transport::Direct(client) => client
                    .request(request)
                    .await
                    .map(|r| r.map(|b| b.map_err(Into::into).boxed_unsync()))
                    .map_err(|e| e.to_string()),
                Transport::Filtered(filtered) => {
                    let Ok(response) = tower_service::Service::call(&mut filtered.clone(), request).await;
                    Ok(response.map(|b| b.boxed_unsync()))
                }
            }
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(detail)) => Err(UpstreamError::Unreachable { service: self.name.clone(), detail }),
            Err(_) => Err(UpstreamError::Timeout { service: self.name.clone(), timeout: self.timeout }),
        }
    }

    /// Sends and reads the whole response; a non-2xx answer becomes the matching [`ApiError`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        route: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
        let response = self.send(method, path, route, headers, body).await?;
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| ApiError::bad_gateway(format!("{}: reading the response: {e}", self.name)))?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(ApiError::from_upstream(&self.name, parts.status, &bytes));
        }
        Ok((parts.status, parts.headers, bytes))
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
