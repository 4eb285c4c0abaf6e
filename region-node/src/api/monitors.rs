//! `/v1/monitors` and `/v1/webhook-deliveries`: balance monitors (an account, a condition, a target
//! URL and a secret) and what they delivered. A monitor lives in the region that created it and
//! fires for money moved anywhere once it is applied here (see `storage/batch.rs`,
//! `storage/remote_store.rs` and `crate::webhooks`). Secrets are stored to sign and never returned.

use super::body::JsonBody;
use super::query::PathId;
use super::{AppState, read_problem};
use crate::problem::Problem;
use crate::storage::rfc3339;
use crate::webhooks::check_target;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use ledger_core::monitor::Condition;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;
use std::collections::{BTreeMap, HashMap};

/// Items in a page when the client gives no `limit`, and the most it may ask for.
const PAGE_DEFAULT: i64 = 100;
/// Most monitors or deliveries in one page (a delivery carries its attempt log).
pub const PAGE_MAX: i64 = 500;
/// Attempts shown with each delivery, the latest ones: a delivery retried by hand many times
/// keeps its whole log in the table, a page stays bounded.
pub const ATTEMPTS_SHOWN_MAX: i64 = 50;
/// A secret's length bounds: short ones are guessable, and it is sent nowhere but into HMAC.
pub const SECRET_LEN_MIN: usize = 16;
/// See [`SECRET_LEN_MIN`].
pub const SECRET_LEN_MAX: usize = 256;

/// `POST /v1/monitors`: what to watch and where to say it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateMonitorRequest)]
pub(super) struct CreateBody {
    /// The account watched; it must exist in this region.
    #[schema(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$", example = "alice")]
    account: String,
    /// `<balance|available> <|<=|>|>= <integer minor units>`, e.g. `available < 1000`. Fires when a
    /// posting makes it true (false before, true after).
    #[schema(max_length = 64, example = "available < 1000")]
    condition: String,
    /// Where deliveries are POSTed: `http` or `https`, a public address unless the node allows
    /// private targets.
    #[schema(max_length = 2048, example = "https://hooks.example.com/ledger")]
    url: String,
    /// Signs every delivery (HMAC-SHA256); never returned.
    #[schema(min_length = 16, max_length = 256)]
    secret: String,
}

fn monitor_json(row: &PgRow) -> Value {
    let deleted_at: Option<DateTime<Utc>> = row.get("deleted_at");
    json!({
        "id": row.get::<uuid::Uuid, _>("id"),
        "account": row.get::<String, _>("account_id"),
        "condition": row.get::<String, _>("condition"),
        "url": row.get::<String, _>("target_url"),
        "status": if deleted_at.is_some() { "deleted" } else { "active" },
        "created_at": rfc3339(&row.get("created_at")),
        "deleted_at": deleted_at.as_ref().map(rfc3339),
    })
}

const MONITOR_COLUMNS: &str = "id, seq, account_id, condition, target_url, created_at, deleted_at";

fn parse_monitor_id(id: &str) -> Result<uuid::Uuid, Problem> {
    uuid::Uuid::parse_str(id).map_err(|_| Problem::invalid_field("a monitor id is a UUID"))
}

