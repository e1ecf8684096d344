//! A compiled, validated filter, ready to instantiate on any worker: a proxy-wasm core module
//! or a `wasmtrace:filter` component (told apart by the binary's preamble).
//!
//! Validation happens before any guest code runs. A core module: every import must be one the
//! host provides, the ABI marker, memory, allocator and context-create exports must exist, and
//! every callback and WASI entry point (`_initialize`, `main`, `__main_void`, `_start`) the module
//! does export and the host would call must have the signature the host calls it with. A component: it must
//! import nothing but the world's interfaces and WASI 0.2, and export the world's `handler`
//! with the world's types (see [`crate::component`]).

use std::time::Instant;

use wasmtime::{Engine, ExternType, FuncType, InstancePre, Linker, Module, ValType};

use crate::abi::ProvidedImports;
use crate::component::{self, CompiledComponent};
use crate::error::LoadError;
use crate::module_cache::{self, Artifact, ArtifactKind, DiskCache, Lookup};
use crate::state::VmState;

/// The proxy-wasm ABI version a module declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_2_0`.
    V0_2_0,
    /// `proxy_abi_version_0_2_1`.
    V0_2_1,
}

/// Which interface a filter is written against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterForm {
    /// A core module speaking proxy-wasm (what Envoy loads).
    ProxyWasm(AbiVersion),
    /// A component implementing the `wasmtrace:filter` world (`wit/`).
    Component,
}

/// The compiled code, per form.
pub(crate) enum CompiledCode {
    Core { module: Module, pre: InstancePre<VmState> },
    Component(CompiledComponent),
}

/// Where a module's machine code came from when it was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleSource {
    /// Compiled from the WebAssembly by Cranelift.
    Compiled,
    /// Read back from the on-disk module cache: not compiled.
    DiskCache,
    /// Compiled by the quick tier (Winch, the baseline compiler) so a swap
    /// to a module never seen publishes in a fraction of the time; replaced by the optimised
    /// code once that is compiled (see [`crate::RuntimeOptions::tiered_swaps`]).
    QuickCompiled,
}

impl ModuleSource {
    /// A short label for logs and stats: `compiled` or `disk cache`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Compiled => "compiled",
            Self::DiskCache => "disk cache",
            Self::QuickCompiled => "quick compile",
        }
    }
}

/// A module compiled once and shared by every VM that runs it.
pub struct PluginModule {
    code: CompiledCode,
    sha256: String,
    form: FilterForm,
    size: usize,
    source: ModuleSource,
}

/// What the runtime needs to compile or link a module: the engine, the two linkers and the
/// imports the host provides.
pub(crate) struct Toolchain<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) linker: &'a Linker<VmState>,
    pub(crate) component_linker: &'a wasmtime::component::Linker<VmState>,
    pub(crate) provided: &'a ProvidedImports,
    /// The quick tier's tools: what they compile is never written to the disk cache.
    pub(crate) quick: bool,
}

/// Callbacks and their signatures, as `(params, results)` of i32s; the host calls only these.
const CALLBACK_SIGNATURES: &[(&str, usize, usize)] = &[
    ("proxy_on_context_create", 2, 0),
    ("proxy_on_vm_start", 2, 1),
    ("proxy_on_configure", 2, 1),
    ("proxy_on_tick", 1, 0),
    ("proxy_on_request_headers", 3, 1),
    ("proxy_on_request_body", 3, 1),
    ("proxy_on_request_trailers", 2, 1),
    ("proxy_on_response_headers", 3, 1),
    ("proxy_on_response_body", 3, 1),
    ("proxy_on_response_trailers", 2, 1),
    ("proxy_on_log", 1, 0),
    ("proxy_on_done", 1, 1),
    ("proxy_on_delete", 1, 0),
    ("proxy_on_http_call_response", 5, 0),
    ("proxy_on_queue_ready", 2, 0),
    ("proxy_on_foreign_function", 3, 0),
    ("proxy_on_memory_allocate", 1, 1),
    ("malloc", 1, 1),
];

