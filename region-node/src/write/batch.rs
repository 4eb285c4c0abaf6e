//! One group commit: every command of a batch applied in memory against the locked accounts, then
//! written with a constant number of bulk statements, in one PostgreSQL transaction.
//!
//! Accounts are locked with `SELECT … ORDER BY id FOR UPDATE`, always in id order, so two batches
//! (or two nodes) touching the same accounts wait for each other and never deadlock.

use super::{Command, OpenAccount, Outcome, Transfer};
use crate::problem::Problem;
use chrono::{DateTime, SecondsFormat, Utc};
use ledger_core::posting::PostingError;
use ledger_core::{AccountId, AccountSpec, AccountState, EventPayload, LedgerEvent, RegionId, VersionVector};
use serde_json::{Value, json};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use std::collections::{BTreeMap, HashMap};

/// Channel the publisher LISTENs on; notified in the same transaction as the outbox rows, so it
/// wakes exactly when there is something committed to publish.
pub const OUTBOX_CHANNEL: &str = "ledger_outbox";

/// Attempts when PostgreSQL reports a transient conflict (serialization failure, deadlock, or a
/// unique key taken by a concurrent writer such as a second node).
const ATTEMPTS_MAX: usize = 3;

/// An account as stored, for responses.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    /// Domain state.
    pub state: AccountState,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Creation.
    pub created_at: DateTime<Utc>,
}

impl AccountRow {
    /// The API representation.
    pub fn to_json(&self) -> Value {
        let s = &self.state;
        json!({
            "id": s.spec.id,
            "currency": s.spec.currency,
            "balance": s.balance,
            "allow_negative": s.spec.allow_negative,
            "metadata": s.spec.metadata,
            "version_vector": s.version,
            "entries": s.entry_seq,
            "frozen": s.frozen,
            "foreign_balances": s.foreign,
            "created_at": rfc3339(&self.created_at),
            "updated_at": rfc3339(&self.updated_at),
        })
    }

