//! Proof that the engines are real: Kafka transactions and idempotence as the broker implements
//! them, and PostgreSQL with the regional migrations. All tests of this binary share one region.

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::BTreeSet;
use std::time::Duration;
use testkit::kafka_util::{read_all, transactional_producer};

const TIMEOUT: Duration = Duration::from_secs(30);

fn send(producer: &BaseProducer, topic: &str, key: &str, value: &str) {
    producer.send(BaseRecord::to(topic).key(key).payload(value)).map_err(|(e, _)| e).expect("enqueueing a record");
}

fn values(records: &[testkit::kafka_util::Record]) -> BTreeSet<String> {
    records.iter().filter_map(|r| r.value.clone()).collect()
}

#[test]
fn read_committed_sees_exactly_the_committed_transaction() {
    let region = &testkit::regions(1)[0];
    let prefix = testkit::unique_prefix();
    tokio::runtime::Runtime::new().unwrap().block_on(region.create_topics(&prefix));
    let topic = ledger_schema::events_topic(&prefix);
    let producer = transactional_producer(region.kafka_bootstrap(), &format!("{prefix}tx"));

    producer.begin_transaction().expect("begin");
    for i in 0..10 {
        send(&producer, &topic, &format!("acc{i}"), &format!("committed-{i}"));
    }
    producer.commit_transaction(TIMEOUT).expect("commit");

    producer.begin_transaction().expect("begin");
    for i in 0..5 {
        send(&producer, &topic, &format!("acc{i}"), &format!("aborted-{i}"));
    }
    // The aborted records must reach the broker's log, or the test would prove nothing.
    producer.flush(TIMEOUT).expect("flush");
    producer.abort_transaction(TIMEOUT).expect("abort");

    let committed = read_all(region.kafka_bootstrap(), &topic, "read_committed", TIMEOUT);
    let expected: BTreeSet<String> = (0..10).map(|i| format!("committed-{i}")).collect();
    assert_eq!(values(&committed), expected);
    assert_eq!(committed.len(), 10, "each committed record exactly once");

    let everything = read_all(region.kafka_bootstrap(), &topic, "read_uncommitted", TIMEOUT);
    assert_eq!(everything.len(), 15, "read_uncommitted also sees the aborted records");
    assert!(values(&everything).contains("aborted-4"));
}

#[test]
fn idempotent_producer_delivers_each_record_once_in_order() {
    let region = &testkit::regions(1)[0];
    let prefix = testkit::unique_prefix();
    tokio::runtime::Runtime::new().unwrap().block_on(region.create_topics(&prefix));
    let topic = ledger_schema::events_topic(&prefix);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", region.kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("creating an idempotent producer");
    for i in 0..200 {
        // One key: one partition, so order is observable.
        send(&producer, &topic, "acc-ordered", &format!("{i:04}"));
        producer.poll(Duration::ZERO);
    }
    producer.flush(TIMEOUT).expect("flush");

    let records = read_all(region.kafka_bootstrap(), &topic, "read_committed", TIMEOUT);
    let got: Vec<String> = records.iter().filter_map(|r| r.value.clone()).collect();
    let expected: Vec<String> = (0..200).map(|i| format!("{i:04}")).collect();
    assert_eq!(got, expected);
    assert!(records.windows(2).all(|w| w[0].partition == w[1].partition && w[1].offset == w[0].offset + 1));
}

#[tokio::test]
async fn migrations_apply_and_postgres_round_trips() {
    let region = &testkit::regions(1)[0];
    let db = region.fresh_database().await;

    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let embedded: Vec<i64> = ledger_schema::MIGRATOR.iter().map(|m| m.version).collect();
    assert!(!embedded.is_empty());
    assert_eq!(applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(), embedded);
    assert!(applied.iter().all(|(_, ok)| *ok));

    let owner: String = sqlx::query_scalar("SELECT region FROM region_identity").fetch_one(&db.pool).await.unwrap();
    assert_eq!(owner, region.name());
    // The table really is single-row and the region name really is checked.
    let second = sqlx::query("INSERT INTO region_identity (region) VALUES ('eu-west')").execute(&db.pool).await;
    assert!(second.is_err(), "a second identity row must be refused");
    let bad = sqlx::query("UPDATE region_identity SET region = 'Not A Region'").execute(&db.pool).await;
    assert!(bad.is_err(), "a malformed region name must be refused");

    let echoed: (i64, String) =
        sqlx::query_as("SELECT $1::bigint, $2::text").bind(i64::MAX).bind("ünïcode").fetch_one(&db.pool).await.unwrap();
    assert_eq!(echoed, (i64::MAX, "ünïcode".to_owned()));
}

#[tokio::test]
async fn each_test_gets_its_own_database() {
    let region = &testkit::regions(1)[0];
    let (a, b) = (region.fresh_database().await, region.fresh_database().await);
    assert_ne!(a.name, b.name);
    sqlx::query("CREATE TABLE only_in_a (x int)").execute(&a.pool).await.unwrap();
    let in_b: bool =
        sqlx::query_scalar("SELECT to_regclass('only_in_a') IS NOT NULL").fetch_one(&b.pool).await.unwrap();
    assert!(!in_b);
}

/// A database claimed by one region is refused to another, and claiming it again for its own
/// region is a no-op (what a node does at every start).
#[tokio::test]
async fn a_database_of_another_region_is_refused() {
    let region = &testkit::regions(1)[0];
    let db = region.fresh_database().await;
    let own = ledger_core::RegionId::new(region.name()).unwrap();
    ledger_schema::claim_region(&db.pool, &own).await.unwrap();
    let other = ledger_core::RegionId::new(format!("not-{}", region.name())).unwrap();
    match ledger_schema::claim_region(&db.pool, &other).await {
        Err(ledger_schema::ClaimError::WrongRegion { expected, found }) => {
            assert_eq!((expected, found), (other.to_string(), region.name().to_owned()));
        }
        outcome => panic!("claiming another region's database: {outcome:?}"),
    }
}
