//! `GET /v1/conflicts`: the conflicts this region detected while applying other regions' events,
//! a page at a time (`after` is the `next` cursor of the previous page), filtered by kind,
//! account, status and detection time. `GET /v1/conflicts/{id}`: one conflict, its events a page
//! at a time. `POST /v1/conflicts/{id}/resolve` (the `reconcile` scope only): finance's
//! resolution, applied in this region (see `storage::resolve`).
//!
//! An overdraft episode on a hot account can name thousands of events, so no answer lists more
//! than a page of them: `EVENTS_LISTED` with each conflict of a list, up to `EVENTS_PAGE_MAX` per
//! request of one conflict, in event id order, with `events_next` to continue from.

use super::body::JsonBody;
use super::query::PathId;
use super::{AppState, read_problem, with_timeout};
use crate::problem::Problem;
use crate::storage::StorageError;
use crate::storage::resolve::{Definition, Resolution, ResolveError};
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use ledger_core::Currency;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;
use std::collections::{BTreeMap, HashMap};

/// Most conflicts in one page.
pub const PAGE_MAX: i64 = 1_000;
/// Conflicts in a page when `limit` is not given.
const PAGE_DEFAULT: i64 = 100;
/// An episode's events listed with each conflict of a list, and by default with one conflict: the
/// reconcile service shows this many side by side (`reconcile::intake::BRANCHES_MAX`), and compares
/// what the list and one conflict name, so the two must agree.
pub const EVENTS_LISTED: i64 = 100;
/// Most events of one conflict in one answer.
pub const EVENTS_PAGE_MAX: i64 = 1_000;

const PARAMETERS: [&str; 7] = ["limit", "kind", "account", "status", "since", "until", "after"];
const ONE_PARAMETERS: [&str; 2] = ["events_after", "events_limit"];

fn time(query: &HashMap<String, String>, name: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, Problem> {
    query
        .get(name)
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| Problem::invalid_query(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

/// A page of the conflicts this region detected while applying other regions' events.
#[utoipa::path(
    get,
    path = "/v1/conflicts",
    tag = "conflicts",
    operation_id = "listConflicts",
    security(("bearer" = ["read"])),
    params(
        ("kind" = Option<String>, Query, pattern = "^(overdraft|duplicate-intent|account-definition|concurrent-benign)$"),
        ("account" = Option<String>, Query, description = "Only this account's conflicts"),
        ("status" = Option<String>, Query, pattern = "^(open|resolved)$"),
        ("since" = Option<String>, Query, format = DateTime, description = "Detected at or after (RFC 3339)"),
        ("until" = Option<String>, Query, format = DateTime, description = "Detected before (RFC 3339)"),
        ("after" = Option<i64>, Query, minimum = 0, description = "The previous page's `next`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Conflicts at most; 100 by default"),
    ),
    responses(
        (status = 200, description = "The page", body = super::openapi::ConflictsPage),
        (status = 400, description = "`invalid-query` (also for a parameter not listed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn list(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let checked = super::query::only(&query, &PARAMETERS).and_then(|()| {
        Ok((
            super::query::integer(&query, "limit", PAGE_DEFAULT, 1, PAGE_MAX)?,
            super::query::integer(&query, "after", 0, 0, i64::MAX)?,
        ))
    });
    let (limit, after) = match checked {
        Ok(page) => page,
        Err(p) => return p.into_response(),
    };
    if let Some(kind) = query.get("kind")
        && !["overdraft", "duplicate-intent", "account-definition", "concurrent-benign"].contains(&kind.as_str())
    {
        return Problem::invalid_query(format!("unknown kind {kind:?}")).into_response();
    }
    if let Some(status) = query.get("status")
        && !["open", "resolved"].contains(&status.as_str())
    {
        return Problem::invalid_query("status is open or resolved").into_response();
    }
    let (since, until) = match (time(&query, "since"), time(&query, "until")) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    let rows = sqlx::query(
        "SELECT seq, conflict_id, kind, account_id, events, event_count, joint_vector, joint_balance, detected_at,
                updated_at, status, resolved_at, resolution
         FROM conflicts
         WHERE seq > $1 AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR account_id = $3)
           AND ($4::text IS NULL OR status = $4) AND ($5::timestamptz IS NULL OR detected_at >= $5)
           AND ($6::timestamptz IS NULL OR detected_at < $6)
         ORDER BY seq LIMIT $7",
    )
    .bind(after)
    .bind(query.get("kind"))
    .bind(query.get("account"))
    .bind(query.get("status"))
    .bind(since)
    .bind(until)
    .bind(limit)
    .fetch_all(&state.pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return read_problem(e).into_response(),
    };
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.get::<i64, _>("seq").to_string())).flatten();
    match described(&state.pool, &rows, None, EVENTS_LISTED).await {
        Ok(conflicts) => Json(json!({ "region": state.region, "conflicts": conflicts, "next": next })).into_response(),
        Err(e) => read_problem(e).into_response(),
    }
}

