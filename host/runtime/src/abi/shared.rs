//! Shared data and shared queues, keyed by the plugin's `vm_id` across the whole process.

use wasmtime::Caller;

use super::Registrar;
use super::memory;
use super::types::Status;
use crate::error::GuestFault;
use crate::shared_data::{MAX_SHARED_DATA_BYTES, SharedDataError};
use crate::shared_queue::{MAX_QUEUE_BYTES, MAX_QUEUE_NAME_BYTES, MAX_QUEUES_PER_PLUGIN, QueueError};
use crate::state::VmState;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_get_shared_data", get_shared_data)?;
    r.env("proxy_set_shared_data", set_shared_data)?;
    r.env("proxy_register_shared_queue", register_shared_queue)?;
    r.env("proxy_resolve_shared_queue", resolve_shared_queue)?;
    r.env("proxy_enqueue_shared_queue", enqueue_shared_queue)?;
    r.env("proxy_dequeue_shared_queue", dequeue_shared_queue)?;
    Ok(())
}

fn get_shared_data(
    mut caller: Caller<'_, VmState>,
    key_ptr: u32,
    key_len: u32,
    ret_ptr: u32,
    ret_len: u32,
    ret_cas: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_get_shared_data";
    let (data, state) = memory::view(&caller, CALL)?;
    let key = memory::slice(data, CALL, key_ptr, key_len)?;
    let Some(entry) = state.services.shared_data.get(&state.plugin.vm_id, key) else {
        return Ok(Status::NotFound.code());
    };
    memory::hand_over(&mut caller, CALL, &entry.value, ret_ptr, ret_len)?;
    memory::write_u32(&mut caller, CALL, ret_cas, entry.cas)?;
    Ok(Status::Ok.code())
}

fn set_shared_data(
    caller: Caller<'_, VmState>,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
    cas: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_set_shared_data";
    let (data, state) = memory::view(&caller, CALL)?;
    let key = memory::slice(data, CALL, key_ptr, key_len)?;
    let value = memory::slice(data, CALL, value_ptr, value_len)?;
    Ok(match state.services.shared_data.set(&state.plugin.vm_id, &state.plugin.name, key, value, cas) {
        Ok(_) => Status::Ok,
        Err(SharedDataError::CasMismatch) => Status::CasMismatch,
        Err(SharedDataError::Full) => return Err(shared_data_full(CALL, &state.plugin.vm_id)),
    }
    .code())
}

/// The trap of a write past the plugin's share of a namespace: the guest's fault, as its memory
/// cap is.
pub(crate) fn shared_data_full(call: &'static str, vm_id: &str) -> wasmtime::Error {
    GuestFault::trap(
        call,
        format!("this plugin's shared data in vm_id `{vm_id}` would exceed {MAX_SHARED_DATA_BYTES} bytes"),
    )
}

/// The trap of a queue call past the plugin's own limits (an item larger than a queue may hold,
/// one queue too many, a name too long); `None` for the errors the ABI answers with a status.
pub(crate) fn queue_fault(call: &'static str, error: &QueueError) -> Option<wasmtime::Error> {
    let reason = match error {
        QueueError::TooLarge => format!("an item larger than a queue may hold ({MAX_QUEUE_BYTES} bytes)"),
        QueueError::TooMany => format!("this plugin has {MAX_QUEUES_PER_PLUGIN} queues, the most it may"),
        QueueError::NameTooLong => format!("a queue name longer than {MAX_QUEUE_NAME_BYTES} bytes"),
        // Answered like a queue that is gone (the one status SDKs expect from an enqueue): the
        // item is dropped, as a full queue drops its oldest.
        QueueError::NotFound | QueueError::Empty | QueueError::EnqueuerFull => return None,
    };
    Some(GuestFault::trap(call, reason))
}

fn register_shared_queue(
    mut caller: Caller<'_, VmState>,
    name_ptr: u32,
    name_len: u32,
    ret_id: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_register_shared_queue";
    // Measured before it is copied out of the guest.
    if name_len as usize > MAX_QUEUE_NAME_BYTES {
        return Err(GuestFault::trap(CALL, format!("a queue name longer than {MAX_QUEUE_NAME_BYTES} bytes")));
    }
    let name = memory::read(&caller, CALL, name_ptr, name_len)?;
    let state = caller.data();
    let id = match state.services.queues.register(&state.plugin.vm_id, &state.plugin.name, &name, &state.inbox) {
        Ok(id) => id,
        Err(error) => {
            let fault = queue_fault(CALL, &error);
            return Err(fault.unwrap_or_else(|| GuestFault::trap(CALL, "the queue could not be registered")));
        }
    };
    memory::write_u32(&mut caller, CALL, ret_id, id)?;
    Ok(Status::Ok.code())
}

fn resolve_shared_queue(
    mut caller: Caller<'_, VmState>,
    vm_ptr: u32,
    vm_len: u32,
    name_ptr: u32,
    name_len: u32,
    ret_id: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_resolve_shared_queue";
    // No queue has a longer name (or vm_id): nothing to copy out of the guest and look up.
    if name_len as usize > MAX_QUEUE_NAME_BYTES || vm_len as usize > MAX_QUEUE_NAME_BYTES {
        return Ok(Status::NotFound.code());
    }
    let vm_id = memory::read_string(&caller, CALL, vm_ptr, vm_len)?;
    let name = memory::read(&caller, CALL, name_ptr, name_len)?;
    let state = caller.data();
    // An empty vm_id means "my own VM".
    let vm_id = if vm_id.is_empty() { state.plugin.vm_id.clone() } else { vm_id };
    let Some(id) = state.services.queues.resolve(&vm_id, &name) else {
        return Ok(Status::NotFound.code());
    };
    memory::write_u32(&mut caller, CALL, ret_id, id)?;
    Ok(Status::Ok.code())
}

fn enqueue_shared_queue(
    caller: Caller<'_, VmState>,
    queue_id: u32,
    value_ptr: u32,
    value_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_enqueue_shared_queue";
    // Measured before it is copied out of the guest, then copied once, before the registry's
    // lock: the queue keeps this copy.
    if value_len as usize > MAX_QUEUE_BYTES {
        return Err(GuestFault::trap(CALL, format!("an item larger than a queue may hold ({MAX_QUEUE_BYTES} bytes)")));
    }
    let (data, state) = memory::view(&caller, CALL)?;
    let value = memory::slice(data, CALL, value_ptr, value_len)?.to_vec();
    match state.services.queues.enqueue(queue_id, &state.plugin.name, value) {
        Ok(()) => Ok(Status::Ok.code()),
        Err(error) => match queue_fault(CALL, &error) {
            Some(fault) => Err(fault),
            None => Ok(Status::NotFound.code()),
        },
    }
}

fn dequeue_shared_queue(
    mut caller: Caller<'_, VmState>,
    queue_id: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_dequeue_shared_queue";
    match caller.data().services.queues.dequeue(queue_id) {
        Ok(item) => {
            memory::hand_over(&mut caller, CALL, &item, ret_ptr, ret_len)?;
            Ok(Status::Ok.code())
        }
        Err(QueueError::Empty) => Ok(Status::Empty.code()),
        Err(_) => Ok(Status::NotFound.code()),
    }
}
