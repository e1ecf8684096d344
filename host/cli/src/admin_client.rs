//! `wasmtrace swap`: asks a running proxy's admin API to hot-swap a plugin, and says what
//! happened in one line per plugin.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What to swap, as given on the command line.
pub struct SwapArgs {
    /// The proxy's admin address.
    pub admin: SocketAddr,
    /// Plugin name.
    pub plugin: String,
    /// Only on this listener.
    pub listener: Option<String>,
    /// A new module, sent as bytes (the proxy need not share our file system).
    pub module: Option<PathBuf>,
    /// A new plugin configuration: JSON/text, or `@file`.
    pub config: Option<String>,
    /// Roll back to the previous generation instead.
    pub rollback: bool,
    /// The admin API's bearer token, in a file.
    pub token_file: Option<PathBuf>,
}

fn configuration(arg: &str) -> anyhow::Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading the configuration {path}")),
        None => Ok(arg.to_owned()),
    }
}

/// Sends the swap (or rollback) and prints the outcome; an error when it was refused.
pub fn swap(args: SwapArgs) -> anyhow::Result<()> {
    let mut body = serde_json::Map::new();
    if let Some(listener) = &args.listener {
        body.insert("listener".into(), listener.clone().into());
    }
    let action = if args.rollback {
        if args.module.is_some() || args.config.is_some() {
            bail!("--rollback takes no --module or --config");
        }
        "rollback"
    } else {
        if let Some(module) = &args.module {
            let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
            body.insert("module_base64".into(), base64::engine::general_purpose::STANDARD.encode(bytes).into());
        }
        if let Some(config) = &args.config {
            body.insert("configuration".into(), configuration(config)?.into());
        }
        if body.get("module_base64").is_none() && body.get("configuration").is_none() {
            bail!("nothing to swap: give --module and/or --config (or --rollback)");
        }
        "swap"
    };
    let uri = format!("http://{}/plugins/{}/{action}", args.admin, args.plugin);
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, reply) = runtime.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = http::Request::post(&uri).header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(serde_json::Value::Object(body).to_string())))?;
        let response =
            client.request(request).await.with_context(|| format!("cannot reach the admin API at {}", args.admin))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    })?;
    let reply: serde_json::Value = serde_json::from_slice(&reply)
        .with_context(|| format!("the admin API answered {status} with: {}", String::from_utf8_lossy(&reply)))?;
    print_outcome(&reply);
    if !status.is_success() {
        bail!("{}", reply["error"].as_str().unwrap_or("the swap failed"));
    }
    Ok(())
}

fn short(sha: &serde_json::Value) -> &str {
    let sha = sha.as_str().unwrap_or("?");
    &sha[..sha.len().min(12)]
}

fn print_outcome(reply: &serde_json::Value) {
    for swapped in reply["swapped"].as_array().into_iter().flatten() {
        let what = if swapped["module_changed"].as_bool() == Some(true) { "module" } else { "configuration" };
        println!(
            "swapped {}/{} ({what}): generation {} -> {}, sha256 {} -> {}, published in {:.1} ms",
            swapped["listener"].as_str().unwrap_or("?"),
            swapped["plugin"].as_str().unwrap_or("?"),
            swapped["old_generation"],
            swapped["generation"],
            short(&swapped["old_sha256"]),
            short(&swapped["sha256"]),
            reply["published_after_ms"].as_f64().unwrap_or(0.0),
        );
    }
    if reply["optimising"] == true {
        println!("serving quickly compiled code; the optimised code follows as the next generation (--tiered-swaps)");
    }
    for unchanged in reply["unchanged"].as_array().into_iter().flatten() {
        println!("unchanged {}: it already runs this module and configuration", unchanged.as_str().unwrap_or("?"));
    }
    if reply["outcome"] == "refused" {
        println!("refused; the serving generation keeps serving");
    }
}
