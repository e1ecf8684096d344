//! Reading spans back, within a size bound: rows are streamed and priced at the JSON they become,
//! and a read stops at the first row over the bound instead of loading a huge answer. Lists
//! (services, operations, dependencies) are cut at [`MAX_LIST_ENTRIES`] entries or the byte bound.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{SpanStore, StoredResource, StoredSpan, hex, unhex};
use crate::limits::MAX_LIST_ENTRIES;

/// A trace search (Jaeger's `/api/traces` parameters).
#[derive(Clone, Debug, Default)]
pub struct TraceQuery {
    /// Some span of the trace is of this service.
    pub service: Option<String>,
    /// ... with this name.
    pub operation: Option<String>,
    /// ... with these attributes (`error=true` matches error status).
    pub tags: Vec<(String, String)>,
    /// ... lasting at least this long (µs).
    pub min_duration_us: Option<i64>,
    /// ... at most this long (µs).
    pub max_duration_us: Option<i64>,
    /// ... starting at or after (µs).
    pub start_us: Option<i64>,
    /// ... starting at or before (µs).
    pub end_us: Option<i64>,
    /// Most traces returned.
    pub limit: i64,
}

/// A service-to-service edge: `parent` called `child` this many times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    /// The calling service.
    pub parent: String,
    /// The called service.
    pub child: String,
    /// How many spans of `child` have a parent span of `parent`.
    pub calls: i64,
}

/// What a trace is at a glance (Jaeger's `TraceSummary`), computed in the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// Hex, 32 digits.
    pub trace_id: String,
    /// The service and name of the root span (no parent; the earliest if several), if any.
    pub root: Option<(String, String)>,
    /// The earliest span start (µs since the epoch).
    pub min_start_us: i64,
    /// The latest span end (µs since the epoch).
    pub max_end_us: i64,
    /// Spans stored.
    pub span_count: i64,
    /// Spans with error status.
    pub error_span_count: i64,
    /// Spans whose parent is not stored.
    pub orphan_span_count: i64,
    /// Per service, by name: spans and error spans.
    pub services: Vec<ServiceSummary>,
}

/// One service's part of a trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSummary {
    /// `service.name`.
    pub name: String,
    /// Spans of the service in the trace.
    pub span_count: i64,
    /// Of those, with error status.
    pub error_span_count: i64,
}

/// Why a read returned nothing.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The database failed.
    #[error("span query failed: {0}")]
    Database(#[from] sqlx::Error),
    /// The answer would be larger than the caller allows.
    #[error("the answer would exceed {max_bytes} bytes")]
    TooLarge {
        /// The bound, bytes of JSON.
        max_bytes: usize,
    },
}

/// What a span adds to a Jaeger answer besides its text: ids, references, the kind and status
/// tags, keys and punctuation.
const SPAN_JSON_OVERHEAD: usize = 384;
/// What one service entry of a trace summary adds to the answer besides its name (and, at most
/// once per trace, the trace's own fields).
const SUMMARY_ENTRY_JSON: usize = 320;
/// Parameters per `IN (...)` list: well below SQLite's 32,766.
const IN_CHUNK: usize = 500;

/// The Jaeger JSON a stored span becomes, priced before it is built: text fields once, and the JSON
/// ones twice (each attribute becomes a `{"key", "type", "value"}` object).
pub fn answer_cost(span: &StoredSpan) -> usize {
    SPAN_JSON_OVERHEAD
        + span.name.len()
        + span.status_message.len()
        + 2 * (span.attributes.len() + span.events.len() + span.links.len())
}

fn fixed<const N: usize>(bytes: Vec<u8>) -> Result<[u8; N], sqlx::Error> {
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| sqlx::Error::Decode(format!("an id of {} bytes", bytes.len()).into()))
}

/// A span row (its resource still a row id).
fn span_row(row: &SqliteRow, placeholder: &Arc<StoredResource>) -> Result<(StoredSpan, i64), sqlx::Error> {
    let parent: Option<Vec<u8>> = row.try_get("parent_span_id")?;
    let span = StoredSpan {
        trace_id: fixed(row.try_get("trace_id")?)?,
        span_id: fixed(row.try_get("span_id")?)?,
        parent_span_id: parent.map(fixed).transpose()?,
        resource: placeholder.clone(),
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        start_us: row.try_get("start_us")?,
        duration_us: row.try_get("duration_us")?,
        status_code: row.try_get("status_code")?,
        status_message: row.try_get("status_message")?,
        attributes: row.try_get("attributes")?,
        events: row.try_get("events")?,
        links: row.try_get("links")?,
    };
    Ok((span, row.try_get("resource_id")?))
}

