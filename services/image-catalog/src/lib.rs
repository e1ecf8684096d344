//! `image-catalog`: image metadata in SQL, image bytes in the image store. `gallery-api` is its
//! client.
//!
//! | method | path | |
//! |---|---|---|
//! | `POST` | `/v0/images` | the body is the image, `Content-Type` its type (the gallery's allow-list, checked against the bytes; 415 otherwise) → 201 + metadata |
//! | `GET` | `/v0/images?limit=&after=` | ready images, newest first, with the next cursor |
//! | `GET` | `/v0/images/{id}` | metadata (404 when absent) |
//! | `GET` | `/v0/images/{id}/content` | the bytes, with their `Content-Type`, sandboxed (`Content-Security-Policy: sandbox`, `nosniff`) |
//! | `DELETE` | `/v0/images/{id}` | metadata and bytes → 204 (404 when absent) |
//! | `GET` | `/v0/healthz`, `/v0/readyz` | liveness; readiness checks the database |
//! | `GET` | `/v0/openapi.json` | this API |
//!
//! **No orphans.** An upload is recorded `pending` before its bytes are stored and becomes
//! `ready` after; a delete marks the row `deleting`, deletes the bytes, then the row. A failure
//! between the steps leaves a row the recovery sweep (at start and periodically) finishes:
//! pending uploads are undone, deletes completed. Bytes never outlive their row, and a row is
//! only served once its bytes exist.

#![deny(missing_docs)]

pub mod catalog_db;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gallery_service::ServiceError;
use gallery_service::server_span::trace_requests;
use gallery_service::telemetry::TelemetryConfig;
use gallery_service::{ApiError, Telemetry, UpstreamClient, media};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opentelemetry::trace::{FutureExt, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use serde::Deserialize;

use crate::catalog_db::{CatalogDb, ImageMeta};

/// How the catalog runs.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "image-catalog", version, about = "The gallery's image metadata, in SQLite or PostgreSQL.")]
pub struct CatalogConfig {
    /// Listen address.
    #[arg(long, env = "IMAGE_CATALOG_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// `sqlite://path/to/file.db` (created and migrated on start) or `postgres://user:pass@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://target/gallery-state/catalog.db")]
    pub database_url: String,
    /// The image store (or the outbound sidecar in front of it).
    #[arg(long, env = "IMAGE_STORE_URL", default_value = "http://127.0.0.1:8083")]
    pub store_url: String,
    /// `Host` header for the image store (how an outbound sidecar routes).
    #[arg(long, env = "IMAGE_STORE_HOST")]
    pub store_host: Option<String>,
    /// Largest image accepted, in bytes.
    #[arg(long, env = "IMAGE_CATALOG_MAX_BYTES", default_value_t = 32 << 20)]
    pub max_image_bytes: usize,
    /// Seconds between recovery sweeps (unfinished uploads and deletes).
    #[arg(long, env = "IMAGE_CATALOG_SWEEP_SECS", default_value_t = 30)]
    pub sweep_interval_secs: u64,
}

/// An upload still pending after this long was abandoned.
const ABANDONED_UPLOAD: Duration = Duration::from_secs(300);
/// Largest page of a listing.
const MAX_PAGE: i64 = 200;

struct AppState {
    db: CatalogDb,
    store: UpstreamClient,
    telemetry: Arc<Telemetry>,
}

type Shared = Arc<AppState>;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The canonical (lower-case, hyphenated) form of an image id, as stored.
fn check_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|uuid| uuid.hyphenated().to_string())
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not an image id (a UUID)")))
}

fn db_error(context: &str, error: sqlx::Error) -> ApiError {
    ApiError::internal(context, error)
}

/// The media type of an upload: `Content-Type` is required, and it and the bytes must agree on
/// a type of the gallery's allow-list (the API's rule, applied again here for clients that skip
/// the API).
fn image_content_type(headers: &HeaderMap, body: &[u8]) -> Result<&'static str, ApiError> {
    let declared = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type is required (one of {})", media::ALLOWED.join(", ")),
        )
    })?;
    Ok(media::check(Some(declared), body)?)
}

