//! Remote apply: events that originated in other regions arrive on the mirrored topics
//! (`<origin>.ledger.events`, written by the replicator) and are applied here in causal order per
//! account, idempotently by event id, each transfer atomically (both postings or neither).
//!
//! Every received event is first stored in `pending_events` (durable: a restart loses no held
//! event), then applied as soon as [`ledger_core::replication::delivery`] says its predecessors are
//! here. Applying one event locks its accounts in id order, like the write path, and in the same
//! transaction records any conflict it reveals and queues it for `ledger.conflicts`.
//! The decisions (delivery, concurrency, conflict kind and id) are the pure functions the replica
//! model's property test checks; this file only moves them onto PostgreSQL.

use crate::write::{ACCOUNT_COLUMNS, AccountRow, OUTBOX_CHANNEL, transfer_json};
use chrono::Utc;
use ledger_core::replication::{
    AccountEvent, Conflict, ConflictKind, Delivery, classify, delivery, merge_conflicts, winning_opening,
};
use ledger_core::{AccountId, EventPayload, LedgerEvent, RegionId, VersionVector};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long to keep gathering records into a batch once one has arrived.
const BATCH_GATHER: Duration = Duration::from_millis(5);
/// Pending events examined per pass.
const PENDING_PASS_MAX: i64 = 1_000;
/// Pause after a failure before retrying.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

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

/// What happened to one pending event.
enum Step {
    Applied,
    Dropped,
    Wait,
}

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
    // Events held before a restart may be deliverable now.
    drain_until_ok(&pool, &cfg.region, &shutdown).await;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let mut batch = Vec::new();
        match first {
            Ok(m) => batch.push((m.topic().to_owned(), m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec))),
            Err(e) => {
                tracing::warn!(error = %e, "remote-apply consumer error");
                tokio::time::sleep(RETRY_BACKOFF).await;
                continue;
            }
        }
        let until = tokio::time::Instant::now() + BATCH_GATHER;
        while batch.len() < cfg.batch_max {
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(Ok(m)) => {
                    batch.push((m.topic().to_owned(), m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec)))
                }
                _ => break,
            }
        }
        for (topic, partition, offset, payload) in &batch {
            let Some(event) = payload.as_deref().and_then(|p| serde_json::from_slice::<LedgerEvent>(p).ok()) else {
                tracing::error!(%topic, partition, offset, "unreadable replicated record skipped");
                continue;
            };
            if event.origin_region == cfg.region {
                // Never ours to apply again; the replicator should not send it.
                continue;
            }
            loop {
                match hold(&pool, &event).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "storing a remote event failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(RETRY_BACKOFF) => {}
                        }
                    }
                }
            }
        }
        drain_until_ok(&pool, &cfg.region, &shutdown).await;
        // Offsets only after the events are durably held or applied.
        let mut tpl = TopicPartitionList::new();
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (topic, partition, offset, _) in &batch {
            let e = next.entry((topic.clone(), *partition)).or_insert(offset + 1);
            *e = (*e).max(offset + 1);
        }
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        consumer.commit(&tpl, CommitMode::Async)?;
    }
    Ok(())
}

async fn drain_until_ok(pool: &PgPool, region: &RegionId, shutdown: &CancellationToken) {
    loop {
        match drain(pool, region).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "applying remote events failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_BACKOFF) => {}
                }
            }
        }
    }
}

/// Stores a received event unless it is already applied or held.
async fn hold(pool: &PgPool, event: &LedgerEvent) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pending_events (event_id, origin_region, payload)
         SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM ledger_events WHERE event_id = $1)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(event.origin_region.as_str())
    .bind(json!(event))
    .execute(pool)
    .await?;
    Ok(())
}

/// Applies every held event that has become deliverable, pass after pass, until a pass applies
/// nothing; returns how many were applied.
pub async fn drain(pool: &PgPool, region: &RegionId) -> Result<usize, sqlx::Error> {
    let mut applied = 0;
    loop {
        let rows: Vec<Value> = sqlx::query_scalar("SELECT payload FROM pending_events ORDER BY seq LIMIT $1")
            .bind(PENDING_PASS_MAX)
            .fetch_all(pool)
            .await?;
        let mut progressed = false;
        for payload in rows {
            let Ok(event) = serde_json::from_value::<LedgerEvent>(payload) else { continue };
            match try_apply(pool, region, &event).await? {
                Step::Applied => {
                    applied += 1;
                    progressed = true;
                }
                Step::Dropped => progressed = true,
                Step::Wait => {}
            }
        }
        if !progressed {
            return Ok(applied);
        }
    }
}

