//! Envoy portability of the filters we ship (every module the files under `deploy/` load or
//! carry): every import is one Envoy provides, and start-up
//! (`_initialize`, `main`) makes no `proxy_*` call but logging — Envoy's V8 traps the others.

use std::sync::{Arc, Mutex};

use wasmtime::{Engine, ExternType, Func, Linker, Module, Store, Val};

use crate::fixture::deploy::shipped_filter_crates;
use crate::fixture::proxy::filter_module;

/// Every `env` function of proxy-wasm ABI v0.2.1 Envoy registers (proxy-wasm-cpp-host
/// `FOR_ALL_HOST_FUNCTIONS` plus the ABI-specific ones).
const ENVOY_ENV: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_status",
    "proxy_set_property",
    "proxy_get_property",
    "proxy_send_local_response",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_buffer_status",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_close",
    "proxy_grpc_cancel",
    "proxy_grpc_send",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_current_time_nanoseconds",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_continue_stream",
    "proxy_close_stream",
];

/// The WASI preview1 functions Envoy registers (real ones and stubs).
const ENVOY_WASI: &[&str] = &[
    "fd_write",
    "fd_pwrite",
    "fd_read",
    "fd_pread",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_filestat_get",
    "fd_advise",
    "fd_allocate",
    "fd_datasync",
    "fd_sync",
    "fd_tell",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "poll_oneoff",
    "sched_yield",
    "proc_exit",
    "path_open",
];

#[test]
fn shipped_filters_import_only_what_envoy_provides() {
    for name in &shipped_filter_crates() {
        imports_only_what_envoy_provides(name, &filter_module(name));
    }
}

/// The module at `path` imports nothing Envoy lacks and exports what Envoy needs.
pub(crate) fn imports_only_what_envoy_provides(name: &str, path: &std::path::Path) {
    let engine = Engine::default();
    let module = Module::from_file(&engine, path).unwrap_or_else(|e| panic!("{name}: {e}"));
    for import in module.imports() {
        let known = match import.module() {
            "env" => ENVOY_ENV.contains(&import.name()),
            "wasi_snapshot_preview1" | "wasi_unstable" => ENVOY_WASI.contains(&import.name()),
            _ => false,
        };
        assert!(known, "{name} imports {}.{}, which Envoy does not provide", import.module(), import.name());
        assert!(matches!(import.ty(), ExternType::Func(_)), "{name} imports a non-function {}", import.name());
    }
    for export in ["memory", "_initialize", "proxy_abi_version_0_2_1", "proxy_on_memory_allocate"] {
        assert!(module.get_export(export).is_some(), "{name} lacks the export {export}");
    }
}

#[test]
fn shipped_filters_call_no_proxy_function_but_logging_while_starting() {
    for name in &shipped_filter_crates() {
        starts_calling_nothing_but_logging(name, &filter_module(name));
    }
}

/// The module at `path` makes no `proxy_*` call but logging while it starts (Envoy's V8 traps
/// the others).
pub(crate) fn starts_calling_nothing_but_logging(name: &str, path: &std::path::Path) {
    let engine = Engine::default();
    let module = Module::from_file(&engine, path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut store = Store::new(&engine, ());
    let mut linker = Linker::new(&engine);
    let forbidden: Arc<Mutex<Vec<String>>> = Arc::default();
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else { continue };
        let (module_name, field) = (import.module().to_owned(), import.name().to_owned());
        let calls = forbidden.clone();
        let func = Func::new(&mut store, ty.clone(), move |_caller, _params, results| {
            if module_name == "env" && field != "proxy_log" {
                calls.lock().unwrap_or_else(|p| p.into_inner()).push(field.clone());
            }
            for result in results.iter_mut() {
                *result = Val::I32(0);
            }
            Ok(())
        });
        linker.define(&store, import.module(), import.name(), func).expect("define");
    }
    let instance = linker.instantiate(&mut store, &module).unwrap_or_else(|e| panic!("{name}: {e}"));
    let init = instance.get_typed_func::<(), ()>(&mut store, "_initialize").expect("_initialize");
    init.call(&mut store, ()).unwrap_or_else(|e| panic!("{name}: _initialize trapped: {e}"));
    if let Ok(main) = instance.get_typed_func::<(i32, i32), i32>(&mut store, "main") {
        main.call(&mut store, (0, 0)).unwrap_or_else(|e| panic!("{name}: main trapped: {e}"));
    }
    let calls = forbidden.lock().unwrap_or_else(|p| p.into_inner());
    assert!(calls.is_empty(), "{name} calls {calls:?} during start-up; Envoy's V8 traps those");
}
