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

/// The longest time from commit start to marking among the outbox rows after `after_id`, once all
/// of them are published.
async fn publish_lag_s(pool: &sqlx::PgPool, after_id: i64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lag: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM max(published_at - created_at))::float8 FROM outbox
             WHERE id > $1 HAVING count(*) FILTER (WHERE published_at IS NULL) = 0 AND count(*) > 0",
        )
        .bind(after_id)
        .fetch_optional(pool)
        .await
        .unwrap()
        .flatten();
        if let Some(lag) = lag {
            return lag;
        }
        assert!(std::time::Instant::now() < deadline, "rows after {after_id} left unpublished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn last_outbox_id(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM outbox").fetch_one(pool).await.unwrap()
}

/// `publish_interval_ms` crossed both ways: a quiet publisher sends a commit's rows at once, the
/// rows committed right after a round wait for the interval, and under steady load rounds (each
/// marks its rows with one `published_at`) come no more often than the interval allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rounds_are_at_least_the_interval_apart_and_a_quiet_publisher_sends_at_once() {
    const INTERVAL_MS: u64 = 700;
    let node = common::start(|cfg| cfg.publish_interval_ms = INTERVAL_MS).await;
    node.open("world", "USD", true).await;
    node.open("alice", "USD", false).await;
    // The publisher leads only once Kafka's transaction coordinator has loaded (it may answer
    // "load in progress" for a second on a fresh broker): the quiet measurement starts after the
    // accounts' rows went out, so it times the publisher, not the broker's start.
    publish_lag_s(&node.db.pool, 0).await;
    // Quiet for longer than the interval: the next commit's row goes in a round of its own at once.
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 2)).await;
    let before = last_outbox_id(&node.db.pool).await;
    assert_eq!(node.transfer("world", "alice", 1).await.status, 201);
    let quiet = publish_lag_s(&node.db.pool, before).await;
    assert!(quiet < 0.35, "a quiet publisher waited {quiet} s");
    // Right after that round: the next row waits for the interval.
    let before = last_outbox_id(&node.db.pool).await;
    assert_eq!(node.transfer("world", "alice", 1).await.status, 201);
    let waited = publish_lag_s(&node.db.pool, before).await;
    assert!(waited > 0.3, "a row committed right after a round went after {waited} s, not the interval");

    // Steady load for about three intervals, from eight clients.
    let before = last_outbox_id(&node.db.pool).await;
    let node = std::sync::Arc::new(node);
    let started = std::time::Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let node = node.clone();
        clients.spawn(async move {
            let mut sent = 0;
            while started.elapsed() < Duration::from_millis(INTERVAL_MS * 3) {
                assert_eq!(node.transfer("world", "alice", 1).await.status, 201);
                sent += 1;
            }
            sent
        });
    }
    let mut sent = 0;
    while let Some(n) = clients.join_next().await {
        sent += n.unwrap();
    }
    let loaded_for = started.elapsed();
    publish_lag_s(&node.db.pool, before).await;
    let (rows, rounds): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT published_at) FROM outbox WHERE id > $1")
            .bind(before)
            .fetch_one(&node.db.pool)
            .await
            .unwrap();
    let allowed = loaded_for.as_millis() as i64 / INTERVAL_MS as i64 + 2;
    assert!(sent > 50 && rows > 20, "a steady load: {sent} transfers in {rows} outbox rows");
    assert!(rounds <= allowed, "{rounds} rounds in {loaded_for:?} at one per {INTERVAL_MS} ms (at most {allowed})");
    assert!(rounds >= 2, "the load spanned several rounds: {rounds}");
}

