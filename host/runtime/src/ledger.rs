//! What each plugin holds of a host store (shared data, queued items), in bytes: the one
//! bookkeeping behind the per-writer bounds of `shared_data` and `shared_queue`.

use std::collections::HashMap;
use std::sync::Arc;

/// Bytes held per plugin name. A plugin holding nothing has no entry.
#[derive(Default)]
pub(crate) struct Ledger {
    held: HashMap<Arc<str>, usize>,
}

impl Ledger {
    /// What `plugin` holds.
    pub(crate) fn held(&self, plugin: &str) -> usize {
        self.held.get(plugin).copied().unwrap_or(0)
    }

    /// Charges `bytes` to `plugin`; returns its name, shared by the entries it pays for.
    pub(crate) fn charge(&mut self, plugin: &str, bytes: usize) -> Arc<str> {
        if let Some((name, held)) = self.held.get_key_value(plugin).map(|(name, held)| (name.clone(), *held)) {
            self.held.insert(name.clone(), held + bytes);
            return name;
        }
        let name: Arc<str> = Arc::from(plugin);
        self.held.insert(name.clone(), bytes);
        name
    }

    /// Returns `bytes` to `plugin` (what an entry it paid for cost).
    pub(crate) fn refund(&mut self, plugin: &Arc<str>, bytes: usize) {
        if let Some(held) = self.held.get_mut(plugin) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.held.remove(plugin);
            }
        }
    }

    /// True when nobody holds anything.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}
