//! A region's Kafka broker stopped and restarted while the other regions keep writing: full
//! convergence afterwards. Its own test binary, because it kills a broker the harness shares.

mod common;

use common::cluster::Cluster;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_in_one_region_still_converges() {
    let cluster = Cluster::start().await;
    let [us, eu, ap] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    us.open("world", "USD", true).await;
    for (i, node) in [us, eu, ap].iter().enumerate() {
        node.open(&format!("acc{i}"), "USD", false).await;
    }
    cluster.converged(Duration::from_secs(120)).await;

    // ap-south's broker goes down hard; every region keeps accepting writes (ap-south's too: its
    // outbox holds them until the broker is back).
    cluster.regions[2].kill_kafka();
    for round in 0..10 {
        for (i, node) in [us, eu, ap].iter().enumerate() {
            let from = if i == 0 { "world".to_owned() } else { format!("acc{i}") };
            let to = format!("acc{}", (i + 1 + round) % 3);
            if from != to {
                let r = node.transfer(&from, &to, 1).await;
                assert!(r.status == 201 || r.status == 409, "{}", r.body);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.regions[2].start_kafka();

    let events = cluster.converged(Duration::from_secs(180)).await;
    assert!(events.len() >= 4 + 10, "{} events", events.len());
    let reference = cluster.accounts(0).await;
    for i in 1..3 {
        assert_eq!(cluster.accounts(i).await, reference, "region {i} converged");
    }
    for node in &cluster.nodes {
        common::assert_ledger_consistent(&node.db.pool).await;
    }
    cluster.stop().await;
}
