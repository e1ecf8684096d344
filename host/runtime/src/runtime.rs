//! The process-wide runtime: one wasmtime [`Engine`] with epoch interruption, the linker holding
//! every host function (built once), the compiled-module cache (in memory, and optionally on
//! disk: see [`crate::module_cache`]) and the [`HostServices`].
//!
//! Workers share one `Runtime` through an `Arc`; each worker instantiates its own VMs from the
//! cached [`PluginModule`]s (see [`crate::PluginInstance`]).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Linker, OptLevel, ProfilingStrategy, Strategy};

use crate::abi;
use crate::error::LoadError;
use crate::module::{ModuleSource, PluginModule, Toolchain};
use crate::module_cache::{CacheLimits, DiskCache};
use crate::services::HostServices;
use crate::state::VmState;

/// How often the epoch advances; callback deadlines are rounded up to this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Compiled modules by sha256: every module in use (weakly, so an unused one can go), plus the
/// most recently compiled or reused ones (strongly), so swapping back and forth between a few
/// modules compiles each once.
#[derive(Default)]
struct ModuleCache {
    by_sha256: HashMap<String, Weak<PluginModule>>,
    recent: VecDeque<Arc<PluginModule>>,
}

impl ModuleCache {
    /// Compiled modules kept alive after their last user went.
    const RECENT: usize = 8;

    fn get(&mut self, sha256: &str) -> Option<Arc<PluginModule>> {
        let module = self.by_sha256.get(sha256).and_then(Weak::upgrade)?;
        self.remember(&module);
        Some(module)
    }

    fn insert(&mut self, sha256: String, module: &Arc<PluginModule>) {
        self.by_sha256.retain(|_, m| m.strong_count() > 0);
        self.by_sha256.insert(sha256, Arc::downgrade(module));
        self.remember(module);
    }

    fn remember(&mut self, module: &Arc<PluginModule>) {
        self.recent.retain(|m| !Arc::ptr_eq(m, module));
        self.recent.push_front(module.clone());
        self.recent.truncate(Self::RECENT);
    }
}

/// Which profiler wasmtime feeds with the guests' compiled functions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profiler {
    /// No profiler (the default).
    #[default]
    None,
    /// Linux `perf` map: wasmtime appends every compiled guest function's address range and
    /// name to `/tmp/perf-<pid>.map`, which `perf report` reads to name JIT code. Profile a
    /// running sidecar with `perf record -g -p <pid>` (or `perf record -g -- wasmtrace run ...`),
    /// then `perf report`: guest frames show as their Wasm function names instead of raw
    /// addresses. Enabled by `wasmtrace run --profile perfmap` or `WASMTRACE_PROFILE=perfmap`.
    /// The map only grows (one set of lines per module loaded), so use it while profiling, not
    /// permanently.
    PerfMap,
}

/// An unknown profiler name.
#[derive(Debug, thiserror::Error)]
#[error("unknown profiler `{0}` (known: none, perfmap)")]
pub struct UnknownProfiler(String);

impl FromStr for Profiler {
    type Err = UnknownProfiler;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "" | "none" => Ok(Self::None),
            "perfmap" => Ok(Self::PerfMap),
            other => Err(UnknownProfiler(other.to_owned())),
        }
    }
}

/// How a [`Runtime`] is set up beyond its host services. The default caches nothing on disk
/// and profiles nothing, so tests and library users never write outside their own paths.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// The directory of the on-disk cache of compiled modules (created 0700 if absent), so a
    /// restart or a swap to a module compiled before by any process of this user does not
    /// compile it again. `None`: compiled modules are only kept in memory. The CLI defaults it
    /// to [`crate::default_module_cache_dir`].
    pub module_cache: Option<PathBuf>,
    /// How large the disk cache may grow.
    pub module_cache_limits: CacheLimits,
    /// The profiler wasmtime reports compiled guest code to.
    pub profiler: Profiler,
    /// A swap to a module compiled neither in memory nor on disk publishes the module compiled
    /// by a quick tier (Winch, wasmtime's baseline compiler: a fraction of the compile time,
    /// slower code), then compiles it fully in the background and publishes that as the next
    /// generation. The price: the filter runs slower code for the
    /// seconds of the full compile, and its root context starts twice (as after a configuration
    /// swap). Off by default; `wasmtrace run --tiered-swaps`.
    pub tiered_swaps: bool,
}

