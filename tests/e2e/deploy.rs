//! The deploy files fit the systems they are written for, checked by every means that exists
//! without an Envoy binary, a cluster or a Docker engine: Envoy's own v3 API definitions,
//! the Kubernetes OpenAPI schemas and Istio's CRD schema, kustomize, hadolint — and the wasmtrace
//! host, which loads the same bootstraps. Each checker is also shown failing on a broken copy,
//! so a green run means the files passed, not that the checker passes everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;
use wasmtrace_config::{Bootstrap, yaml_documents};

use crate::fixture::deploy::{deploy_bootstraps, deploy_tools, deployed_filters, shipped_filter_crates};
use crate::fixture::proxy::workspace_root;

const OVERLAYS: [&str; 3] = ["wasmtrace", "envoy", "istio"];

fn scratch_dir(name: &str) -> PathBuf {
    let dir = workspace_root().join("target/e2e-deploy").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

#[test]
fn every_deploy_bootstrap_is_envoy_v3_and_loads_in_the_host() {
    let files = deploy_bootstraps();
    assert!(files.len() >= 6, "deploy/envoy and the Kubernetes sidecars: {files:?}");
    for file in &files {
        Bootstrap::from_file(file).unwrap_or_else(|e| panic!("the host refuses {}: {e}", file.display()));
    }
    let Some(tools) = deploy_tools() else { return };
    let run = tools.check("envoy_schema.py", &files);
    assert!(run.success, "{}", run.output);
    assert_eq!(run.output.matches("valid envoy.config.bootstrap.v3.Bootstrap").count(), files.len(), "{}", run.output);
}

#[test]
fn the_envoy_schema_check_refuses_unknown_fields_wrong_types_and_unknown_types() {
    let Some(tools) = deploy_tools() else { return };
    let original = std::fs::read_to_string(workspace_root().join("deploy/envoy/image-store.yaml")).expect("file");
    let dir = scratch_dir("envoy-schema");
    let broken = [
        ("unknown-field", "stat_prefix: inbound", "stat_prefx: inbound", "no field named \"stat_prefx\""),
        ("wrong-type", "port_value: 8082", "port_value: eighty", "port_value"),
        ("bad-enum", "failure_policy: FAIL_OPEN", "failure_policy: FAIL_SOMETIMES", "FAIL_SOMETIMES"),
        (
            "unknown-type",
            "filters.http.router.v3.Router",
            "filters.http.router.v3.Rooter",
            "envoy.extensions.filters.http.router.v3.Rooter",
        ),
    ];
    for (name, from, to, reported) in broken {
        assert!(original.contains(from), "{from}");
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, original.replacen(from, to, 1)).expect("write");
        let run = tools.check("envoy_schema.py", &[&path]);
        assert!(!run.success, "{name} passed:\n{}", run.output);
        assert!(run.output.contains(reported), "{name}: {}", run.output);
    }
}

/// The bootstraps written in the forms Envoy's YAML loader reads beyond plain proto3 JSON
/// (single mappings for lists, camelCase names, duration forms), as the proxy-wasm SDK examples
/// write them.
fn envoy_style_bootstraps() -> [PathBuf; 3] {
    let root = workspace_root();
    [
        root.join("deploy/examples/sdk-style.yaml"),
        root.join("host/config/tests/fixtures/envoy-json-forms.yaml"),
        root.join("host/config/tests/fixtures/sdk-http-headers.yaml"),
    ]
}

#[test]
fn an_sdk_style_bootstrap_passes_wasmtrace_check_and_the_envoy_schema_check() {
    // `wasmtrace check -c deploy/examples/sdk-style.yaml`, from the repository root: the
    // bootstrap loads and its plugin starts and configures.
    deployed_filters();
    let example = &envoy_style_bootstraps()[0];
    let mut bootstrap = Bootstrap::from_file(example).unwrap_or_else(|e| panic!("{e}"));
    bootstrap.anchor_module_paths(&workspace_root());
    let report = wasmtrace_proxy::check(&bootstrap, &wasmtrace_proxy::ProxyOptions::default())
        .unwrap_or_else(|e| panic!("wasmtrace check: {e}"));
    assert!(
        report.iter().any(|line| line.contains("plugin `request_id`") && line.contains("starts and configures")),
        "{report:?}"
    );

    let Some(tools) = deploy_tools() else { return };
    let files = envoy_style_bootstraps();
    let run = tools.check("envoy_schema.py", &files);
    assert!(run.success, "{}", run.output);
    assert_eq!(run.output.matches("valid envoy.config.bootstrap.v3.Bootstrap").count(), files.len(), "{}", run.output);
}

