//! The trace viewer in a real browser: the gallery's spans go to the collector; the viewer's
//! search finds the trace, its waterfall shows every span, a click shows a span's attributes,
//! and the dependency graph shows the three services.

use fantoccini::Locator;
use http::StatusCode;

use crate::fixture::browser::{chromedriver, connect, wait_for_count};
use crate::fixture::gallery::{Database, Gallery, GalleryOptions};
use crate::fixture::traces::{start_collector, trace_id_of, upload_png, wait_for_trace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_finds_a_trace_shows_its_waterfall_span_details_and_the_dependency_graph() {
    let Some(driver) = chromedriver() else { return };
    let collector = start_collector();
    let options = GalleryOptions { collector: Some(collector.otlp.addr), ..GalleryOptions::on(Database::Sqlite) };
    let Some(gallery) = Gallery::start(options).await else { return };
    let reply = upload_png(gallery.api()).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let trace_id = trace_id_of(&reply);
    gallery.flush();
    let query = collector.query.addr;
    let span_count = wait_for_trace(query, &trace_id, 8).await["spans"].as_array().map_or(0, Vec::len);

    let browser = connect(&driver).await;
    let outcome = async {
        browser.goto(&format!("http://{query}/")).await.expect("open the viewer");
        // Search by service.
        let service = browser
            .wait()
            .for_element(Locator::Css("#service option[value='gallery-api']"))
            .await
            .expect("services listed");
        service.click().await.expect("choose gallery-api");
        browser.find(Locator::Css("#find")).await.expect("find").click().await.expect("search");
        let result = browser
            .wait()
            .for_element(Locator::Css(&format!("#results li[data-trace-id='{trace_id}']")))
            .await
            .expect("the search finds the trace");
        result.click().await.expect("open the trace");
        wait_for_count(&browser, "#trace .row", span_count).await;
        let critical = browser.find_all(Locator::Css("#trace .row.critical")).await.expect("rows").len();
        assert!(critical >= 2, "the critical path runs through the trace ({critical} spans marked)");
        let path = browser.current_url().await.expect("url");
        assert!(path.path().ends_with(&trace_id), "the URL names the trace: {path}");

        // A span's details.
        let insert = browser
            .find(Locator::XPath("//div[contains(@class,'row')][.//span[@class='name' and text()='INSERT images']]"))
            .await
            .expect("the INSERT span");
        insert.click().await.expect("select it");
        let details = browser.wait().for_element(Locator::Css("#details table")).await.expect("details");
        let _ = details;
        let text = browser.find(Locator::Css("#details")).await.expect("details").text().await.expect("text");
        for expected in ["image-catalog", "client", "db.system.name", "sqlite", "db.query.text"] {
            assert!(text.contains(expected), "{expected} in the span details: {text}");
        }

        // The dependency graph.
        browser.find(Locator::Css("#tab-dependencies")).await.expect("tab").click().await.expect("open the graph");
        wait_for_count(&browser, "#graph g[data-service]", 3).await;
        let graph = browser.find(Locator::Css("#graph")).await.expect("graph").text().await.expect("text");
        for service in ["gallery-api", "image-catalog", "image-store"] {
            assert!(graph.contains(service), "{service} in the graph: {graph}");
        }

        // A deep link opens the trace directly (the gallery page links here).
        browser.goto(&format!("http://{query}/trace/{trace_id}")).await.expect("deep link");
        wait_for_count(&browser, "#trace .row", span_count).await;
    }
    .await;
    let _ = browser.close().await;
    outcome
}
