//! The region node: one per region. It serves the double-entry HTTP API (accounts, transfers,
//! idempotency keys), group-commits each command's events, account state, idempotency record and
//! outbox rows in one PostgreSQL transaction, publishes the outbox to the region's Kafka with a
//! transactional producer, and keeps read models and snapshots from a read_committed consumer.
//!
//! Architecture invariant: a client hears 201 only after its command's PostgreSQL transaction
//! committed (with `synchronous_commit` on); everything downstream (Kafka, read models, other
//! regions) is derived from committed rows and tolerates being fed the same event twice.

pub mod anti_entropy;
pub mod api;
pub mod config;
pub mod consumer;
pub mod expiry;
pub mod idempotency;
mod leader;
pub mod outbox;
pub mod outbox_prune;
pub use api::problem;
pub mod remote;
pub mod storage;
pub mod supervise;
pub mod telemetry;
mod views;
pub mod webhooks;
pub mod write;

use crate::config::NodeConfig;
use ledger_core::RegionId;
use rdkafka::ClientConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// PostgreSQL unreachable or failing.
    #[error("postgresql: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database belongs to another region, or could not be claimed.
    #[error(transparent)]
    Claim(#[from] ledger_schema::ClaimError),
    /// Kafka client creation failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The HTTP address cannot be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    shutdown: CancellationToken,
    supervisor: JoinHandle<()>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Node {
    /// Where the HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful stop: stop accepting, finish in-flight requests, commit what is queued, publish the
    /// outbox, commit consumer offsets, close the pool.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.supervisor.await;
    }

    /// Stops every task at once with no cleanup, as a crash would (for tests).
    pub fn crash(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.supervisor.abort();
    }
}

