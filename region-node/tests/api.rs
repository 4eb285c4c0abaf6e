//! The HTTP API contract against real PostgreSQL and Kafka: accounts, transfers, idempotency,
//! every bad input (status, problem type, and proof that nothing was written), authentication,
//! health, and the overdraft race.

mod common;

use common::{TestNode, assert_ledger_consistent, start};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn funded(node: &TestNode, id: &str, amount: i64) {
    node.open(id, "USD", false).await;
    let r = node.transfer("world", id, amount).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

async fn with_world() -> TestNode {
    let node = start(|_| {}).await;
    node.open("world", "USD", true).await;
    node
}

/// A second node of `node`'s region on its database (writes only), and its base URL.
async fn second_node(node: &TestNode) -> (region_node::Node, String) {
    let mut cfg = node.cfg.clone();
    cfg.http_addr = "127.0.0.1:0".into();
    cfg.run_consumer = false;
    cfg.run_publisher = false;
    let second = region_node::start(cfg).await.expect("second node starts");
    let base = format!("http://{}", second.addr());
    (second, base)
}

/// Posts a transfer to the node at `base` (any node of the test's region); its status and body.
async fn transfer_at(http: &reqwest::Client, key: &str, base: &str, body: &Value) -> (u16, Value) {
    common::post_decided(http, &format!("{base}/v1/transfers"), key, body).await
}

/// Sends every `(base URL, transfer body)` at once; returns how many were accepted, every other
/// one having been refused for insufficient funds.
async fn race(node: &TestNode, transfers: Vec<(String, Value)>) -> usize {
    let mut tasks = Vec::new();
    for (base, body) in transfers {
        let (http, key) = (node.http.clone(), node.write_key.clone());
        tasks.push(tokio::spawn(async move { transfer_at(&http, &key, &base, &body).await }));
    }
    let mut accepted = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => accepted += 1,
            409 => assert_eq!(body["type"], format!("{}insufficient-funds", region_node::problem::TYPE_BASE)),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    accepted
}

#[tokio::test]
async fn accounts_open_idempotently_and_refuse_a_different_body() {
    let node = start(|_| {}).await;
    let body = json!({"id": "acc1", "currency": "USD", "allow_negative": false, "metadata": {"owner": "ann"}});
    let first = node.post("/v1/accounts", body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.headers["location"], "/v1/accounts/acc1");
    let again = node.post("/v1/accounts", body).await;
    assert_eq!(again.status, 200, "same id, same body: idempotent");
    assert_eq!(again.body["id"], "acc1");
    let before = node.fingerprint().await;
    let other = node.post("/v1/accounts", json!({"id": "acc1", "currency": "EUR"})).await;
    assert_eq!((other.status, other.problem()), (409, "account-exists"));
    assert_eq!(node.fingerprint().await, before);

    let got = node.get("/v1/accounts/acc1").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["currency"], "USD");
    assert_eq!(got.body["balance"], 0);
    assert_eq!(got.body["allow_negative"], false);
    assert_eq!(got.body["metadata"], json!({"owner": "ann"}));
    assert_eq!(got.body["version_vector"], json!({"us-east": 1}));
    assert!(got.body["updated_at"].as_str().is_some());
    node.stop().await;
}

