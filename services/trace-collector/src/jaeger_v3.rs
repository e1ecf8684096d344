//! Jaeger's v3 HTTP query API (`/api/v3/services`, `/api/v3/operations`, `/api/v3/traces/{id}`,
//! `/api/v3/traces`, `/api/v3/trace-summaries`), as Jaeger's query service serves it through its
//! HTTP gateway: what Jaeger UI 2.15 and later asks for services and operations, 2.19 and later
//! for its search, and Grafana's Jaeger data source with its gRPC-endpoint option.
//!
//! The contract (Jaeger's `api_v3` protos and its gateway):
//! - every route is `GET`; parameters are `query.*` in camelCase, with the older snake_case
//!   spellings accepted too (Grafana sends those);
//! - a search needs `query.startTimeMin` and `query.startTimeMax` (RFC 3339), takes Go durations
//!   (`query.durationMin=1.5ms`), attributes as a JSON object (`query.attributes={"error":"true"}`)
//!   and `query.searchDepth` (default 100, capped at [`Limits::max_traces_per_search`]);
//! - traces are answered as one OTLP/JSON document `{"result": {"resourceSpans": [...]}}`, and
//!   404 when there are none; summaries are `{"summaries": [...]}`, empty when none match;
//! - errors are `{"error": {"httpCode": 400, "message": "..."}}`. A message names the parameter
//!   as the caller spelled it and never repeats its value.
//!
//! 64-bit numbers (times in ns, integer attribute values) are decimal strings, as protobuf's
//! JSON mapping writes them; fields at their default value are left out, as Jaeger leaves them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::jaeger_api::{QueryApi, kind_name, parse_duration, trace_id_param};
use crate::limits::{Limits, MAX_SEARCH_TAGS};
use crate::span_store::{QueryError, StoredResource, StoredSpan, TraceQuery, TraceSummary, hex};

/// `query.searchDepth` when the caller does not say (Jaeger's default).
const DEFAULT_SEARCH_DEPTH: i64 = 100;
/// How much larger OTLP/JSON is than the v1 answer the store prices a span at: each attribute is
/// wrapped twice (`{"key": ..., "value": {"stringValue": ...}}`), so the read's budget is this
/// much smaller for the same bound on the answer.
const OTLP_JSON_FACTOR: usize = 3;

type Api = State<Arc<QueryApi>>;
type Params = Query<Vec<(String, String)>>;

/// A v3 answer that is an error, in Jaeger's gateway shape.
fn failure(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": { "httpCode": status.as_u16(), "message": message } }))).into_response()
}

/// An error answer for a v3 route: what the routes in front of the handlers (admission) answer.
pub fn error_answer(status: StatusCode, message: &str) -> Response {
    failure(status, message)
}

fn bad(message: String) -> Response {
    failure(StatusCode::BAD_REQUEST, &message)
}

fn not_found() -> Response {
    failure(StatusCode::NOT_FOUND, "No traces found")
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!("span query (v3): {error}");
    failure(StatusCode::INTERNAL_SERVER_ERROR, "span query failed")
}

fn too_large(max_bytes: usize) -> Response {
    bad(format!("the traces found would make an answer of more than {max_bytes} bytes; narrow the search"))
}

/// The first value of the parameter `names` spell (the canonical name first, then its aliases),
/// with the name the caller used.
fn param<'a>(params: &'a [(String, String)], names: &[&'static str]) -> Option<(&'static str, &'a str)> {
    names.iter().find_map(|name| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| (*name, value.trim()))
            .filter(|(_, v)| !v.is_empty())
    })
}

/// An RFC 3339 time (`2026-12-02T10:00:00.000Z`, `...+01:00`) in µs since the epoch. A `+` sent
/// unencoded arrives as a space (Grafana sends times that way), so a space is read as `+`.
fn rfc3339_micros(text: &str) -> Option<i64> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| t.timestamp_micros());
    parse(text).or_else(|| parse(&text.replace(' ', "+")))
}

