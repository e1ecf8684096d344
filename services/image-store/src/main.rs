//! `image-store`: flags and environment in, serving until SIGINT/SIGTERM, spans flushed on the
//! way out.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use gallery_service::Telemetry;
use gallery_service::telemetry::{TelemetryConfig, init_logging};
use image_store::{Objects, StoreConfig, router};

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let config = StoreConfig::parse();
    let telemetry = Arc::new(Telemetry::start(&TelemetryConfig::from_env("image-store")));
    let objects = match Objects::open(&config.location, telemetry.clone()) {
        Ok(objects) => objects,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %config.listen, location = %config.location, "image-store serving");
    let served =
        gallery_service::serve::serve_until_signal(listener, router(objects, telemetry.clone(), config.max_bytes))
            .await;
    telemetry.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
