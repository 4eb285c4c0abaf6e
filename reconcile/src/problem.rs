//! Errors as the API and the forms see them: RFC 9457 `application/problem+json` with a stable
//! `type` (the same base as the region nodes'), and the same detail shown on a form.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Base of every problem type URI.
pub const TYPE_BASE: &str = "https://ledger.dev/problems/";

/// One refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{slug}: {detail}")]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable identifier.
    pub slug: &'static str,
    /// What exactly was wrong.
    pub detail: String,
}

impl Problem {
    /// A problem of any kind.
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Self { status, slug, detail: detail.into() }
    }
    /// Bad input: a field missing, unknown, or of the wrong shape.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", detail)
    }
    /// No credentials, or credentials that do not hold.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    /// The caller's role does not allow the action.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    /// Four eyes: the proposer cannot decide on their own proposal.
    pub fn maker_checker(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "maker-checker", detail)
    }
    /// A form posted without the session's CSRF token.
    pub fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "csrf-token-invalid",
            "the form's CSRF token is missing or wrong; reload the page",
        )
    }
    /// Too many failed logins.
    pub fn locked(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "account-locked", detail)
    }
    /// No such case, proposal or page.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }
    /// The case or proposal is not in a state that allows the action.
    pub fn invalid_state(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid-state", detail)
    }
    /// The database failed.
    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the database is unreachable; retry")
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        Problem::unavailable()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("{TYPE_BASE}{}", self.slug),
            "title": self.slug.replace('-', " "),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}
