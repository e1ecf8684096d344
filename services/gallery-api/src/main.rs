//! `gallery-api`: flags and environment in, serving until SIGINT/SIGTERM, spans flushed on the
//! way out.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use gallery_api::{ApiConfig, router};
use gallery_service::Telemetry;
use gallery_service::telemetry::{TelemetryConfig, init_logging};

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let config = ApiConfig::parse();
    let telemetry = Arc::new(Telemetry::start(&TelemetryConfig::from_env("gallery-api")));
    let served = async {
        let router = router(&config, telemetry.clone())?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        tracing::info!(listen = %config.listen, catalog = %config.catalog_url, "gallery-api serving on http://{}", config.listen);
        gallery_service::serve::serve_until_signal(listener, router).await.map_err(|e| e.to_string())
    }
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
