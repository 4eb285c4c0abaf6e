//! Errors as HTTP sees them: RFC 9457 `application/problem+json`, one stable `type` per kind of
//! error. Every rejection of the API goes through here, so clients can switch on `type`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Base of every problem type URI; the slug after it is the stable part clients match on.
pub const TYPE_BASE: &str = "https://ledger.dev/problems/";

/// Every problem type's slug, in the order of the constructors below: the OpenAPI description's
/// `Problem.type` enumerates these (a test checks each constructor's slug is here and each slug has
/// a constructor, so a new problem type cannot stay undocumented).
pub const TYPES: [&str; 39] = [
    "invalid-json",
    "unknown-field",
    "missing-field",
    "invalid-field",
    "payload-too-large",
    "unsupported-media-type",
    "invalid-account-id",
    "invalid-currency",
    "invalid-amount",
    "amount-out-of-range",
    "same-account",
    "account-not-found",
    "transfer-not-found",
    "transaction-not-found",
    "transfer-not-pending",
    "post-exceeds-pending",
    "currency-mismatch",
    "insufficient-funds",
    "balance-overflow",
    "account-frozen",
    "account-exists",
    "idempotency-key-reused",
    "invalid-idempotency-key",
    "invalid-query",
    "unauthorized",
    "forbidden",
    "conflict-already-resolved",
    "definition-not-offered",
    "invalid-condition",
    "invalid-target-url",
    "monitor-not-found",
    "delivery-not-found",
    "delivery-not-dead",
    "not-found",
    "method-not-allowed",
    "unavailable",
    "invalid-session-token",
    "session-not-caught-up",
    "internal",
];

