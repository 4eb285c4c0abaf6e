//! `GET /v1/replication/events?origin=<region>&after=<seq>&limit=<n>`: this region's stored events
//! of one origin, in `seq` order, for other regions' anti-entropy (see `crate::anti_entropy`).
//! Only the `replication` scope reaches it.
//!
//! A page stops before the first event stored less than `anti_entropy_settle_ms` ago: `seq` is
//! taken at insert, so an event with a later seq can commit before one with an earlier seq, and a
//! cursor (`next_after`) must never pass an event that may still commit. Stopping at the first
//! unsettled event, rather than leaving it out, keeps a settled later one from passing it.

use super::{AppState, read_problem};
use crate::problem::Problem;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use ledger_core::RegionId;
use serde_json::json;
use sqlx::Row;
use std::collections::HashMap;

/// Events per page when the client names no limit, and the most it may ask for: a page of full
/// transfer events is about 1 MB.
pub const PAGE_MAX: i64 = 1_000;

/// The parameters of one request.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    origin: RegionId,
    after: i64,
    limit: i64,
}

/// Parses the query; every refusal is `invalid-query`.
fn page(query: &HashMap<String, String>) -> Result<Page, Problem> {
    super::query::only(query, &["origin", "after", "limit"])?;
    let origin = query.get("origin").ok_or_else(|| Problem::invalid_query("origin is required"))?;
    let origin = RegionId::new(origin.as_str()).map_err(|e| Problem::invalid_query(format!("origin: {e}")))?;
    Ok(Page {
        origin,
        after: super::query::integer(query, "after", 0, 0, i64::MAX)?,
        limit: super::query::integer(query, "limit", PAGE_MAX, 1, PAGE_MAX)?,
    })
}

/// This region's stored events of one origin, for another region's anti-entropy.
#[utoipa::path(
    get,
    path = "/v1/replication/events",
    tag = "replication",
    operation_id = "listReplicationEvents",
    security(("bearer" = ["replication"])),
    params(
        ("origin" = String, Query, pattern = "^[a-z0-9-]{1,32}$", description = "The origin region"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Events with a greater `seq`; 0 by default"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Events at most; 1,000 by default"),
    ),
    responses(
        (status = 200, description = "The page, stopped before the first event stored less than \
            `anti_entropy_settle_ms` ago", body = super::openapi::ReplicationPage),
        (status = 400, description = "`invalid-query` (also for a parameter not listed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 503, response = super::openapi::Unavailable),
    ),
)]
pub(super) async fn events(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let page = match page(&query) {
        Ok(page) => page,
        Err(p) => return p.into_response(),
    };
    // The page up to its first unsettled event, excluded.
    let rows = sqlx::query(
        "WITH page AS (
             SELECT seq, payload, stored_at < now() - make_interval(secs => $3::float8 / 1000) AS settled
             FROM ledger_events WHERE origin_region = $1 AND seq > $2 ORDER BY seq LIMIT $4)
         SELECT seq, payload FROM page
         WHERE seq < COALESCE((SELECT min(seq) FROM page WHERE NOT settled), 9223372036854775807)
         ORDER BY seq",
    )
    .bind(page.origin.as_str())
    .bind(page.after)
    .bind(state.cfg.anti_entropy_settle_ms as f64)
    .bind(page.limit)
    .fetch_all(&state.pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return read_problem(e).into_response(),
    };
    let mut next_after = page.after;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq: i64 = row.get("seq");
        next_after = seq;
        events.push(json!({ "seq": seq, "event": row.get::<serde_json::Value, _>("payload") }));
    }
    Json(json!({ "events": events, "next_after": next_after })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parameters_are_bounded_and_origin_is_required() {
        let ok = page(&query(&[("origin", "eu-west")])).unwrap();
        assert_eq!(ok, Page { origin: RegionId::new("eu-west").unwrap(), after: 0, limit: PAGE_MAX });
        let max = page(&query(&[("origin", "eu-west"), ("after", "7"), ("limit", "1000")])).unwrap();
        assert_eq!((max.after, max.limit), (7, PAGE_MAX));
        for bad in [
            &[][..],
            &[("origin", "EU WEST")],
            &[("origin", "eu-west"), ("limit", "1001")],
            &[("origin", "eu-west"), ("limit", "0")],
            &[("origin", "eu-west"), ("after", "-1")],
            &[("origin", "eu-west"), ("after", "x")],
            &[("origin", "eu-west"), ("cursor", "1")],
        ] {
            let problem = page(&query(bad)).expect_err(&format!("{bad:?} is refused"));
            assert_eq!(problem.slug, "invalid-query");
        }
    }
}
