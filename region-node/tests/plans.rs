//! The committer's write statement runs on a generic plan, made when a connection first runs it,
//! from the statistics of that moment. Made on a nearly empty `accounts`, it scanned the whole
//! table for every batch, and kept doing so as the table grew. Sequential scans are off on the
//! committer's connections: this test fails without that setting (10 scans in 20 transfers).

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
async fn plans_made_on_an_empty_region_never_scan_accounts_once_it_has_grown() {
    let node = common::start(|_| {}).await;
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

    let before = account_seq_scans(&node.db.pool).await;
    for _ in 0..20 {
        assert_eq!(node.transfer("world", "alice", 1).await.status, 201);
    }
    let after = account_seq_scans(&node.db.pool).await;
    assert_eq!(after - before, 0, "20 transfers on a 20,000-account table scanned it {} times", after - before);
    assert_eq!(node.balance("alice").await, 24);
    node.stop().await;
}
