//! Jaeger's HTTP query API (`/api/services`, `/api/services/{service}/operations`,
//! `/api/operations`, `/api/traces`, `/api/traces/{id}`, `/api/dependencies`) in Jaeger's JSON
//! shape, so Jaeger's UI and tools can read the local collector.
//!
//! Answers are bounded ([`Limits`]): a search's `limit` and tag count are capped (400 beyond, in
//! Jaeger's error shape `{"data": null, "errors": [{"code": 400, "msg": ...}]}`), an answer whose
//! JSON would exceed [`Limits::max_answer_bytes`] is refused the same way before it is built, and
//! lists are cut at [`MAX_LIST_ENTRIES`](crate::limits::MAX_LIST_ENTRIES).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::limits::{Limits, MAX_SEARCH_TAGS};
use crate::span_store::{QueryError, SpanStore, StoredResource, StoredSpan, TraceQuery, hex};

/// Traces returned when the search does not say.
const DEFAULT_LIMIT: i64 = 20;

/// What the query handlers share: the span store and the limits of their answers.
pub struct QueryApi {
    /// The spans.
    pub store: Arc<SpanStore>,
    /// The bounds on what is asked and answered.
    pub limits: Limits,
    /// Uploads being transformed (`POST /api/transform`) at once: as many as ingests may run.
    pub transforms: tokio::sync::Semaphore,
    /// Query answers being built at once ([`Limits::max_concurrent_queries`]).
    pub queries: tokio::sync::Semaphore,
}

impl QueryApi {
    /// The query side of a store, within `limits`.
    pub fn new(store: Arc<SpanStore>, limits: Limits) -> Self {
        let permits = |n: usize| tokio::sync::Semaphore::new(n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS));
        Self {
            store,
            limits,
            transforms: permits(limits.max_concurrent_ingests),
            queries: permits(limits.max_concurrent_queries),
        }
    }
}

type Api = State<Arc<QueryApi>>;

fn envelope(data: Value, total: usize) -> Response {
    Json(json!({ "data": data, "total": total, "limit": 0, "offset": 0, "errors": null })).into_response()
}

fn failure(status: StatusCode, message: &str) -> Response {
    let body = json!({ "data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{ "code": status.as_u16(), "msg": message }] });
    (status, Json(body)).into_response()
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!("span query: {error}");
    // The database's message is logged, not sent.
    failure(StatusCode::INTERNAL_SERVER_ERROR, "span query failed")
}

/// Jaeger's name for an OTLP span kind.
pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        1 => "internal",
        _ => "unspecified",
    }
}

fn tag(key: &str, value: &Value) -> Value {
    let (kind, value) = match value {
        Value::Bool(b) => ("bool", Value::from(*b)),
        Value::Number(n) if n.is_i64() || n.is_u64() => ("int64", value.clone()),
        Value::Number(_) => ("float64", value.clone()),
        Value::String(_) => ("string", value.clone()),
        other => ("string", Value::from(other.to_string())),
    };
    json!({ "key": key, "type": kind, "value": value })
}

fn object(text: &str) -> Map<String, Value> {
    serde_json::from_str::<Map<String, Value>>(text).unwrap_or_default()
}

