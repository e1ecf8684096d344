//! The body pumps: a body streamed frame by frame through one direction of a stream's filters
//! (data held back while a filter buffers, then trailers, then the end), for the request, the
//! response and each direction of an upgraded tunnel; and the stream's end, which they own once
//! the head is answered.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use wasmtrace_runtime::{Direction, HttpExchange};

use crate::body::{FrameSink, FrameSlot, TrailerGate};
use crate::chain::{self, DataVerdict, SharedChain, Verdict};
use crate::downstream_body::DownstreamBody;
use crate::in_process::HopBody;
use crate::message::{http_headers, trailer_map};

/// What happened to a chunk after the filters.
enum Pumped {
    /// Sent (or held by a buffering filter): go on.
    Go,
    /// The other side went away.
    Gone,
    /// A filter stopped the stream.
    Stop(Verdict),
}

/// Sends what the filters forward.
async fn deliver(tx: &impl FrameSink, verdict: DataVerdict) -> Pumped {
    match verdict {
        DataVerdict::Forward(bytes) if bytes.is_empty() => Pumped::Go,
        DataVerdict::Forward(bytes) => match tx.deliver(Ok(Frame::data(Bytes::from(bytes)))).await {
            Ok(()) => Pumped::Go,
            Err(_) => Pumped::Gone,
        },
        DataVerdict::Held => Pumped::Go,
        DataVerdict::Stop(verdict) => Pumped::Stop(verdict),
    }
}

/// Streams `body` through the filters of `direction` into `tx`: data frame by frame (held back
/// while a filter buffers), then trailers, then the end of the stream. Returns how it ended.
async fn pump<B>(
    chain: &SharedChain,
    exchange: &Rc<RefCell<HttpExchange>>,
    mut body: B,
    tx: &impl FrameSink,
    direction: Direction,
) -> Pumped
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::BoxError>,
{
    let all = chain.borrow().len();
    let mut ended = false;
    let outcome = loop {
        let next = if chain::holds_body(chain, direction) {
            // A filter holds back bytes until it resumes (after a callout, say): what it releases
            // goes on at once, not with the next frame, which in a bidirectional stream may only
            // come as an answer to those very bytes.
            tokio::select! {
                frame = body.frame() => frame,
                (index, action) = chain::held_body_resumed(chain, direction) => {
                    let verdict = chain::release_held_body(chain, direction, index, action, all).await;
                    match deliver(tx, verdict).await {
                        Pumped::Go => continue,
                        other => break other,
                    }
                }
            }
        } else {
            body.frame().await
        };
        let Some(frame) = next else { break Pumped::Go };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                let _ = tx.deliver(Err(error.into())).await;
                break Pumped::Gone;
            }
        };
        match frame.into_data() {
            Ok(data) => {
                ended = body.is_end_stream();
                {
                    let info = &mut exchange.borrow_mut().info;
                    match direction {
                        Direction::Request => info.request_body_bytes += data.len() as u64,
                        Direction::Response => info.response_body_bytes += data.len() as u64,
                    }
                }
                let verdict = chain::data(chain, direction, data.to_vec(), ended, all).await;
                match deliver(tx, verdict).await {
                    Pumped::Go => {}
                    other => break other,
                }
            }
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else { continue };
                if !ended {
                    // Trailers end the body: filters waiting for the end see it now.
                    ended = true;
                    let verdict = chain::data(chain, direction, Vec::new(), true, all).await;
                    match deliver(tx, verdict).await {
                        Pumped::Go => {}
                        other => break other,
                    }
                }
                fn slot(
                    exchange: &mut HttpExchange,
                    direction: Direction,
                ) -> &mut Option<wasmtrace_runtime::HeaderMap> {
                    match direction {
                        Direction::Request => &mut exchange.request_trailers,
                        Direction::Response => &mut exchange.response_trailers,
                    }
                }
                *slot(&mut exchange.borrow_mut(), direction) = Some(trailer_map(&trailers));
                match chain::trailers(chain, direction).await {
                    Verdict::Continue => {
                        let map = slot(&mut exchange.borrow_mut(), direction).clone().unwrap_or_default();
                        let _ = tx.deliver(Ok(Frame::trailers(http_headers(&map)))).await;
                        break Pumped::Go;
                    }
                    verdict => break Pumped::Stop(verdict),
                }
            }
        }
    };
    match outcome {
        Pumped::Go if !ended => deliver(tx, chain::data(chain, direction, Vec::new(), true, all).await).await,
        other => other,
    }
}

/// Streams the downstream request body to the upstream. A filter that stops the stream hands
/// its verdict to the request's task through `abort`.
pub(crate) async fn pump_request(
    chain: SharedChain,
    exchange: Rc<RefCell<HttpExchange>>,
    body: DownstreamBody,
    tx: crate::body::FrameSender,
    abort: oneshot::Sender<Verdict>,
) {
    if let Pumped::Stop(verdict) = pump(&chain, &exchange, body, &tx, Direction::Request).await {
        let _ = abort.send(verdict);
        // The upstream must not take a cut-short body for a complete one.
        let _ = tx.deliver(Err("request reset by a filter".into())).await;
    }
}

/// One direction of an upgraded stream through the filters of `direction` into `tx`: true when
/// it ended cleanly, false when a side failed or a filter stopped the stream.
pub(crate) async fn pump_upgraded<B>(end: &StreamEnd, body: B, tx: &impl FrameSink, direction: Direction) -> bool
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::BoxError>,
{
    matches!(pump(&end.chain, &end.exchange, body, tx, direction).await, Pumped::Go)
}

/// The end of a stream whose response body is being pumped (or whose upgrade is tunnelled): the
/// access-log point runs when the pump is done, or when it is dropped unfinished (the client went
/// away mid-body).
pub(crate) struct StreamEnd {
    pub(crate) chain: SharedChain,
    pub(crate) exchange: Rc<RefCell<HttpExchange>>,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        finish_stream(&self.chain, &self.exchange);
    }
}

/// Streams the upstream response body to the downstream through the filters; the stream ends
/// (access log) when the pump is dropped, finished or not.
pub(crate) async fn pump_response(end: StreamEnd, body: TrailerGate<HopBody>, tx: Rc<FrameSlot>) {
    if let Pumped::Stop(_) = pump(&end.chain, &end.exchange, body, &tx, Direction::Response).await {
        let _ = tx.deliver(Err("a filter reset the response".into())).await;
    }
}

/// The access-log point of a stream: its end time, then `proxy_on_log` through the chain.
pub(crate) fn finish_stream(chain: &SharedChain, exchange: &Rc<RefCell<HttpExchange>>) {
    exchange.borrow_mut().info.end_time.get_or_insert_with(SystemTime::now);
    chain.borrow_mut().log();
}
