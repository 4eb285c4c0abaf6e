//! The read-model consumer: a read_committed consumer group on the region's `ledger.events` that
//! keeps balance views and per-account history, drops duplicates, and writes snapshots.
//!
//! - Duplicates (the outbox may publish a record twice after a crash) are dropped by (event id,
//!   account). A bloom filter sized for 0.01% false positives answers "certainly new" without a
//!   query; a "maybe seen" goes to the exact check in PostgreSQL, and the primary key of
//!   `rm_processed` is the final guard, so a false positive never drops a real event.
//! - A batch of records is applied in one PostgreSQL transaction; offsets are committed only after
//!   it commits, so a crash replays records (dropped as duplicates) and never skips one.
//! - A snapshot of the view balances and offsets is written every `snapshot_every_events` records
//!   or `snapshot_every_ms`, whichever comes first. It holds only the balances changed since the
//!   snapshot before, but for every `snapshot_full_every`-th (and the first after a start), which
//!   holds them all; older snapshots than the full one before the latest are deleted (migration
//!   0018), so neither a snapshot's cost nor the table grows with the ledger between full ones.

use crate::telemetry::{self, metric};
use crate::views::{self, RecordChange, ViewChange};
use bloomfilter::Bloom;
use ledger_core::{AccountId, EventPayload, LedgerEvent};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// False-positive rate the bloom filter is sized for.
const BLOOM_FP_RATE: f64 = 0.0001;
/// How long to keep gathering records into a batch once one has arrived.
const BATCH_GATHER: Duration = Duration::from_millis(5);
/// A fetch waits for this much data...
const FETCH_MIN_BYTES: &str = "1048576";
/// ...or this long, whichever comes first: the read models' added delay is bounded by it. At
/// 1,000 transfers/s a 20 ms wait meant 50 fetches and read-model commits a second, which cost the
/// broker a third of its CPU and the write path's commits their tail latency (each read-model
/// commit flushes the WAL the write path's commits wait on).
const FETCH_WAIT_MS_MAX: &str = "100";
/// Pause after a failed batch before it is retried.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Kafka failed in a way the loop cannot continue from.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Kafka bootstrap.
    pub bootstrap: String,
    /// Topic to read.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Records per PostgreSQL transaction.
    pub batch_max: usize,
    /// Snapshot after this many records...
    pub snapshot_every_events: u64,
    /// ...or this long.
    pub snapshot_every: Duration,
    /// Every this many snapshots, one is full (the rest hold what changed); at least 1.
    pub snapshot_full_every: u32,
    /// Bloom filter capacity before renewal.
    pub bloom_items: usize,
}

/// One record, detached from the consumer.
struct Record {
    partition: i32,
    offset: i64,
    account: String,
    event_id: Option<uuid::Uuid>,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

impl Record {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let mut event_id = None;
        let mut traceparent = None;
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                let value = h.value.and_then(|v| std::str::from_utf8(v).ok());
                match h.key {
                    "event-id" => event_id = value.and_then(|v| uuid::Uuid::parse_str(v).ok()),
                    "traceparent" => traceparent = value.map(str::to_owned),
                    _ => {}
                }
            }
        }
        Self {
            partition: m.partition(),
            offset: m.offset(),
            account: m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
            event_id,
            payload: m.payload().unwrap_or_default().to_vec(),
            traceparent,
        }
    }
}

/// Exact-check-backed duplicate filter.
struct Dedupe {
    bloom: Bloom<String>,
    items: usize,
    capacity: usize,
}

impl Dedupe {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1_000);
        Self {
            bloom: Bloom::new_for_fp_rate(capacity, BLOOM_FP_RATE).expect("valid bloom parameters"),
            items: 0,
            capacity,
        }
    }

    fn maybe_seen(&self, key: &String) -> bool {
        self.bloom.check(key)
    }

    fn remember(&mut self, key: &String) {
        if self.items >= self.capacity {
            // Beyond capacity the false-positive rate climbs; start afresh (the exact check still
            // covers everything older).
            *self = Self::new(self.capacity);
        }
        self.bloom.set(key);
        self.items += 1;
    }
}

