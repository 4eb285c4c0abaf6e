//! The HTTP API (axum on hyper), versioned under `/v1`, JSON in and out, every error as
//! `application/problem+json`.

mod accounts;
mod auth;
mod body;
mod command;
mod conflicts;
pub use conflicts::{EVENTS_LISTED, EVENTS_PAGE_MAX};
mod health;
mod monitors;
pub mod openapi;
pub mod problem;
mod query;
mod replication;
pub mod session;
mod transactions;
mod transfers;

pub use auth::{Caller, KeyCache, Scope, ensure_key as auth_ensure_key, hash_key};
pub use replication::PAGE_MAX as REPLICATION_PAGE_MAX;

use crate::config::NodeConfig;
use crate::problem::Problem;
use crate::telemetry::{self, metric};
use crate::write::Writer;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ledger_core::RegionId;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The regional database.
    pub pool: PgPool,
    /// The committer.
    pub writer: Writer,
    /// This node's region.
    pub region: RegionId,
    /// Settings.
    pub cfg: Arc<NodeConfig>,
    /// API key lookups.
    pub keys: Arc<KeyCache>,
    /// For `/readyz`: a client that can ask the broker for metadata.
    pub kafka: Arc<rdkafka::consumer::BaseConsumer>,
    /// For `/readyz`: the supervised background tasks' states.
    pub tasks: crate::supervise::Tasks,
    /// Signs and checks `Ledger-Session` tokens.
    pub session_key: Arc<Vec<u8>>,
}

impl AppState {
    /// How long a write may wait for its commit.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/accounts", post(accounts::open))
        .route("/v1/accounts/{id}", get(accounts::get))
        .route("/v1/accounts/{id}/entries", get(accounts::entries))
        .route("/v1/views/accounts/{id}", get(accounts::view))
        .route("/v1/transfers", post(transfers::create))
        .route("/v1/transfers/{id}", get(transfers::get))
        .route("/v1/transfers/{id}/post", post(transfers::post_pending))
        .route("/v1/transfers/{id}/void", post(transfers::void_pending))
        .route("/v1/transactions", post(transactions::create))
        .route("/v1/transactions/{id}", get(transactions::get))
        .route("/v1/conflicts", get(conflicts::list))
        .route("/v1/conflicts/{id}", get(conflicts::get))
        .route("/v1/conflicts/{id}/resolve", post(conflicts::resolve))
        .route("/v1/replication/events", get(replication::events))
        .route("/v1/monitors", post(monitors::create))
        .route("/v1/monitors", get(monitors::list))
        .route("/v1/monitors/{id}", get(monitors::get))
        .route("/v1/monitors/{id}", delete(monitors::delete))
        .route("/v1/monitors/{id}/deliveries", get(monitors::deliveries))
        .route("/v1/webhook-deliveries", get(monitors::list_deliveries))
        .route("/v1/webhook-deliveries/{id}/retry", post(monitors::retry))
        // Inside authentication: an unauthenticated caller learns nothing from the wait.
        .route_layer(middleware::from_fn_with_state(state.clone(), session::layer))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_key));
    Router::new()
        .merge(v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::serve))
        .route_layer(middleware::from_fn(observe))
        .fallback(|| async { Problem::not_found() })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(state.cfg.body_limit_bytes))
        .with_state(state)
}

/// The request span (continuing a client's `traceparent` if it sent one) and the latency metric.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let client_parent = request.headers().get("traceparent").and_then(|v| v.to_str().ok());
    telemetry::continue_trace(&span, client_parent);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    let labels = [("method", method.to_string()), ("route", route), ("status", status.to_string())];
    metrics::histogram!(metric::HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The scope a request needs: replication for `/v1/replication/`, reconcile for
/// `/v1/conflicts/{id}/resolve`, else reads for safe methods and writes for everything else.
fn scope_for(method: &Method, path: &str) -> Scope {
    if path.starts_with("/v1/replication/") {
        Scope::Replication
    } else if path.starts_with("/v1/conflicts/") && path.ends_with("/resolve") {
        Scope::Reconcile
    } else if matches!(*method, Method::GET | Method::HEAD) {
        Scope::Read
    } else {
        Scope::Write
    }
}

/// Answers from the committer or a timeout, as a response.
async fn with_timeout<T: IntoResponse>(
    state: &State<AppState>,
    f: impl std::future::Future<Output = Result<T, Problem>>,
) -> Response {
    match tokio::time::timeout(state.request_timeout(), f).await {
        Ok(Ok(ok)) => ok.into_response(),
        Ok(Err(problem)) => problem.into_response(),
        Err(_) => Problem::unavailable("the request timed out; retry with the same Idempotency-Key").into_response(),
    }
}

/// Maps a read error to a problem.
fn read_problem(e: sqlx::Error) -> Problem {
    tracing::error!(error = %e, "read failed");
    Problem::unavailable("the database is unreachable")
}