/// A WASI reactor's (a module exporting `_initialize`) entry points and their signatures, as
/// `(params, results)` of i32s: `_initialize`, then `main(argc, argv)` or else `__main_void`.
const REACTOR_ENTRY_SIGNATURES: &[(&str, usize, usize)] =
    &[("_initialize", 0, 0), ("main", 2, 1), ("__main_void", 0, 1)];

/// A WASI command's (no `_initialize`) entry point: `_start`.
const COMMAND_ENTRY_SIGNATURES: &[(&str, usize, usize)] = &[("_start", 0, 0)];

impl PluginModule {
    /// Compiles and validates `bytes`, or, when `disk` holds a verified entry for them, loads
    /// the compiled code from there instead of compiling. Validation and linking run either way
    /// (they are cheap); only a module that passes them is written to `disk`.
    pub(crate) fn load(
        tools: &Toolchain<'_>,
        bytes: &[u8],
        sha256: String,
        disk: Option<&DiskCache>,
    ) -> Result<Self, LoadError> {
        let started = Instant::now();
        let kind = if component::is_component(bytes) { ArtifactKind::Component } else { ArtifactKind::Module };
        let cached = disk.and_then(|disk| match disk.load(tools.engine, &sha256, kind) {
            Lookup::Hit(artifact) => Some(artifact),
            Lookup::Miss => None,
            Lookup::Rejected(e) => {
                tracing::warn!(sha256 = %sha256, "module cache entry refused, compiling again: {e}");
                None
            }
        });
        let source = match (&cached, tools.quick) {
            (Some(_), _) => ModuleSource::DiskCache,
            (None, true) => ModuleSource::QuickCompiled,
            (None, false) => ModuleSource::Compiled,
        };
        let (code, form, serialized) = match (kind, cached) {
            (ArtifactKind::Component, cached) => {
                let component = match cached {
                    Some(Artifact::Component(component)) => component,
                    _ => component::compile_only(tools.engine, bytes)?,
                };
                let serialized = (disk.is_some() && source == ModuleSource::Compiled)
                    .then(|| module_cache::serialize_component(&component));
                let compiled = component::link(tools.component_linker, &component)?;
                (CompiledCode::Component(compiled), FilterForm::Component, serialized)
            }
            (ArtifactKind::Module, cached) => {
                let module = match cached {
                    Some(Artifact::Module(module)) => module,
                    _ => Module::new(tools.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?,
                };
                check_imports(&module, tools.provided)?;
                let abi = check_exports(&module)?;
                let pre = tools.linker.instantiate_pre(&module).map_err(|e| LoadError::Link(format!("{e:#}")))?;
                let serialized = (disk.is_some() && source == ModuleSource::Compiled)
                    .then(|| module_cache::serialize_module(&module));
                (CompiledCode::Core { module, pre }, FilterForm::ProxyWasm(abi), serialized)
            }
        };
        // Rounded to 0.1 ms: a log field, not a measurement.
        let loaded_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
        if let (Some(disk), Some(serialized)) = (disk, serialized) {
            // A cache that cannot be written costs the next start a compile, nothing more.
            if let Err(e) = serialized.and_then(|artifact| disk.store(&sha256, kind, &artifact)) {
                tracing::warn!(sha256 = %sha256, "module not written to the module cache: {e}");
            }
        }
        tracing::info!(
            sha256 = %sha256,
            compiled = source != ModuleSource::DiskCache,
            source = source.label(),
            elapsed_ms = loaded_ms,
            "module loaded"
        );
        Ok(Self { code, sha256, form, size: bytes.len(), source })
    }

    /// Where the module's machine code came from: compiled now, or read from the disk cache.
    pub fn source(&self) -> ModuleSource {
        self.source
    }

    /// Whether this is the quick tier's code (a tiered swap's first half).
    pub fn is_quick(&self) -> bool {
        self.source == ModuleSource::QuickCompiled
    }

    /// Lower-case hex sha256 of the module bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The proxy-wasm ABI version a core module declares (`None` for a component).
    pub fn abi_version(&self) -> Option<AbiVersion> {
        match self.form {
            FilterForm::ProxyWasm(abi) => Some(abi),
            FilterForm::Component => None,
        }
    }

    /// Proxy-wasm module or component.
    pub fn form(&self) -> FilterForm {
        self.form
    }

    /// Size of the module in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn code(&self) -> &CompiledCode {
        &self.code
    }
}

