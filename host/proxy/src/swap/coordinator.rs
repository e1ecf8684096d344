//! The control side of a hot swap: compile off the request path, stage on every worker, publish
//! with one atomic store, or refuse and leave the serving generation alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Mutex, mpsc, oneshot};
use wasmtrace_runtime::{PluginModule, Runtime, VmLimits, hex_sha256};

use super::worker_plugin::WorkerCommand;
use crate::error::StageError;
use crate::module_file::{check_module_bytes, read_module_file};
use crate::plugins::{LoadedPlugin, PluginSlot};

/// A swap's module bytes and where they came from (for messages), read off the async threads and
/// checked: a regular file, within the size cap, the binary format.
async fn read_source(source: ModuleSource) -> Result<(Vec<u8>, String), SwapError> {
    let read = tokio::task::spawn_blocking(move || match source {
        ModuleSource::Path(path) => read_module_file(&path).map(|bytes| (bytes, path.display().to_string())),
        ModuleSource::Bytes(bytes) => {
            let origin = "the module sent".to_owned();
            check_module_bytes(&bytes, &origin).map(|()| (bytes, origin))
        }
    })
    .await
    .map_err(|e| SwapError::Refused(format!("reading the module did not finish: {e}")))?;
    read.map_err(|e| SwapError::Refused(crate::error::chain(&e)))
}

/// Where a swap's new module comes from.
#[derive(Clone, Debug)]
pub enum ModuleSource {
    /// A file on the proxy's machine (it becomes the plugin's `module_path`).
    Path(PathBuf),
    /// Module bytes sent with the request.
    Bytes(Vec<u8>),
}

/// A request to replace a plugin's module and/or configuration.
#[derive(Clone, Debug, Default)]
pub struct SwapRequest {
    /// Plugin name (`config.name`); every listener's plugin of that name unless `listener` is set.
    pub plugin: String,
    /// Only the plugin on this listener.
    pub listener: Option<String>,
    /// The new module; `None` keeps the current one (a configuration-only swap reuses the
    /// compiled module, as Envoy does).
    pub module: Option<ModuleSource>,
    /// The new plugin configuration (`configuration`); `None` keeps the current one.
    pub configuration: Option<Vec<u8>>,
    /// The new VM configuration (`vm_config.configuration`); `None` keeps the current one.
    pub vm_configuration: Option<Vec<u8>>,
}

/// One plugin's published swap.
#[derive(Clone, Debug, Serialize)]
pub struct Swapped {
    /// Listener name.
    pub listener: String,
    /// Plugin name.
    pub plugin: String,
    /// The generation replaced.
    pub old_generation: u64,
    /// The generation now serving.
    pub generation: u64,
    /// sha256 of the module replaced.
    pub old_sha256: String,
    /// sha256 of the module now serving.
    pub sha256: String,
    /// The module changed (not only the configuration).
    pub module_changed: bool,
    /// Where the serving module's code came from (`compiled`, `disk cache`, `quick compile`).
    pub module_source: &'static str,
}

/// What a swap did.
#[derive(Clone, Debug, Serialize)]
pub struct SwapOutcome {
    /// Published swaps; empty when nothing differed from what is serving.
    pub swapped: Vec<Swapped>,
    /// Plugins that already ran exactly this module and configuration.
    pub unchanged: Vec<String>,
    /// From the request to the publication (compile, start on every worker, publish).
    pub published_after_ms: f64,
    /// The module came from the compiled-module cache.
    pub module_cached: bool,
    /// The published code is the quick tier's (`--tiered-swaps`): the optimised code follows
    /// as the next generation once it is compiled.
    pub optimising: bool,
}

/// Why a swap did not happen. In every case the serving generation keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No plugin has that name (on that listener).
    #[error("no plugin named `{0}`")]
    UnknownPlugin(String),
    /// Rollback asked for, but there is nothing to roll back to.
    #[error("plugin `{0}` has no previous generation to roll back to")]
    NoPrevious(String),
    /// The module or configuration was refused: it does not compile, lacks the ABI, or fails to
    /// start or configure.
    #[error("swap refused: {0}")]
    Refused(String),
}

