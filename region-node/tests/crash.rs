//! kill -9 of the node process during a load, then a restart: every acknowledged transfer is in
//! PostgreSQL and reaches the read models exactly once, and nothing unacknowledged is half-written.

mod common;

use common::assert_ledger_consistent;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    base: String,
}

fn spawn_node(db_url: &str, bootstrap: &str, prefix: &str, key: &str, port: u16) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_region-node"))
        .env("LEDGER_NODE_REGION", "us-east")
        .env("LEDGER_NODE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LEDGER_NODE_DATABASE_URL", db_url)
        .env("LEDGER_NODE_KAFKA_BOOTSTRAP", bootstrap)
        .env("LEDGER_NODE_TOPIC_PREFIX", prefix)
        .env("LEDGER_NODE_BOOTSTRAP_API_KEY", key)
        .env("LEDGER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting region-node");
    Proc { child, base: format!("http://127.0.0.1:{port}") }
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "node at {base} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_transfer() {
    let region = testkit::regions(1)[0].clone();
    let db = region.fresh_database().await;
    let prefix = testkit::unique_prefix();
    region.create_topics(&prefix).await;
    let key = format!("crash-{}", uuid::Uuid::new_v4());
    let port = testkit::free_port();
    let http = reqwest::Client::new();
    let mut node = spawn_node(&db.url, region.kafka_bootstrap(), &prefix, &key, port);
    wait_ready(&http, &node.base).await;

    let post = |path: &'static str, body: Value| {
        let (http, base, key) = (http.clone(), node.base.clone(), key.clone());
        async move { http.post(format!("{base}{path}")).bearer_auth(key).json(&body).send().await }
    };
    assert_eq!(
        post("/v1/accounts", json!({"id": "world", "currency": "USD", "allow_negative": true})).await.unwrap().status(),
        201
    );
    for i in 0..20 {
        assert_eq!(
            post("/v1/accounts", json!({"id": format!("acc{i}"), "currency": "USD"})).await.unwrap().status(),
            201
        );
    }

    // Load: 8 workers posting transfers with idempotency keys; each records what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (http, base, key, stop) = (http.clone(), node.base.clone(), key.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let idem = format!("w{w}-{n}");
                let body = json!({"from": "world", "to": format!("acc{}", (w * 7 + n) % 20), "amount": 1 + n % 50});
                let sent = http
                    .post(format!("{base}/v1/transfers"))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", &idem)
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 201 => {
                        acked.push((idem, r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()))
                    }
                    _ => failed.push((idem, body)),
                }
            }
            (acked, failed)
        }));
    }
    // Kill once the load has been committing for a while (not after a fixed time).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers").fetch_one(&db.pool).await.unwrap();
        if committed >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "the load never got going: {committed} transfers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.child.kill().unwrap(); // SIGKILL
    node.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    for w in workers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed.extend(f);
    }
    assert!(acked.len() > 50, "the load was acknowledged before the kill: {}", acked.len());
    assert!(!failed.is_empty(), "some requests were cut by the kill");

    // Restart on the same database and topic.
    node = spawn_node(&db.url, region.kafka_bootstrap(), &prefix, &key, port);
    wait_ready(&http, &node.base).await;

    // Every acknowledged transfer is durable and readable.
    let stored: std::collections::HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM transfers")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    for (idem, id) in &acked {
        assert!(stored.contains(id), "acknowledged transfer {id} ({idem}) lost");
    }
    // Nothing half-written, money conserved.
    assert_ledger_consistent(&db.pool).await;

    // Retrying every cut request with the same body and key, as a client must: each is applied
    // exactly once (the cut ones that had committed replay, the others run now), never twice.
    for (idem, body) in &failed {
        let r = http
            .post(format!("{}/v1/transfers", node.base))
            .bearer_auth(&key)
            .header("Idempotency-Key", idem)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "retry of {idem}");
    }
    for (idem, _) in acked.iter().take(20) {
        let body = json!({"from": "world", "to": "acc0", "amount": 1});
        let r = http.post(format!("{}/v1/transfers", node.base)).bearer_auth(&key).header("Idempotency-Key", idem);
        let r = r.json(&body).send().await.unwrap();
        assert_eq!(r.status(), 409, "{idem} reused with another body");
    }
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, count(*) FROM transfers WHERE idempotency_key IS NOT NULL
         GROUP BY idempotency_key HAVING count(*) > 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(twice.is_empty(), "keys applied more than once: {twice:?}");
    let keyed: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers WHERE idempotency_key IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(keyed as usize, acked.len() + failed.len(), "every request applied exactly once after its retry");
    assert_ledger_consistent(&db.pool).await;

    // The read models converge to the authoritative state, each entry applied once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM accounts a LEFT JOIN rm_balances v ON v.account_id = a.id
             WHERE v.account_id IS NULL OR v.balance <> a.balance OR v.entries_applied <> a.entry_seq",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if behind == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{behind} accounts' read models never converged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (view_entries, entries): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM rm_entries), (SELECT count(*) FROM entries)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(view_entries, entries, "each entry reached the read models exactly once");
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&db.pool).await.unwrap();
    assert_eq!(unpublished, 0);
    node.child.kill().unwrap();
    node.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_and_flushes_the_outbox() {
    let region = testkit::regions(1)[0].clone();
    let db = region.fresh_database().await;
    let prefix = testkit::unique_prefix();
    region.create_topics(&prefix).await;
    let key = format!("term-{}", uuid::Uuid::new_v4());
    let http = reqwest::Client::new();
    let mut node = spawn_node(&db.url, region.kafka_bootstrap(), &prefix, &key, testkit::free_port());
    wait_ready(&http, &node.base).await;
    let post = |body: Value, path: &str| http.post(format!("{}{path}", node.base)).bearer_auth(&key).json(&body).send();
    assert_eq!(
        post(json!({"id": "world", "currency": "USD", "allow_negative": true}), "/v1/accounts").await.unwrap().status(),
        201
    );
    assert_eq!(post(json!({"id": "alice", "currency": "USD"}), "/v1/accounts").await.unwrap().status(), 201);
    for _ in 0..20 {
        assert_eq!(
            post(json!({"from": "world", "to": "alice", "amount": 5}), "/v1/transfers").await.unwrap().status(),
            201
        );
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(node.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = tokio::task::spawn_blocking(move || node.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&db.pool).await.unwrap();
    assert_eq!(unpublished, 0, "the publisher flushed before exiting");
}
