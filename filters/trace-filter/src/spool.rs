//! The span spool: finished spans wait for export outside the VM's memory, in a shared queue the
//! host keeps per `vm_id` (proxy-wasm's `proxy_{register,enqueue,dequeue}_shared_queue`, the
//! world's `register-queue`/`enqueue`/`dequeue`). A VM that traps is re-created with empty
//! memory; the queue, and the spans in it, are still there for the new VM (and for the other
//! workers' VMs of the plugin, which share it) to export.
//!
//! Each item is one span already encoded for the configured export format, so a drain wraps
//! the items into a request body without decoding them. The queue's name carries the encoding's
//! version and a hash of the plugin configuration: only VMs that would encode and export a span
//! the same way (same resource, format and collector) share a queue, so two trace filters with
//! different services under one `vm_id`, or two generations of a hot swap, never mix spans.
//!
//! The bound (`max_queued_spans`) is a count in shared data, kept with few host calls on the
//! request path: each VM counts what it enqueued and dequeued since it last folded that into
//! the shared count with a compare-and-swap, which it does at every tick, after every drain, and
//! every [`Spool::fold_step`] spans it adds. The bound is therefore approximate: it can be passed
//! by up to a fold step of spans per worker, and a VM that dies takes its unfolded count with
//! it. A drain that finds the queue empty resets the count to zero, so such errors never add up.
//! Folding within a tick matters as much for the export as for the bound: the VM the host tells
//! that spans arrived decides from the count whether a batch is waiting.

use wasmtrace_trace_core::span::{Resource, Span};
use wasmtrace_trace_core::{otlp, zipkin};

use crate::config::ExportFormat;

/// Version of the items' encoding, in the queue's name: VMs that encode spans differently (an
/// older or newer build during a hot swap) never share a queue.
const ITEM_VERSION: u32 = 1;
/// Compare-and-swap attempts at the shared count before the fold waits for the next tick.
const CAS_ATTEMPTS: usize = 4;

/// The host calls the spool stands on: shared queues and shared data, both kept by the host per
/// `vm_id` across VM re-creation.
pub trait SpoolHost {
    /// Registers (or finds) this VM's queue `name`; `None` if the host refuses.
    fn register_queue(&self, name: &str) -> Option<u32>;
    /// Appends an item; false if the queue is gone.
    fn enqueue(&self, queue: u32, item: &[u8]) -> bool;
    /// Takes the oldest item; `None` when the queue is empty (or gone).
    fn dequeue(&self, queue: u32) -> Option<Vec<u8>>;
    /// A shared-data value and its compare-and-swap token.
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes shared data; with `cas`, only if nobody wrote since that token was read. False
    /// when the write was refused.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// Why a span did not go into the spool.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The spool holds `max_queued_spans` already.
    Full,
    /// The host no longer knows the queue.
    Gone,
}

/// What a drain took from the spool.
#[derive(Debug, Default)]
pub struct Taken {
    /// Items that are spans in the configured encoding.
    pub items: Vec<Vec<u8>>,
    /// Items that were not (written by something else that knows the queue's name): dropped.
    pub malformed: usize,
    /// The queue ran empty before the limit.
    pub empty: bool,
}

/// This VM's handle on the shared span queue and its count.
#[derive(Debug)]
pub struct Spool {
    queue: u32,
    count_key: String,
    retry_key: String,
    max: usize,
    /// Spans this VM adds between two folds at most.
    fold_step: i64,
    /// Spans added since the push that last folded.
    unfolded_pushes: i64,
    /// The shared count as this VM last read or wrote it.
    synced: i64,
    /// This VM's enqueues (+) and dequeues (−) since then.
    delta: i64,
    /// A drain found the queue empty since the last fold.
    saw_empty: bool,
}

/// FNV-1a: a stable name for a configuration (not a secret; any VM of the `vm_id` may read the
/// queue anyway).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn read_i64(bytes: &[u8]) -> i64 {
    <[u8; 8]>::try_from(bytes).map(i64::from_le_bytes).unwrap_or(0)
}

impl Spool {
    /// Opens (registering) the queue for spans of plugin configuration `configuration`, holding
    /// at most `max` spans exported in batches of `batch`. `None` if the host has no queue for it.
    pub fn open(host: &dyn SpoolHost, configuration: &[u8], max: usize, batch: usize) -> Option<Self> {
        let base = format!("wasmtrace.trace.spans.v{ITEM_VERSION}.{:016x}", fnv1a(configuration));
        let queue = host.register_queue(&base)?;
        let mut spool = Self {
            queue,
            count_key: format!("{base}.queued"),
            retry_key: format!("{base}.retry_at"),
            max,
            fold_step: Self::fold_step(max, batch),
            unfolded_pushes: 0,
            synced: 0,
            delta: 0,
            saw_empty: false,
        };
        spool.fold(host);
        Some(spool)
    }

