//! Shared queues: process-wide FIFO queues named per `vm_id`, the backing of
//! `proxy_register_shared_queue` and friends.
//!
//! A queue belongs to the root context that registered it last (as in Envoy); enqueueing from any
//! thread wakes that root context's worker, which then calls `proxy_on_queue_ready` on its own
//! thread through [`QueueInbox`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::Waker;

/// Where a queue's "ready" notifications go: one inbox per VM, drained on the VM's worker.
#[derive(Default)]
pub struct QueueInbox {
    ready: Mutex<(VecDeque<u32>, Option<Waker>)>,
}

impl QueueInbox {
    fn notify(&self, queue_id: u32) {
        let mut guard = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if !guard.0.contains(&queue_id) {
            guard.0.push_back(queue_id);
        }
        if let Some(waker) = guard.1.take() {
            waker.wake();
        }
    }

    /// Takes the ids of queues that received items since the last call.
    pub fn drain(&self) -> Vec<u32> {
        let mut guard = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.drain(..).collect()
    }

    /// Registers the waker of the task that drains this inbox.
    pub fn set_waker(&self, waker: &Waker) {
        let mut guard = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        guard.1 = Some(waker.clone());
    }

    /// True if notifications are waiting.
    pub fn has_pending(&self) -> bool {
        !self.ready.lock().unwrap_or_else(|p| p.into_inner()).0.is_empty()
    }
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    /// What `items` hold, in bytes.
    bytes: usize,
    owner: Arc<QueueInbox>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    by_id: HashMap<u32, Queue>,
    next_id: u32,
}

/// Why a queue operation failed.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// No queue has that id or name.
    NotFound,
    /// The queue has no items.
    Empty,
    /// The item alone is larger than a queue may hold ([`MAX_QUEUE_BYTES`]).
    TooLarge,
    /// The `vm_id` has [`MAX_QUEUES_PER_VM_ID`] queues already.
    TooMany,
}

/// Most items a queue holds; enqueueing beyond it drops the oldest item (a slow consumer must not
/// grow the host without bound).
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// Most bytes a queue's items hold together; beyond it the oldest items are dropped, as beyond
/// [`MAX_QUEUE_ITEMS`]. Queues live in the host, outside every VM's memory cap.
pub const MAX_QUEUE_BYTES: usize = 64 << 20;

/// Most queues one `vm_id` may register.
pub const MAX_QUEUES_PER_VM_ID: usize = 1024;

/// The process-wide registry of shared queues.
#[derive(Default)]
pub struct SharedQueueRegistry {
    queues: Mutex<Queues>,
}

impl SharedQueueRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or re-registers) `name` in `vm_id`, owned by `owner`. Returns the queue id;
    /// a new name past [`MAX_QUEUES_PER_VM_ID`] is refused.
    pub fn register(&self, vm_id: &str, name: &[u8], owner: Arc<QueueInbox>) -> Result<u32, QueueError> {
        let mut queues = self.lock();
        let key = (vm_id.to_owned(), name.to_vec());
        if let Some(&id) = queues.by_name.get(&key) {
            if let Some(queue) = queues.by_id.get_mut(&id) {
                queue.owner = owner;
            }
            return Ok(id);
        }
        // Registration is rare (at start-up): counting by walking the names is cheap enough.
        if queues.by_name.keys().filter(|(vm, _)| vm == vm_id).count() >= MAX_QUEUES_PER_VM_ID {
            return Err(QueueError::TooMany);
        }
        queues.next_id += 1;
        let id = queues.next_id;
        queues.by_name.insert(key, id);
        queues.by_id.insert(id, Queue { items: VecDeque::new(), bytes: 0, owner });
        Ok(id)
    }

    /// Finds the id of `name` in `vm_id`.
    pub fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        self.lock().by_name.get(&(vm_id.to_owned(), name.to_vec())).copied()
    }

    /// Appends an item and notifies the queue's owner.
    pub fn enqueue(&self, queue_id: u32, item: &[u8]) -> Result<(), QueueError> {
        let owner = {
            let mut queues = self.lock();
            let queue = queues.by_id.get_mut(&queue_id).ok_or(QueueError::NotFound)?;
            if item.len() > MAX_QUEUE_BYTES {
                return Err(QueueError::TooLarge);
            }
            while queue.items.len() >= MAX_QUEUE_ITEMS || queue.bytes + item.len() > MAX_QUEUE_BYTES {
                let Some(oldest) = queue.items.pop_front() else { break };
                queue.bytes -= oldest.len();
            }
            queue.bytes += item.len();
            queue.items.push_back(item.to_vec());
            queue.owner.clone()
        };
        owner.notify(queue_id);
        Ok(())
    }

    /// Takes the oldest item.
    pub fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, QueueError> {
        let mut queues = self.lock();
        let queue = queues.by_id.get_mut(&queue_id).ok_or(QueueError::NotFound)?;
        let item = queue.items.pop_front().ok_or(QueueError::Empty)?;
        queue.bytes -= item.len();
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_and_the_last_registrant_is_notified() {
        let registry = SharedQueueRegistry::default();
        let first = Arc::new(QueueInbox::default());
        let second = Arc::new(QueueInbox::default());
        let id = registry.register("vm", b"q", first.clone()).expect("registers");
        assert_eq!(registry.register("vm", b"q", second.clone()), Ok(id));
        assert_eq!(registry.resolve("vm", b"q"), Some(id));
        assert_eq!(registry.resolve("other", b"q"), None);
        registry.enqueue(id, b"1").expect("queue exists");
        registry.enqueue(id, b"2").expect("queue exists");
        assert!(first.drain().is_empty());
        assert_eq!(second.drain(), vec![id]);
        assert_eq!(registry.dequeue(id), Ok(b"1".to_vec()));
        assert_eq!(registry.dequeue(id), Ok(b"2".to_vec()));
        assert_eq!(registry.dequeue(id), Err(QueueError::Empty));
        assert_eq!(registry.enqueue(id + 1, b"x"), Err(QueueError::NotFound));
    }

    #[test]
    fn a_queue_keeps_its_newest_items_within_its_byte_budget() {
        let registry = SharedQueueRegistry::default();
        let id = registry.register("vm", b"q", Arc::new(QueueInbox::default())).expect("registers");
        let piece = vec![0u8; 1 << 20];
        for n in 0..100u8 {
            let mut item = piece.clone();
            item[0] = n;
            registry.enqueue(id, &item).expect("fits once the oldest go");
        }
        assert_eq!(registry.enqueue(id, &vec![0u8; MAX_QUEUE_BYTES + 1]), Err(QueueError::TooLarge));
        let mut kept = Vec::new();
        while let Ok(item) = registry.dequeue(id) {
            kept.push(item[0]);
        }
        assert_eq!(kept, (36..100).collect::<Vec<u8>>(), "the newest 64 MiB");
    }

    #[test]
    fn a_vm_id_registers_at_most_its_share_of_queues() {
        let registry = SharedQueueRegistry::default();
        let inbox = Arc::new(QueueInbox::default());
        for n in 0..MAX_QUEUES_PER_VM_ID {
            registry.register("vm", n.to_string().as_bytes(), inbox.clone()).expect("within the cap");
        }
        assert_eq!(registry.register("vm", b"one-more", inbox.clone()), Err(QueueError::TooMany));
        assert!(registry.register("vm", b"0", inbox.clone()).is_ok(), "re-registering is no new queue");
        assert!(registry.register("other", b"one-more", inbox).is_ok());
    }
}
