//! The trace filter's JSON plugin configuration, validated once in `on_configure`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use wasmtrace_trace_core::sampler::Sampler;
use wasmtrace_trace_core::span::SpanKind;

/// A propagation format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// W3C `traceparent` / `tracestate`.
    W3c,
    /// B3 single header.
    B3,
    /// B3 multi header (`X-B3-*`).
    B3multi,
    /// Jaeger `uber-trace-id`.
    Jaeger,
}

/// Export encoding.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// OTLP/HTTP protobuf.
    #[default]
    OtlpProto,
    /// OTLP/HTTP JSON.
    OtlpJson,
    /// Zipkin v2 JSON.
    ZipkinJson,
    /// OTLP/gRPC (`TraceService/Export`, protobuf), the collectors' port 4317.
    OtlpGrpc,
}

impl ExportFormat {
    /// Whether spans are encoded as OTLP protobuf (over HTTP or gRPC).
    pub fn is_otlp_protobuf(self) -> bool {
        matches!(self, Self::OtlpProto | Self::OtlpGrpc)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSampler {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "one")]
    ratio: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExporter {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    format: ExportFormat,
    #[serde(default = "default_batch")]
    batch_size: usize,
    #[serde(default = "default_flush")]
    flush_interval_ms: u64,
    #[serde(default = "default_queue")]
    max_queued_spans: usize,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_batch() -> usize {
    128
}
fn default_flush() -> u64 {
    1000
}
fn default_queue() -> usize {
    4096
}
fn default_timeout() -> u64 {
    2000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    service_name: String,
    #[serde(default)]
    resource_attributes: BTreeMap<String, String>,
    #[serde(default)]
    span_kind: Option<String>,
    #[serde(default)]
    extract: Option<Vec<Format>>,
    #[serde(default)]
    inject: Option<Vec<Format>>,
    #[serde(default)]
    sampler: Option<RawSampler>,
    #[serde(default)]
    request_header_attributes: BTreeMap<String, String>,
    #[serde(default)]
    response_header_attributes: BTreeMap<String, String>,
    #[serde(default)]
    static_attributes: BTreeMap<String, String>,
    #[serde(default)]
    record_query: bool,
    #[serde(default)]
    strip_uninjected: bool,
    #[serde(default = "yes")]
    record_filter_provenance: bool,
    exporter: RawExporter,
}

/// Where and how spans are exported.
#[derive(Clone, Debug)]
pub struct Exporter {
    /// Cluster to send to.
    pub cluster: String,
    /// `:authority` of the export requests.
    pub authority: String,
    /// Path (`/v1/traces`).
    pub path: String,
    /// Encoding.
    pub format: ExportFormat,
    /// Spans per export request.
    pub batch_size: usize,
    /// Longest a span waits before export.
    pub flush_interval: Duration,
    /// Spans kept while the collector is slow or down; newer spans beyond it are dropped (and
    /// counted). The spans wait in the host's shared queue, so the bound is for all workers of
    /// the plugin together, checked against a count each worker updates at its tick (see
    /// [`crate::spool`]). The wasmtrace host holds at most 10,000 items per queue.
    pub max_queued_spans: usize,
    /// Export request timeout.
    pub timeout: Duration,
    /// For `otlp_grpc`: where the call goes, as proxy-wasm's `proxy_grpc_call` takes it: the
    /// cluster name, or a serialized `GrpcService` naming cluster and authority when the
    /// authority differs (Envoy reads both).
    pub grpc_service: Vec<u8>,
}

/// A serialized `envoy.config.core.v3.GrpcService` with `envoy_grpc { cluster_name, authority }`
/// (fields 1 and 2 of field 1, all length-delimited).
fn grpc_service(cluster: &str, authority: &str) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag << 3 | 2);
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(bytes);
    }
    if cluster == authority {
        return cluster.as_bytes().to_vec();
    }
    let mut envoy_grpc = Vec::new();
    field(&mut envoy_grpc, 1, cluster.as_bytes());
    field(&mut envoy_grpc, 2, authority.as_bytes());
    let mut service = Vec::new();
    field(&mut service, 1, &envoy_grpc);
    service
}

