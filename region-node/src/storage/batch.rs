//! The committer's statements: the read that locks a batch's accounts (in id order, so two batches
//! or two nodes touching the same accounts wait for each other and never deadlock) with the
//! idempotency records of its keys, and the one statement that writes a batch.

use super::{AccountRow, OUTBOX_CHANNEL, StorageError, WEBHOOK_CHANNEL};
use chrono::{DateTime, Utc};
use ledger_core::{AccountId, RegionId};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgConnection;
use std::collections::HashMap;

/// What the batch will write, column by column, for bulk `UNNEST` inserts. JSON columns travel as
/// text, serialized straight from the events: building `serde_json::Value` trees first (and sqlx
/// serializing them again) was the committer's largest allocation in a profile.
#[derive(Default)]
pub(crate) struct Writes {
    pub new_accounts: Vec<AccountId>,
    pub ev_id: Vec<uuid::Uuid>,
    pub ev_aggregate: Vec<String>,
    pub ev_type: Vec<String>,
    pub ev_payload: Vec<String>,
    pub ev_vectors: Vec<String>,
    pub ev_traceparent: Vec<Option<String>>,
    pub tr_id: Vec<uuid::Uuid>,
    pub tr_event: Vec<uuid::Uuid>,
    pub tr_from: Vec<String>,
    pub tr_to: Vec<String>,
    pub tr_amount: Vec<i64>,
    pub tr_currency: Vec<String>,
    pub tr_metadata: Vec<String>,
    pub tr_key: Vec<Option<String>>,
    pub tr_from_vector: Vec<String>,
    pub tr_to_vector: Vec<String>,
    pub tr_transaction: Vec<Option<uuid::Uuid>>,
    pub tr_leg: Vec<Option<i16>>,
    pub en_account: Vec<String>,
    pub en_seq: Vec<i64>,
    pub en_transfer: Vec<uuid::Uuid>,
    pub en_amount: Vec<i64>,
    pub en_balance: Vec<i64>,
    pub ob_event: Vec<uuid::Uuid>,
    pub ob_key: Vec<String>,
    pub ae_account: Vec<String>,
    pub ae_counter: Vec<i64>,
    pub ae_event: Vec<uuid::Uuid>,
    pub ae_vector: Vec<String>,
    pub ae_posting: Vec<i64>,
    pub ae_opened: Vec<Option<String>>,
    pub ae_key: Vec<Option<String>>,
    pub ae_entry_seq: Vec<i64>,
    pub ae_balance_before: Vec<i64>,
    pub ae_pending_before: Vec<i64>,
    pub ae_balance_after: Vec<i64>,
    pub ae_pending_after: Vec<i64>,
    pub ik_key: Vec<String>,
    pub ik_hash: Vec<String>,
    pub ik_body: Vec<Value>,
}

/// What one batch commits: the accounts it opens as it leaves them, and each existing account it
/// read as planned against and as it leaves it.
pub(crate) struct Commit<'b> {
    /// The batch's time.
    pub now: DateTime<Utc>,
    /// This region.
    pub region: &'b RegionId,
    /// Accounts opened, with their final state.
    pub new: Vec<&'b AccountRow>,
    /// Accounts read: (as planned against, as the batch leaves them).
    pub read: Vec<(&'b AccountRow, &'b AccountRow)>,
    /// Every other row.
    pub writes: &'b Writes,
}

/// A batch's accounts, locked in id order, and the idempotency records (request hash, response
/// body) of its keys: one round trip.
pub(crate) async fn read_locked(
    conn: &mut PgConnection,
    ids: &[&str],
    keys: &[&str],
) -> Result<(HashMap<AccountId, AccountRow>, HashMap<String, (String, Value)>), StorageError> {
    let mut accounts = HashMap::with_capacity(ids.len());
    let mut records = HashMap::new();
    for row in sqlx::query(READ_SQL).bind(ids).bind(keys).fetch_all(&mut *conn).await? {
        match row.try_get::<Option<String>, _>("key")? {
            Some(key) => {
                records.insert(key, (row.try_get("request_hash")?, row.try_get("response_body")?));
            }
            None => {
                let account = AccountRow::from_row(&row)?;
                accounts.insert(account.state.spec.id.clone(), account);
            }
        }
    }
    Ok((accounts, records))
}

