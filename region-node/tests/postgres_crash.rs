//! The region's PostgreSQL killed with SIGKILL in the middle of a load and started again, the node
//! left running: every transfer acknowledged (201) is stored exactly once, nothing the clients were
//! not told about is stored (no phantom of a retried request), the books balance, no account is
//! overdrawn, and the same node serves writes again without a restart of its own (it answers 503
//! while the database is gone and reconnects; see `write::run`).
//!
//! The clients behave as the API asks them to: a 503 or a 500 ("retry with the same
//! Idempotency-Key") or a request cut off is sent again, same key, same body, until it is answered
//! for good: 201, or 409 insufficient-funds.
//!
//! A test binary of its own: killing the region's PostgreSQL takes down the databases of every other
//! test of the process on that region. Runs on both test backends (locally the postmaster and its
//! children are killed by pid; a container gets SIGKILL through the Docker API).

mod common;

use common::{TestNode, assert_ledger_consistent};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Concurrent clients, each sending its transfers one after the other.
const CLIENTS: usize = 8;
/// Transfers per client: 4,000 in all.
const TRANSFERS_PER_CLIENT: usize = 500;
const ACCOUNTS: usize = 20;
/// PostgreSQL is killed once this many transfers are committed (about a third of the load).
const KILL_AFTER_COMMITTED: i64 = 1_300;
/// How long it stays down: long enough for every client to meet the outage.
const DOWNTIME: Duration = Duration::from_secs(2);
/// A request still unanswered for good after this long fails the test.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
struct Sent {
    key: String,
    from: String,
    to: String,
    amount: i64,
}

#[derive(Default)]
struct ClientLog {
    /// (request, transfer id) of every 201.
    acked: Vec<(Sent, String)>,
    /// Requests refused for good (409 insufficient-funds).
    refused: Vec<Sent>,
    /// 201s that were replays: an attempt the client saw fail had committed.
    replayed: usize,
}

fn account(i: usize) -> String {
    format!("acc{i:02}")
}

/// Client `c`'s `n`-th transfer: two of three fund an account from `world` (allowed to go
/// negative), the third moves money between two accounts that may not, and may be refused.
fn transfer(c: usize, n: usize) -> Sent {
    let key = format!("pgcrash-c{c}-{n}");
    if n % 3 == 2 {
        let from = (c * 7 + n) % ACCOUNTS;
        let to = (from + 1 + n % (ACCOUNTS - 1)) % ACCOUNTS;
        Sent { key, from: account(from), to: account(to), amount: 1 + (n as i64 * 13) % 120 }
    } else {
        Sent { key, from: "world".into(), to: account((c + n) % ACCOUNTS), amount: 1 + n as i64 % 50 }
    }
}

enum Answer {
    /// The transfer's id, and whether it was a replay (an earlier attempt had committed unseen).
    Acked(String, bool),
    Refused,
}

