//! The committer's write statement runs on a generic plan, made when a connection first runs it,
//! from the statistics of that moment. A node started on an empty region must not keep the plan
//! it made then (sequential scans of a nearly empty `accounts`) once the table has grown: its
//! connections are renewed after `commit_connection_lifetime_ms`, and each plans again.

mod common;

use std::time::Duration;

async fn account_seq_scans(pool: &sqlx::PgPool) -> i64 {
    // Backends publish their table counters at most once a second, when idle.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'accounts'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_on_an_empty_region_stops_scanning_accounts_once_it_has_grown() {
    let node = common::start(|cfg| cfg.commit_connection_lifetime_ms = 300).await;
    // The first statements, on every committer connection, are planned against an empty table.
    node.open("world", "USD", true).await;
    node.open("alice", "USD", false).await;
    for _ in 0..4 {
        assert_eq!(node.transfer("world", "alice", 1).await.status, 201);
    }
    // The region grows (bulk-loaded: how it grew does not matter to the planner) and is analyzed.
    sqlx::query(
        "INSERT INTO accounts (id, currency, allow_negative) SELECT 'bulk-' || g, 'USD', false
         FROM generate_series(1, 20000) g",
    )
    .execute(&node.db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE accounts").execute(&node.db.pool).await.unwrap();
    // Past the lifetime, a batch on each connection hands it back for renewal.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..4 {
        assert_eq!(node.transfer("world", "alice", 1).await.status, 201);
    }

    let before = account_seq_scans(&node.db.pool).await;
    for _ in 0..20 {
        assert_eq!(node.transfer("world", "alice", 1).await.status, 201);
    }
    let after = account_seq_scans(&node.db.pool).await;
    assert_eq!(after - before, 0, "20 transfers on a 20,000-account table scanned it {} times", after - before);
    assert_eq!(node.balance("alice").await, 28);
    node.stop().await;
}
