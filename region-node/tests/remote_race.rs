//! Finding 5 of the replication issue, made deterministic with a failpoint (its own test binary,
//! as failpoints are process-wide): a remote opening decided while the account did not exist here,
//! then written after the write path opened the same id locally.

mod common;

use ledger_core::{AccountId, AccountSpec, Currency, EventPayload, LedgerEvent, RegionId, VersionVector};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const ORIGIN: &str = "eu-west";

/// Before the fix, the remote round's insert overwrote the local row, vector included
/// (`{us-east: 1}` became `{eu-west: 1}`), and the next local write collided on `account_events`:
/// the account was bricked here. Now the round finds the account opened meanwhile, is decided
/// again on it, locked, and the vector keeps both counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_opening_racing_a_local_one_never_overwrites_the_local_vector() {
    let scenario = fail::FailScenario::setup();
    let region = testkit::regions(1)[0].clone();
    let prefix = testkit::unique_prefix();
    region.create_topics(&prefix).await;
    let topic = ledger_schema::mirrored_events_topic(&prefix, ORIGIN);
    let mirrored = ledger_schema::mirror_topics(&prefix, ORIGIN);
    ledger_schema::create_topics(region.kafka_bootstrap(), &mirrored, Duration::from_secs(60)).await.unwrap();
    let node = common::start_on(region, prefix, |cfg| cfg.peers = vec![ORIGIN.to_owned()]).await;
    node.open("world", "USD", true).await;

    // The first round to reach the failpoint stops there until released.
    let (arrived_tx, arrived_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let once = Arc::new(Mutex::new(Some((arrived_tx, release_rx))));
    fail::cfg_callback("remote-apply-before-store", move || {
        if let Some((arrived, release)) = once.lock().unwrap().take() {
            arrived.send(()).unwrap();
            release.recv_timeout(Duration::from_secs(60)).unwrap();
        }
    })
    .unwrap();

    let id = AccountId::new("raced").unwrap();
    let mut vector = VersionVector::new();
    vector.witness(&RegionId::new(ORIGIN).unwrap(), 1);
    let remote = LedgerEvent {
        event_id: uuid::Uuid::now_v7(),
        origin_region: RegionId::new(ORIGIN).unwrap(),
        occurred_at: "2026-11-29T00:00:00Z".into(),
        payload: EventPayload::AccountOpened {
            account: AccountSpec {
                id: id.clone(),
                currency: Currency::new("USD").unwrap(),
                allow_negative: false,
                metadata: Default::default(),
            },
        },
        vectors: BTreeMap::from([(id.clone(), vector)]),
    };
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", node.region.kafka_bootstrap()).create().unwrap();
    let payload = serde_json::to_vec(&remote).unwrap();
    producer
        .send(FutureRecord::to(&topic).key("raced").payload(&payload), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    // The remote round has read (no such account here) and decided; now the client opens it here.
    tokio::task::spawn_blocking(move || arrived_rx.recv_timeout(Duration::from_secs(60)).unwrap()).await.unwrap();
    let local = node.post("/v1/accounts", json!({"id": "raced", "currency": "USD", "allow_negative": false})).await;
    assert_eq!(local.status, 201, "{}", local.body);
    release_tx.send(()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let here = node.cfg.region.clone();
    let account = loop {
        let a = node.get("/v1/accounts/raced").await.body;
        if a["version_vector"][ORIGIN] == 1 {
            break a;
        }
        assert!(Instant::now() < deadline, "the remote opening never applied: {a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(account["version_vector"][&here], 1, "the local counter survives: {account}");
    let r = node.transfer("world", "raced", 5).await;
    assert_eq!(r.status, 201, "local writes go on: {}", r.body);
    common::assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
    scenario.teardown();
}
