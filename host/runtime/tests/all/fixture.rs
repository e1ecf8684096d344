//! What every test needs: the test filters built once per process, a runtime, a plugin
//! instance, an exchange to drive, a record of the callouts a filter made, and the log lines the
//! runtime emitted.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use wasmtrace_build::{BuildOptions, build_filter};
use wasmtrace_runtime::{
    CalloutCompletion, CalloutDispatcher, CalloutRequest, DispatchError, HeaderMap, HostServices, HttpExchange,
    LogLevel, NodeInfo, PluginConfig, PluginInstance, Runtime,
};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The bytes of a test filter under `filters/test-filters/<name>`, built once per process through
/// the same code path as `wasmtrace build`.
pub fn filter(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(bytes) = built.get(name) {
        return bytes.clone();
    }
    let root = workspace_root();
    let module = build_filter(&BuildOptions {
        crate_dir: root.join("filters/test-filters").join(name),
        target_dir: Some(root.join("target/wasm-filters")),
        out: None,
        quiet: true,
        form: Default::default(),
    })
    .unwrap_or_else(|e| panic!("building test filter {name}: {e}"));
    let bytes = std::fs::read(&module.wasm_path).expect("read built module");
    built.insert(name.to_owned(), bytes.clone());
    bytes
}

/// A runtime with a node identity the property tests can read.
pub fn runtime() -> Arc<Runtime> {
    let mut node =
        NodeInfo { id: "sidecar~10.0.0.1~gallery-api".into(), cluster: "gallery".into(), ..NodeInfo::default() };
    node.metadata.insert("region".into(), serde_json::Value::String("eu-west".into()));
    Runtime::with_services(HostServices::new(node, LogLevel::Trace)).expect("runtime")
}

/// A callout dispatcher that knows the `auth` cluster and keeps the callouts for the test to
/// answer — the role the data plane plays.
#[derive(Default)]
pub struct HeldCallouts {
    pub held: RefCell<Vec<(CalloutRequest, CalloutCompletion)>>,
}

impl CalloutDispatcher for HeldCallouts {
    fn has_cluster(&self, cluster: &str) -> bool {
        cluster == "auth"
    }

    fn dispatch(&self, request: CalloutRequest, completion: CalloutCompletion) -> Result<(), DispatchError> {
        self.held.borrow_mut().push((request, completion));
        Ok(())
    }
}

/// Starts `filter_name` as plugin `plugin` with the given configuration.
pub fn instance(
    runtime: &Runtime,
    filter_name: &str,
    plugin: PluginConfig,
    callouts: Rc<HeldCallouts>,
) -> PluginInstance {
    let module = runtime.compile(&filter(filter_name)).expect("module loads");
    PluginInstance::start(runtime, module, Arc::new(plugin), callouts).expect("plugin starts")
}

/// A plugin configuration named `name` in VM `vm_id`.
pub fn plugin(name: &str, vm_id: &str, configuration: &str) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        vm_id: vm_id.into(),
        plugin_configuration: configuration.as_bytes().to_vec(),
        ..PluginConfig::default()
    }
}

/// An exchange whose request headers arrived: `GET <path>` plus `extra`.
pub fn request(path: &str, extra: &[(&str, &str)]) -> Rc<RefCell<HttpExchange>> {
    let mut headers = HeaderMap::from_pairs([
        (":method", "GET"),
        (":path", path),
        (":authority", "gallery.local"),
        (":scheme", "http"),
    ]);
    for (k, v) in extra {
        headers.add(k.as_bytes(), v.as_bytes());
    }
    Rc::new(RefCell::new(HttpExchange::with_request_headers(headers)))
}

/// The response headers `:status <status>` arrive.
pub fn respond(exchange: &Rc<RefCell<HttpExchange>>, status: u16) {
    exchange.borrow_mut().response_headers = Some(HeaderMap::from_pairs([
        (":status", status.to_string().as_str()),
        ("content-type", "text/plain"),
        ("content-length", "12"),
    ]));
}

/// A request header's value as text.
pub fn request_header(exchange: &Rc<RefCell<HttpExchange>>, name: &str) -> Option<String> {
    let exchange = exchange.borrow();
    exchange.request_headers.as_ref()?.get_str(name).map(str::to_owned)
}

/// Collects the log lines emitted on this thread while the guard lives.
///
/// One subscriber serves the whole test process (installed by the first capture) and writes
/// each event into the buffer of the thread that emitted it. A thread-local subscriber per
/// test (`set_default`) missed events now and then: tracing caches, per call site, whether
/// anyone is interested, and that cache races with other threads creating and dropping their
/// subscribers.
pub struct LogCapture {
    /// Not `Send`: the capture belongs to the thread that started it.
    _thread: std::marker::PhantomData<*const ()>,
}

thread_local! {
    /// This thread's captured log text, while a [`LogCapture`] lives.
    static CAPTURED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|captured| {
            if let Some(lines) = captured.borrow_mut().as_mut() {
                lines.extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURED.with(|captured| *captured.borrow_mut() = None);
    }
}

impl LogCapture {
    pub fn start() -> Self {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .without_time()
                .with_writer(|| CaptureWriter)
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        CAPTURED.with(|captured| *captured.borrow_mut() = Some(Vec::new()));
        Self { _thread: std::marker::PhantomData }
    }

    pub fn text(&self) -> String {
        CAPTURED.with(|captured| String::from_utf8_lossy(captured.borrow().as_deref().unwrap_or_default()).into_owned())
    }

    /// Asserts that some line contains `needle`.
    pub fn assert_line(&self, needle: &str) {
        let text = self.text();
        assert!(text.lines().any(|l| l.contains(needle)), "no log line contains {needle:?}; log was:\n{text}");
    }
}
