//! Large bodies stream through the proxy in both directions: the far side sees the first
//! mebibyte before the near side has sent the rest, so nothing is buffered whole.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wasmtrace_proxy::body::{ChannelBody, ProxyBody, boxed};

use crate::fixture::proxy::{bootstrap_yaml, cluster, ingress, route, start, wasm_filter};
use crate::fixture::upstream::{FNV_START, MIB, Upstream, fnv1a, source_chunk};

const TOTAL_MIB: usize = 50;
const PATIENCE: Duration = Duration::from_secs(20);

fn streaming_client(http2: bool) -> Client<hyper_util::client::legacy::connect::HttpConnector, ProxyBody> {
    Client::builder(TokioExecutor::new()).http2_only(http2).build_http()
}

async fn upload_streams(proxy: SocketAddr, upstream: &Upstream, http2: bool) {
    let client = streaming_client(http2);
    let (tx, body) = ChannelBody::new();
    let request = Request::post(format!("http://{proxy}/sink")).body(boxed(body)).expect("request");
    let response = tokio::spawn(client.request(request));
    let mut progress = upstream.state.sink_progress.subscribe();
    let mut expected_hash = FNV_START;
    let first = source_chunk(0);
    expected_hash = fnv1a(expected_hash, &first);
    tx.send(Ok(Frame::data(first))).await.expect("send first MiB");
    tokio::time::timeout(PATIENCE, progress.wait_for(|received| *received >= MIB as u64))
        .await
        .expect("the upstream got the first MiB while the client still held the rest: the body streams")
        .expect("progress channel open");
    for i in 1..TOTAL_MIB {
        let chunk = source_chunk(i);
        expected_hash = fnv1a(expected_hash, &chunk);
        tx.send(Ok(Frame::data(chunk))).await.expect("send");
    }
    drop(tx);
    let response =
        tokio::time::timeout(PATIENCE, response).await.expect("answer in time").expect("task").expect("response");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let summary: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(summary["bytes"], (TOTAL_MIB * MIB) as u64);
    assert_eq!(summary["hash"], expected_hash, "every byte arrived, in order");
}

async fn download_streams(proxy: SocketAddr, upstream: &Upstream, http2: bool) {
    let client = streaming_client(http2);
    let request = Request::get(format!("http://{proxy}/source?mib={TOTAL_MIB}"))
        .body(boxed(http_body_util::Empty::new()))
        .expect("request");
    let response =
        tokio::time::timeout(PATIENCE, client.request(request)).await.expect("headers in time").expect("response");
    let mut body = response.into_body();
    let (mut received, mut hash, mut released) = (0usize, FNV_START, false);
    let mut expected_hash = FNV_START;
    for i in 0..TOTAL_MIB {
        expected_hash = fnv1a(expected_hash, &source_chunk(i));
    }
    while received < TOTAL_MIB * MIB {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("the first MiB arrives while the upstream holds the rest: the body streams")
            .expect("more frames")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            received += data.len();
            hash = fnv1a(hash, &data);
        }
        if received >= MIB && !released {
            released = true;
            upstream.state.source_proceed.notify_one();
        }
    }
    assert_eq!(received, TOTAL_MIB * MIB);
    assert_eq!(hash, expected_hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mebibytes_stream_both_ways_without_a_filter() {
    let upstream = Upstream::start();
    let yaml = bootstrap_yaml(&[], &route("/", "service", "60s"), &[cluster("service", upstream.addr, "")]);
    let proxy = start(&yaml);
    upload_streams(ingress(&proxy), &upstream, false).await;
    download_streams(ingress(&proxy), &upstream, false).await;
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mebibytes_stream_both_ways_through_a_filter_that_does_not_buffer() {
    let upstream = Upstream::start();
    let yaml = bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &route("/", "service", "60s"),
        &[cluster("service", upstream.addr, "")],
    );
    let proxy = start(&yaml);
    upload_streams(ingress(&proxy), &upstream, true).await;
    download_streams(ingress(&proxy), &upstream, true).await;
    proxy.shutdown();
}

/// A filter holds the first chunk of a request body until its callout answers, then resumes:
/// the chunk goes on at once. In a bidirectional stream the client sends the next chunk only
/// after the echo of the first, so waiting for more data before flushing would stall forever.
async fn a_resumed_filter_releases_what_it_held_without_waiting_for_more(http2: bool) {
    let upstream = Upstream::start();
    let proxy = start(&bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &route("/", "service", "10s"),
        &[cluster("service", upstream.addr, ""), cluster("auth", upstream.addr, "")],
    ));
    let client = streaming_client(http2);
    let (tx, body) = ChannelBody::new();
    let request =
        Request::post(format!("http://{}/stream-echo/paused", ingress(&proxy))).body(boxed(body)).expect("request");
    let response = tokio::spawn(client.request(request));
    let mut echoed = Vec::new();
    tx.send(Ok(Frame::data(bytes::Bytes::from_static(b"first ")))).await.expect("send");
    let response =
        tokio::time::timeout(PATIENCE, response).await.expect("headers in time").expect("task").expect("response");
    let mut body = response.into_body();
    for (chunk, expected) in [(&b"second "[..], &b"first "[..]), (b"third", b"first second ")] {
        // The echo of everything sent so far arrives before the client sends more.
        while echoed.len() < expected.len() {
            let frame = tokio::time::timeout(PATIENCE, body.frame())
                .await
                .expect("the echo of what was sent arrives without more data being sent")
                .expect("the stream goes on")
                .expect("frame");
            echoed.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]));
        }
        assert_eq!(echoed, expected);
        tx.send(Ok(Frame::data(bytes::Bytes::from_static(chunk)))).await.expect("send");
    }
    drop(tx);
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.expect("the end arrives") {
        echoed.extend_from_slice(frame.expect("frame").data_ref().map_or(&[][..], |d| &d[..]));
    }
    assert_eq!(echoed, b"first second third");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_resuming_a_paused_body_does_not_stall_a_bidirectional_stream() {
    a_resumed_filter_releases_what_it_held_without_waiting_for_more(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_resuming_a_paused_body_does_not_stall_a_bidirectional_h2_stream() {
    a_resumed_filter_releases_what_it_held_without_waiting_for_more(true).await;
}
