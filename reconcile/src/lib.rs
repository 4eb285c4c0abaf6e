//! The reconcile service: turns the conflicts every region reports into cases, and gives finance
//! staff a four-eyes workflow to resolve them with compensating entries posted through the regions'
//! public API, every step in a hash-chained audit trail. It never writes to a region's database.
//!
//! - [`intake`]: `ledger.conflicts` of every region, a backfill from `GET /v1/conflicts`, and the
//!   transfers each case names;
//! - [`case`]: the case life and who may move it (pure);
//! - [`store`]: cases and proposals in the service's own database, each move with its audit entry;
//! - [`execute`]: approved proposals carried through every region, idempotently;
//! - [`audit`]: the chain and its verification; [`auth`]: staff, sessions, tokens;
//! - [`api`] (JSON, bearer tokens) and [`ui`] (server-rendered pages, cookie sessions, CSRF).

pub mod api;
pub mod audit;
pub mod auth;
pub mod case;
pub mod config;
pub mod execute;
pub mod export;
pub mod input;
pub mod intake;
pub mod metrics;
pub mod problem;
pub mod regions;
pub mod store;
pub mod ui;

use crate::config::ReconcileConfig;
use crate::regions::Regions;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The service's schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The service's database.
    pub pool: PgPool,
    /// Settings.
    pub cfg: Arc<ReconcileConfig>,
    /// Wakes the executor after an approval.
    pub wake: Arc<Notify>,
}

/// Errors of starting the service.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The listener.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
}

/// A running service.
pub struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Its database.
    pub pool: PgPool,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops every task and waits for them.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Connects to the service's database and brings its schema up to date.
pub async fn connect(database_url: &str) -> Result<PgPool, StartError> {
    let pool =
        PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(10)).connect(database_url).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Starts intake, the executor and the HTTP server.
pub async fn start(cfg: ReconcileConfig) -> Result<Running, StartError> {
    if cfg.node_api_key.is_empty() {
        return Err(StartError::Config("node_api_key is required (a region key with the reconcile scope)".into()));
    }
    if cfg.regions.is_empty() {
        return Err(StartError::Config("at least one region is required".into()));
    }
    let pool = connect(&cfg.database_url).await?;
    let cfg = Arc::new(cfg);
    let regions =
        Regions::new(cfg.regions.clone(), cfg.node_api_key.clone(), Duration::from_millis(cfg.node_timeout_ms));
    let stop = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    for r in &cfg.regions {
        let (pool, stop) = (pool.clone(), stop.clone());
        let (name, bootstrap) = (r.name.clone(), r.kafka_bootstrap.clone());
        let topic = ledger_schema::conflicts_topic(&cfg.topic_prefix);
        let group = cfg.consumer_group.clone();
        tasks.spawn(async move {
            // A consumer that cannot be created (bad settings) is retried: intake must not stop.
            while !stop.is_cancelled() {
                match intake::consume(
                    pool.clone(),
                    name.clone(),
                    bootstrap.clone(),
                    topic.clone(),
                    group.clone(),
                    stop.clone(),
                )
                .await
                {
                    Ok(()) => return,
                    Err(e) => tracing::error!(region = %name, error = %e, "conflicts consumer failed; restarting"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    {
        let (pool, regions, stop) = (pool.clone(), regions.clone(), stop.clone());
        let (interval, page) = (Duration::from_millis(cfg.backfill_interval_ms), cfg.backfill_page);
        tasks.spawn(async move {
            loop {
                if let Err(e) = intake::backfill_once(&pool, &regions, page).await {
                    tracing::warn!(error = %e, "backfill");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
    }
    {
        let (pool, regions, stop) = (pool.clone(), regions.clone(), stop.clone());
        tasks.spawn(async move {
            loop {
                let pause = match intake::enrich_once(&pool, &regions).await {
                    Ok(n) if n > 0 => Duration::from_millis(50),
                    Ok(_) => Duration::from_millis(500),
                    Err(e) => {
                        tracing::warn!(error = %e, "enrichment");
                        Duration::from_secs(1)
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        });
    }
    {
        let (pool, regions, stop, wake) = (pool.clone(), regions.clone(), stop.clone(), wake.clone());
        let interval = Duration::from_millis(cfg.execute_interval_ms);
        let retry = (Duration::from_millis(cfg.retry_ms_min), Duration::from_millis(cfg.retry_ms_max));
        tasks.spawn(execute::run(pool, regions, interval, retry, wake, stop));
    }
    let state = AppState { pool: pool.clone(), cfg: cfg.clone(), wake };
    let listener = tokio::net::TcpListener::bind(&cfg.http_addr).await?;
    let addr = listener.local_addr()?;
    let app = router(state);
    let shutdown = stop.clone();
    tasks.spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "http server");
        }
    });
    tracing::info!(%addr, "reconcile listening");
    Ok(Running { addr, stop, tasks, pool })
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .merge(api::routes(state.clone()))
        .merge(ui::routes())
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/metrics", axum::routing::get(metrics::render))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}
