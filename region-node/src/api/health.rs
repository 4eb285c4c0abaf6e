//! Liveness, readiness and metrics: no authentication, for orchestrators and scrapers.

use super::AppState;
use crate::problem::Problem;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rdkafka::consumer::Consumer;
use std::time::Duration;

/// How long `/readyz` waits for each dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Ready when PostgreSQL answers a query and Kafka answers a metadata request.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let pg = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool)).await;
    if !matches!(pg, Ok(Ok(1))) {
        return Problem::unavailable("postgresql is not reachable").into_response();
    }
    let kafka = state.kafka.clone();
    let broker =
        tokio::task::spawn_blocking(move || kafka.fetch_metadata(None, CHECK_TIMEOUT).map(|m| m.brokers().len())).await;
    if !matches!(broker, Ok(Ok(n)) if n > 0) {
        return Problem::unavailable("kafka is not reachable").into_response();
    }
    "ready".into_response()
}

pub(super) async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::prometheus().render()).into_response()
}
