//! The Wasm filters of one stream, run in Envoy's order: request callbacks from the first
//! filter to the last, response callbacks from the last to the first.
//!
//! A filter that pauses in a header or end-of-stream callback is awaited until it resumes (or
//! answers, closes or fails). A filter that pauses a body before its end gets the following data
//! appended and is called again with everything so far (Envoy's `StopIterationAndBuffer`); data
//! reaches the next filter, and the wire, only once the filter continues.

use std::cell::RefCell;
use std::rc::Rc;

use wasmtrace_runtime::{Action, Direction, HttpExchange, HttpStream, LocalResponse};

use crate::rescue::Rescue;
use crate::swap::WorkerPlugin;

/// Most body bytes one filter may hold back while it buffers.
pub const MAX_BUFFERED_BODY: usize = 64 << 20;

/// The outcome of running a phase through the filters.
#[derive(Debug)]
pub enum Verdict {
    /// Every filter continued.
    Continue,
    /// Filter `index` answered locally.
    Local(LocalResponse, usize),
    /// A filter asked to reset the stream.
    Close,
}

/// The outcome of passing a chunk of body through the filters.
#[derive(Debug)]
pub enum DataVerdict {
    /// These bytes go on the wire.
    Forward(Vec<u8>),
    /// A filter is buffering; nothing to send yet.
    Held,
    /// The stream stops.
    Stop(Verdict),
}

/// The filters of one stream and the bytes each one is holding back.
pub struct FilterChain {
    exchange: Rc<RefCell<HttpExchange>>,
    streams: Vec<HttpStream>,
    logged: bool,
    /// The request body pump, stopped when the stream ends before the body does.
    request_pump: Option<tokio::task::AbortHandle>,
    request_buffers: Vec<Option<Vec<u8>>>,
    response_buffers: Vec<Option<Vec<u8>>>,
}

/// A chain shared by the request and response halves of a stream (one worker thread).
pub type SharedChain = Rc<RefCell<FilterChain>>;

impl FilterChain {
    /// Opens a stream context in every filter over `exchange`.
    /// Each filter's stream goes to the generation published when it opens (hot swap).
    pub fn open(filters: &[Rc<WorkerPlugin>], exchange: Rc<RefCell<HttpExchange>>) -> SharedChain {
        let streams: Vec<HttpStream> = filters.iter().map(|f| f.instance().new_stream(exchange.clone())).collect();
        let n = streams.len();
        Rc::new(RefCell::new(Self {
            exchange,
            streams,
            logged: false,
            request_pump: None,
            request_buffers: vec![None; n],
            response_buffers: vec![None; n],
        }))
    }

    /// How many filters.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when the chain has no filters.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Remembers the request body pump so the end of the stream can stop it.
    pub fn set_request_pump(&mut self, pump: tokio::task::AbortHandle) {
        self.request_pump = Some(pump);
    }

    /// The end of the stream: stops a request body pump still running, then `proxy_on_log` on
    /// every filter — once, whichever path ends the stream first.
    pub fn log(&mut self) {
        if let Some(pump) = self.request_pump.take() {
            pump.abort();
        }
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        for stream in &mut self.streams {
            stream.on_log();
        }
    }
}

/// Waits until filter `index` resumes `direction`, and returns what it decided.
async fn resumed(chain: &SharedChain, index: usize, direction: Direction) -> Action {
    std::future::poll_fn(|cx| chain.borrow().streams[index].poll_resume(cx, direction)).await
}

/// Turns a callback's action into a verdict, awaiting a pause.
async fn settle(chain: &SharedChain, index: usize, direction: Direction, action: Action) -> Option<Verdict> {
    let action = match action {
        Action::Pause => resumed(chain, index, direction).await,
        other => other,
    };
    match action {
        Action::Continue | Action::Pause => None,
        Action::LocalResponse(response) => Some(Verdict::Local(response, index)),
        Action::FailClosed(failure) => Some(Verdict::Local(Rescue::FailClosed(failure).local_response(), index)),
        Action::Close => Some(Verdict::Close),
    }
}

/// The filters' indices in the order `direction` runs them (no allocation: this is per phase
/// of every stream).
fn order(len: usize, direction: Direction) -> impl Iterator<Item = usize> {
    let reverse = matches!(direction, Direction::Response);
    (0..len).map(move |i| if reverse { len - 1 - i } else { i })
}

/// Request headers through every filter.
pub async fn request_headers(chain: &SharedChain, end_of_stream: bool) -> Verdict {
    let len = chain.borrow().len();
    for i in order(len, Direction::Request) {
        let action = chain.borrow_mut().streams[i].on_request_headers(end_of_stream);
        if let Some(verdict) = settle(chain, i, Direction::Request, action).await {
            return verdict;
        }
    }
    Verdict::Continue
}

/// Response headers through the first `upto` filters, last first.
pub async fn response_headers(chain: &SharedChain, end_of_stream: bool, upto: usize) -> Verdict {
    let len = chain.borrow().len().min(upto);
    for i in order(len, Direction::Response) {
        let action = chain.borrow_mut().streams[i].on_response_headers(end_of_stream);
        if let Some(verdict) = settle(chain, i, Direction::Response, action).await {
            return verdict;
        }
    }
    Verdict::Continue
}

/// Trailers through every filter of `direction` (after any buffered body was flushed).
pub async fn trailers(chain: &SharedChain, direction: Direction) -> Verdict {
    let len = chain.borrow().len();
    for i in order(len, direction) {
        let action = match direction {
            Direction::Request => chain.borrow_mut().streams[i].on_request_trailers(),
            Direction::Response => chain.borrow_mut().streams[i].on_response_trailers(),
        };
        if let Some(verdict) = settle(chain, i, direction, action).await {
            return verdict;
        }
    }
    Verdict::Continue
}

