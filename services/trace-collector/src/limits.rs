//! What one collector takes at most, per request and at once. Every sender and every query
//! caller is untrusted: without these a single `?limit=100000` or one large OTLP request could
//! grow the process until the kernel kills it.
//!
//! Ingest is bounded in three steps, each before the next one allocates: the body (compressed and
//! decompressed), then a scan of the undecoded bytes that counts spans and estimates what decoding
//! will allocate, then the decoded spans themselves. Queries are bounded by a `limit` cap and by
//! the size of the answer. The defaults suit one machine; every value has a flag and an
//! environment variable.

/// Default [`Limits::max_request_bytes`]: 20 MiB, the OpenTelemetry Collector's default
/// `max_request_body_size`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 20 << 20;
/// Default [`Limits::max_spans_per_request`]: far above what SDKs batch (512 by default) or an
/// OpenTelemetry Collector's batch processor sends (8192).
pub const DEFAULT_MAX_SPANS_PER_REQUEST: usize = 50_000;
/// Default [`Limits::max_decoded_bytes`]: 128 MiB, room for a full-size request of typical spans
/// (their decoded form takes about five times their protobuf bytes).
pub const DEFAULT_MAX_DECODED_BYTES: usize = 128 << 20;
/// Default [`Limits::max_concurrent_ingests`].
pub const DEFAULT_MAX_CONCURRENT_INGESTS: usize = 8;
/// Default [`Limits::ingest_body_timeout_secs`].
pub const DEFAULT_INGEST_BODY_TIMEOUT_SECS: u64 = 30;
/// Default [`Limits::max_traces_per_search`]: Jaeger's UI asks for 20; our viewer for at most 500.
pub const DEFAULT_MAX_TRACES_PER_SEARCH: i64 = 1_000;
/// Default [`Limits::max_answer_bytes`]: 32 MiB of JSON.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 32 << 20;
/// Default [`Limits::max_concurrent_queries`]: a viewer page asks a few things at once; four
/// answers of the largest size and their JSON trees fit in a few hundred MiB.
pub const DEFAULT_MAX_CONCURRENT_QUERIES: usize = 4;

/// Most tags (`tags={...}` entries plus `tag=` parameters) one search may filter on; each becomes
/// a condition of the SQL query.
pub const MAX_SEARCH_TAGS: usize = 32;
/// Most entries a list answer (services, operations, dependencies) carries; beyond it the list is
/// cut (and the cut logged), as such a list is meant for a drop-down, not for export.
pub const MAX_LIST_ENTRIES: i64 = 10_000;
/// How long a sender refused for being one too many should wait (`Retry-After`, seconds).
pub const RETRY_AFTER_SECS: u64 = 1;

/// The collector's limits (each one a flag, an environment variable and a default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Largest ingest request body in bytes, as sent and once decompressed (413 beyond).
    #[arg(long, env = "TRACE_COLLECTOR_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Most spans one ingest request may carry (413 beyond, found before decoding).
    #[arg(long, env = "TRACE_COLLECTOR_MAX_SPANS_PER_REQUEST", default_value_t = DEFAULT_MAX_SPANS_PER_REQUEST)]
    pub max_spans_per_request: usize,
    /// Most memory in bytes the decoded form of one request may take: estimated from the
    /// undecoded bytes before decoding, and counted again on the spans decoded (413 beyond).
    #[arg(long, env = "TRACE_COLLECTOR_MAX_DECODED_BYTES", default_value_t = DEFAULT_MAX_DECODED_BYTES)]
    pub max_decoded_bytes: usize,
    /// Most ingest requests read, decoded and stored at once; one more is answered 503 with
    /// `Retry-After` (OTLP's throttling signal) before its body is read.
    #[arg(long, env = "TRACE_COLLECTOR_MAX_CONCURRENT_INGESTS", default_value_t = DEFAULT_MAX_CONCURRENT_INGESTS)]
    pub max_concurrent_ingests: usize,
    /// Seconds an ingest request's body may take to arrive (408 beyond), so a slow sender cannot
    /// keep an ingest slot.
    #[arg(long, env = "TRACE_COLLECTOR_INGEST_BODY_TIMEOUT_SECS", default_value_t = DEFAULT_INGEST_BODY_TIMEOUT_SECS)]
    pub ingest_body_timeout_secs: u64,
    /// Most traces one search (`/api/traces?limit=`) returns; a larger `limit` is answered 400.
    #[arg(long, env = "TRACE_COLLECTOR_MAX_TRACES_PER_SEARCH", default_value_t = DEFAULT_MAX_TRACES_PER_SEARCH)]
    pub max_traces_per_search: i64,
    /// Largest query answer in bytes of JSON (estimated while the spans are read); a search or
    /// trace that would exceed it is answered 400 with what to ask for instead.
    #[arg(long, env = "TRACE_COLLECTOR_MAX_ANSWER_BYTES", default_value_t = DEFAULT_MAX_ANSWER_BYTES)]
    pub max_answer_bytes: usize,
    /// Most query answers (`/api/*` but uploads, which count as ingests) built at once; one more
    /// is answered 503 with `Retry-After`. Each answer may hold up to `max_answer_bytes` of JSON
    /// and its tree while it is built: without this, many callers at once would multiply it.
    #[arg(long, env = "TRACE_COLLECTOR_MAX_CONCURRENT_QUERIES", default_value_t = DEFAULT_MAX_CONCURRENT_QUERIES)]
    pub max_concurrent_queries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_spans_per_request: DEFAULT_MAX_SPANS_PER_REQUEST,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
            max_concurrent_ingests: DEFAULT_MAX_CONCURRENT_INGESTS,
            ingest_body_timeout_secs: DEFAULT_INGEST_BODY_TIMEOUT_SECS,
            max_traces_per_search: DEFAULT_MAX_TRACES_PER_SEARCH,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            max_concurrent_queries: DEFAULT_MAX_CONCURRENT_QUERIES,
        }
    }
}
