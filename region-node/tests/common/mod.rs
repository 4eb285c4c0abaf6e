//! Shared by the region-node integration tests: a node on testkit's real PostgreSQL and Kafka, with
//! its own database and topic prefix, plus HTTP helpers and a fingerprint of everything stored.

#![allow(dead_code)]

pub mod cluster;

use region_node::config::NodeConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A running node and what a test needs to talk to it.
pub struct TestNode {
    pub node: Option<region_node::Node>,
    pub base: String,
    pub write_key: String,
    pub read_key: String,
    pub db: testkit::TestDb,
    pub region: testkit::Region,
    pub prefix: String,
    pub cfg: NodeConfig,
    pub http: reqwest::Client,
}

/// A response: status, headers, JSON body (Null if not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The problem type's slug, asserting the problem media type.
    pub fn problem(&self) -> &str {
        let ct = self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(ct, "application/problem+json", "problem responses use the problem media type: {}", self.body);
        self.body["type"]
            .as_str()
            .and_then(|t| t.strip_prefix(region_node::problem::TYPE_BASE))
            .expect("a problem type")
    }
}

/// Starts a node on fresh storage; `tune` adjusts the configuration first.
pub async fn start(tune: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let region = testkit::regions(1)[0].clone();
    let prefix = testkit::unique_prefix();
    region.create_topics(&prefix).await;
    start_on(region, prefix, tune).await
}

/// Starts a node of `region` on a fresh database, with topics under `prefix` (already created).
pub async fn start_on(region: testkit::Region, prefix: String, tune: impl FnOnce(&mut NodeConfig)) -> TestNode {
    // As the binary does: logs and tracing (so requests carry a traceparent); once per process.
    std::mem::forget(region_node::telemetry::init_for_tests(None));
    let db = region.fresh_database().await;
    let write_key = format!("test-write-{}", uuid::Uuid::new_v4());
    let mut cfg = NodeConfig {
        region: region.name().to_owned(),
        http_addr: "127.0.0.1:0".into(),
        database_url: db.url.clone(),
        kafka_bootstrap: region.kafka_bootstrap().to_owned(),
        topic_prefix: prefix.clone(),
        bootstrap_api_key: write_key.clone(),
        snapshot_every_ms: 300,
        ..NodeConfig::default()
    };
    tune(&mut cfg);
    let write_key = cfg.bootstrap_api_key.clone();
    let node = region_node::start(cfg.clone()).await.expect("node starts");
    let read_key = format!("test-read-{}", uuid::Uuid::new_v4());
    region_node::api::auth_ensure_key(&db.pool, "reader", &read_key, &["read"]).await.unwrap();
    let base = format!("http://{}", node.addr());
    TestNode { node: Some(node), base, write_key, read_key, db, region, prefix, cfg, http: reqwest::Client::new() }
}