/// One API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{slug}: {detail}")]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable identifier, e.g. `insufficient-funds`.
    pub slug: &'static str,
    /// Short human summary of the type.
    pub title: &'static str,
    /// What exactly was wrong with this request.
    pub detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, slug, title, detail: detail.into() }
    }

    /// The body is not valid JSON.
    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-json", "Request body is not valid JSON", detail)
    }
    /// A field the API does not know.
    pub fn unknown_field(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unknown-field", "Request has an unknown field", detail)
    }
    /// A required field is absent.
    pub fn missing_field(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "missing-field", "Request lacks a required field", detail)
    }
    /// A field has the wrong type or shape.
    pub fn invalid_field(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-field", "Request has an invalid field", detail)
    }
    /// The body exceeds the size limit.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
            "the body exceeds the size limit",
        )
    }
    /// Not `application/json`.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as application/json",
        )
    }
    /// An account id outside the allowed length or characters.
    pub fn invalid_account_id(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-account-id", "Invalid account id", detail)
    }
    /// Not a currency code.
    pub fn invalid_currency(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-currency", "Invalid currency", detail)
    }
    /// Zero, negative or fractional amount.
    pub fn invalid_amount(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-amount", "Invalid amount", detail)
    }
    /// An amount above `ledger_core::AMOUNT_MAX` (10^15 minor units).
    pub fn amount_out_of_range(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "amount-out-of-range", "Amount out of range", detail)
    }
    /// `from` equals `to`.
    pub fn same_account() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "same-account",
            "Transfer to the same account",
            "from and to must be different accounts",
        )
    }
    /// An account named by the request does not exist.
    pub fn account_not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "account-not-found", "Account not found", format!("no account {id:?}"))
    }
    /// A transfer that does not exist.
    pub fn transfer_not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "transfer-not-found", "Transfer not found", format!("no transfer {id:?}"))
    }
    /// A post or void of a transfer that is not pending (here): settled, expired, or not two-phase.
    pub fn transfer_not_pending(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "transfer-not-pending", "Transfer is not pending", detail)
    }
    /// A post of more than the pending transfer reserved.
    pub fn post_exceeds_pending(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "post-exceeds-pending", "Post exceeds the pending amount", detail)
    }
    /// A transaction that does not exist (here, yet).
    pub fn transaction_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "transaction-not-found",
            "Transaction not found",
            format!("no transaction {id:?}"),
        )
    }
    /// Currencies differ.
    pub fn currency_mismatch(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "currency-mismatch", "Currency mismatch", detail)
    }
    /// The debit would take an account that forbids it below zero.
    pub fn insufficient_funds(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "insufficient-funds", "Insufficient funds", detail)
    }
    /// A transfer would leave a balance outside ±`ledger_core::BALANCE_MAX` (2^62 minor units).
    pub fn balance_overflow(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "balance-overflow", "Balance out of range", detail)
    }
    /// Two regions opened the account with different attributes: frozen until resolved.
    pub fn account_frozen(id: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "account-frozen",
            "Account frozen",
            format!(
                "account {id:?} was opened in two regions with different attributes; it is frozen until finance resolves the account-definition conflict"
            ),
        )
    }
    /// The account exists with other attributes.
    pub fn account_exists(id: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "account-exists",
            "Account exists with other attributes",
            format!("account {id:?} was opened with a different body"),
        )
    }
    /// The idempotency key was used with another body.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request body",
        )
    }
    /// A malformed idempotency key.
    pub fn invalid_idempotency_key(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-idempotency-key", "Invalid Idempotency-Key", detail)
    }
    /// A malformed query parameter.
    pub fn invalid_query(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-query", "Invalid query parameter", detail)
    }
    /// No or unknown API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            "send a valid API key as Authorization: Bearer <key>",
        )
    }
    /// The key lacks the scope.
    pub fn forbidden(scope: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Missing scope", format!("this API key lacks the {scope} scope"))
    }
    /// A conflict this region does not hold (it may not have detected it yet: retry later).
    pub fn conflict_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no conflict {id:?} in this region (it may not have detected it yet)"),
        )
    }
    /// The conflict was resolved here with another resolution.
    pub fn conflict_already_resolved(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict-already-resolved", "Conflict already resolved", detail)
    }
    /// The definition is none of the openings the account-definition conflict names.
    pub fn definition_not_offered(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "definition-not-offered", "Definition not offered", detail)
    }
    /// A monitor condition outside the grammar (`ledger_core::monitor`).
    pub fn invalid_condition(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-condition", "Invalid monitor condition", detail)
    }
    /// A webhook target that is not an http(s) URL of a public address (unless private ones are
    /// allowed by the node's configuration).
    pub fn invalid_target_url(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-target-url", "Invalid webhook target URL", detail)
    }
    /// No monitor with this id in this region (monitors are regional).
    pub fn monitor_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "monitor-not-found",
            "Monitor not found",
            format!("no monitor {id:?} in this region"),
        )
    }
    /// No webhook delivery with this id in this region.
    pub fn delivery_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "delivery-not-found",
            "Webhook delivery not found",
            format!("no webhook delivery {id:?} in this region"),
        )
    }
    /// Only a dead delivery is retried by hand; a pending one is being retried already.
    pub fn delivery_not_dead(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "delivery-not-dead", "Webhook delivery not dead", detail)
    }
    /// No such route.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such resource")
    }
    /// Method not allowed on the route.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", "see the API reference")
    }
    /// The node is overloaded or shutting down; retry with the same idempotency key.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
    }
    /// A `Ledger-Session` token that is malformed, altered or signed with another key.
    pub fn invalid_session_token(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-session-token", "Invalid session token", detail)
    }
    /// This region has not yet applied what the session token names (answered with Retry-After).
    pub fn session_not_caught_up(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "session-not-caught-up", "Session not caught up", detail)
    }
    /// A fault of ours; the request may or may not have been applied only if it carried no
    /// idempotency key, so clients retry with the same key.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            kind: format!("{TYPE_BASE}{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The slug of every constructor's call of `new` in this file (tests excluded): the first string
    /// literal after it.
    fn constructor_slugs() -> BTreeSet<String> {
        let source = include_str!("problem.rs");
        let code = &source[..source.find("#[cfg(test)]").expect("the tests are at the end")];
        code.split("Self::new(").skip(1).filter_map(|call| call.split('"').nth(1).map(str::to_owned)).collect()
    }

    #[test]
    fn every_constructor_slug_is_listed_in_types_and_nothing_else_is() {
        let listed: BTreeSet<String> = TYPES.iter().map(|s| s.to_string()).collect();
        assert_eq!(listed.len(), TYPES.len(), "a slug is listed twice");
        assert_eq!(constructor_slugs(), listed, "problem::TYPES and the constructors disagree");
    }
}