fn extern_kind(ty: &ExternType) -> &'static str {
    match ty {
        ExternType::Func(_) => "function",
        ExternType::Memory(_) => "memory",
        ExternType::Table(_) => "table",
        ExternType::Global(_) => "global",
        _ => "item",
    }
}

fn check_imports(module: &Module, provided: &ProvidedImports) -> Result<(), LoadError> {
    for import in module.imports() {
        let ty = import.ty();
        let is_func = matches!(ty, ExternType::Func(_));
        if !is_func || !provided.contains(import.module(), import.name()) {
            return Err(LoadError::UnknownImport {
                module: import.module().to_owned(),
                name: import.name().to_owned(),
                kind: extern_kind(&ty),
            });
        }
    }
    Ok(())
}

fn signature(ty: &FuncType) -> String {
    let list = |types: &mut dyn Iterator<Item = ValType>| types.map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    format!("({}) -> ({})", list(&mut ty.params()), list(&mut ty.results()))
}

fn check_exports(module: &Module) -> Result<AbiVersion, LoadError> {
    let has = |name: &str| module.get_export(name).is_some();
    let abi = if has("proxy_abi_version_0_2_1") {
        AbiVersion::V0_2_1
    } else if has("proxy_abi_version_0_2_0") {
        AbiVersion::V0_2_0
    } else if has("proxy_abi_version_0_1_0") {
        return Err(LoadError::UnsupportedAbi("v0.1.0".into()));
    } else {
        return Err(LoadError::MissingExport {
            name: "proxy_abi_version_0_2_1",
            why: "the proxy-wasm ABI version marker; this is not a proxy-wasm module, or it targets an unknown ABI",
        });
    };
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        Some(other) => {
            return Err(LoadError::BadExportType {
                name: "memory".into(),
                expected: "memory".into(),
                found: extern_kind(&other).into(),
            });
        }
        None => {
            return Err(LoadError::MissingExport {
                name: "memory",
                why: "the linear memory the host exchanges data through",
            });
        }
    }
    if !has("malloc") && !has("proxy_on_memory_allocate") {
        return Err(LoadError::MissingExport {
            name: "proxy_on_memory_allocate",
            why: "the allocator (or `malloc`) the host uses to hand data to the guest",
        });
    }
    if !has("proxy_on_context_create") {
        return Err(LoadError::MissingExport {
            name: "proxy_on_context_create",
            why: "every root and stream context starts with it",
        });
    }
    // Start-up calls the WASI entry points with fixed signatures. One exported with another is
    // refused, as Envoy's default runtime (V8 in proxy-wasm-cpp-host) refuses it ("Bad function
    // signature"); only the exports this module's form makes start-up call are checked.
    let start_up = if has("_initialize") { REACTOR_ENTRY_SIGNATURES } else { COMMAND_ENTRY_SIGNATURES };
    for &(name, params, results) in CALLBACK_SIGNATURES.iter().chain(start_up) {
        let Some(ty) = module.get_export(name) else {
            continue;
        };
        let ok = match &ty {
            ExternType::Func(f) => {
                f.params().len() == params
                    && f.results().len() == results
                    && f.params().chain(f.results()).all(|t| matches!(t, ValType::I32))
            }
            _ => false,
        };
        if !ok {
            let expected = format!("({}) -> ({})", vec!["i32"; params].join(", "), vec!["i32"; results].join(", "));
            let found = match &ty {
                ExternType::Func(f) => signature(f),
                other => extern_kind(other).to_owned(),
            };
            return Err(LoadError::BadExportType { name: name.to_owned(), expected, found });
        }
    }
    Ok(abi)
}
