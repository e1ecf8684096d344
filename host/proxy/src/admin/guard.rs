//! Who may use the admin API. Whoever can swap a filter can read and change every request, so:
//!
//! - **Host**: only a loopback name (`localhost`, `*.localhost`) or an IP literal is served. A
//!   web page can point a DNS name it controls at 127.0.0.1 (DNS rebinding) and then talk to
//!   the admin API as same-origin; it cannot make the browser send an IP literal or `localhost`
//!   as its Host. A request with the valid bearer token may use any Host (the page cannot know
//!   the token).
//! - **Mutations** (`POST`) must be `application/json` (a cross-origin page can send
//!   `text/plain` without a CORS preflight, never JSON) and must not come from a foreign origin
//!   (`Origin`, `Sec-Fetch-Site`).
//! - **Bearer token**: when the admin API has one (`--admin-token-file`; required off loopback),
//!   every mutation must carry `Authorization: Bearer <token>`, compared in constant time.
//!   Reads stay open, as Envoy's admin is.

use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, Method, StatusCode, header};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Shortest token accepted: guessing must be hopeless.
const MIN_TOKEN_BYTES: usize = 16;
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// The secret that admin mutations must present; only its digest is kept.
pub struct AdminToken {
    digest: [u8; 32],
}

/// Why a token file was refused.
#[derive(Debug, Error)]
pub enum AdminTokenError {
    /// The file could not be read.
    #[error("cannot read the admin token file {path}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a regular file, or too large.
    #[error("the admin token file {0} must be a regular file of at most {MAX_TOKEN_FILE} bytes")]
    NotAFile(String),
    /// Too short once trimmed.
    #[error("the admin token in {0} is shorter than {MIN_TOKEN_BYTES} bytes; use e.g. `openssl rand -hex 32`")]
    TooShort(String),
}

impl AdminToken {
    /// The token in `path` (surrounding white space ignored).
    pub fn from_file(path: &Path) -> Result<Self, AdminTokenError> {
        let shown = path.display().to_string();
        let metadata =
            std::fs::metadata(path).map_err(|source| AdminTokenError::Read { path: shown.clone(), source })?;
        if !metadata.is_file() || metadata.len() > MAX_TOKEN_FILE {
            return Err(AdminTokenError::NotAFile(shown));
        }
        let text = std::fs::read(path).map_err(|source| AdminTokenError::Read { path: shown.clone(), source })?;
        Self::from_secret(text.trim_ascii()).ok_or(AdminTokenError::TooShort(shown))
    }

    /// A token from its bytes; `None` when shorter than 16 bytes.
    pub fn from_secret(secret: &[u8]) -> Option<Self> {
        (secret.len() >= MIN_TOKEN_BYTES).then(|| Self { digest: Sha256::digest(secret).into() })
    }

    /// Whether `presented` is the token. Both sides are hashed first, so the comparison takes
    /// the same time whatever the presented length, and the fold does not stop early.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        presented.iter().zip(&self.digest).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
    }
}

/// A refusal: the status and the message the caller gets.
pub struct Refusal {
    /// 401, 403 or 415.
    pub status: StatusCode,
    /// What to do about it.
    pub message: &'static str,
}

/// Whether `Host` names this machine in a way a web page cannot forge: an IP literal or a
/// loopback name.
fn host_is_safe(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) if after.is_empty() || after.starts_with(':') => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.trim_ascii())
}

/// Whether the request comes from another origin than the admin API itself.
fn foreign_origin(headers: &HeaderMap, host: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return true;
    }
    match headers.get(header::ORIGIN) {
        None => false,
        Some(origin) => {
            let origin = origin.as_bytes();
            let own = [b"http://".as_slice(), host.as_bytes()].concat();
            !origin.eq_ignore_ascii_case(&own)
        }
    }
}

/// Whether the body is declared as JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json")))
}

/// Checks a request against the rules above; `Ok` means serve it.
pub fn admit(method: &Method, headers: &HeaderMap, token: Option<&AdminToken>) -> Result<(), Refusal> {
    let presented = bearer(headers);
    let authorised = match (token, presented) {
        (Some(token), Some(presented)) => token.matches(presented),
        _ => false,
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !authorised && !host_is_safe(host) {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: "the admin API answers only requests addressed to localhost or an IP address \
                      (or carrying its bearer token); this Host is refused",
        });
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    if foreign_origin(headers, host) {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: "the admin API refuses changes sent from another origin (a web page)",
        });
    }
    if !is_json(headers) {
        return Err(Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "admin changes take a JSON body: send Content-Type: application/json",
        });
    }
    if token.is_some() && !authorised {
        return Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: "this admin API needs its bearer token for changes: send Authorization: Bearer <token>",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_ip_literals_are_safe_hosts() {
        for host in ["localhost", "localhost:9901", "api.localhost:1", "127.0.0.1:9901", "[::1]:9901", "10.0.0.7"] {
            assert!(host_is_safe(host), "{host}");
        }
        for host in ["evil.example:9901", "", "[::1", "127.0.0.1.nip.io", "localhost.evil.example"] {
            assert!(!host_is_safe(host), "{host}");
        }
    }

    #[test]
    fn tokens_compare_by_content() {
        let token = AdminToken::from_secret(b"0123456789abcdef0123").expect("long enough");
        assert!(token.matches(b"0123456789abcdef0123"));
        assert!(!token.matches(b"0123456789abcdef0124"));
        assert!(!token.matches(b""));
        assert!(AdminToken::from_secret(b"short").is_none());
    }
}
