//! Spans in SQLite: indexed by trace id, service, operation, time and duration; attributes kept
//! as JSON (queried with `json_extract`); bounded by age and count.

use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

/// A span as stored.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct StoredSpan {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The resource's `service.name`.
    pub service: String,
    /// The span name (Jaeger's operation).
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Start, microseconds since the Unix epoch.
    pub start_us: i64,
    /// Duration in microseconds.
    pub duration_us: i64,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    /// Status description.
    pub status_message: String,
    /// Span attributes, a JSON object.
    pub attributes: String,
    /// Resource attributes, a JSON object.
    pub resource: String,
    /// Events, a JSON array of `{time_us, name, attributes}`.
    pub events: String,
    /// Links, a JSON array of `{trace_id, span_id}`.
    pub links: String,
}

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

/// The span database.
#[derive(Clone)]
pub struct SpanStore {
    pool: SqlitePool,
}

const COLUMNS: &str = "trace_id, span_id, parent_span_id, service, name, kind, start_us, duration_us, status_code, status_message, attributes, resource, events, links";

impl SpanStore {
    /// Opens (creating and migrating) the database at `path`; `:memory:` for a throwaway one.
    pub async fn open(path: &str) -> Result<Self, String> {
        let options = if path == ":memory:" {
            SqliteConnectOptions::new().in_memory(true)
        } else {
            if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| format!("span database directory: {e}"))?;
            }
            SqliteConnectOptions::new().filename(path).create_if_missing(true).journal_mode(SqliteJournalMode::Wal)
        };
        // One writer at a time is SQLite's rule; readers share the WAL.
        let pool = SqlitePoolOptions::new()
            .max_connections(if path == ":memory:" { 1 } else { 4 })
            .connect_with(options)
            .await
            .map_err(|e| format!("span database {path}: {e}"))?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| format!("span database migration: {e}"))?;
        Ok(Self { pool })
    }

    /// Stores `spans` in one transaction (a span sent twice is kept once).
    pub async fn insert(&self, spans: &[StoredSpan]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for chunk in spans.chunks(500) {
            let mut insert = QueryBuilder::<Sqlite>::new(format!("INSERT OR REPLACE INTO spans ({COLUMNS}) "));
            insert.push_values(chunk, |mut row, s| {
                row.push_bind(&s.trace_id)
                    .push_bind(&s.span_id)
                    .push_bind(&s.parent_span_id)
                    .push_bind(&s.service)
                    .push_bind(&s.name)
                    .push_bind(s.kind)
                    .push_bind(s.start_us)
                    .push_bind(s.duration_us)
                    .push_bind(s.status_code)
                    .push_bind(&s.status_message)
                    .push_bind(&s.attributes)
                    .push_bind(&s.resource)
                    .push_bind(&s.events)
                    .push_bind(&s.links);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Every service seen, sorted.
    pub async fn services(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT DISTINCT service FROM spans ORDER BY service").fetch_all(&self.pool).await
    }

    /// The operations (span names) of `service` with their kinds, sorted.
    pub async fn operations(&self, service: &str) -> Result<Vec<(String, i32)>, sqlx::Error> {
        let rows = sqlx::query("SELECT DISTINCT name, kind FROM spans WHERE service = ? ORDER BY name, kind")
            .bind(service)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("name")?, r.try_get("kind")?))).collect()
    }

    /// The ids of the traces that match, most recent first.
    pub async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<String>, sqlx::Error> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT trace_id, MAX(start_us) AS latest FROM spans WHERE 1 = 1");
        if let Some(service) = &query.service {
            sql.push(" AND service = ").push_bind(service.clone());
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
            sql.push(" OR CAST(json_extract(resource, ").push_bind(path).push(") AS TEXT) = ");
            sql.push_bind(value.clone()).push(")");
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
        rows.iter().map(|r| r.try_get("trace_id")).collect()
    }

    /// Every span of the traces `ids`, in start order.
    pub async fn spans_of(&self, ids: &[String]) -> Result<Vec<StoredSpan>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM spans WHERE trace_id IN ("));
        let mut list = sql.separated(", ");
        for id in ids {
            list.push_bind(id.clone());
        }
        sql.push(") ORDER BY start_us, span_id");
        sql.build_query_as::<StoredSpan>().fetch_all(&self.pool).await
    }

    /// Service-to-service calls among spans that started at or after `since_us`.
    pub async fn dependencies(&self, since_us: i64) -> Result<Vec<Dependency>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT p.service AS parent, c.service AS child, COUNT(*) AS calls FROM spans c \
             JOIN spans p ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id \
             WHERE c.service <> p.service AND c.start_us >= ? GROUP BY p.service, c.service ORDER BY parent, child",
        )
        .bind(since_us)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Dependency { parent: r.try_get("parent")?, child: r.try_get("child")?, calls: r.try_get("calls")? })
            })
            .collect()
    }

    /// How many spans are stored.
    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM spans").fetch_one(&self.pool).await
    }

    /// Drops spans older than `before_us`, then the oldest beyond `max_spans`. Returns how many.
    pub async fn prune(&self, before_us: i64, max_spans: i64) -> Result<u64, sqlx::Error> {
        let old = sqlx::query("DELETE FROM spans WHERE start_us < ?").bind(before_us).execute(&self.pool).await?;
        let excess = sqlx::query(
            "DELETE FROM spans WHERE rowid IN (SELECT rowid FROM spans ORDER BY start_us DESC LIMIT -1 OFFSET ?)",
        )
        .bind(max_spans.max(0))
        .execute(&self.pool)
        .await?;
        Ok(old.rows_affected() + excess.rows_affected())
    }
}