/// Runs until `shutdown`.
pub async fn run(pool: PgPool, cfg: ConsumerConfig, shutdown: CancellationToken) -> Result<(), ConsumeError> {
    let consumer: std::sync::Arc<StreamConsumer> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.bootstrap)
        .set("group.id", &cfg.group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // With the defaults every fetch returned as soon as one record was there: under load the
        // broker answered a fetch over all partitions per record or two, and spent half a core on it.
        .set("fetch.min.bytes", FETCH_MIN_BYTES)
        .set("fetch.wait.max.ms", FETCH_WAIT_MS_MAX)
        .create::<StreamConsumer>()
        .map(std::sync::Arc::new)?;
    consumer.subscribe(&[&cfg.topic])?;
    let mut dedupe = Dedupe::new(cfg.bloom_items);
    let mut since_snapshot: u64 = 0;
    let mut last_snapshot = Instant::now();
    // Snapshots written since this process started: the first one is full.
    let mut snapshots_taken: u64 = 0;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cfg.snapshot_every) => None,
            m = consumer.recv() => Some(m),
        };
        let mut batch = Vec::new();
        match first {
            Some(Ok(m)) => batch.push(Record::from_message(&m)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            None => {}
        }
        let gather_until = tokio::time::Instant::now() + BATCH_GATHER;
        while !batch.is_empty() && batch.len() < cfg.batch_max {
            match tokio::time::timeout_at(gather_until, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(Record::from_message(&m)),
                _ => break,
            }
        }
        if !batch.is_empty() {
            let applied = loop {
                match apply(&pool, &batch, &mut dedupe).await {
                    Ok(applied) => break applied,
                    Err(e) => {
                        tracing::warn!(error = %e, "applying to the read models failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(RETRY_BACKOFF) => {}
                        }
                    }
                }
            };
            since_snapshot += applied;
            commit_offsets(&consumer, &cfg.topic, &batch)?;
        }
        let due = since_snapshot >= cfg.snapshot_every_events
            || (since_snapshot > 0 && last_snapshot.elapsed() >= cfg.snapshot_every);
        if due {
            let full = snapshots_taken.is_multiple_of(u64::from(cfg.snapshot_full_every.max(1)));
            match snapshot(&pool, &consumer, full).await {
                Ok(()) => {
                    since_snapshot = 0;
                    last_snapshot = Instant::now();
                    snapshots_taken += 1;
                }
                Err(e) => {
                    metrics::counter!(metric::SNAPSHOT_FAILURES).increment(1);
                    tracing::warn!(error = %e, "snapshot failed");
                }
            }
        }
        metrics::gauge!(metric::SNAPSHOT_AGE).set(last_snapshot.elapsed().as_secs_f64());
    }
    // Shutdown: the last batch's offsets were committed asynchronously; make them durable.
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
}

