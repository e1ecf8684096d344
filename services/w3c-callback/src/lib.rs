//! The W3C trace-context test suite's service interface: `POST /` with a JSON array of
//! `{"url", "arguments"}`; for each element the service POSTs `arguments` to `url`, passing on the
//! trace context it received (`traceparent`, `tracestate`) — the part a tracing sidecar rewrites.
//!
//! With `outbound` set, every callback is sent to that address (the sidecar's outbound listener)
//! with the URL's path and `Host`, instead of connecting to the URL directly.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;

/// One callback the suite asks for.
#[derive(Deserialize)]
pub struct Callback {
    /// Where to POST.
    pub url: String,
    /// What to POST (as JSON).
    #[serde(default)]
    pub arguments: serde_json::Value,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

async fn handle(client: HttpClient, outbound: Option<SocketAddr>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let context: Vec<(String, String)> = ["traceparent", "tracestate"]
        .iter()
        .flat_map(|name| {
            request
                .headers()
                .get_all(*name)
                .iter()
                .map(move |v| (name.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        })
        .collect();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let callbacks: Vec<Callback> = match serde_json::from_slice(&body) {
        Ok(callbacks) => callbacks,
        Err(e) => return reply(StatusCode::BAD_REQUEST, &format!("expected a JSON array of {{url, arguments}}: {e}")),
    };
    for callback in callbacks {
        let Ok(url) = callback.url.parse::<Uri>() else {
            return reply(StatusCode::BAD_REQUEST, &format!("not a URL: {}", callback.url));
        };
        let host = url.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let target = match outbound {
            Some(proxy) => format!("http://{proxy}{path}"),
            None => callback.url.clone(),
        };
        let mut call = Request::post(target).header("host", host).header("content-type", "application/json");
        for (name, value) in &context {
            call = call.header(name.as_str(), value.as_str());
        }
        let Ok(call) = call.body(Full::new(Bytes::from(callback.arguments.to_string()))) else {
            return reply(StatusCode::BAD_REQUEST, "invalid callback request");
        };
        if let Err(e) = client.request(call).await {
            return reply(StatusCode::BAD_GATEWAY, &format!("callback to {} failed: {e}", callback.url));
        }
    }
    reply(StatusCode::OK, "ok")
}

/// Serves the interface on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, outbound: Option<SocketAddr>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let client = client.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(client, outbound, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
