//! Active-active replication across three regions, each with its own PostgreSQL and Kafka:
//! convergence, the partitioned overdraft, a retried idempotency key in a second region.

mod common;

use common::cluster::Cluster;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_in_all_regions_converge() {
    let cluster = Cluster::start().await;
    let [us, eu, ap] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    us.open("world", "USD", true).await;
    for (i, node) in [us, eu, ap, us, eu, ap].iter().enumerate() {
        node.open(&format!("acc{i}"), "USD", false).await;
    }
    cluster.converged(Duration::from_secs(120)).await;
    // Accounts opened in one region appear in all.
    for i in 0..3 {
        assert_eq!(cluster.accounts(i).await.len(), 7, "region {i}");
    }
    for i in 0..6 {
        assert_eq!(us.transfer("world", &format!("acc{i}"), 1_000).await.status, 201);
    }
    cluster.converged(Duration::from_secs(120)).await;
    // Every region moves money on the same accounts at once.
    let mut tasks = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        let (http, base, key) = (node.http.clone(), node.base.clone(), node.write_key.clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            for k in 0..15 {
                let body = json!({"from": format!("acc{}", (n + k) % 6), "to": format!("acc{}", (n + 2 * k + 1) % 6), "amount": 1 + (k % 7)});
                if body["from"] == body["to"] {
                    continue;
                }
                let r = http.post(format!("{base}/v1/transfers")).bearer_auth(&key).json(&body).send().await.unwrap();
                if r.status() == 201 {
                    accepted += 1;
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    assert!(accepted > 30, "transfers were accepted in every region: {accepted}");
    let events = cluster.converged(Duration::from_secs(120)).await;
    assert_eq!(events.len(), 7 + 6 + accepted);
    let reference = cluster.accounts(0).await;
    for i in 1..3 {
        assert_eq!(cluster.accounts(i).await, reference, "region {i} has the same balances and vectors");
    }
    let minted: i64 = reference.iter().filter(|(id, _, _)| id == "world").map(|(_, b, _)| -b).sum();
    assert_eq!(minted, 6_000);
    assert_eq!(reference.iter().map(|(_, b, _)| b).sum::<i64>(), 0, "money is conserved");
    for node in &cluster.nodes {
        common::assert_ledger_consistent(&node.db.pool).await;
    }
    // Replication lag is measured per pair, in events and (through heartbeats) in seconds.
    let metrics_addr = cluster.replicators[0].as_ref().unwrap().metrics_addr.unwrap();
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    for source in ["eu-west", "ap-south"] {
        for gauge in ["replication_lag_events", "replication_lag_seconds"] {
            let line = format!("{gauge}{{source=\"{source}\",target=\"us-east\"}}");
            assert!(metrics.contains(&line), "{line} missing from {metrics}");
        }
    }
    // All regions report the same conflicts (concurrent postings on shared accounts).
    let ids = |c: Vec<Value>| {
        c.iter().map(|c| (c["conflict_id"].to_string(), c["kind"].to_string())).collect::<BTreeSet<_>>()
    };
    let first = ids(cluster.conflicts(0).await);
    for i in 1..3 {
        assert_eq!(ids(cluster.conflicts(i).await), first);
    }
    cluster.stop().await;
}

async fn setup_funded(cluster: &Cluster) {
    let us = &cluster.nodes[0];
    us.open("world", "USD", true).await;
    for id in ["acc", "shop-us", "shop-eu"] {
        us.open(id, "USD", false).await;
    }
    assert_eq!(us.transfer("world", "acc", 150).await.status, 201);
    cluster.converged(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_debits_end_at_minus_50_with_one_overdraft_conflict_everywhere() {
    let mut cluster = Cluster::start().await;
    setup_funded(&cluster).await;
    cluster.pause().await;
    let us = cluster.nodes[0].transfer("acc", "shop-us", 100).await;
    let eu = cluster.nodes[1].transfer("acc", "shop-eu", 100).await;
    assert_eq!((us.status, eu.status), (201, 201), "each region accepts on its own: {} {}", us.body, eu.body);
    cluster.resume().await;
    cluster.converged(Duration::from_secs(120)).await;
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        assert_eq!(cluster.nodes[i].balance("acc").await, -50, "region {i}");
        let conflicts = cluster.conflicts(i).await;
        assert_eq!(conflicts.len(), 1, "region {i}: {conflicts:?}");
        assert_eq!(conflicts[0]["kind"], "overdraft");
        assert_eq!(conflicts[0]["account"], "acc");
        ids.insert(conflicts[0]["conflict_id"].to_string());
    }
    assert_eq!(ids.len(), 1, "the same conflict id in every region");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_retried_in_a_second_region_is_one_duplicate_intent_everywhere() {
    let mut cluster = Cluster::start().await;
    setup_funded(&cluster).await;
    cluster.pause().await;
    let body = json!({"from": "acc", "to": "shop-us", "amount": 10});
    let key = [("Idempotency-Key", "order-7")];
    for i in [0, 1] {
        let node = &cluster.nodes[i];
        let r =
            node.send(reqwest::Method::POST, "/v1/transfers", Some(&node.write_key), Some(body.clone()), &key).await;
        assert_eq!(r.status, 201, "region {i}: {}", r.body);
    }
    cluster.resume().await;
    cluster.converged(Duration::from_secs(120)).await;
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        let conflicts = cluster.conflicts(i).await;
        assert_eq!(conflicts.len(), 1, "region {i}: {conflicts:?}");
        assert_eq!(conflicts[0]["kind"], "duplicate-intent");
        ids.insert(conflicts[0]["conflict_id"].to_string());
        assert_eq!(cluster.nodes[i].balance("acc").await, 130, "both executions applied, flagged for finance");
    }
    assert_eq!(ids.len(), 1);
    // After replication the key replays in the third region instead of running a third time.
    let ap = &cluster.nodes[2];
    let r = ap.send(reqwest::Method::POST, "/v1/transfers", Some(&ap.write_key), Some(body), &key).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.headers["idempotent-replayed"], "true");
    cluster.stop().await;
}
