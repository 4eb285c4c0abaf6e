//! Anti-entropy: `GET /v1/replication/events` (scope, paging, settling).

mod common;

use serde_json::Value;
use std::collections::BTreeSet;

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
