//! kill -9 of a replicator mid-stream, then a restart: the target's committed data holds every
//! source event exactly once. Also: a record that did not originate in its source is never mirrored.

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::kafka_util::read_all;

fn spawn(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_replicator"))
        .arg("--config")
        .arg(config)
        .env("LEDGER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the replicator")
}

#[test]
fn kill_9_mid_stream_mirrors_everything_exactly_once() {
    let regions = testkit::regions(2);
    let (source, target) = (&regions[0], &regions[1]);
    let prefix = testkit::unique_prefix();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(source.create_topics(&prefix));
    rt.block_on(target.create_topics(&prefix));
    let dir = tempfile_dir();
    let config = dir.join("replicator.toml");
    std::fs::write(
        &config,
        format!(
            "target_region = {:?}\ntarget_bootstrap = {:?}\ntopic_prefix = {:?}\nbatch_max = 50\n\n[[sources]]\nregion = {:?}\nbootstrap = {:?}\n",
            target.name(),
            target.kafka_bootstrap(),
            prefix,
            source.name(),
            source.kafka_bootstrap()
        ),
    )
    .unwrap();

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", source.kafka_bootstrap())
        .set("transactional.id", format!("{prefix}test-source"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    let topic = ledger_schema::events_topic(&prefix);
    let mut sent = 0;
    let mut produce = |n: usize, origin: &str| {
        producer.begin_transaction().unwrap();
        for _ in 0..n {
            let value = format!("event-{sent}");
            let headers = OwnedHeaders::new().insert(Header { key: "origin-region", value: Some(origin) });
            producer
                .send(BaseRecord::to(&topic).key(&format!("acc{}", sent % 13)).payload(&value).headers(headers))
                .unwrap();
            sent += 1;
        }
        producer.commit_transaction(Duration::from_secs(30)).unwrap();
    };

    let mut replicator = spawn(&config);
    // Load while the replicator is killed and restarted three times.
    for round in 0..3 {
        for _ in 0..10 {
            produce(40, source.name());
            std::thread::sleep(Duration::from_millis(30));
        }
        std::thread::sleep(Duration::from_millis(200 + 150 * round));
        replicator.kill().unwrap(); // SIGKILL, mid-transaction or not
        replicator.wait().unwrap();
        replicator = spawn(&config);
    }
    produce(40, source.name());
    // Never mirrored: it claims another origin.
    produce(1, "elsewhere");
    let expected = sent - 1;

    let mirrored = ledger_schema::mirrored_events_topic(&prefix, source.name());
    let deadline = Instant::now() + Duration::from_secs(90);
    let records = loop {
        let records = read_all(target.kafka_bootstrap(), &mirrored, "read_committed", Duration::from_secs(20));
        if records.len() >= expected || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    replicator.kill().unwrap();
    replicator.wait().unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        *counts.entry(r.value.clone().unwrap()).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "mirrored twice: {duplicates:?}");
    assert_eq!(counts.len(), expected, "every source event mirrored once");
    assert!(!counts.contains_key(&format!("event-{expected}")), "a record of another origin was mirrored");
    // Keys and partitions are kept, so each account's order survives.
    for r in &records {
        let n: usize = r.value.as_ref().unwrap()["event-".len()..].parse().unwrap();
        assert_eq!(r.key.as_deref(), Some(format!("acc{}", n % 13).as_str()));
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("replicator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