/// Jaeger's JSON for one trace's spans.
pub fn trace_json(trace_id: &str, spans: &[&StoredSpan]) -> Value {
    // A process per distinct resource (equal content, one process): spans sharing a resource are
    // matched by pointer, and a resource's content is hashed once, when first met, so a trace of
    // many (or large) resources costs no more than the answer it makes.
    let mut by_pointer: HashMap<*const StoredResource, usize> = HashMap::new();
    let mut processes: HashMap<&StoredResource, usize> = HashMap::new();
    let mut process_json = Map::new();
    let mut out = Vec::new();
    for span in spans {
        let pointer = Arc::as_ptr(&span.resource);
        let known = by_pointer.get(&pointer).copied().or_else(|| processes.get(&*span.resource).copied());
        let index = match known {
            Some(i) => {
                by_pointer.insert(pointer, i);
                i
            }
            None => {
                by_pointer.insert(pointer, processes.len());
                processes.insert(&span.resource, processes.len());
                let tags: Vec<Value> = object(&span.resource.attributes)
                    .iter()
                    .filter(|(k, _)| k.as_str() != "service.name")
                    .map(|(k, v)| tag(k, v))
                    .collect();
                process_json.insert(
                    format!("p{}", processes.len()),
                    json!({ "serviceName": span.resource.service, "tags": tags }),
                );
                processes.len() - 1
            }
        };
        let (trace_hex, span_hex) = (hex(&span.trace_id), hex(&span.span_id));
        let mut tags: Vec<Value> = object(&span.attributes).iter().map(|(k, v)| tag(k, v)).collect();
        tags.push(tag("span.kind", &Value::from(kind_name(span.kind))));
        if span.status_code == 2 {
            tags.push(tag("error", &Value::from(true)));
            tags.push(tag("otel.status_code", &Value::from("ERROR")));
            if !span.status_message.is_empty() {
                tags.push(tag("otel.status_description", &Value::from(span.status_message.as_str())));
            }
        } else if span.status_code == 1 {
            tags.push(tag("otel.status_code", &Value::from("OK")));
        }
        let mut references = Vec::new();
        if let Some(parent) = &span.parent_span_id {
            references.push(json!({ "refType": "CHILD_OF", "traceID": trace_hex, "spanID": hex(parent) }));
        }
        if let Ok(Value::Array(links)) = serde_json::from_str::<Value>(&span.links) {
            for link in links {
                references
                    .push(json!({ "refType": "FOLLOWS_FROM", "traceID": link["trace_id"], "spanID": link["span_id"] }));
            }
        }
        let logs: Vec<Value> = match serde_json::from_str::<Value>(&span.events) {
            Ok(Value::Array(events)) => events
                .iter()
                .map(|event| {
                    let mut fields = vec![tag("event", &event["name"])];
                    if let Some(attributes) = event["attributes"].as_object() {
                        fields.extend(attributes.iter().map(|(k, v)| tag(k, v)));
                    }
                    json!({ "timestamp": event["time_us"], "fields": fields })
                })
                .collect(),
            _ => Vec::new(),
        };
        out.push(json!({
            "traceID": trace_hex,
            "spanID": span_hex,
            "operationName": span.name,
            "references": references,
            "startTime": span.start_us,
            "duration": span.duration_us,
            "tags": tags,
            "logs": logs,
            "processID": format!("p{}", index + 1),
            "warnings": null,
            "flags": 1,
        }));
    }
    json!({ "traceID": trace_id, "spans": out, "processes": process_json, "warnings": null })
}

fn traces_json(spans: &[StoredSpan], order: &[String]) -> Vec<Value> {
    let mut by_trace: HashMap<String, Vec<&StoredSpan>> = HashMap::new();
    for span in spans {
        by_trace.entry(hex(&span.trace_id)).or_default().push(span);
    }
    order.iter().filter_map(|id| by_trace.get(id.as_str()).map(|spans| trace_json(id, spans))).collect()
}

/// A Go duration as Jaeger takes them (`1.5ms`, `200us`, `2s`, `1m30s`, `1h`), in µs; `None`
/// for anything else (a negative or absurdly long one included).
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    // Go takes a sign and a bare 0; a negative duration bounds nothing here, so it is refused.
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut micros = 0f64;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|at| *at > 0)?;
        let (number, tail) = rest.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-3,
            "us" | "µs" | "μs" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            "m" => 60e6,
            "h" => 3600e6,
            _ => return None,
        };
        micros += number * scale;
        rest = tail;
    }
    (micros.is_finite() && micros < i64::MAX as f64).then_some(micros as i64)
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// `GET /api/services`.
pub async fn services(State(api): Api) -> Response {
    match api.store.services(api.limits.max_answer_bytes).await {
        Ok(services) => {
            let total = services.len();
            envelope(json!(services), total)
        }
        Err(e) => internal(e),
    }
}

/// `GET /api/services/{service}/operations`: names only, as Jaeger answers.
pub async fn service_operations(State(api): Api, Path(service): Path<String>) -> Response {
    match api.store.operations(&service, api.limits.max_answer_bytes).await {
        Ok(operations) => {
            let mut names: Vec<String> = operations.into_iter().map(|(name, _)| name).collect();
            names.dedup();
            let total = names.len();
            envelope(json!(names), total)
        }
        Err(e) => internal(e),
    }
}

