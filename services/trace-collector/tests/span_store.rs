//! The span database on disk: a schema-1 database (resources copied into every span) opens with
//! its spans intact; resources are stored once however many spans and requests carry them, and
//! go with their last span; an answer over its bound is refused.

use std::path::PathBuf;
use std::sync::Arc;

use trace_collector::span_store::{QueryError, SpanStore, StoredResource, StoredSpan, TraceQuery};

fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

fn span(trace: u8, id: u8, parent: Option<u8>, resource: &Arc<StoredResource>) -> StoredSpan {
    StoredSpan {
        trace_id: [trace; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        resource: resource.clone(),
        name: format!("op {id}"),
        kind: 2,
        start_us: 1_700_000_000_000_000 + i64::from(id),
        duration_us: 10,
        status_code: 0,
        status_message: String::new(),
        attributes: r#"{"k":"v"}"#.into(),
        events: "[]".into(),
        links: "[]".into(),
    }
}

fn resource(service: &str, padding: usize) -> Arc<StoredResource> {
    Arc::new(StoredResource {
        service: service.into(),
        attributes: serde_json::json!({ "service.name": service, "padding": "x".repeat(padding) }).to_string(),
    })
}

async fn resources(path: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}")).await.unwrap_or_else(|e| panic!("{e}"));
    let count =
        sqlx::query_scalar("SELECT COUNT(*) FROM resources").fetch_one(&pool).await.unwrap_or_else(|e| panic!("{e}"));
    pool.close().await;
    count
}

#[tokio::test]
async fn a_schema_1_database_opens_with_its_spans() {
    let dir = scratch("schema-1");
    let path = dir.join("traces.db").display().to_string();
    // Schema 1 as the collector of the previous release left it.
    let only_first = dir.join("migrations");
    std::fs::create_dir_all(&only_first).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/0001_spans.sql"), only_first.join("0001_spans.sql"))
        .unwrap_or_else(|e| panic!("{e}"));
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::migrate::Migrator::new(only_first.as_path())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .run(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let big = serde_json::json!({ "service.name": "api", "host.name": "old" }).to_string();
    for (id, parent, service, resource) in [
        ("0101010101010101", "", "api", big.as_str()),
        ("0202020202020202", "0101010101010101", "api", big.as_str()),
        ("0303030303030303", "0202020202020202", "store", r#"{"service.name":"store"}"#),
    ] {
        sqlx::query(
            "INSERT INTO spans VALUES (?, ?, ?, ?, 'op', 2, 1700000000000000, 5, 0, '', '{\"a\":1}', ?, '[]', '[]')",
        )
        .bind("0a".repeat(16))
        .bind(id)
        .bind(parent)
        .bind(service)
        .bind(resource)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    pool.close().await;

    let store = SpanStore::open(&path).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.count().await.ok(), Some(3));
    assert_eq!(store.services(1 << 20).await.ok(), Some(vec!["api".to_owned(), "store".to_owned()]));
    let found = store
        .find_traces(&TraceQuery { service: Some("store".into()), limit: 10, ..TraceQuery::default() })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found, vec!["0a".repeat(16)]);
    let spans = store.spans_of(&found, 1 << 20).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spans.len(), 3);
    assert_eq!(spans[0].parent_span_id, None);
    assert_eq!(spans[1].parent_span_id, Some([1; 8]));
    assert_eq!(spans[0].resource.attributes, big);
    assert!(Arc::ptr_eq(&spans[0].resource, &spans[1].resource), "one resource, read once");
    let dependencies = store.dependencies(0, 1 << 20).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dependencies.len(), 1);
    assert_eq!((dependencies[0].parent.as_str(), dependencies[0].child.as_str()), ("api", "store"));

    // The migrated resources got their keys: the same resource sent again is not stored again.
    let again = Arc::new(StoredResource { service: "api".into(), attributes: big.clone() });
    store.insert(&[span(0x0b, 4, None, &again)]).await.unwrap_or_else(|e| panic!("{e}"));
    drop(store);
    assert_eq!(resources(&path).await, 2);
}

#[tokio::test]
async fn a_resource_is_stored_once_and_goes_with_its_last_span() {
    let dir = scratch("resources");
    let path = dir.join("traces.db").display().to_string();
    let store = SpanStore::open(&path).await.unwrap_or_else(|e| panic!("{e}"));
    let shared = resource("api", 1000);
    let spans: Vec<_> = (1..=50).map(|i| span(1, i, None, &shared)).collect();
    store.insert(&spans).await.unwrap_or_else(|e| panic!("{e}"));
    // The same content in another request (another `Arc`), and another service.
    store.insert(&[span(2, 1, None, &resource("api", 1000))]).await.unwrap_or_else(|e| panic!("{e}"));
    let mut later = span(3, 1, None, &resource("store", 10));
    later.start_us += 1000;
    store.insert(&[later]).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resources(&path).await, 2);
    assert_eq!(store.count().await.ok(), Some(52));

    // Retention takes the api spans (the oldest); their resource goes with them.
    let dropped = store.prune(1_700_000_000_001_000, 10).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dropped, 51);
    assert_eq!(resources(&path).await, 1);
    assert_eq!(store.services(1 << 20).await.ok(), Some(vec!["store".to_owned()]));
}

#[tokio::test]
async fn an_answer_over_its_bound_is_refused() {
    let store = SpanStore::open(":memory:").await.unwrap_or_else(|e| panic!("{e}"));
    let big = resource("api", 100_000);
    let spans: Vec<_> = (1..=10).map(|i| span(1, i, None, &big)).collect();
    store.insert(&spans).await.unwrap_or_else(|e| panic!("{e}"));
    let id = vec!["01".repeat(16)];
    assert_eq!(store.spans_of(&id, 1 << 20).await.map(|s| s.len()).ok(), Some(10));
    // The resource counts once per trace, not once per span.
    assert!(matches!(store.spans_of(&id, 150_000).await, Err(QueryError::TooLarge { max_bytes: 150_000 })));
    assert!(store.spans_of(&id, 250_000).await.is_ok());
    assert!(matches!(store.spans_of(&id, 1_000).await, Err(QueryError::TooLarge { .. })));
}
