//! The layer and the service it makes: a request handed to a worker with the wrapped service,
//! the answer handed back.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;
use wasmtrace_proxy::BoxError;
use wasmtrace_proxy::in_process::{Application, InProcessInbox, InProcessReply, InProcessRequest, ReplyBody};
use wasmtrace_proxy::rescue::Rescue;

use crate::application_call::application_call;

/// The body the wrapped service gets: the request as the filters left it (streamed through the
/// body callbacks of filters that have them).
pub type FilteredBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Which end of a call the filters wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Requests the application serves (its inbound listener's chain).
    Server,
    /// Requests the application sends (its outbound listener's chain).
    Client,
}

/// The connection a request came on, for the filters' `source.*` and `destination.*`. A server
/// may put it in the request's extensions; without it the layer reads axum's
/// `ConnectInfo<SocketAddr>` (the client's address) and the layer's
/// [`FilterLayer::with_local_address`].
#[derive(Clone, Copy, Debug)]
pub struct ConnectionAddresses {
    /// The client.
    pub peer: SocketAddr,
    /// Where it connected.
    pub local: SocketAddr,
}

/// A `tower::Layer` running one listener's Wasm filters around the service it wraps (made by
/// [`crate::InProcessFilters::server_layer`] or [`crate::InProcessFilters::client_layer`]).
#[derive(Clone)]
pub struct FilterLayer {
    inbox: InProcessInbox,
    listener: usize,
    side: Side,
    local: Option<SocketAddr>,
}

impl FilterLayer {
    pub(crate) fn new(inbox: InProcessInbox, listener: usize, side: Side) -> Self {
        Self { inbox, listener, side, local: None }
    }

    /// The address the application's server listens on (`destination.*` for the filters, when
    /// the request carries no [`ConnectionAddresses`]).
    pub fn with_local_address(mut self, local: SocketAddr) -> Self {
        self.local = Some(local);
        self
    }
}

impl<S> Layer<S> for FilterLayer {
    type Service = Filtered<S>;

    fn layer(&self, inner: S) -> Filtered<S> {
        Filtered { inner, layer: self.clone() }
    }
}

/// A service whose requests and responses pass through a listener's Wasm filters.
#[derive(Clone)]
pub struct Filtered<S> {
    inner: S,
    layer: FilterLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Filtered<S>
where
    S: Service<Request<FilteredBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ReplyBody>;
    /// Never fails: what goes wrong is an answer (`503` when the filters have stopped, a reset
    /// body when a filter closed the stream).
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ReplyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The wrapped service is called on a worker later, readied there (`oneshot`): readiness
        // here would be lost in the clone that goes.
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move { Ok(layer.filter(inner, request).await) })
    }
}

impl FilterLayer {
    /// One request through the filters, `inner` answering it.
    async fn filter<S, ReqBody, ResBody>(self, inner: S, request: Request<ReqBody>) -> Response<ReplyBody>
    where
        S: Service<Request<FilteredBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqBody: Body<Data = Bytes> + Send + 'static,
        ReqBody::Error: Into<BoxError>,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let addresses = parts.extensions.get::<ConnectionAddresses>().copied();
        let peer = addresses
            .map(|a| a.peer)
            .or_else(|| parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|connect| connect.0));
        let local = addresses.map(|a| a.local).or(self.local);
        let target = match self.side {
            Side::Server => None,
            Side::Client => match client_target(&mut parts) {
                Ok(target) => Some(target),
                Err(reason) => return rescued(&Rescue::ClientTarget(reason)),
            },
        };
        let request = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        let call = application_call(inner, tokio::runtime::Handle::try_current().ok());
        let (reply, answer) = oneshot::channel();
        let request = InProcessRequest {
            listener: self.listener,
            request,
            peer: if self.side == Side::Server { peer } else { None },
            local: if self.side == Side::Server { local } else { None },
            application: Application::new(call, target),
            reply,
        };
        if self.inbox.send(request).await.is_err() {
            return rescued(&Rescue::FiltersStopped);
        }
        match answer.await {
            Ok(InProcessReply::Response(response)) => response,
            Ok(InProcessReply::Reset) => {
                // A filter closed the stream: a body that fails makes the server reset it.
                let mut response = Response::new(ReplyBody::reset());
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response
            }
            // The worker dropped the request: it is shutting down.
            Err(_) => rescued(&Rescue::FiltersStopped),
        }
    }
}

/// A client request's destination, taken out of its URI (which becomes origin-form, as the
/// filters see a request off the wire); its `Host` is kept, or made from the authority.
fn client_target(parts: &mut http::request::Parts) -> Result<(http::uri::Scheme, http::uri::Authority), &'static str> {
    let (Some(scheme), Some(authority)) = (parts.uri.scheme().cloned(), parts.uri.authority().cloned()) else {
        return Err("a request through the client filters needs an absolute URI (http://host/path)\n");
    };
    if authority.as_str().contains('@') {
        // Credentials in the URI would reach the filters (and their spans) as the Host.
        return Err("a request through the client filters cannot carry userinfo in its URI\n");
    }
    if !parts.headers.contains_key(HOST) {
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|_| "the URI's authority is not a Host value\n")?;
        parts.headers.insert(HOST, host);
    }
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
    Ok((scheme, authority))
}

/// A reply the layer makes itself, from the proxy's table of them.
fn rescued(rescue: &Rescue) -> Response<ReplyBody> {
    let reply = rescue.reply();
    let mut response = Response::new(ReplyBody::full(Bytes::from(reply.text.into_owned())));
    *response.status_mut() = reply.status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