#[test]
fn the_envoy_schema_check_reads_yaml_as_envoy_does_and_refuses_what_envoy_refuses() {
    let Some(tools) = deploy_tools() else { return };
    let original = std::fs::read_to_string(&envoy_style_bootstraps()[1]).expect("fixture");
    let dir = scratch_dir("envoy-forms");
    let write = |name: &str, from: &str, to: &str| {
        assert!(original.contains(from), "{from}");
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, original.replacen(from, to, 1)).expect("write");
        path
    };
    // Read by Envoy's parser, refused by protobuf's strict Python parser without the rewriting.
    let accepted = [
        write("nested-lists", "domains: \"*\"", "domains: [[\"*\"], [a.example]]"),
        write("enum-number", "type: strict_dns", "type: \"1\""),
        write("wrapper-message", "maxHeadersCount: \"50\"", "maxHeadersCount: { value: 50 }"),
        write("negative-zero", "connectTimeout: 0.25s", "connectTimeout: -0s"),
    ];
    let run = tools.check("envoy_schema.py", &accepted);
    assert!(run.success, "{}", run.output);
    // Refused by Envoy's parser; Python's parser alone takes the first four.
    let refused = [
        ("plus-sign", "connectTimeout: 0.25s", "connectTimeout: +1s", "'+1s' is not a duration Envoy reads"),
        ("empty-fraction", "connectTimeout: 0.25s", "connectTimeout: 1.s", "'1.s' is not a duration Envoy reads"),
        ("ten-decimals", "connectTimeout: 0.25s", "connectTimeout: 1.0123456789s", "is not a duration Envoy reads"),
        ("underscore", "connectTimeout: 0.25s", "connectTimeout: 1_0s", "'1_0s' is not a duration Envoy reads"),
        ("milliseconds", "connectTimeout: 0.25s", "connectTimeout: 1000ms", "'1000ms' is not a duration Envoy reads"),
        ("bare-number", "connectTimeout: 0.25s", "connectTimeout: 5", "Duration JSON value not a string"),
        ("bad-nanos", "nanos: 500000000", "nanos: 1500000000", "is not a valid duration"),
        ("typed-struct-typo", "rootId: headers_root", "rootIdd: headers_root", "no field named \"rootIdd\""),
        ("bad-bool", "failOpen: \"true\"", "failOpen: \"maybe\"", "failOpen"),
        ("bad-enum", "type: strict_dns", "type: strict_dnss", "strict_dnss"),
    ];
    for (name, from, to, reported) in refused {
        let run = tools.check("envoy_schema.py", &[write(name, from, to)]);
        assert!(!run.success, "{name} passed:\n{}", run.output);
        assert!(run.output.contains(reported), "{name}: {}", run.output);
    }
}

/// A bootstrap with everything a placement may change (addresses, discovery, module
/// directories, header comments aside) removed.
fn placement_free(bootstrap: &Bootstrap) -> Value {
    let mut value = serde_json::to_value(bootstrap).expect("serializable");
    value["admin"] = Value::Null;
    for listener in value["listeners"].as_array_mut().into_iter().flatten() {
        listener["address"] = Value::Null;
        for filter in listener["http"]["wasm_filters"].as_array_mut().into_iter().flatten() {
            let module = filter["module_path"].as_str().unwrap_or_default();
            filter["module_path"] = Value::from(Path::new(module).file_name().and_then(|f| f.to_str()));
        }
    }
    for cluster in value["clusters"].as_array_mut().into_iter().flatten() {
        cluster["endpoints"] = Value::Null;
        cluster["discovery"] = Value::Null;
    }
    value
}

