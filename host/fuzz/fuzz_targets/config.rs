//! Fuzz target: `cargo +nightly fuzz run config` (from host/fuzz).
//!
//! `Bootstrap::from_yaml` on arbitrary text: it refuses with at least one located error, or gives
//! a bootstrap whose cross-references hold and which serialises to JSON (what `wasmtrace
//! validate` and the admin API print).

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use wasmtrace_config::{Bootstrap, RouteAction, yaml_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Bootstrap::from_yaml(text) {
        Ok(bootstrap) => {
            let json = serde_json::to_string(&bootstrap).expect("a loaded bootstrap serialises to JSON");
            let _: serde_json::Value = serde_json::from_str(&json).expect("and the JSON parses back");
            let mut names = HashSet::new();
            for cluster in &bootstrap.clusters {
                assert!(names.insert(&cluster.name), "cluster names are unique");
            }
            for listener in &bootstrap.listeners {
                for host in &listener.http.virtual_hosts {
                    for route in &host.routes {
                        if let RouteAction::Cluster { cluster, .. } = &route.action {
                            assert!(bootstrap.cluster(cluster).is_some(), "every routed cluster exists");
                        }
                    }
                }
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal names at least one error");
            // (A path may be empty: an unknown key `''` at the top level is at path ``.)
            assert!(errors.0.iter().all(|e| !e.message.is_empty()), "every error says what is wrong");
            let _ = errors.to_string();
        }
    }
    let _ = yaml_documents(text);
});
