//! W3C Trace Context Level 2 conformance, twice over the same cases and assertions:
//!
//! - through the wasmtrace host: the repo's `w3c-callback` service (the official test suite's
//!   service interface) runs behind a sidecar with the trace filter on its inbound and outbound
//!   listeners;
//! - in a gallery service in standalone mode (no sidecar): the same interface made of the
//!   gallery's own middleware and client (`gallery_service::w3c_suite_service`), propagating
//!   with the gallery's `W3cPropagator`.
//!
//! Each case of the official suite is replayed and the callbacks' headers are checked as the
//! suite checks them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gallery_service::RunningService;
use gallery_service::telemetry::TelemetryConfig;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use wasmtrace_proxy::RunningProxy;
use wasmtrace_trace_core::w3c;

use crate::fixture::proxy::{cluster, filter_module, listener_yaml, sidecar, wasm_filter_yaml};

type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// The suite's side: records the trace headers of every callback it receives.
fn start_harness() -> (SocketAddr, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let headers: Vec<(String, String)> = request
                            .headers()
                            .iter()
                            .filter(|(name, _)| name.as_str() == "traceparent" || name.as_str() == "tracestate")
                            .map(|(name, value)| {
                                (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned())
                            })
                            .collect();
                        // Only the callbacks count (the trace filter's span exports come here too).
                        if request.uri().path() == "/callback" {
                            record.lock().unwrap_or_else(|p| p.into_inner()).push(headers);
                        }
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    (addr, seen)
}

fn trace_filter(kind: &str) -> String {
    let config = format!(
        r#"{{"service_name": "w3c", "span_kind": "{kind}", "extract": ["w3c"], "inject": ["w3c"], "exporter": {{"cluster": "otel"}}}}"#
    );
    wasm_filter_yaml(&format!("trace_{kind}"), &filter_module("trace-filter"), &config, false, "")
}

fn listener(name: &str, kind: &str, cluster: &str) -> String {
    listener_yaml(name, "UNSPECIFIED", &trace_filter(kind), cluster)
}

/// What the cases run against.
enum Target {
    /// `w3c-callback` behind a sidecar.
    Sidecar(RunningProxy),
    /// The gallery's suite service, alone.
    Standalone(RunningService),
}

struct Setup {
    target: Target,
    /// Where the test requests go.
    service: SocketAddr,
    harness: SocketAddr,
    seen: Seen,
}

/// `w3c-callback` behind a sidecar with the trace filter on both listeners.
fn sidecar_setup() -> Setup {
    let (harness, seen) = start_harness();
    // The service, which needs the sidecar's outbound address, starts after the sidecar: its
    // listener is bound first so the sidecar's cluster can point at it.
    let service_socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind service");
    service_socket.set_nonblocking(true).expect("non-blocking");
    let service = service_socket.local_addr().expect("address");
    let proxy = sidecar(
        &[listener("inbound", "server", "service"), listener("outbound", "client", "harness")],
        &[cluster("service", service, ""), cluster("harness", harness, ""), cluster("otel", harness, "")],
    );
    let outbound = proxy.listener_address("outbound");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(service_socket).expect("listener");
            w3c_callback::serve(listener, outbound).await;
        });
    });
    let service = proxy.listener_address("inbound").expect("inbound");
    Setup { target: Target::Sidecar(proxy), service, harness, seen }
}

/// The gallery's suite service on its own (it makes its own SERVER and CLIENT spans), calling
/// the harness directly.
fn standalone_setup() -> Setup {
    let (harness, seen) = start_harness();
    let telemetry = TelemetryConfig {
        service_name: "w3c".into(),
        enabled: false,
        traces_endpoint: None,
        batch_delay: None,
        http_spans: true,
        in_process: None,
    };
    let running = gallery_service::w3c_suite_service::start(SocketAddr::from(([127, 0, 0, 1], 0)), &telemetry)
        .expect("the suite service starts");
    let service = running.addr;
    Setup { target: Target::Standalone(running), service, harness, seen }
}

