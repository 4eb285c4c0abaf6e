//! A pair's transactions start at least `commit_interval_ms` apart under load (each costs the
//! target broker CPU whatever it holds), a quiet pair's first record does not wait for the
//! interval, and `commit_interval_ms` past its limit is refused.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use replicator::{COMMIT_INTERVAL_MS_MAX, ReplicatorConfig, Source, StartError};
use std::time::{Duration, Instant};
use testkit::kafka_util::{read_all, transactional_producer};

const INTERVAL_MS: u64 = 400;
/// Records of one transaction are sent within a few milliseconds; transactions are at least
/// `INTERVAL_MS` apart. A gap above this splits two transactions.
const SAME_ROUND_GAP_MS: i64 = 100;
/// Clock and scheduling slack on a loaded two-core machine: a round's records are stamped when
/// sent, a little after the round started.
const SLACK_MS: i64 = 60;

fn config(regions: &[testkit::Region], prefix: &str, commit_interval_ms: u64) -> ReplicatorConfig {
    ReplicatorConfig {
        target_region: regions[1].name().to_owned(),
        target_bootstrap: regions[1].kafka_bootstrap().to_owned(),
        sources: vec![Source {
            region: regions[0].name().to_owned(),
            bootstrap: regions[0].kafka_bootstrap().to_owned(),
        }],
        topic_prefix: prefix.to_owned(),
        metrics_addr: String::new(),
        batch_max: 10_000,
        commit_interval_ms,
        // One heartbeat at start, then none during the test: every later round carries events.
        heartbeat_ms: 3_600_000,
        otlp_endpoint: String::new(),
    }
}