/// The search the `query.*` parameters ask for.
pub fn v3_query(params: &[(String, String)], limits: &Limits) -> Result<TraceQuery, String> {
    let malformed = |name: &str, why: &str| format!("malformed parameter {name}: {why}");
    let text = |names: &[&'static str]| param(params, names).map(|(_, value)| value.to_owned());
    let mut query = TraceQuery {
        service: text(&["query.serviceName", "query.service_name"]),
        operation: text(&["query.operationName", "query.operation_name"]),
        ..TraceQuery::default()
    };
    let time = |names: &[&'static str]| -> Result<Option<i64>, String> {
        match param(params, names) {
            None => Ok(None),
            Some((name, value)) => rfc3339_micros(value)
                .map(Some)
                .ok_or_else(|| malformed(name, "not an RFC 3339 time like 2026-12-02T10:00:00Z")),
        }
    };
    let (Some(min), Some(max)) = (
        time(&["query.startTimeMin", "query.start_time_min"])?,
        time(&["query.startTimeMax", "query.start_time_max"])?,
    ) else {
        return Err("query.startTimeMin and query.startTimeMax are required".into());
    };
    if min >= max {
        return Err("query.startTimeMin must be before query.startTimeMax".into());
    }
    (query.start_us, query.end_us) = (Some(min), Some(max));
    let duration = |names: &[&'static str]| -> Result<Option<i64>, String> {
        match param(params, names) {
            None => Ok(None),
            Some((name, value)) => {
                parse_duration(value).map(Some).ok_or_else(|| malformed(name, "not a duration like 1.5ms or 2s"))
            }
        }
    };
    query.min_duration_us = duration(&["query.durationMin", "query.duration_min"])?;
    query.max_duration_us = duration(&["query.durationMax", "query.duration_max"])?;
    query.limit = match param(params, &["query.searchDepth", "query.search_depth", "query.num_traces"]) {
        None => DEFAULT_SEARCH_DEPTH,
        Some((name, value)) => value.parse::<i64>().map_err(|_| malformed(name, "not a whole number"))?,
    };
    if query.limit < 1 {
        return Err("query.searchDepth must be at least 1".into());
    }
    // A depth is how far to look, not a promise: beyond the cap the search looks as far as it may.
    query.limit = query.limit.min(limits.max_traces_per_search);
    // Go's `strconv.ParseBool` forms.
    const BOOLS: [&str; 12] = ["1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"];
    if let Some((name, value)) = param(params, &["query.rawTraces", "query.raw_traces"])
        && !BOOLS.contains(&value)
    {
        return Err(malformed(name, "not true or false"));
    }
    if let Some((name, value)) = param(params, &["query.attributes"]) {
        let attributes: Map<String, Value> =
            serde_json::from_str(value).map_err(|_| malformed(name, "not a JSON object of names to values"))?;
        if attributes.len() > MAX_SEARCH_TAGS {
            return Err(format!("a search may filter on at most {MAX_SEARCH_TAGS} attributes"));
        }
        for (key, value) in attributes {
            if !crate::jaeger_api::searchable_key(&key) {
                return Err(malformed(name, "an attribute name has a quote, a backslash or a control character"));
            }
            query.tags.push((key, value.as_str().map_or_else(|| value.to_string(), str::to_owned)));
        }
    }
    Ok(query)
}

/// `GET /api/v3/services`: `{"services": [...]}`, sorted, an empty list when there are none.
pub async fn services(State(api): Api) -> Response {
    match api.store.services(api.limits.max_answer_bytes).await {
        Ok(services) => Json(json!({ "services": services })).into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /api/v3/operations?service=&spanKind=`: `{"operations": [{"name", "spanKind"}]}`; a span
/// of unspecified kind is listed as `internal`, as Jaeger lists it.
pub async fn operations(State(api): Api, Query(params): Query<HashMap<String, String>>) -> Response {
    let service = params.get("service").map(String::as_str).unwrap_or_default();
    let wanted = params.get("spanKind").or_else(|| params.get("span_kind")).filter(|k| !k.is_empty());
    let operations = match api.store.operations(service, api.limits.max_answer_bytes).await {
        Ok(operations) => operations,
        Err(e) => return internal(e),
    };
    let mut list: Vec<(String, &'static str)> = Vec::with_capacity(operations.len());
    for (name, kind) in operations {
        let kind = if kind <= 1 { "internal" } else { kind_name(kind) };
        // Sorted by name and kind, so a repeat (kinds 0 and 1 are both `internal`) is the last one.
        if wanted.is_none_or(|w| w == kind) && list.last().is_none_or(|(n, k)| *n != name || *k != kind) {
            list.push((name, kind));
        }
    }
    let list: Vec<Value> = list.into_iter().map(|(name, kind)| json!({ "name": name, "spanKind": kind })).collect();
    Json(json!({ "operations": list })).into_response()
}

/// `GET /api/v3/traces/{trace_id}`: one trace as OTLP/JSON, 404 when no span of it is stored.
pub async fn get_trace(State(api): Api, Path(trace_id): Path<String>) -> Response {
    let Some(id) = trace_id_param(&trace_id) else {
        return bad("malformed parameter trace_id: up to 32 hex digits".into());
    };
    let max_bytes = api.limits.max_answer_bytes;
    match api.store.spans_of(std::slice::from_ref(&id), max_bytes / OTLP_JSON_FACTOR).await {
        Ok(spans) if spans.is_empty() => not_found(),
        Ok(spans) => Json(traces_document(&spans)).into_response(),
        Err(QueryError::TooLarge { .. }) => {
            bad(format!("trace {id} is too large to answer: its spans would make more than {max_bytes} bytes"))
        }
        Err(e) => internal(e),
    }
}

/// `GET /api/v3/traces?query.*`: the traces found, every span, as one OTLP/JSON document; 404
/// when none match (as Jaeger answers an empty search).
pub async fn find_traces(State(api): Api, Query(params): Params) -> Response {
    let query = match v3_query(&params, &api.limits) {
        Ok(query) => query,
        Err(message) => return bad(message),
    };
    let ids = match api.store.find_traces(&query).await {
        Ok(ids) => ids,
        Err(e) => return internal(e),
    };
    match api.store.spans_of(&ids, api.limits.max_answer_bytes / OTLP_JSON_FACTOR).await {
        Ok(spans) if spans.is_empty() => not_found(),
        Ok(spans) => Json(traces_document(&spans)).into_response(),
        Err(QueryError::TooLarge { .. }) => too_large(api.limits.max_answer_bytes),
        Err(e) => internal(e),
    }
}

/// `GET /api/v3/trace-summaries?query.*`: what Jaeger UI's search lists, most recent first;
/// `{"summaries": []}` when none match.
pub async fn trace_summaries(State(api): Api, Query(params): Params) -> Response {
    let query = match v3_query(&params, &api.limits) {
        Ok(query) => query,
        Err(message) => return bad(message),
    };
    let ids = match api.store.find_traces(&query).await {
        Ok(ids) => ids,
        Err(e) => return internal(e),
    };
    match api.store.summaries(&ids, api.limits.max_answer_bytes).await {
        Ok(summaries) => {
            let list: Vec<Value> = summaries.iter().map(summary_json).collect();
            Json(json!({ "summaries": list })).into_response()
        }
        Err(QueryError::TooLarge { max_bytes }) => too_large(max_bytes),
        Err(e) => internal(e),
    }
}

/// Inserts `key: value` unless `value` is the default (protobuf's JSON leaves defaults out).
fn put_count(object: &mut Map<String, Value>, key: &str, value: i64) {
    if value != 0 {
        object.insert(key.to_owned(), Value::from(value));
    }
}

fn nanos_text(micros: i64) -> String {
    micros.saturating_mul(1000).max(0).to_string()
}

fn summary_json(summary: &TraceSummary) -> Value {
    let mut object = Map::new();
    object.insert("traceId".into(), Value::from(summary.trace_id.as_str()));
    if let Some((service, operation)) = &summary.root {
        if !service.is_empty() {
            object.insert("rootServiceName".into(), Value::from(service.as_str()));
        }
        if !operation.is_empty() {
            object.insert("rootOperationName".into(), Value::from(operation.as_str()));
        }
    }
    object.insert("minStartTimeUnixNano".into(), Value::from(nanos_text(summary.min_start_us)));
    object.insert("maxEndTimeUnixNano".into(), Value::from(nanos_text(summary.max_end_us)));
    put_count(&mut object, "spanCount", summary.span_count);
    put_count(&mut object, "errorSpanCount", summary.error_span_count);
    put_count(&mut object, "orphanSpanCount", summary.orphan_span_count);
    let services: Vec<Value> = summary
        .services
        .iter()
        .map(|service| {
            let mut entry = Map::new();
            if !service.name.is_empty() {
                entry.insert("name".into(), Value::from(service.name.as_str()));
            }
            put_count(&mut entry, "spanCount", service.span_count);
            put_count(&mut entry, "errorSpanCount", service.error_span_count);
            Value::Object(entry)
        })
        .collect();
    object.insert("services".into(), Value::Array(services));
    Value::Object(object)
}

/// A stored attribute value as an OTLP/JSON `AnyValue`.
fn any_value(value: &Value) -> Value {
    match value {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) => match n.as_i64() {
            Some(i) => json!({ "intValue": i.to_string() }),
            None => json!({ "doubleValue": n.as_f64() }),
        },
        Value::Array(items) => json!({ "arrayValue": { "values": items.iter().map(any_value).collect::<Vec<_>>() } }),
        Value::Object(map) => json!({ "kvlistValue": { "values": key_values(map) } }),
        Value::Null => json!({}),
    }
}

fn key_values(map: &Map<String, Value>) -> Vec<Value> {
    map.iter().map(|(key, value)| json!({ "key": key, "value": any_value(value) })).collect()
}

fn stored_object(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

/// One stored span as an OTLP/JSON `Span`.
fn span_json(span: &StoredSpan) -> Value {
    let mut object = Map::new();
    object.insert("traceId".into(), Value::from(hex(&span.trace_id)));
    object.insert("spanId".into(), Value::from(hex(&span.span_id)));
    if let Some(parent) = &span.parent_span_id {
        object.insert("parentSpanId".into(), Value::from(hex(parent)));
    }
    object.insert("name".into(), Value::from(span.name.as_str()));
    if span.kind != 0 {
        object.insert("kind".into(), Value::from(span.kind));
    }
    object.insert("startTimeUnixNano".into(), Value::from(nanos_text(span.start_us)));
    object.insert("endTimeUnixNano".into(), Value::from(nanos_text(span.start_us.saturating_add(span.duration_us))));
    let attributes = key_values(&stored_object(&span.attributes));
    if !attributes.is_empty() {
        object.insert("attributes".into(), Value::Array(attributes));
    }
    if let Ok(Value::Array(events)) = serde_json::from_str::<Value>(&span.events)
        && !events.is_empty()
    {
        let events: Vec<Value> = events
            .iter()
            .map(|event| {
                let time = event["time_us"].as_i64().unwrap_or(0);
                let attributes = event["attributes"].as_object().map(key_values).unwrap_or_default();
                json!({ "timeUnixNano": nanos_text(time), "name": event["name"], "attributes": attributes })
            })
            .collect();
        object.insert("events".into(), Value::Array(events));
    }
    if let Ok(Value::Array(links)) = serde_json::from_str::<Value>(&span.links)
        && !links.is_empty()
    {
        let links: Vec<Value> =
            links.iter().map(|link| json!({ "traceId": link["trace_id"], "spanId": link["span_id"] })).collect();
        object.insert("links".into(), Value::Array(links));
    }
    let mut status = Map::new();
    if span.status_code != 0 {
        status.insert("code".into(), Value::from(span.status_code));
    }
    if !span.status_message.is_empty() {
        status.insert("message".into(), Value::from(span.status_message.as_str()));
    }
    object.insert("status".into(), Value::Object(status));
    Value::Object(object)
}

fn resource_json(resource: &StoredResource) -> Value {
    let mut attributes = stored_object(&resource.attributes);
    attributes.insert("service.name".into(), Value::from(resource.service.as_str()));
    json!({ "attributes": key_values(&attributes) })
}

/// Spans (of one trace or several) as Jaeger's `{"result": TracesData}`: one `resourceSpans`
/// entry per trace and resource, in the order first seen, each with one (unnamed) scope.
pub fn traces_document(spans: &[StoredSpan]) -> Value {
    let mut groups: Vec<(&Arc<StoredResource>, Vec<Value>)> = Vec::new();
    let mut index: HashMap<([u8; 16], *const StoredResource), usize> = HashMap::new();
    for span in spans {
        let key = (span.trace_id, Arc::as_ptr(&span.resource));
        let at = *index.entry(key).or_insert_with(|| {
            groups.push((&span.resource, Vec::new()));
            groups.len() - 1
        });
        if let Some((_, list)) = groups.get_mut(at) {
            list.push(span_json(span));
        }
    }
    let resource_spans: Vec<Value> = groups
        .into_iter()
        .map(|(resource, spans)| {
            json!({ "resource": resource_json(resource), "scopeSpans": [{ "scope": {}, "spans": spans }] })
        })
        .collect();
    json!({ "result": { "resourceSpans": resource_spans } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const WINDOW: [(&str, &str); 2] =
        [("query.startTimeMin", "2026-12-02T10:00:00.000Z"), ("query.startTimeMax", "2026-12-02T11:30:00+01:00")];

    #[test]
    fn a_search_takes_jaegers_parameter_forms_in_either_spelling() {
        let limits = Limits::default();
        let mut asked = params(&WINDOW);
        asked.extend(params(&[
            ("query.serviceName", "gallery-api"),
            ("query.operation_name", "GET /images"),
            ("query.durationMin", "1.5ms"),
            ("query.duration_max", "1m30s"),
            ("query.searchDepth", "20"),
            ("query.attributes", r#"{"error":"true","wasmtrace.filter.generation":"2"}"#),
        ]));
        let query = v3_query(&asked, &limits).expect("a valid search");
        assert_eq!(query.service.as_deref(), Some("gallery-api"));
        assert_eq!(query.operation.as_deref(), Some("GET /images"));
        assert_eq!(query.min_duration_us, Some(1500));
        assert_eq!(query.max_duration_us, Some(90_000_000));
        assert_eq!(query.limit, 20);
        // 11:30 at +01:00 is half an hour after 10:00 UTC.
        assert_eq!(query.end_us.zip(query.start_us).map(|(end, start)| end - start), Some(1_800_000_000));
        assert_eq!(query.tags.len(), 2);
        // Unencoded `+` arrives as a space.
        let spaced = params(&[
            ("query.start_time_min", "2026-12-02T10:00:00 00:00"),
            ("query.start_time_max", "2026-12-02T10:00:01Z"),
        ]);
        assert_eq!(v3_query(&spaced, &limits).map(|q| q.limit), Ok(DEFAULT_SEARCH_DEPTH));
    }

    #[test]
    fn bad_parameters_are_named_and_their_values_never_repeated() {
        let limits = Limits::default();
        let with = |extra: &[(&str, &str)]| {
            let mut asked = params(&WINDOW[..1]);
            asked.push(("query.startTimeMax".into(), "2026-12-02T12:00:00Z".into()));
            asked.extend(params(extra));
            v3_query(&asked, &limits)
        };
        assert_eq!(
            v3_query(&params(&WINDOW[..1]), &limits).err().as_deref(),
            Some("query.startTimeMin and query.startTimeMax are required")
        );
        let reversed =
            params(&[("query.startTimeMin", "2026-12-02T12:00:00Z"), ("query.startTimeMax", "2026-12-02T10:00:00Z")]);
        assert_eq!(
            v3_query(&reversed, &limits).err().as_deref(),
            Some("query.startTimeMin must be before query.startTimeMax")
        );
        for (name, value) in [
            ("query.duration_min", "<script>"),
            ("query.searchDepth", "<script>"),
            ("query.attributes", "<script>"),
            ("query.rawTraces", "<script>"),
        ] {
            let message = with(&[(name, value)]).expect_err("refused");
            assert!(message.starts_with(&format!("malformed parameter {name}: ")), "{message}");
            assert!(!message.contains("<script>"), "{message}");
        }
        assert_eq!(with(&[("query.searchDepth", "100000")]).map(|q| q.limit), Ok(limits.max_traces_per_search));
    }
}
