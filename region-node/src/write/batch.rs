//! One group commit: every command of a batch applied in memory against the locked accounts, then
//! written with one statement ([`crate::storage::batch`]), in one PostgreSQL transaction.

use super::{Command, CommandError, OpenAccount, Outcome, Transfer};
use crate::storage::batch::{Commit, Writes};
use crate::storage::pending::PendingRow;
use crate::storage::{AccountRow, StorageError, rfc3339, transaction_json, transfer_json};
use chrono::{DateTime, Utc};
use ledger_core::apply::{PendingRecord, SettlementRecord};
use ledger_core::{AccountId, AccountState, EventPayload, LedgerEvent, RegionId};
use serde_json::Value;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::collections::{BTreeMap, HashMap};

/// Attempts when PostgreSQL reports a transient conflict (serialization failure, deadlock, or a
/// unique key taken by a concurrent writer such as a second node).
const ATTEMPTS_MAX: usize = 3;

/// Runs a batch in its own transaction, reading and locking its accounts first, retrying the
/// whole transaction on transient conflicts. Returns the batch as committed.
pub(super) async fn run_with_retry(
    conn: &mut PgConnection,
    region: &RegionId,
    commands: &[Command],
) -> Result<Batch, StorageError> {
    let mut attempt = 1;
    loop {
        match run(conn, region, commands).await {
            Err(e) if attempt < ATTEMPTS_MAX && e.is_conflict() => attempt += 1,
            other => return other,
        }
    }
}

/// Commits a batch planned against remembered account states in one statement, in its own
/// implicit transaction: one round trip. It fails with a transient error, writing nothing, when any
/// account is no longer as planned against or a unique key (an idempotency key already used) is
/// taken; the caller then runs the batch with [`run_with_retry`].
pub(super) async fn run_planned(conn: &mut PgConnection, batch: &Batch) -> Result<(), StorageError> {
    // An implicit transaction: it commits at the Sync that follows the statement, and the statement
    // counts as done only once PostgreSQL is ready for the next one, that is, after the commit.
    // Two-phase commands never come this way (`plan` refuses them): they need the pending rows
    // read under the account locks, and written.
    debug_assert!(batch.pending_writes.is_empty());
    crate::storage::batch::flush(&mut *conn, &batch.commit()).await
}

/// The accounts a batch touches, each once, in id order.
pub(super) fn accounts_of<'c>(commands: impl IntoIterator<Item = &'c Command>) -> Vec<AccountId> {
    let mut ids: Vec<AccountId> = commands.into_iter().flat_map(touched).cloned().collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The accounts a command reads, in command order (with repeats).
pub(super) fn touched(command: &Command) -> Box<dyn Iterator<Item = &AccountId> + '_> {
    match command {
        Command::Open(o) => Box::new(std::iter::once(&o.spec.id)),
        Command::Transfer(t) => Box::new([&t.from, &t.to].into_iter()),
        Command::Transaction(t) => Box::new(t.legs.iter().flat_map(|l| [&l.from, &l.to])),
        Command::Pending(t) => Box::new([&t.from, &t.to].into_iter()),
        Command::Settle(t) => Box::new([&t.from, &t.to].into_iter()),
    }
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
    /// Pending transfers its settlements read (under the account locks), and those it makes.
    pendings: BTreeMap<uuid::Uuid, PendingRow>,
    /// The pending transfers it reserves or settles, to write.
    pending_writes: Vec<uuid::Uuid>,
    writes: Writes,
    /// Each command's reply, in command order.
    pub results: Vec<Result<Outcome, CommandError>>,
}