async fn try_apply(pool: &PgPool, region: &RegionId, event: &LedgerEvent) -> Result<Step, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut ids: Vec<String> = event.accounts().iter().map(|a| a.to_string()).collect();
    ids.sort();
    ids.dedup();
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE");
    let mut accounts: HashMap<AccountId, AccountRow> = HashMap::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&ids).fetch_all(&mut *tx).await? {
        let account = AccountRow::from_row(&row)?;
        accounts.insert(account.state.spec.id.clone(), account);
    }
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ledger_events WHERE event_id = $1)")
        .bind(event.event_id)
        .fetch_one(&mut *tx)
        .await?;
    let verdict = if known {
        Delivery::AlreadyApplied
    } else {
        delivery(event, |x| accounts.get(x).map(|a| a.state.version.clone()).unwrap_or_default())
    };
    let step = match verdict {
        Delivery::Wait => {
            tx.rollback().await?;
            return Ok(Step::Wait);
        }
        Delivery::AlreadyApplied => Step::Dropped,
        Delivery::Ready => {
            apply(&mut tx, region, event, &mut accounts).await?;
            Step::Applied
        }
    };
    sqlx::query("DELETE FROM pending_events WHERE event_id = $1").bind(event.event_id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(step)
}

fn vector_columns(v: &VersionVector) -> (Vec<String>, Vec<i64>) {
    v.to_map().into_iter().map(|(r, c)| (r.to_string(), c as i64)).unzip()
}

fn account_event_from_row(row: &sqlx::postgres::PgRow) -> Result<AccountEvent, sqlx::Error> {
    let decode = |e: String| sqlx::Error::Decode(e.into());
    let opened: Option<Value> = row.try_get("opened")?;
    Ok(AccountEvent {
        event_id: row.try_get("event_id")?,
        origin: RegionId::new(row.try_get::<String, _>("origin_region")?).map_err(|e| decode(e.to_string()))?,
        counter: row.try_get::<i64, _>("counter")? as u64,
        vector: serde_json::from_value(row.try_get("vector")?).map_err(|e| decode(e.to_string()))?,
        posting: row.try_get("posting")?,
        opened: opened.map(serde_json::from_value).transpose().map_err(|e| decode(e.to_string()))?,
        idempotency_key: row.try_get("idempotency_key")?,
    })
}

const ACCOUNT_EVENT_COLUMNS: &str = "origin_region, counter, event_id, vector, posting, opened, idempotency_key";

async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    region: &RegionId,
    event: &LedgerEvent,
    accounts: &mut HashMap<AccountId, AccountRow>,
) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    sqlx::query(
        "INSERT INTO ledger_events (event_id, aggregate_id, event_type, payload, version_vector, origin_region, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.event_id)
    .bind(event.aggregate_id())
    .bind(event.event_type())
    .bind(json!(event))
    .bind(json!(event.vectors))
    .bind(event.origin_region.as_str())
    .bind(chrono::DateTime::parse_from_rfc3339(&event.occurred_at).map(|t| t.with_timezone(&Utc)).unwrap_or(now))
    .execute(&mut **tx)
    .await?;

    let mut found = Vec::new();
    for account in event.accounts() {
        let incoming = AccountEvent::of(event, account).expect("events carry a vector per account");
        let (regions, counters) = vector_columns(&incoming.vector);
        let sql = format!(
            "SELECT {ACCOUNT_EVENT_COLUMNS} FROM account_events ae WHERE account_id = $1 AND event_id <> $2
             AND counter > COALESCE((SELECT t FROM UNNEST($3::text[], $4::int8[]) AS u(r, t) WHERE u.r = ae.origin_region), 0)"
        );
        let concurrent: Vec<AccountEvent> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account.as_str())
            .bind(event.event_id)
            .bind(&regions)
            .bind(&counters)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(account_event_from_row)
            .collect::<Result<_, _>>()?;
        sqlx::query(
            "INSERT INTO account_events (account_id, origin_region, counter, event_id, vector, posting, opened, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(account.as_str())
        .bind(incoming.origin.as_str())
        .bind(incoming.counter as i64)
        .bind(event.event_id)
        .bind(json!(incoming.vector))
        .bind(incoming.posting)
        .bind(incoming.opened.as_ref().map(|s| json!(s)))
        .bind(&incoming.idempotency_key)
        .execute(&mut **tx)
        .await?;
        apply_to_account(tx, event, account, &incoming, accounts, now).await?;
        let spec = accounts.get(account).map(|a| a.state.spec.clone());
        for other in &concurrent {
            let balance = joint_balance(tx, account, &incoming, other).await?;
            let kind = classify(spec.as_ref(), || balance, &incoming, other);
            found.push(Conflict::of(kind, account, &incoming, other));
        }
    }
    if let EventPayload::TransferPosted {
        transfer_id,
        from,
        to,
        amount,
        currency,
        metadata,
        idempotency_key: Some(key),
        request_hash,
    } = &event.payload
    {
        found.extend(duplicate_intent(tx, event, key).await?);
        let body = transfer_json(
            *transfer_id,
            from,
            to,
            amount.minor_units(),
            currency.as_str(),
            metadata,
            event.origin_region.as_str(),
            Some(key),
            &now,
            &event.vectors[from],
            &event.vectors[to],
        );
        sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, response_status, response_body) VALUES ($1, $2, 201, $3)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(request_hash.clone().unwrap_or_default())
        .bind(body)
        .execute(&mut **tx)
        .await?;
    }
    for conflict in merge_conflicts(found).into_values() {
        record_conflict(tx, region, event, &conflict).await?;
    }
    Ok(())
}

