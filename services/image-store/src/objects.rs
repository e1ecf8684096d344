//! Image bytes in an `object_store`: a local directory by default, any URL `object_store`
//! understands (`s3://bucket/prefix`, `gs://bucket/prefix`, `memory://`) by configuration.
//! Every call is a CLIENT span with the operation, bucket, path and byte count.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use gallery_service::Telemetry;
use gallery_service::operation_span::{ClientOperation, record};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use opentelemetry::KeyValue;

/// Where image bytes live.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    system: String,
    bucket: String,
    telemetry: Arc<Telemetry>,
}

fn error_type(error: &object_store::Error) -> String {
    match error {
        object_store::Error::NotFound { .. } => "not_found",
        object_store::Error::AlreadyExists { .. } => "already_exists",
        object_store::Error::PermissionDenied { .. } => "permission_denied",
        object_store::Error::Unauthenticated { .. } => "unauthenticated",
        _ => "object_store_error",
    }
    .to_owned()
}

/// Why the image location could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// An object-store URL that does not parse.
    #[error("image location `{location}`")]
    Url {
        /// The location given.
        location: String,
        /// Why.
        #[source]
        source: url::ParseError,
    },
    /// A directory that could not be created or resolved.
    #[error("image directory `{location}`")]
    Directory {
        /// The location given.
        location: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A directory that is not a valid path for a URL.
    #[error("image directory `{0}` is not a valid path")]
    NotAPath(String),
    /// The object store refused the location.
    #[error("image location `{location}`")]
    Store {
        /// The location given.
        location: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
}

impl Objects {
    /// Opens `location`: a directory path (created if missing) or an object-store URL.
    pub fn open(location: &str, telemetry: Arc<Telemetry>) -> Result<Self, OpenError> {
        let directory = |source| OpenError::Directory { location: location.to_owned(), source };
        let url = if location.contains("://") {
            url::Url::parse(location).map_err(|source| OpenError::Url { location: location.to_owned(), source })?
        } else {
            std::fs::create_dir_all(location).map_err(directory)?;
            let absolute = std::fs::canonicalize(location).map_err(directory)?;
            url::Url::from_directory_path(&absolute)
                .map_err(|()| OpenError::NotAPath(absolute.display().to_string()))?
        };
        let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars())
            .map_err(|source| OpenError::Store { location: location.to_owned(), source })?;
        let system = match url.scheme() {
            "file" => "local",
            "s3" | "s3a" => "s3",
            "gs" => "gcs",
            "az" | "azure" | "abfs" | "abfss" => "azure",
            other => other,
        }
        .to_owned();
        let bucket = if system == "local" { url.path().to_owned() } else { url.host_str().unwrap_or("").to_owned() };
        Ok(Self { store: Arc::from(store), prefix, system, bucket, telemetry })
    }

    fn path(&self, id: &str) -> Path {
        self.prefix.child(id)
    }

    fn operation(&self, operation: &str, id: &str) -> ClientOperation {
        ClientOperation::storage(&self.system, operation, &self.bucket, self.path(id).as_ref())
    }

    /// Stores `bytes` under `id` (replacing what was there).
    pub async fn put(&self, id: &str, bytes: Bytes) -> Result<(), object_store::Error> {
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        self.operation("put", id)
            .with(KeyValue::new("object_store.bytes", size))
            .run(&self.telemetry, error_type, async {
                self.store.put(&self.path(id), PutPayload::from(bytes)).await.map(drop)
            })
            .await
    }

    /// The object stored under `id`, opened: its size and its bytes as a stream, read while the
    /// response is sent (an image is never held whole in memory). The storage span covers the
    /// open — the time to the first byte — and carries the size.
    pub async fn read(
        &self,
        id: &str,
    ) -> Result<(u64, BoxStream<'static, object_store::Result<Bytes>>), object_store::Error> {
        self.operation("get", id)
            .run(&self.telemetry, error_type, async {
                let object = self.store.get(&self.path(id)).await?;
                let size = object.meta.size;
                record(KeyValue::new("object_store.bytes", i64::try_from(size).unwrap_or(i64::MAX)));
                Ok((size, object.into_stream()))
            })
            .await
    }

    /// Deletes `id`; true when it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, object_store::Error> {
        self.operation("delete", id)
            .run(&self.telemetry, error_type, async {
                // Local directories report a missing object on delete; other stores do not, so
                // ask first to answer 404 the same way everywhere.
                match self.store.head(&self.path(id)).await {
                    Ok(_) => {}
                    Err(object_store::Error::NotFound { .. }) => return Ok(false),
                    Err(e) => return Err(e),
                }
                match self.store.delete(&self.path(id)).await {
                    Ok(()) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// Every stored id (for audits: the catalog's consistency checks and the tests).
    pub async fn list(&self) -> Result<Vec<String>, object_store::Error> {
        use futures_util::TryStreamExt;
        self.operation("list", "")
            .run(&self.telemetry, error_type, async {
                let objects: Vec<_> = self.store.list(Some(&self.prefix)).try_collect().await?;
                let ids: Vec<String> =
                    objects.into_iter().filter_map(|o| o.location.filename().map(str::to_owned)).collect();
                record(KeyValue::new("object_store.objects", i64::try_from(ids.len()).unwrap_or(i64::MAX)));
                Ok(ids)
            })
            .await
    }

    /// Whether the store answers (readiness).
    pub async fn ready(&self) -> Result<(), object_store::Error> {
        match self.store.head(&self.path(".readiness-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
