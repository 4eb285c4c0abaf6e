//! One (source → target) pair: consume the source's events and heartbeats, produce them to the
//! target together with the next source offsets, in one Kafka transaction per batch.

use crate::Source;
use ledger_schema::transactions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How long a Kafka transaction call may take.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before restarting a pair after a failure.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// How long creating the pair's topics may take: no retry within one attempt, as a failing pair
/// restarts after `RETRY_BACKOFF` anyway (and notices a shutdown in between).
const TOPICS_TIMEOUT: Duration = Duration::ZERO;
/// Longest wait for a quiet pair's next record before heartbeats and shutdown are looked at.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often the lag in events is measured.
const LAG_EVERY: Duration = Duration::from_secs(2);

pub(crate) struct Pair {
    pub source: Source,
    pub target: Source,
    pub prefix: String,
    pub batch_max: usize,
    pub commit_interval: Duration,
    pub heartbeat: Duration,
    pub metrics: Arc<metrics_exporter_prometheus::PrometheusRecorder>,
}

/// Metadata of the lag gauges.
static LAG_METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Pair {
    /// Sets a gauge of this pair on the replicator's own recorder.
    fn gauge(&self, name: &'static str, value: f64) {
        use metrics::Recorder;
        let labels = vec![
            metrics::Label::new("source", self.source.region.clone()),
            metrics::Label::new("target", self.target.region.clone()),
        ];
        self.metrics.register_gauge(&metrics::Key::from_parts(name, labels), &LAG_METADATA).set(value);
    }

    /// This pair's offsets topic on the target. One per pair, so nobody else writes to it: once
    /// `init_transactions` has fenced the previous incarnation, reading it to the end terminates
    /// (a topic shared with a busy pair kept moving its end forward while it was being read).
    fn offsets_topic(&self) -> String {
        ledger_schema::replicator_offsets_topic(&self.prefix, &self.source.region)
    }

    fn offset_key(&self, topic: &str, partition: i32) -> String {
        format!("{}|{topic}|{partition}", self.source.region)
    }
}

#[derive(Debug, thiserror::Error)]
enum PairError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Topics(#[from] ledger_schema::TopicsError),
    #[error("{0}")]
    Other(String),
}

pub(crate) async fn run(pair: Pair, shutdown: CancellationToken) {
    let pair = Arc::new(pair);
    while !shutdown.is_cancelled() {
        let p = pair.clone();
        let stop = shutdown.clone();
        // Kafka's transactional calls block: the whole pair runs on a blocking thread.
        let outcome = tokio::task::spawn_blocking(move || mirror(&p, &stop)).await;
        match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::warn!(source = %pair.source.region, target = %pair.target.region, error = %e, "pair restarting")
            }
            Err(e) => tracing::error!(error = %e, "pair task panicked"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY_BACKOFF) => {}
        }
    }
}

/// Runs a future to completion on this (blocking) thread.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

/// Time since `at`; forever when it never happened.
fn since(at: Option<Instant>) -> Duration {
    at.map_or(Duration::MAX, |t| t.elapsed())
}

fn millis_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The span of one event's mirroring (OpenTelemetry messaging conventions): read from the
/// source's topic, sent to the target's mirror in the pair's transaction.
fn mirror_span(
    source_topic: &str,
    destination: &str,
    partition: i32,
    offset: i64,
    src: &str,
    dst: &str,
) -> tracing::Span {
    let name = format!("send {destination}");
    tracing::info_span!(
        "mirror",
        otel.name = %name,
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.name = "send",
        messaging.operation.type = "send",
        messaging.destination.name = %destination,
        messaging.source.name = %source_topic,
        messaging.destination.partition.id = partition,
        messaging.kafka.offset = offset,
        replication.source = %src,
        replication.target = %dst,
        trace_id = tracing::field::Empty,
    )
}

