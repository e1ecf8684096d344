//! The trace viewer in a real browser: the gallery's spans go to the collector; the viewer's
//! search finds the trace, its waterfall shows every span, a click shows a span's attributes,
//! and the dependency graph shows the three services. On the running demo, across a hot swap of
//! the API sidecar's trace filter: the results table sorts, the timeline marks the swap between
//! the traces before and after it, a search by generation finds only the traces after it, and a
//! trace shows as a flamegraph, as statistics and compared with another span by span.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use bytes::Bytes;
use fantoccini::{Client, Locator};
use http::StatusCode;
use serde_json::Value;
use wasmtrace_demo::topology::{DemoConfig, Ports, Tracing, start};

use crate::fixture::browser::{chromedriver, click, connect, wait_for_count};
use crate::fixture::client::{client, send_bytes};
use crate::fixture::gallery::{Database, Gallery, GalleryOptions};
use crate::fixture::proxy::workspace_root;
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
        browser
            .wait()
            .for_element(Locator::Css(&format!("#results tr[data-trace-id='{trace_id}']")))
            .await
            .expect("the search finds the trace");
        click(&browser, &format!("#results tr[data-trace-id='{trace_id}']")).await;
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

/// The trace ids the results table lists, top to bottom (read in one script, so a table the page
/// re-renders meanwhile is never half read).
async fn listed(browser: &Client) -> Vec<String> {
    let script =
        "return [...document.querySelectorAll('#results tbody tr[data-trace-id]')].map((r) => r.dataset.traceId)";
    let ids = browser.execute(script, vec![]).await.expect("the table's rows");
    ids.as_array().into_iter().flatten().filter_map(|id| id.as_str().map(str::to_owned)).collect()
}

