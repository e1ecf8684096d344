//! Time and ticks: `proxy_get_current_time_nanoseconds`, `proxy_set_tick_period_milliseconds`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::Caller;

use super::Registrar;
use super::memory;
use super::types::Status;
use crate::state::VmState;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_get_current_time_nanoseconds", get_current_time_nanoseconds)?;
    r.env("proxy_set_tick_period_milliseconds", set_tick_period_milliseconds)?;
    Ok(())
}

/// Wall-clock nanoseconds since the Unix epoch.
pub(crate) fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

fn get_current_time_nanoseconds(mut caller: Caller<'_, VmState>, ret_time: u32) -> wasmtime::Result<i32> {
    memory::write_u64(&mut caller, "proxy_get_current_time_nanoseconds", ret_time, unix_nanos(SystemTime::now()))?;
    Ok(Status::Ok.code())
}

fn set_tick_period_milliseconds(mut caller: Caller<'_, VmState>, period_ms: u32) -> wasmtime::Result<i32> {
    set_tick_period(caller.data_mut(), period_ms);
    Ok(Status::Ok.code())
}

/// Arms (or, with 0, stops) the VM's tick timer.
pub(crate) fn set_tick_period(state: &mut VmState, period_ms: u32) {
    // One timer per root context; stream contexts set their root's timer, as in Envoy.
    let tick = &mut state.tick;
    if period_ms == 0 {
        tick.period = None;
        tick.next = None;
    } else {
        let period = Duration::from_millis(u64::from(period_ms));
        tick.period = Some(period);
        tick.next = Some(Instant::now() + period);
    }
}
