//! Spans in SQLite. Each resource is stored once (`resources`, keyed by a SHA-256 of its content)
//! and spans refer to it; ids are stored as their bytes. Spans are indexed by trace id, by
//! resource and operation, and by time; attributes are kept as JSON (queried with
//! `json_extract`); the store is bounded by age and count.
//!
//! Writing lives here; reading, with its answer-size bound, in `query.rs`.

mod query;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

pub use query::{Dependency, QueryError, ServiceSummary, TraceQuery, TraceSummary, answer_cost};

/// A resource as stored: the service it names and all its attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoredResource {
    /// The resource's `service.name` (`unknown_service` without one).
    pub service: String,
    /// Resource attributes, a JSON object.
    pub attributes: String,
}

impl StoredResource {
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.service.len() + self.attributes.len()
    }

    /// The key a resource is stored under: equal content, equal key.
    fn hash(&self) -> Vec<u8> {
        let mut hash = Sha256::new();
        // The service's length first, so no two ways of splitting the same bytes collide.
        hash.update((self.service.len() as u64).to_be_bytes());
        hash.update(self.service.as_bytes());
        hash.update(self.attributes.as_bytes());
        hash.finalize().to_vec()
    }
}

/// A span as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSpan {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The span id.
    pub span_id: [u8; 8],
    /// `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// The resource that produced it, shared by the spans of one resource.
    pub resource: Arc<StoredResource>,
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
    /// Events, a JSON array of `{time_us, name, attributes}`.
    pub events: String,
    /// Links, a JSON array of `{trace_id, span_id}`.
    pub links: String,
}

impl StoredSpan {
    /// Heap bytes held by this span itself (its shared resource not counted).
    pub fn heap_bytes(&self) -> usize {
        self.name.len() + self.status_message.len() + self.attributes.len() + self.events.len() + self.links.len()
    }
}

/// Lower-case hex of `bytes` (how ids travel in Jaeger's API).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex id (`None` unless it is hex of an even length).
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

/// The span database.
#[derive(Clone)]
pub struct SpanStore {
    pool: SqlitePool,
}

const INSERT_COLUMNS: &str = "trace_id, span_id, parent_span_id, resource_id, name, kind, start_us, duration_us, status_code, status_message, attributes, events, links";

/// Rows per `INSERT`: 13 parameters each stays far below SQLite's 32,766.
const INSERT_CHUNK: usize = 500;

async fn connect(path: &str) -> Result<SqlitePool, OpenError> {
    let options = if path == ":memory:" {
        SqliteConnectOptions::new().in_memory(true)
    } else {
        SqliteConnectOptions::new().filename(path).create_if_missing(true).journal_mode(SqliteJournalMode::Wal)
    };
    // One writer at a time is SQLite's rule; readers share the WAL.
    SqlitePoolOptions::new()
        .max_connections(if path == ":memory:" { 1 } else { 4 })
        .connect_with(options)
        .await
        .map_err(|source| OpenError::Connect { path: path.to_owned(), source })
}