impl Setup {
    /// Sends one test request with `headers` asking for `callbacks` callbacks; returns the trace
    /// headers of each callback.
    async fn run(&self, headers: &[(&str, &str)], callbacks: usize) -> Vec<Vec<(String, String)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let urls: Vec<String> = (0..callbacks)
            .map(|_| format!(r#"{{"url": "http://{}/callback", "arguments": []}}"#, self.harness))
            .collect();
        let body = format!("[{}]", urls.join(","));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut request = Request::post(format!("http://{}/test", self.service));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = client
            .request(request.body(Full::new(Bytes::from(body))).expect("request"))
            .await
            .expect("service answers");
        assert_eq!(response.status(), 200);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the sidecar or the service.
    fn stop(self) {
        match self.target {
            Target::Sidecar(proxy) => proxy.shutdown(),
            Target::Standalone(service) => service.stop(),
        }
    }
}

fn header<'a>(seen: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    seen.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

/// The (trace id, parent id, flags) a callback received; every callback must carry exactly one
/// valid traceparent.
fn traceparent(seen: &[(String, String)]) -> (String, String, u8) {
    let values = header(seen, "traceparent");
    let (trace, parent, flags) =
        w3c::parse_traceparent(&values).unwrap_or_else(|| panic!("invalid outgoing traceparent {values:?}"));
    (trace.to_hex(), parent.to_hex(), flags)
}

const TRACE: &str = "12345678901234567890123456789012";
const PARENT: &str = "1234567890123456";

fn valid(flags: &str) -> String {
    format!("00-{TRACE}-{PARENT}-{flags}")
}

async fn traceparent_cases(setup: Setup) {
    // Continued: same trace id, new parent id.
    let continued = [
        ("valid", vec![("traceparent", valid("01"))]),
        ("header name in capitals", vec![("TraceParent", valid("01"))]),
        ("leading and trailing OWS", vec![("traceparent", format!(" \t{}\t ", valid("01")))]),
        (
            "future version with more fields",
            vec![("traceparent", format!("cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"))],
        ),
        ("future version", vec![("traceparent", format!("cc-{TRACE}-{PARENT}-01"))]),
    ];
    for (case, headers) in &continued {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let seen = setup.run(&headers, 1).await;
        let (trace, parent, _) = traceparent(&seen[0]);
        assert_eq!(trace, TRACE, "{case}: the trace continues");
        assert_ne!(parent, PARENT, "{case}: the parent id changes");
    }
    // Restarted: a new, valid trace id.
    let restarted = [
        ("no traceparent", vec![]),
        ("misspelled header name", vec![("trace-parent", valid("01"))]),
        (
            "duplicated traceparent",
            vec![("traceparent", valid("01")), ("traceparent", format!("00-{}-{PARENT}-01", "1".repeat(32)))],
        ),
        (
            "version 00 with trailing data",
            vec![("traceparent", format!("{}-what-the-future-will-be-like", valid("01")))],
        ),
        ("version ff", vec![("traceparent", format!("ff-{TRACE}-{PARENT}-01"))]),
        ("version too long", vec![("traceparent", format!("000-{TRACE}-{PARENT}-01"))]),
        ("version too short", vec![("traceparent", format!("0-{TRACE}-{PARENT}-01"))]),
        ("version illegal characters", vec![("traceparent", format!(".0-{TRACE}-{PARENT}-01"))]),
        ("trace id all zero", vec![("traceparent", format!("00-{}-{PARENT}-01", "0".repeat(32)))]),
        (
            "trace id illegal characters",
            vec![("traceparent", format!("00-{}-{PARENT}-01", "1234567890123456789012345678901."))],
        ),
        (
            "trace id upper case",
            vec![("traceparent", format!("00-{}-{PARENT}-01", "ABCDEF78901234567890123456789012"))],
        ),
        ("trace id too long", vec![("traceparent", format!("00-{TRACE}0-{PARENT}-01"))]),
        ("trace id too short", vec![("traceparent", format!("00-{}-{PARENT}-01", &TRACE[..31]))]),
        ("parent id all zero", vec![("traceparent", format!("00-{TRACE}-{}-01", "0".repeat(16)))]),
        ("parent id illegal characters", vec![("traceparent", format!("00-{TRACE}-{}-01", "123456789012345."))]),
        ("parent id too long", vec![("traceparent", format!("00-{TRACE}-{PARENT}0-01"))]),
        ("parent id too short", vec![("traceparent", format!("00-{TRACE}-{}-01", &PARENT[..15]))]),
        ("flags illegal characters", vec![("traceparent", valid(".0"))]),
        ("flags too long", vec![("traceparent", valid("001"))]),
        ("flags too short", vec![("traceparent", valid("1"))]),
    ];
    for (case, headers) in &restarted {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let seen = setup.run(&headers, 1).await;
        let (trace, _, _) = traceparent(&seen[0]);
        assert_ne!(trace, TRACE, "{case}: the trace restarts");
        assert_ne!(trace, "1".repeat(32), "{case}: the trace restarts");
        assert!(header(&seen[0], "tracestate").is_empty(), "{case}: no tracestate on a restarted trace");
    }
    setup.stop();
}

async fn tracestate_cases(setup: Setup) {
    let tp = valid("01");
    let members = |n: usize| (0..n).map(|i| format!("bar{i:02}=foo{i:02}")).collect::<Vec<_>>().join(",");
    let long_key = format!("{}=foo", "z".repeat(256));
    let too_long_key = format!("{}=foo", "z".repeat(257));
    // (case, tracestate headers, expected outgoing tracestate: Some(value) or None = not sent)
    let cases: Vec<(&str, Vec<String>, Option<String>)> = vec![
        ("inherited", vec!["foo=1".into()], Some("foo=1".into())),
        ("multiple headers, different keys", vec!["foo=1".into(), "bar=2".into()], Some("foo=1,bar=2".into())),
        ("empty header", vec![String::new()], None),
        ("empty list members and OWS", vec!["foo=1 ,  , bar=2".into()], Some("foo=1,bar=2".into())),
        ("duplicated keys keep the first", vec!["foo=1,foo=2".into()], Some("foo=1".into())),
        ("duplicated keys across headers", vec!["foo=1".into(), "foo=1".into()], Some("foo=1".into())),
        ("32 members", vec![members(32)], Some(members(32))),
        ("33 members", vec![members(33)], None),
        ("key of 256 characters", vec![long_key.clone()], Some(long_key)),
        ("key of 257 characters", vec![too_long_key], None),
        ("key illegal characters", vec!["foo.bar=1".into()], None),
        ("key upper case", vec!["FOO=1".into()], None),
        ("multi-tenant key", vec!["tenant@vendor=1".into()], Some("tenant@vendor=1".into())),
        ("multi-tenant key with illegal vendor", vec!["tenant@VENDOR=1".into()], None),
        ("Level 2 keys with at signs", vec!["foo@=1,foo@@bar=2,bar=3".into()], Some("foo@=1,foo@@bar=2,bar=3".into())),
        ("key starting with an at sign", vec!["@foo=1,bar=2".into()], None),
        ("key starting with a digit", vec!["1foo=1".into()], Some("1foo=1".into())),
        ("value illegal characters", vec!["foo=bar=baz".into()], None),
        ("value empty", vec!["foo=".into()], None),
    ];
    for (case, tracestate, expected) in &cases {
        let mut headers: Vec<(&str, &str)> = vec![("traceparent", tp.as_str())];
        headers.extend(tracestate.iter().map(|v| ("tracestate", v.as_str())));
        let seen = setup.run(&headers, 1).await;
        let (trace, _, _) = traceparent(&seen[0]);
        assert_eq!(trace, TRACE, "{case}: a bad tracestate does not restart the trace");
        let sent = header(&seen[0], "tracestate");
        match expected {
            Some(value) => assert_eq!(sent, vec![value.as_str()], "{case}"),
            None => assert!(sent.is_empty(), "{case}: sent {sent:?}"),
        }
    }
    setup.stop();
}

async fn advanced_and_level_2_cases(setup: Setup) {
    // Three callbacks: one trace, three distinct parent ids.
    let tp = valid("01");
    let seen = setup.run(&[("traceparent", tp.as_str())], 3).await;
    assert_eq!(seen.len(), 3);
    let parents: std::collections::HashSet<String> = seen.iter().map(|s| traceparent(s).1).collect();
    assert!(seen.iter().all(|s| traceparent(s).0 == TRACE));
    assert_eq!(parents.len(), 3, "each outgoing call is its own span");
    // A new trace for three callbacks is still one trace.
    let seen = setup.run(&[], 3).await;
    let traces: std::collections::HashSet<String> = seen.iter().map(|s| traceparent(s).0).collect();
    assert_eq!(traces.len(), 1);
    // Level 2: the random flag is passed on; a new trace sets it (its ids are random).
    let random = valid("03");
    let seen = setup.run(&[("traceparent", random.as_str())], 1).await;
    assert_eq!(traceparent(&seen[0]).2 & 0x02, 0x02, "random flag propagated");
    let seen = setup.run(&[], 1).await;
    assert_eq!(traceparent(&seen[0]).2 & 0x02, 0x02, "a new trace is random");
    // The sampling decision is passed on (parent-based sampling).
    let unsampled = valid("00");
    let seen = setup.run(&[("traceparent", unsampled.as_str())], 1).await;
    assert_eq!(traceparent(&seen[0]).2 & 0x01, 0, "not sampled stays not sampled");
    setup.stop();
}

// === through the sidecar ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_w3c_suites_traceparent_cases_pass() {
    traceparent_cases(sidecar_setup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_w3c_suites_tracestate_cases_pass() {
    tracestate_cases(sidecar_setup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_w3c_suites_advanced_and_level_2_cases_pass() {
    advanced_and_level_2_cases(sidecar_setup()).await;
}

// === in a standalone gallery service ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_gallery_service_passes_the_w3c_suites_traceparent_cases() {
    traceparent_cases(standalone_setup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_gallery_service_passes_the_w3c_suites_tracestate_cases() {
    tracestate_cases(standalone_setup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_gallery_service_passes_the_w3c_suites_advanced_and_level_2_cases() {
    advanced_and_level_2_cases(standalone_setup()).await;
}