    /// Reads one account row (columns as in [`ACCOUNT_COLUMNS`]).
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        let decode = |e: String| sqlx::Error::Decode(e.into());
        let spec = AccountSpec {
            id: AccountId::new(row.try_get::<String, _>("id")?).map_err(|e| decode(e.to_string()))?,
            currency: ledger_core::Currency::new(&row.try_get::<String, _>("currency")?)
                .map_err(|e| decode(e.to_string()))?,
            allow_negative: row.try_get("allow_negative")?,
            metadata: serde_json::from_value(row.try_get("metadata")?).map_err(|e| decode(e.to_string()))?,
        };
        let version: VersionVector =
            serde_json::from_value(row.try_get("version_vector")?).map_err(|e| decode(e.to_string()))?;
        Ok(Self {
            state: AccountState {
                spec,
                balance: row.try_get("balance")?,
                entry_seq: row.try_get("entry_seq")?,
                version,
                frozen: row.try_get("frozen")?,
                foreign: serde_json::from_value(row.try_get("foreign_balances")?).map_err(|e| decode(e.to_string()))?,
            },
            updated_at: row.try_get("updated_at")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// The columns [`AccountRow::from_row`] reads, as a macro so constant queries can `concat!` them.
macro_rules! account_columns {
    () => {
        "id, currency, allow_negative, balance, metadata, version_vector, entry_seq, created_at, updated_at, frozen, \
         foreign_balances"
    };
}

/// The columns [`AccountRow::from_row`] reads.
pub const ACCOUNT_COLUMNS: &str = account_columns!();

/// Timestamps as the API and events print them.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Runs a batch in its own transaction, reading and locking its accounts first, retrying the
/// whole transaction on transient conflicts. Returns the batch as committed.
pub(super) async fn run_with_retry(
    conn: &mut PgConnection,
    region: &RegionId,
    commands: &[Command],
) -> Result<Batch, sqlx::Error> {
    let mut attempt = 1;
    loop {
        match run(conn, region, commands).await {
            Err(e) if attempt < ATTEMPTS_MAX && is_transient(&e) => attempt += 1,
            other => return other,
        }
    }
}

/// Commits a batch planned against remembered account states in one statement, in its own
/// implicit transaction: one round trip. It fails with a transient error, writing nothing, when any
/// account is no longer as planned against or a unique key (an idempotency key already used) is
/// taken; the caller then runs the batch with [`run_with_retry`].
pub(super) async fn run_planned(conn: &mut PgConnection, batch: &Batch) -> Result<(), sqlx::Error> {
    // An implicit transaction: it commits at the Sync that follows the statement, and the statement
    // counts as done only once PostgreSQL is ready for the next one, that is, after the commit.
    batch.flush(&mut *conn).await
}

/// Reads accounts without locking them, to plan a batch against.
pub(super) async fn load_accounts(conn: &mut PgConnection, ids: &[AccountId]) -> Result<Vec<AccountRow>, sqlx::Error> {
    let ids: Vec<&str> = ids.iter().map(AccountId::as_str).collect();
    let rows = sqlx::query(LOAD_SQL).bind(&ids).fetch_all(&mut *conn).await?;
    rows.iter().map(AccountRow::from_row).collect()
}

/// Serialization failure, deadlock, or unique violation: another writer got there first; a retry
/// reads its committed result.
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| matches!(c.as_ref(), "40001" | "40P01" | "23505"))
}

/// The accounts a batch touches, each once, in id order.
pub(super) fn accounts_of<'c>(commands: impl IntoIterator<Item = &'c Command>) -> Vec<AccountId> {
    let mut ids: Vec<AccountId> = commands.into_iter().flat_map(touched).cloned().collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The accounts a command reads, in command order (with repeats).
pub(super) fn touched(command: &Command) -> impl Iterator<Item = &AccountId> {
    let (a, b) = match command {
        Command::Open(o) => (&o.spec.id, None),
        Command::Transfer(t) => (&t.from, Some(&t.to)),
    };
    std::iter::once(a).chain(b)
}

/// What the batch will write, column by column, for bulk `UNNEST` inserts.
#[derive(Default)]
struct Writes {
    new_accounts: Vec<AccountId>,
    ev_id: Vec<uuid::Uuid>,
    ev_aggregate: Vec<String>,
    ev_type: Vec<String>,
    ev_payload: Vec<Value>,
    ev_vectors: Vec<Value>,
    ev_traceparent: Vec<Option<String>>,
    tr_id: Vec<uuid::Uuid>,
    tr_event: Vec<uuid::Uuid>,
    tr_from: Vec<String>,
    tr_to: Vec<String>,
    tr_amount: Vec<i64>,
    tr_currency: Vec<String>,
    tr_metadata: Vec<Value>,
    tr_key: Vec<Option<String>>,
    tr_from_vector: Vec<Value>,
    tr_to_vector: Vec<Value>,
    en_account: Vec<String>,
    en_seq: Vec<i64>,
    en_transfer: Vec<uuid::Uuid>,
    en_amount: Vec<i64>,
    en_balance: Vec<i64>,
    ob_event: Vec<uuid::Uuid>,
    ob_key: Vec<String>,
    ae_account: Vec<String>,
    ae_counter: Vec<i64>,
    ae_event: Vec<uuid::Uuid>,
    ae_vector: Vec<Value>,
    ae_posting: Vec<i64>,
    ae_opened: Vec<Option<Value>>,
    ae_key: Vec<Option<String>>,
    ik_key: Vec<String>,
    ik_hash: Vec<String>,
    ik_body: Vec<Value>,
}

/// A batch planned in memory: every command applied in order to the accounts as they were when
/// planned, giving each command's reply and every row to write. Event ids are UUIDv7
/// (time-ordered): the primary-key index of `ledger_events` (and of the views' duplicate check)
/// then grows at its right edge instead of touching a random page per insert.
pub(super) struct Batch {
    region: RegionId,
    now: DateTime<Utc>,
    /// The accounts as planned against (existing ones only): the commit writes nothing unless
    /// each is still exactly so.
    before: HashMap<AccountId, AccountRow>,
    /// The accounts as the batch leaves them, including those it opens.
    accounts: HashMap<AccountId, AccountRow>,
    /// Idempotency records: committed ones plus those written earlier in this batch.
    keys: HashMap<String, (String, Value)>,
    writes: Writes,
    /// Each command's reply, in command order.
    pub results: Vec<Result<Outcome, Problem>>,
}

impl Batch {
    /// Applies `commands` in order to `accounts` (the state of every existing account they touch
    /// that is known; a missing one does not exist) and `keys` (the idempotency records of their keys).
    pub(super) fn plan(
        region: &RegionId,
        accounts: HashMap<AccountId, AccountRow>,
        keys: HashMap<String, (String, Value)>,
        commands: &[Command],
    ) -> Self {
        let mut batch = Batch {
            region: region.clone(),
            now: Utc::now(),
            before: accounts.clone(),
            accounts,
            keys,
            writes: Writes::default(),
            results: Vec::with_capacity(commands.len()),
        };
        for command in commands {
            let result = match command {
                Command::Open(o) => batch.open(o),
                Command::Transfer(t) => batch.transfer(t),
            };
            batch.results.push(result);
        }
        batch
    }

    /// Whether committing the batch writes anything beyond confirming the accounts it read.
    pub(super) fn has_writes(&self) -> bool {
        !self.writes.ev_id.is_empty()
    }

    /// Whether a command of `commands` (those planned) carrying an idempotency key was refused.
    pub(super) fn refuses_a_keyed_command(&self, commands: &[Command]) -> bool {
        commands.iter().zip(&self.results).any(|(command, result)| {
            result.is_err() && matches!(command, Command::Transfer(t) if t.idempotency_key.is_some())
        })
    }

    /// Each command's reply, and every account the batch touched as it leaves them.
    pub(super) fn into_committed(self) -> (Vec<Result<Outcome, Problem>>, Vec<AccountRow>) {
        (self.results, self.accounts.into_values().collect())
    }
}

async fn run(conn: &mut PgConnection, region: &RegionId, commands: &[Command]) -> Result<Batch, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let keys: Vec<&str> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Transfer(t) => t.idempotency_key.as_deref(),
            Command::Open(_) => None,
        })
        .collect();
    let touched_ids = accounts_of(commands);
    let ids: Vec<&str> = touched_ids.iter().map(AccountId::as_str).collect();
    // One round trip reads both what the batch needs: its accounts, locked, and the idempotency
    // records of its keys.
    let mut accounts = HashMap::with_capacity(ids.len());
    let mut records = HashMap::new();
    for row in sqlx::query(READ_SQL).bind(&ids).bind(&keys).fetch_all(&mut *tx).await? {
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
    let batch = Batch::plan(region, accounts, records, commands);
    if batch.has_writes() {
        batch.flush(&mut *tx).await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(batch)
}

impl Batch {
    fn occurred_at(&self) -> String {
        rfc3339(&self.now)
    }

    fn open(&mut self, cmd: &OpenAccount) -> Result<Outcome, Problem> {
        if let Some(existing) = self.accounts.get(&cmd.spec.id) {
            return if existing.state.spec == cmd.spec {
                Ok(Outcome::Opened { account: existing.clone(), created: false })
            } else {
                Err(Problem::account_exists(cmd.spec.id.as_str()))
            };
        }
        let mut state = AccountState::opened(cmd.spec.clone());
        state.version.increment(&self.region);
        let event = LedgerEvent {
            event_id: uuid::Uuid::now_v7(),
            origin_region: self.region.clone(),
            occurred_at: self.occurred_at(),
            payload: EventPayload::AccountOpened { account: cmd.spec.clone() },
            vectors: BTreeMap::from([(cmd.spec.id.clone(), state.version.clone())]),
        };
        self.record_event(&event, cmd.traceparent.clone());
        let row = AccountRow { state, updated_at: self.now, created_at: self.now };
        self.writes.new_accounts.push(cmd.spec.id.clone());
        self.accounts.insert(cmd.spec.id.clone(), row.clone());
        Ok(Outcome::Opened { account: row, created: true })
    }

    fn transfer(&mut self, cmd: &Transfer) -> Result<Outcome, Problem> {
        if let Some((hash, body)) = cmd.idempotency_key.as_ref().and_then(|key| self.keys.get(key)) {
            return if *hash == cmd.request_hash {
                Ok(Outcome::Transferred { body: body.clone(), replayed: true })
            } else {
                Err(Problem::idempotency_key_reused())
            };
        }
        if cmd.from == cmd.to {
            return Err(Problem::same_account());
        }
        let mut from =
            self.accounts.get(&cmd.from).ok_or_else(|| Problem::account_not_found(cmd.from.as_str()))?.clone();
        let mut to = self.accounts.get(&cmd.to).ok_or_else(|| Problem::account_not_found(cmd.to.as_str()))?.clone();
        ledger_core::post_transfer(&mut from.state, &mut to.state, cmd.amount, cmd.currency, &self.region)
            .map_err(posting_problem)?;
        from.updated_at = self.now;
        to.updated_at = self.now;

        let currency = from.state.spec.currency;
        let event = LedgerEvent {
            event_id: uuid::Uuid::now_v7(),
            origin_region: self.region.clone(),
            occurred_at: self.occurred_at(),
            payload: EventPayload::TransferPosted {
                transfer_id: cmd.transfer_id,
                from: cmd.from.clone(),
                to: cmd.to.clone(),
                amount: cmd.amount,
                currency,
                metadata: cmd.metadata.clone(),
                idempotency_key: cmd.idempotency_key.clone(),
                request_hash: Some(cmd.request_hash.clone()),
            },
            vectors: BTreeMap::from([
                (cmd.from.clone(), from.state.version.clone()),
                (cmd.to.clone(), to.state.version.clone()),
            ]),
        };
        self.record_event(&event, cmd.traceparent.clone());
        let body = transfer_json(
            cmd.transfer_id,
            &cmd.from,
            &cmd.to,
            cmd.amount.minor_units(),
            currency.as_str(),
            &cmd.metadata,
            self.region.as_str(),
            cmd.idempotency_key.as_deref(),
            &self.now,
            &from.state.version,
            &to.state.version,
        );
        let w = &mut self.writes;
        w.tr_id.push(cmd.transfer_id);
        w.tr_event.push(event.event_id);
        w.tr_from.push(cmd.from.to_string());
        w.tr_to.push(cmd.to.to_string());
        w.tr_amount.push(cmd.amount.minor_units());
        w.tr_currency.push(currency.to_string());
        w.tr_metadata.push(Value::Object(cmd.metadata.clone()));
        w.tr_key.push(cmd.idempotency_key.clone());
        w.tr_from_vector.push(json!(from.state.version));
        w.tr_to_vector.push(json!(to.state.version));
        for (account, amount) in [(&from, -cmd.amount.minor_units()), (&to, cmd.amount.minor_units())] {
            w.en_account.push(account.state.spec.id.to_string());
            w.en_seq.push(account.state.entry_seq);
            w.en_transfer.push(cmd.transfer_id);
            w.en_amount.push(amount);
            w.en_balance.push(account.state.balance);
        }
        if let Some(key) = &cmd.idempotency_key {
            w.ik_key.push(key.clone());
            w.ik_hash.push(cmd.request_hash.clone());
            w.ik_body.push(body.clone());
            self.keys.insert(key.clone(), (cmd.request_hash.clone(), body.clone()));
        }
        self.accounts.insert(cmd.from.clone(), from);
        self.accounts.insert(cmd.to.clone(), to);
        Ok(Outcome::Transferred { body, replayed: false })
    }

    /// Queues the event row and one outbox record per touched account, keyed by that account.
    fn record_event(&mut self, event: &LedgerEvent, traceparent: Option<String>) {
        let payload = serde_json::to_value(event).expect("events serialize");
        let w = &mut self.writes;
        w.ev_id.push(event.event_id);
        w.ev_aggregate.push(event.aggregate_id());
        w.ev_type.push(event.event_type().to_owned());
        w.ev_vectors.push(json!(event.vectors));
        w.ev_traceparent.push(traceparent.clone());
        for account in event.accounts() {
            let seen =
                ledger_core::replication::AccountEvent::of(event, account).expect("events carry a vector per account");
            w.ae_account.push(account.to_string());
            w.ae_counter.push(seen.counter as i64);
            w.ae_event.push(event.event_id);
            w.ae_vector.push(json!(seen.vector));
            w.ae_posting.push(seen.posting);
            w.ae_opened.push(seen.opened.map(|spec| json!(spec)));
            w.ae_key.push(seen.idempotency_key);
            w.ob_event.push(event.event_id);
            w.ob_key.push(account.to_string());
        }
        w.ev_payload.push(payload);
    }

    /// Writes everything in one statement: one round trip whatever the batch holds. Data-modifying
    /// CTEs all run to completion; new accounts are inserted with their final state, so the UPDATE
    /// (which cannot see them in the same statement) never needs to touch them. Every other
    /// account the batch read is updated only if it is still as planned against, and the statement
    /// fails if one is not (see migration 0006): a reply the batch gives, a refusal included, holds
    /// at its commit.
    async fn flush<'e, E: sqlx::PgExecutor<'e>>(&self, executor: E) -> Result<(), sqlx::Error> {
        let w = &self.writes;
        let new: Vec<&AccountRow> =
            w.new_accounts.iter().map(|id| self.accounts.get(id).expect("opened accounts are in the batch")).collect();
        // Sorted, so concurrent statements lock shared accounts in the same order.
        let mut read: Vec<(&AccountRow, &AccountRow)> = self
            .before
            .iter()
            .map(|(id, before)| (before, self.accounts.get(id).expect("read accounts stay in the batch")))
            .collect();
        read.sort_unstable_by(|a, b| a.0.state.spec.id.cmp(&b.0.state.spec.id));
        sqlx::query(WRITE_SQL)
            .bind(self.now)
            .bind(self.region.as_str())
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
            .execute(executor)
            .await?;
        Ok(())
    }
}

/// Accounts to plan against.
const LOAD_SQL: &str = concat!("SELECT ", account_columns!(), " FROM accounts WHERE id = ANY($1)");

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
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, key, request_hash, response_body
FROM idempotency_keys WHERE key = ANY($2)"
);

