//! Store: one write of everything a decided round changes, with a constant number of bulk
//! statements whatever the number of events: the events, the accounts, transfers, entries,
//! per-account events, idempotency records, read models, conflicts (and their outbox records), the
//! held events and the dead letters.

use super::remote_load::Loaded;
use super::{AccountRow, OUTBOX_CHANNEL, StorageError, WEBHOOK_CHANNEL, transaction_json, transfer_json};
use crate::remote::Held;
use crate::views::{RecordChange, ViewChange};
use chrono::{DateTime, Utc};
use ledger_core::apply::{ApplyState, Episode, Fate};
use ledger_core::replication::{AccountEvent, Conflict, ConflictKind};
use ledger_core::{AccountId, EventPayload, RegionId};
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, Transaction};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Writes the round. `before` are the accounts as loaded (locked); `state` is after deciding.
pub(crate) async fn store(
    tx: &mut Transaction<'_, Postgres>,
    region: &RegionId,
    events: &[Held],
    fates: &[Fate],
    state: &ApplyState,
    loaded: &Loaded,
) -> Result<(), StorageError> {
    let now = Utc::now();
    let before = &loaded.before;
    let applied: Vec<(&Held, &ledger_core::apply::Applied)> = events
        .iter()
        .zip(fates)
        .filter_map(|(h, f)| match f {
            Fate::Applied(a) => Some((h, a)),
            _ => None,
        })
        .collect();
    write_events(tx, &applied, state, now).await?;
    write_accounts(tx, &applied, state, before, now).await?;
    write_transfers(tx, &applied, now).await?;
    write_pendings(tx, &applied, state, loaded, now).await?;
    write_views(tx, &applied, state, now).await?;
    write_conflicts(tx, region, &applied, state, loaded).await?;
    write_held(tx, events, fates).await?;
    Ok(())
}

