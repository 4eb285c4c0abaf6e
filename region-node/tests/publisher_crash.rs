//! A crash injected between the Kafka commit and the marking of the outbox rows: after its
//! supervisor restarts the publisher the rows are published again, and the read models drop the copies, changing nothing twice. Its own
//! test binary, because failpoints are process-wide.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republished_events_change_no_read_model_twice() {
    let scenario = fail::FailScenario::setup();
    // Fires once: the first publish round commits to Kafka, then "crashes" before marking.
    fail::cfg("outbox-after-kafka-commit", "1*return").unwrap();
    let first = common::start(|_| {}).await;
    first.open("world", "USD", true).await;
    first.open("alice", "USD", false).await;
    for _ in 0..3 {
        assert_eq!(first.transfer("world", "alice", 10).await.status, 201);
    }
    // The publisher "crashed" after its first Kafka commit, leaving those rows unmarked; its
    // supervisor restarts it, and the restarted publisher publishes them again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let unmarked: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&first.db.pool)
            .await
            .unwrap();
        if unmarked == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the restarted publisher did not publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready: serde_json::Value =
        first.http.get(format!("{}/readyz", first.base)).send().await.unwrap().json().await.unwrap();
    let publisher = ready["tasks"].as_array().unwrap().iter().find(|t| t["task"] == "publisher").unwrap().clone();
    assert_eq!(publisher["restarts"], 1, "{ready}");
    assert!(publisher["last_error"].as_str().unwrap().contains("failpoint"), "{ready}");
    // Kafka now holds more records than there are outbox rows: the copies are real...
    let (bootstrap, topic) = (first.region.kafka_bootstrap().to_owned(), first.topic());
    let records = tokio::task::spawn_blocking(move || {
        testkit::kafka_util::read_all(&bootstrap, &topic, "read_committed", Duration::from_secs(30))
    })
    .await
    .unwrap();
    let outbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox_records").fetch_one(&first.db.pool).await.unwrap();
    assert!(
        records.len() as i64 > outbox,
        "{} records for {outbox} outbox records: duplicates were published",
        records.len()
    );

    // ...and the read models applied each (event, account) once.
    let views = first.wait_read_models(Duration::from_secs(30)).await;
    for (id, view, authoritative) in &views {
        assert_eq!(view, authoritative, "view of {id}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (applied, entries): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM rm_entries), (SELECT count(*) FROM entries)")
            .fetch_one(&first.db.pool)
            .await
            .unwrap();
    assert_eq!(applied, entries);
    let alice: i64 = sqlx::query_scalar("SELECT balance FROM rm_balances WHERE account_id = 'alice'")
        .fetch_one(&first.db.pool)
        .await
        .unwrap();
    assert_eq!(alice, 30);
    let duplicates = region_node::telemetry::prometheus().render();
    let dropped = duplicates
        .lines()
        .find(|l| l.starts_with("ledger_consumer_duplicates_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(dropped >= 1.0, "duplicates were dropped, not applied: {dropped}");
    scenario.teardown();
}
