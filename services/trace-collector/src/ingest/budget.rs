//! The running count a scan of undecoded bytes keeps: spans seen and the heap memory decoding
//! them will take. The scan stops at the first limit crossed, so an oversized request costs one
//! partial pass over its bytes and no allocation.

use super::IngestError;

/// Spans and estimated decoded bytes so far, against their limits.
#[derive(Debug)]
pub(crate) struct Budget {
    spans: usize,
    bytes: usize,
    max_spans: usize,
    max_bytes: usize,
}

impl Budget {
    /// An empty count against `max_spans` spans and `max_bytes` decoded bytes.
    pub(crate) fn new(max_spans: usize, max_bytes: usize) -> Self {
        Self { spans: 0, bytes: 0, max_spans, max_bytes }
    }

    /// One more span.
    pub(crate) fn span(&mut self) -> Result<(), IngestError> {
        self.spans += 1;
        if self.spans > self.max_spans {
            return Err(IngestError::TooManySpans { max: self.max_spans });
        }
        Ok(())
    }

    /// `bytes` more of decoded heap.
    pub(crate) fn charge(&mut self, bytes: usize) -> Result<(), IngestError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.max_bytes {
            return Err(IngestError::DecodesTooLarge { max: self.max_bytes });
        }
        Ok(())
    }

    /// Spans counted.
    pub(crate) fn spans(&self) -> usize {
        self.spans
    }

    /// Decoded bytes estimated.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}
