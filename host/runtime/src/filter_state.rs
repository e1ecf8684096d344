//! Filter state: what `proxy_set_property` (and a component's `set-property`) leaves on a stream
//! for the stream's other filters and the data plane to read, kept in the host.
//!
//! Filter state lives outside every VM's memory cap, so what a guest may leave there is bounded,
//! and bounded **per writer**: each entry is charged to the plugin that wrote it last, and a
//! plugin may hold at most [`MAX_ENTRIES_PER_WRITER`] entries and [`MAX_BYTES_PER_WRITER`] bytes
//! on one stream, and [`MAX_BYTES_PER_PLUGIN`] bytes over all the streams it serves (every VM of
//! it, re-created ones included). No filter can use up another filter's room, so a hoarder in the
//! chain never makes the trace filter's next write fail. Charges are returned when an entry is
//! replaced or its stream ends; an entry is charged its key, its value and [`ENTRY_OVERHEAD`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Most entries one writer holds on one stream (or in its root context).
pub const MAX_ENTRIES_PER_WRITER: usize = 1024;

/// Most bytes (keys and values) one writer holds on one stream (or in its root context).
pub const MAX_BYTES_PER_WRITER: usize = 1 << 20;

/// Most bytes one plugin holds in filter state over all the streams it serves at once. Without
/// it, [`MAX_BYTES_PER_WRITER`] times the live streams (an HTTP/2 connection alone may carry 100)
/// would be unbounded.
pub const MAX_BYTES_PER_PLUGIN: usize = 64 << 20;

/// What a writer may always hold on one stream, whatever its plugin holds elsewhere
/// ([`MAX_BYTES_PER_PLUGIN`] does not refuse writes that stay within it).
pub const WRITER_FLOOR_PER_STREAM: usize = 4 << 10;

/// What an entry is charged beside its key and value (the map's node, the two allocations), so
/// that many tiny entries cannot hold far more host memory than the bounds say.
pub const ENTRY_OVERHEAD: usize = 128;

/// The filter state one plugin holds across the streams it serves: the bytes its entries take,
/// shared by those entries' charges.
#[derive(Debug, Default)]
pub struct FilterStateBudget {
    held: AtomicUsize,
    /// When a dropped write was last logged, in seconds on [`Self::may_log_drop`]'s clock.
    last_logged: AtomicU64,
}

/// Seconds between two log lines about dropped writes of one plugin.
const DROP_LOG_INTERVAL_SECS: u64 = 10;

impl FilterStateBudget {
    /// Bytes this writer's entries hold now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether a dropped write may be logged now: at most once every ten seconds per plugin, so
    /// a load that keeps the bound hit cannot flood the log.
    pub(crate) fn may_log_drop(&self) -> bool {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        // +1: the first drop is logged (0 means never).
        let now = START.get_or_init(std::time::Instant::now).elapsed().as_secs() + 1 + DROP_LOG_INTERVAL_SECS;
        let last = self.last_logged.load(Ordering::Relaxed);
        now - last >= DROP_LOG_INTERVAL_SECS
            && self.last_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// What one entry costs its writer, returned when the entry goes.
struct Charge {
    budget: Arc<FilterStateBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn charged(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

struct Entry {
    value: Vec<u8>,
    /// `None` for what the host itself set.
    charge: Option<Charge>,
}

impl Entry {
    fn written_by(&self, writer: &Arc<FilterStateBudget>) -> bool {
        self.charge.as_ref().is_some_and(|charge| Arc::ptr_eq(&charge.budget, writer))
    }
}

/// Why a write was refused: the writer would pass one of its own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStateFull {
    /// The writer holds [`MAX_ENTRIES_PER_WRITER`] entries here.
    Entries,
    /// The writer's entries here would pass [`MAX_BYTES_PER_WRITER`].
    Bytes,
    /// The writer's entries over all its streams would pass [`MAX_BYTES_PER_PLUGIN`]: unlike
    /// the other two, a bound that the load (how many streams are live) decides as much as the
    /// writer does.
    PluginBytes,
}

impl fmt::Display for FilterStateFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Entries => write!(f, "it holds {MAX_ENTRIES_PER_WRITER} filter state entries here, the most it may"),
            Self::Bytes => write!(f, "its filter state here would pass {MAX_BYTES_PER_WRITER} bytes"),
            Self::PluginBytes => {
                write!(f, "its filter state over all its streams would pass {MAX_BYTES_PER_PLUGIN} bytes")
            }
        }
    }
}

/// One stream's (or one root context's) filter state: keys as Envoy names them (`wasm.<path>`),
/// values as written.
#[derive(Default)]
pub struct FilterState {
    entries: BTreeMap<String, Entry>,
}