/// How the runtime's modules were obtained since it started, for stats and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModuleLoadStats {
    /// Modules compiled from WebAssembly (`wasmtrace_module_compilations_total`).
    pub compiled: u64,
    /// Modules read from the disk cache instead of compiled.
    pub from_disk_cache: u64,
    /// Disk cache entries refused (corrupt, truncated, foreign) and compiled again.
    pub disk_cache_rejected: u64,
    /// Loads answered by a module already compiled in this process.
    pub from_memory: u64,
}

#[derive(Default)]
struct LoadCounters {
    compiled: AtomicU64,
    from_disk_cache: AtomicU64,
    from_memory: AtomicU64,
}

/// An engine and what links modules compiled by it: the optimising tier, or the quick one.
struct Tier {
    engine: Engine,
    linker: Linker<VmState>,
    component_linker: wasmtime::component::Linker<VmState>,
    provided_imports: abi::ProvidedImports,
}

impl Tier {
    fn new(options: &RuntimeOptions, quick: bool) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        if quick {
            // Winch, wasmtime's baseline compiler: one pass over each function, no optimisation,
            // several times faster to compile than Cranelift. It checks epochs as Cranelift does
            // (the callback deadline holds), and lacks only proposals our guests do not use
            // (tail calls, GC, exceptions), which it refuses at compile time.
            config.strategy(Strategy::Winch);
        } else {
            config.cranelift_opt_level(OptLevel::Speed);
        }
        if options.profiler == Profiler::PerfMap {
            config.profiler(ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        let provided_imports = abi::add_to_linker(&mut linker).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let component_linker = crate::component::linker(&engine).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        Ok(Self { engine, linker, component_linker, provided_imports })
    }

    fn toolchain(&self, quick: bool) -> Toolchain<'_> {
        Toolchain {
            engine: &self.engine,
            linker: &self.linker,
            component_linker: &self.component_linker,
            provided: &self.provided_imports,
            quick,
        }
    }
}

/// The process-wide Wasm runtime.
pub struct Runtime {
    engine: Engine,
    optimised: Tier,
    /// The quick tier, with [`RuntimeOptions::tiered_swaps`].
    quick: Option<Tier>,
    services: Arc<HostServices>,
    modules: Mutex<ModuleCache>,
    disk_cache: Option<DiskCache>,
    loads: LoadCounters,
    ticker: EpochTicker,
}

impl Runtime {
    /// A runtime with default host services.
    pub fn new() -> Result<Arc<Self>, LoadError> {
        Self::with_services(HostServices::default())
    }

    /// A runtime sharing the given host services, with default [`RuntimeOptions`] (no disk
    /// cache, no profiler).
    pub fn with_services(services: HostServices) -> Result<Arc<Self>, LoadError> {
        Self::with_options(services, &RuntimeOptions::default())
    }

    /// A runtime sharing the given host services, set up as `options` say. A module cache
    /// directory that cannot be used (not creatable, or not private to this user) is logged
    /// and the runtime runs without it: the cache saves time, it is never needed.
    pub fn with_options(services: HostServices, options: &RuntimeOptions) -> Result<Arc<Self>, LoadError> {
        let optimised = Tier::new(options, false)?;
        let quick = if options.tiered_swaps { Some(Tier::new(options, true)?) } else { None };
        let engine = optimised.engine.clone();
        let disk_cache = options.module_cache.as_deref().and_then(|dir| {
            match DiskCache::open(dir, &engine, options.module_cache_limits) {
                Ok(cache) => {
                    tracing::debug!(dir = %cache.dir().display(), "module cache in use");
                    Some(cache)
                }
                Err(e) => {
                    tracing::warn!("module cache disabled: {e}");
                    None
                }
            }
        });
        let mut engines = vec![engine.clone()];
        engines.extend(quick.as_ref().map(|tier| tier.engine.clone()));
        let ticker = EpochTicker::start(engines);
        Ok(Arc::new(Self {
            engine,
            optimised,
            quick,
            services: Arc::new(services),
            modules: Mutex::new(ModuleCache::default()),
            disk_cache,
            loads: LoadCounters::default(),
            ticker,
        }))
    }