async fn write_events(
    tx: &mut PgConnection,
    applied: &[(&Held, &ledger_core::apply::Applied)],
    state: &ApplyState,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // Each new per-account event's episode as the round leaves it.
    let episode_of: HashMap<(&AccountId, uuid::Uuid), uuid::Uuid> = state
        .window
        .iter()
        .flat_map(|(account, events)| events.iter().filter_map(move |h| Some(((account, h.event_id), h.episode?))))
        .collect();
    let mut ev = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ae = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ae_episode = Vec::new();
    let mut ae_entry_seq = Vec::new();
    // Each account's balance and pending debits before and after the event, and when it happened:
    // what the monitors judge.
    let mut ae_money = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (held, a) in applied {
        let e = &held.event;
        ev.0.push(e.event_id);
        ev.1.push(e.aggregate_id());
        ev.2.push(e.event_type());
        // As received: fields this version does not know are kept.
        ev.3.push(held.raw.clone());
        ev.4.push(json!(e.vectors));
        ev.5.push(e.origin_region.as_str());
        ev.6.push(DateTime::parse_from_rfc3339(&e.occurred_at).map(|t| t.with_timezone(&Utc)).unwrap_or(now));
        for account in e.accounts() {
            let seen = AccountEvent::of(e, account).expect("applied events carry a vector per account");
            ae.0.push(account.as_str());
            ae.1.push(e.origin_region.as_str());
            ae.2.push(seen.counter as i64);
            ae.3.push(e.event_id);
            ae.4.push(json!(seen.vector));
            ae.5.push(seen.posting);
            ae.6.push(seen.opened.map(|spec| json!(spec)));
            ae.7.push(seen.idempotency_key);
            ae_episode.push(episode_of.get(&(account, e.event_id)).copied());
            let posting = a.postings.iter().find(|p| p.account == *account);
            ae_entry_seq.push(posting.map(|p| p.entry_seq));
            let (balance_after, amount) = posting.map_or((0, 0), |p| (p.balance_after, p.amount));
            ae_money.0.push(balance_after - amount);
            ae_money.1.push(posting.map_or(0, |p| p.pending_debits_before));
            ae_money.2.push(balance_after);
            ae_money.3.push(posting.map_or(0, |p| p.pending_debits_after));
            ae_money.4.push(ev.6.last().copied().unwrap_or(now));
        }
    }
    if ev.0.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO ledger_events (event_id, aggregate_id, event_type, payload, version_vector, origin_region, occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::text[], $7::timestamptz[])",
    )
    .bind(&ev.0)
    .bind(&ev.1)
    .bind(&ev.2)
    .bind(&ev.3)
    .bind(&ev.4)
    .bind(&ev.5)
    .bind(&ev.6)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        // And the webhooks the events fire, judged as the committer's statement judges them
        // (storage/batch.rs): money moved in another region fires this region's monitors when it
        // is applied here, in this transaction.
        "WITH new_account_events AS (
             INSERT INTO account_events (account_id, origin_region, counter, event_id, vector, posting, opened,
                                         idempotency_key, episode, entry_seq)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::uuid[], $5::jsonb[], $6::int8[], $7::jsonb[],
                                  $8::text[], $9::uuid[], $10::int8[])
         ), new_deliveries AS (
             INSERT INTO webhook_deliveries (id, monitor_id, event_id, account_id, condition, balance_after,
                                             occurred_at, next_attempt_at, created_at)
             SELECT webhook_delivery_id(m.id, e.event), m.id, e.event, e.account, m.condition, e.balance_after,
                    e.occurred_at, $16, $16
             FROM UNNEST($1::text[], $4::uuid[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::timestamptz[])
               AS e(account, event, balance_before, pending_before, balance_after, pending_after, occurred_at)
             JOIN monitors m ON m.account_id = e.account AND m.deleted_at IS NULL
             WHERE NOT monitor_holds(m.op, m.threshold, monitor_value(m.field, e.balance_before, e.pending_before))
               AND monitor_holds(m.op, m.threshold, monitor_value(m.field, e.balance_after, e.pending_after))
             RETURNING 1
         )
         SELECT pg_notify($17, '') FROM (SELECT 1 FROM new_deliveries LIMIT 1) d",
    )
    .bind(&ae.0)
    .bind(&ae.1)
    .bind(&ae.2)
    .bind(&ae.3)
    .bind(&ae.4)
    .bind(&ae.5)
    .bind(&ae.6)
    .bind(&ae.7)
    .bind(&ae_episode)
    .bind(&ae_entry_seq)
    .bind(&ae_money.0)
    .bind(&ae_money.1)
    .bind(&ae_money.2)
    .bind(&ae_money.3)
    .bind(&ae_money.4)
    .bind(now)
    .bind(WEBHOOK_CHANNEL)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every account an applied event touched, as the round leaves it: existing ones updated (they
/// are locked), new ones inserted with their final state.
async fn write_accounts(
    tx: &mut PgConnection,
    applied: &[(&Held, &ledger_core::apply::Applied)],
    state: &ApplyState,
    before: &HashMap<AccountId, AccountRow>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let touched: BTreeSet<&AccountId> = applied.iter().flat_map(|(h, _)| h.event.accounts()).collect();
    #[derive(Default)]
    struct Columns<'a> {
        id: Vec<&'a str>,
        currency: Vec<&'a str>,
        allow_negative: Vec<bool>,
        metadata: Vec<Value>,
        balance: Vec<i64>,
        entry_seq: Vec<i64>,
        vector: Vec<Value>,
        overdrawn: Vec<bool>,
        frozen: Vec<bool>,
        foreign: Vec<Value>,
        pending_debits: Vec<i64>,
        pending_credits: Vec<i64>,
    }
    let (mut old, mut new) = (Columns::default(), Columns::default());
    for id in touched {
        let a = &state.accounts[id];
        let c = if before.contains_key(id) { &mut old } else { &mut new };
        c.id.push(id.as_str());
        c.currency.push(a.spec.currency.as_str());
        c.allow_negative.push(a.spec.allow_negative);
        c.metadata.push(Value::Object(a.spec.metadata.clone()));
        c.balance.push(a.balance);
        c.entry_seq.push(a.entry_seq);
        c.vector.push(json!(a.version));
        // Postings commute, so a remote debit applies even below zero: that is an overdraft
        // conflict for finance, and the flag keeps the no-overdraft CHECK satisfied.
        // conflict for finance, and the flag keeps the no-overdraft CHECK satisfied. So does
        // spending money a pending transfer reserved elsewhere at the same time.
        c.overdrawn.push(a.available() < 0 && !a.spec.allow_negative);
        c.frozen.push(a.frozen);
        c.foreign.push(json!(a.foreign));
        c.pending_debits.push(a.pending_debits);
        c.pending_credits.push(a.pending_credits);
    }
    if !old.id.is_empty() {
        sqlx::query(
            "UPDATE accounts a SET currency = u.currency, allow_negative = u.allow_negative, metadata = u.metadata,
                 balance = u.balance, entry_seq = u.seq, version_vector = u.vv, updated_at = $9,
                 replicated_overdraft = a.replicated_overdraft OR u.overdrawn, frozen = u.frozen,
                 foreign_balances = u.foreign_balances, pending_debits = u.pd, pending_credits = u.pc
             FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::jsonb[], $5::int8[], $6::int8[], $7::jsonb[], $8::bool[],
                         $10::bool[], $11::jsonb[], $12::int8[], $13::int8[])
               AS u(id, currency, allow_negative, metadata, balance, seq, vv, overdrawn, frozen, foreign_balances, pd, pc)
             WHERE a.id = ANY($1) AND a.id = u.id",
        )
        .bind(&old.id)
        .bind(&old.currency)
        .bind(&old.allow_negative)
        .bind(&old.metadata)
        .bind(&old.balance)
        .bind(&old.entry_seq)
        .bind(&old.vector)
        .bind(&old.overdrawn)
        .bind(now)
        .bind(&old.frozen)
        .bind(&old.foreign)
        .bind(&old.pending_debits)
        .bind(&old.pending_credits)
        .execute(&mut *tx)
        .await?;
    }
    if !new.id.is_empty() {
        let inserted = sqlx::query(
            "INSERT INTO accounts (id, currency, allow_negative, metadata, balance, entry_seq, version_vector,
                                   replicated_overdraft, frozen, foreign_balances, pending_debits, pending_credits,
                                   created_at, updated_at)
             SELECT *, $9, $9 FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::jsonb[], $5::int8[], $6::int8[], $7::jsonb[],
                                          $8::bool[], $10::bool[], $11::jsonb[], $12::int8[], $13::int8[])
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.currency)
        .bind(&new.allow_negative)
        .bind(&new.metadata)
        .bind(&new.balance)
        .bind(&new.entry_seq)
        .bind(&new.vector)
        .bind(&new.overdrawn)
        .bind(now)
        .bind(&new.frozen)
        .bind(&new.foreign)
        .bind(&new.pending_debits)
        .bind(&new.pending_credits)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // An account opened here meanwhile (the write path takes no lock on a row that does not
        // exist yet) is never overwritten, as its vector would lose this region's own counter:
        // this raises a serialization failure, and the round is decided again on the account as
        // it now is, locked.
        sqlx::query("SELECT ledger_assert_accounts_as_planned($1, $2)")
            .bind(inserted as i64)
            .bind(new.id.len() as i32)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn write_transfers(
    tx: &mut PgConnection,
    applied: &[(&Held, &ledger_core::apply::Applied)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tr = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut tr2 = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut tr3: (Vec<Option<uuid::Uuid>>, Vec<Option<i16>>) = (Vec::new(), Vec::new());
    let mut en = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut keys = (Vec::new(), Vec::new(), Vec::new());
    for (held, a) in applied {
        let e = &held.event;
        let no_metadata = serde_json::Map::new();
        let (metadata, request_hash, transaction) = match &e.payload {
            // Reservations write no transfer; their keys are recorded with the pending transfer.
            EventPayload::AccountOpened { .. } | EventPayload::TransferPending { .. } => continue,
            EventPayload::PendingSettled { request_hash, .. } => (&no_metadata, request_hash, None),
            EventPayload::TransferPosted { metadata, request_hash, .. } => (metadata, request_hash, None),
            EventPayload::TransactionPosted { transaction_id, metadata, request_hash, .. } => {
                (metadata, request_hash, Some(*transaction_id))
            }
        };
        let idempotency_key = e.idempotency_key();
        // Each leg is a transfer row; its two entries follow it in `a.entries`.
        for ((i, leg), sides) in e.legs().into_iter().enumerate().zip(a.entries.chunks(2)) {
            tr.0.push(leg.transfer_id);
            tr.1.push(e.event_id);
            tr.2.push(leg.from.as_str());
            tr.3.push(leg.to.as_str());
            tr.4.push(leg.amount.minor_units());
            tr.5.push(leg.currency.to_string());
            tr2.0.push(Value::Object(metadata.clone()));
            tr2.1.push(idempotency_key.map(String::as_str));
            tr2.2.push(json!(e.vectors[leg.from]));
            tr2.3.push(json!(e.vectors[leg.to]));
            tr2.4.push(e.origin_region.as_str());
            tr3.0.push(transaction);
            tr3.1.push(transaction.map(|_| i as i16));
            for p in sides {
                en.0.push(p.account.as_str());
                en.1.push(p.entry_seq);
                en.2.push(leg.transfer_id);
                en.3.push(p.amount);
                en.4.push(p.balance_after);
            }
        }
        let settles = matches!(e.payload, EventPayload::PendingSettled { .. });
        if let (Some(key), true, false) = (idempotency_key, a.first_use_of_key, settles) {
            // A retry of this key here is answered as a replay of the posting made elsewhere.
            let body = match transaction_json(e, &now) {
                Some(body) => body,
                None => {
                    let leg = e.legs()[0];
                    transfer_json(
                        leg.transfer_id,
                        leg.from,
                        leg.to,
                        leg.amount.minor_units(),
                        leg.currency.as_str(),
                        metadata,
                        e.origin_region.as_str(),
                        Some(key),
                        &now,
                        &e.vectors[leg.from],
                        &e.vectors[leg.to],
                    )
                }
            };
            keys.0.push(key.as_str());
            keys.1.push(request_hash.clone().unwrap_or_default());
            keys.2.push(body);
        }
    }
    if tr.0.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO transfers (id, event_id, from_account, to_account, amount, currency, metadata, idempotency_key,
                                from_vector, to_vector, origin_region, transaction_id, leg, created_at)
         SELECT *, $12 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[],
                                   $7::jsonb[], $8::text[], $9::jsonb[], $10::jsonb[], $11::text[], $13::uuid[], $14::int2[])",
    )
    .bind(&tr.0)
    .bind(&tr.1)
    .bind(&tr.2)
    .bind(&tr.3)
    .bind(&tr.4)
    .bind(&tr.5)
    .bind(&tr2.0)
    .bind(&tr2.1)
    .bind(&tr2.2)
    .bind(&tr2.3)
    .bind(&tr2.4)
    .bind(now)
    .bind(&tr3.0)
    .bind(&tr3.1)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        // Stamped no earlier than the account's last entry, as the committer does (its accounts
        // are locked by now, so this statement sees that entry): entries in sequence order.
        "INSERT INTO entries (account_id, seq, transfer_id, amount, balance_after, created_at)
         SELECT a, s, t, amt, bal, GREATEST($6, (SELECT p.created_at FROM entries p WHERE p.account_id = u.a AND p.seq < u.s
                                                 ORDER BY p.seq DESC LIMIT 1))
         FROM UNNEST($1::text[], $2::int8[], $3::uuid[], $4::int8[], $5::int8[]) AS u(a, s, t, amt, bal)",
    )
    .bind(&en.0)
    .bind(&en.1)
    .bind(&en.2)
    .bind(&en.3)
    .bind(&en.4)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    keep_keys(tx, &keys, now).await
}

