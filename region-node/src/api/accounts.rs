//! `/v1/accounts`: open (idempotent on identical attributes), read the authoritative state, page
//! through the history, and read the Kafka-fed view with how far it lags.

use super::body::JsonBody;
use super::query::PathId;
use super::{AppState, read_problem, with_timeout};
use crate::problem::Problem;
use crate::storage::{ACCOUNT_COLUMNS, AccountRow, rfc3339};
use crate::write::{Command, OpenAccount, Outcome};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger_core::{AccountId, AccountSpec, Currency};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;
use std::collections::HashMap;

/// Page size when the client gives none, and the largest it may ask for.
const PAGE_DEFAULT: i64 = 100;
const PAGE_MAX: i64 = 1_000;

/// `POST /v1/accounts`: the account to open.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OpenAccountRequest)]
pub(super) struct OpenBody {
    /// 1 to 64 ASCII letters, digits, `_`, `-`, `.`, `:`.
    #[schema(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "carol")]
    id: String,
    /// ISO 4217 code, three uppercase letters.
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
    /// Whether the balance may go below zero (false by default).
    #[serde(default)]
    allow_negative: bool,
    /// Anything the client wants kept with the account.
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

pub(super) fn parse_account_id(id: &str) -> Result<AccountId, Problem> {
    AccountId::new(id).map_err(|e| Problem::invalid_account_id(e.to_string()))
}

/// Opens an account: 201, or 200 when it exists with the same attributes.
#[utoipa::path(
    post,
    path = "/v1/accounts",
    tag = "accounts",
    operation_id = "openAccount",
    security(("bearer" = ["write"])),
    request_body(content = OpenBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Opened", body = super::openapi::Account,
            headers(("Location" = String, description = "`/v1/accounts/{id}`")),
            links(("GetAccount" = (operation_id = "getAccount", parameters(("id" = "$response.body#/id")),
                description = "The account just opened")))),
        (status = 200, description = "Already open with the same attributes", body = super::openapi::Account,
            headers(("Location" = String, description = "`/v1/accounts/{id}`"))),
        (status = 400, description = "`invalid-json`, `unknown-field`, `missing-field`, `invalid-field`, \
            `invalid-account-id`, `invalid-currency`", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 409, description = "`account-exists`: the id is taken with other attributes", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn open(state: State<AppState>, body: JsonBody<OpenBody>) -> Response {
    let body = body.value;
    let spec = match (parse_account_id(&body.id), Currency::new(&body.currency)) {
        (Err(p), _) => return p.into_response(),
        (_, Err(e)) => return Problem::invalid_currency(e.to_string()).into_response(),
        (Ok(id), Ok(currency)) => {
            AccountSpec { id, currency, allow_negative: body.allow_negative, metadata: body.metadata }
        }
    };
    let traceparent = crate::telemetry::traceparent_of(&tracing::Span::current());
    let writer = state.writer.clone();
    with_timeout(&state, async move {
        match writer.submit(Command::Open(OpenAccount { spec, traceparent })).await? {
            Outcome::Opened { account, created } => {
                let status = if created { StatusCode::CREATED } else { StatusCode::OK };
                let location = format!("/v1/accounts/{}", account.state.spec.id);
                Ok((status, [(header::LOCATION, location)], Json(account.to_json())))
            }
            Outcome::Transferred { .. } => Err(Problem::internal("unexpected outcome")),
        }
    })
    .await
}

/// The account's authoritative state (read-your-writes), or with `at` its balance at a moment of
/// its history in this region.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}",
    tag = "accounts",
    operation_id = "getAccount",
    security(("bearer" = ["read"])),
    params(
        ("id" = String, Path, pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "alice", description = "The account id"),
        ("at" = Option<String>, Query, example = "2026-11-30T12:00:00Z", description = "A point in time: an RFC 3339 \
            time (the entries this region had recorded by then) or an entry position (the account's first n entries, \
            0 to its entry count). The answer is then an `AccountAt`: the balance after that entry, read from the \
            entry itself (no scan of the history), and the account's version vector after it"),
    ),
    responses(
        (status = 200, description = "The account; with `at`, an `AccountAt`",
            body = super::openapi::AccountOrAccountAt),
        (status = 400, description = "`invalid-account-id`, `invalid-query` (an `at` that is neither an RFC 3339 time \
            nor an entry position, a position past the account's entries, or a parameter not listed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`account-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn get(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (id, at) = match (parse_account_id(&id), at_param(&query)) {
        (Ok(id), Ok(at)) => (id, at),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    if let Some(at) = at {
        return match point_in_time(&state.pool, &id, &at).await {
            Ok(answer) => Json(answer).into_response(),
            Err(p) => p.into_response(),
        };
    }
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
    match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.as_str()).fetch_optional(&state.pool).await {
        Ok(Some(row)) => match AccountRow::from_row(&row) {
            Ok(account) => Json(account.to_json()).into_response(),
            Err(e) => read_problem(e).into_response(),
        },
        Ok(None) => Problem::account_not_found(id.as_str()).into_response(),
        Err(e) => read_problem(e).into_response(),
    }
}

/// A point of an account's history: a moment, or an entry position.
#[derive(Debug, Clone, PartialEq)]
enum At {
    Time(chrono::DateTime<chrono::Utc>),
    Position(i64),
}

fn at_param(query: &HashMap<String, String>) -> Result<Option<At>, Problem> {
    super::query::only(query, &["at"])?;
    let Some(raw) = query.get("at") else { return Ok(None) };
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<i64>()
            .map(|n| Some(At::Position(n)))
            .map_err(|_| Problem::invalid_query(format!("at: entry position {raw} is out of range")));
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| Some(At::Time(t.to_utc())))
        .map_err(|e| Problem::invalid_query(format!("at must be an RFC 3339 time or an entry position: {e}")))
}

/// The balance at `at` from the one entry that ends the history up to it (its `balance_after`): two
/// index descents whatever the account's history. Entries are stamped in sequence order (migration
/// 0014), so the latest one stamped by a moment ends a prefix of the history. A posting in another
/// currency than the account's (kept apart after an account-definition conflict) moves no
/// `balance`: the balance is that of the last entry in the account's currency.
async fn point_in_time(pool: &sqlx::PgPool, id: &AccountId, at: &At) -> Result<serde_json::Value, Problem> {
    let (time, position) = match at {
        At::Time(t) => (Some(*t), None),
        At::Position(n) => (None, Some(*n)),
    };
    let row = sqlx::query(
        "SELECT a.currency, a.entry_seq, a.created_at, last.seq, last.created_at AS recorded_at,
                (SELECT e.balance_after FROM entries e JOIN transfers t ON t.id = e.transfer_id
                 WHERE e.account_id = a.id AND e.seq <= last.seq AND t.currency = a.currency
                 ORDER BY e.seq DESC LIMIT 1) AS balance
         FROM accounts a
         LEFT JOIN LATERAL (
             SELECT e.seq, e.created_at FROM entries e
             WHERE e.account_id = a.id AND ($2::timestamptz IS NULL OR e.created_at <= $2)
               AND ($3::int8 IS NULL OR e.seq <= $3)
             ORDER BY e.created_at DESC, e.seq DESC LIMIT 1) last ON true
         WHERE a.id = $1",
    )
    .bind(id.as_str())
    .bind(time)
    .bind(position)
    .fetch_optional(pool)
    .await
    .map_err(read_problem)?;
    let Some(row) = row else { return Err(Problem::account_not_found(id.as_str())) };
    let get = |e: sqlx::Error| read_problem(e);
    let entries: i64 = row.try_get("entry_seq").map_err(get)?;
    let created_at: chrono::DateTime<chrono::Utc> = row.try_get("created_at").map_err(get)?;
    if let Some(n) = position.filter(|n| *n > entries) {
        return Err(Problem::invalid_query(format!("at: the account has {entries} entries, not {n}")));
    }
    if time.is_some_and(|t| t < created_at) {
        let mut p = Problem::account_not_found(id.as_str());
        p.detail =
            format!("account {:?} was not open in this region then (opened {})", id.as_str(), rfc3339(&created_at));
        return Err(p);
    }
    let seq: Option<i64> = row.try_get("seq").map_err(get)?;
    // An origin's events on an account apply here in its order, so after entry `seq` the account
    // counts, per origin, the largest counter applied by then: one index descent per origin
    // (migration 0016).
    let counters: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT r.origin, (SELECT max(ae.counter) FROM account_events ae
                           WHERE ae.account_id = $1 AND ae.origin_region = r.origin AND ae.entry_seq <= $2)
         FROM jsonb_object_keys((SELECT version_vector FROM accounts WHERE id = $1)) AS r(origin)",
    )
    .bind(id.as_str())
    .bind(seq.unwrap_or(0))
    .fetch_all(pool)
    .await
    .map_err(read_problem)?;
    let vector: serde_json::Map<String, serde_json::Value> =
        counters.into_iter().filter_map(|(origin, n)| Some((origin, json!(n?)))).collect();
    let recorded: Option<chrono::DateTime<chrono::Utc>> = row.try_get("recorded_at").map_err(get)?;
    Ok(json!({
        "id": id,
        "currency": row.try_get::<String, _>("currency").map_err(get)?,
        "at": match at { At::Time(t) => json!(rfc3339(t)), At::Position(n) => json!(n) },
        "entries": seq.unwrap_or(0),
        "balance": row.try_get::<Option<i64>, _>("balance").map_err(get)?.unwrap_or(0),
        "version_vector": vector,
        "recorded_at": recorded.as_ref().map(rfc3339),
    }))
}