/// Why the span database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Its directory could not be created.
    #[error("span database directory")]
    Directory(#[source] std::io::Error),
    /// No connection could be made.
    #[error("span database {path}")]
    Connect {
        /// The database file.
        path: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A database that could not be migrated could not be moved aside either.
    #[error("moving the span database {path} aside")]
    MoveAside {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The migrations did not run.
    #[error("span database migration")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The resources of a migrated database could not be keyed.
    #[error("span database migration")]
    Rekey(#[source] sqlx::Error),
}

/// The newest migration already applied, if the database has any.
async fn applied_version(pool: &SqlitePool) -> Option<i64> {
    sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
}

impl SpanStore {
    /// Opens (creating and migrating) the database at `path`; `:memory:` for a throwaway one.
    ///
    /// A database of schema 1 (resources copied into every span) is migrated in place, keeping
    /// its spans. One that cannot be migrated (damaged, or written by a newer collector) is moved
    /// aside to `PATH.unusable-SECONDS` and a new one is created; both are logged.
    pub async fn open(path: &str) -> Result<Self, OpenError> {
        if path != ":memory:"
            && let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(OpenError::Directory)?;
        }
        let pool = connect(path).await?;
        let migrator = sqlx::migrate!("./migrations");
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(version) = applied_version(&pool).await.filter(|v| *v < latest) {
            tracing::info!(
                database = path,
                from = version,
                to = latest,
                "migrating the span database (resources stored once); a large database takes a while"
            );
        }
        let migrated = migrator.run(&pool).await;
        let pool = match migrated {
            Ok(()) => pool,
            Err(e) if path != ":memory:" => {
                pool.close().await;
                let aside = format!(
                    "{path}.unusable-{}",
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
                );
                tracing::warn!(
                    database = path,
                    moved_to = %aside,
                    "the span database cannot be migrated ({e}); it is moved aside and a new, empty one is created"
                );
                for suffix in ["", "-wal", "-shm"] {
                    let from = format!("{path}{suffix}");
                    if Path::new(&from).exists() {
                        std::fs::rename(&from, format!("{aside}{suffix}"))
                            .map_err(|source| OpenError::MoveAside { path: from.clone(), source })?;
                    }
                }
                let pool = connect(path).await?;
                migrator.run(&pool).await?;
                pool
            }
            Err(e) => return Err(e.into()),
        };
        let store = Self { pool };
        store.hash_migrated_resources().await.map_err(OpenError::Rekey)?;
        Ok(store)
    }

    /// Gives the resources the schema-1 migration copied (SQL has no SHA-256) their key.
    async fn hash_migrated_resources(&self) -> Result<(), sqlx::Error> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM resources WHERE hash IS NULL").fetch_all(&self.pool).await?;
        for id in ids {
            let row = sqlx::query("SELECT service, attributes FROM resources WHERE id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
            let resource = StoredResource { service: row.try_get("service")?, attributes: row.try_get("attributes")? };
            sqlx::query("UPDATE resources SET hash = ? WHERE id = ?")
                .bind(resource.hash())
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Stores `spans` in one transaction (a span sent twice is kept once; a resource sent by many
    /// spans or requests is kept once).
    pub async fn insert(&self, spans: &[StoredSpan]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Spans of one resource share its `Arc`: hash each shared resource once. (Keyed by the
        // address as a number: the slice keeps every `Arc` alive, and a number keeps the future
        // `Send`.)
        let mut resource_ids: HashMap<usize, i64> = HashMap::new();
        for span in spans {
            let key = Arc::as_ptr(&span.resource) as usize;
            if resource_ids.contains_key(&key) {
                continue;
            }
            let hash = span.resource.hash();
            sqlx::query(
                "INSERT INTO resources (hash, service, attributes) VALUES (?, ?, ?) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&hash)
            .bind(&span.resource.service)
            .bind(&span.resource.attributes)
            .execute(&mut *tx)
            .await?;
            let id: i64 =
                sqlx::query_scalar("SELECT id FROM resources WHERE hash = ?").bind(&hash).fetch_one(&mut *tx).await?;
            resource_ids.insert(key, id);
        }
        for chunk in spans.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new(format!("INSERT OR REPLACE INTO spans ({INSERT_COLUMNS}) "));
            insert.push_values(chunk, |mut row, s| {
                row.push_bind(&s.trace_id[..])
                    .push_bind(&s.span_id[..])
                    .push_bind(s.parent_span_id.as_ref().map(|p| &p[..]))
                    .push_bind(resource_ids.get(&(Arc::as_ptr(&s.resource) as usize)).copied().unwrap_or_default())
                    .push_bind(&s.name)
                    .push_bind(s.kind)
                    .push_bind(s.start_us)
                    .push_bind(s.duration_us)
                    .push_bind(s.status_code)
                    .push_bind(&s.status_message)
                    .push_bind(&s.attributes)
                    .push_bind(&s.events)
                    .push_bind(&s.links);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// How many spans are stored.
    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM spans").fetch_one(&self.pool).await
    }

    /// Drops spans older than `before_us`, then the oldest beyond `max_spans`, then the resources
    /// no span refers to any more. Returns how many spans went.
    pub async fn prune(&self, before_us: i64, max_spans: i64) -> Result<u64, sqlx::Error> {
        let old = sqlx::query("DELETE FROM spans WHERE start_us < ?").bind(before_us).execute(&self.pool).await?;
        let excess = sqlx::query(
            "DELETE FROM spans WHERE rowid IN (SELECT rowid FROM spans ORDER BY start_us DESC LIMIT -1 OFFSET ?)",
        )
        .bind(max_spans.max(0))
        .execute(&self.pool)
        .await?;
        // Also after no span went: a span sent again may have moved to another resource.
        sqlx::query(
            "DELETE FROM resources WHERE NOT EXISTS (SELECT 1 FROM spans WHERE spans.resource_id = resources.id)",
        )
        .execute(&self.pool)
        .await?;
        Ok(old.rows_affected() + excess.rows_affected())
    }
}
