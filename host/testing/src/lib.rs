//! A filter crate's own runtime tests: the module it builds, run in the wasmtrace runtime (the
//! same runtime the sidecar and the in-process layer run), driven one callback at a time.
//!
//! ```ignore
//! use wasmtrace_testing::{FilterForm, FilterUnderTest};
//!
//! let filter = FilterUnderTest::build(env!("CARGO_MANIFEST_DIR"), FilterForm::ProxyWasm, "{}")?;
//! let mut request = filter.request(&[("x-tenant", "acme")]);
//! request.send_request_headers();
//! assert_eq!(request.span_attributes()["tenant.id"], "acme");
//! ```
//!
//! The module is built as `wasmtrace build` builds it, into `target/wasmtrace-test` beside the
//! crate (a target directory of its own, so the build does not wait for the one `cargo test`
//! holds). Nothing is sent anywhere: a callout is held for the test to answer.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

pub use wasmtrace_build::FilterForm;
use wasmtrace_build::{BuildOptions, build_filter};
pub use wasmtrace_runtime::{Action, Direction, LocalResponse};
use wasmtrace_runtime::{
    CalloutCompletion, CalloutDispatcher, CalloutRequest, CalloutResponse, DispatchError, HeaderMap, HttpExchange,
    HttpStream, PluginConfig, PluginInstance, Runtime,
};

/// The filter-state key the trace filter publishes the request's context under, a W3C
/// `traceparent` (`wasmtrace-span`'s hand-off contract).
pub const TRACE_CONTEXT: &str = "wasmtrace_trace_context";

/// The cluster names a test's callouts may go to; a callout to any other is refused as an
/// unknown cluster, as the proxy refuses it.
const DEFAULT_CLUSTERS: &[&str] = &["auth"];

