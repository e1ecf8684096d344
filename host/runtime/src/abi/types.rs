//! The numeric enums of proxy-wasm ABI v0.2.1, with the spec's numbers (gaps kept).
//!
//! Only the status codes a guest built with the Rust SDK 0.2.x accepts from each call may be
//! returned to it; anything else panics the guest. The call sites say which ones they use.

/// `proxy_status_t`: the result of every `proxy_*` host function.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The thing asked for does not exist.
    NotFound = 1,
    /// An argument is invalid.
    BadArgument = 2,
    /// A value could not be serialised.
    SerializationFailure = 3,
    /// A value could not be parsed.
    ParseFailure = 4,
    /// A guest pointer is outside its memory (we trap instead; kept for completeness).
    InvalidMemoryAccess = 6,
    /// A queue is empty.
    Empty = 7,
    /// A compare-and-swap on shared data lost the race.
    CasMismatch = 8,
    /// The host failed.
    InternalFailure = 10,
    /// The host does not implement this call.
    Unimplemented = 12,
}

impl Status {
    /// The value the guest sees.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// `proxy_log_level_t`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Finest detail.
    Trace = 0,
    /// Debugging.
    Debug = 1,
    /// Normal operation.
    Info = 2,
    /// Something unexpected.
    Warn = 3,
    /// A failure.
    Error = 4,
    /// A failure that stops the plugin.
    Critical = 5,
}

impl LogLevel {
    /// Decodes a guest-supplied level; `None` for numbers outside the enum.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

/// `proxy_map_type_t`: which header map a call addresses.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    /// Request headers of the current stream.
    HttpRequestHeaders = 0,
    /// Request trailers of the current stream.
    HttpRequestTrailers = 1,
    /// Response headers of the current stream.
    HttpResponseHeaders = 2,
    /// Response trailers of the current stream.
    HttpResponseTrailers = 3,
    /// Initial metadata of the gRPC stream being delivered.
    GrpcReceiveInitialMetadata = 4,
    /// Trailing metadata of the gRPC stream being delivered.
    GrpcReceiveTrailingMetadata = 5,
    /// Headers of the HTTP callout response being delivered.
    HttpCallResponseHeaders = 6,
    /// Trailers of the HTTP callout response being delivered.
    HttpCallResponseTrailers = 7,
}

impl MapType {
    /// Decodes a guest-supplied map type.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequestHeaders,
            1 => Self::HttpRequestTrailers,
            2 => Self::HttpResponseHeaders,
            3 => Self::HttpResponseTrailers,
            4 => Self::GrpcReceiveInitialMetadata,
            5 => Self::GrpcReceiveTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_buffer_type_t`: which byte buffer a call addresses.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferType {
    /// The request body (chunk or buffered body) of the current stream.
    HttpRequestBody = 0,
    /// The response body of the current stream.
    HttpResponseBody = 1,
    /// TCP downstream data (HTTP-only host: never available).
    DownstreamData = 2,
    /// TCP upstream data (HTTP-only host: never available).
    UpstreamData = 3,
    /// Body of the HTTP callout response being delivered.
    HttpCallResponseBody = 4,
    /// The gRPC message being delivered.
    GrpcReceiveBuffer = 5,
    /// The VM configuration (`vm_config.configuration`).
    VmConfiguration = 6,
    /// The plugin configuration (`configuration`).
    PluginConfiguration = 7,
    /// Arguments of a foreign function call.
    CallData = 8,
}

impl BufferType {
    /// Decodes a guest-supplied buffer type.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcReceiveBuffer,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }
}

/// `proxy_stream_type_t`: which direction `proxy_continue_stream`/`proxy_close_stream` address.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamType {
    /// The HTTP request direction.
    HttpRequest = 0,
    /// The HTTP response direction.
    HttpResponse = 1,
    /// TCP downstream.
    Downstream = 2,
    /// TCP upstream.
    Upstream = 3,
}

impl StreamType {
    /// Decodes a guest-supplied stream type.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequest,
            1 => Self::HttpResponse,
            2 => Self::Downstream,
            3 => Self::Upstream,
            _ => return None,
        })
    }
}

/// `proxy_metric_type_t`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// Monotonic counter.
    Counter = 0,
    /// Value that goes up and down.
    Gauge = 1,
    /// Distribution of recorded values.
    Histogram = 2,
}

impl MetricType {
    /// Decodes a guest-supplied metric type.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// `proxy_action_t` as returned by the stream callbacks.
pub mod action {
    /// Go on to the next filter.
    pub const CONTINUE: i32 = 0;
    /// Stop iteration (headers: stop everything until resumed; body: buffer).
    pub const PAUSE: i32 = 1;
}
