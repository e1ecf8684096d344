//! `wasmtrace run`'s flags for the Wasm runtime: the on-disk module cache, the profiler and
//! tiered swaps.

use std::path::PathBuf;

use clap::Args;
use wasmtrace_runtime::{Profiler, RuntimeOptions};

/// How `wasmtrace run` sets up the Wasm runtime.
#[derive(Args, Debug)]
pub struct RuntimeFlags {
    /// Cache compiled modules in DIR (created 0700), so a restart, or a swap to a module compiled
    /// before, loads the machine code instead of compiling [default:
    /// $XDG_CACHE_HOME/wasmtrace/modules, else ~/.cache/wasmtrace/modules].
    #[arg(long, value_name = "DIR", env = "WASMTRACE_MODULE_CACHE")]
    module_cache: Option<PathBuf>,
    /// Compile every module, keeping nothing on disk.
    #[arg(long)]
    no_module_cache: bool,
    /// Report compiled guest code to a profiler: `perfmap` writes /tmp/perf-PID.map, so
    /// `perf record -g -p PID` then `perf report` name the Wasm functions.
    #[arg(long, value_name = "PROFILER", env = "WASMTRACE_PROFILE", default_value = "none")]
    profile: Profiler,
    /// A swap to a module never compiled before publishes code compiled by Winch, wasmtime's
    /// baseline compiler (about a fifth of the full compile, slower code), first, then the
    /// optimised code as the next generation once it is compiled in the background (the root
    /// context starts twice).
    #[arg(long, env = "WASMTRACE_TIERED_SWAPS")]
    tiered_swaps: bool,
}

impl RuntimeFlags {
    /// The runtime options these flags ask for; the cache directory defaults to the user's
    /// cache (none when neither `XDG_CACHE_HOME` nor `HOME` is set).
    pub fn options(&self) -> RuntimeOptions {
        // `--no-module-cache` wins over the flag and the environment variable, so a cache set
        // in the environment can be turned off for one run.
        let module_cache = if self.no_module_cache {
            None
        } else {
            self.module_cache.clone().or_else(wasmtrace_runtime::default_module_cache_dir)
        };
        RuntimeOptions {
            module_cache,
            profiler: self.profile,
            tiered_swaps: self.tiered_swaps,
            ..RuntimeOptions::default()
        }
    }
}
