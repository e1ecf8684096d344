//! The process-wide runtime: one wasmtime [`Engine`] with epoch interruption, the linker holding
//! every host function (built once), the compiled-module cache and the [`HostServices`].
//!
//! Workers share one `Runtime` through an `Arc`; each worker instantiates its own VMs from the
//! cached [`PluginModule`]s (see [`crate::PluginInstance`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Linker, OptLevel};

use crate::abi;
use crate::error::LoadError;
use crate::module::PluginModule;
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

/// The process-wide Wasm runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<VmState>,
    component_linker: wasmtime::component::Linker<VmState>,
    provided_imports: abi::ProvidedImports,
    services: Arc<HostServices>,
    modules: Mutex<ModuleCache>,
    ticker: EpochTicker,
}

impl Runtime {
    /// A runtime with default host services.
    pub fn new() -> Result<Arc<Self>, LoadError> {
        Self::with_services(HostServices::default())
    }

    /// A runtime sharing the given host services.
    pub fn with_services(services: HostServices) -> Result<Arc<Self>, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        let provided_imports = abi::add_to_linker(&mut linker).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let component_linker = crate::component::linker(&engine).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Arc::new(Self {
            engine,
            linker,
            component_linker,
            provided_imports,
            services: Arc::new(services),
            modules: Mutex::new(ModuleCache::default()),
            ticker,
        }))
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
    /// sha256. Compilation is the expensive step: do it off the request path.
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<PluginModule>, LoadError> {
        let sha256 = hex_sha256(bytes);
        if let Some(module) = self.cached(&sha256) {
            return Ok(module);
        }
        let module = Arc::new(PluginModule::compile(
            &self.engine,
            (&self.linker, &self.component_linker),
            &self.provided_imports,
            bytes,
            sha256.clone(),
        )?);
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).insert(sha256, &module);
        Ok(module)
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
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
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