/// `GET /api/operations?service=&spanKind=`: names with kinds.
pub async fn operations(State(api): Api, Query(params): Query<HashMap<String, String>>) -> Response {
    let Some(service) = params.get("service") else {
        return failure(StatusCode::BAD_REQUEST, "parameter `service` is required");
    };
    match api.store.operations(service, api.limits.max_answer_bytes).await {
        Ok(operations) => {
            let wanted = params.get("spanKind").filter(|k| !k.is_empty());
            let list: Vec<Value> = operations
                .into_iter()
                .filter(|(_, kind)| wanted.is_none_or(|w| w == kind_name(*kind)))
                .map(|(name, kind)| json!({ "name": name, "spanKind": kind_name(kind) }))
                .collect();
            let total = list.len();
            envelope(Value::Array(list), total)
        }
        Err(e) => internal(e),
    }
}

/// Whether an attribute name can be searched: it becomes a JSON path in SQL, where a quote, a
/// backslash or a control character (a NUL ends the path) would change what it means.
pub fn searchable_key(key: &str) -> bool {
    !key.is_empty() && !key.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

/// A search the query string describes wrongly: the text says which parameter and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(pub String);

/// The search a `/api/traces` query string asks for, within `limits` (`limit` at most
/// [`Limits::max_traces_per_search`], at most [`MAX_SEARCH_TAGS`] tags).
pub fn trace_query(params: &[(String, String)], limits: &Limits) -> Result<TraceQuery, BadQuery> {
    let mut query = TraceQuery { limit: DEFAULT_LIMIT.min(limits.max_traces_per_search), ..TraceQuery::default() };
    let mut lookback = None;
    for (key, value) in params {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let micros =
            |v: &str| v.parse::<i64>().map_err(|_| BadQuery(format!("`{key}` must be microseconds since the epoch")));
        let duration =
            |v: &str| parse_duration(v).ok_or_else(|| BadQuery(format!("`{key}`: `{v}` is not a duration like 1.2ms")));
        match key.as_str() {
            "service" => query.service = Some(value.to_owned()),
            "operation" => query.operation = Some(value.to_owned()),
            "limit" => {
                let max = limits.max_traces_per_search;
                let limit: i64 = value.parse().map_err(|_| BadQuery("`limit` must be a number".to_owned()))?;
                if !(1..=max).contains(&limit) {
                    return Err(BadQuery(format!(
                        "`limit` must be between 1 and {max} (asked for {limit}); narrow the search (service, operation, tags, time) to find older traces"
                    )));
                }
                query.limit = limit;
            }
            "start" => query.start_us = Some(micros(value)?),
            "end" => query.end_us = Some(micros(value)?),
            "minDuration" => query.min_duration_us = Some(duration(value)?),
            "maxDuration" => query.max_duration_us = Some(duration(value)?),
            "lookback" if value != "custom" => lookback = Some(duration(value)?),
            "tags" => {
                let tags: Map<String, Value> =
                    serde_json::from_str(value).map_err(|e| BadQuery(format!("`tags` must be a JSON object: {e}")))?;
                for (k, v) in tags {
                    if !searchable_key(&k) {
                        return Err(BadQuery("a tag name has a quote, a backslash or a control character".to_owned()));
                    }
                    query.tags.push((k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)));
                }
            }
            "tag" => {
                let (k, v) = value.split_once(':').ok_or_else(|| BadQuery("`tag` must be key:value".to_owned()))?;
                if !searchable_key(k) {
                    return Err(BadQuery("a tag name has a quote, a backslash or a control character".to_owned()));
                }
                query.tags.push((k.to_owned(), v.to_owned()));
            }
            _ => {}
        }
        if query.tags.len() > MAX_SEARCH_TAGS {
            return Err(BadQuery(format!("a search may filter on at most {MAX_SEARCH_TAGS} tags")));
        }
    }
    if let (Some(lookback), None) = (lookback, query.start_us) {
        query.start_us = Some(query.end_us.unwrap_or_else(now_us).saturating_sub(lookback));
    }
    Ok(query)
}

/// A trace id as a query names it: up to 32 hex digits, zero-padded to 32 (as 64-bit ids are
/// stored), lower case.
pub(crate) fn trace_id_param(text: &str) -> Option<String> {
    let id = text.trim().to_ascii_lowercase();
    (!id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| format!("{id:0>32}"))
}

