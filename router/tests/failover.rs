//! Failover in front of three real region nodes, with the default health settings (a check a
//! second, out after 2 failures, back after 3 passes): a crashed node's region is out within 5 s
//! and its clients land on their next nearest region; restarted, it is taken back after three
//! passed checks and its clients land on it again.

mod common;

use common::{Client, Nodes, router_config, series};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

/// The bound on taking a failed region out, with the default settings.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_node_is_out_within_5_s_and_back_after_three_passed_checks() {
    let mut nodes = Nodes::start().await;
    let router = router::start(router_config(&nodes.urls)).await.unwrap();
    let client = Client::new(&router);
    client.wait_all_healthy(Duration::from_secs(10)).await;
    let auth = format!("Bearer {}", nodes.key);
    let eu = [("authorization", auth.as_str()), ("x-client-region", "eu-west")];
    let open = |id: &str| json!({"id": id, "currency": "USD", "allow_negative": true});
    let r = client.send(Method::POST, "/v1/accounts", &eu, Some(open("before"))).await;
    assert_eq!((r.status, r.region.as_deref()), (201, Some("eu-west")));

    let crashed_at = Instant::now();
    nodes.nodes[1].take().unwrap().crash();
    let out_after = client.wait_health("eu-west", false, FAILOVER_BOUND).await;
    println!("eu-west out {} ms after its node crashed", out_after.as_millis());
    // eu-west's clients now land on their next nearest region, us-east, POSTs included.
    let r = client.send(Method::POST, "/v1/accounts", &eu, Some(open("during"))).await;
    assert_eq!((r.status, r.region.as_deref()), (201, Some("us-east")), "{:?}", r.body);
    assert!(crashed_at.elapsed() < FAILOVER_BOUND + Duration::from_secs(1));
    let metrics = client.metrics().await;
    let labels = "client_region=\"eu-west\",from_region=\"eu-west\",to_region=\"us-east\"";
    assert!(series(&metrics, "ledger_router_failovers_total", labels) >= 1.0, "{metrics}");
    assert_eq!(series(&metrics, "ledger_router_health_transitions_total", "region=\"eu-west\",to=\"unhealthy\""), 1.0);
    assert_eq!(series(&metrics, "ledger_router_region_healthy", "region=\"eu-west\""), 0.0);

    // Back: three passed checks, one a second, so between 2 and about 4 s after the node answers.
    nodes.restart(1).await;
    let back_after = client.wait_health("eu-west", true, Duration::from_secs(10)).await;
    println!("eu-west back {} ms after its node restarted", back_after.as_millis());
    assert!(back_after >= Duration::from_millis(1_500), "taken back before three passes: {back_after:?}");
    let r = client.send(Method::POST, "/v1/accounts", &eu, Some(open("after"))).await;
    assert_eq!((r.status, r.region.as_deref()), (201, Some("eu-west")), "{:?}", r.body);
    let metrics = client.metrics().await;
    assert_eq!(
        series(&metrics, "ledger_router_health_transitions_total", "region=\"eu-west\",to=\"healthy\""),
        2.0,
        "{metrics}"
    );

    router.shutdown().await;
    nodes.stop().await;
}
