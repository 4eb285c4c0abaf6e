//! `GET /v1/conflicts`: the conflicts this region detected while applying other regions' events.

use super::{AppState, read_problem};
use crate::problem::Problem;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::Row;
use std::collections::HashMap;

/// Most conflicts returned at once.
const LIST_MAX: i64 = 1_000;

pub(super) async fn list(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    if let Some(unknown) = query.keys().find(|k| !matches!(k.as_str(), "limit" | "kind")) {
        return Problem::invalid_query(format!("unknown parameter {unknown:?}; use limit and kind")).into_response();
    }
    let limit = match query.get("limit").map(|l| l.parse::<i64>()) {
        None => LIST_MAX,
        Some(Ok(n)) if (1..=LIST_MAX).contains(&n) => n,
        Some(_) => {
            return Problem::invalid_query(format!("limit must be an integer from 1 to {LIST_MAX}")).into_response();
        }
    };
    let rows = sqlx::query(
        "SELECT conflict_id, kind, account_id, event_a, region_a, vector_a, event_b, region_b, vector_b, detected_at, status
         FROM conflicts WHERE $1::text IS NULL OR kind = $1 ORDER BY detected_at, conflict_id LIMIT $2",
    )
    .bind(query.get("kind"))
    .bind(limit)
    .fetch_all(&state.pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return read_problem(e).into_response(),
    };
    let conflicts: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "conflict_id": r.get::<uuid::Uuid, _>("conflict_id"),
                "kind": r.get::<String, _>("kind"),
                "account": r.get::<String, _>("account_id"),
                "events": [
                    {"event_id": r.get::<uuid::Uuid, _>("event_a"), "region": r.get::<String, _>("region_a"), "vector": r.get::<serde_json::Value, _>("vector_a")},
                    {"event_id": r.get::<uuid::Uuid, _>("event_b"), "region": r.get::<String, _>("region_b"), "vector": r.get::<serde_json::Value, _>("vector_b")},
                ],
                "detected_at": crate::write::rfc3339(&r.get("detected_at")),
                "status": r.get::<String, _>("status"),
            })
        })
        .collect();
    Json(json!({ "region": state.region, "conflicts": conflicts })).into_response()
}
