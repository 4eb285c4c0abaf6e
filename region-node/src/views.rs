//! The read models (balance view `rm_balances`, history view `rm_entries`) and how events reach
//! them. Local events arrive through the Kafka consumer, events of other regions through remote
//! apply, both in batches through [`apply_batch`], so both leave the views identical.

use sqlx::{Postgres, Transaction};
use std::collections::{BTreeMap, HashMap};

/// What one Kafka record does to the views, once decoded.
#[derive(Debug, Clone)]
pub(crate) enum ViewChange {
    /// An account was opened: its balance row appears.
    Opened {
        /// Its currency.
        currency: String,
    },
    /// A posting to the record's account.
    Posted {
        /// Its currency.
        currency: String,
        /// Signed amount.
        amount: i64,
        /// The transfer.
        transfer_id: uuid::Uuid,
        /// When it happened.
        occurred_at: chrono::DateTime<chrono::Utc>,
        /// How many authoritative entries it stands for (a transaction's legs on the account are
        /// one view row, netted), so `entries_applied` keeps counting like `accounts.entry_seq`.
        entries: i64,
    },
}

/// One decoded record: the change it makes to one account's views.
#[derive(Debug, Clone)]
pub(crate) struct RecordChange {
    /// The event.
    pub event_id: uuid::Uuid,
    /// The account (the record's key).
    pub account: String,
    /// The change.
    pub change: ViewChange,
}

/// Applies a batch of changes, in order, in the caller's transaction with a constant number of
/// statements. Returns the changes that were new, in order; the rest had been applied before
/// (the `rm_processed` primary key decides, never a guess).
///
/// Balance rows are locked in account order before they are read, so the balance after each entry
/// is exact even if remote apply posts to the same account at the same time.
pub(crate) async fn apply_batch<'c>(
    tx: &mut Transaction<'_, Postgres>,
    changes: &'c [RecordChange],
) -> Result<Vec<&'c RecordChange>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let fresh: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "INSERT INTO rm_processed (event_id, account_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[]) ON CONFLICT DO NOTHING
         RETURNING event_id, account_id",
    )
    .bind(changes.iter().map(|c| c.event_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.account.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let fresh: std::collections::HashSet<(uuid::Uuid, String)> = fresh.into_iter().collect();
    // Within one batch a pair can appear twice (published twice, read together): the first wins.
    let mut taken = std::collections::HashSet::new();
    let new: Vec<&RecordChange> = changes
        .iter()
        .filter(|c| {
            let key = (c.event_id, c.account.clone());
            fresh.contains(&key) && taken.insert(key)
        })
        .collect();
    if new.is_empty() {
        return Ok(new);
    }

    // Every touched account gets its balance row first, so that the lock below covers all of them.
    let mut currency_of: BTreeMap<&str, &str> = BTreeMap::new();
    for c in &new {
        let (ViewChange::Opened { currency } | ViewChange::Posted { currency, .. }) = &c.change;
        currency_of.entry(c.account.as_str()).or_insert(currency.as_str());
    }
    sqlx::query(
        "INSERT INTO rm_balances (account_id, currency) SELECT * FROM UNNEST($1::text[], $2::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(currency_of.keys().copied().collect::<Vec<_>>())
    .bind(currency_of.values().copied().collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let posted: Vec<&str> = new
        .iter()
        .filter(|c| matches!(c.change, ViewChange::Posted { .. }))
        .map(|c| c.account.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if posted.is_empty() {
        return Ok(new);
    }
    let current: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT account_id, balance, entries_applied FROM rm_balances WHERE account_id = ANY($1)
         ORDER BY account_id FOR UPDATE",
    )
    .bind(&posted)
    .fetch_all(&mut **tx)
    .await?;
    let mut balances: HashMap<String, (i64, i64)> = current.into_iter().map(|(a, b, n)| (a, (b, n))).collect();

    let mut entries = EntryColumns::default();
    for c in &new {
        let ViewChange::Posted { amount, transfer_id, occurred_at, entries: count, .. } = &c.change else { continue };
        let (balance, applied) = balances.entry(c.account.clone()).or_insert((0, 0));
        // The authoritative ledger never lets a balance leave i64; a view that would is corrupt.
        *balance = balance
            .checked_add(*amount)
            .ok_or_else(|| sqlx::Error::Protocol(format!("view balance of {} overflows", c.account)))?;
        *applied += count;
        entries.account.push(c.account.as_str());
        entries.event.push(c.event_id);
        entries.transfer.push(*transfer_id);
        entries.amount.push(*amount);
        entries.balance_after.push(*balance);
        entries.occurred_at.push(*occurred_at);
    }
    let touched: Vec<(&String, &(i64, i64))> = balances.iter().collect();
    sqlx::query(
        // `= ANY($1)` lets the planner reach the rows through the primary key: joined to the
        // UNNEST alone it hashed the whole table, a scan of every account per batch.
        "UPDATE rm_balances b SET balance = u.balance, entries_applied = u.applied, updated_at = now(),
                                snapshot_dirty = true
         FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS u(id, balance, applied)
         WHERE b.account_id = ANY($1) AND b.account_id = u.id",
    )
    .bind(touched.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>())
    .bind(touched.iter().map(|(_, (b, _))| *b).collect::<Vec<_>>())
    .bind(touched.iter().map(|(_, (_, n))| *n).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO rm_entries (account_id, event_id, transfer_id, amount, balance_after, occurred_at)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::int8[], $5::int8[], $6::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&entries.account)
    .bind(&entries.event)
    .bind(&entries.transfer)
    .bind(&entries.amount)
    .bind(&entries.balance_after)
    .bind(&entries.occurred_at)
    .execute(&mut **tx)
    .await?;
    Ok(new)
}

#[derive(Default)]
struct EntryColumns<'a> {
    account: Vec<&'a str>,
    event: Vec<uuid::Uuid>,
    transfer: Vec<uuid::Uuid>,
    amount: Vec<i64>,
    balance_after: Vec<i64>,
    occurred_at: Vec<chrono::DateTime<chrono::Utc>>,
}