/// Creates a monitor.
#[utoipa::path(
    post,
    path = "/v1/monitors",
    tag = "monitors",
    operation_id = "createMonitor",
    security(("bearer" = ["write"])),
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (the secret is never returned)", body = super::openapi::Monitor,
            headers(("Location" = String, description = "`/v1/monitors/{id}`")),
            links(("GetMonitor" = (operation_id = "getMonitor", parameters(("id" = "$response.body#/id")),
                description = "The monitor just created")))),
        (status = 400, description = "`invalid-json`, `unknown-field`, `missing-field`, `invalid-field` (the \
            secret's length), `invalid-account-id`, `invalid-condition`, `invalid-target-url`", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`account-not-found`: no such account in this region", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn create(State(state): State<AppState>, body: JsonBody<CreateBody>) -> Response {
    let body = body.value;
    let checked = super::accounts::parse_account_id(&body.account).and_then(|account| {
        let condition = Condition::parse(&body.condition).map_err(|e| Problem::invalid_condition(e.to_string()))?;
        check_target(&body.url, state.cfg.webhook_allow_private_targets)
            .map_err(|e| Problem::invalid_target_url(e.to_string()))?;
        if !(SECRET_LEN_MIN..=SECRET_LEN_MAX).contains(&body.secret.chars().count()) {
            return Err(Problem::invalid_field(format!(
                "secret must be {SECRET_LEN_MIN} to {SECRET_LEN_MAX} characters"
            )));
        }
        Ok((account, condition))
    });
    let (account, condition) = match checked {
        Ok(checked) => checked,
        Err(p) => return p.into_response(),
    };
    // One statement: the monitor is written only if the account exists, so a refusal writes nothing.
    let sql = format!(
        "INSERT INTO monitors (id, account_id, field, op, threshold, condition, target_url, secret, created_at)
         SELECT $1, id, $3, $4, $5, $6, $7, $8, now() FROM accounts WHERE id = $2
         RETURNING {MONITOR_COLUMNS}"
    );
    let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(uuid::Uuid::now_v7())
        .bind(account.as_str())
        .bind(condition.field.as_str())
        .bind(condition.op.as_str())
        .bind(condition.threshold)
        .bind(condition.to_string())
        .bind(&body.url)
        .bind(&body.secret)
        .fetch_optional(&state.pool)
        .await;
    match inserted {
        Ok(Some(row)) => {
            let location = format!("/v1/monitors/{}", row.get::<uuid::Uuid, _>("id"));
            (StatusCode::CREATED, [(header::LOCATION, location)], Json(monitor_json(&row))).into_response()
        }
        Ok(None) => Problem::account_not_found(account.as_str()).into_response(),
        Err(e) => read_problem(e).into_response(),
    }
}

/// One monitor (without its secret).
#[utoipa::path(
    get,
    path = "/v1/monitors/{id}",
    tag = "monitors",
    operation_id = "getMonitor",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, format = Uuid, description = "The monitor id")),
    responses(
        (status = 200, description = "The monitor", body = super::openapi::Monitor),
        (status = 400, description = "`invalid-field`: the id is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`monitor-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn get(State(state): State<AppState>, PathId(id): PathId) -> Response {
    let id = match parse_monitor_id(&id) {
        Ok(id) => id,
        Err(p) => return p.into_response(),
    };
    let sql = format!("SELECT {MONITOR_COLUMNS} FROM monitors WHERE id = $1");
    match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&state.pool).await {
        Ok(Some(row)) => Json(monitor_json(&row)).into_response(),
        Ok(None) => Problem::monitor_not_found(&id.to_string()).into_response(),
        Err(e) => read_problem(e).into_response(),
    }
}

/// Deletes a monitor: it fires no more; what it already fired is still delivered. Deleting it
/// again answers the same.
#[utoipa::path(
    delete,
    path = "/v1/monitors/{id}",
    tag = "monitors",
    operation_id = "deleteMonitor",
    security(("bearer" = ["write"])),
    params(("id" = String, Path, format = Uuid, description = "The monitor id")),
    responses(
        (status = 200, description = "The monitor, deleted", body = super::openapi::Monitor),
        (status = 400, description = "`invalid-field`: the id is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`monitor-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn delete(State(state): State<AppState>, PathId(id): PathId) -> Response {
    let id = match parse_monitor_id(&id) {
        Ok(id) => id,
        Err(p) => return p.into_response(),
    };
    let sql = format!(
        "UPDATE monitors SET deleted_at = COALESCE(deleted_at, now()) WHERE id = $1 RETURNING {MONITOR_COLUMNS}"
    );
    match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&state.pool).await {
        Ok(Some(row)) => Json(monitor_json(&row)).into_response(),
        Ok(None) => Problem::monitor_not_found(&id.to_string()).into_response(),
        Err(e) => read_problem(e).into_response(),
    }
}

fn page(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(i64, i64), Problem> {
    super::query::only(query, allowed)?;
    Ok((
        super::query::integer(query, "after", 0, 0, i64::MAX)?,
        super::query::integer(query, "limit", PAGE_DEFAULT, 1, PAGE_MAX)?,
    ))
}

/// The cursor of the page after `rows`: the last row's `seq` when the page is full.
fn next_after(rows: &[PgRow], limit: i64) -> Option<i64> {
    (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.get::<i64, _>("seq"))).flatten()
}

