//! The worker's side of a hot swap: the instance of each plugin that new streams use, the
//! instances a swap in progress has staged, and the retirement of replaced generations.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot, watch};
use wasmtrace_runtime::{CalloutDispatcher, PluginInstance, Runtime};

use crate::error::StageError;
use crate::plugins::{LoadedPlugin, PluginSlot};
use crate::timers;

/// How often a retiring generation looks whether its last stream has ended.
const STREAM_END_POLL: Duration = Duration::from_millis(10);

/// What the swap coordinator asks of a worker.
pub enum WorkerCommand {
    /// Start (and configure) a VM of a new generation; answer whether it started.
    Stage {
        /// Which slot.
        slot: usize,
        /// The generation.
        plugin: Arc<LoadedPlugin>,
        /// The outcome: `Err` carries the start/configure failure.
        reply: oneshot::Sender<Result<(), StageError>>,
    },
    /// The slot's published generation changed: switch now, even if no stream arrives.
    Publish {
        /// Which slot.
        slot: usize,
    },
    /// A swap was refused elsewhere: drop the staged generation.
    Discard {
        /// Which slot.
        slot: usize,
        /// The generation to drop.
        generation: u64,
    },
}

/// What a worker's plugins need from it.
pub struct WorkerEnv {
    /// The process's Wasm runtime.
    pub runtime: Arc<Runtime>,
    /// The worker's callout dispatcher.
    pub callouts: Rc<dyn CalloutDispatcher>,
    /// The worker's stop signal.
    pub stop: watch::Receiver<bool>,
    /// How long a replaced generation may take to drain and flush.
    pub drain_timeout: Duration,
    retiring: Cell<usize>,
    retired: Notify,
}

impl WorkerEnv {
    /// The environment of one worker.
    pub fn new(
        runtime: Arc<Runtime>,
        callouts: Rc<dyn CalloutDispatcher>,
        stop: watch::Receiver<bool>,
        drain_timeout: Duration,
    ) -> Self {
        Self { runtime, callouts, stop, drain_timeout, retiring: Cell::new(0), retired: Notify::new() }
    }

    /// Waits until every replaced generation on this worker has drained (or `deadline`).
    pub async fn retirements_done(&self, deadline: Instant) {
        while self.retiring.get() > 0 && Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline.into(), self.retired.notified()).await;
        }
    }
}

/// A generation running on this worker: its instance and the switch that stops its timers.
struct WorkerGeneration {
    plugin: Arc<LoadedPlugin>,
    instance: Rc<PluginInstance>,
    stop_timers: watch::Sender<bool>,
}

impl WorkerGeneration {
    /// Starts a VM of `plugin`. A filter's timers stop with the worker (its streams drain, then
    /// it flushes); a service's keep running through the drain, until it finishes after the
    /// filters (they may still enqueue for it).
    fn start(env: &WorkerEnv, plugin: Arc<LoadedPlugin>, service: bool) -> Result<Self, StageError> {
        let instance =
            PluginInstance::start(&env.runtime, plugin.module.clone(), plugin.config.clone(), env.callouts.clone())
                .map_err(|source| StageError::Start { listener: plugin.listener.clone(), source })?;
        let instance = Rc::new(instance);
        plugin.vms_alive.fetch_add(1, Ordering::Relaxed);
        let (stop_timers, mut generation_stop) = watch::channel(false);
        let mut worker_stop = env.stop.clone();
        let until = async move {
            tokio::select! {
                _ = worker_stop.wait_for(|stopped| *stopped && !service) => {}
                _ = generation_stop.wait_for(|stopped| *stopped) => {}
            }
        };
        tokio::task::spawn_local(timers::drive(instance.clone(), until));
        Ok(Self { plugin, instance, stop_timers })
    }