impl TestNode {
    pub fn topic(&self) -> String {
        ledger_schema::events_topic(&self.prefix)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(&self.write_key), Some(body), &[]).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, Some(&self.read_key), None, &[]).await
    }

    /// Opens an account; an opening is idempotent by its attributes, so one retried after a 503
    /// (a timeout on a loaded machine) and found made answers 200.
    pub async fn open(&self, id: &str, currency: &str, allow_negative: bool) {
        let body = json!({"id": id, "currency": currency, "allow_negative": allow_negative});
        let (status, reply) =
            post_decided(&self.http, &format!("{}/v1/accounts", self.base), &self.write_key, &body).await;
        assert!(status == 201 || status == 200, "opening {id}: {status} {reply}");
    }

    /// A transfer sent as a careful client sends it (see [`post_decided`]).
    pub async fn transfer(&self, from: &str, to: &str, amount: i64) -> Reply {
        let body = json!({"from": from, "to": to, "amount": amount});
        post_decided_reply(&self.http, &format!("{}/v1/transfers", self.base), &self.write_key, &body).await
    }

    pub async fn balance(&self, id: &str) -> i64 {
        let r = self.get(&format!("/v1/accounts/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["balance"].as_i64().unwrap()
    }

    /// Everything the ledger stores, to prove a rejected request wrote nothing.
    pub async fn fingerprint(&self) -> Value {
        let counts: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM ledger_events), (SELECT count(*) FROM outbox),
                    (SELECT count(*) FROM transfers), (SELECT count(*) FROM entries), (SELECT count(*) FROM idempotency_keys)",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        let balances: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT id, balance, entry_seq FROM accounts ORDER BY id")
                .fetch_all(&self.db.pool)
                .await
                .unwrap();
        json!({ "counts": [counts.0, counts.1, counts.2, counts.3, counts.4, counts.5], "balances": balances })
    }

    /// Waits until the read models have applied every entry of every account, and returns the
    /// (account, view balance, authoritative balance) triples.
    pub async fn wait_read_models(&self, timeout: Duration) -> Vec<(String, i64, i64)> {
        let deadline = Instant::now() + timeout;
        loop {
            // (account, view balance, balance, entries, entries applied by the view)
            type Row = (String, Option<i64>, i64, i64, Option<i64>);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT a.id, v.balance, a.balance, a.entry_seq, v.entries_applied
                 FROM accounts a LEFT JOIN rm_balances v ON v.account_id = a.id ORDER BY a.id",
            )
            .fetch_all(&self.db.pool)
            .await
            .unwrap();
            let caught_up =
                rows.iter().all(|(_, view, _, seq, applied)| view.is_some() && applied.unwrap_or(0) == *seq);
            if caught_up {
                return rows.into_iter().map(|(id, view, auth, _, _)| (id, view.unwrap_or(0), auth)).collect();
            }
            assert!(Instant::now() < deadline, "read models did not catch up: {rows:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// Attempts `post_decided` makes before it gives up on a node.
const DECIDED_ATTEMPTS_MAX: u32 = 30;

/// Posts `body` to `url` as a careful client does: with an `Idempotency-Key`, sent again with the
/// same key while the answer leaves the outcome open (a transport error, or a 503: a request that
/// outlives `request_timeout_ms` on a loaded machine is answered so, and may still commit after).
/// Returns the decided status and body, so a test counting 201s counts exactly the postings made.
pub async fn post_decided(http: &reqwest::Client, url: &str, api_key: &str, body: &Value) -> (u16, Value) {
    let reply = post_decided_reply(http, url, api_key, body).await;
    (reply.status, reply.body)
}

/// [`post_decided`], with the decided answer's headers.
pub async fn post_decided_reply(http: &reqwest::Client, url: &str, api_key: &str, body: &Value) -> Reply {
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let mut last = String::new();
    for attempt in 0..DECIDED_ATTEMPTS_MAX {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
        }
        let sent =
            http.post(url).bearer_auth(api_key).header("Idempotency-Key", &idempotency_key).json(body).send().await;
        match sent {
            Ok(r) if r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                let (status, headers) = (r.status().as_u16(), r.headers().clone());
                return Reply { status, headers, body: r.json().await.unwrap_or(Value::Null) };
            }
            Ok(r) => last = format!("503 {}", r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
    }
    panic!("{url} left {body} undecided after {DECIDED_ATTEMPTS_MAX} attempts: {last}");
}

/// Every account's balance equals the sum of its entries, its entry count matches, and every
/// transfer has exactly its two entries: nothing is ever half-written.
pub async fn assert_ledger_consistent(pool: &sqlx::PgPool) {
    let bad: Vec<(String, i64, i64)> = sqlx::query_as(
        // Money kept apart in another currency (after an account-definition conflict) has entries too.
        "SELECT a.id, a.balance, COALESCE(sum(e.amount), 0)::bigint FROM accounts a LEFT JOIN entries e ON e.account_id = a.id
         GROUP BY a.id, a.balance, a.entry_seq, a.foreign_balances
         HAVING a.balance + (SELECT COALESCE(sum(f.value::bigint), 0) FROM jsonb_each_text(a.foreign_balances) f)
                    <> COALESCE(sum(e.amount), 0)
             OR a.entry_seq <> count(e.seq)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(bad.is_empty(), "accounts whose balance disagrees with their entries: {bad:?}");
    let half: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transfers t WHERE (SELECT count(*) FROM entries e WHERE e.transfer_id = t.id) <> 2",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(half, 0, "transfers without exactly two entries");
    // A transaction is whole or absent: legs 0..n-1, each once, all from one event.
    let partial: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM transfers WHERE transaction_id IS NOT NULL GROUP BY transaction_id
                               HAVING count(*) <> max(leg) + 1 OR count(DISTINCT leg) <> count(*) OR count(DISTINCT event_id) <> 1) p",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(partial, 0, "transactions with a leg missing or doubled");
    // Every account's pending amounts are what its unsettled pending transfers reserve.
    let reserved: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.id, a.pending_debits, a.pending_credits FROM accounts a
         WHERE a.pending_debits <> (SELECT COALESCE(sum(p.amount), 0) FROM pending_transfers p WHERE p.from_account = a.id AND p.status = 'pending')
            OR a.pending_credits <> (SELECT COALESCE(sum(p.amount), 0) FROM pending_transfers p WHERE p.to_account = a.id AND p.status = 'pending')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(reserved.is_empty(), "pending amounts that no pending transfer holds: {reserved:?}");
    // The write path keeps these references without foreign keys (migration 0004): checked here.
    let orphans: Vec<(String, i64)> = sqlx::query_as(
        "SELECT 'entry without transfer', count(*) FROM entries e WHERE NOT EXISTS (SELECT 1 FROM transfers t WHERE t.id = e.transfer_id)
         UNION ALL SELECT 'entry without account', count(*) FROM entries e WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = e.account_id)
         UNION ALL SELECT 'transfer without event', count(*) FROM transfers t WHERE NOT EXISTS (SELECT 1 FROM ledger_events v WHERE v.event_id = t.event_id)
         UNION ALL SELECT 'transfer without account', count(*) FROM transfers t
             WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.from_account) OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.to_account)
         UNION ALL SELECT 'outbox record without event', count(*) FROM outbox_records o WHERE NOT EXISTS (SELECT 1 FROM ledger_events v WHERE v.event_id = o.event_id)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(orphans.iter().all(|(_, n)| *n == 0), "rows pointing at nothing: {orphans:?}");
    // Per currency: an account's balance in its own, and what it keeps apart in others.
    let totals: Vec<(String, i64)> = sqlx::query_as(
        "SELECT currency, sum(amount)::bigint FROM (
             SELECT currency, balance AS amount FROM accounts
             UNION ALL SELECT f.key, f.value::bigint FROM accounts a, jsonb_each_text(a.foreign_balances) f
         ) t GROUP BY currency HAVING sum(amount) <> 0",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(totals.is_empty(), "money is neither created nor destroyed in any currency: {totals:?}");
}