fn page_params(query: &HashMap<String, String>) -> Result<(i64, i64), Problem> {
    super::query::only(query, &["after", "limit"])?;
    Ok((
        super::query::integer(query, "after", 0, 0, i64::MAX)?,
        super::query::integer(query, "limit", PAGE_DEFAULT, 1, PAGE_MAX)?,
    ))
}

/// A page of the account's history, with the balance after each entry.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/entries",
    tag = "accounts",
    operation_id = "listEntries",
    security(("bearer" = ["read"])),
    params(
        ("id" = String, Path, pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "alice", description = "The account id"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Entries with a greater `seq` (the previous page's \
            `next_after`); 0 by default"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Entries at most; 100 by default"),
    ),
    responses(
        (status = 200, description = "The page", body = super::openapi::EntriesPage),
        (status = 400, description = "`invalid-account-id`, `invalid-query` (also for a parameter not listed)",
            body = Problem, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`account-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn entries(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (id, (after, limit)) = match (parse_account_id(&id), page_params(&query)) {
        (Ok(id), Ok(page)) => (id, page),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    let result = async {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)")
            .bind(id.as_str())
            .fetch_one(&state.pool)
            .await?;
        if !exists {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT seq, transfer_id, amount, balance_after, created_at FROM entries
             WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id.as_str())
        .bind(after)
        .bind(limit)
        .fetch_all(&state.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(json!({
                "seq": row.try_get::<i64, _>("seq")?,
                "transfer_id": row.try_get::<uuid::Uuid, _>("transfer_id")?,
                "amount": row.try_get::<i64, _>("amount")?,
                "balance_after": row.try_get::<i64, _>("balance_after")?,
                "created_at": rfc3339(&row.try_get("created_at")?),
            }));
        }
        Ok::<_, sqlx::Error>(Some(out))
    }
    .await;
    match result {
        Ok(Some(entries)) => {
            let next_after = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e["seq"].clone()));
            Json(json!({ "account_id": id, "entries": entries, "next_after": next_after.flatten() })).into_response()
        }
        Ok(None) => Problem::account_not_found(id.as_str()).into_response(),
        Err(e) => read_problem(e).into_response(),
    }
}

/// The read model's balance for an account and how many entries it is behind the authoritative
/// state: the Kafka-fed view is eventually consistent and says so.
#[utoipa::path(
    get,
    path = "/v1/views/accounts/{id}",
    tag = "accounts",
    operation_id = "getAccountView",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "alice", description = "The account id")),
    responses(
        (status = 200, description = "The read model's view of the account", body = super::openapi::AccountView),
        (status = 400, description = "`invalid-account-id`", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`account-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn view(State(state): State<AppState>, PathId(id): PathId) -> Response {
    let id = match parse_account_id(&id) {
        Ok(id) => id,
        Err(p) => return p.into_response(),
    };
    let row = sqlx::query(
        "SELECT a.entry_seq, v.balance, v.entries_applied, v.updated_at
         FROM accounts a LEFT JOIN rm_balances v ON v.account_id = a.id WHERE a.id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&state.pool)
    .await;
    match row {
        Ok(Some(row)) => {
            let authoritative: i64 = row.get("entry_seq");
            let applied: Option<i64> = row.get("entries_applied");
            let updated: Option<chrono::DateTime<chrono::Utc>> = row.get("updated_at");
            Json(json!({
                "account_id": id,
                "balance": row.get::<Option<i64>, _>("balance").unwrap_or(0),
                "entries_applied": applied.unwrap_or(0),
                "entries_behind": authoritative - applied.unwrap_or(0),
                "updated_at": updated.as_ref().map(rfc3339),
            }))
            .into_response()
        }
        Ok(None) => Problem::account_not_found(id.as_str()).into_response(),
        Err(e) => read_problem(e).into_response(),
    }
}