/// Connects, migrates, and starts the committer, the publisher, the consumer and the HTTP server.
pub async fn start(cfg: NodeConfig) -> Result<Node, StartError> {
    let region = RegionId::new(cfg.region.clone()).map_err(|e| StartError::Config(e.to_string()))?;
    // Install the metrics recorder before anything records: a recorder installed later loses those.
    telemetry::prometheus();
    let pool_connect = cfg.database_url.parse::<sqlx::postgres::PgConnectOptions>()?.application_name("region-node");
    let pool = pool_options(cfg.db_pool_max).connect_with(pool_connect).await?;
    ledger_schema::MIGRATOR.run(&pool).await?;
    ledger_schema::claim_region(&pool, &region).await?;
    if !cfg.bootstrap_api_key.is_empty() {
        api::auth_ensure_key(&pool, "bootstrap", &cfg.bootstrap_api_key, &["read", "write"]).await?;
    }
    let anti_entropy_cfg = anti_entropy_config(&cfg, &region)?;
    if !cfg.replication_api_key.is_empty() {
        api::auth_ensure_key(&pool, "replication", &cfg.replication_api_key, &["replication"]).await?;
    }
    if !cfg.reconcile_api_key.is_empty() {
        api::auth_ensure_key(&pool, "reconcile", &cfg.reconcile_api_key, &["read", "write", "reconcile"]).await?;
    }
    let listener = tokio::net::TcpListener::bind(&cfg.http_addr)
        .await
        .map_err(|source| StartError::Bind { addr: cfg.http_addr.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: cfg.http_addr.clone(), source })?;
    let kafka = Arc::new(ClientConfig::new().set("bootstrap.servers", &cfg.kafka_bootstrap).create()?);

    let shutdown = CancellationToken::new();
    let background = CancellationToken::new();
    let (writer, committer) = write::start(region.clone(), &cfg)?;
    let mut tasks = vec![committer.abort_handle()];
    let topic = ledger_schema::events_topic(&cfg.topic_prefix);
    // The background tasks are supervised: restarted when they end early, their state in /readyz.
    let supervised = supervise::Tasks::default();
    let publisher = cfg.run_publisher.then(|| {
        let pcfg = outbox::PublisherConfig {
            region: region.to_string(),
            bootstrap: cfg.kafka_bootstrap.clone(),
            topic_prefix: cfg.topic_prefix.clone(),
            transactional_id: format!("{}ledger-outbox-{}", cfg.topic_prefix, region),
            batch_max: cfg.publish_batch_max,
            poll: Duration::from_millis(cfg.publish_poll_ms),
            interval: Duration::from_millis(cfg.publish_interval_ms),
            retention: Duration::from_millis(cfg.outbox_retention_ms),
            prune_rows_max: cfg.outbox_prune_rows_max,
        };
        let (pool, background) = (pool.clone(), background.clone());
        supervise::spawn("publisher", &supervised, background.clone(), move || {
            outbox::run(pool.clone(), pcfg.clone(), background.clone())
        })
    });
    let consumer = cfg.run_consumer.then(|| {
        let ccfg = consumer::ConsumerConfig {
            bootstrap: cfg.kafka_bootstrap.clone(),
            topic: topic.clone(),
            group: format!("{}ledger-read-models-{}", cfg.topic_prefix, region),
            batch_max: cfg.consume_batch_max,
            snapshot_every_events: cfg.snapshot_every_events,
            snapshot_every: Duration::from_millis(cfg.snapshot_every_ms),
            snapshot_full_every: cfg.snapshot_full_every,
            bloom_items: cfg.dedupe_bloom_items,
        };
        let (pool, background) = (pool.clone(), background.clone());
        supervise::spawn("consumer", &supervised, background.clone(), move || {
            consumer::run(pool.clone(), ccfg.clone(), background.clone())
        })
    });
    let remote = (!cfg.peers.is_empty()).then(|| {
        let rcfg = remote::RemoteConfig {
            region: region.clone(),
            bootstrap: cfg.kafka_bootstrap.clone(),
            topics: cfg
                .peers
                .iter()
                .map(|peer| ledger_schema::mirrored_events_topic(&cfg.topic_prefix, peer))
                .collect(),
            group: format!("{}ledger-apply-{}", cfg.topic_prefix, region),
            batch_max: cfg.consume_batch_max,
        };
        let (pool, background) = (pool.clone(), background.clone());
        supervise::spawn("remote-apply", &supervised, background.clone(), move || {
            remote::run(pool.clone(), rcfg.clone(), background.clone())
        })
    });
    let anti_entropy = anti_entropy_cfg.map(|acfg| {
        let (pool, background) = (pool.clone(), background.clone());
        supervise::spawn("anti-entropy", &supervised, background.clone(), move || {
            anti_entropy::run(pool.clone(), acfg.clone(), background.clone())
        })
    });
    let webhooks = cfg.run_webhooks.then(|| {
        let wcfg = webhooks::WebhookConfig {
            region: region.to_string(),
            attempts_max: cfg.webhook_attempts_max.max(1),
            timeout: Duration::from_millis(cfg.webhook_timeout_ms.max(1)),
            backoff_base: Duration::from_millis(cfg.webhook_backoff_ms_base),
            backoff_max: Duration::from_millis(cfg.webhook_backoff_ms_max.max(cfg.webhook_backoff_ms_base)),
            poll: Duration::from_millis(cfg.webhook_poll_ms.max(1)),
            batch_max: cfg.webhook_batch_max.max(1),
            allow_private_targets: cfg.webhook_allow_private_targets,
        };
        let (pool, background) = (pool.clone(), background.clone());
        supervise::spawn("webhooks", &supervised, background.clone(), move || {
            webhooks::run(pool.clone(), wcfg.clone(), background.clone())
        })
    });
    tasks.extend(webhooks.iter().map(JoinHandle::abort_handle));
    tasks.extend(anti_entropy.iter().map(JoinHandle::abort_handle));
    tasks.extend(remote.iter().map(JoinHandle::abort_handle));
    tasks.extend(publisher.iter().map(JoinHandle::abort_handle));
    tasks.extend(consumer.iter().map(JoinHandle::abort_handle));

    // Not supervised: it holds a Writer, which must be dropped at shutdown before the committer
    // can stop, so it ends with `shutdown` and handles its own errors.
    if cfg.pending_expiry_scan_ms > 0 {
        let expiry = tokio::spawn(expiry::run(
            pool.clone(),
            writer.clone(),
            region.clone(),
            Duration::from_millis(cfg.pending_expiry_scan_ms),
            shutdown.clone(),
        ));
        tasks.push(expiry.abort_handle());
    }
    let session_key = if cfg.session_secret.is_empty() {
        tracing::warn!(
            "no session_secret: Ledger-Session tokens are signed with a key of this process and hold only here"
        );
        rand::random::<[u8; 32]>().to_vec()
    } else {
        cfg.session_secret.as_bytes().to_vec()
    };
    let state = api::AppState {
        pool: pool.clone(),
        writer,
        region,
        session_key: Arc::new(session_key),
        cfg: Arc::new(cfg),
        keys: Arc::new(api::KeyCache::default()),
        kafka,
        tasks: supervised,
    };
    let app = api::router(state);
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tasks.push(http.abort_handle());

    let supervisor_shutdown = shutdown.clone();
    let supervisor = tokio::spawn(async move {
        supervisor_shutdown.cancelled().await;
        // 1. HTTP drains in-flight requests; dropping the router drops every Writer.
        let _ = http.await;
        // 2. The committer commits what is queued and stops.
        let _ = committer.await;
        // 3. The publisher publishes what was just committed; the consumer commits its offsets.
        // Their supervisors restart nothing once `background` is cancelled, and log an error.
        background.cancel();
        if let Some(p) = publisher {
            let _ = p.await;
        }
        if let Some(c) = consumer {
            let _ = c.await;
        }
        if let Some(r) = remote {
            let _ = r.await;
        }
        if let Some(a) = anti_entropy {
            let _ = a.await;
        }
        if let Some(w) = webhooks {
            let _ = w.await;
        }
        pool.close().await;
    });
    Ok(Node { addr, shutdown, supervisor, tasks })
}

