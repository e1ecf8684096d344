//! A guest that traps, loops, hoards memory or hands out bad pointers fails only its own
//! stream: fail-open skips the filter, fail-closed answers 503, the VM is re-created, and the
//! next stream is served.

use std::rc::Rc;
use std::time::Duration;

use wasmtrace_runtime::{Action, Callback, FailurePolicy, PluginConfig, VmLimits};

use crate::fixture::{LogCapture, instance, plugin, request, request_header, runtime};

/// The hostile filter's plugin: a 32 MiB cap and a deadline of `deadline`.
fn hostile_config_with(policy: FailurePolicy, deadline: Duration) -> PluginConfig {
    PluginConfig {
        failure_policy: policy,
        limits: VmLimits {
            max_memory_bytes: 32 << 20,
            callback_deadline: deadline,
            restart_backoff: Duration::ZERO,
            ..VmLimits::default()
        },
        ..plugin("hostile", "", "")
    }
}

/// The hostile filter's plugin with a short deadline (50 ms), so an endless loop ends quickly.
fn hostile_config(policy: FailurePolicy) -> PluginConfig {
    hostile_config_with(policy, Duration::from_millis(50))
}

/// Runs one misbehaving stream and one normal stream, checks both outcomes, and returns the log.
fn fails_only_its_own_stream(kind: &str, policy: FailurePolicy, expected_kind: &str) {
    let logs = LogCapture::start();
    let runtime = runtime();
    // Only the endless loop needs the deadline; the others get a generous one so a busy machine
    // cannot turn their failure into a deadline hit.
    let deadline = if kind == "loop" { Duration::from_millis(50) } else { Duration::from_secs(10) };
    let hostile = instance(&runtime, "hostile", hostile_config_with(policy, deadline), Rc::default());

    let bad = request("/", &[("x-hostile", kind)]);
    let mut stream = hostile.new_stream(bad.clone());
    let action = stream.on_request_headers(true);
    match policy {
        FailurePolicy::FailOpen => {
            assert_eq!(action, Action::Continue, "{kind}: fail-open lets the request through");
            assert_eq!(request_header(&bad, "x-hostile-ok"), None, "the filter did not finish");
        }
        FailurePolicy::FailClosed => {
            // The data plane answers it 503 `wasm_fail_stream` (the proxy's rescue table).
            let Action::FailClosed(failure) = action else {
                panic!("{kind}: fail-closed must refuse the stream, got {action:?}")
            };
            assert_eq!((failure.plugin.as_str(), failure.callback), ("hostile", Callback::RequestHeaders));
        }
    }
    assert!(stream.is_bypassed(), "{kind}: the filter is out of this stream");
    stream.on_log();
    drop(stream);

    logs.assert_line("wasm plugin `hostile` failed in proxy_on_request_headers");
    logs.assert_line(&format!("kind={expected_kind}"));
    let stats = runtime.services().failure_stats("hostile");
    assert_eq!(stats.callback_failures.get("proxy_on_request_headers"), Some(&1), "{kind}: counted");

    let good = request("/", &[]);
    let mut next = hostile.new_stream(good.clone());
    assert_eq!(next.on_request_headers(true), Action::Continue);
    assert_eq!(request_header(&good, "x-hostile-ok"), Some("ctx=2".into()), "{kind}: a fresh VM serves");
    assert_eq!(hostile.restarts(), 1);
    assert_eq!(runtime.services().failure_stats("hostile").vm_restarts, 1);
}

#[test]
fn a_trap_fails_only_its_stream_fail_open() {
    fails_only_its_own_stream("trap", FailurePolicy::FailOpen, "Trap");
}

#[test]
fn a_trap_fails_only_its_stream_fail_closed() {
    fails_only_its_own_stream("trap", FailurePolicy::FailClosed, "Trap");
}

#[test]
fn an_endless_loop_is_interrupted_at_the_deadline_fail_open() {
    fails_only_its_own_stream("loop", FailurePolicy::FailOpen, "DeadlineExceeded");
}

#[test]
fn an_endless_loop_is_interrupted_at_the_deadline_fail_closed() {
    fails_only_its_own_stream("loop", FailurePolicy::FailClosed, "DeadlineExceeded");
}

#[test]
fn unbounded_memory_growth_stops_at_the_cap_fail_open() {
    fails_only_its_own_stream("grow", FailurePolicy::FailOpen, "MemoryLimit");
}

#[test]
fn unbounded_memory_growth_stops_at_the_cap_fail_closed() {
    fails_only_its_own_stream("grow", FailurePolicy::FailClosed, "MemoryLimit");
}

#[test]
fn an_out_of_range_argument_pointer_is_caught_fail_open() {
    fails_only_its_own_stream("bad-pointer", FailurePolicy::FailOpen, "BadGuestInput");
}

#[test]
fn an_out_of_range_argument_pointer_is_caught_fail_closed() {
    fails_only_its_own_stream("bad-pointer", FailurePolicy::FailClosed, "BadGuestInput");
}

#[test]
fn an_out_of_range_return_pointer_is_caught_fail_open() {
    fails_only_its_own_stream("bad-return-pointer", FailurePolicy::FailOpen, "BadGuestInput");
}

#[test]
fn an_out_of_range_return_pointer_is_caught_fail_closed() {
    fails_only_its_own_stream("bad-return-pointer", FailurePolicy::FailClosed, "BadGuestInput");
}

#[test]
fn a_malformed_header_map_is_caught_fail_closed() {
    fails_only_its_own_stream("bad-map", FailurePolicy::FailClosed, "BadGuestInput");
}

#[test]
fn the_bad_pointer_is_named_in_the_log() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let hostile = instance(&runtime, "hostile", hostile_config(FailurePolicy::FailOpen), Rc::default());
    let mut stream = hostile.new_stream(request("/", &[("x-hostile", "bad-pointer")]));
    stream.on_request_headers(true);
    logs.assert_line("proxy_get_header_map_value: guest pointer 0xffffff00+64 is outside linear memory");
}

#[test]
fn streams_in_flight_on_a_failed_vm_get_the_policy_and_new_streams_a_new_vm() {
    let runtime = runtime();
    let hostile = instance(&runtime, "hostile", hostile_config(FailurePolicy::FailClosed), Rc::default());
    // A stream that is past its request headers when another stream kills the VM.
    let survivor = request("/", &[]);
    let mut in_flight = hostile.new_stream(survivor.clone());
    assert_eq!(in_flight.on_request_headers(true), Action::Continue);
    let mut killer = hostile.new_stream(request("/", &[("x-hostile", "trap")]));
    assert!(matches!(killer.on_request_headers(true), Action::FailClosed(_)));
    // The in-flight stream's next callback meets the failed VM: it gets the policy, not a crash.
    survivor.borrow_mut().response_headers = Some(wasmtrace_runtime::HeaderMap::from_pairs([(":status", "200")]));
    assert!(matches!(in_flight.on_response_headers(true), Action::FailClosed(_)));
    let fresh = request("/", &[]);
    assert_eq!(hostile.new_stream(fresh.clone()).on_request_headers(true), Action::Continue);
    assert_eq!(request_header(&fresh, "x-hostile-ok"), Some("ctx=2".into()));
}