/// Every write of a batch. `$1` now, `$2` this region, `$3` the outbox channel; then one array per
/// column; `$48`–`$51` the accounts read as planned against, and whether the batch changed each.
/// The batch's one outbox row lists its records in batch order, and NOTIFY is delivered only when
/// the transaction commits.
const WRITE_SQL: &str = "
WITH new_accounts AS (
    INSERT INTO accounts (id, currency, allow_negative, balance, metadata, version_vector, entry_seq, created_at, updated_at)
    SELECT id, currency, allow_negative, balance, metadata, vv, seq, $1, $1
    FROM UNNEST($4::text[], $5::text[], $6::bool[], $7::int8[], $8::jsonb[], $9::jsonb[], $10::int8[])
      AS u(id, currency, allow_negative, balance, metadata, vv, seq)
), events AS (
    INSERT INTO ledger_events (event_id, aggregate_id, event_type, payload, version_vector, origin_region, occurred_at, traceparent)
    SELECT id, agg, typ, payload, vv, $2, $1, tp
    FROM UNNEST($11::uuid[], $12::text[], $13::text[], $14::jsonb[], $15::jsonb[], $16::text[])
      WITH ORDINALITY AS u(id, agg, typ, payload, vv, tp, ord)
    ORDER BY ord
), new_transfers AS (
    INSERT INTO transfers (id, event_id, from_account, to_account, amount, currency, metadata, idempotency_key,
                           from_vector, to_vector, origin_region, created_at)
    SELECT *, $2, $1 FROM UNNEST($17::uuid[], $18::uuid[], $19::text[], $20::text[], $21::int8[], $22::text[],
                                 $23::jsonb[], $24::text[], $25::jsonb[], $26::jsonb[])
), new_entries AS (
    INSERT INTO entries (account_id, seq, transfer_id, amount, balance_after, created_at)
    SELECT *, $1 FROM UNNEST($27::text[], $28::int8[], $29::uuid[], $30::int8[], $31::int8[])
), new_keys AS (
    INSERT INTO idempotency_keys (key, request_hash, response_status, response_body, created_at)
    SELECT k, h, 201, b, $1 FROM UNNEST($32::text[], $33::text[], $34::jsonb[]) AS u(k, h, b)
), locked AS (
    SELECT id FROM accounts WHERE id = ANY($35::text[]) ORDER BY id FOR UPDATE
), read_accounts AS (
    -- The uncorrelated subquery is a one-time filter, run before the first row is updated: every
    -- row is locked in id order first. (Joining `locked` instead rescanned it for each row.)
    UPDATE accounts a SET balance = u.balance, version_vector = u.vv, entry_seq = u.seq,
                          updated_at = CASE WHEN u.changed THEN $1 ELSE a.updated_at END
    FROM UNNEST($35::text[], $36::int8[], $37::jsonb[], $38::int8[], $48::int8[], $49::jsonb[], $50::int8[], $51::bool[])
      AS u(id, balance, vv, seq, old_balance, old_vv, old_seq, changed)
    WHERE (SELECT count(*) FROM locked) >= 0 AND a.id = u.id AND a.balance = u.old_balance AND a.entry_seq = u.old_seq AND a.version_vector = u.old_vv
    RETURNING 1
), new_account_events AS (
    INSERT INTO account_events (account_id, origin_region, counter, event_id, vector, posting, opened, idempotency_key)
    SELECT a, $2, c, e, v, p, o, k
    FROM UNNEST($39::text[], $40::int8[], $41::uuid[], $42::jsonb[], $43::int8[], $44::jsonb[], $45::text[])
      AS u(a, c, e, v, p, o, k)
), new_outbox AS (
    -- One row for the whole batch: its records' events and keys, in batch order (migration 0008).
    INSERT INTO outbox (record_events, record_keys, created_at)
    SELECT $46::uuid[], $47::text[], $1 WHERE cardinality($46::uuid[]) > 0
    RETURNING id
)
-- The payload tells the publisher where the new rows start (see outbox.rs).
SELECT pg_notify($3, COALESCE((SELECT min(id) FROM new_outbox)::text, '')) FROM (SELECT count(*) AS n FROM read_accounts) r
WHERE ledger_assert_accounts_as_planned(r.n, cardinality($35::text[]))";

