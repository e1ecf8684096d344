//! `trace-collector`: the trace backend for one machine. OTLP/HTTP (`/v1/traces`, protobuf or
//! JSON, gzip) and Zipkin v2 JSON (`/api/v2/spans`) in; spans in SQLite with a retention limit;
//! Jaeger's HTTP query API out (`/api/...`), so Jaeger's own tools can read it, and a viewer page
//! on top of that API (search, waterfall with the critical path, span details, dependency graph). Beyond one
//! machine, send the same OTLP to Jaeger or Tempo instead.
//!
//! Senders and query callers are untrusted; [`limits`] bounds what each request may cost (body
//! size, spans and decoded memory per request, requests in flight, answer sizes).

#![deny(missing_docs)]

pub mod ingest;
pub mod jaeger_api;
pub mod jaeger_v3;
pub mod limits;
pub mod span_store;

use gallery_service::ServiceError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ingest::{Decoded, IngestError};
use crate::jaeger_api::QueryApi;
use crate::limits::{Limits, RETRY_AFTER_SECS};
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
    #[arg(long, env = "TRACE_COLLECTOR_DB", default_value = "target/gallery-state/traces.db")]
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

fn encoding(headers: &HeaderMap) -> Option<String> {
    headers.get(http::header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Why an ingest request was not taken, as its sender sees it: a status and a plain-text reason.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The body's type is not one we decode (415).
    #[error("`{0}`: send application/x-protobuf or application/json")]
    ContentType(String),
    /// Every ingest slot is taken (503 with `Retry-After`).
    #[error(
        "the collector is already taking {in_flight} ingest requests, the most it takes at once; retry after {RETRY_AFTER_SECS} s"
    )]
    Busy {
        /// The in-flight cap.
        in_flight: usize,
    },
    /// The body did not arrive in time (408).
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout {
        /// The limit, seconds.
        secs: u64,
    },
    /// Reading the body failed (400).
    #[error("reading the request body: {0}")]
    BodyRead(String),
    /// The request itself is refused (400 or 413).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The decoding task failed (500).
    #[error("decoding failed")]
    DecodeTask,
    /// The database did not take the spans (503: OTLP exporters retry it).
    #[error("spans not stored: {0}")]
    NotStored(sqlx::Error),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Busy { .. } | Refusal::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyRead(_) | Refusal::Ingest(IngestError::Malformed(_)) => StatusCode::BAD_REQUEST,
            Refusal::Ingest(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::DecodeTask => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response =
            (status, [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], self.to_string()).into_response();
        if matches!(self, Refusal::Busy { .. }) {
            // OTLP/HTTP: throttling is 503 with the delay the client should wait.
            response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// How much of a body over the limit is still read (and thrown away): closing a connection with
/// unread data resets it, and the sender would see the reset instead of the 413 that says why.
const MAX_DRAIN_BYTES: usize = 64 << 20;

/// Reads `body` whole if it is at most `max` bytes; beyond, reads on without keeping anything
/// (up to [`MAX_DRAIN_BYTES`] more) and refuses it.
async fn read_capped(mut body: axum::body::Body, max: usize, capacity: usize) -> Result<bytes::Bytes, Refusal> {
    let mut kept = Vec::with_capacity(capacity);
    let (mut read, mut over) = (0usize, false);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::BodyRead(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        read = read.saturating_add(data.len());
        if read > max {
            if !over {
                over = true;
                kept = Vec::new();
            }
            if read > max.saturating_add(MAX_DRAIN_BYTES) {
                break;
            }
            continue;
        }
        kept.extend_from_slice(&data);
    }
    if over {
        return Err(IngestError::TooLarge { max }.into());
    }
    Ok(kept.into())
}

/// What the ingest handlers share.
struct IngestState {
    spans: Arc<SpanStore>,
    limits: Limits,
    /// One permit per ingest request being read, decoded or stored.
    in_flight: Arc<Semaphore>,
}

type Ingest = State<Arc<IngestState>>;

impl IngestState {
    /// A slot for one more ingest, or [`Refusal::Busy`]. Taken before the body is read, so
    /// refused requests never hold their bodies in memory.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy { in_flight: self.limits.max_concurrent_ingests })
    }

    /// The body, read with the size cap and the time limit.
    async fn body(&self, request: Request) -> Result<bytes::Bytes, Refusal> {
        read_body(request, &self.limits).await
    }
}

/// A request's body, read with the size cap and the time limit of `limits`.
async fn read_body(request: Request, limits: &Limits) -> Result<bytes::Bytes, Refusal> {
    let max = limits.max_request_bytes;
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max.saturating_add(MAX_DRAIN_BYTES) as u64) {
        // Too large to even read away: refuse now (the sender may see a reset connection).
        return Err(IngestError::TooLarge { max }.into());
    }
    let secs = limits.ingest_body_timeout_secs;
    let capacity = declared.map_or(0, |length| usize::try_from(length).unwrap_or(max).min(max));
    match tokio::time::timeout(Duration::from_secs(secs), read_capped(request.into_body(), max, capacity)).await {
        Ok(result) => result,
        Err(_) => Err(Refusal::BodyTimeout { secs }),
    }
}

