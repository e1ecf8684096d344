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

use crate::ledger::Ledger;

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

impl Item {
    fn charged(&self) -> usize {
        charged(self.bytes.len())
    }
}

/// What an item of `len` bytes is counted at: its bytes and [`ITEM_OVERHEAD`].
fn charged(len: usize) -> usize {
    len.saturating_add(ITEM_OVERHEAD)
}

struct Queue {
    items: VecDeque<Item>,
    /// What `items` are counted at ([`charged`]).
    bytes: usize,
    /// The root contexts that registered the queue, the latest last; dead ones are pruned at
    /// each registration. Weak: a VM that is gone must not be kept alive by its queues.
    registrants: Vec<Weak<QueueInbox>>,
    /// The plugin that registered the queue last, whose [`MAX_QUEUES_PER_PLUGIN`] it counts in.
    plugin: Arc<str>,
}

impl Queue {
    /// The root context to notify: the latest registrant that is still alive (Envoy's "the
    /// last to register owns the queue", with the owner's death handled).
    fn owner(&self) -> Option<Arc<QueueInbox>> {
        self.registrants.iter().rev().find_map(Weak::upgrade)
    }

    /// No live VM registered it: what it holds waits for a VM that registers its name again.
    fn stranded(&self) -> bool {
        self.registrants.iter().all(|registrant| registrant.strong_count() == 0)
    }

    fn registered_by(&mut self, owner: &Arc<QueueInbox>) {
        let owner = Arc::downgrade(owner);
        self.registrants.retain(|registrant| registrant.strong_count() > 0 && !registrant.ptr_eq(&owner));
        self.registrants.push(owner);
    }
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    by_id: HashMap<u32, Queue>,
    /// What queued items are counted at, per enqueuing plugin, over every queue.
    held_by: Ledger,
    next_id: u32,
    /// When an enqueue past its plugin's budget last swept for stranded queues: a sweep walks
    /// the registry under the lock every worker needs, and a refused enqueue is cheap for the
    /// guest to repeat, so it sweeps at most once a [`SWEEP_INTERVAL`].
    last_enqueue_sweep: Option<std::time::Instant>,
}

/// How often an enqueue past its plugin's budget may sweep for stranded queues.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Queues {
    fn held(&self, plugin: &str) -> usize {
        self.held_by.held(plugin)
    }

    fn refund(&mut self, item: &Item) {
        self.held_by.refund(&item.enqueuer, item.charged());
    }

    /// Forgets the stranded queues `plugin` registered, with their items: what its VMs that are
    /// gone left behind, for a VM that would register the same name again. Called when the
    /// plugin registers a name it has no queue for (a configuration that changes on every hot
    /// swap names a new queue each time) or has no room left for its items. Nobody else's queues
    /// go.
    fn forget_stranded(&mut self, plugin: &str) {
        let gone: Vec<u32> = self
            .by_id
            .iter()
            .filter(|(_, queue)| *queue.plugin == *plugin && queue.stranded())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(queue) = self.by_id.remove(&id) {
                for item in &queue.items {
                    self.refund(item);
                }
            }
        }
        let by_id = &self.by_id;
        self.by_name.retain(|_, id| by_id.contains_key(id));
    }

    /// How many of the oldest items of queue `id` an item counted at `cost` pushes out, and what
    /// of them was `plugin`'s own (room it gets back).
    fn push_out_plan(&self, id: u32, plugin: &str, cost: usize) -> Result<(usize, usize), QueueError> {
        let queue = self.by_id.get(&id).ok_or(QueueError::NotFound)?;
        let (mut pushing_out, mut items, mut bytes, mut own) = (0, queue.items.len(), queue.bytes, 0);
        for oldest in &queue.items {
            if items < MAX_QUEUE_ITEMS && bytes + cost <= MAX_QUEUE_BYTES {
                break;
            }
            pushing_out += 1;
            items -= 1;
            bytes -= oldest.charged();
            if *oldest.enqueuer == *plugin {
                own += oldest.charged();
            }
        }
        Ok((pushing_out, own))
    }

    fn registered_by(&self, plugin: &str) -> usize {
        self.by_id.values().filter(|queue| *queue.plugin == *plugin).count()
    }

    /// An id no queue has (ids wrap after 2³² registrations; 0 is never one).
    fn unused_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !self.by_id.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
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
    /// The enqueuing plugin's items, over every queue, would pass [`MAX_QUEUED_BYTES_PER_PLUGIN`]
    /// (after what it left in stranded queues was forgotten). Answered with a status, not a
    /// trap: how much waits is the consumers' doing as much as the enqueuer's.
    EnqueuerFull,
}