/// Balance of `account` over the joint causal past of two events on it.
async fn joint_balance(
    tx: &mut Transaction<'_, Postgres>,
    account: &AccountId,
    a: &AccountEvent,
    b: &AccountEvent,
) -> Result<i64, sqlx::Error> {
    let mut joint = a.vector.clone();
    joint.merge(&b.vector);
    let (regions, counters) = vector_columns(&joint);
    sqlx::query_scalar(
        "SELECT COALESCE(sum(posting), 0)::bigint FROM account_events ae WHERE account_id = $1
         AND counter <= COALESCE((SELECT t FROM UNNEST($2::text[], $3::int8[]) AS u(r, t) WHERE u.r = ae.origin_region), 0)",
    )
    .bind(account.as_str())
    .bind(&regions)
    .bind(&counters)
    .fetch_one(&mut **tx)
    .await
}

/// A transfer with the same idempotency key executed elsewhere: the client retried in another
/// region. Whatever the bodies, it is one conflict of the pair.
async fn duplicate_intent(
    tx: &mut Transaction<'_, Postgres>,
    event: &LedgerEvent,
    key: &str,
) -> Result<Option<Conflict>, sqlx::Error> {
    // Every event carrying a key recorded it in `idempotency_keys` in the same transaction (the
    // committer and the insert below), so a key not there was never used here: one primary-key
    // lookup settles the common case. `account_events` has no index on the key, and scanning it
    // for every keyed remote event grew with the ledger.
    let used: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE key = $1)")
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
    if !used {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {ACCOUNT_EVENT_COLUMNS}, account_id FROM account_events
         WHERE idempotency_key = $1 AND event_id <> $2 ORDER BY event_id, account_id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key).bind(event.event_id).fetch_all(&mut **tx).await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let theirs = account_event_from_row(first)?;
    let mut involved: Vec<String> = event.accounts().iter().map(|a| a.to_string()).collect();
    for row in rows.iter().filter(|r| r.get::<uuid::Uuid, _>("event_id") == theirs.event_id) {
        involved.push(row.try_get("account_id")?);
    }
    let account = AccountId::new(involved.into_iter().min().expect("accounts"))
        .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
    let mine = AccountEvent::of(event, event.accounts()[0]).expect("vector");
    Ok(Some(Conflict::of(ConflictKind::DuplicateIntent, &account, &mine, &theirs)))
}

