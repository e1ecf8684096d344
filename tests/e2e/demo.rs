//! What `wasmtrace demo` runs, on ephemeral ports: the collector, the three gallery services each
//! behind a wasmtrace sidecar — or (`--in-process`) each running the same filters inside itself.
//! One upload's trace has the whole tree either way — the filters' SERVER and CLIENT spans, the
//! catalog's database spans, the store's storage span, the same names, kinds, parents and
//! attributes — a hot swap changes it, and with the store down the error shows on the spans that
//! saw it.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use wasmtrace_demo::topology::{DemoConfig, Ports, Tracing, start};
use wasmtrace_demo::traffic::seed_and_browse;

use crate::fixture::client::{client, get, send_bytes};
use crate::fixture::deploy::deployed_filters;
use crate::fixture::proxy::workspace_root;
use crate::fixture::traces::{trace_id_of, upload_png, wait_for_trace};

/// A span of the trace, by service and kind (and name, when several match).
struct Tree<'a> {
    trace: &'a Value,
}

impl<'a> Tree<'a> {
    fn service(&self, span: &Value) -> String {
        let process = span["processID"].as_str().unwrap_or("");
        self.trace["processes"][process]["serviceName"].as_str().unwrap_or("").to_owned()
    }

    fn tag(span: &Value, key: &str) -> Value {
        span["tags"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["key"] == key))
            .map_or(Value::Null, |t| t["value"].clone())
    }

    fn find(&self, service: &str, kind: &str, name: Option<&str>) -> &'a Value {
        let found: Vec<&Value> = self.trace["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                self.service(s) == service
                    && Self::tag(s, "span.kind") == kind
                    && name.is_none_or(|n| s["operationName"] == n)
            })
            .collect();
        assert_eq!(found.len(), 1, "one {kind} span of {service} {name:?} in {}", self.trace);
        found[0]
    }

    fn parent_of(child: &Value, parent: &Value) {
        let reference =
            child["references"].as_array().and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF")).cloned();
        assert_eq!(
            reference.map(|r| r["spanID"].clone()),
            Some(parent["spanID"].clone()),
            "{} is a child of {}",
            child["operationName"],
            parent["operationName"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_traces_an_upload_through_every_sidecar_and_service_and_in_process_the_same() {
    let sidecars = traces_an_upload(Tracing::Sidecars).await;
    let in_process = traces_an_upload(Tracing::InProcess).await;
    assert_eq!(in_process.len(), sidecars.len(), "span for span:\nin-process {in_process:#?}\nsidecars {sidecars:#?}");
    for (in_process, sidecar) in in_process.iter().zip(&sidecars) {
        assert_eq!(in_process, sidecar, "the same span in-process as behind a sidecar");
    }
}

/// A span as both modes must make it: service, kind, name, its parent's service and name, and
/// its attributes' keys (values such as ports and ids differ run to run).
type SpanShape = (String, String, String, Option<(String, String)>, Vec<String>);

/// The upload's trace, span by span, as [`SpanShape`]s in order.
fn shape(trace: &Value) -> Vec<SpanShape> {
    let tree = Tree { trace };
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let by_id: HashMap<String, &Value> =
        spans.iter().map(|s| (s["spanID"].as_str().unwrap_or("").to_owned(), s)).collect();
    let mut shapes: Vec<SpanShape> = spans
        .iter()
        .map(|span| {
            let parent = span["references"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                .and_then(|r| by_id.get(r["spanID"].as_str().unwrap_or("")))
                .map(|p| (tree.service(p), p["operationName"].as_str().unwrap_or("").to_owned()));
            let mut keys: Vec<String> = span["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["key"].as_str().map(str::to_owned))
                .collect();
            keys.sort();
            let kind = Tree::tag(span, "span.kind").as_str().unwrap_or("").to_owned();
            (tree.service(span), kind, span["operationName"].as_str().unwrap_or("").to_owned(), parent, keys)
        })
        .collect();
    shapes.sort();
    shapes
}

async fn traces_an_upload(tracing: Tracing) -> Vec<SpanShape> {
    let state_dir = workspace_root().join("target/e2e-demo").join(format!("{}-{tracing:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = DemoConfig { tracing, viewer: any, ports: Ports::Ephemeral, state_dir, workspace: workspace_root() };
    let modules = deployed_filters();
    let mut demo = start(&config, &|_| {}).expect("the demo starts, its filters from deploy/envoy/*.yaml");
    assert_eq!(demo.sidecars.is_empty(), tracing == Tracing::InProcess);

    // The sidecars (or the services themselves) run the deploy files: the API's plugins are the
    // file's, loading the modules from where the file (and Envoy) loads them.
    let admin = demo.sidecar_admins()[0].1.expect("the API filters' admin API");
    let plugins = get(admin, "/plugins", &[]).await.json();
    let loaded: Vec<(String, String, String)> = plugins["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let module = p["module_path"].as_str().unwrap_or("");
            let relative = module.strip_prefix(&format!("{}/", config.workspace.display())).unwrap_or(module);
            (
                p["listener"].as_str().unwrap_or("").to_owned(),
                p["name"].as_str().unwrap_or("").to_owned(),
                relative.to_owned(),
            )
        })
        .collect();
    let expected = [
        ("inbound", "request_id", "target/wasm/request-id-filter.wasm"),
        ("inbound", "tagging", "target/wasm/tagging-filter.wasm"),
        ("inbound", "trace_inbound", "target/wasm/trace-filter.wasm"),
        ("outbound", "trace_outbound", "target/wasm/trace-filter.wasm"),
    ];
    assert_eq!(loaded, expected.map(|(l, n, m)| (l.to_owned(), n.to_owned(), m.to_owned())).to_vec(), "{plugins}");
    let seeded = seed_and_browse(demo.gallery).await.expect("seeding");
    assert_eq!(seeded.images.len(), 6);
    let trace_id = seeded.upload_trace.expect("the upload's trace id");
    demo.flush();
    let trace = wait_for_trace(demo.viewer, &trace_id, 8).await;
    let tree = Tree { trace: &trace };

    let api_server = tree.find("gallery-api", "server", None);
    assert!(api_server["references"].as_array().is_some_and(Vec::is_empty), "the upload starts the trace");
    assert_eq!(Tree::tag(api_server, "http.request.method"), "POST");
    assert_eq!(Tree::tag(api_server, "gallery.api_version"), "v0", "the tagging filter's attribute");
    let api_client = tree.find("gallery-api", "client", None);
    Tree::parent_of(api_client, api_server);
    let catalog_server = tree.find("image-catalog", "server", None);
    Tree::parent_of(catalog_server, api_client);
    for name in ["INSERT images", "UPDATE images"] {
        let db = tree.find("image-catalog", "client", Some(name));
        Tree::parent_of(db, catalog_server);
        assert_eq!(Tree::tag(db, "db.system.name"), "sqlite");
    }
    let catalog_client = tree.find("image-catalog", "client", Some("PUT image-store"));
    Tree::parent_of(catalog_client, catalog_server);
    let store_server = tree.find("image-store", "server", None);
    Tree::parent_of(store_server, catalog_client);
    let put = tree.find("image-store", "client", Some("put local"));
    Tree::parent_of(put, store_server);
    assert_eq!(trace["spans"].as_array().map(Vec::len), Some(8));
    let upload = shape(&trace);
    // Which code made the span: generation 1 of the API's inbound trace filter, from the module
    // the deploy file names.
    let deployed_sha256 = wasmtrace_runtime::hex_sha256(&std::fs::read(&modules.trace).expect("trace filter module"));
    assert_eq!(Tree::tag(api_server, "wasmtrace.filter.generation"), 1);
    assert_eq!(Tree::tag(api_server, "wasmtrace.filter.sha256"), deployed_sha256.as_str());

    // Hot swap on the running demo: the API sidecar's trace filter gets a new configuration (a
    // rollout tag) and then a new module; the next traces show the tag.
    let admin = demo.sidecar_admins()[0].1.expect("the API sidecar's admin API");
    let configuration = r#"{"service_name": "gallery-api", "span_kind": "server", "static_attributes": {"rollout": "v2"}, "exporter": {"cluster": "otel-collector", "flush_interval_ms": 100}}"#;
    let swap = |body: serde_json::Value| async move {
        send_bytes(
            &client(false),
            admin,
            "POST",
            "/plugins/trace_inbound/swap",
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
        )
        .await
    };
    let reply = swap(serde_json::json!({ "configuration": configuration })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // The spans after a swap say so: the next generation, the same module.
    let reply = upload_png(demo.gallery).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let reconfigured_id = trace_id_of(&reply);
    demo.flush();
    let reconfigured = wait_for_trace(demo.viewer, &reconfigured_id, 8).await;
    let api_server = Tree { trace: &reconfigured }.find("gallery-api", "server", None).clone();
    assert_eq!(Tree::tag(&api_server, "wasmtrace.filter.generation"), 2);
    assert_eq!(Tree::tag(&api_server, "wasmtrace.filter.sha256"), deployed_sha256.as_str());
    assert_eq!(Tree::tag(&api_server, "rollout"), "v2");
    let mut module = std::fs::read(&modules.trace).expect("trace filter module");
    module.extend_from_slice(&[0, 9, 8]);
    module.extend_from_slice(b"rollout2");
    let reply =
        swap(serde_json::json!({ "module_base64": base64::engine::general_purpose::STANDARD.encode(&module) })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["swapped"][0]["module_changed"], true);
    let reply = upload_png(demo.gallery).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let swapped_id = trace_id_of(&reply);
    demo.flush();
    let swapped = wait_for_trace(demo.viewer, &swapped_id, 8).await;
    let tree = Tree { trace: &swapped };
    assert_eq!(Tree::tag(tree.find("gallery-api", "server", None), "rollout"), "v2", "the new configuration traced it");
    let api_server = tree.find("gallery-api", "server", None);
    assert_eq!(Tree::tag(api_server, "wasmtrace.filter.generation"), 3);
    assert_eq!(Tree::tag(api_server, "wasmtrace.filter.sha256"), wasmtrace_runtime::hex_sha256(&module).as_str());

    // The store goes down: the upload fails, and the trace says where.
    demo.stop_store();
    let reply = upload_png(demo.gallery).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    let failed_id = trace_id_of(&reply);
    let failed = wait_for_trace(demo.viewer, &failed_id, if tracing == Tracing::Sidecars { 6 } else { 5 }).await;
    let tree = Tree { trace: &failed };
    let errors: HashMap<String, bool> = failed["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                format!("{} {}", tree.service(s), s["operationName"].as_str().unwrap_or("")),
                Tree::tag(s, "error") == true,
            )
        })
        .collect();
    // Behind sidecars the store's sidecar saw the failure (the store behind it was gone); in
    // process the store went with its filters, and the catalog's outbound filter saw it.
    let saw_it = if tracing == Tracing::Sidecars { "image-store " } else { "image-catalog PUT" };
    assert!(
        errors.iter().any(|(span, error)| span.starts_with(saw_it) && *error),
        "{saw_it} saw the failure: {errors:?}"
    );
    assert!(Tree::tag(tree.find("gallery-api", "server", None), "error") == true, "{errors:?}");
    demo.stop();
    upload
}
