//! Shared queues: process-wide FIFO queues named per `vm_id`, the backing of
//! `proxy_register_shared_queue` and friends.
//!
//! A queue belongs to the root context that registered it last (as in Envoy); enqueueing from any
//! thread wakes that root context's worker, which then calls `proxy_on_queue_ready` on its own
//! thread through [`QueueInbox`]. What the queues may hold is bounded per plugin (see
//! [`SharedQueueRegistry`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
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

/// One queued item and who pays for it.
struct Item {
    bytes: Vec<u8>,
    enqueuer: Arc<str>,
}

struct Queue {
    items: VecDeque<Item>,
    /// What `items` hold, in bytes.
    bytes: usize,
    /// The root context notified of new items: the last to register the queue. Weak, so that a
    /// VM that is gone leaves a queue nobody owns, which registration reclaims once it is empty.
    owner: Weak<QueueInbox>,
    /// The plugin that registered the queue last, whose [`MAX_QUEUES_PER_PLUGIN`] it counts in.
    registrant: Arc<str>,
}

impl Queue {
    /// Neither owned by a live VM nor holding anything: nothing would be lost by forgetting it.
    fn abandoned(&self) -> bool {
        self.items.is_empty() && self.owner.strong_count() == 0
    }
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    by_id: HashMap<u32, Queue>,
    /// Bytes of queued items per enqueuing plugin, over every queue.
    held_by: HashMap<Arc<str>, usize>,
    next_id: u32,
}

impl Queues {
    /// The enqueuer's own name (shared by its items), counted from now on.
    fn enqueuer(&mut self, plugin: &str) -> Arc<str> {
        match self.held_by.get_key_value(plugin) {
            Some((name, _)) => name.clone(),
            None => {
                let name: Arc<str> = Arc::from(plugin);
                self.held_by.insert(name.clone(), 0);
                name
            }
        }
    }

    fn refund(&mut self, item: &Item) {
        if let Some(held) = self.held_by.get_mut(&item.enqueuer) {
            *held -= item.bytes.len();
            if *held == 0 {
                self.held_by.remove(&item.enqueuer);
            }
        }
    }

    /// Forgets every abandoned queue ([`Queue::abandoned`]).
    fn reclaim(&mut self) {
        self.by_id.retain(|_, queue| !queue.abandoned());
        self.forget_names_of_gone_queues();
    }

    /// Forgets the queues `plugin` registered that no live VM owns, with their items: what it
    /// left behind when it is at its [`MAX_QUEUES_PER_PLUGIN`] (nobody else's items go).
    fn forget_ownerless(&mut self, plugin: &str) {
        let gone: Vec<u32> = self
            .by_id
            .iter()
            .filter(|(_, queue)| *queue.registrant == *plugin && queue.owner.strong_count() == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(queue) = self.by_id.remove(&id) {
                for item in &queue.items {
                    self.refund(item);
                }
            }
        }
        self.forget_names_of_gone_queues();
    }

    fn forget_names_of_gone_queues(&mut self) {
        let by_id = &self.by_id;
        self.by_name.retain(|_, id| by_id.contains_key(id));
    }

    fn registered_by(&self, plugin: &str) -> usize {
        self.by_id.values().filter(|queue| *queue.registrant == *plugin).count()
    }
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
    /// The registering plugin has [`MAX_QUEUES_PER_PLUGIN`] queues already.
    TooMany,
    /// The name is longer than [`MAX_QUEUE_NAME_BYTES`].
    NameTooLong,
    /// The enqueuing plugin's items, over every queue, would pass [`MAX_QUEUED_BYTES_PER_PLUGIN`].
    EnqueuerFull,
}

/// Most items a queue holds; enqueueing beyond it drops the oldest item (a slow consumer must not
/// grow the host without bound).
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// Most bytes a queue's items hold together; beyond it the oldest items are dropped, as beyond
/// [`MAX_QUEUE_ITEMS`]. Queues live in the host, outside every VM's memory cap.
pub const MAX_QUEUE_BYTES: usize = 64 << 20;

/// Most bytes of items one plugin may have waiting in queues (its own and others'), all VMs of
/// it together: the per-queue bound times many queues would be no bound.
pub const MAX_QUEUED_BYTES_PER_PLUGIN: usize = 64 << 20;

/// Most queues one plugin keeps registered (queues nobody owns any more and that are empty do
/// not count: they are forgotten).
pub const MAX_QUEUES_PER_PLUGIN: usize = 1024;

/// Longest queue name.
pub const MAX_QUEUE_NAME_BYTES: usize = 1024;

/// The process-wide registry of shared queues.
///
/// Every limit is the caller's own: a plugin that hoards queues or items is refused, and never
/// uses up another plugin's room (items past a queue's own bound push out its oldest, whoever
/// wrote them, as Envoy's queues are shared by design).
#[derive(Default)]
pub struct SharedQueueRegistry {
    queues: Mutex<Queues>,
}

