//! The outbox publisher: moves committed outbox rows to the region's `ledger.events` topic with an
//! idempotent, transactional producer, then marks them published.
//!
//! - It wakes on LISTEN/NOTIFY (the write path notifies in the same transaction as the rows), with
//!   a slow poll as a fallback, never a tight loop.
//! - Only one publisher of a region publishes at a time: it must hold a PostgreSQL advisory lock,
//!   and only then initialises its producer, whose stable `transactional.id` fences any older
//!   producer still alive. A second instance waits as a standby.
//! - A crash between the Kafka commit and the marking publishes those rows again after restart;
//!   consumers drop the copies by event id. That is the one duplicate this design allows, and the
//!   failpoint `outbox-after-kafka-commit` exists to test it.

use crate::outbox_prune;
use crate::telemetry::{self, metric};
use chrono::{DateTime, Utc};
use ledger_schema::transactions;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgPool, Row};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Advisory lock key shared by every publisher of a region database ("outbox" in ASCII).
const PUBLISHER_LOCK_KEY: i64 = 0x6f7574626f78;
/// How long a Kafka transaction call may take before the producer is rebuilt.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failure before trying again.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// Why a publish round failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// PostgreSQL failed.
    #[error("postgresql: {0}")]
    Db(#[from] sqlx::Error),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A failpoint fired (tests only).
    #[error("failpoint: {0}")]
    Injected(String),
}

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Region name, for the `origin-region` header and the transactional id.
    pub region: String,
    /// Kafka bootstrap.
    pub bootstrap: String,
    /// Prefix of every topic name (the row names the topic).
    pub topic_prefix: String,
    /// Stable per region (and per test prefix).
    pub transactional_id: String,
    /// Records per Kafka transaction (a batch's row is never split, so it may go over).
    pub batch_max: i64,
    /// Fallback poll interval.
    pub poll: Duration,
    /// Least time between the starts of two publish rounds: rows committed meanwhile wait and go
    /// in one Kafka transaction. An idle publisher's first round starts at once.
    pub interval: Duration,
    /// Published rows are deleted once this old (see `outbox_prune`).
    pub retention: Duration,
    /// Rows deleted by one statement, one per publish round.
    pub prune_rows_max: i64,
}

/// Runs until `shutdown`, then publishes what is left and returns. A failure that ends the loop
/// (a failpoint) is returned, as a crash would end the process.
pub async fn run(pool: PgPool, cfg: PublisherConfig, shutdown: CancellationToken) -> Result<(), PublishError> {
    loop {
        // Leadership: hold the advisory lock on a dedicated connection for as long as we publish.
        let Some(mut lock) = crate::leader::acquire(&pool, PUBLISHER_LOCK_KEY, "outbox publisher", &shutdown).await
        else {
            return Ok(());
        };
        let outcome = lead(&pool, &cfg, &shutdown, &mut lock).await;
        let _ = lock.close().await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(e @ PublishError::Injected(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "publisher lost its footing, starting over");
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
        }
    }
}

fn producer(cfg: &PublisherConfig) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &cfg.bootstrap)
        .set("transactional.id", &cfg.transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        // A round that starts right after the previous commit finds the coordinator still writing
        // that transaction's markers: AddPartitionsToTxn answers CONCURRENT_TRANSACTIONS and is
        // retried after this backoff (100 ms by default, which was the lag's tail; the Java
        // producer uses 20 ms for this case). Later retries still back off to 1 s.
        .set("retry.backoff.ms", "10")
        .set("transaction.timeout.ms", "60000")
        .create()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    // A panicked blocking call reads as a cancelled one: the caller rebuilds the producer.
    tokio::task::spawn_blocking(f).await.unwrap_or(Err(KafkaError::Canceled))
}

