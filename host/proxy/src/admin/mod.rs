//! The admin API: `/ready`, `/stats/prometheus`, `/config_dump`, `/plugins`, and hot swap
//! (`POST /plugins/{name}/swap`, `POST /plugins/{name}/rollback`). It binds to loopback unless
//! told otherwise: whoever reaches it can replace the filters, so every request passes the
//! [`guard`] first (Host, Origin, content type, bearer token).

pub mod guard;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::watch;
use wasmtrace_config::{Bootstrap, ConnectionLimits};
use wasmtrace_runtime::Runtime;

use crate::connection::{Activity, ActivityIo};
use crate::stats::ProxyStats;
use crate::swap::{ModuleSource, SwapCoordinator, SwapError, SwapOutcome, SwapRequest};

/// Largest swap request body (a module sent inline, base64-encoded).
const MAX_SWAP_REQUEST: usize = 64 << 20;

/// What the admin API reads and drives.
pub struct AdminState {
    /// The effective configuration.
    pub bootstrap: Arc<Bootstrap>,
    /// Proxy counters.
    pub stats: Arc<ProxyStats>,
    /// The runtime (host services: failures, filter metrics).
    pub runtime: Arc<Runtime>,
    /// Hot swaps (and every plugin's generations).
    pub coordinator: Arc<SwapCoordinator>,
    /// Workers are serving.
    pub ready: AtomicBool,
    /// Shutdown has begun.
    pub draining: AtomicBool,
    /// The bearer token mutations must carry, when there is one.
    pub token: Option<guard::AdminToken>,
}

/// The body of `POST /plugins/{name}/swap`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    /// Only the plugin of this name on this listener.
    #[serde(default)]
    listener: Option<String>,
    /// A module file on the proxy's machine.
    #[serde(default)]
    module_path: Option<PathBuf>,
    /// Module bytes, base64 (standard alphabet).
    #[serde(default)]
    module_base64: Option<String>,
    /// Plugin configuration: a string is used as is, anything else as compact JSON.
    #[serde(default)]
    configuration: Option<serde_json::Value>,
    /// VM configuration, the same way.
    #[serde(default)]
    vm_configuration: Option<serde_json::Value>,
}

/// The body of `POST /plugins/{name}/rollback` (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    listener: Option<String>,
}

fn configuration_bytes(value: serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(text) => text.into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// Why a swap request's body is refused.
#[derive(Debug, thiserror::Error)]
enum SwapBodyError {
    /// It was empty.
    #[error("empty body")]
    Empty,
    /// It named neither a module nor a configuration.
    #[error("nothing to swap: give a module (`module_path`/`module_base64`) and/or `configuration`")]
    Nothing,
    /// It named a module twice.
    #[error("give `module_path` or `module_base64`, not both")]
    TwoModules,
    /// `module_base64` was not base64.
    #[error("`module_base64` is not base64")]
    NotBase64(#[source] base64::DecodeError),
}

impl SwapBody {
    fn into_request(self, plugin: &str) -> Result<SwapRequest, SwapBodyError> {
        let module = match (self.module_path, self.module_base64) {
            (Some(_), Some(_)) => return Err(SwapBodyError::TwoModules),
            (Some(path), None) => Some(ModuleSource::Path(path)),
            (None, Some(encoded)) => Some(ModuleSource::Bytes(
                base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(SwapBodyError::NotBase64)?,
            )),
            (None, None) => None,
        };
        let request = SwapRequest {
            plugin: plugin.to_owned(),
            listener: self.listener,
            module,
            configuration: self.configuration.map(configuration_bytes),
            vm_configuration: self.vm_configuration.map(configuration_bytes),
        };
        if request.module.is_none() && request.configuration.is_none() && request.vm_configuration.is_none() {
            return Err(SwapBodyError::Nothing);
        }
        Ok(request)
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default();
    text(status, "application/json", body + "\n")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "outcome": "error", "error": message }))
}

fn swap_response(result: Result<SwapOutcome, SwapError>) -> Response<Full<Bytes>> {
    match result {
        Ok(outcome) => {
            let label = if outcome.swapped.is_empty() { "unchanged" } else { "swapped" };
            let mut value = serde_json::to_value(&outcome).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.insert("outcome".into(), label.into());
            }
            json(StatusCode::OK, &value)
        }
        Err(e) => {
            let (status, outcome) = match &e {
                SwapError::UnknownPlugin(_) => (StatusCode::NOT_FOUND, "error"),
                SwapError::NoPrevious(_) => (StatusCode::CONFLICT, "error"),
                SwapError::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
            };
            json(status, &serde_json::json!({ "outcome": outcome, "error": e.to_string() }))
        }
    }
}

