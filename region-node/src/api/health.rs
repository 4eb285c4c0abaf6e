//! Liveness, readiness and metrics: no authentication, for orchestrators and scrapers.

use super::AppState;
use crate::problem::Problem;
use crate::supervise::Status;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use rdkafka::consumer::Consumer;
use serde_json::json;
use std::time::Duration;

/// How long `/readyz` waits for each dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")),
)]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Ready when PostgreSQL answers a query, Kafka answers a metadata request and every supervised
/// background task is running. The body lists each task's state, restarts and last error: 200
/// `{"ready": true, ...}`, or 503 as a problem (`unavailable`) carrying the same members.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = super::openapi::Readiness),
        (status = 503, description = "`unavailable`: not ready, with the same members", body = super::openapi::NotReady,
            content_type = "application/problem+json"),
    ),
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let pg = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool)).await;
    let postgresql = matches!(pg, Ok(Ok(1)));
    let kafka = state.kafka.clone();
    let broker =
        tokio::task::spawn_blocking(move || kafka.fetch_metadata(None, CHECK_TIMEOUT).map(|m| m.brokers().len())).await;
    let kafka = matches!(broker, Ok(Ok(n)) if n > 0);
    let tasks = state.tasks.states();
    let not_running: Vec<&str> = tasks.iter().filter(|t| t.state != Status::Running).map(|t| t.task).collect();
    let reachable = |ok: bool| if ok { "ok" } else { "unreachable" };
    let mut body = json!({
        "ready": true,
        "postgresql": reachable(postgresql),
        "kafka": reachable(kafka),
        "tasks": tasks,
    });
    let problem = if !postgresql {
        Some("postgresql is not reachable".to_owned())
    } else if !kafka {
        Some("kafka is not reachable".to_owned())
    } else if !not_running.is_empty() {
        Some(format!("background tasks not running: {}", not_running.join(", ")))
    } else {
        None
    };
    let Some(detail) = problem else { return Json(body).into_response() };
    let problem = Problem::unavailable(detail);
    body["ready"] = json!(false);
    body["status"] = json!(problem.status.as_u16());
    body["type"] = json!(format!("{}{}", crate::problem::TYPE_BASE, problem.slug));
    body["title"] = json!(problem.title);
    body["detail"] = json!(problem.detail);
    let mut response = (problem.status, Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")),
)]
pub(super) async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::prometheus().render()).into_response()
}