/// A page of this region's monitors, oldest first.
#[utoipa::path(
    get,
    path = "/v1/monitors",
    tag = "monitors",
    operation_id = "listMonitors",
    security(("bearer" = ["read"])),
    params(
        ("account" = Option<String>, Query, description = "Only this account's monitors"),
        ("after" = Option<i64>, Query, minimum = 0, description = "The previous page's `next_after`; 0 by default"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Monitors at most; 100 by default"),
    ),
    responses(
        (status = 200, description = "The page", body = super::openapi::MonitorsPage),
        (status = 400, description = "`invalid-query` (also for a parameter not listed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn list(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let (after, limit) = match page(&query, &["account", "after", "limit"]) {
        Ok(page) => page,
        Err(p) => return p.into_response(),
    };
    let sql = format!(
        "SELECT {MONITOR_COLUMNS} FROM monitors WHERE seq > $1 AND ($2::text IS NULL OR account_id = $2)
         ORDER BY seq LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(query.get("account"))
        .bind(limit)
        .fetch_all(&state.pool)
        .await;
    match rows {
        Ok(rows) => {
            let monitors: Vec<Value> = rows.iter().map(monitor_json).collect();
            Json(json!({ "monitors": monitors, "next_after": next_after(&rows, limit) })).into_response()
        }
        Err(e) => read_problem(e).into_response(),
    }
}

const DELIVERY_COLUMNS: &str = "id, seq, monitor_id, event_id, account_id, condition, balance_after, occurred_at, \
    state, attempts, next_attempt_at, delivered_at, created_at";

/// Deliveries as the API shows them, each with its latest attempts.
async fn deliveries_json(pool: &sqlx::PgPool, rows: &[PgRow]) -> Result<Vec<Value>, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get("id")).collect();
    let attempts = sqlx::query(
        "SELECT a.delivery_id, a.attempt, a.started_at, a.finished_at, a.status_code, a.error
         FROM UNNEST($1::uuid[]) AS d(id)
         CROSS JOIN LATERAL (SELECT * FROM webhook_attempts w WHERE w.delivery_id = d.id
                             ORDER BY attempt DESC LIMIT $2) a
         ORDER BY a.delivery_id, a.attempt",
    )
    .bind(&ids)
    .bind(ATTEMPTS_SHOWN_MAX)
    .fetch_all(pool)
    .await?;
    let mut log: BTreeMap<uuid::Uuid, Vec<Value>> = BTreeMap::new();
    for a in attempts {
        log.entry(a.get("delivery_id")).or_default().push(json!({
            "attempt": a.get::<i32, _>("attempt"),
            "started_at": rfc3339(&a.get("started_at")),
            "finished_at": a.get::<Option<DateTime<Utc>>, _>("finished_at").as_ref().map(rfc3339),
            "status_code": a.get::<Option<i32>, _>("status_code"),
            "error": a.get::<Option<String>, _>("error"),
        }));
    }
    Ok(rows
        .iter()
        .map(|r| {
            let id: uuid::Uuid = r.get("id");
            let state: String = r.get("state");
            json!({
                "delivery_id": id,
                "monitor_id": r.get::<uuid::Uuid, _>("monitor_id"),
                "event_id": r.get::<uuid::Uuid, _>("event_id"),
                "account": r.get::<String, _>("account_id"),
                "condition": r.get::<String, _>("condition"),
                "balance_after": r.get::<i64, _>("balance_after"),
                "occurred_at": rfc3339(&r.get("occurred_at")),
                "attempts": r.get::<i32, _>("attempts"),
                "next_attempt_at": (state == "pending").then(|| rfc3339(&r.get("next_attempt_at"))),
                "delivered_at": r.get::<Option<DateTime<Utc>>, _>("delivered_at").as_ref().map(rfc3339),
                "created_at": rfc3339(&r.get("created_at")),
                "state": state,
                "attempt_log": log.remove(&id).unwrap_or_default(),
            })
        })
        .collect())
}

async fn deliveries_page(pool: &sqlx::PgPool, rows: Result<Vec<PgRow>, sqlx::Error>, limit: i64) -> Response {
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return read_problem(e).into_response(),
    };
    match deliveries_json(pool, &rows).await {
        Ok(deliveries) => {
            Json(json!({ "deliveries": deliveries, "next_after": next_after(&rows, limit) })).into_response()
        }
        Err(e) => read_problem(e).into_response(),
    }
}

