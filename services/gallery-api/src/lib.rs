//! `gallery-api`: the gallery's web page and public API, backed by the image catalog.
//!
//! | method | path | |
//! |---|---|---|
//! | `GET` | `/` | the gallery page |
//! | `POST` | `/v0/images` | upload: JSON `{"base64": ...}`, multipart (`image` field), or the raw image → 201 + metadata |
//! | `GET` | `/v0/images?limit=&after=` | images, newest first, with the next cursor |
//! | `GET` | `/v0/images/{id}` | the image, with its `Content-Type`, sandboxed (`Content-Security-Policy: sandbox`, `nosniff`) |
//! | `GET` | `/v0/images/{id}/meta` | its metadata |
//! | `DELETE` | `/v0/images/{id}` | 204 (metadata and bytes gone), 404 when absent |
//! | `GET` | `/v0/healthz`, `/v0/readyz` | liveness; readiness asks the catalog (and so its database) |
//! | `GET` | `/v0/openapi.json` | the OpenAPI 3.1 document of this API |
//!
//! Every response carries `traceresponse` (W3C Trace Context Level 2) with its trace id; the page
//! shows it and links it to the trace viewer.

#![deny(missing_docs)]

pub mod upload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gallery_service::ServiceError;
use gallery_service::server_span::trace_requests;
use gallery_service::telemetry::TelemetryConfig;
use gallery_service::{ApiError, Telemetry, UpstreamClient, media};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opentelemetry::trace::TraceContextExt;

/// How the gallery API runs.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "gallery-api", version, about = "The gallery's web page and public API.")]
pub struct ApiConfig {
    /// Listen address.
    #[arg(long, env = "GALLERY_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The image catalog (or the outbound sidecar in front of it).
    #[arg(long, env = "IMAGE_CATALOG_URL", default_value = "http://127.0.0.1:8082")]
    pub catalog_url: String,
    /// `Host` header for the catalog (how an outbound sidecar routes).
    #[arg(long, env = "IMAGE_CATALOG_HOST")]
    pub catalog_host: Option<String>,
    /// Largest image accepted, in bytes.
    #[arg(long, env = "GALLERY_MAX_UPLOAD_BYTES", default_value_t = 20 << 20)]
    pub max_upload_bytes: usize,
    /// Trace viewer link for a trace id; `{trace_id}` is replaced (Jaeger's UI: .../trace/{trace_id}).
    #[arg(long, env = "GALLERY_TRACE_VIEWER_URL", default_value = "http://127.0.0.1:16686/trace/{trace_id}")]
    pub trace_viewer_url: String,
}

struct AppState {
    catalog: UpstreamClient,
    max_upload_bytes: usize,
    page: String,
}

type Shared = Arc<AppState>;

const PAGE: &str = include_str!("page/index.html");

fn html_attribute(text: &str) -> String {
    text.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

async fn gallery_page(State(state): State<Shared>) -> Response {
    // The page names the trace that served it, like every API response does.
    let cx = opentelemetry::Context::current();
    let trace_id = cx.span().span_context().trace_id().to_string();
    let mut response = Html(state.page.replace("{{PAGE_TRACE_ID}}", &trace_id)).into_response();
    response.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn script() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("page/gallery.js"))
}

async fn style() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("page/gallery.css"))
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
    headers
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (status, [(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn check_id(id: &str) -> Result<(), ApiError> {
    // The catalog validates too; refusing here keeps junk out of URLs and spans.
    if id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("`{id}` is not an image id (a UUID)")))
    }
}

async fn upload(State(state): State<Shared>, request: Request) -> Result<Response, ApiError> {
    let upload = upload::read(request, state.max_upload_bytes).await?;
    let mut headers = json_headers();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(upload.content_type));
    let (status, _, body) = state.catalog.call(Method::POST, "/v0/images", "/v0/images", headers, upload.bytes).await?;
    let mut meta: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_gateway(format!("image-catalog answered: {e}")))?;
    let id = meta["id"].as_str().unwrap_or_default().to_owned();
    meta["url"] = format!("/v0/images/{id}").into();
    let mut response = (status, Json(meta)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v0/images/{id}")) {
        response.headers_mut().insert(http::header::LOCATION, location);
    }
    Ok(response)
}

