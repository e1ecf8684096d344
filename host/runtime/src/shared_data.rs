//! Shared data: a process-wide key/value store per `vm_id` with compare-and-swap, the backing of
//! `proxy_get_shared_data` / `proxy_set_shared_data`.
//!
//! Every VM clone of a plugin (one per worker) and every plugin with the same `vm_id` sees the
//! same entries, as in Envoy. A lock is fine here: shared data is an explicit, rare call, not
//! part of the per-request callback path.

use std::collections::HashMap;
use std::sync::Mutex;

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
    /// The write would take the `vm_id`'s entries past [`MAX_SHARED_DATA_BYTES`].
    Full,
}

/// Most bytes one `vm_id`'s shared data may hold: keys, values and [`ENTRY_OVERHEAD`] per entry.
/// Shared data lives in the host, outside every VM's memory cap, and outlives the VMs: without a
/// bound, a guest could move its memory out a piece at a time until the host runs out.
pub const MAX_SHARED_DATA_BYTES: usize = 64 << 20;

/// What an entry is counted at beside its key and value, so that many tiny entries cannot hold
/// far more host memory than the budget says.
pub const ENTRY_OVERHEAD: usize = 64;

/// One `vm_id`'s entries and what they hold.
#[derive(Default)]
struct Namespace {
    entries: HashMap<Vec<u8>, SharedValue>,
    bytes: usize,
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
        map.get(vm_id).and_then(|namespace| namespace.entries.get(key)).cloned()
    }

    /// Writes `key`. `cas == 0` writes unconditionally; otherwise the write happens only if the
    /// stored version is `cas` (a missing key has no version, so any non-zero `cas` mismatches).
    /// A write that would take the namespace past [`MAX_SHARED_DATA_BYTES`] is refused and
    /// changes nothing.
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<u32, SharedDataError> {
        let mut map = self.by_vm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let namespace = map.entry(vm_id.to_owned()).or_default();
        let (next, replaced) = match namespace.entries.get(key) {
            Some(existing) if cas != 0 && existing.cas != cas => return Err(SharedDataError::CasMismatch),
            None if cas != 0 => return Err(SharedDataError::CasMismatch),
            Some(existing) => (existing.cas.wrapping_add(1).max(1), counted(key, &existing.value)),
            None => (1, 0),
        };
        let bytes = namespace.bytes - replaced + counted(key, value);
        if bytes > MAX_SHARED_DATA_BYTES {
            return Err(SharedDataError::Full);
        }
        namespace.bytes = bytes;
        namespace.entries.insert(key.to_vec(), SharedValue { value: value.to_vec(), cas: next });
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_accepts_the_current_version_only() {
        let store = SharedDataStore::default();
        assert_eq!(store.set("vm", b"k", b"a", 7), Err(SharedDataError::CasMismatch));
        assert_eq!(store.set("vm", b"k", b"a", 0), Ok(1));
        assert_eq!(store.set("vm", b"k", b"b", 1), Ok(2));
        assert_eq!(store.set("vm", b"k", b"c", 1), Err(SharedDataError::CasMismatch));
        assert_eq!(store.get("vm", b"k").map(|v| v.value), Some(b"b".to_vec()));
        assert_eq!(store.get("other-vm", b"k"), None);
    }

    #[test]
    fn a_namespace_is_refused_past_its_budget_and_keeps_what_it_held() {
        let store = SharedDataStore::default();
        let piece = vec![1u8; 1 << 20];
        let mut written = 0;
        while store.set("vm", format!("k{written}").as_bytes(), &piece, 0).is_ok() {
            written += 1;
        }
        assert_eq!(written, MAX_SHARED_DATA_BYTES / counted(b"k00", &piece));
        assert_eq!(store.set("vm", b"one-more", &piece, 0), Err(SharedDataError::Full));
        assert_eq!(store.get("vm", b"k0").map(|v| v.value.len()), Some(piece.len()), "nothing lost");
        // Replacing a value with a smaller one frees room; other namespaces have their own.
        assert_eq!(store.set("vm", b"k0", b"small", 0), Ok(2));
        assert!(store.set("vm", b"one-more", &piece, 0).is_ok());
        assert!(store.set("other-vm", b"k0", &piece, 0).is_ok());
    }
}
