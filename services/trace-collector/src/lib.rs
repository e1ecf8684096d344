//! `trace-collector`: the trace backend for one machine. OTLP/HTTP (`/v1/traces`, protobuf or
//! JSON, gzip) and Zipkin v2 JSON (`/api/v2/spans`) in; spans in SQLite with a retention limit;
//! Jaeger's HTTP query API out (`/api/...`), so Jaeger's own tools can read it, and a viewer page
//! on top of that API (search, waterfall with the critical path, span details, dependency graph). Beyond one
//! machine, send the same OTLP to Jaeger or Tempo instead.

#![deny(missing_docs)]

pub mod ingest;
pub mod jaeger_api;
pub mod span_store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;

use crate::ingest::{Decoded, IngestError, MAX_BODY};
use crate::span_store::SpanStore;

/// How the collector runs.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "trace-collector", version, about = "OTLP/Zipkin in, SQLite, Jaeger's query API out.")]
pub struct CollectorConfig {
    /// OTLP/HTTP and Zipkin listen address.
    #[arg(long, env = "TRACE_COLLECTOR_OTLP_LISTEN", default_value = "127.0.0.1:4318")]
    pub otlp_listen: SocketAddr,
    /// Query API (and viewer) listen address.
    #[arg(long, env = "TRACE_COLLECTOR_QUERY_LISTEN", default_value = "127.0.0.1:16686")]
    pub query_listen: SocketAddr,
    /// The span database (`:memory:` for none on disk).
    #[arg(long, env = "TRACE_COLLECTOR_DB", default_value = "gallery-state/traces.db")]
    pub database: String,
    /// Spans older than this many hours are dropped.
    #[arg(long, env = "TRACE_COLLECTOR_RETENTION_HOURS", default_value_t = 24)]
    pub retention_hours: u64,
    /// At most this many spans are kept (the oldest go first).
    #[arg(long, env = "TRACE_COLLECTOR_MAX_SPANS", default_value_t = 1_000_000)]
    pub max_spans: i64,
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn encoding(headers: &HeaderMap) -> Option<&str> {
    headers.get(http::header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())
}

fn refused(status: StatusCode, message: String) -> Response {
    (status, [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
}

fn ingest_error(error: IngestError) -> Response {
    match error {
        IngestError::Malformed(why) => refused(StatusCode::BAD_REQUEST, why),
        IngestError::TooLarge => {
            refused(StatusCode::PAYLOAD_TOO_LARGE, format!("bodies are limited to {MAX_BODY} bytes"))
        }
    }
}

async fn store(store: &SpanStore, decoded: &Decoded) -> Result<(), Response> {
    store.insert(&decoded.spans).await.map_err(|e| {
        tracing::error!("storing spans: {e}");
        // OTLP: 503 is retryable; the exporter tries again later.
        refused(StatusCode::SERVICE_UNAVAILABLE, format!("spans not stored: {e}"))
    })
}

/// `POST /v1/traces`.
async fn otlp_traces(State(spans): State<Arc<SpanStore>>, headers: HeaderMap, body: Bytes) -> Response {
    let json = match content_type(&headers).as_str() {
        "application/x-protobuf" | "application/protobuf" => false,
        "application/json" => true,
        other => {
            return refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("`{other}`: send application/x-protobuf or application/json"),
            );
        }
    };
    let decoded = match ingest::decompress(encoding(&headers), &body).and_then(|b| ingest::otlp(&b, json)) {
        Ok(decoded) => decoded,
        Err(e) => return ingest_error(e),
    };
    if let Err(response) = store(&spans, &decoded).await {
        return response;
    }
    let partial = (decoded.rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: i64::try_from(decoded.rejected).unwrap_or(i64::MAX),
        error_message: decoded.reason.clone().unwrap_or_default(),
    });
    if json {
        let body = match &partial {
            Some(p) => {
                serde_json::json!({ "partialSuccess": { "rejectedSpans": p.rejected_spans, "errorMessage": p.error_message } })
            }
            None => serde_json::json!({}),
        };
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        let body = ExportTraceServiceResponse { partial_success: partial }.encode_to_vec();
        (StatusCode::OK, [(http::header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
    }
}

/// `POST /api/v2/spans`.
async fn zipkin_spans(State(spans): State<Arc<SpanStore>>, headers: HeaderMap, body: Bytes) -> Response {
    let decoded = match ingest::decompress(encoding(&headers), &body).and_then(|b| ingest::zipkin(&b)) {
        Ok(decoded) => decoded,
        Err(e) => return ingest_error(e),
    };
    if let Err(response) = store(&spans, &decoded).await {
        return response;
    }
    StatusCode::ACCEPTED.into_response()
}

/// The ingest routes (OTLP and Zipkin).
pub fn ingest_router(spans: Arc<SpanStore>) -> Router {
    Router::new()
        .route("/v1/traces", post(otlp_traces))
        .route("/api/v2/spans", post(zipkin_spans))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(spans)
}

async fn viewer_page() -> impl IntoResponse {
    axum::response::Html(include_str!("viewer/index.html"))
}

async fn viewer_script() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("viewer/viewer.js"))
}

async fn viewer_style() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("viewer/viewer.css"))
}

