//! Logs, traces and metrics.
//!
//! - Logs: JSON lines ([`logs`]); inside a request, publish or consume span they carry that span's
//!   `trace_id`.
//! - Traces: `tracing` spans exported through OpenTelemetry (OTLP when an endpoint is configured).
//!   One transfer is one trace: the HTTP span's W3C `traceparent` is stored with the outbox row, the
//!   publisher's span continues it and puts its own `traceparent` in the Kafka headers, and the
//!   consumer's span continues that.
//! - Metrics: Prometheus text from `metrics-exporter-prometheus`, names below.

pub mod logs;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter, TracerProviderBuilder};
use std::collections::HashMap;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] on exit to flush spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops trace export.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs JSON logs and OpenTelemetry tracing for the process: OTLP/gRPC to `otlp_endpoint`
/// when it is not empty, plus `extra` (tests pass an in-memory exporter). A second call in the
/// same process (tests start many nodes) keeps the first installation.
pub fn init(otlp_endpoint: &str, extra: Option<ProviderStep>) -> Telemetry {
    install(otlp_endpoint, extra, false)
}

/// As [`init`], for tests: log lines go through the test harness's capture, not straight to stdout.
pub fn init_for_tests(extra: Option<ProviderStep>) -> Telemetry {
    install("", extra, true)
}

/// A step applied to the tracer provider builder (tests add an in-memory exporter this way).
pub type ProviderStep = Box<dyn FnOnce(TracerProviderBuilder) -> TracerProviderBuilder>;

fn install(otlp_endpoint: &str, extra: Option<ProviderStep>, test_writer: bool) -> Telemetry {
    let mut builder = SdkTracerProvider::builder();
    let mut exporting = false;
    if !otlp_endpoint.is_empty() {
        use opentelemetry_otlp::WithExportConfig;
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(otlp_endpoint).build() {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                exporting = true;
            }
            Err(e) => eprintln!("region-node: OTLP exporter disabled: {e}"),
        }
    }
    if let Some(extra) = extra {
        builder = extra(builder);
        exporting = true;
    }
    if !exporting {
        // Nothing would receive a sampled span. Unsampled, every span still has its trace id (log
        // lines and the traceparent stored with each event carry it), and the publisher and the
        // consumer skip their per-record spans (see `sampled`): those were four spans per transfer.
        builder = builder.with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff);
    }
    let provider = builder.build();
    let tracer = provider.tracer("region-node");
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let lines = tracing_subscriber::fmt::layer().fmt_fields(logs::TraceIdField).event_format(logs::JsonLines);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(if test_writer { lines.with_test_writer().boxed() } else { lines.boxed() })
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .is_ok();
    Telemetry { provider: installed.then_some(provider) }
}

/// Helper for tests: a provider builder step adding a simple (synchronous) exporter.
pub fn with_exporter<E: SpanExporter + 'static>(exporter: E) -> ProviderStep {
    Box::new(move |b| b.with_simple_exporter(exporter))
}

/// The W3C `traceparent` of `span`, if it belongs to a sampled trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Whether a W3C `traceparent` says its trace is sampled (flag bit 0). A record of an unsampled
/// trace gets no span of its own in the publisher or the consumer: it would be exported nowhere,
/// and at some microseconds each, one span per record was a tenth of the node's CPU under load.
pub fn sampled(traceparent: Option<&str>) -> bool {
    traceparent
        .and_then(|t| t.rsplit_once('-'))
        .and_then(|(_, flags)| u8::from_str_radix(flags, 16).ok())
        .is_some_and(|flags| flags & 1 == 1)
}

/// Makes `span` a child of the trace named by `traceparent` (a new trace when absent or
/// malformed), then records the trace id in the span's `trace_id` field, which log lines logged in
/// it carry (see [`logs`]).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
    span.record(logs::TRACE_ID_FIELD, trace_id_of(span));
}

/// The trace id of `span` as 32 hex digits.
fn trace_id_of(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

#[cfg(test)]
mod tests {
    use super::sampled;

    #[test]
    fn only_the_sampled_flag_makes_a_traceparent_sampled() {
        let id = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        assert!(sampled(Some(&format!("{id}-01"))));
        assert!(sampled(Some(&format!("{id}-03"))));
        assert!(!sampled(Some(&format!("{id}-00"))));
        assert!(!sampled(Some(&format!("{id}-02"))));
        assert!(!sampled(Some("garbage")));
        assert!(!sampled(None));
    }
}
