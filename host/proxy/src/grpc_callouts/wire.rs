//! gRPC on the wire: the length-prefixed message frame both ways (a received body split into
//! messages within the VM's budget), `grpc-timeout` and `grpc-message`.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use super::{Ending, MAX_GRPC_MESSAGE, MAX_STATUS_MESSAGE, status};
use wasmtrace_runtime::GrpcBudget;

/// `grpc-timeout` for `limit`: at most eight digits, in milliseconds or, beyond, seconds.
pub(super) fn grpc_timeout(limit: Duration) -> String {
    let millis = limit.as_millis();
    if millis < 100_000_000 { format!("{millis}m") } else { format!("{}S", limit.as_secs().min(99_999_999)) }
}

/// One message with the gRPC length prefix (uncompressed).
pub(super) fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(message);
    framed.freeze()
}

/// `grpc-message` is percent-encoded UTF-8; what is not valid comes out lossily, cut at a
/// character boundary.
pub(super) fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    let hex = |b: u8| char::from(b).to_digit(16);
    while let Some((&first, tail)) = rest.split_first() {
        match (first, tail) {
            (b'%', [high, low, more @ ..]) if hex(*high).is_some() && hex(*low).is_some() => {
                out.push((hex(*high).unwrap_or(0) * 16 + hex(*low).unwrap_or(0)) as u8);
                rest = more;
            }
            _ => {
                out.push(first);
                rest = tail;
            }
        }
    }
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if text.len() > MAX_STATUS_MESSAGE {
        let mut end = MAX_STATUS_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Splits a response body into messages; what it holds is charged to the VM's budget.
pub(super) struct MessageDecoder {
    buffer: BytesMut,
    budget: GrpcBudget,
}

impl MessageDecoder {
    pub(super) fn new(budget: GrpcBudget) -> Self {
        Self { buffer: BytesMut::new(), budget }
    }

    /// Takes received bytes, if the budget has room for them.
    pub(super) fn push(&mut self, data: &[u8]) -> Result<(), Ending> {
        if !self.budget.charge(data.len()) {
            return Err(Ending::Error(
                status::RESOURCE_EXHAUSTED,
                format!("the VM's gRPC calls already hold {} bytes", self.budget.used()),
            ));
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    /// The next whole message, or how a malformed one ends the call.
    pub(super) fn next(&mut self) -> Option<Result<Vec<u8>, Ending>> {
        let header: [u8; 5] = self.buffer.get(..5)?.try_into().ok()?;
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        // Envoy refuses any flag on a non-empty message: no compression was offered.
        if length > 0 && header[0] != 0 {
            let why = format!("a message with flags {:#04x}, though no compression was offered", header[0]);
            return Some(Err(Ending::Error(status::INTERNAL, why)));
        }
        if length > MAX_GRPC_MESSAGE {
            let why = format!("a message of {length} bytes; the most delivered is {MAX_GRPC_MESSAGE}");
            return Some(Err(Ending::Error(status::RESOURCE_EXHAUSTED, why)));
        }
        if self.buffer.len() < 5 + length {
            return None;
        }
        self.buffer.advance(5);
        let message = self.buffer.split_to(length).to_vec();
        self.budget.release(5 + length);
        Some(Ok(message))
    }
}

impl Drop for MessageDecoder {
    fn drop(&mut self) {
        self.budget.release(self.buffer.len());
    }
}
