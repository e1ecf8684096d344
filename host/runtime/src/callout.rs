//! HTTP callouts (`proxy_http_call`): the request a guest asks for, the response delivered back,
//! and the dispatcher seam the data plane implements to actually send them.
//!
//! The runtime never does I/O. When a guest calls `proxy_http_call`, the VM hands a
//! [`CalloutRequest`] and a [`CalloutCompletion`] to its [`CalloutDispatcher`]; the dispatcher sends
//! the request (on the same worker) and later calls [`CalloutCompletion::complete`], which runs
//! `proxy_on_http_call_response` in the guest.

use std::rc::Weak;
use std::time::Duration;

use crate::grpc_callout::{GrpcCallControl, GrpcCallRequest, GrpcEvents};
use crate::header_map::HeaderMap;
use crate::vm::PluginVm;

/// A callout as the guest asked for it. Headers include `:method`, `:path` and `:authority`.
#[derive(Clone, Debug)]
pub struct CalloutRequest {
    /// The token the guest got back; the response is matched to it.
    pub token: u32,
    /// The cluster to send to.
    pub cluster: String,
    /// Request headers including pseudo-headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: HeaderMap,
    /// Timeout; `None` = no timeout (the guest passed 0).
    pub timeout: Option<Duration>,
}

/// A callout's answer.
#[derive(Clone, Debug, Default)]
pub struct CalloutResponse {
    /// Response headers including `:status`.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: HeaderMap,
}

/// Why a callout produced no response. The guest sees zero headers (Envoy's convention) and
/// `proxy_get_status` returns the reason.
#[derive(Clone, Debug)]
pub struct CalloutFailure {
    /// Short reason, e.g. `reset`, `timeout`, `connection refused`.
    pub reason: String,
}

/// Why a dispatcher refused a callout up front (the guest sees `BAD_ARGUMENT`).
#[derive(Clone, Debug)]
pub enum DispatchError {
    /// No cluster by that name.
    UnknownCluster(String),
    /// The cluster exists but cannot carry this callout (e.g. gRPC to a cluster without
    /// HTTP/2); the reason is logged for the filter's operator.
    Refused(String),
}

/// Sends callouts for a VM. Implemented by the data plane (pooled clients per cluster).
pub trait CalloutDispatcher {
    /// True if `cluster` exists (checked before a token is handed out).
    fn has_cluster(&self, cluster: &str) -> bool;
    /// Starts sending `request`; must not call back into the VM before returning.
    fn dispatch(&self, request: CalloutRequest, completion: CalloutCompletion) -> Result<(), DispatchError>;

    /// Starts a gRPC call or stream; must not call back into the VM before returning. The
    /// returned control is how the guest sends, half-closes and cancels; dropping it cancels.
    /// A host without gRPC refuses every call.
    fn dispatch_grpc(
        &self,
        request: GrpcCallRequest,
        _events: GrpcEvents,
    ) -> Result<Box<dyn GrpcCallControl>, DispatchError> {
        Err(DispatchError::Refused(format!("this host sends no gRPC callouts (cluster `{}`)", request.cluster)))
    }
}

/// A dispatcher for a host without clusters: every callout is refused as an unknown cluster.
pub struct NoClusters;

impl CalloutDispatcher for NoClusters {
    fn has_cluster(&self, _cluster: &str) -> bool {
        false
    }

    fn dispatch(&self, request: CalloutRequest, _completion: CalloutCompletion) -> Result<(), DispatchError> {
        Err(DispatchError::UnknownCluster(request.cluster))
    }
}

/// The way back into the VM for one callout.
pub struct CalloutCompletion {
    pub(crate) vm: Weak<PluginVm>,
    pub(crate) token: u32,
}

impl CalloutCompletion {
    /// The token of the callout.
    pub fn token(&self) -> u32 {
        self.token
    }

    /// Delivers the outcome: runs `proxy_on_http_call_response` in the guest. A VM that has
    /// been dropped or has failed meanwhile ignores it.
    pub fn complete(self, outcome: Result<CalloutResponse, CalloutFailure>) {
        if let Some(vm) = self.vm.upgrade() {
            vm.deliver_callout(self.token, outcome);
        }
    }
}