    /// Lets the streams still on this generation finish, then has its root context flush and
    /// finish, and drops it.
    async fn retire(self, deadline: Instant) {
        let _ = self.stop_timers.send(true);
        if let Some(vm) = self.instance.current_vm() {
            while vm.live_streams() > 0 && Instant::now() < deadline {
                tokio::time::sleep(STREAM_END_POLL).await;
            }
            if vm.live_streams() > 0 {
                tracing::warn!(
                    plugin = %self.plugin.filter.name,
                    generation = self.plugin.generation,
                    streams = vm.live_streams(),
                    "drain timeout: generation retired with streams still open"
                );
            }
            timers::finish(&vm, deadline).await;
        }
        self.plugin.vms_alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One configured filter on one worker.
pub struct WorkerPlugin {
    slot: Arc<PluginSlot>,
    env: Rc<WorkerEnv>,
    active: RefCell<WorkerGeneration>,
    active_generation: Cell<u64>,
    staged: RefCell<Vec<WorkerGeneration>>,
    /// Set by [`finish`](Self::finish): no more swaps on this worker.
    stopping: Cell<bool>,
}

impl WorkerPlugin {
    /// Starts the slot's active generation on this worker.
    pub fn start(slot: Arc<PluginSlot>, env: Rc<WorkerEnv>) -> Result<Self, StageError> {
        let plugin = slot.active();
        let generation = WorkerGeneration::start(&env, plugin.clone(), slot.role.is_service())?;
        Ok(Self {
            active_generation: Cell::new(plugin.generation),
            slot,
            env,
            active: RefCell::new(generation),
            staged: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
        })
    }

    /// The instance a new stream uses: the published generation.
    pub fn instance(&self) -> Rc<PluginInstance> {
        let published = self.slot.published.load(Ordering::Acquire);
        if published != self.active_generation.get() && !self.stopping.get() {
            self.switch_to(published);
        }
        self.active.borrow().instance.clone()
    }

    /// Runs one command of the swap coordinator.
    pub fn apply(&self, command: WorkerCommand) {
        match command {
            WorkerCommand::Stage { plugin, reply, .. } => {
                let outcome = if self.stopping.get() {
                    Err(StageError::ShuttingDown)
                } else {
                    WorkerGeneration::start(&self.env, plugin, self.slot.role.is_service())
                        .map(|g| self.staged.borrow_mut().push(g))
                };
                let _ = reply.send(outcome);
            }
            WorkerCommand::Publish { .. } => {
                let _ = self.instance();
            }
            WorkerCommand::Discard { generation, .. } => {
                let discarded: Vec<_> = {
                    let mut staged = self.staged.borrow_mut();
                    let (drop, keep) = staged.drain(..).partition(|g| g.plugin.generation == generation);
                    *staged = keep;
                    drop
                };
                for g in discarded {
                    self.retire(g, false);
                }
            }
        }
    }

    fn switch_to(&self, published: u64) {
        let next = {
            let mut staged = self.staged.borrow_mut();
            let Some(position) = staged.iter().position(|g| g.plugin.generation == published) else {
                // Published without being staged here cannot happen (the coordinator waits for
                // every worker); keep serving what we have rather than fail streams.
                tracing::error!(plugin = %self.slot.name, published, "published generation was not staged on this worker");
                self.active_generation.set(published);
                return;
            };
            staged.remove(position)
        };
        self.active_generation.set(published);
        let old = self.active.replace(next);
        self.retire(old, true);
    }

    /// Retires `generation` in the background; `replaced` counts it as a drained generation.
    fn retire(&self, generation: WorkerGeneration, replaced: bool) {
        let env = self.env.clone();
        let slot = self.slot.clone();
        env.retiring.set(env.retiring.get() + 1);
        tokio::task::spawn_local(async move {
            let started = Instant::now();
            generation.retire(started + env.drain_timeout).await;
            if replaced {
                slot.counters.drained(started.elapsed());
            }
            env.retiring.set(env.retiring.get() - 1);
            env.retired.notify_waiters();
        });
    }

    /// At shutdown: every generation on this worker finishes and flushes (until `deadline`).
    pub async fn finish(&self, deadline: Instant) {
        self.stopping.set(true);
        let staged: Vec<_> = self.staged.borrow_mut().drain(..).collect();
        for generation in staged {
            generation.retire(deadline).await;
        }
        let (instance, plugin) = {
            let active = self.active.borrow();
            let _ = active.stop_timers.send(true);
            (active.instance.clone(), active.plugin.clone())
        };
        if let Some(vm) = instance.current_vm() {
            timers::finish(&vm, deadline).await;
        }
        plugin.vms_alive.fetch_sub(1, Ordering::Relaxed);
    }
}
