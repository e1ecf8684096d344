//! The WASI preview1 subset Envoy provides, registered under `wasi_snapshot_preview1` and
//! `wasi_unstable`: stdout/stderr become log lines, environment comes from the plugin's
//! `environment_variables`, clocks and randomness are real, and the filesystem and sockets do not
//! exist (the same errno values Envoy returns, so wasi-libc's start-up scans end cleanly).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use wasmtime::Caller;

use super::Registrar;
use super::log::emit;
use super::memory;
use super::types::LogLevel;
use super::unix_nanos;
use crate::state::VmState;

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EINVAL: i32 = 28;
const ENOENT: i32 = 44;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;

/// Most iovecs one `fd_write` may pass (Linux's IOV_MAX).
const MAX_IOVECS: u32 = 1024;
/// Largest `random_get` (Envoy's limit).
const MAX_RANDOM_BYTES: u32 = 64 * 1024;

const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

macro_rules! register_everywhere {
    ($r:expr, $name:literal, $func:expr) => {
        for module in MODULES {
            $r.func(module, $name, $func)?;
        }
    };
}

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    register_everywhere!(r, "fd_write", fd_write);
    register_everywhere!(r, "fd_pwrite", |c: Caller<'_, VmState>, fd: u32, iovs: u32, n: u32, _off: u64, ret: u32| {
        fd_write(c, fd, iovs, n, ret)
    });
    register_everywhere!(r, "fd_fdstat_get", fd_fdstat_get);
    register_everywhere!(r, "environ_sizes_get", environ_sizes_get);
    register_everywhere!(r, "environ_get", environ_get);
    register_everywhere!(r, "args_sizes_get", args_sizes_get);
    register_everywhere!(r, "args_get", |_: u32, _: u32| SUCCESS);
    register_everywhere!(r, "clock_time_get", clock_time_get);
    register_everywhere!(r, "clock_res_get", clock_res_get);
    register_everywhere!(r, "random_get", random_get);
    register_everywhere!(r, "poll_oneoff", poll_oneoff);
    register_everywhere!(r, "sched_yield", || SUCCESS);
    register_everywhere!(r, "proc_exit", proc_exit);
    register_everywhere!(r, "proc_raise", |_: u32| ENOSYS);

    // No filesystem: the answers Envoy gives.
    register_everywhere!(r, "fd_read", |_: u32, _: u32, _: u32, _: u32| ENOSYS);
    register_everywhere!(r, "fd_pread", |_: u32, _: u32, _: u32, _: u64, _: u32| ENOSYS);
    register_everywhere!(r, "fd_prestat_get", |_: u32, _: u32| EBADF);
    register_everywhere!(r, "fd_prestat_dir_name", |_: u32, _: u32, _: u32| ENOSYS);
    register_everywhere!(r, "fd_filestat_get", |_: u32, _: u32| EBADF);
    register_everywhere!(r, "fd_fdstat_set_flags", |_: u32, _: u32| ENOSYS);
    register_everywhere!(r, "fd_fdstat_set_rights", |_: u32, _: u64, _: u64| ENOTSUP);
    register_everywhere!(r, "fd_seek", |_: u32, _: i64, _: u32, _: u32| SUCCESS);
    register_everywhere!(r, "fd_tell", |_: u32, _: u32| SUCCESS);
    register_everywhere!(r, "fd_close", |_: u32| SUCCESS);
    register_everywhere!(r, "fd_sync", |_: u32| SUCCESS);
    register_everywhere!(r, "fd_datasync", |_: u32| SUCCESS);
    register_everywhere!(r, "fd_advise", |_: u32, _: u64, _: u64, _: u32| SUCCESS);
    register_everywhere!(r, "fd_allocate", |_: u32, _: u64, _: u64| SUCCESS);
    register_everywhere!(r, "fd_filestat_set_size", |_: u32, _: u64| ENOTSUP);
    register_everywhere!(r, "fd_filestat_set_times", |_: u32, _: u64, _: u64, _: u32| ENOTSUP);
    register_everywhere!(r, "fd_readdir", |_: u32, _: u32, _: u32, _: u64, _: u32| ENOTSUP);
    register_everywhere!(r, "fd_renumber", |_: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "path_open", |_: u32, _: u32, _: u32, _: u32, _: u32, _: u64, _: u64, _: u32, _: u32| {
        ENOENT
    });
    register_everywhere!(r, "path_create_directory", |_: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "path_filestat_get", |_: u32, _: u32, _: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "path_filestat_set_times", |_: u32, _: u32, _: u32, _: u32, _: u64, _: u64, _: u32| {
        ENOTSUP
    });
    register_everywhere!(r, "path_link", |_: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "path_readlink", |_: u32, _: u32, _: u32, _: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "path_remove_directory", |_: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "path_rename", |_: u32, _: u32, _: u32, _: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "path_symlink", |_: u32, _: u32, _: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "path_unlink_file", |_: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "sock_accept", |_: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "sock_recv", |_: u32, _: u32, _: u32, _: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "sock_send", |_: u32, _: u32, _: u32, _: u32, _: u32| ENOTSUP);
    register_everywhere!(r, "sock_shutdown", |_: u32, _: u32| ENOTSUP);
    Ok(())
}