    /// How many spans a VM adds before it folds its count: an eighth of the bound, so that a few
    /// workers together pass it by little, and at most a batch, so that the VM that hears of
    /// new spans sees a batch in the count soon after it is in the queue.
    pub fn fold_step(max: usize, batch: usize) -> i64 {
        i64::try_from((max / 8).clamp(1, batch.max(1))).unwrap_or(i64::MAX)
    }

    /// The host's id of the queue.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Spans in the spool, as far as this VM knows.
    pub fn queued(&self) -> usize {
        usize::try_from(self.synced.saturating_add(self.delta)).unwrap_or(0)
    }

    /// Adds a span (encoded with [`encode`]).
    pub fn push(&mut self, host: &dyn SpoolHost, item: &[u8]) -> Result<(), Refused> {
        if self.queued() >= self.max {
            // This VM's view of the count may be a tick old while other VMs drained the queue:
            // look again (two host calls, only when the spool seems full) before refusing.
            self.fold(host);
            if self.queued() >= self.max {
                return Err(Refused::Full);
            }
        }
        if !host.enqueue(self.queue, item) {
            return Err(Refused::Gone);
        }
        self.delta += 1;
        self.unfolded_pushes += 1;
        if self.unfolded_pushes >= self.fold_step {
            // Counted by pushes, not by `delta`: a fold that lost every compare-and-swap to
            // other workers leaves `delta` as it was, and is tried again a fold step later, not
            // on every push while the contention lasts.
            self.unfolded_pushes = 0;
            self.fold(host);
        }
        Ok(())
    }

    /// Takes up to `limit` spans in `format`, oldest first.
    pub fn take(&mut self, host: &dyn SpoolHost, limit: usize, format: ExportFormat) -> Taken {
        let mut taken = Taken::default();
        while taken.items.len() < limit {
            let Some(item) = host.dequeue(self.queue) else {
                taken.empty = true;
                self.saw_empty = true;
                break;
            };
            self.delta -= 1;
            if is_item(format, &item) {
                taken.items.push(item);
            } else {
                taken.malformed += 1;
            }
        }
        taken
    }

    /// Folds this VM's count into the shared one and reads what the other VMs folded in.
    pub fn fold(&mut self, host: &dyn SpoolHost) {
        for _ in 0..CAS_ATTEMPTS {
            let (shared, cas) = match host.shared_data(&self.count_key) {
                Some((bytes, cas)) => (read_i64(&bytes), Some(cas)),
                None => (0, None),
            };
            if self.delta == 0 && !self.saw_empty {
                self.synced = shared;
                return;
            }
            // Empty means zero, whatever the count says (see the module's note on the bound).
            let next = if self.saw_empty { 0 } else { shared.saturating_add(self.delta) };
            if host.set_shared_data(&self.count_key, &next.to_le_bytes(), cas) {
                (self.synced, self.delta, self.saw_empty) = (next, 0, false);
                return;
            }
        }
    }

    /// When the collector last asked every VM of the spool to wait until (ns since the epoch).
    pub fn retry_at(&self, host: &dyn SpoolHost) -> Option<u64> {
        let (bytes, _) = host.shared_data(&self.retry_key)?;
        u64::try_from(read_i64(&bytes)).ok().filter(|at| *at > 0)
    }

    /// Asks every VM of the spool to wait with exports until `at` (ns since the epoch).
    pub fn set_retry_at(&self, host: &dyn SpoolHost, at: u64) {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        let _ = host.set_shared_data(&self.retry_key, &at.to_le_bytes(), None);
    }
}

/// Whether `item` is a span in `format`: anything else that knows the queue's name can write to
/// it, and one bad item must not make the collector refuse a whole request.
fn is_item(format: ExportFormat, item: &[u8]) -> bool {
    match format {
        ExportFormat::OtlpProto | ExportFormat::OtlpGrpc => otlp::is_protobuf_span(item),
        ExportFormat::OtlpJson => otlp::is_json_span(item),
        ExportFormat::ZipkinJson => zipkin::is_span(item),
    }
}

