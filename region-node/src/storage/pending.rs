//! Pending transfers as stored (`pending_transfers`, migration 0016): read for deciding (by the
//! committer under its account locks, by remote apply for the settlements of a round), written
//! with their settlements, and shown.

use super::rfc3339;
use chrono::{DateTime, Utc};
use ledger_core::apply::{PendingRecord, SettlementRecord};
use ledger_core::{AccountId, Currency, RegionId, VersionVector};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgConnection;
use std::collections::BTreeMap;

/// One settlement as `pending_transfers.settlements` holds it.
#[derive(Serialize, Deserialize)]
struct SettlementColumn {
    event_id: uuid::Uuid,
    region: RegionId,
    vector: VersionVector,
    posted: Option<i64>,
    #[serde(default)]
    transfer_id: Option<uuid::Uuid>,
    expired: bool,
}

/// A pending transfer as stored: the decision state and what is only shown.
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// What deciding needs.
    pub record: PendingRecord,
    /// Client data.
    pub metadata: serde_json::Map<String, Value>,
    /// The key as stored (scoped).
    pub idempotency_key: Option<String>,
    /// Both accounts' vectors after the last event on it.
    pub vectors: BTreeMap<AccountId, VersionVector>,
    /// When it was reserved here.
    pub created_at: DateTime<Utc>,
    /// When it was first settled here.
    pub settled_at: Option<DateTime<Utc>>,
}

impl PendingRow {
    /// The API representation (`GET /v1/transfers/{id}` of a pending transfer, and the answers of
    /// its creation, post and void).
    pub fn to_json(&self, id: uuid::Uuid) -> Value {
        let r = &self.record;
        let status = r.status();
        json!({
            "id": id,
            "from": r.from,
            "to": r.to,
            "amount": r.reserved,
            "currency": r.currency,
            "metadata": self.metadata,
            "origin_region": r.origin,
            "idempotency_key": self.idempotency_key.as_deref().map(crate::idempotency::client_part),
            "created_at": rfc3339(&self.created_at),
            "pending": true,
            "status": status.as_str(),
            "posted_amount": match status { ledger_core::apply::PendingStatus::Posted(n) => n, _ => 0 },
            "expires_at": r.expires_at,
            "settled_at": self.settled_at.as_ref().map(rfc3339),
            // Each post is a transfer of its own (two only after a race between regions).
            "posted_transfer_ids": r.settlements.iter().filter_map(|s| s.transfer_id).collect::<Vec<_>>(),
            "version_vectors": self.vectors,
        })
    }
}

/// The pending transfers with these ids that exist here.
pub(crate) async fn load(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
) -> Result<BTreeMap<uuid::Uuid, PendingRow>, sqlx::Error> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT id, event_id, from_account, to_account, amount, currency, metadata, idempotency_key, origin_region,
                expires_at, settlements, from_vector, to_vector, created_at, settled_at
         FROM pending_transfers WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let id: uuid::Uuid = row.try_get("id")?;
        out.insert(id, from_row(&row)?);
    }
    Ok(out)
}

fn decode(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

fn from_row(row: &sqlx::postgres::PgRow) -> Result<PendingRow, sqlx::Error> {
    let from = AccountId::new(row.try_get::<String, _>("from_account")?).map_err(decode)?;
    let to = AccountId::new(row.try_get::<String, _>("to_account")?).map_err(decode)?;
    let settlements: Vec<SettlementColumn> = serde_json::from_value(row.try_get("settlements")?).map_err(decode)?;
    let expires_at: Option<DateTime<Utc>> = row.try_get("expires_at")?;
    let from_vector: VersionVector = serde_json::from_value(row.try_get("from_vector")?).map_err(decode)?;
    let to_vector: VersionVector = serde_json::from_value(row.try_get("to_vector")?).map_err(decode)?;
    Ok(PendingRow {
        record: PendingRecord {
            event_id: row.try_get("event_id")?,
            origin: RegionId::new(row.try_get::<String, _>("origin_region")?).map_err(decode)?,
            currency: Currency::new(&row.try_get::<String, _>("currency")?).map_err(decode)?,
            reserved: row.try_get("amount")?,
            expires_at: expires_at.as_ref().map(rfc3339),
            settlements: settlements
                .into_iter()
                .map(|s| SettlementRecord {
                    event_id: s.event_id,
                    origin: s.region,
                    vector: s.vector,
                    posted: s.posted,
                    transfer_id: s.transfer_id,
                    expired: s.expired,
                })
                .collect(),
            from: from.clone(),
            to: to.clone(),
        },
        metadata: serde_json::from_value(row.try_get("metadata")?).map_err(decode)?,
        idempotency_key: row.try_get("idempotency_key")?,
        vectors: BTreeMap::from([(from, from_vector), (to, to_vector)]),
        created_at: row.try_get("created_at")?,
        settled_at: row.try_get("settled_at")?,
    })
}

/// One pending transfer for `GET /v1/transfers/{id}`.
pub(crate) async fn get(pool: &sqlx::PgPool, id: uuid::Uuid) -> Result<Option<PendingRow>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    Ok(load(&mut conn, &[id]).await?.remove(&id))
}

