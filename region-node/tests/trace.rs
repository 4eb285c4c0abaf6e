//! One transfer is one trace: the HTTP request span, the publisher's send span and the consumer's
//! process span share a trace id and chain parent to child, through the traceparent stored with the
//! outbox row and carried in the Kafka headers. Uses the OpenTelemetry SDK's in-memory exporter.

mod common;

use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transfer_is_one_trace_from_http_to_consumer() {
    let exporter = InMemorySpanExporter::default();
    // Installed before the harness's own (which then keeps this one).
    std::mem::forget(region_node::telemetry::init_for_tests(Some(region_node::telemetry::with_exporter(
        exporter.clone(),
    ))));
    let node = common::start(|_| {}).await;
    node.open("world", "USD", true).await;
    node.open("alice", "USD", false).await;
    let r = node.transfer("world", "alice", 42).await;
    assert_eq!(r.status, 201);
    node.wait_read_models(Duration::from_secs(30)).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let (http, send, process) = loop {
        let spans = exporter.get_finished_spans().unwrap();
        let http = spans.iter().find(|s| s.name == "POST /v1/transfers").cloned();
        let chain = http.as_ref().and_then(|h| {
            let trace = h.span_context.trace_id();
            let send = spans.iter().find(|s| s.name == "send ledger.events" && s.span_context.trace_id() == trace)?;
            let process = spans.iter().find(|s| {
                s.name == "process ledger.events"
                    && s.span_context.trace_id() == trace
                    && s.parent_span_id == send.span_context.span_id()
            })?;
            Some((send.clone(), process.clone()))
        });
        if let (Some(h), Some((send, process))) = (http, chain) {
            break (h, send, process);
        }
        assert!(Instant::now() < deadline, "no HTTP → send → process chain among {} spans", spans.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let trace = http.span_context.trace_id();
    assert_eq!(send.span_context.trace_id(), trace);
    assert_eq!(process.span_context.trace_id(), trace);
    assert_eq!(http.parent_span_id, SpanId::INVALID, "the HTTP span is the root");
    assert_eq!(send.parent_span_id, http.span_context.span_id(), "send continues the request");
    assert_eq!(process.parent_span_id, send.span_context.span_id(), "process continues the send");
    let attr = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
    };
    assert_eq!(attr(&http, "http.route").as_deref(), Some("/v1/transfers"));
    assert_eq!(attr(&http, "http.response.status_code").as_deref(), Some("201"));
    assert_eq!(attr(&send, "messaging.system").as_deref(), Some("kafka"));
    assert_eq!(attr(&send, "messaging.destination.name"), Some(node.topic()));
    node.stop().await;
}