/// The quick module one of `slots` now serves, if any (what a tier-up replaces).
fn next_quick_module(slots: &[Arc<PluginSlot>]) -> Option<Arc<PluginModule>> {
    slots.iter().map(|slot| slot.active().module.clone()).find(|module| module.is_quick())
}

/// A swap's module, compiled.
struct Compiled {
    module: Arc<PluginModule>,
    /// It was compiled before (in memory).
    cached: bool,
    /// The quick tier compiled it: these bytes are compiled fully next.
    optimise_later: Option<Vec<u8>>,
}

/// What a publication is to the plugin's history.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Publication {
    /// A swap or rollback: the generation it replaces becomes the one to roll back to.
    NewGeneration,
    /// The optimised code of a tiered swap replacing its quick code: the rollback target stays.
    TierUp,
}

/// Serialises swaps and carries them out across the workers.
pub struct SwapCoordinator {
    runtime: Arc<Runtime>,
    slots: Vec<Arc<PluginSlot>>,
    workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
    limits: VmLimits,
    one_at_a_time: Mutex<()>,
    /// Held by the one tier-up compiling (tiered swaps): background compiles never pile up.
    tier_ups: Mutex<()>,
}

impl SwapCoordinator {
    /// A coordinator over `slots`, talking to each worker through its command channel.
    pub fn new(
        runtime: Arc<Runtime>,
        slots: Vec<Arc<PluginSlot>>,
        workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
        limits: VmLimits,
    ) -> Self {
        Self { runtime, slots, workers, limits, one_at_a_time: Mutex::new(()), tier_ups: Mutex::new(()) }
    }

    /// Every configured plugin.
    pub fn slots(&self) -> &[Arc<PluginSlot>] {
        &self.slots
    }

    fn select(&self, plugin: &str, listener: Option<&str>) -> Result<Vec<Arc<PluginSlot>>, SwapError> {
        let selected: Vec<_> = self
            .slots
            .iter()
            .filter(|s| s.name == plugin && listener.is_none_or(|l| s.listener == l))
            .cloned()
            .collect();
        if selected.is_empty() {
            let name = match listener {
                Some(l) => format!("{plugin}` on listener `{l}"),
                None => plugin.to_owned(),
            };
            return Err(SwapError::UnknownPlugin(name));
        }
        Ok(selected)
    }

