//! `/metrics` in Prometheus text format, computed from the database at each scrape: the figures
//! survive restarts and are the same whichever instance answers.

use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sqlx::Row;
use std::fmt::Write;

/// Upper bounds (seconds) of the time-to-resolution histogram.
const RESOLUTION_BUCKETS_S: [f64; 8] = [60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0, 259_200.0, 604_800.0];

async fn figures(state: &AppState) -> Result<String, sqlx::Error> {
    let mut out = String::new();
    let open = sqlx::query(
        "SELECT k.kind, count(c.id) AS n FROM unnest(ARRAY['overdraft','duplicate-intent','account-definition','concurrent-benign','pending-settlement']) AS k(kind)
         LEFT JOIN cases c ON c.kind = k.kind AND c.state IN ('open', 'proposed', 'approved', 'executing')
         GROUP BY k.kind ORDER BY k.kind",
    )
    .fetch_all(&state.pool)
    .await?;
    out.push_str("# HELP reconcile_cases_open Cases not yet resolved, closed or superseded.\n# TYPE reconcile_cases_open gauge\n");
    for r in &open {
        let _ = writeln!(
            out,
            "reconcile_cases_open{{kind=\"{}\"}} {}",
            r.try_get::<String, _>("kind")?,
            r.try_get::<i64, _>("n")?
        );
    }
    let oldest: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - min(opened_at))::float8 FROM cases WHERE state IN ('open', 'proposed', 'approved', 'executing')",
    )
    .fetch_one(&state.pool)
    .await?;
    out.push_str("# HELP reconcile_case_open_oldest_age_seconds Age of the oldest open case (0 when none).\n# TYPE reconcile_case_open_oldest_age_seconds gauge\n");
    let _ = writeln!(out, "reconcile_case_open_oldest_age_seconds {}", oldest.unwrap_or(0.0));
    let rejected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM proposals WHERE state = 'rejected'").fetch_one(&state.pool).await?;
    out.push_str("# HELP reconcile_proposals_rejected_total Proposals rejected by an approver.\n# TYPE reconcile_proposals_rejected_total counter\n");
    let _ = writeln!(out, "reconcile_proposals_rejected_total {rejected}");
    let durations: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM resolved_at - opened_at)::float8 FROM cases WHERE state = 'resolved' AND resolved_at IS NOT NULL",
    )
    .fetch_all(&state.pool)
    .await?;
    out.push_str("# HELP reconcile_case_resolution_seconds Time from a case's opening to its resolution.\n# TYPE reconcile_case_resolution_seconds histogram\n");
    for le in RESOLUTION_BUCKETS_S {
        let n = durations.iter().filter(|d| **d <= le).count();
        let _ = writeln!(out, "reconcile_case_resolution_seconds_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "reconcile_case_resolution_seconds_bucket{{le=\"+Inf\"}} {}", durations.len());
    let _ = writeln!(out, "reconcile_case_resolution_seconds_sum {}", durations.iter().sum::<f64>());
    let _ = writeln!(out, "reconcile_case_resolution_seconds_count {}", durations.len());
    Ok(out)
}

/// The scrape endpoint.
pub async fn render(State(state): State<AppState>) -> Response {
    match figures(&state).await {
        Ok(text) => {
            let mut r = text.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