/// Moves one account's state by one remote event, with its entry and read models.
async fn apply_to_account(
    tx: &mut Transaction<'_, Postgres>,
    event: &LedgerEvent,
    account: &AccountId,
    incoming: &AccountEvent,
    accounts: &mut HashMap<AccountId, AccountRow>,
    now: chrono::DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    match &event.payload {
        EventPayload::AccountOpened { account: spec } => {
            let openings: Vec<AccountEvent> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ACCOUNT_EVENT_COLUMNS} FROM account_events WHERE account_id = $1 AND opened IS NOT NULL"
            )))
            .bind(account.as_str())
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(account_event_from_row)
            .collect::<Result<_, _>>()?;
            // Concurrent openings: every region keeps the same winner's attributes.
            let winner = openings.iter().fold(incoming, |w, o| winning_opening(w, o));
            let winner = winner.opened.clone().unwrap_or_else(|| spec.clone());
            let mut vector = accounts.get(account).map(|a| a.state.version.clone()).unwrap_or_default();
            vector.merge(&incoming.vector);
            sqlx::query(
                "INSERT INTO accounts (id, currency, allow_negative, metadata, version_vector, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)
                 ON CONFLICT (id) DO UPDATE SET currency = EXCLUDED.currency, allow_negative = EXCLUDED.allow_negative,
                     metadata = EXCLUDED.metadata, version_vector = EXCLUDED.version_vector, updated_at = EXCLUDED.updated_at",
            )
            .bind(account.as_str())
            .bind(winner.currency.as_str())
            .bind(winner.allow_negative)
            .bind(Value::Object(winner.metadata.clone()))
            .bind(json!(vector))
            .bind(now)
            .execute(&mut **tx)
            .await?;
            sqlx::query("INSERT INTO rm_balances (account_id, currency) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(account.as_str())
                .bind(winner.currency.as_str())
                .execute(&mut **tx)
                .await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1")))
                .bind(account.as_str())
                .fetch_one(&mut **tx)
                .await?;
            accounts.insert(account.clone(), AccountRow::from_row(&row)?);
        }
        EventPayload::TransferPosted { transfer_id, from, to, amount, currency, metadata, idempotency_key, .. } => {
            if account == from {
                // Once per transfer, before its entries.
                sqlx::query(
                    "INSERT INTO transfers (id, event_id, from_account, to_account, amount, currency, metadata, idempotency_key,
                                            from_vector, to_vector, origin_region, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(transfer_id)
                .bind(event.event_id)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(amount.minor_units())
                .bind(currency.as_str())
                .bind(Value::Object(metadata.clone()))
                .bind(idempotency_key)
                .bind(json!(event.vectors[from]))
                .bind(json!(event.vectors[to]))
                .bind(event.origin_region.as_str())
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            let state = accounts.get_mut(account).expect("causal delivery applied the opening first");
            // Postings commute: a remote debit is applied even below zero; the overdraft is a
            // conflict for finance, not a refusal (the origin already acknowledged it).
            state.state.balance = state
                .state
                .balance
                .checked_add(incoming.posting)
                .ok_or_else(|| sqlx::Error::Protocol("balance overflow".into()))?;
            state.state.entry_seq += 1;
            state.state.version.merge(&incoming.vector);
            let overdrawn = state.state.balance < 0 && !state.state.spec.allow_negative;
            sqlx::query(
                "UPDATE accounts SET balance = $2, entry_seq = $3, version_vector = $4, updated_at = $5,
                     replicated_overdraft = replicated_overdraft OR $6 WHERE id = $1",
            )
            .bind(account.as_str())
            .bind(state.state.balance)
            .bind(state.state.entry_seq)
            .bind(json!(state.state.version))
            .bind(now)
            .bind(overdrawn)
            .execute(&mut **tx)
            .await?;
            sqlx::query("INSERT INTO entries (account_id, seq, transfer_id, amount, balance_after, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(account.as_str())
                .bind(state.state.entry_seq)
                .bind(transfer_id)
                .bind(incoming.posting)
                .bind(state.state.balance)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            // The read models follow in the same transaction: remote events never pass through
            // this region's own topic.
            let posting = crate::views::ViewPosting {
                account,
                currency: currency.as_str(),
                amount: incoming.posting,
                event_id: event.event_id,
            };
            crate::views::post_to_views(tx, &posting, *transfer_id, now).await?;
            sqlx::query("INSERT INTO rm_processed (event_id, account_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(event.event_id)
                .bind(account.as_str())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// The conflict as stored and published.
pub fn conflict_json(c: &Conflict, detected_by: &RegionId) -> Value {
    json!({
        "conflict_id": c.conflict_id,
        "kind": c.kind.as_str(),
        "account": c.account,
        "events": c.sides.iter().map(|(id, region, vector)| json!({"event_id": id, "region": region, "vector": vector})).collect::<Vec<_>>(),
        "detected_by": detected_by,
    })
}

async fn record_conflict(
    tx: &mut Transaction<'_, Postgres>,
    region: &RegionId,
    event: &LedgerEvent,
    c: &Conflict,
) -> Result<(), sqlx::Error> {
    let [(a, ra, va), (b, rb, vb)] = &c.sides;
    let inserted = sqlx::query(
        "INSERT INTO conflicts (conflict_id, kind, account_id, event_a, region_a, vector_a, event_b, region_b, vector_b)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (conflict_id) DO NOTHING",
    )
    .bind(c.conflict_id)
    .bind(c.kind.as_str())
    .bind(c.account.as_str())
    .bind(a)
    .bind(ra.as_str())
    .bind(json!(va))
    .bind(b)
    .bind(rb.as_str())
    .bind(json!(vb))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    tracing::warn!(conflict_id = %c.conflict_id, kind = c.kind.as_str(), account = %c.account, "conflict detected");
    metrics::counter!(crate::telemetry::metric::CONFLICTS, "kind" => c.kind.as_str()).increment(1);
    // The NOTIFY payload is the row's id: the publisher looks from there (see outbox.rs).
    sqlx::query(
        "WITH o AS (
             INSERT INTO outbox (event_id, topic, partition_key, event_type, payload)
             VALUES ($1, 'ledger.conflicts', $2, 'conflict.detected', $3) RETURNING id
         )
         SELECT pg_notify($4, id::text) FROM o",
    )
    .bind(event.event_id)
    .bind(c.conflict_id.to_string())
    .bind(conflict_json(c, region))
    .bind(OUTBOX_CHANNEL)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