/// The request body as JSON; the error carries the status to answer with (413 for a body over
/// [`MAX_SWAP_REQUEST`], 400 otherwise).
async fn read_json<T: for<'de> Deserialize<'de>, B>(body: B, empty_ok: bool) -> Result<Option<T>, (StatusCode, String)>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    let bytes = match Limited::new(body, MAX_SWAP_REQUEST).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over {MAX_SWAP_REQUEST} bytes; send a module_path the proxy can read instead"
                ),
            ));
        }
        Err(e) => return Err((StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) && empty_ok {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("the request body is not valid JSON for this call: {e}")))
}

fn read_only(state: &AdminState, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/ready" => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n".into())
            } else if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "text/plain", "LIVE\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "PRE_INITIALIZING\n".into())
            }
        }
        "/stats/prometheus" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.stats.render_prometheus(&state.runtime, state.coordinator.slots()),
        ),
        "/config_dump" => {
            let dump =
                serde_json::to_string_pretty(&*state.bootstrap).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            text(StatusCode::OK, "application/json", dump + "\n")
        }
        "/plugins" => {
            let services = state.runtime.services();
            let list: Vec<serde_json::Value> = state
                .coordinator
                .slots()
                .iter()
                .map(|slot| slot.describe(services.failure_stats(&slot.name).vm_restarts))
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "plugins": list }))
        }
        "/" => text(
            StatusCode::OK,
            "text/plain",
            "wasmtrace admin: /ready /stats/prometheus /config_dump /plugins \
             POST /plugins/{name}/swap POST /plugins/{name}/rollback\n"
                .into(),
        ),
        other => text(StatusCode::NOT_FOUND, "text/plain", format!("no admin endpoint {other}\n")),
    }
}

/// Answers one admin request (the admin listener's, or one an application routes here when the
/// filters run in-process): the bearer-token and browser checks first, then the endpoint.
pub async fn handle<B>(state: Arc<AdminState>, request: Request<B>) -> Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    if let Err(refusal) = guard::admit(request.method(), request.headers(), state.token.as_ref()) {
        let mut response = error(refusal.status, refusal.message);
        if refusal.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        return response;
    }
    let path = request.uri().path().to_owned();
    let action = path.strip_prefix("/plugins/").and_then(|rest| rest.rsplit_once('/'));
    match (request.method().clone(), action) {
        (Method::POST, Some((name, action @ ("swap" | "rollback")))) => {
            if state.draining.load(Ordering::Relaxed) {
                return error(StatusCode::SERVICE_UNAVAILABLE, "the proxy is shutting down");
            }
            let name = name.to_owned();
            let body = request.into_body();
            if action == "swap" {
                let request = read_json::<SwapBody, _>(body, false).await.and_then(|b| {
                    b.ok_or(SwapBodyError::Empty)
                        .and_then(|b| b.into_request(&name))
                        .map_err(|e| (StatusCode::BAD_REQUEST, crate::error::chain(&e)))
                });
                match request {
                    Ok(swap) => swap_response(state.coordinator.swap(swap).await),
                    Err((status, e)) => error(status, &e),
                }
            } else {
                match read_json::<RollbackBody, _>(body, true).await {
                    Ok(body) => {
                        let listener = body.unwrap_or_default().listener;
                        let coordinator = state.coordinator.clone();
                        let outcome =
                            tokio::spawn(async move { coordinator.rollback(&name, listener.as_deref()).await }).await;
                        match outcome {
                            Ok(result) => swap_response(result),
                            Err(e) => {
                                error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the rollback task failed: {e}"))
                            }
                        }
                    }
                    Err((status, e)) => error(status, &e),
                }
            }
        }
        (Method::GET | Method::HEAD, _) => read_only(&state, &path),
        (_, Some(_)) => error(StatusCode::METHOD_NOT_ALLOWED, "use POST for swap and rollback"),
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "the admin API takes GET, and POST for swap and rollback"),
    }
}

/// Admin connections open at once at most; more are closed at accept (the admin API must not be
/// a way to use up the process's file descriptors).
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin API on `listener` until `stop` changes.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    // The same silent-connection and header timeouts as the listeners (Envoy's defaults), with a
    // shorter idle timeout: admin callers are scripts and probes.
    let limits =
        Arc::new(ConnectionLimits { idle_timeout: Some(Duration::from_secs(60)), ..ConnectionLimits::default() });
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_ADMIN_CONNECTIONS {
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (state, limits, open) = (state.clone(), limits.clone(), open.clone());
        tokio::spawn(async move {
            let activity = Activity::new();
            let streams = activity.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                let guard = streams.stream();
                async move {
                    let response = handle(state, request).await;
                    drop(guard);
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.request_headers_timeout)
                .max_header_size(64 << 10)
                .serve_connection(TokioIo::new(ActivityIo::new(stream, activity.clone())), service);
            tokio::select! {
                _ = connection => {}
                _ = activity.expired(&limits) => {}
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
