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

/// The guest's memory and the store data, both borrowed: arguments are read in place with
/// [`slice`] while the host looks things up, without copying them out first.
pub(crate) fn view<'a>(
    caller: &'a Caller<'_, VmState>,
    call: &'static str,
) -> wasmtime::Result<(&'a [u8], &'a VmState)> {
    let memory = memory(caller, call)?;
    Ok((memory.data(caller), caller.data()))
}

/// The `len` bytes at `ptr` of `data` (a [`view`]'s memory), bounds-checked.
pub(crate) fn slice<'a>(data: &'a [u8], call: &'static str, ptr: u32, len: u32) -> wasmtime::Result<&'a [u8]> {
    let range = range(call, ptr, len, data.len())?;
    Ok(&data[range])
}

/// The `len` bytes at `ptr` of guest memory, to write in place.
pub(crate) fn slice_mut<'a>(
    caller: &'a mut Caller<'_, VmState>,
    call: &'static str,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<&'a mut [u8]> {
    let memory = memory(caller, call)?;
    let data = memory.data_mut(caller);
    let range = range(call, ptr, len, data.len())?;
    Ok(&mut data[range])
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
    hand_over_with(caller, call, bytes.len(), ret_ptr, ret_len, |out, _| out.copy_from_slice(bytes))
}

/// Like [`hand_over`] for `len` bytes that `fill` writes straight into the guest's buffer, so
/// the host builds no copy of its own first (a header map, a property). `fill` gets the store
/// data too: the allocator ran guest code in between, so what it writes is looked up then.
pub(crate) fn hand_over_with(
    caller: &mut Caller<'_, VmState>,
    call: &'static str,
    len: usize,
    ret_ptr: u32,
    ret_len: u32,
    fill: impl FnOnce(&mut [u8], &VmState),
) -> wasmtime::Result<()> {
    let len = u32::try_from(len).map_err(|_| GuestFault::trap(call, "value larger than 4 GiB"))?;
    let ptr = if len == 0 { 0 } else { allocate(caller, call, len)? };
    let memory = memory(caller, call)?;
    // One view of memory for the data and both out-parameters.
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    if len > 0 {
        let range = range(call, ptr, len, data.len())?;
        fill(&mut data[range], state);
    }
    for (at, word) in [(ret_ptr, ptr), (ret_len, len)] {
        let range = range(call, at, 4, data.len())?;
        data[range].copy_from_slice(&word.to_le_bytes());
    }
    Ok(())
}