/// One conflict this region detected, with a page of its events.
#[utoipa::path(
    get,
    path = "/v1/conflicts/{id}",
    tag = "conflicts",
    operation_id = "getConflict",
    security(("bearer" = ["read"])),
    params(
        ("id" = String, Path, format = Uuid, description = "The conflict id (the same in every region)"),
        ("events_after" = Option<String>, Query, format = Uuid,
            description = "The previous answer's `events_next`: an episode's events after this one, by event id"),
        ("events_limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Events at most; 100 by default"),
    ),
    responses(
        (status = 200, description = "The conflict", body = super::openapi::Conflict),
        (status = 400, description = "`invalid-query` (also for a parameter not listed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`not-found`: this region has not detected the conflict (yet)",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn get(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let checked = super::query::only(&query, &ONE_PARAMETERS)
        .and_then(|()| super::query::integer(&query, "events_limit", EVENTS_LISTED, 1, EVENTS_PAGE_MAX));
    let limit = match checked {
        Ok(limit) => limit,
        Err(p) => return p.into_response(),
    };
    let events_after = match query.get("events_after").map(|a| a.parse::<uuid::Uuid>()).transpose() {
        Ok(after) => after,
        Err(_) => return Problem::invalid_query("events_after must be an event id (a UUID)").into_response(),
    };
    // An id that is not a UUID names no conflict.
    let Ok(conflict_id) = id.parse::<uuid::Uuid>() else {
        return Problem::conflict_not_found(&id).into_response();
    };
    let rows = sqlx::query(
        "SELECT seq, conflict_id, kind, account_id, events, event_count, joint_vector, joint_balance, detected_at,
                updated_at, status, resolved_at, resolution
         FROM conflicts WHERE conflict_id = $1",
    )
    .bind(conflict_id)
    .fetch_all(&state.pool)
    .await;
    let rows = match rows {
        Ok(rows) if rows.is_empty() => return Problem::conflict_not_found(&id).into_response(),
        Ok(rows) => rows,
        Err(e) => return read_problem(e).into_response(),
    };
    match described(&state.pool, &rows, events_after, limit).await {
        Ok(mut conflicts) => Json(conflicts.swap_remove(0)).into_response(),
        Err(e) => read_problem(e).into_response(),
    }
}

/// An episode is an overdraft that carries its joint past; its members are labelled in
/// `account_events`. Every other conflict lists its few events (one per region at most) inline.
fn is_episode(r: &PgRow) -> bool {
    r.get::<String, _>("kind") == "overdraft" && r.get::<Option<Value>, _>("joint_vector").is_some()
}

/// The conflicts of `rows` as answered: each episode's events after `after` (by event id), at most
/// `limit` of them, with `events_next` when more follow; every other conflict's events whole (and
/// none once `after` is given: they were all on the first page); every event described.
async fn described(
    pool: &sqlx::PgPool,
    rows: &[PgRow],
    after: Option<uuid::Uuid>,
    limit: i64,
) -> Result<Vec<Value>, sqlx::Error> {
    let episodes: Vec<uuid::Uuid> = rows.iter().filter(|r| is_episode(r)).map(|r| r.get("conflict_id")).collect();
    let mut members: BTreeMap<uuid::Uuid, Vec<Value>> = BTreeMap::new();
    if !episodes.is_empty() {
        // One more than the page, to know whether another follows; the lateral limit keeps a hot
        // account's episode from being read whole for a page of it.
        let found = sqlx::query(
            "SELECT e.id AS episode, m.event_id, m.origin_region, m.vector
             FROM UNNEST($1::uuid[]) AS e(id)
             CROSS JOIN LATERAL (
                 SELECT event_id, origin_region, vector FROM account_events
                 WHERE episode = e.id AND ($2::uuid IS NULL OR event_id > $2)
                 ORDER BY event_id LIMIT $3
             ) m
             ORDER BY e.id, m.event_id",
        )
        .bind(&episodes)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
        for m in found {
            members.entry(m.try_get("episode")?).or_default().push(json!({
                "event_id": m.try_get::<uuid::Uuid, _>("event_id")?,
                "region": m.try_get::<String, _>("origin_region")?,
                "vector": m.try_get::<Value, _>("vector")?,
            }));
        }
    }
    let mut events = Vec::with_capacity(rows.len());
    let mut nexts = Vec::with_capacity(rows.len());
    for r in rows {
        if is_episode(r) {
            let mut page = members.remove(&r.get::<uuid::Uuid, _>("conflict_id")).unwrap_or_default();
            let more = page.len() as i64 > limit;
            page.truncate(limit as usize);
            nexts.push(if more { page.last().map(|e| e["event_id"].clone()) } else { None });
            events.push(Value::from(page));
        } else {
            nexts.push(None);
            events.push(if after.is_some() { json!([]) } else { r.get("events") });
        }
    }
    describe_events(pool, &mut events).await?;
    Ok(rows
        .iter()
        .zip(events)
        .zip(nexts)
        .map(|((r, events), events_next)| {
            let id: uuid::Uuid = r.get("conflict_id");
            json!({
                "conflict_id": id,
                "kind": r.get::<String, _>("kind"),
                "account": r.get::<String, _>("account_id"),
                "events": events,
                "events_next": events_next,
                "event_count": r.get::<i64, _>("event_count"),
                "joint_vector": r.get::<Option<Value>, _>("joint_vector"),
                "joint_balance": r.get::<Option<i64>, _>("joint_balance"),
                "detected_at": crate::storage::rfc3339(&r.get("detected_at")),
                "updated_at": crate::storage::rfc3339(&r.get("updated_at")),
                "status": r.get::<String, _>("status"),
                "resolved_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("resolved_at").as_ref().map(crate::storage::rfc3339),
                "resolution": r.get::<Option<Value>, _>("resolution"),
            })
        })
        .collect())
}

/// Adds to every named event what it did, from the stored event: a transfer's `transfer` (its id,
/// accounts, amount, currency and time: what finance needs to reverse it, the id being the one
/// `GET /v1/transfers/{id}` knows) or an opening's `opening` (the definition it proposed). Every
/// region stores the same events, so the answer is the same wherever it is asked.
async fn describe_events(pool: &sqlx::PgPool, events: &mut [Value]) -> Result<(), sqlx::Error> {
    let ids: Vec<uuid::Uuid> = events
        .iter()
        .flat_map(|list| list.as_array().into_iter().flatten())
        .filter_map(|e| e["event_id"].as_str().and_then(|id| id.parse().ok()))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query("SELECT event_id, payload, occurred_at FROM ledger_events WHERE event_id = ANY($1)")
        .bind(&ids)
        .fetch_all(pool)
        .await?;
    let mut found: HashMap<String, Value> = HashMap::new();
    for row in rows {
        let (id, stored): (uuid::Uuid, Value) = (row.try_get("event_id")?, row.try_get("payload")?);
        // The column holds the whole event as received; its fact is under `payload`.
        let payload = if stored["payload"].is_object() { &stored["payload"] } else { &stored };
        let at = crate::storage::rfc3339(&row.try_get("occurred_at")?);
        let described = match payload["type"].as_str() {
            Some("transfer_posted") => json!({"transfer": {
                "id": payload["transfer_id"], "from": payload["from"], "to": payload["to"],
                "amount": payload["amount"], "currency": payload["currency"], "occurred_at": at,
            }}),
            Some("account_opened") => json!({"opening": {
                "currency": payload["account"]["currency"], "allow_negative": payload["account"]["allow_negative"],
                "occurred_at": at,
            }}),
            _ => continue,
        };
        found.insert(id.to_string(), described);
    }
    for e in events.iter_mut().flat_map(|list| list.as_array_mut().into_iter().flatten()) {
        if let Some(Value::Object(d)) = e["event_id"].as_str().and_then(|id| found.get(id)).cloned()
            && let Value::Object(target) = e
        {
            target.extend(d);
        }
    }
    Ok(())
}

/// Longest reconcile case id, in characters.
const CASE_CHARS_MAX: usize = 128;

/// `POST /v1/conflicts/{id}/resolve`: finance's resolution.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ResolveRequest)]
pub(super) struct ResolveBody {
    /// The reconcile case, 1 to 128 characters.
    #[schema(min_length = 1, max_length = 128)]
    case: String,
    /// Required for an `account-definition` conflict (one of its openings), refused for any other kind.
    #[serde(default)]
    definition: Option<DefinitionBody>,
}

/// The definition that stands.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AccountDefinition)]
struct DefinitionBody {
    /// ISO 4217 code, three uppercase letters.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    /// Whether the balance may go below zero.
    allow_negative: bool,
}

fn resolution(body: ResolveBody) -> Result<Resolution, Problem> {
    let chars = body.case.chars().count();
    if !(1..=CASE_CHARS_MAX).contains(&chars) {
        return Err(Problem::invalid_field(format!("case must be 1 to {CASE_CHARS_MAX} characters, got {chars}")));
    }
    let definition = body
        .definition
        .map(|d| {
            Currency::new(&d.currency)
                .map(|currency| Definition { currency, allow_negative: d.allow_negative })
                .map_err(|e| Problem::invalid_currency(e.to_string()))
        })
        .transpose()?;
    Ok(Resolution { case: body.case, definition })
}

/// Resolves a conflict in this region: the reconcile service calls every region with the same body.
#[utoipa::path(
    post,
    path = "/v1/conflicts/{id}/resolve",
    tag = "conflicts",
    operation_id = "resolveConflict",
    security(("bearer" = ["reconcile"])),
    params(("id" = String, Path, format = Uuid, description = "The conflict id (the same in every region)")),
    request_body(content = ResolveBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Resolved here (also for the same body again)", body = super::openapi::Resolved),
        (status = 400, description = "`invalid-json`, `unknown-field`, `missing-field` (an account-definition conflict \
            needs `definition`), `invalid-field` (`case` length, or a `definition` for another kind), \
            `invalid-currency`", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "`not-found`: this region has not detected the conflict (yet: retry)",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict-already-resolved` with another body", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, description = "`definition-not-offered`, `balance-overflow`", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, response = super::openapi::Internal),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn resolve(state: State<AppState>, PathId(id): PathId, body: JsonBody<ResolveBody>) -> Response {
    let resolution = match resolution(body.value) {
        Ok(resolution) => resolution,
        Err(p) => return p.into_response(),
    };
    // An id that is not a UUID names no conflict.
    let Ok(conflict_id) = id.parse::<uuid::Uuid>() else {
        return Problem::conflict_not_found(&id).into_response();
    };
    let (pool, region) = (state.pool.clone(), state.region.clone());
    with_timeout(&state, async move {
        crate::storage::resolve::resolve(&pool, &region, conflict_id, &resolution)
            .await
            .map(|resolved| Json(resolved.to_json()))
            .map_err(|e| resolve_problem(&id, e))
    })
    .await
}

fn resolve_problem(id: &str, e: ResolveError) -> Problem {
    match e {
        ResolveError::NotFound(_) => Problem::conflict_not_found(id),
        ResolveError::DefinitionNotAllowed(_) => Problem::invalid_field(e.to_string()),
        ResolveError::DefinitionRequired => Problem::missing_field(format!("definition: {e}")),
        ResolveError::AlreadyResolved(_) => Problem::conflict_already_resolved(e.to_string()),
        ResolveError::DefinitionNotOffered(_) => Problem::definition_not_offered(e.to_string()),
        ResolveError::OutOfRange(_) => Problem::balance_overflow(e.to_string()),
        ResolveError::Busy => Problem::unavailable(format!("{e}; retry")),
        ResolveError::Storage(e) => {
            tracing::error!(error = %e, conflict_id = id, "resolving a conflict failed");
            match e {
                StorageError::Unavailable(_) | StorageError::Conflict(_) => {
                    Problem::unavailable("the database is unavailable; retry")
                }
                StorageError::Refused(_) | StorageError::Internal(_) => {
                    Problem::internal("the conflict was not resolved")
                }
            }
        }
    }
}