/// The idempotency records of keys first used here by the round's postings: (key, request hash,
/// response body). A retry here is then answered as a replay of the posting made elsewhere; a key
/// already recorded here keeps its first answer.
async fn keep_keys<K: AsRef<str>>(
    tx: &mut PgConnection,
    keys: &(Vec<K>, Vec<String>, Vec<Value>),
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if keys.0.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = keys.0.iter().map(AsRef::as_ref).collect();
    sqlx::query(
        "INSERT INTO idempotency_keys (key, request_hash, response_status, response_body, created_at)
         SELECT k, h, 201, b, $4 FROM UNNEST($1::text[], $2::text[], $3::jsonb[]) AS u(k, h, b)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&names)
    .bind(&keys.1)
    .bind(&keys.2)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Pending transfers reserved or settled in the round, as the round leaves them, with the
/// idempotency records of keys first used here by them (a retry here replays the answer).
async fn write_pendings(
    tx: &mut PgConnection,
    applied: &[(&Held, &ledger_core::apply::Applied)],
    state: &ApplyState,
    loaded: &Loaded,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut rows: BTreeMap<uuid::Uuid, super::pending::PendingRow> = BTreeMap::new();
    let mut keys = (Vec::new(), Vec::new(), Vec::new());
    for (held, a) in applied {
        let e = &held.event;
        let (id, request_hash) = match &e.payload {
            EventPayload::TransferPending { transfer_id, metadata, idempotency_key, request_hash, .. } => {
                let record = state.pendings[transfer_id].clone();
                let row = super::pending::PendingRow {
                    record,
                    metadata: metadata.clone(),
                    idempotency_key: idempotency_key.clone(),
                    vectors: BTreeMap::new(),
                    created_at: now,
                    settled_at: None,
                };
                rows.insert(*transfer_id, row);
                (*transfer_id, request_hash)
            }
            EventPayload::PendingSettled { pending_id, request_hash, .. } => {
                let Some(row) = rows.get(pending_id).or_else(|| loaded.pendings.get(pending_id)) else {
                    // Applied, so its pending transfer was known: in the round or here before it.
                    return Err(sqlx::Error::Protocol(format!("pending transfer {pending_id} vanished")));
                };
                let mut row = row.clone();
                row.settled_at = row.settled_at.or(Some(now));
                rows.insert(*pending_id, row);
                (*pending_id, request_hash)
            }
            _ => continue,
        };
        let row = rows.get_mut(&id).expect("inserted above");
        row.vectors = e.vectors.clone();
        // Each row as the whole round leaves it (a later event of the round may settle it).
        row.record = state.pendings[&id].clone();
        if let (Some(key), true) = (e.idempotency_key(), a.first_use_of_key) {
            keys.0.push(key.clone());
            keys.1.push(request_hash.clone().unwrap_or_default());
            keys.2.push(row.to_json(id));
        }
    }
    super::pending::write(&mut *tx, &rows, now).await?;
    keep_keys(tx, &keys, now).await
}

/// The read models follow in the same transaction: remote events never pass through this region's
/// own topic.
async fn write_views(
    tx: &mut Transaction<'_, Postgres>,
    applied: &[(&Held, &ledger_core::apply::Applied)],
    state: &ApplyState,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut changes = Vec::new();
    for (held, a) in applied {
        let e = &held.event;
        for p in &a.postings {
            let currency = state.accounts[&p.account].spec.currency.to_string();
            let change = match &e.payload {
                EventPayload::AccountOpened { .. } => ViewChange::Opened { currency },
                // A reservation or a void moves no balance; a post moves it as a transfer.
                EventPayload::TransferPending { .. } => continue,
                EventPayload::PendingSettled { .. } => match e.legs().first() {
                    Some(leg) => ViewChange::Posted {
                        currency,
                        amount: p.amount,
                        transfer_id: leg.transfer_id,
                        occurred_at: now,
                        entries: e.entries_for(&p.account),
                    },
                    None => continue,
                },
                EventPayload::TransferPosted { transfer_id: id, .. }
                | EventPayload::TransactionPosted { transaction_id: id, .. } => ViewChange::Posted {
                    currency,
                    amount: p.amount,
                    transfer_id: *id,
                    occurred_at: now,
                    entries: e.entries_for(&p.account),
                },
            };
            changes.push(RecordChange { event_id: e.event_id, account: p.account.to_string(), change });
        }
    }
    crate::views::apply_batch(tx, &changes).await?;
    Ok(())
}

/// One conflict record as stored and published: a pair or key conflict (its events listed), or an
/// episode of concurrency (its events counted; its members are labelled in `account_events`).
pub(crate) struct Record {
    pub conflict_id: uuid::Uuid,
    pub kind: ConflictKind,
    pub account: AccountId,
    pub events: Value,
    pub event_count: i64,
    pub first_event: Option<uuid::Uuid>,
    pub joint_vector: Option<Value>,
    pub joint_balance: Option<i64>,
    /// The event that revealed or last changed it.
    pub revealed_by: uuid::Uuid,
    /// Published on `ledger.conflicts`: new here, its kind changed, or it was resolved here and
    /// has changed since (it is open again).
    pub publish: bool,
}

impl Record {
    fn of_conflict(c: &Conflict, revealed_by: uuid::Uuid) -> Self {
        Record {
            conflict_id: c.conflict_id,
            kind: c.kind,
            account: c.account.clone(),
            events: json!(
                c.sides
                    .iter()
                    .map(|(id, region, vector)| json!({"event_id": id, "region": region, "vector": vector}))
                    .collect::<Vec<_>>()
            ),
            event_count: c.sides.len() as i64,
            first_event: None,
            joint_vector: None,
            joint_balance: None,
            revealed_by,
            publish: true,
        }
    }

    fn of_episode(e: &Episode, publish: bool) -> Self {
        Record {
            conflict_id: e.conflict_id,
            kind: e.kind,
            account: e.account.clone(),
            events: json!([]),
            event_count: e.events as i64,
            first_event: Some(e.first_event),
            joint_vector: Some(json!(e.joint)),
            joint_balance: Some(e.joint_balance),
            revealed_by: e.first_event,
            publish,
        }
    }
}

/// The conflict as published on `ledger.conflicts` (`conflict.detected`: new, changed kind, or
/// open again after it was resolved here).
pub fn conflict_json(r: &Record, detected_by: &RegionId) -> Value {
    json!({
        "conflict_id": r.conflict_id,
        "kind": r.kind.as_str(),
        "account": r.account,
        "events": r.events,
        "event_count": r.event_count,
        "joint_vector": r.joint_vector,
        "joint_balance": r.joint_balance,
        "status": "open",
        "detected_by": detected_by,
    })
}

/// The round's conflicts: episodes merged away are deleted and their members relabelled, events
/// whose episode changed are relabelled, and every new or changed record is written. Records new
/// here (or whose kind changed) get a `ledger.conflicts` outbox record. A record resolved here
/// whose event count or kind changes is open again (its resolution cleared) and is published
/// again as `conflict.detected`: finance resolved what it saw, not what arrived since.
async fn write_conflicts(
    tx: &mut PgConnection,
    region: &RegionId,
    applied: &[(&Held, &ledger_core::apply::Applied)],
    state: &ApplyState,
    loaded: &Loaded,
) -> Result<(), sqlx::Error> {
    // A key's conflict grows: of its records in this round, the later one is written.
    let mut latest: BTreeMap<uuid::Uuid, (&Conflict, uuid::Uuid)> = BTreeMap::new();
    for (held, a) in applied {
        for c in &a.conflicts {
            match latest.get(&c.conflict_id) {
                Some((known, _)) if !c.supersedes(known) => {}
                _ => {
                    latest.insert(c.conflict_id, (c, held.event.event_id));
                }
            }
        }
    }
    let mut records: BTreeMap<uuid::Uuid, Record> =
        latest.into_iter().map(|(id, (c, by))| (id, Record::of_conflict(c, by))).collect();
    for (id, e) in &state.episodes {
        match loaded.episodes.get(id) {
            Some(before) if before == e => {}
            Some(before) => {
                records.insert(*id, Record::of_episode(e, before.kind != e.kind));
            }
            None => {
                records.insert(*id, Record::of_episode(e, true));
            }
        }
    }
    let gone: Vec<(uuid::Uuid, uuid::Uuid)> = state
        .superseded
        .iter()
        .filter(|(old, _)| loaded.episodes.contains_key(*old))
        .map(|(old, new)| (*old, *new))
        .collect();
    if !gone.is_empty() {
        let (old, new): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = gone.iter().copied().unzip();
        sqlx::query(
            "UPDATE account_events a SET episode = u.new FROM UNNEST($1::uuid[], $2::uuid[]) AS u(old, new)
             WHERE a.episode = ANY($1) AND a.episode = u.old",
        )
        .bind(&old)
        .bind(&new)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM conflicts WHERE conflict_id = ANY($1)").bind(&old).execute(&mut *tx).await?;
    }
    // Events of the window (applied before this round) whose episode changed.
    let mut relabel = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (account, window) in &state.window {
        for h in window {
            if let Some(before) = loaded.labels.get(&(account.clone(), h.event_id))
                && *before != h.episode
            {
                relabel.0.push(account.as_str());
                relabel.1.push(h.origin.as_str());
                relabel.2.push(h.counter as i64);
                relabel.3.push(h.episode);
            }
        }
    }
    if !relabel.0.is_empty() {
        sqlx::query(
            "UPDATE account_events a SET episode = u.episode
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::uuid[]) AS u(account, origin, counter, episode)
             WHERE a.account_id = ANY($1) AND a.account_id = u.account AND a.origin_region = u.origin AND a.counter = u.counter",
        )
        .bind(&relabel.0)
        .bind(&relabel.1)
        .bind(&relabel.2)
        .bind(&relabel.3)
        .execute(&mut *tx)
        .await?;
    }
    if records.is_empty() && gone.is_empty() {
        return Ok(());
    }
    let mut records: Vec<Record> = records.into_values().collect();
    let reopened: Vec<uuid::Uuid> = sqlx::query_scalar(UPSERT_CONFLICTS_SQL)
        .bind(records.iter().map(|r| r.conflict_id).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.account.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.events.clone()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.event_count).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.first_event).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.joint_vector.clone()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.joint_balance).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
    for r in records.iter_mut().filter(|r| reopened.contains(&r.conflict_id)) {
        tracing::warn!(conflict_id = %r.conflict_id, kind = r.kind.as_str(), "a resolved conflict changed: open again");
        r.publish = true;
    }
    let mut o = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in records.iter().filter(|r| r.publish) {
        tracing::warn!(conflict_id = %r.conflict_id, kind = r.kind.as_str(), account = %r.account, "conflict detected");
        metrics::counter!(crate::telemetry::metric::CONFLICTS, "kind" => r.kind.as_str()).increment(1);
        o.0.push(r.revealed_by);
        o.1.push(r.conflict_id.to_string());
        o.2.push("conflict.detected");
        o.3.push(conflict_json(r, region));
    }
    for (old, new) in &gone {
        let by = state.episodes.get(new).map_or(*old, |e| e.first_event);
        o.0.push(by);
        o.1.push(old.to_string());
        o.2.push("conflict.superseded");
        o.3.push(json!({"conflict_id": old, "superseded_by": new, "detected_by": region}));
    }
    if o.0.is_empty() {
        return Ok(());
    }
    // The NOTIFY payload is the first new row's id: the publisher looks from there (see outbox.rs).
    sqlx::query(
        "WITH o AS (
             INSERT INTO outbox (event_id, topic, partition_key, event_type, payload)
             SELECT e, 'ledger.conflicts', k, t, p FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS u(e, k, t, p)
             RETURNING id
         )
         SELECT pg_notify($5, min(id)::text) FROM o",
    )
    .bind(&o.0)
    .bind(&o.1)
    .bind(&o.2)
    .bind(&o.3)
    .bind(OUTBOX_CHANNEL)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Writes the round's conflict records (`$1`–`$8`, one array per column) and returns the ids of
