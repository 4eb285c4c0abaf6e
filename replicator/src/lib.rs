//! The replicator: mirrors each region's committed events into the other regions' Kafka.
//!
//! Topic names, partition counts and settings are `ledger_schema`'s.
//!
//! Topology: one replicator process per *target* region. It runs one pair task per source
//! region, reading the source's own `ledger.events` (read_committed) and writing
//! `<source>.ledger.events` on the target cluster (MirrorMaker 2's naming). It never reads a
//! mirrored topic, and it skips any record whose `origin-region` header is not its source, so an
//! event is only ever mirrored from the region where it originated: no loops, whatever the
//! topology. Stopping the replicator of region R pauses replication *into* R.
//!
//! Exactly once into the target: each pair writes its records and the next source offsets (to
//! `replicator.offsets.<source>` on the target cluster, one topic per pair) in one Kafka transaction, with a `transactional.id`
//! stable per pair, and on start reads its offsets back from that topic, as Kafka Connect's
//! exactly-once source connectors do (KIP-618). A kill -9 at any moment aborts (or fences) the
//! open transaction; the restart resumes from the last committed offsets.
//!
//! Lag: every second each pair writes a heartbeat (its target's name and the time) into the
//! source's `heartbeats` topic and mirrors it like any record, so the lag in seconds is measured
//! even when no events flow; the lag in events is the source's high watermark minus the mirrored
//! position. Both are Prometheus gauges per (source, target).
//!
//! Tracing: each event's mirroring is a span continuing the trace its `traceparent` header names
//! (the origin's publish), and the mirrored record carries that span's `traceparent` on.

mod pair;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A source region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Region name.
    pub region: String,
    /// Its Kafka.
    pub bootstrap: String,
}

/// One replicator's settings: everything into one target region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatorConfig {
    /// The region replicated into.
    pub target_region: String,
    /// Its Kafka.
    pub target_bootstrap: String,
    /// Every other region.
    pub sources: Vec<Source>,
    /// Prefix of every topic name (tests isolate themselves with it).
    #[serde(default)]
    pub topic_prefix: String,
    /// Where `/metrics` is served; none when empty.
    #[serde(default)]
    pub metrics_addr: String,
    /// Records per Kafka transaction.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Least time between the starts of two transactions of a pair, in milliseconds (at most
    /// [`COMMIT_INTERVAL_MS_MAX`]): each costs the target broker CPU whatever it holds, so this
    /// trades broker CPU against replication lag, as the outbox publisher's `publish_interval_ms`.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Heartbeat interval.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// OTLP/gRPC endpoint spans are exported to (`http://127.0.0.1:4317`); none when empty.
    #[serde(default)]
    pub otlp_endpoint: String,
}

fn default_batch_max() -> usize {
    // Large enough to amortise a transaction commit, small enough to keep one short.
    1_000
}

fn default_commit_interval_ms() -> u64 {
    50
}

/// Largest `commit_interval_ms`: beyond it replication would visibly lag at any rate.
pub const COMMIT_INTERVAL_MS_MAX: u64 = 10_000;

fn default_heartbeat_ms() -> u64 {
    1_000
}

/// A running replicator.
pub struct Replicator {
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Where `/metrics` listens, if it does.
    pub metrics_addr: Option<SocketAddr>,
}

impl Replicator {
    /// Stops after the current transaction.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }

    /// Stops at once, mid-transaction, as a crash would (tests).
    pub fn crash(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
        }
    }
}

impl Drop for Replicator {
    /// A dropped replicator stops: its pairs run on blocking threads that a runtime shutting down
    /// would otherwise wait for forever.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Why a replicator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metrics address cannot be bound.
    #[error("binding {0}: {1}")]
    Bind(String, std::io::Error),
    /// A setting is out of its range.
    #[error("{0}")]
    Config(String),
}

/// Starts one pair task per source, and the metrics endpoint.
pub async fn start(cfg: ReplicatorConfig) -> Result<Replicator, StartError> {
    if cfg.commit_interval_ms > COMMIT_INTERVAL_MS_MAX {
        return Err(StartError::Config(format!(
            "commit_interval_ms is {}, at most {COMMIT_INTERVAL_MS_MAX}",
            cfg.commit_interval_ms
        )));
    }
    let shutdown = CancellationToken::new();
    // Each replicator owns its recorder (not the process-global one), so its `/metrics` shows
    // exactly its own pairs, also when it shares a process with a node (tests).
    let recorder = std::sync::Arc::new(metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder());
    let handle = recorder.handle();
    let mut tasks = Vec::new();
    let mut metrics_addr = None;
    if !cfg.metrics_addr.is_empty() {
        let listener = tokio::net::TcpListener::bind(&cfg.metrics_addr)
            .await
            .map_err(|e| StartError::Bind(cfg.metrics_addr.clone(), e))?;
        metrics_addr = listener.local_addr().ok();
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(move || async move { handle.render() }))
            .route("/healthz", axum::routing::get(|| async { "ok" }));
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        }));
    }
    for source in cfg.sources.iter().filter(|s| s.region != cfg.target_region) {
        let pair = pair::Pair {
            source: source.clone(),
            target: Source { region: cfg.target_region.clone(), bootstrap: cfg.target_bootstrap.clone() },
            prefix: cfg.topic_prefix.clone(),
            batch_max: cfg.batch_max.max(1),
            commit_interval: std::time::Duration::from_millis(cfg.commit_interval_ms),
            heartbeat: std::time::Duration::from_millis(cfg.heartbeat_ms.max(10)),
            metrics: recorder.clone(),
        };
        tasks.push(tokio::spawn(pair::run(pair, shutdown.clone())));
    }
    Ok(Replicator { shutdown, tasks, metrics_addr })
}