/// A page of what a monitor fired: each delivery's state and attempt log.
#[utoipa::path(
    get,
    path = "/v1/monitors/{id}/deliveries",
    tag = "monitors",
    operation_id = "listMonitorDeliveries",
    security(("bearer" = ["read"])),
    params(
        ("id" = String, Path, format = Uuid, description = "The monitor id"),
        ("after" = Option<i64>, Query, minimum = 0, description = "The previous page's `next_after`; 0 by default"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Deliveries at most; 100 by default"),
    ),
    responses(
        (status = 200, description = "The page, oldest first", body = super::openapi::DeliveriesPage),
        (status = 400, description = "`invalid-field` (the id is not a UUID), `invalid-query`", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`monitor-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn deliveries(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (id, (after, limit)) = match (parse_monitor_id(&id), page(&query, &["after", "limit"])) {
        (Ok(id), Ok(page)) => (id, page),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    match sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM monitors WHERE id = $1)")
        .bind(id)
        .fetch_one(&state.pool)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Problem::monitor_not_found(&id.to_string()).into_response(),
        Err(e) => return read_problem(e).into_response(),
    }
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE monitor_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(after).bind(limit).fetch_all(&state.pool).await;
    deliveries_page(&state.pool, rows, limit).await
}

/// A page of this region's deliveries in one state; `dead` (the default) is the dead-letter list.
#[utoipa::path(
    get,
    path = "/v1/webhook-deliveries",
    tag = "monitors",
    operation_id = "listWebhookDeliveries",
    security(("bearer" = ["read"])),
    params(
        ("state" = Option<String>, Query, pattern = "^(pending|delivered|dead)$", description = "`dead` by default"),
        ("after" = Option<i64>, Query, minimum = 0, description = "The previous page's `next_after`; 0 by default"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Deliveries at most; 100 by default"),
    ),
    responses(
        (status = 200, description = "The page, oldest first", body = super::openapi::DeliveriesPage),
        (status = 400, description = "`invalid-query` (also for a parameter not listed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn list_deliveries(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (after, limit) = match page(&query, &["state", "after", "limit"]) {
        Ok(page) => page,
        Err(p) => return p.into_response(),
    };
    let wanted = query.get("state").map_or("dead", String::as_str);
    if !["pending", "delivered", "dead"].contains(&wanted) {
        return Problem::invalid_query("state is pending, delivered or dead").into_response();
    }
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(wanted).bind(after).bind(limit).fetch_all(&state.pool).await;
    deliveries_page(&state.pool, rows, limit).await
}

/// Sends a dead delivery again: it is pending at once, with `webhook_attempts_max` more attempts and
/// the same id.
#[utoipa::path(
    post,
    path = "/v1/webhook-deliveries/{id}/retry",
    tag = "monitors",
    operation_id = "retryWebhookDelivery",
    security(("bearer" = ["write"])),
    params(("id" = String, Path, format = Uuid, description = "The delivery id")),
    responses(
        (status = 200, description = "The delivery, pending again", body = super::openapi::WebhookDelivery),
        (status = 400, description = "`invalid-field`: the id is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`delivery-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`delivery-not-dead`: only a dead delivery is retried by hand", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn retry(State(state): State<AppState>, PathId(id): PathId) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return Problem::invalid_field("a delivery id is a UUID").into_response();
    };
    // The state is read and changed in one statement: `found` says whether the id exists at all.
    let sql = format!(
        "WITH retried AS (
             UPDATE webhook_deliveries SET state = 'pending', round_attempts = 0, next_attempt_at = now()
             WHERE id = $1 AND state = 'dead' RETURNING {DELIVERY_COLUMNS}
         )
         SELECT r.*, (SELECT state FROM webhook_deliveries WHERE id = $1) AS found FROM retried r
         UNION ALL
         SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, state
         FROM webhook_deliveries WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM retried)"
    );
    let rows = match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(&state.pool).await {
        Ok(rows) => rows,
        Err(e) => return read_problem(e).into_response(),
    };
    match rows.first() {
        None => Problem::delivery_not_found(&id.to_string()).into_response(),
        Some(row) if row.get::<Option<uuid::Uuid>, _>("id").is_none() => {
            let now: String = row.get("found");
            Problem::delivery_not_dead(format!("delivery {id} is {now}; only a dead delivery is retried"))
                .into_response()
        }
        Some(_) => {
            if let Err(e) =
                sqlx::query("SELECT pg_notify($1, '')").bind(crate::storage::WEBHOOK_CHANNEL).execute(&state.pool).await
            {
                tracing::warn!(error = %e, "retry committed; the worker will find it at its next poll");
            }
            match deliveries_json(&state.pool, &rows).await {
                Ok(mut one) => Json(one.remove(0)).into_response(),
                Err(e) => read_problem(e).into_response(),
            }
        }
    }
}
