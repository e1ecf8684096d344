//! The catalog's SQL: one `images` table, the same migrations and queries on SQLite and
//! PostgreSQL (through sqlx's `Any` driver; `$n` placeholders work on both). Every query runs
//! inside a CLIENT span with the database semantic conventions.

use std::sync::Arc;

use gallery_service::Telemetry;
use gallery_service::operation_span::{ClientOperation, record};
use opentelemetry::KeyValue;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// An image's metadata.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ImageMeta {
    /// UUID v7 (time-ordered: newest first is `ORDER BY id DESC`).
    pub id: String,
    /// The image's media type, e.g. `image/png`.
    pub content_type: String,
    /// Size of the image bytes.
    pub size_bytes: i64,
    /// Upload time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Upload time, RFC 3339 (UTC).
    pub created_at: String,
}

/// A row the recovery sweep must finish.
#[derive(Debug)]
pub struct Unfinished {
    /// The image id.
    pub id: String,
    /// `pending` (upload never finished) or `deleting` (delete never finished).
    pub state: String,
}

/// The catalog database.
pub struct CatalogDb {
    pool: AnyPool,
    system: &'static str,
    namespace: String,
    server: Option<(String, i64)>,
    telemetry: Arc<Telemetry>,
}

const TABLE: &str = "images";
const INSERT: &str =
    "INSERT INTO images (id, content_type, size_bytes, created_at_ms, state) VALUES ($1, $2, $3, $4, 'pending')";
const MARK_READY: &str = "UPDATE images SET state = 'ready' WHERE id = $1 AND state = 'pending'";
const LIST_FIRST: &str =
    "SELECT id, content_type, size_bytes, created_at_ms FROM images WHERE state = 'ready' ORDER BY id DESC LIMIT $1";
const LIST_AFTER: &str = "SELECT id, content_type, size_bytes, created_at_ms FROM images WHERE state = 'ready' AND id < $1 ORDER BY id DESC LIMIT $2";
const GET: &str = "SELECT id, content_type, size_bytes, created_at_ms FROM images WHERE id = $1 AND state = 'ready'";
const BEGIN_DELETE: &str = "UPDATE images SET state = 'deleting' WHERE id = $1 AND state = 'ready'";
const REMOVE: &str = "DELETE FROM images WHERE id = $1";
const UNFINISHED: &str =
    "SELECT id, state FROM images WHERE state = 'deleting' OR (state = 'pending' AND created_at_ms < $1)";
const PING: &str = "SELECT 1";

fn error_type(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => e.code().map_or_else(|| "database".to_owned(), |c| c.into_owned()),
        sqlx::Error::RowNotFound => "row_not_found".to_owned(),
        sqlx::Error::PoolTimedOut => "pool_timed_out".to_owned(),
        sqlx::Error::Io(_) => "io".to_owned(),
        _ => "sqlx".to_owned(),
    }
}

/// RFC 3339 (UTC, milliseconds) for a Unix time in milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

fn meta(row: &AnyRow) -> Result<ImageMeta, sqlx::Error> {
    let created_at_ms: i64 = row.try_get("created_at_ms")?;
    Ok(ImageMeta {
        id: row.try_get("id")?,
        content_type: row.try_get("content_type")?,
        size_bytes: row.try_get("size_bytes")?,
        created_at_ms,
        created_at: rfc3339(created_at_ms),
    })
}