impl Batch {
    /// Applies `commands` in order to `accounts` (the state of every existing account they touch
    /// that is known; a missing one does not exist) and `keys` (the idempotency records of their keys).
    pub(super) fn plan(
        region: &RegionId,
        accounts: HashMap<AccountId, AccountRow>,
        keys: HashMap<String, (String, Value)>,
        pendings: BTreeMap<uuid::Uuid, PendingRow>,
        commands: &[Command],
    ) -> Self {
        let mut batch = Batch {
            region: region.clone(),
            now: Utc::now(),
            before: accounts.clone(),
            accounts,
            keys,
            pendings,
            pending_writes: Vec::new(),
            writes: Writes::default(),
            results: Vec::with_capacity(commands.len()),
        };
        for command in commands {
            let result = match command {
                Command::Open(o) => batch.open(o),
                Command::Transfer(t) => batch.transfer(t),
                Command::Transaction(t) => batch.transaction(t),
                Command::Pending(t) => batch.pending(t),
                Command::Settle(t) => batch.settle(t),
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
        commands
            .iter()
            .zip(&self.results)
            .any(|(command, result)| result.is_err() && command.idempotency_key().is_some())
    }

    /// Each command's reply, and every account the batch touched as it leaves them.
    pub(super) fn into_committed(self) -> (Vec<Result<Outcome, CommandError>>, Vec<AccountRow>) {
        (self.results, self.accounts.into_values().collect())
    }
}

async fn run(conn: &mut PgConnection, region: &RegionId, commands: &[Command]) -> Result<Batch, StorageError> {
    let mut tx = conn.begin().await?;
    let keys: Vec<&str> = commands.iter().filter_map(Command::idempotency_key).collect();
    let touched_ids = accounts_of(commands);
    let ids: Vec<&str> = touched_ids.iter().map(AccountId::as_str).collect();
    let (accounts, records) = crate::storage::batch::read_locked(&mut tx, &ids, &keys).await?;
    // Read after their accounts are locked: every settlement locks them too, so a pending
    // transfer's status cannot change before this batch commits.
    let settled: Vec<uuid::Uuid> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Settle(s) => Some(s.pending_id),
            _ => None,
        })
        .collect();
    let pendings = crate::storage::pending::load(&mut tx, &settled).await?;
    let batch = Batch::plan(region, accounts, records, pendings, commands);
    if batch.has_writes() {
        crate::storage::batch::flush(&mut *tx, &batch.commit()).await?;
        let written: BTreeMap<uuid::Uuid, PendingRow> =
            batch.pending_writes.iter().map(|id| (*id, batch.pendings[id].clone())).collect();
        crate::storage::pending::write(&mut tx, &written, batch.now).await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(batch)
}

impl Batch {
    /// What committing the batch writes.
    fn commit(&self) -> Commit<'_> {
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
        Commit { now: self.now, region: &self.region, new, read, writes: w }
    }

    fn occurred_at(&self) -> String {
        rfc3339(&self.now)
    }

