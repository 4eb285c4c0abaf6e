//! `POST /v1/conflicts/{id}/resolve` across three regions: the reconcile scope, bodies refused
//! without a trace, an account-definition conflict resolved with the definition that did not win
//! (the account redefined and unfrozen the same way everywhere, money kept apart by currency), and
//! an overdraft resolved, reopened when its episode grows, and resolved again, each change on
//! `ledger.conflicts`.

mod common;

use common::cluster::Cluster;
use common::{Reply, TestNode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn resolve(node: &TestNode, key: Option<&str>, id: &str, body: Value) -> Reply {
    node.send(reqwest::Method::POST, &format!("/v1/conflicts/{id}/resolve"), key, Some(body), &[]).await
}

/// The one conflict of `kind` on `account` in `node`'s region.
async fn conflict(node: &TestNode, kind: &str, account: &str) -> Value {
    let r = node.get(&format!("/v1/conflicts?kind={kind}&account={account}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let found = r.body["conflicts"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{}: {found:?}", node.cfg.region);
    found[0].clone()
}

/// Waits until every node in `nodes` holds a conflict of `kind` on `account` with `events` events.
async fn wait_for_conflict(nodes: &[&TestNode], kind: &str, account: &str, events: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for node in nodes {
        loop {
            let r = node.get(&format!("/v1/conflicts?kind={kind}&account={account}")).await;
            let found = r.body["conflicts"].as_array().cloned().unwrap_or_default();
            if found.iter().any(|c| c["event_count"] == events) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {kind} of {events} events on {account}: {found:?}",
                node.cfg.region
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The `ledger.conflicts` records of `node`'s region keyed by `id` (event type, payload), once
/// `resolved` of them are `conflict.resolved`.
async fn conflict_records(node: &TestNode, id: &str, resolved: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (bootstrap, topic) =
            (node.region.kafka_bootstrap().to_owned(), ledger_schema::conflicts_topic(&node.prefix));
        let records = tokio::task::spawn_blocking(move || {
            testkit::kafka_util::read_all(&bootstrap, &topic, "read_committed", Duration::from_secs(30))
        })
        .await
        .unwrap();
        let mine: Vec<(String, Value)> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(id))
            .map(|r| {
                let kind =
                    r.headers.iter().find(|(k, _)| k == "event-type").map(|(_, v)| v.clone()).unwrap_or_default();
                (kind, serde_json::from_str(r.value.as_deref().unwrap()).unwrap())
            })
            .collect();
        if mine.iter().filter(|(t, _)| t == "conflict.resolved").count() >= resolved || Instant::now() > deadline {
            return mine;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Two regions open `x` (USD in us-east, EUR in eu-west) and `y` (negative allowed in us-east only)
/// while partitioned and move money on them; eu-west sorts first, so its definitions win and both
/// accounts are frozen everywhere. Finance picks us-east's definitions instead: every region ends
/// with the same definitions, unfrozen, the EUR money kept apart, and transfers succeed, including
/// on `y`, whose balance, entries and vector the resolution leaves as they were, so only the
/// committer's check of the definition and the frozen flag keeps it from refusing on a
/// remembered `frozen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_definition_resolved_everywhere_redefines_and_unfreezes_the_account_the_same_way() {
    let mut cluster = Cluster::start().await;
    let us = &cluster.nodes[0];
    us.open("world", "USD", true).await;
    us.open("world-eur", "EUR", true).await;
    cluster.converged(Duration::from_secs(120)).await;
    cluster.pause().await;
    let [us, eu] = [&cluster.nodes[0], &cluster.nodes[1]];
    us.open("x", "USD", false).await;
    eu.open("x", "EUR", false).await;
    assert_eq!(us.transfer("world", "x", 70).await.status, 201);
    assert_eq!(eu.transfer("world-eur", "x", 40).await.status, 201);
    us.open("y", "USD", true).await;
    eu.open("y", "USD", false).await;
    assert_eq!(us.transfer("y", "world", 25).await.status, 201);
    cluster.resume().await;
    cluster.converged(Duration::from_secs(120)).await;

    let us = &cluster.nodes[0];
    let key = cluster.reconcile_key.clone();
    let (cx, cy) = (conflict(us, "account-definition", "x").await, conflict(us, "account-definition", "y").await);
    let (cx, cy) = (cx["conflict_id"].as_str().unwrap().to_owned(), cy["conflict_id"].as_str().unwrap().to_owned());
    for (i, node) in cluster.nodes.iter().enumerate() {
        let x = node.get("/v1/accounts/x").await.body;
        assert_eq!((x["currency"].as_str(), x["frozen"].as_bool()), (Some("EUR"), Some(true)), "region {i}: {x}");
        assert_eq!(conflict(node, "account-definition", "x").await["conflict_id"], cx.as_str(), "region {i}");
        assert_eq!(conflict(node, "account-definition", "y").await["conflict_id"], cy.as_str(), "region {i}");
        // The committer now remembers y frozen.
        let r = node.transfer("world", "y", 1).await;
        assert_eq!((r.status, r.problem()), (409, "account-frozen"), "region {i}");
    }

    // Only the reconcile scope reaches the route.
    let usd = json!({"case": "case-x", "definition": {"currency": "USD", "allow_negative": false}});
    for node in &cluster.nodes {
        for other in [&node.read_key, &node.write_key] {
            let r = resolve(node, Some(other), &cx, usd.clone()).await;
            assert_eq!((r.status, r.problem()), (403, "forbidden"), "{}", r.body);
        }
        let r = resolve(node, None, &cx, usd.clone()).await;
        assert_eq!((r.status, r.problem()), (401, "unauthorized"));
    }
    // A refused body changes nothing: not the ledger, not the outbox, not the conflicts.
    let before = (us.fingerprint().await, cluster.conflict_contents(0).await);
    let refused: Vec<(&str, Value, u16, &str)> = vec![
        (
            cx.as_str(),
            json!({"case": "c", "definition": {"currency": "USD", "allow_negative": false}, "note": 1}),
            400,
            "unknown-field",
        ),
        (
            cx.as_str(),
            json!({"case": "c", "definition": {"currency": "USD", "allow_negative": false, "metadata": {}}}),
            400,
            "unknown-field",
        ),
        (cx.as_str(), json!({"definition": {"currency": "USD", "allow_negative": false}}), 400, "missing-field"),
        (
            cx.as_str(),
            json!({"case": "", "definition": {"currency": "USD", "allow_negative": false}}),
            400,
            "invalid-field",
        ),
        (
            cx.as_str(),
            json!({"case": "c".repeat(129), "definition": {"currency": "USD", "allow_negative": false}}),
            400,
            "invalid-field",
        ),
        (
            cx.as_str(),
            json!({"case": "c", "definition": {"currency": "usd", "allow_negative": false}}),
            400,
            "invalid-currency",
        ),
        (cx.as_str(), json!({"case": "c", "definition": {"currency": "USD"}}), 400, "missing-field"),
        (cx.as_str(), json!({"case": "c"}), 400, "missing-field"),
        (cx.as_str(), json!({"case": "c", "definition": null}), 400, "missing-field"),
        (
            cx.as_str(),
            json!({"case": "c", "definition": {"currency": "GBP", "allow_negative": false}}),
            422,
            "definition-not-offered",
        ),
        // Each attribute was offered, but not together.
        (
            cx.as_str(),
            json!({"case": "c", "definition": {"currency": "USD", "allow_negative": true}}),
            422,
            "definition-not-offered",
        ),
        (
            cy.as_str(),
            json!({"case": "c", "definition": {"currency": "EUR", "allow_negative": true}}),
            422,
            "definition-not-offered",
        ),
        ("0190a1b2-0000-7000-8000-000000000000", json!({"case": "c"}), 404, "not-found"),
        ("not-a-uuid", json!({"case": "c"}), 404, "not-found"),
    ];
    for (id, body, status, problem) in refused {
        let r = resolve(us, Some(&key), id, body.clone()).await;
        assert_eq!((r.status, r.problem()), (status, problem), "{body}: {}", r.body);
    }
    let r = us
        .send(
            reqwest::Method::POST,
            &format!("/v1/conflicts/{cx}/resolve"),
            Some(&key),
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!((r.status, r.problem()), (415, "unsupported-media-type"));
    assert_eq!((us.fingerprint().await, cluster.conflict_contents(0).await), before, "a refusal writes nothing");

    // Resolved in every region with us-east's definitions, which lost to eu-west's.
    let allow = json!({"case": "case-y", "definition": {"currency": "USD", "allow_negative": true}});
    let mut answers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let r = resolve(node, Some(&key), &cx, usd.clone()).await;
        assert_eq!(r.status, 200, "region {i}: {}", r.body);
        assert_eq!(
            (&r.body["conflict_id"], &r.body["kind"], &r.body["account"], &r.body["status"], &r.body["resolution"]),
            (&json!(cx), &json!("account-definition"), &json!("x"), &json!("resolved"), &usd),
            "region {i}: {}",
            r.body
        );
        assert!(r.body["resolved_at"].is_string(), "{}", r.body);
        answers.push(r.body);
        let r = resolve(node, Some(&key), &cy, allow.clone()).await;
        assert_eq!(r.status, 200, "region {i}: {}", r.body);
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        let x = node.get("/v1/accounts/x").await.body;
        assert_eq!(
            (&x["currency"], &x["allow_negative"], &x["frozen"], &x["balance"], &x["foreign_balances"]),
            (&json!("USD"), &json!(false), &json!(false), &json!(70), &json!({"EUR": 40})),
            "region {i}: {x}"
        );
        let y = node.get("/v1/accounts/y").await.body;
        assert_eq!(
            (&y["allow_negative"], &y["frozen"], &y["balance"]),
            (&json!(true), &json!(false), &json!(-25)),
            "region {i}: {y}"
        );
        // Again with the same body: the same answer; with another: refused.
        let r = resolve(node, Some(&key), &cx, usd.clone()).await;
        assert_eq!((r.status, &r.body), (200, &answers[i]), "region {i}");
        let eur = json!({"case": "case-x", "definition": {"currency": "EUR", "allow_negative": false}});
        let r = resolve(node, Some(&key), &cx, eur).await;
        assert_eq!((r.status, r.problem()), (409, "conflict-already-resolved"), "region {i}: {}", r.body);
        let r = resolve(node, Some(&key), &cx, json!({"case": "another-case", "definition": usd["definition"]})).await;
        assert_eq!((r.status, r.problem()), (409, "conflict-already-resolved"), "region {i}: {}", r.body);
        let resolved = node.get("/v1/conflicts?status=resolved&kind=account-definition").await.body;
        let resolved = resolved["conflicts"].as_array().unwrap();
        assert_eq!(resolved.len(), 2, "region {i}: {resolved:?}");
        assert!(resolved.iter().all(|c| c["resolved_at"].is_string()), "{resolved:?}");
    }
    // Money moves on both accounts now, under the new definitions, in every region.
    for (i, node) in cluster.nodes.iter().enumerate() {
        let r = node.transfer("world", "x", 1).await;
        assert_eq!(r.status, 201, "region {i}: {}", r.body);
        assert_eq!(r.body["currency"], "USD");
        let r = node.transfer("y", "world", 5).await;
        assert_eq!(r.status, 201, "region {i}: a transfer must not see the frozen flag remembered: {}", r.body);
    }
    cluster.converged(Duration::from_secs(120)).await;
    let reference = cluster.accounts(0).await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(cluster.accounts(i).await, reference, "region {i}");
        let x = node.get("/v1/accounts/x").await.body;
        assert_eq!(
            (&x["balance"], &x["foreign_balances"], &x["frozen"]),
            (&json!(73), &json!({"EUR": 40}), &json!(false))
        );
        assert_eq!(node.balance("y").await, -40, "region {i}");
        common::assert_ledger_consistent(&node.db.pool).await;
    }
    cluster.stop().await;
}

/// us-east and eu-west each debit 100 of `acc`'s 150 while partitioned, and see each other's debit
/// (one overdraft of two events) while ap-south's concurrent debit of 10 has not reached them.
/// Finance resolves it in both; when ap-south's debit arrives the episode grows to three events,
/// so the record is open again (resolution cleared) and published again as `conflict.detected`;
/// resolved once more in every region, every region lists it resolved, and each region's
/// `ledger.conflicts` carries each change in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_overdraft_is_open_again_when_its_episode_grows_and_each_change_is_published() {
    let mut cluster = Cluster::start().await;
    let us = &cluster.nodes[0];
    us.open("world", "USD", true).await;
    for id in ["acc", "shop-us", "shop-eu", "shop-ap"] {
        us.open(id, "USD", false).await;
    }
    assert_eq!(us.transfer("world", "acc", 150).await.status, 201);
    cluster.converged(Duration::from_secs(120)).await;
    cluster.pause().await;
    for (i, shop) in [(0, "shop-us"), (1, "shop-eu"), (2, "shop-ap")] {
        let amount = if i == 2 { 10 } else { 100 };
        let r = cluster.nodes[i].transfer("acc", shop, amount).await;
        assert_eq!(r.status, 201, "region {i} accepts on its own: {}", r.body);
    }
    // us-east and eu-west exchange their debits; ap-south's stays behind.
    cluster.resume_from(0, &[1]).await;
    cluster.resume_from(1, &[0]).await;
    let [us, eu, ap] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    wait_for_conflict(&[us, eu], "overdraft", "acc", 2).await;
    let id = conflict(us, "overdraft", "acc").await["conflict_id"].as_str().unwrap().to_owned();
    let key = cluster.reconcile_key.clone();
    let body = json!({"case": "case-overdraft-1"});
    let r =
        resolve(us, Some(&key), &id, json!({"case": "c", "definition": {"currency": "USD", "allow_negative": false}}))
            .await;
    assert_eq!((r.status, r.problem()), (400, "invalid-field"), "a definition only resolves an account definition");
    let r = resolve(ap, Some(&key), &id, body.clone()).await;
    assert_eq!((r.status, r.problem()), (404, "not-found"), "ap-south has not detected it yet");
    for node in [us, eu] {
        let r = resolve(node, Some(&key), &id, body.clone()).await;
        assert_eq!((r.status, &r.body["resolution"]), (200, &body), "{}", r.body);
        let c = conflict(node, "overdraft", "acc").await;
        assert_eq!((&c["status"], &c["resolution"], c["event_count"].as_i64()), (&json!("resolved"), &body, Some(2)));
    }

    // ap-south's debit arrives: the episode grows, the resolution no longer covers it.
    cluster.pause().await;
    cluster.resume().await;
    cluster.converged(Duration::from_secs(120)).await;
    let reference = cluster.conflict_contents(0).await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let c = conflict(node, "overdraft", "acc").await;
        assert_eq!(c["conflict_id"], id.as_str(), "region {i}: the same episode");
        assert_eq!(
            (&c["status"], &c["event_count"], &c["resolved_at"], &c["resolution"], &c["joint_balance"]),
            (&json!("open"), &json!(3), &Value::Null, &Value::Null, &json!(-60)),
            "region {i}: {c}"
        );
        assert_eq!(cluster.conflict_contents(i).await, reference, "region {i}");
    }
    let again = json!({"case": "case-overdraft-2"});
    for (i, node) in cluster.nodes.iter().enumerate() {
        let r = resolve(node, Some(&key), &id, again.clone()).await;
        assert_eq!(r.status, 200, "region {i}: {}", r.body);
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        let r = node.get("/v1/conflicts?status=resolved").await;
        let resolved = r.body["conflicts"].as_array().unwrap();
        let ids: Vec<&str> = resolved.iter().map(|c| c["conflict_id"].as_str().unwrap()).collect();
        assert_eq!(ids, [id.as_str()], "region {i}: {resolved:?}");
        assert_eq!((&resolved[0]["resolution"], &resolved[0]["event_count"]), (&again, &json!(3)));
        let open = node.get("/v1/conflicts?status=open&kind=overdraft&account=acc").await;
        assert!(open.body["conflicts"].as_array().unwrap().is_empty(), "region {i}: {}", open.body);
    }
    // Each region's topic, in order on the conflict's partition: us-east and eu-west detected,
    // resolved, detected again (three events), resolved again. ap-south detected it (first as the
    // two events it had applied, benign, when ap-south's own debit is one of them), then resolved.
    for (i, node) in cluster.nodes.iter().enumerate() {
        let records = conflict_records(node, &id, if i == 2 { 1 } else { 2 }).await;
        let types: Vec<&str> = records.iter().map(|(t, _)| t.as_str()).collect();
        if i == 2 {
            assert_eq!(types.last(), Some(&"conflict.resolved"), "region {i}: {records:?}");
            assert!(types[..types.len() - 1].iter().all(|t| *t == "conflict.detected"), "region {i}: {records:?}");
        } else {
            let expected = ["conflict.detected", "conflict.resolved", "conflict.detected", "conflict.resolved"];
            assert_eq!(types, expected, "region {i}: {records:?}");
            assert_eq!((&records[1].1["resolution"], &records[1].1["status"]), (&body, &json!("resolved")));
        }
        let detected = &records[records.len() - 2].1;
        assert_eq!(
            (&detected["status"], &detected["event_count"], &detected["kind"]),
            (&json!("open"), &json!(3), &json!("overdraft")),
            "region {i}: {detected}"
        );
        let (_, last) = records.last().unwrap();
        assert_eq!(
            last,
            &json!({"conflict_id": id, "kind": "overdraft", "account": "acc", "status": "resolved",
                    "resolution": again, "detected_by": node.cfg.region}),
            "region {i}"
        );
        common::assert_ledger_consistent(&node.db.pool).await;
    }
    cluster.stop().await;
}
