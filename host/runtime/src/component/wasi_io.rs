//! WASI I/O for components called from a proxy worker.
//!
//! wasmtime-wasi's synchronous bindings run every blocking stream operation (and stream drops,
//! and pollables) through `Handle::block_on` of the current tokio runtime. A worker calls filters
//! from inside its runtime, where `block_on` panics: a guest writing its panic message to stderr
//! would take the worker's task down with it. These definitions replace exactly those
//! operations with ones that poll the stream's future once: the streams a filter can reach
//! (stdio: closed or discarding, see [`crate::state::VmState`]) complete at once; a guest that
//! blocks on something not ready gets an error (streams) or a trap (pollables) instead of
//! stalling the worker's other streams.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime::{Result, StoreContextMut};
use wasmtime_wasi::p2::bindings::sync::io::streams::{Host as SyncStreams, StreamError as WitStreamError};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as AsyncPoll, HostPollable as AsyncPollable};
use wasmtime_wasi_io::bindings::wasi::io::streams::{HostInputStream as AsyncInput, HostOutputStream as AsyncOutput};

use crate::state::VmState;

/// The `wasi:io` version wasmtime-wasi links (the component test holds the names to it: a
/// mismatch would leave the tokio-blocking definitions in place, and a guest panic under the
/// proxy would take the worker down).
pub(super) const STREAMS: &str = "wasi:io/streams@0.2.12";
const POLL: &str = "wasi:io/poll@0.2.12";

/// The future's output if it is ready on the first poll.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A stream operation's result for the guest: not ready counts as the stream having failed.
fn stream_result<T>(
    store: &mut StoreContextMut<'_, VmState>,
    outcome: Option<StreamResult<T>>,
) -> Result<(std::result::Result<T, WitStreamError>,)> {
    let table = &mut store.data_mut().table;
    match outcome {
        Some(Ok(value)) => Ok((Ok(value),)),
        Some(Err(error)) => Ok((Err(SyncStreams::convert_stream_error(table, error)?),)),
        None => {
            let error = StreamError::LastOperationFailed(wasmtime::Error::msg("the stream would block a proxy worker"));
            Ok((Err(SyncStreams::convert_stream_error(table, error)?),))
        }
    }
}

/// Replaces the blocking `wasi:io` operations wasmtime-wasi linked into `linker`.
pub(super) fn replace_blocking_io(linker: &mut Linker<VmState>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut streams = linker.instance(STREAMS)?;
    streams.resource("output-stream", ResourceType::host::<DynOutputStream>(), |mut store, rep| {
        let stream = Resource::<DynOutputStream>::new_own(rep);
        ready_now(AsyncOutput::drop(&mut store.data_mut().table, stream)).unwrap_or(Ok(()))
    })?;
    streams.resource("input-stream", ResourceType::host::<DynInputStream>(), |mut store, rep| {
        let stream = Resource::<DynInputStream>::new_own(rep);
        ready_now(AsyncInput::drop(&mut store.data_mut().table, stream)).unwrap_or(Ok(()))
    })?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut store: StoreContextMut<'_, VmState>, (stream, bytes): (Resource<DynOutputStream>, Vec<u8>)| {
            let outcome = ready_now(AsyncOutput::blocking_write_and_flush(&mut store.data_mut().table, stream, bytes));
            stream_result(&mut store, outcome)
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |mut store: StoreContextMut<'_, VmState>, (stream, len): (Resource<DynOutputStream>, u64)| {
            let outcome =
                ready_now(AsyncOutput::blocking_write_zeroes_and_flush(&mut store.data_mut().table, stream, len));
            stream_result(&mut store, outcome)
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-flush",
        |mut store: StoreContextMut<'_, VmState>, (stream,): (Resource<DynOutputStream>,)| {
            let outcome = ready_now(AsyncOutput::blocking_flush(&mut store.data_mut().table, stream));
            stream_result(&mut store, outcome)
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-splice",
        |mut store: StoreContextMut<'_, VmState>,
         (to, from, len): (Resource<DynOutputStream>, Resource<DynInputStream>, u64)| {
            let outcome = ready_now(AsyncOutput::blocking_splice(&mut store.data_mut().table, to, from, len));
            stream_result(&mut store, outcome)
        },
    )?;
    streams.func_wrap(
        "[method]input-stream.blocking-read",
        |mut store: StoreContextMut<'_, VmState>, (stream, len): (Resource<DynInputStream>, u64)| {
            let outcome = ready_now(AsyncInput::blocking_read(&mut store.data_mut().table, stream, len));
            stream_result(&mut store, outcome)
        },
    )?;
    streams.func_wrap(
        "[method]input-stream.blocking-skip",
        |mut store: StoreContextMut<'_, VmState>, (stream, len): (Resource<DynInputStream>, u64)| {
            let outcome = ready_now(AsyncInput::blocking_skip(&mut store.data_mut().table, stream, len));
            stream_result(&mut store, outcome)
        },
    )?;

    let would_block = || wasmtime::Error::msg("a filter may not block a proxy worker on a WASI pollable");
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap(
        "poll",
        move |mut store: StoreContextMut<'_, VmState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            ready_now(AsyncPoll::poll(&mut store.data_mut().table, pollables))
                .unwrap_or_else(|| Err(would_block()))
                .map(|r| (r,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.ready",
        |mut store: StoreContextMut<'_, VmState>, (pollable,): (Resource<DynPollable>,)| {
            Ok((ready_now(AsyncPollable::ready(&mut store.data_mut().table, pollable)).unwrap_or(Ok(false))?,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        move |mut store: StoreContextMut<'_, VmState>, (pollable,): (Resource<DynPollable>,)| {
            ready_now(AsyncPollable::block(&mut store.data_mut().table, pollable)).unwrap_or_else(|| Err(would_block()))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