#[tokio::test]
async fn transfers_move_money_with_read_your_writes_and_history() {
    let node = with_world().await;
    funded(&node, "alice", 500).await;
    node.open("bob", "USD", false).await;
    let r = node.transfer("alice", "bob", 120).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["origin_region"], "us-east");
    assert_eq!(r.body["version_vectors"]["alice"], json!({"us-east": 3}));
    assert_eq!(r.body["version_vectors"]["bob"], json!({"us-east": 2}));
    // Read-your-writes: the authoritative state reflects the acknowledged transfer at once.
    assert_eq!(node.balance("alice").await, 380);
    assert_eq!(node.balance("bob").await, 120);
    assert_eq!(node.balance("world").await, -500);

    let id = r.body["id"].as_str().unwrap();
    let got = node.get(&format!("/v1/transfers/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, r.body, "GET returns what POST answered");

    // `currency` may be given explicitly when it matches.
    let r = node.post("/v1/transfers", json!({"from": "bob", "to": "alice", "amount": 20, "currency": "USD"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    for amount in [1, 2, 3] {
        assert_eq!(node.transfer("alice", "bob", amount).await.status, 201);
    }
    // alice: +500, -120, +20, -1, -2, -3
    let page = node.get("/v1/accounts/alice/entries?limit=4").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let entries = page.body["entries"].as_array().unwrap();
    assert_eq!(entries.iter().map(|e| e["amount"].as_i64().unwrap()).collect::<Vec<_>>(), [500, -120, 20, -1]);
    assert_eq!(entries.iter().map(|e| e["balance_after"].as_i64().unwrap()).collect::<Vec<_>>(), [500, 380, 400, 399]);
    assert_eq!(page.body["next_after"], 4);
    let rest = node.get("/v1/accounts/alice/entries?after=4&limit=4").await;
    let rest_entries = rest.body["entries"].as_array().unwrap();
    assert_eq!(rest_entries.iter().map(|e| e["balance_after"].as_i64().unwrap()).collect::<Vec<_>>(), [397, 394]);
    assert_eq!(rest.body["next_after"], Value::Null);
    assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_the_original_and_refuse_another_body() {
    let node = with_world().await;
    funded(&node, "alice", 100).await;
    node.open("bob", "USD", false).await;
    let body = json!({"from": "alice", "to": "bob", "amount": 30, "metadata": {"a": 1, "b": [1, 2]}});
    let key = [("Idempotency-Key", "pay-42")];
    let first = node.send(Method::POST, "/v1/transfers", Some(&node.write_key), Some(body), &key).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());

    // The same body with other key order is the same request.
    let reordered = json!({"metadata": {"b": [1, 2], "a": 1}, "amount": 30, "to": "bob", "from": "alice"});
    let replay = node.send(Method::POST, "/v1/transfers", Some(&node.write_key), Some(reordered), &key).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body, first.body);
    assert_eq!(node.balance("alice").await, 70, "applied once");

    let before = node.fingerprint().await;
    let other = json!({"from": "alice", "to": "bob", "amount": 31});
    let reused = node.send(Method::POST, "/v1/transfers", Some(&node.write_key), Some(other), &key).await;
    assert_eq!((reused.status, reused.problem()), (409, "idempotency-key-reused"));
    assert_eq!(node.fingerprint().await, before, "nothing written");

    // Concurrent retries of one key: exactly one transfer.
    let retries: Vec<_> = (0..20)
        .map(|_| {
            let (http, base, key) = (node.http.clone(), node.base.clone(), node.write_key.clone());
            tokio::spawn(async move {
                let body = json!({"from": "alice", "to": "bob", "amount": 5});
                let r = http
                    .post(format!("{base}/v1/transfers"))
                    .bearer_auth(key)
                    .header("Idempotency-Key", "pay-43")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for retry in retries {
        let (status, body) = retry.await.unwrap();
        assert_eq!(status, 201, "{body}");
        ids.insert(body["id"].to_string());
    }
    assert_eq!(ids.len(), 1, "one transfer id for one key");
    assert_eq!(node.balance("alice").await, 65);
    node.stop().await;
}

#[tokio::test]
async fn every_bad_input_gets_its_problem_type_and_writes_nothing() {
    let node = with_world().await;
    funded(&node, "alice", 100).await;
    node.open("bob", "USD", false).await;
    node.open("eve-eur", "EUR", false).await;
    let long_id = "a".repeat(65);
    let big_metadata = "x".repeat(70 * 1024);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("overdraft", json!({"from": "alice", "to": "bob", "amount": 101}), 409, "insufficient-funds"),
        ("unknown source", json!({"from": "nobody", "to": "bob", "amount": 1}), 404, "account-not-found"),
        ("unknown destination", json!({"from": "alice", "to": "nobody", "amount": 1}), 404, "account-not-found"),
        ("currency mismatch", json!({"from": "alice", "to": "eve-eur", "amount": 1}), 422, "currency-mismatch"),
        (
            "wrong currency",
            json!({"from": "alice", "to": "bob", "amount": 1, "currency": "EUR"}),
            422,
            "currency-mismatch",
        ),
        (
            "malformed currency",
            json!({"from": "alice", "to": "bob", "amount": 1, "currency": "usd"}),
            400,
            "invalid-currency",
        ),
        ("same account", json!({"from": "alice", "to": "alice", "amount": 1}), 422, "same-account"),
        ("zero", json!({"from": "alice", "to": "bob", "amount": 0}), 400, "invalid-amount"),
        ("negative", json!({"from": "alice", "to": "bob", "amount": -5}), 400, "invalid-amount"),
        ("fractional", json!({"from": "alice", "to": "bob", "amount": 1.5}), 400, "invalid-amount"),
        ("string amount", json!({"from": "alice", "to": "bob", "amount": "1"}), 400, "invalid-amount"),
        (
            "overflowing",
            json!({"from": "alice", "to": "bob", "amount": 9223372036854775808u64}),
            400,
            "amount-out-of-range",
        ),
        ("unknown field", json!({"from": "alice", "to": "bob", "amount": 1, "memo": "x"}), 400, "unknown-field"),
        ("missing field", json!({"from": "alice", "amount": 1}), 400, "missing-field"),
        ("bad id charset", json!({"from": "al ice", "to": "bob", "amount": 1}), 400, "invalid-account-id"),
        ("bad id length", json!({"from": long_id, "to": "bob", "amount": 1}), 400, "invalid-account-id"),
        (
            "too large",
            json!({"from": "alice", "to": "bob", "amount": 1, "metadata": {"x": big_metadata}}),
            413,
            "payload-too-large",
        ),
    ];
    let before = node.fingerprint().await;
    for (name, body, status, slug) in cases {
        let r = node.post("/v1/transfers", body).await;
        assert_eq!((r.status, r.problem()), (status, slug), "{name}: {}", r.body);
        assert_eq!(node.fingerprint().await, before, "{name} wrote something");
    }

    let raw = |body: &'static str, content_type: &'static str| {
        node.http
            .post(format!("{}/v1/transfers", node.base))
            .bearer_auth(&node.write_key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let r = raw("{\"from\": \"alice\",", "application/json").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["type"], format!("{}invalid-json", region_node::problem::TYPE_BASE));
    let r = raw("{}", "text/plain").await.unwrap();
    assert_eq!(r.status(), 415);
    let key_cases = [("", "invalid-idempotency-key"), ("has space", "invalid-idempotency-key")];
    for (key, slug) in key_cases {
        let body = json!({"from": "alice", "to": "bob", "amount": 1});
        let r = node
            .send(Method::POST, "/v1/transfers", Some(&node.write_key), Some(body), &[("Idempotency-Key", key)])
            .await;
        assert_eq!((r.status, r.problem()), (400, slug), "key {key:?}");
    }
    let account_cases: Vec<(Value, u16, &str)> = vec![
        (json!({"id": "bad id", "currency": "USD"}), 400, "invalid-account-id"),
        (json!({"id": "ok", "currency": "dollars"}), 400, "invalid-currency"),
        (json!({"id": "ok", "currency": "USD", "colour": "red"}), 400, "unknown-field"),
        (json!({"id": "ok", "currency": "USD", "allow_negative": "yes"}), 400, "invalid-field"),
    ];
    for (body, status, slug) in account_cases {
        let r = node.post("/v1/accounts", body.clone()).await;
        assert_eq!((r.status, r.problem()), (status, slug), "{body}");
    }
    assert_eq!(node.fingerprint().await, before, "nothing written by any bad input");

    let r = node.get("/v1/accounts/nobody").await;
    assert_eq!((r.status, r.problem()), (404, "account-not-found"));
    let r = node.get("/v1/accounts/alice/entries?limit=0").await;
    assert_eq!((r.status, r.problem()), (400, "invalid-query"));
    let r = node.get("/v1/accounts/alice/entries?page=2").await;
    assert_eq!((r.status, r.problem()), (400, "invalid-query"));
    let r = node.get(&format!("/v1/transfers/{}", uuid::Uuid::new_v4())).await;
    assert_eq!((r.status, r.problem()), (404, "transfer-not-found"));
    let r = node.get("/v1/nothing-here").await;
    assert_eq!((r.status, r.problem()), (404, "not-found"));
    node.stop().await;
}

/// Found probing the contract (issue 13): a path segment that percent-decodes to invalid UTF-8
/// was refused by axum's `Path` extractor as `400 text/plain`, not a problem.
#[tokio::test]
async fn a_path_that_is_not_utf8_gets_a_problem_not_plain_text() {
    let node = with_world().await;
    let key = "every-scope";
    region_node::api::auth_ensure_key(&node.db.pool, "all", key, &["read", "write", "replication", "reconcile"])
        .await
        .unwrap();
    let before = node.fingerprint().await;
    let cases: [(Method, &str, Option<Value>, u16, &str); 6] = [
        (Method::GET, "/v1/accounts/%FF", None, 400, "invalid-account-id"),
        (Method::GET, "/v1/accounts/%FF/entries", None, 400, "invalid-account-id"),
        (Method::GET, "/v1/views/accounts/a%C3", None, 400, "invalid-account-id"),
        (Method::GET, "/v1/transfers/%FF", None, 400, "invalid-field"),
        (Method::POST, "/v1/conflicts/%FF/resolve", Some(json!({"case": "c-1"})), 404, "not-found"),
        (Method::GET, "/v1/accounts/world/entries?limit=%FF", None, 400, "invalid-query"),
    ];
    for (method, path, body, status, slug) in cases {
        let r = node.send(method.clone(), path, Some(key), body, &[]).await;
        assert_eq!((r.status, r.problem()), (status, slug), "{method} {path}: {}", r.body);
    }
    assert_eq!(node.fingerprint().await, before, "nothing written");
    node.stop().await;
}

#[tokio::test]
async fn api_keys_are_required_and_scoped() {
    let node = with_world().await;
    let body = json!({"id": "acc", "currency": "USD"});
    let none = node.send(Method::POST, "/v1/accounts", None, Some(body.clone()), &[]).await;
    assert_eq!((none.status, none.problem()), (401, "unauthorized"));
    let wrong = node.send(Method::POST, "/v1/accounts", Some("not-a-key"), Some(body.clone()), &[]).await;
    assert_eq!((wrong.status, wrong.problem()), (401, "unauthorized"));
    let read_only = node.send(Method::POST, "/v1/accounts", Some(&node.read_key), Some(body.clone()), &[]).await;
    assert_eq!((read_only.status, read_only.problem()), (403, "forbidden"));
    let got = node.send(Method::GET, "/v1/accounts/world", None, None, &[]).await;
    assert_eq!(got.status, 401);
    assert_eq!(node.get("/v1/accounts/world").await.status, 200, "a read key reads");
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT key_hash FROM api_keys").fetch_all(&node.db.pool).await.unwrap();
    assert!(!stored.iter().any(|h| h == &node.write_key || h == &node.read_key), "keys are stored hashed");
    assert!(stored.contains(&region_node::api::hash_key(&node.write_key)));
    node.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let node = with_world().await;
    funded(&node, "alice", 10).await;
    let healthz = node.send(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(healthz.status, 200);
    let ready = node.http.get(format!("{}/readyz", node.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Every supervised background task is listed, running, never restarted.
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    let tasks = ready["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(names, ["consumer", "publisher", "webhooks"], "{ready}");
    for task in tasks {
        assert_eq!(
            (&task["state"], &task["restarts"], &task["last_error"]),
            (&json!("running"), &json!(0), &Value::Null)
        );
    }
    node.wait_read_models(Duration::from_secs(30)).await;
    let metrics = node.http.get(format!("{}/metrics", node.base)).send().await.unwrap().text().await.unwrap();
    for name in [
        "http_server_request_duration_seconds_bucket",
        "ledger_group_commit_batch_size",
        "ledger_outbox_publish_lag_seconds",
        "ledger_outbox_backlog",
        "ledger_consumer_events_applied_total",
        "ledger_snapshot_age_seconds",
        "ledger_task_restarts_total{task=\"publisher\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(metrics.contains("route=\"/v1/transfers\""));
    node.stop().await;
}

#[tokio::test]
async fn racing_debits_never_overdraw() {
    let node = with_world().await;
    funded(&node, "alice", 1_000).await;
    for i in 0..4 {
        node.open(&format!("shop{i}"), "USD", false).await;
    }
    // 200 debits of 10 race for 1,000: exactly 100 may pass, whatever the interleaving.
    let debits =
        (0..200).map(|i| (node.base.clone(), json!({"from": "alice", "to": format!("shop{}", i % 4), "amount": 10})));
    assert_eq!(race(&node, debits.collect()).await, 100);
    assert_eq!(node.balance("alice").await, 0);
    let mut shops = 0;
    for i in 0..4 {
        shops += node.balance(&format!("shop{i}")).await;
    }
    assert_eq!(shops, 1_000, "the accepted sum is exactly what alice had");
    assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}

/// Two nodes of one region write to its one database, each committer remembering account states
/// from its own commits. Each node's memory goes stale whenever the other commits; a batch planned
/// against a stale state must be refused by PostgreSQL and re-run, never committed with a balance
/// computed from the old one (that would spend alice's money twice).
#[tokio::test]
async fn two_nodes_of_one_region_racing_debits_never_overdraw() {
    let a = with_world().await;
    let (b, b_base) = second_node(&a).await;
    let bases = [a.base.clone(), b_base];
    funded(&a, "alice", 1_000).await;
    a.open("shop", "USD", false).await;
    // Both committers remember alice before the race.
    for base in &bases {
        let (status, _) =
            transfer_at(&a.http, &a.write_key, base, &json!({"from": "alice", "to": "shop", "amount": 1})).await;
        assert_eq!(status, 201);
    }
    let debits = (0..200).map(|i| (bases[i % 2].clone(), json!({"from": "alice", "to": "shop", "amount": 10})));
    // 998 left after the two warm-up transfers: 99 debits of 10 fit.
    assert_eq!(race(&a, debits.collect()).await, 99);
    assert_eq!(a.balance("alice").await, 8);
    assert_eq!(a.balance("shop").await, 992);
    assert_ledger_consistent(&a.db.pool).await;
    b.shutdown().await;
    a.stop().await;
}

/// A refusal is a decision too: a node whose memory of an account is stale (the other node has
/// credited it since) must not refuse a debit the account can now pay.
#[tokio::test]
async fn a_refusal_is_never_decided_on_a_stale_balance() {
    let a = with_world().await;
    let (b, b_base) = second_node(&a).await;
    funded(&a, "alice", 10).await;
    a.open("shop", "USD", false).await;
    // Node a now remembers alice at 0.
    assert_eq!(a.transfer("alice", "shop", 10).await.status, 201);
    let credit = json!({"from": "world", "to": "alice", "amount": 100});
    assert_eq!(transfer_at(&a.http, &a.write_key, &b_base, &credit).await.0, 201);
    let debit = a.transfer("alice", "shop", 50).await;
    assert_eq!(debit.status, 201, "alice has 100 since node b's credit: {}", debit.body);
    assert_eq!(a.balance("alice").await, 50);
    assert_ledger_consistent(&a.db.pool).await;
    b.shutdown().await;
    a.stop().await;
}

#[tokio::test]
async fn events_reach_kafka_with_headers_and_the_read_models_once() {
    let node = with_world().await;
    funded(&node, "alice", 300).await;
    node.open("bob", "USD", false).await;
    for _ in 0..5 {
        assert_eq!(node.transfer("alice", "bob", 7).await.status, 201);
    }
    let views = node.wait_read_models(Duration::from_secs(30)).await;
    for (id, view, authoritative) in &views {
        assert_eq!(view, authoritative, "view of {id}");
    }
    let view = node.get("/v1/views/accounts/alice").await;
    assert_eq!(view.body["balance"], 265);
    assert_eq!(view.body["entries_behind"], 0);

    let (bootstrap, topic) = (node.region.kafka_bootstrap().to_owned(), node.topic());
    let records = tokio::task::spawn_blocking(move || {
        testkit::kafka_util::read_all(&bootstrap, &topic, "read_committed", Duration::from_secs(30))
    })
    .await
    .unwrap();
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_records").fetch_one(&node.db.pool).await.unwrap();
    assert_eq!(records.len() as i64, outbox, "each outbox record published once");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_events").fetch_one(&node.db.pool).await.unwrap();
    // 3 openings (one record each) and 6 transfers (one record per account).
    assert_eq!((events, outbox), (9, 3 + 12));
    for r in &records {
        let header = |k: &str| r.headers.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let payload: Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(header("event-id").as_deref(), payload["event_id"].as_str());
        assert!(header("event-type").is_some_and(|t| t == "transfer.posted" || t == "account.opened"));
        assert_eq!(header("origin-region").as_deref(), Some("us-east"));
        assert!(header("traceparent").is_some_and(|t| t.starts_with("00-")), "traceparent header");
        assert!(payload["vectors"][r.key.as_deref().unwrap()].is_object(), "the keyed account's vector travels");
    }
    // Per account, records arrive in the order the ledger wrote them.
    let alice_types: Vec<String> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some("alice"))
        .map(|r| {
            serde_json::from_str::<Value>(r.value.as_deref().unwrap()).unwrap()["vectors"]["alice"]["us-east"]
                .to_string()
        })
        .collect();
    assert_eq!(alice_types, (1..=7).map(|i| i.to_string()).collect::<Vec<_>>());

    let snapshots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_snapshots").fetch_one(&node.db.pool).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut snapshots = snapshots;
    while snapshots == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        snapshots = sqlx::query_scalar("SELECT count(*) FROM ledger_snapshots").fetch_one(&node.db.pool).await.unwrap();
    }
    assert!(snapshots > 0, "a snapshot within the configured interval");
    let balances: Value = sqlx::query_scalar("SELECT ledger_snapshot_balances(max(id)) FROM ledger_snapshots")
        .fetch_one(&node.db.pool)
        .await
        .unwrap();
    assert_eq!(balances["bob"], 35);
    node.stop().await;
}

/// The newest snapshot with an id above `after_id` that records `events_applied` events, once one
/// is written (30 s at most).
async fn snapshot_of(pool: &sqlx::PgPool, events_applied: i64, after_id: i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT max(id) FROM ledger_snapshots WHERE events_applied = $1 AND id > $2")
                .bind(events_applied)
                .bind(after_id)
                .fetch_one(pool)
                .await
                .unwrap();
        if let Some(id) = id {
            return id;
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot of {events_applied} events after {after_id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Snapshots hold what changed since the one before, every `snapshot_full_every`-th holds every
/// balance, and the table keeps at most twice that many: crossed here with 3 over twelve rounds of
/// 100 transfers, each round into a different few of 60 accounts. After every round, the balances
/// rebuilt from the snapshot that saw all of it equal the read model's, account for account.
#[tokio::test]
async fn snapshots_hold_what_changed_and_rebuild_every_balance_across_full_ones() {
    const FULL_EVERY: u32 = 3;
    let node = start(|cfg| {
        cfg.snapshot_every_ms = 150;
        cfg.snapshot_full_every = FULL_EVERY;
    })
    .await;
    node.open("world", "USD", true).await;
    let accounts: Vec<String> = (0..60).map(|i| format!("snap{i}")).collect();
    for id in &accounts {
        node.open(id, "USD", false).await;
    }
    let pool = &node.db.pool;
    let (mut deltas_smaller_than_the_ledger, mut last_id) = (0, 0i64);
    for round in 0..12usize {
        let mut tasks = Vec::new();
        for i in 0..100usize {
            let to = accounts[(round * 5 + i % 8) % accounts.len()].clone();
            let body = json!({"from": "world", "to": to, "amount": 1 + (round * 100 + i) as i64});
            let (http, key, base) = (node.http.clone(), node.write_key.clone(), node.base.clone());
            tasks.push(tokio::spawn(async move { transfer_at(&http, &key, &base, &body).await }));
            if tasks.len() == 50 {
                for task in tasks.drain(..) {
                    let (status, body) = task.await.unwrap();
                    assert_eq!(status, 201, "{body}");
                }
            }
        }
        node.wait_read_models(Duration::from_secs(60)).await;
        let applied: i64 = sqlx::query_scalar("SELECT events_applied FROM rm_progress").fetch_one(pool).await.unwrap();
        // The snapshot written once the round was applied (the read model and its progress commit
        // together, and a snapshot reads both in one snapshot of the database).
        let id = snapshot_of(pool, applied, last_id).await;
        last_id = id;
        let rebuilt: Value =
            sqlx::query_scalar("SELECT ledger_snapshot_balances($1)").bind(id).fetch_one(pool).await.unwrap();
        let view: Value = sqlx::query_scalar("SELECT jsonb_object_agg(account_id, balance) FROM rm_balances")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(rebuilt, view, "round {round}: snapshot {id} rebuilt");
        assert_eq!(rebuilt.as_object().unwrap().len(), accounts.len() + 1);
        let (kept, deltas_small): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE base_id IS NOT NULL AND (SELECT count(*) FROM jsonb_object_keys(balances)) < 20)
             FROM ledger_snapshots",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert!(kept <= 2 * i64::from(FULL_EVERY), "round {round}: {kept} snapshots kept");
        deltas_smaller_than_the_ledger += deltas_small;
    }
    assert!(deltas_smaller_than_the_ledger > 0, "deltas hold only what changed");
    let (first, fulls): (i64, i64) =
        sqlx::query_as("SELECT min(id), count(*) FILTER (WHERE base_id IS NULL) FROM ledger_snapshots")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(first > 1 && last_id > 2 * i64::from(FULL_EVERY), "older snapshots were deleted: first kept {first}");
    assert!(fulls >= 1);
    node.stop().await;
}

/// A snapshot that meets another writer of the balance view (remote apply beside the consumer)
/// holding a change to a balance it must clear waits for it and then succeeds; under repeatable
/// read alone it failed with a serialization error once the writer committed. The writer here is
/// the test's own transaction on the node's database, changing a balance flagged since the last
/// snapshot, as remote apply does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_waits_for_a_writer_of_the_balance_view_instead_of_failing() {
    let node = start(|cfg| cfg.snapshot_every_ms = 100).await;
    let pool = &node.db.pool;
    node.open("world", "USD", true).await;
    node.open("paid", "USD", false).await;
    node.open("held", "USD", false).await;
    assert_eq!(node.transfer("world", "held", 7).await.status, 201);
    node.wait_read_models(Duration::from_secs(30)).await;
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT events_applied FROM rm_progress").fetch_one(pool).await.unwrap()
    };
    snapshot_of(pool, applied().await, 0).await;

    // `held` is flagged changed (committed), then changed again by a writer that does not commit yet.
    sqlx::query("UPDATE rm_balances SET snapshot_dirty = true WHERE account_id = 'held'").execute(pool).await.unwrap();
    let mut writer = pool.begin().await.unwrap();
    sqlx::query("UPDATE rm_balances SET balance = balance + 5, snapshot_dirty = true WHERE account_id = 'held'")
        .execute(&mut *writer)
        .await
        .unwrap();
    // A transfer elsewhere makes a snapshot due; it must wait for the writer.
    assert_eq!(node.transfer("world", "paid", 3).await.status, 201);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the snapshot never met the writer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.commit().await.unwrap();
    let id = snapshot_of(pool, applied().await, 0).await;

    let metrics = node.http.get(format!("{}/metrics", node.base)).send().await.unwrap().text().await.unwrap();
    let failures: Vec<&str> = metrics.lines().filter(|l| l.starts_with("ledger_snapshot_failures_total")).collect();
    assert!(failures.is_empty(), "no snapshot failed: {failures:?}");
    // What the writer changed is in the snapshot, and no flag is left for a change it missed.
    let rebuilt: Value =
        sqlx::query_scalar("SELECT ledger_snapshot_balances($1)").bind(id).fetch_one(pool).await.unwrap();
    let view: Value = sqlx::query_scalar("SELECT jsonb_object_agg(account_id, balance) FROM rm_balances")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rebuilt, view);
    assert_eq!(rebuilt["held"], 12);
    node.stop().await;
}

/// Regression (finding 6): the committer remembers at most `accounts_remembered_max` accounts and
/// used to forget them all when full, in the middle of planning a batch, so accounts it had just
/// read looked absent and transfers between existing accounts got 404 `account-not-found`.
#[tokio::test]
async fn transfers_succeed_when_the_remembered_accounts_limit_is_crossed() {
    let node = start(|cfg| cfg.accounts_remembered_max = 4).await;
    let accounts: Vec<String> = (0..40).map(|i| format!("acc{i}")).collect();
    for id in &accounts {
        node.open(id, "USD", true).await;
    }
    // Seeded, so a failure replays: 400 transfers, 50 in flight at a time, so that batches hold
    // several accounts and the limit is crossed inside one batch's planning.
    let mut seed: u64 = 0x5eed_0006;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..8 {
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let from = (next() % 40) as usize;
            let to = (from + 1 + (next() % 39) as usize) % 40;
            let body = json!({"from": accounts[from], "to": accounts[to], "amount": 1 + next() % 100});
            let (http, key, base) = (node.http.clone(), node.write_key.clone(), node.base.clone());
            tasks.push(tokio::spawn(async move { transfer_at(&http, &key, &base, &body).await }));
        }
        for task in tasks {
            let (status, body) = task.await.unwrap();
            assert_eq!(status, 201, "{body}");
        }
    }
    assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}

/// Regression: a retry of a transfer that emptied its source was planned against the new balance,
/// refused for insufficient funds (a refusal writes nothing, so the key's unique index never
/// fired) and answered 409 instead of the original 201. A key reused with another body that would
/// be refused was answered with that refusal instead of `idempotency-key-reused`.
#[tokio::test]
async fn idempotency_keys_replay_whatever_the_balances_are_now() {
    let node = with_world().await;
    funded(&node, "alice", 100).await;
    node.open("bob", "USD", false).await;
    let key = [("Idempotency-Key", "empty-alice")];
    let post = |body: Value| node.send(Method::POST, "/v1/transfers", Some(&node.write_key), Some(body), &key);
    let body = json!({"from": "alice", "to": "bob", "amount": 100});
    let first = post(body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let before = node.fingerprint().await;

    // (a) The retry replays the original, though alice now has nothing.
    let retry = post(body).await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body, first.body);
    assert_eq!(node.fingerprint().await, before, "a replay writes nothing");
    assert_eq!((node.balance("alice").await, node.balance("bob").await), (0, 100));

    // (b), (c) and the others: the key is taken, whatever the new body would have met.
    for (name, other) in [
        ("insufficient funds", json!({"from": "alice", "to": "bob", "amount": 101})),
        ("unknown account", json!({"from": "alice", "to": "nobody", "amount": 1})),
        ("unknown source", json!({"from": "nobody", "to": "bob", "amount": 1})),
        ("same account", json!({"from": "bob", "to": "bob", "amount": 1})),
    ] {
        let reused = post(other).await;
        assert_eq!((reused.status, reused.problem()), (409, "idempotency-key-reused"), "{name}: {}", reused.body);
    }
    node.open("eve-eur", "EUR", false).await;
    let before = node.fingerprint().await;
    let reused = post(json!({"from": "bob", "to": "eve-eur", "amount": 1})).await;
    assert_eq!(
        (reused.status, reused.problem()),
        (409, "idempotency-key-reused"),
        "currency mismatch: {}",
        reused.body
    );
    assert_eq!(node.fingerprint().await, before, "a reused key writes nothing");
    assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}

/// Regression (finding 9): idempotency keys were global strings, so two tenants (two API keys)
/// choosing the same key saw each other's transfer replayed, or a 409. A key is now scoped to the
/// API key that used it, and every response still shows the client's own key.
#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_api_key() {
    let node = with_world().await;
    funded(&node, "alice", 100).await;
    node.open("bob", "USD", false).await;
    let other_key = format!("test-write-b-{}", uuid::Uuid::new_v4());
    region_node::api::auth_ensure_key(&node.db.pool, "tenant-b", &other_key, &["read", "write"]).await.unwrap();
    async fn post(node: &TestNode, api_key: &str, body: &Value) -> common::Reply {
        let key = [("Idempotency-Key", "order-1")];
        node.send(Method::POST, "/v1/transfers", Some(api_key), Some(body.clone()), &key).await
    }
    let (body_a, body_b) =
        (json!({"from": "alice", "to": "bob", "amount": 10}), json!({"from": "world", "to": "bob", "amount": 7}));
    let a = post(&node, &node.write_key, &body_a).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let b = post(&node, &other_key, &body_b).await;
    assert_eq!(b.status, 201, "the same key under another API key is another request: {}", b.body);
    assert!(b.headers.get("idempotent-replayed").is_none());
    assert_ne!(a.body["id"], b.body["id"]);
    for (api_key, body, first) in [(&node.write_key, &body_a, &a), (&other_key, &body_b, &b)] {
        assert_eq!(first.body["idempotency_key"], "order-1", "responses show the client's key");
        let retry = post(&node, api_key, body).await;
        assert_eq!(retry.status, 201, "{}", retry.body);
        assert_eq!(retry.headers["idempotent-replayed"], "true");
        assert_eq!(retry.body, first.body, "each API key replays its own transfer");
        let got = node.get(&format!("/v1/transfers/{}", first.body["id"].as_str().unwrap())).await;
        assert_eq!(got.body, first.body, "GET shows the client's key too");
    }
    // Keys are stored scoped to their API key; the setup's transfers carry keys of their own.
    let transfers: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers WHERE idempotency_key LIKE '%order-1'")
        .fetch_one(&node.db.pool)
        .await
        .unwrap();
    assert_eq!(transfers, 2);
    assert_eq!(node.balance("bob").await, 17);
    assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}

/// Bounds on money: a transfer moves at most 10^15 minor units and no balance leaves ±2^62. An
/// `allow_negative` source credited again and again ends in a refusal that changes nothing.
#[tokio::test]
async fn amounts_and_balances_stay_within_their_bounds() {
    let node = with_world().await;
    node.open("vault", "USD", true).await;
    let (amount_max, balance_max) = (ledger_core::AMOUNT_MAX, ledger_core::BALANCE_MAX);
    assert_eq!((amount_max, balance_max), (1_000_000_000_000_000, 1 << 62));
    let r = node.transfer("world", "vault", amount_max).await;
    assert_eq!(r.status, 201, "the largest amount is accepted: {}", r.body);
    let before = node.fingerprint().await;
    let r = node.transfer("world", "vault", amount_max + 1).await;
    assert_eq!((r.status, r.problem()), (400, "amount-out-of-range"), "{}", r.body);
    assert_eq!(node.fingerprint().await, before);

    // Credit the vault with the largest amount, 200 requests at a time, until the bound refuses:
    // floor(2^62 / 10^15) = 4,611 credits fit, the first included.
    let mut accepted = 1;
    let mut refused = 0;
    while refused == 0 {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (http, key, base) = (node.http.clone(), node.write_key.clone(), node.base.clone());
                let body = json!({"from": "world", "to": "vault", "amount": amount_max});
                tokio::spawn(async move { transfer_at(&http, &key, &base, &body).await })
            })
            .collect();
        for task in tasks {
            match task.await.unwrap() {
                (201, _) => accepted += 1,
                (422, body) if body["type"] == format!("{}balance-overflow", region_node::problem::TYPE_BASE) => {
                    refused += 1
                }
                (status, body) => panic!("unexpected {status}: {body}"),
            }
        }
        assert!(accepted <= balance_max / amount_max, "the vault passed the bound");
    }
    assert_eq!(accepted, balance_max / amount_max);
    let vault = node.balance("vault").await;
    assert_eq!(vault, accepted * amount_max);
    assert_eq!(node.balance("world").await, -vault);
    let before = node.fingerprint().await;
    let again = node.transfer("world", "vault", amount_max).await;
    assert_eq!((again.status, again.problem()), (422, "balance-overflow"), "{}", again.body);
    assert_eq!(node.fingerprint().await, before, "a refusal changes nothing");
    assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}

/// `GET /v1/conflicts` refuses what it cannot page by: a limit above the page bound, an unknown
/// kind or status, a time that is not RFC 3339, a cursor that is not one; an empty region pages
/// to nothing.
#[tokio::test]
async fn the_conflicts_list_refuses_bad_paging_and_filters() {
    let node = common::start(|_| {}).await;
    for query in ["limit=1001", "limit=0", "kind=bogus", "status=closed", "since=yesterday", "after=-1", "page=2"] {
        let r = node.get(&format!("/v1/conflicts?{query}")).await;
        assert_eq!((r.status, r.problem()), (400, "invalid-query"), "{query}: {}", r.body);
    }
    let r = node.get("/v1/conflicts?limit=1000&kind=overdraft&status=open&since=2026-01-01T00:00:00Z").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["conflicts"], serde_json::json!([]));
    assert_eq!(r.body["next"], Value::Null);
    node.stop().await;
}