impl FilterState {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.entries.get(key).map(|entry| &entry.value)
    }

    /// Sets `key` on the host's behalf (the data plane, a test): charged to no writer.
    pub fn insert(&mut self, key: String, value: Vec<u8>) {
        self.entries.insert(key, Entry { value, charge: None });
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.entries.iter().map(|(key, entry)| (key, &entry.value))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets `key` for `writer`, charged to it, unless that would take the writer past one of its
    /// limits (then nothing changes). Replacing another writer's entry returns that writer's
    /// charge.
    pub fn write(
        &mut self,
        writer: &Arc<FilterStateBudget>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), FilterStateFull> {
        let bytes = charged(&key, &value);
        // The writer's own entries here, leaving out the one this write replaces. A writer
        // holds at most MAX_ENTRIES_PER_WRITER entries, so the walk is bounded (and a stream
        // holds a few entries as a rule).
        let (mut count, mut held) = (0usize, 0usize);
        let mut replaces_own = 0usize;
        for (existing_key, entry) in &self.entries {
            if entry.written_by(writer) {
                let size = charged(existing_key, &entry.value);
                if *existing_key == key {
                    replaces_own = size;
                } else {
                    count += 1;
                    held += size;
                }
            }
        }
        if count >= MAX_ENTRIES_PER_WRITER {
            return Err(FilterStateFull::Entries);
        }
        if held + bytes > MAX_BYTES_PER_WRITER {
            return Err(FilterStateFull::Bytes);
        }
        // Within its floor on this stream a writer is always admitted: live streams are bounded
        // by the connection limits, and a client holding many streams open must not silence a
        // filter's small writes everywhere by filling the plugin's budget through its large ones.
        let within_floor = held + bytes <= WRITER_FLOOR_PER_STREAM;
        // A compare-and-swap: every worker's VMs of the plugin share the budget.
        let admitted = writer.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
            let after = total - replaces_own + bytes;
            (within_floor || after <= MAX_BYTES_PER_PLUGIN).then_some(total + bytes)
        });
        if admitted.is_err() {
            return Err(FilterStateFull::PluginBytes);
        }
        let charge = Charge { budget: writer.clone(), bytes };
        // The replaced entry (if any) drops here and returns its own writer's charge.
        self.entries.insert(key, Entry { value, charge: Some(charge) });
        Ok(())
    }
}

impl Clone for FilterState {
    /// A copy of the values, charged to nobody: the writers' budgets count what lives on
    /// streams, not snapshots of it.
    fn clone(&self) -> Self {
        let entries =
            self.entries.iter().map(|(key, entry)| (key.clone(), Entry { value: entry.value.clone(), charge: None }));
        Self { entries: entries.collect() }
    }
}

impl fmt::Debug for FilterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<Vec<u8>>> FromIterator<(K, V)> for FilterState {
    /// Host-set entries (see [`FilterState::insert`]).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut state = Self::default();
        for (key, value) in pairs {
            state.insert(key.into(), value.into());
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hoarder_fills_only_its_own_room() {
        let hoarder = Arc::new(FilterStateBudget::default());
        let tracer = Arc::new(FilterStateBudget::default());
        let mut stream = FilterState::default();
        let piece = vec![7u8; 64 << 10];
        let mut written = 0;
        let refused = loop {
            match stream.write(&hoarder, format!("wasm.hoard_{written}"), piece.clone()) {
                Ok(()) => written += 1,
                Err(refused) => break refused,
            }
        };
        assert_eq!(refused, FilterStateFull::Bytes);
        assert_eq!(written, MAX_BYTES_PER_WRITER / charged("wasm.hoard_00", &piece));
        // Another writer still has all of its room, on the same stream.
        assert_eq!(stream.write(&tracer, "wasm.trace_context".into(), piece.clone()), Ok(()));
        assert_eq!(tracer.held(), charged("wasm.trace_context", &piece));
        // Replacing its own entry is no new entry; replacing the hoarder's moves the charge.
        assert_eq!(stream.write(&tracer, "wasm.trace_context".into(), b"small".to_vec()), Ok(()));
        let before = hoarder.held();
        assert_eq!(stream.write(&tracer, "wasm.hoard_0".into(), b"x".to_vec()), Ok(()));
        assert_eq!(hoarder.held(), before - charged("wasm.hoard_0", &piece));
        // A stream's end returns every charge.
        drop(stream);
        assert_eq!((hoarder.held(), tracer.held()), (0, 0));
    }

    #[test]
    fn a_writer_is_bounded_over_all_its_streams_and_in_entries() {
        let writer = Arc::new(FilterStateBudget::default());
        let piece = vec![1u8; (1 << 20) - 256];
        let mut streams = Vec::new();
        let refused = loop {
            let mut stream = FilterState::default();
            match stream.write(&writer, "wasm.k".into(), piece.clone()) {
                Ok(()) => streams.push(stream),
                Err(refused) => break refused,
            }
        };
        assert_eq!(refused, FilterStateFull::PluginBytes);
        assert_eq!(streams.len(), MAX_BYTES_PER_PLUGIN / charged("wasm.k", &piece));
        // Small writes (within the floor per stream) still get through.
        let mut small = FilterState::default();
        assert_eq!(small.write(&writer, "wasm.decision".into(), b"allow".to_vec()), Ok(()));
        let beyond = MAX_BYTES_PER_PLUGIN - writer.held() + WRITER_FLOOR_PER_STREAM;
        assert_eq!(small.write(&writer, "wasm.big".into(), vec![0; beyond]), Err(FilterStateFull::PluginBytes));
        drop(small);
        streams.pop();
        assert_eq!(FilterState::default().write(&writer, "wasm.k".into(), piece.clone()), Ok(()), "room again");

        let mut stream = FilterState::default();
        for n in 0..MAX_ENTRIES_PER_WRITER {
            stream.write(&writer, format!("{n}"), Vec::new()).expect("within the entry cap");
        }
        assert_eq!(stream.write(&writer, "one-more".into(), Vec::new()), Err(FilterStateFull::Entries));
        assert_eq!(stream.write(&writer, "0".into(), b"again".to_vec()), Ok(()), "a replacement is no new entry");
        let copy = stream.clone();
        assert_eq!(copy.get("0").map(Vec::as_slice), Some(&b"again"[..]));
        let held = writer.held();
        drop(copy);
        assert_eq!(writer.held(), held, "a copy holds no charge");
    }
}