/// Reads this pair's committed source offsets back from the target's offsets topic.
fn load_offsets(pair: &Pair) -> Result<HashMap<(String, i32), i64>, PairError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &pair.target.bootstrap)
        .set("group.id", format!("{}replicator-offsets-reader", pair.prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let topic = pair.offsets_topic();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let prefix = format!("{}|", pair.source.region);
    let mut offsets = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Instant::now() > deadline {
            return Err(PairError::Other(format!("reading {topic} to its end took over 30 s")));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                let Some(rest) = key.strip_prefix(&prefix) else { continue };
                let Some((topic, partition)) = rest.rsplit_once('|') else { continue };
                let (Ok(partition), Some(Ok(next))) =
                    (partition.parse::<i32>(), m.payload().map(|v| String::from_utf8_lossy(v).parse::<i64>()))
                else {
                    continue;
                };
                offsets.insert((topic.to_owned(), partition), next);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(offsets),
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
}

fn mirror(pair: &Pair, shutdown: &CancellationToken) -> Result<(), PairError> {
    let (src, dst) = (&pair.source.region, &pair.target.region);
    let (target_topics, source_topics) =
        (ledger_schema::mirror_topics(&pair.prefix, src), ledger_schema::source_topics(&pair.prefix));
    futures_lite_block_on(ledger_schema::create_topics(&pair.target.bootstrap, &target_topics, TOPICS_TIMEOUT))?;
    futures_lite_block_on(ledger_schema::create_topics(&pair.source.bootstrap, &source_topics, TOPICS_TIMEOUT))?;
    tracing::info!(source = %src, target = %dst, "pair topics ready");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &pair.target.bootstrap)
        .set("transactional.id", format!("{}replicator-{src}-to-{dst}", pair.prefix))
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()?;
    // Fences any earlier incarnation of this pair: its open transaction can never commit now.
    producer.init_transactions(KAFKA_CALL_TIMEOUT)?;
    tracing::info!(source = %src, target = %dst, "pair producer ready");
    let mut committed = load_offsets(pair)?;
    tracing::info!(source = %src, target = %dst, offsets = committed.len(), "pair offsets loaded");

    let beats: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &pair.source.bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &pair.source.bootstrap)
        .set("group.id", format!("{}replicator-{src}-to-{dst}", pair.prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // A committed transaction becomes visible when its marker lands; a shorter long-poll
        // notices it sooner (the default waits up to 500 ms per hop).
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let (events, heartbeats) =
        (ledger_schema::events_topic(&pair.prefix), ledger_schema::heartbeats_topic(&pair.prefix));
    let mut tpl = TopicPartitionList::new();
    for topic in [&events, &heartbeats] {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata.topics().first().map(|t| t.partitions().len() as i32).unwrap_or(0);
        if partitions == 0 {
            return Err(PairError::Other(format!("source topic {topic} has no partitions yet")));
        }
        for p in 0..partitions {
            let offset = committed.get(&(topic.clone(), p)).map(|o| Offset::Offset(*o)).unwrap_or(Offset::Beginning);
            tpl.add_partition_offset(topic, p, offset)?;
        }
    }
    consumer.assign(&tpl)?;
    tracing::info!(source = %src, target = %dst, "pair mirroring");

    // `None`: never yet, so due at once. (`Instant::now() - interval` panics when the machine has
    // been up for less than the interval: an hour-long heartbeat on a fresh CI machine.)
    let (mut last_beat, mut last_lag, mut last_round): (Option<Instant>, Option<Instant>, Option<Instant>) =
        (None, None, None);
    let mirrored_events = ledger_schema::mirrored_events_topic(&pair.prefix, src);
    let mirrored_beats = ledger_schema::mirrored_heartbeats_topic(&pair.prefix, src);
    let offsets_topic = pair.offsets_topic();
    while !shutdown.is_cancelled() {
        if since(last_beat) >= pair.heartbeat {
            let now = millis_now().to_string();
            let _ = beats.send(BaseRecord::to(&heartbeats).key(dst.as_str()).payload(&now));
            last_beat = Some(Instant::now());
        }
        if since(last_lag) >= LAG_EVERY {
            let mut lag = 0i64;
            for ((topic, partition), next) in committed.iter().filter(|((t, _), _)| *t == events) {
                if let Ok((_, high)) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(1)) {
                    lag += (high - next).max(0);
                }
            }
            pair.gauge("replication_lag_events", lag as f64);
            last_lag = Some(Instant::now());
        }
        // Rounds start at least `commit_interval` apart: each transaction costs the target broker
        // CPU whatever it holds (markers on every partition it touched), so under load a round
        // takes everything that arrived meanwhile. A quiet pair's first record goes at once.
        while since(last_round) < pair.commit_interval && !shutdown.is_cancelled() {
            std::thread::sleep(pair.commit_interval.saturating_sub(since(last_round)).min(IDLE_POLL));
        }
        if shutdown.is_cancelled() {
            break;
        }
        let mut batch = Vec::new();
        // The first record is waited for, briefly (heartbeats and shutdown are checked between
        // waits); the rest are only what the consumer already holds.
        let mut wait = IDLE_POLL;
        while batch.len() < pair.batch_max {
            match consumer.poll(wait) {
                Some(Ok(m)) => {
                    batch.push(m.detach());
                    wait = Duration::ZERO;
                }
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        last_round = Some(Instant::now());
        producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(batch.len() + 1);
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut newest_beat: Option<i64> = None;
        // Each sampled event's mirroring span, ended once its transaction is settled.
        let mut spans = Vec::new();
        let sent = (|| -> Result<(), PairError> {
            for m in &batch {
                next.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                let header = |name: &str| {
                    m.headers().and_then(|hs| {
                        hs.iter()
                            .find(|h| h.key == name)
                            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    })
                };
                let destination = if m.topic() == events {
                    // Only events that originated in the source region are ever mirrored.
                    if header("origin-region").as_deref() != Some(src.as_str()) {
                        tracing::warn!(
                            topic = m.topic(),
                            offset = m.offset(),
                            "record not from its source region skipped"
                        );
                        continue;
                    }
                    &mirrored_events
                } else {
                    if m.key() == Some(dst.as_bytes()) {
                        newest_beat =
                            m.payload().and_then(|v| String::from_utf8_lossy(v).parse::<i64>().ok()).max(newest_beat);
                    }
                    &mirrored_beats
                };
                // The origin's trace continues here: the mirrored record carries the mirroring
                // span's traceparent in place of the publisher's, so each region's apply hangs
                // below the hop that brought the event there.
                let parent = header(ledger_telemetry::TRACEPARENT);
                let traceparent = if destination == &mirrored_events && ledger_telemetry::sampled(parent.as_deref()) {
                    let span = mirror_span(m.topic(), destination, m.partition(), m.offset(), src, dst);
                    ledger_telemetry::continue_trace(&span, parent.as_deref());
                    let own = ledger_telemetry::traceparent_of(&span);
                    spans.push(span);
                    own
                } else {
                    None
                };
                let mut headers = OwnedHeaders::new();
                if let Some(hs) = m.headers() {
                    for h in hs.iter() {
                        let value = match (&traceparent, h.key == ledger_telemetry::TRACEPARENT) {
                            (Some(own), true) => Some(own.as_bytes()),
                            _ => h.value,
                        };
                        headers = headers.insert(Header { key: h.key, value });
                    }
                }
                let mut record = FutureRecord::<[u8], [u8]>::to(destination).partition(m.partition()).headers(headers);
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                if let Some(v) = m.payload() {
                    record = record.payload(v);
                }
                deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
            }
            for ((topic, partition), offset) in &next {
                let key = pair.offset_key(topic, *partition);
                let value = offset.to_string();
                deliveries.push(
                    producer
                        .send_result(FutureRecord::to(&offsets_topic).key(&key).payload(&value))
                        .map_err(|(e, _)| e)?,
                );
            }
            Ok(())
        })();
        // Every report awaited and released before the commit (see `ledger_schema::transactions`):
        // left to the commit's flush, each transaction slept 100 ms.
        let committed_now = sent
            .and_then(|()| {
                futures_lite_block_on(transactions::delivered(std::mem::take(&mut deliveries), KAFKA_CALL_TIMEOUT))
                    .map_err(PairError::from)
            })
            .and_then(|()| {
                transactions::drained(&producer);
                producer.commit_transaction(KAFKA_CALL_TIMEOUT).map_err(PairError::from)
            });
        if let Err(e) = committed_now {
            let _ = producer.abort_transaction(KAFKA_CALL_TIMEOUT);
            for span in &spans {
                span.in_scope(|| tracing::warn!(error = %e, "mirroring transaction aborted"));
            }
            // Restart from the committed offsets: the consumer's position is past the aborted batch.
            return Err(e);
        }
        committed.extend(next);
        if let Some(beat) = newest_beat {
            pair.gauge("replication_lag_seconds", ((millis_now() - beat).max(0) as f64) / 1000.0);
        }
    }
    Ok(())
}
