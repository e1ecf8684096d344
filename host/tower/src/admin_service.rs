//! The admin API as a service an application routes to (in-process, next to its own routes or
//! on a port of its own).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;
use wasmtrace_proxy::BoxError;
use wasmtrace_proxy::admin::AdminState;

/// The sidecar's admin API (`/plugins`, swaps, rollbacks, `/stats/prometheus`, `/ready`) for the
/// in-process filters, as a `tower::Service`. Its checks are the admin listener's: changes need
/// the bearer token when one is configured, and requests a browser page makes across sites are
/// refused; mount it where only operators reach it.
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
        Box::pin(async move { Ok(wasmtrace_proxy::admin::handle(state, request).await) })
    }
}
