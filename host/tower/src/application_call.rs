//! The application's side of a filtered request: the wrapped service readied and called on a
//! worker's thread, inside the application's runtime context.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;
use wasmtrace_proxy::BoxError;
use wasmtrace_proxy::in_process::ApplicationCall;

use crate::layer::FilteredBody;

/// The call of `inner` for one request: readied and called where a worker polls it, inside
/// `runtime`'s context (the application's), its answer's body boxed for the filters.
pub(crate) fn application_call<S, ResBody>(inner: S, runtime: Option<tokio::runtime::Handle>) -> ApplicationCall
where
    S: Service<Request<FilteredBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    Box::new(move |request| {
        let answered = oneshot_call(inner, request);
        Box::pin(InRuntime { runtime, future: answered })
    })
}

/// Readies `inner` and calls it (on the worker), its answer's body boxed for the filters. A
/// future of its own rather than an `async fn`: the compiler can then see that it is `Send`
/// whenever the wrapped service's future is.
enum Answer<S: Service<Request<FilteredBody>>> {
    Readying(Box<(S, Option<Request<FilteredBody>>)>),
    Calling(Pin<Box<S::Future>>),
    Done,
}

fn oneshot_call<S>(inner: S, request: Request<FilteredBody>) -> Answer<S>
where
    S: Service<Request<FilteredBody>>,
{
    Answer::Readying(Box::new((inner, Some(request))))
}

impl<S, ResBody> Future for Answer<S>
where
    S: Service<Request<FilteredBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<FilteredBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                Answer::Readying(readying) => {
                    let (inner, request) = &mut **readying;
                    if let Err(e) = std::task::ready!(inner.poll_ready(cx)) {
                        *this = Answer::Done;
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(request) = request.take() else { return Poll::Ready(Err("polled after its end".into())) };
                    *this = Answer::Calling(Box::pin(inner.call(request)));
                }
                Answer::Calling(future) => {
                    let answered = std::task::ready!(future.as_mut().poll(cx));
                    *this = Answer::Done;
                    return Poll::Ready(
                        answered
                            .map(|response| response.map(|body| body.map_err(Into::into).boxed_unsync()))
                            .map_err(Into::into),
                    );
                }
                Answer::Done => return Poll::Ready(Err("polled after its end".into())),
            }
        }
    }
}

/// A future polled inside the application's runtime context although a worker polls it: what
/// the wrapped service spawns, and the sockets and timers it makes, are the application's.
struct InRuntime<F> {
    runtime: Option<tokio::runtime::Handle>,
    future: F,
}

impl<F: Future + Unpin> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.runtime.as_ref().map(tokio::runtime::Handle::enter);
        Pin::new(&mut this.future).poll(cx)
    }
}
