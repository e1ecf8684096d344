//! The gallery's one allow-list of image types, held by all three services: SVG (and bytes that
//! are not what they claim) is refused with 415 by the catalog and the store as by the API, so
//! nothing skips the API's rule; and every download is sandboxed (`Content-Security-Policy:
//! sandbox`, `X-Content-Type-Options: nosniff`), down to a record stored before the rule existed,
//! which is served as an attachment instead of inline.

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;

use crate::fixture::client::{Reply, client, get, send_bytes};
use crate::fixture::gallery::{Database, Gallery, GalleryOptions, png};

const SVG: &[u8] =
    b"<svg xmlns='http://www.w3.org/2000/svg'><script>fetch('/v0/images').then(r=>r.text()).then(alert)</script></svg>";

async fn send(addr: SocketAddr, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let headers: Vec<(&str, &str)> = content_type.map(|t| ("content-type", t)).into_iter().collect();
    send_bytes(&client(false), addr, method, path, &headers, Bytes::copy_from_slice(body)).await
}

fn message(reply: &Reply) -> String {
    reply.json()["message"].as_str().unwrap_or_else(|| panic!("no message in {}", reply.text())).to_owned()
}

fn sandboxed(reply: &Reply, what: &str) {
    assert_eq!(reply.header("content-security-policy"), Some("sandbox"), "{what}");
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svg_is_refused_by_the_catalog_and_the_store_as_by_the_api() {
    let Some(gallery) = Gallery::start(GalleryOptions::on(Database::Sqlite)).await else { return };
    let (api, catalog, store) = (gallery.api(), gallery.catalog.addr, gallery.store_addr());
    let object = "/v0/objects/0190a5b6-2222-7000-8000-000000000002";

    for (service, addr, method, path) in [
        ("gallery-api", api, "POST", "/v0/images"),
        ("image-catalog", catalog, "POST", "/v0/images"),
        ("image-store", store, "PUT", object),
    ] {
        let reply = send(addr, method, path, Some("image/svg+xml"), SVG).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{service}: {}", reply.text());
        assert!(message(&reply).contains("image/svg+xml"), "{service}: {}", reply.text());
    }
    // Disguises: SVG declared as PNG or as nothing in particular, PNG bytes declared as SVG,
    // a type off the list, a type that contradicts the bytes.
    let image = png();
    for (addr, method, path, declared, body) in [
        (catalog, "POST", "/v0/images", Some("image/png"), SVG),
        (catalog, "POST", "/v0/images", Some("application/octet-stream"), SVG),
        (catalog, "POST", "/v0/images", Some("image/svg+xml"), image.as_slice()),
        (catalog, "POST", "/v0/images", Some("text/html"), image.as_slice()),
        (catalog, "POST", "/v0/images", Some("image/jpeg"), image.as_slice()),
        (store, "PUT", object, None, SVG),
        (store, "PUT", object, Some("application/octet-stream"), SVG),
        (store, "PUT", object, Some("image/svg+xml"), image.as_slice()),
        (store, "PUT", object, Some("text/html"), image.as_slice()),
    ] {
        let reply = send(addr, method, path, declared, body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{method} {path} as {declared:?}: {}",
            reply.text()
        );
        message(&reply);
    }

    // Nothing of it was kept anywhere.
    let listed = get(catalog, "/v0/images", &[]).await.json();
    assert_eq!(listed["images"], serde_json::json!([]), "{listed}");
    let stored = get(store, "/v0/objects", &[]).await.json();
    assert_eq!(stored["ids"], serde_json::json!([]), "{stored}");

    // What the allow-list takes still goes straight in.
    let created = send(catalog, "POST", "/v0/images", Some("image/png"), &image).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.json()["content_type"], "image/png");
    let put = send(store, "PUT", object, None, &image).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_sandboxed_and_a_type_off_the_list_is_never_served_inline() {
    let Some(gallery) = Gallery::start(GalleryOptions::on(Database::Sqlite)).await else { return };
    let (api, catalog, store) = (gallery.api(), gallery.catalog.addr, gallery.store_addr());
    let image = png();
    let created = send(api, "POST", "/v0/images", Some("image/png"), &image).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_owned();

    let download = get(api, &format!("/v0/images/{id}"), &[]).await;
    assert_eq!((download.status, download.header("content-type")), (StatusCode::OK, Some("image/png")));
    assert_eq!(download.body.as_ref(), image.as_slice());
    sandboxed(&download, "the API's download");
    let content = get(catalog, &format!("/v0/images/{id}/content"), &[]).await;
    assert_eq!(content.status, StatusCode::OK);
    sandboxed(&content, "the catalog's content");
    let object = get(store, &format!("/v0/objects/{id}"), &[]).await;
    assert_eq!(object.status, StatusCode::OK);
    sandboxed(&object, "the store's object");
    assert_eq!(object.header("content-disposition"), Some("attachment"));

    // An SVG recorded before the allow-list held everywhere (written behind the services' backs,
    // as an older catalog would have stored it): served as a download, never as a page.
    let legacy = "0190a5b6-3333-7000-8000-000000000003";
    std::fs::write(gallery.dir.join("images").join(legacy), SVG).expect("write the old object");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", gallery.dir.join("catalog.db").display()))
        .await
        .expect("open the catalog database");
    sqlx::query("INSERT INTO images (id, content_type, size_bytes, created_at_ms, state) VALUES (?, 'image/svg+xml', ?, 0, 'ready')")
        .bind(legacy)
        .bind(SVG.len() as i64)
        .execute(&pool)
        .await
        .expect("record the old image");
    pool.close().await;
    let old = get(api, &format!("/v0/images/{legacy}"), &[]).await;
    assert_eq!(old.status, StatusCode::OK, "{}", old.text());
    assert_eq!(old.header("content-type"), Some("application/octet-stream"));
    assert_eq!(old.header("content-disposition"), Some("attachment"));
    sandboxed(&old, "an old SVG");
}
