//! Component filters (the `wasmtrace:filter` world): which the runtime accepts, and how it says
//! no — the same refusal-before-any-guest-code as for proxy-wasm modules, naming what is wrong.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use wasmtrace_build::{BuildOptions, FilterForm, build_filter};
use wasmtrace_runtime::component::{WORLD, is_component};
use wasmtrace_runtime::{
    Action, Callback, FailureKind, FailurePolicy, FilterForm as LoadedForm, LoadError, NoClusters, PluginConfig,
    PluginInstance, VmLimits,
};

use crate::fixture::{instance, plugin, request, request_header, respond, runtime};

fn component(crate_dir: &Path) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = build_filter(&BuildOptions {
        crate_dir: root.join(crate_dir),
        target_dir: Some(root.join("target/wasm-filters")),
        out: None,
        quiet: true,
        form: FilterForm::Component,
    })
    .expect("wasmtrace build --component");
    std::fs::read(&built.wasm_path).expect("read")
}

fn compile_wat(text: &str) -> Result<(), LoadError> {
    let bytes = wat::parse_str(text).expect("test component is valid WAT");
    assert!(is_component(&bytes));
    runtime().compile(&bytes).map(drop)
}

#[test]
fn the_trace_filter_built_as_a_component_loads_as_one() {
    let bytes = component(Path::new("filters/trace-filter"));
    assert!(is_component(&bytes), "wasm32-wasip2 writes a component");
    let module = runtime().compile(&bytes).expect("the host implements the world it imports");
    assert_eq!(module.form(), LoadedForm::Component);
    assert_eq!(module.abi_version(), None);
}

#[test]
fn the_trace_filter_component_reads_the_request_headers_whole_and_continues_their_trace() {
    // The component reads the map through `http-stream.headers-serialized` (proxy-wasm's
    // encoding, one list): the trace it continues and the headers it records come from there.
    let runtime = runtime();
    let module = runtime.compile(&component(Path::new("filters/trace-filter"))).expect("loads");
    let trace = PluginInstance::start(
        &runtime,
        module,
        Arc::new(plugin("trace", "", r#"{"service_name": "catalog", "exporter": {"cluster": "otel"}}"#)),
        Rc::new(NoClusters),
    )
    .expect("configures");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let exchange = request("/v0/images", &[("traceparent", parent), ("tracestate", "vendor=opaque")]);
    let mut stream = trace.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    let sent = request_header(&exchange, "traceparent").expect("traceparent injected");
    assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "the incoming trace goes on: {sent}");
    assert!(!sent.contains("00f067aa0ba902b7"), "with the new span as the parent: {sent}");
    assert_eq!(request_header(&exchange, "tracestate").as_deref(), Some("vendor=opaque"));
}

#[test]
fn get_properties_answers_every_path_in_the_order_asked() {
    let runtime = runtime();
    let module = runtime.compile(&component(Path::new("filters/test-filters/hostile-component"))).expect("loads");
    let hostile = PluginInstance::start(&runtime, module, Arc::new(plugin("hostile", "", "")), Rc::new(NoClusters))
        .expect("starts");
    let exchange = request("/v0/images?limit=2", &[("x-hostile", "properties")]);
    let mut stream = hostile.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    assert_eq!(request_header(&exchange, "x-hostile-properties").as_deref(), Some("/v0/images?limit=2|-|GET"));
}

#[test]
fn a_component_without_the_handler_export_is_refused_naming_it() {
    let err = compile_wat("(component)").expect_err("refused");
    let message = err.to_string();
    assert!(message.contains(WORLD), "{message}");
    assert!(message.contains("wasmtrace:filter/handler"), "names the missing export: {message}");
}

#[test]
fn a_component_of_another_world_is_refused_naming_the_import() {
    let err = compile_wat(
        r#"(component
             (import "acme:proxy/hooks@1.0.0" (instance (export "before" (func)))))"#,
    )
    .expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("acme:proxy/hooks@1.0.0"), "names the import the host lacks: {message}");
}

#[test]
fn a_handler_missing_a_callback_is_refused_naming_it() {
    // Only a `configure` (of the wrong type, too): the world's handler has every callback. The
    // export is named for 0.2.0: the host (0.2.1) finds it by semver, as it finds any 0.2.x
    // component's, and refuses it for what it lacks, not for its version.
    let err = compile_wat(
        r#"(component
             (core module $m (func (export "configure")))
             (core instance $i (instantiate $m))
             (func $configure (canon lift (core func $i "configure")))
             (instance $handler (export "configure" (func $configure)))
             (export "wasmtrace:filter/handler@0.2.0" (instance $handler)))"#,
    )
    .expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("does not have export `on-request-headers`"), "names the callback: {message}");
}

#[test]
fn bytes_that_only_look_like_a_component_are_refused_as_not_compiling() {
    let mut bytes = b"\0asm".to_vec();
    bytes.extend_from_slice(&[0x0d, 0x00, 0x01, 0x00]);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    let err = runtime().compile(&bytes).map(drop).expect_err("refused");
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
}

