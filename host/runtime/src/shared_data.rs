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
}

/// The process-wide shared-data store.
#[derive(Default)]
pub struct SharedDataStore {
    by_vm: Mutex<HashMap<String, HashMap<Vec<u8>, SharedValue>>>,
}

impl SharedDataStore {
    /// Reads `key` in the `vm_id` namespace.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<SharedValue> {
        let map = self.by_vm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(vm_id).and_then(|entries| entries.get(key)).cloned()
    }

    /// Writes `key`. `cas == 0` writes unconditionally; otherwise the write happens only if the
    /// stored version is `cas` (a missing key has no version, so any non-zero `cas` mismatches).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<u32, SharedDataError> {
        let mut map = self.by_vm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entries = map.entry(vm_id.to_owned()).or_default();
        let next = match entries.get(key) {
            Some(existing) if cas != 0 && existing.cas != cas => return Err(SharedDataError::CasMismatch),
            None if cas != 0 => return Err(SharedDataError::CasMismatch),
            Some(existing) => existing.cas.wrapping_add(1).max(1),
            None => 1,
        };
        entries.insert(key.to_vec(), SharedValue { value: value.to_vec(), cas: next });
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
}
