//! A filter that makes gRPC callouts with the proxy-wasm Rust SDK and answers with what came
//! back, for the wasmtrace host's gRPC tests. The request header `x-grpc` picks what it does:
//!
//! - `unary`: `dispatch_grpc_call` to `x-grpc-method` (default `Echo`) with `x-grpc-message`
//!   and `x-grpc-timeout-ms` (default 5000); answers with `x-grpc-status`, `x-grpc-message` and
//!   the response message as the body.
//! - `stream`: `open_grpc_stream` to `x-grpc-method` (default `Chat`) and a ping-pong over the
//!   comma-separated `x-grpc-message`: each message goes out after the answer to the one before,
//!   then the stream is half-closed; answers with one line per event at the stream's close.
//! - `cancel-unary`: starts a `Slow` call and an `Echo` call; when the echo answers (so the
//!   slow call is at the server), cancels the slow one, then waits on a second `Slow` call that
//!   outlives it; answers with `x-late-callbacks`, the callbacks that arrived for the cancelled
//!   call (none, in Envoy).
//! - `cancel-stream`: the same with a `Chat` stream, cancelled when its first answer arrives.
//! - `stream-hangup`: a `Hangup` stream, which the server ends after its first answer; from the
//!   close callback the filter sends once more and closes its side (both `OK` in Envoy: the SDK
//!   unwraps them), then answers as `stream` does.
//! - `abandon`: opens a `Chat` stream, sends one message and, once its answer shows the server
//!   holds the stream, lets the request go on upstream without closing the stream: the request's
//!   end must reset it.
//!
//! A status message goes into `x-grpc-message` escaped (`\u{..}` for non-ASCII).
//!
//! The cluster is `x-grpc-cluster` (default `grpc`); the service is `wasmtrace.test.Echo`.
//! Every call sends the metadata `x-test-metadata: from-filter`.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CallerRoot) });
}}

const SERVICE: &str = "wasmtrace.test.Echo";
const METADATA: (&str, &[u8]) = ("x-test-metadata", b"from-filter");

struct CallerRoot;

impl Context for CallerRoot {}

impl RootContext for CallerRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Caller::default()))
    }
}

#[derive(Default)]
struct Caller {
    /// The call whose answer triggers the cancellation (`cancel-unary`), and the one cancelled.
    cancel_when_answered: Option<(u32, u32)>,
    /// A `cancel-stream` stream, cancelled at its first message.
    cancel_at_first_message: Option<u32>,
    /// `stream-hangup`: the server ends the stream; the filter neither sends nor closes first.
    wait_for_server: bool,
    /// `abandon`: the stream whose first answer resumes the request (and is then left open).
    abandon: Option<u32>,
    /// Messages still to send on the stream, in order.
    outbox: Vec<String>,
    /// One line per event, the body of the answer.
    lines: Vec<String>,
    /// The call or stream cancelled before the timer call started.
    cancelled: Option<u32>,
    late_callbacks: u32,
}

impl Caller {
    fn header(&self, name: &str, default: &str) -> String {
        self.get_http_request_header(name).unwrap_or_else(|| default.to_owned())
    }

    fn answer(&self, status: u32, message: &str, body: &[u8]) {
        let status = status.to_string();
        let late = self.late_callbacks.to_string();
        let message = message.escape_default().to_string();
        let headers =
            vec![("x-grpc-status", status.as_str()), ("x-grpc-message", message.as_str()), ("x-late-callbacks", &late)];
        self.send_http_response(200, headers, Some(body));
    }

    fn refuse(&self, what: &str, status: proxy_wasm::types::Status) -> Action {
        self.send_http_response(503, vec![], Some(format!("{what} refused: {status:?}").as_bytes()));
        Action::Pause
    }

    /// A callback for the cancelled call: counted, and otherwise ignored.
    fn is_late(&mut self, token: u32) -> bool {
        let late = self.cancelled == Some(token);
        if late {
            self.late_callbacks += 1;
            proxy_wasm::hostcalls::log(LogLevel::Error, &format!("a callback for cancelled call {token}")).ok();
        }
        late
    }

    /// Cancels `token`, then waits on a `Slow` call that outlives it before answering.
    fn cancel_then_wait(&mut self, token: u32, stream: bool) {
        if stream {
            self.cancel_grpc_stream(token);
        } else {
            self.cancel_grpc_call(token);
        }
        self.cancelled = Some(token);
        let cluster = self.header("x-grpc-cluster", "grpc");
        let timer =
            self.dispatch_grpc_call(&cluster, SERVICE, "Slow", vec![METADATA], Some(b"timer"), Duration::from_secs(5));
        if let Err(status) = timer {
            self.refuse("the timer call", status);
        }
    }
}