async fn create(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("empty body: no image"));
    }
    let content_type = image_content_type(&headers, &body)?;
    let created_at_ms = now_ms();
    let image = ImageMeta {
        id: uuid::Uuid::now_v7().to_string(),
        content_type: content_type.to_owned(),
        size_bytes: i64::try_from(body.len()).unwrap_or(i64::MAX),
        created_at_ms,
        created_at: catalog_db::rfc3339(created_at_ms),
    };
    state.db.insert_pending(&image).await.map_err(|e| db_error("recording the image", e))?;
    let path = format!("/v0/objects/{}", image.id);
    let mut put_headers = HeaderMap::new();
    // The store checks the type again: it never holds what the allow-list refuses.
    put_headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Err(e) = state.store.call(Method::PUT, &path, "/v0/objects/{id}", put_headers, body).await {
        // A definite refusal (4xx) stored nothing: forget the record. Anything else (timeout,
        // 5xx, no connection) may still write the bytes later, so the record stays pending and
        // the recovery sweep removes bytes and record once the upload is long abandoned.
        if e.status.is_client_error() {
            if let Err(undo) = state.db.remove(&image.id).await {
                tracing::warn!(id = %image.id, "refused upload left for the recovery sweep: {undo}");
            }
        } else {
            tracing::warn!(id = %image.id, "upload failed; its pending record is left for the recovery sweep");
        }
        return Err(e);
    }
    if !state.db.mark_ready(&image.id).await.map_err(|e| db_error("publishing the image", e))? {
        return Err(ApiError::internal("publishing the image", "it was no longer pending"));
    }
    Ok((StatusCode::CREATED, [(http::header::LOCATION, format!("/v0/images/{}", image.id))], Json(image))
        .into_response())
}

/// `?limit=&after=`.
#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
    after: Option<String>,
}

async fn list(State(state): State<Shared>, Query(page): Query<Page>) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = page.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("`limit` must be between 1 and {MAX_PAGE}")));
    }
    let after = page.after.as_deref().map(check_id).transpose()?;
    let images = state.db.list(limit, after.as_deref()).await.map_err(|e| db_error("listing images", e))?;
    let next = (images.len() as i64 == limit).then(|| images.last().map(|i| i.id.clone())).flatten();
    Ok(Json(serde_json::json!({ "images": images, "next_after": next })))
}

async fn find(state: &AppState, id: &str) -> Result<ImageMeta, ApiError> {
    let id = check_id(id)?;
    state
        .db
        .get(&id)
        .await
        .map_err(|e| db_error("reading the image record", e))?
        .ok_or_else(|| ApiError::not_found(format!("no image {id}")))
}

async fn metadata(State(state): State<Shared>, Path(id): Path<String>) -> Result<Json<ImageMeta>, ApiError> {
    Ok(Json(find(&state, &id).await?))
}

async fn content(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let image = find(&state, &id).await?;
    let id = image.id.clone();
    let response = state
        .store
        .send(Method::GET, &format!("/v0/objects/{id}"), "/v0/objects/{id}", HeaderMap::new(), Bytes::new())
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        let body =
            http_body_util::BodyExt::collect(response.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
        // A ready record whose bytes are missing is a broken invariant, not a client error.
        return Err(ApiError::bad_gateway(ApiError::from_upstream(state.store.name(), status, &body).message));
    }
    let mut out = Response::new(Body::new(response.into_body()));
    if let Ok(value) = HeaderValue::from_str(&image.content_type) {
        out.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    out.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(image.size_bytes.max(0) as u64));
    out.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600, immutable"));
    media::protect_download(out.headers_mut());
    Ok(out)
}

async fn delete_bytes(state: &AppState, id: &str) -> Result<(), ApiError> {
    match state
        .store
        .call(Method::DELETE, &format!("/v0/objects/{id}"), "/v0/objects/{id}", HeaderMap::new(), Bytes::new())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok(()),
        Err(e) => Err(e),
    }
}

