//! Balance monitors and their webhooks, on real engines, with receivers on loopback only:
//! - three regions: a monitor in one region fires once per crossing for money moved in any
//!   region, signed (the HMAC is checked here), and never when the balance does not cross;
//! - a receiver failing a few times gets the same delivery id until it answers 2xx; one always
//!   failing ends in the dead letters after `webhook_attempts_max` attempts, and a retry by hand
//!   delivers it with the same id;
//! - a node killed with SIGKILL mid-delivery redelivers after its restart, and a receiver that
//!   dedupes by delivery id processes each exactly once;
//! - bad input on every route is its problem type and writes nothing; page sizes at their bound.

mod common;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use common::cluster::Cluster;
use common::{TestNode, start};
use hmac::{Hmac, Mac};
use ledger_core::monitor::{Condition, delivery_id};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "receiver-shared-secret-0123456789";

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    path: String,
    body: Value,
}

/// A webhook receiver on 127.0.0.1 that checks every signature and dedupes by delivery id.
/// Paths choose its behaviour: `/ok` answers 200; `/flaky/<n>` answers 500 to the first `n`
/// requests of each delivery id, then 200; `/fail` answers 500 until healed; `/hold` processes a
/// new delivery and then holds its answer (a node killed meanwhile never hears it), and answers
/// a duplicate at once.
#[derive(Clone, Default)]
struct Receiver {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// Delivery ids processed (the receiver's side effect, once per id).
    processed: BTreeMap<String, u32>,
    seen_per_path: HashMap<(String, String), u32>,
    healed: bool,
    bad_signatures: u32,
}

fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (timestamp, signature) = (header("ledger-webhook-timestamp"), header("ledger-webhook-signature"));
    let Ok(ts) = timestamp.parse::<i64>() else { return false };
    // A receiver refuses old timestamps (replays); five minutes, as is usual.
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let Some(hex_sig) = signature.strip_prefix("v1=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    mac.verify_slice(&sig).is_ok()
}

