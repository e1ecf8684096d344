//! The SERVER span of every request a service answers (unless a sidecar makes it: see
//! [`crate::telemetry::TelemetryConfig::http_spans`]): the child of the context the caller sent, named after the matched route, tagged with the HTTP
//! semantic conventions, and made current for the handler so database, storage and outgoing
//! calls nest under it (and carry the caller's `x-request-id` on). The response tells the client its trace (`traceresponse`, and
//! `server-timing` for browsers' developer tools).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::request_id::RequestId;
use crate::telemetry::{Telemetry, attribute};
use crate::w3c_propagator;

/// Middleware (install with `route_layer`, so the matched route is known).
pub async fn trace_requests(State(telemetry): State<Arc<Telemetry>>, request: Request, next: Next) -> Response {
    let parent = RequestId::carried_in(telemetry.extract(request.headers()), request.headers());
    if !telemetry.http_spans() {
        // The sidecar's SERVER span is the request's span: work under it, answer with it.
        let mut response = next.run(request).with_context(parent.clone()).await;
        trace_response(&parent, &mut response);
        return response;
    }
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.clone(),
    };
    let mut attributes = vec![
        attribute("http.request.method", method),
        attribute("url.path", request.uri().path()),
        attribute("url.scheme", "http"),
        attribute("network.protocol.version", protocol_version(request.version())),
    ];
    if let Some(route) = route {
        attributes.push(attribute("http.route", route));
    }
    if let Some(query) = request.uri().query() {
        attributes.push(attribute("url.query", query));
    }
    if let Some(agent) = request.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        attributes.push(attribute("user_agent.original", agent));
    }
    if let Some(host) = request.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()) {
        let (address, port) = host.rsplit_once(':').unwrap_or((host, ""));
        attributes.push(attribute("server.address", address));
        if let Ok(port) = port.parse::<i64>() {
            attributes.push(KeyValue::new("server.port", port));
        }
    }
    let tracer = telemetry.tracer();
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    let mut response = next.run(request).with_context(cx.clone()).await;
    finish(&cx, &mut response);
    response
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn finish(cx: &Context, response: &mut Response) {
    let span = cx.span();
    let status = response.status().as_u16();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
    if status >= 500 {
        span.set_attribute(attribute("error.type", status.to_string()));
        span.set_status(Status::error(format!("answered {status}")));
    }
    trace_response(cx, response);
    span.end();
}

/// Tells the client the request's trace: `traceresponse`, and `server-timing` for browsers.
fn trace_response(cx: &Context, response: &mut Response) {
    // The flags as the next hop gets them (the random flag of a trace started here included).
    if let Some(traceparent) = w3c_propagator::traceparent(cx) {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&traceparent) {
            headers.insert("traceresponse", value);
        }
        if let Ok(value) = HeaderValue::from_str(&format!("traceparent;desc=\"{traceparent}\"")) {
            headers.append("server-timing", value);
        }
        headers.insert("access-control-expose-headers", HeaderValue::from_static("traceresponse, server-timing"));
    }
}