impl Context for Caller {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if self.is_late(token) {
            return;
        }
        if let Some((probe, doomed)) = self.cancel_when_answered
            && probe == token
        {
            self.cancel_when_answered = None;
            self.cancel_then_wait(doomed, false);
            return;
        }
        let body = self.get_grpc_call_response_body(0, size).unwrap_or_default();
        let (_, message) = self.get_grpc_status();
        self.answer(status, &message.unwrap_or_default(), &body);
    }

    fn on_grpc_stream_initial_metadata(&mut self, token: u32, count: u32) {
        if self.is_late(token) {
            return;
        }
        let initial = self.get_grpc_stream_initial_metadata_value("x-echo-initial").unwrap_or_default();
        self.lines.push(format!("initial ({count}): {}", String::from_utf8_lossy(&initial)));
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        if self.is_late(token) {
            return;
        }
        if self.cancel_at_first_message.take() == Some(token) {
            self.cancel_then_wait(token, true);
            return;
        }
        if self.abandon.take() == Some(token) {
            self.resume_http_request();
            return;
        }
        let message = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.lines.push(format!("message: {}", String::from_utf8_lossy(&message)));
        if self.wait_for_server {
            return;
        }
        if self.outbox.is_empty() {
            self.close_grpc_stream(token);
        } else {
            let next = self.outbox.remove(0);
            self.send_grpc_stream_message(token, Some(next.as_bytes()), false);
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, token: u32, count: u32) {
        if self.is_late(token) {
            return;
        }
        let trailing = self.get_grpc_stream_trailing_metadata_value("x-echo-trailing").unwrap_or_default();
        self.lines.push(format!("trailing ({count}): {}", String::from_utf8_lossy(&trailing)));
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        if self.is_late(token) {
            return;
        }
        let (_, message) = self.get_grpc_status();
        let message = message.unwrap_or_default();
        self.lines.push(format!("close: {status} {message}"));
        if self.wait_for_server {
            // The server is done; our side is not: both calls answer OK, as in Envoy.
            self.send_grpc_stream_message(token, Some(b"after the close"), false);
            self.close_grpc_stream(token);
            self.lines.push("closed our side".into());
        }
        let body = self.lines.join("\n");
        self.answer(status, &message, body.as_bytes());
    }
}

impl HttpContext for Caller {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(mode) = self.get_http_request_header("x-grpc") else {
            return Action::Continue;
        };
        let cluster = self.header("x-grpc-cluster", "grpc");
        let message = self.header("x-grpc-message", "");
        match mode.as_str() {
            "unary" => {
                let method = self.header("x-grpc-method", "Echo");
                let timeout = self.header("x-grpc-timeout-ms", "5000").parse().unwrap_or(5000);
                let call = self.dispatch_grpc_call(
                    &cluster,
                    SERVICE,
                    &method,
                    vec![METADATA],
                    Some(message.as_bytes()),
                    Duration::from_millis(timeout),
                );
                match call {
                    Ok(_) => Action::Pause,
                    Err(status) => self.refuse("the call", status),
                }
            }
            "stream" | "stream-hangup" => {
                self.wait_for_server = mode == "stream-hangup";
                let default = if self.wait_for_server { "Hangup" } else { "Chat" };
                let method = self.header("x-grpc-method", default);
                self.outbox = message.split(',').map(str::to_owned).collect();
                match self.open_grpc_stream(&cluster, SERVICE, &method, vec![METADATA]) {
                    Ok(token) => {
                        let first = self.outbox.remove(0);
                        self.send_grpc_stream_message(token, Some(first.as_bytes()), false);
                        Action::Pause
                    }
                    Err(status) => self.refuse("the stream", status),
                }
            }
            "cancel-unary" => {
                let slow = |this: &Self, message: &[u8], method: &str| {
                    this.dispatch_grpc_call(
                        &cluster,
                        SERVICE,
                        method,
                        vec![METADATA],
                        Some(message),
                        Duration::from_secs(5),
                    )
                };
                match slow(self, b"doomed", "Slow").and_then(|doomed| Ok((slow(self, b"probe", "Echo")?, doomed))) {
                    Ok(pair) => {
                        self.cancel_when_answered = Some(pair);
                        Action::Pause
                    }
                    Err(status) => self.refuse("the call", status),
                }
            }
            "cancel-stream" => match self.open_grpc_stream(&cluster, SERVICE, "Chat", vec![METADATA]) {
                Ok(token) => {
                    self.send_grpc_stream_message(token, Some(b"doomed"), false);
                    self.cancel_at_first_message = Some(token);
                    Action::Pause
                }
                Err(status) => self.refuse("the stream", status),
            },
            "abandon" => match self.open_grpc_stream(&cluster, SERVICE, "Chat", vec![METADATA]) {
                Ok(token) => {
                    self.send_grpc_stream_message(token, Some(b"held"), false);
                    self.abandon = Some(token);
                    Action::Pause
                }
                Err(status) => self.refuse("the stream", status),
            },
            _ => Action::Continue,
        }
    }
}