fn posting_problem(e: PostingError) -> Problem {
    match e {
        PostingError::SameAccount => Problem::same_account(),
        PostingError::CurrencyMismatch { .. } => Problem::currency_mismatch(e.to_string()),
        PostingError::InsufficientFunds { .. } => Problem::insufficient_funds(e.to_string()),
        PostingError::BalanceOutOfRange { .. } | PostingError::Money(_) => Problem::balance_overflow(e.to_string()),
        PostingError::UnknownAccount => Problem::account_not_found("?"),
        PostingError::Frozen(id) => Problem::account_frozen(id.as_str()),
    }
}

/// The transfer representation, shared by `POST` (and its replays) and `GET`. `idempotency_key`
/// is the key as stored (scoped to the API key); the representation shows the client's part.
#[allow(clippy::too_many_arguments)]
pub fn transfer_json(
    id: uuid::Uuid,
    from: &AccountId,
    to: &AccountId,
    amount: i64,
    currency: &str,
    metadata: &serde_json::Map<String, Value>,
    origin_region: &str,
    idempotency_key: Option<&str>,
    created_at: &DateTime<Utc>,
    from_vector: &VersionVector,
    to_vector: &VersionVector,
) -> Value {
    json!({
        "id": id,
        "from": from,
        "to": to,
        "amount": amount,
        "currency": currency,
        "metadata": metadata,
        "origin_region": origin_region,
        // Stored scoped to the API key; the client sees its own key.
        "idempotency_key": idempotency_key.map(crate::idempotency::client_part),
        "created_at": rfc3339(created_at),
        "version_vectors": { from.as_str(): from_vector, to.as_str(): to_vector },
    })
}