impl SpanStore {
    /// Every service with spans, sorted (at most [`MAX_LIST_ENTRIES`], and `max_bytes` of names).
    pub async fn services(&self, max_bytes: usize) -> Result<Vec<String>, sqlx::Error> {
        let mut rows = sqlx::query(
            "SELECT DISTINCT r.service AS service FROM resources r \
             WHERE EXISTS (SELECT 1 FROM spans s WHERE s.resource_id = r.id) ORDER BY r.service LIMIT ?",
        )
        .bind(MAX_LIST_ENTRIES)
        .fetch(&self.pool);
        let mut services = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.try_next().await? {
            let service: String = row.try_get("service")?;
            bytes += service.len() + 4;
            if bytes > max_bytes {
                tracing::warn!(listed = services.len(), "the service list is cut at {max_bytes} bytes");
                break;
            }
            services.push(service);
        }
        Ok(services)
    }

    /// The operations (span names) of `service` with their kinds, sorted (at most
    /// [`MAX_LIST_ENTRIES`], and `max_bytes` of names).
    pub async fn operations(&self, service: &str, max_bytes: usize) -> Result<Vec<(String, i32)>, sqlx::Error> {
        let mut rows = sqlx::query(
            "SELECT DISTINCT name, kind FROM spans \
             WHERE resource_id IN (SELECT id FROM resources WHERE service = ?) ORDER BY name, kind LIMIT ?",
        )
        .bind(service)
        .bind(MAX_LIST_ENTRIES)
        .fetch(&self.pool);
        let mut operations = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.try_next().await? {
            let name: String = row.try_get("name")?;
            bytes += name.len() + 32;
            if bytes > max_bytes {
                tracing::warn!(service, listed = operations.len(), "the operation list is cut at {max_bytes} bytes");
                break;
            }
            operations.push((name, row.try_get("kind")?));
        }
        Ok(operations)
    }