    fn open(&mut self, cmd: &OpenAccount) -> Result<Outcome, CommandError> {
        if let Some(existing) = self.accounts.get(&cmd.spec.id) {
            return if existing.state.spec == cmd.spec {
                Ok(Outcome::Opened { account: existing.clone(), created: false })
            } else {
                Err(CommandError::AccountExists(cmd.spec.id.clone()))
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
        self.record_event(&event, cmd.traceparent.clone(), |_| (0, 0, 0));
        let row = AccountRow { state, updated_at: self.now, created_at: self.now };
        self.writes.new_accounts.push(cmd.spec.id.clone());
        self.accounts.insert(cmd.spec.id.clone(), row.clone());
        Ok(Outcome::Opened { account: row, created: true })
    }

    fn transfer(&mut self, cmd: &Transfer) -> Result<Outcome, CommandError> {
        if let Some(replayed) = self.replay(cmd.idempotency_key.as_ref(), &cmd.request_hash) {
            return replayed;
        }
        if cmd.from == cmd.to {
            return Err(CommandError::SameAccount);
        }
        let mut from =
            self.accounts.get(&cmd.from).ok_or_else(|| CommandError::AccountNotFound(cmd.from.clone()))?.clone();
        let mut to = self.accounts.get(&cmd.to).ok_or_else(|| CommandError::AccountNotFound(cmd.to.clone()))?.clone();
        ledger_core::post_transfer(&mut from.state, &mut to.state, cmd.amount, cmd.currency, &self.region)
            .map_err(CommandError::Posting)?;
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
        let after = |s: &AccountState| (s.entry_seq, s.balance, s.pending_debits);
        let seqs = (after(&from.state), after(&to.state));
        self.record_event(&event, cmd.traceparent.clone(), |a| if *a == cmd.from { seqs.0 } else { seqs.1 });
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
        push_transfer(
            &mut self.writes,
            TransferRow {
                id: cmd.transfer_id,
                event_id: event.event_id,
                from: &cmd.from,
                to: &cmd.to,
                amount: cmd.amount.minor_units(),
                currency,
                metadata: &cmd.metadata,
                idempotency_key: cmd.idempotency_key.as_ref(),
                vectors: [&from.state.version, &to.state.version],
                leg: None,
                entries: [(from.state.entry_seq, from.state.balance), (to.state.entry_seq, to.state.balance)],
            },
        );
        self.keep_key(cmd.idempotency_key.as_ref(), &cmd.request_hash, &body);
        self.accounts.insert(cmd.from.clone(), from);
        self.accounts.insert(cmd.to.clone(), to);
        Ok(Outcome::Transferred { body, replayed: false })
    }

    fn transaction(&mut self, cmd: &super::Transaction) -> Result<Outcome, CommandError> {
        if let Some(replayed) = self.replay(cmd.idempotency_key.as_ref(), &cmd.request_hash) {
            return replayed;
        }
        let mut states: BTreeMap<AccountId, AccountState> = BTreeMap::new();
        for (i, leg) in cmd.legs.iter().enumerate() {
            if leg.from == leg.to {
                return Err(CommandError::Leg { leg: i, error: Box::new(CommandError::SameAccount) });
            }
            for id in [&leg.from, &leg.to] {
                let row = self.accounts.get(id).ok_or_else(|| CommandError::Leg {
                    leg: i,
                    error: Box::new(CommandError::AccountNotFound(id.clone())),
                })?;
                states.insert(id.clone(), row.state.clone());
            }
        }
        let posted = ledger_core::post_transaction(&mut states, &cmd.legs, &self.region)
            .map_err(|(leg, e)| CommandError::Leg { leg, error: Box::new(CommandError::Posting(e)) })?;
        let event = LedgerEvent {
            event_id: uuid::Uuid::now_v7(),
            origin_region: self.region.clone(),
            occurred_at: self.occurred_at(),
            payload: EventPayload::TransactionPosted {
                transaction_id: cmd.transaction_id,
                legs: cmd.legs.clone(),
                metadata: cmd.metadata.clone(),
                idempotency_key: cmd.idempotency_key.clone(),
                request_hash: Some(cmd.request_hash.clone()),
            },
            vectors: states.iter().map(|(id, s)| (id.clone(), s.version.clone())).collect(),
        };
        let seqs: BTreeMap<AccountId, (i64, i64, i64)> =
            states.iter().map(|(id, s)| (id.clone(), (s.entry_seq, s.balance, s.pending_debits))).collect();
        self.record_event(&event, cmd.traceparent.clone(), |a| seqs[a]);
        let body = transaction_json(&event, &self.now).expect("a transaction event");
        for ((leg, p), i) in event.legs().iter().zip(&posted).zip(0i16..) {
            push_transfer(
                &mut self.writes,
                TransferRow {
                    id: leg.transfer_id,
                    event_id: event.event_id,
                    from: leg.from,
                    to: leg.to,
                    amount: leg.amount.minor_units(),
                    currency: leg.currency,
                    metadata: &cmd.metadata,
                    idempotency_key: cmd.idempotency_key.as_ref(),
                    vectors: [&event.vectors[leg.from], &event.vectors[leg.to]],
                    leg: Some((cmd.transaction_id, i)),
                    entries: [(p.from_seq, p.from_balance), (p.to_seq, p.to_balance)],
                },
            );
        }
        self.keep_key(cmd.idempotency_key.as_ref(), &cmd.request_hash, &body);
        for (id, state) in states {
            let row = self.accounts.get_mut(&id).expect("read above");
            row.state = state;
            row.updated_at = self.now;
        }
        Ok(Outcome::Transferred { body, replayed: false })
    }

    fn pending(&mut self, cmd: &super::PendingTransfer) -> Result<Outcome, CommandError> {
        if let Some(replayed) = self.replay(cmd.idempotency_key.as_ref(), &cmd.request_hash) {
            return replayed;
        }
        if cmd.from == cmd.to {
            return Err(CommandError::SameAccount);
        }
        let mut from =
            self.accounts.get(&cmd.from).ok_or_else(|| CommandError::AccountNotFound(cmd.from.clone()))?.clone();
        let mut to = self.accounts.get(&cmd.to).ok_or_else(|| CommandError::AccountNotFound(cmd.to.clone()))?.clone();
        ledger_core::reserve(&mut from.state, &mut to.state, cmd.amount, cmd.currency, &self.region)
            .map_err(CommandError::Posting)?;
        let currency = from.state.spec.currency;
        let expires_at = cmd.expires_at.as_ref().map(rfc3339);
        let event = LedgerEvent {
            event_id: uuid::Uuid::now_v7(),
            origin_region: self.region.clone(),
            occurred_at: self.occurred_at(),
            payload: EventPayload::TransferPending {
                transfer_id: cmd.transfer_id,
                from: cmd.from.clone(),
                to: cmd.to.clone(),
                amount: cmd.amount,
                currency,
                metadata: cmd.metadata.clone(),
                idempotency_key: cmd.idempotency_key.clone(),
                request_hash: Some(cmd.request_hash.clone()),
                expires_at: expires_at.clone(),
            },
            vectors: BTreeMap::from([
                (cmd.from.clone(), from.state.version.clone()),
                (cmd.to.clone(), to.state.version.clone()),
            ]),
        };
        let after = |s: &AccountState| (s.entry_seq, s.balance, s.pending_debits);
        let seqs = (after(&from.state), after(&to.state));
        self.record_event(&event, cmd.traceparent.clone(), |a| if *a == cmd.from { seqs.0 } else { seqs.1 });
        let row = PendingRow {
            record: PendingRecord {
                event_id: event.event_id,
                origin: self.region.clone(),
                from: cmd.from.clone(),
                to: cmd.to.clone(),
                currency,
                reserved: cmd.amount.minor_units(),
                expires_at,
                settlements: Vec::new(),
            },
            metadata: cmd.metadata.clone(),
            idempotency_key: cmd.idempotency_key.clone(),
            vectors: event.vectors.clone(),
            created_at: self.now,
            settled_at: None,
        };
        let body = row.to_json(cmd.transfer_id);
        self.pendings.insert(cmd.transfer_id, row);
        self.pending_writes.push(cmd.transfer_id);
        self.keep_key(cmd.idempotency_key.as_ref(), &cmd.request_hash, &body);
        from.updated_at = self.now;
        to.updated_at = self.now;
        self.accounts.insert(cmd.from.clone(), from);
        self.accounts.insert(cmd.to.clone(), to);
        Ok(Outcome::Transferred { body, replayed: false })
    }

    fn settle(&mut self, cmd: &super::Settle) -> Result<Outcome, CommandError> {
        use super::SettleAction;
        if let Some(replayed) = self.replay(cmd.idempotency_key.as_ref(), &cmd.request_hash) {
            return replayed;
        }
        let not_pending = || CommandError::Posting(ledger_core::PostingError::NotPending(cmd.pending_id));
        let row = self.pendings.get(&cmd.pending_id).ok_or_else(not_pending)?;
        if !row.record.settlements.is_empty() {
            return Err(not_pending());
        }
        // Past its deadline nobody may post it; the region that made it voids it.
        let expired = row
            .record
            .expires_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t <= self.now);
        let (post, void_expired) = match cmd.action {
            SettleAction::Post(_) if expired => return Err(not_pending()),
            SettleAction::Expire if !expired => return Err(not_pending()),
            SettleAction::Post(amount) => (Some(amount), false),
            SettleAction::Void => (None, false),
            SettleAction::Expire => (None, true),
        };
        let record = row.record.clone();
        let reserved = ledger_core::Amount::new(record.reserved).map_err(|e| CommandError::Posting(e.into()))?;
        let post = post.map(|amount| amount.unwrap_or(reserved));
        let mut from =
            self.accounts.get(&record.from).ok_or_else(|| CommandError::AccountNotFound(record.from.clone()))?.clone();
        let mut to =
            self.accounts.get(&record.to).ok_or_else(|| CommandError::AccountNotFound(record.to.clone()))?.clone();
        ledger_core::settle(&mut from.state, &mut to.state, reserved, post, record.currency, &self.region)
            .map_err(CommandError::Posting)?;
        let settlement = match post {
            Some(amount) => ledger_core::Settlement::Post { transfer_id: uuid::Uuid::now_v7(), amount },
            None => ledger_core::Settlement::Void { expired: void_expired },
        };
        let event = LedgerEvent {
            event_id: uuid::Uuid::now_v7(),
            origin_region: self.region.clone(),
            occurred_at: self.occurred_at(),
            payload: EventPayload::PendingSettled {
                pending_id: cmd.pending_id,
                from: record.from.clone(),
                to: record.to.clone(),
                currency: record.currency,
                reserved,
                settlement,
                idempotency_key: cmd.idempotency_key.clone(),
                request_hash: Some(cmd.request_hash.clone()),
            },
            vectors: BTreeMap::from([
                (record.from.clone(), from.state.version.clone()),
                (record.to.clone(), to.state.version.clone()),
            ]),
        };
        let after = |s: &AccountState| (s.entry_seq, s.balance, s.pending_debits);
        let seqs = (after(&from.state), after(&to.state));
        self.record_event(&event, cmd.traceparent.clone(), |a| if *a == record.from { seqs.0 } else { seqs.1 });
        if let ledger_core::Settlement::Post { transfer_id, amount } = settlement {
            // The post is a transfer of its own, with its two entries.
            push_transfer(
                &mut self.writes,
                TransferRow {
                    id: transfer_id,
                    event_id: event.event_id,
                    from: &record.from,
                    to: &record.to,
                    amount: amount.minor_units(),
                    currency: record.currency,
                    metadata: &self.pendings[&cmd.pending_id].metadata,
                    idempotency_key: cmd.idempotency_key.as_ref(),
                    vectors: [&from.state.version, &to.state.version],
                    leg: None,
                    entries: [(from.state.entry_seq, from.state.balance), (to.state.entry_seq, to.state.balance)],
                },
            );
        }
        let row = self.pendings.get_mut(&cmd.pending_id).expect("read above");
        row.record.settlements.push(SettlementRecord {
            event_id: event.event_id,
            origin: self.region.clone(),
            vector: from.state.version.clone(),
            posted: post.map(ledger_core::Amount::minor_units),
            transfer_id: match settlement {
                ledger_core::Settlement::Post { transfer_id, .. } => Some(transfer_id),
                ledger_core::Settlement::Void { .. } => None,
            },
            expired: void_expired,
        });
        row.vectors = event.vectors.clone();
        row.settled_at = Some(self.now);
        let body = row.to_json(cmd.pending_id);
        self.pending_writes.push(cmd.pending_id);
        self.keep_key(cmd.idempotency_key.as_ref(), &cmd.request_hash, &body);
        from.updated_at = self.now;
        to.updated_at = self.now;
        self.accounts.insert(record.from.clone(), from);
        self.accounts.insert(record.to.clone(), to);
        Ok(Outcome::Transferred { body, replayed: false })
    }

    /// The answer to a key already used: its replay, or a refusal when the body differs.
    fn replay(&self, key: Option<&String>, request_hash: &str) -> Option<Result<Outcome, CommandError>> {
        let (hash, body) = self.keys.get(key?)?;
        Some(if hash == request_hash {
            Ok(Outcome::Transferred { body: body.clone(), replayed: true })
        } else {
            Err(CommandError::IdempotencyKeyReused)
        })
    }

    /// Records the key's answer, to commit and to replay within the batch.
    fn keep_key(&mut self, key: Option<&String>, request_hash: &str, body: &Value) {
        if let Some(key) = key {
            let w = &mut self.writes;
            w.ik_key.push(key.clone());
            w.ik_hash.push(request_hash.to_owned());
            w.ik_body.push(body.clone());
            self.keys.insert(key.clone(), (request_hash.to_owned(), body.clone()));
        }
    }

    /// Queues the event row and one outbox record per touched account, keyed by that account.
    fn record_event(
        &mut self,
        event: &LedgerEvent,
        traceparent: Option<String>,
        after: impl Fn(&AccountId) -> (i64, i64, i64),
    ) {
        let payload = to_json(event);
        // Before the event: the batch's accounts are updated only after their command's event is
        // recorded (an account it opens had nothing).
        let before: Vec<(i64, i64)> = event
            .accounts()
            .iter()
            .map(|a| self.accounts.get(*a).map_or((0, 0), |r| (r.state.balance, r.state.pending_debits)))
            .collect();
        let w = &mut self.writes;
        w.ev_id.push(event.event_id);
        w.ev_aggregate.push(event.aggregate_id());
        w.ev_type.push(event.event_type().to_owned());
        w.ev_vectors.push(to_json(&event.vectors));
        w.ev_traceparent.push(traceparent.clone());
        for (account, (balance_before, pending_before)) in event.accounts().into_iter().zip(before) {
            let seen =
                ledger_core::replication::AccountEvent::of(event, account).expect("events carry a vector per account");
            let (entry_seq, balance_after, pending_after) = after(account);
            w.ae_account.push(account.to_string());
            w.ae_counter.push(seen.counter as i64);
            w.ae_event.push(event.event_id);
            w.ae_vector.push(to_json(&seen.vector));
            w.ae_posting.push(seen.posting);
            w.ae_opened.push(seen.opened.map(|spec| to_json(&spec)));
            w.ae_key.push(seen.idempotency_key);
            w.ae_entry_seq.push(entry_seq);
            w.ae_balance_before.push(balance_before);
            w.ae_pending_before.push(pending_before);
            w.ae_balance_after.push(balance_after);
            w.ae_pending_after.push(pending_after);
            w.ob_event.push(event.event_id);
            w.ob_key.push(account.to_string());
        }
        w.ev_payload.push(payload);
    }
}

/// One transfer row (a transfer, the post of a pending transfer, or a leg of a transaction) with
/// its two entries, as the batch writes it.
struct TransferRow<'r> {
    id: uuid::Uuid,
    event_id: uuid::Uuid,
    from: &'r AccountId,
    to: &'r AccountId,
    amount: i64,
    currency: ledger_core::Currency,
    metadata: &'r serde_json::Map<String, Value>,
    idempotency_key: Option<&'r String>,
    /// The source's and the destination's vectors after it.
    vectors: [&'r ledger_core::VersionVector; 2],
    /// The transaction and the leg's position in it.
    leg: Option<(uuid::Uuid, i16)>,
    /// The debit's and the credit's entry number and the balance after each.
    entries: [(i64, i64); 2],
}

fn push_transfer(w: &mut Writes, t: TransferRow<'_>) {
    w.tr_id.push(t.id);
    w.tr_event.push(t.event_id);
    w.tr_from.push(t.from.to_string());
    w.tr_to.push(t.to.to_string());
    w.tr_amount.push(t.amount);
    w.tr_currency.push(t.currency.to_string());
    w.tr_metadata.push(to_json(t.metadata));
    w.tr_key.push(t.idempotency_key.cloned());
    w.tr_from_vector.push(to_json(t.vectors[0]));
    w.tr_to_vector.push(to_json(t.vectors[1]));
    w.tr_transaction.push(t.leg.map(|(transaction, _)| transaction));
    w.tr_leg.push(t.leg.map(|(_, leg)| leg));
    for ((account, amount), (seq, balance)) in [(t.from, -t.amount), (t.to, t.amount)].into_iter().zip(t.entries) {
        w.en_account.push(account.to_string());
        w.en_seq.push(seq);
        w.en_transfer.push(t.id);
        w.en_amount.push(amount);
        w.en_balance.push(balance);
    }
}

/// A JSON column's text. Our own types, maps with string keys: serializing them cannot fail.
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("ledger types serialize to JSON")
}