/// The query routes: the viewer page (`/`, `/trace/{id}` — Jaeger's deep-link form) and Jaeger's
/// HTTP API.
pub fn query_router(spans: Arc<SpanStore>) -> Router {
    Router::new()
        .route("/", get(viewer_page))
        .route("/trace/{trace_id}", get(viewer_page))
        .route("/dependencies", get(viewer_page))
        .route("/assets/viewer.js", get(viewer_script))
        .route("/assets/viewer.css", get(viewer_style))
        .route("/api/services", get(jaeger_api::services))
        .route("/api/services/{service}/operations", get(jaeger_api::service_operations))
        .route("/api/operations", get(jaeger_api::operations))
        .route("/api/traces", get(jaeger_api::find_traces))
        .route("/api/traces/{trace_id}", get(jaeger_api::get_trace))
        .route("/api/dependencies", get(jaeger_api::dependencies))
        .with_state(spans)
}

/// Drops spans beyond the retention limits, every ten seconds.
pub async fn enforce_retention(spans: Arc<SpanStore>, retention: Duration, max_spans: i64) {
    loop {
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        match spans.prune(now_us - retention.as_micros() as i64, max_spans).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(dropped = n, "retention: dropped old spans"),
            Err(e) => tracing::warn!("retention: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// A collector running on its own threads (tests, `wasmtrace demo`); stops when dropped.
pub struct RunningCollector {
    /// OTLP/Zipkin address.
    pub otlp: gallery_service::RunningService,
    /// Query API address.
    pub query: gallery_service::RunningService,
}

/// Starts the collector: ingest and query on their own listeners, one span database.
pub fn start(config: CollectorConfig) -> Result<RunningCollector, String> {
    let disabled = gallery_service::telemetry::TelemetryConfig {
        service_name: "trace-collector".into(),
        enabled: false,
        traces_endpoint: None,
        batch_delay: None,
        http_spans: false,
    };
    let (spans_tx, spans_rx) = std::sync::mpsc::channel::<Arc<SpanStore>>();
    let database = config.database.clone();
    let retention = Duration::from_secs(config.retention_hours * 3600);
    let max_spans = config.max_spans;
    let otlp = gallery_service::RunningService::start(
        "trace-collector-otlp",
        config.otlp_listen,
        &disabled,
        move |_| async move {
            let spans = Arc::new(SpanStore::open(&database).await?);
            tokio::spawn(enforce_retention(spans.clone(), retention, max_spans));
            let _ = spans_tx.send(spans.clone());
            Ok(ingest_router(spans))
        },
    )?;
    let spans = spans_rx.recv().map_err(|_| "the span database did not open".to_owned())?;
    let query = gallery_service::RunningService::start(
        "trace-collector-query",
        config.query_listen,
        &disabled,
        move |_| async move { Ok(query_router(spans)) },
    )?;
    Ok(RunningCollector { otlp, query })
}
