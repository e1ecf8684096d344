//! `gallery-api`: flags and environment in, serving until SIGINT/SIGTERM, spans flushed on the
//! way out.

use std::process::ExitCode;

use clap::Parser;
use gallery_api::{ApiConfig, router};

#[tokio::main]
async fn main() -> ExitCode {
    let config = ApiConfig::parse();
    let listen = config.listen;
    gallery_service::serve::run_binary("gallery-api", listen, |telemetry| async move {
        tracing::info!(catalog = %config.catalog_url, "image catalog");
        router(&config, telemetry)
    })
    .await
}
