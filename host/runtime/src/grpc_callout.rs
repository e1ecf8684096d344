//! gRPC callouts (`proxy_grpc_call`, `proxy_grpc_stream`): the call a guest asks for, the events
//! that come back, and the control the guest keeps over a call in flight.
//!
//! As with HTTP callouts the runtime does no I/O: the VM hands a [`GrpcCallRequest`] and a
//! [`GrpcEvents`] to its [`CalloutDispatcher`](crate::CalloutDispatcher), which sends the call on
//! the same worker and reports what arrives through [`GrpcEvents::deliver`]; the guest sends,
//! half-closes and cancels through the [`GrpcCallControl`] the dispatcher returned.
//!
//! Which events a guest sees follows Envoy's Wasm host: a unary call that succeeds delivers its
//! one message (`proxy_on_grpc_receive`) and nothing else; a unary call that fails delivers only
//! `proxy_on_grpc_close` with the status; a stream delivers initial metadata, each message,
//! trailing metadata and the close. A cancelled call delivers nothing more.

use std::rc::Weak;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::header_map::HeaderMap;
use crate::vm::PluginVm;

/// gRPC status codes the host itself reports (the rest come from the server).
pub mod status {
    /// `OK`.
    pub const OK: u32 = 0;
    /// `CANCELLED`.
    pub const CANCELLED: u32 = 1;
    /// `UNKNOWN`.
    pub const UNKNOWN: u32 = 2;
    /// `DEADLINE_EXCEEDED`: the unary call's timeout passed.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// `PERMISSION_DENIED`.
    pub const PERMISSION_DENIED: u32 = 7;
    /// `RESOURCE_EXHAUSTED`: a message larger than the host delivers.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// `UNIMPLEMENTED`.
    pub const UNIMPLEMENTED: u32 = 12;
    /// `INTERNAL`: the server broke the protocol (a bad frame, a compressed message nobody
    /// asked for, a unary answer without a message).
    pub const INTERNAL: u32 = 13;
    /// `UNAVAILABLE`: no connection, or the connection broke.
    pub const UNAVAILABLE: u32 = 14;
    /// `UNAUTHENTICATED`.
    pub const UNAUTHENTICATED: u32 = 16;
}

/// The bytes one VM's gRPC calls may hold on the host together (what waits to be sent, what is
/// partly received), outside the guest's own memory cap: charged before bytes are held, so a
/// guest or a server cannot make the host hold more.
#[derive(Clone, Debug)]
pub struct GrpcBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl GrpcBudget {
    /// The bound per VM.
    pub const PER_VM: usize = 64 << 20;

    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { used: Arc::new(AtomicUsize::new(0)), limit }
    }

    /// Takes `bytes` from the budget; false (and nothing taken) when that would pass the bound.
    pub fn charge(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken with [`charge`](Self::charge).
    pub fn release(&self, bytes: usize) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(bytes)));
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// What kind of call, with what only that kind has.
#[derive(Clone, Debug)]
pub enum GrpcCallKind {
    /// `proxy_grpc_call`: one request message, one answer, an optional deadline.
    Unary {
        /// The request message (serialized protobuf, unframed).
        message: Vec<u8>,
        /// `None` when the guest passed 0.
        timeout: Option<Duration>,
    },
    /// `proxy_grpc_stream`: messages both ways until either side closes; no deadline.
    Stream,
}

/// A gRPC call as the guest asked for it.
#[derive(Clone, Debug)]
pub struct GrpcCallRequest {
    /// The token the guest got back; events are matched to it.
    pub token: u32,
    /// The cluster to send to (`envoy_grpc.cluster_name`).
    pub cluster: String,
    /// The `:authority` to send: the service's `envoy_grpc.authority`, else the cluster name (as
    /// Envoy does).
    pub authority: String,
    /// Fully qualified service, e.g. `opentelemetry.proto.collector.trace.v1.TraceService`.
    pub service: String,
    /// Method, e.g. `Export`.
    pub method: String,
    /// Request metadata the guest added (sent as request headers).
    pub initial_metadata: HeaderMap,
    /// Unary or streaming.
    pub kind: GrpcCallKind,
    /// The VM's budget for what its calls hold on the host.
    pub budget: GrpcBudget,
}

/// Something that arrived for a call.
#[derive(Clone, Debug)]
pub enum GrpcEvent {
    /// The response headers of a stream (`proxy_on_grpc_receive_initial_metadata`).
    InitialMetadata(HeaderMap),
    /// One message, unframed (`proxy_on_grpc_receive`).
    Message(Vec<u8>),
    /// The response trailers of a stream (`proxy_on_grpc_receive_trailing_metadata`).
    TrailingMetadata(HeaderMap),
    /// The call ended (`proxy_on_grpc_close`): the gRPC status and its message, which the guest
    /// reads with `proxy_get_status`.
    Close {
        /// gRPC status code.
        status: u32,
        /// `grpc-message`, or the host's reason.
        message: String,
    },
}