/// The repair task's settings, or `None` when no peer has a URL (the task does not run).
fn anti_entropy_config(
    cfg: &NodeConfig,
    region: &RegionId,
) -> Result<Option<anti_entropy::AntiEntropyConfig>, StartError> {
    if cfg.peer_urls.is_empty() {
        return Ok(None);
    }
    let bad = |detail: String| StartError::Config(detail);
    if cfg.replication_api_key.is_empty() {
        return Err(bad("peer_urls needs a replication_api_key".into()));
    }
    let route_max = api::REPLICATION_PAGE_MAX as u32;
    if !(1..=route_max).contains(&cfg.anti_entropy_page_events) {
        return Err(bad(format!("anti_entropy_page_events must be from 1 to {route_max}")));
    }
    let mut peers = Vec::new();
    for (name, url) in &cfg.peer_urls {
        let peer = RegionId::new(name.as_str()).map_err(|e| bad(format!("peer_urls: {e}")))?;
        if peer == *region {
            return Err(bad(format!("peer_urls names this node's own region {peer}")));
        }
        peers.push((peer, url.clone()));
    }
    Ok(Some(anti_entropy::AntiEntropyConfig {
        region: region.clone(),
        peers,
        api_key: cfg.replication_api_key.clone(),
        interval: Duration::from_millis(cfg.anti_entropy_interval_ms.max(1)),
        page_events: cfg.anti_entropy_page_events,
    }))
}

/// Settings of the node's shared connection pool (the committer owns its connections).
fn pool_options(connections_max: u32) -> sqlx::postgres::PgPoolOptions {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections_max)
        .acquire_timeout(Duration::from_secs(5))
        // The default ping before every acquire is one more round trip per query. A connection
        // broken since its last use fails its statement instead, which every caller already
        // treats as retryable.
        .test_before_acquire(false)
}
