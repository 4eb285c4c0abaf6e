//! Resolving a conflict in this region (`POST /v1/conflicts/{id}/resolve`), in one transaction:
//! the conflict marked resolved with its resolution, for an account-definition conflict the
//! account's definition set to the one that stands (money kept apart by currency, never converted)
//! and the account unfrozen, and a `conflict.resolved` record in the outbox.
//!
//! Locks: the account first (for an account-definition conflict), then the conflict row, as remote
//! apply locks a round's accounts before it writes their conflicts; so the two never deadlock.
//!
//! The committer may remember the account as it was (frozen, another currency): its planned
//! statement compares the definition and the frozen flag with the row (`storage/batch.rs`), so a
//! batch planned against the old state commits nothing and is run again reading the account.

use super::{ACCOUNT_COLUMNS, AccountRow, OUTBOX_CHANNEL, StorageError};
use chrono::{DateTime, Utc};
use ledger_core::{Currency, EventPayload, LedgerEvent, MoneyError, RegionId};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Row};

/// Attempts when PostgreSQL reports a transient conflict (a deadlock, or a record relabelled by
/// remote apply between the two reads).
const ATTEMPTS_MAX: usize = 3;

/// An account's definition, as finance chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    /// Its currency.
    pub currency: Currency,
    /// Whether it may go below zero.
    pub allow_negative: bool,
}

/// What the reconcile service sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The reconcile case, 1 to 128 characters.
    pub case: String,
    /// The definition that stands: for an account-definition conflict, and only for it.
    pub definition: Option<Definition>,
}

impl Resolution {
    /// As stored in `conflicts.resolution` and answered: the request in its canonical form.
    pub fn to_json(&self) -> Value {
        match &self.definition {
            Some(d) => json!({
                "case": self.case,
                "definition": {"currency": d.currency, "allow_negative": d.allow_negative},
            }),
            None => json!({ "case": self.case }),
        }
    }
}

/// A conflict as resolved here.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The conflict.
    pub conflict_id: uuid::Uuid,
    /// Its kind.
    pub kind: String,
    /// Its account.
    pub account: String,
    /// When it was resolved here.
    pub resolved_at: DateTime<Utc>,
    /// The resolution as stored.
    pub resolution: Value,
}

impl Resolved {
    /// The answer of the route.
    pub fn to_json(&self) -> Value {
        json!({
            "conflict_id": self.conflict_id,
            "kind": self.kind,
            "account": self.account,
            "status": "resolved",
            "resolved_at": super::rfc3339(&self.resolved_at),
            "resolution": self.resolution,
        })
    }
}

/// Why a conflict was not resolved. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// This region has no such conflict (it may not have detected it yet).
    #[error("no conflict {0} in this region")]
    NotFound(uuid::Uuid),
    /// A definition was given for a conflict of another kind.
    #[error("a definition resolves only an account-definition conflict; this one is {0}")]
    DefinitionNotAllowed(String),
    /// An account-definition conflict was sent no definition.
    #[error("an account-definition conflict is resolved with the definition that stands")]
    DefinitionRequired,
    /// Already resolved with another resolution.
    #[error("the conflict is already resolved with another resolution: {0}")]
    AlreadyResolved(Value),
    /// The definition is not one of the conflict's openings.
    #[error("the definition is none of the conflict's openings: {0}")]
    DefinitionNotOffered(Value),
    /// Moving money apart would take an amount kept apart outside the bounds.
    #[error("moving the balance apart would leave the bounds: {0}")]
    OutOfRange(MoneyError),
    /// The conflict kept changing under the attempts (remote apply relabelling it): retry.
    #[error("the conflict changed while it was being resolved")]
    Busy,
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for ResolveError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e.into())
    }
}

/// Why one attempt did not resolve.
enum Attempt {
    /// Refused or failed.
    Failed(ResolveError),
    /// The conflict changed between the unlocked and the locked read (not the account locked
    /// first): run again.
    Moved,
}

