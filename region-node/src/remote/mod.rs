//! Remote apply: events that originated in other regions arrive on the mirrored topics
//! (`<origin>.ledger.events`, written by the replicator) and are applied here in causal order per
//! account, idempotently by event id, each transfer atomically (both postings or neither).
//!
//! Events are applied in rounds, each one transaction shaped load → decide → store: one read of
//! what the round needs, its accounts locked in id order like the write path ([`load`]); one pure
//! decision, [`ledger_core::apply::ApplyState::deliver`], the function the replica model's property
//! tests drive; one bulk write ([`store`]). Both live in [`crate::storage`]. An event that cannot apply yet is held in
//! `pending_events` with the one event it waits for; applying that event wakes exactly it (the
//! next round takes the events waiting on what the last one applied), so nothing rescans what is
//! held. An event that can never apply (unreadable, a balance out of range, refused by the
//! database) becomes a dead letter with its reason and blocks nothing else. Offsets are committed
//! only after the records' round committed.

use crate::storage::StorageError;
use crate::storage::{remote_load as load, remote_store as store};
use crate::telemetry;
use ledger_core::LedgerEvent;
use ledger_core::apply::{Fate, WaitKey};
use ledger_core::{AccountId, RegionId};
use opentelemetry::trace::TraceContextExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How long to keep gathering records into a batch once one has arrived.
const BATCH_GATHER: Duration = Duration::from_millis(5);
/// Pause after a failure before retrying.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Most events decided in one round (one transaction): received ones plus held ones woken or
/// waiting on the same accounts.
pub const ROUND_EVENTS_MAX: usize = 2_000;
/// Attempts of a round that meets a serialization failure or a deadlock before its events are
/// tried one by one.
const ROUND_ATTEMPTS_MAX: usize = 3;
/// How often held events are checked against what is applied, a safety net for a wake-up missed
/// (another applier of this region applied the awaited event while the round was deciding).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Remote-apply settings.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// This region.
    pub region: RegionId,
    /// The regional Kafka (mirrored topics live there).
    pub bootstrap: String,
    /// The mirrored topics, one per other region.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Records per batch.
    pub batch_max: usize,
}

/// An event to decide, with the record as received (stored as is: fields this version does not
/// know are kept).
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub event: LedgerEvent,
    pub raw: Value,
    /// What it waits for as stored in `pending_events` (none: not held yet).
    pub stored_wait: Option<WaitKey>,
}

impl std::borrow::Borrow<LedgerEvent> for Held {
    fn borrow(&self) -> &LedgerEvent {
        &self.event
    }
}

impl Held {
    pub(crate) fn parse(raw: Value) -> Result<Self, String> {
        match serde_json::from_value::<LedgerEvent>(raw.clone()) {
            Ok(event) => Ok(Self { event, raw, stored_wait: None }),
            Err(e) => Err(format!("not a ledger event: {e}")),
        }
    }

