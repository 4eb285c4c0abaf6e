//! The JSON API under `/api`, for automation: `Authorization: Bearer <token>` only (cookies are
//! ignored here, so a browser can never be made to call it cross-site), problem+json errors.

use crate::AppState;
use crate::auth::{self, Principal};
use crate::case::{Action, CaseState};
use crate::problem::Problem;
use crate::store::{self, CaseFilter};
use crate::{audit, export, input};
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use std::collections::HashMap;

/// Largest page of the queue.
pub const PAGE_MAX: i64 = 500;

/// The `/api` routes.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/cases", get(list_cases))
        .route("/api/cases/{id}", get(get_case))
        .route("/api/cases/{id}/proposals", post(propose))
        .route("/api/proposals/{id}/approve", post(approve))
        .route("/api/proposals/{id}/reject", post(reject))
        .route("/api/audit", get(trail))
        .route("/api/audit/verify", get(verify))
        .route("/api/export/cases.csv", get(export_cases))
        .route("/api/export/audit.csv", get(export_audit))
        .route_layer(middleware::from_fn_with_state(state, bearer))
}

async fn bearer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else { return Problem::unauthorized("send Authorization: Bearer <token>").into_response() };
    match auth::bearer(&state.pool, &token).await {
        Ok(Some(p)) => {
            request.extensions_mut().insert(p);
            next.run(request).await
        }
        Ok(None) => Problem::unauthorized("the token is unknown or revoked").into_response(),
        Err(e) => Problem::from(e).into_response(),
    }
}

/// Refuses callers whose role does not allow `action`.
pub fn allow(p: &Principal, action: Action) -> Result<(), Problem> {
    if p.role.may(action) {
        Ok(())
    } else {
        Err(Problem::forbidden(format!("the {} role cannot do this", p.role.as_str())))
    }
}

fn parse_id(id: &str, what: &str) -> Result<uuid::Uuid, Problem> {
    id.parse().map_err(|_| Problem::not_found(format!("no {what} {id:?}")))
}

/// The queue's filters from query parameters (shared with the UI).
pub fn filter(query: &HashMap<String, String>, page_default: i64) -> Result<CaseFilter, Problem> {
    const KNOWN: [&str; 6] = ["state", "kind", "account", "region", "cursor", "limit"];
    if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(Problem::invalid(format!("unknown query parameter {unknown:?}")));
    }
    let get = |k: &str| query.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let state = get("state")
        .map(|s| CaseState::parse(&s).ok_or_else(|| Problem::invalid(format!("unknown state {s:?}"))))
        .transpose()?;
    let kind = get("kind");
    if let Some(k) = &kind
        && !["overdraft", "duplicate-intent", "account-definition", "concurrent-benign", "pending-settlement"]
            .contains(&k.as_str())
    {
        return Err(Problem::invalid(format!("unknown kind {k:?}")));
    }
    let number = |k: &str, default: i64, max: i64| -> Result<i64, Problem> {
        match get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=max).contains(n))
                .ok_or_else(|| Problem::invalid(format!("{k} must be an integer from 0 to {max}"))),
        }
    };
    let limit = number("limit", page_default, PAGE_MAX)?;
    if limit == 0 {
        return Err(Problem::invalid(format!("limit must be an integer from 1 to {PAGE_MAX}")));
    }
    Ok(CaseFilter {
        state,
        kind,
        account: get("account"),
        region: get("region"),
        cursor: Some(number("cursor", 0, i64::MAX)?),
        limit,
    })
}

async fn list_cases(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, Problem> {
    allow(&p, Action::Read)?;
    let f = filter(&query, state.cfg.page_size)?;
    let (cases, next) = store::list(&state.pool, &f).await?;
    Ok(Json(json!({"cases": cases, "next": next})))
}

async fn get_case(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    allow(&p, Action::Read)?;
    let id = parse_id(&id, "case")?;
    store::get(&state.pool, id).await?.map(Json).ok_or_else(|| Problem::not_found(format!("no case {id}")))
}

async fn propose(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    allow(&p, Action::Propose)?;
    let id = parse_id(&id, "case")?;
    let (resolution, reason) = input::proposal(&input::proposal_from_json(&body)?)?;
    let proposal =
        store::propose(&state.pool, state.cfg.approval_threshold_minor, id, &p, &resolution, &reason).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": proposal, "state": "proposed"}))).into_response())
}

async fn approve(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Problem> {
    allow(&p, Action::Decide)?;
    let id = parse_id(&id, "proposal")?;
    if !body.is_empty() {
        input::json_object(&body, &[])?;
    }
    let case_state = store::approve(&state.pool, id, &p).await?;
    state.wake.notify_one();
    Ok(Json(json!({"id": id, "case_state": case_state.as_str()})))
}

async fn reject(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Problem> {
    allow(&p, Action::Decide)?;
    let id = parse_id(&id, "proposal")?;
    let map = input::json_object(&body, &["reason"])?;
    let reason = input::reason(map.get("reason").and_then(|r| r.as_str()))?;
    let case_state = store::reject(&state.pool, id, &p, &reason).await?;
    Ok(Json(json!({"id": id, "case_state": case_state.as_str()})))
}

async fn trail(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, Problem> {
    allow(&p, Action::Read)?;
    let after = query
        .get("after")
        .map(|a| a.parse::<i64>())
        .transpose()
        .map_err(|_| Problem::invalid("after must be an integer"))?;
    let (entries, next) = export::trail_page(&state.pool, after.unwrap_or(0), PAGE_MAX).await?;
    Ok(Json(json!({"entries": entries, "next": next})))
}

async fn verify(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, Problem> {
    allow(&p, Action::Read)?;
    Ok(Json(match audit::verify(&state.pool).await? {
        audit::Verdict::Intact(n) => json!({"intact": true, "entries": n}),
        audit::Verdict::Broken { seq, why } => json!({"intact": false, "first_bad_entry": seq, "why": why}),
    }))
}

async fn export_cases(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Result<Response, Problem> {
    allow(&p, Action::Read)?;
    Ok(export::csv_response("cases.csv", export::cases_csv(&state.pool).await?))
}

async fn export_audit(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Result<Response, Problem> {
    allow(&p, Action::Read)?;
    Ok(export::csv_response("audit.csv", export::audit_csv(&state.pool).await?))
}
