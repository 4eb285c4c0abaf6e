//! Accounts as stored: the row, the columns it is read from, and the unlocked read the committer
//! plans a batch against.

use super::StorageError;
use chrono::{DateTime, Utc};
use ledger_core::{AccountId, AccountSpec, AccountState, VersionVector};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgConnection;

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
            "pending_debits": s.pending_debits,
            "pending_credits": s.pending_credits,
            "available": s.available(),
            "allow_negative": s.spec.allow_negative,
            "metadata": s.spec.metadata,
            "version_vector": s.version,
            "entries": s.entry_seq,
            "frozen": s.frozen,
            "foreign_balances": s.foreign,
            "created_at": super::rfc3339(&self.created_at),
            "updated_at": super::rfc3339(&self.updated_at),
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
                pending_debits: row.try_get("pending_debits")?,
                pending_credits: row.try_get("pending_credits")?,
                foreign: serde_json::from_value(row.try_get("foreign_balances")?).map_err(|e| decode(e.to_string()))?,
            },
            updated_at: row.try_get("updated_at")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// The columns [`AccountRow::from_row`] reads.
pub const ACCOUNT_COLUMNS: &str = account_columns!();

/// Reads accounts without locking them, to plan a batch against.
pub(crate) async fn load(conn: &mut PgConnection, ids: &[AccountId]) -> Result<Vec<AccountRow>, StorageError> {
    let ids: Vec<&str> = ids.iter().map(AccountId::as_str).collect();
    let rows = sqlx::query(LOAD_SQL).bind(&ids).fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(AccountRow::from_row).collect::<Result<_, _>>()?)
}

/// Accounts to plan against.
const LOAD_SQL: &str = concat!("SELECT ", account_columns!(), " FROM accounts WHERE id = ANY($1)");
