//! Small Kafka helpers for tests: read a whole topic under a chosen isolation level.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::time::{Duration, Instant};

/// A transactional producer with `init_transactions` done, ready for `begin_transaction`.
/// Blocking, like [`read_all`].
pub fn transactional_producer(bootstrap: &str, transactional_id: &str) -> rdkafka::producer::BaseProducer {
    use rdkafka::producer::Producer;
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .create()
        .expect("creating a transactional producer");
    producer.init_transactions(Duration::from_secs(30)).expect("init_transactions");
    producer
}

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, as text.
    pub key: Option<String>,
    /// Value, as text.
    pub value: Option<String>,
    /// Headers, as text, in order.
    pub headers: Vec<(String, String)>,
    /// The record's timestamp (the producer's create time unless the topic says otherwise), in
    /// milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// Reads `topic` from the beginning until every partition reports its end (or `timeout` passes),
/// with `isolation.level` set to `isolation` ("read_committed" or "read_uncommitted"). Blocking:
/// call it from `spawn_blocking` or a plain thread in async tests.
pub fn read_all(bootstrap: &str, topic: &str, isolation: &str, timeout: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("testkit-read-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        // End-of-partition events tell us when we have read everything there is.
        .set("enable.partition.eof", "true")
        .create()
        .expect("creating a consumer");
    consumer.subscribe(&[topic]).expect("subscribing");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    let mut at_end = std::collections::HashSet::new();
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && (partitions == 0 || at_end.len() < partitions) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                    headers: m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    timestamp_ms: m.timestamp().to_millis(),
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => {}
        }
    }
    records
}
