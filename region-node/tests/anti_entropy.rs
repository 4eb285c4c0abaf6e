//! Anti-entropy: `GET /v1/replication/events` (scope, paging, settling) and the repair task that
//! makes regions converge when Kafka replication never delivers.

mod common;

use common::cluster::Cluster;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// Replication paused for good (as if Kafka had lost every transaction or never made it
/// readable): a few hundred transfers made in one region reach the other two through
/// anti-entropy alone, with the same events, balances and vectors everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_converge_through_anti_entropy_when_kafka_replication_never_delivers() {
    let mut cluster = Cluster::start_with(true, |cfg| {
        cfg.anti_entropy_interval_ms = 200;
        cfg.anti_entropy_settle_ms = 300;
        // Several pages per pull, and full pages followed by a short one.
        cfg.anti_entropy_page_events = 64;
    })
    .await;
    cluster.pause().await;
    let origin = cluster.nodes[0].region.name().to_owned();
    let us = &cluster.nodes[0];
    us.open("ae-bank", "EUR", true).await;
    const ACCOUNTS: usize = 10;
    for i in 0..ACCOUNTS {
        us.open(&format!("ae-{i}"), "EUR", false).await;
        assert_eq!(us.transfer("ae-bank", &format!("ae-{i}"), 1_000_000).await.status, 201);
    }
    for i in 0..300 {
        let (from, to) = (format!("ae-{}", i % ACCOUNTS), format!("ae-{}", (i * 3 + 1) % ACCOUNTS));
        if from != to {
            let r = us.transfer(&from, &to, 1 + (i % 7) as i64).await;
            assert_eq!(r.status, 201, "{}", r.body);
        }
    }
    let originated: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_events WHERE origin_region = $1")
        .bind(&origin)
        .fetch_one(&us.db.pool)
        .await
        .unwrap();
    assert!(originated > 300, "{originated} events");

    let events = cluster.converged(Duration::from_secs(120)).await;
    assert_eq!(events.len() as i64, originated);
    let accounts = cluster.accounts(0).await;
    assert_eq!(accounts.len(), ACCOUNTS + 1);
    for i in 1..3 {
        assert_eq!(cluster.accounts(i).await, accounts, "region {i}: balances and vectors");
        common::assert_ledger_consistent(&cluster.nodes[i].db.pool).await;
    }

    // Each other region's cursor reached the origin's last event.
    let last: i64 = sqlx::query_scalar("SELECT max(seq) FROM ledger_events WHERE origin_region = $1")
        .bind(&origin)
        .fetch_one(&us.db.pool)
        .await
        .unwrap();
    for i in 1..3 {
        let cursor: i64 = sqlx::query_scalar("SELECT after_seq FROM replication_cursors WHERE origin = $1")
            .bind(&origin)
            .fetch_one(&cluster.nodes[i].db.pool)
            .await
            .unwrap();
        assert_eq!(cursor, last, "region {i}'s cursor on {origin}");
    }
    // Every event of both regions came through anti-entropy (the metrics are process-wide: one
    // series for both regions), none through Kafka.
    let metrics = us.http.get(format!("{}/metrics", us.base)).send().await.unwrap().text().await.unwrap();
    let repaired = metric(&metrics, &format!("ledger_anti_entropy_repaired_total{{origin=\"{origin}\"}}"));
    assert_eq!(repaired, 2.0 * originated as f64, "{metrics}");
    let cursor = metric(&metrics, &format!("ledger_anti_entropy_cursor{{origin=\"{origin}\"}}"));
    assert_eq!(cursor, last as f64);
    cluster.stop().await;
}

/// The value of one series in Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
        .parse()
        .unwrap()
}