#[test]
fn kubernetes_sidecars_run_the_deploy_envoy_filters_and_routes_unchanged() {
    let root = workspace_root();
    for service in ["gallery-api", "image-catalog", "image-store"] {
        let local = Bootstrap::from_file(&root.join(format!("deploy/envoy/{service}.yaml"))).expect("local file");
        let pod = Bootstrap::from_file(&root.join(format!("deploy/k8s/components/sidecar/bootstraps/{service}.yaml")))
            .expect("Kubernetes file");
        assert_eq!(
            placement_free(&pod),
            placement_free(&local),
            "{service}: only addresses and module directories may differ"
        );
        for listener in &pod.listeners {
            for filter in &listener.http.wasm_filters {
                assert!(
                    filter.module_path.starts_with("/etc/wasmtrace/filters"),
                    "{service}: modules come from the filter ConfigMaps: {}",
                    filter.module_path.display()
                );
            }
        }
    }
}

/// The rendered manifests of an overlay, as JSON documents.
fn rendered(tools: &crate::fixture::deploy::DeployTools, overlay: &str) -> (String, Vec<Value>) {
    deployed_filters();
    let text = tools.kustomize(&workspace_root().join("deploy/k8s/overlays").join(overlay));
    let documents = yaml_documents(&text).unwrap_or_else(|e| panic!("{overlay}: {e}"));
    (text, documents)
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn kubernetes_manifests_are_valid_against_the_kubernetes_and_istio_schemas() {
    let Some(tools) = deploy_tools() else { return };
    let dir = scratch_dir("k8s-schema");
    let mut files = Vec::new();
    for overlay in OVERLAYS {
        let (text, documents) = rendered(&tools, overlay);
        assert!(!of_kind(&documents, "Deployment").is_empty(), "{overlay} renders Deployments");
        let path = dir.join(format!("{overlay}.yaml"));
        std::fs::write(&path, text).expect("write");
        files.push(path);
    }
    let run = tools.check("k8s_schema.py", &files);
    assert!(run.success, "{}", run.output);
    assert_eq!(
        run.output.matches("valid against the extensions.istio.io/v1alpha1 CRD schema").count(),
        3,
        "{}",
        run.output
    );
}

#[test]
fn the_kubernetes_check_refuses_unknown_fields_and_values_outside_the_crd_schema() {
    let Some(tools) = deploy_tools() else { return };
    let dir = scratch_dir("k8s-broken");
    let (text, _) = rendered(&tools, "istio");
    let broken = [
        ("deployment-typo", "  replicas: 2", "  replica: 2", "'replica' was unexpected"),
        ("service-port-type", "port: 8080", "port: eighty", "'eighty' is not of type"),
        ("wasmplugin-enum", "mode: CLIENT_AND_SERVER", "mode: BOTH", "mode must be equal to one of the allowed values"),
        ("wasmplugin-typo", "  phase: STATS", "  phaze: STATS", "'\"phaze\"' does not exist"),
    ];
    for (name, from, to, reported) in broken {
        assert!(text.contains(from), "{from}");
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
        let run = tools.check("k8s_schema.py", &[&path]);
        assert!(!run.success, "{name} passed:\n{}", run.output);
        assert!(run.output.contains(reported), "{name}: {}", run.output);
    }
}

#[test]
fn kubernetes_sidecars_find_their_bootstrap_their_filters_and_their_images() {
    let Some(tools) = deploy_tools() else { return };
    let modules = deployed_filters();
    let dockerfile = std::fs::read_to_string(workspace_root().join("deploy/docker/Dockerfile")).expect("Dockerfile");
    let stages: BTreeSet<&str> =
        dockerfile.lines().filter_map(|l| l.strip_prefix("FROM ")).filter_map(|l| l.split(" AS ").nth(1)).collect();
    for overlay in OVERLAYS {
        let (_, documents) = rendered(&tools, overlay);
        // Every image of ours is a Dockerfile target.
        for deployment in of_kind(&documents, "Deployment") {
            let spec = &deployment["spec"]["template"]["spec"];
            let containers =
                spec["containers"].as_array().into_iter().chain(spec["initContainers"].as_array()).flatten();
            for image in containers.filter_map(|c| c["image"].as_str()) {
                if let Some(target) = image.strip_prefix("ghcr.io/wasmtrace/") {
                    let target = target.split(':').next().unwrap_or_default();
                    assert!(stages.contains(target), "{overlay}: {image} is no Dockerfile target ({stages:?})");
                }
            }
        }
        for plugin in of_kind(&documents, "WasmPlugin") {
            let url = plugin["spec"]["url"].as_str().unwrap_or_default();
            let target = url.trim_start_matches("oci://ghcr.io/wasmtrace/").split(':').next().unwrap_or_default();
            assert!(stages.contains(target), "{overlay}: {url} is no Dockerfile target");
        }
        if overlay == "istio" {
            continue;
        }
        // Each sidecar reads /etc/sidecar/$(SERVICE).yaml, SERVICE being its pod's name label.
        let configmaps: BTreeMap<&str, &Value> = of_kind(&documents, "ConfigMap")
            .into_iter()
            .map(|c| (c["metadata"]["name"].as_str().unwrap_or(""), c))
            .collect();
        let bootstraps = configmaps.get("sidecar-bootstraps").expect("the bootstrap ConfigMap");
        for deployment in of_kind(&documents, "Deployment")
            .into_iter()
            .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gallery")
        {
            let service = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .expect("name label");
            let sidecar = deployment["spec"]["template"]["spec"]["initContainers"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "sidecar"))
                .unwrap_or_else(|| panic!("{overlay}: {service} has a sidecar"));
            assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
            assert!(sidecar["args"].to_string().contains("/etc/sidecar/$(SERVICE).yaml"), "{sidecar}");
            let text = bootstraps["data"][format!("{service}.yaml")]
                .as_str()
                .unwrap_or_else(|| panic!("{overlay}: no bootstrap for {service}"));
            let bootstrap = Bootstrap::from_yaml(text).unwrap_or_else(|e| panic!("{service}: {e}"));
            for filter in bootstrap.listeners.iter().flat_map(|l| &l.http.wasm_filters) {
                let file = filter.module_path.file_name().and_then(|f| f.to_str()).expect("module file");
                let carried = configmaps
                    .values()
                    .find_map(|c| c["binaryData"][file].as_str())
                    .unwrap_or_else(|| panic!("{overlay}: no ConfigMap carries {file}"));
                let carried: String = carried.split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD.decode(carried).expect("base64");
                let built = [&modules.trace, &modules.request_id, &modules.tagging]
                    .into_iter()
                    .find(|m| m.file_name().and_then(|f| f.to_str()) == Some(file))
                    .unwrap_or_else(|| panic!("{file} is not a shipped filter"));
                assert!(
                    bytes == std::fs::read(built).expect("module"),
                    "{overlay}: the ConfigMap carries the built {file}"
                );
            }
        }
    }
}