async fn lead(
    pool: &PgPool,
    cfg: &PublisherConfig,
    shutdown: &CancellationToken,
    lock: &mut sqlx::PgConnection,
) -> Result<(), PublishError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(crate::storage::OUTBOX_CHANNEL).await?;
    let producer = producer(cfg)?;
    let p = producer.clone();
    blocking(move || p.init_transactions(KAFKA_CALL_TIMEOUT)).await?;
    tracing::info!(transactional_id = %cfg.transactional_id, "publisher leading");
    // Notifications are read by their own task, so the ones that arrived during a round can be
    // taken without waiting.
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel();
    let listening = tokio::spawn(async move {
        loop {
            let wake = match listener.try_recv().await {
                // A commit that wrote no outbox row (every command refused).
                Ok(Some(n)) if n.payload().is_empty() => continue,
                Ok(Some(n)) => n.payload().parse().map_or(Scan::All, Scan::From),
                // Reconnected: whatever was notified meanwhile is lost, so look at everything.
                Ok(None) => Scan::All,
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox listener failed");
                    let _ = wake_tx.send(Scan::All);
                    return;
                }
            };
            if wake_tx.send(wake).is_err() {
                return;
            }
        }
    });
    let outcome = async {
        // The backlog gauge costs a count over the outbox: refreshed once per poll interval, not
        // on every wake-up (under load the publisher wakes for every commit).
        let mut backlog_measured: Option<std::time::Instant> = None;
        let mut pending = Some(Scan::All);
        let mut last_published_round: Option<tokio::time::Instant> = None;
        let mut marks = outbox_prune::Marks::new(cfg.retention);
        let mut published_up_to: i64 =
            sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM outbox WHERE published_at IS NOT NULL")
                .fetch_one(pool)
                .await?;
        let mut prune_up_to: Option<i64> = None;
        loop {
            // Still the leader? A lost lock connection means another publisher may take over.
            sqlx::query("SELECT 1").execute(&mut *lock).await?;
            // The broker's cost is per Kafka transaction (markers on every partition), not per
            // record: one transaction per commit cost it half a core at 100 transfers/s. Rounds
            // at least `interval` apart bound the transactions per second whatever the commit
            // rate, and cost a quiet region nothing: its first row goes at once.
            if let Some(due) = last_published_round.map(|t| t + cfg.interval)
                && !shutdown.is_cancelled()
            {
                tokio::time::sleep_until(due).await;
            }
            let round_started = tokio::time::Instant::now();
            // A round takes what was notified before it started; what is notified during it waits
            // for the next round, or rounds would follow each other back to back under load.
            while let Ok(wake) = wake_rx.try_recv() {
                pending = Scan::merge(pending, wake);
            }
            while let Some(scan) = pending.take() {
                let (published, last_id) = publish_batch(pool, cfg, &producer, scan).await?;
                if published > 0 {
                    // Only a round that made a Kafka transaction counts: an empty poll round must
                    // not hold back the next commit's rows.
                    last_published_round = Some(round_started);
                    published_up_to = published_up_to.max(last_id);
                }
                if published as i64 >= cfg.batch_max {
                    // A backlog: more may be waiting right after the last row published.
                    pending = Some(Scan::From(last_id + 1));
                }
            }
            if let Some(ripe) = marks.observe(std::time::Instant::now(), published_up_to) {
                prune_up_to = Some(ripe);
            }
            if let Some(up_to) = prune_up_to {
                let rows_max = cfg.prune_rows_max.max(1);
                let deleted = outbox_prune::prune(pool, up_to, rows_max).await?;
                tracing::debug!(deleted, up_to, "published outbox rows pruned");
                if deleted < rows_max as u64 {
                    prune_up_to = None;
                }
            }
            if backlog_measured.is_none_or(|at| at.elapsed() >= cfg.poll) {
                let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(pool)
                    .await?;
                metrics::gauge!(metric::OUTBOX_BACKLOG).set(backlog as f64);
                backlog_measured = Some(std::time::Instant::now());
            }
            if shutdown.is_cancelled() {
                // Rows committed just before shutdown may not have been notified yet.
                while publish_batch(pool, cfg, &producer, Scan::All).await?.0 > 0 {}
                return Ok(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                wake = wake_rx.recv() => match wake {
                    Some(wake) => pending = Scan::merge(pending, wake),
                    None => return Err(PublishError::Db(sqlx::Error::PoolClosed)),
                },
                _ = tokio::time::sleep(cfg.poll) => pending = Some(Scan::All),
            }
        }
    }
    .await;
    listening.abort();
    outcome
}

/// Which unpublished rows a round looks at.
///
/// The committer's NOTIFY carries the smallest outbox id of its commit. Published rows leave dead
/// entries in the index of unpublished rows until a vacuum; a scan from the start walked all of
/// them (15 ms per round with a day's worth), one from the smallest id notified skips them. A
/// NOTIFY arrives only after its commit, so a row committed after a round has started is always
/// notified after it; a lost or unreadable notification, the start, and the poll timer look at
/// everything.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scan {
    All,
    From(i64),
}

impl Scan {
    fn merge(pending: Option<Scan>, wake: Scan) -> Option<Scan> {
        Some(match (pending, wake) {
            (None, wake) => wake,
            (Some(Scan::From(a)), Scan::From(b)) => Scan::From(a.min(b)),
            _ => Scan::All,
        })
    }
}