fn yes() -> bool {
    true
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// `service.name` of the resource.
    pub service_name: String,
    /// Other resource attributes.
    pub resource_attributes: Vec<(String, String)>,
    /// SERVER (inbound) or CLIENT (outbound); `None`: from the listener's direction per request.
    pub span_kind: Option<SpanKind>,
    /// Formats tried in order; the first valid context wins.
    pub extract: Vec<Format>,
    /// Formats written to the request.
    pub inject: Vec<Format>,
    /// Sampling policy.
    pub sampler: Sampler,
    /// Request header → attribute name.
    pub request_header_attributes: Vec<(String, String)>,
    /// Response header → attribute name.
    pub response_header_attributes: Vec<(String, String)>,
    /// Attributes on every span.
    pub static_attributes: Vec<(String, String)>,
    /// Record `url.query`.
    pub record_query: bool,
    /// Remove the headers of extracted formats that are not injected (so no stale context of
    /// another format reaches the next hop).
    pub strip_uninjected: bool,
    /// Record which generation of this filter, and which module, made each span
    /// (`wasmtrace.filter.generation`, `wasmtrace.filter.sha256`), where the host says (the
    /// wasmtrace host does; Envoy has no such properties, so there the span has neither).
    pub record_filter_provenance: bool,
    /// Export settings.
    pub exporter: Exporter,
}

impl Format {
    /// The request headers this format uses.
    pub fn headers(self) -> &'static [&'static str] {
        match self {
            Self::W3c => &["traceparent", "tracestate"],
            Self::B3 => &["b3"],
            Self::B3multi => &["x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"],
            Self::Jaeger => &["uber-trace-id"],
        }
    }
}

impl TraceConfig {
    /// How many configured attributes a span can get beyond the built-in ones: room to reserve.
    pub fn attribute_count(&self) -> usize {
        self.request_header_attributes.len() + self.response_header_attributes.len() + self.static_attributes.len()
    }

