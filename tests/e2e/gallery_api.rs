//! The gallery services' APIs as a user sees them, over SQLite and over a real PostgreSQL
//! server: uploads in every form, listing with paging, downloads with their content type,
//! deletes that remove metadata and bytes, errors with `{"message": ...}` bodies, and no lost or
//! orphaned image under concurrent uploads and deletes or when the store fails mid-way.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;

use crate::fixture::client::{Reply, client, get, send, send_bytes};
use crate::fixture::gallery::{Database, Gallery, GalleryOptions, png};

async fn upload_raw(api: SocketAddr, bytes: Vec<u8>, content_type: &str) -> Reply {
    send_bytes(&client(false), api, "POST", "/v0/images", &[("content-type", content_type)], Bytes::from(bytes)).await
}

async fn upload_json(api: SocketAddr, bytes: &[u8]) -> Reply {
    let body = serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) });
    send(&client(false), api, "POST", "/v0/images", &[("content-type", "application/json")], &body.to_string()).await
}

async fn upload_multipart(api: SocketAddr, bytes: &[u8]) -> Reply {
    let boundary = "gallery-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"tiny.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    send_bytes(&client(false), api, "POST", "/v0/images", &[("content-type", &content_type)], Bytes::from(body)).await
}

fn message(reply: &Reply) -> String {
    reply.json()["message"].as_str().unwrap_or_else(|| panic!("no message in {}", reply.text())).to_owned()
}