impl From<ResolveError> for Attempt {
    fn from(e: ResolveError) -> Self {
        Self::Failed(e)
    }
}

impl From<StorageError> for Attempt {
    fn from(e: StorageError) -> Self {
        Self::Failed(e.into())
    }
}

impl From<sqlx::Error> for Attempt {
    fn from(e: sqlx::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// Resolves conflict `id` here with `resolution`: idempotent (the same resolution again answers
/// as the first time), run again on a transient conflict.
pub async fn resolve(
    pool: &PgPool,
    region: &RegionId,
    id: uuid::Uuid,
    resolution: &Resolution,
) -> Result<Resolved, ResolveError> {
    let mut attempt = 1;
    loop {
        let mut tx = pool.begin().await?;
        let outcome = match once(&mut tx, region, id, resolution).await {
            Ok(resolved) => tx.commit().await.map(|()| resolved).map_err(Attempt::from),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(resolved) => return Ok(resolved),
            Err(Attempt::Moved) if attempt < ATTEMPTS_MAX => {}
            Err(Attempt::Failed(ResolveError::Storage(e))) if e.is_conflict() && attempt < ATTEMPTS_MAX => {}
            Err(Attempt::Moved) => return Err(ResolveError::Busy),
            Err(Attempt::Failed(e)) => return Err(e),
        }
        attempt += 1;
    }
}

/// The account-definition kind, as stored.
const ACCOUNT_DEFINITION: &str = "account-definition";

/// One attempt, in `tx` (rolled back by the caller on error, by dropping it).
async fn once(
    tx: &mut PgConnection,
    region: &RegionId,
    id: uuid::Uuid,
    resolution: &Resolution,
) -> Result<Resolved, Attempt> {
    // Unlocked: which account to lock before the conflict row.
    let peek: Option<(String, String)> =
        sqlx::query_as("SELECT kind, account_id FROM conflicts WHERE conflict_id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((kind, account)) = peek else { return Err(ResolveError::NotFound(id).into()) };
    let defines = kind == ACCOUNT_DEFINITION;
    match (defines, &resolution.definition) {
        (false, Some(_)) => return Err(ResolveError::DefinitionNotAllowed(kind).into()),
        (true, None) => return Err(ResolveError::DefinitionRequired.into()),
        _ => {}
    }
    let locked_account = if defines {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1 FOR UPDATE");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&account).fetch_optional(&mut *tx).await?;
        row.as_ref().map(AccountRow::from_row).transpose()?
    } else {
        None
    };
    let row = sqlx::query(
        "SELECT kind, account_id, status, resolved_at, resolution, events,
                COALESCE(first_event, (events -> 0 ->> 'event_id')::uuid) AS first_event
         FROM conflicts WHERE conflict_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Err(ResolveError::NotFound(id).into()) };
    if row.try_get::<String, _>("kind")? != kind || row.try_get::<String, _>("account_id")? != account {
        return Err(Attempt::Moved);
    }
    let asked = resolution.to_json();
    if row.try_get::<String, _>("status")? == "resolved" {
        let stored: Option<Value> = row.try_get("resolution")?;
        let resolved_at: Option<DateTime<Utc>> = row.try_get("resolved_at")?;
        return match (stored, resolved_at) {
            (Some(stored), Some(resolved_at)) if stored == asked => {
                Ok(Resolved { conflict_id: id, kind, account, resolved_at, resolution: stored })
            }
            (stored, _) => Err(ResolveError::AlreadyResolved(stored.unwrap_or(Value::Null)).into()),
        };
    }
    if let Some(definition) = &resolution.definition {
        let events: Value = row.try_get("events")?;
        redefine(tx, id, &account, locked_account, events, definition).await?;
    }
    let resolved_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE conflicts SET status = 'resolved', resolved_at = now(), resolution = $2, updated_at = now()
         WHERE conflict_id = $1 RETURNING resolved_at",
    )
    .bind(id)
    .bind(&asked)
    .fetch_one(&mut *tx)
    .await?;
    // One record on `ledger.conflicts`, keyed like the conflict's `conflict.detected` records (so
    // it follows them on their partition), carrying an event the conflict names, as they do.
    let first_event: Option<uuid::Uuid> = row.try_get("first_event")?;
    let payload = json!({
        "conflict_id": id,
        "kind": kind,
        "account": account,
        "status": "resolved",
        "resolution": asked,
        "detected_by": region,
    });
    sqlx::query(
        "WITH o AS (
             INSERT INTO outbox (event_id, topic, partition_key, event_type, payload)
             VALUES ($1, 'ledger.conflicts', $2, 'conflict.resolved', $3)
             RETURNING id
         )
         SELECT pg_notify($4, min(id)::text) FROM o",
    )
    .bind(first_event.unwrap_or(id))
    .bind(id.to_string())
    .bind(&payload)
    .bind(OUTBOX_CHANNEL)
    .execute(&mut *tx)
    .await?;
    tracing::info!(conflict_id = %id, %kind, %account, case = %resolution.case, "conflict resolved");
    Ok(Resolved { conflict_id: id, kind, account, resolved_at, resolution: asked })
}

/// Sets the account of account-definition conflict `id` to `definition`, which must be one of the
/// openings the conflict names (`events`): money moves apart by currency, never converted, and
/// the account is unfrozen unless another account-definition conflict on it is still open.
async fn redefine(
    tx: &mut PgConnection,
    id: uuid::Uuid,
    account: &str,
    locked: Option<AccountRow>,
    events: Value,
    definition: &Definition,
) -> Result<(), Attempt> {
    let named: Vec<uuid::Uuid> = events
        .as_array()
        .map(|sides| sides.iter().filter_map(|s| s["event_id"].as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    // The openings as stored: an event of another region as it was received.
    let payloads: Vec<Value> = sqlx::query_scalar("SELECT payload FROM ledger_events WHERE event_id = ANY($1)")
        .bind(&named)
        .fetch_all(&mut *tx)
        .await?;
    let mut offered = Vec::new();
    for payload in payloads {
        let event: LedgerEvent =
            serde_json::from_value(payload).map_err(|e| StorageError::Refused(sqlx::Error::Decode(e.into())))?;
        if let EventPayload::AccountOpened { account: spec } = event.payload {
            let opened = Definition { currency: spec.currency, allow_negative: spec.allow_negative };
            if !offered.contains(&opened) {
                offered.push(opened);
            }
        }
    }
    if !offered.contains(definition) {
        let offered: Vec<Value> =
            offered.iter().map(|d| json!({"currency": d.currency, "allow_negative": d.allow_negative})).collect();
        return Err(ResolveError::DefinitionNotOffered(Value::from(offered)).into());
    }
    let Some(mut row) = locked else {
        // A conflict on an account this region never opened: not possible, as the openings were
        // applied here.
        return Err(StorageError::Internal(sqlx::Error::RowNotFound).into());
    };
    row.state.adopt_definition(definition.currency, definition.allow_negative).map_err(ResolveError::OutOfRange)?;
    let state = &row.state;
    sqlx::query(
        "UPDATE accounts SET currency = $2, allow_negative = $3, balance = $4, foreign_balances = $5,
             frozen = EXISTS (SELECT 1 FROM conflicts WHERE account_id = $1 AND kind = 'account-definition'
                              AND status = 'open' AND conflict_id <> $6),
             replicated_overdraft = replicated_overdraft OR ($4 < 0 AND NOT $3), updated_at = now()
         WHERE id = $1",
    )
    .bind(account)
    .bind(state.spec.currency.as_str())
    .bind(state.spec.allow_negative)
    .bind(state.balance)
    .bind(json!(state.foreign))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
