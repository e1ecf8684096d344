//! The admin API as a service an application routes to (in-process, next to its own routes or
//! on a port of its own).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;
use wasmtrace_proxy::BoxError;
use wasmtrace_proxy::admin::AdminState;

/// The sidecar's admin API (`/plugins`, swaps, rollbacks, `/stats/prometheus`, `/ready`) for the
/// in-process filters, as a `tower::Service`. Its checks are the admin listener's: changes need
/// the bearer token when one is configured, and requests a browser page makes across sites are
/// refused; without a token, changes are taken only from loopback peers (serve it with
/// `ConnectInfo`). Mount it where only operators reach it: reads show the configuration.
#[derive(Clone)]
pub struct AdminService {
    state: Arc<AdminState>,
}

impl AdminService {
    pub(crate) fn new(state: Arc<AdminState>) -> Self {
        Self { state }
    }
}

impl<B> Service<Request<B>> for AdminService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let state = self.state.clone();
        let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
        if changes && state.token.is_none() && !from_loopback(&request) {
            // The admin listener refuses to serve off loopback without a token; a mounted admin
            // API cannot know where it is mounted, so it asks the same of each change.
            let text = "changes through this admin API need a bearer token (ProxyOptions::admin_token_file) \
                        unless they come from loopback\n";
            let mut refused = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
            *refused.status_mut() = StatusCode::FORBIDDEN;
            return Box::pin(async move { Ok(refused) });
        }
        Box::pin(async move { Ok(wasmtrace_proxy::admin::handle(state, request).await) })
    }
}

/// Whether the request's connection is from loopback, as its server says (axum's `ConnectInfo`,
/// or [`crate::ConnectionAddresses`]); unknown is not loopback.
fn from_loopback<B>(request: &Request<B>) -> bool {
    let peer = request
        .extensions()
        .get::<crate::ConnectionAddresses>()
        .map(|addresses| addresses.peer)
        .or_else(|| request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0));
    peer.is_some_and(|peer| peer.ip().is_loopback())
}
