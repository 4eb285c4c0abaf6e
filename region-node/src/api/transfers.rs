//! `/v1/transfers`: move money, idempotently with an `Idempotency-Key`, and read a transfer back.

use super::accounts::parse_account_id;
use super::body::{JsonBody, canonical_hash};
use super::query::PathId;
use super::{AppState, Caller, read_problem, with_timeout};
use crate::idempotency;
use crate::problem::Problem;
use crate::storage::transfer_json;
use crate::write::{Command, Outcome, Transfer};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ledger_core::{AMOUNT_MAX, AccountId, Amount, Currency, MoneyError, VersionVector};
use serde::Deserialize;
use serde_json::Value;
use sqlx::Row;

/// Longest idempotency key accepted.
const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// Header set on a response answered from the idempotency record.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// `POST /v1/transfers`: the transfer to make.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TransferRequest)]
pub(super) struct TransferBody {
    /// The debited account.
    #[schema(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "alice")]
    from: String,
    /// The credited account, another one.
    #[schema(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "bob")]
    to: String,
    /// Minor units: an integer from 1 to 10^15 (`AMOUNT_MAX`), written as one (`2500`; `2500.0` or
    /// `2.5e3`, integers to JSON Schema, are `invalid-amount`).
    // Kept as raw JSON so a string, a fraction or a huge number each get a precise problem.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 2500)]
    amount: Value,
    /// If given, both accounts' currency (`currency-mismatch` otherwise).
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: Option<String>,
    /// Anything the client wants kept with the transfer.
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: serde_json::Map<String, Value>,
    /// Two-phase: reserve the amount now (the source's `available` drops, its `balance` does not)
    /// and post or void it later (`/v1/transfers/{id}/post`, `/void`).
    #[serde(default)]
    pending: bool,
    /// With `pending`: seconds, 1 to 2,592,000 (30 days), after which the region that created it
    /// voids it if nobody settled it; none by default.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2_592_000)]
    timeout_s: Option<i64>,
}

/// The longest a pending transfer may wait for its settlement: 30 days, a card authorisation's
/// usual horizon.
pub(super) const TIMEOUT_S_MAX: i64 = 30 * 24 * 3_600;

/// `POST /v1/transfers/{id}/post`: how much of the reserve to post.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PostPendingRequest)]
pub(super) struct PostBody {
    /// Minor units, at most what was reserved (`post-exceeds-pending` otherwise); all of it when absent.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 1800)]
    amount: Option<Value>,
}

/// `POST /v1/transfers/{id}/void`: nothing to say (`{}`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VoidPendingRequest)]
pub(super) struct VoidBody {}

pub(super) fn parse_amount(amount: &Value) -> Result<Amount, Problem> {
    let Value::Number(n) = amount else {
        return Err(Problem::invalid_amount("amount must be a JSON integer of minor units"));
    };
    if let Some(i) = n.as_i64() {
        return Amount::new(i).map_err(|e| match e {
            MoneyError::TooLarge(_) => Problem::amount_out_of_range(e.to_string()),
            _ => Problem::invalid_amount(e.to_string()),
        });
    }
    if n.as_u64().is_some() {
        return Err(Problem::amount_out_of_range(format!("amount {n} exceeds the largest transfer, {AMOUNT_MAX}")));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() > i64::MAX as f64 => {
            Err(Problem::amount_out_of_range(format!("amount {n} exceeds the largest transfer, {AMOUNT_MAX}")))
        }
        _ => Err(Problem::invalid_amount(format!("amount must be an integer of minor units, got {n}"))),
    }
}

