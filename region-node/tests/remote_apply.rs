//! Remote apply on real PostgreSQL and Kafka, fed records written straight to a mirrored topic:
//! thousands of events held behind one missing predecessor (shuffled, duplicated, across a node
//! restart), and records no region should be able to use to stop replication.

mod common;

use common::TestNode;
use ledger_core::{AccountId, AccountSpec, Amount, Currency, EventPayload, LedgerEvent, RegionId, VersionVector};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const ORIGIN: &str = "eu-west";

async fn node_with_origin() -> TestNode {
    let region = testkit::regions(1)[0].clone();
    let prefix = testkit::unique_prefix();
    region.create_topics(&prefix).await;
    let mirrored = ledger_schema::mirror_topics(&prefix, ORIGIN);
    ledger_schema::create_topics(region.kafka_bootstrap(), &mirrored, Duration::from_secs(60)).await.unwrap();
    common::start_on(region, prefix, |cfg| cfg.peers = vec![ORIGIN.to_owned()]).await
}

fn producer(node: &TestNode) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", node.region.kafka_bootstrap()).create().unwrap()
}

async fn send(node: &TestNode, producer: &FutureProducer, key: &str, payload: &[u8]) {
    let topic = ledger_schema::mirrored_events_topic(&node.prefix, ORIGIN);
    producer
        .send(FutureRecord::to(&topic).key(key).payload(payload), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

fn key_of(event: &Value) -> String {
    event["payload"]["from"].as_str().or(event["payload"]["account"]["id"].as_str()).unwrap().to_owned()
}

async fn send_event(node: &TestNode, producer: &FutureProducer, event: &Value) {
    send(node, producer, &key_of(event), &serde_json::to_vec(event).unwrap()).await;
}

/// Sends many events without waiting for each, then waits for every delivery.
async fn send_all(node: &TestNode, producer: &FutureProducer, events: &[&Value]) {
    let topic = ledger_schema::mirrored_events_topic(&node.prefix, ORIGIN);
    let mut deliveries = Vec::new();
    for event in events {
        let (key, payload) = (key_of(event), serde_json::to_vec(event).unwrap());
        deliveries.push(
            producer.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)).map_err(|(e, _)| e).unwrap(),
        );
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

fn vector(counter: u64) -> VersionVector {
    let mut v = VersionVector::new();
    v.witness(&RegionId::new(ORIGIN).unwrap(), counter);
    v
}

fn opening(id: &str, allow_negative: bool) -> Value {
    let account = AccountId::new(id).unwrap();
    json!(LedgerEvent {
        event_id: uuid::Uuid::now_v7(),
        origin_region: RegionId::new(ORIGIN).unwrap(),
        occurred_at: "2026-11-29T00:00:00Z".into(),
        payload: EventPayload::AccountOpened {
            account: AccountSpec {
                id: account.clone(),
                currency: Currency::new("USD").unwrap(),
                allow_negative,
                metadata: Default::default(),
            },
        },
        vectors: BTreeMap::from([(account, vector(1))]),
    })
}

/// The origin's `counter`-th event on both accounts: `from` → `to`.
fn transfer(from: &str, to: &str, amount: i64, counter: u64) -> Value {
    let (from, to) = (AccountId::new(from).unwrap(), AccountId::new(to).unwrap());
    json!(LedgerEvent {
        event_id: uuid::Uuid::now_v7(),
        origin_region: RegionId::new(ORIGIN).unwrap(),
        occurred_at: "2026-11-29T00:00:00Z".into(),
        payload: EventPayload::TransferPosted {
            transfer_id: uuid::Uuid::now_v7(),
            from: from.clone(),
            to: to.clone(),
            amount: Amount::new(amount).unwrap(),
            currency: Currency::new("USD").unwrap(),
            metadata: Default::default(),
            idempotency_key: None,
            request_hash: None,
        },
        vectors: BTreeMap::from([(from, vector(counter)), (to, vector(counter))]),
    })
}

async fn count(node: &TestNode, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&node.db.pool).await.unwrap()
}

/// Waits until `sql` (a count) returns `want`.
async fn wait_count(node: &TestNode, sql: &str, want: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = count(node, sql).await;
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {n}, expected {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_held_behind_one_missing_predecessor_converge_when_it_arrives() {
    let mut node = node_with_origin().await;
    let producer = producer(&node);
    send_event(&node, &producer, &opening("world", true)).await;
    send_event(&node, &producer, &opening("acc", false)).await;
    const HELD: u64 = 5_000;
    // Counter 2 is the missing one; 3..=5002 arrive first, shuffled, one in ten twice.
    let mut chain: Vec<Value> = (3..HELD + 3).map(|k| transfer("world", "acc", k as i64, k)).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in (1..chain.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chain.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let sent: Vec<&Value> =
        chain.iter().enumerate().flat_map(|(i, e)| std::iter::repeat_n(e, 1 + (i % 10 == 0) as usize)).collect();
    send_all(&node, &producer, &sent).await;
    wait_count(&node, "SELECT count(*) FROM pending_events", HELD as i64, Duration::from_secs(120)).await;
    assert_eq!(count(&node, "SELECT count(*) FROM entries").await, 0, "nothing after the gap applied");

    // Held events are durable: a node restarted while they wait still applies them.
    node.node.take().unwrap().shutdown().await;
    let restarted = region_node::start(node.cfg.clone()).await.unwrap();
    node.base = format!("http://{}", restarted.addr());
    node.node = Some(restarted);

    let started = Instant::now();
    send_event(&node, &producer, &transfer("world", "acc", 2, 2)).await;
    wait_count(&node, "SELECT count(*) FROM pending_events", 0, Duration::from_secs(120)).await;
    eprintln!("{HELD} held events applied {:?} after the missing one was sent", started.elapsed());
    let total: i64 = (2..HELD as i64 + 3).sum();
    assert_eq!(node.balance("acc").await, total);
    assert_eq!(node.balance("world").await, -total);
    let acc = node.get("/v1/accounts/acc").await;
    assert_eq!(acc.body["version_vector"], json!({ ORIGIN: HELD + 2 }));
    assert_eq!(acc.body["entries"], json!(HELD + 1));
    common::assert_ledger_consistent(&node.db.pool).await;
    let views = node.wait_read_models(Duration::from_secs(60)).await;
    assert!(views.iter().all(|(_, view, balance)| view == balance), "{views:?}");
    assert_eq!(count(&node, "SELECT count(*) FROM dead_letters").await, 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_become_dead_letters_and_never_stop_the_region() {
    let node = node_with_origin().await;
    let producer = producer(&node);
    send_event(&node, &producer, &opening("world", true)).await;
    send_event(&node, &producer, &opening("acc", true)).await;
    // A transfer above the amount bound (which the origin's API refuses): it can never apply here.
    send_event(&node, &producer, &transfer("world", "acc", 7, 2)).await;
    let mut huge = transfer("world", "acc", 1, 3);
    huge["payload"]["amount"] = json!(9_000_000_000_000_000_000i64);
    send_event(&node, &producer, &huge).await;
    send_event(&node, &producer, &transfer("world", "acc", 5, 4)).await;
    send_event(&node, &producer, &transfer("world", "acc", 5, 5)).await;
    // Not JSON, JSON that is no event, an event of an unknown type.
    send(&node, &producer, "x", b"\xff\xfe not json").await;
    send(&node, &producer, "x", br#"{"hello": "world"}"#).await;
    let mut unknown_type = opening("ghost", false);
    unknown_type["payload"]["type"] = json!("account_renamed");
    send_event(&node, &producer, &unknown_type).await;
    // A newer region's event with fields this version does not know: applied, the fields kept.
    let mut newer = opening("newer", false);
    newer["future_field"] = json!({"shape": "unknown"});
    newer["payload"]["account"]["future_flag"] = json!(true);
    send_event(&node, &producer, &newer).await;
    // And replication into this region goes on.
    send_event(&node, &producer, &opening("later", false)).await;

    wait_count(&node, "SELECT count(*) FROM accounts WHERE id IN ('newer', 'later')", 2, Duration::from_secs(60)).await;
    wait_count(&node, "SELECT count(*) FROM dead_letters", 4, Duration::from_secs(60)).await;
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY id").fetch_all(&node.db.pool).await.unwrap();
    assert_eq!(reasons.iter().filter(|r| r.contains("amount")).count(), 1, "{reasons:?}");
    // The credit before the dead one applied; the ones after it wait for it, and say which.
    assert_eq!(node.balance("acc").await, 7);
    let waits: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT wait_account, wait_region, wait_counter FROM pending_events ORDER BY wait_counter")
            .fetch_all(&node.db.pool)
            .await
            .unwrap();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(waits.iter().all(|(_, region, counter)| region == ORIGIN && *counter == 3), "{waits:?}");
    let kept: Value = sqlx::query_scalar("SELECT payload FROM ledger_events WHERE aggregate_id = 'newer'")
        .fetch_one(&node.db.pool)
        .await
        .unwrap();
    assert_eq!(kept["future_field"], json!({"shape": "unknown"}));
    assert_eq!(kept["payload"]["account"]["future_flag"], json!(true));
    common::assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}

/// The sweep: a held event whose awaited event is already applied (its wake-up was missed, as
/// when a second applier of the region applied that event meanwhile) is applied within a sweep
/// period, without any new record arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_event_whose_wake_up_was_missed_is_applied_by_the_sweep() {
    let node = node_with_origin().await;
    let producer = producer(&node);
    send_event(&node, &producer, &opening("world", true)).await;
    send_event(&node, &producer, &opening("acc", false)).await;
    wait_count(&node, "SELECT count(*) FROM accounts WHERE id IN ('world', 'acc')", 2, Duration::from_secs(60)).await;
    // Held as if it had been waiting for the opening of `world`, which is applied already.
    let missed = transfer("world", "acc", 42, 2);
    sqlx::query(
        "INSERT INTO pending_events (event_id, origin_region, payload, wait_account, wait_region, wait_counter, wait_needs)
         VALUES ($1::text::uuid, $2, $3, 'world', $2, 1, 1)",
    )
    .bind(missed["event_id"].as_str().unwrap())
    .bind(ORIGIN)
    .bind(&missed)
    .execute(&node.db.pool)
    .await
    .unwrap();
    wait_count(&node, "SELECT count(*) FROM pending_events", 0, Duration::from_secs(30)).await;
    assert_eq!(node.balance("acc").await, 42);
    common::assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}
