//! Every callback the host makes into a guest, named once: the proxy-wasm export, the
//! `wasmtrace:filter` world's export, and which deadline a call of it runs under.
//!
//! Failure reports, logs and the `wasmtrace_wasm_callback_failures_total` metric name a callback
//! by [`Callback::name`] (its proxy-wasm name) whatever the module's form, so one failure has one
//! name; [`Callback::wit_name`] is the export a component implements.

use std::fmt;
use std::time::Duration;

use crate::plugin::VmLimits;

/// Which of a plugin's deadlines a callback runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// Start-up steps (WASI entry points, the root context's creation, `proxy_on_vm_start`,
    /// `proxy_on_configure`): [`VmLimits::start_deadline`].
    StartUp,
    /// Everything after start-up: [`VmLimits::callback_deadline`].
    Callback,
}

impl Deadline {
    /// The duration this deadline has under `limits`.
    pub fn of(self, limits: &VmLimits) -> Duration {
        match self {
            Self::StartUp => limits.start_deadline,
            Self::Callback => limits.callback_deadline,
        }
    }
}

/// One callback into a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Callback {
    /// A WASI reactor's `_initialize`.
    WasiInitialize,
    /// A reactor's `main(0, 0)`.
    WasiMain,
    /// A reactor's `__main_void` (what a Rust `bin` built as a reactor exports instead of `main`).
    WasiMainVoid,
    /// A WASI command's `_start`.
    WasiStart,
    /// `proxy_on_context_create` for the root context, at start-up.
    RootContextCreate,
    /// `proxy_on_vm_start`.
    VmStart,
    /// `proxy_on_configure` (a component's `configure`, which covers both start-up calls).
    Configure,
    /// `proxy_on_context_create` for a stream.
    StreamContextCreate,
    /// `proxy_on_request_headers`.
    RequestHeaders,
    /// `proxy_on_request_body`.
    RequestBody,
    /// `proxy_on_request_trailers`.
    RequestTrailers,
    /// `proxy_on_response_headers`.
    ResponseHeaders,
    /// `proxy_on_response_body`.
    ResponseBody,
    /// `proxy_on_response_trailers`.
    ResponseTrailers,
    /// `proxy_on_log` (a component's `on-stream-done`).
    Log,
    /// `proxy_on_done`, for a stream or the root context (a component's `on-shutdown` for the root).
    Done,
    /// `proxy_on_delete` (a component's `on-stream-done` for a stream it has not heard end).
    Delete,
    /// `proxy_on_tick`.
    Tick,
    /// `proxy_on_http_call_response`.
    HttpCallResponse,
    /// `proxy_on_queue_ready`.
    QueueReady,
    /// `proxy_on_grpc_receive_initial_metadata`.
    GrpcInitialMetadata,
    /// `proxy_on_grpc_receive`.
    GrpcMessage,
    /// `proxy_on_grpc_receive_trailing_metadata`.
    GrpcTrailingMetadata,
    /// `proxy_on_grpc_close`.
    GrpcClose,
}

impl Callback {
    /// The name reports and metrics use: the proxy-wasm export (or WASI entry point).
    pub fn name(self) -> &'static str {
        match self {
            Self::WasiInitialize => "_initialize",
            Self::WasiMain => "main",
            Self::WasiMainVoid => "__main_void",
            Self::WasiStart => "_start",
            Self::RootContextCreate | Self::StreamContextCreate => "proxy_on_context_create",
            Self::VmStart => "proxy_on_vm_start",
            Self::Configure => "proxy_on_configure",
            Self::RequestHeaders => "proxy_on_request_headers",
            Self::RequestBody => "proxy_on_request_body",
            Self::RequestTrailers => "proxy_on_request_trailers",
            Self::ResponseHeaders => "proxy_on_response_headers",
            Self::ResponseBody => "proxy_on_response_body",
            Self::ResponseTrailers => "proxy_on_response_trailers",
            Self::Log => "proxy_on_log",
            Self::Done => "proxy_on_done",
            Self::Delete => "proxy_on_delete",
            Self::Tick => "proxy_on_tick",
            Self::HttpCallResponse => "proxy_on_http_call_response",
            Self::QueueReady => "proxy_on_queue_ready",
            Self::GrpcInitialMetadata => "proxy_on_grpc_receive_initial_metadata",
            Self::GrpcMessage => "proxy_on_grpc_receive",
            Self::GrpcTrailingMetadata => "proxy_on_grpc_receive_trailing_metadata",
            Self::GrpcClose => "proxy_on_grpc_close",
        }
    }

    /// The `wasmtrace:filter` export this callback calls in a component, if the world has one.
    pub fn wit_name(self) -> Option<&'static str> {
        Some(match self {
            Self::VmStart | Self::Configure => "configure",
            Self::RequestHeaders => "on-request-headers",
            Self::RequestBody => "on-request-body",
            Self::RequestTrailers => "on-request-trailers",
            Self::ResponseHeaders => "on-response-headers",
            Self::ResponseBody => "on-response-body",
            Self::ResponseTrailers => "on-response-trailers",
            Self::Log | Self::Delete => "on-stream-done",
            Self::Done => "on-shutdown",
            Self::Tick => "on-tick",
            Self::HttpCallResponse => "on-callout-response",
            Self::QueueReady => "on-queue-ready",
            Self::WasiInitialize
            | Self::WasiMain
            | Self::WasiMainVoid
            | Self::WasiStart
            | Self::RootContextCreate
            | Self::StreamContextCreate
            | Self::GrpcInitialMetadata
            | Self::GrpcMessage
            | Self::GrpcTrailingMetadata
            | Self::GrpcClose => return None,
        })
    }

    /// The deadline a call of this callback is armed with.
    pub fn deadline(self) -> Deadline {
        match self {
            Self::WasiInitialize
            | Self::WasiMain
            | Self::WasiMainVoid
            | Self::WasiStart
            | Self::RootContextCreate
            | Self::VmStart
            | Self::Configure => Deadline::StartUp,
            _ => Deadline::Callback,
        }
    }
}

impl fmt::Display for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq<&str> for Callback {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_start_up_steps_run_under_the_start_deadline() {
        let limits = VmLimits {
            start_deadline: Duration::from_secs(5),
            callback_deadline: Duration::from_millis(100),
            ..VmLimits::default()
        };
        assert_eq!(Callback::RootContextCreate.deadline().of(&limits), Duration::from_secs(5));
        assert_eq!(Callback::StreamContextCreate.deadline().of(&limits), Duration::from_millis(100));
        // The same export name, two deadlines: the name alone cannot tell them apart.
        assert_eq!(Callback::RootContextCreate.name(), Callback::StreamContextCreate.name());
        assert_eq!(Callback::Configure.deadline(), Deadline::StartUp);
        assert_eq!(Callback::RequestHeaders.deadline(), Deadline::Callback);
    }
}
