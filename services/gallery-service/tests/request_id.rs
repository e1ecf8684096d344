//! A service passes the `x-request-id` it was called with on to the services it calls while
//! serving that request (real HTTP servers on loopback, the real middleware and client).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use gallery_service::telemetry::TelemetryConfig;
use gallery_service::{Telemetry, UpstreamClient, server_span};
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A downstream service that answers with the `x-request-id` it received (`-` for none).
async fn downstream() -> SocketAddr {
    serve(Router::new().route(
        "/seen",
        get(|headers: HeaderMap| async move {
            headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
        }),
    ))
    .await
}

/// A service whose `/call` calls the downstream one and answers with what it answered.
async fn caller(downstream: SocketAddr, http_spans: bool) -> SocketAddr {
    let config = TelemetryConfig {
        service_name: "caller".into(),
        enabled: false,
        traces_endpoint: None,
        batch_delay: None,
        http_spans,
        in_process: None,
    };
    let telemetry = Arc::new(Telemetry::start(&config));
    let client = UpstreamClient::new(
        "downstream",
        &format!("http://{downstream}"),
        None,
        Duration::from_secs(5),
        telemetry.clone(),
    )
    .expect("client");
    let router = Router::new()
        .route(
            "/call",
            get(|State(client): State<UpstreamClient>| async move {
                match client.call(Method::GET, "/seen", "/seen", HeaderMap::new(), Bytes::new()).await {
                    Ok((_, _, body)) => String::from_utf8_lossy(&body).into_owned(),
                    Err(_) => "call failed".to_owned(),
                }
            }),
        )
        .with_state(client)
        .route_layer(axum::middleware::from_fn_with_state(telemetry, server_span::trace_requests));
    serve(router).await
}

async fn call(addr: SocketAddr, request_id: Option<&str>) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::get(format!("http://{addr}/call"));
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    let response = client.request(request.body(Full::new(Bytes::new())).expect("request")).await.expect("answer");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn the_request_id_a_service_was_called_with_reaches_the_services_it_calls() {
    let downstream = downstream().await;
    for http_spans in [true, false] {
        let caller = caller(downstream, http_spans).await;
        assert_eq!(call(caller, Some("req-7f3a")).await, "req-7f3a", "http_spans = {http_spans}");
        assert_eq!(call(caller, None).await, "-", "no id is made up (http_spans = {http_spans})");
    }
}