    /// Held events as `HELD_COLUMNS` read them; one whose payload or wait key no longer reads is
    /// logged and left where it is.
    pub(crate) fn from_rows(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Self>, sqlx::Error> {
        use sqlx::Row;
        let mut held = Vec::with_capacity(rows.len());
        for row in rows {
            let Ok(mut h) = Self::parse(row.try_get("payload")?)
                .map_err(|e| tracing::error!(error = %e, "a held event is unreadable"))
            else {
                continue;
            };
            let key: (Option<String>, Option<String>, Option<i64>) =
                (row.try_get("wait_account")?, row.try_get("wait_region")?, row.try_get("wait_counter")?);
            if let (Some(account), Some(region), Some(counter)) = key {
                let (Ok(account), Ok(region)) = (AccountId::new(account), RegionId::new(region)) else { continue };
                h.stored_wait = Some(WaitKey { account, region, counter: counter as u64 });
            }
            held.push(h);
        }
        Ok(held)
    }
}

/// The columns of a held event [`Held::from_rows`] reads, from `pending_events p`.
pub(crate) const HELD_COLUMNS: &str = "p.payload, p.wait_account, p.wait_region, p.wait_counter";

/// Runs until `shutdown`.
pub async fn run(
    pool: PgPool,
    cfg: RemoteConfig,
    shutdown: CancellationToken,
) -> Result<(), rdkafka::error::KafkaError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.bootstrap)
        .set("group.id", &cfg.group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "5000")
        // See the replicator: committed transactions are noticed sooner with a short long-poll.
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mut sweep_timer = tokio::time::interval(SWEEP_EVERY);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            // The first tick is immediate: events held before a restart may be deliverable now.
            _ = sweep_timer.tick() => {
                if !until_ok(&shutdown, || sweep(&pool, &cfg.region)).await {
                    break;
                }
                continue;
            }
            m = consumer.recv() => m,
        };
        let mut batch = Vec::new();
        match first {
            Ok(m) => batch.push(Received::of(&m)),
            Err(e) => {
                tracing::warn!(error = %e, "remote-apply consumer error");
                tokio::time::sleep(RETRY_BACKOFF).await;
                continue;
            }
        }
        let until = tokio::time::Instant::now() + BATCH_GATHER;
        while batch.len() < cfg.batch_max {
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(Received::of(&m)),
                _ => break,
            }
        }
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        let mut seen = HashSet::new();
        let mut spans = Vec::new();
        for Received { topic, partition, offset, payload, traceparent } in &batch {
            let parsed = payload
                .as_deref()
                .ok_or_else(|| "an empty record".to_owned())
                .and_then(|p| serde_json::from_slice::<Value>(p).map_err(|e| format!("not JSON: {e}")))
                .and_then(Held::parse);
            match parsed {
                // Never ours to apply again; the replicator should not send it.
                Ok(held) if held.event.origin_region == cfg.region => {}
                Ok(held) => {
                    if seen.insert(held.event.event_id) {
                        if telemetry::sampled(traceparent.as_deref()) {
                            spans.push(apply_span(topic, *partition, *offset, &held, traceparent.as_deref()));
                        }
                        events.push(held);
                    }
                }
                Err(reason) => unreadable.push((format!("{topic}:{partition}@{offset}"), payload.clone(), reason)),
            }
        }
        let round_span = round_span(&spans);
        let applied = until_ok(&shutdown, || {
            async {
                dead_letter_records(&pool, &unreadable).await?;
                let woken = apply(&pool, &cfg.region, events.clone()).await?;
                wake(&pool, &cfg.region, woken).await
            }
            .instrument(round_span.clone())
        })
        .await;
        // The events' spans end here: each covers its record's wait for the round that applied it.
        drop((round_span, spans));
        if !applied {
            break;
        }
        // Offsets only after the events are durably applied, held or set aside.
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for Received { topic, partition, offset, .. } in &batch {
            let e = next.entry((topic.clone(), *partition)).or_insert(offset + 1);
            *e = (*e).max(offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        consumer.commit(&tpl, CommitMode::Async)?;
    }
    Ok(())
}

/// A record as received, detached from the consumer.
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
    /// The `traceparent` header: the replicator's mirroring span, child of the origin's publish.
    traceparent: Option<String>,
}

impl Received {
    fn of(m: &impl Message) -> Self {
        let traceparent = m.headers().and_then(|hs| {
            hs.iter()
                .find(|h| h.key == telemetry::TRACEPARENT)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        });
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().map(<[u8]>::to_vec),
            traceparent,
        }
    }
}

/// One span per received event, continuing the trace its record carries (OpenTelemetry messaging
/// conventions, a `process` operation), so the origin's trace shows each region's apply.
fn apply_span(topic: &str, partition: i32, offset: i64, held: &Held, traceparent: Option<&str>) -> tracing::Span {
    let name = format!("process {topic}");
    let span = tracing::info_span!(
        "remote apply",
        otel.name = %name,
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = partition,
        messaging.kafka.offset = offset,
        messaging.message.id = %held.event.event_id,
        ledger.origin_region = %held.event.origin_region,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, traceparent);
    span
}

/// The round's PostgreSQL work as one database span (OpenTelemetry database conventions). A round
/// serves events of many traces: it is a child of the first event's span and links the others.
fn round_span(events: &[tracing::Span]) -> tracing::Span {
    let Some(first) = events.first() else { return tracing::Span::none() };
    let span = tracing::info_span!(
        parent: first,
        "remote apply round",
        otel.name = "remote apply round",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.system = "postgresql",
        db.operation.name = "remote apply round",
        ledger.events = events.len(),
    );
    for other in &events[1..] {
        span.add_link(other.context().span().span_context().clone());
    }
    span
}