pub(super) fn parse_idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| Problem::invalid_idempotency_key("the key must be visible ASCII"))?;
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::invalid_idempotency_key(format!(
            "the key must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} visible ASCII characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

fn parse(body: &TransferBody) -> Result<(AccountId, AccountId, Amount, Option<Currency>), Problem> {
    let from = parse_account_id(&body.from)?;
    let to = parse_account_id(&body.to)?;
    let amount = parse_amount(&body.amount)?;
    let currency = body
        .currency
        .as_deref()
        .map(Currency::new)
        .transpose()
        .map_err(|e| Problem::invalid_currency(e.to_string()))?;
    // `from == to` is refused by the committer, after the idempotency key is looked up: a key
    // already used answers for its transfer whatever the new body says.
    Ok((from, to, amount, currency))
}

/// Moves money; with an `Idempotency-Key`, a retry answers the original transfer.
#[utoipa::path(
    post,
    path = "/v1/transfers",
    tag = "transfers",
    operation_id = "createTransfer",
    security(("bearer" = ["write"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "1 to 255 visible ASCII characters, scoped to the API key: a retry with the same key and \
                body answers the original transfer (header `idempotent-replayed: true`), whatever the balances are \
                now; the same key with another body is `idempotency-key-reused`"),
    ),
    request_body(content = TransferBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Committed (or the replay of the transfer made with this key); a \
            `PendingTransfer` with `pending`", body = super::openapi::TransferOrPending,
            headers(
                ("Location" = String, description = "`/v1/transfers/{id}`"),
                ("idempotent-replayed" = Option<String>, description = "`true` when answered from the key's record"),
            ),
            links(
                ("GetTransfer" = (operation_id = "getTransfer", parameters(("id" = "$response.body#/id")),
                    description = "The transfer just made")),
                ("PostPendingTransfer" = (operation_id = "postPendingTransfer",
                    parameters(("id" = "$response.body#/id")), description = "Posts it, when pending")),
                ("VoidPendingTransfer" = (operation_id = "voidPendingTransfer",
                    parameters(("id" = "$response.body#/id")), description = "Voids it, when pending")),
            )),
        (status = 400, description = "`invalid-json`, `unknown-field`, `missing-field`, `invalid-field`, \
            `invalid-account-id`, `invalid-currency`, `invalid-amount`, `amount-out-of-range`, \
            `invalid-idempotency-key`; `invalid-field` also for `timeout_s` out of range or without `pending`",
            body = Problem, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`account-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient-funds`, `account-frozen`, `idempotency-key-reused`", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, description = "`same-account`, `currency-mismatch`, `balance-overflow`", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn create(
    state: State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: JsonBody<TransferBody>,
) -> Response {
    let key = scoped_key(&headers, &caller);
    let expires_at = match (body.value.pending, body.value.timeout_s) {
        (_, Some(t)) if !(1..=TIMEOUT_S_MAX).contains(&t) => {
            return Problem::invalid_field(format!("timeout_s must be 1 to {TIMEOUT_S_MAX} seconds")).into_response();
        }
        (false, Some(_)) => {
            return Problem::invalid_field("timeout_s is for pending transfers (\"pending\": true)").into_response();
        }
        (_, t) => t.map(|t| chrono::Utc::now() + chrono::Duration::seconds(t)),
    };
    let command = match key.and_then(|key| Ok((key, parse(&body.value)?))) {
        Ok((idempotency_key, (from, to, amount, currency))) if body.value.pending => {
            Command::Pending(crate::write::PendingTransfer {
                transfer_id: uuid::Uuid::now_v7(),
                from,
                to,
                amount,
                currency,
                metadata: body.value.metadata.clone(),
                idempotency_key,
                request_hash: canonical_hash(&body.raw),
                traceparent: crate::telemetry::traceparent_of(&tracing::Span::current()),
                expires_at,
            })
        }
        Ok((idempotency_key, (from, to, amount, currency))) => Command::Transfer(Transfer {
            transfer_id: uuid::Uuid::now_v7(),
            from,
            to,
            amount,
            currency,
            metadata: body.value.metadata.clone(),
            idempotency_key,
            request_hash: canonical_hash(&body.raw),
            traceparent: crate::telemetry::traceparent_of(&tracing::Span::current()),
        }),
        Err(p) => return p.into_response(),
    };
    submit(&state, command).await
}

/// The request's `Idempotency-Key`, scoped to the caller's API key (see [`idempotency::scoped`]).
pub(super) fn scoped_key(headers: &HeaderMap, caller: &Caller) -> Result<Option<String>, Problem> {
    Ok(parse_idempotency_key(headers)?.map(|key| idempotency::scoped(&caller.key_hash, &key)))
}

/// Hands a command to the committer and answers `201` with the body it returns, marked when it is
/// a replay. `Location` names what the body is: a key first used by a transfer answers a
/// transaction's retry with that transfer (the key is one intent), and the other way round.
pub(super) async fn submit(state: &State<AppState>, command: Command) -> Response {
    let writer = state.writer.clone();
    with_timeout(state, async move {
        match writer.submit(command).await? {
            Outcome::Transferred { body, replayed } => {
                let kind = if body.get("legs").is_some() { "transactions" } else { "transfers" };
                let location = format!("/v1/{kind}/{}", body["id"].as_str().unwrap_or_default());
                let mut response = (StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response();
                if replayed {
                    response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
                }
                Ok(response)
            }
            Outcome::Opened { .. } => Err(Problem::internal("unexpected outcome")),
        }
    })
    .await
}

/// Settles a pending transfer: posts it (all or part) or voids it.
async fn settle(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    id: &str,
    raw: &Value,
    action: crate::write::SettleAction,
) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(id) else {
        return Problem::invalid_field("a transfer id is a UUID").into_response();
    };
    let key = match scoped_key(&headers, &caller) {
        Ok(key) => key,
        Err(p) => return p.into_response(),
    };
    // A pending transfer's accounts never change: read here, locked by the committer, which then
    // reads the pending transfer itself.
    let row = match crate::storage::pending::get(&state.pool, id).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return match sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM transfers WHERE id = $1)")
                .bind(id)
                .fetch_one(&state.pool)
                .await
            {
                Ok(true) => Problem::transfer_not_pending(format!("transfer {id} is not two-phase")).into_response(),
                Ok(false) => Problem::transfer_not_found(&id.to_string()).into_response(),
                Err(e) => read_problem(e).into_response(),
            };
        }
        Err(e) => return read_problem(e).into_response(),
    };
    let verb = match action {
        crate::write::SettleAction::Post(_) => "post",
        _ => "void",
    };
    let command = Command::Settle(crate::write::Settle {
        pending_id: id,
        from: row.record.from,
        to: row.record.to,
        action,
        idempotency_key: key,
        // The same body settling another transfer is another request.
        request_hash: canonical_hash(&serde_json::json!({ verb: id, "body": raw })),
        traceparent: crate::telemetry::traceparent_of(&tracing::Span::current()),
    });
    submit(&state, command).await
}

