//! `image-catalog`: flags and environment in, serving until SIGINT/SIGTERM, spans flushed on
//! the way out.

use std::process::ExitCode;

use clap::Parser;
use image_catalog::{CatalogConfig, build};

#[tokio::main]
async fn main() -> ExitCode {
    let config = CatalogConfig::parse();
    let listen = config.listen;
    gallery_service::serve::run_binary("image-catalog", listen, |telemetry| async move {
        tracing::info!(store = %config.store_url, "image store");
        build(&config, telemetry).await
    })
    .await
}