/// Why a message was not sent on a stream.
#[derive(Debug, Error)]
pub enum GrpcSendError {
    /// The stream was closed for sending (half-closed by the guest, or ended).
    #[error("the stream is closed for sending")]
    Closed,
    /// Too many bytes wait to be sent (the upstream does not read fast enough): the stream has
    /// been reset and closes with `RESOURCE_EXHAUSTED`.
    #[error("{queued} bytes were already waiting to be sent; the stream was reset")]
    Backlog {
        /// Bytes waiting.
        queued: usize,
    },
    /// A unary call takes no further messages.
    #[error("a unary call sends no further messages")]
    Unary,
}

/// What the guest can do to a call in flight; implemented by the data plane. Dropping it
/// cancels the call (the VM went away, or the call ended).
pub trait GrpcCallControl {
    /// Sends one message (framed by the data plane); `end_stream` half-closes after it. Past
    /// the send backlog bound the stream is reset and will close with `RESOURCE_EXHAUSTED`.
    fn send(&self, message: &[u8], end_stream: bool) -> Result<(), GrpcSendError>;
    /// Half-closes the stream: no more messages from the guest; the server may still answer.
    fn close(&self);
    /// Abandons the call: the request is reset and no further event is delivered.
    fn cancel(&self);
}

/// The way back into the VM for one gRPC call.
pub struct GrpcEvents {
    pub(crate) vm: Weak<PluginVm>,
    pub(crate) token: u32,
}

impl GrpcEvents {
    /// The token of the call.
    pub fn token(&self) -> u32 {
        self.token
    }

    /// Delivers `event` to the guest (the matching `proxy_on_grpc_*` callback). Events for a call
    /// the guest cancelled, or of a VM that is gone or has failed, are dropped. Returns false
    /// when no further event will be taken (the call is over for the guest), so the sender can
    /// stop.
    pub fn deliver(&self, event: GrpcEvent) -> bool {
        self.vm.upgrade().is_some_and(|vm| vm.deliver_grpc(self.token, event))
    }
}

/// Where a gRPC call goes, from the bytes the guest passed as its "service": a serialized
/// `envoy.config.core.v3.GrpcService` whose `envoy_grpc` names the cluster, or (what the Rust SDK
/// passes) the cluster name itself. Envoy tries the proto first and falls back to the name.
pub(crate) fn grpc_target(service: &[u8]) -> Option<(String, Option<String>)> {
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct GrpcService {
        #[prost(message, optional, tag = "1")]
        envoy_grpc: Option<EnvoyGrpc>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct EnvoyGrpc {
        #[prost(string, tag = "1")]
        cluster_name: String,
        #[prost(string, tag = "2")]
        authority: String,
    }

    if let Ok(GrpcService { envoy_grpc: Some(envoy) }) = GrpcService::decode(service)
        && !envoy.cluster_name.is_empty()
    {
        let authority = (!envoy.authority.is_empty()).then_some(envoy.authority);
        return Some((envoy.cluster_name, authority));
    }
    let name = std::str::from_utf8(service).ok()?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_graphic())).then(|| (name.to_owned(), None))
}

#[cfg(test)]
mod tests {
    use super::grpc_target;

    #[test]
    fn a_cluster_name_is_taken_as_is() {
        for name in ["grpc_echo", "otlp", "authz-service", "h", "a.b.c"] {
            assert_eq!(grpc_target(name.as_bytes()), Some((name.to_owned(), None)), "{name}");
        }
    }

    #[test]
    fn a_grpc_service_proto_names_cluster_and_authority() {
        // GrpcService { envoy_grpc (1): EnvoyGrpc { cluster_name (1): "ext", authority (2): "a.example" } }
        let inner = [&[0x0a, 3][..], b"ext", &[0x12, 9], b"a.example"].concat();
        let outer = [&[0x0a, inner.len() as u8][..], &inner].concat();
        assert_eq!(grpc_target(&outer), Some(("ext".to_owned(), Some("a.example".to_owned()))));
    }

    #[test]
    fn nothing_usable_is_refused() {
        assert_eq!(grpc_target(b""), None);
        assert_eq!(grpc_target(b"has space"), None);
        assert_eq!(grpc_target(&[0xff, 0xfe]), None);
    }
}