impl IngestState {
    /// Decompresses and decodes off the async workers (decoding a large request is CPU work).
    async fn decode<F>(&self, encoding: Option<String>, body: bytes::Bytes, decode: F) -> Result<Decoded, Refusal>
    where
        F: FnOnce(&[u8], &Limits) -> Result<Decoded, IngestError> + Send + 'static,
    {
        let limits = self.limits;
        let work = move || {
            let body = ingest::decompress_within(encoding.as_deref(), &body, limits.max_request_bytes)?;
            decode(&body, &limits)
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(decoded) => Ok(decoded?),
            Err(e) => {
                tracing::error!("decoding an ingest request: {e}");
                Err(Refusal::DecodeTask)
            }
        }
    }

    async fn store(&self, decoded: &Decoded) -> Result<(), Refusal> {
        self.spans.insert(&decoded.spans).await.map_err(|e| {
            tracing::error!("storing spans: {e}");
            Refusal::NotStored(e)
        })
    }

    /// Admission, body, decoding and storage: what both ingest routes do.
    async fn take<F>(&self, request: Request, decode: F) -> Result<Decoded, Refusal>
    where
        F: FnOnce(&[u8], &Limits) -> Result<Decoded, IngestError> + Send + 'static,
    {
        let _permit = self.admit()?;
        let encoding = encoding(request.headers());
        let body = self.body(request).await?;
        let decoded = self.decode(encoding, body, decode).await?;
        self.store(&decoded).await?;
        Ok(decoded)
    }
}

/// `POST /v1/traces`.
async fn otlp_traces(State(ingest): Ingest, request: Request) -> Result<Response, Refusal> {
    let json = match content_type(request.headers()).as_str() {
        "application/x-protobuf" | "application/protobuf" => false,
        "application/json" => true,
        other => return Err(Refusal::ContentType(other.to_owned())),
    };
    let decoded = ingest.take(request, move |b, limits| ingest::otlp_within(b, json, limits)).await?;
    let partial = (decoded.rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: i64::try_from(decoded.rejected).unwrap_or(i64::MAX),
        error_message: decoded.reason.clone().unwrap_or_default(),
    });
    Ok(if json {
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
    })
}

/// `POST /api/v2/spans`.
async fn zipkin_spans(State(ingest): Ingest, request: Request) -> Result<StatusCode, Refusal> {
    ingest.take(request, ingest::zipkin_within).await?;
    Ok(StatusCode::ACCEPTED)
}

/// The ingest routes (OTLP and Zipkin), within `limits`.
pub fn ingest_router(spans: Arc<SpanStore>, limits: Limits) -> Router {
    let permits = limits.max_concurrent_ingests.clamp(1, Semaphore::MAX_PERMITS);
    let state = IngestState { spans, limits, in_flight: Arc::new(Semaphore::new(permits)) };
    Router::new()
        .route("/v1/traces", post(otlp_traces))
        .route("/api/v2/spans", post(zipkin_spans))
        // The handlers read their bodies themselves (after admission, with a time limit).
        .layer(DefaultBodyLimit::max(limits.max_request_bytes))
        .with_state(Arc::new(state))
}

/// `POST /api/transform`: Jaeger UI's upload, an OTLP/JSON document shown as v1 traces and not
/// stored. Bounded as an ingest is: a slot taken before the body is read (as many as ingests may
/// run), the size cap and time limit on the body, decoding within the ingest limits off the async
/// workers, and the answer priced before it is built. Only `application/json` is taken, which a
/// web page of another origin cannot send without the browser asking first (and being refused).
async fn transform(State(api): State<Arc<QueryApi>>, request: Request) -> Response {
    let Ok(_permit) = api.transforms.try_acquire() else {
        return jaeger_api::error_answer(StatusCode::SERVICE_UNAVAILABLE, "too many uploads at once; try again");
    };
    if content_type(request.headers()) != "application/json" {
        return jaeger_api::error_answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the upload as application/json");
    }
    let body = match read_body(request, &api.limits).await {
        Ok(body) => body,
        Err(refusal) => return jaeger_api::error_answer(refusal.status(), &refusal.to_string()),
    };
    let limits = api.limits;
    let work = move || match ingest::otlp_within(&body, true, &limits) {
        Ok(decoded) => jaeger_api::transformed(&decoded.spans, &limits).map_err(|e| (StatusCode::BAD_REQUEST, e)),
        Err(IngestError::Malformed(detail)) => {
            // The parser's message may quote the upload: logged, not sent.
            tracing::debug!("an upload to transform is not OTLP/JSON: {detail}");
            Err((
                StatusCode::BAD_REQUEST,
                "the upload is not an OTLP/JSON document ({\"resourceSpans\": [...]})".to_owned(),
            ))
        }
        Err(e) => Err((StatusCode::PAYLOAD_TOO_LARGE, e.to_string())),
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(answer)) => axum::Json(answer).into_response(),
        Ok(Err((status, message))) => jaeger_api::error_answer(status, &message),
        Err(e) => {
            tracing::error!("transforming an upload: {e}");
            jaeger_api::error_answer(StatusCode::INTERNAL_SERVER_ERROR, "the upload could not be transformed")
        }
    }
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
/// HTTP API, answering within `limits`.
pub fn query_router(spans: Arc<SpanStore>, limits: Limits) -> Router {
    query_router_for(Arc::new(QueryApi::new(spans, limits)))
}

