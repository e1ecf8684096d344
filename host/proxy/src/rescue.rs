//! The one place where upstream failures become responses: connect failure 503, timeout 504,
//! reset 502, each with a plain-text body naming the cluster and the cause.

use std::error::Error as _;
use std::time::Duration;

use http::StatusCode;

use crate::cluster::ConnectError;

/// What went wrong talking to an upstream.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// No connection could be made.
    Connect(String),
    /// No response headers within the route timeout.
    Timeout(Duration),
    /// The connection failed after it was made.
    Reset(String),
}

impl UpstreamFailure {
    /// Classifies a client error.
    pub fn from_client_error(error: &hyper_util::client::legacy::Error) -> Self {
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(connect) = cause.downcast_ref::<ConnectError>() {
                return Self::Connect(connect.to_string());
            }
            source = cause.source();
        }
        if error.is_connect() {
            return Self::Connect(error.to_string());
        }
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        Self::Reset(reason)
    }

    /// Classifies the error of the service in-process filters wrap: a client's (a client layer
    /// over hyper's pooled client) as [`Self::from_client_error`], anything else as a reset.
    pub fn from_application_error(error: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(client) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
            return Self::from_client_error(client);
        }
        // The application's own error (a database's, say) is logged, never sent to its client.
        tracing::debug!(error = %error, "the in-process application failed");
        Self::Reset("the application failed to answer".into())
    }

    /// Status, `response.code_details` and body for the downstream.
    pub fn response(&self, cluster: &str) -> (StatusCode, &'static str, String) {
        match self {
            Self::Connect(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_reset_before_response_started{connection_failure}",
                format!("upstream connect error: cluster `{cluster}`: {reason}\n"),
            ),
            Self::Timeout(after) => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_response_timeout",
                format!("upstream request timeout: cluster `{cluster}` did not respond within {after:?}\n"),
            ),
            Self::Reset(reason) => (
                StatusCode::BAD_GATEWAY,
                "upstream_reset_before_response_started{remote_reset}",
                format!("upstream reset: cluster `{cluster}`: {reason}\n"),
            ),
        }
    }

    /// The stats label of this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect_failure",
            Self::Timeout(_) => "timeout",
            Self::Reset(_) => "reset",
        }
    }
}