/// Sends `sent` until it is answered for good; counts the answers that asked for a retry.
async fn send_until_answered(
    http: &reqwest::Client,
    base: &str,
    api_key: &str,
    sent: &Sent,
    retries: &AtomicUsize,
) -> Answer {
    let body = json!({"from": sent.from, "to": sent.to, "amount": sent.amount});
    let started = Instant::now();
    loop {
        let response = http
            .post(format!("{base}/v1/transfers"))
            .bearer_auth(api_key)
            .header("Idempotency-Key", &sent.key)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match response {
            Ok(r) if r.status() == 201 => {
                let replayed = r.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
                let body: Value = r.json().await.expect("a 201 carries the transfer");
                return Answer::Acked(body["id"].as_str().expect("the transfer's id").to_owned(), replayed);
            }
            Ok(r) if r.status() == 409 => {
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let kind = body["type"].as_str().and_then(|t| t.strip_prefix(region_node::problem::TYPE_BASE));
                assert_eq!(kind, Some("insufficient-funds"), "{} answered 409: {body}", sent.key);
                return Answer::Refused;
            }
            // 503: database unreachable or connection broken; 500: not applied. Both say: retry
            // with the same key.
            Ok(r) if r.status() == 503 || r.status() == 500 => {}
            Ok(r) => {
                let status = r.status();
                panic!("{} answered {status}: {}", sent.key, r.text().await.unwrap_or_default());
            }
            // Cut off or timed out: the outcome is unknown, which is what the key is for.
            Err(_) => {}
        }
        retries.fetch_add(1, Ordering::Relaxed);
        assert!(started.elapsed() < ANSWER_WITHIN, "{} not answered for good within {ANSWER_WITHIN:?}", sent.key);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn committed_transfers(node: &TestNode) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM transfers").fetch_one(&node.db.pool).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_under_load_loses_no_acknowledged_transfer_and_writes_no_phantom() {
    let node = common::start(|_| {}).await;
    node.open("world", "USD", true).await;
    for i in 0..ACCOUNTS {
        node.open(&account(i), "USD", false).await;
    }

    let retries = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, base, api_key, retries) =
            (node.http.clone(), node.base.clone(), node.write_key.clone(), retries.clone());
        clients.push(tokio::spawn(async move {
            let mut log = ClientLog::default();
            for n in 0..TRANSFERS_PER_CLIENT {
                let sent = transfer(c, n);
                match send_until_answered(&http, &base, &api_key, &sent, &retries).await {
                    Answer::Acked(id, replayed) => {
                        log.replayed += usize::from(replayed);
                        log.acked.push((sent, id));
                    }
                    Answer::Refused => log.refused.push(sent),
                }
            }
            log
        }));
    }

    // The kill comes once the load has been committing for a while, not after a fixed time.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed = committed_transfers(&node).await.unwrap_or(0);
        if committed >= KILL_AFTER_COMMITTED {
            break;
        }
        assert!(Instant::now() < deadline, "the load never got going: {committed} transfers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let region = node.region.clone();
    let old_pid = region.postgres_pid().expect("PostgreSQL runs");
    let killed_at = Instant::now();
    tokio::task::spawn_blocking(move || region.kill_postgres()).await.unwrap();
    assert!(!running(old_pid), "the killed postmaster is gone");
    let retries_before_outage = retries.load(Ordering::Relaxed);
    tokio::time::sleep(DOWNTIME).await;
    let region = node.region.clone();
    tokio::task::spawn_blocking(move || region.start_postgres()).await.unwrap();
    println!("PostgreSQL killed and back after {} ms (crash recovery included)", killed_at.elapsed().as_millis());
    assert_ne!(node.region.postgres_pid(), Some(old_pid), "a new server");

    let mut acked: Vec<(Sent, String)> = Vec::new();
    let mut refused: Vec<Sent> = Vec::new();
    let mut replayed = 0;
    for client in clients {
        let log = client.await.expect("a client panicked");
        acked.extend(log.acked);
        refused.extend(log.refused);
        replayed += log.replayed;
    }
    let retried = retries.load(Ordering::Relaxed);
    println!(
        "{} acknowledged ({replayed} of them replays of an attempt that had committed unseen), {} refused for \
         insufficient funds, {} answers asking for a retry ({} during or after the outage)",
        acked.len(),
        refused.len(),
        retried,
        retried - retries_before_outage
    );
    assert_eq!(acked.len() + refused.len(), CLIENTS * TRANSFERS_PER_CLIENT);
    assert!(retried > retries_before_outage, "the outage was met by the clients");
    assert!(acked.len() > CLIENTS * TRANSFERS_PER_CLIENT / 2, "most transfers went through");

    // The same node serves again, without a restart: ready, and a new write commits.
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.http.get(format!("{}/readyz", node.base)).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the node never became ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = node.transfer("world", &account(0), 1).await;
    assert_eq!(after.status, 201, "a write after recovery: {}", after.body);

    // Stored: exactly the acknowledged transfers (and the one above), each once, under the id the
    // client was given.
    let rows: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, idempotency_key FROM transfers").fetch_all(&node.db.pool).await.unwrap();
    let mut stored: HashMap<String, Vec<String>> = HashMap::new();
    for (id, key) in &rows {
        if let Some(key) = key {
            stored.entry(region_node::idempotency::client_part(key).to_owned()).or_default().push(id.to_string());
        }
    }
    let twice: Vec<_> = stored.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "keys stored more than once: {twice:?}");
    for (sent, id) in &acked {
        assert_eq!(stored.get(&sent.key), Some(&vec![id.clone()]), "acknowledged transfer {} ({id})", sent.key);
    }
    let mut acked_keys: HashSet<&str> = acked.iter().map(|(s, _)| s.key.as_str()).collect();
    acked_keys.extend(after.body["idempotency_key"].as_str());
    let phantoms: Vec<&String> = stored.keys().filter(|k| !acked_keys.contains(k.as_str())).collect();
    assert!(phantoms.is_empty(), "stored but never acknowledged: {phantoms:?}");
    assert_eq!(rows.len(), acked.len() + 1, "no transfer without a key either");

    // Balances are what the acknowledged transfers make them, each applied once.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (sent, _) in &acked {
        *expected.entry(sent.from.clone()).or_default() -= sent.amount;
        *expected.entry(sent.to.clone()).or_default() += sent.amount;
    }
    *expected.entry("world".into()).or_default() -= 1;
    *expected.entry(account(0)).or_default() += 1;
    let mut balances: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>("SELECT id, balance FROM accounts")
        .fetch_all(&node.db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    balances.retain(|_, v| *v != 0);
    expected.retain(|_, v| *v != 0);
    assert_eq!(balances, expected, "balances are the sum of the acknowledged transfers");

    // The books sum to zero, nothing half-written, and no account that may not go negative ever did.
    assert_ledger_consistent(&node.db.pool).await;
    let overdrawn: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM entries e JOIN accounts a ON a.id = e.account_id
         WHERE NOT a.allow_negative AND (e.balance_after < 0 OR a.balance < 0)",
    )
    .fetch_one(&node.db.pool)
    .await
    .unwrap();
    assert_eq!(overdrawn, 0, "an account that may not go negative was overdrawn");

    // A retry now, of a transfer acknowledged before the crash, replays it.
    let (sent, id) = &acked[0];
    let r = node
        .send(
            reqwest::Method::POST,
            "/v1/transfers",
            Some(&node.write_key),
            Some(json!({"from": sent.from, "to": sent.to, "amount": sent.amount})),
            &[("Idempotency-Key", &sent.key)],
        )
        .await;
    assert_eq!((r.status, r.body["id"].as_str()), (201, Some(id.as_str())), "{}", r.body);

    // Everything committed reaches Kafka and the read models, each entry once.
    let views = node.wait_read_models(Duration::from_secs(120)).await;
    assert!(views.iter().all(|(_, view, auth)| view == auth), "{views:?}");
    let (view_entries, entries): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM rm_entries), (SELECT count(*) FROM entries)")
            .fetch_one(&node.db.pool)
            .await
            .unwrap();
    assert_eq!(view_entries, entries, "each entry reached the read models exactly once");
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&node.db.pool)
        .await
        .unwrap();
    assert_eq!(unpublished, 0);
    node.stop().await;
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).is_some_and(|c| c != 'Z' && c != 'X'))
        .unwrap_or(false)
}
