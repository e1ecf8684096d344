//! What an upload can look like, reduced to image bytes and their media type: a JSON body
//! `{"base64": "...", "content_type": "..."}` (the original demo's shape), a multipart form (the
//! web page), or the raw image with its `Content-Type`. The bytes must be an image we can serve
//! back safely: the gallery's one allow-list ([`gallery_service::media`]) decides, the same one
//! the catalog and the store apply; SVG is refused (it can carry script).

use axum::extract::{FromRequest, Multipart, Request};
use base64::Engine as _;
use bytes::Bytes;
use gallery_service::{ApiError, media};
use http::StatusCode;
use serde::Deserialize;

/// An image ready for the catalog.
pub struct Upload {
    /// The bytes.
    pub bytes: Bytes,
    /// The media type, from the bytes themselves.
    pub content_type: &'static str,
}

/// The JSON form of an upload.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonUpload {
    base64: String,
    #[serde(default)]
    content_type: Option<String>,
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("images may be at most {max} bytes"))
}

fn checked(bytes: Bytes, declared: Option<&str>, max: usize) -> Result<Upload, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the upload is empty"));
    }
    if bytes.len() > max {
        return Err(too_large(max));
    }
    let content_type = media::check(declared, &bytes)?;
    Ok(Upload { bytes, content_type })
}

/// Reads an upload of any accepted shape; images above `max` bytes get 413.
pub async fn read(request: Request, max: usize) -> Result<Upload, ApiError> {
    let content_type =
        request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let essence = media::essence(&content_type);
    // Base64 and multipart framing make the body larger than the image.
    let body_limit = max / 3 * 4 + 64 * 1024;
    match essence.as_str() {
        "application/json" => {
            let body = axum::body::to_bytes(request.into_body(), body_limit).await.map_err(|_| too_large(max))?;
            let upload: JsonUpload = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("JSON upload: {e} (expected {{\"base64\": \"...\"}})")))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(upload.base64.trim())
                .map_err(|e| ApiError::bad_request(format!("`base64` is not valid base64: {e}")))?;
            checked(Bytes::from(bytes), upload.content_type.as_deref(), max)
        }
        "multipart/form-data" => {
            // Multipart reads a field whole: bound the body first.
            let (parts, body) = request.into_parts();
            let limited = axum::body::Body::new(http_body_util::Limited::new(body, body_limit));
            let request = Request::from_parts(parts, limited);
            let mut multipart = Multipart::from_request(request, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("multipart upload: {e}")))?;
            while let Some(field) =
                multipart.next_field().await.map_err(|e| ApiError::bad_request(format!("multipart upload: {e}")))?
            {
                if field.file_name().is_none() && field.name() != Some("image") {
                    continue;
                }
                let declared = field.content_type().map(str::to_owned);
                let bytes = field.bytes().await.map_err(|e| {
                    let limit_hit = e.status() == StatusCode::PAYLOAD_TOO_LARGE
                        || std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"))
                        || e.to_string().contains("length limit");
                    if limit_hit { too_large(max) } else { ApiError::bad_request(format!("multipart upload: {e}")) }
                })?;
                return checked(bytes, declared.as_deref(), max);
            }
            Err(ApiError::bad_request("multipart upload without a file (send it in a field named `image`)"))
        }
        _ if essence.starts_with("image/") || essence == "application/octet-stream" => {
            let body = axum::body::to_bytes(request.into_body(), max + 1).await.map_err(|_| too_large(max))?;
            checked(body, Some(&essence), max)
        }
        "" => Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type is required")),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("`{other}` uploads are not accepted: send JSON base64, multipart/form-data, or the image itself"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_type_must_match_the_bytes() {
        let png = Bytes::from_static(b"\x89PNG\r\n\x1a\nrest");
        assert!(checked(png.clone(), Some("image/png"), 100).is_ok());
        assert!(checked(png.clone(), None, 100).is_ok());
        let refused = checked(png.clone(), Some("image/jpeg"), 100).err().map(|e| e.status);
        assert_eq!(refused, Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        let svg = checked(Bytes::from_static(b"<svg/>"), Some("image/svg+xml"), 100).err().map(|e| e.status);
        assert_eq!(svg, Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(checked(png, None, 4).err().map(|e| e.status), Some(StatusCode::PAYLOAD_TOO_LARGE));
    }
}