/// Why a filter could not be put under test.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// Building the module failed.
    #[error("building the filter failed")]
    Build(#[source] wasmtrace_build::BuildError),
    /// Reading the built module failed.
    #[error("reading {} failed", .path.display())]
    Read {
        /// The module's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime could not start.
    #[error("starting the runtime failed: {0}")]
    Runtime(String),
    /// The module did not load (not a filter, or one this host refuses).
    #[error("the module does not load")]
    Load(#[source] wasmtrace_runtime::LoadError),
    /// The filter refused its configuration or failed to start.
    #[error("the filter does not start")]
    Start(#[source] wasmtrace_runtime::StartError),
}

/// Callouts held for the test to answer, to the clusters the test names.
struct HeldCallouts {
    clusters: Vec<String>,
    held: RefCell<Vec<(CalloutRequest, CalloutCompletion)>>,
}

impl CalloutDispatcher for HeldCallouts {
    fn has_cluster(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|c| c == cluster)
    }

    fn dispatch(&self, request: CalloutRequest, completion: CalloutCompletion) -> Result<(), DispatchError> {
        self.held.borrow_mut().push((request, completion));
        Ok(())
    }
}

/// A filter started in the runtime with its plugin configuration.
pub struct FilterUnderTest {
    // Dropped in this order: the plugin before its runtime.
    instance: PluginInstance,
    callouts: Rc<HeldCallouts>,
    _runtime: Arc<Runtime>,
}

impl FilterUnderTest {
    /// Builds the filter crate at `crate_dir` in `form` and starts it with `configuration` (the
    /// plugin configuration, as a bootstrap's `configuration.value` holds it).
    pub fn build(crate_dir: impl AsRef<Path>, form: FilterForm, configuration: &str) -> Result<Self, TestError> {
        let crate_dir = crate_dir.as_ref().to_owned();
        // Beside the target directory `cargo test` uses, not in it: that one is locked while
        // the tests run.
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate_dir.join("target"), PathBuf::from);
        let built = build_filter(&BuildOptions {
            target_dir: Some(target.join("wasmtrace-test")),
            crate_dir,
            out: None,
            quiet: true,
            form,
        })
        .map_err(TestError::Build)?;
        let bytes = std::fs::read(&built.wasm_path)
            .map_err(|source| TestError::Read { path: built.wasm_path.clone(), source })?;
        Self::start(&bytes, configuration)
    }

    /// Starts the module (or component) `bytes` with `configuration`; its callouts may go to
    /// the cluster `auth`.
    pub fn start(bytes: &[u8], configuration: &str) -> Result<Self, TestError> {
        Self::start_with_clusters(bytes, configuration, DEFAULT_CLUSTERS)
    }

    /// Starts `bytes` with `configuration`; its callouts may go to `clusters`.
    pub fn start_with_clusters(bytes: &[u8], configuration: &str, clusters: &[&str]) -> Result<Self, TestError> {
        let runtime = Runtime::new().map_err(|e| TestError::Runtime(format!("{e:#}")))?;
        let module = runtime.compile(bytes).map_err(TestError::Load)?;
        let plugin = PluginConfig {
            name: "under-test".into(),
            plugin_configuration: configuration.as_bytes().to_vec(),
            ..PluginConfig::default()
        };
        let callouts = Rc::new(HeldCallouts {
            clusters: clusters.iter().map(|c| (*c).to_owned()).collect(),
            held: RefCell::new(Vec::new()),
        });
        let dispatcher: Rc<dyn CalloutDispatcher> = callouts.clone();
        let instance =
            PluginInstance::start(&runtime, module, Arc::new(plugin), dispatcher).map_err(TestError::Start)?;
        Ok(Self { instance, callouts, _runtime: runtime })
    }

    /// A request `GET /` to `test.local` with `headers` added, not yet shown to the filter.
    pub fn request(&self, headers: &[(&str, &str)]) -> TestRequest {
        let mut map = HeaderMap::from_pairs([
            (":method", "GET"),
            (":path", "/"),
            (":authority", "test.local"),
            (":scheme", "http"),
        ]);
        for (name, value) in headers {
            map.replace(name.as_bytes(), value.as_bytes());
        }
        let exchange = Rc::new(RefCell::new(HttpExchange::with_request_headers(map)));
        let stream = self.instance.new_stream(exchange.clone());
        TestRequest { stream, exchange, callouts: self.callouts.clone() }
    }
}

/// One request through the filter: send its parts, answer its callouts, read what it did.
pub struct TestRequest {
    stream: HttpStream,
    exchange: Rc<RefCell<HttpExchange>>,
    callouts: Rc<HeldCallouts>,
}

/// A callout the filter made, held until answered.
#[derive(Clone, Debug)]
pub struct HeldCallout {
    /// The cluster it goes to.
    pub cluster: String,
    /// Its headers (`:method`, `:path`, `:authority`, and the filter's).
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

impl TestRequest {
    /// Sets filter state `key` (a one-segment property, as the filter names it), as another
    /// filter of the chain would: before the request headers for one before it, after them for
    /// one after it (the trace filter's context, say, with [`TRACE_CONTEXT`]).
    pub fn set_filter_state(&self, key: &str, value: &[u8]) {
        self.exchange.borrow_mut().info.filter_state.insert(format!("wasm.{key}"), value.to_vec());
    }

    /// Filter state `key` as the filter left it.
    pub fn filter_state(&self, key: &str) -> Option<Vec<u8>> {
        self.exchange.borrow().info.filter_state.get(&format!("wasm.{key}")).cloned()
    }

    /// The attributes the filter handed the trace filter for the request's span
    /// (`wasmtrace_span_attributes`), empty if none.
    pub fn span_attributes(&self) -> serde_json::Map<String, serde_json::Value> {
        self.json_state("wasmtrace_span_attributes").and_then(|v| v.as_object().cloned()).unwrap_or_default()
    }

    /// The callout spans the filter handed the trace filter (`wasmtrace_callout_spans`).
    pub fn callout_spans(&self) -> Vec<serde_json::Value> {
        self.json_state("wasmtrace_callout_spans").and_then(|v| v.as_array().cloned()).unwrap_or_default()
    }

    /// The events the filter handed the trace filter (`wasmtrace_span_events`).
    pub fn span_events(&self) -> Vec<serde_json::Value> {
        self.json_state("wasmtrace_span_events").and_then(|v| v.as_array().cloned()).unwrap_or_default()
    }

    fn json_state(&self, key: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.filter_state(key)?).ok()
    }

    /// The request headers arrive (no body): the filter's answer.
    pub fn send_request_headers(&mut self) -> Action {
        self.stream.on_request_headers(true)
    }

    /// A request header as the filter left it.
    pub fn request_header(&self, name: &str) -> Option<String> {
        let exchange = self.exchange.borrow();
        exchange.request_headers.as_ref()?.get_str(name).map(str::to_owned)
    }

    /// The callouts the filter made and nobody answered yet, oldest first.
    pub fn callouts(&self) -> Vec<HeldCallout> {
        self.callouts
            .held
            .borrow()
            .iter()
            .map(|(request, _)| HeldCallout {
                cluster: request.cluster.clone(),
                headers: request
                    .headers
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
                body: request.body.clone(),
            })
            .collect()
    }

    /// Answers the oldest callout with `status` and `body`; then what became of the request
    /// (`None`: it is still held).
    pub fn answer_callout(&mut self, status: u16, body: &[u8]) -> Option<Action> {
        let held = {
            let mut held = self.callouts.held.borrow_mut();
            (!held.is_empty()).then(|| held.remove(0))
        };
        let (_, completion) = held?;
        completion.complete(Ok(CalloutResponse {
            headers: HeaderMap::from_pairs([(":status", status.to_string().as_str())]),
            body: body.to_vec(),
            trailers: HeaderMap::new(),
        }));
        self.stream.try_resume(Direction::Request)
    }

    /// The response headers (`:status` and `headers`, no body) arrive: the filter's answer.
    pub fn send_response_headers(&mut self, status: u16, headers: &[(&str, &str)]) -> Action {
        let mut map = HeaderMap::from_pairs([(":status", status.to_string().as_str())]);
        for (name, value) in headers {
            map.replace(name.as_bytes(), value.as_bytes());
        }
        self.exchange.borrow_mut().response_headers = Some(map);
        self.stream.on_response_headers(true)
    }

    /// A response header as the filter left it.
    pub fn response_header(&self, name: &str) -> Option<String> {
        let exchange = self.exchange.borrow();
        exchange.response_headers.as_ref()?.get_str(name).map(str::to_owned)
    }

    /// The request is over: the filter's access-log and done callbacks run.
    pub fn finish(mut self) {
        self.stream.on_log();
    }
}
