//! Something to look at: a few generated images uploaded through the gallery, then a burst of
//! the requests a user makes (list, view, metadata, a missing image).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::DemoError;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A `size`×`size` RGB PNG painted by `pixel(x, y)`.
pub fn png(size: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..size {
        raw.push(0); // no filter
        for x in 0..size {
            raw.extend_from_slice(&pixel(x, y));
        }
    }
    let mut compressed = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = std::io::Write::write_all(&mut compressed, &raw);
    let idat = compressed.finish().unwrap_or_default();
    let mut header = Vec::new();
    header.extend_from_slice(&size.to_be_bytes());
    header.extend_from_slice(&size.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &header);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Six colourful images.
pub fn sample_images() -> Vec<Vec<u8>> {
    let s = |v: u32| (v % 256) as u8;
    vec![
        png(160, |x, y| [s(x), s(y * 2), 180]),
        png(160, |x, y| [200, s(x + y), s(x * y)]),
        png(160, |x, y| [s(x ^ y), 90, s(x * 3)]),
        png(160, |x, y| [s(255 - x), 120, s(y)]),
        png(160, |x, y| [30, s((x / 20 + y / 20) * 60), 160]),
        png(160, |x, y| [s(x * 2), s(y * 2), s(x + y)]),
    ]
}

async fn request(
    client: &HttpClient,
    method: &str,
    url: String,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, Option<String>, Bytes), DemoError> {
    let request = http::Request::builder()
        .method(method)
        .uri(&url)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| DemoError::http(&url, e))?;
    let response = client.request(request).await.map_err(|e| DemoError::http(&url, e))?;
    let status = response.status().as_u16();
    let trace = response
        .headers()
        .get("traceresponse")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .map(str::to_owned);
    let body = response.into_body().collect().await.map_err(|e| DemoError::http(&url, e))?.to_bytes();
    Ok((status, trace, body))
}

/// What the traffic left behind.
pub struct Seeded {
    /// Ids of the images uploaded.
    pub images: Vec<String>,
    /// The trace of the first upload.
    pub upload_trace: Option<String>,
    /// Requests made in all.
    pub requests: usize,
}

/// Uploads the sample images through `gallery`, then views them like a user would.
pub async fn seed_and_browse(gallery: SocketAddr) -> Result<Seeded, DemoError> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{gallery}");
    let mut seeded = Seeded { images: Vec::new(), upload_trace: None, requests: 0 };
    for image in sample_images() {
        let (status, trace, body) = request(&client, "POST", format!("{base}/v0/images"), "image/png", image).await?;
        seeded.requests += 1;
        if status != 201 {
            let body = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(DemoError::Unexpected { what: "uploading a sample image", status, body });
        }
        let meta: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|source| DemoError::Json { what: "the upload's answer".into(), source })?;
        seeded.images.push(meta["id"].as_str().unwrap_or_default().to_owned());
        seeded.upload_trace = seeded.upload_trace.or(trace);
    }
    for _ in 0..3 {
        request(&client, "GET", format!("{base}/v0/images?limit=24"), "application/json", Vec::new()).await?;
        seeded.requests += 1;
        for id in &seeded.images {
            request(&client, "GET", format!("{base}/v0/images/{id}"), "application/json", Vec::new()).await?;
            request(&client, "GET", format!("{base}/v0/images/{id}/meta"), "application/json", Vec::new()).await?;
            seeded.requests += 2;
        }
    }
    request(
        &client,
        "GET",
        format!("{base}/v0/images/00000000-0000-7000-8000-000000000000"),
        "application/json",
        Vec::new(),
    )
    .await?;
    seeded.requests += 1;
    Ok(seeded)
}
