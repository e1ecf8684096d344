//! The gallery page in a real browser (Debian's headless Chromium through chromedriver): upload
//! an image, see it in the grid, open it, see its metadata and the trace link, delete it.

use std::time::{Duration, Instant};

use fantoccini::Locator;

use crate::fixture::browser::{chromedriver, connect, wait_for_count};
use crate::fixture::client::get;
use crate::fixture::gallery::{Database, Gallery, GalleryOptions, png};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_uploads_views_and_deletes_an_image_in_the_browser() {
    let Some(driver) = chromedriver() else { return };
    let Some(gallery) = Gallery::start(GalleryOptions::on(Database::Sqlite)).await else { return };
    let file = gallery.dir.join("phippy.png");
    std::fs::write(&file, png()).expect("image file");
    let browser = connect(&driver).await;
    let outcome = async {
        browser.goto(&format!("http://{}/", gallery.api())).await.expect("open the page");
        let empty = browser.wait().for_element(Locator::Css("#empty")).await.expect("empty notice");
        assert!(empty.is_displayed().await.expect("visible"), "an empty gallery says so");

        // Upload through the file input.
        let input = browser.find(Locator::Css("#upload-input")).await.expect("file input");
        let file = file.canonicalize().expect("image path");
        input.send_keys(&file.display().to_string()).await.expect("choose the file");
        wait_for_count(&browser, "#grid figure", 1).await;
        let more = browser.find(Locator::Css("#more")).await.expect("load-more button");
        assert!(!more.is_displayed().await.expect("visibility"), "no further page to load");
        let trace = browser.find(Locator::Css("#trace-link")).await.expect("trace link");
        let trace_id = trace.attr("data-trace-id").await.expect("attribute").unwrap_or_default();
        assert_eq!(trace_id.len(), 32, "the upload's trace id is shown");
        assert!(trace.attr("href").await.expect("href").is_some_and(|h| h.ends_with(&trace_id)));
        assert!(
            browser
                .find(Locator::Css("#trace-request"))
                .await
                .expect("label")
                .text()
                .await
                .expect("text")
                .contains("POST /v0/images → 201")
        );

        // The image renders from the API.
        let width: serde_json::Value = browser
            .execute("return document.querySelector('#grid figure img').naturalWidth", vec![])
            .await
            .expect("script");
        let id = browser
            .find(Locator::Css("#grid figure"))
            .await
            .expect("card")
            .attr("data-id")
            .await
            .expect("id")
            .expect("data-id");
        let rendered = async {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut width = width;
            while width != 8 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                width = browser
                    .execute("return document.querySelector('#grid figure img').naturalWidth", vec![])
                    .await
                    .expect("script");
            }
            width
        };
        assert_eq!(rendered.await, 8, "the browser decoded the 8×8 PNG");

        // Open it: the detail shows its metadata.
        browser.find(Locator::Css("#grid figure")).await.expect("card").click().await.expect("open");
        let meta = browser.wait().for_element(Locator::Css("#detail-meta dd")).await.expect("metadata");
        let _ = meta;
        let details = browser.find(Locator::Css("#detail-meta")).await.expect("meta").text().await.expect("text");
        assert!(details.contains(&id) && details.contains("image/png"), "{details}");

        // Delete it.
        browser.find(Locator::Css("#delete-button")).await.expect("delete").click().await.expect("delete");
        wait_for_count(&browser, "#grid figure", 0).await;
        let listed = get(gallery.api(), "/v0/images", &[]).await.json();
        assert_eq!(listed["images"].as_array().map(Vec::len), Some(0), "{listed}");
    }
    .await;
    let _ = browser.close().await;
    outcome
}
