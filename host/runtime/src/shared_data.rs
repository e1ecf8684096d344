//! Shared data: a process-wide key/value store per `vm_id` with compare-and-swap, the backing of
//! `proxy_get_shared_data` / `proxy_set_shared_data`.
//!
//! Every VM clone of a plugin (one per worker) and every plugin with the same `vm_id` sees the
//! same entries, as in Envoy. A lock is fine here: shared data is an explicit, rare call, not
//! part of the per-request callback path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ledger::Ledger;

/// One stored value and its version (`cas`). Versions start at 1 and grow on every write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedValue {
    /// The bytes stored.
    pub value: Vec<u8>,
    /// The version to pass back as `cas` for a conditional update.
    pub cas: u32,
}

/// Why a write was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SharedDataError {
    /// The `cas` given does not match the stored version.
    CasMismatch,
    /// The write would take what the writing plugin holds in the `vm_id` past
    /// [`MAX_SHARED_DATA_BYTES`].
    Full,
}

/// Most bytes one plugin may hold in one `vm_id`'s shared data: keys, values and
/// [`ENTRY_OVERHEAD`] per entry, counted against the plugin that wrote each entry last. Shared
/// data lives in the host, outside every VM's memory cap, and outlives the VMs: without a bound,
/// a guest could move its memory out a piece at a time until the host runs out. Counting per
/// writer means a plugin that fills its share never makes another plugin's writes fail.
pub const MAX_SHARED_DATA_BYTES: usize = 64 << 20;

/// What an entry is counted at beside its key and value (the map's slot, the two vectors, the
/// writer's name), so that many tiny entries cannot hold far more host memory than the budget
/// says.
pub const ENTRY_OVERHEAD: usize = 128;

struct Stored {
    value: SharedValue,
    /// The plugin that wrote it last, whose share it counts in.
    writer: Arc<str>,
}

/// One `vm_id`'s entries and what each writer holds of them.
#[derive(Default)]
struct Namespace {
    entries: HashMap<Vec<u8>, Stored>,
    held_by: Ledger,
}

fn counted(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// The process-wide shared-data store.
#[derive(Default)]
pub struct SharedDataStore {
    by_vm: Mutex<HashMap<String, Namespace>>,
}

impl SharedDataStore {
    /// Reads `key` in the `vm_id` namespace.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<SharedValue> {
        let map = self.by_vm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(vm_id).and_then(|namespace| namespace.entries.get(key)).map(|stored| stored.value.clone())
    }

    /// Writes `key` for plugin `writer`. `cas == 0` writes unconditionally; otherwise the write
    /// happens only if the stored version is `cas` (a missing key has no version, so any
    /// non-zero `cas` mismatches). A write that would take what `writer` holds in the namespace
    /// past [`MAX_SHARED_DATA_BYTES`] is refused and changes nothing.
    pub fn set(&self, vm_id: &str, writer: &str, key: &[u8], value: &[u8], cas: u32) -> Result<u32, SharedDataError> {
        let mut map = self.by_vm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let existing = map.get(vm_id).and_then(|namespace| namespace.entries.get(key));
        let (next, replaced_own) = match existing {
            Some(stored) if cas != 0 && stored.value.cas != cas => return Err(SharedDataError::CasMismatch),
            None if cas != 0 => return Err(SharedDataError::CasMismatch),
            Some(stored) => {
                let own = if *stored.writer == *writer { counted(key, &stored.value.value) } else { 0 };
                (stored.value.cas.wrapping_add(1).max(1), own)
            }
            None => (1, 0),
        };
        let held = map.get(vm_id).map_or(0, |namespace| namespace.held_by.held(writer));
        if held - replaced_own + counted(key, value) > MAX_SHARED_DATA_BYTES {
            return Err(SharedDataError::Full);
        }
        // Checked before the namespace exists: a refused write leaves nothing behind.
        let namespace = map.entry(vm_id.to_owned()).or_default();
        let writer = namespace.held_by.charge(writer, counted(key, value));
        let stored = Stored { value: SharedValue { value: value.to_vec(), cas: next }, writer };
        if let Some(old) = namespace.entries.insert(key.to_vec(), stored) {
            namespace.held_by.refund(&old.writer, counted(key, &old.value.value));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_accepts_the_current_version_only() {
        let store = SharedDataStore::default();
        assert_eq!(store.set("vm", "p", b"k", b"a", 7), Err(SharedDataError::CasMismatch));
        assert!(store.by_vm.lock().expect("lock").is_empty(), "a refused write leaves no namespace");
        assert_eq!(store.set("vm", "p", b"k", b"a", 0), Ok(1));
        assert_eq!(store.set("vm", "p", b"k", b"b", 1), Ok(2));
        assert_eq!(store.set("vm", "p", b"k", b"c", 1), Err(SharedDataError::CasMismatch));
        assert_eq!(store.get("vm", b"k").map(|v| v.value), Some(b"b".to_vec()));
        assert_eq!(store.get("other-vm", b"k"), None);
    }

    #[test]
    fn a_writer_is_refused_past_its_share_and_never_uses_up_another_s() {
        let store = SharedDataStore::default();
        let piece = vec![1u8; 1 << 20];
        let mut written = 0;
        while store.set("vm", "hoarder", format!("k{written}").as_bytes(), &piece, 0).is_ok() {
            written += 1;
        }
        assert_eq!(written, MAX_SHARED_DATA_BYTES / counted(b"k00", &piece));
        assert_eq!(store.set("vm", "hoarder", b"one-more", &piece, 0), Err(SharedDataError::Full));
        assert_eq!(store.get("vm", b"k0").map(|v| v.value.len()), Some(piece.len()), "nothing lost");
        // Another plugin of the same vm_id still has all of its share.
        assert_eq!(store.set("vm", "trace", b"trace.count", &piece, 0), Ok(1));
        // Replacing a value with a smaller one frees room; taking over another's entry moves it.
        assert_eq!(store.set("vm", "hoarder", b"k0", b"small", 0), Ok(2));
        assert!(store.set("vm", "hoarder", b"one-more", &piece, 0).is_ok());
        assert_eq!(store.set("vm", "trace", b"k1", b"mine now", 0), Ok(2));
        assert!(store.set("vm", "hoarder", b"and-another", &piece, 0).is_ok());
        assert!(store.set("other-vm", "hoarder", b"k0", &piece, 0).is_ok(), "each vm_id has its own");
    }
}