/// `GET /api/traces?traceID=A&traceID=B`, as Jaeger answers it: exactly those traces (no other
/// parameter applies), in the order asked, and an `errors` entry `{"msg": "trace not found",
/// "traceID"}` for each that is not stored; at most [`Limits::max_traces_per_search`] ids.
async fn traces_by_id(api: &QueryApi, asked: Vec<&str>) -> Response {
    let max = usize::try_from(api.limits.max_traces_per_search).unwrap_or(0);
    if asked.len() > max {
        return failure(StatusCode::BAD_REQUEST, &format!("at most {max} `traceID`s in one query"));
    }
    let mut ids: Vec<String> = Vec::with_capacity(asked.len());
    for text in asked {
        let Some(id) = trace_id_param(text) else {
            return failure(StatusCode::BAD_REQUEST, "a `traceID` is up to 32 hex digits");
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let spans = match api.store.spans_of(&ids, api.limits.max_answer_bytes).await {
        Ok(spans) => spans,
        Err(QueryError::TooLarge { max_bytes }) => {
            return failure(
                StatusCode::BAD_REQUEST,
                &format!("those traces would make an answer of more than {max_bytes} bytes; ask for fewer"),
            );
        }
        Err(e) => return internal(e),
    };
    let traces = traces_json(&spans, &ids);
    let found: Vec<&str> = traces.iter().filter_map(|t| t["traceID"].as_str()).collect();
    let missing: Vec<Value> = ids
        .iter()
        .filter(|id| !found.contains(&id.as_str()))
        .map(|id| json!({ "msg": "trace not found", "traceID": id }))
        .collect();
    let total = traces.len();
    let errors = if missing.is_empty() { Value::Null } else { Value::Array(missing) };
    Json(json!({ "data": traces, "total": total, "limit": 0, "offset": 0, "errors": errors })).into_response()
}

/// `GET /api/traces?service=&operation=&tags=&minDuration=&maxDuration=&start=&end=&limit=`, or
/// `?traceID=` ([`traces_by_id`]).
pub async fn find_traces(State(api): Api, Query(params): Query<Vec<(String, String)>>) -> Response {
    let asked: Vec<&str> = params.iter().filter(|(key, _)| key == "traceID").map(|(_, v)| v.as_str()).collect();
    if !asked.is_empty() {
        return traces_by_id(&api, asked).await;
    }
    let query = match trace_query(&params, &api.limits) {
        Ok(query) => query,
        Err(e) => return failure(StatusCode::BAD_REQUEST, &e.0),
    };
    let ids = match api.store.find_traces(&query).await {
        Ok(ids) => ids,
        Err(e) => return internal(e),
    };
    match api.store.spans_of(&ids, api.limits.max_answer_bytes).await {
        Ok(spans) => {
            let traces = traces_json(&spans, &ids);
            let total = traces.len();
            envelope(Value::Array(traces), total)
        }
        Err(QueryError::TooLarge { max_bytes }) => failure(
            StatusCode::BAD_REQUEST,
            &format!(
                "the {} traces found would make an answer of more than {max_bytes} bytes; ask for fewer (`limit`) or narrow the search",
                ids.len()
            ),
        ),
        Err(e) => internal(e),
    }
}

/// `GET /api/traces/{traceID}`.
pub async fn get_trace(State(api): Api, Path(trace_id): Path<String>) -> Response {
    let Some(id) = trace_id_param(&trace_id) else {
        return failure(StatusCode::BAD_REQUEST, "a trace id is up to 32 hex digits");
    };
    match api.store.spans_of(std::slice::from_ref(&id), api.limits.max_answer_bytes).await {
        Ok(spans) if spans.is_empty() => failure(StatusCode::NOT_FOUND, "trace not found"),
        Ok(spans) => envelope(Value::Array(traces_json(&spans, &[id])), 1),
        Err(QueryError::TooLarge { max_bytes }) => failure(
            StatusCode::BAD_REQUEST,
            &format!("trace {id} is too large to answer: its spans would make more than {max_bytes} bytes of JSON"),
        ),
        Err(e) => internal(e),
    }
}

/// `GET /api/dependencies?endTs=&lookback=` (milliseconds, as Jaeger takes them).
pub async fn dependencies(State(api): Api, Query(params): Query<HashMap<String, String>>) -> Response {
    let end_ms = params.get("endTs").and_then(|v| v.parse::<i64>().ok()).unwrap_or_else(|| now_us() / 1000);
    let lookback_ms = params.get("lookback").and_then(|v| v.parse::<i64>().ok()).unwrap_or(24 * 3600 * 1000);
    let since_us = end_ms.saturating_sub(lookback_ms).saturating_mul(1000);
    match api.store.dependencies(since_us, api.limits.max_answer_bytes).await {
        Ok(edges) => {
            let list: Vec<Value> =
                edges.iter().map(|d| json!({ "parent": d.parent, "child": d.child, "callCount": d.calls })).collect();
            let total = list.len();
            envelope(Value::Array(list), total)
        }
        Err(e) => internal(e),
    }
}

/// Jaeger UI's upload (`POST /api/transform`) once decoded: the spans as the v1 traces the UI
/// shows, grouped by trace in the order first seen, or why not. The answer is priced before it is
/// built, each trace's resources included (a resource is repeated in every trace that has it), so
/// an upload cannot make an answer larger than [`Limits::max_answer_bytes`].
pub fn transformed(spans: &[StoredSpan], limits: &Limits) -> Result<Value, String> {
    let mut cost = 0usize;
    let mut pairs = std::collections::HashSet::new();
    let mut order: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for span in spans {
        cost = cost.saturating_add(crate::span_store::answer_cost(span));
        if pairs.insert((span.trace_id, Arc::as_ptr(&span.resource))) {
            cost = cost.saturating_add(64).saturating_add(span.resource.heap_bytes().saturating_mul(2));
        }
        if seen.insert(span.trace_id) {
            order.push(hex(&span.trace_id));
        }
    }
    if cost > limits.max_answer_bytes {
        return Err(format!("the upload would make an answer of more than {} bytes", limits.max_answer_bytes));
    }
    let traces = traces_json(spans, &order);
    let total = traces.len();
    Ok(json!({ "data": traces, "total": total, "limit": 0, "offset": 0, "errors": null }))
}

/// Jaeger's v1 error answer, for handlers outside this module.
pub fn error_answer(status: StatusCode, message: &str) -> Response {
    failure(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, resource: &Arc<StoredResource>) -> StoredSpan {
        StoredSpan {
            trace_id: [trace; 16],
            span_id: [trace; 8],
            parent_span_id: None,
            resource: resource.clone(),
            name: "op".into(),
            kind: 2,
            start_us: 1,
            duration_us: 1,
            status_code: 0,
            status_message: String::new(),
            attributes: "{}".into(),
            events: "[]".into(),
            links: "[]".into(),
        }
    }

    #[test]
    fn an_upload_is_priced_with_the_resource_every_trace_repeats() {
        // One 100 KB resource shared by 200 traces: 200 copies of it in the answer.
        let resource = Arc::new(StoredResource {
            service: "s".into(),
            attributes: format!("{{\"k\":\"{}\"}}", "x".repeat(100_000)),
        });
        let spans: Vec<StoredSpan> = (1..=200).map(|t| span(t, &resource)).collect();
        let limits = Limits { max_answer_bytes: 10 << 20, ..Limits::default() };
        assert!(transformed(&spans, &limits).is_err(), "200 × 2 × 100 KB is over 10 MiB");
        let few = &spans[..20];
        let answer = transformed(few, &limits).expect("20 copies fit");
        assert_eq!(answer["data"].as_array().map(Vec::len), Some(20));
        assert_eq!(answer["data"][0]["processes"]["p1"]["serviceName"], "s");
    }

    #[test]
    fn durations_read_as_go_reads_them() {
        for (text, micros) in [
            ("0", Some(0)),
            ("+2s", Some(2_000_000)),
            ("1m30s", Some(90_000_000)),
            ("1.5ms", Some(1500)),
            ("200µs", Some(200)),
        ] {
            assert_eq!(parse_duration(text), micros, "{text}");
        }
        for text in ["", "-1s", "1", "1x", "ms", "1e3s", "1.2.3s", "99999999999999999999h"] {
            assert_eq!(parse_duration(text), None, "{text}");
        }
    }
}