async fn receive(State(r): State<Receiver>, Path(path): Path<String>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers.get("ledger-webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (status, hold) = {
        let mut inner = r.inner.lock().unwrap();
        if !verify(&headers, &body) {
            inner.bad_signatures += 1;
            return StatusCode::UNAUTHORIZED;
        }
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        inner.received.push(Received { id: id.clone(), path: path.clone(), body: parsed });
        let seen = {
            let n = inner.seen_per_path.entry((path.clone(), id.clone())).or_default();
            *n += 1;
            *n
        };
        let fail = match path.split_once('/') {
            Some(("flaky", n)) => seen <= n.parse::<u32>().unwrap(),
            _ => path == "fail" && !inner.healed,
        };
        if fail {
            (StatusCode::INTERNAL_SERVER_ERROR, false)
        } else {
            let new = !inner.processed.contains_key(&id);
            *inner.processed.entry(id.clone()).or_default() += u32::from(new);
            (StatusCode::OK, path == "hold" && new)
        }
    };
    if hold {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    status
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let app = axum::Router::new().route("/{*path}", axum::routing::post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, base)
    }

    fn received(&self, path: &str) -> Vec<Received> {
        self.inner.lock().unwrap().received.iter().filter(|r| r.path == path).cloned().collect()
    }

    fn processed(&self) -> BTreeMap<String, u32> {
        self.inner.lock().unwrap().processed.clone()
    }

    async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received(path);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{path}: {} of {n} requests after {timeout:?}: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn create_monitor(node: &TestNode, account: &str, condition: &str, url: &str) -> Value {
    let r = node
        .post("/v1/monitors", json!({"account": account, "condition": condition, "url": url, "secret": SECRET}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(!r.body.to_string().contains(SECRET), "the secret is never returned");
    r.body
}

async fn event_of(node: &TestNode, transfer: &Value) -> uuid::Uuid {
    let id: uuid::Uuid = transfer["id"].as_str().unwrap().parse().unwrap();
    sqlx::query_scalar("SELECT event_id FROM transfers WHERE id = $1").bind(id).fetch_one(&node.db.pool).await.unwrap()
}

async fn wait_balance(node: &TestNode, account: &str, balance: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = node.get(&format!("/v1/accounts/{account}")).await;
        if r.status == 200 && r.body["balance"] == balance {
            return;
        }
        assert!(Instant::now() < deadline, "{account} never reached {balance} at {}: {}", node.base, r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn deliveries(node: &TestNode, monitor: &Value) -> Vec<Value> {
    let r = node.get(&format!("/v1/monitors/{}/deliveries", monitor["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["deliveries"].as_array().unwrap().clone()
}

async fn wait_state(node: &TestNode, monitor: &Value, state: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = deliveries(node, monitor).await;
        if all.len() == n && all.iter().all(|d| d["state"] == state) {
            return all;
        }
        assert!(Instant::now() < deadline, "never {n} {state}: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fast_retries(cfg: &mut region_node::config::NodeConfig) {
    cfg.webhook_allow_private_targets = true;
    cfg.webhook_attempts_max = 3;
    cfg.webhook_backoff_ms_base = 20;
    cfg.webhook_backoff_ms_max = 100;
    cfg.webhook_timeout_ms = 5_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_monitor_fires_once_per_crossing_for_money_moved_in_any_region_signed_and_retried() {
    let cluster = Cluster::start_with(false, fast_retries).await;
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let (receiver, url) = Receiver::start().await;
    a.open("world", "USD", true).await;
    a.open("alice", "USD", false).await;
    let monitor = create_monitor(a, "alice", "balance  <100", &format!("{url}/ok")).await;
    assert_eq!(monitor["condition"], "balance < 100", "stored in canonical form");
    // 0 → 500: the condition held before (0 < 100) and not after: no edge.
    assert_eq!(a.transfer("world", "alice", 500).await.status, 201);
    for node in [b, c] {
        wait_balance(node, "alice", 500).await;
    }
    // Region B: 500 → 50 crosses; the monitor in A fires when A applies it.
    let first = b.transfer("alice", "world", 450).await;
    assert_eq!(first.status, 201, "{}", first.body);
    wait_balance(a, "alice", 50).await;
    // Region A: 50 → 60 stays below (no edge), 60 → 160 leaves (no edge).
    assert_eq!(a.transfer("world", "alice", 10).await.status, 201);
    assert_eq!(a.transfer("world", "alice", 100).await.status, 201);
    for node in [b, c] {
        wait_balance(node, "alice", 160).await;
    }
    // Region C: 160 → 60 crosses again.
    let second = c.transfer("alice", "world", 100).await;
    assert_eq!(second.status, 201, "{}", second.body);
    wait_balance(a, "alice", 60).await;
    // Region A itself: 60 → 160 → 90 crosses a third time, in the committer's statement.
    assert_eq!(a.transfer("world", "alice", 100).await.status, 201);
    let third = a.transfer("alice", "world", 70).await;
    assert_eq!(third.status, 201);

    let got = receiver.wait_for("ok", 3, Duration::from_secs(60)).await;
    // Anything else would have arrived by now: every region has applied everything.
    cluster.converged(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_after = receiver.received("ok");
    assert_eq!(got_after.len(), 3, "exactly one delivery per crossing, none without one: {got_after:?}");
    assert_eq!(receiver.inner.lock().unwrap().bad_signatures, 0, "every signature verifies");
    let monitor_id: uuid::Uuid = monitor["id"].as_str().unwrap().parse().unwrap();
    let expected = [(first.body.clone(), b, 50), (second.body.clone(), c, 60), (third.body.clone(), a, 90)];
    // Up to `webhook_batch_max` attempts are in flight at once, so crossings applied in one round
    // may arrive in any order: each is found by the id computed here.
    for (transfer, origin, balance) in expected {
        let event = event_of(origin, &transfer).await;
        let id = delivery_id(monitor_id, event);
        let request = got
            .iter()
            .find(|r| r.id == id.to_string())
            .unwrap_or_else(|| panic!("no delivery carries the id ledger_core computes ({id}): {got:?}"));
        assert_eq!(request.body["delivery_id"], id.to_string());
        assert_eq!(request.body["event_id"], event.to_string());
        assert_eq!(request.body["monitor_id"], monitor["id"]);
        assert_eq!(request.body["account"], "alice");
        assert_eq!(request.body["condition"], "balance < 100");
        assert_eq!(request.body["balance_after"], balance);
        assert_eq!(request.body["region"], a.cfg.region.as_str());
    }
    let log = wait_state(a, &monitor, "delivered", 3).await;
    for d in &log {
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["attempt_log"][0]["status_code"], 200, "{d}");
    }
    for node in [b, c] {
        let r = node.get("/v1/monitors").await;
        assert_eq!(r.body["monitors"], json!([]), "monitors are regional");
    }

    // A receiver failing twice, with attempts_max 3: the same id three times, delivered at the last.
    a.open("bob", "USD", false).await;
    let flaky = create_monitor(a, "bob", "available >= 1000", &format!("{url}/flaky/2")).await;
    assert_eq!(a.transfer("world", "bob", 1_000).await.status, 201);
    let got = receiver.wait_for("flaky/2", 3, Duration::from_secs(30)).await;
    assert!(got.iter().all(|r| r.id == got[0].id), "every retry carries the same id: {got:?}");
    let done = wait_state(a, &flaky, "delivered", 1).await;
    let codes: Vec<&Value> = done[0]["attempt_log"].as_array().unwrap().iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(200)]);

    // Deleting a monitor stops it firing.
    let r = a
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/monitors/{}", flaky["id"].as_str().unwrap()),
            Some(&a.write_key),
            None,
            &[],
        )
        .await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("deleted")), "{}", r.body);
    assert_eq!(a.transfer("bob", "world", 1_000).await.status, 201);
    assert_eq!(a.transfer("world", "bob", 1_000).await.status, 201);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received("flaky/2").len(), 3, "a deleted monitor fires no more");
    cluster.stop().await;
}

/// `webhook_attempts_max` crossed: 51 attempts, then dead; the log shows the latest 50
/// (`ATTEMPTS_SHOWN_MAX`); a retry by hand delivers it with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_always_fails_ends_in_the_dead_letters_and_a_retry_delivers_it() {
    let node = start(|cfg| {
        fast_retries(cfg);
        cfg.webhook_attempts_max = 51;
        cfg.webhook_backoff_ms_base = 1;
        cfg.webhook_backoff_ms_max = 4;
    })
    .await;
    let (receiver, url) = Receiver::start().await;
    node.open("world", "USD", true).await;
    node.open("dora", "USD", false).await;
    let monitor = create_monitor(&node, "dora", "balance > 0", &format!("{url}/fail")).await;
    assert_eq!(node.transfer("world", "dora", 1).await.status, 201);
    let dead = wait_state(&node, &monitor, "dead", 1).await;
    let got = receiver.received("fail");
    assert_eq!(got.len(), 51, "exactly webhook_attempts_max attempts");
    assert!(got.iter().all(|r| r.id == got[0].id));
    let shown: Vec<i64> =
        dead[0]["attempt_log"].as_array().unwrap().iter().map(|a| a["attempt"].as_i64().unwrap()).collect();
    assert_eq!(shown, (2..=51).collect::<Vec<_>>(), "the latest 50 attempts, oldest first");
    let letters = node.get("/v1/webhook-deliveries").await;
    assert_eq!(letters.body["deliveries"].as_array().unwrap().len(), 1, "{}", letters.body);
    let id = dead[0]["delivery_id"].as_str().unwrap();
    assert_eq!(letters.body["deliveries"][0]["delivery_id"], id);

    receiver.inner.lock().unwrap().healed = true;
    let retried = node.post(&format!("/v1/webhook-deliveries/{id}/retry"), json!({})).await;
    assert_eq!((retried.status, retried.body["state"].as_str()), (200, Some("pending")), "{}", retried.body);
    wait_state(&node, &monitor, "delivered", 1).await;
    assert_eq!(receiver.processed(), BTreeMap::from([(id.to_owned(), 1)]), "the same id, processed once");
    let again = node.post(&format!("/v1/webhook-deliveries/{id}/retry"), json!({})).await;
    assert_eq!((again.status, again.problem()), (409, "delivery-not-dead"));
    let letters = node.get("/v1/webhook-deliveries?state=dead").await;
    assert_eq!(letters.body["deliveries"], json!([]));
    node.stop().await;
}

async fn counts(pool: &sqlx::PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM monitors), (SELECT count(*) FROM webhook_deliveries),
                (SELECT count(*) FROM webhook_attempts)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Every refusal on every new route is its documented problem type and writes nothing; private
/// targets are refused by default (SSRF); pages stop at their bound; the SQL of the edge rule is
/// ledger_core's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_monitor_route_is_a_problem_and_writes_nothing() {
    let node = start(|cfg| cfg.run_webhooks = false).await;
    node.open("erin", "USD", false).await;
    let good =
        json!({"account": "erin", "condition": "balance < 5", "url": "https://hooks.example.com/x", "secret": SECRET});
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let mut without_secret = good.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    let before = (node.fingerprint().await, counts(&node.db.pool).await);
    let refusals: Vec<(Value, u16, &str)> = vec![
        (with("extra", json!(1)), 400, "unknown-field"),
        (without_secret, 400, "missing-field"),
        (with("account", json!("not valid!")), 400, "invalid-account-id"),
        (with("account", json!("nobody")), 404, "account-not-found"),
        (with("condition", json!("balance = 5")), 400, "invalid-condition"),
        (with("condition", json!("pending < 5")), 400, "invalid-condition"),
        (with("condition", json!(format!("balance < {}", ledger_core::BALANCE_MAX + 1))), 400, "invalid-condition"),
        (with("condition", json!(5)), 400, "invalid-field"),
        (with("url", json!("ftp://hooks.example.com/")), 400, "invalid-target-url"),
        (with("url", json!("not a url")), 400, "invalid-target-url"),
        (with("url", json!("http://127.0.0.1:9/")), 400, "invalid-target-url"),
        (with("url", json!("http://169.254.169.254/latest/meta-data")), 400, "invalid-target-url"),
        (with("url", json!("http://localhost/")), 400, "invalid-target-url"),
        (with("url", json!("http://[::1]/")), 400, "invalid-target-url"),
        (with("secret", json!("short")), 400, "invalid-field"),
    ];
    for (body, status, slug) in refusals {
        let r = node.post("/v1/monitors", body.clone()).await;
        assert_eq!((r.status, r.problem()), (status, slug), "{body}: {}", r.body);
    }
    let r = node.send(reqwest::Method::POST, "/v1/monitors", Some(&node.read_key), Some(good.clone()), &[]).await;
    assert_eq!((r.status, r.problem()), (403, "forbidden"));
    let r = node
        .send(
            reqwest::Method::POST,
            "/v1/monitors",
            Some(&node.write_key),
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(r.problem(), "invalid-json");
    let missing = uuid::Uuid::new_v4();
    let gets: Vec<(String, u16, &str)> = vec![
        ("/v1/monitors/nope".into(), 400, "invalid-field"),
        (format!("/v1/monitors/{missing}"), 404, "monitor-not-found"),
        ("/v1/monitors?limit=0".into(), 400, "invalid-query"),
        ("/v1/monitors?limit=501".into(), 400, "invalid-query"),
        ("/v1/monitors?after=-1".into(), 400, "invalid-query"),
        ("/v1/monitors?colour=red".into(), 400, "invalid-query"),
        ("/v1/monitors/nope/deliveries".into(), 400, "invalid-field"),
        (format!("/v1/monitors/{missing}/deliveries"), 404, "monitor-not-found"),
        (format!("/v1/monitors/{missing}/deliveries?limit=x"), 400, "invalid-query"),
        ("/v1/webhook-deliveries?state=lost".into(), 400, "invalid-query"),
        ("/v1/webhook-deliveries?limit=501".into(), 400, "invalid-query"),
    ];
    for (path, status, slug) in gets {
        let r = node.get(&path).await;
        assert_eq!((r.status, r.problem()), (status, slug), "{path}: {}", r.body);
    }
    for (method, path, status, slug) in [
        (reqwest::Method::DELETE, "/v1/monitors/nope".to_owned(), 400, "invalid-field"),
        (reqwest::Method::DELETE, format!("/v1/monitors/{missing}"), 404, "monitor-not-found"),
        (reqwest::Method::POST, "/v1/webhook-deliveries/nope/retry".to_owned(), 400, "invalid-field"),
        (reqwest::Method::POST, format!("/v1/webhook-deliveries/{missing}/retry"), 404, "delivery-not-found"),
    ] {
        let r = node.send(method, &path, Some(&node.write_key), None, &[]).await;
        assert_eq!((r.status, r.problem()), (status, slug), "{path}: {}", r.body);
    }
    let r =
        node.send(reqwest::Method::DELETE, &format!("/v1/monitors/{missing}"), Some(&node.read_key), None, &[]).await;
    assert_eq!(r.problem(), "forbidden");
    assert_eq!((node.fingerprint().await, counts(&node.db.pool).await), before, "refusals wrote nothing");

    // Pages at their bound (PAGE_MAX 500): 501 monitors are two pages.
    for _ in 0..501 {
        let r = node.post("/v1/monitors", good.clone()).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let page = node.get("/v1/monitors?account=erin&limit=500").await;
    assert_eq!(page.body["monitors"].as_array().unwrap().len(), 500);
    let next = page.body["next_after"].as_i64().expect("a full page has a next");
    let rest = node.get(&format!("/v1/monitors?account=erin&limit=500&after={next}")).await;
    assert_eq!(rest.body["monitors"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["next_after"], Value::Null);
    assert!(!page.body.to_string().contains(SECRET), "no GET returns a secret");
    let r = node.get("/v1/monitors?account=nobody").await;
    assert_eq!(r.body["monitors"], json!([]));

    // The edge rule in SQL (migration 0013) is ledger_core's, and so is the delivery id.
    let values = [i64::MIN / 2, -ledger_core::BALANCE_MAX, -6, -5, -4, 0, 4, 5, 6, ledger_core::BALANCE_MAX];
    for condition in
        ["balance < 5", "balance <= 5", "available > -5", "available >= 5", "balance < -4611686018427387904"]
    {
        let c = Condition::parse(condition).unwrap();
        // With and without pending debits (migration 0017's `available`).
        for (v, held_back) in values.into_iter().flat_map(|v| [(v, 0), (v, 5), (v, ledger_core::BALANCE_MAX)]) {
            if v.checked_sub(held_back).is_none() {
                continue;
            }
            let held: bool = sqlx::query_scalar("SELECT monitor_holds($1, $2, monitor_value($3, $4, $5))")
                .bind(c.op.as_str())
                .bind(c.threshold)
                .bind(c.field.as_str())
                .bind(v)
                .bind(held_back)
                .fetch_one(&node.db.pool)
                .await
                .unwrap();
            assert_eq!(held, c.holds(v, held_back), "{condition} at {v} with {held_back} held");
        }
    }
    for _ in 0..20 {
        let (m, e) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let sql: uuid::Uuid = sqlx::query_scalar("SELECT webhook_delivery_id($1, $2)")
            .bind(m)
            .bind(e)
            .fetch_one(&node.db.pool)
            .await
            .unwrap();
        assert_eq!(sql, delivery_id(m, e));
    }
    node.stop().await;
}

struct Proc {
    child: Child,
    base: String,
}

/// A second node of region A as a process (API and webhook worker only; the cluster's in-process
/// node of A commits, applies remote events and publishes), logging to `log`.
fn spawn_worker_node(a: &TestNode, port: u16, log: &std::path::Path) -> Proc {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_region-node"))
        .env("LEDGER_NODE_REGION", a.cfg.region.as_str())
        .env("LEDGER_NODE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LEDGER_NODE_DATABASE_URL", &a.db.url)
        .env("LEDGER_NODE_KAFKA_BOOTSTRAP", a.region.kafka_bootstrap())
        .env("LEDGER_NODE_TOPIC_PREFIX", &a.prefix)
        .env("LEDGER_NODE_RUN_PUBLISHER", "false")
        .env("LEDGER_NODE_RUN_CONSUMER", "false")
        .env("LEDGER_NODE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .env("LEDGER_NODE_WEBHOOK_TIMEOUT_MS", "60000")
        .env("LEDGER_LOG", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("starting region-node");
    Proc { child, base: format!("http://127.0.0.1:{port}") }
}

async fn wait_ready(base: &str) {
    let http = reqwest::Client::new();
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

/// Three regions; region A's webhook worker runs in a process of its own. Crossings made in B and
/// in A reach a receiver that processes each delivery and holds its answer; the process is killed
/// with SIGKILL while both answers are held. Restarted, it finds the attempts cut, says so in its
/// log and sends them again with the same ids: the receiver, deduping, processed each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_is_delivered_exactly_once_to_a_deduping_receiver_after_a_kill_9_mid_delivery() {
    let cluster = Cluster::start_with(false, |cfg| {
        cfg.run_webhooks = false;
        cfg.webhook_allow_private_targets = true;
    })
    .await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (receiver, url) = Receiver::start().await;
    let port = testkit::free_port();
    let log = std::env::temp_dir().join(format!("webhook-kill-{}.log", uuid::Uuid::new_v4()));
    let mut worker = spawn_worker_node(a, port, &log);
    wait_ready(&worker.base).await;

    a.open("world", "USD", true).await;
    a.open("frank", "USD", false).await;
    let monitor = create_monitor(a, "frank", "balance >= 100", &format!("{url}/hold")).await;
    assert_eq!(a.transfer("world", "frank", 100).await.status, 201, "crossing in A");
    wait_balance(b, "frank", 100).await;
    assert_eq!(b.transfer("frank", "world", 50).await.status, 201);
    wait_balance(b, "frank", 50).await;
    wait_balance(a, "frank", 50).await;
    assert_eq!(b.transfer("world", "frank", 60).await.status, 201, "crossing in B");
    receiver.wait_for("hold", 2, Duration::from_secs(60)).await;
    assert_eq!(receiver.processed().len(), 2);

    worker.child.kill().unwrap(); // SIGKILL, with both answers held
    worker.child.wait().unwrap();
    let cut = deliveries(a, &monitor).await;
    assert!(cut.iter().all(|d| d["state"] == "pending"), "the node never heard the answers: {cut:?}");

    let mut worker = spawn_worker_node(a, port, &log);
    wait_ready(&worker.base).await;
    let done = wait_state(a, &monitor, "delivered", 2).await;
    let got = receiver.received("hold");
    let mut per_id: BTreeMap<String, u32> = BTreeMap::new();
    for r in &got {
        *per_id.entry(r.id.clone()).or_default() += 1;
    }
    assert!(per_id.values().all(|n| *n == 2), "each sent twice (at least once underneath): {per_id:?}");
    assert!(receiver.processed().values().all(|n| *n == 1), "each processed exactly once: {:?}", receiver.processed());
    let ids: HashSet<String> = done.iter().map(|d| d["delivery_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, per_id.keys().cloned().collect::<HashSet<_>>());
    for d in &done {
        let log_entries = d["attempt_log"].as_array().unwrap();
        assert_eq!(log_entries.len(), 2, "{d}");
        assert!(log_entries[0]["error"].as_str().unwrap().starts_with("interrupted"), "{d}");
        assert_eq!(log_entries[1]["status_code"], 200);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    for id in &ids {
        assert!(
            text.lines().any(|l| l.contains("interrupted") && l.contains(id.as_str())),
            "the restarted node's log says {id} was redelivered"
        );
    }
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    let _ = std::fs::remove_file(log);
    cluster.stop().await;
}

/// The hot path with no monitor: the committer's extra CTE is index probes of
/// `monitors_active_by_account`, never a scan of `monitors`, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_monitor_the_write_statement_only_probes_the_monitors_index() {
    let node = start(|_| {}).await;
    node.open("world", "USD", true).await;
    node.open("hank", "USD", false).await;
    let stats = || async {
        // Backends publish their table counters at most once a second, when idle.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'monitors'",
        )
        .fetch_one(&node.db.pool)
        .await
        .unwrap()
    };
    let (seq_before, idx_before) = stats().await;
    for _ in 0..10 {
        assert_eq!(node.transfer("world", "hank", 1).await.status, 201);
    }
    let (seq_after, idx_after) = stats().await;
    assert_eq!(seq_after - seq_before, 0, "monitors was scanned");
    assert!(idx_after > idx_before, "the write statement looked monitors up by index");
    assert_eq!(counts(&node.db.pool).await, (0, 0, 0));
    node.stop().await;
}

/// Monitors judge each event on the account before and after it: a hold lowers `available` (and
/// fires an `available` monitor, not a `balance` one), a post of part of it gives some back, and a
/// transaction whose legs cross a threshold twice fires once, on the net.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_fire_available_monitors_and_a_transaction_fires_once_on_its_net() {
    let node = start(fast_retries).await;
    let (receiver, url) = Receiver::start().await;
    node.open("world", "USD", true).await;
    node.open("card", "USD", false).await;
    node.open("shop", "USD", false).await;
    assert_eq!(node.transfer("world", "card", 100).await.status, 201);
    let available = create_monitor(&node, "card", "available < 50", &format!("{url}/available")).await;
    let balance = create_monitor(&node, "card", "balance < 50", &format!("{url}/balance")).await;
    let hold = node.post("/v1/transfers", json!({"from": "card", "to": "shop", "amount": 60, "pending": true})).await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let got = receiver.wait_for("available", 1, Duration::from_secs(30)).await;
    let body = got[0].body.clone();
    assert_eq!(body["balance_after"], 100, "the hold moved no balance: {body}");
    // Posting 40 of the 60: the balance goes 100 → 60 (not below 50) and what is available back
    // up from 40 to 60: nothing fires.
    let id = hold.body["id"].as_str().unwrap();
    let posted = node.post(&format!("/v1/transfers/{id}/post"), json!({"amount": 40})).await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    // A transaction taking card 60 → 45 → 70 → 48 crosses `balance < 50` twice: one delivery.
    let leg = |from: &str, to: &str, amount: i64| json!({"from": from, "to": to, "amount": amount, "currency": "USD"});
    let t = node
        .post(
            "/v1/transactions",
            json!({"legs": [leg("card", "shop", 15), leg("world", "card", 25), leg("card", "shop", 22)]}),
        )
        .await;
    assert_eq!(t.status, 201, "{}", t.body);
    let got = receiver.wait_for("balance", 1, Duration::from_secs(30)).await;
    let body = got[0].body.clone();
    assert_eq!(body["balance_after"], 48, "{body}");
    wait_state(&node, &balance, "delivered", 1).await;
    // What is available went 60 → 48 with the transaction too: the `available` monitor's second crossing.
    wait_state(&node, &available, "delivered", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received("balance").len(), 1, "one crossing, one delivery");
    assert_eq!(receiver.received("available").len(), 2);
    node.stop().await;
}