    /// Parses and validates; the error names the field.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        let span_kind = match raw.span_kind.as_deref() {
            None => None,
            Some("server") => Some(SpanKind::Server),
            Some("client") => Some(SpanKind::Client),
            Some(other) => return Err(format!("field `span_kind`: `{other}` is not `server` or `client`")),
        };
        let sampler = match raw.sampler {
            None => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Some(s) => {
                if !(0.0..=1.0).contains(&s.ratio) {
                    return Err(format!("field `sampler.ratio`: {} is not between 0 and 1", s.ratio));
                }
                match s.kind.as_str() {
                    "always_on" => Sampler::AlwaysOn,
                    "always_off" => Sampler::AlwaysOff,
                    "ratio" => Sampler::Ratio(s.ratio),
                    "parent_based" => Sampler::ParentBased(Box::new(Sampler::Ratio(s.ratio))),
                    other => {
                        return Err(format!(
                            "field `sampler.type`: `{other}` is not always_on, always_off, ratio or parent_based"
                        ));
                    }
                }
            }
        };
        let e = raw.exporter;
        if e.cluster.is_empty() {
            return Err("field `exporter.cluster`: must name a cluster".into());
        }
        if e.batch_size == 0 || e.max_queued_spans < e.batch_size {
            return Err("field `exporter.batch_size`: must be at least 1 and at most `max_queued_spans`".into());
        }
        if e.format == ExportFormat::OtlpGrpc && e.path.is_some() {
            return Err("field `exporter.path`: `otlp_grpc` calls `TraceService/Export`, not a path".into());
        }
        let grpc_service = grpc_service(&e.cluster, e.authority.as_deref().unwrap_or(&e.cluster));
        // The SDK passes the service as text: a serialized GrpcService is text while its length
        // prefixes stay below 128.
        if e.format == ExportFormat::OtlpGrpc && std::str::from_utf8(&grpc_service).is_err() {
            return Err(
                "field `exporter.authority`: with `cluster`, too long for `otlp_grpc` (cluster and authority together under 124 bytes)"
                    .into(),
            );
        }
        let path = e.path.unwrap_or_else(|| match e.format {
            ExportFormat::ZipkinJson => "/api/v2/spans".into(),
            _ => "/v1/traces".into(),
        });
        if !path.starts_with('/') {
            return Err(format!("field `exporter.path`: `{path}` must start with /"));
        }
        let lower = |m: BTreeMap<String, String>| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        Ok(Self {
            service_name: raw.service_name,
            resource_attributes: raw.resource_attributes.into_iter().collect(),
            span_kind,
            extract: raw.extract.unwrap_or_else(|| vec![Format::W3c, Format::B3, Format::B3multi, Format::Jaeger]),
            inject: raw.inject.unwrap_or_else(|| vec![Format::W3c]),
            sampler,
            request_header_attributes: lower(raw.request_header_attributes),
            response_header_attributes: lower(raw.response_header_attributes),
            static_attributes: raw.static_attributes.into_iter().collect(),
            record_query: raw.record_query,
            strip_uninjected: raw.strip_uninjected,
            record_filter_provenance: raw.record_filter_provenance,
            exporter: Exporter {
                grpc_service,
                authority: e.authority.unwrap_or_else(|| e.cluster.clone()),
                cluster: e.cluster,
                path,
                format: e.format,
                batch_size: e.batch_size,
                flush_interval: Duration::from_millis(e.flush_interval_ms.max(1)),
                max_queued_spans: e.max_queued_spans,
                // The proxy-wasm calls take u32 milliseconds (0 would mean no deadline).
                timeout: Duration::from_millis(e.timeout_ms.clamp(1, u64::from(u32::MAX))),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_grpc_names_its_cluster_and_authority_as_envoy_reads_them() {
        let config =
            TraceConfig::parse(br#"{"service_name": "api", "exporter": {"cluster": "otel", "format": "otlp_grpc"}}"#)
                .expect("valid");
        assert_eq!(config.exporter.grpc_service, b"otel", "the cluster name, as the Rust SDK passes it");
        let config = TraceConfig::parse(
            br#"{"service_name": "api", "exporter": {"cluster": "otel", "authority": "c.example", "format": "otlp_grpc"}}"#,
        )
        .expect("valid");
        let inner = [&[0x0a, 4][..], b"otel", &[0x12, 9], b"c.example"].concat();
        assert_eq!(config.exporter.grpc_service, [&[0x0a, inner.len() as u8][..], &inner].concat());
        let err = TraceConfig::parse(
            br#"{"service_name": "api", "exporter": {"cluster": "otel", "path": "/x", "format": "otlp_grpc"}}"#,
        )
        .expect_err("no path for gRPC");
        assert!(err.contains("exporter.path"), "{err}");
        let long = "a".repeat(70);
        let config = format!(
            r#"{{"service_name": "api", "exporter": {{"cluster": "{long}", "authority": "{long}.example", "format": "otlp_grpc"}}}}"#
        );
        let err = TraceConfig::parse(config.as_bytes()).expect_err("too long to pass as text");
        assert!(err.contains("exporter.authority"), "{err}");
    }

    #[test]
    fn a_minimal_configuration_gets_the_defaults() {
        let config = TraceConfig::parse(br#"{"service_name": "api", "exporter": {"cluster": "otel"}}"#).expect("valid");
        assert_eq!(config.span_kind, None, "from the listener's direction");
        assert_eq!(config.inject, vec![Format::W3c]);
        assert_eq!(config.exporter.path, "/v1/traces");
        assert_eq!(config.exporter.authority, "otel");
    }

    #[test]
    fn errors_name_the_field() {
        let err =
            TraceConfig::parse(br#"{"service_name": "api", "span_kind": "sideways", "exporter": {"cluster": "otel"}}"#)
                .expect_err("bad");
        assert!(err.contains("span_kind"), "{err}");
        let err = TraceConfig::parse(br#"{"service_name": "api", "exporter": {"cluster": "otel", "format": "xml"}}"#)
            .expect_err("bad");
        assert!(err.contains("xml"), "{err}");
        let err = TraceConfig::parse(br#"{"service_name": "api", "exporter": {"cluster": "otel"}, "colour": 1}"#)
            .expect_err("bad");
        assert!(err.contains("colour"), "{err}");
    }
}