async fn delete(State(state): State<Shared>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = check_id(&id)?;
    if !state.db.begin_delete(&id).await.map_err(|e| db_error("deleting the image record", e))? {
        return Err(ApiError::not_found(format!("no image {id}")));
    }
    delete_bytes(&state, &id).await.map_err(|e| {
        ApiError::bad_gateway(format!("{}; the image is hidden and its deletion will be retried", e.message))
    })?;
    state.db.remove(&id).await.map_err(|e| db_error("removing the image record", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Finishes what a crash or a failed call left: abandoned uploads are undone, deletes completed.
/// A sweep with work is one trace (`recovery sweep`, the store calls and row removals under it);
/// an idle one leaves none.
async fn sweep(state: &AppState) {
    let unfinished = match state.db.unfinished(now_ms() - ABANDONED_UPLOAD.as_millis() as i64).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!("recovery sweep: {e}");
            return;
        }
    };
    if unfinished.is_empty() {
        return;
    }
    let tracer = state.telemetry.tracer();
    let span = tracer
        .span_builder("recovery sweep")
        .with_kind(SpanKind::Internal)
        .with_attributes([KeyValue::new("gallery.sweep.unfinished", unfinished.len() as i64)])
        .start(tracer);
    let cx = Context::current().with_span(span);
    finish_unfinished(state, unfinished).with_context(cx.clone()).await;
    cx.span().end();
}

async fn finish_unfinished(state: &AppState, unfinished: Vec<catalog_db::Unfinished>) {
    for row in unfinished {
        match delete_bytes(state, &row.id).await {
            Ok(()) => match state.db.remove(&row.id).await {
                Ok(()) => {
                    tracing::info!(id = %row.id, state = %row.state, "recovery sweep finished an interrupted operation")
                }
                Err(e) => tracing::warn!(id = %row.id, "recovery sweep: {e}"),
            },
            Err(e) => tracing::warn!(id = %row.id, "recovery sweep: the image store refused: {}", e.message),
        }
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "service": "image-catalog", "version": env!("CARGO_PKG_VERSION") }))
}

async fn readyz(State(state): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    state.db.ping().await.map_err(|e| {
        // The database's own message names hosts and files: logged, not sent.
        tracing::warn!("readiness: the database does not answer: {e}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the database does not answer")
    })?;
    Ok(Json(serde_json::json!({ "ready": true, "database": state.db.system() })))
}

async fn openapi() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// Connects, migrates, sweeps once, and returns the catalog's routes (the periodic sweep runs on
/// the current runtime).
pub async fn build(config: &CatalogConfig, telemetry: Arc<Telemetry>) -> Result<Router, ServiceError> {
    let db = CatalogDb::open(&config.database_url, telemetry.clone())
        .await
        .map_err(|e| ServiceError::build("opening the catalog database", e))?;
    let store = UpstreamClient::new(
        "image-store",
        &config.store_url,
        config.store_host.as_deref(),
        Duration::from_secs(30),
        telemetry.clone(),
    )?;
    let state = Arc::new(AppState { db, store, telemetry: telemetry.clone() });
    sweep(&state).await;
    let sweeper = state.clone();
    let interval = Duration::from_secs(config.sweep_interval_secs.max(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            sweep(&sweeper).await;
        }
    });
    Ok(Router::new()
        .route("/v0/images", get(list).post(create))
        .route("/v0/images/{id}", get(metadata).delete(delete))
        .route("/v0/images/{id}/content", get(content))
        .route("/v0/healthz", get(healthz))
        .route("/v0/readyz", get(readyz))
        .route("/v0/openapi.json", get(openapi))
        .route_layer(axum::middleware::from_fn_with_state(telemetry, trace_requests))
        .layer(DefaultBodyLimit::max(config.max_image_bytes))
        .with_state(state))
}

/// Starts the catalog on its own thread (tests; the binary serves until a signal).
pub fn start(
    config: CatalogConfig,
    telemetry: TelemetryConfig,
) -> Result<gallery_service::RunningService, ServiceError> {
    let listen = config.listen;
    gallery_service::RunningService::start("image-catalog", listen, &telemetry, move |telemetry| async move {
        build(&config, telemetry).await
    })
}