async fn list(State(state): State<Shared>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let path = match query {
        Some(query) => format!("/v0/images?{query}"),
        None => "/v0/images".to_owned(),
    };
    let (status, _, body) = state.catalog.call(Method::GET, &path, "/v0/images", json_headers(), Bytes::new()).await?;
    Ok(json_response(status, body))
}

async fn metadata(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    check_id(&id)?;
    let (status, _, body) = state
        .catalog
        .call(Method::GET, &format!("/v0/images/{id}"), "/v0/images/{id}", json_headers(), Bytes::new())
        .await?;
    Ok(json_response(status, body))
}

async fn download(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    check_id(&id)?;
    let response = state
        .catalog
        .send(
            Method::GET,
            &format!("/v0/images/{id}/content"),
            "/v0/images/{id}/content",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await?;
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        let body = http_body_util::BodyExt::collect(body).await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(ApiError::from_upstream(state.catalog.name(), parts.status, &body));
    }
    let mut out = Response::new(Body::new(body));
    for name in [http::header::CONTENT_TYPE, http::header::CONTENT_LENGTH, http::header::CACHE_CONTROL] {
        if let Some(value) = parts.headers.get(&name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out.headers_mut().insert(http::header::CONTENT_DISPOSITION, HeaderValue::from_static("inline"));
    // Sandboxed, not sniffed, and only an allowed image type inline (else an attachment).
    media::protect_download(out.headers_mut());
    Ok(out)
}

async fn delete(State(state): State<Shared>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    state
        .catalog
        .call(Method::DELETE, &format!("/v0/images/{id}"), "/v0/images/{id}", json_headers(), Bytes::new())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "service": "gallery-api", "version": env!("CARGO_PKG_VERSION") }))
}

async fn readyz(State(state): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    state.catalog.call(Method::GET, "/v0/readyz", "/v0/readyz", json_headers(), Bytes::new()).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("image-catalog not ready: {}", e.message))
    })?;
    Ok(Json(serde_json::json!({ "ready": true })))
}

async fn openapi() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// The routes of the page and the public API.
pub fn router(config: &ApiConfig, telemetry: Arc<Telemetry>) -> Result<Router, ServiceError> {
    let catalog = UpstreamClient::new(
        "image-catalog",
        &config.catalog_url,
        config.catalog_host.as_deref(),
        // Longer than the catalog's own store calls, so its answer (not ours) says what failed.
        Duration::from_secs(90),
        telemetry.clone(),
    )?;
    let page = PAGE.replace("{{TRACE_VIEWER_URL}}", &html_attribute(&config.trace_viewer_url));
    let state = Arc::new(AppState { catalog, max_upload_bytes: config.max_upload_bytes, page });
    Ok(Router::new()
        .route("/", get(gallery_page))
        .route("/assets/gallery.js", get(script))
        .route("/assets/gallery.css", get(style))
        .route("/v0/images", get(list).post(upload))
        .route("/v0/images/{id}", get(download).delete(delete))
        .route("/v0/images/{id}/meta", get(metadata))
        .route("/v0/healthz", get(healthz))
        .route("/v0/readyz", get(readyz))
        .route("/v0/openapi.json", get(openapi))
        .route_layer(axum::middleware::from_fn_with_state(telemetry, trace_requests))
        // The upload reader enforces the image limit itself (413 with a message).
        .layer(DefaultBodyLimit::disable())
        .with_state(state))
}

/// Starts the gallery API on its own thread (tests; the binary serves until a signal).
pub fn start(config: ApiConfig, telemetry: TelemetryConfig) -> Result<gallery_service::RunningService, ServiceError> {
    let listen = config.listen;
    gallery_service::RunningService::start("gallery-api", listen, &telemetry, move |telemetry| async move {
        router(&config, telemetry)
    })
}