/// those that were resolved here and are open again: their event count or kind changed. The rows
/// are locked (in id order) before the upsert runs (the uncorrelated subquery is a one-time
/// filter), so the values compared are the ones replaced, even when a resolution commits
/// meanwhile.
const UPSERT_CONFLICTS_SQL: &str = "
WITH u AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int8[], $6::uuid[], $7::jsonb[], $8::int8[])
      AS u(conflict_id, kind, account_id, events, event_count, first_event, joint_vector, joint_balance)
), old AS (
    SELECT conflict_id, kind, event_count, status FROM conflicts WHERE conflict_id = ANY($1)
    ORDER BY conflict_id FOR UPDATE
), upserted AS (
    INSERT INTO conflicts (conflict_id, kind, account_id, events, event_count, first_event, joint_vector, joint_balance)
    SELECT * FROM u WHERE (SELECT count(*) FROM old) >= 0
    ON CONFLICT (conflict_id) DO UPDATE SET kind = EXCLUDED.kind, account_id = EXCLUDED.account_id,
        events = EXCLUDED.events, event_count = EXCLUDED.event_count, first_event = EXCLUDED.first_event,
        joint_vector = EXCLUDED.joint_vector, joint_balance = EXCLUDED.joint_balance, updated_at = now(),
        status = CASE WHEN conflicts.event_count <> EXCLUDED.event_count OR conflicts.kind <> EXCLUDED.kind
                      THEN 'open' ELSE conflicts.status END,
        resolved_at = CASE WHEN conflicts.event_count <> EXCLUDED.event_count OR conflicts.kind <> EXCLUDED.kind
                           THEN NULL ELSE conflicts.resolved_at END,
        resolution = CASE WHEN conflicts.event_count <> EXCLUDED.event_count OR conflicts.kind <> EXCLUDED.kind
                          THEN NULL ELSE conflicts.resolution END
    RETURNING 1
)
SELECT o.conflict_id FROM old o JOIN u USING (conflict_id)
WHERE o.status = 'resolved' AND (o.event_count <> u.event_count OR o.kind <> u.kind)
  AND (SELECT count(*) FROM upserted) >= 0";

