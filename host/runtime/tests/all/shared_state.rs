//! Shared data, shared queues and metrics: process-wide, keyed by vm_id.

use std::rc::Rc;

use wasmtrace_runtime::metrics::MetricValue;
use wasmtrace_runtime::{Action, PluginInstance};

use crate::fixture::{LogCapture, instance, plugin, request, request_header, respond, runtime};

fn shared_report(probe: &PluginInstance) -> String {
    let exchange = request("/shared", &[]);
    let mut stream = probe.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    request_header(&exchange, "x-shared").expect("reported")
}

#[test]
fn shared_data_is_shared_by_vm_id_and_a_stale_cas_loses() {
    let runtime = runtime();
    // Two VMs of one vm_id (as on two workers) and one of another.
    let worker_a = instance(&runtime, "abi-probe", plugin("probe", "shared_vm", ""), Rc::default());
    let worker_b = instance(&runtime, "abi-probe", plugin("probe", "shared_vm", ""), Rc::default());
    let elsewhere = instance(&runtime, "abi-probe", plugin("probe", "other_vm", ""), Rc::default());
    assert_eq!(shared_report(&worker_a), "1,ok,CasMismatch");
    assert_eq!(shared_report(&worker_b), "2,ok,CasMismatch");
    assert_eq!(shared_report(&worker_a), "3,ok,CasMismatch");
    assert_eq!(shared_report(&elsewhere), "1,ok,CasMismatch");
}

#[test]
fn a_queue_item_reaches_the_root_context_that_registered_the_queue() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let producer = instance(&runtime, "abi-probe", plugin("probe", "queue_vm", ""), Rc::default());
    // Registered last: owns the queue, like the most recent worker in Envoy.
    let consumer = instance(&runtime, "abi-probe", plugin("probe", "queue_vm", ""), Rc::default());
    let exchange = request("/enqueue", &[]);
    let mut stream = producer.new_stream(exchange.clone());
    stream.on_request_headers(true);
    assert_eq!(request_header(&exchange, "x-enqueued"), Some("yes".into()));

    let consumer_vm = consumer.vm().expect("vm");
    assert!(consumer_vm.queue_inbox().has_pending());
    assert!(!producer.vm().expect("vm").queue_inbox().has_pending());
    assert_eq!(consumer_vm.deliver_queue_ready().expect("no failure"), 1);
    logs.assert_line("wasm log probe queue_vm: dequeued: /enqueue");
    let dequeued = runtime.services().metrics.by_name("probe_dequeued_total").expect("defined");
    assert_eq!(dequeued.get(), Ok(1));
}

#[test]
fn metrics_defined_by_a_filter_are_exposed_by_name() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    for _ in 0..3 {
        let exchange = request("/", &[("a", "1")]);
        let mut stream = probe.new_stream(exchange.clone());
        stream.on_request_headers(true);
        respond(&exchange, 200);
        stream.on_response_headers(true);
    }
    let metrics = &runtime.services().metrics;
    assert_eq!(metrics.by_name("probe_requests_total").map(|m| m.value()), Some(MetricValue::Counter(3)));
    assert_eq!(metrics.by_name("probe_last_context_id").map(|m| m.value()), Some(MetricValue::Gauge(4)));
    let Some(MetricValue::Histogram(sizes)) = metrics.by_name("probe_request_header_count").map(|m| m.value()) else {
        panic!("histogram defined")
    };
    assert_eq!(sizes.count, 3);
    assert_eq!(sizes.sum, 15.0, "four pseudo-headers plus `a`, three times");
}