/// Why the catalog's database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL does not parse.
    #[error("database URL")]
    Url(#[source] url::ParseError),
    /// The URL names another database system.
    #[error("database URL: `{0}` is not sqlite or postgres")]
    Scheme(String),
    /// A SQLite file's directory could not be created.
    #[error("database directory {path}")]
    Directory {
        /// The directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No connection could be made.
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    /// The migrations did not run.
    #[error("database migration")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl CatalogDb {
    /// Connects to `url` (`sqlite://path`, created if missing; `postgres://...`) and migrates.
    pub async fn open(url: &str, telemetry: Arc<Telemetry>) -> Result<Self, OpenError> {
        sqlx::any::install_default_drivers();
        let parsed = url::Url::parse(url).map_err(OpenError::Url)?;
        let (system, namespace, server, url) = match parsed.scheme() {
            "sqlite" => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                let file = path.split('?').next().unwrap_or(path);
                if let Some(parent) = std::path::Path::new(file).parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|source| OpenError::Directory { path: parent.display().to_string(), source })?;
                }
                let url = if url.contains("mode=") {
                    url.to_owned()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                let name = std::path::Path::new(file).file_name().map(|n| n.to_string_lossy().into_owned());
                ("sqlite", name.unwrap_or_else(|| file.to_owned()), None, url)
            }
            "postgres" | "postgresql" => {
                let database = parsed.path().trim_start_matches('/').to_owned();
                let server = parsed.host_str().map(|h| (h.to_owned(), i64::from(parsed.port().unwrap_or(5432))));
                ("postgresql", database, server, url.to_owned())
            }
            other => return Err(OpenError::Scheme(other.to_owned())),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if system == "sqlite" { 1 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(OpenError::Connect)?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(OpenError::Migrate)?;
        Ok(Self { pool, system, namespace, server, telemetry })
    }

    /// `db.system.name`.
    pub fn system(&self) -> &'static str {
        self.system
    }

    fn operation(&self, operation: &str, query: &str) -> ClientOperation {
        let mut op = ClientOperation::database(self.system, &self.namespace, operation, TABLE, query);
        if let Some((address, port)) = &self.server {
            op = op.with(KeyValue::new("server.address", address.clone())).with(KeyValue::new("server.port", *port));
        }
        op
    }

    /// Records a new image as `pending` (its bytes are not stored yet).
    pub async fn insert_pending(&self, image: &ImageMeta) -> Result<(), sqlx::Error> {
        self.operation("INSERT", INSERT)
            .run(&self.telemetry, error_type, async {
                sqlx::query(INSERT)
                    .bind(&image.id)
                    .bind(&image.content_type)
                    .bind(image.size_bytes)
                    .bind(image.created_at_ms)
                    .execute(&self.pool)
                    .await
                    .map(drop)
            })
            .await
    }

    /// Makes a pending image visible. False when it was not pending.
    pub async fn mark_ready(&self, id: &str) -> Result<bool, sqlx::Error> {
        self.update(MARK_READY, id).await
    }

    /// Starts a delete: the image stops being served. False when there is no such ready image.
    pub async fn begin_delete(&self, id: &str) -> Result<bool, sqlx::Error> {
        self.update(BEGIN_DELETE, id).await
    }

    async fn update(&self, query: &'static str, id: &str) -> Result<bool, sqlx::Error> {
        self.operation("UPDATE", query)
            .run(&self.telemetry, error_type, async {
                let done = sqlx::query(query).bind(id).execute(&self.pool).await?;
                Ok(done.rows_affected() == 1)
            })
            .await
    }

    /// Forgets an image (its bytes are gone, or were never stored).
    pub async fn remove(&self, id: &str) -> Result<(), sqlx::Error> {
        self.operation("DELETE", REMOVE)
            .run(&self.telemetry, error_type, async {
                sqlx::query(REMOVE).bind(id).execute(&self.pool).await.map(drop)
            })
            .await
    }

    /// Ready images, newest first, after the cursor `after` (an id).
    pub async fn list(&self, limit: i64, after: Option<&str>) -> Result<Vec<ImageMeta>, sqlx::Error> {
        let query = if after.is_some() { LIST_AFTER } else { LIST_FIRST };
        self.operation("SELECT", query)
            .run(&self.telemetry, error_type, async {
                let rows = match after {
                    Some(after) => sqlx::query(LIST_AFTER).bind(after).bind(limit).fetch_all(&self.pool).await?,
                    None => sqlx::query(LIST_FIRST).bind(limit).fetch_all(&self.pool).await?,
                };
                record(KeyValue::new("db.response.returned_rows", i64::try_from(rows.len()).unwrap_or(i64::MAX)));
                rows.iter().map(meta).collect()
            })
            .await
    }

    /// One ready image.
    pub async fn get(&self, id: &str) -> Result<Option<ImageMeta>, sqlx::Error> {
        self.operation("SELECT", GET)
            .run(&self.telemetry, error_type, async {
                let row = sqlx::query(GET).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(meta).transpose()
            })
            .await
    }

    /// Deletes in progress, and uploads pending since before `pending_before_ms`.
    pub async fn unfinished(&self, pending_before_ms: i64) -> Result<Vec<Unfinished>, sqlx::Error> {
        self.operation("SELECT", UNFINISHED)
            .run(&self.telemetry, error_type, async {
                let rows = sqlx::query(UNFINISHED).bind(pending_before_ms).fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok(Unfinished { id: row.try_get("id")?, state: row.try_get("state")? })).collect()
            })
            .await
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.operation("SELECT", PING)
            .run(&self.telemetry, error_type, async { sqlx::query(PING).execute(&self.pool).await.map(drop) })
            .await
    }
}