/// Held events: those decided (applied, known, dead) leave; those still waiting are stored with the
/// event they wait for.
async fn write_held(tx: &mut PgConnection, events: &[Held], fates: &[Fate]) -> Result<(), sqlx::Error> {
    let mut done = Vec::new();
    let mut wait = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut dead = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (held, fate) in events.iter().zip(fates) {
        let e = &held.event;
        match fate {
            // Still waiting for the same event: nothing to write.
            Fate::Wait(key) if held.stored_wait.as_ref() == Some(key) => {}
            Fate::Wait(key) => {
                wait.6.push(e.vectors.get(&key.account).map_or(0, |v| v.get(&key.region) as i64));
                wait.0.push(e.event_id);
                wait.1.push(e.origin_region.as_str());
                wait.2.push(held.raw.clone());
                wait.3.push(key.account.as_str());
                wait.4.push(key.region.as_str());
                wait.5.push(key.counter as i64);
            }
            Fate::Dead(reason) => {
                dead.0.push(e.event_id);
                dead.1.push(e.origin_region.as_str());
                dead.2.push(serde_json::to_vec(&held.raw).unwrap_or_default());
                dead.3.push(reason.as_str());
                done.push(e.event_id);
            }
            Fate::Applied(_) | Fate::AlreadyApplied => done.push(e.event_id),
        }
    }
    if !done.is_empty() {
        sqlx::query("DELETE FROM pending_events WHERE event_id = ANY($1)").bind(&done).execute(&mut *tx).await?;
    }
    if !wait.0.is_empty() {
        sqlx::query(
            "INSERT INTO pending_events (event_id, origin_region, payload, wait_account, wait_region, wait_counter, wait_needs)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::int8[], $7::int8[])
             ON CONFLICT (event_id) DO UPDATE SET wait_account = EXCLUDED.wait_account,
                 wait_region = EXCLUDED.wait_region, wait_counter = EXCLUDED.wait_counter, wait_needs = EXCLUDED.wait_needs",
        )
        .bind(&wait.0)
        .bind(&wait.1)
        .bind(&wait.2)
        .bind(&wait.3)
        .bind(&wait.4)
        .bind(&wait.5)
        .bind(&wait.6)
        .execute(&mut *tx)
        .await?;
    }
    if !dead.0.is_empty() {
        for reason in &dead.3 {
            tracing::error!(%reason, "a replicated event cannot be applied: dead letter");
        }
        metrics::counter!(crate::telemetry::metric::DEAD_LETTERS).increment(dead.0.len() as u64);
        sqlx::query(
            "INSERT INTO dead_letters (event_id, origin_region, source, payload, reason)
             SELECT e, o, 'apply', p, r FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::text[]) AS u(e, o, p, r)
             ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING",
        )
        .bind(&dead.0)
        .bind(&dead.1)
        .bind(&dead.2)
        .bind(&dead.3)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
