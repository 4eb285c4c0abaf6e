//! Model-based test of remote apply on real PostgreSQL and Kafka: three model regions
//! (`ledger_core::replica`) make a random active-active history (accounts opened in several regions
//! with different definitions, transfers with idempotency keys retried across regions, amounts up
//! to the bound, partial exchanges between them); a real node receives all of it on its mirrored
//! topics shuffled, duplicated and delayed, and is restarted while events are held. It must end
//! exactly where the model's own replica of it ends: accounts, vectors, definitions, frozen flags,
//! money kept apart, and every conflict.

mod common;

use ledger_core::replica::Replica;
use ledger_core::{AccountId, AccountSpec, Amount, Currency, EventPayload, LedgerEvent, RegionId};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ORIGINS: [&str; 3] = ["eu-west", "ap-south", "sa-east"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spec(id: &str, currency: &str, allow_negative: bool) -> AccountSpec {
    AccountSpec {
        id: AccountId::new(id).unwrap(),
        currency: Currency::new(currency).unwrap(),
        allow_negative,
        metadata: Default::default(),
    }
}

/// A random history made by three model regions that exchange events now and then.
fn history(rng: &mut Rng, n: u128, ops: usize) -> Vec<LedgerEvent> {
    let base = |i: usize| (n * 4 + i as u128 + 1) << 64;
    let mut rs: Vec<Replica> =
        ORIGINS.iter().enumerate().map(|(i, r)| Replica::new(RegionId::new(*r).unwrap(), base(i))).collect();
    let mut log: Vec<LedgerEvent> = Vec::new();
    log.extend(rs[0].open(spec("world", "USD", true)));
    log.extend(rs[0].open(spec("world-eur", "EUR", true)));
    for r in rs.iter_mut().skip(1) {
        for e in &log {
            r.receive(e.clone());
        }
    }
    let names = ["a", "b", "c", "d", "e", "world"];
    let mut delivered = [log.len(); 3];
    for _ in 0..ops {
        let region = rng.below(3) as usize;
        let made = match rng.below(10) {
            0 => {
                // Opened in several regions, sometimes with another definition.
                let id = names[rng.below(5) as usize];
                let currency = if rng.below(6) == 0 { "EUR" } else { "USD" };
                rs[region].open(spec(id, currency, rng.below(5) == 0))
            }
            1..=6 => {
                let (from, to) = (names[rng.below(6) as usize], names[rng.below(6) as usize]);
                let amount = if rng.below(20) == 0 { ledger_core::money::AMOUNT_MAX } else { 1 + rng.below(80) as i64 };
                let key = (rng.below(4) == 0).then(|| format!("key-{}", rng.below(8)));
                let (from, to) = (AccountId::new(from).unwrap(), AccountId::new(to).unwrap());
                if from == to {
                    None
                } else {
                    rs[region].transfer(&from, &to, Amount::new(amount).unwrap(), key).ok().flatten()
                }
            }
            _ => {
                // The region catches up with part of what the others made.
                let upto = delivered[region] + rng.below((log.len() - delivered[region]) as u64 + 1) as usize;
                for e in &log[delivered[region]..upto] {
                    rs[region].receive(e.clone());
                }
                delivered[region] = upto;
                None
            }
        };
        log.extend(made);
    }
    // Model transfers carry no transfer id; the node stores transfers by id.
    for e in log.iter_mut() {
        if let EventPayload::TransferPosted { transfer_id, .. } = &mut e.payload {
            *transfer_id = e.event_id;
        }
    }
    log
}

fn topic_key(e: &LedgerEvent) -> String {
    e.accounts()[0].to_string()
}

async fn send_all(producer: &FutureProducer, prefix: &str, events: &[LedgerEvent]) {
    let mut deliveries = Vec::new();
    for e in events {
        let topic = ledger_schema::mirrored_events_topic(prefix, e.origin_region.as_str());
        let (key, payload) = (topic_key(e), serde_json::to_vec(e).unwrap());
        let record = FutureRecord::to(&topic).key(&key).payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The node's accounts: (id, balance, vector, currency, allow_negative, frozen, money kept apart).
async fn node_accounts(pool: &sqlx::PgPool) -> Vec<(String, i64, Value, String, bool, bool, Value)> {
    sqlx::query_as(
        "SELECT id, balance, version_vector, currency, allow_negative, frozen, foreign_balances FROM accounts ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_apply_ends_where_the_replica_model_ends() {
    let mut kinds = BTreeSet::new();
    for (n, seed) in [0x5eed_0001u64, 0x5eed_0002].into_iter().enumerate() {
        kinds.extend(check_history(n as u128, seed).await);
    }
    // The histories exercise every kind of conflict.
    assert_eq!(
        kinds,
        ["account-definition", "concurrent-benign", "duplicate-intent", "overdraft"].map(String::from).into()
    );
}

/// Checks one history; returns the kinds of conflict it had.
async fn check_history(n: u128, seed: u64) -> BTreeSet<String> {
    let region = testkit::regions(1)[0].clone();
    let prefix = testkit::unique_prefix();
    region.create_topics(&prefix).await;
    for origin in ORIGINS {
        let mirrored = ledger_schema::mirror_topics(&prefix, origin);
        ledger_schema::create_topics(region.kafka_bootstrap(), &mirrored, Duration::from_secs(60)).await.unwrap();
    }
    let peers = ORIGINS.iter().map(|o| o.to_string()).collect();
    let mut node = common::start_on(region, prefix.clone(), |cfg| cfg.peers = peers).await;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", node.region.kafka_bootstrap()).create().unwrap();

    let mut rng = Rng(seed);
    let log = history(&mut rng, n, 500);
    // Shuffled, one in five twice; the second half after a restart, so events are held across it.
    let mut order: Vec<LedgerEvent> =
        log.iter().flat_map(|e| std::iter::repeat_n(e.clone(), 1 + (rng.below(5) == 0) as usize)).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let (first, second) = order.split_at(order.len() / 2);
    send_all(&producer, &prefix, first).await;
    let distinct: BTreeSet<uuid::Uuid> = first.iter().map(|e| e.event_id).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let (applied, held) = progress(&node).await;
        if applied + held >= distinct.len() as i64 {
            break held;
        }
        assert!(Instant::now() < deadline, "seed {seed:x}: the first half was never all received");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(held > 0, "half a shuffled history leaves events waiting (seed {seed:x})");
    node.node.take().unwrap().shutdown().await;
    let restarted = region_node::start(node.cfg.clone()).await.unwrap();
    node.base = format!("http://{}", restarted.addr());
    node.node = Some(restarted);
    send_all(&producer, &prefix, second).await;

    // The model's own replica of this region, fed everything in the order it was made.
    let mut model = Replica::new(RegionId::new(node.cfg.region.clone()).unwrap(), 99 << 64);
    for e in &log {
        model.receive(e.clone());
    }
    assert!(model.pending.is_empty() && model.dead.is_empty());
    let expected = model.state.applied.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (applied, held) = progress(&node).await;
        if applied >= expected && held == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed:x}: {applied} of {expected} applied, {held} held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let want: Vec<(String, i64, Value, String, bool, bool, Value)> = model
        .accounts()
        .iter()
        .map(|(id, a)| {
            let foreign = json!(a.foreign);
            (
                id.to_string(),
                a.balance,
                json!(a.version),
                a.spec.currency.to_string(),
                a.spec.allow_negative,
                a.frozen,
                foreign,
            )
        })
        .collect();
    assert_eq!(node_accounts(&node.db.pool).await, want, "seed {seed:x}: accounts");

    let mut want: BTreeSet<(String, String, String, i64)> = model
        .conflicts
        .values()
        .map(|c| (c.conflict_id.to_string(), c.kind.as_str().to_owned(), c.account.to_string(), c.sides.len() as i64))
        .collect();
    want.extend(
        model
            .state
            .episodes
            .values()
            .map(|e| (e.conflict_id.to_string(), e.kind.as_str().to_owned(), e.account.to_string(), e.events as i64)),
    );
    let got: BTreeSet<(String, String, String, i64)> =
        sqlx::query_as("SELECT conflict_id::text, kind, account_id, event_count FROM conflicts")
            .fetch_all(&node.db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(got, want, "seed {seed:x}: conflicts");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&node.db.pool).await.unwrap();
    assert_eq!(dead, 0);
    common::assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
    want.into_iter().map(|c| c.1).collect()
}

/// (events applied, events held) in the node.
async fn progress(node: &common::TestNode) -> (i64, i64) {
    sqlx::query_as("SELECT (SELECT count(*) FROM ledger_events), (SELECT count(*) FROM pending_events)")
        .fetch_one(&node.db.pool)
        .await
        .unwrap()
}
