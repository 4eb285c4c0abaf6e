//! Telemetry every process of the ledger shares (the node, the replicator, the router, reconcile).
//!
//! - Logs: JSON lines ([`logs`]); inside a span that continues a trace they carry its `trace_id`.
//! - Traces: `tracing` spans exported through OpenTelemetry, OTLP/gRPC when an endpoint is
//!   configured, each span's resource naming the service (`service.name`) and its region
//!   (`cloud.region`), so one trace across regions shows which process of which region did what.
//! - Propagation: the W3C `traceparent` travels in HTTP headers, in the stored event and in Kafka
//!   record headers; [`continue_trace`] makes a span its child, [`traceparent_of`] gives a span's.
//!
//! One crate rather than one copy per binary: four processes install the same subscriber, and the
//! log format and the resource attributes must not drift apart between them.

pub mod logs;

use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter, TracerProviderBuilder};
use std::collections::HashMap;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The header (HTTP and Kafka) and the stored column that carry the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// How often batched spans leave when `OTEL_BSP_SCHEDULE_DELAY` does not say: the SDK's 5 s made
/// an operator (and the tests) wait for a trace that was long finished; a batch a second is cheap.
const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// Who is reporting: the resource of every span the process exports.
#[derive(Debug, Clone, Copy)]
pub struct Service<'a> {
    /// `service.name`: `region-node`, `replicator`, `router`, `reconcile`.
    pub name: &'a str,
    /// `cloud.region`: the region the process serves (empty for a process of no one region).
    pub region: &'a str,
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

/// A step applied to the tracer provider builder (tests add an in-memory exporter this way).
pub type ProviderStep = Box<dyn FnOnce(TracerProviderBuilder) -> TracerProviderBuilder>;

/// Installs JSON logs and OpenTelemetry tracing for the process: OTLP/gRPC to `otlp_endpoint`
/// when it is not empty, plus `extra` (tests pass an in-memory exporter). A second call in the
/// same process (tests start many components) keeps the first installation. Call it inside a
/// Tokio runtime: the gRPC channel's worker runs there.
pub fn init(service: Service<'_>, otlp_endpoint: &str, extra: Option<ProviderStep>) -> Telemetry {
    install(service, otlp_endpoint, extra, false)
}

/// As [`init`], for tests: log lines go through the test harness's capture, not straight to stdout.
pub fn init_for_tests(service: Service<'_>, extra: Option<ProviderStep>) -> Telemetry {
    install(service, "", extra, true)
}

fn install(service: Service<'_>, otlp_endpoint: &str, extra: Option<ProviderStep>, test_writer: bool) -> Telemetry {
    let mut resource = Resource::builder().with_service_name(service.name.to_owned());
    if !service.region.is_empty() {
        resource = resource.with_attribute(KeyValue::new("cloud.region", service.region.to_owned()));
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let mut exporting = false;
    if !otlp_endpoint.is_empty() {
        use opentelemetry_otlp::WithExportConfig;
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(otlp_endpoint).build() {
            Ok(exporter) => {
                let mut batch = opentelemetry_sdk::trace::BatchConfigBuilder::default();
                if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
                    batch = batch.with_scheduled_delay(EXPORT_DELAY);
                }
                let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch.build())
                    .build();
                builder = builder.with_span_processor(processor);
                exporting = true;
            }
            Err(e) => eprintln!("{}: OTLP exporter disabled: {e}", service.name),
        }
    }
    if let Some(extra) = extra {
        builder = extra(builder);
        exporting = true;
    }
    if !exporting {
        // Nothing would receive a sampled span. Unsampled, every span still has its trace id (log
        // lines and the traceparent stored with each event carry it), and per-record spans are
        // skipped (see `sampled`): in the node those were four spans per transfer.
        builder = builder.with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service.name.to_owned());
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

/// The W3C `traceparent` of `span`, if it belongs to a valid trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Whether a W3C `traceparent` says its trace is sampled (flag bit 0). A record of an unsampled
/// trace gets no span of its own: it would be exported nowhere, and at some microseconds each, one
/// span per record was a tenth of the node's CPU under load.
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
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
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