fn commit_offsets(consumer: &StreamConsumer, topic: &str, batch: &[Record]) -> Result<(), ConsumeError> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in batch {
        let e = next.entry(r.partition).or_insert(r.offset + 1);
        *e = (*e).max(r.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.commit(&tpl, CommitMode::Async)?;
    Ok(())
}

/// Applies a batch in one transaction with a constant number of statements; returns how many
/// records were new.
async fn apply(pool: &PgPool, batch: &[Record], dedupe: &mut Dedupe) -> Result<u64, sqlx::Error> {
    let mut changes = Vec::with_capacity(batch.len());
    let mut maybe_seen = Vec::new();
    for record in batch {
        let span = if telemetry::sampled(record.traceparent.as_deref()) {
            let span = tracing::info_span!(
                "process ledger.events",
                otel.name = "process ledger.events",
                otel.kind = "consumer",
                messaging.system = "kafka",
                messaging.operation.name = "process",
                messaging.destination.partition.id = record.partition,
                messaging.kafka.offset = record.offset,
                trace_id = tracing::field::Empty,
            );
            telemetry::continue_trace(&span, record.traceparent.as_deref());
            span
        } else {
            tracing::Span::none()
        };
        let _entered = span.enter();
        if let Some(change) = decode(record) {
            if dedupe.maybe_seen(&dedupe_key(&change)) {
                maybe_seen.push(changes.len());
            }
            changes.push(change);
        }
    }
    let mut tx = pool.begin().await?;
    let mut duplicates = 0u64;
    if !maybe_seen.is_empty() {
        // The bloom filter only says "maybe"; the exact check decides.
        let seen: std::collections::HashSet<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT p.event_id, p.account_id FROM rm_processed p
             JOIN UNNEST($1::uuid[], $2::text[]) AS u(e, a) ON p.event_id = u.e AND p.account_id = u.a",
        )
        .bind(maybe_seen.iter().map(|&i| changes[i].event_id).collect::<Vec<_>>())
        .bind(maybe_seen.iter().map(|&i| changes[i].account.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let before = changes.len();
        changes.retain(|c| !seen.contains(&(c.event_id, c.account.clone())));
        duplicates += (before - changes.len()) as u64;
    }
    let new = views::apply_batch(&mut tx, &changes).await?;
    let applied = new.len() as u64;
    duplicates += (changes.len() - new.len()) as u64;
    sqlx::query("UPDATE rm_progress SET events_applied = events_applied + $1")
        .bind(applied as i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for change in &changes {
        dedupe.remember(&dedupe_key(change));
    }
    metrics::counter!(metric::APPLIED).increment(applied);
    metrics::counter!(metric::DUPLICATES).increment(duplicates);
    Ok(applied)
}

fn dedupe_key(change: &RecordChange) -> String {
    format!("{}/{}", change.event_id, change.account)
}

/// What a record changes in the views; `None` for a record that is not ours to interpret, skipped
/// loudly rather than blocking its partition forever.
fn decode(record: &Record) -> Option<RecordChange> {
    let event: LedgerEvent = match serde_json::from_slice(&record.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, partition = record.partition, offset = record.offset, "unreadable record skipped");
            return None;
        }
    };
    if record.event_id.is_some_and(|id| id != event.event_id) {
        tracing::error!(partition = record.partition, offset = record.offset, "event-id header disagrees with payload");
        return None;
    }
    let account = AccountId::new(record.account.clone()).ok()?;
    // A reservation or a void moves no balance: nothing for the views. A post moves it as its transfer.
    let posted_id = match &event.payload {
        EventPayload::PendingSettled { .. } => Some(event.legs().first()?.transfer_id),
        _ => None,
    };
    let change = match &event.payload {
        EventPayload::AccountOpened { account: spec } => ViewChange::Opened { currency: spec.currency.to_string() },
        EventPayload::TransferPending { .. } => return None,
        EventPayload::PendingSettled { pending_id: id, .. }
        | EventPayload::TransferPosted { transfer_id: id, .. }
        | EventPayload::TransactionPosted { transaction_id: id, .. } => ViewChange::Posted {
            currency: event.currency_for(&account)?.to_string(),
            amount: event.posting_for(&account)?,
            transfer_id: posted_id.unwrap_or(*id),
            occurred_at: chrono::DateTime::parse_from_rfc3339(&event.occurred_at)
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_else(|_| chrono::Utc::now()),
            entries: event.entries_for(&account),
        },
    };
    Some(RecordChange { event_id: event.event_id, account: record.account.clone(), change })
}

/// Writes a snapshot of the view balances with the consumer's committed position (all of them if
/// `full` or if no full snapshot exists yet, else those changed since the last snapshot), prunes
/// what a new full snapshot makes unnecessary, and refreshes the lag gauge.
async fn snapshot(pool: &PgPool, consumer: &std::sync::Arc<StreamConsumer>, full: bool) -> Result<(), sqlx::Error> {
    let position = consumer.position().unwrap_or_default();
    let mut offsets = serde_json::Map::new();
    let mut positions = Vec::new();
    for element in position.elements() {
        if let Offset::Offset(next) = element.offset() {
            offsets.insert(element.partition().to_string(), next.into());
            positions.push((element.topic().to_owned(), element.partition(), next));
        }
    }
    // Watermarks are broker round trips that block: on a worker thread they stalled every request
    // the node served (multi-second freezes under load), so they run on a blocking thread.
    let c = consumer.clone();
    let lag = tokio::task::spawn_blocking(move || {
        positions
            .iter()
            .filter_map(|(topic, partition, next)| {
                c.fetch_watermarks(topic, *partition, Duration::from_millis(500))
                    .ok()
                    .map(|(_, high)| (high - next).max(0))
            })
            .sum::<i64>()
    })
    .await
    .unwrap_or(0);
    metrics::gauge!(metric::CONSUMER_LAG).set(lag as f64);
    write_snapshot(pool, serde_json::Value::Object(offsets), full).await?;
    Ok(())
}

/// The snapshot row itself; returns its id. Repeatable read: the balances it records and the
/// change flags it clears are the same rows' same versions (read committed would clear the flag of
/// a change the full snapshot's read did not see). The other writers of the balance view (remote
/// apply runs beside the consumer, and another node's consumer) wait for it rather than fail it:
/// a balance changed between its read and its clearing of the flag would be a serialization
/// failure, which on a hot account under remote apply could repeat snapshot after snapshot. The
/// lock is taken before the first read, so the view starts once they are done; it conflicts with
/// itself, so two consumers take turns. They wait the few milliseconds of a delta (a full one of
/// 200,000 accounts: about 200 ms, once every `snapshot_full_every`).
async fn write_snapshot(pool: &PgPool, offsets: serde_json::Value, full: bool) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    sqlx::query("LOCK TABLE rm_balances IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
    let base: Option<i64> =
        sqlx::query_scalar("SELECT max(id) FROM ledger_snapshots WHERE base_id IS NULL").fetch_one(&mut *tx).await?;
    let base = base.filter(|_| !full);
    let id: i64 = sqlx::query_scalar(
        "WITH changed AS (
             UPDATE rm_balances SET snapshot_dirty = false WHERE snapshot_dirty RETURNING account_id, balance
         )
         INSERT INTO ledger_snapshots (events_applied, offsets, balances, base_id)
         SELECT p.events_applied, $1,
                CASE WHEN $2::int8 IS NULL
                     THEN COALESCE((SELECT jsonb_object_agg(account_id, balance) FROM rm_balances), '{}')
                     ELSE COALESCE((SELECT jsonb_object_agg(account_id, balance) FROM changed), '{}') END,
                $2
         FROM rm_progress p
         RETURNING id",
    )
    .bind(&offsets)
    .bind(base)
    .fetch_one(&mut *tx)
    .await?;
    if base.is_none() {
        // Kept: the full snapshot before this one and its deltas, so a reader of one of those
        // (by id) is not cut off the moment a new full one lands.
        sqlx::query(
            "DELETE FROM ledger_snapshots
             WHERE id < (SELECT max(id) FROM ledger_snapshots WHERE base_id IS NULL AND id < $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}
