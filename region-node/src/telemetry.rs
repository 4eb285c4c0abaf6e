//! Logs, traces and metrics.
//!
//! Logging, tracing and propagation are `ledger_telemetry`'s, shared by every process.
//!
//! - Logs: JSON lines ([`logs`]); inside a request, publish or consume span they carry that span's
//!   `trace_id`.
//! - Traces: `tracing` spans exported through OpenTelemetry (OTLP when an endpoint is configured).
//!   One transfer is one trace: the HTTP span's W3C `traceparent` is stored with the outbox row, the
//!   publisher's span continues it and puts its own `traceparent` in the Kafka headers, and the
//!   consumer's span continues that.
//! - Metrics: Prometheus text from `metrics-exporter-prometheus`, names below.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Metric names, in one place so dashboards and alerts have one source.
pub mod metric {
    /// Histogram, seconds, labels `method`, `route`, `status`.
    pub const HTTP_DURATION: &str = "http_server_request_duration_seconds";
    /// Histogram: commands per group commit.
    pub const BATCH_SIZE: &str = "ledger_group_commit_batch_size";
    /// Histogram, seconds: one group commit, lock to commit.
    pub const COMMIT_SECONDS: &str = "ledger_group_commit_duration_seconds";
    /// Counter: batches by how they committed (`planned`, `planned-retried`, `read-first`).
    pub const COMMIT_PATH: &str = "ledger_group_commit_batches_total";
    /// Gauge: outbox rows not yet published.
    pub const OUTBOX_BACKLOG: &str = "ledger_outbox_backlog";
    /// Histogram, seconds: outbox row creation to Kafka commit.
    pub const PUBLISH_LAG: &str = "ledger_outbox_publish_lag_seconds";
    /// Counter: records published.
    pub const PUBLISHED: &str = "ledger_outbox_published_total";
    /// Gauge: records on the topic the read-model consumer has not applied yet.
    pub const CONSUMER_LAG: &str = "ledger_consumer_lag_events";
    /// Counter: records dropped as already applied.
    pub const DUPLICATES: &str = "ledger_consumer_duplicates_dropped_total";
    /// Counter: records applied to the read models.
    pub const APPLIED: &str = "ledger_consumer_events_applied_total";
    /// Counter, label `kind`: conflicts detected by remote apply.
    pub const CONFLICTS: &str = "ledger_conflicts_detected_total";
    /// Counter: events of other regions applied here.
    pub const REMOTE_APPLIED: &str = "ledger_remote_events_applied_total";
    /// Gauge: events of other regions held here until a predecessor arrives.
    pub const HELD: &str = "ledger_remote_events_held";
    /// Gauge, seconds: age of the oldest held event (0 when none).
    pub const HELD_OLDEST_AGE: &str = "ledger_remote_events_held_oldest_age_seconds";
    /// Counter: replicated records set aside as dead letters.
    pub const DEAD_LETTERS: &str = "ledger_remote_dead_letters_total";
    /// Counter, label `origin`: events this region lacked and got from their origin region by
    /// anti-entropy (see `anti_entropy`).
    pub const ANTI_ENTROPY_REPAIRED: &str = "ledger_anti_entropy_repaired_total";
    /// Gauge, label `origin`: the origin's `seq` this region's anti-entropy has read up to.
    pub const ANTI_ENTROPY_CURSOR: &str = "ledger_anti_entropy_cursor";
    /// Counter, label `task`: restarts of a supervised background task (see `supervise`).
    pub const TASK_RESTARTS: &str = "ledger_task_restarts_total";
    /// Gauge, seconds since the last snapshot.
    pub const SNAPSHOT_AGE: &str = "ledger_snapshot_age_seconds";
    /// Counter: snapshots that failed (tried again at the consumer's next pass).
    pub const SNAPSHOT_FAILURES: &str = "ledger_snapshot_failures_total";
}

/// Latency buckets, seconds: fine below 10 ms where the latency targets are.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0];

/// The process-wide Prometheus recorder (a process has one metrics recorder, however many nodes).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(metric::BATCH_SIZE.into()),
                    &BATCH_BUCKETS,
                )
            })
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then ours only renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub use ledger_telemetry::{
    ProviderStep, TRACEPARENT, Telemetry, continue_trace, logs, sampled, traceparent_of, with_exporter,
};

/// The node's `service.name`.
pub const SERVICE: &str = "region-node";

/// Installs JSON logs and OpenTelemetry tracing for the node of `region` (see
/// [`ledger_telemetry::init`]).
pub fn init(region: &str, otlp_endpoint: &str, extra: Option<ProviderStep>) -> Telemetry {
    ledger_telemetry::init(ledger_telemetry::Service { name: SERVICE, region }, otlp_endpoint, extra)
}

/// As [`init`], for tests: log lines go through the test harness's capture.
pub fn init_for_tests(extra: Option<ProviderStep>) -> Telemetry {
    ledger_telemetry::init_for_tests(ledger_telemetry::Service { name: SERVICE, region: "" }, extra)
}
