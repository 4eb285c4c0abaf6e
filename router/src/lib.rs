//! The geo-router: clients call one address and land on their nearest healthy region. The local
//! stand-in for Route 53 latency records with health checks, as a reverse proxy in front of every
//! region's node API.
//!
//! - **Where the client is** (`proxy.rs`): `X-Client-Region`, else the source-network table by
//!   peer address, else `default_client_region`.
//! - **Where it goes** (`config::Plan`): the healthy regions ordered by the latency table for that
//!   client region, nearest first.
//! - **Which regions are healthy** (`probe.rs` polls, `health.rs` decides): a task per region polls
//!   `GET /readyz`; `fall_checks` failures in a row take a region out, `rise_checks` passes bring
//!   it back.
//! - **What it never does**: change a request's end-to-end headers or body, or send a
//!   non-idempotent request twice. A GET or HEAD whose region refuses the connection goes to the
//!   next healthy region; anything else that fails is a 502 and the client decides.
//!
//! Its own endpoints live under `/_router/` so they never shadow a node's path.

pub mod config;
mod conn;
pub mod health;
pub mod metrics;
mod probe;
pub mod problem;
mod proxy;

use crate::config::{ConfigError, Plan};
use crate::health::{Thresholds, Tracker};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The header a client may send to say where it is.
pub const CLIENT_REGION_HEADER: &str = "x-client-region";
/// The header on every proxied response: the region that served it.
pub const SERVING_REGION_HEADER: &str = "ledger-region";

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration was refused.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The listen address cannot be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One region's health as the probe last left it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Checked {
    #[serde(flatten)]
    tracker: Tracker,
    /// Checks made since start.
    checks: u64,
    /// Why the last failed check failed.
    last_error: Option<String>,
    /// When the state last changed, as milliseconds before now in `/_router/regions`.
    #[serde(skip)]
    changed_at: Option<Instant>,
}

/// A serving region's live state, shared by its probe and the request handlers.
pub(crate) struct RegionState {
    /// Read per request, so kept apart from the lock.
    healthy: AtomicBool,
    checked: Mutex<Checked>,
}

impl RegionState {
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn checked(&self) -> Checked {
        // A panic while holding the lock cannot leave a `Checked` half-written; keep going.
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Everything a request handler and a probe share.
pub(crate) struct App {
    pub(crate) plan: Plan,
    pub(crate) regions: Vec<RegionState>,
    pub(crate) thresholds: Thresholds,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) client: proxy::Client,
    /// One permit per request being forwarded (`in_flight_max`).
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
}

/// A running router.
pub struct GeoRouter {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl GeoRouter {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the health checks and the listener; requests in flight finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for GeoRouter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Validates the configuration, binds, starts one probe per region and serves.
pub async fn start(cfg: config::RouterConfig) -> Result<GeoRouter, StartError> {
    let plan = cfg.validate()?;
    let listener = tokio::net::TcpListener::bind(&plan.config.http_addr)
        .await
        .map_err(|source| StartError::Bind { addr: plan.config.http_addr.clone(), source })?;
    let addr =
        listener.local_addr().map_err(|source| StartError::Bind { addr: plan.config.http_addr.clone(), source })?;
    let connect_timeout = Duration::from_millis(plan.config.health_timeout_ms);
    let send_timeout = Duration::from_millis(plan.config.send_timeout_ms);
    let app = Arc::new(App {
        regions: plan
            .upstreams
            .iter()
            .map(|_| RegionState { healthy: AtomicBool::new(false), checked: Mutex::new(Checked::default()) })
            .collect(),
        thresholds: Thresholds { fall: plan.config.fall_checks, rise: plan.config.rise_checks },
        metrics: metrics::Metrics::default(),
        client: proxy::client(connect_timeout),
        in_flight: Arc::new(tokio::sync::Semaphore::new(plan.config.in_flight_max)),
        plan,
    });
    for u in &app.plan.upstreams {
        app.metrics.healthy(&u.name, false);
    }
    let shutdown = CancellationToken::new();
    let mut tasks: Vec<JoinHandle<()>> =
        (0..app.regions.len()).map(|i| tokio::spawn(probe::run(app.clone(), i, shutdown.clone()))).collect();
    let routes = axum::Router::new()
        .route("/_router/healthz", axum::routing::get(|| async { "ok" }))
        .route("/_router/regions", axum::routing::get(regions))
        .route("/_router/metrics", axum::routing::get(render_metrics))
        .route("/_router/{*rest}", axum::routing::any(router_not_found))
        .fallback(proxy::forward)
        .with_state(app);
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let service = routes.into_make_service_with_connect_info::<conn::Peer>();
        let listener = conn::Listener { inner: listener, send_timeout };
        if let Err(e) = axum::serve(listener, service).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::error!(error = %e, "the router's listener failed");
        }
    }));
    Ok(GeoRouter { addr, shutdown, tasks })
}

/// `GET /_router/regions`: each region's health, in configuration order.
async fn regions(State(app): State<Arc<App>>) -> impl IntoResponse {
    let now = Instant::now();
    let rows: Vec<serde_json::Value> = app
        .plan
        .upstreams
        .iter()
        .zip(&app.regions)
        .map(|(u, r)| {
            let c = r.checked();
            let mut row = serde_json::to_value(&c).unwrap_or_default();
            row["name"] = u.name.clone().into();
            row["url"] = u.base.clone().into();
            row["healthy"] = r.is_healthy().into();
            row["changed_ms_ago"] = c.changed_at.map(|t| now.duration_since(t).as_millis() as u64).into();
            row
        })
        .collect();
    Json(serde_json::json!({
        "regions": rows,
        "fall_checks": app.thresholds.fall,
        "rise_checks": app.thresholds.rise,
        "health_interval_ms": app.plan.config.health_interval_ms,
    }))
}

async fn render_metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render())
}

async fn router_not_found(uri: axum::http::Uri) -> problem::Problem {
    problem::Problem::not_found(uri.path())
}
