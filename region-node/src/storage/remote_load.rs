//! Load: one read of everything a round of remote events needs to be decided, its accounts locked
//! in id order (as the write path locks them, so the two never deadlock).

use super::{ACCOUNT_COLUMNS, AccountRow, StorageError};
use crate::remote::Held;
use ledger_core::apply::{ApplyState, Episode, KeyUses};
use ledger_core::replication::{AccountEvent, ConflictKind, key_conflict_id};
use ledger_core::{AccountId, EventPayload, LedgerEvent, RegionId, VersionVector};
use serde_json::Value;
use sqlx::{PgConnection, Row};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the round read: the state to decide on, and the accounts as they were.
pub(crate) struct Loaded {
    pub state: ApplyState,
    /// The accounts that existed (and are locked), as read.
    pub before: HashMap<AccountId, AccountRow>,
    /// The episodes as read.
    pub episodes: BTreeMap<uuid::Uuid, Episode>,
    /// The episode of each event of the window on each account, as read.
    pub labels: HashMap<(AccountId, uuid::Uuid), Option<uuid::Uuid>>,
    /// The pending transfers the events reserve or settle that exist here, as read.
    pub pendings: BTreeMap<uuid::Uuid, super::pending::PendingRow>,
}

/// One event a conflict names, as stored in `conflicts.events`.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Side {
    pub event_id: uuid::Uuid,
    pub region: RegionId,
    pub vector: VersionVector,
}

const ACCOUNT_EVENT_COLUMNS: &str = "ae.account_id, ae.origin_region, ae.counter, ae.event_id, ae.vector, ae.posting, \
     ae.opened, ae.idempotency_key, ae.episode";

