//! Metrics: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric` over the process-wide [`crate::metrics::MetricRegistry`].

use std::sync::Arc;

use wasmtime::Caller;

use super::Registrar;
use super::memory;
use super::types::{MetricType, Status};
use crate::metrics::Metric;
use crate::state::VmState;

pub(super) fn add_to_linker(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env("proxy_define_metric", define_metric)?;
    r.env("proxy_increment_metric", increment_metric)?;
    r.env("proxy_record_metric", record_metric)?;
    r.env("proxy_get_metric", get_metric)?;
    Ok(())
}

/// The metric `id`, cached per VM so recording does not touch the registry lock.
pub(crate) fn metric(state: &mut VmState, id: u32) -> Option<Arc<Metric>> {
    if let Some(metric) = state.metric_cache.get(&id) {
        return Some(metric.clone());
    }
    let metric = state.services.metrics.get(id)?;
    state.metric_cache.insert(id, metric.clone());
    Some(metric)
}

fn define_metric(
    mut caller: Caller<'_, VmState>,
    metric_type: u32,
    name_ptr: u32,
    name_len: u32,
    ret_id: u32,
) -> wasmtime::Result<i32> {
    const CALL: &str = "proxy_define_metric";
    let Some(metric_type) = MetricType::from_raw(metric_type) else {
        return Ok(Status::BadArgument.code());
    };
    let name = memory::read_string(&caller, CALL, name_ptr, name_len)?;
    match caller.data().services.metrics.define(metric_type, &name) {
        Ok(id) => {
            memory::write_u32(&mut caller, CALL, ret_id, id)?;
            Ok(Status::Ok.code())
        }
        Err(_) => Ok(Status::BadArgument.code()),
    }
}

fn increment_metric(mut caller: Caller<'_, VmState>, id: u32, delta: i64) -> wasmtime::Result<i32> {
    let Some(metric) = metric(caller.data_mut(), id) else {
        return Ok(Status::NotFound.code());
    };
    Ok(match metric.increment(delta) {
        Ok(()) => Status::Ok,
        Err(_) => Status::BadArgument,
    }
    .code())
}

fn record_metric(mut caller: Caller<'_, VmState>, id: u32, value: u64) -> wasmtime::Result<i32> {
    let Some(metric) = metric(caller.data_mut(), id) else {
        return Ok(Status::NotFound.code());
    };
    metric.record(value);
    Ok(Status::Ok.code())
}

fn get_metric(mut caller: Caller<'_, VmState>, id: u32, ret_value: u32) -> wasmtime::Result<i32> {
    let Some(metric) = metric(caller.data_mut(), id) else {
        return Ok(Status::NotFound.code());
    };
    match metric.get() {
        Ok(value) => {
            memory::write_u64(&mut caller, "proxy_get_metric", ret_value, value)?;
            Ok(Status::Ok.code())
        }
        Err(_) => Ok(Status::BadArgument.code()),
    }
}
