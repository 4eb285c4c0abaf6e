//! Failover when a region's PostgreSQL stops (its node keeps running and answers `/readyz` 503):
//! the region is out within 5 s with the default health settings and its clients land on their
//! next nearest region; PostgreSQL started again, the region is taken back once its node is ready
//! for three checks in a row. A test binary of its own: stopping a region's PostgreSQL takes the
//! databases of every test of the process on that region down with it.

mod common;

use common::{Client, Nodes, router_config, series};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_whose_postgresql_stops_is_out_within_5_s_and_back_when_it_is_ready_again() {
    let nodes = Nodes::start().await;
    let router = router::start(router_config(&nodes.urls)).await.unwrap();
    let client = Client::new(&router);
    client.wait_all_healthy(Duration::from_secs(10)).await;
    let auth = format!("Bearer {}", nodes.key);
    let ap = [("authorization", auth.as_str()), ("x-client-region", "ap-south")];
    let open = |id: &str| json!({"id": id, "currency": "USD", "allow_negative": true});
    let r = client.send(Method::POST, "/v1/accounts", &ap, Some(open("before"))).await;
    assert_eq!((r.status, r.region.as_deref()), (201, Some("ap-south")));

    let region = nodes.regions[2].clone();
    let stopping = Instant::now();
    tokio::task::spawn_blocking(move || region.stop_postgres()).await.unwrap();
    let stopped_after = stopping.elapsed();
    client.wait_health("ap-south", false, Duration::from_secs(5)).await;
    let out_after = stopping.elapsed();
    println!(
        "ap-south out {} ms after its PostgreSQL was asked to stop (it took {} ms to exit)",
        out_after.as_millis(),
        stopped_after.as_millis()
    );
    assert!(out_after < Duration::from_secs(5));
    let regions = client.regions().await;
    let why = regions["ap-south"]["last_error"].as_str().unwrap_or_default().to_owned();
    // The node's /readyz waits up to 2 s for PostgreSQL, longer than the 800 ms check timeout, so
    // the router mostly records a timeout rather than the node's 503.
    assert!(why.contains("/readyz answered 503") || why.contains("no answer within 800 ms"), "{why}");
    // ap-south's next nearest is eu-west.
    let r = client.send(Method::POST, "/v1/accounts", &ap, Some(open("during"))).await;
    assert_eq!((r.status, r.region.as_deref()), (201, Some("eu-west")), "{:?}", r.body);

    let region = nodes.regions[2].clone();
    tokio::task::spawn_blocking(move || region.start_postgres()).await.unwrap();
    let back_after = client.wait_health("ap-south", true, Duration::from_secs(60)).await;
    println!("ap-south back {} ms after its PostgreSQL accepted logins again", back_after.as_millis());
    assert!(back_after >= Duration::from_millis(1_500), "three passes take at least two intervals");
    let r = client.send(Method::POST, "/v1/accounts", &ap, Some(open("after"))).await;
    assert_eq!((r.status, r.region.as_deref()), (201, Some("ap-south")), "{:?}", r.body);
    let metrics = client.metrics().await;
    assert_eq!(
        series(&metrics, "ledger_router_health_transitions_total", "region=\"ap-south\",to=\"unhealthy\""),
        1.0,
        "{metrics}"
    );
    let labels = "client_region=\"ap-south\",from_region=\"ap-south\",to_region=\"eu-west\"";
    assert_eq!(series(&metrics, "ledger_router_failovers_total", labels), 1.0, "{metrics}");

    router.shutdown().await;
    nodes.stop().await;
}