    /// Replaces a plugin's module and/or configuration on every worker.
    pub async fn swap(self: &Arc<Self>, request: SwapRequest) -> Result<SwapOutcome, SwapError> {
        let count_refusal = |slots: &[Arc<PluginSlot>]| {
            slots.iter().for_each(|s| {
                s.counters.refusals.fetch_add(1, Ordering::Relaxed);
            })
        };
        // The module is read and checked before waiting for the swap lock: a slow or hostile
        // file must not hold up other swaps.
        let module_bytes = match &request.module {
            Some(source) => {
                let read = read_source(source.clone()).await;
                if read.is_err() {
                    count_refusal(&self.select(&request.plugin, request.listener.as_deref())?);
                }
                Some(read?)
            }
            None => None,
        };
        let _serialised = self.one_at_a_time.lock().await;
        let started = Instant::now();
        let slots = self.select(&request.plugin, request.listener.as_deref())?;
        let (module, module_cached, mut optimise_later) = match module_bytes {
            Some((bytes, origin)) => {
                let compiled = self.compile(bytes, origin).await.inspect_err(|_| count_refusal(&slots))?;
                (Some(compiled.module), compiled.cached, compiled.optimise_later)
            }
            None => (None, true, None),
        };
        let mut next = Vec::new();
        let mut unchanged = Vec::new();
        for slot in &slots {
            let active = slot.active();
            let mut filter = active.filter.clone();
            if let Some(ModuleSource::Path(path)) = &request.module {
                filter.module_path = path.clone();
            }
            if let Some(configuration) = &request.configuration {
                filter.plugin_configuration = configuration.clone();
            }
            if let Some(vm_configuration) = &request.vm_configuration {
                filter.vm_configuration = vm_configuration.clone();
            }
            let module = self.optimised(module.as_ref().unwrap_or(&active.module));
            // Quick code is not the same as the optimised code of the same module: swapping
            // from one to the other is a change (it is how a stuck quick generation is fixed).
            let same_code = module.sha256() == active.module.sha256() && module.is_quick() == active.module.is_quick();
            if same_code
                && filter.plugin_configuration == active.filter.plugin_configuration
                && filter.vm_configuration == active.filter.vm_configuration
            {
                unchanged.push(format!("{}/{}", slot.listener, slot.name));
                continue;
            }
            next.push((slot.clone(), filter, module));
        }
        let quick_first = optimise_later.is_some();
        let swapped = match self.stage_and_publish(next.clone(), Publication::NewGeneration, quick_first).await {
            Err(SwapError::Refused(reason)) if quick_first => {
                // Unoptimised code may miss a start-up deadline the optimised code meets: the
                // quick tier is a shortcut, never a reason to refuse a module.
                tracing::info!("tiered swap: the quick code did not start ({reason}); compiling fully");
                let bytes = optimise_later.take().unwrap_or_default();
                let full = self.compile_fully(bytes).await.inspect_err(|_| count_refusal(&slots))?;
                let next = next.into_iter().map(|(slot, filter, _)| (slot, filter, full.clone())).collect();
                self.stage_and_publish(next, Publication::NewGeneration, false).await?
            }
            other => other?,
        };
        let published_after_ms = started.elapsed().as_secs_f64() * 1e3;
        let quick = next_quick_module(&slots);
        let optimising = optimise_later.is_some() && quick.is_some();
        if let (Some(bytes), Some(quick)) = (optimise_later, quick) {
            let coordinator = self.clone();
            tokio::spawn(async move { coordinator.publish_optimised(bytes, quick).await });
        }
        Ok(SwapOutcome { swapped, unchanged, published_after_ms, module_cached, optimising })
    }

    /// `module`, or its optimised code when `module` is quick code whose full compile is done.
    fn optimised(&self, module: &Arc<PluginModule>) -> Arc<PluginModule> {
        if module.is_quick()
            && let Some(full) = self.runtime.cached(module.sha256())
        {
            return full;
        }
        module.clone()
    }

    /// The second half of a tiered swap: compiles `bytes` fully and publishes the optimised code
    /// on every slot whose serving generation runs `quick`, with that generation's
    /// configuration (a configuration swap meanwhile kept the quick module; it is tiered up
    /// too). One tier-up compiles at a time, and one whose quick code no longer serves anywhere
    /// is skipped before it compiles. A failure leaves the quick code serving (it is correct,
    /// only slower) and is logged.
    async fn publish_optimised(&self, bytes: Vec<u8>, quick: Arc<PluginModule>) {
        let _one_compile = self.tier_ups.lock().await;
        if !self.slots.iter().any(|slot| Arc::ptr_eq(&slot.active().module, &quick)) {
            return tracing::debug!(sha256 = %quick.sha256(), "tiered swap: quick code no longer serves; not compiling");
        }
        let module = match self.compile_fully(bytes).await {
            Ok(module) => module,
            Err(e) => return tracing::warn!("tiered swap: the optimised compile failed, quick code stays: {e}"),
        };
        let _serialised = self.one_at_a_time.lock().await;
        let next: Vec<_> = self
            .slots
            .iter()
            .filter_map(|slot| {
                let active = slot.active();
                Arc::ptr_eq(&active.module, &quick).then(|| (slot.clone(), active.filter.clone(), module.clone()))
            })
            .collect();
        match self.stage_and_publish(next, Publication::TierUp, false).await {
            Ok(swapped) => swapped.iter().for_each(|s| {
                tracing::info!(listener = %s.listener, plugin = %s.plugin, generation = s.generation, "tiered swap: optimised code published")
            }),
            Err(e) => tracing::warn!("tiered swap: the optimised code was not published, quick code stays: {e}"),
        }
    }