/// Retries `step` with a pause until it succeeds (true) or shutdown (false). Only an unreachable
/// database gets here: everything an event can do wrong ends as a dead letter, not a retry.
async fn until_ok<F, Fut>(shutdown: &CancellationToken, mut step: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StorageError>>,
{
    loop {
        match step().await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "remote apply cannot reach PostgreSQL; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(RETRY_BACKOFF) => {}
                }
            }
        }
    }
}

/// How a failed round is handled.
enum Failure {
    /// PostgreSQL unreachable, the connection broke, or an error that is not the data's: retry
    /// later, decide nothing.
    Unavailable,
    /// A serialization failure, deadlock or unique key taken by a concurrent writer: the same round
    /// again reads what the other writer did.
    Transient,
    /// The database refused something of the round's data (a data exception or a constraint).
    Refused,
}

fn failure(e: &StorageError) -> Failure {
    match e {
        StorageError::Conflict(_) => Failure::Transient,
        // Only what the data can cause (a data exception, a constraint) makes a dead letter;
        // anything else (a syntax error, a missing column, resources) is ours or the database's,
        // and is retried rather than charged to the events.
        StorageError::Refused(_) => Failure::Refused,
        StorageError::Unavailable(_) | StorageError::Internal(_) => Failure::Unavailable,
    }
}

/// Decides and applies `seeds` (with held events waiting on their accounts); returns the events
/// applied, as the keys events held elsewhere may wait on. A round the database refuses is run
/// again event by event, so that only the event it refuses becomes a dead letter.
pub(crate) async fn apply(pool: &PgPool, region: &RegionId, seeds: Vec<Held>) -> Result<Vec<WaitKey>, StorageError> {
    if seeds.is_empty() {
        return Ok(Vec::new());
    }
    let mut attempt = 1;
    loop {
        match round(pool, region, &seeds, true).await {
            Ok(keys) => return Ok(keys),
            Err(e) => match failure(&e) {
                Failure::Unavailable => return Err(e),
                Failure::Transient if attempt < ROUND_ATTEMPTS_MAX => attempt += 1,
                _ => {
                    tracing::warn!(error = %e, events = seeds.len(), "a round of remote events failed; applying them one by one");
                    break;
                }
            },
        }
    }
    let mut keys = Vec::new();
    for seed in seeds {
        let mut attempt = 1;
        loop {
            match round(pool, region, std::slice::from_ref(&seed), false).await {
                Ok(applied) => {
                    keys.extend(applied);
                    break;
                }
                Err(e) => match failure(&e) {
                    Failure::Unavailable => return Err(e),
                    Failure::Transient if attempt < ROUND_ATTEMPTS_MAX => attempt += 1,
                    _ => {
                        dead_letter(pool, &seed, &format!("refused by the database: {e}")).await?;
                        break;
                    }
                },
            }
        }
    }
    Ok(keys)
}

/// One transaction: load, decide, store.
async fn round(pool: &PgPool, region: &RegionId, seeds: &[Held], expand: bool) -> Result<Vec<WaitKey>, StorageError> {
    let mut tx = pool.begin().await?;
    let mut events = seeds.to_vec();
    if expand && events.len() < ROUND_EVENTS_MAX {
        let accounts: BTreeSet<String> =
            seeds.iter().flat_map(|h| h.event.accounts()).map(AccountId::to_string).collect();
        let except: Vec<uuid::Uuid> = seeds.iter().map(|h| h.event.event_id).collect();
        let accounts: Vec<String> = accounts.into_iter().collect();
        events.extend(load::waiting_on(&mut tx, &accounts, &except, ROUND_EVENTS_MAX - events.len()).await?);
    }
    let mut loaded = load::load(&mut tx, &events).await?;
    // Decided in place: what the store compares against (accounts, episodes, labels as read) is
    // kept apart in `loaded`.
    let mut state = std::mem::take(&mut loaded.state);
    let fates = state.deliver(&events);
    // Between the read and the write: where another writer may open an account this round opens.
    fail::fail_point!("remote-apply-before-store");
    store::store(&mut tx, region, &events, &fates, &state, &loaded).await?;
    tx.commit().await?;
    let mut keys = Vec::new();
    for (held, fate) in events.iter().zip(&fates) {
        if let Fate::Applied(_) = fate {
            let e = &held.event;
            keys.extend(e.accounts().into_iter().map(|account| WaitKey {
                account: account.clone(),
                region: e.origin_region.clone(),
                counter: e.vectors[account].get(&e.origin_region),
            }));
        }
    }
    let applied = fates.iter().filter(|f| matches!(f, Fate::Applied(_))).count();
    metrics::counter!(crate::telemetry::metric::REMOTE_APPLIED).increment(applied as u64);
    Ok(keys)
}