/// Both regions' own topics and the pair's mirrors, so a test can read them before the pair runs.
fn create_topics(rt: &tokio::runtime::Runtime, regions: &[testkit::Region], prefix: &str) {
    rt.block_on(regions[0].create_topics(prefix));
    rt.block_on(regions[1].create_topics(prefix));
    let mirrors = ledger_schema::mirror_topics(prefix, regions[0].name());
    rt.block_on(ledger_schema::create_topics(regions[1].kafka_bootstrap(), &mirrors, Duration::from_secs(60))).unwrap();
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Reads `topic` on `bootstrap` (read_committed) until it holds `n` records or `timeout` passes.
fn wait_for(bootstrap: &str, topic: &str, n: usize, timeout: Duration) -> Vec<testkit::kafka_util::Record> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = read_all(bootstrap, topic, "read_committed", Duration::from_secs(10));
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rounds_are_at_least_the_interval_apart_and_a_quiet_pair_sends_at_once() {
    let regions = testkit::regions(2);
    let prefix = testkit::unique_prefix();
    let rt = tokio::runtime::Runtime::new().unwrap();
    create_topics(&rt, &regions, &prefix);
    let replicator = rt.block_on(replicator::start(config(&regions, &prefix, INTERVAL_MS))).unwrap();
    let (source, target) = (regions[0].name(), &regions[1]);
    let mirrored = ledger_schema::mirrored_events_topic(&prefix, source);
    let beats = ledger_schema::mirrored_heartbeats_topic(&prefix, source);
    assert_eq!(wait_for(target.kafka_bootstrap(), &beats, 1, Duration::from_secs(60)).len(), 1, "pair mirroring");

    let producer = transactional_producer(regions[0].kafka_bootstrap(), &format!("{prefix}rounds-source"));
    let topic = ledger_schema::events_topic(&prefix);
    let mut sent = 0usize;
    let mut produce = |n: usize| {
        producer.begin_transaction().unwrap();
        for _ in 0..n {
            let value = format!("event-{sent}");
            let headers = OwnedHeaders::new().insert(Header { key: "origin-region", value: Some(source) });
            producer
                .send(BaseRecord::to(&topic).key(&format!("acc{}", sent % 17)).payload(&value).headers(headers))
                .unwrap();
            sent += 1;
        }
        producer.commit_transaction(Duration::from_secs(30)).unwrap();
    };

    // The source producer's first transaction is slow (coordinator look-ups): not the pair's.
    produce(1);
    assert_eq!(wait_for(target.kafka_bootstrap(), &mirrored, 1, Duration::from_secs(30)).len(), 1);
    // Quiet for longer than the interval: the next record goes in the first round after it
    // arrives, not an interval later.
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    produce(1);
    let committed_ms = epoch_ms();
    let quiet = wait_for(target.kafka_bootstrap(), &mirrored, 2, Duration::from_secs(30));
    assert_eq!(quiet.len(), 2);
    // The mirrored record is stamped when the replicator sends it.
    let quiet_ms = quiet.iter().filter_map(|r| r.timestamp_ms).max().unwrap() - committed_ms;
    // The source's fetch wait (50 ms) and this machine's scheduling: well under the interval.
    assert!(quiet_ms < INTERVAL_MS as i64 / 2, "a quiet pair's record was sent {quiet_ms} ms after its commit");

    // Under load: 3,000 records over about 3 s, 30 source transactions.
    let loaded = Instant::now();
    for _ in 0..30 {
        produce(100);
        std::thread::sleep(Duration::from_millis(100));
    }
    let load_ms = loaded.elapsed().as_millis() as i64;
    let records = wait_for(target.kafka_bootstrap(), &mirrored, sent, Duration::from_secs(60));
    let mut values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
    values.sort();
    values.dedup();
    assert_eq!((records.len(), values.len()), (sent, sent), "every record mirrored exactly once");
    rt.block_on(replicator.stop());

    // Each round writes the pair's next offsets in its transaction: their timestamps mark rounds.
    let offsets = read_all(
        target.kafka_bootstrap(),
        &ledger_schema::replicator_offsets_topic(&prefix, source),
        "read_committed",
        Duration::from_secs(10),
    );
    let mut stamps: Vec<i64> = offsets.iter().map(|r| r.timestamp_ms.expect("a timestamp")).collect();
    stamps.sort();
    let mut rounds: Vec<i64> = Vec::new();
    for t in stamps {
        if rounds.last().is_none_or(|last| t - last > SAME_ROUND_GAP_MS) {
            rounds.push(t);
        }
    }
    let gaps: Vec<i64> = rounds.windows(2).map(|w| w[1] - w[0]).collect();
    let closest = gaps.iter().copied().min().unwrap_or(i64::MAX);
    assert!(
        closest >= INTERVAL_MS as i64 - SLACK_MS,
        "two rounds {closest} ms apart, the interval is {INTERVAL_MS} ms: {gaps:?}"
    );
    // The heartbeat's round, the two quiet records', then the load's: about one per interval, never
    // one per source transaction (30), and not all at the end.
    let under_load = rounds.len() - 3;
    let most = (load_ms / INTERVAL_MS as i64 + 2) as usize;
    assert!((3..=most).contains(&under_load), "{under_load} rounds for {load_ms} ms of load: {gaps:?}");
}

#[test]
fn a_commit_interval_past_its_limit_is_refused() {
    let regions = testkit::regions(2);
    let prefix = testkit::unique_prefix();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let over = config(&regions, &prefix, COMMIT_INTERVAL_MS_MAX + 1);
    match rt.block_on(replicator::start(over)) {
        Err(StartError::Config(message)) => assert!(message.contains("commit_interval_ms"), "{message}"),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("commit_interval_ms {} accepted", COMMIT_INTERVAL_MS_MAX + 1),
    }
    // The limit itself is accepted, and a pair waiting out so long an interval still stops at once.
    create_topics(&rt, &regions, &prefix);
    let running = rt.block_on(replicator::start(config(&regions, &prefix, COMMIT_INTERVAL_MS_MAX))).unwrap();
    let beats = ledger_schema::mirrored_heartbeats_topic(&prefix, regions[0].name());
    assert_eq!(wait_for(regions[1].kafka_bootstrap(), &beats, 1, Duration::from_secs(60)).len(), 1, "pair mirroring");
    let stopping = Instant::now();
    rt.block_on(running.stop());
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopping took {:?}", stopping.elapsed());
}