    /// Compiles `bytes` with the optimising tier on a thread of its own, so a shutdown never
    /// waits for a compile nobody will use (a blocking-pool task would hold the control runtime's
    /// drop until it ends).
    async fn compile_fully(&self, bytes: Vec<u8>) -> Result<Arc<PluginModule>, SwapError> {
        let runtime = self.runtime.clone();
        let (done, compiled) = oneshot::channel();
        std::thread::Builder::new()
            .name("wasm-compile".into())
            .spawn(move || {
                let _ = done.send(runtime.compile(&bytes));
            })
            .map_err(|e| SwapError::Refused(format!("cannot start the compile: {e}")))?;
        match compiled.await {
            Ok(Ok(module)) => Ok(module),
            Ok(Err(e)) => Err(SwapError::Refused(format!("the module does not load: {e}"))),
            Err(_) => Err(SwapError::Refused("the compile did not finish".into())),
        }
    }

    /// Returns a plugin to the generation it ran before the last swap (as a new generation).
    pub async fn rollback(&self, plugin: &str, listener: Option<&str>) -> Result<SwapOutcome, SwapError> {
        let _serialised = self.one_at_a_time.lock().await;
        let started = Instant::now();
        let slots = self.select(plugin, listener)?;
        let mut next = Vec::new();
        for slot in &slots {
            let previous = slot.generations().previous.clone();
            let Some(previous) = previous else {
                return Err(SwapError::NoPrevious(format!("{}/{}", slot.listener, slot.name)));
            };
            next.push((slot.clone(), previous.filter.clone(), self.optimised(&previous.module)));
        }
        let swapped = self.stage_and_publish(next, Publication::NewGeneration, false).await?;
        let published_after_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(SwapOutcome { swapped, unchanged: Vec::new(), published_after_ms, module_cached: true, optimising: false })
    }