/// Writes everything in one statement: one round trip whatever the batch holds. Data-modifying
/// CTEs all run to completion; new accounts are inserted with their final state, so the UPDATE
/// (which cannot see them in the same statement) never needs to touch them. Every other
/// account the batch read is updated only if it is still as planned against, and the statement
/// fails if one is not (see migration 0006): a reply the batch gives, a refusal included, holds
/// at its commit.
pub(crate) async fn flush<'e, E: sqlx::PgExecutor<'e>>(executor: E, batch: &Commit<'_>) -> Result<(), StorageError> {
    let (w, new, read) = (batch.writes, &batch.new, &batch.read);
    sqlx::query(WRITE_SQL)
        .bind(batch.now)
        .bind(batch.region.as_str())
        .bind(OUTBOX_CHANNEL)
        .bind(new.iter().map(|a| a.state.spec.id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|a| a.state.spec.currency.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|a| a.state.spec.allow_negative).collect::<Vec<_>>())
        .bind(new.iter().map(|a| a.state.balance).collect::<Vec<_>>())
        .bind(new.iter().map(|a| Value::Object(a.state.spec.metadata.clone())).collect::<Vec<_>>())
        .bind(new.iter().map(|a| json!(a.state.version)).collect::<Vec<_>>())
        .bind(new.iter().map(|a| a.state.entry_seq).collect::<Vec<_>>())
        .bind(&w.ev_id)
        .bind(&w.ev_aggregate)
        .bind(&w.ev_type)
        .bind(&w.ev_payload)
        .bind(&w.ev_vectors)
        .bind(&w.ev_traceparent)
        .bind(&w.tr_id)
        .bind(&w.tr_event)
        .bind(&w.tr_from)
        .bind(&w.tr_to)
        .bind(&w.tr_amount)
        .bind(&w.tr_currency)
        .bind(&w.tr_metadata)
        .bind(&w.tr_key)
        .bind(&w.tr_from_vector)
        .bind(&w.tr_to_vector)
        .bind(&w.en_account)
        .bind(&w.en_seq)
        .bind(&w.en_transfer)
        .bind(&w.en_amount)
        .bind(&w.en_balance)
        .bind(&w.ik_key)
        .bind(&w.ik_hash)
        .bind(&w.ik_body)
        .bind(read.iter().map(|(a, _)| a.state.spec.id.as_str()).collect::<Vec<_>>())
        .bind(read.iter().map(|(_, a)| a.state.balance).collect::<Vec<_>>())
        .bind(read.iter().map(|(_, a)| json!(a.state.version)).collect::<Vec<_>>())
        .bind(read.iter().map(|(_, a)| a.state.entry_seq).collect::<Vec<_>>())
        .bind(&w.ae_account)
        .bind(&w.ae_counter)
        .bind(&w.ae_event)
        .bind(&w.ae_vector)
        .bind(&w.ae_posting)
        .bind(&w.ae_opened)
        .bind(&w.ae_key)
        .bind(&w.ob_event)
        .bind(&w.ob_key)
        .bind(read.iter().map(|(a, _)| a.state.balance).collect::<Vec<_>>())
        .bind(read.iter().map(|(a, _)| json!(a.state.version)).collect::<Vec<_>>())
        .bind(read.iter().map(|(a, _)| a.state.entry_seq).collect::<Vec<_>>())
        .bind(read.iter().map(|(a, b)| a.state.entry_seq != b.state.entry_seq).collect::<Vec<_>>())
        .bind(read.iter().map(|(a, _)| a.state.spec.currency.as_str()).collect::<Vec<_>>())
        .bind(read.iter().map(|(a, _)| a.state.spec.allow_negative).collect::<Vec<_>>())
        .bind(read.iter().map(|(a, _)| a.state.frozen).collect::<Vec<_>>())
        .bind(&w.tr_transaction)
        .bind(&w.tr_leg)
        .bind(&w.ae_entry_seq)
        .bind(read.iter().map(|(_, a)| a.state.pending_debits).collect::<Vec<_>>())
        .bind(read.iter().map(|(_, a)| a.state.pending_credits).collect::<Vec<_>>())
        .bind(new.iter().map(|a| a.state.pending_debits).collect::<Vec<_>>())
        .bind(new.iter().map(|a| a.state.pending_credits).collect::<Vec<_>>())
        .bind(WEBHOOK_CHANNEL)
        .bind(&w.ae_balance_before)
        .bind(&w.ae_pending_before)
        .bind(&w.ae_balance_after)
        .bind(&w.ae_pending_after)
        .execute(executor)
        .await?;
    Ok(())
}
/// The batch's accounts, locked in id order (the order every writer locks in, so batches never
/// deadlock: a CTE with a locking clause is never inlined, and its rows are locked as its sort emits
/// them), followed by the idempotency records of its keys (`key` not null). The second SELECT has
/// one NULL per account column.
const READ_SQL: &str = concat!(
    "WITH locked AS (SELECT ",
    account_columns!(),
    " FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE)
SELECT *, NULL::text AS key, NULL::text AS request_hash, NULL::jsonb AS response_body FROM locked
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, key, request_hash, response_body
FROM idempotency_keys WHERE key = ANY($2)"
);

