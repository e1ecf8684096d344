//! `trace-collector`: flags and environment in, serving OTLP/Zipkin ingest and Jaeger's query API
//! until SIGINT/SIGTERM.

use gallery_service::ServiceError;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gallery_service::serve::serve_until_signal;
use gallery_service::telemetry::init_logging;
use trace_collector::limits::Limits;
use trace_collector::span_store::SpanStore;
use trace_collector::{CollectorConfig, enforce_retention, ingest_router, query_router};

/// The collector's flags: where it listens and stores, and what it takes at most.
#[derive(Parser)]
#[command(name = "trace-collector", version, about = "OTLP/Zipkin in, SQLite, Jaeger's query API out.")]
struct Args {
    #[command(flatten)]
    config: CollectorConfig,
    #[command(flatten)]
    limits: Limits,
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let Args { config, limits } = Args::parse();
    let served = async {
        let spans = Arc::new(
            SpanStore::open(&config.database).await.map_err(|e| ServiceError::build("opening the span database", e))?,
        );
        let retention = Duration::from_secs(config.retention_hours.saturating_mul(3600));
        tokio::spawn(enforce_retention(spans.clone(), retention, config.max_spans));
        let bind = |address| async move {
            tokio::net::TcpListener::bind(address).await.map_err(|source| ServiceError::Bind { address, source })
        };
        let (otlp, query) = (bind(config.otlp_listen).await?, bind(config.query_listen).await?);
        tracing::info!(otlp = %config.otlp_listen, query = %config.query_listen, database = %config.database, ?limits, "trace-collector serving");
        let (a, b) = tokio::join!(
            serve_until_signal(otlp, ingest_router(spans.clone(), limits)),
            serve_until_signal(query, query_router(spans, limits))
        );
        a.and(b).map_err(ServiceError::Serve)
    }
    .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", gallery_service::service_error::chain(&e));
            ExitCode::FAILURE
        }
    }
}