/// Applies the held events waiting on `keys`, and those they wake in turn.
pub(crate) async fn wake(pool: &PgPool, region: &RegionId, keys: Vec<WaitKey>) -> Result<(), StorageError> {
    let mut keys: BTreeSet<WaitKey> = keys.into_iter().collect();
    while !keys.is_empty() {
        let (mut a, mut r, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for k in &keys {
            a.push(k.account.as_str());
            r.push(k.region.as_str());
            c.push(k.counter as i64);
        }
        let sql = format!(
            "SELECT {HELD_COLUMNS} FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(a, r, c)
             JOIN pending_events p ON p.wait_account = u.a AND p.wait_region = u.r AND p.wait_counter = u.c
             ORDER BY p.wait_needs, p.seq LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&a)
            .bind(&r)
            .bind(&c)
            .bind(ROUND_EVENTS_MAX as i64)
            .fetch_all(pool)
            .await?;
        if rows.is_empty() {
            break;
        }
        // A full page may leave events waiting on these keys: look again. Those decided now wait
        // on something else (or are gone), so each look makes progress.
        let full = rows.len() == ROUND_EVENTS_MAX;
        let next = apply(pool, region, Held::from_rows(&rows)?).await?;
        if !full {
            keys.clear();
        }
        keys.extend(next);
    }
    Ok(())
}

/// Decides the held events whose awaited event is applied (or that never had one recorded), and
/// updates the held-event gauges.
pub(crate) async fn sweep(pool: &PgPool, region: &RegionId) -> Result<(), StorageError> {
    loop {
        let sql = format!(
            "SELECT {HELD_COLUMNS} FROM pending_events p
             WHERE p.wait_account IS NULL OR EXISTS (
                 SELECT 1 FROM account_events ae WHERE ae.account_id = p.wait_account
                 AND ae.origin_region = p.wait_region AND ae.counter >= p.wait_counter)
             ORDER BY p.seq LIMIT $1"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ROUND_EVENTS_MAX as i64).fetch_all(pool).await?;
        if rows.is_empty() {
            break;
        }
        let keys = apply(pool, region, Held::from_rows(&rows)?).await?;
        wake(pool, region, keys).await?;
    }
    let (held, oldest): (i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(received_at)), 0)::float8 FROM pending_events",
    )
    .fetch_one(pool)
    .await?;
    metrics::gauge!(crate::telemetry::metric::HELD).set(held as f64);
    metrics::gauge!(crate::telemetry::metric::HELD_OLDEST_AGE).set(oldest);
    Ok(())
}

/// Sets aside an event the database refuses, so that it blocks nothing else.
async fn dead_letter(pool: &PgPool, held: &Held, reason: &str) -> Result<(), StorageError> {
    tracing::error!(event_id = %held.event.event_id, %reason, "a replicated event cannot be applied: dead letter");
    metrics::counter!(crate::telemetry::metric::DEAD_LETTERS).increment(1);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO dead_letters (event_id, origin_region, source, payload, reason) VALUES ($1, $2, 'apply', $3, $4)
         ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING",
    )
    .bind(held.event.event_id)
    .bind(held.event.origin_region.as_str())
    .bind(serde_json::to_vec(&held.raw).unwrap_or_default())
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM pending_events WHERE event_id = $1").bind(held.event.event_id).execute(&mut *tx).await?;
    Ok(tx.commit().await?)
}

/// Records that are not ledger events at all.
async fn dead_letter_records(pool: &PgPool, records: &[(String, Option<Vec<u8>>, String)]) -> Result<(), StorageError> {
    for (source, payload, reason) in records {
        tracing::error!(%source, %reason, "an unreadable replicated record: dead letter");
        metrics::counter!(crate::telemetry::metric::DEAD_LETTERS).increment(1);
        sqlx::query(
            "INSERT INTO dead_letters (source, payload, reason) VALUES ($1, $2, $3)
             ON CONFLICT (source) WHERE event_id IS NULL DO NOTHING",
        )
        .bind(source)
        .bind(payload)
        .bind(reason)
        .execute(pool)
        .await?;
    }
    Ok(())
}
