//! `/v1/transactions`: several legs moved at once, all or none, idempotently with an
//! `Idempotency-Key`, and read back. One event carries every leg, so every region applies the
//! transaction whole too.

use super::accounts::parse_account_id;
use super::body::{JsonBody, canonical_hash};
use super::query::PathId;
use super::transfers::{parse_amount, scoped_key, submit};
use super::{AppState, Caller, read_problem};
use crate::problem::Problem;
use crate::storage::transaction_json;
use crate::write::{Command, Transaction};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ledger_core::{Currency, LEGS_MAX, LedgerEvent, Leg};
use serde::Deserialize;
use serde_json::Value;
use sqlx::Row;

/// `POST /v1/transactions`: the legs to move together.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TransactionRequest)]
pub(super) struct TransactionBody {
    /// 1 to 16 legs (`LEGS_MAX`), judged in order by the transfer rules on the balances the legs
    /// before left: a later leg may spend what an earlier one brought; one refused leg refuses all.
    #[schema(min_items = 1, max_items = 16)]
    legs: Vec<LegBody>,
    /// Anything the client wants kept with the transaction (and each of its legs).
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: serde_json::Map<String, Value>,
}

/// One leg of a transaction.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TransactionLegRequest)]
pub(super) struct LegBody {
    /// The debited account.
    #[schema(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "alice")]
    from: String,
    /// The credited account, another one.
    #[schema(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "shop")]
    to: String,
    /// Minor units: an integer from 1 to 10^15 (`AMOUNT_MAX`).
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 2500)]
    amount: Value,
    /// Both accounts' currency (`currency-mismatch` otherwise).
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
}

fn parse(body: &TransactionBody) -> Result<Vec<Leg>, Problem> {
    if body.legs.is_empty() || body.legs.len() > LEGS_MAX {
        return Err(Problem::invalid_field(format!("legs: 1 to {LEGS_MAX} legs, not {}", body.legs.len())));
    }
    let leg_problem = |i: usize, mut p: Problem| {
        p.detail = format!("leg {i}: {}", p.detail);
        p
    };
    body.legs
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(Leg {
                from: parse_account_id(&l.from).map_err(|p| leg_problem(i, p))?,
                to: parse_account_id(&l.to).map_err(|p| leg_problem(i, p))?,
                amount: parse_amount(&l.amount).map_err(|p| leg_problem(i, p))?,
                currency: Currency::new(&l.currency)
                    .map_err(|e| leg_problem(i, Problem::invalid_currency(e.to_string())))?,
            })
        })
        .collect()
}

/// Moves every leg or none; with an `Idempotency-Key`, a retry answers the original transaction.
#[utoipa::path(
    post,
    path = "/v1/transactions",
    tag = "transactions",
    operation_id = "createTransaction",
    security(("bearer" = ["write"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "1 to 255 visible ASCII characters, scoped to the API key and shared with transfers: a \
                retry with the same key and body answers the original transaction (header `idempotent-replayed: \
                true`); the same key with another body is `idempotency-key-reused`"),
    ),
    request_body(content = TransactionBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Committed, every leg (or the replay of the transaction made with this key)",
            body = super::openapi::Transaction,
            headers(
                ("Location" = String, description = "`/v1/transactions/{id}`"),
                ("idempotent-replayed" = Option<String>, description = "`true` when answered from the key's record"),
            ),
            links(("GetTransaction" = (operation_id = "getTransaction", parameters(("id" = "$response.body#/id")),
                description = "The transaction just made")))),
        (status = 400, description = "`invalid-json`, `unknown-field`, `missing-field`, `invalid-field` (no legs, \
            more than 16), `invalid-account-id`, `invalid-currency`, `invalid-amount`, `amount-out-of-range`, \
            `invalid-idempotency-key`; a leg's problem names the leg", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`account-not-found` (naming the leg)", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`insufficient-funds`, `account-frozen` (naming the leg), \
            `idempotency-key-reused`", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, description = "`same-account`, `currency-mismatch`, `balance-overflow` (naming the leg)",
            body = Problem, content_type = "application/problem+json"),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn create(
    state: State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: JsonBody<TransactionBody>,
) -> Response {
    let command = match scoped_key(&headers, &caller).and_then(|key| Ok((key, parse(&body.value)?))) {
        Ok((idempotency_key, legs)) => Transaction {
            transaction_id: uuid::Uuid::now_v7(),
            legs,
            metadata: body.value.metadata.clone(),
            idempotency_key,
            request_hash: canonical_hash(&body.raw),
            traceparent: crate::telemetry::traceparent_of(&tracing::Span::current()),
        },
        Err(p) => return p.into_response(),
    };
    submit(&state, Command::Transaction(command)).await
}

/// One transaction, as `POST /v1/transactions` answered it.
#[utoipa::path(
    get,
    path = "/v1/transactions/{id}",
    tag = "transactions",
    operation_id = "getTransaction",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, format = Uuid, description = "The transaction id")),
    responses(
        (status = 200, description = "The transaction", body = super::openapi::Transaction),
        (status = 400, description = "`invalid-field`: the id is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`transaction-not-found`", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn get(State(state): State<AppState>, PathId(id): PathId) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return Problem::invalid_field("a transaction id is a UUID").into_response();
    };
    // Its first leg's row leads to the event, which holds every leg.
    let row = sqlx::query(
        "SELECT e.payload, t.created_at FROM transfers t JOIN ledger_events e ON e.event_id = t.event_id
         WHERE t.transaction_id = $1 AND t.leg = 0",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await;
    let row = match row {
        Ok(Some(row)) => row,
        Ok(None) => return Problem::transaction_not_found(&id.to_string()).into_response(),
        Err(e) => return read_problem(e).into_response(),
    };
    let decoded = (|| -> Result<Value, Box<dyn std::error::Error>> {
        let event: LedgerEvent = serde_json::from_value(row.try_get("payload")?)?;
        transaction_json(&event, &row.try_get("created_at")?).ok_or_else(|| "not a transaction event".into())
    })();
    match decoded {
        Ok(body) => Json(body).into_response(),
        Err(e) => Problem::internal(format!("stored transaction unreadable: {e}")).into_response(),
    }
}
