//! Issue 15's first "done when": `ledgerctl up` starts three regions with Jaeger; a transfer posted
//! with a known W3C `traceparent` becomes one trace in Jaeger's query API holding the origin node's
//! spans and the remote apply of both other regions (through the outbox, Kafka and each
//! replicator), every span's resource naming its service and region.

mod common;
use common::Env;

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// Span batches leave every second (see `ledger_telemetry`); replication and apply take a few more.
const TRACE_TIMEOUT: Duration = Duration::from_secs(120);

/// A state folder and port bases nobody else is using, and `down --purge` when the test ends.
/// `(service.name, cloud.region)` of every process of a Jaeger trace, by process id.
fn processes(trace: &Value) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for (id, p) in trace["processes"].as_object().into_iter().flatten() {
        let service = p["serviceName"].as_str().unwrap_or_default().to_owned();
        let region = p["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["key"] == "cloud.region")
            .and_then(|t| t["value"].as_str())
            .unwrap_or_default()
            .to_owned();
        out.insert(id.clone(), (service, region));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_is_one_trace_across_every_region_in_jaeger() {
    let jaeger = ledgerctl::jaeger::default_bin();
    assert!(
        jaeger.is_file(),
        "Jaeger is not built ({} is missing): run scripts/install-deps.sh, which builds it",
        jaeger.display()
    );
    let env = Env::new("ledgerctl-tracing-", &REGIONS, &[]);
    let started = Instant::now();
    let out = env.run(&["up"]);
    assert!(out.status.success(), "up failed: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("stack up in {:?}", started.elapsed());
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(env.state().join("env.json")).unwrap()).unwrap();
    let tracing_url = manifest["tracing_url"].as_str().expect("env.json names tracing_url").to_owned();
    assert!(manifest["jaeger_pid"].as_u64().is_some(), "env.json records Jaeger's pid");
    let key = manifest["api_key"].as_str().unwrap().to_owned();
    let origin = manifest["regions"][0]["http_url"].as_str().unwrap().to_owned();

    let http = reqwest::Client::new();
    for body in [
        serde_json::json!({"id": "world", "currency": "USD", "allow_negative": true}),
        serde_json::json!({"id": "alice", "currency": "USD"}),
    ] {
        let r = http.post(format!("{origin}/v1/accounts")).bearer_auth(&key).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "opening {body}: {}", r.status());
    }
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let r = http
        .post(format!("{origin}/v1/transfers"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "trace-1")
        .header("traceparent", &traceparent)
        .json(&serde_json::json!({"from": "world", "to": "alice", "amount": 2500}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "transfer: {}", r.text().await.unwrap_or_default());
    let posted = Instant::now();

    // One trace holding: the origin node's HTTP span, and in both other regions the remote apply
    // of the mirrored record (each region's node, `process us-east.ledger.events`).
    let mirrored = format!("process {}", ledger_schema::mirrored_events_topic("", REGIONS[0]));
    let mut seen = String::new();
    loop {
        let r = http.get(format!("{tracing_url}/api/traces/{trace_id}")).send().await;
        if let Ok(r) = r
            && let Ok(body) = r.json::<Value>().await
            && let Some(trace) = body["data"].as_array().and_then(|d| d.first())
        {
            let procs = processes(trace);
            let spans: Vec<(String, (String, String))> = trace["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let op = s["operationName"].as_str().unwrap_or_default().to_owned();
                    let p = procs.get(s["processID"].as_str().unwrap_or_default()).cloned().unwrap_or_default();
                    (op, p)
                })
                .collect();
            let origin_http = spans.iter().any(|(op, (service, region))| {
                op == "POST /v1/transfers" && service == "region-node" && region == REGIONS[0]
            });
            let applied: BTreeSet<&str> = spans
                .iter()
                .filter(|(op, (service, _))| *op == mirrored && service == "region-node")
                .map(|(_, (_, region))| region.as_str())
                .collect();
            if origin_http && REGIONS[1..].iter().all(|r| applied.contains(r)) {
                let mirrors: BTreeSet<&str> = spans
                    .iter()
                    .filter(|(_, (service, _))| service == "replicator")
                    .map(|(_, (_, region))| region.as_str())
                    .collect();
                eprintln!(
                    "one trace of {} spans, {:?} after the transfer; replicators into {mirrors:?}",
                    spans.len(),
                    posted.elapsed()
                );
                break;
            }
            seen = format!("{spans:?}");
        }
        assert!(
            posted.elapsed() < TRACE_TIMEOUT,
            "no trace {trace_id} with the origin's HTTP span and both other regions' apply within \
             {TRACE_TIMEOUT:?}; spans seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