    /// The ids (hex) of the traces that match, most recent first.
    pub async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<String>, sqlx::Error> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT trace_id, MAX(start_us) AS latest FROM spans WHERE 1 = 1");
        if let Some(service) = &query.service {
            sql.push(" AND resource_id IN (SELECT id FROM resources WHERE service = ")
                .push_bind(service.clone())
                .push(")");
        }
        if let Some(operation) = &query.operation {
            sql.push(" AND name = ").push_bind(operation.clone());
        }
        for (key, value) in &query.tags {
            if key == "error" {
                sql.push(if value == "true" { " AND status_code = 2" } else { " AND status_code <> 2" });
                continue;
            }
            let path = format!("$.\"{}\"", key.replace('"', ""));
            sql.push(" AND (CAST(json_extract(attributes, ").push_bind(path.clone()).push(") AS TEXT) = ");
            sql.push_bind(value.clone());
            sql.push(" OR resource_id IN (SELECT id FROM resources WHERE CAST(json_extract(resources.attributes, ");
            sql.push_bind(path).push(") AS TEXT) = ").push_bind(value.clone()).push("))");
        }
        if let Some(min) = query.min_duration_us {
            sql.push(" AND duration_us >= ").push_bind(min);
        }
        if let Some(max) = query.max_duration_us {
            sql.push(" AND duration_us <= ").push_bind(max);
        }
        if let Some(start) = query.start_us {
            sql.push(" AND start_us >= ").push_bind(start);
        }
        if let Some(end) = query.end_us {
            sql.push(" AND start_us <= ").push_bind(end);
        }
        sql.push(" GROUP BY trace_id ORDER BY latest DESC LIMIT ").push_bind(query.limit.max(1));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(|r| r.try_get::<Vec<u8>, _>("trace_id").map(|id| hex(&id))).collect()
    }

    /// Every span of the traces `ids` (hex; others are skipped), in start order, unless their
    /// Jaeger JSON would exceed `max_bytes`; the read stops at the first span over.
    pub async fn spans_of(&self, ids: &[String], max_bytes: usize) -> Result<Vec<StoredSpan>, QueryError> {
        let ids: Vec<Vec<u8>> = ids.iter().filter_map(|id| unhex(id)).filter(|id| id.len() == 16).collect();
        let mut spans = Vec::new();
        let mut resource_of = Vec::new();
        let mut bytes = 0usize;
        let placeholder = Arc::new(StoredResource { service: String::new(), attributes: String::new() });
        for chunk in ids.chunks(IN_CHUNK) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "SELECT trace_id, span_id, parent_span_id, resource_id, name, kind, start_us, duration_us, \
                 status_code, status_message, attributes, events, links FROM spans WHERE trace_id IN (",
            );
            let mut list = sql.separated(", ");
            for id in chunk {
                list.push_bind(id.as_slice());
            }
            sql.push(")");
            let mut rows = sql.build().fetch(&self.pool);
            while let Some(row) = rows.try_next().await? {
                let (span, resource) = span_row(&row, &placeholder)?;
                bytes = bytes.saturating_add(answer_cost(&span));
                if bytes > max_bytes {
                    return Err(QueryError::TooLarge { max_bytes });
                }
                spans.push(span);
                resource_of.push(resource);
            }
        }
        // Each trace lists the resources of its spans once (Jaeger's `processes`): price those
        // from their lengths before reading any.
        let pairs: HashSet<([u8; 16], i64)> = spans.iter().zip(&resource_of).map(|(s, r)| (s.trace_id, *r)).collect();
        let distinct: Vec<i64> = pairs.iter().map(|(_, r)| *r).collect::<HashSet<_>>().into_iter().collect();
        let mut lengths: HashMap<i64, usize> = HashMap::new();
        for chunk in distinct.chunks(IN_CHUNK) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "SELECT id, LENGTH(service) + LENGTH(attributes) AS length FROM resources WHERE id IN (",
            );
            let mut list = sql.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            sql.push(")");
            for row in sql.build().fetch_all(&self.pool).await? {
                let length: i64 = row.try_get("length")?;
                lengths.insert(row.try_get("id")?, usize::try_from(length).unwrap_or(usize::MAX));
            }
        }
        for (_, resource) in &pairs {
            let length = lengths.get(resource).copied().unwrap_or(0);
            bytes = bytes.saturating_add(64).saturating_add(length.saturating_mul(2));
            if bytes > max_bytes {
                return Err(QueryError::TooLarge { max_bytes });
            }
        }
        let mut resources: HashMap<i64, Arc<StoredResource>> = HashMap::new();
        for chunk in distinct.chunks(IN_CHUNK) {
            let mut sql = QueryBuilder::<Sqlite>::new("SELECT id, service, attributes FROM resources WHERE id IN (");
            let mut list = sql.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            sql.push(")");
            for row in sql.build().fetch_all(&self.pool).await? {
                let resource =
                    StoredResource { service: row.try_get("service")?, attributes: row.try_get("attributes")? };
                resources.insert(row.try_get("id")?, Arc::new(resource));
            }
        }
        for (span, resource) in spans.iter_mut().zip(&resource_of) {
            if let Some(resource) = resources.get(resource) {
                span.resource = resource.clone();
            }
        }
        spans.sort_by_key(|s| (s.start_us, s.span_id));
        Ok(spans)
    }

    /// The summaries of the traces `ids` (hex), in that order; ids not stored are skipped. Each
    /// is a few aggregates and one entry per service, priced as it is read: a trace of very many
    /// services cannot make the answer exceed `max_bytes`.
    pub async fn summaries(&self, ids: &[String], max_bytes: usize) -> Result<Vec<TraceSummary>, QueryError> {
        let mut bytes = 0usize;
        let binary: Vec<Vec<u8>> = ids.iter().filter_map(|id| unhex(id)).filter(|id| id.len() == 16).collect();
        let mut by_id: HashMap<String, TraceSummary> = HashMap::new();
        for chunk in binary.chunks(IN_CHUNK) {
            let in_list = |sql: &mut QueryBuilder<'_, Sqlite>| {
                let mut list = sql.separated(", ");
                for id in chunk {
                    list.push_bind(id.clone());
                }
                sql.push(")");
            };
            let mut sql = QueryBuilder::<Sqlite>::new(
                "SELECT s.trace_id AS trace_id, r.service AS service, COUNT(*) AS spans, \
                 SUM(s.status_code = 2) AS errors, MIN(s.start_us) AS first, MAX(s.start_us + s.duration_us) AS last \
                 FROM spans s JOIN resources r ON r.id = s.resource_id WHERE s.trace_id IN (",
            );
            in_list(&mut sql);
            sql.push(" GROUP BY s.trace_id, r.service ORDER BY r.service");
            let mut rows = sql.build().fetch(&self.pool);
            while let Some(row) = rows.try_next().await? {
                let id = hex(&row.try_get::<Vec<u8>, _>("trace_id")?);
                let service = ServiceSummary {
                    name: row.try_get("service")?,
                    span_count: row.try_get("spans")?,
                    error_span_count: row.try_get("errors")?,
                };
                bytes = bytes.saturating_add(service.name.len() + SUMMARY_ENTRY_JSON);
                if bytes > max_bytes {
                    return Err(QueryError::TooLarge { max_bytes });
                }
                let (first, last): (i64, i64) = (row.try_get("first")?, row.try_get("last")?);
                let summary = by_id.entry(id.clone()).or_insert_with(|| TraceSummary {
                    trace_id: id,
                    min_start_us: first,
                    max_end_us: last,
                    ..TraceSummary::default()
                });
                summary.min_start_us = summary.min_start_us.min(first);
                summary.max_end_us = summary.max_end_us.max(last);
                summary.span_count += service.span_count;
                summary.error_span_count += service.error_span_count;
                summary.services.push(service);
            }
            let mut sql = QueryBuilder::<Sqlite>::new(
                "SELECT s.trace_id AS trace_id, r.service AS service, s.name AS name FROM spans s \
                 JOIN resources r ON r.id = s.resource_id WHERE s.parent_span_id IS NULL AND s.trace_id IN (",
            );
            in_list(&mut sql);
            sql.push(" ORDER BY s.start_us DESC");
            // Latest first, so the earliest root is the one left.
            for row in sql.build().fetch_all(&self.pool).await? {
                if let Some(summary) = by_id.get_mut(&hex(&row.try_get::<Vec<u8>, _>("trace_id")?)) {
                    summary.root = Some((row.try_get("service")?, row.try_get("name")?));
                }
            }
            let mut sql = QueryBuilder::<Sqlite>::new(
                "SELECT s.trace_id AS trace_id, COUNT(*) AS orphans FROM spans s WHERE s.parent_span_id IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM spans p WHERE p.trace_id = s.trace_id AND p.span_id = s.parent_span_id) \
                 AND s.trace_id IN (",
            );
            in_list(&mut sql);
            sql.push(" GROUP BY s.trace_id");
            for row in sql.build().fetch_all(&self.pool).await? {
                if let Some(summary) = by_id.get_mut(&hex(&row.try_get::<Vec<u8>, _>("trace_id")?)) {
                    summary.orphan_span_count = row.try_get("orphans")?;
                }
            }
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// Service-to-service calls among spans that started at or after `since_us` (at most
    /// [`MAX_LIST_ENTRIES`] edges, and `max_bytes` of names).
    pub async fn dependencies(&self, since_us: i64, max_bytes: usize) -> Result<Vec<Dependency>, sqlx::Error> {
        let mut rows = sqlx::query(
            "SELECT rp.service AS parent, rc.service AS child, COUNT(*) AS calls FROM spans c \
             JOIN spans p ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id \
             JOIN resources rc ON rc.id = c.resource_id JOIN resources rp ON rp.id = p.resource_id \
             WHERE rc.service <> rp.service AND c.start_us >= ? \
             GROUP BY rp.service, rc.service ORDER BY parent, child LIMIT ?",
        )
        .bind(since_us)
        .bind(MAX_LIST_ENTRIES)
        .fetch(&self.pool);
        let mut edges = Vec::new();
        let mut bytes = 0;
        while let Some(r) = rows.try_next().await? {
            let edge =
                Dependency { parent: r.try_get("parent")?, child: r.try_get("child")?, calls: r.try_get("calls")? };
            bytes += edge.parent.len() + edge.child.len() + 48;
            if bytes > max_bytes {
                tracing::warn!(listed = edges.len(), "the dependency list is cut at {max_bytes} bytes");
                break;
            }
            edges.push(edge);
        }
        Ok(edges)
    }
}