/// Writes pending transfers as they now stand: new ones inserted, settled ones updated (status,
/// settlements, the vectors after the latest event). Rows are written in id order.
pub(crate) async fn write(
    conn: &mut PgConnection,
    rows: &BTreeMap<uuid::Uuid, PendingRow>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut c = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut d = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, row) in rows {
        let r = &row.record;
        let status = r.status();
        c.0.push(*id);
        c.1.push(r.event_id);
        c.2.push(r.from.as_str());
        c.3.push(r.to.as_str());
        c.4.push(r.reserved);
        c.5.push(r.currency.as_str());
        c.6.push(Value::Object(row.metadata.clone()));
        c.7.push(row.idempotency_key.as_deref());
        d.0.push(r.origin.as_str());
        d.1.push(r.expires_at.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.to_utc()));
        d.2.push(status.as_str());
        d.3.push(match status {
            ledger_core::apply::PendingStatus::Posted(n) => n,
            _ => 0,
        });
        d.4.push(json!(
            r.settlements
                .iter()
                .map(|s| SettlementColumn {
                    event_id: s.event_id,
                    region: s.origin.clone(),
                    vector: s.vector.clone(),
                    posted: s.posted,
                    transfer_id: s.transfer_id,
                    expired: s.expired,
                })
                .collect::<Vec<_>>()
        ));
        d.5.push(json!(row.vectors.get(&r.from).cloned().unwrap_or_default()));
        d.6.push(json!(row.vectors.get(&r.to).cloned().unwrap_or_default()));
        d.7.push(row.created_at);
    }
    sqlx::query(
        "INSERT INTO pending_transfers (id, event_id, from_account, to_account, amount, currency, metadata, idempotency_key,
                                        origin_region, expires_at, status, posted_amount, settlements, from_vector,
                                        to_vector, created_at, settled_at)
         SELECT *, CASE WHEN u.status = 'pending' THEN NULL ELSE $17::timestamptz END
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::jsonb[], $8::text[],
                     $9::text[], $10::timestamptz[], $11::text[], $12::int8[], $13::jsonb[], $14::jsonb[], $15::jsonb[],
                     $16::timestamptz[])
           AS u(id, event_id, from_account, to_account, amount, currency, metadata, idempotency_key, origin_region,
                expires_at, status, posted_amount, settlements, from_vector, to_vector, created_at)
         ORDER BY id
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, posted_amount = EXCLUDED.posted_amount,
             settlements = EXCLUDED.settlements, from_vector = EXCLUDED.from_vector, to_vector = EXCLUDED.to_vector,
             settled_at = COALESCE(pending_transfers.settled_at, EXCLUDED.settled_at)",
    )
    .bind(&c.0)
    .bind(&c.1)
    .bind(&c.2)
    .bind(&c.3)
    .bind(&c.4)
    .bind(&c.5)
    .bind(&c.6)
    .bind(&c.7)
    .bind(&d.0)
    .bind(&d.1)
    .bind(&d.2)
    .bind(&d.3)
    .bind(&d.4)
    .bind(&d.5)
    .bind(&d.6)
    .bind(&d.7)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The pending transfers this region created whose deadline has passed, oldest first: the expiry
/// voids them.
pub(crate) async fn due(
    pool: &sqlx::PgPool,
    region: &RegionId,
    limit: i64,
) -> Result<Vec<(uuid::Uuid, AccountId, AccountId)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, from_account, to_account FROM pending_transfers
         WHERE origin_region = $1 AND status = 'pending' AND expires_at <= now() ORDER BY expires_at LIMIT $2",
    )
    .bind(region.as_str())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                AccountId::new(r.try_get::<String, _>("from_account")?).map_err(decode)?,
                AccountId::new(r.try_get::<String, _>("to_account")?).map_err(decode)?,
            ))
        })
        .collect()
}