/// Only the `replication` scope reaches the route, and it reaches nothing else; bad parameters
/// are problems; an event stored less than the settle time ago stops the page, even when a later
/// one is settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_needs_the_replication_scope_and_stops_at_the_first_unsettled_event() {
    let replication_key = format!("test-replication-{}", uuid::Uuid::new_v4());
    let key = replication_key.clone();
    let node = common::start(move |cfg| {
        cfg.replication_api_key = key;
        cfg.anti_entropy_settle_ms = 60_000;
    })
    .await;
    let region = node.region.name().to_owned();
    node.open("settle-a", "EUR", false).await;
    let path = format!("/v1/replication/events?origin={region}");
    let get = |key: Option<String>, path: String| {
        let node = &node;
        async move { node.send(reqwest::Method::GET, &path, key.as_deref(), None, &[]).await }
    };

    for key in [&node.read_key, &node.write_key] {
        let r = get(Some(key.clone()), path.clone()).await;
        assert_eq!((r.status, r.problem()), (403, "forbidden"), "a read or write key");
    }
    assert_eq!(get(None, path.clone()).await.status, 401);
    let r = get(Some(replication_key.clone()), "/v1/accounts/settle-a".into()).await;
    assert_eq!((r.status, r.problem()), (403, "forbidden"), "the replication key reaches nothing else");

    // Just opened: not settled.
    let r = get(Some(replication_key.clone()), path.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["events"], Value::Array(vec![]));
    assert_eq!(r.body["next_after"], 0);

    for bad in [
        "/v1/replication/events".to_owned(),
        "/v1/replication/events?origin=Not%20A%20Region".to_owned(),
        format!("{path}&limit=1001"),
        format!("{path}&limit=0"),
        format!("{path}&after=-1"),
        format!("{path}&cursor=3"),
    ] {
        let r = get(Some(replication_key.clone()), bad.clone()).await;
        assert_eq!((r.status, r.problem()), (400, "invalid-query"), "{bad}");
    }

    // Stored directly, an hour old, just now, an hour old: the page holds the first only, as the
    // second may belong to a transaction that commits after the third.
    let origin = "zz-settle";
    let mut ids = Vec::new();
    for age_s in [3_600.0, 0.0, 3_600.0] {
        let id = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO ledger_events (event_id, aggregate_id, event_type, payload, version_vector, origin_region, occurred_at, stored_at)
             VALUES ($1, 'x', 'account-opened', jsonb_build_object('event_id', $1::text), '{}', $2, now(), now() - make_interval(secs => $3))",
        )
        .bind(id)
        .bind(origin)
        .bind(age_s)
        .execute(&node.db.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let r = get(Some(replication_key.clone()), format!("/v1/replication/events?origin={origin}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", r.body);
    assert_eq!(events[0]["event"]["event_id"], ids[0].to_string());
    assert_eq!(r.body["next_after"], events[0]["seq"]);
    node.stop().await;
}

/// Pages smaller than the events: every event of the origin is returned exactly once, in `seq`
/// order, and the page after the last is empty with the same cursor. The largest page (1,000)
/// holds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_event_exactly_once() {
    let replication_key = format!("test-replication-{}", uuid::Uuid::new_v4());
    let key = replication_key.clone();
    let node = common::start(move |cfg| {
        cfg.replication_api_key = key;
        cfg.anti_entropy_settle_ms = 0;
    })
    .await;
    let region = node.region.name().to_owned();
    node.open("page-bank", "EUR", true).await;
    for i in 0..12 {
        node.open(&format!("page-{i}"), "EUR", false).await;
        assert_eq!(node.transfer("page-bank", &format!("page-{i}"), 10).await.status, 201);
    }
    let stored: BTreeSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT event_id FROM ledger_events")
        .fetch_all(&node.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(stored.len(), 25);

    let page = |after: i64, limit: usize| {
        let path = format!("/v1/replication/events?origin={region}&after={after}&limit={limit}");
        let key = replication_key.clone();
        let node = &node;
        async move {
            let r = node.send(reqwest::Method::GET, &path, Some(&key), None, &[]).await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.body
        }
    };
    let (mut after, mut seen, mut pages) = (0, Vec::new(), 0);
    loop {
        let body = page(after, 7).await;
        let events = body["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(body["next_after"], after, "an empty page keeps the cursor");
            break;
        }
        assert!(events.len() <= 7);
        for e in events {
            let seq = e["seq"].as_i64().unwrap();
            assert!(seq > after, "in seq order, after the cursor");
            after = seq;
            seen.push(e["event"]["event_id"].as_str().unwrap().to_owned());
        }
        assert_eq!(body["next_after"], after);
        pages += 1;
    }
    assert_eq!(pages, 4, "25 events in pages of 7");
    assert_eq!(seen.len(), stored.len(), "each event once");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), stored);

    let all = page(0, 1_000).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 25);
    node.stop().await;
}