/// [`query_router`] over a query side the caller keeps (to look at its admission, say).
pub fn query_router_for(api: Arc<QueryApi>) -> Router {
    // Every answer built from the store waits for a slot; the page, its assets and uploads (which
    // have their own slots) do not.
    let answers = Router::new()
        .route("/api/services", get(jaeger_api::services))
        .route("/api/services/{service}/operations", get(jaeger_api::service_operations))
        .route("/api/operations", get(jaeger_api::operations))
        .route("/api/traces", get(jaeger_api::find_traces))
        .route("/api/traces/{trace_id}", get(jaeger_api::get_trace))
        .route("/api/dependencies", get(jaeger_api::dependencies))
        .route("/api/v3/services", get(jaeger_v3::services))
        .route("/api/v3/operations", get(jaeger_v3::operations))
        .route("/api/v3/traces", get(jaeger_v3::find_traces))
        .route("/api/v3/traces/{trace_id}", get(jaeger_v3::get_trace))
        .route("/api/v3/trace-summaries", get(jaeger_v3::trace_summaries))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), admit_query));
    Router::new()
        .route("/", get(viewer_page))
        .route("/trace/{trace_id}", get(viewer_page))
        .route("/dependencies", get(viewer_page))
        .route("/compare/{a}/{b}", get(viewer_page))
        .route("/assets/viewer.js", get(viewer_script))
        .route("/assets/viewer.css", get(viewer_style))
        .route("/api/transform", post(transform))
        .merge(answers)
        .with_state(api)
}

/// Lets a query through while fewer than [`Limits::max_concurrent_queries`] answers are being
/// built (the slot is held until the answer's JSON is written); else 503 with `Retry-After`.
async fn admit_query(State(api): State<Arc<QueryApi>>, request: Request, next: axum::middleware::Next) -> Response {
    let Ok(_slot) = api.queries.try_acquire() else {
        let message = format!(
            "the collector is answering {} queries, the most it answers at once; retry after {RETRY_AFTER_SECS} s",
            api.limits.max_concurrent_queries
        );
        // In the error shape of the API asked.
        let answer = if request.uri().path().starts_with("/api/v3/") {
            jaeger_v3::error_answer
        } else {
            jaeger_api::error_answer
        };
        let mut answer = answer(StatusCode::SERVICE_UNAVAILABLE, &message);
        answer.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return answer;
    };
    next.run(request).await
}

/// Drops spans beyond the retention limits, every ten seconds.
pub async fn enforce_retention(spans: Arc<SpanStore>, retention: Duration, max_spans: i64) {
    loop {
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        let retention_us = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        match spans.prune(now_us.saturating_sub(retention_us), max_spans).await {
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

/// Starts the collector with the default [`Limits`]: ingest and query on their own listeners, one
/// span database.
pub fn start(config: CollectorConfig) -> Result<RunningCollector, ServiceError> {
    start_with_limits(config, Limits::default())
}

/// Starts the collector within `limits`.
pub fn start_with_limits(config: CollectorConfig, limits: Limits) -> Result<RunningCollector, ServiceError> {
    let disabled = gallery_service::telemetry::TelemetryConfig {
        service_name: "trace-collector".into(),
        enabled: false,
        traces_endpoint: None,
        batch_delay: None,
        http_spans: false,
        in_process: None,
    };
    let (spans_tx, spans_rx) = std::sync::mpsc::channel::<Arc<SpanStore>>();
    let database = config.database.clone();
    let retention = Duration::from_secs(config.retention_hours.saturating_mul(3600));
    let max_spans = config.max_spans;
    let otlp = gallery_service::RunningService::start(
        "trace-collector-otlp",
        config.otlp_listen,
        &disabled,
        move |_| async move {
            let spans = Arc::new(
                SpanStore::open(&database).await.map_err(|e| ServiceError::build("opening the span database", e))?,
            );
            tokio::spawn(enforce_retention(spans.clone(), retention, max_spans));
            let _ = spans_tx.send(spans.clone());
            Ok(ingest_router(spans, limits))
        },
    )?;
    let spans = spans_rx.recv().map_err(|_| ServiceError::Exited)?;
    let query = gallery_service::RunningService::start(
        "trace-collector-query",
        config.query_listen,
        &disabled,
        move |_| async move { Ok(query_router(spans, limits)) },
    )?;
    Ok(RunningCollector { otlp, query })
}