/// Published outbox rows are deleted once `outbox_retention_ms` old, `outbox_prune_rows_max` (5) at
/// a time, far fewer than the load leaves: 1,000 transfers later the outbox is empty, and every
/// event is still in `ledger_events` and every record in Kafka, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_outbox_rows_are_pruned_after_the_retention_and_nothing_else_is() {
    const TRANSFERS: usize = 1_000;
    let node = common::start(|cfg| {
        cfg.outbox_retention_ms = 500;
        cfg.outbox_prune_rows_max = 5;
        cfg.publish_poll_ms = 50;
    })
    .await;
    node.open("world", "USD", true).await;
    let accounts: Vec<String> = (0..20).map(|i| format!("pr{i}")).collect();
    for id in &accounts {
        node.open(id, "USD", false).await;
    }
    let mut most_rows = 0i64;
    for chunk in 0..TRANSFERS / 50 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let body = serde_json::json!({"from": "world", "to": accounts[(chunk + i) % accounts.len()], "amount": 1});
            let (http, key, url) = (node.http.clone(), node.write_key.clone(), format!("{}/v1/transfers", node.base));
            tasks.push(tokio::spawn(async move { common::post_decided(&http, &url, &key, &body).await }));
        }
        for task in tasks {
            let (status, body) = task.await.unwrap();
            assert_eq!(status, 201, "{body}");
        }
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&node.db.pool).await.unwrap();
        most_rows = most_rows.max(rows);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&node.db.pool).await.unwrap();
        if rows == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rows} outbox rows left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most_rows > 5, "the load left more rows than one statement deletes ({most_rows})");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_events").fetch_one(&node.db.pool).await.unwrap();
    assert_eq!(events as usize, 1 + accounts.len() + TRANSFERS);
    let (bootstrap, topic) = (node.region.kafka_bootstrap().to_owned(), node.topic());
    let records = tokio::task::spawn_blocking(move || {
        testkit::kafka_util::read_all(&bootstrap, &topic, "read_committed", Duration::from_secs(30))
    })
    .await
    .unwrap();
    // An opening is one record; a transfer one per account it touches.
    assert_eq!(records.len(), 1 + accounts.len() + 2 * TRANSFERS);
    let ids: std::collections::HashSet<(String, String)> = records
        .iter()
        .map(|r| {
            let id = r.headers.iter().find(|(k, _)| k == "event-id").map(|(_, v)| v.clone()).unwrap();
            (id, r.key.clone().unwrap())
        })
        .collect();
    assert_eq!(ids.len(), records.len(), "each record once");
    node.stop().await;
}

/// The prune statement deletes published rows only, oldest first, at most `rows_max` at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prune_statement_never_deletes_an_unpublished_row() {
    let node = common::start(|cfg| cfg.run_publisher = false).await;
    node.open("world", "USD", true).await;
    node.open("alice", "USD", false).await;
    for _ in 0..30 {
        assert_eq!(node.transfer("world", "alice", 1).await.status, 201);
    }
    let pool = &node.db.pool;
    let count = || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(pool).await.unwrap() };
    let rows = count().await;
    assert!(rows >= 30, "{rows} rows");
    assert_eq!(region_node::outbox_prune::prune(pool, i64::MAX, 1_000).await.unwrap(), 0, "none published");
    // The older half published.
    let half: i64 = sqlx::query_scalar(
        "WITH h AS (SELECT id FROM outbox ORDER BY id LIMIT $1),
              u AS (UPDATE outbox SET published_at = now() WHERE id IN (SELECT id FROM h) RETURNING id)
         SELECT max(id) FROM u",
    )
    .bind(rows / 2)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(region_node::outbox_prune::prune(pool, half, 4).await.unwrap(), 4, "at most rows_max");
    let mut deleted = 4;
    loop {
        let n = region_node::outbox_prune::prune(pool, i64::MAX, 4).await.unwrap();
        deleted += n;
        if n < 4 {
            break;
        }
    }
    assert_eq!(deleted as i64, rows / 2);
    assert_eq!(count().await, rows - rows / 2);
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(pool).await.unwrap();
    assert_eq!(unpublished, rows - rows / 2, "every unpublished row kept");
    node.stop().await;
}