    /// Compiles off the async threads; a module compiled before (same sha256) is reused. With
    /// tiered swaps, a module never compiled is compiled by the quick tier, and its bytes come
    /// back for the optimised compile.
    async fn compile(&self, bytes: Vec<u8>, origin: String) -> Result<Compiled, SwapError> {
        let runtime = self.runtime.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let cached = runtime.cached(&hex_sha256(&bytes)).is_some();
            let fail = |e: wasmtrace_runtime::LoadError| format!("{origin} does not load: {e}");
            if let Some(module) = runtime.compile_quick(&bytes).map_err(fail)? {
                return Ok(Compiled { module, cached: false, optimise_later: Some(bytes) });
            }
            let module = runtime.compile(&bytes).map_err(fail)?;
            Ok::<_, String>(Compiled { module, cached, optimise_later: None })
        })
        .await
        .map_err(|e| SwapError::Refused(format!("compilation did not finish: {e}")))?;
        compiled.map_err(SwapError::Refused)
    }

    async fn stage_and_publish(
        &self,
        next: Vec<(Arc<PluginSlot>, wasmtrace_config::WasmFilter, Arc<PluginModule>)>,
        publication: Publication,
        retry_on_refusal: bool,
    ) -> Result<Vec<Swapped>, SwapError> {
        if next.is_empty() {
            return Ok(Vec::new());
        }
        let staged: Vec<(Arc<PluginSlot>, Arc<LoadedPlugin>)> = next
            .into_iter()
            .map(|(slot, filter, module)| {
                let generation = {
                    let mut generations = slot.generations();
                    generations.last_generation += 1;
                    generations.last_generation
                };
                let plugin = Arc::new(LoadedPlugin::new(&slot.listener, filter, module, &self.limits, generation));
                (slot, plugin)
            })
            .collect();
        if let Err(refusal) = self.stage_everywhere(&staged).await {
            let reason = crate::error::chain(&refusal);
            // A refusal the caller retries (quick code, then the full compile) and a refused
            // tier-up are not the user's swap refused: they count nothing.
            let counted = publication == Publication::NewGeneration && !retry_on_refusal;
            for (slot, plugin) in &staged {
                if counted {
                    slot.counters.refusals.fetch_add(1, Ordering::Relaxed);
                }
                for worker in &self.workers {
                    let _ = worker.send(WorkerCommand::Discard { slot: slot.index, generation: plugin.generation });
                }
            }
            if counted {
                tracing::warn!(plugin = %staged[0].0.name, "hot swap refused: {reason}; the serving generation stays");
            }
            return Err(SwapError::Refused(reason));
        }
        let mut swapped = Vec::new();
        for (slot, plugin) in staged {
            let old = {
                let mut generations = slot.generations();
                let old = std::mem::replace(&mut generations.active, plugin.clone());
                generations.replaced.retain(|g| g.vms_alive.load(Ordering::Relaxed) > 0);
                generations.replaced.push(old.clone());
                // A tier-up replaces the quick code of the same swap: a rollback still goes to
                // what served before that swap.
                if publication == Publication::NewGeneration {
                    generations.previous = Some(old.clone());
                }
                old
            };
            slot.published.store(plugin.generation, Ordering::Release);
            // A tier-up is the second half of a swap already counted.
            if publication == Publication::NewGeneration {
                slot.counters.swaps.fetch_add(1, Ordering::Relaxed);
            }
            for worker in &self.workers {
                let _ = worker.send(WorkerCommand::Publish { slot: slot.index });
            }
            tracing::info!(
                listener = %slot.listener,
                plugin = %slot.name,
                old_generation = old.generation,
                generation = plugin.generation,
                old_sha256 = %old.module.sha256(),
                sha256 = %plugin.module.sha256(),
                "hot swap published"
            );
            swapped.push(Swapped {
                listener: slot.listener.clone(),
                plugin: slot.name.clone(),
                old_generation: old.generation,
                generation: plugin.generation,
                old_sha256: old.module.sha256().to_owned(),
                sha256: plugin.module.sha256().to_owned(),
                module_changed: old.module.sha256() != plugin.module.sha256(),
                module_source: plugin.module.source().label(),
            });
        }
        Ok(swapped)
    }

    /// Starts every new generation on every worker; the first failure is the refusal reason.
    async fn stage_everywhere(&self, staged: &[(Arc<PluginSlot>, Arc<LoadedPlugin>)]) -> Result<(), StageError> {
        let mut replies = Vec::new();
        for (worker_index, worker) in self.workers.iter().enumerate() {
            for (slot, plugin) in staged {
                let (reply, answer) = oneshot::channel();
                worker
                    .send(WorkerCommand::Stage { slot: slot.index, plugin: plugin.clone(), reply })
                    .map_err(|_| StageError::Worker { index: worker_index, what: "has stopped" })?;
                replies.push((worker_index, slot.clone(), answer));
            }
        }
        // Start-up is bounded by the VM's start deadline; the margin covers a busy worker.
        let wait = self.limits.start_deadline + Duration::from_secs(5);
        for (worker_index, slot, answer) in replies {
            let stopped = StageError::Worker { index: worker_index, what: "stopped while starting the plugin" };
            match tokio::time::timeout(wait, answer).await {
                Ok(Ok(outcome)) => outcome?,
                Ok(Err(_)) => return Err(stopped),
                Err(_) => {
                    tracing::warn!(plugin = %slot.name, ?wait, "a worker did not start the plugin in time");
                    return Err(StageError::Timeout { index: worker_index, wait });
                }
            }
        }
        Ok(())
    }
}