#[test]
fn the_dockerfile_is_lint_clean_and_copies_only_what_the_context_has() {
    let Some(tools) = deploy_tools() else { return };
    let root = workspace_root();
    let dockerfile = root.join("deploy/docker/Dockerfile");
    let run = tools.check("dockerfile_check.py", &[Path::new("--context"), &root, &dockerfile]);
    assert!(run.success, "{}", run.output);

    let original = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
    let broken = original
        .replacen("COPY tests tests", "COPY tests tests\nCOPY docs/no-such-dir docs\nCOPY target/wasm wasm", 1)
        .replacen("-p image-store", "-p image-stor", 1)
        .replacen("FROM runtime AS wasmtrace", "RUN apt-get install -y curl\nFROM runtime AS wasmtrace", 1);
    let path = scratch_dir("dockerfile").join("Dockerfile");
    std::fs::write(&path, broken).expect("write");
    let run = tools.check("dockerfile_check.py", &[Path::new("--context"), &root, &path]);
    assert!(!run.success, "{}", run.output);
    for reported in [
        "`docs/no-such-dir` does not exist",
        "`target/wasm` is excluded by .dockerignore",
        "`image-stor` is not in the workspace",
        "DL3008",
    ] {
        assert!(run.output.contains(reported), "{reported}: {}", run.output);
    }
}

#[test]
fn the_shipped_filters_are_the_three_filter_crates() {
    let shipped = shipped_filter_crates();
    let expected: BTreeSet<String> = ["request-id-filter", "tagging-filter", "trace-filter"].map(String::from).into();
    assert_eq!(shipped, expected);
    for name in &shipped {
        assert!(workspace_root().join("filters").join(name).join("Cargo.toml").is_file(), "filters/{name}");
    }
}