    /// The on-disk module cache's directory, if one is in use.
    pub fn module_cache_dir(&self) -> Option<&std::path::Path> {
        self.disk_cache.as_ref().map(DiskCache::dir)
    }

    /// How many modules were compiled, read from the disk cache, or found compiled in memory.
    pub fn module_load_stats(&self) -> ModuleLoadStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ModuleLoadStats {
            compiled: get(&self.loads.compiled),
            from_disk_cache: get(&self.loads.from_disk_cache),
            disk_cache_rejected: self.disk_cache.as_ref().map_or(0, DiskCache::rejected),
            from_memory: get(&self.loads.from_memory),
        }
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The process-wide host services.
    pub fn services(&self) -> &Arc<HostServices> {
        &self.services
    }

    /// Compiles and validates a module, or returns the already compiled one with the same
    /// sha256 (in memory, else from the disk cache when one is configured). Compilation is the
    /// expensive step: do it off the request path.
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<PluginModule>, LoadError> {
        let sha256 = hex_sha256(bytes);
        if let Some(module) = self.cached(&sha256) {
            self.loads.from_memory.fetch_add(1, Ordering::Relaxed);
            return Ok(module);
        }
        let tools = self.optimised.toolchain(false);
        let module = Arc::new(PluginModule::load(&tools, bytes, sha256.clone(), self.disk_cache.as_ref())?);
        let counter = match module.source() {
            ModuleSource::Compiled | ModuleSource::QuickCompiled => &self.loads.compiled,
            ModuleSource::DiskCache => &self.loads.from_disk_cache,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).insert(sha256, &module);
        Ok(module)
    }

    /// With [`RuntimeOptions::tiered_swaps`], a module that is neither compiled in memory nor in
    /// the disk cache, compiled by the quick tier (`Ok(None)` otherwise, or when the quick tier
    /// cannot compile it: [`Self::compile`] it).
    /// The quick code is never cached, in memory or on disk: the optimised code is what
    /// [`Self::compile`] then makes and keeps.
    pub fn compile_quick(&self, bytes: &[u8]) -> Result<Option<Arc<PluginModule>>, LoadError> {
        let Some(quick) = &self.quick else { return Ok(None) };
        let sha256 = hex_sha256(bytes);
        if self.cached(&sha256).is_some() || self.disk_cache.as_ref().is_some_and(|disk| disk.contains(&sha256)) {
            return Ok(None);
        }
        match PluginModule::load(&quick.toolchain(true), bytes, sha256, None) {
            Ok(module) => {
                self.loads.compiled.fetch_add(1, Ordering::Relaxed);
                Ok(Some(Arc::new(module)))
            }
            // Winch lacks proposals Cranelift compiles (tail calls, exceptions, relaxed SIMD):
            // such a module is not refused for that, it just has no quick tier. The full
            // compile then loads it, or gives the refusal that counts.
            Err(LoadError::Compile(reason)) => {
                tracing::debug!(%reason, "the quick tier cannot compile this module; compiling it fully");
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// The compiled module with this sha256, if one is in use or among the recently compiled (a
    /// swap back to it, or a rollback, reuses it).
    pub fn cached(&self, sha256: &str) -> Option<Arc<PluginModule>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).get(sha256)
    }

    /// How many epoch ticks make `deadline`, rounded up, plus one for the partial current tick.
    pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        u64::try_from(deadline.as_micros().div_ceil(tick)).unwrap_or(u64::MAX / 2) + 1
    }

    /// Stops the epoch ticker thread (also done on drop).
    pub fn shutdown(&self) {
        self.ticker.stop();
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// Lower-case hex sha256 of `bytes`: the identity of a module.
pub fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The thread that advances the engine's epoch, which is what interrupts a callback that runs
/// past its deadline.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EpochTicker {
    fn start(engines: Vec<Engine>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engines.iter().for_each(Engine::increment_epoch);
                }
            })
            .ok();
        Self { stop, thread: Mutex::new(thread) }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}
