//! Module start-up as proxy-wasm-cpp-host runs it: a WASI reactor gets `_initialize`, then `main`
//! or else `__main_void`; a WASI command gets `_start`; a failure there refuses the start.
//!
//! Each module keeps a step counter in a global that its entry points advance only from the step
//! they expect, and its `proxy_on_vm_start` returns false (refusing the start) unless the counter
//! reached the final step: the plugin starting is the observation that every entry point ran, in
//! order.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use wasmtrace_runtime::{
    Action, Callback, FailureKind, LoadError, PluginConfig, PluginInstance, Runtime, StartError, VmLimits,
};

use crate::fixture::{HeldCallouts, plugin, runtime};

/// A proxy-wasm module around `entries`, which may use `$step`; it starts only if `$step` is
/// `final_step` when `proxy_on_vm_start` runs.
fn module(entries: &str, final_step: u32) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (global $step (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (i32.eq (global.get $step) (i32.const {final_step})))
  {entries})"#
    )
}

/// Moves `$step` from `from` to `to`, or to 100 (never final) when run at another step: out of
/// order, or twice.
fn advance(from: u32, to: u32) -> String {
    format!(
        "(global.set $step (select (i32.const {to}) (i32.const 100) (i32.eq (global.get $step) (i32.const {from}))))"
    )
}

