//! CLIENT spans around the calls a service makes to its database and its object storage, as
//! children of the request's span, with the semantic conventions' attributes. Query text keeps
//! its placeholders: values never reach a span.

use std::future::Future;

use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::telemetry::{Telemetry, attribute};

/// A database or storage call about to be made.
pub struct ClientOperation {
    name: String,
    attributes: Vec<KeyValue>,
}

impl ClientOperation {
    /// A database call: span `"{operation} {collection}"` with `db.system.name`, `db.namespace`,
    /// `db.collection.name`, `db.operation.name` and `db.query.text` (placeholders, not values).
    pub fn database(system: &str, namespace: &str, operation: &str, collection: &str, query: &str) -> Self {
        Self {
            name: format!("{operation} {collection}"),
            attributes: vec![
                attribute("db.system.name", system),
                attribute("db.namespace", namespace),
                attribute("db.operation.name", operation),
                attribute("db.collection.name", collection),
                attribute("db.query.text", query),
            ],
        }
    }

    /// An object-storage call: span `"{operation} {system}"` (`put local`, `get s3`). No semantic convention covers
    /// object stores in general, so the attributes are `object_store.*` (system, operation,
    /// bucket, path; the byte count is added when known).
    pub fn storage(system: &str, operation: &str, bucket: &str, path: &str) -> Self {
        Self {
            name: format!("{operation} {system}"),
            attributes: vec![
                attribute("object_store.system", system),
                attribute("object_store.operation", operation),
                attribute("object_store.bucket", bucket),
                attribute("object_store.path", path),
            ],
        }
    }

    /// One more attribute (e.g. `server.address` of the database).
    pub fn with(mut self, attribute: KeyValue) -> Self {
        self.attributes.push(attribute);
        self
    }

    /// Runs `work` inside the span (so [`record`] reaches it). On error the span gets status
    /// error and `error.type` from `error_type`. Outside any trace (a health probe's ping, an idle
    /// recovery sweep) the work runs untraced: a trace of one query every few seconds is noise
    /// in the viewer, not information.
    pub async fn run<T, E: std::fmt::Display>(
        self,
        telemetry: &Telemetry,
        error_type: impl FnOnce(&E) -> String,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let parent = Context::current();
        if !parent.has_active_span() {
            return work.await;
        }
        let tracer = telemetry.tracer();
        let span = tracer
            .span_builder(self.name)
            .with_kind(SpanKind::Client)
            .with_attributes(self.attributes)
            .start_with_context(tracer, &parent);
        let cx = parent.with_span(span);
        let result = work.with_context(cx.clone()).await;
        let span = cx.span();
        if let Err(e) = &result {
            span.set_attribute(attribute("error.type", error_type(e)));
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
        result
    }
}

/// Adds an attribute to the current span (inside [`ClientOperation::run`]: the operation's).
pub fn record(attribute: KeyValue) {
    Context::current().span().set_attribute(attribute);
}