#[test]
fn the_readme_example_component_edits_headers_answers_locally_and_hands_off_span_attributes() {
    let runtime = runtime();
    let module = runtime.compile(&component(Path::new("wit/example"))).expect("loads");
    let hello =
        PluginInstance::start(&runtime, module, Arc::new(plugin("hello", "", "component")), Rc::new(NoClusters))
            .expect("configures");

    let exchange = request("/v0/images", &[]);
    let mut stream = hello.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    respond(&exchange, 200);
    assert_eq!(stream.on_response_headers(false), Action::Continue);
    {
        let exchange = exchange.borrow();
        let headers = exchange.response_headers.as_ref().expect("response headers");
        assert_eq!(headers.get_str("x-hello"), Some("component"));
        let attributes = exchange.info.filter_state.get("wasm.wasmtrace_span_attributes").expect("span attributes");
        assert_eq!(String::from_utf8_lossy(attributes), r#"{"hello.greeted":true}"#);
    }
    stream.on_log();
    drop(stream);

    // Another filter (a tagging filter copying a client's header, say) left a hand-off as large
    // as one may be: the component's own attributes replace it rather than fail the call.
    let crowded = request("/v0/images", &[]);
    let filler = format!(r#"{{"tag.filler":"{}"}}"#, "x".repeat((64 << 10) - 20));
    crowded.borrow_mut().info.filter_state.insert("wasm.wasmtrace_span_attributes".into(), filler.into_bytes());
    let mut stream = hello.new_stream(crowded.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    respond(&crowded, 200);
    assert_eq!(stream.on_response_headers(false), Action::Continue);
    assert!(hello.current_vm().and_then(|vm| vm.failure()).is_none(), "the component did not fail");
    let attributes = crowded.borrow().info.filter_state.get("wasm.wasmtrace_span_attributes").cloned();
    assert_eq!(attributes.as_deref(), Some(&br#"{"hello.greeted":true}"#[..]));
    stream.on_log();
    drop(stream);

    let denied = request("/v0/images", &[("x-deny", "1")]);
    let mut stream = hello.new_stream(denied);
    match stream.on_request_headers(true) {
        Action::LocalResponse(response) => {
            assert_eq!(response.status, 403);
            assert_eq!(response.body, b"denied\n");
            assert_eq!(response.headers.get_str("content-type"), Some("text/plain"));
        }
        other => panic!("expected the local response, got {other:?}"),
    }
}

#[test]
fn a_component_refusing_its_configuration_fails_to_start_with_its_reason() {
    let runtime = runtime();
    let module = runtime.compile(&component(Path::new("wit/example"))).expect("loads");
    let err = PluginInstance::start(&runtime, module, Arc::new(plugin("hello", "", "")), Rc::new(NoClusters))
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(message.contains("configure"), "{message}");
    assert!(message.contains("the configuration is the x-hello header's value; it is empty"), "{message}");
}

#[test]
fn a_component_that_traps_loops_or_hoards_memory_fails_only_its_own_stream() {
    let bytes = component(Path::new("filters/test-filters/hostile-component"));
    for (kind, expected) in [
        ("trap", FailureKind::Trap),
        ("loop", FailureKind::DeadlineExceeded),
        ("grow", FailureKind::MemoryLimit),
        // 65 paths in one `get-properties`, one more than a call may ask for.
        ("many-properties", FailureKind::BadGuestInput),
        // 64 times 960 KiB of filter state: answers larger than the VM's 32 MiB could hold.
        ("huge-properties", FailureKind::BadGuestInput),
        // Filter state written under ever new keys: the host's copy is capped, not the guest's.
        ("hoard-filter-state", FailureKind::BadGuestInput),
        // Shared data under ever new keys: each vm_id's share of the host is capped.
        ("hoard-shared-data", FailureKind::BadGuestInput),
    ] {
        let runtime = runtime();
        let deadline = if kind == "loop" { Duration::from_millis(50) } else { Duration::from_secs(10) };
        let config = PluginConfig {
            failure_policy: FailurePolicy::FailClosed,
            limits: VmLimits {
                max_memory_bytes: 32 << 20,
                callback_deadline: deadline,
                restart_backoff: Duration::ZERO,
                ..VmLimits::default()
            },
            ..plugin("hostile", "", "")
        };
        let module = runtime.compile(&bytes).expect("loads");
        let hostile = PluginInstance::start(&runtime, module, Arc::new(config), Rc::new(NoClusters)).expect("starts");

        let mut stream = hostile.new_stream(request("/", &[("x-hostile", kind)]));
        let Action::FailClosed(refused) = stream.on_request_headers(true) else {
            panic!("{kind}: fail-closed refuses the stream")
        };
        assert_eq!(
            refused.to_string().split(':').next(),
            Some("wasm plugin `hostile` failed in proxy_on_request_headers")
        );
        assert!(stream.is_bypassed());
        let failure = hostile.current_vm().and_then(|vm| vm.failure()).expect("the VM failed");
        assert_eq!(failure.kind, expected, "{kind}: {failure}");
        stream.on_log();
        drop(stream);

        let good = request("/", &[]);
        let mut next = hostile.new_stream(good.clone());
        assert_eq!(next.on_request_headers(true), Action::Continue, "{kind}: a fresh VM serves");
        assert!(request_header(&good, "x-hostile-ok").is_some(), "{kind}");
        assert_eq!(hostile.restarts(), 1, "{kind}");
    }
}

#[test]
fn a_hoarder_in_the_chain_leaves_the_next_filter_all_of_its_room() {
    // The hostile component fills its share of the stream's filter state (and traps); the next
    // filter on the same stream writes its own as if nothing happened: the bounds are per writer.
    let runtime = runtime();
    let module = runtime.compile(&component(Path::new("filters/test-filters/hostile-component"))).expect("loads");
    let config = PluginConfig { failure_policy: FailurePolicy::FailOpen, ..plugin("hostile", "", "") };
    let hostile = PluginInstance::start(&runtime, module, Arc::new(config), Rc::new(NoClusters)).expect("starts");
    let probe = instance(&runtime, "abi-probe", plugin("probe", "", ""), Rc::default());

    let exchange = request("/props", &[("x-hostile", "hoard-filter-state")]);
    let mut hoarding = hostile.new_stream(exchange.clone());
    assert_eq!(hoarding.on_request_headers(true), Action::Continue, "fail-open");
    let failure = hostile.current_vm().and_then(|vm| vm.failure()).expect("the hoarder failed");
    assert_eq!(failure.kind, FailureKind::BadGuestInput, "{failure}");
    let hoarded = exchange.borrow().info.filter_state.len();
    assert!(hoarded >= 15, "the hoarder's megabyte is still on the stream ({hoarded} entries)");

    let mut next = probe.new_stream(exchange.clone());
    assert_eq!(next.on_request_headers(true), Action::Continue);
    assert!(probe.current_vm().and_then(|vm| vm.failure()).is_none(), "the next writer did not fail");
    let state = exchange.borrow().info.filter_state.get("wasm.probe_state").cloned();
    assert_eq!(state.as_deref(), Some(&b"set-by-probe"[..]));
}

#[test]
fn a_component_panicking_inside_a_tokio_runtime_traps_without_panicking_the_host() {
    // As on a proxy worker: the guest's panic message goes to WASI stderr from inside a tokio
    // runtime, where wasmtime-wasi's blocking stream calls would panic the host.
    let bytes = component(Path::new("filters/test-filters/hostile-component"));
    let worker = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    worker.block_on(async {
        let runtime = runtime();
        let module = runtime.compile(&bytes).expect("loads");
        let config = PluginConfig { failure_policy: FailurePolicy::FailOpen, ..plugin("hostile", "", "") };
        let hostile = PluginInstance::start(&runtime, module, Arc::new(config), Rc::new(NoClusters)).expect("starts");
        let mut stream = hostile.new_stream(request("/", &[("x-hostile", "trap")]));
        assert_eq!(stream.on_request_headers(true), Action::Continue, "fail-open");
        // The VM that served it failed with the guest's trap, not with a host panic.
        let failure = hostile.current_vm().and_then(|vm| vm.failure()).expect("the VM failed");
        assert_eq!(failure.kind, FailureKind::Trap, "{failure}");
        assert_eq!(failure.callback, Callback::RequestHeaders);
        assert!(!failure.detail.contains("host function panicked"), "{failure}");
        assert!(failure.detail.contains("asked to trap"), "the guest's panic message is in the report: {failure}");
    });
}

#[test]
fn a_module_and_a_component_failing_the_same_way_are_reported_under_one_callback_name() {
    let runtime = runtime();
    let config = |name: &str| PluginConfig { failure_policy: FailurePolicy::FailOpen, ..plugin(name, "", "") };
    let module = instance(&runtime, "hostile", config("hostile-module"), Rc::default());
    let compiled = runtime.compile(&component(Path::new("filters/test-filters/hostile-component"))).expect("loads");
    let component =
        PluginInstance::start(&runtime, compiled, Arc::new(config("hostile-component")), Rc::new(NoClusters))
            .expect("starts");

    let mut failures = Vec::new();
    for (name, hostile) in [("hostile-module", &module), ("hostile-component", &component)] {
        let mut stream = hostile.new_stream(request("/", &[("x-hostile", "trap")]));
        assert_eq!(stream.on_request_headers(true), Action::Continue, "{name}: fail-open");
        let failure = hostile.current_vm().and_then(|vm| vm.failure()).expect("the VM failed");
        assert_eq!(failure.kind, FailureKind::Trap, "{name}: {failure}");
        let counted = runtime.services().failure_stats(name).callback_failures;
        let reported = failure.to_string().contains("failed in proxy_on_request_headers");
        failures.push((failure.callback, reported, counted));
    }
    let one_name = std::collections::BTreeMap::from([("proxy_on_request_headers", 1)]);
    assert_eq!(failures[0], (Callback::RequestHeaders, true, one_name.clone()), "the module");
    assert_eq!(failures[1], (Callback::RequestHeaders, true, one_name), "the component: the same report and metric");
}
