//! Two publishers on one regional database at once: one publishes, the other stands by, and every
//! outbox row reaches Kafka once. Apart from the failpoint tests, whose failpoint is process-wide.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_at_once_publish_each_row_once() {
    let a = common::start(|_| {}).await;
    let db_url = a.db.url.clone();
    let b = common::start(|cfg| {
        cfg.database_url = db_url.clone();
        cfg.run_consumer = false;
    })
    .await;
    // Each node has its own topic prefix; whichever publisher leads, every row lands in exactly
    // one of the two topics, once.
    a.open("world", "USD", true).await;
    a.open("alice", "USD", false).await;
    for i in 0..20 {
        let via = if i % 2 == 0 { &a } else { &b };
        assert_eq!(via.transfer("world", "alice", 1).await.status, 201);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let unmarked: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&a.db.pool)
            .await
            .unwrap();
        if unmarked == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rows left unpublished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_records").fetch_one(&a.db.pool).await.unwrap();
    let mut total = 0;
    for node in [&a, &b] {
        let (bootstrap, topic) = (node.region.kafka_bootstrap().to_owned(), node.topic());
        total += tokio::task::spawn_blocking(move || {
            testkit::kafka_util::read_all(&bootstrap, &topic, "read_committed", Duration::from_secs(30)).len()
        })
        .await
        .unwrap();
    }
    assert_eq!(total as i64, outbox, "one publisher published; the other stood by");
}
