//! The gallery page in a real browser (Debian's headless Chromium through chromedriver): upload
//! an image, see it in the grid, open it, see its metadata and the trace link, delete it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::fixture::client::get;
use crate::fixture::gallery::{Database, Gallery, GalleryOptions, png};

/// chromedriver on a free port; killed on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver, or explains how to get it. Under `CI=true` a missing browser fails the
/// test; elsewhere it is skipped with a message.
fn chromedriver() -> Option<ChromeDriver> {
    let present = ["/usr/bin/chromedriver", "/usr/bin/chromium"].iter().all(|p| std::path::Path::new(p).exists());
    if !present {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "chromium and chromedriver are missing; scripts/test.sh installs them (apt-get install chromium chromium-driver)"
            );
        }
        eprintln!("SKIPPED: browser test (install chromium and chromium-driver, or run scripts/test.sh)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    Some(ChromeDriver { child, port })
}

async fn connect(driver: &ChromeDriver) -> Client {
    // Two TLS backends are linked in (object_store's and the WebDriver client's): pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
        {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver did not accept a session: {e}"),
        }
    }
}

/// Waits until `css` matches `count` elements.
async fn wait_for_count(browser: &Client, css: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = browser.find_all(Locator::Css(css)).await.map(|e| e.len()).unwrap_or(0);
        if found == count {
            return;
        }
        assert!(Instant::now() < deadline, "expected {count} of `{css}`, found {found}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
