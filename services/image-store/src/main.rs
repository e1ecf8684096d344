//! `image-store`: flags and environment in, serving until SIGINT/SIGTERM, spans flushed on the
//! way out.

use std::process::ExitCode;

use clap::Parser;
use image_store::{Objects, StoreConfig, router};

#[tokio::main]
async fn main() -> ExitCode {
    let config = StoreConfig::parse();
    gallery_service::serve::run_binary("image-store", config.listen, |telemetry| async move {
        let objects = Objects::open(&config.location, telemetry.clone())
            .map_err(|e| gallery_service::ServiceError::build("opening the image store", e))?;
        tracing::info!(location = %config.location, "image bytes");
        Ok(router(objects, telemetry, config.max_bytes))
    })
    .await
}