/// A chunk of body (possibly empty, at the end of the stream) through the first `upto` filters
/// of `direction`.
pub async fn data(
    chain: &SharedChain,
    direction: Direction,
    chunk: Vec<u8>,
    end_of_stream: bool,
    upto: usize,
) -> DataVerdict {
    data_after(chain, direction, chunk, end_of_stream, upto, None).await
}

/// Whether a filter of `direction` holds back body bytes (paused before the end of the body).
pub fn holds_body(chain: &SharedChain, direction: Direction) -> bool {
    let chain = chain.borrow();
    let buffers = match direction {
        Direction::Request => &chain.request_buffers,
        Direction::Response => &chain.response_buffers,
    };
    buffers.iter().any(Option::is_some)
}

/// Waits until a filter holding back body bytes of `direction` resumes (or answers, closes or
/// fails), and returns its index and what it decided.
pub async fn held_body_resumed(chain: &SharedChain, direction: Direction) -> (usize, Action) {
    std::future::poll_fn(|cx| {
        let chain = chain.borrow();
        let buffers = match direction {
            Direction::Request => &chain.request_buffers,
            Direction::Response => &chain.response_buffers,
        };
        for (index, buffer) in buffers.iter().enumerate() {
            if buffer.is_some()
                && let std::task::Poll::Ready(action) = chain.streams[index].poll_resume(cx, direction)
            {
                return std::task::Poll::Ready((index, action));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// What filter `index` held back, now that it resumed with `action`: passed on through the
/// filters after it (as Envoy continues a stream: the resuming filter is not called again with
/// the bytes it released), or the stream's end if it answered or closed instead.
pub async fn release_held_body(
    chain: &SharedChain,
    direction: Direction,
    index: usize,
    action: Action,
    upto: usize,
) -> DataVerdict {
    let held = {
        let mut chain = chain.borrow_mut();
        let buffer = match direction {
            Direction::Request => &mut chain.request_buffers[index],
            Direction::Response => &mut chain.response_buffers[index],
        };
        buffer.take().unwrap_or_default()
    };
    match action {
        Action::LocalResponse(response) => DataVerdict::Stop(Verdict::Local(response, index)),
        Action::FailClosed(failure) => {
            DataVerdict::Stop(Verdict::Local(Rescue::FailClosed(failure).local_response(), index))
        }
        Action::Close => DataVerdict::Stop(Verdict::Close),
        Action::Continue | Action::Pause => data_after(chain, direction, held, false, upto, Some(index)).await,
    }
}

/// [`data`] through the filters that come after filter `after` in `direction`'s order (all of
/// them when `None`).
async fn data_after(
    chain: &SharedChain,
    direction: Direction,
    chunk: Vec<u8>,
    end_of_stream: bool,
    upto: usize,
    after: Option<usize>,
) -> DataVerdict {
    let len = chain.borrow().len().min(upto);
    let mut data = Some(chunk);
    let mut filters = order(len, direction).peekable();
    if let Some(after) = after {
        // Skip up to and including `after`.
        while filters.next_if(|&i| i != after).is_some() {}
        filters.next();
    }
    for i in filters {
        let Some(bytes) = data.take() else { break };
        let action = {
            let mut chain_ref = chain.borrow_mut();
            let chain_mut = &mut *chain_ref;
            let buffer = match direction {
                Direction::Request => &mut chain_mut.request_buffers[i],
                Direction::Response => &mut chain_mut.response_buffers[i],
            };
            let body = match buffer.take() {
                Some(mut held) => {
                    held.extend_from_slice(&bytes);
                    held
                }
                None => bytes,
            };
            if body.len() > MAX_BUFFERED_BODY {
                return DataVerdict::Stop(too_large(direction, i));
            }
            {
                let mut exchange = chain_mut.exchange.borrow_mut();
                match direction {
                    Direction::Request => exchange.request_body = body,
                    Direction::Response => exchange.response_body = body,
                }
            }
            let stream = &mut chain_mut.streams[i];
            match direction {
                Direction::Request => stream.on_request_body(end_of_stream),
                Direction::Response => stream.on_response_body(end_of_stream),
            }
        };
        let take_body = |chain: &SharedChain| {
            let chain = chain.borrow();
            let mut exchange = chain.exchange.borrow_mut();
            std::mem::take(match direction {
                Direction::Request => &mut exchange.request_body,
                Direction::Response => &mut exchange.response_body,
            })
        };
        match action {
            Action::Continue => data = Some(take_body(chain)),
            Action::Pause if !end_of_stream => {
                let held = take_body(chain);
                let mut chain_mut = chain.borrow_mut();
                let buffer = match direction {
                    Direction::Request => &mut chain_mut.request_buffers[i],
                    Direction::Response => &mut chain_mut.response_buffers[i],
                };
                *buffer = Some(held);
                return DataVerdict::Held;
            }
            other => {
                if let Some(verdict) = settle(chain, i, direction, other).await {
                    return DataVerdict::Stop(verdict);
                }
                data = Some(take_body(chain));
            }
        }
    }
    match data {
        Some(bytes) => DataVerdict::Forward(bytes),
        None => DataVerdict::Held,
    }
}

fn too_large(direction: Direction, index: usize) -> Verdict {
    match direction {
        Direction::Request => Verdict::Local(Rescue::BodyTooLarge.local_response(), index),
        Direction::Response => Verdict::Close,
    }
}
