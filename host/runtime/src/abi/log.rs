//! `proxy_log` and `proxy_get_log_level`.
//!
//! Guest log lines are emitted through `tracing` (target `wasm`) in Envoy's shape:
//! `wasm log <plugin>[ <root_id>][ <vm_id>]: <message>`.

use wasmtime::Caller;

use super::Registrar;
use super::memory;
use super::types::{LogLevel, Status};
use crate::state::VmState;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_log", log)?;
    r.env("proxy_get_log_level", get_log_level)?;
    Ok(())
}

/// Emits one guest log line at `level` for the plugin of `state`; while the VM starts, lines
/// at info and above are also kept for the start-up's error (see [`crate::state::StartupLog`]).
pub(crate) fn emit(state: &VmState, level: LogLevel, message: &str) {
    if level >= LogLevel::Info
        && let Some(log) = state.startup_log.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
    {
        log.push(message);
    }
    if level < state.services.log_level() {
        return;
    }
    let prefix = state.plugin.log_prefix();
    match level {
        LogLevel::Trace => tracing::trace!(target: "wasm", "{prefix}: {message}"),
        LogLevel::Debug => tracing::debug!(target: "wasm", "{prefix}: {message}"),
        LogLevel::Info => tracing::info!(target: "wasm", "{prefix}: {message}"),
        LogLevel::Warn => tracing::warn!(target: "wasm", "{prefix}: {message}"),
        LogLevel::Error | LogLevel::Critical => tracing::error!(target: "wasm", "{prefix}: {message}"),
    }
}

fn log(caller: Caller<'_, VmState>, level: u32, ptr: u32, len: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_log";
    // The Rust SDK accepts only OK from proxy_log: an unknown level is logged at info.
    let level = LogLevel::from_raw(level).unwrap_or(LogLevel::Info);
    // Read in place (and checked even when the level is off, as a bad pointer is a bad pointer).
    let (data, state) = memory::view(&caller, CALL)?;
    let message = memory::slice(data, CALL, ptr, len)?;
    emit(state, level, &String::from_utf8_lossy(message));
    Ok(Status::Ok.code())
}

fn get_log_level(mut caller: Caller<'_, VmState>, ret_level: u32) -> wasmtime::Result<i32> {
    let level = caller.data().services.log_level() as u32;
    memory::write_u32(&mut caller, "proxy_get_log_level", ret_level, level)?;
    Ok(Status::Ok.code())
}
