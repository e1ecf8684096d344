//! Query answers are built a few at a time: a caller past the cap is told to come back, and the
//! viewer's page still loads.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use tower::ServiceExt;
use trace_collector::jaeger_api::QueryApi;
use trace_collector::limits::Limits;
use trace_collector::query_router_for;
use trace_collector::span_store::SpanStore;

async fn status_of(router: &axum::Router, path: &str) -> (StatusCode, Option<String>) {
    let request = Request::get(path).body(Body::empty()).expect("request");
    let answer = router.clone().oneshot(request).await.expect("answered");
    let retry = answer.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    (answer.status(), retry)
}

#[tokio::test]
async fn a_query_past_the_concurrency_cap_is_answered_503_with_retry_after() {
    let store = Arc::new(SpanStore::open(":memory:").await.unwrap_or_else(|e| panic!("{e}")));
    let api = Arc::new(QueryApi::new(store, Limits { max_concurrent_queries: 2, ..Limits::default() }));
    let router = query_router_for(api.clone());
    assert_eq!(status_of(&router, "/api/v3/services").await.0, StatusCode::OK);

    // Two answers being built (held here as a slow query would hold them): the next waits.
    let busy = api.queries.try_acquire_many(2).expect("both slots");
    for path in ["/api/v3/services", "/api/traces?service=x", "/api/v3/trace-summaries", "/api/dependencies"] {
        assert_eq!(status_of(&router, path).await, (StatusCode::SERVICE_UNAVAILABLE, Some("1".into())), "{path}");
    }
    let refused = router
        .clone()
        .oneshot(Request::get("/api/v3/services").body(Body::empty()).expect("request"))
        .await
        .expect("answered");
    let body = axum::body::to_bytes(refused.into_body(), 1 << 16).await.expect("body");
    let error: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(error["error"]["httpCode"], 503, "v3's error shape: {error}");
    assert_eq!(status_of(&router, "/").await.0, StatusCode::OK, "the page is no query");
    assert_eq!(status_of(&router, "/assets/viewer.js").await.0, StatusCode::OK);
    drop(busy);
    assert_eq!(status_of(&router, "/api/v3/services").await.0, StatusCode::OK);
}