impl SharedQueueRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or re-registers) `name` in `vm_id` for `plugin`, owned by `owner`. Returns the
    /// queue id; a name too long, or a queue past the plugin's [`MAX_QUEUES_PER_PLUGIN`], is
    /// refused.
    pub fn register(&self, vm_id: &str, plugin: &str, name: &[u8], owner: &Arc<QueueInbox>) -> Result<u32, QueueError> {
        if name.len() > MAX_QUEUE_NAME_BYTES {
            return Err(QueueError::NameTooLong);
        }
        let mut queues = self.lock();
        let key = (vm_id.to_owned(), name.to_vec());
        if let Some(id) = queues.by_name.get(&key).copied()
            && let Some(queue) = queues.by_id.get_mut(&id)
            && *queue.registrant == *plugin
        {
            queue.owner = Arc::downgrade(owner);
            return Ok(id);
        }
        // A new queue for this plugin (or one it takes over): registration is rare (at
        // start-up), so a sweep of the registry is cheap enough.
        queues.reclaim();
        if queues.registered_by(plugin) >= MAX_QUEUES_PER_PLUGIN {
            queues.forget_ownerless(plugin);
            if queues.registered_by(plugin) >= MAX_QUEUES_PER_PLUGIN {
                return Err(QueueError::TooMany);
            }
        }
        let registrant: Arc<str> = Arc::from(plugin);
        if let Some(id) = queues.by_name.get(&key).copied()
            && let Some(queue) = queues.by_id.get_mut(&id)
        {
            queue.owner = Arc::downgrade(owner);
            queue.registrant = registrant;
            return Ok(id);
        }
        queues.next_id += 1;
        let id = queues.next_id;
        queues.by_name.insert(key, id);
        let queue = Queue { items: VecDeque::new(), bytes: 0, owner: Arc::downgrade(owner), registrant };
        queues.by_id.insert(id, queue);
        Ok(id)
    }

    /// Finds the id of `name` in `vm_id`.
    pub fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        self.lock().by_name.get(&(vm_id.to_owned(), name.to_vec())).copied()
    }

    /// Appends an item on behalf of `plugin` and notifies the queue's owner.
    pub fn enqueue(&self, queue_id: u32, plugin: &str, item: &[u8]) -> Result<(), QueueError> {
        if item.len() > MAX_QUEUE_BYTES {
            return Err(QueueError::TooLarge);
        }
        // Copied before the lock, and what the queue pushes out freed after it: the lock is
        // every worker's.
        let copy = item.to_vec();
        let mut pushed_out = Vec::new();
        let owner = {
            let mut queues = self.lock();
            let queue = queues.by_id.get(&queue_id).ok_or(QueueError::NotFound)?;
            // The oldest items this one pushes out of the queue, and what of them was the
            // enqueuer's own: room it gets back.
            let (mut pushing_out, mut items, mut bytes, mut own) = (0, queue.items.len(), queue.bytes, 0);
            for oldest in &queue.items {
                if items < MAX_QUEUE_ITEMS && bytes + copy.len() <= MAX_QUEUE_BYTES {
                    break;
                }
                pushing_out += 1;
                items -= 1;
                bytes -= oldest.bytes.len();
                if *oldest.enqueuer == *plugin {
                    own += oldest.bytes.len();
                }
            }
            let held = queues.held_by.get(plugin).copied().unwrap_or(0);
            if held - own + copy.len() > MAX_QUEUED_BYTES_PER_PLUGIN {
                return Err(QueueError::EnqueuerFull);
            }
            let enqueuer = queues.enqueuer(plugin);
            let queue = queues.by_id.get_mut(&queue_id).ok_or(QueueError::NotFound)?;
            pushed_out.extend(queue.items.drain(..pushing_out));
            queue.bytes = bytes + copy.len();
            queue.items.push_back(Item { bytes: copy, enqueuer: enqueuer.clone() });
            let owner = queue.owner.upgrade();
            for oldest in &pushed_out {
                queues.refund(oldest);
            }
            *queues.held_by.entry(enqueuer).or_default() += item.len();
            owner
        };
        drop(pushed_out);
        // A queue whose owner is gone keeps its items for the next VM to register it.
        if let Some(owner) = owner {
            owner.notify(queue_id);
        }
        Ok(())
    }

    /// Takes the oldest item.
    pub fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, QueueError> {
        let mut queues = self.lock();
        let queue = queues.by_id.get_mut(&queue_id).ok_or(QueueError::NotFound)?;
        let item = queue.items.pop_front().ok_or(QueueError::Empty)?;
        queue.bytes -= item.bytes.len();
        queues.refund(&item);
        Ok(item.bytes)
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
        let id = registry.register("vm", "p", b"q", &first).expect("registers");
        assert_eq!(registry.register("vm", "p", b"q", &second), Ok(id));
        assert_eq!(registry.resolve("vm", b"q"), Some(id));
        assert_eq!(registry.resolve("other", b"q"), None);
        registry.enqueue(id, "p", b"1").expect("queue exists");
        registry.enqueue(id, "producer", b"2").expect("queue exists");
        assert!(first.drain().is_empty());
        assert_eq!(second.drain(), vec![id]);
        assert_eq!(registry.dequeue(id), Ok(b"1".to_vec()));
        assert_eq!(registry.dequeue(id), Ok(b"2".to_vec()));
        assert_eq!(registry.dequeue(id), Err(QueueError::Empty));
        assert_eq!(registry.enqueue(id + 1, "p", b"x"), Err(QueueError::NotFound));
        assert!(registry.lock().held_by.is_empty(), "every charge returned");
    }

    #[test]
    fn a_queue_keeps_its_newest_items_within_its_byte_budget() {
        let registry = SharedQueueRegistry::default();
        let inbox = Arc::new(QueueInbox::default());
        let id = registry.register("vm", "p", b"q", &inbox).expect("registers");
        let piece = vec![0u8; 1 << 20];
        for n in 0..100u8 {
            let mut item = piece.clone();
            item[0] = n;
            registry.enqueue(id, "p", &item).expect("fits once the oldest go");
        }
        assert_eq!(registry.enqueue(id, "p", &vec![0u8; MAX_QUEUE_BYTES + 1]), Err(QueueError::TooLarge));
        let mut kept = Vec::new();
        while let Ok(item) = registry.dequeue(id) {
            kept.push(item[0]);
        }
        assert_eq!(kept, (36..100).collect::<Vec<u8>>(), "the newest 64 MiB");
    }

    #[test]
    fn an_enqueuer_is_bounded_over_every_queue_and_never_uses_up_another_s_room() {
        let registry = SharedQueueRegistry::default();
        let inbox = Arc::new(QueueInbox::default());
        let piece = vec![0u8; 1 << 20];
        let queues: Vec<u32> =
            (0..4).map(|n| registry.register("vm", "hoarder", &[n], &inbox).expect("registers")).collect();
        let mut queued = 0;
        let refused = loop {
            match registry.enqueue(queues[queued % queues.len()], "hoarder", &piece) {
                Ok(()) => queued += 1,
                Err(refused) => break refused,
            }
        };
        assert_eq!(refused, QueueError::EnqueuerFull);
        assert_eq!(queued, MAX_QUEUED_BYTES_PER_PLUGIN / piece.len(), "64 MiB over four queues, none of them full");
        let tracer = registry.register("vm", "trace", b"spans", &inbox).expect("registers");
        assert_eq!(registry.enqueue(tracer, "trace", &piece), Ok(()), "another plugin still has its room");
        registry.dequeue(queues[0]).expect("an item");
        assert_eq!(registry.enqueue(queues[0], "hoarder", &piece), Ok(()), "room again once one is taken");
    }

    #[test]
    fn a_plugin_registers_at_most_its_share_of_live_queues_and_gone_owners_free_theirs() {
        let registry = SharedQueueRegistry::default();
        let inbox = Arc::new(QueueInbox::default());
        for n in 0..MAX_QUEUES_PER_PLUGIN {
            registry.register("vm", "p", n.to_string().as_bytes(), &inbox).expect("within the cap");
        }
        assert_eq!(registry.register("vm", "p", b"one-more", &inbox), Err(QueueError::TooMany));
        assert!(registry.register("vm", "p", b"0", &inbox).is_ok(), "re-registering is no new queue");
        assert!(registry.register("vm", "other", b"one-more", &inbox).is_ok(), "the cap is per plugin");
        assert_eq!(
            registry.register("vm", "p", &vec![b'n'; MAX_QUEUE_NAME_BYTES + 1], &inbox),
            Err(QueueError::NameTooLong)
        );

        // A plugin whose configuration changes on every hot swap names a new queue each time: the
        // queues of VMs that are gone do not count against it once they are empty...
        let registry = SharedQueueRegistry::default();
        let mut first = None;
        for generation in 0..3 * MAX_QUEUES_PER_PLUGIN {
            let vm = Arc::new(QueueInbox::default());
            let id = registry.register("vm", "trace", generation.to_string().as_bytes(), &vm).expect("registers");
            if generation == 0 {
                registry.enqueue(id, "producer", b"span").expect("enqueues");
                first = Some(id);
            }
        }
        assert_eq!(registry.lock().by_id.len(), 2, "the last one and the one with an item");
        // ... and items nobody consumed yet stay for a VM that registers the name again.
        let id = registry.register("vm", "trace", b"0", &inbox).expect("registers");
        assert_eq!(Some(id), first);
        assert_eq!(registry.dequeue(id), Ok(b"span".to_vec()));

        // At its cap, a plugin's own ownerless queues go, items and all; nobody else's.
        let registry = SharedQueueRegistry::default();
        let others = registry.register("vm", "other", b"theirs", &inbox).expect("registers");
        registry.enqueue(others, "other", b"keep").expect("enqueues");
        for n in 0..MAX_QUEUES_PER_PLUGIN {
            let vm = Arc::new(QueueInbox::default());
            let id = registry.register("vm", "trace", n.to_string().as_bytes(), &vm).expect("registers");
            registry.enqueue(id, "trace", b"left behind").expect("enqueues");
        }
        assert!(registry.register("vm", "trace", b"new", &inbox).is_ok());
        assert_eq!(registry.lock().held_by.get("trace"), None, "their charges returned");
        assert_eq!(registry.dequeue(others), Ok(b"keep".to_vec()));
    }
}