/// Ids the catalog lists, every page.
async fn listed(api: SocketAddr) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut path = "/v0/images?limit=7".to_owned();
    loop {
        let page = get(api, &path, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let page = page.json();
        for image in page["images"].as_array().expect("images") {
            ids.insert(image["id"].as_str().expect("id").to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => path = format!("/v0/images?limit=7&after={next}"),
            None => return ids,
        }
    }
}

/// Ids the store holds bytes for.
async fn stored(store: SocketAddr) -> BTreeSet<String> {
    let reply = get(store, "/v0/objects", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["ids"].as_array().expect("ids").iter().map(|id| id.as_str().expect("id").to_owned()).collect()
}

async fn the_api_serves_uploads_listing_downloads_and_deletes(database: Database) {
    let Some(gallery) = Gallery::start(GalleryOptions::on(database)).await else { return };
    let api = gallery.api();
    let image = png();

    let health = get(api, "/v0/healthz", &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = get(api, "/v0/readyz", &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    assert!(health.header("traceresponse").is_some_and(|t| t.len() == 55), "every response names its trace");

    // Three upload forms; each answers 201 with the metadata and a Location.
    let mut ids = Vec::new();
    for reply in [
        upload_json(api, &image).await,
        upload_multipart(api, &image).await,
        upload_raw(api, image.clone(), "image/png").await,
    ] {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let meta = reply.json();
        assert_eq!(meta["content_type"], "image/png");
        assert_eq!(meta["size_bytes"], image.len());
        let id = meta["id"].as_str().expect("id").to_owned();
        assert_eq!(reply.header("location"), Some(format!("/v0/images/{id}").as_str()));
        assert!(meta["created_at"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "{meta}");
        ids.push(id);
    }

    // Newest first, two per page.
    let first = get(api, "/v0/images?limit=2", &[]).await.json();
    let first_ids: Vec<_> = first["images"].as_array().expect("images").iter().map(|i| i["id"].clone()).collect();
    assert_eq!(first_ids, vec![ids[2].clone(), ids[1].clone()]);
    let next = first["next_after"].as_str().expect("a next page");
    let second = get(api, &format!("/v0/images?limit=2&after={next}"), &[]).await.json();
    assert_eq!(second["images"][0]["id"], ids[0].as_str());
    assert!(second["next_after"].is_null());

    // Download: the bytes, with their type.
    let download = get(api, &format!("/v0/images/{}", ids[0]), &[]).await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.header("content-type"), Some("image/png"));
    assert_eq!(download.body.as_ref(), image.as_slice());
    let meta = get(api, &format!("/v0/images/{}/meta", ids[0]), &[]).await;
    assert_eq!(meta.json()["id"], ids[0].as_str());
    let shouted = get(api, &format!("/v0/images/{}/meta", ids[0].to_uppercase()), &[]).await;
    assert_eq!(shouted.json()["id"], ids[0].as_str(), "ids are case-insensitive");

    // Delete removes metadata and bytes.
    let deleted = send(&client(false), api, "DELETE", &format!("/v0/images/{}", ids[0]), &[], "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
    let gone = get(api, &format!("/v0/images/{}", ids[0]), &[]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(message(&gone).contains("no image"));
    let again = send(&client(false), api, "DELETE", &format!("/v0/images/{}", ids[0]), &[], "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(listed(api).await, ids[1..].iter().cloned().collect());
    assert_eq!(stored(gallery.store_addr()).await, ids[1..].iter().cloned().collect());

    // Errors: clear status and message, nothing stored.
    let cases = [
        (upload_raw(api, b"plain text".to_vec(), "image/png").await, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            upload_raw(api, b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(), "image/svg+xml").await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (upload_raw(api, image.clone(), "image/jpeg").await, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (upload_raw(api, image.clone(), "text/plain").await, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (upload_raw(api, vec![0x89; 2 << 20], "image/png").await, StatusCode::PAYLOAD_TOO_LARGE),
        (upload_multipart(api, &vec![0x89; 2 << 20]).await, StatusCode::PAYLOAD_TOO_LARGE),
        (
            send(&client(false), api, "POST", "/v0/images", &[("content-type", "application/json")], "{\"base64\": 7}")
                .await,
            StatusCode::BAD_REQUEST,
        ),
        (
            send(
                &client(false),
                api,
                "POST",
                "/v0/images",
                &[("content-type", "application/json")],
                "{\"base64\": \"@@@\"}",
            )
            .await,
            StatusCode::BAD_REQUEST,
        ),
        (upload_raw(api, Vec::new(), "image/png").await, StatusCode::BAD_REQUEST),
        (get(api, "/v0/images/not-an-id", &[]).await, StatusCode::BAD_REQUEST),
        (get(api, "/v0/images?limit=0", &[]).await, StatusCode::BAD_REQUEST),
        (get(api, "/v0/images/0190a5b6-0000-7000-8000-000000000000/meta", &[]).await, StatusCode::NOT_FOUND),
    ];
    for (i, (reply, status)) in cases.iter().enumerate() {
        assert_eq!(reply.status, *status, "case {i}: {}", reply.text());
        assert!(!message(reply).is_empty(), "case {i}");
    }
    assert_eq!(listed(api).await.len(), 2);
    assert_eq!(stored(gallery.store_addr()).await.len(), 2);

    // The OpenAPI document describes every public path.
    let openapi = get(api, "/v0/openapi.json", &[]).await.json();
    for path in ["/v0/images", "/v0/images/{id}", "/v0/images/{id}/meta", "/v0/healthz", "/v0/readyz"] {
        assert!(openapi["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    assert_eq!(openapi["openapi"], "3.1.0");

    // The page.
    let page = get(api, "/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("<title>Gallery"));
    let trace = page.header("traceresponse").expect("traceresponse").split('-').nth(1).expect("trace id").to_owned();
    assert!(page.text().contains(&trace), "the page names the trace that served it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_on_sqlite() {
    the_api_serves_uploads_listing_downloads_and_deletes(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_on_postgresql() {
    the_api_serves_uploads_listing_downloads_and_deletes(Database::Postgres).await;
}

async fn concurrent_uploads_and_deletes_lose_and_orphan_nothing(database: Database) {
    let Some(gallery) = Gallery::start(GalleryOptions::on(database)).await else { return };
    let api = gallery.api();
    // 6 tasks × 8 uploads; every task deletes its odd uploads, racing a second delete of each.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let mut kept = Vec::new();
                for i in 0..8 {
                    let reply = upload_raw(api, png(), "image/png").await;
                    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
                    let id = reply.json()["id"].as_str().expect("id").to_owned();
                    if i % 2 == 0 {
                        kept.push(id);
                        continue;
                    }
                    let path = format!("/v0/images/{id}");
                    let (first, second) = (client(false), client(false));
                    let (a, b) = tokio::join!(
                        send(&first, api, "DELETE", &path, &[], ""),
                        send(&second, api, "DELETE", &path, &[], "")
                    );
                    let mut statuses = [a.status, b.status];
                    statuses.sort();
                    assert_eq!(statuses, [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND], "exactly one delete wins");
                }
                kept
            })
        })
        .collect();
    let mut kept = BTreeSet::new();
    for task in tasks {
        kept.extend(task.await.expect("client task"));
    }
    assert_eq!(kept.len(), 24);
    assert_eq!(listed(api).await, kept, "the catalog lists exactly the kept images");
    assert_eq!(stored(gallery.store_addr()).await, kept, "the store holds exactly their bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_and_deletes_on_sqlite() {
    concurrent_uploads_and_deletes_lose_and_orphan_nothing(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_and_deletes_on_postgresql() {
    concurrent_uploads_and_deletes_lose_and_orphan_nothing(Database::Postgres).await;
}

async fn a_failing_store_leaves_no_orphans(database: Database) {
    let options = GalleryOptions { sweep_secs: 1, ..GalleryOptions::on(database) };
    let Some(mut gallery) = Gallery::start(options).await else { return };
    let api = gallery.api();
    let kept = upload_raw(api, png(), "image/png").await.json()["id"].as_str().expect("id").to_owned();
    let doomed = upload_raw(api, png(), "image/png").await.json()["id"].as_str().expect("id").to_owned();

    gallery.stop_store();
    let refused = upload_raw(api, png(), "image/png").await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{}", refused.text());
    assert!(message(&refused).contains("image-store"), "{}", refused.text());
    let half_deleted = send(&client(false), api, "DELETE", &format!("/v0/images/{doomed}"), &[], "").await;
    assert_eq!(half_deleted.status, StatusCode::BAD_GATEWAY, "{}", half_deleted.text());
    assert!(message(&half_deleted).contains("retried"));
    // The failed upload left no record, and the half-deleted image is no longer served.
    assert_eq!(listed(api).await, BTreeSet::from([kept.clone()]));

    gallery.restart_store();
    // The recovery sweep finishes the delete: its bytes go, then its record.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(gallery.store_addr()).await.contains(&doomed) {
        assert!(Instant::now() < deadline, "the sweep never finished the interrupted delete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored(gallery.store_addr()).await, BTreeSet::from([kept.clone()]));
    assert_eq!(listed(api).await, BTreeSet::from([kept]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_leaves_no_orphans_on_sqlite() {
    a_failing_store_leaves_no_orphans(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_leaves_no_orphans_on_postgresql() {
    a_failing_store_leaves_no_orphans(Database::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_the_catalog_answer_their_own_apis() {
    let Some(gallery) = Gallery::start(GalleryOptions::on(Database::Sqlite)).await else { return };
    let store = gallery.store_addr();
    let id = "0190a5b6-1111-7000-8000-000000000001";
    let path = format!("/v0/objects/{id}");
    let put = send_bytes(&client(false), store, "PUT", &path, &[], Bytes::from(png())).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    assert_eq!(get(store, &path, &[]).await.body.as_ref(), png().as_slice());
    assert_eq!(send(&client(false), store, "DELETE", &path, &[], "").await.status, StatusCode::NO_CONTENT);
    assert_eq!(get(store, &path, &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(send(&client(false), store, "DELETE", &path, &[], "").await.status, StatusCode::NOT_FOUND);
    let traversal = send_bytes(&client(false), store, "PUT", "/v0/objects/..%2Fescape", &[], Bytes::from(png())).await;
    assert_eq!(traversal.status, StatusCode::BAD_REQUEST, "{}", traversal.text());
    assert_eq!(get(store, "/v0/readyz", &[]).await.status, StatusCode::OK);

    let catalog = gallery.catalog.addr;
    let created = upload_raw(catalog, png(), "image/png").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let content = get(catalog, &format!("/v0/images/{id}/content"), &[]).await;
    assert_eq!((content.status, content.header("content-type")), (StatusCode::OK, Some("image/png")));
    let no_type = send_bytes(&client(false), catalog, "POST", "/v0/images", &[], Bytes::from(png())).await;
    assert_eq!(no_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(get(catalog, "/v0/readyz", &[]).await.json()["database"], "sqlite");
    for service in [store, catalog] {
        assert_eq!(get(service, "/v0/openapi.json", &[]).await.json()["openapi"], "3.1.0");
    }
}