/// Publishes the unpublished rows' records in one Kafka transaction, about `batch_max` of them (a
/// batch's row is not split); returns how many records, and the largest row id published.
async fn publish_batch(
    pool: &PgPool,
    cfg: &PublisherConfig,
    producer: &FutureProducer,
    scan: Scan,
) -> Result<(usize, i64), PublishError> {
    let from = match scan {
        Scan::All => 0,
        Scan::From(id) => id,
    };
    let rows = sqlx::query(
        // A row holds one record or a whole batch's (migration 0008), so `batch_max` bounds the
        // records: a row is taken while fewer than that come before it.
        "WITH taken AS (
             SELECT id FROM (
                 SELECT id, sum(COALESCE(cardinality(record_events), 1)) OVER (ORDER BY id)
                            - COALESCE(cardinality(record_events), 1) AS before
                 FROM (SELECT id, record_events FROM outbox
                       WHERE published_at IS NULL AND id >= $2 ORDER BY id LIMIT $1) o
             ) o WHERE before < $1
         )
         SELECT r.id, r.event_id, r.topic, r.partition_key, r.event_type, r.payload::text AS payload, r.traceparent,
                r.created_at
         FROM outbox_records r WHERE r.id IN (SELECT id FROM taken) ORDER BY r.id, r.position",
    )
    .bind(cfg.batch_max)
    .bind(from)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok((0, 0));
    }
    producer.begin_transaction()?;
    // Rows come in id order, one entry per record: `ids` is deduplicated before the marking.
    let mut ids = Vec::with_capacity(rows.len());
    let mut oldest: Option<DateTime<Utc>> = None;
    let mut deliveries = Vec::with_capacity(rows.len());
    let sent = (|| -> Result<(), PublishError> {
        for row in &rows {
            let event_id: uuid::Uuid = row.try_get("event_id")?;
            let key: String = row.try_get("partition_key")?;
            let topic = format!("{}{}", cfg.topic_prefix, row.try_get::<String, _>("topic")?);
            let event_type: String = row.try_get("event_type")?;
            let payload: String = row.try_get("payload")?;
            let parent: Option<String> = row.try_get("traceparent")?;
            let created_at: DateTime<Utc> = row.try_get("created_at")?;
            oldest = Some(oldest.map_or(created_at, |o| o.min(created_at)));
            let traceparent = if telemetry::sampled(parent.as_deref()) {
                let span = tracing::info_span!(
                    "send ledger.events",
                    otel.name = "send ledger.events",
                    otel.kind = "producer",
                    messaging.system = "kafka",
                    messaging.destination.name = %topic,
                    messaging.operation.name = "send",
                    trace_id = tracing::field::Empty,
                );
                telemetry::continue_trace(&span, parent.as_deref());
                telemetry::traceparent_of(&span)
            } else {
                // Unsampled: the record carries the request's own traceparent (same trace id).
                parent
            };
            let event_id = event_id.to_string();
            let mut headers = OwnedHeaders::new()
                .insert(Header { key: "event-id", value: Some(event_id.as_str()) })
                .insert(Header { key: "event-type", value: Some(event_type.as_str()) })
                .insert(Header { key: "origin-region", value: Some(cfg.region.as_str()) });
            if let Some(tp) = traceparent.as_deref() {
                headers = headers.insert(Header { key: "traceparent", value: Some(tp) });
            }
            let record = FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
            ids.push(row.try_get::<i64, _>("id")?);
        }
        Ok(())
    })();
    // Every delivery report is awaited before the commit (see `ledger_schema::transactions`):
    // the commit's own flush waited for them in 100 ms steps, the whole of the outbox-to-Kafka
    // lag once (p50 160 ms at any rate).
    let sent = match sent {
        Ok(()) => transactions::delivered(deliveries, KAFKA_CALL_TIMEOUT).await.map_err(PublishError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        let p = producer.clone();
        let _ = blocking(move || p.abort_transaction(KAFKA_CALL_TIMEOUT)).await;
        return Err(e);
    }
    let p = producer.clone();
    if let Err(e) = blocking(move || {
        transactions::drained(&p);
        p.commit_transaction(KAFKA_CALL_TIMEOUT)
    })
    .await
    {
        let p = producer.clone();
        let _ = blocking(move || p.abort_transaction(KAFKA_CALL_TIMEOUT)).await;
        return Err(e.into());
    }
    fail::fail_point!("outbox-after-kafka-commit", |_| Err(PublishError::Injected(
        "crash between the Kafka commit and the marking".into()
    )));
    ids.dedup();
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)").bind(&ids).execute(pool).await?;
    if let Some(oldest) = oldest {
        let lag = (Utc::now() - oldest).num_microseconds().unwrap_or(0) as f64 / 1e6;
        metrics::histogram!(metric::PUBLISH_LAG).record(lag);
    }
    metrics::counter!(metric::PUBLISHED).increment(rows.len() as u64);
    Ok((rows.len(), ids.iter().copied().max().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::Scan;

    #[test]
    fn a_round_starts_at_the_smallest_id_notified_and_looks_at_everything_once_unsure() {
        assert_eq!(Scan::merge(None, Scan::From(7)), Some(Scan::From(7)));
        assert_eq!(Scan::merge(Some(Scan::From(9)), Scan::From(4)), Some(Scan::From(4)));
        assert_eq!(Scan::merge(Some(Scan::From(4)), Scan::From(9)), Some(Scan::From(4)));
        assert_eq!(Scan::merge(Some(Scan::From(4)), Scan::All), Some(Scan::All));
        assert_eq!(Scan::merge(Some(Scan::All), Scan::From(4)), Some(Scan::All));
        assert_eq!(Scan::merge(None, Scan::All), Some(Scan::All));
    }
}
