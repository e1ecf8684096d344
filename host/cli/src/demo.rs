//! `wasmtrace demo` and `wasmtrace traces`: the terminal side of `wasmtrace-demo`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use wasmtrace_demo::terminal_waterfall::{query, render, render_list};
use wasmtrace_demo::topology::{DemoConfig, Ports, Tracing, build_filters, start};
use wasmtrace_demo::traffic::seed_and_browse;

fn step(message: &str) {
    eprintln!("==> {message}");
}

/// Runs the demo until Ctrl-C.
pub fn run(viewer: SocketAddr, any_ports: bool, state_dir: Option<PathBuf>, in_process: bool) -> anyhow::Result<()> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let state_dir = state_dir.unwrap_or_else(|| workspace.join("target/demo-state"));
    std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let ports = if any_ports { Ports::Ephemeral } else { Ports::AsDeployed };
    let viewer = if any_ports { SocketAddr::from(([127, 0, 0, 1], 0)) } else { viewer };
    let tracing = if in_process { Tracing::InProcess } else { Tracing::Sidecars };
    let config = DemoConfig { tracing, viewer, ports, state_dir, workspace };
    build_filters(&config.workspace, &step).map_err(anyhow::Error::from)?;
    let demo = start(&config, &step).map_err(anyhow::Error::from)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    step("seeding images and sending some traffic");
    let seeded = runtime.block_on(seed_and_browse(demo.gallery)).map_err(anyhow::Error::from)?;
    demo.flush();
    println!();
    println!("  gallery  http://{}/", demo.gallery);
    println!("  traces   http://{}/", demo.viewer);
    println!("  ({} images, {} requests so far; `wasmtrace traces` lists them)", seeded.images.len(), seeded.requests);
    let filters = if in_process { "in-process filters" } else { "sidecar" };
    for (service, admin) in demo.sidecar_admins() {
        if let Some(admin) = admin {
            println!(
                "  {service} {filters} admin  http://{admin}/plugins  (wasmtrace swap --admin {admin} --plugin trace_inbound ...)"
            );
        }
    }
    if let Some(trace_id) = seeded.upload_trace {
        let url = format!("http://{}/api/traces/{trace_id}", demo.viewer);
        // The sidecars export every second: wait for the trace to be whole.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut trace = runtime.block_on(query(&url)).ok();
        while trace.as_ref().is_none_or(|t| t[0]["spans"].as_array().is_none_or(|s| s.len() < 8))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
            trace = runtime.block_on(query(&url)).ok();
        }
        if let Some(trace) = trace {
            println!();
            let by = if in_process { "the in-process filters" } else { "the sidecars" };
            println!("An upload, as {by} and the services traced it (http://{}/trace/{trace_id}):", demo.viewer);
            print!("{}", render(&trace[0], std::io::stdout().is_terminal(), 48));
        }
    }
    println!();
    println!("Running; Ctrl-C stops everything.");
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    step("stopping");
    demo.stop();
    Ok(())
}

/// Lists recent traces, or draws one.
pub fn traces(
    collector: &str,
    service: Option<String>,
    trace: Option<String>,
    limit: usize,
    tags: &[String],
) -> anyhow::Result<()> {
    let collector = collector.trim_end_matches('/');
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let colour = std::io::stdout().is_terminal();
    if trace.is_some() && !tags.is_empty() {
        return Err(anyhow!("--tag searches traces; with --trace there is nothing to search"));
    }
    match trace {
        Some(id) => {
            let data = runtime.block_on(query(&format!("{collector}/api/traces/{id}"))).map_err(anyhow::Error::from)?;
            print!("{}", render(&data[0], colour, 48));
        }
        None => {
            let service = match service {
                Some(service) => service,
                None => {
                    let services =
                        runtime.block_on(query(&format!("{collector}/api/services"))).map_err(anyhow::Error::from)?;
                    services[0].as_str().map(str::to_owned).ok_or_else(|| anyhow!("the collector has no traces yet"))?
                }
            };
            let mut filter = serde_json::Map::new();
            for tag in tags {
                let (key, value) = tag.split_once('=').ok_or_else(|| anyhow!("--tag {tag}: write it as key=value"))?;
                filter.insert(key.to_owned(), serde_json::Value::from(value));
            }
            let mut url =
                format!("{collector}/api/traces?service={}&limit={limit}&lookback=24h", percent_encode(&service));
            if !filter.is_empty() {
                url.push_str("&tags=");
                url.push_str(&percent_encode(&serde_json::Value::Object(filter).to_string()));
            }
            let data = runtime.block_on(query(&url)).map_err(anyhow::Error::from)?;
            print!("{}", render_list(&data, colour));
        }
    }
    Ok(())
}

/// `text` as a URL query value: every byte but the unreserved ones percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