/// Waits until the results table lists exactly `expected` (in any order).
async fn wait_for_listed(browser: &Client, expected: &BTreeSet<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found: BTreeSet<String> = listed(browser).await.into_iter().collect();
        if &found == expected {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "listed {found:?}, expected {expected:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A style's `left: N%`.
async fn left_percent(element: &fantoccini::elements::Element) -> f64 {
    let style = element.attr("style").await.expect("style").unwrap_or_default();
    style
        .split(';')
        .find_map(|rule| rule.trim().strip_prefix("left:"))
        .and_then(|v| v.trim().trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no left in {style}"))
}

fn trace_window(trace: &Value) -> (i64, i64) {
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let start = spans.iter().filter_map(|s| s["startTime"].as_i64()).min().unwrap_or(0);
    let end = spans.iter().filter_map(|s| Some(s["startTime"].as_i64()? + s["duration"].as_i64()?)).max().unwrap_or(0);
    (start, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_hot_swap_the_viewer_marks_it_searches_by_generation_sorts_compares_and_shows_flamegraph_and_statistics()
 {
    let Some(driver) = chromedriver() else { return };
    let state_dir = workspace_root().join("target/e2e-demo").join(format!("{}-viewer", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = DemoConfig {
        tracing: Tracing::Sidecars,
        viewer: any,
        ports: Ports::Ephemeral,
        state_dir,
        workspace: workspace_root(),
    };
    let demo = start(&config, &|_| {}).expect("the demo starts");
    let upload = || async {
        let reply = upload_png(demo.gallery).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        trace_id_of(&reply)
    };
    let mut before = BTreeSet::new();
    for _ in 0..2 {
        before.insert(upload().await);
    }
    // The swap: a new configuration for the API sidecar's trace filter (generation 1 → 2).
    let admin = demo.sidecar_admins()[0].1.expect("the API sidecar's admin API");
    let configuration = r#"{"service_name": "gallery-api", "span_kind": "server", "static_attributes": {"rollout": "v2"}, "exporter": {"cluster": "otel-collector", "flush_interval_ms": 100}}"#;
    let body = serde_json::json!({ "configuration": configuration }).to_string();
    let reply = send_bytes(
        &client(false),
        admin,
        "POST",
        "/plugins/trace_inbound/swap",
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mut after = BTreeSet::new();
    for _ in 0..2 {
        after.insert(upload().await);
    }
    demo.flush();
    let query = demo.viewer;
    let mut traces: HashMap<String, Value> = HashMap::new();
    for id in before.iter().chain(&after) {
        traces.insert(id.clone(), wait_for_trace(query, id, 8).await);
    }
    let all: BTreeSet<String> = before.union(&after).cloned().collect();
    let duration = |id: &str| {
        let (start, end) = trace_window(&traces[id]);
        end - start
    };

    let browser = connect(&driver).await;
    let outcome = async {
        browser.goto(&format!("http://{query}/")).await.expect("open the viewer");
        browser
            .wait()
            .for_element(Locator::Css("#service option[value='gallery-api']"))
            .await
            .expect("services listed")
            .click()
            .await
            .expect("choose gallery-api");
        browser.find(Locator::Css("#find")).await.expect("find").click().await.expect("search");
        wait_for_listed(&browser, &all).await;

        // Sorting: by duration, longest first, then shortest first.
        browser
            .find(Locator::Css("#results th[data-sort='duration']"))
            .await
            .expect("header")
            .click()
            .await
            .expect("sort");
        let by_duration: Vec<i64> = listed(&browser).await.iter().map(|id| duration(id)).collect();
        assert!(by_duration.windows(2).all(|w| w[0] >= w[1]), "longest first: {by_duration:?}");
        browser
            .find(Locator::Css("#results th[data-sort='duration']"))
            .await
            .expect("header")
            .click()
            .await
            .expect("sort");
        let by_duration: Vec<i64> = listed(&browser).await.iter().map(|id| duration(id)).collect();
        assert!(by_duration.windows(2).all(|w| w[0] <= w[1]), "shortest first: {by_duration:?}");
        let sorted = browser.find(Locator::Css("#results th[aria-sort]")).await.expect("sorted header");
        assert_eq!(sorted.attr("aria-sort").await.expect("attribute").as_deref(), Some("ascending"));

        // The swap marker: one, for the API's inbound filter, between the last trace before the
        // swap and the first after it.
        let markers = browser.find_all(Locator::Css("#timeline .swap-marker")).await.expect("markers");
        assert_eq!(markers.len(), 1, "one swap among these traces");
        let marker = &markers[0];
        assert_eq!(marker.attr("data-service").await.expect("attr").as_deref(), Some("gallery-api"));
        assert_eq!(marker.attr("data-from").await.expect("attr").as_deref(), Some("1"));
        assert_eq!(marker.attr("data-to").await.expect("attr").as_deref(), Some("2"));
        let at: f64 = marker.attr("data-at").await.expect("attr").and_then(|v| v.parse().ok()).expect("a time");
        let last_before = before.iter().map(|id| trace_window(&traces[id]).0).max().expect("traces before");
        let first_after = after.iter().map(|id| trace_window(&traces[id]).0).min().expect("traces after");
        assert!((last_before as f64) < at && at < first_after as f64, "{last_before} < {at} < {first_after}");
        let marker_left = left_percent(marker).await;
        for (ids, is_before) in [(&before, true), (&after, false)] {
            for id in ids {
                let dot =
                    browser.find(Locator::Css(&format!("#timeline .dot[data-trace-id='{id}']"))).await.expect("dot");
                let left = left_percent(&dot).await;
                assert_eq!(left < marker_left, is_before, "trace {id} at {left}% against the marker at {marker_left}%");
            }
        }

        // One click: the traces after the swap, found by the generation that made their spans.
        marker.find(Locator::Css("button.after")).await.expect("after").click().await.expect("search after");
        wait_for_listed(&browser, &after).await;
        let generation =
            browser.find(Locator::Css("#generation")).await.expect("field").prop("value").await.expect("value");
        assert_eq!(generation.as_deref(), Some("2"));

        // Compare a trace from before with one from after, span by span.
        browser.find(Locator::Css("#generation")).await.expect("field").clear().await.expect("clear");
        browser.find(Locator::Css("#find")).await.expect("find").click().await.expect("search");
        wait_for_listed(&browser, &all).await;
        let (a, b) = (before.iter().next().expect("one before"), after.iter().next().expect("one after"));
        for id in [a, b] {
            click(&browser, &format!("#results input.pick[data-trace-id='{id}']")).await;
        }
        browser.find(Locator::Css("#compare")).await.expect("compare").click().await.expect("compare");
        wait_for_count(&browser, ".compare tbody tr[data-delta-us]", 8).await;
        let rows = browser.find_all(Locator::Css(".compare tbody tr")).await.expect("rows");
        assert_eq!(rows.len(), 8, "the same 8 spans in both uploads");
        let root_duration = |id: &str| {
            let spans = traces[id]["spans"].as_array().cloned().unwrap_or_default();
            spans
                .iter()
                .find(|s| s["references"].as_array().is_some_and(Vec::is_empty))
                .and_then(|s| s["duration"].as_i64())
                .expect("root")
        };
        let mut root_delta = None;
        for row in &rows {
            let key = row.attr("data-span-key").await.expect("attr").unwrap_or_default();
            if !key.contains(" > ") {
                root_delta = row.attr("data-delta-us").await.expect("attr").and_then(|v| v.parse::<i64>().ok());
            }
        }
        assert_eq!(root_delta, Some(root_duration(b) - root_duration(a)), "B − A of the root spans");

        // One trace: flamegraph and statistics.
        browser.goto(&format!("http://{query}/trace/{b}")).await.expect("deep link");
        wait_for_count(&browser, "#trace .row", 8).await;
        browser
            .find(Locator::Css(".mode[data-mode='flamegraph']"))
            .await
            .expect("tab")
            .click()
            .await
            .expect("flamegraph");
        wait_for_count(&browser, ".flamegraph .flame", 8).await;
        browser
            .find(Locator::Css(".mode[data-mode='statistics']"))
            .await
            .expect("tab")
            .click()
            .await
            .expect("statistics");
        let groups: BTreeSet<(String, String)> = {
            let trace = &traces[b.as_str()];
            trace["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let process = s["processID"].as_str().unwrap_or("");
                    let service = trace["processes"][process]["serviceName"].as_str().unwrap_or("").to_owned();
                    (service, s["operationName"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        };
        wait_for_count(&browser, ".statistics tbody tr", groups.len()).await;
        let mut selfs = Vec::new();
        for row in browser.find_all(Locator::Css(".statistics tbody tr")).await.expect("rows") {
            selfs.push(
                row.attr("data-self-us").await.expect("attr").and_then(|v| v.parse::<f64>().ok()).expect("self time"),
            );
        }
        assert!(selfs.windows(2).all(|w| w[0] >= w[1]), "most self time first: {selfs:?}");
        // Every instant of the root is some span's own time, once or (where siblings overlap) more;
        // a span's own time is less than its duration when children ran inside it.
        let total_self: f64 = selfs.iter().sum();
        let all_durations: i64 =
            traces[b.as_str()]["spans"].as_array().into_iter().flatten().filter_map(|s| s["duration"].as_i64()).sum();
        assert!(
            root_duration(b) as f64 <= total_self && total_self < all_durations as f64,
            "{total_self} of {selfs:?}"
        );

        // The span's details say which generation made it.
        browser.find(Locator::Css(".mode[data-mode='timeline']")).await.expect("tab").click().await.expect("timeline");
        let server = browser
            .find(Locator::XPath("//div[contains(@class,'row')][.//span[@class='generation' and text()='g2']]"))
            .await
            .expect("the API's inbound span, marked g2");
        server.click().await.expect("select it");
        let details = browser.wait().for_element(Locator::Css("#details table")).await.expect("details");
        let _ = details;
        let text = browser.find(Locator::Css("#details")).await.expect("details").text().await.expect("text");
        assert!(text.contains("trace filter generation 2"), "{text}");
    }
    .await;
    let _ = browser.close().await;
    demo.stop();
    outcome
}