/// Most items a queue holds; enqueueing beyond it drops the oldest item (a slow consumer must not
/// grow the host without bound).
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// Most bytes a queue's items are counted at together; beyond it the oldest items are dropped, as
/// beyond [`MAX_QUEUE_ITEMS`]. Queues live in the host, outside every VM's memory cap.
pub const MAX_QUEUE_BYTES: usize = 64 << 20;

/// What an item is counted at beside its bytes (its slot, its allocation, its enqueuer), so that
/// many empty items cannot hold far more host memory than the bounds say.
pub const ITEM_OVERHEAD: usize = 64;

/// Most bytes of items one plugin may have waiting in queues (its own and others'), all VMs of
/// it together: the per-queue bound times many queues would be no bound.
pub const MAX_QUEUED_BYTES_PER_PLUGIN: usize = 64 << 20;

/// Most queues one plugin keeps registered (stranded ones, which no live VM registered, are
/// forgotten whenever it registers a new name).
pub const MAX_QUEUES_PER_PLUGIN: usize = 1024;

/// Longest queue name (and longest `vm_id` a lookup takes).
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
        let key = (vm_id.to_owned(), name.to_vec());
        let mut queues = self.lock();
        if let Some(id) = queues.by_name.get(&key).copied()
            && let Some(queue) = queues.by_id.get_mut(&id)
            && *queue.plugin == *plugin
        {
            queue.registered_by(owner);
            return Ok(id);
        }
        // A new queue for this plugin, or one it takes over from another: rare (at start-up),
        // so walks of the registry are cheap enough.
        queues.forget_stranded(plugin);
        if queues.registered_by(plugin) >= MAX_QUEUES_PER_PLUGIN {
            return Err(QueueError::TooMany);
        }
        let plugin: Arc<str> = Arc::from(plugin);
        if let Some(id) = queues.by_name.get(&key).copied()
            && let Some(queue) = queues.by_id.get_mut(&id)
        {
            queue.registered_by(owner);
            queue.plugin = plugin;
            return Ok(id);
        }
        let id = queues.unused_id();
        queues.by_name.insert(key, id);
        let queue = Queue { items: VecDeque::new(), bytes: 0, registrants: vec![Arc::downgrade(owner)], plugin };
        queues.by_id.insert(id, queue);
        Ok(id)
    }

    /// Finds the id of `name` in `vm_id` (names and vm_ids longer than any registered one are
    /// not looked up).
    pub fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        if name.len() > MAX_QUEUE_NAME_BYTES || vm_id.len() > MAX_QUEUE_NAME_BYTES {
            return None;
        }
        let key = (vm_id.to_owned(), name.to_vec());
        self.lock().by_name.get(&key).copied()
    }

    /// Appends an item on behalf of `plugin` and notifies the queue's owner.
    pub fn enqueue(&self, queue_id: u32, plugin: &str, item: Vec<u8>) -> Result<(), QueueError> {
        let cost = charged(item.len());
        if cost > MAX_QUEUE_BYTES {
            return Err(QueueError::TooLarge);
        }
        // What the queue pushes out is freed after the lock: the lock is every worker's.
        let mut pushed_out = Vec::new();
        let owner = {
            let mut queues = self.lock();
            let (mut pushing_out, mut own) = queues.push_out_plan(queue_id, plugin, cost)?;
            if queues.held(plugin) - own + cost > MAX_QUEUED_BYTES_PER_PLUGIN {
                // What its VMs that are gone left behind goes first (a hot swap that renamed the
                // queue while the collector was down leaves spans behind), then it is refused.
                let now = std::time::Instant::now();
                if queues.last_enqueue_sweep.is_none_or(|at| now.duration_since(at) >= SWEEP_INTERVAL) {
                    queues.last_enqueue_sweep = Some(now);
                    queues.forget_stranded(plugin);
                }
                (pushing_out, own) = queues.push_out_plan(queue_id, plugin, cost)?;
                if queues.held(plugin) - own + cost > MAX_QUEUED_BYTES_PER_PLUGIN {
                    return Err(QueueError::EnqueuerFull);
                }
            }
            let enqueuer = queues.held_by.charge(plugin, cost);
            let Some(queue) = queues.by_id.get_mut(&queue_id) else {
                // Not reached: the plan above found it under the same lock.
                queues.held_by.refund(&enqueuer, cost);
                return Err(QueueError::NotFound);
            };
            pushed_out.extend(queue.items.drain(..pushing_out));
            queue.bytes = queue.bytes - pushed_out.iter().map(Item::charged).sum::<usize>() + cost;
            queue.items.push_back(Item { bytes: item, enqueuer });
            let owner = queue.owner();
            for oldest in &pushed_out {
                queues.refund(oldest);
            }
            owner
        };
        drop(pushed_out);
        // A queue nobody alive registered keeps its items for the next VM to register it.
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
        queue.bytes -= item.charged();
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
        registry.enqueue(id, "p", b"1".to_vec()).expect("queue exists");
        registry.enqueue(id, "producer", b"2".to_vec()).expect("queue exists");
        assert!(first.drain().is_empty());
        assert_eq!(second.drain(), vec![id]);
        assert_eq!(registry.dequeue(id), Ok(b"1".to_vec()));
        assert_eq!(registry.dequeue(id), Ok(b"2".to_vec()));
        assert_eq!(registry.dequeue(id), Err(QueueError::Empty));
        assert_eq!(registry.enqueue(id + 1, "p", b"x".to_vec()), Err(QueueError::NotFound));
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
            registry.enqueue(id, "p", item).expect("fits once the oldest go");
        }
        assert_eq!(registry.enqueue(id, "p", vec![0u8; MAX_QUEUE_BYTES]), Err(QueueError::TooLarge));
        let mut kept = Vec::new();
        while let Ok(item) = registry.dequeue(id) {
            kept.push(item[0]);
        }
        let fit = (MAX_QUEUE_BYTES / charged(piece.len())) as u8;
        assert_eq!(kept, (100 - fit..100).collect::<Vec<u8>>(), "the newest that fit in 64 MiB");
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
            match registry.enqueue(queues[queued % queues.len()], "hoarder", piece.clone()) {
                Ok(()) => queued += 1,
                Err(refused) => break refused,
            }
        };
        assert_eq!(refused, QueueError::EnqueuerFull);
        assert_eq!(queued, MAX_QUEUED_BYTES_PER_PLUGIN / charged(piece.len()), "64 MiB over four queues, none full");
        let tracer = registry.register("vm", "trace", b"spans", &inbox).expect("registers");
        assert_eq!(registry.enqueue(tracer, "trace", piece.clone()), Ok(()), "another plugin still has its room");
        registry.dequeue(queues[0]).expect("an item");
        assert_eq!(registry.enqueue(queues[0], "hoarder", piece.clone()), Ok(()), "room again once one is taken");
        // Empty items are counted too: a million of them are no free lunch.
        let tiny = registry.register("vm", "tiny", b"tiny", &inbox).expect("registers");
        for _ in 0..MAX_QUEUE_ITEMS + 5 {
            registry.enqueue(tiny, "tiny", Vec::new()).expect("the oldest go past the item bound");
        }
        assert_eq!(registry.lock().held("tiny"), MAX_QUEUE_ITEMS * ITEM_OVERHEAD);
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

        // A plugin whose configuration changes on every hot swap names a new queue each time; what
        // the VMs that are gone registered is forgotten, items and all, and never runs it out.
        let registry = SharedQueueRegistry::default();
        for generation in 0..3 * MAX_QUEUES_PER_PLUGIN {
            let vm = Arc::new(QueueInbox::default());
            let id = registry.register("vm", "trace", generation.to_string().as_bytes(), &vm).expect("registers");
            registry.enqueue(id, "trace", b"left behind".to_vec()).expect("enqueues");
        }
        assert_eq!(registry.lock().by_id.len(), 1, "the last generation's");
        assert_eq!(registry.lock().held("trace"), charged(b"left behind".len()), "the others' charges returned");
    }

    #[test]
    fn a_queue_a_live_vm_registered_is_never_forgotten_and_others_queues_never_go() {
        let registry = SharedQueueRegistry::default();
        let (first_worker, second_worker) = (Arc::new(QueueInbox::default()), Arc::new(QueueInbox::default()));
        let id = registry.register("vm", "trace", b"spans", &first_worker).expect("registers");
        assert_eq!(registry.register("vm", "trace", b"spans", &second_worker), Ok(id));
        let theirs = {
            let gone = Arc::new(QueueInbox::default());
            let theirs = registry.register("vm", "other", b"theirs", &gone).expect("registers");
            registry.enqueue(theirs, "other", b"keep".to_vec()).expect("enqueues");
            theirs
        };
        // The last registrant's VM goes (it trapped); the first worker's still holds the id.
        drop(second_worker);
        registry.register("vm", "trace", b"a-new-name", &first_worker).expect("registers");
        registry.enqueue(id, "trace", b"span".to_vec()).expect("the queue is still there");
        assert_eq!(first_worker.drain(), vec![id], "the live registrant is told");
        // A re-created VM registering the name again finds what waited.
        drop(first_worker);
        let recreated = Arc::new(QueueInbox::default());
        assert_eq!(registry.register("vm", "trace", b"spans", &recreated), Ok(id));
        assert_eq!(registry.dequeue(id), Ok(b"span".to_vec()));
        assert_eq!(registry.dequeue(theirs), Ok(b"keep".to_vec()), "another plugin's stranded queue stays");
    }
}
