//! The admin API: `/ready`, `/stats/prometheus`, `/config_dump`, `/plugins`. Read-only for now;
//! it binds to loopback unless told otherwise.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use wasmtrace_config::Bootstrap;
use wasmtrace_runtime::Runtime;

use crate::plugins::LoadedPlugin;
use crate::stats::ProxyStats;

/// What the admin API reads.
pub struct AdminState {
    /// The effective configuration.
    pub bootstrap: Arc<Bootstrap>,
    /// Proxy counters.
    pub stats: Arc<ProxyStats>,
    /// The runtime (host services: failures, filter metrics).
    pub runtime: Arc<Runtime>,
    /// Every loaded plugin, listener by listener.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// Workers are serving.
    pub ready: AtomicBool,
    /// Shutdown has begun.
    pub draining: AtomicBool,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

fn handle(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/ready" => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n".into())
            } else if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "text/plain", "LIVE\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "PRE_INITIALIZING\n".into())
            }
        }
        "/stats/prometheus" => {
            text(StatusCode::OK, "text/plain; version=0.0.4", state.stats.render_prometheus(state.runtime.services()))
        }
        "/config_dump" => {
            let dump =
                serde_json::to_string_pretty(&*state.bootstrap).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            text(StatusCode::OK, "application/json", dump + "\n")
        }
        "/plugins" => {
            let services = state.runtime.services();
            let list: Vec<serde_json::Value> =
                state.plugins.iter().map(|p| p.describe(services.failure_stats(&p.filter.name).vm_restarts)).collect();
            let body = serde_json::to_string_pretty(&serde_json::json!({ "plugins": list })).unwrap_or_default();
            text(StatusCode::OK, "application/json", body + "\n")
        }
        "/" => text(
            StatusCode::OK,
            "text/plain",
            "wasmtrace admin: /ready /stats/prometheus /config_dump /plugins\n".into(),
        ),
        other => text(StatusCode::NOT_FOUND, "text/plain", format!("no admin endpoint {other}\n")),
    }
}

/// Serves the admin API on `listener` until `stop` changes.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = handle(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