/// A finished span as a spool item: encoded once, when it ends, for the configured format.
pub fn encode(format: ExportFormat, resource: &Resource, span: &Span) -> Vec<u8> {
    let mut item = Vec::new();
    encode_into(format, resource, span, &mut item);
    item
}

/// [`encode`] into `out` (cleared first): the item is copied into the queue by the host, so a
/// VM encodes every span into the same buffer.
pub fn encode_into(format: ExportFormat, resource: &Resource, span: &Span, out: &mut Vec<u8>) {
    out.clear();
    match format {
        ExportFormat::OtlpProto | ExportFormat::OtlpGrpc => otlp::encode_span_protobuf_into(span, out),
        ExportFormat::OtlpJson => out.extend_from_slice(&otlp::encode_span_json(span)),
        ExportFormat::ZipkinJson => out.extend_from_slice(&zipkin::encode_span(resource, span)),
    }
}

/// The export request body for items taken from the spool.
pub fn body(format: ExportFormat, resource: &Resource, items: &[Vec<u8>]) -> Vec<u8> {
    match format {
        // The gRPC message is the same ExportTraceServiceRequest as the OTLP/HTTP body.
        ExportFormat::OtlpProto | ExportFormat::OtlpGrpc => otlp::encode_protobuf_items(resource, items),
        ExportFormat::OtlpJson => otlp::encode_json_items(resource, items),
        ExportFormat::ZipkinJson => zipkin::encode_items(items),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::{HashMap, VecDeque};

    use super::*;

    /// The host's shared queue and shared data as the spool sees them, in memory, with a switch
    /// that makes every compare-and-swap lose (other workers writing the count all the time).
    #[derive(Default)]
    struct Host {
        items: RefCell<VecDeque<Vec<u8>>>,
        data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        writes: Cell<usize>,
        contended: Cell<bool>,
    }

    impl SpoolHost for Host {
        fn register_queue(&self, _name: &str) -> Option<u32> {
            Some(1)
        }
        fn enqueue(&self, _queue: u32, item: &[u8]) -> bool {
            self.items.borrow_mut().push_back(item.to_vec());
            true
        }
        fn dequeue(&self, _queue: u32) -> Option<Vec<u8>> {
            self.items.borrow_mut().pop_front()
        }
        fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.data.borrow().get(key).cloned()
        }
        fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            self.writes.set(self.writes.get() + 1);
            let mut data = self.data.borrow_mut();
            let current = data.get(key).map(|(_, cas)| *cas);
            if self.contended.get() || (cas.is_some() && cas != current) {
                return false;
            }
            data.insert(key.to_owned(), (value.to_vec(), current.unwrap_or(0) + 1));
            true
        }
    }

    fn shared_count(host: &Host, spool: &Spool) -> i64 {
        host.shared_data(&spool.count_key).map_or(0, |(bytes, _)| read_i64(&bytes))
    }

    #[test]
    fn pushes_are_folded_into_the_shared_count_every_fold_step() {
        let host = Host::default();
        let mut spool = Spool::open(&host, b"{}", 512, 128).expect("a queue");
        assert_eq!(Spool::fold_step(512, 128), 64, "an eighth of the bound");
        assert_eq!(Spool::fold_step(4096, 128), 128, "at most a batch");
        assert_eq!(Spool::fold_step(4, 128), 1, "at least one");
        for _ in 0..63 {
            spool.push(&host, b"span").expect("room");
        }
        assert_eq!(shared_count(&host, &spool), 0, "not yet folded");
        spool.push(&host, b"span").expect("room");
        assert_eq!(shared_count(&host, &spool), 64, "folded at the step: other VMs see a batch coming");
    }

    #[test]
    fn a_fold_that_loses_every_swap_is_retried_a_step_later_not_on_every_push() {
        let host = Host::default();
        let mut spool = Spool::open(&host, b"{}", 512, 128).expect("a queue");
        host.contended.set(true);
        for _ in 0..64 {
            spool.push(&host, b"span").expect("room");
        }
        let after_step = host.writes.get();
        assert!(after_step > 0, "the step tried to fold");
        for _ in 0..63 {
            spool.push(&host, b"span").expect("room");
        }
        assert_eq!(host.writes.get(), after_step, "no fold between two steps");
        host.contended.set(false);
        spool.push(&host, b"span").expect("room");
        assert_eq!(shared_count(&host, &spool), 128, "the next step folds all it held");
        assert_eq!(spool.queued(), 128);
    }
}
