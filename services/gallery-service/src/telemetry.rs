//! One OpenTelemetry tracer provider per service, configured like every OpenTelemetry SDK: by
//! `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_BSP_*`, `OTEL_SDK_DISABLED` and `OTEL_TRACES_EXPORTER=none`.
//!
//! Trace context travels as W3C Trace Context Level 2 through [`W3cPropagator`]
//! (`wasmtrace-trace-core`'s parser, the sidecar's), not the SDK's `TraceContextPropagator`.
//!
//! The provider is not installed globally: each service holds its own, so three services in one
//! test process still export under their own `service.name`.

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::HeaderInjector;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider};

use crate::in_process_tracing::InProcessTracing;
use crate::w3c_propagator::{HeaderValues, W3cPropagator};

/// How a service exports its spans.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// `service.name`.
    pub service_name: String,
    /// Export spans at all.
    pub enabled: bool,
    /// The OTLP/HTTP traces URL (`.../v1/traces`); `None` lets the exporter read
    /// `OTEL_EXPORTER_OTLP_*` (default `http://localhost:4318/v1/traces`).
    pub traces_endpoint: Option<String>,
    /// How long spans wait in the batch before export; `None` lets the SDK read
    /// `OTEL_BSP_SCHEDULE_DELAY` (default 5 s).
    pub batch_delay: Option<Duration>,
    /// Make SERVER spans for requests and CLIENT spans for calls to other services. Behind
    /// wasmtrace sidecars, which make exactly those spans, turn it off
    /// (`GALLERY_HTTP_SPANS=false`): the service's own spans (database, storage) then hang
    /// directly under the sidecar's SERVER span, and its calls carry that context on.
    pub http_spans: bool,
    /// The wasmtrace filters run inside the service (they make the HTTP spans; `http_spans` is
    /// then ignored): its router behind their inbound layer, its calls through their outbound
    /// one.
    pub in_process: Option<InProcessTracing>,
}

/// How a service's HTTP requests are traced (`GALLERY_TRACING`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracingMode {
    /// The OpenTelemetry SDK makes the SERVER and CLIENT spans (`sdk`, the default alone).
    Sdk,
    /// Sidecars make them (`sidecar`).
    Sidecar,
    /// The sidecar's filters, inside the service (`in-process`, with `GALLERY_FILTERS_CONFIG`
    /// naming the sidecar file).
    InProcess,
}

impl TracingMode {
    /// `GALLERY_TRACING` (`sdk`, `sidecar`, `in-process`); without it, `GALLERY_HTTP_SPANS=false`
    /// means `sidecar`.
    pub fn from_env() -> Result<Self, crate::ConfigError> {
        match std::env::var("GALLERY_TRACING").ok().as_deref().map(str::trim) {
            Some("sdk") => Ok(Self::Sdk),
            Some("sidecar") => Ok(Self::Sidecar),
            Some("in-process") => Ok(Self::InProcess),
            Some("") | None => {
                let off = std::env::var("GALLERY_HTTP_SPANS").is_ok_and(|v| v.trim().eq_ignore_ascii_case("false"));
                Ok(if off { Self::Sidecar } else { Self::Sdk })
            }
            Some(other) => Err(crate::ConfigError::TracingMode(other.to_owned())),
        }
    }
}

impl TelemetryConfig {
    /// The configuration the standard environment variables describe.
    pub fn from_env(default_service_name: &str) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        Self {
            service_name: env("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.to_owned()),
            enabled: !disabled,
            traces_endpoint: None,
            batch_delay: None,
            http_spans: !env("GALLERY_HTTP_SPANS").is_some_and(|v| v.eq_ignore_ascii_case("false")),
            in_process: None,
        }
    }
}

/// A service's tracer, propagator and export pipeline.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: W3cPropagator,
    service_name: String,
    http_spans: bool,
    in_process: Option<InProcessTracing>,
}

impl Telemetry {
    /// Starts the pipeline. An exporter that cannot be built is logged, and spans are still
    /// created (trace ids still reach clients) but not exported.
    pub fn start(config: &TelemetryConfig) -> Self {
        let resource = Resource::builder().with_service_name(config.service_name.clone()).build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if config.enabled {
            let mut exporter = SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
            if let Some(endpoint) = &config.traces_endpoint {
                exporter = exporter.with_endpoint(endpoint.clone());
            }
            match exporter.build() {
                Ok(exporter) => {
                    let mut batch = BatchConfigBuilder::default();
                    if let Some(delay) = config.batch_delay {
                        batch = batch.with_scheduled_delay(delay);
                    }
                    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch.build()).build();
                    builder = builder.with_span_processor(processor);
                }
                Err(e) => tracing::error!("span export disabled, the OTLP exporter could not be built: {e}"),
            }
        }
        let provider = builder.build();
        let tracer = provider.tracer("gallery");
        Self {
            provider,
            tracer,
            propagator: W3cPropagator::new(),
            service_name: config.service_name.clone(),
            http_spans: config.http_spans && config.in_process.is_none(),
            in_process: config.in_process.clone(),
        }
    }

    /// The tracer spans are started with.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Whether this service makes its own HTTP SERVER/CLIENT spans (see
    /// [`TelemetryConfig::http_spans`]).
    pub fn http_spans(&self) -> bool {
        self.http_spans
    }

    /// The in-process filters, when the service runs them.
    pub fn in_process(&self) -> Option<&InProcessTracing> {
        self.in_process.as_ref()
    }

    /// `service.name`.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The context an incoming request carries (W3C `traceparent`/`tracestate`, every value of
    /// each: see [`crate::w3c_propagator`]).
    pub fn extract(&self, headers: &HeaderMap) -> Context {
        self.propagator.extract(&HeaderValues(headers))
    }

    /// Writes `cx` into outgoing request headers, replacing any trace context they had (a
    /// `tracestate` is only sent when there is one).
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        for field in self.propagator.fields() {
            headers.remove(field);
        }
        self.propagator.inject_context(cx, &mut HeaderInjector(headers));
    }

    /// Exports every finished span now (used before shutdown and by tests).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!("span flush: {e}");
        }
    }

    /// Flushes and stops the pipeline.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!("span pipeline shutdown: {e}");
        }
    }
}

/// A string attribute.
pub fn attribute(key: &'static str, value: impl Into<String>) -> KeyValue {
    KeyValue::new(key, value.into())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), for a service binary.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
