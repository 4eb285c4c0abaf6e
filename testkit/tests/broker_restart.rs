//! A Kafka broker killed with SIGKILL and restarted by the harness comes back with its committed
//! data. Its own test binary, because killing the shared broker would disturb other tests.

use rdkafka::producer::{BaseRecord, Producer};
use std::time::Duration;
use testkit::kafka_util::{read_all, transactional_producer};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn killed_broker_comes_back_with_its_committed_data() {
    let region = &testkit::regions(1)[0];
    let prefix = testkit::unique_prefix();
    tokio::runtime::Runtime::new().unwrap().block_on(region.create_topics(&prefix));
    let topic = ledger_schema::events_topic(&prefix);
    {
        let producer = transactional_producer(region.kafka_bootstrap(), &format!("{prefix}tx"));
        producer.begin_transaction().unwrap();
        for i in 0..50 {
            producer.send(BaseRecord::to(&topic).key(&format!("acc{i}")).payload(&format!("v{i}"))).unwrap();
        }
        producer.commit_transaction(TIMEOUT).unwrap();
    }

    // The commit is decided when commit_transaction returns, but the markers that make the records
    // readable are written just after. Killed in that window, the restarted broker sometimes kept
    // the records unreadable for longer than any timeout here: the claim under test is about data
    // the broker had made visible, so it is visible before the kill.
    let before = read_all(region.kafka_bootstrap(), &topic, "read_committed", TIMEOUT);
    assert_eq!(before.len(), 50, "the committed transaction is visible before the kill");

    let old_pid = region.kafka_pid().expect("local engines have pids");
    region.kill_kafka();
    assert!(!std::path::Path::new(&format!("/proc/{old_pid}")).exists(), "the broker process is gone");
    region.start_kafka();
    assert_ne!(region.kafka_pid(), Some(old_pid));

    // A read right after the restart can end early while the broker is still loading.
    let settle_until = std::time::Instant::now() + TIMEOUT;
    let mut records = read_all(region.kafka_bootstrap(), &topic, "read_committed", TIMEOUT);
    while records.len() < 50 && std::time::Instant::now() < settle_until {
        std::thread::sleep(std::time::Duration::from_millis(500));
        records = read_all(region.kafka_bootstrap(), &topic, "read_committed", TIMEOUT);
    }
    let mut values: Vec<String> = records.into_iter().filter_map(|r| r.value).collect();
    values.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
    assert_eq!(values, (0..50).map(|i| format!("v{i}")).collect::<Vec<_>>());

    // And it takes new transactions after the restart.
    let producer = transactional_producer(region.kafka_bootstrap(), &format!("{prefix}tx"));
    producer.begin_transaction().unwrap();
    producer.send(BaseRecord::to(&topic).key("acc-after").payload("after-restart")).unwrap();
    producer.commit_transaction(TIMEOUT).unwrap();
    let records = read_all(region.kafka_bootstrap(), &topic, "read_committed", TIMEOUT);
    assert_eq!(records.len(), 51);
}
