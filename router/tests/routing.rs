//! Routing by client region in front of three real region nodes: each client region lands on its
//! own region, every response names its serving region, and the headers the ledger depends on
//! (Authorization, Idempotency-Key, traceparent) reach the node: a retried transfer replays
//! through the router.

mod common;

use common::{Client, NAMES, Nodes, router_config, series};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_client_region_lands_on_its_own_region_and_idempotency_keys_replay_through_the_router() {
    let nodes = Nodes::start().await;
    let router = router::start(router_config(&nodes.urls)).await.unwrap();
    let client = Client::new(&router);
    client.wait_all_healthy(Duration::from_secs(10)).await;
    let auth = format!("Bearer {}", nodes.key);

    for (i, region) in NAMES.iter().enumerate() {
        let here = [("authorization", auth.as_str()), ("x-client-region", region)];
        for (id, negative) in [("world", true), ("alice", false)] {
            let body = json!({"id": id, "currency": "USD", "allow_negative": negative});
            let r = client.send(Method::POST, "/v1/accounts", &here, Some(body)).await;
            assert_eq!((r.status, r.region.as_deref()), (201, Some(*region)), "{:?}", r.body);
        }
        // A transfer with a key and a trace, then the same again: the node sees both headers.
        let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        let key = format!("pay-{region}");
        let with_key = [here[0], here[1], ("idempotency-key", key.as_str()), ("traceparent", traceparent.as_str())];
        let body = json!({"from": "world", "to": "alice", "amount": 2500});
        let first = client.send(Method::POST, "/v1/transfers", &with_key, Some(body.clone())).await;
        assert_eq!((first.status, first.region.as_deref()), (201, Some(*region)), "{:?}", first.body);
        let again = client.send(Method::POST, "/v1/transfers", &with_key, Some(body)).await;
        assert_eq!(again.region.as_deref(), Some(*region));
        assert!(first.body["id"].is_string(), "{:?}", first.body);
        assert_eq!(again.body["id"], first.body["id"], "replayed, not a second transfer: {:?}", again.body);
        assert_eq!(
            again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()),
            Some("true"),
            "response headers pass through"
        );
        let balance = client.send(Method::GET, "/v1/accounts/alice", &here, None).await;
        assert_eq!((balance.body["balance"].as_i64(), balance.region.as_deref()), (Some(2500), Some(*region)));
        // The node continued the client's trace: its stored traceparent carries the trace id.
        let stored: Vec<Option<String>> =
            sqlx::query_scalar("SELECT traceparent FROM ledger_events").fetch_all(&nodes.dbs[i].pool).await.unwrap();
        assert!(stored.iter().flatten().any(|t| t.contains(&trace_id)), "trace {trace_id} in {stored:?}");
        // Nothing reached the other regions (no replication runs in this test).
        for (j, other) in nodes.dbs.iter().enumerate().filter(|(j, _)| *j > i) {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_events").fetch_one(&other.pool).await.unwrap();
            assert_eq!(n, 0, "region {} got a request meant for {region}", NAMES[j]);
        }
    }

    // Without the header a loopback client is in the default client region (the first region).
    let r = client.send(Method::GET, "/v1/accounts/alice", &[("authorization", auth.as_str())], None).await;
    assert_eq!((r.status, r.region.as_deref()), (200, Some("us-east")));
    // Without a key the node refuses: the router adds no credentials of its own.
    let r = client.send(Method::GET, "/v1/accounts/alice", &[("x-client-region", "eu-west")], None).await;
    assert_eq!((r.status, r.region.as_deref()), (401, Some("eu-west")));

    let r = client.send(Method::GET, "/v1/accounts/alice", &[("x-client-region", "mars")], None).await;
    assert_eq!((r.status, r.problem(), r.region.as_deref()), (400, "unknown-client-region", None), "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let r = client.send(Method::GET, "/_router/nope", &[], None).await;
    assert_eq!((r.status, r.problem()), (404, "not-found"), "the router's paths never reach a node");

    let metrics = client.metrics().await;
    for region in NAMES {
        let labels = format!("client_region=\"{region}\",serving_region=\"{region}\",status=\"201\"");
        assert_eq!(series(&metrics, "ledger_router_requests_total", &labels), 4.0, "{metrics}");
        assert_eq!(series(&metrics, "ledger_router_region_healthy", &format!("region=\"{region}\"")), 1.0);
    }
    assert!(!metrics.contains("ledger_router_failovers_total"), "every request went to its nearest region");
    assert!(metrics.contains("client_region=\"none\",serving_region=\"none\",status=\"400\""), "{metrics}");
    let regions = client.regions().await;
    assert_eq!(regions["eu-west"]["state"], "healthy");
    assert_eq!(regions["eu-west"]["url"], nodes.urls[1].as_str());

    router.shutdown().await;
    nodes.stop().await;
}
