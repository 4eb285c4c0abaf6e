//! Storage: the one module that holds the SQL of the authoritative tables (events, transfers,
//! entries, accounts, account events, idempotency records, outbox, conflicts) and classifies the
//! database's errors ([`StorageError`]). The committer ([`crate::write`]) and remote apply
//! ([`crate::remote`]) decide; they read and write through here.
//!
//! - [`accounts`]: the account row, its columns, and the unlocked read the committer plans against.
//! - [`batch`]: the committer's locked read and its one write statement.
//! - [`remote_load`], [`remote_store`]: remote apply's one read and one write per round.
//! - [`pending`]: pending transfers (two-phase) and their settlements.
//! - [`resolve`]: a conflict resolved in this region (and an account-definition's account redefined).
//! - [`error`]: the one classification of database errors, [`StorageError`].

/// The columns [`AccountRow::from_row`] reads, as a macro so constant queries can `concat!` them.
macro_rules! account_columns {
    () => {
        "id, currency, allow_negative, balance, metadata, version_vector, entry_seq, created_at, updated_at, frozen, \
         foreign_balances, pending_debits, pending_credits"
    };
}

pub mod accounts;
pub(crate) mod batch;
pub mod error;
pub mod pending;
pub(crate) mod remote_load;
pub(crate) mod remote_store;
pub mod resolve;

use chrono::{DateTime, SecondsFormat, Utc};
use ledger_core::{AccountId, VersionVector};
use serde_json::{Value, json};

pub use accounts::{ACCOUNT_COLUMNS, AccountRow};
pub use error::StorageError;

/// Channel the publisher LISTENs on; notified in the same transaction as the outbox rows, so it
/// wakes exactly when there is something committed to publish.
pub const OUTBOX_CHANNEL: &str = "ledger_outbox";

/// Channel the webhook delivery worker LISTENs on; notified in the transaction that fires a
/// monitor (the committer's statement, a remote-apply round), only when one fired.
pub const WEBHOOK_CHANNEL: &str = "ledger_webhooks";

/// Timestamps as the API and events print them.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The transaction representation, shared by `POST /v1/transactions` (and its replays), remote
/// apply (the idempotency record of a key first used elsewhere) and `GET`. `None` for an event
/// that is not a transaction.
pub fn transaction_json(event: &ledger_core::LedgerEvent, created_at: &DateTime<Utc>) -> Option<Value> {
    let ledger_core::EventPayload::TransactionPosted { transaction_id, metadata, idempotency_key, .. } = &event.payload
    else {
        return None;
    };
    let legs: Vec<Value> = event
        .legs()
        .iter()
        .map(|l| {
            json!({"id": l.transfer_id, "from": l.from, "to": l.to, "amount": l.amount.minor_units(), "currency": l.currency})
        })
        .collect();
    Some(json!({
        "id": transaction_id,
        "legs": legs,
        "metadata": metadata,
        "origin_region": event.origin_region,
        "idempotency_key": idempotency_key.as_deref().map(crate::idempotency::client_part),
        "created_at": rfc3339(created_at),
        "version_vectors": event.vectors,
    }))
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
