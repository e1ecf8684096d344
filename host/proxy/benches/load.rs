//! Load test (not a pass/fail test): concurrent keep-alive HTTP/1.1 connections against an
//! upstream directly, through the proxy with no filter, through the proxy with one
//! header-reading Wasm filter. Prints requests/s and p50/p99 latency, all rows measured in one run on this machine.
//!
//! `cargo bench -p wasmtrace-proxy --bench load [-- CONNECTIONS SECONDS]`

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::{FilterUnderTest, Outcome, drive, module, print_load_table, proxy, start_server};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let connections: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let upstream = start_server(b"hello from upstream\n", Duration::ZERO);
    let reader = module("filters/test-filters/header-reader");
    let trace = module("filters/trace-filter");
    let healthy = start_server(b"{}", Duration::ZERO);
    let slow = start_server(b"{}", Duration::from_secs(5));
    let down =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap_or_else(|e| panic!("{e}"));
    let trace_config = r#"{"service_name": "load", "exporter": {"cluster": "collector", "timeout_ms": 1000}}"#;
    let mut rows: Vec<(String, Outcome)> = Vec::new();

    rows.push(("direct to upstream".into(), drive(upstream, connections, seconds)));
    let cases: [(&str, FilterUnderTest<'_>, SocketAddr); 5] = [
        ("wasmtrace, no Wasm filter", None, healthy),
        ("wasmtrace, header-reader Wasm filter", Some((&reader, "")), healthy),
        ("wasmtrace, trace filter, collector up", Some((&trace, trace_config)), healthy),
        ("wasmtrace, trace filter, collector slow (5 s)", Some((&trace, trace_config)), slow),
        ("wasmtrace, trace filter, collector down", Some((&trace, trace_config)), down),
    ];
    for (name, filter, collector) in cases {
        let running = proxy(upstream, filter, collector);
        let address = running.listener_address("ingress").unwrap_or_else(|| panic!("listener"));
        rows.push((name.into(), drive(address, connections, seconds)));
        running.shutdown();
    }

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "{connections} keep-alive HTTP/1.1 connections, {seconds} s per row after 1 s warm-up, {cores} cores shared by client, proxy and upstream"
    );
    println!();
    print_load_table("path", &rows);
}