fn fd_write(
    mut caller: Caller<'_, VmState>,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    ret_written: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "fd_write";
    if fd != 1 && fd != 2 {
        return Ok(EBADF);
    }
    if iovs_len > MAX_IOVECS {
        return Ok(EINVAL);
    }
    let table = memory::read(&caller, CALL, iovs, iovs_len * 8)?;
    let mut text = Vec::new();
    for iovec in table.chunks_exact(8) {
        let word = |at: usize| u32::from_le_bytes([iovec[at], iovec[at + 1], iovec[at + 2], iovec[at + 3]]);
        text.extend_from_slice(&memory::read(&caller, CALL, word(0), word(4))?);
    }
    let written = u32::try_from(text.len()).unwrap_or(u32::MAX);
    let line = String::from_utf8_lossy(text.strip_suffix(b"\n").unwrap_or(&text)).into_owned();
    let level = if fd == 1 { LogLevel::Info } else { LogLevel::Error };
    emit(caller.data(), level, &line);
    memory::write_u32(&mut caller, CALL, ret_written, written)?;
    Ok(SUCCESS)
}

fn fd_fdstat_get(mut caller: Caller<'_, VmState>, fd: u32, ret_stat: u32) -> wasmtime::Result<i32> {
    if fd != 1 && fd != 2 {
        return Ok(EBADF);
    }
    // fdstat: filetype u8 (2 = character device), flags u16 at 2, rights_base u64 at 8
    // (fd_write = 1 << 6), rights_inheriting u64 at 16.
    let mut stat = [0u8; 24];
    stat[0] = 2;
    stat[8..16].copy_from_slice(&(1u64 << 6).to_le_bytes());
    memory::write(&mut caller, "fd_fdstat_get", ret_stat, &stat)?;
    Ok(SUCCESS)
}

fn environment(state: &VmState) -> Vec<Vec<u8>> {
    state.plugin.environment.iter().map(|(k, v)| format!("{k}={v}\0").into_bytes()).collect()
}

fn environ_sizes_get(mut caller: Caller<'_, VmState>, ret_count: u32, ret_size: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "environ_sizes_get";
    let env = environment(caller.data());
    let size: usize = env.iter().map(Vec::len).sum();
    memory::write_u32(&mut caller, CALL, ret_count, u32::try_from(env.len()).unwrap_or(u32::MAX))?;
    memory::write_u32(&mut caller, CALL, ret_size, u32::try_from(size).unwrap_or(u32::MAX))?;
    Ok(SUCCESS)
}

fn environ_get(mut caller: Caller<'_, VmState>, environ: u32, buf: u32) -> wasmtime::Result<i32> {
    const CALL: &str = "environ_get";
    let env = environment(caller.data());
    let mut pointer_at = environ;
    let mut string_at = buf;
    for entry in env {
        memory::write_u32(&mut caller, CALL, pointer_at, string_at)?;
        memory::write(&mut caller, CALL, string_at, &entry)?;
        pointer_at = pointer_at.wrapping_add(4);
        string_at = string_at.wrapping_add(u32::try_from(entry.len()).unwrap_or(u32::MAX));
    }
    Ok(SUCCESS)
}

fn args_sizes_get(mut caller: Caller<'_, VmState>, ret_count: u32, ret_size: u32) -> wasmtime::Result<i32> {
    memory::write_u32(&mut caller, "args_sizes_get", ret_count, 0)?;
    memory::write_u32(&mut caller, "args_sizes_get", ret_size, 0)?;
    Ok(SUCCESS)
}

fn monotonic_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn clock_time_get(
    mut caller: Caller<'_, VmState>,
    clock: u32,
    _precision: u64,
    ret_time: u32,
) -> wasmtime::Result<i32> {
    let nanos = match clock {
        0 => unix_nanos(SystemTime::now()),
        1 => u64::try_from(monotonic_origin().elapsed().as_nanos()).unwrap_or(u64::MAX),
        _ => return Ok(ENOTSUP),
    };
    memory::write_u64(&mut caller, "clock_time_get", ret_time, nanos)?;
    Ok(SUCCESS)
}

fn clock_res_get(mut caller: Caller<'_, VmState>, clock: u32, ret_res: u32) -> wasmtime::Result<i32> {
    if clock > 1 {
        return Ok(ENOTSUP);
    }
    memory::write_u64(&mut caller, "clock_res_get", ret_res, 1)?;
    Ok(SUCCESS)
}

fn random_get(mut caller: Caller<'_, VmState>, buf: u32, len: u32) -> wasmtime::Result<i32> {
    if len > MAX_RANDOM_BYTES {
        return Ok(EINVAL);
    }
    // Straight into the guest's buffer (ids on every request come from here).
    let out = memory::slice_mut(&mut caller, "random_get", buf, len)?;
    Ok(if crate::randomness::fill(out) { SUCCESS } else { ENOSYS })
}

fn poll_oneoff(
    mut caller: Caller<'_, VmState>,
    _in: u32,
    _out: u32,
    _subscriptions: u32,
    ret_events: u32,
) -> wasmtime::Result<i32> {
    // Nothing can be waited on inside a proxy callback; report no events (needed by Go guests).
    memory::write_u32(&mut caller, "poll_oneoff", ret_events, 0)?;
    Ok(SUCCESS)
}

fn proc_exit(caller: Caller<'_, VmState>, code: u32) {
    // Envoy logs and returns; the guest's own code traps right after (Rust's `exit` does).
    emit(caller.data(), LogLevel::Error, &format!("proc_exit({code}) called"));
}