/// Posts a pending transfer: all of the reserve, or `amount` of it; the rest is released.
#[utoipa::path(
    post,
    path = "/v1/transfers/{id}/post",
    tag = "transfers",
    operation_id = "postPendingTransfer",
    security(("bearer" = ["write"])),
    params(
        ("id" = String, Path, format = Uuid, description = "The pending transfer's id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "As for `POST /v1/transfers`: a retry answers the original settlement"),
    ),
    request_body(content = PostBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Posted: the pending transfer, `status: posted`", body = super::openapi::PendingTransfer,
            headers(
                ("Location" = String, description = "`/v1/transfers/{id}`"),
                ("idempotent-replayed" = Option<String>, description = "`true` when answered from the key's record"),
            )),
        (status = 400, description = "`invalid-json`, `unknown-field`, `invalid-field` (the id is not a UUID), \
            `invalid-amount`, `amount-out-of-range`, `invalid-idempotency-key`", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`transfer-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`transfer-not-pending` (posted, voided, expired, or not two-phase), \
            `insufficient-funds`, `account-frozen`, `idempotency-key-reused`", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, description = "`post-exceeds-pending`, `balance-overflow`", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn post_pending(
    state: State<AppState>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
    headers: HeaderMap,
    body: JsonBody<PostBody>,
) -> Response {
    let amount = match body.value.amount.as_ref().map(parse_amount).transpose() {
        Ok(amount) => amount,
        Err(p) => return p.into_response(),
    };
    settle(state, caller, headers, &id, &body.raw, crate::write::SettleAction::Post(amount)).await
}

/// Voids a pending transfer: the reserve is released, nothing moves.
#[utoipa::path(
    post,
    path = "/v1/transfers/{id}/void",
    tag = "transfers",
    operation_id = "voidPendingTransfer",
    security(("bearer" = ["write"])),
    params(
        ("id" = String, Path, format = Uuid, description = "The pending transfer's id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "As for `POST /v1/transfers`: a retry answers the original settlement"),
    ),
    request_body(content = VoidBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Voided: the pending transfer, `status: voided`", body = super::openapi::PendingTransfer,
            headers(
                ("Location" = String, description = "`/v1/transfers/{id}`"),
                ("idempotent-replayed" = Option<String>, description = "`true` when answered from the key's record"),
            )),
        (status = 400, description = "`invalid-json`, `unknown-field`, `invalid-field` (the id is not a UUID), \
            `invalid-idempotency-key`", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`transfer-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`transfer-not-pending` (posted, voided, expired, or not two-phase), \
            `idempotency-key-reused`", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn void_pending(
    state: State<AppState>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
    headers: HeaderMap,
    body: JsonBody<VoidBody>,
) -> Response {
    settle(state, caller, headers, &id, &body.raw, crate::write::SettleAction::Void).await
}

/// One transfer, as `POST /v1/transfers` answered it.
#[utoipa::path(
    get,
    path = "/v1/transfers/{id}",
    tag = "transfers",
    operation_id = "getTransfer",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, format = Uuid, description = "The transfer id")),
    responses(
        (status = 200, description = "The transfer, or the pending transfer with its status",
            body = super::openapi::TransferOrPending),
        (status = 400, description = "`invalid-field`: the id is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`transfer-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn get(State(state): State<AppState>, PathId(id): PathId) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return Problem::invalid_field("a transfer id is a UUID").into_response();
    };
    let row = sqlx::query(
        "SELECT id, from_account, to_account, amount, currency, metadata, origin_region, idempotency_key,
                created_at, from_vector, to_vector FROM transfers WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await;
    let row = match row {
        Ok(Some(row)) => row,
        Ok(None) => {
            // A pending transfer (two-phase) is shown with its status.
            return match crate::storage::pending::get(&state.pool, id).await {
                Ok(Some(pending)) => Json(pending.to_json(id)).into_response(),
                Ok(None) => Problem::transfer_not_found(&id.to_string()).into_response(),
                Err(e) => read_problem(e).into_response(),
            };
        }
        Err(e) => return read_problem(e).into_response(),
    };
    let decoded = (|| -> Result<Value, Box<dyn std::error::Error>> {
        let from = AccountId::new(row.try_get::<String, _>("from_account")?)?;
        let to = AccountId::new(row.try_get::<String, _>("to_account")?)?;
        let metadata: serde_json::Map<String, Value> = serde_json::from_value(row.try_get("metadata")?)?;
        let from_vector: VersionVector = serde_json::from_value(row.try_get("from_vector")?)?;
        let to_vector: VersionVector = serde_json::from_value(row.try_get("to_vector")?)?;
        let key: Option<String> = row.try_get("idempotency_key")?;
        Ok(transfer_json(
            row.try_get("id")?,
            &from,
            &to,
            row.try_get("amount")?,
            &row.try_get::<String, _>("currency")?,
            &metadata,
            &row.try_get::<String, _>("origin_region")?,
            key.as_deref(),
            &row.try_get("created_at")?,
            &from_vector,
            &to_vector,
        ))
    })();
    match decoded {
        Ok(body) => Json(body).into_response(),
        Err(e) => Problem::internal(format!("stored transfer unreadable: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_positive_integers_within_range() {
        assert_eq!(parse_amount(&serde_json::json!(100)).unwrap().minor_units(), 100);
        assert_eq!(parse_amount(&serde_json::json!(AMOUNT_MAX)).unwrap().minor_units(), AMOUNT_MAX);
        for (bad, slug) in [
            (serde_json::json!(0), "invalid-amount"),
            (serde_json::json!(-5), "invalid-amount"),
            (serde_json::json!(1.5), "invalid-amount"),
            (serde_json::json!("100"), "invalid-amount"),
            (serde_json::json!(AMOUNT_MAX + 1), "amount-out-of-range"),
            (serde_json::json!(i64::MAX), "amount-out-of-range"),
            (serde_json::json!(u64::MAX), "amount-out-of-range"),
            (serde_json::from_str::<Value>("1e30").unwrap(), "amount-out-of-range"),
        ] {
            assert_eq!(parse_amount(&bad).unwrap_err().slug, slug, "{bad}");
        }
    }
}