/// Held events waiting on the round's accounts, the one needing the smallest count first: a chain of events
/// on one account (held behind one missing event) is then decided in one round.
pub(crate) async fn waiting_on(
    conn: &mut PgConnection,
    accounts: &[String],
    except: &[uuid::Uuid],
    limit: usize,
) -> Result<Vec<Held>, StorageError> {
    let sql = format!(
        "SELECT {} FROM pending_events p WHERE p.wait_account = ANY($1) AND p.event_id <> ALL($2)
         ORDER BY p.wait_needs, p.seq LIMIT $3",
        crate::remote::HELD_COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(accounts)
        .bind(except)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?;
    Ok(Held::from_rows(&rows)?)
}

/// Reads and locks what deciding `events` needs.
pub(crate) async fn load(conn: &mut PgConnection, events: &[Held]) -> Result<Loaded, StorageError> {
    let mut ids: Vec<&str> = events.iter().flat_map(|h| h.event.accounts()).map(AccountId::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE");
    let mut before = HashMap::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&ids).fetch_all(&mut *conn).await? {
        let account = AccountRow::from_row(&row)?;
        before.insert(account.state.spec.id.clone(), account);
    }
    let event_ids: Vec<uuid::Uuid> = events.iter().map(|h| h.event.event_id).collect();
    let applied: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM ledger_events WHERE event_id = ANY($1)")
        .bind(&event_ids)
        .fetch_all(&mut *conn)
        .await?;

    // The window: per account and region, the applied events above the smallest counter any of
    // the round's events has seen. Every event a round's event did not see is there; nothing
    // older is read (a range of the primary key per account and region).
    let mut floor: BTreeMap<&AccountId, BTreeMap<RegionId, u64>> = BTreeMap::new();
    for held in events {
        for (account, vector) in &held.event.vectors {
            let Some(existing) = before.get(account) else { continue };
            let entry = floor.entry(account).or_insert_with(|| {
                existing.state.version.to_map().into_keys().map(|region| (region, u64::MAX)).collect()
            });
            for (region, counter) in entry.iter_mut() {
                *counter = (*counter).min(vector.get(region));
            }
        }
    }
    let (mut fa, mut fr, mut fc) = (Vec::new(), Vec::new(), Vec::new());
    for (account, regions) in &floor {
        for (region, counter) in regions {
            fa.push(account.as_str());
            fr.push(region.as_str());
            fc.push(*counter as i64);
        }
    }
    let sql = format!(
        "SELECT {ACCOUNT_EVENT_COLUMNS} FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(a, r, c)
         JOIN account_events ae ON ae.account_id = u.a AND ae.origin_region = u.r AND ae.counter > u.c
         UNION
         SELECT {ACCOUNT_EVENT_COLUMNS} FROM account_events ae WHERE ae.account_id = ANY($4) AND ae.opened IS NOT NULL"
    );
    // Openings of an account being opened again: the winning definition is chosen among all of them.
    let reopened: Vec<&str> = events
        .iter()
        .filter_map(|h| match &h.event.payload {
            EventPayload::AccountOpened { account } if before.contains_key(&account.id) => Some(account.id.as_str()),
            _ => None,
        })
        .collect();
    let mut window: BTreeMap<AccountId, Vec<AccountEvent>> = BTreeMap::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&fa)
        .bind(&fr)
        .bind(&fc)
        .bind(&reopened)
        .fetch_all(&mut *conn)
        .await?
    {
        let account = decode_id(row.try_get("account_id")?)?;
        window.entry(account).or_default().push(account_event(&row)?);
    }

    let keys: BTreeSet<&str> = events.iter().filter_map(|h| h.event.idempotency_key().map(String::as_str)).collect();
    let mut first_uses = BTreeMap::new();
    if !keys.is_empty() {
        // The first posting applied here with each key: the record names it (a transfer, or a
        // transaction whose first leg is a transfer row), its event says the rest, as
        // `ApplyState::apply` would have recorded it.
        let rows = sqlx::query(
            "SELECT k.key, e.payload FROM idempotency_keys k
             JOIN LATERAL (SELECT t.event_id FROM transfers t WHERE t.id = (k.response_body ->> 'id')::uuid
                           UNION ALL
                           SELECT t.event_id FROM transfers t
                           WHERE t.transaction_id = (k.response_body ->> 'id')::uuid AND t.leg = 0
                           LIMIT 1) t ON true
             JOIN ledger_events e ON e.event_id = t.event_id
             WHERE k.key = ANY($1)",
        )
        .bind(keys.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let key: String = row.try_get("key")?;
            let event: LedgerEvent = serde_json::from_value(row.try_get("payload")?).map_err(decode)?;
            let accounts = event.accounts();
            let (Some(first), Some(smallest)) = (accounts.first(), accounts.iter().min()) else {
                return Err(decode(format!("the posting of key {key} touches no account")).into());
            };
            let vector = event.vectors.get(*first).cloned().ok_or_else(|| decode("a posting without its vector"))?;
            let uses = KeyUses {
                events: vec![(event.event_id, event.origin_region.clone(), vector)],
                account: (*smallest).clone(),
            };
            first_uses.insert(key, uses);
        }
        // A key already executed in several regions: its conflict lists every execution.
        let ids: Vec<uuid::Uuid> = first_uses.keys().map(|k| key_conflict_id(k)).collect();
        let rows = sqlx::query("SELECT conflict_id, account_id, events FROM conflicts WHERE conflict_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        let by_id: HashMap<uuid::Uuid, String> = first_uses.keys().map(|k| (key_conflict_id(k), k.clone())).collect();
        for row in rows {
            let sides: Vec<Side> = serde_json::from_value(row.try_get("events")?).map_err(decode)?;
            let key = by_id[&row.try_get::<uuid::Uuid, _>("conflict_id")?].clone();
            let uses = first_uses.get_mut(&key).expect("listed above");
            uses.events = sides.into_iter().map(|s| (s.event_id, s.region, s.vector)).collect();
            uses.account = decode_id(row.try_get("account_id")?)?;
        }
    }

    // The episodes the window's events belong to.
    let episode_ids: BTreeSet<uuid::Uuid> = window.values().flatten().filter_map(|h| h.episode).collect();
    let mut episodes = BTreeMap::new();
    if !episode_ids.is_empty() {
        let rows = sqlx::query(
            "SELECT conflict_id, account_id, kind, first_event, joint_vector, event_count, joint_balance
             FROM conflicts WHERE conflict_id = ANY($1)",
        )
        .bind(episode_ids.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let episode = Episode {
                conflict_id: row.try_get("conflict_id")?,
                account: decode_id(row.try_get("account_id")?)?,
                first_event: row
                    .try_get::<Option<uuid::Uuid>, _>("first_event")?
                    .ok_or_else(|| decode("an episode without its first event"))?,
                joint: serde_json::from_value(row.try_get::<Option<Value>, _>("joint_vector")?.unwrap_or_default())
                    .map_err(decode)?,
                events: row.try_get::<i64, _>("event_count")? as u64,
                joint_balance: row.try_get::<Option<i64>, _>("joint_balance")?.unwrap_or(0),
                kind: if kind == "overdraft" { ConflictKind::Overdraft } else { ConflictKind::ConcurrentBenign },
            };
            episodes.insert(episode.conflict_id, episode);
        }
    }
    let labels = window
        .iter()
        .flat_map(|(account, events)| events.iter().map(move |h| ((account.clone(), h.event_id), h.episode)))
        .collect();

    // Pending transfers the round reserves (one already here is reserved twice) or settles.
    let pending_ids: Vec<uuid::Uuid> = events
        .iter()
        .filter_map(|h| match &h.event.payload {
            EventPayload::TransferPending { transfer_id: id, .. }
            | EventPayload::PendingSettled { pending_id: id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let pendings = super::pending::load(&mut *conn, &pending_ids).await?;

    let state = ApplyState {
        accounts: before.iter().map(|(id, row)| (id.clone(), row.state.clone())).collect(),
        window,
        keys: first_uses,
        applied: applied.into_iter().collect(),
        episodes: episodes.clone(),
        superseded: BTreeMap::new(),
        pendings: pendings.iter().map(|(id, row)| (*id, row.record.clone())).collect(),
    };
    Ok(Loaded { state, before, episodes, labels, pendings })
}

fn decode(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

fn decode_id(id: String) -> Result<AccountId, sqlx::Error> {
    AccountId::new(id).map_err(decode)
}

fn account_event(row: &sqlx::postgres::PgRow) -> Result<AccountEvent, sqlx::Error> {
    let opened: Option<Value> = row.try_get("opened")?;
    Ok(AccountEvent {
        event_id: row.try_get("event_id")?,
        origin: RegionId::new(row.try_get::<String, _>("origin_region")?).map_err(decode)?,
        counter: row.try_get::<i64, _>("counter")? as u64,
        vector: serde_json::from_value(row.try_get("vector")?).map_err(decode)?,
        posting: row.try_get("posting")?,
        opened: opened.map(serde_json::from_value).transpose().map_err(decode)?,
        idempotency_key: row.try_get("idempotency_key")?,
        episode: row.try_get("episode")?,
    })
}