/// Every write of a batch. `$1` now, `$2` this region, `$3` the outbox channel; then one array per
/// column; `$48`–`$51` and `$52`–`$54` the accounts read as planned against, and whether the batch
/// changed each; `$55`–`$56` each transfer's transaction and leg (null for a plain transfer); `$57`
/// each per-account event's entry count after it (migration 0016); `$58`–`$61` the pending amounts
/// of the accounts read and opened (their vector, checked, moves whenever those do); `$62` the
/// webhook channel; `$63`–`$66` each per-account event's balance and pending debits before and
/// after it, for the monitors. The definition
/// and the frozen flag are compared too: resolving an
/// account-definition conflict (`storage/resolve.rs`) changes them, and may leave balance, entry
/// count and vector as they were, so a batch planned against a remembered frozen flag or currency
/// would otherwise commit a stale refusal, or a transfer in the wrong currency.
/// The batch's one outbox row lists its records in batch order, and NOTIFY is delivered only when
/// the transaction commits. An entry is stamped no earlier than the account's last committed entry
/// (another writer's clock may run a little ahead: remote apply, another node), so an account's
/// entries are stamped in sequence order and a point-in-time read is a prefix (migration 0014). The
/// last committed entry is in this statement's snapshot: the batch was planned against it, and the
/// account update checks that it still is the last.
const WRITE_SQL: &str = "
WITH new_accounts AS (
    INSERT INTO accounts (id, currency, allow_negative, balance, metadata, version_vector, entry_seq, pending_debits,
                          pending_credits, created_at, updated_at)
    SELECT id, currency, allow_negative, balance, metadata, vv, seq, pd, pc, $1, $1
    FROM UNNEST($4::text[], $5::text[], $6::bool[], $7::int8[], $8::jsonb[], $9::jsonb[], $10::int8[], $60::int8[], $61::int8[])
      AS u(id, currency, allow_negative, balance, metadata, vv, seq, pd, pc)
), events AS (
    INSERT INTO ledger_events (event_id, aggregate_id, event_type, payload, version_vector, origin_region, occurred_at, traceparent)
    SELECT id, agg, typ, payload, vv, $2, $1, tp
    FROM UNNEST($11::uuid[], $12::text[], $13::text[], $14::text[]::jsonb[], $15::text[]::jsonb[], $16::text[])
      WITH ORDINALITY AS u(id, agg, typ, payload, vv, tp, ord)
    ORDER BY ord
), new_transfers AS (
    INSERT INTO transfers (id, event_id, from_account, to_account, amount, currency, metadata, idempotency_key,
                           from_vector, to_vector, transaction_id, leg, origin_region, created_at)
    SELECT *, $2, $1 FROM UNNEST($17::uuid[], $18::uuid[], $19::text[], $20::text[], $21::int8[], $22::text[],
                                 $23::text[]::jsonb[], $24::text[], $25::text[]::jsonb[], $26::text[]::jsonb[], $55::uuid[],
                                 $56::int2[])
), new_entries AS (
    INSERT INTO entries (account_id, seq, transfer_id, amount, balance_after, created_at)
    SELECT a, s, t, amt, bal, GREATEST($1, (SELECT p.created_at FROM entries p WHERE p.account_id = u.a AND p.seq < u.s
                                            ORDER BY p.seq DESC LIMIT 1))
    FROM UNNEST($27::text[], $28::int8[], $29::uuid[], $30::int8[], $31::int8[]) AS u(a, s, t, amt, bal)
), new_keys AS (
    INSERT INTO idempotency_keys (key, request_hash, response_status, response_body, created_at)
    SELECT k, h, 201, b, $1 FROM UNNEST($32::text[], $33::text[], $34::jsonb[]) AS u(k, h, b)
), locked AS (
    SELECT id FROM accounts WHERE id = ANY($35::text[]) ORDER BY id FOR UPDATE
), read_accounts AS (
    -- The uncorrelated subquery is a one-time filter, run before the first row is updated: every
    -- row is locked in id order first. (Joining `locked` instead rescanned it for each row.)
    UPDATE accounts a SET balance = u.balance, version_vector = u.vv, entry_seq = u.seq,
                          pending_debits = u.pd, pending_credits = u.pc,
                          updated_at = CASE WHEN u.changed THEN $1 ELSE a.updated_at END
    FROM UNNEST($35::text[], $36::int8[], $37::jsonb[], $38::int8[], $48::int8[], $49::jsonb[], $50::int8[], $51::bool[],
                $52::text[], $53::bool[], $54::bool[], $58::int8[], $59::int8[])
      AS u(id, balance, vv, seq, old_balance, old_vv, old_seq, changed, old_currency, old_allow_negative, old_frozen, pd, pc)
    WHERE (SELECT count(*) FROM locked) >= 0 AND a.id = u.id AND a.balance = u.old_balance AND a.entry_seq = u.old_seq AND a.version_vector = u.old_vv
      AND a.currency = u.old_currency AND a.allow_negative = u.old_allow_negative AND a.frozen = u.old_frozen
    RETURNING 1
), new_account_events AS (
    INSERT INTO account_events (account_id, origin_region, counter, event_id, vector, posting, opened, idempotency_key, entry_seq)
    SELECT a, $2, c, e, v, p, o, k, n
    FROM UNNEST($39::text[], $40::int8[], $41::uuid[], $42::text[]::jsonb[], $43::int8[], $44::text[]::jsonb[], $45::text[],
                $57::int8[])
      AS u(a, c, e, v, p, o, k, n)
), new_outbox AS (
    -- One row for the whole batch: its records' events and keys, in batch order (migration 0008).
    INSERT INTO outbox (record_events, record_keys, created_at)
    SELECT $46::uuid[], $47::text[], $1 WHERE cardinality($46::uuid[]) > 0
    RETURNING id
), new_deliveries AS (
    -- The webhooks this batch fires (migrations 0013, 0017): each active monitor of an account an
    -- event touches whose condition is false on the account before the event and true after it
    -- (a transaction's legs netted; a hold lowers `available`). With no monitor on the batch's
    -- accounts this is one probe of `monitors_active_by_account` per account and event.
    INSERT INTO webhook_deliveries (id, monitor_id, event_id, account_id, condition, balance_after, occurred_at,
                                    next_attempt_at, created_at)
    SELECT webhook_delivery_id(m.id, e.event), m.id, e.event, e.account, m.condition, e.balance_after, $1, $1, $1
    FROM UNNEST($39::text[], $41::uuid[], $63::int8[], $64::int8[], $65::int8[], $66::int8[])
      AS e(account, event, balance_before, pending_before, balance_after, pending_after)
    JOIN monitors m ON m.account_id = e.account AND m.deleted_at IS NULL
    WHERE NOT monitor_holds(m.op, m.threshold, monitor_value(m.field, e.balance_before, e.pending_before))
      AND monitor_holds(m.op, m.threshold, monitor_value(m.field, e.balance_after, e.pending_after))
    RETURNING 1
), webhook_wake AS (
    -- Wakes the delivery worker only when something fired (pg_notify is volatile: never inlined).
    SELECT pg_notify($62, '') FROM (SELECT 1 FROM new_deliveries LIMIT 1) d
)
-- The payload tells the publisher where the new rows start (see outbox.rs).
SELECT pg_notify($3, COALESCE((SELECT min(id) FROM new_outbox)::text, '')), (SELECT count(*) FROM webhook_wake)
FROM (SELECT count(*) AS n FROM read_accounts) r
WHERE ledger_assert_accounts_as_planned(r.n, cardinality($35::text[]))";
