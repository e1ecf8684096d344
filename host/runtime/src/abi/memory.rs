//! Checked access to a guest's linear memory: every pointer and length a guest passes is
//! bounds-checked here, and every buffer handed to the guest is allocated by the guest's own
//! allocator (`malloc` first, then `proxy_on_memory_allocate`, as Envoy does) so the SDK can free it.
//!
//! A bad pointer is a guest bug the host cannot answer with a status the Rust SDK accepts, so it
//! becomes a trap carrying a [`GuestFault`] that names the call and the range.

use wasmtime::{Caller, Memory};

use crate::error::GuestFault;
use crate::state::VmState;

fn memory(caller: &Caller<'_, VmState>, call: &'static str) -> wasmtime::Result<Memory> {
    caller.data().memory.ok_or_else(|| GuestFault::trap(call, "the module exports no memory"))
}

fn range(call: &'static str, ptr: u32, len: u32, size: usize) -> wasmtime::Result<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).filter(|end| *end <= size).ok_or_else(|| {
        GuestFault::trap(call, format!("guest pointer {ptr:#x}+{len} is outside linear memory ({size} bytes)"))
    })?;
    Ok(start..end)
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(crate) fn read(caller: &Caller<'_, VmState>, call: &'static str, ptr: u32, len: u32) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller, call)?;
    let data = memory.data(caller);
    let range = range(call, ptr, len, data.len())?;
    Ok(data[range].to_vec())
}

/// Like [`read`], for text the ABI requires to be UTF-8 (names, paths, cluster names).
pub(crate) fn read_string(
    caller: &Caller<'_, VmState>,
    call: &'static str,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<String> {
    String::from_utf8(read(caller, call, ptr, len)?).map_err(|_| GuestFault::trap(call, "string argument is not UTF-8"))
}

/// Copies `bytes` into guest memory at `ptr`.
pub(crate) fn write(
    caller: &mut Caller<'_, VmState>,
    call: &'static str,
    ptr: u32,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    let memory = memory(caller, call)?;
    let len = u32::try_from(bytes.len()).map_err(|_| GuestFault::trap(call, "value larger than 4 GiB"))?;
    let data = memory.data_mut(caller);
    let range = range(call, ptr, len, data.len())?;
    data[range].copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian u32 at `ptr` (a `return_*` out-parameter).
pub(crate) fn write_u32(
    caller: &mut Caller<'_, VmState>,
    call: &'static str,
    ptr: u32,
    value: u32,
) -> wasmtime::Result<()> {
    write(caller, call, ptr, &value.to_le_bytes())
}

/// Writes a little-endian u64 at `ptr`.
pub(crate) fn write_u64(
    caller: &mut Caller<'_, VmState>,
    call: &'static str,
    ptr: u32,
    value: u64,
) -> wasmtime::Result<()> {
    write(caller, call, ptr, &value.to_le_bytes())
}

/// Allocates `len` bytes with the guest's allocator.
pub(crate) fn allocate(caller: &mut Caller<'_, VmState>, call: &'static str, len: u32) -> wasmtime::Result<u32> {
    let allocator =
        caller.data().allocator.clone().ok_or_else(|| GuestFault::trap(call, "the module exports no allocator"))?;
    // The allocator may re-enter host functions and grow memory; nothing is borrowed across it.
    let ptr = allocator.call(&mut *caller, len)?;
    if ptr == 0 {
        return Err(GuestFault::trap(call, format!("the guest allocator returned null for {len} bytes")));
    }
    Ok(ptr)
}

/// Hands `bytes` to the guest: allocates a buffer with the guest's allocator, copies the bytes
/// into it and writes its address and length to `ret_ptr`/`ret_len`. Empty data is handed over
/// as a null pointer and length 0, which the SDKs read as "empty".
pub(crate) fn hand_over(
    caller: &mut Caller<'_, VmState>,
    call: &'static str,
    bytes: &[u8],
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| GuestFault::trap(call, "value larger than 4 GiB"))?;
    let ptr = if bytes.is_empty() {
        0
    } else {
        let ptr = allocate(caller, call, len)?;
        write(caller, call, ptr, bytes)?;
        ptr
    };
    write_u32(caller, call, ret_ptr, ptr)?;
    write_u32(caller, call, ret_len, len)
}
