//! The router's own answers: RFC 9457 `application/problem+json` with a stable `type` under
//! `https://ledger.dev/problems/`, like the nodes' (clients switch on the same base).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Base of every problem type URI, the nodes' too.
pub const TYPE_BASE: &str = "https://ledger.dev/problems/";

/// One error the router answers itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{slug}: {detail}")]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable identifier.
    pub slug: &'static str,
    /// Short summary of the type.
    pub title: &'static str,
    /// What exactly happened.
    pub detail: String,
    /// Seconds for `Retry-After`, when retrying later makes sense.
    pub retry_after_s: Option<u64>,
}

impl Problem {
    /// `X-Client-Region` names no client region of the latency table.
    pub fn unknown_client_region(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            slug: "unknown-client-region",
            title: "Unknown client region",
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    /// Every region is out (or not checked yet).
    pub fn no_healthy_region(retry_after_s: u64) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            slug: "no-healthy-region",
            title: "No healthy region",
            detail: "no region passes its health checks; retry later".into(),
            retry_after_s: Some(retry_after_s),
        }
    }

    /// `in_flight_max` requests are being forwarded already.
    pub fn overloaded(in_flight_max: usize) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            slug: "router-overloaded",
            title: "Router overloaded",
            detail: format!("the router is forwarding its most requests at once ({in_flight_max}); retry later"),
            retry_after_s: Some(1),
        }
    }

    /// The request body did not arrive within `body_timeout_ms`.
    pub fn body_timeout(timeout_ms: u64) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            slug: "body-timeout",
            title: "Request body too slow",
            detail: format!("the body did not arrive within {timeout_ms} ms"),
            retry_after_s: None,
        }
    }

    /// The chosen region failed to answer; the router does not retry this request elsewhere.
    pub fn region_unavailable(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            slug: "region-unavailable",
            title: "Region unavailable",
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    /// The body is larger than `body_limit_bytes`.
    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            slug: "payload-too-large",
            title: "Request body too large",
            detail: format!("the body exceeds the router's limit of {limit_bytes} bytes"),
            retry_after_s: None,
        }
    }

    /// The request body could not be read.
    pub fn invalid_body(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            slug: "invalid-body",
            title: "Request body unreadable",
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    /// A `/_router/` path the router does not serve.
    pub fn not_found(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            slug: "not-found",
            title: "Not found",
            detail: format!("the router serves no {path}"),
            retry_after_s: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("{TYPE_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}
