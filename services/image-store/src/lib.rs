//! `image-store`: image bytes by id. The catalog is its only client.
//!
//! | method | path | |
//! |---|---|---|
//! | `PUT` | `/v0/objects/{id}` | store the body (201) if it is an image of the gallery's allow-list (415 otherwise) |
//! | `GET` | `/v0/objects/{id}` | the bytes, as a sandboxed attachment (404 when absent) |
//! | `DELETE` | `/v0/objects/{id}` | 204, or 404 when absent |
//! | `GET` | `/v0/objects` | every stored id (audits) |
//! | `GET` | `/v0/healthz`, `/v0/readyz` | liveness; readiness checks the object store |
//! | `GET` | `/v0/openapi.json` | this API |
//!
//! Ids are UUIDs (anything else is refused before it can become a path).

#![deny(missing_docs)]

mod objects;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gallery_service::ServiceError;
use gallery_service::server_span::trace_requests;
use gallery_service::telemetry::TelemetryConfig;
use gallery_service::{ApiError, Telemetry, media};
use http::{HeaderMap, StatusCode};

pub use objects::Objects;

/// How the store runs.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "image-store", version, about = "The gallery's image bytes, by id, in an object store.")]
pub struct StoreConfig {
    /// Listen address.
    #[arg(long, env = "IMAGE_STORE_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,
    /// Where images go: a directory, or an object-store URL (s3://bucket/prefix, gs://bucket/prefix,
    /// memory://). Credentials come from the usual AWS_* / GOOGLE_* environment variables.
    #[arg(long, env = "IMAGE_STORE_LOCATION", default_value = "target/gallery-state/images")]
    pub location: String,
    /// Largest object accepted, in bytes.
    #[arg(long, env = "IMAGE_STORE_MAX_BYTES", default_value_t = 32 << 20)]
    pub max_bytes: usize,
}

struct AppState {
    objects: Objects,
}

type Shared = Arc<AppState>;

/// The canonical (lower-case, hyphenated) form of an id: the object's name.
fn check_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|uuid| uuid.hyphenated().to_string())
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not an image id (a UUID)")))
}

fn storage_error(context: &str, error: object_store::Error) -> ApiError {
    match error {
        object_store::Error::NotFound { .. } => ApiError::not_found(format!("{context}: no such image")),
        other => ApiError::internal(context, other),
    }
}

async fn put_object(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = check_id(&id)?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty body: nothing to store"));
    }
    // The gallery's allow-list once more, on the bytes (and the declared type, if any): the store
    // never holds what the API would refuse, whoever calls it.
    let declared = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    media::check(declared, &body)?;
    let size = body.len();
    state.objects.put(&id, body).await.map_err(|e| storage_error("storing the image", e))?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id, "size_bytes": size }))).into_response())
}

async fn get_object(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = check_id(&id)?;
    let (size, bytes) = state.objects.read(&id).await.map_err(|e| storage_error("reading the image", e))?;
    let mut response = (
        [
            (http::header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (http::header::CONTENT_LENGTH, size.to_string()),
        ],
        axum::body::Body::from_stream(bytes),
    )
        .into_response();
    media::protect_download(response.headers_mut());
    Ok(response)
}

async fn delete_object(State(state): State<Shared>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = check_id(&id)?;
    match state.objects.delete(&id).await.map_err(|e| storage_error("deleting the image", e))? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found(format!("no image {id}"))),
    }
}

async fn list_objects(State(state): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let ids = state.objects.list().await.map_err(|e| storage_error("listing images", e))?;
    Ok(Json(serde_json::json!({ "ids": ids })))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "service": "image-store", "version": env!("CARGO_PKG_VERSION") }))
}

async fn readyz(State(state): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    state.objects.ready().await.map_err(|e| {
        // The store's own message names buckets and paths: logged, not sent.
        tracing::warn!("readiness: the object store does not answer: {e}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the object store does not answer")
    })?;
    Ok(Json(serde_json::json!({ "ready": true })))
}

async fn openapi() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// The store's routes over `objects`.
pub fn router(objects: Objects, telemetry: Arc<Telemetry>, max_bytes: usize) -> Router {
    let state = Arc::new(AppState { objects });
    Router::new()
        .route("/v0/objects", get(list_objects))
        .route("/v0/objects/{id}", get(get_object).put(put_object).delete(delete_object))
        .route("/v0/healthz", get(healthz))
        .route("/v0/readyz", get(readyz))
        .route("/v0/openapi.json", get(openapi))
        .route_layer(axum::middleware::from_fn_with_state(telemetry, trace_requests))
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(state)
}

/// Starts the store on its own thread (tests; the binary serves until a signal).
pub fn start(config: StoreConfig, telemetry: TelemetryConfig) -> Result<gallery_service::RunningService, ServiceError> {
    let listen = config.listen;
    gallery_service::RunningService::start("image-store", listen, &telemetry, move |telemetry| async move {
        let objects = Objects::open(&config.location, telemetry.clone())
            .map_err(|e| ServiceError::build("opening the image store", e))?;
        Ok(router(objects, telemetry, config.max_bytes))
    })
}
