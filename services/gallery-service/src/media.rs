//! The image types the gallery accepts, stores and serves, in one place: `gallery-api`,
//! `image-catalog` and `image-store` all check what they are given with [`check`] against
//! [`ALLOWED`], so a client that skips the API (posting straight to the catalog or the store) is
//! held to the same rule. A type is judged by the bytes themselves (their magic number); a
//! declared type must be on the list and agree with them. SVG is not on the list: it is a
//! document that can carry script.
//!
//! Served image bytes carry [`protect_download`]'s headers, so even bytes that slipped in
//! before these checks (or a browser that sniffs) cannot run as a page of the gallery's origin.

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::ApiError;

/// The media types the gallery accepts, as their bytes announce them.
pub const ALLOWED: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"];

/// [`ALLOWED`] for people: what an error message lists.
pub const ALLOWED_NAMES: &str = "PNG, JPEG, GIF, WebP, AVIF, BMP";

/// The `Content-Security-Policy` of every served image: no script, no plugins, no same-origin
/// access, even if a browser renders the bytes as a document.
pub const DOWNLOAD_CSP: &str = "sandbox";

/// Why an image was refused (all answer 415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The declared type is not one the gallery takes.
    #[error("`{declared}` is not accepted: images must be {ALLOWED_NAMES}")]
    NotAllowed {
        /// The type the request declared.
        declared: String,
    },
    /// The bytes are not an image of an accepted type.
    #[error("not an image this gallery accepts ({ALLOWED_NAMES})")]
    NotAnImage,
    /// The declared type and the bytes disagree.
    #[error("the upload says `{declared}` but its bytes are {actual}")]
    Mismatch {
        /// The type the request declared.
        declared: String,
        /// The type of the bytes.
        actual: &'static str,
    },
}

impl From<MediaError> for ApiError {
    fn from(error: MediaError) -> Self {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, error.to_string())
    }
}

/// The media type of a `Content-Type` value: lower case, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The accepted media type the first bytes announce, if any.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" && (&bytes[8..12] == b"avif" || &bytes[8..12] == b"avis") {
        Some("image/avif")
    } else if starts(b"BM") && bytes.len() > 26 {
        Some("image/bmp")
    } else {
        None
    }
}

/// The media type to store `bytes` under: theirs, if it is [`ALLOWED`] and `declared` (a
/// `Content-Type` value) agrees. No declaration, an empty one or `application/octet-stream`
/// defers to the bytes.
pub fn check(declared: Option<&str>, bytes: &[u8]) -> Result<&'static str, MediaError> {
    let declared = declared.map(essence).filter(|d| !d.is_empty() && d != "application/octet-stream");
    if let Some(declared) = &declared
        && !ALLOWED.contains(&declared.as_str())
    {
        return Err(MediaError::NotAllowed { declared: declared.clone() });
    }
    let actual = sniff(bytes).ok_or(MediaError::NotAnImage)?;
    match declared {
        Some(declared) if declared != actual => Err(MediaError::Mismatch { declared, actual }),
        _ => Ok(actual),
    }
}

/// Makes a response of stored image bytes safe to open: `Content-Security-Policy: sandbox`,
/// `X-Content-Type-Options: nosniff`, and a `Content-Type` that is one of [`ALLOWED`] (anything
/// else, e.g. a record stored before these checks, is served as an `application/octet-stream`
/// attachment instead of inline).
pub fn protect_download(headers: &mut HeaderMap) {
    let allowed = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| ALLOWED.contains(&essence(v).as_str()));
    if !allowed {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(http::header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
    headers.insert(http::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOWNLOAD_CSP));
    headers.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\nrest";
    const SVG: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>";

    #[test]
    fn images_are_recognised_by_their_bytes() {
        assert_eq!(sniff(PNG), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(SVG), None);
        assert_eq!(sniff(b"plain text"), None);
        for sniffed in [sniff(PNG), sniff(b"GIF87a")] {
            assert!(sniffed.is_some_and(|t| ALLOWED.contains(&t)));
        }
    }

    #[test]
    fn a_declared_type_must_be_allowed_and_match_the_bytes() {
        assert_eq!(check(Some("image/png"), PNG), Ok("image/png"));
        assert_eq!(check(Some("IMAGE/PNG; charset=binary"), PNG), Ok("image/png"));
        assert_eq!(check(None, PNG), Ok("image/png"));
        assert_eq!(check(Some("application/octet-stream"), PNG), Ok("image/png"));
        assert_eq!(check(Some("image/svg+xml"), SVG), Err(MediaError::NotAllowed { declared: "image/svg+xml".into() }));
        assert_eq!(check(Some("image/svg+xml"), PNG), Err(MediaError::NotAllowed { declared: "image/svg+xml".into() }));
        assert_eq!(check(None, SVG), Err(MediaError::NotAnImage));
        assert_eq!(check(Some("image/png"), SVG), Err(MediaError::NotAnImage));
        assert_eq!(
            check(Some("image/jpeg"), PNG),
            Err(MediaError::Mismatch { declared: "image/jpeg".into(), actual: "image/png" })
        );
        assert_eq!(ApiError::from(MediaError::NotAnImage).status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn downloads_are_sandboxed_and_other_types_become_attachments() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        protect_download(&mut headers);
        assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("image/png"));
        assert_eq!(headers.get("content-security-policy").and_then(|v| v.to_str().ok()), Some("sandbox"));
        assert_eq!(headers.get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));
        assert!(headers.get("content-disposition").is_none());

        let mut legacy = HeaderMap::new();
        legacy.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
        protect_download(&mut legacy);
        assert_eq!(legacy.get("content-type").and_then(|v| v.to_str().ok()), Some("application/octet-stream"));
        assert_eq!(legacy.get("content-disposition").and_then(|v| v.to_str().ok()), Some("attachment"));
        assert_eq!(legacy.get("content-security-policy").and_then(|v| v.to_str().ok()), Some("sandbox"));
    }
}
