//! The features finance products build on (issue 18), over three regions: point-in-time balances
//! answered from the entries, equal to a replay of them in every region.

mod common;

use chrono::{DateTime, Utc};
use common::TestNode;
use common::cluster::Cluster;
use serde_json::Value;
use std::time::Duration;

/// One of these three-region tests at a time: each drives thousands of requests through nine
/// processes, and two at once on a two-core machine starved the nodes' connection pools (CI saw
/// `pool timed out` answered as 503).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every entry of an account in one region, paging through `GET /v1/accounts/{id}/entries` (1,000
/// a page at most, so a history longer than that crosses pages).
async fn all_entries(node: &TestNode, id: &str) -> Vec<Value> {
    let (mut out, mut after) = (Vec::new(), 0);
    loop {
        let page = node.get(&format!("/v1/accounts/{id}/entries?after={after}&limit=1000")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        out.extend(page.body["entries"].as_array().unwrap().iter().cloned());
        match page.body["next_after"].as_i64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().to_utc()
}

/// The version vector `a` has seen everything `b` has.
fn dominates(a: &Value, b: &Value) -> bool {
    b.as_object().unwrap().iter().all(|(region, n)| a[region].as_u64().unwrap_or(0) >= n.as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_balances_equal_a_replay_of_the_entries_in_every_region() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await;
    let [us, eu, ap] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    us.open("world", "USD", true).await;
    us.open("pit", "USD", false).await;
    eu.open("other", "USD", false).await;
    cluster.converged(Duration::from_secs(120)).await;
    // 1,500 entries on `pit` from all three regions at once (more than one page of entries, and
    // local commits interleaved with remote applies on the same account in every region).
    let mut clients = tokio::task::JoinSet::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        let (http, base, key) = (node.http.clone(), node.base.clone(), node.write_key.clone());
        clients.spawn(async move {
            for k in 0..500u64 {
                // Mostly in from `world`; now and then out to `other`, which may be refused when
                // this region's view of `pit` is short (a refusal writes no entry).
                let (from, to, amount) =
                    if k % 5 == 4 { ("pit", "other", 3) } else { ("world", "pit", 1 + (k % 9) * 7) };
                let body = serde_json::json!({"from": from, "to": to, "amount": amount});
                let (status, reply) = common::post_decided(&http, &format!("{base}/v1/transfers"), &key, &body).await;
                assert!(status == 201 || (from == "pit" && status == 409), "region {n}: {status} {reply}");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    cluster.converged(Duration::from_secs(180)).await;

    let mut finals = Vec::new();
    for (region, node) in [us, eu, ap].into_iter().enumerate() {
        let entries = all_entries(node, "pit").await;
        assert!(entries.len() > 1_000, "region {region}: {} entries", entries.len());
        let now = node.get("/v1/accounts/pit").await.body;
        assert_eq!(entries.len() as i64, now["entries"].as_i64().unwrap());
        // Stamped in sequence order, so a moment ends a prefix of the history.
        for w in entries.windows(2) {
            assert!(time(&w[0]["created_at"]) <= time(&w[1]["created_at"]), "region {region}: {w:?}");
        }
        // The replay: balance after each prefix, from the amounts alone.
        let mut replay = vec![0i64];
        for e in &entries {
            replay.push(replay.last().unwrap() + e["amount"].as_i64().unwrap());
        }
        let positions: Vec<usize> =
            (0..=entries.len()).step_by(97).chain([1, entries.len() - 1, entries.len()]).collect();
        let mut previous_vector: Option<Value> = None;
        for n in positions {
            let r = node.get(&format!("/v1/accounts/pit?at={n}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["entries"].as_i64(), Some(n as i64));
            assert_eq!(r.body["balance"].as_i64(), Some(replay[n]), "region {region}, position {n}");
            assert_eq!(r.body["at"].as_i64(), Some(n as i64));
            if n == entries.len() {
                assert_eq!(r.body["version_vector"], now["version_vector"], "the last entry's vector is the account's");
            }
            if let Some(before) = previous_vector.filter(|_| n > 1) {
                assert!(dominates(&r.body["version_vector"], &before), "vectors grow along the history");
            }
            previous_vector = Some(r.body["version_vector"].clone());
        }
        // By time: at each sampled entry's own stamp and a microsecond before it.
        for k in (0..entries.len()).step_by(89) {
            let stamp = time(&entries[k]["created_at"]);
            for t in [stamp, stamp - chrono::Duration::microseconds(1)] {
                let recorded: Vec<&Value> = entries.iter().filter(|e| time(&e["created_at"]) <= t).collect();
                let expected: i64 = recorded.iter().map(|e| e["amount"].as_i64().unwrap()).sum();
                let at = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let r = node.get(&format!("/v1/accounts/pit?at={}", at.replace('+', "%2B"))).await;
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.body["entries"].as_i64(), Some(recorded.len() as i64), "region {region} at {at}");
                assert_eq!(r.body["balance"].as_i64(), Some(expected), "region {region} at {at}");
                if let Some(last) = recorded.last() {
                    assert_eq!(r.body["recorded_at"], last["created_at"]);
                }
            }
        }
        // Before the account was opened here: not found; far in the future: the balance now.
        let r = node.get("/v1/accounts/pit?at=2000-01-01T00:00:00Z").await;
        assert_eq!((r.status, r.problem()), (404, "account-not-found"));
        let r = node.get("/v1/accounts/pit?at=2999-01-01T00:00:00Z").await;
        assert_eq!(r.body["balance"], now["balance"]);
        assert_eq!(r.body["version_vector"], now["version_vector"]);
        finals.push(now["balance"].clone());
    }
    assert!(finals.iter().all(|b| *b == finals[0]), "the regions converged: {finals:?}");

    // Bad input changes nothing and is a problem of a documented type.
    let before = us.fingerprint().await;
    let count = all_entries(us, "pit").await.len();
    for (query, status, problem) in [
        ("at=yesterday", 400, "invalid-query"),
        ("at=-1", 400, "invalid-query"),
        ("at=", 400, "invalid-query"),
        ("at=2026-13-01T00:00:00Z", 400, "invalid-query"),
        ("at=99999999999999999999", 400, "invalid-query"),
        (&format!("at={}", count + 1), 400, "invalid-query"),
        ("at=1&limit=3", 400, "invalid-query"),
        ("asof=1", 400, "invalid-query"),
    ] {
        let r = us.get(&format!("/v1/accounts/pit?{query}")).await;
        assert_eq!((r.status, r.problem()), (status, problem), "{query}: {}", r.body);
    }
    let r = us.get("/v1/accounts/nobody?at=1").await;
    assert_eq!((r.status, r.problem()), (404, "account-not-found"));
    let r = us.get("/v1/accounts/bad%20id?at=1").await;
    assert_eq!((r.status, r.problem()), (400, "invalid-account-id"));
    assert_eq!(us.fingerprint().await, before, "refused reads wrote nothing");
}

fn leg(from: &str, to: &str, amount: i64) -> Value {
    serde_json::json!({"from": from, "to": to, "amount": amount, "currency": "USD"})
}

/// A transaction as every region must agree on it: everything but the local `created_at`.
fn comparable(mut t: Value) -> Value {
    t.as_object_mut().unwrap().remove("created_at");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_leg_transactions_apply_whole_in_every_region_and_one_overdrawing_leg_refuses_all() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start().await;
    let [us, eu, ap] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    us.open("world", "USD", true).await;
    us.open("sink", "USD", true).await;
    for id in ["alice", "shop", "fees", "tax"] {
        us.open(id, "USD", false).await;
    }
    eu.open("euros", "EUR", false).await;
    assert_eq!(us.transfer("world", "alice", 100).await.status, 201);
    cluster.converged(Duration::from_secs(120)).await;

    // In another region than the accounts were opened and funded: the third leg would overdraw,
    // so nothing moves, and the problem names the leg.
    let before = eu.fingerprint().await;
    let r = eu
        .post(
            "/v1/transactions",
            serde_json::json!({"legs": [leg("alice", "shop", 90), leg("alice", "fees", 5), leg("alice", "tax", 6)]}),
        )
        .await;
    assert_eq!((r.status, r.problem()), (409, "insufficient-funds"), "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap().starts_with("leg 2:"), "{}", r.body);
    assert_eq!(eu.fingerprint().await, before, "a refused transaction writes nothing");

    // A payment with a fee and a tax, once, with a key; its retry replays it.
    let body = serde_json::json!({"legs": [leg("alice", "shop", 90), leg("alice", "fees", 5), leg("alice", "tax", 5)], "metadata": {"order": "o-1"}});
    let made = eu
        .send(
            reqwest::Method::POST,
            "/v1/transactions",
            Some(&eu.write_key),
            Some(body.clone()),
            &[("Idempotency-Key", "pay-1")],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let again = eu
        .send(
            reqwest::Method::POST,
            "/v1/transactions",
            Some(&eu.write_key),
            Some(body),
            &[("Idempotency-Key", "pay-1")],
        )
        .await;
    assert_eq!((again.status, again.headers["idempotent-replayed"].to_str().unwrap()), (201, "true"));
    assert_eq!(again.body, made.body);
    let id = made.body["id"].as_str().unwrap().to_owned();
    assert_eq!(made.body["legs"].as_array().unwrap().len(), 3);
    assert_eq!(made.headers["location"].to_str().unwrap(), format!("/v1/transactions/{id}"));

    // The largest transaction: 16 legs of the largest amount.
    let largest: Vec<Value> = (0..16).map(|_| leg("world", "sink", ledger_core::AMOUNT_MAX)).collect();
    let r = ap.post("/v1/transactions", serde_json::json!({"legs": largest})).await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Many at once from every region on shared accounts: 3 x 300 transactions of three legs.
    let mut clients = tokio::task::JoinSet::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        let (http, base, key) = (node.http.clone(), node.base.clone(), node.write_key.clone());
        clients.spawn(async move {
            let mut accepted = 0;
            for k in 0..300i64 {
                let legs = match k % 3 {
                    0 => vec![leg("world", "alice", 10 + k), leg("alice", "shop", 5), leg("shop", "fees", 1)],
                    1 => vec![leg("world", "shop", 7), leg("shop", "tax", 2), leg("tax", "fees", 1)],
                    _ => vec![leg("alice", "fees", 3), leg("alice", "tax", 3), leg("world", "alice", 1)],
                };
                let body = serde_json::json!({"legs": legs, "metadata": {"region": n, "k": k}});
                match common::post_decided(&http, &format!("{base}/v1/transactions"), &key, &body).await {
                    (201, _) => accepted += 1,
                    (409, _) => {}
                    (other, reply) => panic!("region {n}: {other} {reply}"),
                }
            }
            accepted
        });
    }
    let mut accepted = 0;
    while let Some(n) = clients.join_next().await {
        accepted += n.unwrap();
    }
    assert!(accepted > 600, "most were accepted: {accepted}");
    let events = cluster.converged(Duration::from_secs(180)).await;
    // 7 openings, one transfer, the payment, the largest, and the accepted ones: one event each.
    assert_eq!(events.len(), 7 + 1 + 1 + 1 + accepted);
    let reference = cluster.accounts(0).await;
    for i in 1..3 {
        assert_eq!(cluster.accounts(i).await, reference, "region {i} has the same balances and vectors");
    }
    let payment = comparable(us.get(&format!("/v1/transactions/{id}")).await.body);
    for node in [us, eu, ap] {
        let t = node.get(&format!("/v1/transactions/{id}")).await;
        assert_eq!(t.status, 200, "{}", t.body);
        assert_eq!(comparable(t.body.clone()), payment);
        assert_eq!(comparable(t.body), comparable(made.body.clone()), "every region answers as the origin did");
        for l in payment["legs"].as_array().unwrap() {
            let transfer = node.get(&format!("/v1/transfers/{}", l["id"].as_str().unwrap())).await;
            assert_eq!((transfer.status, &transfer.body["amount"]), (200, &l["amount"]));
        }
        common::assert_ledger_consistent(&node.db.pool).await;
        // The read models count one entry per leg, as the ledger does.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let view = node.get("/v1/views/accounts/alice").await.body;
            if view["entries_behind"] == 0 {
                assert_eq!(view["balance"], node.get("/v1/accounts/alice").await.body["balance"]);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the view stays behind: {view}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The same conflicts everywhere (concurrent transactions on shared accounts are concurrency
    // like any other), and no key executed twice.
    let first = cluster.conflict_contents(0).await;
    for i in 1..3 {
        assert_eq!(cluster.conflict_contents(i).await, first, "region {i}");
    }
    assert!(first.iter().all(|c| c["kind"] != "duplicate-intent"), "{first:?}");

    // Bad input: each a problem of a documented type, nothing written.
    let before = us.fingerprint().await;
    let seventeen: Vec<Value> = (0..17).map(|_| leg("world", "alice", 1)).collect();
    let cases: Vec<(Value, u16, &str)> = vec![
        (serde_json::json!({"legs": []}), 400, "invalid-field"),
        (serde_json::json!({"legs": seventeen}), 400, "invalid-field"),
        (serde_json::json!({}), 400, "missing-field"),
        (serde_json::json!({"legs": [leg("world", "alice", 1)], "memo": 1}), 400, "unknown-field"),
        (serde_json::json!({"legs": [{"from": "world", "to": "alice", "amount": 1}]}), 400, "missing-field"),
        (
            serde_json::json!({"legs": [{"from": "world", "to": "alice", "amount": 1, "currency": "USD", "x": 1}]}),
            400,
            "unknown-field",
        ),
        (serde_json::json!({"legs": [leg("world", "alice", 1), leg("bad id", "alice", 1)]}), 400, "invalid-account-id"),
        (serde_json::json!({"legs": [leg("world", "alice", 0)]}), 400, "invalid-amount"),
        (
            serde_json::json!({"legs": [leg("world", "alice", 1), leg("world", "alice", ledger_core::AMOUNT_MAX + 1)]}),
            400,
            "amount-out-of-range",
        ),
        (
            serde_json::json!({"legs": [{"from": "world", "to": "alice", "amount": 1, "currency": "usd"}]}),
            400,
            "invalid-currency",
        ),
        (serde_json::json!({"legs": [leg("world", "alice", 1), leg("alice", "alice", 1)]}), 422, "same-account"),
        (serde_json::json!({"legs": [leg("world", "alice", 1), leg("alice", "nobody", 1)]}), 404, "account-not-found"),
        (serde_json::json!({"legs": [leg("world", "alice", 1), leg("alice", "euros", 1)]}), 422, "currency-mismatch"),
        (serde_json::json!({"legs": [leg("alice", "shop", 1_000_000_000)]}), 409, "insufficient-funds"),
    ];
    for (body, status, problem) in cases {
        let r = us.post("/v1/transactions", body.clone()).await;
        assert_eq!((r.status, r.problem()), (status, problem), "{body}: {}", r.body);
    }
    // A key reused with another body, and the read route's refusals.
    let r = eu
        .send(
            reqwest::Method::POST,
            "/v1/transactions",
            Some(&eu.write_key),
            Some(serde_json::json!({"legs": [leg("world", "alice", 1)]})),
            &[("Idempotency-Key", "pay-1")],
        )
        .await;
    assert_eq!((r.status, r.problem()), (409, "idempotency-key-reused"));
    let r = us.get("/v1/transactions/not-a-uuid").await;
    assert_eq!((r.status, r.problem()), (400, "invalid-field"));
    let r = us.get(&format!("/v1/transactions/{}", uuid::Uuid::new_v4())).await;
    assert_eq!((r.status, r.problem()), (404, "transaction-not-found"));
    let r = us
        .send(
            reqwest::Method::POST,
            "/v1/transactions",
            Some(&us.read_key),
            Some(serde_json::json!({"legs": [leg("world", "alice", 1)]})),
            &[],
        )
        .await;
    assert_eq!((r.status, r.problem()), (403, "forbidden"));
    assert_eq!(us.fingerprint().await, before, "refused requests wrote nothing");
}

async fn account(node: &TestNode, id: &str) -> Value {
    let r = node.get(&format!("/v1/accounts/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// `(balance, pending_debits, pending_credits, available)`.
fn amounts(a: &Value) -> (i64, i64, i64, i64) {
    let n = |k: &str| a[k].as_i64().unwrap();
    (n("balance"), n("pending_debits"), n("pending_credits"), n("available"))
}

async fn keyed(node: &TestNode, path: &str, body: Value, key: &str) -> common::Reply {
    node.send(reqwest::Method::POST, path, Some(&node.write_key), Some(body), &[("Idempotency-Key", key)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_transfers_settle_across_regions_and_a_post_racing_a_void_has_one_outcome() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start_with(false, |cfg| cfg.pending_expiry_scan_ms = 200).await;
    let (us, eu, ap) = (0, 1, 2);
    cluster.nodes[us].open("world", "USD", true).await;
    cluster.nodes[us].open("card", "USD", false).await;
    cluster.nodes[us].open("shop", "USD", false).await;
    assert_eq!(cluster.nodes[us].transfer("world", "card", 100).await.status, 201);
    cluster.converged(Duration::from_secs(120)).await;

    // A hold in us-east: available drops, the balance does not, and the reserve cannot be spent.
    let hold = keyed(
        &cluster.nodes[us],
        "/v1/transfers",
        serde_json::json!({"from": "card", "to": "shop", "amount": 60, "pending": true}),
        "hold-1",
    )
    .await;
    assert_eq!((hold.status, &hold.body["status"]), (201, &serde_json::json!("pending")), "{}", hold.body);
    let hold_id = hold.body["id"].as_str().unwrap().to_owned();
    assert_eq!(amounts(&account(&cluster.nodes[us], "card").await), (100, 60, 0, 40));
    let r = cluster.nodes[us].transfer("card", "world", 41).await;
    assert_eq!((r.status, r.problem()), (409, "insufficient-funds"));
    cluster.converged(Duration::from_secs(120)).await;
    for i in [us, eu, ap] {
        assert_eq!(amounts(&account(&cluster.nodes[i], "card").await), (100, 60, 0, 40), "region {i}");
        assert_eq!(amounts(&account(&cluster.nodes[i], "shop").await), (0, 0, 60, 0), "region {i}");
    }

    // Posted in another region, in part: 50 moves, the other 10 is released.
    let posted = keyed(
        &cluster.nodes[eu],
        &format!("/v1/transfers/{hold_id}/post"),
        serde_json::json!({"amount": 50}),
        "post-1",
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    assert_eq!(
        (&posted.body["status"], &posted.body["posted_amount"]),
        (&serde_json::json!("posted"), &serde_json::json!(50))
    );
    let again = keyed(
        &cluster.nodes[eu],
        &format!("/v1/transfers/{hold_id}/post"),
        serde_json::json!({"amount": 50}),
        "post-1",
    )
    .await;
    assert_eq!((again.status, again.body.clone()), (201, posted.body.clone()), "a retry replays");
    let r = cluster.nodes[eu].post(&format!("/v1/transfers/{hold_id}/void"), serde_json::json!({})).await;
    assert_eq!((r.status, r.problem()), (409, "transfer-not-pending"));
    cluster.converged(Duration::from_secs(120)).await;
    for i in [us, eu, ap] {
        let n = &cluster.nodes[i];
        assert_eq!(amounts(&account(n, "card").await), (50, 0, 0, 50), "region {i}");
        assert_eq!(amounts(&account(n, "shop").await), (50, 0, 0, 50), "region {i}");
        let t = n.get(&format!("/v1/transfers/{hold_id}")).await.body;
        assert_eq!(
            (&t["status"], &t["posted_amount"], &t["pending"]),
            (&serde_json::json!("posted"), &serde_json::json!(50), &serde_json::json!(true)),
            "region {i}"
        );
        let leg = t["posted_transfer_ids"][0].as_str().unwrap();
        assert_eq!(
            n.get(&format!("/v1/transfers/{leg}")).await.body["amount"],
            50,
            "region {i}: the post is a transfer"
        );
        // The hold was posted elsewhere: posting it here too is refused.
        let r = n.post(&format!("/v1/transfers/{hold_id}/post"), serde_json::json!({})).await;
        assert_eq!((r.status, r.problem()), (409, "transfer-not-pending"), "region {i}");
    }

    // A post racing a void: with replication paused, eu-west posts while ap-south voids.
    let race = cluster.nodes[us]
        .post("/v1/transfers", serde_json::json!({"from": "card", "to": "shop", "amount": 20, "pending": true}))
        .await;
    let race_id = race.body["id"].as_str().unwrap().to_owned();
    cluster.converged(Duration::from_secs(120)).await;
    cluster.pause().await;
    let p = cluster.nodes[eu].post(&format!("/v1/transfers/{race_id}/post"), serde_json::json!({})).await;
    let v = cluster.nodes[ap].post(&format!("/v1/transfers/{race_id}/void"), serde_json::json!({})).await;
    assert_eq!((p.status, v.status), (201, 201), "{} {}", p.body, v.body);
    assert_eq!((&p.body["status"], &v.body["status"]), (&serde_json::json!("posted"), &serde_json::json!("voided")));
    cluster.resume().await;
    cluster.converged(Duration::from_secs(120)).await;
    let mut outcomes = Vec::new();
    for i in [us, eu, ap] {
        let n = &cluster.nodes[i];
        let t = n.get(&format!("/v1/transfers/{race_id}")).await.body;
        assert_eq!(
            (&t["status"], &t["posted_amount"]),
            (&serde_json::json!("posted"), &serde_json::json!(20)),
            "region {i}: the post stands"
        );
        assert_eq!(
            amounts(&account(n, "card").await),
            (30, 0, 0, 30),
            "region {i}: reserve released once, money moved once"
        );
        let races: Vec<Value> =
            cluster.conflicts(i).await.into_iter().filter(|c| c["kind"] == "pending-settlement").collect();
        assert_eq!(races.len(), 1, "region {i}: {races:?}");
        assert_eq!(races[0]["events"].as_array().unwrap().len(), 2);
        outcomes.push((t["status"].clone(), races[0]["conflict_id"].clone()));
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "one outcome everywhere: {outcomes:?}");
    let contents = cluster.conflict_contents(0).await;
    for i in 1..3 {
        assert_eq!(cluster.conflict_contents(i).await, contents, "region {i}");
    }

    // Expiry: 120 holds with a one-second deadline in ap-south, more than one scan voids (100):
    // the region that made them voids them all; a post after the deadline is refused anywhere.
    let mut expiring = Vec::new();
    for k in 0..120 {
        let r = cluster.nodes[ap]
            .post(
                "/v1/transfers",
                serde_json::json!({"from": "world", "to": "shop", "amount": 1 + k, "pending": true, "timeout_s": 1}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        expiring.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shop = account(&cluster.nodes[ap], "shop").await;
        if shop["pending_credits"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "holds never expired: {shop}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = cluster.nodes[us].post(&format!("/v1/transfers/{}/post", expiring[0]), serde_json::json!({})).await;
    assert_eq!((r.status, r.problem()), (409, "transfer-not-pending"), "{}", r.body);
    cluster.converged(Duration::from_secs(120)).await;
    for i in [us, eu, ap] {
        let n = &cluster.nodes[i];
        for id in [&expiring[0], &expiring[119]] {
            assert_eq!(n.get(&format!("/v1/transfers/{id}")).await.body["status"], "expired", "region {i}");
        }
        assert_eq!(amounts(&account(n, "shop").await), (70, 0, 0, 70), "region {i}");
        assert_eq!(amounts(&account(n, "world").await).1, 0, "region {i}");
        common::assert_ledger_consistent(&n.db.pool).await;
    }

    // Bad input: a problem of a documented type each, nothing written.
    let n = &cluster.nodes[us];
    let open =
        n.post("/v1/transfers", serde_json::json!({"from": "card", "to": "shop", "amount": 5, "pending": true})).await;
    let open_id = open.body["id"].as_str().unwrap().to_owned();
    let plain = n.transfer("world", "card", 1).await.body["id"].as_str().unwrap().to_owned();
    let before = n.fingerprint().await;
    let cases: Vec<(String, Value, u16, &str)> = vec![
        (
            "/v1/transfers".into(),
            serde_json::json!({"from": "card", "to": "shop", "amount": 5, "pending": true, "timeout_s": 0}),
            400,
            "invalid-field",
        ),
        (
            "/v1/transfers".into(),
            serde_json::json!({"from": "card", "to": "shop", "amount": 5, "pending": true, "timeout_s": 2_592_001}),
            400,
            "invalid-field",
        ),
        (
            "/v1/transfers".into(),
            serde_json::json!({"from": "card", "to": "shop", "amount": 5, "timeout_s": 10}),
            400,
            "invalid-field",
        ),
        (
            "/v1/transfers".into(),
            serde_json::json!({"from": "card", "to": "shop", "amount": 5, "pending": "yes"}),
            400,
            "invalid-field",
        ),
        (
            "/v1/transfers".into(),
            serde_json::json!({"from": "card", "to": "shop", "amount": 27, "pending": true}),
            409,
            "insufficient-funds",
        ),
        (
            "/v1/transfers".into(),
            serde_json::json!({"from": "card", "to": "card", "amount": 1, "pending": true}),
            422,
            "same-account",
        ),
        (
            "/v1/transfers".into(),
            serde_json::json!({"from": "card", "to": "nobody", "amount": 1, "pending": true}),
            404,
            "account-not-found",
        ),
        (
            "/v1/transfers".into(),
            serde_json::json!({"from": "world", "to": "card", "amount": ledger_core::AMOUNT_MAX + 1, "pending": true}),
            400,
            "amount-out-of-range",
        ),
        (format!("/v1/transfers/{open_id}/post"), serde_json::json!({"amount": 6}), 422, "post-exceeds-pending"),
        (format!("/v1/transfers/{open_id}/post"), serde_json::json!({"amount": 0}), 400, "invalid-amount"),
        (format!("/v1/transfers/{open_id}/post"), serde_json::json!({"amount": 1, "memo": "x"}), 400, "unknown-field"),
        (format!("/v1/transfers/{open_id}/void"), serde_json::json!({"reason": "x"}), 400, "unknown-field"),
        (format!("/v1/transfers/{plain}/post"), serde_json::json!({}), 409, "transfer-not-pending"),
        (format!("/v1/transfers/{}/void", uuid::Uuid::new_v4()), serde_json::json!({}), 404, "transfer-not-found"),
        ("/v1/transfers/not-a-uuid/void".into(), serde_json::json!({}), 400, "invalid-field"),
    ];
    for (path, body, status, problem) in cases {
        let r = n.post(&path, body.clone()).await;
        assert_eq!((r.status, r.problem()), (status, problem), "{path} {body}: {}", r.body);
    }
    let r = keyed(n, &format!("/v1/transfers/{open_id}/void"), serde_json::json!({}), "hold-1").await;
    assert_eq!((r.status, r.problem()), (409, "idempotency-key-reused"), "a key answers for one request");
    assert_eq!(n.fingerprint().await, before, "refused requests wrote nothing");
    // The largest hold a funding account can make, posted whole.
    let big = n
        .post(
            "/v1/transfers",
            serde_json::json!({"from": "world", "to": "sink", "amount": ledger_core::AMOUNT_MAX, "pending": true}),
        )
        .await;
    assert_eq!((big.status, big.problem()), (404, "account-not-found"));
    n.open("sink", "USD", true).await;
    let big = n
        .post(
            "/v1/transfers",
            serde_json::json!({"from": "world", "to": "sink", "amount": ledger_core::AMOUNT_MAX, "pending": true}),
        )
        .await;
    let big_id = big.body["id"].as_str().unwrap().to_owned();
    let r = n.post(&format!("/v1/transfers/{big_id}/post"), serde_json::json!({})).await;
    assert_eq!((r.status, &r.body["posted_amount"]), (201, &serde_json::json!(ledger_core::AMOUNT_MAX)));
    common::assert_ledger_consistent(&n.db.pool).await;
}