/// An entry point `name() -> ()` that advances `$step` from `from` to `to`.
fn step(name: &str, from: u32, to: u32) -> String {
    format!(r#"(func (export "{name}") {})"#, advance(from, to))
}

/// A reactor's `__main_void() -> i32` that advances `$step` from `from` to `to` and returns 0.
fn main_void(from: u32, to: u32) -> String {
    format!(r#"(func (export "__main_void") (result i32) {} (i32.const 0))"#, advance(from, to))
}

fn start_with(runtime: &Runtime, wat: &str, config: PluginConfig) -> Result<PluginInstance, StartError> {
    let bytes = wat::parse_str(wat).unwrap_or_else(|e| panic!("test module is valid WAT ({e}):\n{wat}"));
    let module = runtime.compile(&bytes).unwrap_or_else(|e| panic!("test module loads ({e}):\n{wat}"));
    PluginInstance::start(runtime, module, Arc::new(config), Rc::new(HeldCallouts::default()))
}

fn start(wat: &str) -> Result<PluginInstance, StartError> {
    start_with(&runtime(), wat, plugin("start-up", "", ""))
}

/// The start-up step that refused or failed, and how.
fn refusal(result: Result<PluginInstance, StartError>) -> (&'static str, FailureKind, String) {
    match result {
        Ok(_) => panic!("the plugin started"),
        Err(StartError::Guest(failure)) => {
            let message = StartError::Guest(failure.clone()).to_string();
            (failure.callback.name(), failure.kind, message)
        }
        Err(other) => panic!("not a guest failure: {other}"),
    }
}

#[test]
fn a_reactor_runs_initialize_then_main_void_and_then_starts() {
    let reactor = module(&[step("_initialize", 0, 1), main_void(1, 2)].concat(), 2);
    start(&reactor).expect("started: _initialize ran, then __main_void");

    // The check is real: without `__main_void` the same module stops at step 1 and refuses.
    let without_main_void = module(&step("_initialize", 0, 1), 2);
    let (callback, kind, _) = refusal(start(&without_main_void));
    assert_eq!((callback, kind), ("proxy_on_vm_start", FailureKind::Refused));
}

#[test]
fn a_reactor_exporting_main_has_main_called_with_no_arguments_instead_of_main_void() {
    // `main(argc, argv)` moves to step 2 only when called as `main(0, 0)`; `__main_void` would
    // spoil the count.
    let main = r#"(func (export "main") (param $argc i32) (param $argv i32) (result i32)
    (global.set $step
      (select (i32.const 2) (i32.const 100)
        (i32.and (i32.eq (global.get $step) (i32.const 1))
                 (i32.eqz (i32.or (local.get $argc) (local.get $argv))))))
    (i32.const 0))"#;
    let reactor = module(&[step("_initialize", 0, 1), main.to_owned(), main_void(2, 100)].concat(), 2);
    start(&reactor).expect("started: _initialize, then main(0, 0), and __main_void never");
}

#[test]
fn a_command_module_runs_start_and_then_starts() {
    let command = module(&step("_start", 0, 1), 1);
    start(&command).expect("started: _start ran");
}

#[test]
fn a_reactor_never_has_start_called_and_a_command_never_main_void() {
    let reactor = module(&[step("_initialize", 0, 1), step("_start", 0, 100)].concat(), 1);
    start(&reactor).expect("started: _start is a command's entry point, not a reactor's");
    let command = module(&[step("_start", 0, 1), main_void(0, 100)].concat(), 1);
    start(&command).expect("started: __main_void is a reactor's entry point, not a command's");
}

#[test]
fn a_trap_in_initialize_refuses_the_start_with_a_start_error_naming_initialize() {
    let reactor = module(r#"(func (export "_initialize") unreachable)"#, 0);
    let (callback, kind, message) = refusal(start(&reactor));
    assert_eq!((callback, kind), ("_initialize", FailureKind::Trap));
    assert!(message.starts_with("wasm plugin `start-up` failed in _initialize:"), "{message}");
    assert!(message.contains("unreachable"), "the trap is in the error: {message}");
}

#[test]
fn a_trap_in_main_void_or_start_refuses_the_start_naming_it() {
    let reactor = module(
        &[step("_initialize", 0, 1), r#"(func (export "__main_void") (result i32) unreachable)"#.to_owned()].concat(),
        1,
    );
    assert_eq!(refusal(start(&reactor)).0, "__main_void");
    let command = module(r#"(func (export "_start") unreachable)"#, 0);
    assert_eq!(refusal(start(&command)).0, "_start");
}

#[test]
fn an_initialize_that_never_returns_is_interrupted_at_the_start_deadline() {
    let reactor = module(r#"(func (export "_initialize") (loop $forever (br $forever)))"#, 0);
    let limits = VmLimits { start_deadline: Duration::from_millis(50), ..VmLimits::default() };
    let config = PluginConfig { limits, ..plugin("start-up", "", "") };
    let (callback, kind, message) = refusal(start_with(&runtime(), &reactor, config));
    assert_eq!((callback, kind), ("_initialize", FailureKind::DeadlineExceeded));
    assert!(message.contains("50ms"), "the start deadline, not the callback deadline: {message}");
}

/// A module whose `proxy_on_context_create` never returns for the context ids `looping_when`
/// (a WAT condition on `$id`) picks.
fn context_create_looping_when(looping_when: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param $id i32) (param i32)
    (if ({looping_when}) (then (loop $forever (br $forever)))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1))"#
    )
}

#[test]
fn a_root_context_create_that_never_returns_is_reported_with_the_start_deadline_it_ran_under() {
    // The two deadlines differ, so the report tells which one was armed.
    let limits = VmLimits {
        start_deadline: Duration::from_millis(300),
        callback_deadline: Duration::from_millis(40),
        ..VmLimits::default()
    };
    let config = PluginConfig { limits, ..plugin("start-up", "", "") };
    let root_loops = context_create_looping_when("i32.eq (local.get $id) (i32.const 1)");
    let (callback, kind, message) = refusal(start_with(&runtime(), &root_loops, config.clone()));
    assert_eq!((callback, kind), ("proxy_on_context_create", FailureKind::DeadlineExceeded));
    assert!(message.contains("300ms") && !message.contains("40ms"), "the start-up deadline: {message}");

    // The same export for a stream context runs under, and is reported with, the callback deadline.
    let stream_loops = context_create_looping_when("i32.ne (local.get $id) (i32.const 1)");
    // Kept for the test: its epoch ticker is what interrupts the loop.
    let runtime = runtime();
    let instance = start_with(&runtime, &stream_loops, config).expect("the root context starts");
    let mut stream = instance.new_stream(crate::fixture::request("/", &[]));
    let refused = matches!(stream.on_request_headers(true), Action::FailClosed(_));
    assert!(refused, "fail-closed by default: the stream is refused");
    let failure = instance.current_vm().and_then(|vm| vm.failure()).expect("the stream's context create failed the VM");
    assert_eq!((failure.callback, &failure.kind), (Callback::StreamContextCreate, &FailureKind::DeadlineExceeded));
    assert_eq!(failure.callback.name(), "proxy_on_context_create");
    assert!(failure.detail.contains("40ms"), "the callback deadline: {failure}");
}

#[test]
fn an_entry_point_with_another_signature_is_refused_at_load_naming_it() {
    let runtime = runtime();
    let load = |entries: &str| runtime.compile(&wat::parse_str(module(entries, 0)).expect("valid WAT")).map(drop);
    let main_without_arguments =
        [r#"(func (export "_initialize"))"#, r#"(func (export "main") (result i32) i32.const 0)"#].concat();
    match load(&main_without_arguments) {
        Err(LoadError::BadExportType { name, expected, .. }) => {
            assert_eq!((name.as_str(), expected.as_str()), ("main", "(i32, i32) -> (i32)"));
        }
        other => panic!("expected a bad `main` signature, got {other:?}"),
    }
    match load(r#"(func (export "_start") (param i32))"#) {
        Err(LoadError::BadExportType { name, .. }) => assert_eq!(name, "_start"),
        other => panic!("expected a bad `_start` signature, got {other:?}"),
    }
    // An export start-up never calls is not an entry point: a reactor's `_start` is its own.
    load(&[r#"(func (export "_initialize"))"#, r#"(func (export "_start") (param i32))"#].concat())
        .expect("a reactor's `_start` is not checked");
}

/// A root context that traps on every tick, 1 ms apart: without a wait between re-creations
/// the worker would re-create it a thousand times a second.
#[test]
fn a_vm_failing_in_its_root_context_right_after_each_start_is_re_created_after_a_growing_wait() {
    let wat = r#"(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 1))) (i32.const 1))
  (func (export "proxy_on_tick") (param i32) unreachable))"#;
    let mut config = plugin("crash-loop", "", "");
    config.limits.restart_backoff = Duration::from_millis(50);
    let instance = start_with(&runtime(), wat, config).expect("it starts");
    let began = std::time::Instant::now();
    while began.elapsed() < Duration::from_millis(600) {
        if let Some(vm) = instance.vm() {
            let _ = vm.tick_if_due(std::time::Instant::now() + Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Waits of 50, 100, 200 ms... fit four or five re-creations in 600 ms, not hundreds.
    let restarts = instance.restarts();
    assert!((1..=6).contains(&restarts), "re-created {restarts} times");
}
