//! The error every gallery endpoint answers with: a status and `{"message": "..."}`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// An error response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500, logged: the client learns what failed (`context`, a fixed phrase such as "listing
    /// the images"), the log says why. The error's own text (a database's message, a path) is
    /// never sent: it can name tables, files and hosts the client has no business knowing.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {error}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{context} failed"))
    }

    /// 502: a service this one depends on failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, message)
    }

    /// The error an upstream answered, passed on: its 4xx as is, its 5xx as 502.
    pub fn from_upstream(service: &str, status: StatusCode, body: &[u8]) -> Self {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
        if status.is_client_error() {
            Self::new(status, message)
        } else {
            Self::bad_gateway(format!("{service} answered {status}: {message}"))
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "message": self.message }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_500_says_what_failed_but_not_the_error_behind_it() {
        let error = ApiError::internal("listing the images", "no such table: images_v2 (at /srv/db.sqlite)");
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.message, "listing the images failed");
    }
}
