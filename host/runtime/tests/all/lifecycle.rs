//! The lifecycle Envoy drives, observed through the filter's own log lines and results.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtrace_runtime::{Action, FailureKind, PluginConfig, PluginInstance, StartError};

use crate::fixture::{HeldCallouts, LogCapture, filter, instance, plugin, request, request_header, respond, runtime};

#[test]
fn start_up_hands_the_vm_and_plugin_configuration_and_environment_to_the_guest() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let config = PluginConfig {
        vm_configuration: b"vm-config-bytes".to_vec(),
        environment: vec![("PROBE_GREETING".into(), "hello from the host".into())],
        ..plugin("probe", "", "plugin-config-bytes")
    };
    let _probe = instance(&runtime, "abi-probe", config, Rc::default());
    logs.assert_line("wasm log probe: vm start: vm-config-bytes");
    logs.assert_line("wasm log probe: env PROBE_GREETING=hello from the host");
    logs.assert_line("wasm log probe: configured: plugin-config-bytes");
    logs.assert_line("wasm log probe: stdout reaches the host log");
    let text = logs.text();
    let order = ["vm start:", "configured:"].map(|needle| text.find(needle).expect("logged"));
    assert!(order[0] < order[1], "on_vm_start runs before on_configure");
}

#[test]
fn log_lines_carry_envoys_prefix_with_root_id_and_vm_id() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let config = PluginConfig { root_id: "probe_root".into(), ..plugin("probe", "probe_vm", "") };
    let _probe = instance(&runtime, "abi-probe", config, Rc::default());
    logs.assert_line("wasm log probe probe_root probe_vm: configured: ");
}

#[test]
fn a_stream_runs_create_headers_log_done_delete_with_envoys_context_ids() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    for expected_context in [2, 3] {
        let exchange = request("/", &[("user-agent", "curl/8")]);
        let mut stream = probe.new_stream(exchange.clone());
        assert_eq!(stream.context_id(), expected_context);
        assert_eq!(stream.on_request_headers(true), Action::Continue);
        assert_eq!(request_header(&exchange, "x-probe"), Some(format!("ctx={expected_context}")));
        respond(&exchange, 200);
        assert_eq!(stream.on_response_headers(false), Action::Continue);
        stream.on_log();
        drop(stream);
        logs.assert_line(&format!("wasm log probe: #{expected_context} -> :path: /"));
        logs.assert_line(&format!("wasm log probe: #{expected_context} -> user-agent: curl/8"));
        logs.assert_line(&format!("wasm log probe: #{expected_context} <- :status: 200"));
        logs.assert_line(&format!("wasm log probe: #{expected_context} completed with 200."));
    }
    assert_eq!(probe.vm().expect("vm").live_streams(), 0, "done + delete removed the contexts");
}

#[test]
fn a_plugin_whose_configure_returns_false_is_refused() {
    let runtime = runtime();
    let module = runtime.compile(&filter("hostile")).expect("loads");
    let error = PluginInstance::start(
        &runtime,
        module,
        Arc::new(plugin("hostile", "", "refuse-configure")),
        Rc::new(HeldCallouts::default()),
    )
    .err()
    .expect("refused");
    let StartError::Guest(failure) = &error else { panic!("{error}") };
    assert_eq!((failure.callback.name(), &failure.kind), ("proxy_on_configure", &FailureKind::Refused));
    assert!(error.to_string().contains("hostile"), "{error}");
}

#[test]
fn a_plugin_that_traps_while_starting_is_refused_with_the_trap() {
    let runtime = runtime();
    let module = runtime.compile(&filter("hostile")).expect("loads");
    let error = PluginInstance::start(
        &runtime,
        module,
        Arc::new(plugin("hostile", "", "trap-on-start")),
        Rc::new(HeldCallouts::default()),
    )
    .err()
    .expect("refused");
    let StartError::Guest(failure) = &error else { panic!("{error}") };
    assert_eq!((failure.callback.name(), &failure.kind), ("proxy_on_vm_start", &FailureKind::Trap));
}

#[test]
fn ticks_fire_on_the_root_context_at_the_configured_period() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", "tick_ms=20"), Rc::default());
    let vm = probe.vm().expect("vm");
    let first = vm.next_tick().expect("the filter armed its timer");
    assert!(!vm.tick_if_due(Instant::now()).expect("no failure"), "not due yet");
    std::thread::sleep(first.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
    assert!(vm.tick_if_due(Instant::now()).expect("no failure"));
    assert!(vm.next_tick().expect("re-armed") > first);
    let ticks = runtime.services().metrics.by_name("probe_ticks_total").expect("defined in on_tick");
    assert_eq!(ticks.get(), Ok(1));
    logs.assert_line("wasm log probe: tick");
}

#[test]
fn a_plugin_without_a_tick_period_never_ticks() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let vm = probe.vm().expect("vm");
    assert_eq!(vm.next_tick(), None);
    assert!(!vm.tick_if_due(Instant::now() + Duration::from_secs(3600)).expect("no failure"));
}

#[test]
fn a_root_context_may_finish_later_with_proxy_done() {
    let logs = LogCapture::start();
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", "delay_done"), Rc::default());
    let vm = probe.vm().expect("vm");
    assert!(!vm.shutdown(), "on_done returned false: the root finishes later");
    assert!(!vm.is_done());
    logs.assert_line("done requested; finishing on the next tick");
    let due = vm.next_tick().expect("the filter armed a tick to finish on");
    std::thread::sleep(due.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
    assert!(vm.tick_if_due(Instant::now()).expect("no failure"));
    assert!(vm.is_done(), "proxy_done was called");
    logs.assert_line("wasm log probe: finishing");
}

#[test]
fn a_root_context_that_is_done_at_once_says_so() {
    let runtime = runtime();
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());
    let vm = probe.vm().expect("vm");
    assert!(vm.shutdown());
    assert!(vm.is_done());
}
